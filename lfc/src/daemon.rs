//! The worker daemon's record in the LFC: the rendezvous between the daemon and the backends
//! (ARCHITECTURE §6). The daemon records its UDP listen address, pid, start time and a heartbeat,
//! so a backend needs no port setting and knows at once whether anyone is receiving; and it holds
//! an exclusive lock for its lifetime, so that only one daemon serves a cache.
//!
//! # The record
//! It lives in a mutable runtime area after the checksummed fixed header (`DAEMON_OFFSET`; in a
//! cache created by an older build the area is zero, which reads as "no daemon"). Two cache
//! lines, atomics only:
//! - `heartbeat_ns`, `generation`: single words that backends load on every page read. Both are
//!   0 exactly when no daemon is registered.
//! - a seqlock-protected multi-word record (`seq`, pid, start time, address, ...). Writers
//!   (`register_daemon`, `clear_daemon`) serialise on a writer word holding their pid: a dead
//!   writer's word is taken over, and readers that find the record mid-write by a dead writer
//!   report "no daemon" instead of waiting, so a writer SIGKILLed at any instruction blocks no
//!   one and never makes a torn record readable.
//! - `daemon_heartbeat` takes no lock: a compare-and-swap that only ever replaces a non-zero
//!   heartbeat by a later one, so it never resurrects a cleared record.
//!
//! # The lock
//! [`Lfc::lock_for_daemon`] takes an open-file-description `fcntl` write lock (`F_OFD_SETLK`) on
//! one byte of that area through a file description of its own. It is independent of the shared
//! `flock` every attached process holds, conflicts with any other description (in this process
//! or another), and the kernel drops it when the description's last descriptor is closed, also
//! when the process dies. `F_OFD_GETLK` reports no pid for OFD locks (`l_pid` is -1), so the
//! holder is named from its record.
//!
//! Owns: the daemon area of the file and the lock byte in it; it writes nothing else of the file.
//! The address is data: it opens no socket. Heartbeat and start times are passed in (`now_ns`,
//! `started_unix_ms`); its own clock only bounds how long a writer or reader waits for a live one.

use crate::cache::Lfc;
use crate::error::DaemonLockError;
use crate::layout::DAEMON_OFFSET;
use crate::process::{current_pid, process_alive};
use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Heartbeat period of the daemon, and the age after which a record counts as dead.
pub const DAEMON_HEARTBEAT_NS: u64 = 100_000_000;
pub const DAEMON_STALE_NS: u64 = 350_000_000;

/// How long `register_daemon`/`clear_daemon` wait for another live writer of the record before
/// taking its writer word over. A writer holds it for a dozen stores; one still holding it after
/// this long is stopped (SIGSTOP, debugger).
const WRITER_PATIENCE: Duration = Duration::from_secs(1);
/// A record read spins, then yields, then sleeps while a live writer is mid-write (a dozen
/// stores, unless the writer is preempted on a busy machine), and reports "no daemon" after
/// `READ_PATIENCE` (only a writer stopped mid-write, or one rewriting the record without pause,
/// makes it wait that long).
const READ_SPINS: u32 = 64;
const READ_YIELDS: u32 = 256;
const READ_PATIENCE: Duration = Duration::from_millis(100);
const READ_SLEEP: Duration = Duration::from_micros(50);

const FAMILY_NONE: u64 = 0;
const FAMILY_V4: u64 = 4;
const FAMILY_V6: u64 = 6;

/// What the LFC header says about the worker daemon serving this cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaemonRecord {
    /// The daemon's UDP listen address (v4 or v6), as bound: an unspecified address (`0.0.0.0`,
    /// `::`) means "every local address".
    pub addr: SocketAddr,
    pub pid: u32,
    pub started_unix_ms: u64,
    /// CLOCK_MONOTONIC ns (caller-supplied `now_ns`) of the last heartbeat.
    pub heartbeat_ns: u64,
    /// Bumped by every register_daemon: tells a restarted daemon from the old one.
    pub generation: u64,
}

impl DaemonRecord {
    /// How long ago the last heartbeat was, at `now_ns` (same clock; 0 if `now_ns` is earlier).
    pub fn heartbeat_age_ns(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.heartbeat_ns)
    }

    /// Whether the daemon counts as alive at `now_ns`: last heartbeat less than
    /// [`DAEMON_STALE_NS`] ago.
    pub fn is_live(&self, now_ns: u64) -> bool {
        self.heartbeat_age_ns(now_ns) < DAEMON_STALE_NS
    }
}

/// The daemon area in the shared file. Atomics only (valid for any bit pattern; zero = none).
#[repr(C, align(64))]
pub(crate) struct DaemonArea {
    // First cache line: read by backends on every page read, written every heartbeat.
    heartbeat_ns: AtomicU64,
    /// Generation of the registered daemon; 0 when none.
    generation: AtomicU64,
    _pad: [AtomicU64; 6],
    // Second cache line: the seqlock-protected record.
    /// Even when stable, odd while a writer changes the record.
    seq: AtomicU64,
    /// Pid of the process writing the record (0 = none).
    writer: AtomicU64,
    /// Registrations ever made (the next generation is one more); kept by `clear`.
    registrations: AtomicU64,
    pid: AtomicU64,
    started_unix_ms: AtomicU64,
    /// `family | port << 16` (family 0: no record).
    family_port: AtomicU64,
    ip_hi: AtomicU64,
    ip_lo: AtomicU64,
    /// IPv6 `flowinfo << 32 | scope_id`.
    v6_extra: AtomicU64,
}

pub(crate) const DAEMON_AREA_BYTES: usize = std::mem::size_of::<DaemonArea>();

/// Byte of the daemon area that the daemon lock covers (a lock beyond the fields would do as
/// well; this one makes `/proc/locks` point at the area).
const LOCK_BYTE: u64 = DAEMON_OFFSET as u64;

/// The record's words as read in one consistent snapshot.
struct Raw {
    heartbeat_ns: u64,
    generation: u64,
    pid: u64,
    started_unix_ms: u64,
    family_port: u64,
    ip_hi: u64,
    ip_lo: u64,
    v6_extra: u64,
}

fn encode(addr: SocketAddr) -> (u64, u64, u64, u64) {
    let port = u64::from(addr.port()) << 16;
    match addr {
        SocketAddr::V4(a) => (FAMILY_V4 | port, u64::from(u32::from(*a.ip())), 0, 0),
        SocketAddr::V6(a) => {
            let ip = u128::from(*a.ip());
            (
                FAMILY_V6 | port,
                (ip >> 64) as u64,
                ip as u64,
                u64::from(a.flowinfo()) << 32 | u64::from(a.scope_id()),
            )
        }
    }
}

fn decode(r: &Raw) -> Option<DaemonRecord> {
    if r.generation == 0 {
        return None;
    }
    let port = (r.family_port >> 16) as u16;
    let addr = match r.family_port & 0xffff {
        FAMILY_V4 => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(r.ip_hi as u32), port)),
        FAMILY_V6 => SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(u128::from(r.ip_hi) << 64 | u128::from(r.ip_lo)),
            port,
            (r.v6_extra >> 32) as u32,
            r.v6_extra as u32,
        )),
        _ => return None,
    };
    Some(DaemonRecord {
        addr,
        pid: u32::try_from(r.pid).ok()?,
        started_unix_ms: r.started_unix_ms,
        heartbeat_ns: r.heartbeat_ns,
        generation: r.generation,
    })
}

/// The record's writer word, held by this process; released on drop.
struct Writer<'a> {
    area: &'a DaemonArea,
    me: u64,
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        let _ = self
            .area
            .writer
            .compare_exchange(self.me, 0, Ordering::Release, Ordering::Relaxed);
    }
}

impl DaemonArea {
    /// Takes the writer word: waits for a live writer up to `WRITER_PATIENCE`, takes a dead
    /// one's over at once, and a live one's over after the wait.
    fn lock_writer(&self) -> Writer<'_> {
        let me = u64::from(current_pid());
        let started = Instant::now();
        let mut spins = 0u32;
        loop {
            let owner = self.writer.load(Ordering::Relaxed);
            let free = owner == 0;
            // Threads of one process share a pid: they wait for each other like live writers.
            let takeable = free
                || (owner != me
                    && (!process_alive(u32::try_from(owner).unwrap_or(0))
                        || started.elapsed() >= WRITER_PATIENCE));
            if takeable
                && self
                    .writer
                    .compare_exchange(owner, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return Writer { area: self, me };
            }
            if spins < 100 {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Runs `f` as a seqlock write: readers see either the record before or after it.
    fn write(&self, f: impl FnOnce(&DaemonArea)) {
        let _w = self.lock_writer();
        // Odd while writing. A dead (or overtaken) writer may have left it odd: then move past
        // its value, so that a reader that started under it cannot validate against ours.
        let s = self.seq.load(Ordering::Relaxed);
        let odd = if s & 1 == 1 { s + 2 } else { s + 1 };
        self.seq.store(odd, Ordering::Relaxed);
        // Orders the odd `seq` before the field stores, for readers' validation.
        fence(Ordering::Release);
        f(self);
        self.seq.store(odd + 1, Ordering::Release);
    }

    fn read(&self) -> Option<Raw> {
        let mut waiting_since: Option<Instant> = None;
        for attempt in 0u32.. {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let raw = Raw {
                    heartbeat_ns: self.heartbeat_ns.load(Ordering::Relaxed),
                    generation: self.generation.load(Ordering::Relaxed),
                    pid: self.pid.load(Ordering::Relaxed),
                    started_unix_ms: self.started_unix_ms.load(Ordering::Relaxed),
                    family_port: self.family_port.load(Ordering::Relaxed),
                    ip_hi: self.ip_hi.load(Ordering::Relaxed),
                    ip_lo: self.ip_lo.load(Ordering::Relaxed),
                    v6_extra: self.v6_extra.load(Ordering::Relaxed),
                };
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == s1 {
                    return Some(raw);
                }
            } else {
                // Mid-write: a writer that died there will never finish it.
                let owner = self.writer.load(Ordering::Relaxed);
                if owner != 0 && !process_alive(u32::try_from(owner).unwrap_or(0)) {
                    return None;
                }
            }
            if attempt < READ_SPINS {
                std::hint::spin_loop();
                continue;
            }
            // The clock is read only on this slow path.
            if waiting_since.get_or_insert_with(Instant::now).elapsed() >= READ_PATIENCE {
                return None;
            }
            if attempt < READ_SPINS + READ_YIELDS {
                std::thread::yield_now();
            } else {
                std::thread::sleep(READ_SLEEP);
            }
        }
        None
    }

    fn clear_fields(&self) {
        // Generation and heartbeat first: they are what the hot path reads.
        self.generation.store(0, Ordering::Relaxed);
        self.heartbeat_ns.store(0, Ordering::Relaxed);
        self.family_port.store(FAMILY_NONE, Ordering::Relaxed);
        self.pid.store(0, Ordering::Relaxed);
        self.started_unix_ms.store(0, Ordering::Relaxed);
        self.ip_hi.store(0, Ordering::Relaxed);
        self.ip_lo.store(0, Ordering::Relaxed);
        self.v6_extra.store(0, Ordering::Relaxed);
    }
}

const _: () = assert!(DAEMON_AREA_BYTES <= crate::layout::DAEMON_BYTES);

/// The exclusive "I serve this LFC" lock of a worker daemon; see [`Lfc::lock_for_daemon`].
/// Dropping it (or the death of the process) releases it. Being an open-file-description lock,
/// it is shared with a child forked meanwhile until that child execs (the descriptor is
/// close-on-exec) or exits.
#[derive(Debug)]
#[must_use = "the lock is released when this is dropped"]
pub struct DaemonLock {
    /// The file description carrying the OFD lock.
    _file: File,
    path: PathBuf,
}

impl DaemonLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn lock_io(path: &Path, op: &'static str, source: std::io::Error) -> DaemonLockError {
    DaemonLockError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

impl Lfc {
    fn daemon_area(&self) -> &DaemonArea {
        self.shared(DAEMON_OFFSET as u64)
    }

    /// The registered daemon, or None when none is registered (never, or cleared by a clean
    /// stop). A record whose heartbeat is old is still returned: judge it with
    /// [`DaemonRecord::is_live`].
    pub fn daemon(&self) -> Option<DaemonRecord> {
        decode(&self.daemon_area().read()?)
    }

    /// One atomic load each: cheap enough to call on every page read. 0 when none registered.
    pub fn daemon_heartbeat_ns(&self) -> u64 {
        self.daemon_area().heartbeat_ns.load(Ordering::Acquire)
    }

    /// Generation of the registered daemon (see [`DaemonRecord::generation`]); 0 when none.
    pub fn daemon_generation(&self) -> u64 {
        self.daemon_area().generation.load(Ordering::Acquire)
    }

    /// Records the daemon serving this cache (replacing any record), with a first heartbeat at
    /// `now_ns` (CLOCK_MONOTONIC, see [`crate::monotonic_ns`]; 0 is stored as 1, since a zero
    /// heartbeat means "none"). Meant to be called while holding [`Lfc::lock_for_daemon`].
    pub fn register_daemon(&self, addr: SocketAddr, pid: u32, started_unix_ms: u64, now_ns: u64) {
        let (family_port, ip_hi, ip_lo, v6_extra) = encode(addr);
        self.daemon_area().write(|a| {
            let generation = a.registrations.load(Ordering::Relaxed) + 1;
            a.registrations.store(generation, Ordering::Relaxed);
            a.pid.store(u64::from(pid), Ordering::Relaxed);
            a.started_unix_ms.store(started_unix_ms, Ordering::Relaxed);
            a.family_port.store(family_port, Ordering::Relaxed);
            a.ip_hi.store(ip_hi, Ordering::Relaxed);
            a.ip_lo.store(ip_lo, Ordering::Relaxed);
            a.v6_extra.store(v6_extra, Ordering::Relaxed);
            // Heartbeat before generation: a backend that sees the new generation sees a fresh
            // heartbeat too.
            a.heartbeat_ns.store(now_ns.max(1), Ordering::Release);
            a.generation.store(generation, Ordering::Release);
        });
    }

    /// Refreshes the registered daemon's heartbeat to `now_ns` (never backwards). Does nothing
    /// when no daemon is registered, so a heartbeat racing with `clear_daemon` cannot make a
    /// cleared record look alive again. Lock-free.
    pub fn daemon_heartbeat(&self, now_ns: u64) {
        let cell = &self.daemon_area().heartbeat_ns;
        let mut current = cell.load(Ordering::Relaxed);
        while current != 0 && current < now_ns {
            match cell.compare_exchange_weak(current, now_ns, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// Clears the record if it still names `pid` (a clean stop).
    pub fn clear_daemon(&self, pid: u32) {
        let area = self.daemon_area();
        // Cheap pre-check, so that a stop with no record (or another's) writes nothing.
        if self.daemon().is_some_and(|r| r.pid != pid) {
            return;
        }
        area.write(|a| {
            if a.generation.load(Ordering::Relaxed) != 0
                && a.pid.load(Ordering::Relaxed) == u64::from(pid)
            {
                a.clear_fields();
            }
        });
    }

    /// Takes the exclusive "one daemon per LFC" lock, held until the returned [`DaemonLock`] is
    /// dropped or the process dies (the kernel releases it). Fails with
    /// [`DaemonLockError::Held`], naming the holder from its record, when another daemon (in
    /// any process, including this one) holds it. A record left by a daemon that died is
    /// cleared once the lock is taken, since its owner no longer serves the cache.
    pub fn lock_for_daemon(&self) -> Result<DaemonLock, DaemonLockError> {
        let path = self.path().to_path_buf();
        let file = self
            .reopen()
            .map_err(|e| lock_io(&path, "re-open for the daemon lock", e))?;
        // SAFETY: `flock` is a plain C struct for which all-zero bytes are a valid value.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = LOCK_BYTE as libc::off_t;
        fl.l_len = 1;
        // OFD locks require l_pid = 0 (zeroed above).
        loop {
            // SAFETY: fcntl on a descriptor we own with a pointer to a live `flock`.
            let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::EACCES) => {
                    let holder = self.daemon().filter(|r| process_alive(r.pid));
                    return Err(DaemonLockError::Held { path, holder });
                }
                _ => return Err(lock_io(&path, "fcntl(F_OFD_SETLK)", err)),
            }
        }
        // We hold the lock, so whoever the record names no longer serves the cache.
        self.daemon_area().write(|a| {
            if a.generation.load(Ordering::Relaxed) != 0 {
                a.clear_fields();
            }
        });
        Ok(DaemonLock { _file: file, path })
    }

    /// A new open file description of the attached file (an OFD lock conflicts only with other
    /// descriptions). Through `/proc/self/fd`, so it is the very inode we mapped even if the
    /// path was replaced; failing that, by path, checked to be the same inode.
    fn reopen(&self) -> std::io::Result<File> {
        let fd = self.file().as_raw_fd();
        let proc_path = format!("/proc/self/fd/{fd}");
        if let Ok(f) = OpenOptions::new().read(true).write(true).open(&proc_path) {
            return Ok(f);
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path())?;
        let (a, b) = (f.metadata()?, self.file().metadata()?);
        if a.dev() != b.dev() || a.ino() != b.ino() {
            return Err(std::io::Error::other(
                "the path now names another file than the attached cache",
            ));
        }
        Ok(f)
    }

    /// Starts a record write and never finishes it, as a writer killed mid-write would (the
    /// caller is expected to die next): crash tests use it.
    #[doc(hidden)]
    pub fn begin_daemon_write_and_abandon_for_test(&self, pid: u32) {
        let area = self.daemon_area();
        let w = area.lock_writer();
        let s = area.seq.load(Ordering::Relaxed);
        area.seq.store(s | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        area.pid.store(u64::from(pid), Ordering::Relaxed);
        std::mem::forget(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        let parsed = [
            "127.0.0.1:6401",
            "0.0.0.0:1",
            "255.255.255.255:65535",
            "[::1]:6401",
            "[fe80::1:2:3:4%7]:9",
            "[::]:0",
        ]
        .map(|a| a.parse::<SocketAddr>().unwrap());
        // Flow info has no text form: built, not parsed.
        let with_flowinfo = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 3, 0xabcd, 9));
        for addr in parsed.into_iter().chain([with_flowinfo]) {
            let (family_port, ip_hi, ip_lo, v6_extra) = encode(addr);
            let raw = Raw {
                heartbeat_ns: 5,
                generation: 1,
                pid: 42,
                started_unix_ms: 7,
                family_port,
                ip_hi,
                ip_lo,
                v6_extra,
            };
            assert_eq!(decode(&raw).unwrap().addr, addr);
        }
    }

    #[test]
    fn zero_and_garbage_decode_as_none() {
        let zero = Raw {
            heartbeat_ns: 0,
            generation: 0,
            pid: 0,
            started_unix_ms: 0,
            family_port: 0,
            ip_hi: 0,
            ip_lo: 0,
            v6_extra: 0,
        };
        assert!(decode(&zero).is_none());
        let bad_family = Raw {
            generation: 1,
            family_port: 5,
            ..zero
        };
        assert!(decode(&bad_family).is_none());
    }

    #[test]
    fn liveness_by_age() {
        let r = DaemonRecord {
            addr: "127.0.0.1:1".parse().unwrap(),
            pid: 1,
            started_unix_ms: 0,
            heartbeat_ns: 1_000,
            generation: 1,
        };
        assert!(r.is_live(1_000 + DAEMON_STALE_NS - 1));
        assert!(!r.is_live(1_000 + DAEMON_STALE_NS));
        assert_eq!(r.heartbeat_age_ns(0), 0);
    }
}
