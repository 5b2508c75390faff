//! Cross-process "a page arrived" notification: `ARRIVAL_CHANNELS` futex words in the shared
//! file, chosen by tag hash, each with a count of sleeping waiters so installers only make the
//! wake syscall when someone sleeps. The futex calls omit FUTEX_PRIVATE_FLAG: the word lives in a
//! MAP_SHARED file mapping and the kernel keys it by the file page, so waiters and wakers in
//! different processes meet.
//!
//! Owns: the channel words (`seq`, `waiters`) and the two futex calls. Knows no tag, frame or
//! index: `cache.rs` picks the channel by tag hash, registers the waiter, re-checks the cache
//! and passes the timeout, so this module reads no clock.
//!
//! Lost wake-ups are impossible: a waiter registers (waiters += 1), then reads `seq`, then checks
//! the cache; an installer publishes, then bumps `seq`, then reads `waiters` (all SeqCst). Either
//! the waiter sees the page, or the installer sees the waiter, or FUTEX_WAIT sees `seq` changed.
//! A waiter killed while registered leaves `waiters` too high: that only costs spare wake calls.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

#[repr(C)]
pub(crate) struct Channel {
    pub seq: AtomicU32,
    pub waiters: AtomicU32,
}

const _: () = assert!(std::mem::size_of::<Channel>() == 8);

impl Channel {
    /// Called after a page became visible.
    pub fn notify(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            futex_wake_all(&self.seq);
        }
    }
}

/// Arrival notifications held back while a batch of pages is installed (`Lfc::announce`
/// makes them), so that a waiter woken for one page finds the rest of the batch there too. A
/// worker that notified per page woke the backend waiting for its first page in the middle of
/// a receive batch; the backend, a normal task woken on the worker's CPU, preempted it, read
/// that page and slept again on the next one, still unpublished. Standalone udp scans (page
/// server, daemon and scan as separate processes, split) fell into that ping-pong in 7 of 8
/// runs: 1447–2515 context switches a scan and 185–218k pages/s, against 408–574 and
/// 232–250k with the notifications held back. Bounded: past `HELD_CHANNELS` channels `hold`
/// refuses and the caller notifies at once; no notification is ever dropped.
#[derive(Debug)]
pub struct ArrivalBatch {
    channels: [u16; HELD_CHANNELS],
    len: usize,
}

/// Channels one batch holds back: a receive batch of 32 pages touches at most 32.
const HELD_CHANNELS: usize = 64;

const _: () = assert!(crate::layout::ARRIVAL_CHANNELS <= u16::MAX as usize + 1);

impl Default for ArrivalBatch {
    fn default() -> Self {
        ArrivalBatch {
            channels: [0; HELD_CHANNELS],
            len: 0,
        }
    }
}

impl ArrivalBatch {
    /// Holds back the notification of channel `ch`; false when the batch is full and the caller
    /// must notify now.
    pub(crate) fn hold(&mut self, ch: usize) -> bool {
        let ch = ch as u16;
        if self.channels[..self.len].contains(&ch) {
            return true;
        }
        if self.len == HELD_CHANNELS {
            return false;
        }
        self.channels[self.len] = ch;
        self.len += 1;
        true
    }

    /// The held channels, emptying the batch.
    pub(crate) fn take(&mut self) -> impl Iterator<Item = usize> + '_ {
        let len = std::mem::take(&mut self.len);
        self.channels[..len].iter().map(|&c| usize::from(c))
    }

    /// Notifications held back, not yet made.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Sleeps until `word` changes from `expected`, a wake, a signal or `timeout`; spurious returns
/// are fine because callers re-check their condition.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; FUTEX_WAIT only reads
    // it; `ts` outlives the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE does not access user memory beyond it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_holds_each_channel_once_and_refuses_past_its_bound() {
        let mut b = ArrivalBatch::default();
        assert!(b.is_empty());
        for ch in 0..HELD_CHANNELS {
            assert!(b.hold(ch * 3));
            assert!(b.hold(ch * 3), "held already");
        }
        // Full: the caller notifies this one itself; one already held still is.
        assert!(!b.hold(1));
        assert!(b.hold(3));
        let held: Vec<usize> = b.take().collect();
        assert_eq!(held, (0..HELD_CHANNELS).map(|c| c * 3).collect::<Vec<_>>());
        assert!(b.is_empty());
        assert_eq!(b.take().count(), 0);
    }
}
