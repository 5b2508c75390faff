//! A receive thread's bound on the work it does for junk ("cheap rejection", ARCHITECTURE §10).
//!
//! Turning a forged datagram away is cheap per datagram (the token is compared before the page
//! is looked at), but receiving it is not: the kernel copies its 8 KiB into the posted frame
//! first, about as much as a genuine page costs. An off-path attacker who sees the key id on the
//! wire can send datagrams that pass every check but the token, at whatever rate one core
//! sends, and a receive thread that served them all would take the compute's CPU from its
//! backends. Nothing in such a flood is worth anything, and the genuine datagrams drowned in it
//! are lost either way (the socket buffer overflows), so the backends are better off on TCP
//! pipelining (which their loss detection moves them to) with the CPU to themselves.
//!
//! So each receive thread may turn away at most [`JUNK_PER_WINDOW`] junk datagrams per
//! [`WINDOW_NS`]; a thread over its budget sleeps until the window ends. That caps the CPU a
//! flood can make a thread spend at about `JUNK_PER_WINDOW × cost / WINDOW_NS` (~10 % of a core
//! at 2 µs per datagram), whatever the flood's rate. Genuine traffic never counts: pages that
//! are installed, stale, already present or out of room are not junk, only datagrams that fail
//! a check of the format or its protection are.
//!
//! A thread that slept still finds the socket's buffer full of the junk that arrived meanwhile
//! (`--recv-buffer`, 128 MiB in the kernel's accounting by default: about 15 000 datagrams),
//! and turns it away at the budget's pace, 500 per window, long after the flood stopped: for
//! 100–300 ms genuine datagrams waited behind it, and a scan started then left UDP at its first
//! read (`bench flood`, fortieth session). So while a flood lasts ([`JunkBudget::flooded`]: from
//! the first window over budget until a window ends within it) the thread cuts its socket's
//! buffer to [`FLOOD_RECV_BUFFER`], and the kernel drops what does not fit, as it would have
//! dropped it at the full buffer anyway; when the flood stops, what is left is drained within a
//! window, and the buffer is restored.
//!
//! Sans-IO: the thread passes its cumulative junk count and the monotonic clock after each
//! receive step, sleeps for what [`JunkBudget::after_step`] returns and sizes its socket's
//! buffer as [`JunkBudget::flooded`] says.
//!
//! Owns: one thread's `JunkBudget` (its window and the junk count at the window's start) and which
//! drop reasons are junk (`is_junk`). Touches no socket, slot or LFC and turns nothing away itself:
//! the count it is handed tallies `ingest`'s verdicts in the thread's metrics.

use crate::datagram::DropReason;

/// The budget's window. Short enough that a throttled thread answers again within a fraction
/// of a backend's wait budget once the flood stops, long enough to hold a few receive batches.
pub const WINDOW_NS: u64 = 10_000_000;
/// Junk datagrams a thread turns away per window before it sleeps out the rest of the window:
/// 50k per second, about a tenth of a core at the ~2 µs a receive costs; a healthy stream has
/// none (a corrupted or foreign datagram now and then is far below it).
pub const JUNK_PER_WINDOW: u64 = 500;
/// A flooded thread's socket buffer, bytes asked for (the kernel accounts twice that): room
/// for about a hundred datagrams, fewer than one window's budget, so what a flood leaves queued
/// is gone within a window of its end; and for a GSO train or two of genuine pages meanwhile.
/// A thread whose configured buffer is smaller keeps it.
pub const FLOOD_RECV_BUFFER: usize = 1 << 20;

/// Whether a drop means the datagram was never genuine (or was corrupted on the way): failing
/// the format or the protection. Races of genuine pages (stale, already present, no room) are
/// not junk, nor are authenticated fragments that were not needed.
pub fn is_junk(reason: DropReason) -> bool {
    match reason {
        DropReason::TooShort
        | DropReason::TooLong
        | DropReason::BadMagic
        | DropReason::BadVersion
        | DropReason::BadHeader
        | DropReason::UnknownKeyId
        | DropReason::BadMac
        | DropReason::BadChecksum => true,
        // Authenticated pieces of genuine pages (a duplicate, or a page given up with pieces
        // missing) and races of genuine pages.
        DropReason::DuplicateFragment
        | DropReason::Incomplete
        | DropReason::Stale
        | DropReason::AlreadyPresent
        | DropReason::NoRoom => false,
    }
}

/// One receive thread's junk budget.
#[derive(Debug, Clone)]
pub struct JunkBudget {
    window_start_ns: u64,
    /// The thread's cumulative junk count when the window started.
    junk_at_start: u64,
    /// Windows in which the budget ran out (for the metrics).
    throttled: u64,
    /// A window ran over the budget, and none has ended within it since.
    flooded: bool,
}

impl JunkBudget {
    pub fn new(now_ns: u64, junk: u64) -> Self {
        JunkBudget {
            window_start_ns: now_ns,
            junk_at_start: junk,
            throttled: 0,
            flooded: false,
        }
    }

    /// Whether a flood is on: from the first window over the budget until a window ends within
    /// it. The thread's socket buffer is cut to [`FLOOD_RECV_BUFFER`] meanwhile.
    pub fn flooded(&self) -> bool {
        self.flooded
    }

    /// After a receive step: `junk` is the thread's cumulative count of junk datagrams. Returns
    /// how long to sleep, if the window's budget is spent.
    pub fn after_step(&mut self, now_ns: u64, junk: u64) -> Option<std::time::Duration> {
        debug_assert!(junk >= self.junk_at_start, "a cumulative count never falls");
        let window_end = self.window_start_ns.saturating_add(WINDOW_NS);
        if now_ns >= window_end {
            // A window ended. Within its budget (one over it ends in a sleep, below, unless a
            // single step carried it past its end), a flood, if there was one, has stopped. A
            // new window starts with a full budget.
            if junk.saturating_sub(self.junk_at_start) < JUNK_PER_WINDOW {
                self.flooded = false;
            }
            self.window_start_ns = now_ns;
            self.junk_at_start = junk;
            return None;
        }
        if junk.saturating_sub(self.junk_at_start) < JUNK_PER_WINDOW {
            return None;
        }
        self.throttled += 1;
        self.flooded = true;
        // The next window starts where this one ends; what came over the budget in this one is
        // forgiven (the count restarts there), so the bound holds per window.
        self.window_start_ns = window_end;
        self.junk_at_start = junk;
        Some(std::time::Duration::from_nanos(window_end - now_ns))
    }

    /// Windows in which the budget ran out.
    pub fn throttled(&self) -> u64 {
        self.throttled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn genuine_races_are_not_junk_and_failed_checks_are() {
        let junk: Vec<DropReason> = DropReason::ALL
            .iter()
            .copied()
            .filter(|r| is_junk(*r))
            .collect();
        assert!(junk.contains(&DropReason::BadMac));
        assert!(junk.contains(&DropReason::UnknownKeyId));
        assert!(!junk.contains(&DropReason::Stale));
        assert!(!junk.contains(&DropReason::AlreadyPresent));
        assert!(!junk.contains(&DropReason::NoRoom));
    }

    #[test]
    fn a_thread_over_budget_sleeps_to_the_end_of_its_window_then_has_a_full_budget() {
        let mut b = JunkBudget::new(1_000, 7);
        assert_eq!(b.after_step(2_000, 7 + JUNK_PER_WINDOW - 1), None);
        assert_eq!(
            b.after_step(3_000, 7 + JUNK_PER_WINDOW),
            Some(std::time::Duration::from_nanos(1_000 + WINDOW_NS - 3_000))
        );
        assert_eq!(b.throttled(), 1);
        // Woken at the window's end: the next window's budget is whole again.
        let woke = 1_000 + WINDOW_NS;
        assert_eq!(b.after_step(woke, 7 + JUNK_PER_WINDOW), None);
        assert_eq!(
            b.after_step(woke + 1, 7 + 2 * JUNK_PER_WINDOW - 1),
            None,
            "one short of a second budget"
        );
    }

    #[test]
    fn a_flood_lasts_from_the_first_window_over_budget_to_the_first_window_within_it() {
        let mut b = JunkBudget::new(0, 0);
        assert!(!b.flooded());
        let sleep = b.after_step(1_000, JUNK_PER_WINDOW).expect("over budget");
        assert!(b.flooded(), "the first window over budget starts a flood");
        // Woken, the next window runs over its budget again: still flooded.
        let mut now = 1_000 + sleep.as_nanos() as u64;
        let sleep = b
            .after_step(now + 1, 2 * JUNK_PER_WINDOW)
            .expect("over budget again");
        assert!(b.flooded());
        // Woken, the flood has stopped: what was left queued (fewer than a budget) is turned
        // away within the window, and the window's end ends the flood.
        now += 1 + sleep.as_nanos() as u64;
        let junk = 2 * JUNK_PER_WINDOW + JUNK_PER_WINDOW / 5;
        assert_eq!(b.after_step(now + 1_000, junk), None);
        assert!(b.flooded(), "not before the window ends");
        assert_eq!(b.after_step(now + WINDOW_NS, junk), None);
        assert!(!b.flooded(), "a window within its budget ends the flood");
        assert_eq!(b.throttled(), 2);
    }

    #[test]
    fn genuine_traffic_alone_never_sleeps() {
        let mut b = JunkBudget::new(0, 0);
        for i in 0..100_000u64 {
            assert_eq!(b.after_step(i * 1_000, 0), None);
            assert!(!b.flooded());
        }
        assert_eq!(b.throttled(), 0);
    }

    proptest! {
        /// Whatever the flood's timing, a thread that sleeps as told turns away at most one
        /// budget (plus what one step brought over it) per window of wall time.
        #[test]
        fn junk_served_is_bounded_by_the_budget_per_window(
            steps in proptest::collection::vec((1u64..2_000_000, 0u64..400), 1..2_000),
        ) {
            let mut now = 0u64;
            let mut junk = 0u64;
            let mut b = JunkBudget::new(now, junk);
            let mut max_step = 0;
            for (dt, n) in steps {
                now += dt;
                junk += n;
                max_step = max_step.max(n);
                let slept = b.after_step(now, junk);
                // Positive and negative space: a thread told to sleep is flooded.
                prop_assert!(slept.is_none() || b.flooded());
                if let Some(sleep) = slept {
                    prop_assert!(sleep.as_nanos() as u64 <= WINDOW_NS);
                    now += sleep.as_nanos() as u64;
                }
            }
            let windows = now / WINDOW_NS + 1;
            prop_assert!(junk <= windows * (JUNK_PER_WINDOW + max_step),
                "{junk} junk in {windows} windows");
        }
    }
}
