//! The clocks of the whole system, in one place. Two, for two jobs:
//!
//! - [`monotonic_ns`] (`CLOCK_MONOTONIC`): every time that is compared across processes or
//!   threads on one machine: daemon heartbeats, request marks, the read path's waits, the page
//!   server's prefetch schedule. Never goes back; meaningless across machines.
//! - [`wall_ns`] (`CLOCK_REALTIME`): the sender timestamp carried in a prefetch datagram, which
//!   only feeds the receiver's latency histogram; across machines it is as good as their clock
//!   synchronisation, and it is never used to decide anything.
//!
//! The simulator passes its own virtual time to the sans-IO cores instead of calling either.
//!
//! Owns: the two clock reads and nothing else: no state, no conversion from one clock to the other.
//! Depends on `libc` alone, and on no other module of this crate.

/// `CLOCK_MONOTONIC` in nanoseconds, the same clock in every process on the machine.
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_REALTIME` in nanoseconds since the Unix epoch (0 before it).
pub fn wall_ns() -> u64 {
    read(libc::CLOCK_REALTIME)
}

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec we own; both clocks are always supported on Linux.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    debug_assert_eq!(rc, 0);
    (ts.tv_sec.max(0) as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back_and_wall_is_after_2020() {
        let a = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(b >= a + 1_000_000, "{a} -> {b}");
        // 2020-01-01 in ns since the epoch: a wall clock this far off is misconfigured, not
        // a clock that this function read wrong.
        assert!(wall_ns() > 1_577_836_800_000_000_000);
    }
}
