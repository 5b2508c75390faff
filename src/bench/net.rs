//! `udp-prefetch bench net`: udp against tcp-pipelined across a real link: the page
//! server in one network namespace, the worker daemon and the scan in another, joined by a veth
//! pair at each MTU, with the kernel dropping each loss rate's share of the UDP packets that
//! reach the compute (`bench::twohost`). Reports, per MTU and loss, both scans' pages/s, their
//! ratio, the share of pages the udp scan got by UDP, the daemon's installs against the
//! datagrams the server sent, the compute's IP reassembly failures, and the compute's CPU per
//! page in each mode (`*-compute-cpu`, as `bench scan` measures it), optionally beside
//! emulated query work (`--cpu-per-page-us`).
//!
//! Owns: nothing shared; it drives the public APIs of `PageServer`, `compute::scan`, `lfc`,
//! `twohost` and `cmd::daemon_proc` and may not be imported by the library's other modules.

use super::twohost::{TwoHosts, COMPUTE_ADDR, SERVER_ADDR};
use super::{round3, BenchRecord, MeasuredScan};
use crate::cmd::daemon_proc::{DaemonProc, ScratchDir};
use crate::compute::scan::{ScanConfig, ScanMode};
use crate::pageserver::source::SourceSpec;
use crate::pageserver::{PageServer, ServerConfig};
use lfc::Lfc;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

const BENCH: &str = "net";

#[derive(Debug, Clone, clap::Args)]
pub struct NetBenchArgs {
    /// Pages per scan. 65536 (half a gigabyte, a few hundred milliseconds a scan): at 16384
    /// pages (80 ms) UDP's start (its first window, a calibration of TCP's pace) weighed on
    /// every ratio, and one point's three ratios spread over 0.65–1.6 on a quiet machine.
    #[arg(long, default_value_t = 65_536)]
    pub pages: u32,
    #[command(flatten)]
    pub path: super::PathArgs,
    /// Emulated query work per page, microseconds of CPU on the scan's thread (as `bench scan
    /// --cpu`): with it, the compute's CPU is shared between the work and the page path.
    #[arg(long, default_value_t = 0)]
    pub cpu_per_page_us: u64,
    /// Link MTUs to measure.
    #[arg(long, value_delimiter = ',', default_value = "9000,1500")]
    pub mtus: Vec<u32>,
    /// Loss rates (percent of the UDP packets reaching the compute) to measure at each MTU.
    #[arg(long, value_delimiter = ',', default_value = "0,1,5,20")]
    pub losses: Vec<u8>,
    /// Repetitions per point (each a baseline and a udp scan on a fresh LFC and daemon); the
    /// record is the one with the median ratio, and `ratios` lists them all. Five: over veth the
    /// baseline alone moves by a third between runs.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub repeat: u32,
}

/// One (MTU, loss) point: the baseline and the udp scan, and what the network did.
struct Point {
    tcp: MeasuredScan,
    udp: MeasuredScan,
    datagrams_sent: u64,
    installed: u64,
    /// Pages the daemon made whole by rebuilding a lost fragment from its parity piece.
    rebuilt: u64,
    reassembly_failures: u64,
    /// Every repetition's udp / tcp-pipelined ratio, ascending.
    ratios: Vec<f64>,
}

impl Point {
    fn ratio(&self) -> f64 {
        self.udp.report.pages_per_s / self.tcp.report.pages_per_s.max(1e-9)
    }
}

pub fn run(args: &NetBenchArgs) -> anyhow::Result<Vec<BenchRecord>> {
    let mut records = Vec::new();
    for &mtu in &args.mtus {
        for &loss in &args.losses {
            let p = measure(args, mtu, loss)?;
            records.extend(point_records(args, mtu, loss, &p));
        }
    }
    Ok(records)
}

fn point_records(args: &NetBenchArgs, mtu: u32, loss: u8, p: &Point) -> [BenchRecord; 4] {
    let point = |r: BenchRecord| {
        r.param("mtu", mtu)
            .param("loss_percent", loss)
            .param("pages", args.pages)
            .param("delay_us", args.path.delay_us)
            .param("cpu_per_page_us", args.cpu_per_page_us)
    };
    let base = |case: &str, m: &MeasuredScan| {
        point(BenchRecord::new(
            BENCH,
            case,
            "pages/s",
            m.report.pages_per_s,
        ))
        .param("verified", m.report.verified)
        .param("elapsed_s", round3(m.report.elapsed_s))
    };
    let tcp = base("tcp-pipelined", &p.tcp).param("depth", args.path.depth);
    let tcp_cpu = point(p.tcp.compute_cpu_record(BENCH, "tcp-pipelined-compute-cpu"));
    let udp_cpu = point(p.udp.compute_cpu_record(BENCH, "udp-compute-cpu")).against(&tcp_cpu);
    let udp_report = &p.udp.report;
    let udp = base("udp", &p.udp)
        .param("distance", args.path.distance)
        .param("udp_share", round3(udp_report.udp_share()))
        .param("datagrams_sent", p.datagrams_sent)
        .param("datagrams_installed", p.installed)
        .param("pages_rebuilt", p.rebuilt)
        .param(
            "delivered",
            round3(p.installed as f64 / p.datagrams_sent.max(1) as f64),
        )
        .param("reassembly_failures", p.reassembly_failures)
        .param("tcp_pipelined", udp_report.tcp_pipelined)
        .param("udp_state_changes", udp_report.udp_state_changes)
        .param("tcp_depth_cuts", udp_report.tcp_depth_cuts)
        .param(
            "state_change_reasons",
            super::state_change_reasons([&udp_report.udp_state_log[..]]),
        )
        .param("repeat", args.repeat)
        .param(
            "ratios",
            p.ratios.iter().map(|r| round3(*r)).collect::<Vec<_>>(),
        )
        .against(&tcp);
    [tcp, udp, tcp_cpu, udp_cpu]
}

/// Builds the two hosts for (`mtu`, `loss`), runs the baseline and the udp scan, removes them.
fn measure(args: &NetBenchArgs, mtu: u32, loss: u8) -> anyhow::Result<Point> {
    let hosts = TwoHosts::create(mtu, loss)?;
    let server = hosts.in_server(|| {
        super::start_server(ServerConfig {
            listen: SocketAddr::new(SERVER_ADDR.into(), 0),
            source: SourceSpec::Synthetic {
                rels: 1,
                pages: args.pages,
            },
            service_delay_us: args.path.delay_us,
            ..ServerConfig::default()
        })
    })??;
    // The server lives in its namespace: it is stopped there too (its shutdown connects to
    // its own listener), whatever the run's outcome.
    let points = (0..args.repeat)
        .map(|rep| measure_with(args, &hosts, &server, (mtu, loss), rep))
        .collect::<anyhow::Result<Vec<Point>>>();
    hosts.in_server(move || drop(server))?;
    // One scan of a few tens of milliseconds moves by tens of percent with a burst of load
    // from elsewhere, and so does the baseline: the median repetition is the record.
    let (mut median, ratios) = super::median_by_ratio(points?, Point::ratio);
    median.ratios = ratios;
    Ok(median)
}

/// One repetition at (`mtu`, `loss`): a baseline scan and a udp scan on a fresh LFC and daemon
/// (the baseline first in even repetitions, second in odd ones); the server's and the compute's
/// counters as this repetition moved them.
fn measure_with(
    args: &NetBenchArgs,
    hosts: &TwoHosts,
    server: &PageServer,
    (mtu, loss): (u32, u8),
    rep: u32,
) -> anyhow::Result<Point> {
    let scratch = ScratchDir::new("bench-net")?;
    let lfc_path = scratch.0.join(format!("net-{mtu}-{loss}-{rep}.lfc"));
    let sent_before = server.stats().prefetch_pages_sent.load(Ordering::Relaxed);
    // Room for the relation twice over: no scan ever evicts.
    let lfc_bytes = (u64::from(args.pages) * 2).max(4096) * lfc::PAGE_SIZE as u64;
    let failures_before = hosts.compute_reassembly_failures()?;
    let (tcp, udp, installed, rebuilt) = hosts.in_compute(|| -> anyhow::Result<_> {
        let listen = SocketAddr::new(COMPUTE_ADDR.into(), 0).to_string();
        // Prefaulted before the scans, as every bench's daemon is (`DaemonProc` waits for it):
        // a long-running daemon has every frame mapped, and a first touch per frame is not the
        // network path this bench measures.
        let daemon = DaemonProc::start_on(&lfc_path, lfc_bytes, &listen, &[])?;
        let lfc = Lfc::open(&lfc_path)?;
        lfc.map_all()?;
        // The daemon's CPU over each scan: nothing over the baseline's, which uses no LFC.
        let measured =
            |mode, lfc| MeasuredScan::run(&scan_config(args, server, mode), lfc, &daemon);
        let (tcp, udp) = super::in_turns(
            rep,
            || measured(ScanMode::TcpPipelined, None),
            || measured(ScanMode::Udp, Some(&lfc)),
        )?;
        let scraped = daemon.scrape()?;
        let installed = DaemonProc::metric(&scraped, "udp_prefetch_datagrams_installed_total");
        let rebuilt = DaemonProc::metric(&scraped, "udp_prefetch_fragments_rebuilt_total");
        Ok((tcp, udp, installed, rebuilt))
    })??;
    let reassembly_failures = hosts
        .compute_reassembly_failures()?
        .saturating_sub(failures_before);
    anyhow::ensure!(
        tcp.report.failed == 0 && udp.report.failed == 0,
        "pages failed verification at MTU {mtu}, {loss} % loss: tcp {}, udp {}",
        tcp.report.failed,
        udp.report.failed
    );
    Ok(Point {
        tcp,
        udp,
        datagrams_sent: server
            .stats()
            .prefetch_pages_sent
            .load(Ordering::Relaxed)
            .saturating_sub(sent_before),
        installed,
        rebuilt,
        reassembly_failures,
        ratios: Vec::new(),
    })
}

fn scan_config(args: &NetBenchArgs, server: &PageServer, mode: ScanMode) -> ScanConfig {
    ScanConfig {
        cpu_per_page_us: args.cpu_per_page_us,
        ..super::relation_scan(
            server,
            mode,
            mode.pages_ahead(args.path.depth, args.path.distance),
        )
    }
}
