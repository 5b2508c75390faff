//! Counters kept in the shared file, so `lfc stat` in another process sees every process's
//! activity. Each counter is striped over `STAT_STRIPES` cache lines chosen per thread: a hot
//! shared counter would otherwise bounce one line between all cores on every lookup.
//!
//! Owns: the counter list (its order is file format), each thread's stripe and `LfcStats`.
//! Counters are Relaxed and order nothing, so they are for display only; `cache.rs` bumps and
//! sums them, and fills the occupancy fields from the frames, not from counters.

use crate::layout::{STAT_COUNTERS, STAT_STRIPES};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Index of each counter inside a stripe; the order is part of the file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Counter {
    Hits = 0,
    Misses,
    Installs,
    Writes,
    StaleRejects,
    AlreadyPresent,
    NoRoom,
    Evictions,
    Reservations,
    Abandons,
    LockBreaks,
    Reclaims,
    Busy,
    RequestedMarks,
    RequestedDuplicates,
    WaitArrivals,
    WaitTimeouts,
    SupersededWrites,
    Drops,
    /// Reads of pages by backends, whichever path serves them (`Lfc::note_read`).
    Reads,
    /// Evictions of a page still in use by a claim past its sweep limit
    /// (`CLOCK_SWEEP_LIMIT`); also counted in `Evictions`.
    CappedEvictions,
}

const _: () = assert!((Counter::CappedEvictions as usize) < STAT_COUNTERS);

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's stripe: threads of one process get distinct stripes round-robin; the pid
/// offsets them so two processes' first threads do not share one.
pub(crate) fn stripe() -> usize {
    STRIPE.with(|s| {
        let v = s.get();
        if v != usize::MAX {
            return v;
        }
        let n = (NEXT_STRIPE.fetch_add(1, Ordering::Relaxed)
            + crate::process::current_pid() as usize)
            % STAT_STRIPES;
        s.set(n);
        n
    })
}

/// Counter totals, read from the shared file (`Lfc::stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LfcStats {
    pub capacity_pages: u64,
    /// Frames holding a published page.
    pub used_pages: u64,
    /// Frames owned by a process (reservations, installs in progress).
    pub busy_pages: u64,
    /// Of `busy_pages`, those whose owner has died (a crashed daemon's reservations): taken back
    /// by the CLOCK sweep or a bucket repair that meets them, or all at once by
    /// `Lfc::reclaim_dead_frames` (the worker daemon's start).
    pub busy_dead_pages: u64,
    pub hits: u64,
    pub misses: u64,
    /// Prefetched pages accepted (`install_prefetched` and `Reservation::publish`).
    pub installs: u64,
    /// Pages stored by `write`.
    pub writes: u64,
    /// Prefetched pages refused because the tag was modified after `not_modified_since`.
    pub stale_rejects: u64,
    pub already_present: u64,
    pub no_room: u64,
    pub evictions: u64,
    /// Of `evictions`, pages still in use (read at most once since the CLOCK hand last passed)
    /// taken by a claim that had swept `CLOCK_SWEEP_LIMIT` frames: many say the cache is full
    /// of pages read once (a scan).
    pub capped_evictions: u64,
    /// Cached copies dropped by `set_lwlsn` (modified elsewhere).
    pub drops: u64,
    /// Writes ignored because the tag already had a newer last-written LSN.
    pub superseded_writes: u64,
    pub reservations: u64,
    pub abandons: u64,
    /// Locks taken over from dead processes.
    pub lock_breaks: u64,
    /// Frames reclaimed from dead processes.
    pub reclaims: u64,
    /// Operations refused because a live process held a lock past the wait limit.
    pub busy: u64,
    pub requested_marks: u64,
    /// `mark_requested` calls that found a recent request by someone else.
    pub requested_duplicates: u64,
    pub wait_arrivals: u64,
    pub wait_timeouts: u64,
}

impl LfcStats {
    pub(crate) fn from_sums(sums: &[u64; STAT_COUNTERS]) -> LfcStats {
        let c = |k: Counter| sums[k as usize];
        LfcStats {
            hits: c(Counter::Hits),
            misses: c(Counter::Misses),
            installs: c(Counter::Installs),
            writes: c(Counter::Writes),
            stale_rejects: c(Counter::StaleRejects),
            already_present: c(Counter::AlreadyPresent),
            no_room: c(Counter::NoRoom),
            evictions: c(Counter::Evictions),
            capped_evictions: c(Counter::CappedEvictions),
            drops: c(Counter::Drops),
            superseded_writes: c(Counter::SupersededWrites),
            reservations: c(Counter::Reservations),
            abandons: c(Counter::Abandons),
            lock_breaks: c(Counter::LockBreaks),
            reclaims: c(Counter::Reclaims),
            busy: c(Counter::Busy),
            requested_marks: c(Counter::RequestedMarks),
            requested_duplicates: c(Counter::RequestedDuplicates),
            wait_arrivals: c(Counter::WaitArrivals),
            wait_timeouts: c(Counter::WaitTimeouts),
            ..LfcStats::default()
        }
    }

    /// Hits over lookups, 0 when there were none.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// Adds one to `counter` in the calling thread's stripe.
pub(crate) fn bump(stripes: &[AtomicU64], counter: Counter) {
    let i = stripe() * STAT_COUNTERS + counter as usize;
    // Relaxed: counters order nothing; they are summed for display.
    stripes[i].fetch_add(1, Ordering::Relaxed);
}
