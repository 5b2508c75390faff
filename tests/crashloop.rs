//! Issue 17 §6, crash loops with real processes: the worker daemon SIGKILLed mid-ingest and
//! restarted on the same LFC (as systemd restarts it) while scans run; then scan processes
//! SIGKILLed mid-read beside another scan of the same relation that keeps running.
//!
//! What must hold throughout: every scan that was not killed verifies every page and reads
//! exactly what a tcp-pipelined scan reads (same digest), and no page keeps it waiting 1 s or
//! more (`wait_max_us` of its report); after each restart, and at the end, `lfc stat --json` is
//! consistent (see [`assert_lfc_consistent`]).
//!
//! `UDPF_CRASHLOOP_ITERATIONS` kills of each kind (default 10, as CI runs it; 200 by hand for
//! the note). Needs no root. A summary line (`crashloop: …`) reports the figures.

mod common;

use common::{
    assert_every_page_verified, counter, lfc_stat, report, scan_command, scan_limit,
    wait_with_limit, Finished, ServerProc, StopOnDrop, WorkersProc,
};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Long enough at 100 µs per request that a kill lands while a scan is reading.
const PAGES: u64 = 32_768;
const SERVICE_DELAY_US: &str = "100";
/// Smaller than the relation: the scans evict, so the CLOCK sweep runs over frames the dead
/// left behind.
const DAEMON_FLAGS: [&str; 5] = ["--size", "128MiB", "--threads", "1", "--no-thread-classes"];
/// The longest any one page may keep a surviving scan waiting.
const MAX_STALL: Duration = Duration::from_secs(1);
/// Datagrams a daemon installs before it is killed: the kill lands mid-ingest.
const INSTALLS_BEFORE_KILL: u64 = 64;
/// Reads served from the LFC (hits and installs, by UDP or by the backends' TCP pipelines) since
/// a victim scan started before it is killed: it is reading. Counted by the daemon's installs
/// alone, a victim whose scans had moved to TCP pipelining (a loaded machine, a debug build)
/// read the whole relation before 256 datagrams came, and eleven such victims failed the test.
/// (The other scan reads meanwhile too: with the victim attached first, a thousand reads put
/// the kill a few milliseconds into its reading.)
const READS_BEFORE_SCAN_KILL: u64 = 1024;
/// How long waiting for either may take before the test fails (UDP not delivering at all).
const PROGRESS_LIMIT: Duration = Duration::from_secs(120);

fn iterations() -> u32 {
    match std::env::var("UDPF_CRASHLOOP_ITERATIONS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("UDPF_CRASHLOOP_ITERATIONS={v:?} is not a count")),
        Err(_) => 10,
    }
}

/// What the scans that ran to completion saw.
#[derive(Debug, Default)]
struct Seen {
    scans: u64,
    pages_verified: u64,
    max_stall_us: f64,
}

impl Seen {
    fn add(&mut self, other: Seen) {
        self.scans += other.scans;
        self.pages_verified += other.pages_verified;
        self.max_stall_us = self.max_stall_us.max(other.max_stall_us);
    }
}

/// Checks one completed scan: every page verified, the right pages, no stall of `MAX_STALL`.
fn check_scan(what: &str, done: &Finished, digest: &serde_json::Value, seen: &mut Seen) {
    let r = report(what, done);
    assert_every_page_verified(&r, PAGES);
    assert_eq!(
        &r["digest"], digest,
        "{what}: not the pages a TCP scan reads: {r}"
    );
    let stall_us = r["wait_max_us"]
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: scan --json lacks wait_max_us: {r}"));
    assert!(
        stall_us < MAX_STALL.as_secs_f64() * 1e6,
        "{what}: a page kept the scan waiting {:.3} s: {r}",
        stall_us / 1e6
    );
    seen.scans += 1;
    seen.pages_verified += counter(&r, "verified");
    seen.max_stall_us = seen.max_stall_us.max(stall_us);
}

fn spawn_scan(server: &ServerProc, lfc: &Path) -> Child {
    scan_command(server, lfc, "udp")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn udp-prefetch scan")
}

/// Runs udp scans back to back, each checked, until `stop` (the one under way then finishes).
fn scan_until(
    stop: &AtomicBool,
    server: &ServerProc,
    lfc: &Path,
    limit: Duration,
    digest: &serde_json::Value,
) -> Seen {
    let mut seen = Seen::default();
    while !stop.load(Ordering::Relaxed) {
        let done = wait_with_limit(spawn_scan(server, lfc), limit);
        check_scan("a scan beside the kills", &done, digest, &mut seen);
    }
    seen
}

/// Datagrams the daemon has installed since it started.
fn installed(workers: &WorkersProc) -> u64 {
    WorkersProc::metric(&workers.scrape(), "udp_prefetch_datagrams_installed_total")
}

/// Pages the LFC served or took in (every scan's reads, whichever path brought them).
fn lfc_reads(cache: &lfc::Lfc) -> u64 {
    let s = cache.stats();
    s.hits + s.installs
}

/// Whether process `pid` has `file` mapped (it attached to the LFC).
fn maps(pid: u32, file: &Path) -> bool {
    let file = file.to_string_lossy();
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .is_ok_and(|m| m.lines().any(|l| l.ends_with(file.as_ref())))
}

/// Waits until `workers` has installed `target` datagrams; false if `give_up` says so first.
fn wait_installed(workers: &WorkersProc, target: u64, give_up: impl FnMut() -> bool) -> bool {
    wait_until(
        || installed(workers) >= target,
        "the daemon installed",
        target,
        give_up,
    )
}

/// Waits until `done` holds (a count, `what`, reached `target`); false if `give_up` says so
/// first.
fn wait_until(
    mut done: impl FnMut() -> bool,
    what: &str,
    target: u64,
    mut give_up: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + PROGRESS_LIMIT;
    while !done() {
        if give_up() {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "{what} fewer than {target} in {} s: is anything delivering at all?",
            PROGRESS_LIMIT.as_secs()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Counters of `lfc stat --json` that only ever grow: they live in the shared file, so no
/// crash may take them back.
const MONOTONE: [&str; 17] = [
    "hits",
    "misses",
    "installs",
    "writes",
    "stale_rejects",
    "already_present",
    "no_room",
    "evictions",
    "capped_evictions",
    "reservations",
    "abandons",
    "lock_breaks",
    "reclaims",
    "busy",
    "requested_marks",
    "wait_arrivals",
    "wait_timeouts",
];

/// The invariants of `lfc stat --json` after a daemon (re)started on the cache: occupancy within
/// capacity; no frame left BUSY by a dead process (the starting daemon took them back); the
/// daemon registered and alive; counters plausible (below 2^48: a torn or wrapped counter would
/// not be) and never below what `before` showed.
fn assert_lfc_consistent(
    lfc: &Path,
    daemon_pid: u32,
    before: Option<&serde_json::Value>,
) -> serde_json::Value {
    let stat = lfc_stat(lfc);
    let get = |k: &str| {
        stat[k]
            .as_u64()
            .unwrap_or_else(|| panic!("lfc stat --json lacks {k}: {stat}"))
    };
    assert!(
        get("used_pages") + get("busy_pages") <= get("capacity_pages"),
        "more frames in use than the cache has: {stat}"
    );
    assert_eq!(
        get("busy_dead_pages"),
        0,
        "frames left reserved by dead processes after the daemon's start: {stat}"
    );
    assert_eq!(stat["daemon_alive"], true, "{stat}");
    assert_eq!(get("daemon_pid"), u64::from(daemon_pid), "{stat}");
    for k in MONOTONE {
        assert!(get(k) < 1 << 48, "implausible {k}: {stat}");
        if let Some(b) = before {
            assert!(
                get(k) >= b[k].as_u64().unwrap(),
                "{k} went back: {b} then {stat}"
            );
        }
    }
    stat
}

#[test]
fn scans_survive_daemon_and_scan_crash_loops() {
    let n = iterations();
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    let server = ServerProc::start(&[
        "--source",
        &format!("synthetic:pages={PAGES}"),
        "--service-delay-us",
        SERVICE_DELAY_US,
    ]);
    let mut workers = WorkersProc::start(&lfc, &DAEMON_FLAGS);
    let (limit, pipelined) = scan_limit(&server, &lfc, PAGES);
    let digest = &pipelined["digest"];
    let mut stat = assert_lfc_consistent(&lfc, workers.pid(), None);
    let mut seen = Seen::default();
    let stop = AtomicBool::new(false);

    // (a) The daemon SIGKILLed mid-ingest and restarted, `n` times, under back-to-back scans.
    let started = Instant::now();
    std::thread::scope(|s| {
        let scans = s.spawn(|| scan_until(&stop, &server, &lfc, limit, digest));
        let _stop = StopOnDrop(&stop);
        for _ in 0..n {
            if !wait_installed(&workers, INSTALLS_BEFORE_KILL, || scans.is_finished()) {
                break; // The scans failed: their panic is reported by the join below.
            }
            workers.kill();
            workers = WorkersProc::start(&lfc, &DAEMON_FLAGS);
            stat = assert_lfc_consistent(&lfc, workers.pid(), Some(&stat));
        }
        drop(_stop);
        seen.add(scans.join().expect("the scans beside the daemon kills"));
    });
    let daemon_phase = started.elapsed();

    // (b) A scan SIGKILLed mid-read, `n` times, beside another scan of the same relation.
    let started = Instant::now();
    stop.store(false, Ordering::Relaxed);
    let mut scan_kills = 0;
    let mut victims_finished = 0;
    let cache = lfc::Lfc::open(&lfc).expect("open the LFC to watch its counters");
    std::thread::scope(|s| {
        let scans = s.spawn(|| scan_until(&stop, &server, &lfc, limit, digest));
        let _stop = StopOnDrop(&stop);
        while scan_kills < n && !scans.is_finished() {
            let mut victim = spawn_scan(&server, &lfc);
            let pid = victim.id();
            let mut gone = || scans.is_finished() || victim.try_wait().unwrap().is_some();
            // Attached first (the victim maps the LFC), then reading: the other scan's reads
            // alone would count as the victim's before it had started.
            let reading = wait_until(|| maps(pid, &lfc), "victims attached", 1, &mut gone) && {
                let target = lfc_reads(&cache) + READS_BEFORE_SCAN_KILL;
                wait_until(
                    || lfc_reads(&cache) >= target,
                    "the LFC served or took in",
                    target,
                    &mut gone,
                )
            };
            // Vary where in its reading the victim dies.
            std::thread::sleep(Duration::from_millis(u64::from(scan_kills % 5) * 10));
            if reading && victim.try_wait().unwrap().is_none() {
                victim.kill().expect("SIGKILL the victim scan");
                victim.wait().expect("reap the victim scan");
                scan_kills += 1;
            } else {
                // It finished first: then it, too, must have read everything right.
                check_scan(
                    "a victim scan",
                    &wait_with_limit(victim, limit),
                    digest,
                    &mut seen,
                );
                victims_finished += 1;
                assert!(
                    victims_finished <= n,
                    "{victims_finished} victims finished before they could be killed: make \
                     the relation bigger"
                );
            }
        }
        drop(_stop);
        seen.add(scans.join().expect("the scan beside the scan kills"));
    });
    drop(cache);
    assert_eq!(scan_kills, n, "the surviving scans stopped");
    let scan_phase = started.elapsed();

    // The next attach: a clean restart takes back what the killed scans left reserved, and the
    // next scan reads every page right through the cache they shared.
    assert_eq!(
        workers
            .terminate(Duration::from_secs(30))
            .and_then(|s| s.code()),
        Some(0),
        "the daemon's clean stop"
    );
    let workers = WorkersProc::start(&lfc, &DAEMON_FLAGS);
    let stat = assert_lfc_consistent(&lfc, workers.pid(), Some(&stat));
    let done = wait_with_limit(spawn_scan(&server, &lfc), limit);
    check_scan("the scan after the crash loops", &done, digest, &mut seen);
    assert_lfc_consistent(&lfc, workers.pid(), Some(&stat));
    println!(
        "crashloop: {n} daemon kills in {:.1} s, {scan_kills} scan kills in {:.1} s \
         ({victims_finished} victims finished first); {} scans completed, {} pages verified, \
         max stall {:.1} ms; {} frames reclaimed, {} locks broken",
        daemon_phase.as_secs_f64(),
        scan_phase.as_secs_f64(),
        seen.scans,
        seen.pages_verified,
        seen.max_stall_us / 1e3,
        stat["reclaims"],
        stat["lock_breaks"],
    );
}
