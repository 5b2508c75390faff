//! Helpers shared by the `udp_*` integration tests: slot memory laid out like the daemon's
//! (4 KiB-aligned pages, raw pointers only), datagram patterns and a receive loop.
#![allow(dead_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use workers::udp::{Completion, Receiver, SlotRegions, HEADER_LEN, PAGE_LEN, TAG_LEN};

/// Guard against a hung test; never used to decide success.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// `n` receive slots in one raw allocation: pages (4 KiB-aligned) first, then headers, then
/// tags. Only ever accessed through raw pointers, like an LFC mapping.
pub struct SlotMem {
    base: *mut u8,
    layout: Layout,
    n: usize,
}

impl SlotMem {
    pub fn new(n: usize) -> SlotMem {
        let size = n * (PAGE_LEN + HEADER_LEN + TAG_LEN);
        let layout = Layout::from_size_align(size, 4096).unwrap();
        // SAFETY: non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null());
        SlotMem { base, layout, n }
    }

    pub fn len(&self) -> usize {
        self.n
    }

    fn page_ptr(&self, i: usize) -> *mut u8 {
        assert!(i < self.n);
        // SAFETY: in bounds of the allocation.
        unsafe { self.base.add(i * PAGE_LEN) }
    }

    fn header_ptr(&self, i: usize) -> *mut u8 {
        assert!(i < self.n);
        // SAFETY: in bounds of the allocation.
        unsafe { self.base.add(self.n * PAGE_LEN + i * HEADER_LEN) }
    }

    fn tag_ptr(&self, i: usize) -> *mut u8 {
        assert!(i < self.n);
        // SAFETY: in bounds of the allocation.
        unsafe {
            self.base
                .add(self.n * (PAGE_LEN + HEADER_LEN) + i * TAG_LEN)
        }
    }

    pub fn regions(&self, i: usize) -> SlotRegions {
        SlotRegions::new(self.header_ptr(i), self.page_ptr(i), self.tag_ptr(i))
    }

    /// Copies out what slot `i` holds as one contiguous datagram image (header|page|tag).
    /// Only call for a slot that is not posted.
    pub fn image(&self, i: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN + PAGE_LEN + TAG_LEN);
        // SAFETY: the slot is not posted, so nobody writes it; the ranges are in bounds.
        unsafe {
            v.extend_from_slice(std::slice::from_raw_parts(self.header_ptr(i), HEADER_LEN));
            v.extend_from_slice(std::slice::from_raw_parts(self.page_ptr(i), PAGE_LEN));
            v.extend_from_slice(std::slice::from_raw_parts(self.tag_ptr(i), TAG_LEN));
        }
        v
    }

    /// Scribbles over slot `i` so stale bytes cannot pass for new ones.
    pub fn poison(&self, i: usize) {
        // SAFETY: the slot is not posted; ranges in bounds.
        unsafe {
            std::ptr::write_bytes(self.header_ptr(i), 0xEE, HEADER_LEN);
            std::ptr::write_bytes(self.page_ptr(i), 0xEE, PAGE_LEN);
            std::ptr::write_bytes(self.tag_ptr(i), 0xEE, TAG_LEN);
        }
    }

    pub fn page_is_aligned(&self, i: usize) -> bool {
        (self.page_ptr(i) as usize).is_multiple_of(4096)
    }
}

impl Drop for SlotMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.base, self.layout) }
    }
}

/// Posts slot `i` of `mem` under slot id `i`.
pub fn post(rx: &mut Receiver, mem: &SlotMem, i: usize) {
    mem.poison(i);
    // SAFETY: `mem` outlives `rx` in every test (declared before it), and slot `i` is not
    // touched until it comes back in a completion or from cancel_all / drop.
    unsafe { rx.post(i as u32, mem.regions(i)) }.unwrap();
}

/// Deterministic datagram content: the 4-byte sequence number, then a pattern of it.
pub fn pattern(seq: u32, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|j| (seq.wrapping_mul(31).wrapping_add(j as u32 * 7) % 251) as u8)
        .collect();
    let n = len.min(4);
    v[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
    v
}

pub fn seq_of(image: &[u8]) -> u32 {
    u32::from_le_bytes(image[..4].try_into().unwrap())
}

pub fn sender() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap()
}

pub fn localhost0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Receives `n` datagrams with every slot of `mem` posted, re-posting each slot after
/// checking it with `check(completion, image)`. Returns the completions' sequence numbers.
pub fn receive_n(
    rx: &mut Receiver,
    mem: &SlotMem,
    n: usize,
    mut check: impl FnMut(&Completion, &[u8]),
) -> Vec<u32> {
    assert_eq!(rx.posted(), 0, "receive_n posts every slot itself");
    for i in 0..mem.len() {
        post(rx, mem, i);
    }
    let mut out = [Completion::default(); 64];
    let mut seqs = Vec::with_capacity(n);
    let start = Instant::now();
    while seqs.len() < n {
        assert!(
            start.elapsed() < DEADLINE,
            "got {} of {n} datagrams",
            seqs.len()
        );
        let k = rx.wait(Duration::from_millis(200), &mut out).unwrap();
        for c in &out[..k] {
            assert_eq!(c.error, None, "{c:?}");
            let i = c.slot_id as usize;
            let img = mem.image(i);
            check(c, &img);
            seqs.push(seq_of(&img));
            post(rx, mem, i);
        }
    }
    seqs
}

/// Asserts `seqs` is exactly `0..n`, each once.
pub fn assert_all_once(seqs: &[u32], n: usize) {
    let set: HashSet<u32> = seqs.iter().copied().collect();
    assert_eq!(seqs.len(), n, "count");
    assert_eq!(set.len(), n, "duplicates");
    assert!(
        (0..n as u32).all(|s| set.contains(&s)),
        "missing sequence numbers"
    );
}
