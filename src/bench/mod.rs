//! Benchmarks: every figure is measured in the same run as its baseline and reported as a ratio.
//!
//! Owns: the record format (`BenchRecord`, one JSON line per case), its printing and where a
//! bench's page server starts (`start_server`). Benches may use every module, `cmd` included
//! (for `cmd::daemon_proc`); only `main.rs` imports `bench`.

use serde::Serialize;

/// One measured case, printed as one JSON line with `--json` (ARCHITECTURE §9).
#[derive(Debug, Clone, Serialize)]
pub struct BenchRecord {
    pub bench: String,
    pub case: String,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub unit: String,
    pub value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub lower_is_better: bool,
}

impl BenchRecord {
    pub fn new(bench: &str, case: &str, unit: &str, value: f64) -> Self {
        BenchRecord {
            bench: bench.to_string(),
            case: case.to_string(),
            params: serde_json::Map::new(),
            unit: unit.to_string(),
            value,
            baseline: None,
            ratio: None,
            lower_is_better: false,
        }
    }

    pub fn param(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.params.insert(key.to_string(), value.into());
        self
    }

    /// Compares this case against `baseline` measured in the same run: `ratio = value / baseline`.
    pub fn against(mut self, baseline: &BenchRecord) -> Self {
        self.baseline = Some(baseline.case.clone());
        self.ratio = (baseline.value > 0.0).then(|| self.value / baseline.value);
        self
    }

    pub fn lower_is_better(mut self) -> Self {
        self.lower_is_better = true;
        self
    }
}

/// A scan and the worker daemon's CPU during it: what the compute spent on its pages, the
/// backend's thread and the daemon together, since on a compute both take the same CPUs.
pub(crate) struct MeasuredScan {
    pub report: crate::compute::scan::ScanReport,
    pub daemon_cpu_s: f64,
    /// Times the daemon's threads were scheduled during the scan.
    pub daemon_switches: u64,
}

impl MeasuredScan {
    /// (backend, daemon, sum) CPU per page, µs; the backend's without the emulated query work.
    pub fn compute_cpu_us(&self) -> (f64, f64, f64) {
        let pages = self.report.pages.max(1) as f64;
        let backend = self.report.cpu_us_per_page;
        let daemon = self.daemon_cpu_s * 1e6 / pages;
        (backend, daemon, backend + daemon)
    }

    /// Scans `config` (`lfc` for the modes that use it) with `daemon` beside it, measuring the
    /// daemon's CPU and scheduling over the scan.
    pub fn run(
        config: &crate::compute::scan::ScanConfig,
        lfc: Option<&::lfc::Lfc>,
        daemon: &crate::cmd::daemon_proc::DaemonProc,
    ) -> anyhow::Result<MeasuredScan> {
        let (cpu_before, switches_before) = daemon.cpu_and_switches()?;
        let report = crate::compute::scan::run_scan(config, lfc)?;
        let (cpu_after, switches_after) = daemon.cpu_and_switches()?;
        Ok(MeasuredScan {
            report,
            daemon_cpu_s: cpu_after - cpu_before,
            daemon_switches: switches_after - switches_before,
        })
    }

    /// `bench`'s `case` record of the compute's CPU per page (lower is better), with its two
    /// parts and how often each was switched onto the CPU per page as params.
    pub fn compute_cpu_record(&self, bench: &str, case: &str) -> BenchRecord {
        let (backend, daemon, sum) = self.compute_cpu_us();
        let pages = self.report.pages.max(1) as f64;
        BenchRecord::new(bench, case, "us/page", sum)
            .param("backend_cpu_us_per_page", round1(backend))
            .param("daemon_cpu_us_per_page", round1(daemon))
            .param(
                "backend_switches_per_page",
                round3(self.report.context_switches as f64 / pages),
            )
            .param(
                "daemon_switches_per_page",
                round3(self.daemon_switches as f64 / pages),
            )
            .lower_is_better()
    }
}

/// `x` to one decimal, for params read by people (latencies in µs, MB/s).
pub(crate) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The scan both paths are compared over in `bench degrade` and `bench net`: the page
/// server's service delay, TCP pipelining's depth and UDP's prefetch distance.
#[derive(Debug, Clone, clap::Args)]
pub struct PathArgs {
    /// Page server service delay of every request, microseconds.
    #[arg(long, default_value_t = 200)]
    pub delay_us: u64,
    /// Pipeline depth of the tcp-pipelined baseline (Neon's 128, as in `bench scan`).
    #[arg(long, default_value_t = crate::compute::scan::DEFAULT_TCP_DEPTH)]
    pub depth: u32,
    /// Prefetch distance of the udp scans (as in `bench scan`).
    #[arg(long, default_value_t = crate::compute::scan::DEFAULT_UDP_DISTANCE)]
    pub distance: u32,
}

/// Path changes of several scans counted by why (their reasons with numbers and the shard
/// prefix left out, "udp: first prefetch read did not arrive in time"), so that a record of
/// 64 backends says which rule moved them without 64 logs.
pub(crate) fn state_change_reasons<'a>(
    logs: impl IntoIterator<Item = &'a [crate::compute::backend::StateChange]>,
) -> serde_json::Value {
    let mut out = std::collections::BTreeMap::<String, u64>::new();
    // Each log's first entry is where the scan started, not a change.
    for c in logs.into_iter().flat_map(|log| log.iter().skip(1)) {
        let reason = c
            .reason
            .split_once(": ")
            .map_or(c.reason.as_str(), |(head, rest)| {
                if head.starts_with("shard ") {
                    rest
                } else {
                    c.reason.as_str()
                }
            });
        // Numbers become '#', a run of digits and dots one '#'.
        let mut class = String::with_capacity(reason.len());
        for ch in reason.chars() {
            if ch.is_ascii_digit() || ch == '.' {
                if !class.ends_with('#') {
                    class.push('#');
                }
            } else {
                class.push(ch);
            }
        }
        // The path as `udp_state_log` names it ("udp", "tcp-pipelined").
        let to = serde_json::to_value(c.to).unwrap_or_default();
        let to = to.as_str().unwrap_or("?");
        *out.entry(format!("{to}: {class}")).or_insert(0) += 1;
    }
    serde_json::json!(out)
}

/// `x` to three decimals, for params read by people (seconds, ratios).
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The repetition with the median ratio (of an even count, the upper of the two middle ones)
/// and every repetition's ratio, ascending: what a bench records of repeated runs.
pub(crate) fn median_by_ratio<T>(mut runs: Vec<T>, ratio: impl Fn(&T) -> f64) -> (T, Vec<f64>) {
    assert!(!runs.is_empty(), "at least one repetition");
    runs.sort_by(|x, y| ratio(x).total_cmp(&ratio(y)));
    let ratios = runs.iter().map(&ratio).collect();
    (runs.swap_remove(runs.len() / 2), ratios)
}

/// Runs one repetition's baseline and case: the baseline first in even repetitions, second in
/// odd ones, so that what a repetition's first run pays (a fresh daemon's or server's first
/// connections, a burst of load) falls on either side alike: on this project's two-CPU test
/// machine single scans moved by a quarter between consecutive runs.
pub(crate) fn in_turns<B, C>(
    rep: u32,
    baseline: impl FnOnce() -> anyhow::Result<B>,
    case: impl FnOnce() -> anyhow::Result<C>,
) -> anyhow::Result<(B, C)> {
    if rep.is_multiple_of(2) {
        let b = baseline()?;
        Ok((b, case()?))
    } else {
        let c = case()?;
        Ok((baseline()?, c))
    }
}

/// A scan of synthetic relation 0 on `server` in `mode`, as a bench's backend runs it: the
/// pipeline depth (tcp modes) or prefetch distance (udp) `ahead`, no per-page work, and the
/// daemon found through the LFC header (the rendezvous is part of what benches measure).
pub(crate) fn relation_scan(
    server: &crate::pageserver::PageServer,
    mode: crate::compute::scan::ScanMode,
    ahead: u32,
) -> crate::compute::scan::ScanConfig {
    crate::compute::scan::ScanConfig {
        connect: crate::protocol::client::ConnectOptions::new(server.local_addr().to_string()),
        rel: crate::pageserver::source::Synthetic::rel(0),
        blocks: None,
        mode,
        distance: ahead,
        cpu_per_page_us: 0,
        receive: crate::compute::backend::Receive::Daemon { port: None },
        read_path: crate::compute::backend::read_path::ReadPathConfig::default(),
        shards: Default::default(),
    }
}

/// A page server on an ephemeral local port serving `rels` synthetic relations of `pages` pages,
/// each request held `delay_us`, dropping `drop_prefetch` of its prefetch datagrams.
pub(crate) fn synthetic_server(
    pages: u32,
    rels: u32,
    delay_us: u64,
    drop_prefetch: f64,
) -> anyhow::Result<crate::pageserver::PageServer> {
    start_server(synthetic_server_config(
        pages,
        rels,
        delay_us,
        drop_prefetch,
    ))
}

/// [`synthetic_server`]'s configuration, for a bench that changes more of it (a page server
/// without the UDP extension, `pageserver --no-udp-extension`) before `start_server`.
pub(crate) fn synthetic_server_config(
    pages: u32,
    rels: u32,
    delay_us: u64,
    drop_prefetch: f64,
) -> crate::pageserver::ServerConfig {
    use crate::pageserver::{source::SourceSpec, ServerConfig};
    ServerConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        source: SourceSpec::Synthetic { rels, pages },
        service_delay_us: delay_us,
        drop_prefetch,
        ..ServerConfig::default()
    }
}

/// A bench's worker daemon flags: `--threads`, and `--thread-class` when the bench names one.
pub(crate) fn daemon_flags(
    threads: &str,
    class: Option<crate::cmd::workers::WorkerClass>,
) -> Vec<&str> {
    let mut flags = vec!["--threads", threads];
    if let Some(c) = class {
        flags.extend(["--thread-class", c.name()]);
    }
    flags
}

/// Starts a bench's in-process page server where the run's topology puts the page server
/// (`topology::on_server`): every bench starts its servers here.
pub(crate) fn start_server(
    config: crate::pageserver::ServerConfig,
) -> anyhow::Result<crate::pageserver::PageServer> {
    Ok(topology::on_server(|| {
        crate::pageserver::PageServer::start(config)
    })??)
}

/// The CPU as `/proc/cpuinfo` names it (model name, family and model, since a virtual machine's
/// model name can be as vague as "AMD EPYC") and the instruction sets the datagram and page
/// checksums choose their code paths by. Figures differ between CPU types: every table says
/// which one it came from.
pub fn cpu_description() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| "?".into())
    };
    let flags = field("flags");
    let has: Vec<&str> = ["avx2", "avx512f", "vaes", "vpclmulqdq", "sha_ni"]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|x| x == *f))
        .collect();
    format!(
        "{} (family {} model {}; {})",
        field("model name"),
        field("cpu family"),
        field("model"),
        if has.is_empty() {
            "no AVX2".to_string()
        } else {
            has.join(" ")
        }
    )
}

/// Prints records either as JSON lines or as a human table with the machine's core count.
pub fn print_records(records: &[BenchRecord], json: bool) {
    if json {
        for r in records {
            println!(
                "{}",
                serde_json::to_string(r).expect("bench record serialises")
            );
        }
        return;
    }
    println!(
        "machine: {}, {}; {}",
        topology::describe(),
        cpu_description(),
        crate::cmd::daemon_proc::scratch_base_description()
    );
    println!(
        "{:<10} {:<22} {:>14} {:<8} {:>9}  params",
        "bench", "case", "value", "unit", "ratio"
    );
    for r in records {
        let ratio = match (&r.baseline, r.ratio) {
            (Some(b), Some(x)) => format!("{x:.2}x {b}"),
            _ => String::new(),
        };
        let params: Vec<String> = r.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<10} {:<22} {:>14.1} {:<8} {:>9}  {}",
            r.bench,
            r.case,
            r.value,
            r.unit,
            ratio,
            params.join(" ")
        );
    }
}
pub mod all;
pub mod datagram;
pub mod degrade;
pub mod flood;
pub mod getpage;
pub mod hol;
pub mod ingest;
pub mod lfc;
pub mod lfc_dir;
pub mod many_backends;
pub mod net;
pub mod plot;
pub mod prewarm;
pub mod scan;
pub mod shards;
pub mod topology;
pub mod twohost;

#[cfg(test)]
mod tests {
    use super::{in_turns, median_by_ratio};

    #[test]
    fn the_median_repetition_is_chosen_by_ratio_and_every_ratio_is_listed_ascending() {
        let (m, ratios) = median_by_ratio(vec![("c", 3.0), ("a", 1.0), ("b", 2.0)], |r| r.1);
        assert_eq!((m.0, ratios), ("b", vec![1.0, 2.0, 3.0]));
        let (m, _) = median_by_ratio(vec![4.0, 1.0, 3.0, 2.0], |r| *r);
        assert_eq!(m, 3.0, "of an even count, the upper middle");
    }
    use std::cell::RefCell;

    #[test]
    fn the_baseline_runs_first_in_even_repetitions_and_second_in_odd_ones() {
        for rep in 0..4 {
            let order = RefCell::new(Vec::new());
            let (b, c) = in_turns(
                rep,
                || {
                    order.borrow_mut().push("baseline");
                    Ok(1)
                },
                || {
                    order.borrow_mut().push("case");
                    Ok("c")
                },
            )
            .unwrap();
            assert_eq!(
                (b, c),
                (1, "c"),
                "results come back in place whatever the order"
            );
            let expected = if rep % 2 == 0 {
                ["baseline", "case"]
            } else {
                ["case", "baseline"]
            };
            assert_eq!(*order.borrow(), expected, "repetition {rep}");
        }
        // A failure stops the repetition: the other side does not run.
        let ran = RefCell::new(false);
        let r = in_turns(
            1,
            || {
                *ran.borrow_mut() = true;
                Ok(())
            },
            || anyhow::bail!("the case failed") as anyhow::Result<()>,
        );
        assert!(r.is_err() && !*ran.borrow());
    }
}
