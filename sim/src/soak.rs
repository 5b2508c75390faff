//! Many seeds in a row (the `--seeds N` soak), spread over a few threads; each run is still
//! single-threaded and deterministic on its own.
//!
//! Owns: the seed counter the threads share and the summed `SoakSummary`. Runs share nothing:
//! each thread runs a whole `Scenario` through `run` and only adds up its `RunReport`; the wall
//! clock read here is for the throughput figures, never inside a run.

use crate::world::{FaultCounts, RunReport, ViolationKind};
use crate::{run, FaultProfile, Scenario};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Violations kept in full in a summary (the count covers all of them).
pub const MAX_REPORTED_VIOLATIONS: usize = 20;

/// Seeds listed as nearest the liveness limit: a change to the read path moves this tail long
/// before it adds or removes a violation, so a soak shows which way it went.
pub const NEAREST_LIMIT_SEEDS: usize = 10;

/// A seed's liveness share at or above this counts as near the limit.
pub const NEAR_LIMIT_SHARE: f64 = 0.9;

#[derive(Debug, Clone)]
pub struct SoakOptions {
    pub first_seed: u64,
    pub seeds: u64,
    pub profile: FaultProfile,
    /// Threads running seeds in parallel.
    pub jobs: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedSeed {
    pub seed: u64,
    pub kind: Option<ViolationKind>,
    pub message: String,
    pub at_ns: u64,
    pub trace: Vec<String>,
    pub replay: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakSummary {
    pub profile: String,
    pub first_seed: u64,
    pub seeds: u64,
    pub violations: u64,
    /// Violations per category (`Violation::category`), over all seeds.
    pub violations_by_kind: std::collections::BTreeMap<String, u64>,
    pub reads_checked: u64,
    pub writes: u64,
    pub datagrams: u64,
    pub datagrams_delivered: u64,
    pub datagrams_installed: u64,
    /// Of them, installed by backends that receive their own prefetches, and the backends
    /// (over all seeds) that did.
    pub own_receiver_installs: u64,
    pub own_receivers: u64,
    pub datagrams_dropped_by_faults: u64,
    pub stale_rejected: u64,
    pub forged_rejected: u64,
    pub prefetch_retries: u64,
    /// Cuts of the backends' TCP pipeline depths (`RunReport::tcp_depth_cuts`).
    pub tcp_depth_cuts: u64,
    pub faults_injected: u64,
    pub faults: FaultCounts,
    pub prewarm_pages: u64,
    pub prewarm_covered: u64,
    pub prewarm_yielded_rounds: u64,
    pub events: u64,
    pub simulated_seconds: f64,
    pub wall_seconds: f64,
    pub seeds_per_minute: f64,
    pub datagrams_per_wall_second: f64,
    /// Seeds whose mean time with UDP came to at least `NEAR_LIMIT_SHARE` of the liveness
    /// limit (violations included), and the `NEAREST_LIMIT_SEEDS` nearest it, as (seed,
    /// share), nearest first.
    pub near_limit_seeds: u64,
    pub nearest_limit: Vec<(u64, f64)>,
    pub failed: Vec<FailedSeed>,
}

impl SoakSummary {
    fn add(&mut self, r: &RunReport, profile: FaultProfile) {
        self.seeds += 1;
        self.reads_checked += r.reads_checked;
        self.writes += r.writes;
        self.datagrams += r.datagrams;
        self.datagrams_delivered += r.datagrams_delivered;
        self.datagrams_installed += r.datagrams_installed;
        self.own_receiver_installs += r.own_receiver_installs;
        self.own_receivers += r.own_receivers;
        self.datagrams_dropped_by_faults += r.datagrams_dropped_by_faults;
        self.stale_rejected += r.stale_rejected;
        self.forged_rejected += r.forged_rejected;
        self.prefetch_retries += r.prefetch_retries;
        self.tcp_depth_cuts += r.tcp_depth_cuts;
        self.faults.add(&r.faults);
        self.prewarm_pages += r.prewarm_pages;
        self.prewarm_covered += r.prewarm_covered;
        self.prewarm_yielded_rounds += r.prewarm_yielded_rounds;
        self.events += r.events;
        self.simulated_seconds += r.simulated_ns as f64 / 1e9;
        if let Some(share) = r.liveness_share {
            self.near_limit_seeds += u64::from(share >= NEAR_LIMIT_SHARE);
            self.nearest_limit.push((r.seed, share));
            self.nearest_limit
                .sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            self.nearest_limit.truncate(NEAREST_LIMIT_SEEDS);
        }
        if let Some(v) = &r.violation {
            self.violations += 1;
            *self.violations_by_kind.entry(v.category()).or_insert(0) += 1;
            self.failed.push(FailedSeed {
                seed: r.seed,
                kind: Some(v.kind),
                message: v.message.clone(),
                at_ns: v.at_ns,
                trace: v.trace.clone(),
                replay: Scenario::from_seed(r.seed, profile).replay_command(),
            });
        }
    }
}

/// Runs `seeds` seeds from `first_seed`. `progress` is called after each finished seed with the
/// number done so far.
pub fn soak(opts: &SoakOptions, progress: &(dyn Fn(u64) + Sync)) -> SoakSummary {
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let summary = Mutex::new(SoakSummary {
        profile: opts.profile.name().to_string(),
        first_seed: opts.first_seed,
        ..SoakSummary::default()
    });
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= opts.seeds {
                    break;
                }
                let seed = opts.first_seed.wrapping_add(i);
                let scenario = Scenario::from_seed(seed, opts.profile);
                let outcome = run(&scenario);
                let mut s = summary.lock().unwrap_or_else(|e| e.into_inner());
                match outcome {
                    Ok(report) => s.add(&report, opts.profile),
                    Err(e) => {
                        // A set-up failure (no temp space, ...) is not a correctness violation
                        // of the system under test, but the soak must not pass over it.
                        s.seeds += 1;
                        s.violations += 1;
                        *s.violations_by_kind.entry("setup".to_string()).or_insert(0) += 1;
                        s.failed.push(FailedSeed {
                            seed,
                            kind: None,
                            message: format!("simulation set-up failed: {e}"),
                            at_ns: 0,
                            trace: Vec::new(),
                            replay: scenario.replay_command(),
                        });
                    }
                }
                drop(s);
                progress(done.fetch_add(1, Ordering::Relaxed) + 1);
            });
        }
    });
    let mut s = summary.into_inner().unwrap_or_else(|e| e.into_inner());
    s.failed.sort_by_key(|f| f.seed);
    s.failed.truncate(MAX_REPORTED_VIOLATIONS);
    s.faults_injected = s.faults.total();
    s.wall_seconds = started.elapsed().as_secs_f64();
    if s.wall_seconds > 0.0 {
        s.seeds_per_minute = s.seeds as f64 * 60.0 / s.wall_seconds;
        s.datagrams_per_wall_second = s.datagrams_delivered as f64 / s.wall_seconds;
    }
    s
}
