//! The worker daemon's record and lock in the LFC: register / heartbeat / clear, seqlock
//! consistency under concurrent writers (threads and another process), a writer killed
//! mid-write, and the one-daemon-per-cache lock (also across processes and after SIGKILL).
//! Children are this test binary re-executed with `LFC_DAEMON_ROLE` set.

mod common;

use common::new_cache;
use common::workload::{spawn_role, wait_ready};
use lfc::{DaemonLockError, DaemonRecord, Lfc, DAEMON_STALE_NS};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const ROLE: &str = "LFC_DAEMON_ROLE";
const PATH: &str = "LFC_DAEMON_PATH";

/// Children are forked from this multi-threaded test process, and between fork and exec a child
/// holds a copy of every descriptor, a daemon lock's included (`O_CLOEXEC` closes it only at the
/// exec): a lock dropped in that moment stays held until the exec. Spawning and checking that a
/// dropped lock is free take turns.
static FORK: Mutex<()> = Mutex::new(());

fn no_fork() -> MutexGuard<'static, ()> {
    FORK.lock().unwrap_or_else(|e| e.into_inner())
}

/// This test binary re-executed as the test `test`, playing `role` on the cache at `path`
/// (see `child`).
fn spawn_child(test: &str, role: &str, path: &Path) -> std::process::Child {
    let _g = no_fork();
    spawn_role(
        test,
        &[(ROLE, role.into()), (PATH, path.display().to_string())],
    )
}

/// Record number `i` of the consistency tests: every field is a function of `i`, v4 and v6
/// alternating, so a torn read shows as fields of two different `i`.
fn record_fields(i: u64) -> (SocketAddr, u32, u64, u64) {
    let port = (i % 65_000) as u16 + 1;
    let addr = if i.is_multiple_of(2) {
        SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(u128::from(i) << 64 | u128::from(i.wrapping_mul(7))),
            port,
            (i as u32) & 0xfffff,
            i as u32 ^ 0x5a5a,
        ))
    } else {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(i as u32), port))
    };
    (addr, (i % 4_000_000) as u32 + 1, i * 3, i * 5 + 1)
}

fn register_number(lfc: &Lfc, i: u64) {
    let (addr, pid, started, now) = record_fields(i);
    lfc.register_daemon(addr, pid, started, now);
}

/// Checks that `r` is exactly record number i for some i (with `generation - i` constant
/// `base`), returning i.
fn check_consistent(r: &DaemonRecord, base: u64) -> Result<u64, String> {
    let i = r.started_unix_ms / 3;
    let (addr, pid, started, now) = record_fields(i);
    let expect = DaemonRecord {
        addr,
        pid,
        started_unix_ms: started,
        heartbeat_ns: now,
        generation: i + base,
    };
    if *r == expect {
        Ok(i)
    } else {
        Err(format!("torn record {r:?}, expected {expect:?}"))
    }
}

/// The consistency tests read for at least `MIN_READ` and until they saw `MIN_DISTINCT`
/// different records (on a loaded machine the writer may get little CPU), at most `MAX_READ`.
const MIN_READ: Duration = Duration::from_millis(200);
const MAX_READ: Duration = Duration::from_secs(20);
const MIN_DISTINCT: u64 = 100;

fn reading(t0: Instant, distinct: u64) -> bool {
    let e = t0.elapsed();
    e < MAX_READ && (e < MIN_READ || distinct < MIN_DISTINCT)
}

/// Reads the record while a writer rewrites it with ever higher numbers (generation base 1):
/// every read must be one whole record, never older than the one before. Returns the distinct
/// records seen and the reads.
fn read_consistently(lfc: &Lfc) -> Result<(u64, u64), String> {
    let mut last = 0;
    let mut distinct = 0u64;
    let mut reads = 0u64;
    let t0 = Instant::now();
    while reading(t0, distinct) {
        let read_started = Instant::now();
        let Some(r) = lfc.daemon() else {
            // A read gives up only after a live writer stayed mid-write for its whole patience
            // (100 ms: the writer descheduled between its two stores), never sooner.
            if read_started.elapsed() >= Duration::from_millis(100) {
                continue;
            }
            return Err("no record, and the read did not wait out a writer mid-write".into());
        };
        let i = check_consistent(&r, 1)?;
        if i < last {
            return Err(format!("generation went backwards: {last} -> {i}"));
        }
        distinct += u64::from(i != last);
        last = i;
        reads += 1;
    }
    Ok((distinct, reads))
}

fn v4(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn register_heartbeat_and_clear() {
    let (_dir, lfc) = new_cache(64);
    assert_eq!(lfc.daemon(), None);
    assert_eq!(lfc.daemon_heartbeat_ns(), 0);
    assert_eq!(lfc.daemon_generation(), 0);
    // Heartbeats and clears without a record change nothing.
    lfc.daemon_heartbeat(123);
    lfc.clear_daemon(7);
    assert_eq!((lfc.daemon(), lfc.daemon_heartbeat_ns()), (None, 0));

    lfc.register_daemon(v4("127.0.0.1:6401"), 4242, 1_700_000_000_000, 1_000);
    let r = lfc.daemon().unwrap();
    assert_eq!(
        r,
        DaemonRecord {
            addr: v4("127.0.0.1:6401"),
            pid: 4242,
            started_unix_ms: 1_700_000_000_000,
            heartbeat_ns: 1_000,
            generation: 1,
        }
    );
    assert_eq!(lfc.daemon_heartbeat_ns(), 1_000);
    assert_eq!(lfc.daemon_generation(), 1);

    lfc.daemon_heartbeat(5_000);
    assert_eq!(lfc.daemon_heartbeat_ns(), 5_000);
    assert_eq!(lfc.daemon().unwrap().heartbeat_ns, 5_000);
    // Never backwards.
    lfc.daemon_heartbeat(4_000);
    assert_eq!(lfc.daemon_heartbeat_ns(), 5_000);
    assert!(lfc.daemon().unwrap().is_live(5_000 + DAEMON_STALE_NS - 1));
    assert!(!lfc.daemon().unwrap().is_live(5_000 + DAEMON_STALE_NS));

    // A second handle (as another process would) sees the same record.
    let other = Lfc::open(lfc.path()).unwrap();
    assert_eq!(other.daemon(), lfc.daemon());

    // Clearing for another pid leaves the record; for its own pid clears it.
    lfc.clear_daemon(4243);
    assert_eq!(lfc.daemon().unwrap().pid, 4242);
    other.clear_daemon(4242);
    assert_eq!(lfc.daemon(), None);
    assert_eq!(lfc.daemon_heartbeat_ns(), 0);
    assert_eq!(lfc.daemon_generation(), 0);
    // A late heartbeat does not revive it.
    lfc.daemon_heartbeat(9_000);
    assert_eq!((lfc.daemon(), lfc.daemon_heartbeat_ns()), (None, 0));

    // A restart gets a new generation; v6 with a scope id round-trips; now_ns 0 still counts
    // as registered.
    let v6: SocketAddr = "[fe80::1%3]:7000".parse().unwrap();
    lfc.register_daemon(v6, 99, 5, 0);
    let r = other.daemon().unwrap();
    assert_eq!((r.addr, r.pid, r.generation), (v6, 99, 2));
    assert_ne!(lfc.daemon_heartbeat_ns(), 0);
    // Registering over a record replaces it.
    lfc.register_daemon(v4("0.0.0.0:1"), 100, 6, 10);
    assert_eq!(lfc.daemon().unwrap().generation, 3);
    assert_eq!(lfc.daemon().unwrap().addr, v4("0.0.0.0:1"));
}

#[test]
fn the_record_survives_detach_and_reattach() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lfc");
    let lfc = Lfc::create(&path, 64).unwrap();
    lfc.register_daemon(v4("10.1.2.3:9"), 77, 1, 2);
    let before = lfc.daemon();
    drop(lfc);
    assert_eq!(Lfc::open(&path).unwrap().daemon(), before);
}

#[test]
fn record_reads_are_consistent_under_a_concurrent_writer() {
    let (_dir, lfc) = new_cache(64);
    register_number(&lfc, 0);
    let stop = AtomicBool::new(false);
    let (seen, reads) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut i = 1;
            while !stop.load(Ordering::Relaxed) {
                register_number(&lfc, i);
                i += 1;
            }
            i
        });
        let readers: Vec<_> = (0..2)
            .map(|_| s.spawn(|| read_consistently(&lfc)))
            .collect();
        // No panics before the writer is stopped: a failing reader must not hang the test.
        let results: Vec<_> = readers.into_iter().map(|h| h.join()).collect();
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        let results: Vec<(u64, u64)> = results
            .into_iter()
            .map(|r| r.expect("reader panicked").unwrap())
            .collect();
        (
            results.iter().map(|r| r.0).sum::<u64>(),
            results.iter().map(|r| r.1).sum::<u64>(),
        )
    });
    assert!(
        seen >= 2 * MIN_DISTINCT,
        "readers saw only {seen} distinct records in {reads} reads"
    );
}

fn child(role: &str, path: &str) -> ! {
    let lfc = Lfc::open(path).unwrap();
    match role {
        "writer" => {
            let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
            common::workload::stop_on_stdin_eof(stop);
            register_number(&lfc, 0);
            println!("READY");
            let mut i = 1;
            while !stop.load(Ordering::Relaxed) {
                register_number(&lfc, i);
                i += 1;
            }
            std::process::exit(0)
        }
        "die_mid_write" => {
            let me = std::process::id();
            lfc.register_daemon(v4("127.0.0.1:5000"), me, 1, 1);
            lfc.begin_daemon_write_and_abandon_for_test(me);
            // SAFETY: plain syscall; we want to die here, holding the record's writer word.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            unreachable!("SIGKILL")
        }
        "lock_holder" => {
            let _lock = lfc.lock_for_daemon().unwrap();
            lfc.register_daemon(v4("127.0.0.1:4242"), std::process::id(), 1, 1);
            println!("READY");
            // Held until the parent kills us.
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        _ => panic!("unknown role {role}"),
    }
}

fn child_role() {
    if let (Ok(role), Ok(path)) = (std::env::var(ROLE), std::env::var(PATH)) {
        child(&role, &path);
    }
}

#[test]
fn another_process_sees_the_record_and_reads_it_consistently_while_it_is_rewritten() {
    const TEST: &str =
        "another_process_sees_the_record_and_reads_it_consistently_while_it_is_rewritten";
    child_role();
    let (_dir, lfc) = new_cache(64);
    let mut c = spawn_child(TEST, "writer", lfc.path());
    wait_ready(&mut c);
    let (distinct, _) = read_consistently(&lfc).unwrap();
    drop(c.stdin.take());
    assert!(c.wait().unwrap().success());
    assert!(
        distinct >= MIN_DISTINCT,
        "saw only {distinct} records of the child"
    );
    let final_record = lfc.daemon().unwrap();
    check_consistent(&final_record, 1).unwrap();
}

#[test]
fn a_writer_killed_mid_write_blocks_no_one() {
    const TEST: &str = "a_writer_killed_mid_write_blocks_no_one";
    child_role();
    let (_dir, lfc) = new_cache(64);
    let mut c = spawn_child(TEST, "die_mid_write", lfc.path());
    // Reaped, so that its pid reads as dead.
    let status = c.wait().unwrap();
    assert!(!status.success());
    // The half-written record is never readable, and reading it does not wait out the
    // patience a live writer gets (`READ_PATIENCE`, 100 ms): the fastest of five reads is
    // judged, so that this test's own thread descheduled during one read decides nothing.
    let fastest = (0..5)
        .map(|_| {
            let t0 = Instant::now();
            assert_eq!(lfc.daemon(), None);
            t0.elapsed()
        })
        .min()
        .unwrap();
    assert!(fastest < Duration::from_millis(100), "{fastest:?}");
    // The next writer takes the dead writer's word over.
    let t0 = Instant::now();
    lfc.register_daemon(v4("127.0.0.1:6000"), 1234, 2, 3);
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    let r = lfc.daemon().unwrap();
    assert_eq!(
        (r.addr, r.pid, r.generation),
        (v4("127.0.0.1:6000"), 1234, 2)
    );
    lfc.clear_daemon(1234);
    assert_eq!(lfc.daemon(), None);
}

#[test]
fn the_daemon_lock_is_exclusive_and_names_the_holder() {
    let (_dir, a) = new_cache(64);
    let path = a.path();
    let b = Lfc::open(path).unwrap();
    let lock = a.lock_for_daemon().unwrap();
    assert_eq!(lock.path(), path);
    // Before the holder registers: refused, holder unknown.
    let e = b.lock_for_daemon().unwrap_err();
    assert!(
        matches!(e, DaemonLockError::Held { holder: None, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("another worker daemon"), "{e}");
    // Also through the very handle that holds it: one daemon per cache, not per handle.
    assert!(a.lock_for_daemon().is_err());

    let me = std::process::id();
    a.register_daemon(v4("127.0.0.1:6401"), me, 1, 1);
    let e = b.lock_for_daemon().unwrap_err();
    assert_eq!(e.holder_pid(), Some(me));
    assert_eq!(e.holder_addr(), Some(v4("127.0.0.1:6401")));
    assert_eq!(
        e.to_string(),
        format!(
            "LFC {} is served by daemon pid {me} on 127.0.0.1:6401",
            path.display()
        )
    );

    // Released on drop; the new holder starts from a clean record (the old daemon is gone).
    let g = no_fork();
    drop(lock);
    let lock_b = b.lock_for_daemon().unwrap();
    drop(g);
    assert_eq!(a.daemon(), None);
    assert!(a.lock_for_daemon().is_err());
    drop(lock_b);
    // The lock is independent of the shared flock of attached handles: re-creating the cache
    // is still refused while it is attached, and allowed once nobody is.
    assert!(matches!(
        Lfc::create(path, 64),
        Err(lfc::AttachError::InUse { .. })
    ));
}

#[test]
fn the_daemon_lock_of_a_killed_process_is_released_and_its_record_cleared() {
    const TEST: &str = "the_daemon_lock_of_a_killed_process_is_released_and_its_record_cleared";
    child_role();
    let (_dir, lfc) = new_cache(64);
    let mut c = spawn_child(TEST, "lock_holder", lfc.path());
    wait_ready(&mut c);
    let e = lfc.lock_for_daemon().unwrap_err();
    assert_eq!(e.holder_pid(), Some(c.id()), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("daemon pid {} on 127.0.0.1:4242", c.id())),
        "{e}"
    );
    assert_eq!(lfc.daemon().unwrap().pid, c.id());
    c.kill().unwrap();
    c.wait().unwrap();
    // The kernel dropped the dead process's lock: the next daemon gets it at once.
    let _lock = lfc.lock_for_daemon().unwrap();
    assert_eq!(lfc.daemon(), None);
    assert_eq!(lfc.daemon_heartbeat_ns(), 0);
}
