//! `udp-prefetch bench many-backends`: many backends, each a separate `udp-prefetch scan`
//! process scanning its own relation, at the same time against one page server: aggregate
//! pages/s, the slowest backend's time, fairness (slowest backend's pages/s over the
//! fastest's) and the compute's CPU per page, for Neon-style pipelined TCP and for UDP prefetch
//! into one shared LFC filled by one worker daemon. Backends are processes, as PostgreSQL's
//! are: each maps the LFC itself and competes for the compute's CPUs with the daemon.
//!
//! Every scan starts when all of a case's processes are attached (`scan --start-gate`), so the
//! figures leave process start-up out; each backend scans `--total-pages / backends` pages, so
//! a case takes about as long whatever the backend count.
//!
//! Owns: nothing shared; it drives the public APIs of `PageServer`, `compute::scan` (through
//! `udp-prefetch scan` processes) and `cmd::daemon_proc` and may not be imported by the library's
//! other modules.

use super::{round1, round3, BenchRecord};
use crate::cmd::daemon_proc::{DaemonProc, ScratchDir};
use crate::compute::scan::{ScanMode, ScanReport};
use crate::pageserver::source::{SourceSpec, Synthetic};
use crate::pageserver::{PageServer, ServerConfig};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;

const BENCH: &str = "many-backends";
/// Bound on backend processes of one case (each is also a connection, two threads, on the
/// server).
const MAX_BACKENDS: u32 = 256;

#[derive(Debug, Clone, clap::Args)]
pub struct ManyBackendsBenchArgs {
    /// Concurrent backend processes, each scanning its own relation: one case per count.
    #[arg(long, value_delimiter = ',', default_value = "8,32,64")]
    pub backends: Vec<u32>,
    /// Pages scanned per case, split evenly among its backends (the default is 2 GiB of pages,
    /// about a second of scanning on a small machine).
    #[arg(long, default_value_t = 262_144)]
    pub total_pages: u32,
    /// Emulated storage latency of every request, microseconds.
    #[arg(long, default_value_t = 200)]
    pub delay_us: u64,
    /// Pipeline depth of each tcp-pipelined and tcp-lfc backend (Neon's 128, as in `bench scan`).
    #[arg(long, default_value_t = crate::compute::scan::DEFAULT_TCP_DEPTH)]
    pub depth: u32,
    /// Prefetch distance of each udp backend (as in `bench scan`).
    #[arg(long, default_value_t = crate::compute::scan::DEFAULT_UDP_DISTANCE)]
    pub distance: u32,
    /// Worker daemon threads (the daemon's own default: one per two CPUs, at least one).
    // The default depends on the machine: the text above states it once, and help shows no
    // second, this machine's, number.
    #[arg(long, default_value_t = workers::daemon::default_threads(), hide_default_value = true)]
    pub daemon_threads: usize,
    /// The page server's UDP prefetch sender threads (the server's default: one per two CPUs, at
    /// least one).
    // The default depends on the machine: the text above states it once, and help shows no
    // second, this machine's, number.
    #[arg(long, default_value_t = crate::pageserver::default_prefetch_senders(), hide_default_value = true)]
    pub prefetch_senders: usize,
    /// Nice value for every worker daemon thread (0 = as started, the default deployment;
    /// negative needs root or CAP_SYS_NICE).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub daemon_nice: i32,
    /// The worker daemon's `--thread-class` (default: the daemon's own default).
    #[arg(long, value_enum)]
    pub daemon_thread_class: Option<crate::cmd::workers::WorkerClass>,
    /// Nice value of the page server's prefetch sender threads (`pageserver
    /// --prefetch-sender-nice`; 0 = as started).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub prefetch_sender_nice: i32,
    /// Repetitions per backend count, each running the three modes with fresh LFCs and daemons
    /// (the udp and tcp-pipelined cases in turns first); the records are the repetition with
    /// the median udp / tcp-pipelined ratio, and its `ratios` param lists every repetition's.
    /// One run's ratio moved by a third between runs on a quiet two-CPU machine.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub repeat: u32,
    /// Measure backends as freshly started processes, paying a page fault on their first touch
    /// of each LFC frame (about 2 µs per page with 4 KiB pages). By default each backend maps
    /// the LFC before the gate opens, as a PostgreSQL backend that has served queries for a
    /// while has: the steady state, like the rest of the start-up that the gate leaves out.
    #[arg(long)]
    pub fresh_backends: bool,
    /// Who receives the udp case's prefetches (`scan --receive`): the worker daemon, or each
    /// backend process itself.
    #[arg(long, value_enum, default_value_t = crate::cmd::scan::ReceiveBy::Daemon)]
    pub receive: crate::cmd::scan::ReceiveBy,
}

/// What one mode observed across all backends of a case.
struct ModeResult {
    reports: Vec<ScanReport>,
    /// Worker daemon CPU during the case.
    daemon_cpu_s: f64,
    /// Times the daemon's threads were scheduled during the case.
    daemon_switches: u64,
    /// Server-side prefetch counters during the case (UDP mode).
    prefetch_pages_sent: u64,
    prefetch_pages_dropped: u64,
}

impl ModeResult {
    fn pages(&self) -> u64 {
        self.reports.iter().map(|r| r.pages).sum()
    }

    /// The slowest backend's scan time: every scan started at the gate.
    fn slowest_s(&self) -> f64 {
        self.reports.iter().map(|r| r.elapsed_s).fold(0.0, f64::max)
    }

    fn aggregate_pages_per_s(&self) -> f64 {
        self.pages() as f64 / self.slowest_s().max(1e-9)
    }

    fn fairness(&self) -> f64 {
        let rates = self.reports.iter().map(|r| r.pages_per_s);
        let (min, max) = (
            rates.clone().fold(f64::INFINITY, f64::min),
            rates.fold(0.0, f64::max),
        );
        if max > 0.0 {
            min / max
        } else {
            0.0
        }
    }

    /// Backend CPU (without the digest) plus worker daemon CPU, per page, µs.
    fn compute_cpu_us(&self) -> (f64, f64) {
        let pages = self.pages().max(1) as f64;
        let backend: f64 = self
            .reports
            .iter()
            .map(|r| r.cpu_us_per_page * r.pages as f64)
            .sum::<f64>()
            / pages;
        (backend, self.daemon_cpu_s * 1e6 / pages)
    }

    fn records(&self, case: &str, backends: u32, args: &ManyBackendsBenchArgs) -> Vec<BenchRecord> {
        let sum = |f: fn(&ScanReport) -> u64| self.reports.iter().map(f).sum::<u64>();
        let with_params = |r: BenchRecord| {
            r.param("backends", backends)
                .param("pages_per_backend", args.total_pages / backends)
                .param("delay_us", args.delay_us)
                .param("depth", args.depth)
                .param("distance", args.distance)
                .param("prefetch_senders", args.prefetch_senders)
                .param("prefetch_sender_nice", args.prefetch_sender_nice)
                .param("daemon_nice", args.daemon_nice)
                .param(
                    "daemon_thread_class",
                    args.daemon_thread_class.map(|c| c.name()),
                )
                .param("fresh_backends", args.fresh_backends)
                .param("receive", args.receive.name())
        };
        let (backend_cpu, daemon_cpu) = self.compute_cpu_us();
        let mut throughput = with_params(BenchRecord::new(
            BENCH,
            case,
            "pages/s",
            self.aggregate_pages_per_s().round(),
        ));
        if case == "udp" {
            // As `bench scan` and `bench net` say it: how much of the case UDP carried.
            throughput = throughput.param(
                "udp_share",
                round3(crate::compute::scan::udp_share(&self.reports)),
            );
        }
        vec![
            throughput
                .param("slowest_s", round3(self.slowest_s()))
                .param("fairness", round3(self.fairness()))
                .param("lfc_hits", sum(|r| r.hits + r.late_hits))
                .param("tcp_pipelined", sum(|r| r.tcp_pipelined))
                .param("tcp_fallbacks", sum(|r| r.fallbacks))
                .param("wait_timeouts", sum(|r| r.wait_timeouts))
                .param("udp_state_changes", sum(|r| r.udp_state_changes))
                .param("tcp_depth_cuts", sum(|r| r.tcp_depth_cuts))
                .param(
                    "state_change_reasons",
                    super::state_change_reasons(self.reports.iter().map(|r| &r.udp_state_log[..])),
                )
                .param("prefetch_pages_sent", self.prefetch_pages_sent)
                .param("prefetch_pages_dropped", self.prefetch_pages_dropped),
            with_params(BenchRecord::new(
                BENCH,
                &format!("{case}-slowest"),
                "s",
                round3(self.slowest_s()),
            ))
            .lower_is_better(),
            with_params(BenchRecord::new(
                BENCH,
                &format!("{case}-fairness"),
                "min/max",
                round3(self.fairness()),
            )),
            with_params(BenchRecord::new(
                BENCH,
                &format!("{case}-compute-cpu"),
                "us/page",
                backend_cpu + daemon_cpu,
            ))
            .param("backend_cpu_us_per_page", round1(backend_cpu))
            .param("daemon_cpu_us_per_page", round1(daemon_cpu))
            // How often the compute switched to serve a page: a backend blocking per page and
            // the daemon woken per batch each cost a switch out and back in.
            .param(
                "backend_switches_per_page",
                round3(sum(|r| r.context_switches) as f64 / self.pages().max(1) as f64),
            )
            .param(
                "daemon_switches_per_page",
                round3(self.daemon_switches as f64 / self.pages().max(1) as f64),
            )
            .lower_is_better(),
        ]
    }
}

pub fn run(args: &ManyBackendsBenchArgs) -> anyhow::Result<Vec<BenchRecord>> {
    anyhow::ensure!(!args.backends.is_empty(), "--backends names no count");
    anyhow::ensure!(
        args.backends.iter().all(|b| (1..=MAX_BACKENDS).contains(b)),
        "--backends must be 1..={MAX_BACKENDS}"
    );
    let most = *args.backends.iter().max().expect("not empty");
    let fewest = *args.backends.iter().min().expect("not empty");
    anyhow::ensure!(
        args.total_pages >= most,
        "--total-pages must give every backend at least one page"
    );
    anyhow::ensure!(
        (1..=65_535).contains(&args.distance) && (1..=65_535).contains(&args.depth),
        "--depth and --distance must be 1..=65535"
    );
    // Relations 0..n for TCP, n..2n for UDP, 2n..3n for TCP with the LFC: every backend that
    // uses the LFC starts with a cold cache.
    let server = super::start_server(ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        source: SourceSpec::Synthetic {
            rels: 3 * most,
            pages: args.total_pages / fewest,
        },
        service_delay_us: args.delay_us,
        max_connections: 2 * MAX_BACKENDS as usize,
        prefetch_senders: args.prefetch_senders,
        prefetch_sender_nice: args.prefetch_sender_nice,
        ..ServerConfig::default()
    })?;
    let scratch = ScratchDir::new("udp-prefetch-bench-many")?;
    let mut records = Vec::new();
    for &backends in &args.backends {
        let runs = (0..args.repeat)
            .map(|rep| measure(&server, &scratch, backends, rep, args))
            .collect::<anyhow::Result<Vec<Modes>>>()?;
        let (Modes { tcp, udp, tcp_lfc }, ratios) = super::median_by_ratio(runs, Modes::ratio);
        let ratios: Vec<f64> = ratios.into_iter().map(round3).collect();
        let tcp_recs = tcp.records("tcp-pipelined", backends, args);
        let lfc_recs = tcp_lfc.records("tcp-lfc", backends, args);
        let udp_recs = udp.records("udp", backends, args);
        for ((u, l), t) in udp_recs.into_iter().zip(&lfc_recs).zip(&tcp_recs) {
            let vs_lfc = (l.value > 0.0).then(|| round3(u.value / l.value));
            records.push(
                u.param("ratio_vs_tcp_lfc", vs_lfc)
                    .param("repeat", args.repeat)
                    .param("ratios", ratios.clone())
                    .against(t),
            );
        }
        for (l, t) in lfc_recs.into_iter().zip(&tcp_recs) {
            records.push(l.against(t));
        }
        records.extend(tcp_recs);
    }
    Ok(records)
}

/// One repetition's three modes at one backend count.
struct Modes {
    tcp: ModeResult,
    udp: ModeResult,
    tcp_lfc: ModeResult,
}

impl Modes {
    /// udp / tcp-pipelined aggregate pages/s: what the median repetition is chosen by.
    fn ratio(&self) -> f64 {
        self.udp.aggregate_pages_per_s() / self.tcp.aggregate_pages_per_s().max(1e-9)
    }
}

/// One repetition at `backends`: tcp-pipelined and udp on one fresh LFC and daemon (which of
/// the two goes first alternates between repetitions), then tcp-lfc on a fresh LFC of its own.
fn measure(
    server: &PageServer,
    scratch: &ScratchDir,
    backends: u32,
    rep: u32,
    args: &ManyBackendsBenchArgs,
) -> anyhow::Result<Modes> {
    // A fresh LFC per case, large enough for the case's pages: no case evicts.
    let lfc_path = scratch.0.join(format!("lfc-{backends}-{rep}"));
    let lfc_bytes = u64::from(args.total_pages) * 8192 + (64 << 20);
    let threads = args.daemon_threads.to_string();
    let start_daemon = || -> anyhow::Result<DaemonProc> {
        let daemon = DaemonProc::start(
            &lfc_path,
            lfc_bytes,
            &super::daemon_flags(&threads, args.daemon_thread_class),
        )?;
        if args.daemon_nice != 0 {
            daemon.renice(args.daemon_nice)?;
        }
        Ok(daemon)
    };
    let daemon = start_daemon()?;
    let (tcp, udp) = super::in_turns(
        rep,
        || ModeRun::new(server, &daemon, ScanMode::TcpPipelined, args).run(backends, 0),
        || ModeRun::new(server, &daemon, ScanMode::Udp, args).run(backends, backends),
    )?;
    drop(daemon);
    let _ = std::fs::remove_file(&lfc_path);
    // Neon's compute with its LFC, on a cold LFC of its own (relations 2n..3n): what a backend
    // pays for the cache alone, without UDP. Its daemon is ignored.
    let daemon = start_daemon()?;
    let tcp_lfc =
        ModeRun::new(server, &daemon, ScanMode::TcpLfc, args).run(backends, 2 * backends)?;
    drop(daemon);
    let _ = std::fs::remove_file(&lfc_path);
    Ok(Modes { tcp, udp, tcp_lfc })
}

/// A backend's `scan` process, waiting at the start gate until its input closes.
struct ScanProcess {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for ScanProcess {
    fn drop(&mut self) {
        // Reaped whatever happened; a scan that is still running is killed.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// One mode's backends against one page server and worker daemon.
struct ModeRun<'a> {
    server: &'a PageServer,
    daemon: &'a DaemonProc,
    mode: ScanMode,
    args: &'a ManyBackendsBenchArgs,
}

impl<'a> ModeRun<'a> {
    fn new(
        server: &'a PageServer,
        daemon: &'a DaemonProc,
        mode: ScanMode,
        args: &'a ManyBackendsBenchArgs,
    ) -> Self {
        ModeRun {
            server,
            daemon,
            mode,
            args,
        }
    }

    /// Starts `backends` scan processes, opens the gate once all are attached, and collects their
    /// reports.
    fn run(&self, backends: u32, first_rel: u32) -> anyhow::Result<ModeResult> {
        let (server, daemon, mode) = (self.server, self.daemon, self.mode);
        let mut procs = self.start_backends(backends, first_rel)?;
        let stats = server.stats();
        let counter = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let dropped = || {
            counter(&stats.prefetch_pages_dropped_overflow)
                + counter(&stats.prefetch_pages_not_ready)
                + counter(&stats.prefetch_pages_failed)
                + counter(&stats.prefetch_send_errors)
        };
        let (sent_before, dropped_before) = (counter(&stats.prefetch_pages_sent), dropped());
        let (daemon_cpu_before, daemon_switches_before) = daemon.cpu_and_switches()?;
        // The gate: closing their input starts every scan at once.
        for p in &mut procs {
            drop(p.child.stdin.take());
        }
        let reports = collect_reports(&mut procs, mode)?;
        let (daemon_cpu_after, daemon_switches_after) = daemon.cpu_and_switches()?;
        Ok(ModeResult {
            reports,
            daemon_cpu_s: daemon_cpu_after - daemon_cpu_before,
            daemon_switches: daemon_switches_after - daemon_switches_before,
            prefetch_pages_sent: counter(&stats.prefetch_pages_sent) - sent_before,
            prefetch_pages_dropped: dropped() - dropped_before,
        })
    }

    /// `backends` scan processes of the mode, each on its own relation from `first_rel`, every
    /// one attached (its LFC mapped, its connection up) and waiting at the start gate.
    fn start_backends(&self, backends: u32, first_rel: u32) -> anyhow::Result<Vec<ScanProcess>> {
        let (server, daemon, mode, args) = (self.server, self.daemon, self.mode, self.args);
        let exe = std::env::current_exe()?;
        let pages = args.total_pages / backends;
        let mut procs = Vec::with_capacity(backends as usize);
        for i in 0..backends {
            let rel = Synthetic::rel(first_rel + i);
            let mut cmd = Command::new(&exe);
            cmd.arg("scan")
                .args(["--server", &server.local_addr().to_string()])
                .args(["--rel", &rel.to_string()])
                .args(["--blocks", &format!("0..{pages}")])
                .args(["--mode", mode.name()])
                .args([
                    "--distance",
                    &mode.pages_ahead(args.depth, args.distance).to_string(),
                ])
                .args(["--json", "--start-gate"])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            if mode == ScanMode::Udp {
                cmd.args(["--receive", args.receive.name()]);
            }
            if matches!(mode, ScanMode::Udp | ScanMode::TcpLfc) {
                cmd.arg("--lfc").arg(daemon.lfc_path());
                if !args.fresh_backends {
                    cmd.arg("--map-lfc");
                }
            }
            let mut child = cmd.spawn()?;
            let stdout = BufReader::new(child.stdout.take().expect("piped"));
            procs.push(ScanProcess { child, stdout });
        }
        for p in &mut procs {
            let mut line = String::new();
            p.stdout.read_line(&mut line)?;
            anyhow::ensure!(
                line.trim() == crate::compute::scan::READY_LINE,
                "a backend did not start: {line:?}"
            );
        }
        Ok(procs)
    }
}

/// Each started backend's report, once it has finished: every one must have succeeded with
/// every page verified.
fn collect_reports(procs: &mut [ScanProcess], mode: ScanMode) -> anyhow::Result<Vec<ScanReport>> {
    let mut reports = Vec::with_capacity(procs.len());
    for p in procs {
        let mut json = String::new();
        p.stdout.read_to_string(&mut json)?;
        let status = p.child.wait()?;
        anyhow::ensure!(
            status.success(),
            "a {} backend failed ({status}): {json}",
            mode.name()
        );
        let report: ScanReport = serde_json::from_str(json.trim())
            .map_err(|e| anyhow::anyhow!("a backend's report: {e}: {json:?}"))?;
        anyhow::ensure!(report.failed == 0, "a page failed verification");
        reports.push(report);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::all::args_of;

    #[test]
    fn defaults_are_the_issues_backend_counts_at_default_priority() {
        let a: ManyBackendsBenchArgs = args_of(&[]).unwrap();
        assert_eq!(a.backends, [8, 32, 64]);
        assert_eq!((a.daemon_nice, a.prefetch_sender_nice), (0, 0));
        assert_eq!(a.total_pages / 64, 4096);
    }
}
