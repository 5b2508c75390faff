//! `udp-prefetch-sim` (run as `udp-prefetch sim`): the deterministic simulator's soak and replay
//! command. Exit status: 0 no violation, 1 a violation (or a run could not be set up), 2 bad
//! usage.
//!
//! Owns: its flags, the lines and JSON it prints and the exit status. Reaches the simulator only
//! through the `sim` library (`run`, `soak`, `SimConfig`, `workload::parse_ops`), imports nothing
//! of the root crate, `lfc` or `workers` itself, and reads the real clock only for the wall seconds
//! it prints.

use clap::Parser;
use sim::{soak, FaultProfile, Scenario, SoakOptions};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Debug, Parser)]
#[command(
    name = "udp-prefetch sim",
    // Reached as `udp-prefetch sim` (which execs this binary), so usage and errors name that
    // command rather than this file's name.
    bin_name = "udp-prefetch sim",
    about = "Run the deterministic network simulator over many seeds (or replay one)",
    long_about = "Runs the real prefetch-path cores (page-server queue and pacing, datagram \
                  sealing, worker ingest, backend read path, a real LFC) under a simulated faulty \
                  network, and checks for stale, torn or forged reads, liveness and accounting. \
                  Each seed reproduces its run bit for bit. Exit status: 0 no violation, 1 a \
                  violation, 2 bad usage."
)]
struct Args {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 100, conflicts_with = "seed")]
    seeds: u64,
    /// First seed of the range.
    #[arg(long, default_value_t = 0, conflicts_with = "seed")]
    first_seed: u64,
    /// Fault profile: none, light, default or heavy.
    #[arg(long, default_value = "default", value_parser = parse_profile)]
    faults: FaultProfile,
    /// One JSON object on stdout instead of the human summary.
    #[arg(long)]
    json: bool,
    /// Replay a single seed (as printed by a failure).
    #[arg(long)]
    seed: Option<u64>,
    /// With --seed: the exact workload and fault schedule to replay (JSON list, as printed by a
    /// failing property test).
    #[arg(long, requires = "seed")]
    ops: Option<String>,
    /// Threads running seeds in parallel (default: all CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// With --seed: print the configuration the seed draws.
    #[arg(long, requires = "seed")]
    show_config: bool,
    /// With --seed: backend b starts b times this many microseconds after the first (as a
    /// violation found with skewed starts prints it).
    #[arg(long, requires = "seed", default_value_t = 0)]
    start_skew_us: u64,
}

fn parse_profile(s: &str) -> Result<FaultProfile, String> {
    s.parse()
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.seed {
        Some(seed) => replay(&args, seed),
        None => run_soak(&args),
    }
}

fn replay(args: &Args, seed: u64) -> ExitCode {
    let ops = match args
        .ops
        .as_deref()
        .map(sim::workload::parse_ops)
        .transpose()
    {
        Ok(ops) => ops,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let scenario = Scenario {
        seed,
        profile: args.faults,
        ops,
        start_skew_ns: args.start_skew_us.saturating_mul(1_000),
    };
    if args.show_config {
        let cfg = sim::SimConfig::for_seed(seed, args.faults);
        match serde_json::to_string_pretty(&cfg) {
            Ok(text) => eprintln!("{text}"),
            Err(e) => eprintln!("(configuration not printable: {e})"),
        }
    }
    let started = Instant::now();
    let report = match sim::run(&scenario) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let wall = started.elapsed().as_secs_f64();
    if args.json {
        if let Err(code) = print_json(&report) {
            return code;
        }
    } else {
        println!(
            "seed {seed} ({}): {} reads checked ({} hits, {} late hits, {} TCP), {} writes, {} datagrams sent, {} delivered, {} installed, {} dropped by faults, {} stale rejected, {} forged rejected, {} faults injected; {:.3} simulated s in {:.3} wall s; digest {}",
            args.faults.name(),
            report.reads_checked,
            report.read_hits,
            report.read_late_hits,
            report.read_tcp,
            report.writes,
            report.datagrams,
            report.datagrams_delivered,
            report.datagrams_installed,
            report.datagrams_dropped_by_faults,
            report.stale_rejected,
            report.forged_rejected,
            report.faults.total(),
            report.simulated_ns as f64 / 1e9,
            wall,
            report.digest
        );
        if let Some(v) = &report.violation {
            println!(
                "VIOLATION {:?} at {:.3} us: {}",
                v.kind,
                v.at_ns as f64 / 1e3,
                v.message
            );
            println!("trace (last events):");
            for line in &v.trace {
                println!("  {line}");
            }
        }
    }
    if report.violation.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn run_soak(args: &Args) -> ExitCode {
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let opts = SoakOptions {
        first_seed: args.first_seed,
        seeds: args.seeds,
        profile: args.faults,
        jobs,
    };
    let show_progress = std::io::stderr().is_terminal() || !args.json;
    let last_pct = AtomicU64::new(0);
    let seeds = args.seeds;
    let progress = move |done: u64| {
        if !show_progress || seeds < 100 {
            return;
        }
        let pct = done * 100 / seeds;
        if pct >= last_pct.load(Ordering::Relaxed) + 10 {
            last_pct.store(pct, Ordering::Relaxed);
            eprintln!("  {done}/{seeds} seeds ({pct} %)");
        }
    };
    let s = soak(&opts, &progress);
    if args.json {
        if let Err(code) = print_json(&s) {
            return code;
        }
    } else {
        println!(
            "{} seeds from {} (faults {}): {} violation(s) {:?}",
            s.seeds, s.first_seed, s.profile, s.violations, s.violations_by_kind
        );
        println!(
            "  reads checked {}, writes {}, prewarm {}/{} pages (yielded to reads for {} rounds)",
            s.reads_checked, s.writes, s.prewarm_covered, s.prewarm_pages, s.prewarm_yielded_rounds
        );
        println!(
            "  datagrams sent {}, delivered {}, installed {}, dropped by faults {}, stale rejected {}, forged rejected {}; prefetches retried {}",
            s.datagrams,
            s.datagrams_delivered,
            s.datagrams_installed,
            s.datagrams_dropped_by_faults,
            s.stale_rejected,
            s.forged_rejected,
            s.prefetch_retries
        );
        println!("  faults injected {}: {:?}", s.faults_injected, s.faults);
        let nearest: Vec<String> = s
            .nearest_limit
            .iter()
            .map(|(seed, share)| format!("{seed} {share:.3}"))
            .collect();
        println!(
            "  liveness: {} seed(s) at >= {} of the limit; nearest: {}",
            s.near_limit_seeds,
            sim::soak::NEAR_LIMIT_SHARE,
            nearest.join(", ")
        );
        println!(
            "  {:.1} simulated s in {:.1} wall s: {:.0} seeds/min, {:.0} datagrams/wall s",
            s.simulated_seconds, s.wall_seconds, s.seeds_per_minute, s.datagrams_per_wall_second
        );
        for f in &s.failed {
            println!("VIOLATION seed {}: {:?}: {}", f.seed, f.kind, f.message);
            for line in &f.trace {
                println!("    {line}");
            }
            println!("  replay: {}", f.replay);
        }
    }
    if s.violations > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// One JSON object on stdout; an encoding failure is exit status 1.
fn print_json(value: &impl serde::Serialize) -> Result<(), ExitCode> {
    match serde_json::to_string(value) {
        Ok(text) => {
            println!("{text}");
            Ok(())
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(1))
        }
    }
}
