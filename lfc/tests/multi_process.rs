//! Multi-process stress: 3 processes x 2 threads (a writer/installer and a checking reader) on
//! one file, plus the parent's own final check. Children are this test binary re-executed with
//! `LFC_STRESS_ROLE` set.

mod common;

use common::check_page;
use common::workload::{
    reader, spawn_role, stop_on_stdin_eof, universe, universe_tag, wait_ready, writer, Report,
};
use lfc::{Lfc, PAGE_SIZE};
use std::sync::atomic::AtomicBool;

const TEST: &str = "three_processes_two_threads_each_never_see_torn_or_stale_pages";
const PROCESSES: u64 = 3;
const UNIVERSE: u64 = 600;
const CAPACITY: u64 = 256;
/// Run length per child, in milliseconds (override with LFC_STRESS_MS).
const DEFAULT_MS: u64 = 3000;

static STOP: AtomicBool = AtomicBool::new(false);

fn child(path: &str, index: u64) -> ! {
    let lfc = Lfc::open(path).unwrap();
    stop_on_stdin_eof(&STOP);
    let tags = universe(&lfc, UNIVERSE, false);
    let report = std::thread::scope(|s| {
        let w = s.spawn(|| {
            writer(
                &lfc,
                &tags,
                &|i| i % PROCESSES == index,
                17 + index,
                2,
                &STOP,
            )
        });
        let r = s.spawn(|| reader(&lfc, &tags, 1001 + index, &STOP));
        println!("READY");
        let mut rep = Report::default();
        rep.merge(w.join().unwrap());
        rep.merge(r.join().unwrap());
        rep
    });
    println!(
        "child {index}: {} ops, {} hits, max op {:?}",
        report.ops, report.hits, report.max_op
    );
    for v in &report.violations {
        eprintln!("child {index}: VIOLATION {v}");
    }
    std::process::exit(if report.violations.is_empty() { 0 } else { 1 })
}

#[test]
fn three_processes_two_threads_each_never_see_torn_or_stale_pages() {
    if let Ok(role) = std::env::var("LFC_STRESS_ROLE") {
        let path = std::env::var("LFC_STRESS_PATH").unwrap();
        child(&path, role.parse().unwrap());
    }
    let ms: u64 = std::env::var("LFC_STRESS_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MS);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lfc");
    let lfc = Lfc::create(&path, CAPACITY).unwrap();
    let mut children: Vec<_> = (0..PROCESSES)
        .map(|i| {
            spawn_role(
                TEST,
                &[
                    ("LFC_STRESS_ROLE", i.to_string()),
                    ("LFC_STRESS_PATH", path.display().to_string()),
                ],
            )
        })
        .collect();
    for c in &mut children {
        wait_ready(c);
    }
    // The run length is the workload's size, not a wait for some event: nothing is asserted on time.
    std::thread::sleep(std::time::Duration::from_millis(ms));
    for c in &mut children {
        drop(c.stdin.take());
    }
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        print!("{}", String::from_utf8_lossy(&out.stdout));
        assert!(out.status.success(), "child {i} failed: {:?}", out.status);
    }
    let s = lfc.stats();
    println!("{s:?}");
    assert!(
        s.hits > 1000 && s.installs > 100 && s.writes > 100 && s.evictions > 100,
        "{s:?}"
    );
    assert_eq!(
        s.busy_pages, 0,
        "every reservation was published or abandoned"
    );
    let mut out = [0u8; PAGE_SIZE];
    for i in 0..UNIVERSE {
        let t = universe_tag(i);
        let lw = lfc.lwlsn(&t);
        if lfc.lookup(&t, &mut out).is_some() {
            let lsn = check_page(&t, &out).unwrap();
            assert!(lsn >= lw, "{t}: {lsn} < lwlsn {lw}");
        }
    }
}

const WAKE_TEST: &str = "a_waiter_is_woken_by_an_install_in_another_process";

#[test]
fn a_waiter_is_woken_by_an_install_in_another_process() {
    let t = universe_tag(7);
    if let Ok(path) = std::env::var("LFC_WAKE_PATH") {
        let lfc = Lfc::open(path).unwrap();
        println!("READY");
        // The waiter's registration is in the shared file: install only once it sleeps there.
        while lfc.arrival_waiters(&t) == 0 {
            std::thread::yield_now();
        }
        let got = lfc.install_prefetched(&t, 0, &common::make_page(&t, 0));
        std::process::exit(if got == lfc::InstallOutcome::Installed {
            0
        } else {
            1
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lfc");
    let lfc = Lfc::create(&path, 16).unwrap();
    let mut child = spawn_role(WAKE_TEST, &[("LFC_WAKE_PATH", path.display().to_string())]);
    wait_ready(&mut child);
    let limit = std::time::Duration::from_secs(10);
    let started = std::time::Instant::now();
    assert!(lfc.wait_for_arrival(&t, limit));
    assert!(
        started.elapsed() < limit,
        "woken by the other process, not by the timeout"
    );
    assert!(child.wait().unwrap().success());
}
