//! `udp-prefetch bench prewarm`: refilling a cold LFC through UDP (at 0 % and 5 % loss)
//! against a TCP-only prewarm (pipelined GetPages), and the daemon's ingest ceiling, all in
//! one run; then what a prewarm costs the scans running beside it (issue 17 §4): their pages/s
//! alone, and beside a prewarm at background and at foreground priority.

use super::{round1, synthetic_server, BenchRecord};
use crate::cmd::daemon_proc::{DaemonProc, ScratchDir};
use crate::compute::backend::read_path::ReadPathConfig;
use crate::compute::prewarm::driver::DEFAULT_YIELD_PAGES;
use crate::compute::prewarm::schedule::ScheduleConfig;
use crate::compute::prewarm::{run_prewarm, PrewarmConfig, PrewarmReport};
use crate::compute::scan::{run_scan, ScanConfig, ScanMode};
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
}

/// What the scans of one beside-scans case did, and the prewarm beside them, if any.
struct BesideScans {
    /// The scans' pages together over the longest scan's time.
    scan_pages_per_s: f64,
    prewarm: Option<PrewarmReport>,
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
    let result = std::thread::scope(|s| -> anyhow::Result<BesideScans> {
        let prewarm = prewarm.map(|priority| {
            let rel = Synthetic::rel(0);
            let plan: Vec<_> = (0..args.pages).map(|b| rel.block(b)).collect();
            let cfg = PrewarmConfig {
                connect: connect.clone(),
                prefetch_port: Some(udp_port),
                rate_bytes_per_s: 0,
                deadline: None,
                schedule: ScheduleConfig::default(),
                progress: false,
                udp: true,
                priority,
                yield_pages: args.yield_pages,
                shards: Default::default(),
            };
            let lfc = &lfc;
            s.spawn(move || run_prewarm(&cfg, lfc, &plan))
        });
        let scans: Vec<_> = (0..args.scans)
            .map(|i| {
                let cfg = ScanConfig {
                    connect: connect.clone(),
                    rel: Synthetic::rel(1 + i),
                    blocks: Some(0..args.scan_pages),
                    mode: ScanMode::Udp,
                    distance: 512,
                    cpu_per_page_us: 0,
                    prefetch_port: Some(udp_port),
                    read_path: ReadPathConfig::default(),
                    shards: Default::default(),
                };
                let lfc = &lfc;
                s.spawn(move || run_scan(&cfg, Some(lfc)))
            })
            .collect();
        let mut slowest: f64 = 0.0;
        for scan in scans {
            let r = scan.join().expect("scan thread")?;
            anyhow::ensure!(
                r.verified == u64::from(args.scan_pages) && r.failed == 0,
                "{name}: a scan did not verify every page: {r:?}"
            );
            slowest = slowest.max(r.elapsed_s);
        }
        let prewarm = prewarm
            .map(|p| p.join().expect("prewarm thread"))
            .transpose()?;
        Ok(BesideScans {
            scan_pages_per_s: f64::from(args.scans) * f64::from(args.scan_pages)
                / slowest.max(1e-9),
            prewarm,
        })
    });
    drop(lfc);
    daemon.stop();
    let _ = std::fs::remove_file(&lfc_path);
    result
}

/// The beside-scans rows: the scans alone, then beside a background and a foreground prewarm
/// (ratio: their pages/s over the scans' alone; issue 17's target is ≥ 0.8 at background).
fn beside_scans(scratch: &ScratchDir, args: &PrewarmBenchArgs) -> anyhow::Result<Vec<BenchRecord>> {
    let rec = |case: &str, b: &BesideScans| {
        let r = BenchRecord::new("prewarm", case, "pages/s", b.scan_pages_per_s)
            .param("scans", args.scans)
            .param("scan_pages", args.scan_pages)
            .param("yield_pages", args.yield_pages);
        match &b.prewarm {
            None => r,
            Some(p) => r
                .param("prewarm_pages", p.pages)
                .param("prewarm_mb_per_s", round1(p.mb_per_s))
                .param("prewarm_via_tcp", p.via_tcp)
                .param("prewarm_yielded_rounds", p.yielded_rounds),
        }
    };
    let alone = rec(
        "scans-alone",
        &beside_scans_case(scratch, "alone", args, None)?,
    );
    let mut records = vec![alone.clone()];
    for (case, priority) in [
        (
            "scans-beside-prewarm-background",
            PrefetchPriority::Background,
        ),
        (
            "scans-beside-prewarm-foreground",
            PrefetchPriority::Foreground,
        ),
    ] {
        let b = beside_scans_case(scratch, case, args, Some(priority))?;
        if let Some(p) = &b.prewarm {
            anyhow::ensure!(p.complete, "{case}: prewarm did not complete: {p:?}");
        }
        records.push(rec(case, &b).against(&alone));
    }
    Ok(records)
}

fn one_case(
    scratch: &ScratchDir,
    name: &str,
    pages: u32,
    drop_fraction: f64,
    udp: bool,
) -> anyhow::Result<PrewarmReport> {
    let server = synthetic_server(pages, 1, 0, drop_fraction)?;
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
    let rec = |case: &str, r: &PrewarmReport, drop: f64| {
        BenchRecord::new("prewarm", case, "pages/s", rate(r))
            .param("pages", r.pages)
            .param("drop", drop)
            .param("via_udp_first", r.via_udp_first)
            .param("via_udp_retry", r.via_udp_retry)
            .param("via_tcp", r.via_tcp)
            .param("mb_per_s", round1(r.mb_per_s))
    };
    let tcp = rec(
        "tcp-only",
        &one_case(&scratch, "tcp", args.pages, 0.0, false)?,
        0.0,
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
        let r = one_case(&scratch, case, args.pages, drop, true)?;
        let vs_ceiling = rate(&r) / ceiling.max(f64::MIN_POSITIVE);
        records.push(
            rec(case, &r, drop)
                .param("vs_ingest_ceiling", (vs_ceiling * 100.0).round() / 100.0)
                .against(&tcp),
        );
    }
    if args.scan_pages > 0 {
        records.extend(beside_scans(&scratch, args)?);
    }
    Ok(records)
}
