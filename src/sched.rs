//! Thread scheduling priority (nice values) on Linux.
//!
//! Why it matters here: the page server's prefetch sender is one thread serving every
//! connection, and the worker daemon's few threads serve every backend. Under load each gets
//! the CPU share of one ordinary thread among the hundreds that serve connections and run
//! backends, so prefetches arrive after the reads that wanted them gave up (`bench
//! many-backends`). A negative nice value gives such a thread the weight of several ordinary
//! ones.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
