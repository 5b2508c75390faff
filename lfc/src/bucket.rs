//! Index buckets: one cache line holding a lock word and 15 entries, each entry a frame number
//! plus a 7-bit fingerprint of the tag. A tag's hash selects its *home* bucket; when the home is
//! full the entry overflows into one of the next `OVERFLOW_WINDOW` buckets (see the `cache`
//! module), and the home's lock word records how far its tags have overflowed, so a lookup whose
//! home never overflowed reads exactly one cache line.
//!
//! The lock word is `dist << PID_BITS | owner pid` (pid 0 = free). Only the owner changes
//! `dist`, so a free word keeps it and taking or releasing the lock preserves it. Waiters spin,
//! then yield, then sleep (so that a real-time waiter lets a preempted owner finish), checking
//! now and then whether the owner still exists; a dead owner's lock is taken
//! over (`Acquired::broken`), and the new owner must repair whatever the dead one left half-done
//! before relying on the bucket.
//!
//! Owns: a bucket's layout (the entry encoding, `PID_BITS`, `MAX_DIST`) and the lock protocol with
//! its waits (`LOCK_WAIT_LIMIT`). Knows frames by number and tags by fingerprint only: it reads no
//! frame or page and decides no placement, overflow or eviction (`cache` does); its clock only
//! measures a waiter's patience.

use crate::process::process_alive;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Zero, so a freshly created (zero-filled) file has an empty index without writing it.
pub(crate) const EMPTY: u32 = 0;
const FRAME_BITS: u32 = 25;
const FRAME_MASK: u32 = (1 << FRAME_BITS) - 1;

/// Owner pids fit in 22 bits: Linux caps `pid_max` at `PID_MAX_LIMIT` = 2^22 (checked in
/// `process::current_pid`). The 10 bits above hold the home's overflow distance.
pub(crate) const PID_BITS: u32 = 22;
const PID_MASK: u32 = (1 << PID_BITS) - 1;
/// Largest overflow distance the lock word can record.
pub(crate) const MAX_DIST: u32 = u32::MAX >> PID_BITS;

/// Longest we wait for a lock whose owner is alive (e.g. stopped by a debugger or SIGSTOP)
/// before giving up with `Busy`. Live owners hold a bucket lock for one page copy.
pub(crate) const LOCK_WAIT_LIMIT: Duration = Duration::from_millis(500);

/// Spins before the first yield: a live holder needs about one 8 KiB copy.
const SPINS_BEFORE_YIELD: u32 = 200;
/// Yields between two liveness checks of the owner (each check is a syscall).
const YIELDS_PER_LIVENESS_CHECK: u32 = 8;
/// Yields before a waiter starts sleeping between attempts instead. A yield only lets threads
/// of the caller's own priority run: a real-time waiter (the worker daemon's threads may be
/// `SCHED_FIFO`) yielding to an owner that a normal backend preempted on the same CPU would
/// spin until the kernel's real-time throttling stepped in, up to a second later. A sleep lets
/// any owner run, whatever the classes.
const YIELDS_BEFORE_SLEEP: u32 = 16;
/// A waiter's sleep once yields did not help: a few copies of a page.
const LOCK_SLEEP: Duration = Duration::from_micros(20);

#[repr(C, align(64))]
pub(crate) struct Bucket {
    pub lock: AtomicU32,
    pub entries: [AtomicU32; crate::layout::BUCKET_ENTRIES],
}

const _: () = assert!(std::mem::size_of::<Bucket>() == crate::layout::BUCKET_BYTES);

/// Frames are stored plus one, so that no entry is ever 0 (= EMPTY).
pub(crate) fn encode_entry(fingerprint: u32, frame: u32) -> u32 {
    debug_assert!(fingerprint < 0x80 && frame < FRAME_MASK - 1);
    fingerprint << FRAME_BITS | (frame + 1)
}

/// Frame number of a non-empty entry; None for EMPTY or a zero frame field (corruption).
pub(crate) fn entry_frame(entry: u32) -> Option<u32> {
    (entry & FRAME_MASK).checked_sub(1)
}

pub(crate) fn entry_fingerprint(entry: u32) -> u32 {
    entry >> FRAME_BITS
}

/// How a lock was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Acquired {
    /// The previous owner died holding it: the bucket must be repaired first.
    pub broken: bool,
}

impl Bucket {
    fn try_take(&self, me: u32) -> bool {
        let word = self.lock.load(Ordering::Relaxed);
        word & PID_MASK == 0
            && self
                .lock
                .compare_exchange(word, word | me, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    /// Takes the lock over if the owner recorded in `word` is dead; false if it is alive or the
    /// word changed.
    fn try_break(&self, word: u32, me: u32) -> bool {
        !process_alive(word & PID_MASK)
            && self
                .lock
                .compare_exchange(
                    word,
                    (word & !PID_MASK) | me,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Waits at most `LOCK_WAIT_LIMIT` for a live owner; breaks a dead owner's lock.
    pub fn lock(&self, me: u32) -> Result<Acquired, u32> {
        let mut spins = 0u32;
        let mut yields = 0u32;
        let mut started: Option<Instant> = None;
        loop {
            if self.try_take(me) {
                return Ok(Acquired { broken: false });
            }
            let word = self.lock.load(Ordering::Relaxed);
            let owner = word & PID_MASK;
            if owner == 0 {
                continue;
            }
            if spins < SPINS_BEFORE_YIELD {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            yields += 1;
            if yields.is_multiple_of(YIELDS_PER_LIVENESS_CHECK) {
                if self.try_break(word, me) {
                    return Ok(Acquired { broken: true });
                }
                // Reading the clock only on this slow path keeps the common case cheap.
                let t0 = *started.get_or_insert_with(Instant::now);
                if t0.elapsed() >= LOCK_WAIT_LIMIT {
                    return Err(owner);
                }
            }
            if yields <= YIELDS_BEFORE_SLEEP {
                std::thread::yield_now();
            } else {
                std::thread::sleep(LOCK_SLEEP);
            }
        }
    }

    /// One attempt, for the CLOCK sweep, which would rather move on than wait.
    pub fn try_lock(&self, me: u32) -> Option<Acquired> {
        if self.try_take(me) {
            return Some(Acquired { broken: false });
        }
        let word = self.lock.load(Ordering::Relaxed);
        let owner = word & PID_MASK;
        (owner != 0 && owner != me && self.try_break(word, me)).then_some(Acquired { broken: true })
    }

    pub fn unlock(&self, me: u32) {
        let prev = self.lock.fetch_and(!PID_MASK, Ordering::Release);
        debug_assert_eq!(prev & PID_MASK, me, "unlocking a bucket lock we do not own");
    }

    /// How many buckets past this one entries of tags homed here may live in (unclamped: the
    /// caller bounds it by the window, since the file may be corrupt).
    pub fn dist(&self) -> u32 {
        self.lock.load(Ordering::Acquire) >> PID_BITS
    }

    /// Only by the lock owner `me`. Release, so a reader that sees an entry stored after this
    /// also sees the distance that covers it.
    pub fn set_dist(&self, me: u32, dist: u32) {
        debug_assert!(dist <= MAX_DIST);
        debug_assert_eq!(self.lock.load(Ordering::Relaxed) & PID_MASK, me);
        self.lock.store(dist << PID_BITS | me, Ordering::Release);
    }

    pub fn entry(&self, slot: usize) -> u32 {
        self.entries[slot].load(Ordering::Acquire)
    }

    pub fn set_entry(&self, slot: usize, value: u32) {
        self.entries[slot].store(value, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket() -> Bucket {
        Bucket {
            lock: AtomicU32::new(0),
            entries: std::array::from_fn(|_| AtomicU32::new(EMPTY)),
        }
    }

    #[test]
    fn entries_round_trip_and_never_equal_empty() {
        for (fp, frame) in [(0, 0), (0x7f, FRAME_MASK - 2), (3, 12345)] {
            let e = encode_entry(fp, frame);
            assert_ne!(e, EMPTY);
            assert_eq!((entry_fingerprint(e), entry_frame(e)), (fp, Some(frame)));
        }
        assert_eq!(entry_frame(EMPTY), None);
    }

    #[test]
    fn a_dead_owners_lock_is_broken_and_a_live_one_is_not() {
        let b = bucket();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        b.lock.store(dead, Ordering::Relaxed);
        assert_eq!(b.lock(42), Ok(Acquired { broken: true }));
        assert_eq!(b.lock.load(Ordering::Relaxed), 42);
        // pid 1 is alive: try_lock must not break it.
        b.lock.store(1, Ordering::Relaxed);
        assert_eq!(b.try_lock(42), None);
        b.lock.store(0, Ordering::Relaxed);
        assert_eq!(b.try_lock(42), Some(Acquired { broken: false }));
        b.unlock(42);
    }

    /// Pins the calling thread to `cpu`.
    fn pin_to(cpu: usize) {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls read and write only it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0
            );
        }
    }

    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: writes one timespec on this stack.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// The worker daemon's threads may be SCHED_FIFO. One that waits for a bucket lock whose
    /// owner, a normal thread, it preempted on the same CPU must let that owner run: a waiter
    /// that only yields (a real-time yield lets only real-time threads run) kept it off the
    /// CPU until the kernel's real-time throttling stepped in, and gave up after
    /// `LOCK_WAIT_LIMIT`. Needs root or CAP_SYS_NICE; elsewhere there is nothing to show.
    #[test]
    fn a_real_time_waiter_lets_an_owner_it_preempted_on_its_cpu_finish() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        /// CPU time the owner spends holding the lock.
        const HOLD: Duration = Duration::from_millis(2);
        // SAFETY: sched_getcpu takes no argument.
        let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).unwrap();
        let pid = std::process::id(); // alive: the lock is never broken
        let b = Arc::new(bucket());
        let held = Arc::new(AtomicBool::new(false));
        let owner = {
            let (b, held) = (b.clone(), held.clone());
            std::thread::spawn(move || {
                pin_to(cpu);
                assert_eq!(b.lock(pid), Ok(Acquired { broken: false }));
                held.store(true, Ordering::SeqCst);
                let start = thread_cpu();
                while thread_cpu() - start < HOLD {
                    std::hint::spin_loop();
                }
                b.unlock(pid);
            })
        };
        let waited = std::thread::spawn(move || {
            pin_to(cpu);
            let fifo = libc::sched_param { sched_priority: 1 };
            // SAFETY: reads one sched_param on this stack.
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &fifo) } != 0 {
                // Skipped only where root is not promised (.ci/run promises it).
                assert!(
                    std::env::var_os("UDPF_REQUIRE_ROOT").is_none(),
                    "UDPF_REQUIRE_ROOT is set but SCHED_FIFO was refused: {}",
                    std::io::Error::last_os_error()
                );
                while !held.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_micros(100));
                }
                return None;
            }
            // Sleeping, not spinning, so that the owner can take the lock; the wake-up then
            // preempts it mid-hold.
            while !held.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_micros(100));
            }
            let start = Instant::now();
            let got = b.lock(pid);
            let waited = start.elapsed();
            if got.is_ok() {
                b.unlock(pid);
            }
            Some((got, waited))
        })
        .join()
        .unwrap();
        owner.join().unwrap();
        if let Some((got, waited)) = waited {
            assert_eq!(got, Ok(Acquired { broken: false }));
            assert!(
                waited < Duration::from_millis(200),
                "the real-time waiter held the owner off its CPU for {waited:?}"
            );
        }
    }

    #[test]
    fn the_overflow_distance_survives_locking_unlocking_and_breaking() {
        let b = bucket();
        assert_eq!(b.try_lock(42), Some(Acquired { broken: false }));
        b.set_dist(42, MAX_DIST);
        assert_eq!(b.dist(), MAX_DIST);
        // Held: a second locker must neither take it nor disturb the distance.
        assert_eq!(b.try_lock(43), None);
        b.unlock(42);
        assert_eq!(
            (b.dist(), b.lock.load(Ordering::Relaxed) & PID_MASK),
            (MAX_DIST, 0)
        );
        assert_eq!(b.lock(43), Ok(Acquired { broken: false }));
        b.set_dist(43, 3);
        // A dead owner's lock is broken with the distance kept.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        b.lock.store(3 << PID_BITS | dead, Ordering::Relaxed);
        assert_eq!(b.lock(44), Ok(Acquired { broken: true }));
        assert_eq!(b.lock.load(Ordering::Relaxed), 3 << PID_BITS | 44);
        b.unlock(44);
        assert_eq!(b.dist(), 3);
    }
}
