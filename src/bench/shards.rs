//! `udp-prefetch bench shards`: one compute reading a tenant split over 1, 2, 4 and 8
//! page-server shards (in-process, each `--shard i/N`), all sending to one worker daemon. Per
//! shard count: a udp scan against a tcp-pipelined scan, a udp prewarm against a TCP-only
//! prewarm (each pair measured back to back in this run), how evenly the daemon's receive
//! threads shared the datagrams of all shards (max/min of their per-thread counts), and what
//! each shard delivered (the LFC's sender table, by the shard's sender ports). From 8 shards on,
//! the relations are smaller (`--pages-from-8`): eight page servers and their sender threads
//! on one small machine make each page slower, and the rates stay comparable.
//!
//! Owns: nothing shared; it drives the public APIs of `PageServer`, `protocol::shard`,
//! `compute::scan`, `compute::prewarm`, `lfc` and `cmd::daemon_proc` and may not be imported by the
//! library's other modules.

use super::{round3, start_server, BenchRecord};
use crate::cmd::daemon_proc::{DaemonProc, ScratchDir};
use crate::compute::backend::read_path::ReadPathConfig;
use crate::compute::prewarm::schedule::ScheduleConfig;
use crate::compute::prewarm::{run_prewarm, PrewarmConfig, PrewarmReport};
use crate::compute::scan::{run_scan, ScanConfig, ScanMode, ScanReport};
use crate::pageserver::source::{SourceSpec, Synthetic};
use crate::pageserver::{PageServer, ServerConfig};
use crate::protocol::client::ConnectOptions;
use crate::protocol::shard::{ShardIdentity, ShardLayout, ShardMap, DEFAULT_STRIPE_PAGES};
use lfc::Lfc;

#[derive(Debug, Clone, clap::Args)]
pub struct ShardsBenchArgs {
    /// Pages of the scanned relation, and of the prewarmed one.
    #[arg(long, default_value_t = 65_536)]
    pub pages: u32,
    /// Shard counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub shard_counts: Vec<usize>,
    /// Pages of each relation at 8 shards or more (default: half of --pages), to keep the run
    /// short where eight page servers share the machine.
    #[arg(long)]
    pub pages_from_8: Option<u32>,
    /// Stripe size of the sharding, in pages.
    #[arg(long, default_value_t = DEFAULT_STRIPE_PAGES)]
    pub stripe_pages: u32,
    /// Emulated page server latency per response, microseconds.
    #[arg(long, default_value_t = 100)]
    pub delay_us: u64,
    /// GetPages in flight of the tcp-pipelined scan.
    #[arg(long, default_value_t = crate::compute::scan::DEFAULT_TCP_DEPTH)]
    pub depth: u32,
    /// Prefetch distance of the udp scan.
    #[arg(long, default_value_t = crate::compute::scan::DEFAULT_UDP_DISTANCE)]
    pub distance: u32,
    /// Receive threads of the worker daemon.
    #[arg(long, default_value_t = 2)]
    pub daemon_threads: usize,
    /// Scan pairs per shard count (each a tcp-pipelined scan and a udp scan on a fresh LFC and
    /// daemon, against the same servers); the scan records are the pair with the median ratio,
    /// and `ratios` lists them all.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub repeat: u32,
}

/// The page servers of one shard count: shard i of n, each serving two synthetic relations.
fn start_shards(
    args: &ShardsBenchArgs,
    n: usize,
    pages: u32,
) -> anyhow::Result<(Vec<PageServer>, ShardMap)> {
    let layout = ShardLayout::new(n, args.stripe_pages)?;
    let servers = (0..n)
        .map(|i| {
            start_server(ServerConfig {
                listen: "127.0.0.1:0".parse()?,
                source: SourceSpec::Synthetic { rels: 2, pages },
                service_delay_us: args.delay_us,
                shard: ShardIdentity::new(i, layout)?,
                ..ServerConfig::default()
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let map = ShardMap::new(
        servers.iter().map(|s| s.local_addr().to_string()).collect(),
        args.stripe_pages,
    );
    Ok((servers, map))
}

fn scan(
    map: &ShardMap,
    mode: ScanMode,
    distance: u32,
    lfc: Option<&Lfc>,
    port: Option<u16>,
) -> anyhow::Result<ScanReport> {
    let cfg = ScanConfig {
        connect: ConnectOptions::new(map.servers[0].clone()),
        rel: Synthetic::rel(0),
        blocks: None,
        mode,
        distance,
        cpu_per_page_us: 0,
        receive: crate::compute::backend::Receive::Daemon { port },
        read_path: ReadPathConfig::default(),
        shards: map.clone(),
    };
    let r = run_scan(&cfg, lfc)?;
    anyhow::ensure!(
        r.failed == 0 && r.verified == r.pages,
        "{} scan over {} shards: {} of {} pages failed verification",
        mode.name(),
        map.servers.len(),
        r.failed,
        r.pages
    );
    Ok(r)
}

fn prewarm(
    map: &ShardMap,
    lfc: &Lfc,
    pages: u32,
    port: Option<u16>,
    udp: bool,
) -> anyhow::Result<PrewarmReport> {
    let rel = Synthetic::rel(1);
    let plan: Vec<_> = (0..pages).map(|b| rel.block(b)).collect();
    let cfg = PrewarmConfig {
        connect: ConnectOptions::new(map.servers[0].clone()),
        prefetch_port: port,
        rate_bytes_per_s: 0,
        deadline: None,
        schedule: ScheduleConfig::default(),
        progress: false,
        udp,
        // As `prewarm run` asks by default (alone here, it changes nothing).
        priority: crate::protocol::pagestream::PrefetchPriority::Background,
        yield_pages: crate::compute::prewarm::driver::DEFAULT_YIELD_PAGES,
        shards: map.clone(),
    };
    let r = run_prewarm(&cfg, lfc, &plan)?;
    anyhow::ensure!(r.complete, "prewarm did not complete: {r:?}");
    Ok(r)
}

/// Datagrams installed from each shard, in shard order: the LFC's sender table (what `lfc stat`
/// shows), its rows matched to a shard by the shard's sender ports.
fn installed_per_shard(lfc: &Lfc, servers: &[PageServer]) -> Vec<u64> {
    let counts = lfc.sender_counts();
    servers
        .iter()
        .map(|s| {
            counts
                .senders
                .iter()
                .filter(|c| s.sender_ports().contains(&c.addr.port()))
                .map(|c| c.installed)
                .sum()
        })
        .collect()
}

/// `udp_share` of each shard's reads, in shard order (empty for one shard).
fn shard_udp_shares(r: &ScanReport) -> Vec<f64> {
    r.shards.iter().map(|s| round3(s.udp_share())).collect()
}

/// Each shard's reads as `reads/hits/late hits/fallbacks/tcp pipelined`, in shard order.
fn shard_reads(r: &ScanReport) -> Vec<String> {
    r.shards
        .iter()
        .map(|s| {
            format!(
                "{}/{}/{}/{}/{}",
                s.reads, s.hits, s.late_hits, s.fallbacks, s.tcp_pipelined
            )
        })
        .collect()
}

/// The scan's path changes, oldest first, as `at ms: to path (reason)`; the first and last
/// few when there are many, so a record stays one readable line.
fn state_changes(r: &ScanReport) -> Vec<String> {
    const KEEP: usize = 8;
    let log = &r.udp_state_log;
    let line = |c: &crate::compute::backend::StateChange| {
        format!("{:.1} ms: {:?} ({})", c.at_ms, c.to, c.reason)
    };
    if log.len() <= 2 * KEEP {
        return log.iter().map(line).collect();
    }
    let mut out: Vec<String> = log[..KEEP].iter().map(line).collect();
    out.push(format!("... {} more ...", log.len() - 2 * KEEP));
    out.extend(log[log.len() - KEEP..].iter().map(line));
    out
}

/// Max/min of the daemon's per-thread received datagrams (1.0: perfectly even; infinite when
/// a thread received nothing).
fn thread_spread(metrics: &str) -> (f64, Vec<u64>) {
    let counts: Vec<u64> = metrics
        .lines()
        .filter(|l| l.starts_with("udp_prefetch_thread_datagrams_received_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .collect();
    let max = counts.iter().copied().max().unwrap_or(0);
    let min = counts.iter().copied().min().unwrap_or(0);
    let spread = if min == 0 {
        f64::INFINITY
    } else {
        max as f64 / min as f64
    };
    (spread, counts)
}

/// One udp scan against the shards of `map`, on a fresh LFC and daemon. With `prewarm`, a udp
/// prewarm follows on the same daemon (it fills the second relation). Returns the scan, the
/// prewarm, the daemon's thread spread and per-thread counts, and what each shard delivered.
fn udp_pass(
    args: &ShardsBenchArgs,
    servers: &[PageServer],
    map: &ShardMap,
    lfc_path: &std::path::Path,
    pages: u32,
    prewarm_too: bool,
) -> anyhow::Result<UdpPass> {
    let lfc_bytes = lfc_bytes(args);
    let threads = args.daemon_threads.to_string();
    let mut daemon = DaemonProc::start(lfc_path, lfc_bytes, &["--threads", &threads])?;
    let lfc = Lfc::open(lfc_path)?;
    // Mapped before the scan, as `bench net` and `bench degrade` map theirs: a backend that has
    // served queries for a while has every frame mapped, and a first touch per frame (a fault,
    // or a `pwrite` into a frame not mapped) is no part of the path this bench compares.
    lfc.map_all()?;
    let port = Some(daemon.udp_port);
    let scan = scan(map, ScanMode::Udp, args.distance, Some(&lfc), port)?;
    let prewarm = if prewarm_too {
        Some(prewarm(map, &lfc, pages, port, true)?)
    } else {
        None
    };
    let (spread, per_thread) = thread_spread(&daemon.scrape()?);
    let per_shard = installed_per_shard(&lfc, servers);
    drop(lfc);
    daemon.stop();
    let _ = std::fs::remove_file(lfc_path);
    Ok(UdpPass {
        scan,
        prewarm,
        spread,
        per_thread,
        per_shard,
    })
}

struct UdpPass {
    scan: ScanReport,
    prewarm: Option<PrewarmReport>,
    spread: f64,
    per_thread: Vec<u64>,
    per_shard: Vec<u64>,
}

/// Both relations fit, with room: nothing is evicted while it is measured.
fn lfc_bytes(args: &ShardsBenchArgs) -> u64 {
    2 * u64::from(args.pages) * 8192 + (64 << 20)
}

/// The fields of a scan's report a reader of the record needs to tell where its time went.
fn scan_params(rec: BenchRecord, r: &ScanReport) -> BenchRecord {
    rec.param("elapsed_s", round3(r.elapsed_s))
        .param("cpu_us_per_page", round3(r.cpu_us_per_page))
        .param("wait_p99_us", round3(r.wait_p99_us))
        .param("wait_max_us", round3(r.wait_max_us))
}

/// A TCP-only prewarm of `pages` over the shards of `map`, on an LFC of its own at `lfc_path`
/// (removed afterwards).
fn tcp_only_prewarm(
    args: &ShardsBenchArgs,
    map: &ShardMap,
    lfc_path: &std::path::Path,
    pages: u32,
) -> anyhow::Result<PrewarmReport> {
    let mut daemon = DaemonProc::start(lfc_path, lfc_bytes(args), &["--threads", "1"])?;
    let lfc = Lfc::open(lfc_path)?;
    let report = prewarm(map, &lfc, pages, None, false);
    drop(lfc);
    daemon.stop();
    let _ = std::fs::remove_file(lfc_path);
    report
}

/// The flags' bounds, checked before anything starts.
fn validate(args: &ShardsBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.pages > 0 && args.pages_from_8 != Some(0),
        "--pages and --pages-from-8 must be positive"
    );
    anyhow::ensure!(
        !args.shard_counts.is_empty(),
        "--shard-counts names no shard count"
    );
    Ok(())
}

/// `base` (the udp scan's pages/s record) with how the scan went, shard by shard.
fn udp_scan_record(
    args: &ShardsBenchArgs,
    base: BenchRecord,
    udp_scan: &ScanReport,
) -> BenchRecord {
    scan_params(base, udp_scan)
        .param("distance", args.distance)
        .param("repeat", args.repeat)
        .param("udp_share", round3(udp_scan.udp_share()))
        .param("tcp_pipelined", udp_scan.tcp_pipelined)
        .param("fallbacks", udp_scan.fallbacks)
        .param("wait_timeouts", udp_scan.wait_timeouts)
        .param("udp_state_changes", udp_scan.udp_state_changes)
        .param("tcp_depth_cuts", udp_scan.tcp_depth_cuts)
        .param("shard_udp_shares", shard_udp_shares(udp_scan))
        .param("shard_reads", shard_reads(udp_scan))
        .param("state_changes", state_changes(udp_scan))
}

pub fn run(args: &ShardsBenchArgs) -> anyhow::Result<Vec<BenchRecord>> {
    validate(args)?;
    let scratch = ScratchDir::new("udp-prefetch-bench-shards")?;
    let mut records = Vec::new();
    for &n in &args.shard_counts {
        let pages = if n >= 8 {
            args.pages_from_8.unwrap_or(args.pages / 2).max(1)
        } else {
            args.pages
        };
        let (servers, map) = start_shards(args, n, pages)?;
        let rec = |case: &str, value: f64| {
            BenchRecord::new("shards", &format!("{case}-{n}sh"), "pages/s", value)
                .param("shards", n as u64)
                .param("pages", pages)
                .param("stripe_pages", args.stripe_pages)
                .param("delay_us", args.delay_us)
        };
        // Scan pairs: a tcp-pipelined scan (no cache), then a udp scan on a fresh LFC and
        // daemon, both against these servers and this relation. A scan here lasts 0.1–0.3 s,
        // which a burst of load from elsewhere moves by tens of percent: the record is the
        // pair with the median ratio, as in `bench net` and `bench degrade`.
        let mut pairs = Vec::with_capacity(args.repeat as usize);
        for rep in 0..args.repeat {
            let tcp = scan(&map, ScanMode::TcpPipelined, args.depth, None, None)?;
            let lfc_path = scratch.0.join(format!("lfc-udp-{n}-{rep}"));
            let udp = udp_pass(args, &servers, &map, &lfc_path, pages, false)?;
            pairs.push((tcp, udp));
        }
        let ((tcp_scan, udp_scan), ratios) =
            super::median_by_ratio(pairs, |(t, u): &(ScanReport, UdpPass)| {
                u.scan.pages_per_s / t.pages_per_s.max(1e-9)
            });
        let ratios: Vec<f64> = ratios.into_iter().map(round3).collect();
        let udp_scan = udp_scan.scan;

        // The prewarms: TCP-only on an LFC of its own, then udp on a fresh one, which the
        // daemon's spread and the per-shard counts are taken from (a scan and a prewarm's
        // datagrams).
        let tcp_prewarm =
            tcp_only_prewarm(args, &map, &scratch.0.join(format!("lfc-tcp-{n}")), pages)?;
        let lfc_path = scratch.0.join(format!("lfc-udp-{n}"));
        let pass = udp_pass(args, &servers, &map, &lfc_path, pages, true)?;
        drop(servers);
        let udp_prewarm = pass.prewarm.expect("asked for a prewarm");

        let scan_tcp = scan_params(rec("scan-tcp-pipelined", tcp_scan.pages_per_s), &tcp_scan)
            .param("depth", args.depth);
        let scan_udp = udp_scan_record(args, rec("scan-udp", udp_scan.pages_per_s), &udp_scan)
            .param("ratios", ratios)
            .against(&scan_tcp);
        let rate = |r: &PrewarmReport| r.present as f64 / r.elapsed_s.max(1e-9);
        let prewarm_tcp = rec("prewarm-tcp", rate(&tcp_prewarm));
        let prewarm_udp = rec("prewarm-udp", rate(&udp_prewarm))
            .param("via_udp_first", udp_prewarm.via_udp_first)
            .param("via_tcp", udp_prewarm.via_tcp)
            .against(&prewarm_tcp);
        let spread_rec = BenchRecord::new(
            "shards",
            &format!("daemon-spread-{n}sh"),
            "max/min",
            round3(pass.spread),
        )
        .param("shards", n as u64)
        .param("threads", args.daemon_threads as u64)
        .param("per_thread", pass.per_thread)
        .param("installed_per_shard", pass.per_shard)
        .lower_is_better();
        records.extend([scan_tcp, scan_udp, prewarm_tcp, prewarm_udp, spread_rec]);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_is_max_over_min_of_the_thread_counts() {
        let text = "udp_prefetch_thread_datagrams_received_total{thread=\"0\"} 300\n\
                    udp_prefetch_thread_datagrams_received_total{thread=\"1\"} 200\n\
                    udp_prefetch_datagrams_received_total 500\n";
        let (spread, counts) = thread_spread(text);
        assert_eq!(counts, vec![300, 200]);
        assert!((spread - 1.5).abs() < 1e-9);
        assert!(
            thread_spread("udp_prefetch_thread_datagrams_received_total{thread=\"0\"} 0\n")
                .0
                .is_infinite()
        );
    }
}
