//! Behaviour of single operations and their rules, in one process.

mod common;

use common::{check_page, make_page, new_cache, tag};
use lfc::{
    ArrivalBatch, AttachError, InstallOutcome, Lfc, WriteOutcome, CLOCK_SETTLE_USAGE,
    CLOCK_SWEEP_LIMIT, PAGE_SIZE,
};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn write_then_lookup_returns_the_page_and_its_lsn() {
    let (_d, lfc) = new_cache(64);
    let t = tag(1, 7);
    let mut out = [0u8; PAGE_SIZE];
    assert_eq!(lfc.lookup(&t, &mut out), None);
    assert_eq!(
        lfc.write(&t, 100, &make_page(&t, 100)).unwrap(),
        WriteOutcome::Stored
    );
    assert_eq!(lfc.lookup(&t, &mut out), Some(100));
    assert_eq!(check_page(&t, &out), Ok(100));
    assert!(lfc.contains(&t));
    assert_eq!(lfc.lwlsn(&t), 100);
    // A newer write replaces it in place; an older one is refused.
    assert_eq!(
        lfc.write(&t, 200, &make_page(&t, 200)).unwrap(),
        WriteOutcome::Stored
    );
    assert_eq!(
        lfc.write(&t, 150, &make_page(&t, 150)).unwrap(),
        WriteOutcome::Superseded
    );
    assert_eq!(lfc.lookup(&t, &mut out), Some(200));
    assert_eq!(check_page(&t, &out), Ok(200));
    let s = lfc.stats();
    assert_eq!((s.hits, s.misses, s.writes, s.used_pages), (2, 1, 2, 1));
    assert_eq!(s.superseded_writes, 1);
    // `lookups` is hits plus misses without the frame scan; `contains` is not counted.
    assert_eq!(lfc.lookups(), 3);
    // Backend reads are their own count: lookups do not move it, `note_read` does.
    assert_eq!(lfc.reads(), 0);
    lfc.note_read();
    lfc.note_read();
    assert_eq!((lfc.reads(), lfc.lookups()), (2, 3));
}

#[test]
fn install_is_accepted_only_when_not_modified_since_covers_lwlsn() {
    let (_d, lfc) = new_cache(64);
    let t = tag(2, 1);
    lfc.set_lwlsn(&t, 500).unwrap();
    assert_eq!(lfc.lwlsn(&t), 500);
    assert_eq!(
        lfc.install_prefetched(&t, 499, &make_page(&t, 499)),
        InstallOutcome::Stale
    );
    assert!(!lfc.contains(&t));
    assert_eq!(
        lfc.install_prefetched(&t, 500, &make_page(&t, 500)),
        InstallOutcome::Installed
    );
    assert_eq!(
        lfc.install_prefetched(&t, 900, &make_page(&t, 900)),
        InstallOutcome::AlreadyPresent
    );
    let mut out = [0u8; PAGE_SIZE];
    assert_eq!(lfc.lookup(&t, &mut out), Some(500));
    assert_eq!(check_page(&t, &out), Ok(500));
    // A modification at or below the cached version keeps the copy, a newer one drops it.
    lfc.set_lwlsn(&t, 500).unwrap();
    assert!(lfc.contains(&t));
    lfc.set_lwlsn(&t, 501).unwrap();
    assert!(!lfc.contains(&t));
    assert_eq!(lfc.lwlsn(&t), 501);
    let s = lfc.stats();
    assert_eq!(
        (s.installs, s.stale_rejects, s.already_present, s.drops),
        (1, 1, 1, 1)
    );
}

#[test]
fn global_floor_raises_every_lwlsn_without_dropping_cached_pages() {
    let (_d, lfc) = new_cache(16);
    let (a, b) = (tag(3, 1), tag(3, 2));
    lfc.write(&a, 10, &make_page(&a, 10)).unwrap();
    lfc.raise_lwlsn_floor(50);
    assert_eq!(lfc.lwlsn(&a), 50);
    assert_eq!(lfc.lwlsn(&b), 50);
    assert!(lfc.contains(&a));
    assert_eq!(
        lfc.install_prefetched(&b, 49, &make_page(&b, 49)),
        InstallOutcome::Stale
    );
    assert_eq!(
        lfc.write(&b, 49, &make_page(&b, 49)).unwrap(),
        WriteOutcome::Superseded
    );
    assert_eq!(
        lfc.install_prefetched(&b, 50, &make_page(&b, 50)),
        InstallOutcome::Installed
    );
}

#[test]
fn lwlsn_unless_cached_agrees_with_contains_and_lwlsn() {
    let (_d, lfc) = new_cache(16);
    let (a, b, c) = (tag(4, 1), tag(4, 2), tag(4, 3));
    lfc.set_lwlsn(&b, 70).unwrap();
    lfc.write(&a, 30, &make_page(&a, 30)).unwrap();
    lfc.raise_lwlsn_floor(20);
    for t in [a, b, c] {
        let want = (!lfc.contains(&t)).then(|| lfc.lwlsn(&t));
        assert_eq!(lfc.lwlsn_unless_cached(&t), want, "{t:?}");
    }
    assert_eq!(lfc.lwlsn_unless_cached(&a), None, "cached");
    assert_eq!(
        lfc.lwlsn_unless_cached(&b),
        Some(70),
        "modified, not cached"
    );
    assert_eq!(lfc.lwlsn_unless_cached(&c), Some(20), "the floor");
}

/// A prefetch hint reads nothing back and changes nothing, for tags all over the hash space
/// (in a debug build its offsets are checked against the mapping).
#[test]
fn prefetching_an_install_changes_nothing() {
    let (_d, lfc) = new_cache(16);
    let a = tag(4, 1);
    lfc.write(&a, 30, &make_page(&a, 30)).unwrap();
    let before = format!("{:?}", lfc.stats());
    for blkno in 0..100_000 {
        lfc.prefetch_install(&tag(blkno % 7, blkno));
    }
    assert_eq!(format!("{:?}", lfc.stats()), before);
    assert_eq!(lfc.lwlsn_unless_cached(&a), None, "still cached");
    assert!(!lfc.contains(&tag(4, 2)), "nothing installed");
}

#[test]
fn the_free_frame_bound_never_exceeds_the_free_frames() {
    let (_d, lfc) = new_cache(32);
    let check = |lfc: &Lfc, step: &str| {
        let s = lfc.stats();
        let free = s.capacity_pages - s.used_pages - s.busy_pages;
        assert!(
            lfc.free_frames_at_least() <= free,
            "{step}: bound above {free}"
        );
    };
    check(&lfc, "fresh");
    // Fill past capacity (CLOCK evicts), hold and abandon reservations, rewrite in place.
    for round in 0..3u32 {
        for b in 0..40u32 {
            let t = tag(9, round * 100 + b);
            let _ = lfc.install_prefetched(&t, 1, &make_page(&t, 1));
            check(&lfc, "install");
        }
        let held: Vec<_> = (0..8).filter_map(|_| lfc.reserve()).collect();
        check(&lfc, "reserved");
        held.into_iter().for_each(|r| r.abandon());
        check(&lfc, "abandoned");
    }
    assert!(
        lfc.free_frames_at_least() > 0,
        "abandoned frames are counted free again"
    );
}

#[test]
fn eviction_keeps_lwlsn_and_full_cache_keeps_serving() {
    let (_d, lfc) = new_cache(8);
    for blk in 0..100u32 {
        let t = tag(4, blk);
        assert_eq!(
            lfc.write(&t, u64::from(blk) + 1, &make_page(&t, u64::from(blk) + 1))
                .unwrap(),
            WriteOutcome::Stored
        );
    }
    let s = lfc.stats();
    assert_eq!(s.used_pages, 8);
    assert!(s.evictions >= 92, "{s:?}");
    let mut out = [0u8; PAGE_SIZE];
    for blk in 0..100u32 {
        let t = tag(4, blk);
        // Evicted or not, the lwlsn survives, so an older prefetch cannot come back.
        assert!(lfc.lwlsn(&t) > u64::from(blk));
        if let Some(lsn) = lfc.lookup(&t, &mut out) {
            assert_eq!(check_page(&t, &out), Ok(lsn));
            assert_eq!(lsn, u64::from(blk) + 1);
        } else {
            assert_eq!(
                lfc.install_prefetched(&t, u64::from(blk), &make_page(&t, 0)),
                InstallOutcome::Stale
            );
        }
    }
}

/// A cache of `frames` filled with pages of relation 9 read once each (usage 2), except
/// `hot` (read `MAX_USAGE` times and more).
fn cache_of_pages_read_once(frames: u64, hot: std::ops::Range<u32>) -> (tempfile::TempDir, Lfc) {
    let (d, lfc) = new_cache(frames);
    let mut out = [0u8; PAGE_SIZE];
    for blk in 0..frames as u32 {
        let t = tag(9, blk);
        assert_eq!(
            lfc.install_prefetched(&t, 0, &make_page(&t, 1)),
            InstallOutcome::Installed
        );
        let reads = if hot.contains(&blk) {
            8
        } else {
            CLOCK_SETTLE_USAGE - 1
        };
        for _ in 0..reads {
            assert!(lfc.lookup(&t, &mut out).is_some());
        }
    }
    assert_eq!(lfc.stats().evictions, 0, "every frame was free");
    (d, lfc)
}

#[test]
fn a_cache_full_of_pages_read_once_is_not_swept_whole_for_one_claim() {
    // A scan's pages, installed and read once: every frame in use when the hand comes round.
    // The claim lowers at most `CLOCK_SWEEP_LIMIT` of them and takes the next one as it is,
    // where an uncapped sweep lowered all 4 × the limit, twice, to find one at zero.
    let frames = 4 * CLOCK_SWEEP_LIMIT;
    let (_d, lfc) = cache_of_pages_read_once(frames, 0..0);
    let t = tag(10, 0);
    assert_eq!(
        lfc.install_prefetched(&t, 0, &make_page(&t, 1)),
        InstallOutcome::Installed
    );
    let s = lfc.stats();
    assert_eq!((s.evictions, s.capped_evictions), (1, 1), "{s:?}");
    // The page taken is the first one past the limit; the ones the sweep lowered stay.
    let cached = (0..frames as u32)
        .filter(|&b| lfc.contains(&tag(9, b)))
        .count();
    assert_eq!(cached as u64, frames - 1);
    assert!(!lfc.contains(&tag(9, CLOCK_SWEEP_LIMIT as u32)));
}

#[test]
fn hot_pages_outlive_a_scan_through_a_capped_sweep() {
    // Pages read often sit just past the limit, where capped claims take pages as they are:
    // they only lose one count a pass, and a scan of half the cache's size (its pages read
    // once, as a scan reads them) passes them once or twice, so they stay while the pages
    // read once around them go. (A scan of the whole cache's size takes them too, at 4080
    // pages here; one whose pages nobody read took them at 8164 before such pages were
    // installed a count up, and takes them at 4080 now.)
    let frames = 4 * CLOCK_SWEEP_LIMIT;
    let hot = CLOCK_SWEEP_LIMIT as u32..CLOCK_SWEEP_LIMIT as u32 + 16;
    let (_d, lfc) = cache_of_pages_read_once(frames, hot.clone());
    let mut out = [0u8; PAGE_SIZE];
    let scan = frames as u32 / 2;
    for blk in 0..scan {
        let t = tag(10, blk);
        assert_eq!(
            lfc.install_prefetched(&t, 0, &make_page(&t, 1)),
            InstallOutcome::Installed
        );
        assert!(lfc.lookup(&t, &mut out).is_some());
    }
    let s = lfc.stats();
    assert!(s.capped_evictions > 0, "{s:?}");
    for blk in hot {
        assert!(lfc.contains(&tag(9, blk)), "hot page {blk} evicted: {s:?}");
    }
    let once = (0..frames as u32)
        .filter(|&b| lfc.contains(&tag(9, b)))
        .count();
    assert!(
        once as u64 <= frames - u64::from(scan),
        "{once} pages read once are left"
    );
}

#[test]
fn a_scan_through_a_smaller_cache_finds_every_page_of_its_window_cached() {
    // A scan reads each page once, its prefetches `WINDOW` pages ahead of it installed in a
    // cache a quarter of its size: the pages it has read are done, the window's are needed
    // next. Every revolution of the hand finds the cache in use (pages read once); the
    // window's pages, installed and not read yet, must not be the ones it takes. The window
    // is the udp read path's default distance, eight times what a claim lowers before it
    // settles for a page read once.
    const WINDOW: u32 = 512;
    assert!(u64::from(WINDOW) >= 8 * CLOCK_SWEEP_LIMIT);
    let frames = 4096;
    let (_d, lfc) = new_cache(frames);
    let pages = 4 * frames as u32;
    let mut out = [0u8; PAGE_SIZE];
    let install = |blk: u32| {
        let t = tag(12, blk);
        assert_eq!(
            lfc.install_prefetched(&t, 0, &make_page(&t, 1)),
            InstallOutcome::Installed
        );
    };
    (0..WINDOW).for_each(install);
    let mut evicted_before_read = Vec::new();
    for blk in 0..pages {
        if blk + WINDOW < pages {
            install(blk + WINDOW);
        }
        if lfc.lookup(&tag(12, blk), &mut out).is_none() {
            evicted_before_read.push(blk);
        }
    }
    let s = lfc.stats();
    assert!(s.evictions >= u64::from(pages) - frames, "{s:?}");
    assert!(
        evicted_before_read.is_empty(),
        "{} pages evicted before their reads, the first {:?}: {s:?}",
        evicted_before_read.len(),
        &evicted_before_read[..evicted_before_read.len().min(8)]
    );
}

#[test]
fn reservations_are_invisible_until_published_and_abandon_frees_them() {
    let (_d, lfc) = new_cache(4);
    let t = tag(5, 1);
    let r = lfc.reserve().unwrap();
    assert_eq!(r.as_mut_ptr() as usize % 4096, 0);
    let page = make_page(&t, 7);
    // SAFETY: the reservation owns PAGE_SIZE writable bytes at as_mut_ptr().
    unsafe { std::ptr::copy_nonoverlapping(page.as_ptr(), r.as_mut_ptr(), PAGE_SIZE) };
    assert!(!lfc.contains(&t), "not visible before publish");
    assert_eq!(lfc.stats().busy_pages, 1);
    assert_eq!(r.publish(&t, 7), InstallOutcome::Installed);
    let mut out = [0u8; PAGE_SIZE];
    assert_eq!(lfc.lookup(&t, &mut out), Some(7));
    assert_eq!(check_page(&t, &out), Ok(7));

    // All four frames reserved: nothing more to claim, and installs report NoRoom.
    let held: Vec<_> = (0..4).map(|_| lfc.reserve().unwrap()).collect();
    assert!(lfc.reserve().is_none());
    let u = tag(5, 2);
    assert_eq!(
        lfc.install_prefetched(&u, 0, &make_page(&u, 0)),
        InstallOutcome::NoRoom
    );
    assert_eq!(
        lfc.write(&u, 3, &make_page(&u, 3)).unwrap(),
        WriteOutcome::NoRoom
    );
    assert_eq!(
        lfc.lwlsn(&u),
        3,
        "a write without room still records its lsn"
    );
    drop(held);
    assert_eq!(lfc.stats().busy_pages, 0);
    let mut r = lfc.reserve().unwrap();
    r.fill_from(&make_page(&u, 2));
    assert_eq!(r.publish(&u, 2), InstallOutcome::Stale);
    let r = lfc.reserve().unwrap();
    r.abandon();
    assert_eq!(lfc.stats().busy_pages, 0);
}

#[test]
fn a_refused_publish_hands_the_reservation_back_still_reserved() {
    let (_d, lfc) = new_cache(8);
    let t = tag(5, 3);
    assert_eq!(
        lfc.install_prefetched(&t, 1, &make_page(&t, 1)),
        InstallOutcome::Installed
    );
    let mut r = lfc.reserve().unwrap();
    r.fill_from(&make_page(&t, 1));
    let frame = r.frame();
    let rejected = r.try_publish(&t, 1).unwrap_err();
    assert_eq!(rejected.outcome, InstallOutcome::AlreadyPresent);
    assert_eq!(rejected.slot.frame(), frame, "the same frame comes back");
    assert_eq!(lfc.stats().busy_pages, 1, "and it is still ours");
    // Refilled and published under another tag, it is installed.
    let mut r = rejected.slot;
    let u = tag(5, 4);
    r.fill_from(&make_page(&u, 2));
    assert!(r.try_publish(&u, 2).is_ok());
    let mut out = [0u8; PAGE_SIZE];
    assert_eq!(lfc.lookup(&u, &mut out), Some(2));
    assert_eq!(check_page(&u, &out), Ok(2));
    let s = lfc.stats();
    assert_eq!((s.used_pages, s.busy_pages, s.abandons), (2, 0, 0));
}

/// Frames given back (abandoned reservations, refused publishes) are claimed again before the
/// CLOCK sweep evicts anything: churn on a cache with room never costs a cached page.
#[test]
fn claims_take_free_frames_before_evicting() {
    let (_d, lfc) = new_cache(64);
    let cached: Vec<_> = (0..40).map(|b| tag(7, b)).collect();
    for t in &cached {
        assert_eq!(
            lfc.install_prefetched(t, 1, &make_page(t, 1)),
            InstallOutcome::Installed
        );
    }
    for round in 0..2_000u32 {
        // Junk received into a slot and thrown away, and a duplicate refused at publish.
        lfc.reserve().expect("free frames exist").abandon();
        let dup = &cached[round as usize % cached.len()];
        let mut r = lfc.reserve().expect("free frames exist");
        r.fill_from(&make_page(dup, 1));
        assert_eq!(r.publish(dup, 1), InstallOutcome::AlreadyPresent);
    }
    let s = lfc.stats();
    assert_eq!(s.evictions, 0, "{s:?}");
    assert_eq!(s.used_pages, 40);
    assert!(cached.iter().all(|t| lfc.contains(t)));
    // Filling the rest still takes only free frames; one page more than fits evicts one.
    for b in 40..64 {
        let t = tag(7, b);
        assert_eq!(
            lfc.install_prefetched(&t, 1, &make_page(&t, 1)),
            InstallOutcome::Installed
        );
    }
    assert_eq!(lfc.stats().evictions, 0);
    let t = tag(7, 64);
    assert_eq!(
        lfc.install_prefetched(&t, 1, &make_page(&t, 1)),
        InstallOutcome::Installed
    );
    let s = lfc.stats();
    assert_eq!((s.evictions, s.used_pages), (1, 64));
}

#[test]
fn mark_requested_dedupes_within_the_ttl() {
    let (_d, lfc) = new_cache(16);
    let t = tag(6, 1);
    let now = 5_000_000_000u64;
    assert!(!lfc.mark_requested(&t, now));
    assert!(lfc.mark_requested(&t, now + 1_000_000));
    assert!(!lfc.mark_requested(&t, now + lfc::REQUESTED_TTL_NS));
    assert!(!lfc.mark_requested(&tag(6, 2), now));
}

#[test]
fn an_install_clears_its_pages_request_mark() {
    let (_d, lfc) = new_cache(16);
    let now = 5_000_000_000u64;
    let (t, other) = (tag(7, 1), tag(7, 2));
    assert!(!lfc.mark_requested(&t, now));
    assert!(!lfc.mark_requested(&other, now));
    assert_eq!(
        lfc.install_prefetched(&t, 1, &make_page(&t, 1)),
        InstallOutcome::Installed
    );
    // The page came: a later miss of it (evicted) finds no request in flight; the other
    // page's request still is.
    assert!(!lfc.mark_requested(&t, now + 1_000_000));
    assert!(lfc.mark_requested(&other, now + 1_000_000));
}

#[test]
fn wait_for_arrival_times_out_and_is_woken_by_an_install() {
    let dir = tempfile::tempdir().unwrap();
    let lfc = Arc::new(Lfc::create(dir.path().join("lfc"), 16).unwrap());
    let t = tag(7, 1);
    assert!(!lfc.wait_for_arrival(&t, Duration::from_millis(20)));
    let installer = {
        let lfc = Arc::clone(&lfc);
        std::thread::spawn(move || {
            // Install only once the waiter is registered, so the wake path is what ends its wait.
            while lfc.arrival_waiters(&t) == 0 {
                std::thread::yield_now();
            }
            lfc.install_prefetched(&t, 0, &make_page(&t, 0))
        })
    };
    let started = std::time::Instant::now();
    assert!(lfc.wait_for_arrival(&t, Duration::from_secs(10)));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken, not timed out"
    );
    assert_eq!(installer.join().unwrap(), InstallOutcome::Installed);
    let s = lfc.stats();
    assert_eq!((s.wait_arrivals, s.wait_timeouts), (1, 1));
}

#[test]
fn a_held_arrival_wakes_its_waiter_when_the_batch_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let lfc = Arc::new(Lfc::create(dir.path().join("lfc"), 16).unwrap());
    let t = tag(9, 1);
    let waiter = {
        let lfc = Arc::clone(&lfc);
        std::thread::spawn(move || lfc.wait_for_arrival(&t, Duration::from_secs(10)))
    };
    while lfc.arrival_waiters(&t) == 0 {
        std::thread::yield_now();
    }
    let mut batch = ArrivalBatch::default();
    let mut slot = lfc.reserve().unwrap();
    slot.fill_from(&make_page(&t, 0));
    assert!(slot.try_publish_held(&t, 0, &mut batch).is_ok());
    // Visible at once; its waiter is told with the rest of the batch.
    assert!(lfc.contains(&t));
    assert!(!batch.is_empty());
    let started = std::time::Instant::now();
    lfc.announce(&mut batch);
    assert!(batch.is_empty());
    assert!(waiter.join().unwrap());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken, not timed out"
    );
    assert_eq!(lfc.stats().wait_arrivals, 1);
}

#[test]
fn a_second_handle_sees_the_same_pages_stats_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lfc");
    let a = Lfc::create(&path, 32).unwrap();
    let b = Lfc::open(&path).unwrap();
    assert_eq!(a.key(), b.key());
    assert_eq!(a.key_id(), b.key_id());
    assert_eq!(b.creator_pid(), std::process::id());
    let t = tag(8, 1);
    a.write(&t, 1, &make_page(&t, 1)).unwrap();
    let mut out = [0u8; PAGE_SIZE];
    assert_eq!(b.lookup(&t, &mut out), Some(1));
    assert_eq!(a.stats().hits, 1);
    // Another handle's (another process's) reads are seen: what prewarm's yield watches.
    assert_eq!(a.lookups(), 1);
    // Re-creating a file that others have attached is refused...
    assert!(matches!(
        Lfc::create(&path, 32),
        Err(AttachError::InUse { .. })
    ));
    drop(a);
    drop(b);
    // ...and once nobody is attached it yields a fresh, empty cache with a new key.
    let old_key = Lfc::open(&path).unwrap().key();
    let c = Lfc::create(&path, 32).unwrap();
    assert_ne!(c.key(), old_key);
    assert!(!c.contains(&t));
    assert_eq!(c.stats().hits, 0);
    assert!(c.metadata_fraction() > 0.0);
}

#[test]
fn open_or_create_keeps_a_matching_cache_and_replaces_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lfc");
    let key = Lfc::open_or_create(&path, 16).unwrap().key();
    assert_eq!(Lfc::open_or_create(&path, 16).unwrap().key(), key);
    let other = Lfc::open_or_create(&path, 32).unwrap();
    assert_eq!(other.capacity_pages(), 32);
    assert_ne!(other.key(), key);
    drop(other);
    std::fs::write(&path, b"garbage").unwrap();
    assert_eq!(Lfc::open_or_create(&path, 8).unwrap().capacity_pages(), 8);
}

#[test]
fn snapshot_lists_the_hottest_pages_first() {
    let (_d, lfc) = new_cache(16);
    let mut out = [0u8; PAGE_SIZE];
    // Usage counts saturate at 5: installs start at 1, so 0..=4 extra lookups stay distinct.
    for blk in 0..5u32 {
        let t = tag(9, blk);
        lfc.install_prefetched(&t, 0, &make_page(&t, 0));
        for _ in 0..blk {
            lfc.lookup(&t, &mut out);
        }
    }
    let hot = lfc.snapshot_hottest(3);
    assert_eq!(hot, vec![tag(9, 4), tag(9, 3), tag(9, 2)]);
    assert_eq!(lfc.snapshot_hottest(100).len(), 5);
}

#[test]
fn a_touch_counts_a_use_like_a_lookup_and_nothing_else() {
    let (_d, lfc) = new_cache(16);
    let mut out = [0u8; PAGE_SIZE];
    for blk in 0..3u32 {
        let t = tag(9, blk);
        lfc.install_prefetched(&t, 0, &make_page(&t, 0));
    }
    let before = lfc.stats();
    // Block 1 read once through the cache, block 2 once from elsewhere: equally hot, and
    // hotter than block 0, which nobody read.
    assert!(lfc.lookup(&tag(9, 1), &mut out).is_some());
    assert!(lfc.touch(&tag(9, 2)));
    assert!(!lfc.touch(&tag(9, 3)), "not cached");
    let hot = lfc.snapshot_hottest(3);
    assert_eq!(hot.last(), Some(&tag(9, 0)), "{hot:?}");
    let after = lfc.stats();
    assert_eq!(after.hits, before.hits + 1, "a touch is not a hit");
    assert_eq!(after.misses, before.misses, "nor a miss");
}

#[test]
fn prefault_keeps_the_contents_of_a_file_allocated_at_creation() {
    use std::os::unix::fs::MetadataExt;
    let (_d, lfc) = new_cache(512);
    let t = tag(3, 9);
    let allocated = || std::fs::metadata(lfc.path()).unwrap().blocks() * 512;
    let geo = lfc.geometry();
    // Allocated when created, so no page of the mapping can lack a block (SIGBUS).
    assert!(
        allocated() >= geo.file_len,
        "a new cache file is allocated: {} of {} bytes",
        allocated(),
        geo.file_len
    );
    lfc.write(&t, 42, &make_page(&t, 42)).unwrap();
    lfc.prefault_metadata().unwrap();
    lfc.prefault(0..geo.capacity_pages).unwrap();
    assert!(allocated() >= geo.file_len);
    // Populating writes nothing: the cached page, its LSN and the empty frames are as before.
    let mut out = [0u8; PAGE_SIZE];
    assert_eq!(lfc.lookup(&t, &mut out), Some(42));
    assert_eq!(check_page(&t, &out), Ok(42));
    assert_eq!(lfc.lookup(&tag(3, 10), &mut out), None);
}

#[test]
fn a_write_refused_as_busy_is_an_op_error_and_changes_nothing() {
    let (_d, lfc) = new_cache(32);
    let t = tag(9, 1);
    lfc.write(&t, 5, &make_page(&t, 5)).unwrap();
    let held = lfc.lock_home_for_test(&t).unwrap();
    let (w, s) = std::thread::scope(|s| {
        let w = s.spawn(|| lfc.write(&t, 10, &make_page(&t, 10)));
        let l = s.spawn(|| lfc.set_lwlsn(&t, 11));
        (w.join().unwrap(), l.join().unwrap())
    });
    drop(held);
    let me = std::process::id();
    assert!(
        matches!(w, Err(lfc::OpError::Busy { owner, .. }) if owner == me),
        "{w:?}"
    );
    assert!(matches!(s, Err(lfc::OpError::Busy { .. })), "{s:?}");
    // Nothing changed: the old version is still cached and its lwlsn did not rise.
    assert_eq!(lfc.lwlsn(&t), 5);
    let mut out = [0u8; PAGE_SIZE];
    assert_eq!(lfc.lookup(&t, &mut out), Some(5));
    assert!(lfc.stats().busy >= 2);
}

#[test]
fn a_seeded_cache_has_the_given_secrets_and_survives_reopening_with_them() {
    let d = tempfile::tempdir().unwrap();
    let secrets = |key_id, hash_seed| lfc::Secrets {
        key: [7; 32],
        key_id,
        hash_seed,
    };
    let a = Lfc::create_seeded(d.path().join("a"), 64, secrets(0, 1)).unwrap();
    assert_eq!(a.key(), [7; 32]);
    // 0 means "no key id" in a datagram header: never a cache's.
    assert_eq!(a.key_id(), 1);
    let b = Lfc::create_seeded(d.path().join("b"), 64, secrets(9, 1)).unwrap();
    let c = Lfc::create_seeded(d.path().join("c"), 64, secrets(9, 2)).unwrap();
    let slots = |l: &Lfc| {
        (0..64)
            .map(|i| l.lwlsn_slot_of(&tag(1, i)))
            .collect::<Vec<_>>()
    };
    // The hash seed alone decides placement.
    assert_eq!(slots(&a), slots(&b));
    assert_ne!(slots(&b), slots(&c));
    drop(b);
    let b = Lfc::open(d.path().join("b")).unwrap();
    assert_eq!((b.key(), b.key_id()), ([7; 32], 9));
    assert_eq!(slots(&b), slots(&a));
}
