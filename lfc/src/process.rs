//! Process identity and liveness, used to own lock words and reservations in the shared file.
//!
//! Owners are recorded by pid. A waiter that finds a lock held too long asks the kernel whether
//! the owner still exists (`kill(pid, 0)`); ESRCH means it died holding the lock, and the waiter
//! may break it. All processes attached to one file must share a pid namespace. A pid reused by
//! an unrelated live process before the dead owner's lock is broken keeps that lock "alive"
//! until the new process exits; with bounded lock waits that costs `Busy` errors, never
//! corruption.
//!
//! Owns: the cached pid (forgotten in a forked child through `pthread_atfork`) and the liveness
//! test. Holds no lock and reads no shared memory: the modules that own lock words and records
//! store and compare the pids.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

/// Cached pid; 0 = unknown. Reset in a forked child so it never acts under its parent's pid.
static PID: AtomicU32 = AtomicU32::new(0);
static ATFORK: Once = Once::new();

extern "C" fn forget_pid_in_child() {
    PID.store(0, Ordering::Relaxed);
}

/// Our pid as recorded in lock words (fits in 22 bits: Linux caps pid_max at 2^22, and bucket
/// lock words keep the overflow distance above those bits).
pub(crate) fn current_pid() -> u32 {
    let pid = PID.load(Ordering::Relaxed);
    if pid != 0 {
        return pid;
    }
    ATFORK.call_once(|| {
        // SAFETY: registering a plain extern "C" function with no captured state.
        unsafe {
            libc::pthread_atfork(None, None, Some(forget_pid_in_child));
        }
    });
    let pid = std::process::id();
    // A larger pid would corrupt the overflow distance sharing its lock word; the kernel's
    // PID_MAX_LIMIT rules it out, so this is a broken-platform check, not a runtime condition.
    assert!(
        pid < 1 << crate::bucket::PID_BITS,
        "pid {pid} exceeds Linux's PID_MAX_LIMIT"
    );
    PID.store(pid, Ordering::Relaxed);
    pid
}

/// False only when the kernel says no such process exists (or the pid is not a valid pid).
/// EPERM (exists, other user) counts as alive. A zombie counts as alive until it is reaped.
pub(crate) fn process_alive(pid: u32) -> bool {
    // 0 and negative values would address process groups, never a single owner.
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    if pid == current_pid() {
        return true;
    }
    // SAFETY: signal 0 performs only the existence and permission check.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_of_self_and_of_impossible_pids() {
        assert!(process_alive(current_pid()));
        assert!(!process_alive(0));
        assert!(!process_alive(u32::MAX));
        assert!(process_alive(1), "init always exists");
    }

    #[test]
    fn a_reaped_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }
}
