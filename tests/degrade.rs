//! Issue 13 end to end, with real processes: a backend finds its worker daemon through the LFC,
//! a scan survives the daemon's death, absence or pause by TCP pipelining (every page verified),
//! and a second daemon on the same LFC or on a UDP port in use is refused (exit 2).
//!
//! No assertion here is on speed: a scan that would crawl (one full wait and one synchronous
//! GetPage per page, as before issue 13) is caught by its counters, and by a generous limit on
//! its run time — many times a tcp-pipelined scan of the same relation measured in the same
//! test — that only turns a crawl of minutes into a failure instead of a hung test.

mod common;

use common::{
    assert_every_page_verified, counter, lfc_stat, report, run_with_limit, scan_command,
    scan_limit, wait_with_limit, ServerProc, WorkersProc, BIN,
};
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Relation size of the fault tests: long enough at 100 µs per request that a fault injected
/// early lands while the scan is running.
const PAGES: u64 = 32_768;
const SERVICE_DELAY_US: &str = "100";
/// How long a refused daemon may take to exit.
const REFUSAL_LIMIT: Duration = Duration::from_secs(30);

fn spawn_scan(server: &ServerProc, lfc: &Path, mode: &str) -> Child {
    scan_command(server, lfc, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn udp-prefetch scan")
}

/// A udp scan under a fault must not degrade to one full wait per page: at most an eighth of
/// the pages may have waited out their budget (before issue 13, about half of them did).
fn assert_no_crawl(r: &serde_json::Value) {
    let pages = counter(r, "pages");
    assert!(
        counter(r, "wait_timeouts") < pages / 8,
        "reads kept waiting out their budget instead of moving to TCP pipelining: {r}"
    );
}

/// Waits until the daemon has installed `pages` datagrams: UDP is delivering. (Pages in the LFC
/// say less: a backend that moved to TCP pipelining installs its pages too.) False when the
/// scan ended first.
fn wait_for_udp_installs(workers: &WorkersProc, pages: u64, scan: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let installed =
            WorkersProc::metric(&workers.scrape(), "udp_prefetch_datagrams_installed_total");
        if installed >= pages {
            return true;
        }
        if let Some(status) = scan.try_wait().expect("try_wait") {
            eprintln!("the scan exited ({status}) before the daemon installed {pages} pages");
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not install {pages} pages in 60 s: is UDP prefetch delivering?"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn fault_server() -> ServerProc {
    ServerProc::start(&[
        "--source",
        &format!("synthetic:pages={PAGES}"),
        "--service-delay-us",
        SERVICE_DELAY_US,
    ])
}

/// A udp scan under way with a fault in its worker daemon: the daemon serves a fresh LFC, the
/// tcp-pipelined reference scan is measured, the daemon installed 256 of the udp scan's pages
/// (UDP is delivering) before the fault, and the scan was still running after it.
struct UdpScanUnderWay {
    workers: WorkersProc,
    scan: Child,
    /// How long the faulted scan may run (see `scan_limit`).
    limit: Duration,
    /// The tcp-pipelined scan's report: the udp scan must read the same pages.
    pipelined: serde_json::Value,
    // Dropped after the daemon, in this order, as locals of the test would be.
    _server: ServerProc,
    _dir: tempfile::TempDir,
}

/// Attempts at a scan that is still on UDP when the fault is due.
const SET_UP_ATTEMPTS: u32 = 3;

/// A udp scan under way, then `fault` done to its daemon. An attempt whose scan ended before
/// the fault landed (on a loaded machine a scan that left UDP can get its 256th install late,
/// near its end) is no evidence: `undo` is done (the daemon must not stay stopped) and a fresh
/// attempt made.
fn udp_scan_under_fault(
    fault: impl Fn(&mut WorkersProc),
    undo: impl Fn(&mut WorkersProc),
) -> UdpScanUnderWay {
    for _ in 0..SET_UP_ATTEMPTS {
        let Some(mut under_way) = try_udp_scan_under_way() else {
            continue;
        };
        fault(&mut under_way.workers);
        if under_way.scan.try_wait().expect("try_wait").is_none() {
            return under_way;
        }
        eprintln!("the scan ended before the fault landed: another attempt");
        undo(&mut under_way.workers);
    }
    panic!(
        "in {SET_UP_ATTEMPTS} attempts no udp scan got 256 pages by UDP and was still running \
         when the fault landed: is UDP prefetch delivering at all?"
    );
}

/// One attempt: None when the scan moved to TCP (the machine too busy for UDP to win, which
/// the read path rightly answers with TCP pipelining) and ended before the fault could land.
fn try_udp_scan_under_way() -> Option<UdpScanUnderWay> {
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    let server = fault_server();
    // The faults need a scan that is on UDP when they strike. A SCHED_BATCH daemon waits for
    // any running thread's slice before it receives, so on a loaded test machine the scan
    // could leave UDP before the daemon installed anything; in the default class it is
    // scheduled as promptly as the scan, and the fault, not the machine's load, is what moves
    // the scan to TCP.
    let workers = WorkersProc::start(
        &lfc,
        &["--size", "128MiB", "--threads", "1", "--no-thread-classes"],
    );
    let (limit, pipelined) = scan_limit(&server, &lfc, PAGES);
    let mut scan = spawn_scan(&server, &lfc, "udp");
    if !wait_for_udp_installs(&workers, 256, &mut scan) {
        return None;
    }
    Some(UdpScanUnderWay {
        workers,
        scan,
        limit,
        pipelined,
        _server: server,
        _dir: dir,
    })
}

fn workers_command(lfc: &Path, listen: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("workers")
        .arg("--lfc")
        .arg(lfc)
        .args(["--size", "8MiB", "--listen", listen])
        .env("RUST_LOG", "warn");
    cmd
}

// ---- (a) the rendezvous ------------------------------------------------------------------------

#[test]
fn udp_scan_without_prefetch_port_finds_the_daemon_through_the_lfc() {
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    // 20 000 pages, not a few thousand: on a loaded machine the first datagrams can come late,
    // the backend rightly leaves UDP at its first read, and a short scan then closed its
    // connection before the page server sent anything (its queued prefetches are dropped with
    // the connection), so the daemon received nothing (`.ci/run` failed so 3 times in 6). A
    // longer scan keeps the connection while the first window goes out, and probes UDP again.
    let server = ServerProc::start(&["--source", "synthetic:pages=20000"]);
    let workers = WorkersProc::start(
        &lfc,
        &["--size", "64MiB", "--threads", "1", "--no-thread-classes"],
    );
    // (--no-thread-classes: see `udp_scan_under_way`.) No --prefetch-port: the daemon's
    // ephemeral port is known only to the LFC header.
    let done = run_with_limit(
        &mut scan_command(&server, &lfc, "udp"),
        Duration::from_secs(120),
    );
    let r = report("udp scan", &done);
    assert_every_page_verified(&r, 20000);
    // Found through the LFC: the backend started on UDP with the daemon's address from the
    // header, and the daemon received what the page server sent there. (Whether UDP then won
    // against TCP pipelining depends on the machine's load, and is not this test's question.)
    let udp_port = workers.udp_port;
    let start = &r["udp_state_log"][0];
    assert_eq!(start["to"], "udp", "{r}");
    assert!(
        start["reason"].as_str().is_some_and(
            |why| why.starts_with("worker daemon at") && why.ends_with(&format!(":{udp_port}"))
        ),
        "the scan did not take the daemon's address from the LFC: {r}"
    );
    // The daemon may not have run since the datagrams reached its socket (a loaded machine):
    // wait for its first install, bounded.
    let installed =
        |text: &str| WorkersProc::metric(text, "udp_prefetch_datagrams_installed_total") > 0;
    assert!(
        installed(&workers.scrape_until(Duration::from_secs(20), installed)),
        "the daemon received nothing"
    );
}

// ---- (b) the scan survives the daemon ----------------------------------------------------------

#[test]
fn udp_scan_completes_over_tcp_pipelining_when_the_daemon_is_sigkilled_mid_scan() {
    let under_way = udp_scan_under_fault(WorkersProc::kill, |_| {});
    let r = report(
        "udp scan, daemon killed",
        &wait_with_limit(under_way.scan, under_way.limit),
    );
    assert_every_page_verified(&r, PAGES);
    assert_eq!(
        r["digest"], under_way.pipelined["digest"],
        "the same pages as over TCP"
    );
    assert!(
        counter(&r, "hits") + counter(&r, "late_hits") > 0,
        "UDP delivered before the kill: {r}"
    );
    assert!(
        counter(&r, "tcp_pipelined") > 0,
        "the rest of the scan was not read through the TCP pipeline: {r}"
    );
    assert!(counter(&r, "udp_state_changes") >= 1, "{r}");
    assert_no_crawl(&r);
}

#[test]
fn udp_scan_with_no_daemon_on_the_lfc_reads_everything_over_tcp_pipelining() {
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    // A cache nobody serves: created, never attached by a daemon.
    drop(lfc::Lfc::create(&lfc, PAGES + 8192).expect("create the LFC"));
    let server = fault_server();
    let (limit, pipelined) = scan_limit(&server, &lfc, PAGES);
    let r = report(
        "udp scan, no daemon",
        &run_with_limit(&mut scan_command(&server, &lfc, "udp"), limit),
    );
    assert_every_page_verified(&r, PAGES);
    assert_eq!(r["digest"], pipelined["digest"]);
    assert_eq!(counter(&r, "hits") + counter(&r, "late_hits"), 0, "{r}");
    assert!(
        counter(&r, "tcp_pipelined") > PAGES / 2,
        "without a daemon the scan is a TCP pipeline: {r}"
    );
    assert_no_crawl(&r);
}

#[test]
fn a_backend_that_receives_its_own_prefetches_reads_by_udp_beside_a_dead_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    let server = fault_server();
    // The cache's daemon SIGKILLed: its record stays in the header, its heartbeat ages.
    let mut workers = WorkersProc::start(&lfc, &["--size", "512MiB"]);
    workers.kill();
    drop(workers);
    let (limit, pipelined) = scan_limit(&server, &lfc, PAGES);
    let r = report(
        "udp scan receiving its own prefetches, daemon dead",
        &run_with_limit(
            scan_command(&server, &lfc, "udp").args(["--receive", "backend"]),
            limit,
        ),
    );
    assert_every_page_verified(&r, PAGES);
    assert_eq!(
        r["digest"], pipelined["digest"],
        "the same pages as over TCP"
    );
    let installed = counter(&r, "installed_by_backend");
    assert!(installed > 0, "the backend installed nothing itself: {r}");
    assert!(
        counter(&r, "hits") + counter(&r, "late_hits") > 0,
        "no read found a page the backend received: {r}"
    );
    // Its path is its own: the dead daemon moved nothing.
    let log = r["udp_state_log"].as_array().expect("udp_state_log");
    assert!(
        log[0]["reason"]
            .as_str()
            .is_some_and(|s| s.contains("receives its prefetches itself")),
        "{r}"
    );
    assert!(
        log.iter()
            .all(|c| !c["reason"].as_str().unwrap_or("").contains("daemon")),
        "a backend receiving itself moved because of the daemon: {r}"
    );
    assert_no_crawl(&r);
}

#[test]
fn receive_backend_refuses_a_daemon_port_and_the_tcp_modes() {
    let scan = |extra: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["scan", "--server", "127.0.0.1:1", "--rel", "1663/5/16384/0"])
            .args(extra);
        cmd
    };
    common::fails_with(
        &mut scan(&[
            "--mode",
            "udp",
            "--receive",
            "backend",
            "--prefetch-port",
            "6401",
        ]),
        2,
        "--prefetch-port 6401 names the worker daemon's port",
    );
    common::fails_with(
        &mut scan(&["--mode", "tcp-pipelined", "--receive", "backend"]),
        2,
        "--receive backend is for --mode udp",
    );
}

#[test]
fn udp_scan_completes_when_the_daemon_is_sigstopped_mid_scan() {
    let mut under_way =
        udp_scan_under_fault(|w| w.signal(libc::SIGSTOP), |w| w.signal(libc::SIGCONT));
    // Paused for 2 s or until the scan ends, whichever is first; then continued.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && under_way.scan.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(10));
    }
    under_way.workers.signal(libc::SIGCONT);
    let r = report(
        "udp scan, daemon paused",
        &wait_with_limit(under_way.scan, under_way.limit),
    );
    assert_every_page_verified(&r, PAGES);
    assert_eq!(r["digest"], under_way.pipelined["digest"]);
    assert!(
        counter(&r, "tcp_pipelined") > 0,
        "nothing was read through the TCP pipeline while the daemon was stopped: {r}"
    );
    assert_no_crawl(&r);
    // The daemon is still healthy after SIGCONT.
    assert!(under_way
        .workers
        .scrape()
        .contains("udp_prefetch_datagrams_installed_total"));
}

// ---- (c) one daemon per LFC, one daemon per port -----------------------------------------------

#[test]
fn second_daemon_on_the_same_lfc_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    let first = WorkersProc::start(&lfc, &["--size", "8MiB", "--threads", "1"]);
    let done = run_with_limit(&mut workers_command(&lfc, "127.0.0.1:0"), REFUSAL_LIMIT);
    assert!(
        done.status.is_some(),
        "a second daemon on the same LFC was not refused (still running after {} s)",
        REFUSAL_LIMIT.as_secs()
    );
    assert_eq!(done.code(), Some(2), "stderr: {}", done.stderr);
    assert!(
        done.stderr.contains(&first.pid().to_string()),
        "the refusal names the first daemon (pid {}): {}",
        first.pid(),
        done.stderr
    );
    // The refusal did not disturb the first daemon's registration.
    let stat = lfc_stat(&lfc);
    assert_eq!(stat["daemon_alive"], true, "{stat}");
    assert_eq!(stat["daemon_pid"], first.pid(), "{stat}");
    let addr = stat["daemon_addr"].as_str().unwrap_or_default();
    assert!(
        addr.ends_with(&format!(":{}", first.udp_port)),
        "daemon_addr {addr:?} is the first daemon's port {}",
        first.udp_port
    );
}

#[test]
fn lfc_stat_shows_the_daemon_and_a_killed_daemons_lfc_can_be_served_again() {
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    let mut first = WorkersProc::start(&lfc, &["--size", "8MiB", "--threads", "1"]);
    let stat = lfc_stat(&lfc);
    assert_eq!(stat["daemon_alive"], true, "{stat}");
    assert_eq!(stat["daemon_pid"], first.pid(), "{stat}");
    assert!(stat["daemon_heartbeat_age_ms"].is_u64(), "{stat}");
    assert!(stat["daemon_addr"].is_string(), "{stat}");

    // A crash leaves the record behind, but not alive, and releases the lock with the process.
    first.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    let stat = loop {
        let stat = lfc_stat(&lfc);
        if stat["daemon_alive"] == false || Instant::now() > deadline {
            break stat;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(stat["daemon_alive"], false, "{stat}");
    let mut second = WorkersProc::start(&lfc, &["--threads", "1"]);
    let stat = lfc_stat(&lfc);
    assert_eq!(stat["daemon_alive"], true, "{stat}");
    assert_eq!(stat["daemon_pid"], second.pid(), "{stat}");

    // A clean stop clears the registration.
    assert_eq!(
        second
            .terminate(Duration::from_secs(10))
            .and_then(|s| s.code()),
        Some(0)
    );
    let stat = lfc_stat(&lfc);
    assert_eq!(stat["daemon_alive"], false, "{stat}");
}

#[test]
fn daemon_on_a_udp_port_another_socket_uses_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A plain socket (no SO_REUSEPORT) holds the port.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let done = run_with_limit(
        &mut workers_command(&dir.path().join("lfc1"), &format!("127.0.0.1:{port}")),
        REFUSAL_LIMIT,
    );
    assert!(done.status.is_some(), "not refused: still running");
    assert_eq!(done.code(), Some(2), "stderr: {}", done.stderr);
    assert!(
        done.stderr.contains(&port.to_string()),
        "the refusal names the port {port}: {}",
        done.stderr
    );
}

#[test]
fn daemon_on_the_port_of_another_lfcs_daemon_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Another daemon's SO_REUSEPORT group holds the port: joining it would split the datagrams
    // between two caches (issue 13).
    let first = WorkersProc::start(&dir.path().join("lfc1"), &["--size", "8MiB"]);
    let port = first.udp_port;
    let done = run_with_limit(
        &mut workers_command(&dir.path().join("lfc2"), &format!("127.0.0.1:{port}")),
        REFUSAL_LIMIT,
    );
    assert!(
        done.status.is_some(),
        "a second daemon joined the first one's port {port}"
    );
    assert_eq!(done.code(), Some(2), "stderr: {}", done.stderr);
    assert!(
        done.stderr.contains(&port.to_string()),
        "the refusal names the port {port}: {}",
        done.stderr
    );
    // The first daemon still serves its LFC.
    assert!(first
        .scrape()
        .contains("udp_prefetch_datagrams_received_total"));
}
