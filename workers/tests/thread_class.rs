//! The worker threads' scheduling class (`DaemonConfig::thread_class`, `workers
//! --thread-class`): each worker is in the class asked for, or bulk when the real-time class is
//! refused, and `/metrics` says which. A file of its own: it reads the policy of every
//! `udp-worker-*` thread of the process, so no other test's daemon may run beside it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use workers::daemon::{self, DaemonConfig};
use workers::udp::IoChoice;

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn config(lfc: &Path, thread_class: workers::sched::ThreadClass) -> DaemonConfig {
    let localhost0: SocketAddr = "127.0.0.1:0".parse().unwrap();
    DaemonConfig {
        lfc: lfc.to_path_buf(),
        create_size_bytes: Some(256 * lfc::PAGE_SIZE as u64),
        recreate: false,
        listen: localhost0,
        threads: 2,
        io: IoChoice::Epoll,
        metrics: Some(localhost0),
        pid_file: None,
        recv_buffer_bytes: 0,
        slots_per_thread: 8,
        gro: true,
        prefault: false,
        thread_class: Some(thread_class),
    }
}

/// Scheduling policy of every worker thread of this process (`udp-worker-*`).
fn worker_policies() -> Vec<i32> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap();
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("udp-worker-") {
            let tid: i32 = task.file_name().to_str().unwrap().parse().unwrap();
            // SAFETY: only reads its scalar argument.
            policies.push(unsafe { libc::sched_getscheduler(tid) });
        }
    }
    policies
}

#[test]
fn worker_threads_run_in_the_class_asked_for_and_the_metrics_say_which() {
    use workers::sched::{set_thread_class, ThreadClass};
    // Whether this process may use SCHED_FIFO at all (root or CAP_SYS_NICE): if not, the
    // daemon must fall back to bulk and say so.
    let permitted = std::thread::spawn(|| set_thread_class(ThreadClass::Realtime).is_ok())
        .join()
        .unwrap();
    assert!(
        permitted || std::env::var_os("UDPF_REQUIRE_ROOT").is_none(),
        "UDPF_REQUIRE_ROOT is set but SCHED_FIFO was refused"
    );
    for (class, policy, realtime) in [
        (
            ThreadClass::Realtime,
            if permitted {
                libc::SCHED_FIFO
            } else {
                libc::SCHED_BATCH
            },
            u64::from(permitted),
        ),
        (ThreadClass::Bulk, libc::SCHED_BATCH, 0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir.path().join("lfc"), class);
        let stop = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|scope| {
            let daemon = scope.spawn(|| daemon::run(&cfg, &stop, |s| tx.send(s.metrics).unwrap()));
            // A failed assertion below must still stop the daemon, or the scope never ends.
            let stop_on_exit = StopOnDrop(&stop);
            let addr = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the daemon started")
                .expect("a metrics endpoint was asked for");
            // Each worker sets its class as it starts, before its first receive: wait for both.
            let deadline = Instant::now() + Duration::from_secs(10);
            let metrics = loop {
                let m = workers::http::get(addr, "/metrics").unwrap();
                let set = (0..2).all(|i| {
                    m.contains(&format!(
                        "udp_prefetch_thread_realtime{{thread=\"{i}\"}} {realtime}\n"
                    ))
                });
                if set && worker_policies() == [policy, policy] {
                    break m;
                }
                assert!(
                    Instant::now() < deadline,
                    "{class:?}: policies {:?}, metrics {m}",
                    worker_policies()
                );
                std::thread::sleep(Duration::from_millis(10));
            };
            assert!(
                metrics.contains("udp_prefetch_thread_realtime_demotions_total{thread=\"0\"} 0\n"),
                "an idle worker is never demoted: {metrics}"
            );
            drop(stop_on_exit);
            daemon.join().unwrap().unwrap();
        });
    }
}
