//! `udp-prefetch bench prewarm`: refilling a cold LFC through UDP (at 0 % and 5 % loss), and
//! from a page server without the extension (`--no-udp-extension`: the prewarm falls back to
//! pipelined GetPages), against a TCP-only prewarm (pipelined GetPages), and the
//! daemon's ingest ceiling, all in one run; then what a prewarm costs the scans running beside
//! it (ARCHITECTURE §2): their pages/s alone, and beside a prewarm at background and at foreground
//! priority.
//!
//! Owns: nothing shared; it drives the public APIs of `PageServer`, `compute::prewarm`,
//! `compute::scan`, `lfc` and `cmd::daemon_proc` and may not be imported by the library's other
//! modules.

use super::{round1, round3, start_server, synthetic_server, synthetic_server_config, BenchRecord};
use crate::cmd::daemon_proc::{DaemonProc, ScratchDir};
use crate::compute::backend::read_path::ReadPathConfig;
use crate::compute::prewarm::driver::DEFAULT_YIELD_PAGES;
use crate::compute::prewarm::schedule::ScheduleConfig;
use crate::compute::prewarm::{run_prewarm, PrewarmConfig, PrewarmReport};
use crate::compute::scan::{run_scan, ScanConfig, ScanMode, ScanReport};
use crate::pageserver::source::Synthetic;
use crate::protocol::client::ConnectOptions;
use crate::protocol::pagestream::PrefetchPriority;
use lfc::Lfc;

#[derive(Debug, Clone, clap::Args)]
pub struct PrewarmBenchArgs {
    /// Pages to prewarm per case (131072 = 1 GiB).
    #[arg(long, default_value_t = 131_072)]
    pub pages: u32,
    /// Seconds of the ingest-ceiling measurement.
    #[arg(long, default_value_t = 3.0)]
    pub ingest_seconds: f64,
    /// Pages of each scan in the beside-scans cases (each scan its own relation); 0 skips them.
    #[arg(long, default_value_t = 32_768)]
    pub scan_pages: u32,
    /// Concurrent udp scans in the beside-scans cases.
    #[arg(long, default_value_t = 2)]
    pub scans: u32,
    /// The background prewarm's `--yield-pages` in the beside-scans cases (0: it does not
    /// yield to the scans).
    #[arg(long, default_value_t = DEFAULT_YIELD_PAGES)]
    pub yield_pages: usize,
    /// Times the beside-scans cases run, alternated (alone, background, foreground, alone, …);
    /// each record is the median run, its ratio the median of the runs' ratios (one run moves
    /// by ±0.15 on a shared machine).
    #[arg(long, default_value_t = 1)]
    pub repeats: u32,
}

/// What the scans of one beside-scans case did, and the prewarm beside them, if any.
struct BesideScans {
    /// The scans' pages together over the longest scan's time.
    scan_pages_per_s: f64,
    /// The scans' reads served by pages UDP brought (hits and late hits), and by their TCP
    /// pipelines after they left UDP, summed over the scans: where the scans lost.
    scan_udp_reads: u64,
    scan_tcp_reads: u64,
    /// The scans' moves between UDP and TCP pipelining, summed.
    scan_path_changes: u64,
    /// The scans' own CPU per page (mean over the scans), µs.
    scan_cpu_us_per_page: f64,
    /// The worker daemon's CPU from the scans' start to the last one's end, ms.
    daemon_cpu_ms: f64,
    /// Pages the prewarm had brought into the cache when the last scan ended.
    prewarm_pages_during_scans: u64,
    prewarm: Option<PrewarmReport>,
}

/// The prewarm of the beside-scans rows: the whole of relation 0's plan by UDP, at `priority`.
fn beside_prewarm_config(
    connect: ConnectOptions,
    udp_port: u16,
    priority: PrefetchPriority,
    args: &PrewarmBenchArgs,
) -> PrewarmConfig {
    PrewarmConfig {
        connect,
        prefetch_port: Some(udp_port),
        rate_bytes_per_s: 0,
        deadline: None,
        schedule: ScheduleConfig::default(),
        progress: false,
        udp: true,
        priority,
        yield_pages: args.yield_pages,
        shards: Default::default(),
    }
}

/// One scan of the beside-scans rows: `--scan-pages` of relation `rel` in `udp` mode.
fn beside_scan_config(
    connect: ConnectOptions,
    rel: u32,
    udp_port: u16,
    args: &PrewarmBenchArgs,
) -> ScanConfig {
    ScanConfig {
        connect,
        rel: Synthetic::rel(rel),
        blocks: Some(0..args.scan_pages),
        mode: ScanMode::Udp,
        distance: 512,
        cpu_per_page_us: 0,
        receive: crate::compute::backend::Receive::Daemon {
            port: Some(udp_port),
        },
        read_path: ReadPathConfig::default(),
        shards: Default::default(),
    }
}

/// `args.scans` udp scans, each of its own relation (1, 2, …), on a fresh LFC and daemon;
/// beside a prewarm of relation 0 (`args.pages`) at `prewarm` priority, started with them.
fn beside_scans_case(
    scratch: &ScratchDir,
    name: &str,
    args: &PrewarmBenchArgs,
    prewarm: Option<PrefetchPriority>,
) -> anyhow::Result<BesideScans> {
    let server = synthetic_server(args.pages.max(args.scan_pages), 1 + args.scans, 0, 0.0)?;
    let lfc_path = scratch.0.join(format!("lfc-{name}"));
    // Room for everything: no eviction blurs the comparison.
    let pages = u64::from(args.pages) + u64::from(args.scans) * u64::from(args.scan_pages);
    let mut daemon = DaemonProc::start(&lfc_path, pages * 8192 + (64 << 20), &[])?;
    let lfc = Lfc::open(&lfc_path)?;
    let connect = ConnectOptions::new(server.local_addr().to_string());
    let udp_port = daemon.udp_port;
    let daemon_cpu_before = daemon.cpu_seconds()?;
    let result = std::thread::scope(|s| -> anyhow::Result<BesideScans> {
        let prewarm = prewarm.map(|priority| {
            let rel = Synthetic::rel(0);
            let plan: Vec<_> = (0..args.pages).map(|b| rel.block(b)).collect();
            let cfg = beside_prewarm_config(connect.clone(), udp_port, priority, args);
            let lfc = &lfc;
            s.spawn(move || run_prewarm(&cfg, lfc, &plan))
        });
        let scans: Vec<_> = (0..args.scans)
            .map(|i| {
                let cfg = beside_scan_config(connect.clone(), 1 + i, udp_port, args);
                let lfc = &lfc;
                s.spawn(move || run_scan(&cfg, Some(lfc)))
            })
            .collect();
        let mut reports = Vec::with_capacity(scans.len());
        for scan in scans {
            let r = scan.join().expect("scan thread")?;
            anyhow::ensure!(
                r.verified == u64::from(args.scan_pages) && r.failed == 0,
                "{name}: a scan did not verify every page: {r:?}"
            );
            reports.push(r);
        }
        let daemon_cpu_ms = (daemon.cpu_seconds()? - daemon_cpu_before) * 1e3;
        let scanned = u64::from(args.scans) * u64::from(args.scan_pages);
        let prewarm_pages_during_scans = lfc.stats().used_pages.saturating_sub(scanned);
        let prewarm = prewarm
            .map(|p| p.join().expect("prewarm thread"))
            .transpose()?;
        let slowest = reports.iter().map(|r| r.elapsed_s).fold(0.0, f64::max);
        let sum = |f: fn(&ScanReport) -> u64| reports.iter().map(f).sum::<u64>();
        Ok(BesideScans {
            scan_pages_per_s: scanned as f64 / slowest.max(1e-9),
            scan_udp_reads: sum(|r| r.hits + r.late_hits),
            scan_tcp_reads: sum(|r| r.tcp_pipelined + r.fallbacks),
            scan_path_changes: sum(|r| r.udp_state_changes),
            scan_cpu_us_per_page: reports.iter().map(|r| r.cpu_us_per_page).sum::<f64>()
                / reports.len().max(1) as f64,
            daemon_cpu_ms,
            prewarm_pages_during_scans,
            prewarm,
        })
    });
    drop(lfc);
    daemon.stop();
    let _ = std::fs::remove_file(&lfc_path);
    result
}

/// The beside-scans rows: the scans alone, then beside a background and a foreground prewarm
/// (ratio: their pages/s over the scans' alone; the target is ≥ 0.8 at background).
fn beside_scans(scratch: &ScratchDir, args: &PrewarmBenchArgs) -> anyhow::Result<Vec<BenchRecord>> {
    let rec = |case: &str, b: &BesideScans| {
        let r = BenchRecord::new("prewarm", case, "pages/s", b.scan_pages_per_s)
            .param("scans", args.scans)
            .param("scan_pages", args.scan_pages)
            .param("yield_pages", args.yield_pages)
            .param("scan_udp_reads", b.scan_udp_reads)
            .param("scan_tcp_reads", b.scan_tcp_reads)
            .param("scan_path_changes", b.scan_path_changes)
            .param("scan_cpu_us_per_page", round1(b.scan_cpu_us_per_page))
            .param("daemon_cpu_ms", round1(b.daemon_cpu_ms));
        match &b.prewarm {
            None => r,
            Some(p) => r
                .param("prewarm_pages", p.pages)
                .param("prewarm_pages_during_scans", b.prewarm_pages_during_scans)
                .param("prewarm_mb_per_s", round1(p.mb_per_s))
                .param("prewarm_via_tcp", p.via_tcp)
                .param("prewarm_yielded_rounds", p.yielded_rounds),
        }
    };
    let cases = [
        ("scans-alone", None),
        (
            "scans-beside-prewarm-background",
            Some(PrefetchPriority::Background),
        ),
        (
            "scans-beside-prewarm-foreground",
            Some(PrefetchPriority::Foreground),
        ),
    ];
    // runs[case][k]: case's record of repetition k, its ratio against that repetition's alone.
    let mut runs: Vec<Vec<BenchRecord>> = vec![Vec::new(); cases.len()];
    for _ in 0..args.repeats.max(1) {
        let mut alone: Option<BenchRecord> = None;
        for (c, &(case, priority)) in cases.iter().enumerate() {
            let b = beside_scans_case(scratch, case, args, priority)?;
            if let Some(p) = &b.prewarm {
                anyhow::ensure!(p.complete, "{case}: prewarm did not complete: {p:?}");
            }
            let r = match &alone {
                None => rec(case, &b),
                Some(a) => rec(case, &b).against(a),
            };
            alone.get_or_insert_with(|| r.clone());
            runs[c].push(r);
        }
    }
    Ok(runs.into_iter().map(median_run).collect())
}

/// The median of one case's repetitions (by ratio when it has one, else by value), carrying
/// every repetition's ratio (or value) in `runs`.
fn median_run(runs: Vec<BenchRecord>) -> BenchRecord {
    let (mid, all) = super::median_by_ratio(runs, |r| r.ratio.unwrap_or(r.value));
    if all.len() == 1 {
        return mid;
    }
    let all: Vec<f64> = all.into_iter().map(round3).collect();
    mid.param("repeats", all.len()).param("runs", all)
}

/// One prewarm of `pages` pages into a fresh LFC and daemon, by UDP or not (`udp`), from a
/// page server that drops `drop_fraction` of its datagrams and speaks the extension or not
/// (`udp_extension`).
fn one_case(
    scratch: &ScratchDir,
    name: &str,
    pages: u32,
    drop_fraction: f64,
    udp: bool,
    udp_extension: bool,
) -> anyhow::Result<PrewarmReport> {
    let server = start_server(crate::pageserver::ServerConfig {
        udp_extension,
        ..synthetic_server_config(pages, 1, 0, drop_fraction)
    })?;
    let lfc_path = scratch.0.join(format!("lfc-{name}"));
    // Twice the pages: prewarm stops at a full cache, and the bench measures refilling.
    let bytes = 2 * u64::from(pages) * 8192 + (64 << 20);
    let mut daemon = DaemonProc::start(&lfc_path, bytes, &[])?;
    let lfc = Lfc::open(&lfc_path)?;
    let rel = Synthetic::rel(0);
    let plan: Vec<_> = (0..pages).map(|b| rel.block(b)).collect();
    let report = run_prewarm(
        &PrewarmConfig {
            connect: ConnectOptions::new(server.local_addr().to_string()),
            prefetch_port: Some(daemon.udp_port),
            rate_bytes_per_s: 0,
            deadline: None,
            schedule: ScheduleConfig::default(),
            progress: false,
            udp,
            priority: PrefetchPriority::Background,
            // No backend reads beside these runs: nothing to yield to.
            yield_pages: DEFAULT_YIELD_PAGES,
            shards: Default::default(),
        },
        &lfc,
        &plan,
    )?;
    drop(lfc);
    daemon.stop();
    let _ = std::fs::remove_file(&lfc_path);
    anyhow::ensure!(
        report.complete,
        "{name}: prewarm did not complete: {report:?}"
    );
    Ok(report)
}

pub fn run(args: &PrewarmBenchArgs) -> anyhow::Result<Vec<BenchRecord>> {
    anyhow::ensure!(args.pages > 0, "--pages must be positive");
    anyhow::ensure!(
        args.scan_pages == 0 || args.scans > 0,
        "--scans must be positive (or --scan-pages 0 to skip the beside-scans cases)"
    );
    let scratch = ScratchDir::new("udp-prefetch-bench-prewarm")?;
    let rate = |r: &PrewarmReport| r.present as f64 / r.elapsed_s.max(1e-9);
    let rec = |case: &str, r: &PrewarmReport, drop: f64, udp_extension: bool| {
        BenchRecord::new("prewarm", case, "pages/s", rate(r))
            .param("pages", r.pages)
            .param("drop", drop)
            .param("udp_extension", udp_extension)
            .param("via_udp_first", r.via_udp_first)
            .param("via_udp_retry", r.via_udp_retry)
            .param("via_tcp", r.via_tcp)
            .param("mb_per_s", round1(r.mb_per_s))
    };
    let tcp = rec(
        "tcp-only",
        &one_case(&scratch, "tcp", args.pages, 0.0, false, true)?,
        0.0,
        true,
    );
    let (ceiling, _) = super::ingest::daemon_case(
        &scratch,
        "ceiling",
        "epoll",
        2,
        args.ingest_seconds,
        true,
        8192,
    )?;
    let ceiling_rec =
        BenchRecord::new("prewarm", "ingest-ceiling", "pages/s", ceiling).param("threads", 2);
    let mut records = vec![tcp.clone(), ceiling_rec];
    for (case, drop) in [("udp-drop0", 0.0), ("udp-drop5", 0.05)] {
        let r = one_case(&scratch, case, args.pages, drop, true, true)?;
        let vs_ceiling = rate(&r) / ceiling.max(f64::MIN_POSITIVE);
        records.push(
            rec(case, &r, drop, true)
                .param("vs_ingest_ceiling", (vs_ceiling * 100.0).round() / 100.0)
                .against(&tcp),
        );
    }
    // A UDP prewarm from a page server without the extension: refused at its PrefetchTarget,
    // it fetches every page by pipelined GetPage, and should cost what tcp-only does.
    let case = "udp-no-extension";
    let r = one_case(&scratch, case, args.pages, 0.0, true, false)?;
    anyhow::ensure!(
        r.via_udp_first + r.via_udp_retry == 0,
        "{case}: {} pages came by UDP from a page server without the extension",
        r.via_udp_first + r.via_udp_retry
    );
    records.push(rec(case, &r, 0.0, false).against(&tcp));
    if args.scan_pages > 0 {
        records.extend(beside_scans(&scratch, args)?);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(value: f64, ratio: Option<f64>) -> BenchRecord {
        let mut r = BenchRecord::new("prewarm", "c", "pages/s", value);
        r.ratio = ratio;
        r
    }

    #[test]
    fn the_median_run_is_chosen_by_ratio_and_lists_every_run() {
        let m = median_run(vec![
            rec(300.0, Some(1.5)),
            rec(100.0, Some(0.7)),
            rec(200.0, Some(0.9)),
        ]);
        assert_eq!((m.value, m.ratio), (200.0, Some(0.9)));
        assert_eq!(m.params["runs"], serde_json::json!([0.7, 0.9, 1.5]));
        assert_eq!(m.params["repeats"], 3);
        // Without a ratio (the baseline) by value; one run is reported as it is.
        let m = median_run(vec![rec(3.0, None), rec(1.0, None), rec(2.0, None)]);
        assert_eq!(m.value, 2.0);
        let one = median_run(vec![rec(5.0, Some(1.0))]);
        assert!(one.params.get("runs").is_none() && one.value == 5.0);
    }
}
