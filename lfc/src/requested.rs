//! "Somebody already asked for this page": a fixed table of 64-byte lines, 8 entries each, an
//! entry packing a 24-bit tag key and the request time in milliseconds (40 bits, so it wraps
//! after 34 years of uptime). Marks expire after `REQUESTED_TTL_NS`; a full line overwrites its
//! oldest entry, and an install clears its tag's mark (`clear`). A key collision can only make
//! `mark_requested` answer "already requested" for a page nobody asked for (the caller then
//! waits, bounded, and falls back to a synchronous read), or an install clear another page's
//! mark (a duplicate request).
//!
//! Owns: the entry encoding, `REQUESTED_TTL_NS` and the replacement rule of a line. Takes no lock
//! (at most one compare-and-swap per mark or clear), reads no clock (`now_ns` is passed in) and
//! never looks at frames: a mark says nothing about whether the page is cached, but a mark gone
//! before its TTL says the page arrived (or the line overflowed).

use std::sync::atomic::{AtomicU64, Ordering};

/// How long a request mark suppresses duplicate prefetches.
pub const REQUESTED_TTL_NS: u64 = 100_000_000;

pub(crate) const LINE_ENTRIES: usize = 8;
const TIME_BITS: u32 = 40;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

fn pack(key: u64, now_ms: u64) -> u64 {
    key << TIME_BITS | (now_ms & TIME_MASK)
}

/// Milliseconds from `then_ms` to `now_ms`, modulo the 40-bit wrap.
fn age_ms(now_ms: u64, then_ms: u64) -> u64 {
    now_ms.wrapping_sub(then_ms) & TIME_MASK
}

/// Marks `key` requested at `now_ns`; true when it already was, less than the TTL ago.
pub(crate) fn mark(line: &[AtomicU64], key: u64, now_ns: u64) -> bool {
    debug_assert_eq!(line.len(), LINE_ENTRIES);
    let now_ms = (now_ns / 1_000_000) & TIME_MASK;
    let ttl_ms = REQUESTED_TTL_NS / 1_000_000;
    let mut oldest = 0usize;
    let mut oldest_age = 0u64;
    for (i, e) in line.iter().enumerate() {
        let v = e.load(Ordering::Acquire);
        if v != 0 && v >> TIME_BITS == key {
            let age = age_ms(now_ms, v & TIME_MASK);
            if age < ttl_ms {
                return true;
            }
            // Expired mark for the same page: refresh it. Losing the race to another marker is
            // fine, it marked the same key.
            let _ = e.compare_exchange(v, pack(key, now_ms), Ordering::AcqRel, Ordering::Relaxed);
            return false;
        }
        let age = if v == 0 {
            u64::MAX
        } else {
            age_ms(now_ms, v & TIME_MASK)
        };
        if age >= oldest_age {
            oldest_age = age;
            oldest = i;
        }
    }
    let victim = &line[oldest];
    let v = victim.load(Ordering::Relaxed);
    let _ = victim.compare_exchange(v, pack(key, now_ms), Ordering::AcqRel, Ordering::Relaxed);
    false
}

/// Clears `key`'s mark, if the line holds one: its page arrived. A backend whose own prefetch
/// then misses in the cache and finds no mark knows the page came and was evicted, and fetches
/// it at once instead of waiting for a datagram that already came.
pub(crate) fn clear(line: &[AtomicU64], key: u64) {
    for e in line {
        let v = e.load(Ordering::Relaxed);
        if v != 0 && v >> TIME_BITS == key {
            // Losing a race to a new mark of another key is fine: that mark stays.
            let _ = e.compare_exchange(v, 0, Ordering::AcqRel, Ordering::Relaxed);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_expire_and_full_lines_evict_the_oldest() {
        let line: Vec<AtomicU64> = (0..LINE_ENTRIES).map(|_| AtomicU64::new(0)).collect();
        let ms = 1_000_000u64;
        assert!(!mark(&line, 5, 1_000 * ms));
        assert!(mark(&line, 5, 1_050 * ms));
        assert!(!mark(&line, 5, 1_000 * ms + REQUESTED_TTL_NS), "expired");
        assert!(mark(&line, 5, 1_000 * ms + REQUESTED_TTL_NS + ms));
        for k in 10..10 + LINE_ENTRIES as u64 {
            assert!(!mark(&line, k, 2_000 * ms + k * ms));
        }
        // Key 5 was the oldest and got overwritten.
        assert!(!mark(&line, 5, 2_030 * ms));
        assert!(mark(&line, 17, 2_031 * ms));
    }
}
