//! Crash test: victim processes hammer the cache (writes, drops, installs, reservations held
//! across operations) and are SIGKILLed at random moments, at least 200 times, while survivor
//! processes keep reading, checking and writing. Every survivor operation must complete within
//! 1 s (a dead lock owner must never block them), no survivor may see a torn or stale page, and a
//! final scan must find none either, with every frame of the dead reclaimable. A second run
//! draws every tag from two neighbouring home buckets, so that kills land in overflow links,
//! unlinks and repairs across buckets.

mod common;

use common::workload::{
    reader, spawn_role, stop_on_stdin_eof, universe, wait_ready, writer, Report,
};
use common::{check_page, Rng};
use lfc::{Lfc, PAGE_SIZE};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

const TEST: &str = "survivors_stay_live_and_correct_across_sigkills";
const TEST_COLLIDING: &str = "survivors_stay_live_and_correct_across_sigkills_in_overflowing_homes";
const UNIVERSE: u64 = 256;
const CAPACITY: u64 = 64;
/// Tags i with i % 4 in {0, 1} belong to the two survivors, 2 and 3 to the two victim slots.
const OWNER_CLASSES: u64 = 4;
const DEFAULT_KILLS: u64 = 200;
const MAX_OP: Duration = Duration::from_secs(1);

static STOP: AtomicBool = AtomicBool::new(false);

fn child(path: &str, role: &str, class: u64, colliding: bool) -> ! {
    let lfc = Lfc::open(path).unwrap();
    let tags = universe(&lfc, UNIVERSE, colliding);
    stop_on_stdin_eof(&STOP);
    let owned = move |i: u64| i % OWNER_CLASSES == class;
    let report = std::thread::scope(|s| {
        let seed = u64::from(std::process::id());
        // Victims hold reservations across operations so that kills leave some behind.
        let hold = if role == "victim" { 3 } else { 0 };
        let (lfc, tags) = (&lfc, &tags);
        let w = s.spawn(move || writer(lfc, tags, &owned, seed, hold, &STOP));
        let r = s.spawn(move || reader(lfc, tags, seed ^ 0xabc, &STOP));
        println!("READY");
        let mut rep = Report::default();
        rep.merge(w.join().unwrap());
        rep.merge(r.join().unwrap());
        rep
    });
    if report.max_op >= MAX_OP {
        eprintln!(
            "{role} {class}: VIOLATION an operation took {:?}",
            report.max_op
        );
    }
    for v in &report.violations {
        eprintln!("{role} {class}: VIOLATION {v}");
    }
    println!(
        "{role} {class}: {} ops, {} hits, max op {:?}",
        report.ops, report.hits, report.max_op
    );
    let ok = report.violations.is_empty() && report.max_op < MAX_OP;
    std::process::exit(if ok { 0 } else { 1 })
}

#[test]
fn survivors_stay_live_and_correct_across_sigkills() {
    run(TEST, false);
}

#[test]
fn survivors_stay_live_and_correct_across_sigkills_in_overflowing_homes() {
    run(TEST_COLLIDING, true);
}

fn run(test: &str, colliding: bool) {
    if let Ok(role) = std::env::var("LFC_CRASH_ROLE") {
        let path = std::env::var("LFC_CRASH_PATH").unwrap();
        let class = std::env::var("LFC_CRASH_CLASS").unwrap().parse().unwrap();
        child(&path, &role, class, colliding);
    }
    let kills: u64 = std::env::var("LFC_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_KILLS);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lfc");
    let lfc = Lfc::create(&path, CAPACITY).unwrap();
    let tags = universe(&lfc, UNIVERSE, colliding);
    let spawn = |role: &str, class: u64| {
        spawn_role(
            test,
            &[
                ("LFC_CRASH_ROLE", role.to_string()),
                ("LFC_CRASH_PATH", path.display().to_string()),
                ("LFC_CRASH_CLASS", class.to_string()),
            ],
        )
    };
    let mut survivors: Vec<_> = (0..2).map(|c| spawn("survivor", c)).collect();
    for s in &mut survivors {
        wait_ready(s);
    }
    let mut rng = Rng(0x5eed);
    let mut victims: Vec<_> = (2..4).map(|c| Some(spawn("victim", c))).collect();
    for k in 0..kills {
        let slot = (k % 2) as usize;
        let mut v = victims[slot]
            .take()
            .unwrap_or_else(|| spawn("victim", 2 + slot as u64));
        wait_ready(&mut v);
        // A random moment inside the victim's operation loop: the delay is the randomisation of
        // the kill point, nothing waits for anything to happen.
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        v.kill().unwrap();
        // Reap at once: an unreaped zombie still counts as alive for kill(pid, 0).
        v.wait().unwrap();
        victims[slot] = Some(spawn("victim", 2 + slot as u64));
    }
    for v in victims.iter_mut().flatten() {
        v.kill().unwrap();
        v.wait().unwrap();
    }
    for s in &mut survivors {
        drop(s.stdin.take());
    }
    for (i, s) in survivors.into_iter().enumerate() {
        let out = s.wait_with_output().unwrap();
        print!("{}", String::from_utf8_lossy(&out.stdout));
        assert!(
            out.status.success(),
            "survivor {i} failed: {:?}",
            out.status
        );
    }

    // Final scan: every cached page intact and not older than its lwlsn.
    let mut out = [0u8; PAGE_SIZE];
    for t in &tags {
        let lw = lfc.lwlsn(t);
        if lfc.lookup(t, &mut out).is_some() {
            let lsn = check_page(t, &out).unwrap_or_else(|e| panic!("final scan: {e}"));
            assert!(lsn >= lw, "final scan: {t} at {lsn} older than lwlsn {lw}");
        }
    }
    if colliding {
        // 64 cached pages of two homes cannot fit in their 30 entries: the homes overflowed.
        let cached = tags.iter().filter(|t| lfc.contains(t)).count();
        let spread = lfc.overflow_distance(0).max(lfc.overflow_distance(1));
        assert!(
            cached <= 30 || spread > 0,
            "{cached} pages cached in two homes without overflow"
        );
        assert!(
            cached > 30,
            "only {cached} pages cached: overflow not exercised"
        );
    }
    // Every frame the dead left BUSY is reclaimable: we can reserve the whole cache.
    let all: Vec<_> = (0..CAPACITY).map_while(|_| lfc.reserve()).collect();
    assert_eq!(
        all.len() as u64,
        CAPACITY,
        "frames leaked by dead processes"
    );
    drop(all);
    let s = lfc.stats();
    println!("{kills} kills; {s:?}");
    assert!(
        s.reclaims > 0,
        "the kills never left a frame to reclaim: {s:?}"
    );
    assert_eq!(s.busy_pages, 0);
}

const TEST_RECLAIM: &str = "a_dead_processs_reservations_are_counted_and_reclaimed_at_once";

/// What the worker daemon does at start after a crash: `lfc stat` counts the frames a SIGKILLed
/// process left reserved as dead, and `reclaim_dead_frames` frees exactly those, leaving a live
/// process's reservations alone.
#[test]
fn a_dead_processs_reservations_are_counted_and_reclaimed_at_once() {
    const HELD: usize = 5;
    if let Ok(path) = std::env::var("LFC_RECLAIM_PATH") {
        let lfc = Lfc::open(&path).unwrap();
        let held: Vec<_> = (0..HELD).map(|_| lfc.reserve().unwrap()).collect();
        println!("READY");
        std::mem::forget(held);
        // Killed by the parent while holding them.
        loop {
            std::thread::park();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lfc");
    let lfc = Lfc::create(&path, CAPACITY).unwrap();
    let mine = lfc.reserve().unwrap();
    let mut victim = spawn_role(
        TEST_RECLAIM,
        &[("LFC_RECLAIM_PATH", path.display().to_string())],
    );
    wait_ready(&mut victim);
    let s = lfc.stats();
    assert_eq!(
        (s.busy_pages, s.busy_dead_pages),
        (HELD as u64 + 1, 0),
        "{s:?}"
    );
    victim.kill().unwrap();
    victim.wait().unwrap(); // Reaped: a zombie still counts as alive.
    let s = lfc.stats();
    assert_eq!(
        (s.busy_pages, s.busy_dead_pages),
        (HELD as u64 + 1, HELD as u64),
        "{s:?}"
    );
    assert_eq!(lfc.reclaim_dead_frames(), HELD as u64);
    let s = lfc.stats();
    assert_eq!(
        (s.busy_pages, s.busy_dead_pages),
        (1, 0),
        "ours is kept: {s:?}"
    );
    assert_eq!(s.reclaims, HELD as u64);
    assert_eq!(lfc.reclaim_dead_frames(), 0, "nothing left to reclaim");
    // The freed frames are claimable again, without the sweep.
    let rest: Vec<_> = (1..CAPACITY).map_while(|_| lfc.reserve()).collect();
    assert_eq!(rest.len() as u64, CAPACITY - 1);
    drop((rest, mine));
}
