//! The worker daemon (ARCHITECTURE §4 step 5): N threads, each with its own `SO_REUSEPORT` socket,
//! receiving datagrams straight into reserved LFC slots, validating and publishing them; a
//! Prometheus endpoint; a pid file. `run` returns when `stop` is set (the CLI sets it on
//! SIGTERM/SIGINT).
//!
//! One daemon serves one LFC, and the LFC tells backends where it is (ARCHITECTURE §6): `run` takes
//! the cache's daemon lock (`Lfc::lock_for_daemon`, released by the kernel if the daemon dies)
//! before it binds anything, refuses a UDP address that any other socket already uses (a plain bind
//! probe: the `SO_REUSEPORT` group bind alone would silently join another daemon's group), records
//! its bound address, pid and start time in the cache once it listens, refreshes a heartbeat every
//! `lfc::DAEMON_HEARTBEAT_NS`, and clears the record when it stops.
//!
//! Owns: the threads (workers, heartbeat, prefault, metrics endpoint), the socket group and the
//! probe before it, opening or re-creating the LFC, the pid file, and the daemon record from
//! registration to clearing. Decides nothing about a datagram (`ingest`, through `pump`) nor a
//! thread's budget (`junk`, `sched::ShareBound`): it reads the clock and sleeps as they say. Only
//! the compute runs it: the page server and this crate's shared layer never import it.

use crate::junk::{JunkBudget, FLOOD_RECV_BUFFER};
use crate::metrics::{render_prometheus, CacheGauges, ThreadMetrics};
use crate::pidfile::{PidFile, PidFileError};
use crate::pump::{SlotPump, Step};
use crate::udp::{
    bind_reuseport_group, recv_buffer_size, resize_recv_buffer, set_gro, IoBackend, IoChoice,
    Receiver, UdpError, MAX_SLOT_DATAGRAMS,
};
use lfc::{AttachError, DaemonLockError, Lfc, PAGE_SIZE};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Most worker threads.
pub const MAX_THREADS: usize = 64;

/// Worker threads when none are asked for: one per two CPUs (`sched::default_threads`), at
/// most `MAX_THREADS`. The datagrams of every sender are spread over all of them, and on a
/// small machine each extra thread awake takes CPU from the backends it serves (2 cores: one
/// thread scanned 10 % faster than two, and a foreground GetPage's p99 under a prefetch stream
/// was 1.2-1.3x idle against 1.6x).
pub fn default_threads() -> usize {
    crate::sched::default_threads().min(MAX_THREADS)
}
/// How often a blocked thread rechecks the stop flag.
pub const POLL: Duration = Duration::from_millis(50);
/// Back-off when no LFC slot could be reserved (every frame reserved by someone).
pub const NO_SLOT_BACKOFF: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub lfc: PathBuf,
    /// Create the LFC with this many bytes of pages when the file does not exist (or when
    /// `recreate`); an existing file of another size is refused unless `recreate`.
    pub create_size_bytes: Option<u64>,
    /// Replace an existing LFC with a new, empty and unbound one (new key; the size of
    /// `create_size_bytes`, else the old file's) instead of attaching it: the way to start a
    /// cache for another timeline, or to replace a file this build cannot attach.
    pub recreate: bool,
    pub listen: SocketAddr,
    pub threads: usize,
    pub io: IoChoice,
    pub metrics: Option<SocketAddr>,
    pub pid_file: Option<PathBuf>,
    pub recv_buffer_bytes: usize,
    /// LFC slots (frames) each thread keeps posted for receives: with `gro`, shared out
    /// `MAX_SLOT_DATAGRAMS` to a receive.
    pub slots_per_thread: usize,
    /// Receive with UDP GRO (`udp::set_gro`): one receive takes a coalesced train of
    /// datagrams, into up to `MAX_SLOT_DATAGRAMS` of the thread's frames. Falls back to plain
    /// receives, with a warning, on a kernel without it.
    pub gro: bool,
    /// Populate the daemon's page tables for the whole cache before receiving (`Lfc::prefault`).
    pub prefault: bool,
    /// The worker threads' scheduling class (`workers --thread-class`); `None` leaves every
    /// thread in the class it started in. A refused `Realtime` falls back to `Bulk`, with a
    /// warning; the prefault thread is `Bulk` whenever this is set.
    pub thread_class: Option<crate::sched::ThreadClass>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The attach error names the path already (and says e.g. how much space is missing).
    #[error("LFC {source}")]
    Lfc {
        path: PathBuf,
        #[source]
        source: AttachError,
    },
    /// The file is there but this build cannot attach it (other format version, not an LFC,
    /// from before the last reboot...): only `--recreate` replaces it, since that empties it.
    #[error(
        "LFC {source}; start the daemon with --recreate to replace it with a new, empty cache"
    )]
    UnusableLfc {
        path: PathBuf,
        #[source]
        source: AttachError,
    },
    /// `--size` differs from the existing cache's: attaching it would silently ignore the flag,
    /// re-creating it would silently empty it.
    #[error(
        "LFC {} holds {have_pages} pages ({} MiB), not the {} MiB --size asks for; start the \
         daemon with --recreate to re-create it at that size (empty), or without --size to \
         attach it as it is",
        path.display(),
        (have_pages * PAGE_SIZE as u64) >> 20,
        want_bytes >> 20
    )]
    SizeMismatch {
        path: PathBuf,
        have_pages: u64,
        want_bytes: u64,
    },
    /// Another worker daemon serves this LFC (or the lock could not be taken).
    #[error(transparent)]
    DaemonLock(#[from] DaemonLockError),
    /// Some other socket (another daemon's, or any program's) is bound to the UDP address.
    #[error(
        "UDP {addr} is already in use by another process (another worker daemon, or any other \
         program): pick another --listen address"
    )]
    PortInUse { addr: SocketAddr },
    #[error("{0} does not exist; pass --size BYTES to create it")]
    NoLfc(PathBuf),
    /// `--recreate` without `--size` of a file whose size cannot be read (the attach error
    /// names the path).
    #[error("LFC {source}; its size is unknown: pass --size BYTES with --recreate")]
    RecreateNeedsSize {
        path: PathBuf,
        #[source]
        source: AttachError,
    },
    #[error(transparent)]
    PidFile(#[from] PidFileError),
    #[error(transparent)]
    Udp(#[from] UdpError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a started daemon reports before it serves (for the ready line and logs).
#[derive(Debug, Clone)]
pub struct Started {
    pub listen: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub backend: IoBackend,
    pub threads: usize,
    pub recv_buffer_bytes: usize,
    pub capacity_pages: u64,
    /// Whether the sockets receive with UDP GRO.
    pub gro: bool,
}

fn open_lfc(config: &DaemonConfig) -> Result<Lfc, DaemonError> {
    let path = &config.lfc;
    let err = |source| DaemonError::Lfc {
        path: path.clone(),
        source,
    };
    if config.recreate && path.exists() {
        return recreate_lfc(config);
    }
    if path.exists() {
        // A restarted daemon re-attaches to the cache it left, with its pages, key and
        // timeline binding.
        let lfc = Lfc::open(path).map_err(|source| {
            if source.is_bad_file() {
                DaemonError::UnusableLfc {
                    path: path.clone(),
                    source,
                }
            } else {
                err(source)
            }
        })?;
        if let Some(want_bytes) = config.create_size_bytes {
            if want_bytes / PAGE_SIZE as u64 != lfc.capacity_pages() {
                return Err(DaemonError::SizeMismatch {
                    path: path.clone(),
                    have_pages: lfc.capacity_pages(),
                    want_bytes,
                });
            }
        }
        return Ok(lfc);
    }
    match config.create_size_bytes {
        Some(bytes) => Lfc::create(path, bytes / PAGE_SIZE as u64).map_err(err),
        None => Err(DaemonError::NoLfc(path.clone())),
    }
}

/// Says once, at start, when the cache is not on 2 MiB pages: every backend then pays a page
/// fault per 4 KiB it first touches and a TLB miss per page it reads (the metric
/// `udp_prefetch_lfc_huge_pages` shows it too).
fn warn_without_huge_pages(lfc: &Lfc) {
    let huge = lfc.huge_pages();
    if huge.backed() {
        tracing::info!(lfc = %lfc.path().display(), "LFC on 2 MiB pages");
    } else {
        tracing::warn!(
            lfc = %lfc.path().display(),
            "LFC not on huge pages: {}; {}",
            huge.describe(),
            lfc::huge_pages_advice(lfc.path())
        );
    }
}

/// `--recreate` of an existing file: a new, empty, unbound cache of `--size`, or of the old
/// cache's size. `Lfc::create` refuses (`InUse`) while any backend still has the old one mapped.
fn recreate_lfc(config: &DaemonConfig) -> Result<Lfc, DaemonError> {
    let path = &config.lfc;
    let pages = match config.create_size_bytes {
        Some(bytes) => bytes / PAGE_SIZE as u64,
        None => Lfc::open(path)
            .map(|old| old.capacity_pages())
            .map_err(|source| DaemonError::RecreateNeedsSize {
                path: path.clone(),
                source,
            })?,
    };
    let lfc = Lfc::create(path, pages).map_err(|source| DaemonError::Lfc {
        path: path.clone(),
        source,
    })?;
    tracing::info!(lfc = %path.display(), pages, "LFC re-created: empty and bound to no timeline");
    Ok(lfc)
}

/// Binds a plain UDP socket (no `SO_REUSEADDR`, no `SO_REUSEPORT`) to `addr` and closes it
/// again: that fails if any socket of any process is bound there, including members of another
/// `SO_REUSEPORT` group, which our group would otherwise join silently. Returns the address it
/// got, so port 0 resolves to a port that no socket uses.
fn probe_free(addr: SocketAddr) -> Result<SocketAddr, DaemonError> {
    let io = |source| DaemonError::Io {
        context: format!("binding UDP {addr}"),
        source,
    };
    match std::net::UdpSocket::bind(addr) {
        Ok(probe) => probe.local_addr().map_err(io),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(DaemonError::PortInUse { addr }),
        Err(e) => Err(io(e)),
    }
}

/// The worker sockets: one `SO_REUSEPORT` group on `listen`, on a port no other socket uses.
/// Port 0 becomes a port the kernel picked for the group alone (`bind_reuseport` picks it with
/// a plain bind), which every thread then shares; a given port is probed first.
fn bind_group(config: &DaemonConfig) -> Result<Vec<std::net::UdpSocket>, DaemonError> {
    let listen = config.listen;
    let addr = if listen.port() == 0 {
        listen
    } else {
        probe_free(listen)?
    };
    bind_reuseport_group(addr, config.threads, config.recv_buffer_bytes).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            // Taken by someone else since the probe.
            DaemonError::PortInUse { addr }
        } else {
            DaemonError::Io {
                context: format!("binding UDP {listen}"),
                source: e,
            }
        }
    })
}

/// A thread could not be started: stop the ones already running (the scope waits for them),
/// and report it.
fn spawn_failed(stop: &AtomicBool, which: &str, source: std::io::Error) -> DaemonError {
    stop.store(true, Ordering::SeqCst);
    DaemonError::Io {
        context: format!("starting {which} thread"),
        source,
    }
}

/// Clears the daemon record when dropped (clean stop, error, or unwind).
struct Registration<'a> {
    lfc: &'a Lfc,
    pid: u32,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.lfc.clear_daemon(self.pid);
    }
}

/// Refreshes the daemon record's heartbeat every `DAEMON_HEARTBEAT_NS` until `stop`, then
/// clears the record at once, so backends leave UDP while the workers drain.
fn heartbeat(lfc: &Lfc, pid: u32, stop: &AtomicBool) {
    let period = Duration::from_nanos(lfc::DAEMON_HEARTBEAT_NS);
    let mut next = Instant::now() + period;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next {
            lfc.daemon_heartbeat(lfc::monotonic_ns());
            next = now + period;
        }
        std::thread::sleep(next.saturating_duration_since(now).min(POLL));
    }
    lfc.clear_daemon(pid);
}

/// Refuses a thread or slot count out of range.
fn check_config(config: &DaemonConfig) -> Result<(), DaemonError> {
    if config.threads == 0 || config.threads > MAX_THREADS {
        return Err(DaemonError::Config(format!(
            "--threads must be 1..={MAX_THREADS}"
        )));
    }
    if config.slots_per_thread == 0 || config.slots_per_thread > crate::udp::MAX_SLOTS {
        return Err(DaemonError::Config(format!(
            "slots per thread must be 1..={}",
            crate::udp::MAX_SLOTS
        )));
    }
    Ok(())
}

/// Binds the metrics endpoint if one is configured.
fn bind_metrics(config: &DaemonConfig) -> Result<Option<TcpListener>, DaemonError> {
    Ok(match config.metrics {
        Some(addr) => Some(TcpListener::bind(addr).map_err(|source| DaemonError::Io {
            context: format!("binding the metrics endpoint {addr}"),
            source,
        })?),
        None => None,
    })
}

/// Runs the daemon until `stop` is set. `on_started` is called once everything is bound and the
/// daemon is registered in the LFC.
pub fn run(
    config: &DaemonConfig,
    stop: &AtomicBool,
    on_started: impl FnOnce(&Started),
) -> Result<(), DaemonError> {
    check_config(config)?;
    let _pid = config
        .pid_file
        .as_deref()
        .map(PidFile::acquire)
        .transpose()?;
    let started_unix_ms = lfc::wall_ns() / 1_000_000;
    let lfc = open_lfc(config)?;
    warn_without_huge_pages(&lfc);
    // Before binding anything: a second daemon for this cache must not take datagrams meant
    // for the first one.
    let _daemon_lock = lfc.lock_for_daemon()?;
    take_over(&lfc);
    let backend = config.io.resolve()?;
    let sockets = bind_group(config)?;
    let listen = sockets[0].local_addr().map_err(|source| DaemonError::Io {
        context: "reading the bound address".into(),
        source,
    })?;
    let rcvbuf = recv_buffer_size(&sockets[0]).unwrap_or(0);
    let metrics_listener = bind_metrics(config)?;
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let gro = config.gro && enable_gro_group(&sockets);
    // With GRO a receive takes up to MAX_SLOT_DATAGRAMS frames (room for the largest train);
    // the thread's frames are shared out among that many fewer receives.
    let frames_per_slot = if gro {
        MAX_SLOT_DATAGRAMS.min(config.slots_per_thread)
    } else {
        1
    };
    let receives = config.slots_per_thread / frames_per_slot;
    // Receivers are built before reporting "started", so a refused io_uring fails the start.
    let mut receivers = Vec::with_capacity(sockets.len());
    for socket in sockets {
        receivers.push(Receiver::new(socket, backend, receives)?);
    }
    let thread_metrics: Vec<ThreadMetrics> = (0..config.threads)
        .map(|_| ThreadMetrics::default())
        .collect();
    let pid = std::process::id();
    lfc.register_daemon(listen, pid, started_unix_ms, lfc::monotonic_ns());
    let _registration = Registration { lfc: &lfc, pid };
    on_started(&Started {
        listen,
        metrics: metrics_addr,
        backend,
        threads: config.threads,
        recv_buffer_bytes: rcvbuf,
        capacity_pages: lfc.capacity_pages(),
        gro,
    });
    let result = run_threads(
        config,
        &lfc,
        (receivers, frames_per_slot),
        &thread_metrics,
        metrics_listener,
        pid,
        stop,
    );
    tracing::info!("workers stopped; the LFC is consistent (no slot left reserved)");
    result
}

/// What a daemon does to the cache it now serves alone (under the one-daemon lock) before it
/// receives anything.
fn take_over(lfc: &Lfc) {
    // A crashed predecessor's reservations (its posted receive slots) stay BUSY until the CLOCK
    // sweep meets them; take them back now, once, so a crash loop cannot shrink the cache.
    let reclaimed = lfc.reclaim_dead_frames();
    if reclaimed > 0 {
        tracing::info!(
            reclaimed,
            "took back the frames dead processes had left reserved in the LFC"
        );
    }
    // The sender table counts what this daemon receives, as its metrics do (a predecessor's
    // senders, often a page server's earlier ports, give their entries back).
    lfc.reset_sender_counts();
}

/// Turns UDP GRO on for every socket of the group, or for none: a kernel that refuses it
/// (before Linux 5.0) leaves the daemon on plain receives, with a warning.
fn enable_gro_group(sockets: &[std::net::UdpSocket]) -> bool {
    for (i, socket) in sockets.iter().enumerate() {
        if let Err(e) = set_gro(socket, true) {
            tracing::warn!(error = %e, "UDP GRO refused; receiving one datagram per receive");
            for s in &sockets[..i] {
                // A socket left with GRO would get trains that one-frame slots cut short.
                let _ = set_gro(s, false);
            }
            return false;
        }
    }
    true
}

/// Runs one worker thread per receiver, and the prefault, heartbeat and metrics threads, until
/// `stop`; returns the first error of a worker thread.
fn run_threads(
    config: &DaemonConfig,
    lfc: &Lfc,
    (receivers, frames_per_slot): (Vec<Receiver>, usize),
    thread_metrics: &[ThreadMetrics],
    metrics_listener: Option<TcpListener>,
    pid: u32,
    stop: &AtomicBool,
) -> Result<(), DaemonError> {
    let prefault_remaining = AtomicU64::new(if config.prefault {
        lfc.capacity_pages()
    } else {
        0
    });
    // Prefaulting is bulk work: its page faults must not preempt a backend reading a page now.
    let enter_bulk_class = || {
        if config.thread_class.is_some() {
            crate::sched::set_thread_class_or_warn(crate::sched::ThreadClass::Bulk);
        }
    };
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for (i, receiver) in receivers.into_iter().enumerate() {
            let metrics = &thread_metrics[i];
            handles.push(
                std::thread::Builder::new()
                    .name(format!("udp-worker-{i}"))
                    .spawn_scoped(scope, move || {
                        let class = config.thread_class.map(enter_worker_class);
                        let realtime = class == Some(crate::sched::ThreadClass::Realtime);
                        metrics
                            .realtime
                            .store(u64::from(realtime), Ordering::Relaxed);
                        worker_loop(lfc, receiver, frames_per_slot, metrics, realtime, stop)
                    })
                    .map_err(|source| spawn_failed(stop, "a worker", source))?,
            );
        }
        if config.prefault {
            let remaining = &prefault_remaining;
            scope.spawn(move || {
                enter_bulk_class();
                prefault(lfc, remaining, stop)
            });
        }
        std::thread::Builder::new()
            .name("udp-heartbeat".into())
            .spawn_scoped(scope, move || heartbeat(lfc, pid, stop))
            .map_err(|source| spawn_failed(stop, "the heartbeat", source))?;
        if let Some(listener) = metrics_listener {
            let remaining = &prefault_remaining;
            scope.spawn(move || serve_metrics(listener, lfc, thread_metrics, remaining, stop));
        }
        join_workers(handles, stop)
    })
}

/// Waits for every worker thread; the first that failed (or panicked) sets `stop` for the
/// others and its error is returned.
fn join_workers(
    handles: Vec<std::thread::ScopedJoinHandle<'_, Result<(), DaemonError>>>,
    stop: &AtomicBool,
) -> Result<(), DaemonError> {
    let mut first_error = None;
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                stop.store(true, Ordering::SeqCst);
                first_error.get_or_insert(e);
            }
            Err(_) => {
                stop.store(true, Ordering::SeqCst);
                first_error.get_or_insert(DaemonError::Config("a worker thread panicked".into()));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Puts the calling worker thread in `class` and returns the class in force. A refused
/// real-time class (no root, no `CAP_SYS_NICE`) leaves the thread bulk, with one warning per
/// process: the daemon works in every class, only its reads' latency under load differs.
fn enter_worker_class(class: crate::sched::ThreadClass) -> crate::sched::ThreadClass {
    use crate::sched::{set_thread_class, set_thread_class_or_warn, ThreadClass};
    static WARNED: AtomicBool = AtomicBool::new(false);
    if class != ThreadClass::Realtime {
        set_thread_class_or_warn(class);
        return class;
    }
    match set_thread_class(class) {
        Ok(()) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::info!(
                    priority = crate::sched::REALTIME_PRIORITY,
                    "worker threads run real-time (SCHED_FIFO), bounded by their CPU share"
                );
            }
            class
        }
        Err(e) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e,
                    "the real-time class was refused (it needs root or CAP_SYS_NICE): worker \
                     threads run as SCHED_BATCH, and under load backends may wait for them");
            }
            set_thread_class_or_warn(ThreadClass::Bulk);
            ThreadClass::Bulk
        }
    }
}

/// One thread: keep slots posted, validate and publish what arrives, give back the rest. A
/// `realtime` thread leaves its class whenever it takes more than its share of a CPU
/// (`sched::ShareBound`) and returns to it after the demotion.
fn worker_loop(
    lfc: &Lfc,
    receiver: Receiver,
    frames_per_slot: usize,
    metrics: &ThreadMetrics,
    realtime: bool,
    stop: &AtomicBool,
) -> Result<(), DaemonError> {
    use crate::sched::{thread_cpu_ns, ShareBound, ShareVerdict, ThreadClass};
    let mut pump = SlotPump::new(lfc, receiver, frames_per_slot);
    let mut junk = JunkBudget::new(lfc::monotonic_ns(), metrics.junk());
    let mut flood = FloodBuffer::new(&pump, metrics)?;
    let mut share = realtime.then(|| ShareBound::new(lfc::monotonic_ns(), thread_cpu_ns()));
    while !stop.load(Ordering::Relaxed) {
        if let Some(verdict) = share
            .as_mut()
            .and_then(|b| b.after_step(lfc::monotonic_ns(), thread_cpu_ns))
        {
            let (class, now_realtime) = match verdict {
                ShareVerdict::Demote => {
                    metrics.realtime_demotions.fetch_add(1, Ordering::Relaxed);
                    (ThreadClass::Bulk, 0)
                }
                ShareVerdict::Promote => (ThreadClass::Realtime, 1),
            };
            match crate::sched::set_thread_class(class) {
                Ok(()) => metrics.realtime.store(now_realtime, Ordering::Relaxed),
                Err(e) => {
                    // Only a promotion can be refused (a capability dropped since the start):
                    // the thread stays bulk for good.
                    tracing::warn!(error = %e, "worker thread stays out of the real-time class");
                    share = None;
                }
            }
        }
        if pump.step(POLL, metrics)? == Step::NoSlot {
            // Every frame is reserved by someone: wait for frames to come back.
            std::thread::sleep(NO_SLOT_BACKOFF);
        }
        let pause = junk.after_step(lfc::monotonic_ns(), metrics.junk());
        flood.follow(junk.flooded(), &pump, metrics);
        if let Some(pause) = pause {
            // A flood of junk: what it drowns is lost either way, and the CPU is the backends'.
            metrics.junk_throttled.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(pause);
        }
    }
    pump.shutdown().map_err(|source| DaemonError::Io {
        context: "receiving datagrams".into(),
        source,
    })
}

/// Least time between two warnings of a worker thread about a flood of junk (`junk`).
const FLOOD_LOG_INTERVAL_NS: u64 = 60_000_000_000;

/// A worker thread's socket buffer through floods of junk (`junk`): cut to
/// [`FLOOD_RECV_BUFFER`] while [`JunkBudget::flooded`] says a flood lasts, so that the kernel
/// drops what the thread would turn away later and the junk left queued when it stops is drained
/// within a window; restored after. Logs a flood's start (once a minute at most) and its end.
struct FloodBuffer {
    /// The configured buffer as the kernel accounts it (twice what was asked), restored when a
    /// flood stops.
    configured: usize,
    /// Whether the buffer is cut now.
    cut: bool,
    /// The throttled-window count and time at the start of the flood last logged: a flood that
    /// comes and goes logs once a minute, not at each return.
    logged: Option<(u64, u64)>,
    last_log_ns: Option<u64>,
}

impl FloodBuffer {
    fn new(pump: &SlotPump<'_>, metrics: &ThreadMetrics) -> Result<Self, DaemonError> {
        let configured = recv_buffer_size(&pump.socket()).map_err(|source| DaemonError::Io {
            context: "reading the receive buffer's size".into(),
            source,
        })?;
        metrics
            .recv_buffer_bytes
            .store(configured as u64, Ordering::Relaxed);
        Ok(FloodBuffer {
            configured,
            cut: false,
            logged: None,
            last_log_ns: None,
        })
    }

    /// After a receive step: resizes the buffer when `flooded` changed since the last call.
    fn follow(&mut self, flooded: bool, pump: &SlotPump<'_>, metrics: &ThreadMetrics) {
        if flooded == self.cut {
            return;
        }
        self.cut = flooded;
        // Never more than the configured buffer (the system's default is smaller).
        let bytes = if self.cut {
            FLOOD_RECV_BUFFER.min(self.configured / 2)
        } else {
            self.configured / 2
        };
        // As the kernel accounts it (twice `bytes`), as the metric shows it.
        let recv_buffer_bytes = match resize_recv_buffer(pump.socket(), bytes) {
            Ok(size) => size as u64,
            Err(e) => {
                tracing::warn!(error = %e, cut = self.cut, "resizing a receive buffer failed");
                metrics.recv_buffer_bytes.load(Ordering::Relaxed)
            }
        };
        metrics
            .recv_buffer_bytes
            .store(recv_buffer_bytes, Ordering::Relaxed);
        let now = lfc::monotonic_ns();
        let throttled = metrics.junk_throttled.load(Ordering::Relaxed);
        if self.cut
            && self
                .last_log_ns
                .is_none_or(|t| now - t >= FLOOD_LOG_INTERVAL_NS)
        {
            self.last_log_ns = Some(now);
            self.logged = Some((throttled, now));
            tracing::warn!(
                junk_per_window = crate::junk::JUNK_PER_WINDOW,
                recv_buffer_bytes,
                "a flood of junk datagrams: this worker thread turns away its budget a \
                 window and cuts its socket's receive buffer until the flood stops"
            );
        } else if let (false, Some((at_start, since))) = (self.cut, self.logged.take()) {
            tracing::info!(
                throttled_windows = throttled.saturating_sub(at_start),
                lasted_ms = (now - since) / 1_000_000,
                recv_buffer_bytes,
                "the flood of junk datagrams is over; receive buffer restored"
            );
        }
    }
}

/// Frames one prefault step maps (64 MiB): small enough that a stop is honoured promptly.
const PREFAULT_STEP_PAGES: u64 = 8192;

/// Maps the whole LFC into the daemon's page tables in the background (`Lfc::prefault`), so
/// receives stop paying a first-touch page fault per frame without delaying the start: a
/// frame received into before its step is reached simply faults as it would anyway.
fn prefault(lfc: &Lfc, remaining: &AtomicU64, stop: &AtomicBool) {
    let started = std::time::Instant::now();
    let capacity = lfc.capacity_pages();
    let mut next = 0;
    // The metadata first: it is small, and every frame claimed touches it.
    let mut step = lfc.prefault_metadata();
    while step.is_ok() && next < capacity && !stop.load(Ordering::Relaxed) {
        let end = (next + PREFAULT_STEP_PAGES).min(capacity);
        step = lfc.prefault(next..end);
        if step.is_ok() {
            next = end;
            remaining.store(capacity - next, Ordering::Relaxed);
        }
    }
    if let Err(e) = step {
        // Not fatal (e.g. a kernel before 5.14): frames fault once on first use instead.
        tracing::warn!(error = %e, "could not prefault the LFC; continuing without");
        remaining.store(0, Ordering::Relaxed);
    } else if next == capacity {
        tracing::info!(elapsed = ?started.elapsed(), pages = capacity, "LFC prefaulted");
    }
}

/// The metrics endpoint: `/metrics` (the workers' counters and the cache's), `/healthz`.
fn serve_metrics(
    listener: TcpListener,
    lfc: &Lfc,
    threads: &[ThreadMetrics],
    prefault_remaining: &AtomicU64,
    stop: &AtomicBool,
) {
    crate::http::serve(listener, stop, |path| match path {
        "/healthz" => crate::http::healthy(),
        "/metrics" | "/" => Some((
            crate::http::PROMETHEUS,
            render_prometheus(
                threads,
                CacheGauges {
                    lfc: lfc.stats(),
                    senders: lfc.sender_counts(),
                    prefault_remaining_pages: prefault_remaining.load(Ordering::Relaxed),
                    huge_pages: lfc.huge_pages().backed(),
                },
            ),
        )),
        _ => None,
    });
}
