//! Thread scheduling on Linux: nice values and scheduling classes.
//!
//! Two different needs meet on a busy machine:
//!
//! * **Share.** The page server's prefetch sender is one thread serving every connection, and
//!   the worker daemon's few threads serve every backend. Under load each gets the CPU share of
//!   one ordinary thread among the hundreds that serve connections and run backends, so
//!   prefetches arrive after the reads that wanted them gave up (`bench many-backends`). A
//!   negative nice value gives such a thread the weight of several ordinary ones.
//! * **Latency.** A synchronous GetPage needs the CPU for a few microseconds, two or three
//!   times, while bulk threads keep every CPU busy. The kernel's EEVDF scheduler lets a running
//!   thread finish a slice of about a millisecond before a waking one may preempt it, and under
//!   a prefetch stream that was most of a GetPage's p99 (`bench hol`: the server's connection
//!   reader waited up to 400 µs for a CPU). Threads that serve GetPage therefore ask for a short
//!   slice ([`ThreadClass::Latency`], Linux 6.12+: a waking thread with a shorter slice than
//!   the running one preempts it), and bulk threads are `SCHED_BATCH`
//!   ([`ThreadClass::Bulk`]): the same CPU share, but their own wake-ups never preempt anyone.
//!
//! Owns: `ThreadClass` and its settings, nice values (`NICE_RANGE`), `default_threads`, thread CPU
//! time, the real-time share bound (`ShareBound`, sans-IO: `now` and CPU time passed in) and timer
//! slack. Part of the shared layer: it changes only the calling thread (or a given thread's nice
//! value), imports no other module of this crate, and touches no socket or LFC.

/// Threads for a pool that serves a whole machine's traffic (the daemon's receive threads, the
/// page server's prefetch senders) when none are asked for: one per two CPUs this process may
/// use, at least one. Both sides share the machine with the threads they serve (backends,
/// connection threads), so neither takes every CPU; each caller applies its own upper bound.
pub fn default_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus / 2).max(1)
}

/// Valid nice values.
pub const NICE_RANGE: std::ops::RangeInclusive<i32> = -20..=19;

#[derive(Debug, thiserror::Error)]
pub enum NiceError {
    #[error("nice value {0} is outside -20..=19")]
    OutOfRange(i32),
    #[error("cannot set nice {nice} on {thread}{hint}")]
    Refused {
        nice: i32,
        thread: String,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Sets the nice value of thread `tid` (a kernel thread id; 0 is the calling thread). On Linux
/// nice is per thread, and threads created afterwards inherit it.
pub fn set_thread_nice(tid: u32, nice: i32) -> Result<(), NiceError> {
    if !NICE_RANGE.contains(&nice) {
        return Err(NiceError::OutOfRange(nice));
    }
    // SAFETY: setpriority only reads its scalar arguments.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } == 0 {
        return Ok(());
    }
    let source = std::io::Error::last_os_error();
    let hint = match source.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => " (a negative value needs root or CAP_SYS_NICE)",
        _ => "",
    };
    Err(NiceError::Refused {
        nice,
        thread: match tid {
            0 => "this thread".to_string(),
            t => format!("thread {t}"),
        },
        hint,
        source,
    })
}

/// The slice a [`ThreadClass::Latency`] thread asks for: the kernel's minimum.
pub const LATENCY_SLICE_NS: u64 = 100_000;

/// What a thread is for, as far as the CPU scheduler should know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadClass {
    /// Serves requests someone waits for: a short EEVDF slice, so its wake-ups preempt.
    Latency,
    /// Moves pages in the background: `SCHED_BATCH`, so its wake-ups never preempt.
    Bulk,
    /// Unblocks others and must not wait for a CPU behind them: `SCHED_FIFO` at
    /// [`REALTIME_PRIORITY`]. Needs root or `CAP_SYS_NICE` (or an `RLIMIT_RTPRIO` of at least
    /// that priority); only for threads whose CPU use is bounded by their input.
    Realtime,
    /// The kernel's default: `SCHED_OTHER` with the default slice.
    Normal,
}

/// The `SCHED_FIFO` priority of [`ThreadClass::Realtime`]: the lowest, above every normal
/// thread and below every real-time thread of the system (interrupt threads run at 50).
pub const REALTIME_PRIORITY: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[error("cannot make this thread a {class:?} thread (sched_setattr): {source}")]
pub struct ClassError {
    pub class: ThreadClass,
    #[source]
    pub source: std::io::Error,
}

/// `struct sched_attr` of sched_setattr(2), first version (48 bytes).
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime_ns: u64,
    deadline_ns: u64,
    period_ns: u64,
}

/// Puts the calling thread in `class`, keeping its nice value (which a real-time class
/// ignores while it lasts). Kernels before 6.12 accept a slice request and ignore it.
pub fn set_thread_class(class: ThreadClass) -> Result<(), ClassError> {
    // SAFETY: getpriority only reads its scalar arguments.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let (policy, runtime_ns, priority) = match class {
        ThreadClass::Latency => (libc::SCHED_OTHER, LATENCY_SLICE_NS, 0),
        ThreadClass::Bulk => (libc::SCHED_BATCH, 0, 0),
        ThreadClass::Realtime => (libc::SCHED_FIFO, 0, REALTIME_PRIORITY),
        ThreadClass::Normal => (libc::SCHED_OTHER, 0, 0),
    };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: policy as u32,
        flags: 0,
        nice,
        priority,
        runtime_ns,
        deadline_ns: 0,
        period_ns: 0,
    };
    // SAFETY: passes a pointer to a live, fully initialised sched_attr of the size it declares;
    // the kernel only reads it. Thread id 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(ClassError {
            class,
            source: std::io::Error::last_os_error(),
        })
    }
}

/// [`set_thread_class`], logging a refusal once per process instead of failing: the classes
/// only shape latency, and a kernel or sandbox that refuses them leaves everything working.
pub fn set_thread_class_or_warn(class: ThreadClass) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Err(e) = set_thread_class(class) {
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(error = %e, "thread scheduling class not applied");
        }
    }
}

/// The calling thread's CPU time, nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec that lives on this stack.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Window over which a real-time thread's CPU share is measured.
pub const SHARE_WINDOW_NS: u64 = 10_000_000;
/// Largest share of a CPU a real-time thread may take over a window, in percent: above it, the
/// thread's input is more than it should serve ahead of everyone else. Genuine traffic is
/// bursty: with 8 backends scanning on one CPU the daemon's worker averaged a quarter of it but
/// took 65–80 % of some windows, and at a bound of 50 % (until the thirty-seventh session) it
/// was demoted about ten times a second; each demotion left it a bulk thread's share among
/// the backends for 100 ms, pages came a millisecond late, reads gave up on them, and UDP
/// carried 87 % of the pages at 0.37 × TCP pipelining instead of all of them. A flood keeps it
/// near 100 %.
pub const MAX_REALTIME_SHARE_PCT: u64 = 90;
/// How long a thread that exceeded the share stays demoted before it tries again.
pub const DEMOTION_NS: u64 = 100_000_000;

/// What [`ShareBound::after_step`] asks of the thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareVerdict {
    /// The last window took more than [`MAX_REALTIME_SHARE_PCT`]: leave the real-time class.
    Demote,
    /// The demotion is over: back to the real-time class.
    Promote,
}

/// Bounds a [`ThreadClass::Realtime`] thread by its input (sans-IO: times are passed in). A
/// thread whose CPU time exceeds [`MAX_REALTIME_SHARE_PCT`] of a [`SHARE_WINDOW_NS`] window (a
/// flood of valid datagrams, or a bug) is demoted for [`DEMOTION_NS`], so at worst it holds a
/// CPU ahead of the backends for one window in eleven; the kernel's real-time throttling
/// (`kernel.sched_rt_runtime_us`, 95 % of each second by default) is the backstop behind it.
/// Junk datagrams never get this far: the daemon turns them away first, within bounds.
#[derive(Debug)]
pub struct ShareBound {
    window_start_ns: u64,
    window_cpu_ns: u64,
    demoted_until_ns: Option<u64>,
}

impl ShareBound {
    pub fn new(now_ns: u64, cpu_ns: u64) -> ShareBound {
        ShareBound {
            window_start_ns: now_ns,
            window_cpu_ns: cpu_ns,
            demoted_until_ns: None,
        }
    }

    /// Call after each step of work with the monotonic time; `cpu_ns` (the thread's CPU time,
    /// a system call) is read only when a window ends.
    pub fn after_step(
        &mut self,
        now_ns: u64,
        cpu_ns: impl FnOnce() -> u64,
    ) -> Option<ShareVerdict> {
        if let Some(until) = self.demoted_until_ns {
            if now_ns < until {
                return None;
            }
            self.demoted_until_ns = None;
            self.window_start_ns = now_ns;
            self.window_cpu_ns = cpu_ns();
            return Some(ShareVerdict::Promote);
        }
        let elapsed = now_ns.saturating_sub(self.window_start_ns);
        if elapsed < SHARE_WINDOW_NS {
            return None;
        }
        let cpu = cpu_ns();
        let busy = cpu.saturating_sub(self.window_cpu_ns);
        self.window_start_ns = now_ns;
        self.window_cpu_ns = cpu;
        if busy.saturating_mul(100) > elapsed.saturating_mul(MAX_REALTIME_SHARE_PCT) {
            self.demoted_until_ns = Some(now_ns.saturating_add(DEMOTION_NS));
            return Some(ShareVerdict::Demote);
        }
        None
    }

    pub fn demoted(&self) -> bool {
        self.demoted_until_ns.is_some()
    }
}

/// Sets the calling thread's timer slack: how late the kernel may wake it from a timed sleep
/// (50 µs by default, to batch wake-ups). For threads whose sleeps are measurements, such as
/// the page server's emulated service delay.
pub fn set_timer_slack_ns(ns: u64) -> std::io::Result<()> {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's scheduling policy and nice value.
    fn current_policy_and_nice() -> (i32, i32) {
        // SAFETY: both calls only read their scalar arguments.
        unsafe {
            (
                libc::sched_getscheduler(0),
                libc::getpriority(libc::PRIO_PROCESS, 0),
            )
        }
    }

    #[test]
    fn out_of_range_values_are_refused_before_the_kernel_sees_them() {
        assert!(matches!(
            set_thread_nice(0, 20),
            Err(NiceError::OutOfRange(20))
        ));
        assert!(matches!(
            set_thread_nice(0, -21),
            Err(NiceError::OutOfRange(-21))
        ));
    }

    #[test]
    fn a_thread_can_lower_its_own_priority_and_others_keep_theirs() {
        // SAFETY (both calls): getpriority only reads its scalar arguments.
        let before = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let lower = (before + 1).min(*NICE_RANGE.end());
        let inside = std::thread::spawn(move || {
            set_thread_nice(0, lower).expect("raising one's own nice value needs no privilege");
            unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
        })
        .join()
        .unwrap();
        assert_eq!(inside, lower);
        assert_eq!(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }, before);
    }

    /// The thread's EEVDF slice as the kernel reports it (`se.slice` in /proc, Linux 6.6+).
    fn own_slice_ns() -> Option<u64> {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        sched.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "se.slice").then(|| v.trim().parse().ok())?
        })
    }

    #[test]
    fn thread_classes_set_the_policy_and_keep_the_nice_value() {
        let (latency, slice, bulk) = std::thread::spawn(|| {
            set_thread_nice(0, 3).unwrap();
            set_thread_class(ThreadClass::Latency).expect("an unprivileged class change");
            let latency = current_policy_and_nice();
            let slice = own_slice_ns();
            set_thread_class(ThreadClass::Bulk).expect("an unprivileged class change");
            (latency, slice, current_policy_and_nice())
        })
        .join()
        .unwrap();
        assert_eq!(latency, (libc::SCHED_OTHER, 3));
        assert_eq!(slice, Some(LATENCY_SLICE_NS), "the short slice took effect");
        assert_ne!(
            own_slice_ns(),
            Some(LATENCY_SLICE_NS),
            "only on that thread"
        );
        assert_eq!(bulk, (libc::SCHED_BATCH, 3));
        let normal = std::thread::spawn(|| {
            set_thread_nice(0, 3).unwrap();
            set_thread_class(ThreadClass::Bulk).unwrap();
            set_thread_class(ThreadClass::Normal).expect("an unprivileged class change");
            (current_policy_and_nice(), own_slice_ns())
        })
        .join()
        .unwrap();
        assert_eq!(normal.0, (libc::SCHED_OTHER, 3));
        assert_ne!(normal.1, Some(LATENCY_SLICE_NS));
        // The spawning thread is untouched.
        assert_ne!(current_policy_and_nice().0, libc::SCHED_BATCH);
    }

    #[test]
    fn a_thread_within_its_share_stays_and_one_above_it_is_demoted_then_promoted() {
        let ms = 1_000_000;
        let mut b = ShareBound::new(0, 0);
        // Inside a window nothing is decided, and the CPU clock is not read.
        assert_eq!(
            b.after_step(SHARE_WINDOW_NS - 1, || panic!("read early")),
            None
        );
        // Exactly the bound over a window: stays.
        let at_bound = SHARE_WINDOW_NS * MAX_REALTIME_SHARE_PCT / 100;
        assert_eq!(b.after_step(SHARE_WINDOW_NS, || at_bound), None);
        // Just above it over the next window: demoted.
        let t = 2 * SHARE_WINDOW_NS;
        assert_eq!(
            b.after_step(t, || at_bound + at_bound + 1),
            Some(ShareVerdict::Demote)
        );
        assert!(b.demoted());
        // Stays demoted for the whole demotion, whatever it does meanwhile.
        assert_eq!(b.after_step(t + DEMOTION_NS - 1, || 0), None);
        // Then promoted, with a fresh window starting at the promotion.
        assert_eq!(
            b.after_step(t + DEMOTION_NS, || 500 * ms),
            Some(ShareVerdict::Promote)
        );
        assert!(!b.demoted());
        assert_eq!(
            b.after_step(t + DEMOTION_NS + SHARE_WINDOW_NS, || 500 * ms + ms),
            None
        );
    }

    #[test]
    fn a_long_quiet_wait_does_not_hide_a_busy_window_after_it() {
        // A thread blocked for 50 ms, then busy for a whole window: the quiet window is judged
        // on its own, the busy one after it too.
        let mut b = ShareBound::new(0, 0);
        assert_eq!(b.after_step(50_000_000, || 1_000), None);
        assert_eq!(
            b.after_step(50_000_000 + SHARE_WINDOW_NS, || 1_000 + SHARE_WINDOW_NS),
            Some(ShareVerdict::Demote)
        );
    }

    #[test]
    fn a_busy_real_time_thread_is_bounded_by_its_share() {
        // Root or CAP_SYS_NICE only: elsewhere the refusal is the documented behaviour.
        let outcome = std::thread::spawn(|| {
            if let Err(e) = set_thread_class(ThreadClass::Realtime) {
                // Skipped only where root is not promised (.ci/run promises it).
                assert!(
                    std::env::var_os("UDPF_REQUIRE_ROOT").is_none(),
                    "UDPF_REQUIRE_ROOT is set but SCHED_FIFO was refused: {e}"
                );
                return None;
            }
            let fifo = current_policy_and_nice().0;
            let start = std::time::Instant::now();
            let now = || start.elapsed().as_nanos() as u64;
            let mut b = ShareBound::new(now(), thread_cpu_ns());
            // Spin as a flood would keep a worker busy; the bound must demote within a window
            // or two (one window may straddle the start).
            let verdict = loop {
                if let Some(v) = b.after_step(now(), thread_cpu_ns) {
                    break (v, now());
                }
                assert!(now() < 1_000_000_000, "never demoted");
            };
            Some((fifo, verdict))
        })
        .join()
        .unwrap();
        if let Some((fifo, (verdict, at_ns))) = outcome {
            assert_eq!(fifo, libc::SCHED_FIFO);
            assert_eq!(verdict, ShareVerdict::Demote);
            assert!(at_ns <= 3 * SHARE_WINDOW_NS, "demoted after {at_ns} ns");
        }
    }

    #[test]
    fn timer_slack_is_per_thread() {
        let slack = std::thread::spawn(|| {
            set_timer_slack_ns(1_000).unwrap();
            // SAFETY: PR_GET_TIMERSLACK takes no pointer.
            unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) }
        })
        .join()
        .unwrap();
        assert_eq!(slack, 1_000);
        // SAFETY: as above.
        assert_ne!(
            unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) },
            1_000
        );
    }
}
