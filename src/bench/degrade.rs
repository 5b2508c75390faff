//! `udp-prefetch bench degrade`: what a udp scan costs when the UDP side fails — no worker
//! daemon, the daemon SIGKILLed or SIGSTOPped mid-scan, the page server dropping half or all of
//! its prefetch datagrams, a page server without the extension (`--no-udp-extension`, issue
//! 19) — against a tcp-pipelined scan of the same relation measured right before each case (the
//! machine is noisy). UDP prefetch is best effort: each case should cost at most the TCP
//! pipelining it replaces (ARCHITECTURE §6).
//!
//! Every udp scan takes the daemon's port from the LFC header (`prefetch_port: None`), as a
//! backend does, and runs on its own thread while this one injects the fault; the daemon is a
//! child process, so killing it never touches the bench.
//!
//! Owns: nothing shared; it drives the public APIs of `PageServer`, `compute::scan`, `lfc` and
//! `cmd::daemon_proc` and may not be imported by the library's other modules.

use super::{relation_scan, round1, round3, start_server, synthetic_server_config, BenchRecord};
use crate::cmd::daemon_proc::{DaemonProc, ScratchDir};
use crate::compute::scan::{run_scan, ScanConfig, ScanMode, ScanReport};
use crate::pageserver::PageServer;
use lfc::Lfc;
use std::time::{Duration, Instant};

const BENCH: &str = "degrade";
/// How often the fault injector looks at the scan's progress (a look reads every frame's
/// metadata, ~50 µs for a 40k-page cache: 2 % of a core at this period).
const POLL: Duration = Duration::from_millis(2);

#[derive(Debug, Clone, clap::Args)]
pub struct DegradeBenchArgs {
    /// Pages per scan: 1 GiB, so that a scan lasts about a second. At 32768 pages (0.2 s)
    /// the ratio of two runs that were both TCP pipelining (`udp-no-daemon`) ranged over
    /// 0.82–1.19 on a 2-CPU machine: noise, not the path.
    #[arg(long, default_value_t = 131_072)]
    pub pages: u32,
    #[command(flatten)]
    pub path: super::PathArgs,
    /// Fraction of the relation a udp-daemon-killed scan has prefetched into the LFC when the
    /// daemon gets SIGKILL.
    #[arg(long, default_value_t = 0.2)]
    pub kill_at: f64,
    /// Fraction of the relation a udp-daemon-paused scan has prefetched when the daemon gets
    /// SIGSTOP.
    #[arg(long, default_value_t = 0.5)]
    pub pause_at: f64,
    /// How long the daemon stays stopped before SIGCONT, milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub pause_ms: u64,
    /// Worker daemon threads (the daemon's own default: one per two CPUs, at least one).
    // The default depends on the machine: the text above states it once, and help shows no
    // second, this machine's, number.
    #[arg(long, default_value_t = workers::daemon::default_threads(), hide_default_value = true)]
    pub daemon_threads: usize,
    /// Measure the udp scan as a freshly started backend, which fills frames it never touched
    /// with `pwrite` (about 1.4 µs per page) and faults on its first read of each. By default
    /// the scan's LFC is mapped first (`Lfc::map_all`), as a backend that has run for a while
    /// has it: the steady state, and a plain copy per install.
    #[arg(long)]
    pub fresh_backend: bool,
    /// Who receives the udp scans' prefetches (`scan --receive`): the worker daemon, or the
    /// backend itself (whose UDP path the daemon's faults then leave alone).
    #[arg(long, value_enum, default_value_t = crate::cmd::scan::ReceiveBy::Daemon)]
    pub receive: crate::cmd::scan::ReceiveBy,
    /// Repetitions per case (each a baseline and a udp scan); the record is the one with the
    /// median ratio, and `ratios` lists them all. Nine, because the degraded cases run TCP
    /// pipelining as the baseline does, so their true ratio is about 1: repetitions of one case
    /// ranged over ±20 % on a 2-CPU machine, and a median of five came out at 0.86–1.06 for
    /// `udp-no-daemon` (three runs of nine: 0.95–1.02).
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub repeat: u32,
    /// Cases to run, in this order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "udp-healthy,udp-no-daemon,udp-daemon-killed,udp-daemon-paused,udp-drop50,udp-drop100,udp-no-extension"
    )]
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Case {
    /// Daemon running, nothing dropped.
    UdpHealthy,
    /// An LFC that no daemon serves.
    UdpNoDaemon,
    /// The daemon SIGKILLed a fifth into the scan (`--kill-at`).
    UdpDaemonKilled,
    /// The daemon SIGSTOPped in the middle for `--pause-ms`, then continued.
    UdpDaemonPaused,
    /// The page server drops 50 % of its prefetch datagrams.
    UdpDrop50,
    /// The page server drops every prefetch datagram.
    UdpDrop100,
    /// The page server does not speak the extension (`pageserver --no-udp-extension`): the
    /// backend learns it from its PrefetchTarget's answer and reads by pipelined GetPage, as
    /// Neon's compute does, with its LFC (a lookup and a store per page).
    UdpNoExtension,
}

impl Case {
    pub fn name(self) -> &'static str {
        match self {
            Case::UdpHealthy => "udp-healthy",
            Case::UdpNoDaemon => "udp-no-daemon",
            Case::UdpDaemonKilled => "udp-daemon-killed",
            Case::UdpDaemonPaused => "udp-daemon-paused",
            Case::UdpDrop50 => "udp-drop50",
            Case::UdpDrop100 => "udp-drop100",
            Case::UdpNoExtension => "udp-no-extension",
        }
    }

    /// Whether the case's page server speaks this project's extension.
    fn udp_extension(self) -> bool {
        self != Case::UdpNoExtension
    }

    /// Fraction of prefetch datagrams the page server drops in this case.
    fn drop_fraction(self) -> f64 {
        match self {
            Case::UdpDrop50 => 0.5,
            Case::UdpDrop100 => 1.0,
            _ => 0.0,
        }
    }

    /// What happens to the daemon while the udp scan runs.
    fn fault(self, args: &DegradeBenchArgs) -> Fault {
        let at = |fraction: f64| (f64::from(args.pages) * fraction).round() as u64;
        match self {
            Case::UdpDaemonKilled => Fault::Kill {
                at_pages: at(args.kill_at),
            },
            Case::UdpDaemonPaused => Fault::Pause {
                at_pages: at(args.pause_at),
                for_time: Duration::from_millis(args.pause_ms),
            },
            _ => Fault::None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    Kill { at_pages: u64 },
    Pause { at_pages: u64, for_time: Duration },
}

/// When a fault was injected, as seen from the scan.
#[derive(Debug, Clone, Copy)]
struct Injected {
    /// Pages in the LFC (a fresh one per case, so: pages prefetched or read so far).
    lfc_pages: u64,
    after: Duration,
}

/// What the fault of a case did, on its udp record: when the daemon was killed or paused
/// (how full the LFC was then), or that the scan ended before the fault came.
fn fault_params(rec: BenchRecord, fault: Fault, injected: Option<Injected>) -> BenchRecord {
    match (fault, injected) {
        (Fault::None, _) => rec,
        (Fault::Kill { .. } | Fault::Pause { .. }, None) => rec.param("fault_injected", false),
        (Fault::Kill { .. }, Some(i)) => rec
            .param("killed_at_lfc_pages", i.lfc_pages)
            .param("killed_at_ms", i.after.as_millis() as u64),
        (Fault::Pause { for_time, .. }, Some(i)) => rec
            .param("paused_at_lfc_pages", i.lfc_pages)
            .param("paused_at_ms", i.after.as_millis() as u64)
            .param("paused_ms", for_time.as_millis() as u64),
    }
}

/// The flags' bounds, checked before anything starts.
fn validate(args: &DegradeBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.pages > 0, "--pages must be at least 1");
    anyhow::ensure!(
        args.path.depth >= 1 && args.path.distance >= 1,
        "--depth and --distance must be at least 1"
    );
    anyhow::ensure!(
        (0.0..1.0).contains(&args.kill_at) && (0.0..1.0).contains(&args.pause_at),
        "--kill-at and --pause-at are fractions in 0..1"
    );
    anyhow::ensure!(!args.cases.is_empty(), "--cases names no case");
    Ok(())
}

pub fn run(args: &DegradeBenchArgs) -> anyhow::Result<Vec<BenchRecord>> {
    validate(args)?;
    let scratch = ScratchDir::new("udp-prefetch-bench-degrade")?;
    // The server without loss is shared by the cases that need one; each lossy case, and the
    // case without the extension, gets its own, which also serves its baseline (TCP is
    // reliable: the loss only touches datagrams; and pipelined GetPage is the same with the
    // extension or without it).
    let server_for = |case: Case| {
        start_server(crate::pageserver::ServerConfig {
            udp_extension: case.udp_extension(),
            ..synthetic_server_config(args.pages, 1, args.path.delay_us, case.drop_fraction())
        })
    };
    let clean = server_for(Case::UdpHealthy)?;
    let mut records = Vec::new();
    for &case in &args.cases {
        let own;
        let server = if case.drop_fraction() > 0.0 || !case.udp_extension() {
            own = server_for(case)?;
            &own
        } else {
            &clean
        };
        // Every repetition is a baseline and a udp scan beside it (`run_once`), on a fresh LFC and
        // daemon; the record is the repetition with the median ratio (a burst of load from
        // elsewhere moves one scan of 0.15 s by tens of percent on a small machine).
        let mut reps = Vec::with_capacity(args.repeat as usize);
        for rep in 0..args.repeat {
            reps.push(run_once(args, case, server, &scratch, rep)?);
        }
        let ((baseline, udp, injected), ratios) = super::median_by_ratio(
            reps,
            |(b, u, _): &(ScanReport, ScanReport, Option<Injected>)| {
                u.pages_per_s / b.pages_per_s.max(1e-9)
            },
        );
        let fault = case.fault(args);
        anyhow::ensure!(
            baseline.failed == 0 && udp.failed == 0,
            "{}: a page failed verification (tcp-pipelined {}, udp {})",
            case.name(),
            baseline.failed,
            udp.failed
        );
        // Without the extension, the case measures the fallback only if the scan fell back.
        anyhow::ensure!(
            case.udp_extension() || udp.prefetched == 0,
            "{}: the udp scan requested {} pages by UDP from a page server without the \
             extension",
            case.name(),
            udp.prefetched
        );
        let base_rec = baseline_record(args, case, &baseline);
        let mut rec = udp_record(args, case, &udp, &ratios);
        rec = fault_params(rec, fault, injected);
        records.push(rec.against(&base_rec));
        records.push(base_rec);
    }
    Ok(records)
}

/// The tcp-pipelined baseline's record beside `case`.
fn baseline_record(args: &DegradeBenchArgs, case: Case, baseline: &ScanReport) -> BenchRecord {
    BenchRecord::new(BENCH, "tcp-pipelined", "pages/s", baseline.pages_per_s)
        .param("for_case", case.name())
        .param("pages", baseline.pages)
        .param("delay_us", args.path.delay_us)
        .param("drop", case.drop_fraction())
        .param("udp_extension", case.udp_extension())
        .param("depth", args.path.depth)
        .param("elapsed_s", round3(baseline.elapsed_s))
        .param("cpu_us_per_page", round3(baseline.cpu_us_per_page))
}

/// `case`'s record of its median udp scan, with every repetition's ratio and how the scan
/// went: when and why it changed paths, what it waited for and fetched again.
fn udp_record(
    args: &DegradeBenchArgs,
    case: Case,
    udp: &ScanReport,
    ratios: &[f64],
) -> BenchRecord {
    BenchRecord::new(BENCH, case.name(), "pages/s", udp.pages_per_s)
        .param("pages", udp.pages)
        .param("delay_us", args.path.delay_us)
        .param("drop", case.drop_fraction())
        .param("udp_extension", case.udp_extension())
        .param("distance", args.path.distance)
        .param("daemon_threads", args.daemon_threads)
        .param("receive", args.receive.name())
        .param("fresh_backend", args.fresh_backend)
        .param("repeat", args.repeat)
        .param(
            "ratios",
            ratios.iter().map(|r| round3(*r)).collect::<Vec<f64>>(),
        )
        .param("elapsed_s", round3(udp.elapsed_s))
        .param("cpu_us_per_page", round3(udp.cpu_us_per_page))
        .param("tcp_pipelined", udp.tcp_pipelined)
        .param("udp_state_changes", udp.udp_state_changes)
        .param("tcp_depth_cuts", udp.tcp_depth_cuts)
        // When and why the median scan changed paths: what a fault's cost is made of.
        .param(
            "udp_state_log",
            serde_json::to_value(&udp.udp_state_log).unwrap_or_default(),
        )
        .param("fallbacks", udp.fallbacks)
        .param("wait_timeouts", udp.wait_timeouts)
        .param("hits", udp.hits)
        .param("late_hits", udp.late_hits)
        .param("retries", udp.retries)
        .param("window_cuts", udp.window_cuts)
        .param("wait_p50_us", round1(udp.wait_p50_us))
        .param("wait_p99_us", round1(udp.wait_p99_us))
        .param("verified", udp.verified)
}

/// One repetition of `case`: a fresh LFC (and daemon, unless the case has none), the
/// tcp-pipelined baseline and the udp scan with the case's fault (the baseline first in even
/// repetitions, second in odd ones).
fn run_once(
    args: &DegradeBenchArgs,
    case: Case,
    server: &PageServer,
    scratch: &ScratchDir,
    rep: u32,
) -> anyhow::Result<(ScanReport, ScanReport, Option<Injected>)> {
    // A fresh LFC per repetition: every udp scan starts cold, and a killed or paused daemon leaves
    // nothing behind for the next case. Removed right after, to give its memory back.
    let lfc_path = scratch.0.join(format!("lfc-{}-{rep}", case.name()));
    let capacity_pages = u64::from(args.pages) + 8192;
    let mut daemon = match case {
        Case::UdpNoDaemon => {
            // Allocated up front, as a daemon's prefault does for the other cases, so that
            // no case pays tmpfs's first-touch allocation; through a handle of its own, so
            // that the scan's mapping takes the same minor faults as in the other cases.
            let created = Lfc::create(&lfc_path, capacity_pages)?;
            created.prefault_metadata()?;
            created.prefault(0..capacity_pages)?;
            None
        }
        _ => Some(DaemonProc::start(
            &lfc_path,
            capacity_pages * 8192,
            &["--threads", &args.daemon_threads.to_string()],
        )?),
    };
    let lfc = Lfc::open(&lfc_path)?;
    if !args.fresh_backend {
        // A long-running backend has the cache mapped (see `--fresh-backend`).
        lfc.map_all()?;
    }
    // The baseline beside its case, once the daemon has settled (prefault done), in turns
    // first: it never touches the daemon or the LFC, whatever the fault left of them.
    let fault = case.fault(args);
    let (baseline, (udp, injected)) = super::in_turns(
        rep,
        || Ok(scan_with_fault(args, server, ScanMode::TcpPipelined, None, None)?.0),
        || {
            scan_with_fault(
                args,
                server,
                ScanMode::Udp,
                Some(&lfc),
                Some((&mut daemon, fault)),
            )
        },
    )?;
    drop(lfc);
    drop(daemon);
    let _ = std::fs::remove_file(&lfc_path);
    Ok((baseline, udp, injected))
}

/// Runs one scan on its own thread; meanwhile this thread injects `fault` into the daemon when
/// the LFC holds the fault's number of pages (or not at all if the scan ends first).
fn scan_with_fault(
    args: &DegradeBenchArgs,
    server: &PageServer,
    mode: ScanMode,
    lfc: Option<&Lfc>,
    daemon: Option<(&mut Option<DaemonProc>, Fault)>,
) -> anyhow::Result<(ScanReport, Option<Injected>)> {
    let cfg = ScanConfig {
        receive: args.receive.with_port(None),
        ..relation_scan(
            server,
            mode,
            mode.pages_ahead(args.path.depth, args.path.distance),
        )
    };
    std::thread::scope(|s| {
        let started = Instant::now();
        let scan = std::thread::Builder::new()
            .name("degrade-scan".into())
            .spawn_scoped(s, || run_scan(&cfg, lfc))?;
        let mut injected = None;
        if let (Some((Some(daemon), fault)), Some(lfc)) = (daemon, lfc) {
            injected = inject(daemon, fault, lfc, started, || scan.is_finished())?;
        }
        let report = scan
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the scan thread panicked")))?;
        Ok((report, injected))
    })
}

fn inject(
    daemon: &mut DaemonProc,
    fault: Fault,
    lfc: &Lfc,
    started: Instant,
    scan_done: impl Fn() -> bool,
) -> anyhow::Result<Option<Injected>> {
    let at_pages = match fault {
        Fault::None => return Ok(None),
        Fault::Kill { at_pages } | Fault::Pause { at_pages, .. } => at_pages,
    };
    let lfc_pages = loop {
        if scan_done() {
            return Ok(None);
        }
        let used = lfc.stats().used_pages;
        if used >= at_pages {
            break used;
        }
        std::thread::sleep(POLL);
    };
    let after = started.elapsed();
    match fault {
        Fault::None => {}
        Fault::Kill { .. } => daemon.kill()?,
        Fault::Pause { for_time, .. } => {
            daemon.pause()?;
            // The pause lasts its time even when the scan ends during it (what the scan did
            // meanwhile is what is measured), and SIGCONT always follows.
            std::thread::sleep(for_time);
            daemon.resume()?;
        }
    }
    Ok(Some(Injected { lfc_pages, after }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::all::args_of;

    #[test]
    fn defaults_name_every_case_in_the_issues_order() {
        let a: DegradeBenchArgs = args_of(&[]).unwrap();
        let names: Vec<&str> = a.cases.iter().map(|c| c.name()).collect();
        assert_eq!(
            names,
            [
                "udp-healthy",
                "udp-no-daemon",
                "udp-daemon-killed",
                "udp-daemon-paused",
                "udp-drop50",
                "udp-drop100",
                "udp-no-extension"
            ]
        );
        assert_eq!((a.pages, a.path.delay_us), (131072, 200));
        assert_eq!((a.repeat, a.fresh_backend), (9, false));
        for c in &a.cases {
            assert_eq!(
                clap::ValueEnum::to_possible_value(c).unwrap().get_name(),
                c.name()
            );
        }
    }

    #[test]
    fn faults_fire_at_their_fraction_of_the_relation() {
        let a: DegradeBenchArgs = args_of(&["--pages", "1000"]).unwrap();
        assert!(matches!(
            Case::UdpDaemonKilled.fault(&a),
            Fault::Kill { at_pages: 200 }
        ));
        assert!(matches!(
            Case::UdpDaemonPaused.fault(&a),
            Fault::Pause { at_pages: 500, for_time } if for_time == Duration::from_secs(1)
        ));
        assert!(matches!(Case::UdpDrop100.fault(&a), Fault::None));
        assert_eq!(Case::UdpDrop50.drop_fraction(), 0.5);
        // Without the extension: no fault and no loss, only the server's refusal.
        assert!(matches!(Case::UdpNoExtension.fault(&a), Fault::None));
        assert_eq!(Case::UdpNoExtension.drop_fraction(), 0.0);
        assert!(!Case::UdpNoExtension.udp_extension() && Case::UdpDrop100.udp_extension());
    }
}
