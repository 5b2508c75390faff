//! `udp-prefetch bench scan`: sequential scans in the three prefetch designs against one page
//! server and one worker daemon process, across service delays, loss rates and per-page CPU.
//! Each udp scan is repeated beside a tcp-pipelined scan of its own; the median pair is the
//! record.
//!
//! Besides pages/s, each udp and tcp-pipelined scan reports the compute's CPU per page
//! (`*-compute-cpu`, lower is better): the backend thread's CPU, without the emulated query
//! work, plus the worker daemon's, since on a compute both take the same CPUs. Both modes copy
//! every page once into the reader's buffer: tcp-pipelined out of the receive buffer, udp out
//! of the LFC.
//!
//! Each group (delay, per-page work) also scans in `tcp-lfc` mode, Neon's compute as it ships:
//! an LFC lookup before each read and every page the pipeline brings stored in the LFC
//! (Neon's communicator calls `lfc_write` on each GetPage answer it hands to a reader, or
//! stores it on arrival with `neon.store_prefetch_result_in_lfc`). `tcp-pipelined` keeps no
//! cache at all, so it is the cheaper of the two baselines; the udp records give their ratio
//! against both (`ratio_vs_tcp_lfc`).
//!
//! Owns: nothing shared; it drives the public APIs of `PageServer`, `compute::scan`, `lfc` and
//! `cmd::daemon_proc` and may not be imported by the library's other modules.

use super::{round1, round3, synthetic_server, BenchRecord, MeasuredScan as Measured};
use crate::cmd::daemon_proc::{DaemonProc, ScratchDir};
use crate::compute::backend::read_path::ReadPathConfig;
use crate::compute::scan::{ScanConfig, ScanMode, ScanReport};
use crate::pageserver::source::Synthetic;
use crate::pageserver::PageServer;
use crate::protocol::client::ConnectOptions;
use lfc::Lfc;

#[derive(Debug, Clone, clap::Args)]
pub struct ScanBenchArgs {
    /// Pages per scan.
    #[arg(long, default_value_t = 32_768)]
    pub pages: u32,
    /// Pages of the tcp-sync scans (at most `--pages`): one round trip per page makes them the
    /// slow part of the run (4096 pages at 200 µs take 1.4 s), and their rate needs no more.
    #[arg(long, default_value_t = 4_096)]
    pub sync_pages: u32,
    /// Service delays to measure, microseconds.
    #[arg(long, value_delimiter = ',', default_value = "0,200")]
    pub delays: Vec<u64>,
    /// Prefetch drop fractions to measure (UDP only; TCP is reliable).
    #[arg(long, value_delimiter = ',', default_value = "0,0.01,0.05")]
    pub drops: Vec<f64>,
    /// Emulated per-page backend CPU work, microseconds.
    #[arg(long, value_delimiter = ',', default_value = "0,10")]
    pub cpu: Vec<u64>,
    /// Pipeline depth of the tcp-pipelined baseline: Neon's 128 (its best here; 256 and 512
    /// were 6-19 % slower, since each request costs the same CPU and nothing waits on latency).
    #[arg(long, default_value_t = crate::compute::scan::DEFAULT_TCP_DEPTH)]
    pub depth: u32,
    /// Prefetch distance of the udp scans, pages ahead of the reader (an upper bound: the
    /// backend's window starts at 32 and grows with hits). Deeper than the TCP pipeline because
    /// it costs no connection buffering, only LFC space (4 MiB), and the time it buys is what
    /// hides a lost datagram's retry: at 5 % loss and no per-page work, 128, 256, 512 and 1024
    /// pages ran at 0.44x, 0.65x, 0.76x and 0.85x the pipelined baseline.
    #[arg(long, default_value_t = crate::compute::scan::DEFAULT_UDP_DISTANCE)]
    pub distance: u32,
    /// Repetitions of each udp scan, each beside a tcp-pipelined scan of its own (the two in
    /// turns first); the records are the pair with the median ratio, and `ratios` lists every
    /// pair's. Single scans of 32768 pages moved by a quarter between consecutive runs on a
    /// quiet two-CPU machine (0.96 and 1.26 at 200 µs).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub repeat: u32,
    /// Worker daemon threads (the daemon's own default: one per two CPUs, at least one).
    // The default depends on the machine: the text above states it once, and help shows no
    // second, this machine's, number.
    #[arg(long, default_value_t = workers::daemon::default_threads(), hide_default_value = true)]
    pub daemon_threads: usize,
    /// Who receives the udp cases' prefetches (`scan --receive`): the worker daemon, or the
    /// backend itself.
    #[arg(long, value_enum, default_value_t = crate::cmd::scan::ReceiveBy::Daemon)]
    pub receive: crate::cmd::scan::ReceiveBy,
    /// LFC size, MiB (at least 32). Unset, each group's LFC holds every scan of the group and
    /// nothing is evicted; smaller than a scan (`--pages` 32768 is 256 MiB), every scan
    /// evicts the ones before it, as on a compute whose data outgrows its cache. The records
    /// carry it as `lfc_mib`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(MIN_LFC_MIB..))]
    pub lfc_mib: Option<u64>,
}

/// The smallest `--lfc-mib`: room for a udp scan's window (`--distance` 512 is 4 MiB) many
/// times over, and for the daemon's posted slots.
const MIN_LFC_MIB: u64 = 32;

/// `run`'s compute CPU record of a measured scan at (`delay`, per-page work `cpu`).
fn compute_cpu_record(m: &Measured, case: &str, delay: u64, cpu: u64) -> BenchRecord {
    m.compute_cpu_record("scan", case)
        .param("delay_us", delay)
        .param("cpu_per_page_us", cpu)
}

/// How far ahead a scan reads: the pipeline depth (TCP) or the prefetch distance (UDP).
#[derive(Clone, Copy)]
enum Ahead {
    Depth(u32),
    Distance(u32),
}

fn record(
    case: &str,
    r: &ScanReport,
    delay: u64,
    drop: f64,
    cpu: u64,
    ahead: Ahead,
) -> BenchRecord {
    let (key, pages_ahead) = match ahead {
        Ahead::Depth(d) => ("depth", d),
        Ahead::Distance(d) => ("distance", d),
    };
    BenchRecord::new("scan", case, "pages/s", r.pages_per_s)
        .param("delay_us", delay)
        .param("drop", drop)
        .param("cpu_per_page_us", cpu)
        .param(key, pages_ahead)
        .param("pages", r.pages)
        .param("wait_p50_us", round1(r.wait_p50_us))
        .param("wait_p99_us", round1(r.wait_p99_us))
        .param("verified", r.verified)
}

/// A group's records of one baseline scan: pages/s and compute CPU per page.
struct Baseline {
    rate: BenchRecord,
    cpu: BenchRecord,
}

/// A udp scan's two records, against the tcp-pipelined scan of its pair (`pipe`): pages/s and
/// compute CPU per page. `point` is (delay µs, drop fraction, per-page work µs). Their
/// `ratio_vs_tcp_lfc` is that ratio divided by the group's tcp-lfc records' ratios to
/// tcp-pipelined (`neon`: pages/s, CPU): chained through the pairs' baselines, as single scans
/// move by a quarter between runs and the tcp-lfc scans are paired with the first drop
/// fraction's only.
fn udp_records(
    args: &ScanBenchArgs,
    udp_run: &Measured,
    (delay, drop_fraction, cpu): (u64, f64, u64),
    pipe: &Baseline,
    neon: [Option<f64>; 2],
) -> [BenchRecord; 2] {
    let rate = record(
        "udp",
        &udp_run.report,
        delay,
        drop_fraction,
        cpu,
        Ahead::Distance(args.distance),
    )
    .param("daemon_threads", args.daemon_threads)
    .param("receive", args.receive.name())
    .param("udp_share", round3(udp_run.report.udp_share()))
    .param("udp_state_changes", udp_run.report.udp_state_changes)
    .param("tcp_depth_cuts", udp_run.report.tcp_depth_cuts)
    .param(
        "state_change_reasons",
        super::state_change_reasons([&udp_run.report.udp_state_log[..]]),
    )
    .against(&pipe.rate);
    let cpu_rec = compute_cpu_record(udp_run, "udp-compute-cpu", delay, cpu)
        .param("drop", drop_fraction)
        .against(&pipe.cpu);
    let vs_neon = |r: BenchRecord, neon: Option<f64>| {
        let chained = r.ratio.zip(neon.filter(|&n| n > 0.0));
        r.param("ratio_vs_tcp_lfc", chained.map(|(r, n)| round3(r / n)))
    };
    [vs_neon(rate, neon[0]), vs_neon(cpu_rec, neon[1])]
}

/// One scan of relation `rel` in `mode` with `cpu` µs of work per page, and the daemon's CPU
/// over it.
fn measure(
    args: &ScanBenchArgs,
    (daemon, lfc): (&DaemonProc, &Lfc),
    server: &PageServer,
    mode: ScanMode,
    rel: u32,
    cpu: u64,
) -> anyhow::Result<Measured> {
    let m = Measured::run(
        &ScanConfig {
            connect: ConnectOptions::new(server.local_addr().to_string()),
            rel: Synthetic::rel(rel),
            blocks: match mode {
                ScanMode::TcpSync => Some(0..args.sync_pages.min(args.pages)),
                ScanMode::TcpPipelined | ScanMode::Udp | ScanMode::TcpLfc => None,
            },
            mode,
            distance: mode.pages_ahead(args.depth, args.distance),
            cpu_per_page_us: cpu,
            receive: args.receive.with_port(Some(daemon.udp_port)),
            read_path: ReadPathConfig::default(),
            shards: Default::default(),
        },
        Some(lfc),
        daemon,
    )?;
    anyhow::ensure!(m.report.failed == 0, "a page failed verification");
    Ok(m)
}

/// The flags' bounds, checked before anything starts.
fn validate(args: &ScanBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.pages > 0 && !args.delays.is_empty() && !args.drops.is_empty() && !args.cpu.is_empty()
    );
    anyhow::ensure!(
        args.depth >= 1 && args.distance >= 1 && args.sync_pages >= 1,
        "--depth, --distance and --sync-pages must be at least 1"
    );
    anyhow::ensure!(
        args.drops.iter().all(|d| (0.0..1.0).contains(d)),
        "drops are fractions in 0..1"
    );
    Ok(())
}

pub fn run(args: &ScanBenchArgs) -> anyhow::Result<Vec<BenchRecord>> {
    validate(args)?;
    let threads = args.daemon_threads.to_string();
    // Each udp scan of a group (one delay and per-page work) scans its own relation of a fresh
    // LFC and daemon, and so does each tcp-lfc scan (the relations after the udp scans'), so
    // every one starts with a cold cache.
    let udp_rels = args.drops.len() as u32 * args.repeat;
    let rels = udp_rels + args.repeat;
    let scratch = ScratchDir::new("udp-prefetch-bench-scan")?;
    let mut records = Vec::new();
    for &delay in &args.delays {
        for &cpu in &args.cpu {
            let lfc_path = scratch.0.join(format!("lfc-{delay}-{cpu}"));
            let lfc_bytes = args.lfc_mib.map_or(
                u64::from(rels) * u64::from(args.pages) * 8192 + (64 << 20),
                |mib| mib << 20,
            );
            let daemon = DaemonProc::start(&lfc_path, lfc_bytes, &["--threads", &threads])?;
            let lfc = Lfc::open(&lfc_path)?;
            let base_server = synthetic_server(args.pages, rels, delay, 0.0)?;
            let scan = |mode, rel, server: &PageServer| {
                measure(args, (&daemon, &lfc), server, mode, rel, cpu)
            };
            let sync = scan(ScanMode::TcpSync, 0, &base_server)?.report;
            let depth = Ahead::Depth(args.depth);
            let mut next_rel = 0u32;
            // Neon's compute, measured beside the first drop fraction's pairs (before the pair
            // in odd repetitions, after it in even ones), each on a cold relation of its own.
            let mut neon_runs = Vec::with_capacity(args.repeat as usize);
            let mut neon_vs_pipe = [None; 2];
            for (i, &drop_fraction) in args.drops.iter().enumerate() {
                let lossy = synthetic_server(args.pages, rels, delay, drop_fraction)?;
                let mut pairs = Vec::with_capacity(args.repeat as usize);
                for rep in 0..args.repeat {
                    let neon_scan = || scan(ScanMode::TcpLfc, udp_rels + rep, &base_server);
                    if i == 0 && rep % 2 == 1 {
                        neon_runs.push(neon_scan()?);
                    }
                    pairs.push(super::in_turns(
                        rep,
                        || scan(ScanMode::TcpPipelined, 0, &base_server),
                        || scan(ScanMode::Udp, next_rel, &lossy),
                    )?);
                    if i == 0 && rep % 2 == 0 {
                        neon_runs.push(neon_scan()?);
                    }
                    next_rel += 1;
                }
                let ((pipelined_run, udp_run), ratios) =
                    super::median_by_ratio(pairs, |(t, u): &(Measured, Measured)| {
                        u.report.pages_per_s / t.report.pages_per_s.max(1e-9)
                    });
                let ratios: Vec<f64> = ratios.into_iter().map(round3).collect();
                let pipe = Baseline {
                    rate: record(
                        "tcp-pipelined",
                        &pipelined_run.report,
                        delay,
                        0.0,
                        cpu,
                        depth,
                    ),
                    cpu: compute_cpu_record(
                        &pipelined_run,
                        "tcp-pipelined-compute-cpu",
                        delay,
                        cpu,
                    ),
                };
                if i == 0 {
                    // The group's tcp-sync, tcp-pipelined and tcp-lfc records, against the
                    // baseline of its first drop fraction's median pair.
                    records.push(
                        record("tcp-sync", &sync, delay, 0.0, cpu, depth).against(&pipe.rate),
                    );
                    records.push(pipe.rate.clone());
                    records.push(pipe.cpu.clone());
                    let runs = std::mem::take(&mut neon_runs);
                    let (run, _) = super::median_by_ratio(runs, |m| m.report.pages_per_s);
                    let neon = [
                        record("tcp-lfc", &run.report, delay, 0.0, cpu, depth).against(&pipe.rate),
                        compute_cpu_record(&run, "tcp-lfc-compute-cpu", delay, cpu)
                            .against(&pipe.cpu),
                    ];
                    neon_vs_pipe = neon.each_ref().map(|r| r.ratio);
                    records.extend(neon);
                }
                let point = (delay, drop_fraction, cpu);
                let [udp, udp_cpu] = udp_records(args, &udp_run, point, &pipe, neon_vs_pipe);
                records.push(udp.param("repeat", args.repeat).param("ratios", ratios));
                records.push(udp_cpu);
            }
            drop(lfc);
            drop(daemon);
            let _ = std::fs::remove_file(&lfc_path);
        }
    }
    Ok(match args.lfc_mib {
        Some(mib) => records
            .into_iter()
            .map(|r| r.param("lfc_mib", mib))
            .collect(),
        None => records,
    })
}
