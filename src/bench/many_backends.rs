//! `udp-prefetch bench many-backends`: many backends (threads) each scanning its own relation at
//! the same time, against one page server: total pages/s, fairness (slowest backend's pages/s
//! over the fastest's) and the TCP connections the run opened, for Neon-style pipelined TCP
//! and for UDP prefetch into one shared LFC filled by one worker daemon.

use super::daemon_proc::{DaemonProc, ScratchDir};
use super::{round3, BenchRecord};
use crate::backend::read_path::ReadPathConfig;
use crate::client::ConnectOptions;
use crate::scan::{run_scan, ScanConfig, ScanMode, ScanReport};
use crate::server::source::{SourceSpec, Synthetic};
use crate::server::{PageServer, ServerConfig};
use lfc::Lfc;
use std::sync::atomic::Ordering;
use std::sync::RwLock;
use std::time::Instant;

const BENCH: &str = "many-backends";
/// Bound on backend threads (each is a thread here and a connection, two threads, on the server).
const MAX_BACKENDS: u32 = 256;

#[derive(Debug, Clone, clap::Args)]
pub struct ManyBackendsBenchArgs {
    /// Concurrent backends, each scanning its own relation.
    #[arg(long, default_value_t = 64)]
    pub backends: u32,
    /// Pages each backend scans.
    #[arg(long, default_value_t = 512)]
    pub pages: u32,
    /// Emulated storage latency of every request, microseconds.
    #[arg(long, default_value_t = 200)]
    pub delay_us: u64,
    /// Prefetch distance (UDP) and pipeline depth (TCP) of each backend.
    #[arg(long, default_value_t = 128)]
    pub distance: u32,
    /// Worker daemon threads (the daemon's own default: one per two CPUs, at least one).
    #[arg(long, default_value_t = workers::daemon::default_threads())]
    pub daemon_threads: usize,
    /// The page server's UDP prefetch sender threads (the server's default is 1).
    #[arg(long, default_value_t = 1)]
    pub prefetch_senders: usize,
    /// Nice value for every worker daemon thread (0 = as started; negative needs root or
    /// CAP_SYS_NICE). The default is the recommended deployment: a few daemon threads serve
    /// every backend and must not get the share of one thread among hundreds.
    #[arg(long, default_value_t = -10, allow_negative_numbers = true)]
    pub daemon_nice: i32,
    /// Nice value of the page server's prefetch sender threads (`pageserver
    /// --prefetch-sender-nice`); the same reasoning, on the server side.
    #[arg(long, default_value_t = -10, allow_negative_numbers = true)]
    pub prefetch_sender_nice: i32,
}

/// What one mode observed across all backends.
struct ModeResult {
    total_pages_per_s: f64,
    min_pages_per_s: f64,
    max_pages_per_s: f64,
    connections: u64,
    elapsed_s: f64,
    hits: u64,
    fallbacks: u64,
    /// Fallbacks after waiting out the budget, and prefetch-window cuts, over all backends.
    wait_timeouts: u64,
    window_cuts: u64,
    /// Where prefetched pages went (UDP mode), to explain hits and fallbacks.
    prefetch_pages_sent: u64,
    prefetch_pages_dropped: u64,
    datagrams_installed: u64,
    /// Received by the daemon; received but not installed were stale, duplicate or refused.
    datagrams_received: u64,
}

impl ModeResult {
    fn fairness(&self) -> f64 {
        if self.max_pages_per_s > 0.0 {
            self.min_pages_per_s / self.max_pages_per_s
        } else {
            0.0
        }
    }

    fn records(&self, case: &str, args: &ManyBackendsBenchArgs) -> [BenchRecord; 3] {
        let with_params = |r: BenchRecord| {
            r.param("backends", args.backends)
                .param("pages_per_backend", args.pages)
                .param("delay_us", args.delay_us)
                .param("distance", args.distance)
                .param("prefetch_senders", args.prefetch_senders)
                .param("prefetch_sender_nice", args.prefetch_sender_nice)
                .param("daemon_nice", args.daemon_nice)
        };
        [
            with_params(BenchRecord::new(
                BENCH,
                case,
                "pages/s",
                self.total_pages_per_s.round(),
            ))
            .param("min_pages_per_s", self.min_pages_per_s.round())
            .param("max_pages_per_s", self.max_pages_per_s.round())
            .param("fairness", round3(self.fairness()))
            .param("tcp_connections", self.connections)
            .param("elapsed_s", round3(self.elapsed_s))
            .param("lfc_hits", self.hits)
            .param("tcp_fallbacks", self.fallbacks)
            .param("wait_timeouts", self.wait_timeouts)
            .param("window_cuts", self.window_cuts)
            .param("prefetch_pages_sent", self.prefetch_pages_sent)
            .param("prefetch_pages_dropped", self.prefetch_pages_dropped)
            .param("daemon_installed", self.datagrams_installed)
            .param("daemon_received", self.datagrams_received),
            with_params(BenchRecord::new(
                BENCH,
                &format!("{case}-fairness"),
                "min/max",
                round3(self.fairness()),
            )),
            with_params(BenchRecord::new(
                BENCH,
                &format!("{case}-connections"),
                "conns",
                self.connections as f64,
            ))
            .lower_is_better(),
        ]
    }
}

pub fn run(args: &ManyBackendsBenchArgs) -> anyhow::Result<Vec<BenchRecord>> {
    anyhow::ensure!(
        (1..=MAX_BACKENDS).contains(&args.backends),
        "--backends must be 1..={MAX_BACKENDS}"
    );
    anyhow::ensure!(args.pages > 0, "--pages must be at least 1");
    anyhow::ensure!(args.distance >= 1, "--distance must be at least 1");
    // Relations 0..n for TCP, n..2n for UDP: every UDP backend starts with a cold cache.
    let server = super::start_server(ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        source: SourceSpec::Synthetic {
            rels: 2 * args.backends,
            pages: args.pages,
        },
        service_delay_us: args.delay_us,
        max_connections: 2 * MAX_BACKENDS as usize,
        prefetch_senders: args.prefetch_senders,
        prefetch_sender_nice: args.prefetch_sender_nice,
        ..ServerConfig::default()
    })?;
    let scratch = ScratchDir::new("udp-prefetch-bench-many")?;
    let lfc_path = scratch.0.join("lfc");
    let lfc_bytes = u64::from(args.backends) * u64::from(args.pages) * 8192 + (64 << 20);
    let threads = args.daemon_threads.to_string();
    let daemon = DaemonProc::start(&lfc_path, lfc_bytes, &["--threads", &threads])?;
    if args.daemon_nice != 0 {
        daemon.renice(args.daemon_nice)?;
    }
    let lfc = Lfc::open(&lfc_path)?;

    let tcp = run_mode(&server, &daemon, ScanMode::TcpPipelined, 0, None, args)?;
    let udp = run_mode(
        &server,
        &daemon,
        ScanMode::Udp,
        args.backends,
        Some(&lfc),
        args,
    )?;
    let [tcp_rate, tcp_fair, tcp_conns] = tcp.records("tcp-pipelined", args);
    let [udp_rate, udp_fair, udp_conns] = udp.records("udp", args);
    Ok(vec![
        udp_rate.against(&tcp_rate),
        tcp_rate,
        udp_fair.against(&tcp_fair),
        tcp_fair,
        udp_conns.against(&tcp_conns),
        tcp_conns,
    ])
}

/// Starts every backend's scan at once and waits for all of them.
fn run_mode(
    server: &PageServer,
    daemon: &DaemonProc,
    mode: ScanMode,
    first_rel: u32,
    lfc: Option<&Lfc>,
    args: &ManyBackendsBenchArgs,
) -> anyhow::Result<ModeResult> {
    let prefetch_port = daemon.udp_port;
    let stats = server.stats();
    let counter = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let dropped = || {
        counter(&stats.prefetch_pages_dropped_overflow)
            + counter(&stats.prefetch_pages_not_ready)
            + counter(&stats.prefetch_pages_failed)
            + counter(&stats.prefetch_send_errors)
    };
    let daemon_counts = || -> anyhow::Result<(u64, u64)> {
        let text = daemon.scrape()?;
        Ok((
            DaemonProc::metric(&text, "udp_prefetch_datagrams_installed_total"),
            DaemonProc::metric(&text, "udp_prefetch_datagrams_received_total"),
        ))
    };
    let connections_before = counter(&stats.connections_total);
    let (sent_before, dropped_before) = (counter(&stats.prefetch_pages_sent), dropped());
    let (installed_before, received_before) = daemon_counts()?;
    let config = |i: u32| ScanConfig {
        connect: ConnectOptions::new(server.local_addr().to_string()),
        rel: Synthetic::rel(first_rel + i),
        blocks: None,
        mode,
        distance: args.distance,
        cpu_per_page_us: 0,
        prefetch_port: Some(prefetch_port),
        read_path: ReadPathConfig::default(),
    };
    // The gate holds every backend until all are spawned, so they scan concurrently; a
    // spawn failure still opens it (by returning), and the started ones finish and are joined.
    let gate = RwLock::new(());
    let (reports, elapsed_s) = std::thread::scope(|s| -> anyhow::Result<_> {
        let closed = gate.write().map_err(|_| anyhow::anyhow!("gate poisoned"))?;
        let mut handles = Vec::with_capacity(args.backends as usize);
        for i in 0..args.backends {
            let (cfg, gate) = (config(i), &gate);
            let h = std::thread::Builder::new()
                .name(format!("backend-{i}"))
                .spawn_scoped(s, move || {
                    drop(gate.read());
                    run_scan(&cfg, lfc)
                })?;
            handles.push(h);
        }
        let started = Instant::now();
        drop(closed);
        let reports: Vec<anyhow::Result<ScanReport>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a backend thread panicked")))
            })
            .collect();
        Ok((reports, started.elapsed().as_secs_f64()))
    })?;
    let reports: Vec<ScanReport> = reports.into_iter().collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(
        reports.iter().all(|r| r.failed == 0),
        "a page failed verification"
    );
    // Let the last datagrams of the run land before reading the daemon's counters.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let (installed_after, received_after) = daemon_counts()?;
    let pages: u64 = reports.iter().map(|r| r.pages).sum();
    let rates = reports.iter().map(|r| r.pages_per_s);
    Ok(ModeResult {
        total_pages_per_s: pages as f64 / elapsed_s.max(1e-9),
        min_pages_per_s: rates.clone().fold(f64::INFINITY, f64::min),
        max_pages_per_s: rates.fold(0.0, f64::max),
        connections: counter(&stats.connections_total) - connections_before,
        elapsed_s,
        hits: reports.iter().map(|r| r.hits + r.late_hits).sum(),
        fallbacks: reports.iter().map(|r| r.fallbacks).sum(),
        wait_timeouts: reports.iter().map(|r| r.wait_timeouts).sum(),
        window_cuts: reports.iter().map(|r| r.window_cuts).sum(),
        prefetch_pages_sent: counter(&stats.prefetch_pages_sent) - sent_before,
        prefetch_pages_dropped: dropped() - dropped_before,
        datagrams_installed: installed_after - installed_before,
        datagrams_received: received_after - received_before,
    })
}
