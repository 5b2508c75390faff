//! Prometheus' text exposition format (0.0.4), the parts both servers share: family headers,
//! a latency histogram of atomic buckets, and the standard `process_*` metrics read from
//! `/proc/self` (the names and meanings of the official client libraries, so the usual
//! dashboards and alerts work unchanged).
//!
//! Owns: the text helpers (`family`, `single`, `labelled`, `histogram`), `LatencyHistogram` and the
//! process metrics read from `/proc` (`ProcessStats`). Part of the shared layer: it imports no
//! other module of this crate, knows neither server's counters (each renders its own) and serves
//! nothing (`http` does).

use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (µs) of the latency histograms' buckets: 1-2-5 steps from 10 µs (a GetPage
/// from memory on a fast host) to 1 s (a request stuck behind a WAL wait); +Inf above.
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
    500_000, 1_000_000,
];

/// `# HELP` and `# TYPE` of one family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A family with one unlabelled sample.
pub fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A family with one sample per value of one label.
pub fn labelled<V: Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (impl Display, V)>,
) {
    family(out, name, kind, help);
    for (value_of_label, value) in samples {
        let _ = writeln!(out, "{name}{{{label}=\"{value_of_label}\"}} {value}");
    }
}

/// A latency histogram that any number of threads record into without a lock: one relaxed
/// atomic add for the bucket and one for the sum. Buckets are kept non-cumulative (one add per
/// observation) and made cumulative when rendered.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket of `LATENCY_BUCKETS_US`; the last entry is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        self.observe_ns(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn observe_ns(&self, ns: u64) {
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&us| ns <= us * 1_000)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

/// One histogram family: the sum of `parts` (e.g. one histogram per thread), with cumulative
/// `_bucket{le}` samples, `_sum` in seconds and `_count`.
pub fn histogram<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    parts: impl IntoIterator<Item = &'a LatencyHistogram>,
) {
    let mut buckets = [0u64; LATENCY_BUCKETS_US.len() + 1];
    let mut sum_ns = 0u64;
    for h in parts {
        for (total, b) in buckets.iter_mut().zip(&h.buckets) {
            *total += b.load(Ordering::Relaxed);
        }
        sum_ns = sum_ns.wrapping_add(h.sum_ns.load(Ordering::Relaxed));
    }
    family(out, name, "histogram", help);
    let mut cumulative = 0u64;
    for (i, count) in buckets.iter().enumerate() {
        cumulative += count;
        let le = match LATENCY_BUCKETS_US.get(i) {
            Some(&us) => (us as f64 / 1e6).to_string(),
            None => "+Inf".to_string(),
        };
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum {}", sum_ns as f64 / 1e9);
    let _ = writeln!(out, "{name}_count {cumulative}");
}

/// What the standard process metrics report, read from `/proc/self`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    pub threads: u64,
    /// Unix time the process started.
    pub start_time_seconds: f64,
    pub open_fds: u64,
    /// The soft `RLIMIT_NOFILE`.
    pub max_fds: u64,
}

/// The fields of `/proc/self/stat` the process metrics use, in the units found there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatFields {
    utime_ticks: u64,
    stime_ticks: u64,
    threads: u64,
    start_ticks_after_boot: u64,
    vsize_bytes: u64,
    rss_pages: u64,
}

/// Parses `/proc/[pid]/stat` (proc(5)). The command name (field 2) is in parentheses and may
/// itself hold spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<StatFields> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // `fields[0]` is field 3 (state): field n is at index n - 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(StatFields {
        utime_ticks: field(14)?,
        stime_ticks: field(15)?,
        threads: field(20)?,
        start_ticks_after_boot: field(22)?,
        vsize_bytes: field(23)?,
        rss_pages: field(24)?,
    })
}

/// The boot time (`btime`, Unix seconds) from `/proc/stat`'s text.
fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

impl ProcessStats {
    /// This process's figures now; `None` where `/proc` cannot be read (not Linux, or not
    /// mounted), and then the families are left out rather than reported as zero.
    pub fn read() -> Option<ProcessStats> {
        let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
        let boot = parse_boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
        // SAFETY: sysconf and getrlimit only read process parameters; `limit` is a valid out
        // pointer for getrlimit.
        let (ticks, page_size, max_fds) = unsafe {
            let mut limit: libc::rlimit = std::mem::zeroed();
            let max_fds = match libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) {
                0 => limit.rlim_cur,
                _ => return None,
            };
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
                max_fds,
            )
        };
        if ticks <= 0 || page_size <= 0 {
            return None;
        }
        let ticks = ticks as f64;
        // The directory listing's own descriptor is among the entries; as in the official
        // clients it is counted (the figure is for alerts near `max_fds`, not exact to one).
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Some(ProcessStats {
            cpu_seconds: (stat.utime_ticks + stat.stime_ticks) as f64 / ticks,
            resident_memory_bytes: stat.rss_pages * page_size as u64,
            virtual_memory_bytes: stat.vsize_bytes,
            threads: stat.threads,
            start_time_seconds: boot as f64 + stat.start_ticks_after_boot as f64 / ticks,
            open_fds,
            max_fds,
        })
    }

    /// The `process_*` families.
    pub fn render(&self, out: &mut String) {
        single(
            out,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            self.cpu_seconds,
        );
        let gauges: [(&str, &str, f64); 6] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                self.resident_memory_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                self.virtual_memory_bytes as f64,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                self.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                self.max_fds as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                self.start_time_seconds,
            ),
            (
                "process_threads",
                "Number of OS threads in the process.",
                self.threads as f64,
            ),
        ];
        for (name, help, value) in gauges {
            single(out, name, "gauge", help, value);
        }
    }
}

/// Appends this process's `process_*` families (nothing where `/proc` cannot be read).
pub fn process_metrics(out: &mut String) {
    if let Some(p) = ProcessStats::read() {
        p.render(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        // A command name with a space and a ')' of its own, as a thread may be named.
        let stat = "4242 (a b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    150 25 0 0 20 0 7 0 12345 987654321 2048 18446744073709551615";
        assert_eq!(
            parse_stat(stat),
            Some(StatFields {
                utime_ticks: 150,
                stime_ticks: 25,
                threads: 7,
                start_ticks_after_boot: 12345,
                vsize_bytes: 987_654_321,
                rss_pages: 2048,
            })
        );
        assert_eq!(parse_stat("4242 (cut short) S 1 2"), None);
        assert_eq!(
            parse_boot_time("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn this_process_reads_as_alive() {
        // CPU time is accounted in clock ticks (10 ms): spin until one shows, for at most
        // 10 s of wall time (a loaded machine may give this thread little of it).
        let _file = std::fs::File::open("/proc/self/stat").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut x = 0u64;
        let p = loop {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            let p = ProcessStats::read().expect("/proc is readable on Linux");
            if p.cpu_seconds > 0.0 || std::time::Instant::now() > deadline {
                break p;
            }
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(p.cpu_seconds > 0.0, "{p:?}");
        assert!(p.resident_memory_bytes > 0 && p.virtual_memory_bytes >= p.resident_memory_bytes);
        assert!(
            p.threads >= 1 && p.open_fds >= 4 && p.max_fds >= p.open_fds,
            "{p:?}"
        );
        // Started within the last day and not in the future (clock ticks are 10 ms; btime is
        // whole seconds).
        assert!(p.start_time_seconds <= now + 1.0 && p.start_time_seconds > now - 86_400.0);
        let mut out = String::new();
        p.render(&mut out);
        assert!(
            out.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{out}"
        );
        assert!(out.contains("\nprocess_threads "), "{out}");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_le_is_inclusive() {
        let a = LatencyHistogram::default();
        let b = LatencyHistogram::default();
        a.observe(Duration::from_micros(10)); // exactly a bound: in it
        a.observe(Duration::from_nanos(10_001)); // just above: the next one
        b.observe(Duration::from_millis(3));
        b.observe(Duration::from_secs(5)); // beyond the last bound
        assert_eq!((a.count(), b.count()), (2, 2));
        let mut out = String::new();
        histogram(&mut out, "x_seconds", "Test.", [&a, &b]);
        for line in [
            "# TYPE x_seconds histogram",
            "x_seconds_bucket{le=\"0.00001\"} 1",
            "x_seconds_bucket{le=\"0.00002\"} 2",
            "x_seconds_bucket{le=\"0.002\"} 2",
            "x_seconds_bucket{le=\"0.005\"} 3",
            "x_seconds_bucket{le=\"1\"} 3",
            "x_seconds_bucket{le=\"+Inf\"} 4",
            "x_seconds_sum 5.003020001",
            "x_seconds_count 4",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in\n{out}");
        }
    }
}
