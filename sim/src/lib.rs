//! Deterministic network simulator for the UDP prefetch path (ARCHITECTURE §7).
//!
//! One `u64` seed fixes everything: the topology, the fault rates of every link (drawn from the
//! ranges of a [`FaultProfile`]), the workload (unless a list of [`Op`]s is given) and every
//! random choice on the way. The simulator is a single-threaded discrete-event loop in virtual
//! nanoseconds that drives the *real* sans-IO cores — the page server's `Session` and
//! `PrefetchScheduler` (`next_send`, `seal_batch`) over a `PageStore`, the daemon's `SlotBook`
//! and `Ingest`, the backend's and prewarm's drivers — and a real memory-mapped `Lfc` on a temp
//! file, and checks after every step that no backend reads a stale, torn or forged page, that
//! every read and every prewarm completes, that every datagram is accounted for, and that the
//! cache never exceeds its capacity. See `world` for what each node models of its real I/O
//! shell around its core (one file per node, beside the network, the attacker and the
//! checkers).
//!
//! Found by the soak and fixed: in the zero-copy receive path every datagram that was not
//! installed (forged, corrupt, duplicate, stale) used to give its reserved frame back, and the
//! worker's next `Lfc::reserve` ran the CLOCK sweep, which evicts a cold page when the hand meets
//! one before a free frame. Junk traffic thus evicted cached pages at packet rate and prewarms
//! under attack finished incomplete. Now `Ingest::complete` hands a turned-away slot back to be
//! posted again, `reserve` takes free frames before sweeping, and prewarm counts the workers'
//! reserved frames when it decides the cache is full.
//!
//! ```no_run
//! let report = sim::run(&sim::Scenario::from_seed(42, sim::FaultProfile::Default)).unwrap();
//! assert!(report.violation.is_none());
//! ```

pub mod config;
pub mod rng;
pub mod seeded_lfc;
pub mod soak;
pub mod trace;
pub mod workload;
pub mod world;

pub use config::{FaultProfile, FaultRanges, SimConfig};
pub use soak::{soak, SoakOptions, SoakSummary};
pub use workload::{ForgeKind, Op};
pub use world::{FaultCounts, RunReport, Violation, ViolationKind};

/// Name of the simulator binary (the `udp-prefetch sim` subcommand executes it).
pub const BIN_NAME: &str = "udp-prefetch-sim";

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("creating the simulation's temp directory: {0}")]
    TempDir(#[from] std::io::Error),
    #[error("creating the simulation's LFC: {0}")]
    Lfc(#[from] seeded_lfc::SeededLfcError),
    #[error("setting up the simulation: {0}")]
    Setup(String),
}

/// One run: a seed, a fault profile and optionally an explicit workload.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub profile: FaultProfile,
    /// `None`: the workload the seed generates.
    pub ops: Option<Vec<Op>>,
}

impl Scenario {
    pub fn from_seed(seed: u64, profile: FaultProfile) -> Scenario {
        Scenario {
            seed,
            profile,
            ops: None,
        }
    }

    /// The command line that replays exactly this run.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "cargo run --release -p sim --bin {BIN_NAME} -- --seed {} --faults {}",
            self.seed,
            self.profile.name()
        );
        if let Some(ops) = &self.ops {
            cmd.push_str(&format!(" --ops '{}'", workload::ops_json(ops)));
        }
        cmd
    }
}

/// Best effort must never cost more than the TCP path it replaces: a run's workload may take at
/// most this factor of the same seed's workload with no worker daemon (every backend on TCP
/// pipelining in the model) ...
pub const LIVENESS_FACTOR: f64 = 1.25;
/// ... plus this: what finding out costs (a few waits of at most the budget cap, a probe).
pub const LIVENESS_SLACK_NS: u64 = 20_000_000;

/// Runs one scenario to completion, and the same seed's workload with UDP prefetch disabled
/// (no daemon) to check that UDP cost no more than TCP pipelining. `Err` only for set-up
/// failures (temp file, LFC); a checker failure is `Ok` with `violation` set.
pub fn run(scenario: &Scenario) -> Result<RunReport, SimError> {
    let cfg = SimConfig::for_seed(scenario.seed, scenario.profile);
    let ops = match &scenario.ops {
        Some(ops) => ops.clone(),
        // `none` means no faults at all: the seed's own fault operations are left out too.
        None if scenario.profile == FaultProfile::None => workload::generate(scenario.seed)
            .into_iter()
            .filter(|op| !op.is_fault())
            .collect(),
        None => workload::generate(scenario.seed),
    };
    let absent = cfg.daemon == config::DaemonFault::Absent;
    let mut report = run_config(cfg.clone(), scenario.seed, &ops)?;
    if report.violation.is_some() || absent {
        return Ok(report);
    }
    let tcp_only = run_config(
        SimConfig {
            daemon: config::DaemonFault::Absent,
            ..cfg
        },
        scenario.seed,
        &ops,
    )?;
    let (udp_ns, tcp_ns) = (report.workload_ns(), tcp_only.workload_ns());
    if tcp_only.violation.is_none()
        && udp_ns as f64 > LIVENESS_FACTOR * tcp_ns as f64 + LIVENESS_SLACK_NS as f64
    {
        report.violation = Some(world::Violation {
            kind: world::ViolationKind::SlowerThanTcp,
            message: format!(
                "the backends' workload took {:.3} ms with UDP prefetch, {:.3} ms with TCP \
                 pipelining only (limit {LIVENESS_FACTOR} x + {} ms; {} path changes; LFC \
                 evictions {} and {})",
                udp_ns as f64 / 1e6,
                tcp_ns as f64 / 1e6,
                LIVENESS_SLACK_NS / 1_000_000,
                report.udp_state_changes,
                report.lfc_evictions,
                tcp_only.lfc_evictions
            ),
            at_ns: report.backends_done_ns,
            trace: Vec::new(),
        });
    }
    Ok(report)
}

fn run_config(cfg: SimConfig, seed: u64, ops: &[Op]) -> Result<RunReport, SimError> {
    let dir = tempfile::Builder::new()
        .prefix("udp-prefetch-sim")
        .tempdir_in(scratch_dir())?;
    let lfc = seeded_lfc::create(&dir.path().join("lfc"), cfg.lfc_capacity_pages, seed)?;
    let world = world::World::new(cfg, &lfc, seed, ops)?;
    let mut report = world.run();
    report.lfc_evictions = lfc.stats().evictions;
    Ok(report)
}

/// Where the per-run LFC files go: memory-backed when the machine has it (the file is mapped
/// and rewritten constantly; a disk adds nothing to the test).
fn scratch_dir() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}
