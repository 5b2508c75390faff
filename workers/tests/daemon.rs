//! The worker daemon and its LFC rendezvous: it records its address, pid and a heartbeat in the
//! cache, clears them on a clean stop, refuses to serve a cache another daemon serves, and
//! refuses a UDP address another socket uses (instead of joining its `SO_REUSEPORT` group).
//! Daemons run in threads of this process (`daemon::run` with a stop flag); each attaches the
//! cache through its own file description, so the daemon lock conflicts between them as it
//! would between processes.

use lfc::{DaemonLockError, Lfc};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use workers::daemon::{self, DaemonConfig, DaemonError, Started};
use workers::udp::IoChoice;

const PAGES: u64 = 256;

fn config(lfc: &Path, listen: SocketAddr) -> DaemonConfig {
    DaemonConfig {
        lfc: lfc.to_path_buf(),
        create_size_bytes: Some(PAGES * lfc::PAGE_SIZE as u64),
        recreate: false,
        listen,
        threads: 2,
        io: IoChoice::Epoll,
        metrics: None,
        pid_file: None,
        recv_buffer_bytes: 0,
        slots_per_thread: 8,
        gro: true,
        prefault: false,
        thread_class: None,
    }
}

fn localhost0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A daemon running in a thread of this process.
struct Running {
    stop: &'static AtomicBool,
    started: Started,
    thread: JoinHandle<Result<(), DaemonError>>,
}

impl Running {
    fn stop(self) -> Result<(), DaemonError> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("daemon thread panicked")
    }
}

/// Starts a daemon; Err when `run` returned before it started.
fn start(config: DaemonConfig) -> Result<Running, DaemonError> {
    let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        daemon::run(&config, stop, |s| {
            tx.send(s.clone()).unwrap();
        })
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(started) => Ok(Running {
            stop,
            started,
            thread,
        }),
        Err(_) => Err(thread
            .join()
            .expect("daemon thread panicked")
            .expect_err("run returned Ok without starting")),
    }
}

#[test]
fn a_running_daemon_is_recorded_in_the_lfc_with_a_heartbeat_and_cleared_on_stop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lfc");
    let d = start(config(&path, localhost0())).unwrap();
    let listen = d.started.listen;
    assert_ne!(listen.port(), 0, "port 0 resolves to a real port");
    // Any process attaching the cache sees the daemon as soon as it reports started.
    let lfc = Lfc::open(&path).unwrap();
    let r = lfc.daemon().expect("registered before on_started");
    assert_eq!(r.addr, listen);
    assert_eq!(r.pid, std::process::id());
    assert!(r.generation >= 1);
    assert_eq!(lfc.daemon_generation(), r.generation);
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(r.started_unix_ms <= wall_ms && wall_ms - r.started_unix_ms < 60_000);
    assert!(r.is_live(lfc::monotonic_ns()));
    // The heartbeat moves on its own, and stays fresh.
    let first = lfc.daemon_heartbeat_ns();
    let t0 = Instant::now();
    while lfc.daemon_heartbeat_ns() == first {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no heartbeat after {:?}",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(400));
    assert!(lfc.daemon().unwrap().is_live(lfc::monotonic_ns()));
    // All worker threads share the one port: datagrams to it land in this daemon's group (a
    // plain bind of that port is refused while the daemon runs).
    assert!(UdpSocket::bind(listen).is_err());

    d.stop().unwrap();
    assert_eq!(lfc.daemon(), None, "a clean stop clears the record");
    assert_eq!(lfc.daemon_heartbeat_ns(), 0);
    assert_eq!(lfc.daemon_generation(), 0);
    // And releases the lock: the next daemon may serve the cache, with a new generation.
    let lock = lfc.lock_for_daemon().unwrap();
    drop(lock);
    let d2 = start(config(&path, localhost0())).unwrap();
    assert!(lfc.daemon().unwrap().generation > r.generation);
    d2.stop().unwrap();
}

#[test]
fn a_second_daemon_for_the_same_lfc_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lfc");
    let first = start(config(&path, localhost0())).unwrap();
    // Another port, same cache: refused before it binds anything.
    let e = start(config(&path, localhost0())).err().expect("refused");
    match &e {
        DaemonError::DaemonLock(DaemonLockError::Held {
            holder: Some(h), ..
        }) => {
            assert_eq!(h.pid, std::process::id());
            assert_eq!(h.addr, first.started.listen);
        }
        other => panic!("expected the daemon lock to be held, got {other:?}"),
    }
    assert_eq!(
        e.to_string(),
        format!(
            "LFC {} is served by daemon pid {} on {}",
            path.display(),
            std::process::id(),
            first.started.listen
        )
    );
    // The refused daemon did not disturb the first one's record.
    let lfc = Lfc::open(&path).unwrap();
    assert_eq!(lfc.daemon().unwrap().addr, first.started.listen);
    first.stop().unwrap();
}

#[test]
fn a_daemon_on_a_port_bound_by_a_plain_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lfc");
    let squatter = UdpSocket::bind(localhost0()).unwrap();
    let addr = squatter.local_addr().unwrap();
    let e = start(config(&path, addr)).err().expect("refused");
    assert!(
        matches!(e, DaemonError::PortInUse { addr: a } if a == addr),
        "{e:?}"
    );
    assert!(e.to_string().contains("already in use"), "{e}");
    // It left no record and no lock behind: a daemon on a free port serves the cache.
    let lfc = Lfc::open(&path).unwrap();
    assert_eq!(lfc.daemon(), None);
    drop(lfc);
    let d = start(config(&path, localhost0())).unwrap();
    d.stop().unwrap();
}

#[test]
fn a_daemon_does_not_join_another_daemons_reuseport_group() {
    // The case: two daemons for two different caches on one port. The second used to
    // join the first's SO_REUSEPORT group silently and take half of its datagrams.
    let dir = tempfile::tempdir().unwrap();
    let first = start(config(&dir.path().join("a"), localhost0())).unwrap();
    let port = first.started.listen;
    let e = start(config(&dir.path().join("b"), port))
        .err()
        .expect("refused");
    assert!(
        matches!(e, DaemonError::PortInUse { addr } if addr == port),
        "{e:?}"
    );
    // The same with a lone reuseport socket of some other program.
    let other = workers::udp::bind_reuseport(localhost0(), 0).unwrap();
    let taken = other.local_addr().unwrap();
    let e = start(config(&dir.path().join("c"), taken))
        .err()
        .expect("refused");
    assert!(matches!(e, DaemonError::PortInUse { .. }), "{e:?}");
    first.stop().unwrap();
}

#[test]
fn the_metrics_endpoint_answers_health_and_reports_the_cache_and_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lfc");
    let mut cfg = config(&path, localhost0());
    cfg.metrics = Some(localhost0());
    let d = start(cfg).unwrap();
    let addr = d.started.metrics.expect("a metrics endpoint was asked for");
    // A hit counted by another process attached to the cache shows in the daemon's metrics.
    let lfc = Lfc::open(&path).unwrap();
    let tag = lfc::RelTag::new(1663, 5, 16384, 0).block(1);
    lfc.write(&tag, 0x20, &[7u8; lfc::PAGE_SIZE]).unwrap();
    assert!(lfc.lookup(&tag, &mut [0u8; lfc::PAGE_SIZE]).is_some());

    let health = workers::http::get(addr, "/healthz").unwrap();
    assert!(
        health.starts_with("HTTP/1.0 200 OK\r\n") && health.ends_with("\r\n\r\nok\n"),
        "{health}"
    );
    let metrics = workers::http::get(addr, "/metrics").unwrap();
    assert!(
        metrics.contains("\nudp_prefetch_lfc_hits_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nudp_prefetch_lfc_writes_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "\nudp_prefetch_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{metrics}"
    );
    // The process metrics of this (test) process, from the shared renderer.
    for family in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        assert!(
            metrics.contains(&format!("\n# TYPE {family} ")),
            "{family}: {metrics}"
        );
    }
    let threads: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("process_threads "))
        .expect("process_threads")
        .parse()
        .unwrap();
    assert!(threads > 1, "the daemon's threads are counted: {threads}");
    assert!(workers::http::get(addr, "/nothing")
        .unwrap()
        .starts_with("HTTP/1.0 404"));
    d.stop().unwrap();
}

/// The value of the metric line that starts with `name` (labels included) in `metrics`.
fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} in {metrics}"))
        .parse()
        .unwrap()
}

/// Polls `/metrics` until `done` holds, for at most 30 s; returns the last scrape.
fn scrape_until(addr: SocketAddr, what: &str, mut done: impl FnMut(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = workers::http::get(addr, "/metrics").unwrap();
        if done(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "never {what}: {m}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_flood_of_junk_cuts_the_socket_buffer_so_that_little_is_left_queued_when_it_stops() {
    use workers::datagram::DATAGRAM_LEN;
    use workers::junk::FLOOD_RECV_BUFFER;
    const BUFFER: &str = "udp_prefetch_thread_recv_buffer_bytes{thread=\"0\"}";
    const JUNK: &str = "udp_prefetch_datagrams_dropped_total{reason=\"bad_magic\"}";
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("lfc"), localhost0());
    cfg.metrics = Some(localhost0());
    cfg.threads = 1;
    // Room for thousands of datagrams: what a flood would leave queued without the cut.
    cfg.recv_buffer_bytes = 32 << 20;
    let d = start(cfg).unwrap();
    let addr = d.started.metrics.unwrap();
    // Set by the worker thread once it runs.
    let configured = metric(
        &scrape_until(addr, "a receive buffer", |m| metric(m, BUFFER) > 0),
        BUFFER,
    );
    assert!(
        configured > 4 * FLOOD_RECV_BUFFER as u64,
        "the configured buffer ({configured}) is larger than a flooded one"
    );

    // Full-size datagrams that fail the first check, as fast as one thread sends them.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flood = {
        let (stop, target) = (stop.clone(), d.started.listen);
        std::thread::spawn(move || {
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            let junk = vec![0x5au8; DATAGRAM_LEN];
            while !stop.load(Ordering::Relaxed) {
                let _ = tx.send_to(&junk, target);
            }
        })
    };
    scrape_until(addr, "throttled", |m| {
        metric(
            m,
            "udp_prefetch_thread_junk_throttled_windows_total{thread=\"0\"}",
        ) > 0
    });
    scrape_until(addr, "cut under the flood", |m| {
        metric(m, BUFFER) <= 2 * FLOOD_RECV_BUFFER as u64
    });
    // The flood goes on for twenty windows: long enough to fill an uncut buffer.
    std::thread::sleep(20 * Duration::from_nanos(workers::junk::WINDOW_NS));
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    let at_stop = metric(&workers::http::get(addr, "/metrics").unwrap(), JUNK);

    // A window within the budget ends the flood: the configured buffer is back.
    scrape_until(addr, "restored after the flood", |m| {
        metric(m, BUFFER) == configured
    });
    // What was turned away after the flood stopped, once the thread has been idle for ten
    // windows: what the cut buffer held, and what the thread's slots had taken in (8 slots of
    // up to 8 frames). Uncut, the buffer held thousands, turned away at 500 a window.
    let mut last = (at_stop, Instant::now());
    let after = scrape_until(addr, "idle after the flood", |m| {
        let junk = metric(m, JUNK);
        if junk != last.0 {
            last = (junk, Instant::now());
        }
        last.1.elapsed() >= Duration::from_millis(100)
    });
    let left = metric(&after, JUNK) - at_stop;
    let bound = (2 * FLOOD_RECV_BUFFER / DATAGRAM_LEN) as u64 + 64;
    assert!(
        left <= bound,
        "{left} junk datagrams left queued (at most {bound})"
    );
    d.stop().unwrap();
}
