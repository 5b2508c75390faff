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
