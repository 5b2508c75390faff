//! The lookup and install paths allocate nothing: a counting global allocator (this test binary
//! only) must see zero allocations across a warmed-up loop of every hot-path operation.

mod common;

use common::{make_page, tag};
use lfc::{Lfc, PAGE_SIZE};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn hot_paths_do_not_allocate() {
    let dir = tempfile::tempdir().unwrap();
    let lfc = Lfc::create(dir.path().join("lfc"), 32).unwrap();
    let pages: Vec<_> = (0..64u32)
        .map(|b| (tag(1, b), make_page(&tag(1, b), 5)))
        .collect();
    let mut out = [0u8; PAGE_SIZE];
    let mut round = |lfc: &Lfc| {
        for (i, (t, page)) in pages.iter().enumerate() {
            lfc.lookup(t, &mut out);
            lfc.contains(t);
            lfc.lwlsn(t);
            lfc.install_prefetched(t, 5, page);
            lfc.mark_requested(t, i as u64 * 1_000_000);
            if i % 3 == 0 {
                lfc.write(t, 6 + i as u64, page).unwrap();
                lfc.set_lwlsn(t, 7 + i as u64).unwrap();
            }
            if let Some(mut r) = lfc.reserve() {
                r.fill_from(page);
                r.publish(t, u64::MAX);
            }
        }
    };
    round(&lfc); // first use sets up this thread's statistics stripe
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    round(&lfc);
    round(&lfc);
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(after - before, 0, "allocations on the hot paths");
    assert!(lfc.stats().evictions > 0, "the loop must exercise eviction");
}
