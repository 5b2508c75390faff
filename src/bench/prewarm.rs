//! `udp-prefetch bench prewarm`: refilling a cold LFC through UDP (at 0 % and 5 % loss)
//! against a TCP-only prewarm (pipelined GetPages), and the daemon's ingest ceiling, all in
//! one run.

use super::{round1, synthetic_server, BenchRecord};
use crate::cmd::daemon_proc::{DaemonProc, ScratchDir};
use crate::compute::prewarm::schedule::ScheduleConfig;
use crate::compute::prewarm::{run_prewarm, PrewarmConfig, PrewarmReport};
use crate::pageserver::source::Synthetic;
use crate::protocol::client::ConnectOptions;
use lfc::Lfc;

#[derive(Debug, Clone, clap::Args)]
pub struct PrewarmBenchArgs {
    /// Pages to prewarm per case (131072 = 1 GiB).
    #[arg(long, default_value_t = 131_072)]
    pub pages: u32,
    /// Seconds of the ingest-ceiling measurement.
    #[arg(long, default_value_t = 3.0)]
    pub ingest_seconds: f64,
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
    Ok(records)
}
