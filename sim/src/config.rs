//! What one seed simulates: the topology and sizes, the per-link fault parameters (each drawn
//! from the range its profile gives), and the core configurations.
//!
//! Owns: the fault profiles and their ranges, `SimConfig` and how a seed draws it. Plain data:
//! runs nothing and applies no fault (`world` does); of the cores it takes only
//! `ReadPathConfig`, `SchedulerLimits` and `DATAGRAM_LEN`.

use crate::rng::Rng;
use serde::Serialize;
use std::str::FromStr;
use udp_prefetch::compute::backend::read_path::ReadPathConfig;
use udp_prefetch::pageserver::prefetch::SchedulerLimits;
use workers::datagram::DATAGRAM_LEN;

/// A named set of fault ranges (`--faults`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultProfile {
    /// Latency only: no loss, no corruption, no attacker.
    None,
    Light,
    /// The soak default: every fault kind on, at rates where the system must still cope.
    Default,
    /// Rates far above any real network, to drive every fallback path hard.
    Heavy,
}

impl FaultProfile {
    pub const ALL: [FaultProfile; 4] = [
        FaultProfile::None,
        FaultProfile::Light,
        FaultProfile::Default,
        FaultProfile::Heavy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultProfile::None => "none",
            FaultProfile::Light => "light",
            FaultProfile::Default => "default",
            FaultProfile::Heavy => "heavy",
        }
    }

    /// The ranges each per-link parameter is drawn from.
    pub fn ranges(self) -> FaultRanges {
        let base = FaultRanges {
            loss: (0.0, 0.0),
            duplicate: (0.0, 0.0),
            reorder: (0.0, 0.0),
            reorder_extra_us: (0, 0),
            latency_us: (5, 80),
            jitter_us: (0, 20),
            corrupt: (0.0, 0.0),
            rx_queue_datagrams: (256, 256),
            partitions: (0, 0),
            clogs: (0, 0),
            window_us: (0, 0),
            replay: (0.0, 0.0),
            forged_per_ms: (0.0, 0.0),
            sender_drop: (0.0, 0.0),
            tcp_latency_us: (10, 150),
            daemon_faults: (0.0, 0.0, 0.0),
        };
        match self {
            FaultProfile::None => base,
            FaultProfile::Light => FaultRanges {
                loss: (0.0, 0.02),
                duplicate: (0.0, 0.01),
                reorder: (0.0, 0.05),
                reorder_extra_us: (50, 500),
                jitter_us: (0, 50),
                corrupt: (0.0, 0.005),
                rx_queue_datagrams: (64, 256),
                partitions: (0, 1),
                clogs: (0, 1),
                window_us: (100, 2_000),
                replay: (0.0, 0.01),
                forged_per_ms: (0.0, 0.5),
                sender_drop: (0.0, 0.01),
                ..base
            },
            FaultProfile::Default => FaultRanges {
                loss: (0.0, 0.10),
                duplicate: (0.0, 0.05),
                reorder: (0.0, 0.20),
                reorder_extra_us: (50, 3_000),
                jitter_us: (0, 200),
                corrupt: (0.0, 0.03),
                rx_queue_datagrams: (8, 256),
                partitions: (0, 2),
                clogs: (0, 2),
                window_us: (100, 10_000),
                replay: (0.0, 0.05),
                forged_per_ms: (0.0, 4.0),
                sender_drop: (0.0, 0.05),
                tcp_latency_us: (10, 400),
                daemon_faults: (0.1, 0.1, 0.15),
                ..base
            },
            FaultProfile::Heavy => FaultRanges {
                loss: (0.1, 0.5),
                duplicate: (0.05, 0.3),
                reorder: (0.2, 0.6),
                reorder_extra_us: (200, 20_000),
                latency_us: (5, 500),
                jitter_us: (50, 2_000),
                corrupt: (0.02, 0.2),
                rx_queue_datagrams: (2, 64),
                partitions: (1, 4),
                clogs: (1, 4),
                window_us: (500, 50_000),
                replay: (0.02, 0.2),
                forged_per_ms: (1.0, 20.0),
                sender_drop: (0.0, 0.2),
                tcp_latency_us: (10, 2_000),
                daemon_faults: (0.15, 0.2, 0.25),
            },
        }
    }
}

impl FromStr for FaultProfile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FaultProfile::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("unknown fault profile {s:?}; expected none, light, default or heavy")
            })
    }
}

/// Inclusive ranges of the fault parameters (probabilities per datagram unless noted).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FaultRanges {
    pub loss: (f64, f64),
    pub duplicate: (f64, f64),
    /// Probability that a datagram takes an extra delay (so later ones overtake it).
    pub reorder: (f64, f64),
    pub reorder_extra_us: (u64, u64),
    /// One-way base latency of a UDP link.
    pub latency_us: (u64, u64),
    /// Uniform extra delay on every datagram.
    pub jitter_us: (u64, u64),
    /// Bit flips or truncation.
    pub corrupt: (f64, f64),
    /// Receive-queue bound of each worker socket, in datagrams (tail drop beyond it).
    pub rx_queue_datagrams: (u64, u64),
    /// Number of partition (drop everything) and clogging (hold everything) windows per link.
    pub partitions: (u64, u64),
    pub clogs: (u64, u64),
    pub window_us: (u64, u64),
    /// Probability that a delivered datagram is recorded and replayed later.
    pub replay: (f64, f64),
    /// Attacker's forged datagrams per millisecond (Poisson).
    pub forged_per_ms: (f64, f64),
    /// The page server's own seeded drop filter (`--drop-prefetch`), per datagram.
    pub sender_drop: (f64, f64),
    /// One-way TCP latency (reliable, in order).
    pub tcp_latency_us: (u64, u64),
    /// Chance per run that the worker daemon is absent, killed at a random time, or paused for
    /// windows (each in turn).
    pub daemon_faults: (f64, f64, f64),
}

/// Fault parameters of one server → compute UDP link, drawn for one seed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkFaults {
    pub loss: f64,
    pub duplicate: f64,
    pub reorder: f64,
    pub reorder_extra_ns: u64,
    pub latency_ns: u64,
    pub jitter_ns: u64,
    pub corrupt: f64,
    pub replay: f64,
    /// Absolute virtual-time windows `[start, end)`.
    pub partitions: Vec<(u64, u64)>,
    pub clogs: Vec<(u64, u64)>,
}

/// What happens to the compute's worker daemon during a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DaemonFault {
    Healthy,
    /// Never started: the LFC names no daemon, nobody reads the prefetch port.
    Absent,
    /// SIGKILLed at this virtual time: heartbeats stop, its socket closes.
    KilledAt(u64),
    /// SIGSTOPped during these windows `[start, end)`: no heartbeat, no receive; datagrams
    /// queue in the socket (and tail-drop) until it continues.
    Paused(Vec<(u64, u64)>),
}

impl DaemonFault {
    /// Receiving (and heartbeating) at `now`.
    pub fn running_at(&self, now: u64) -> bool {
        match self {
            DaemonFault::Healthy => true,
            DaemonFault::Absent => false,
            DaemonFault::KilledAt(t) => now < *t,
            DaemonFault::Paused(w) => !w.iter().any(|&(a, b)| now >= a && now < b),
        }
    }

    /// Dead for good at `now` (absent or killed): its port is closed.
    pub fn gone_at(&self, now: u64) -> bool {
        match self {
            DaemonFault::Absent => true,
            DaemonFault::KilledAt(t) => now >= *t,
            _ => false,
        }
    }

    /// The end of the pause window holding `now`, if paused.
    pub fn paused_until(&self, now: u64) -> Option<u64> {
        match self {
            DaemonFault::Paused(w) => w
                .iter()
                .find(|&&(a, b)| now >= a && now < b)
                .map(|&(_, b)| b),
            _ => None,
        }
    }
}

/// Everything one run is made of, apart from the workload.
#[derive(Debug, Clone, Serialize)]
pub struct SimConfig {
    pub profile: FaultProfile,
    pub shards: usize,
    /// Stripe size of the shards' routing (`protocol::shard`, Neon's), in pages: small, so
    /// that a relation of the run spans several stripes and shards.
    pub stripe_pages: u32,
    pub backends: usize,
    pub workers: usize,
    pub rels: u32,
    pub pages_per_rel: u32,
    pub lfc_capacity_pages: u64,
    /// LFC slots each worker keeps reserved for receives (the daemon's `slots_per_thread`);
    /// 0 = the copy path (`Ingest::offer`).
    pub slots_per_worker: usize,
    pub sender_threads: usize,
    #[serde(skip)]
    pub scheduler: SchedulerLimits,
    #[serde(skip)]
    pub read_path: ReadPathConfig,
    pub service_delay_ns: u64,
    pub sender_drop: f64,
    pub send_cost_ns: u64,
    pub ingest_cost_ns: u64,
    pub backend_cpu_ns: (u64, u64),
    pub rx_queue_datagrams: usize,
    pub tcp_latency_ns: (u64, u64),
    pub forged_per_ms: f64,
    pub links: Vec<LinkFaults>,
    pub daemon: DaemonFault,
    /// Backends `0..own_receivers` receive their own prefetches (`scan --receive backend`:
    /// `Driver::receiving_itself`, a socket of their own drained when a read misses and while
    /// it waits); the others are fed by the daemon.
    pub own_receivers: usize,
    /// Backend `b` starts `b` times this after the first (0: all at once). Not drawn: the
    /// liveness check runs each seed at several (`LIVENESS_START_SKEWS_NS`).
    pub start_skew_ns: u64,
}

/// Virtual time at which a run starts: not 0, because the LFC's request marks keep
/// milliseconds and treat a zero word as empty.
pub const START_NS: u64 = 1_000_000_000;
/// Fault windows are placed in the first this-many nanoseconds of a run.
pub const FAULT_HORIZON_NS: u64 = 60_000_000;

fn draw_f(rng: &mut Rng, r: (f64, f64)) -> f64 {
    rng.range_f64(r.0, r.1)
}

fn draw_u(rng: &mut Rng, r: (u64, u64)) -> u64 {
    rng.range(r.0, r.1)
}

fn windows(rng: &mut Rng, count: (u64, u64), len_us: (u64, u64)) -> Vec<(u64, u64)> {
    (0..draw_u(rng, count))
        .map(|_| {
            let start = START_NS + rng.below(FAULT_HORIZON_NS);
            (start, start + draw_u(rng, len_us) * 1_000)
        })
        .collect()
}

fn draw_daemon(rng: &mut Rng, (absent, killed, paused): (f64, f64, f64)) -> DaemonFault {
    let x = rng.range_f64(0.0, 1.0);
    if x < absent {
        DaemonFault::Absent
    } else if x < absent + killed {
        DaemonFault::KilledAt(START_NS + rng.below(FAULT_HORIZON_NS))
    } else if x < absent + killed + paused {
        DaemonFault::Paused(windows(rng, (1, 3), (1_000, 30_000)))
    } else {
        DaemonFault::Healthy
    }
}

impl SimConfig {
    /// The configuration of seed `seed` under `profile`.
    pub fn for_seed(seed: u64, profile: FaultProfile) -> SimConfig {
        let mut rng = Rng::stream(seed, 0xC0F1);
        let r = profile.ranges();
        let shards = rng.range(1, 3) as usize;
        let lfc_capacity_pages = rng.range(24, 160);
        let slots_per_worker = if rng.chance(0.25) {
            0
        } else {
            rng.range(1, 4) as usize
        };
        let paced = rng.chance(0.3);
        let scheduler = SchedulerLimits {
            max_queued_pages: rng.range(16, 4096),
            max_queues: 8,
            // 20 MB/s .. 2 GB/s when paced: slow enough that pacing, not the network, limits.
            rate_bytes_per_s: if paced {
                rng.range(20, 2_000) * 1_000_000
            } else {
                0
            },
            burst_bytes: rng.range(1, 64) * DATAGRAM_LEN as u64,
            // The server's own bound: above any range the simulated backends ask for.
            max_queued_pages_per_conn: SchedulerLimits::default().max_queued_pages_per_conn,
        };
        let max_wait_us = rng.range(200, 4_000);
        let read_path = ReadPathConfig {
            initial_wait_us: rng.range(50, max_wait_us),
            min_wait_us: rng.range(10, 50),
            max_wait_us,
            max_tracked: rng.range(8, 256) as usize,
            // The simulated LFC holds tens of pages: a pipeline deeper than that would have
            // its pages evicted before they are read.
            tcp_depth: rng.range(2, 16) as u32,
            tcp_depth_adaptive: true,
        };
        let links = (0..shards).map(|_| draw_link(&mut rng, &r)).collect();
        let tcp_lo = draw_u(&mut rng, r.tcp_latency_us);
        // Drawn from its own stream, so adding daemon faults did not change the other draws.
        let daemon = draw_daemon(&mut Rng::stream(seed, 0xDAE), r.daemon_faults);
        let backends = rng.range(2, 4) as usize;
        // Its own stream too: a third of the seeds have backends that receive themselves.
        let mut own = Rng::stream(seed, 0x0B1E);
        let own_receivers = if own.chance(0.35) {
            own.range(1, backends as u64) as usize
        } else {
            0
        };
        SimConfig {
            profile,
            shards,
            // Drawn from its own stream, so adding it did not change the other draws.
            stripe_pages: 1 << Rng::stream(seed, 0x5791).range(2, 5),
            backends,
            workers: rng.range(1, 3) as usize,
            rels: rng.range(shards as u64, 4) as u32,
            pages_per_rel: rng.range(32, 192) as u32,
            lfc_capacity_pages,
            slots_per_worker,
            sender_threads: rng.range(1, 2) as usize,
            scheduler,
            read_path,
            service_delay_ns: if rng.chance(0.5) {
                0
            } else {
                rng.range(1, 200) * 1_000
            },
            sender_drop: draw_f(&mut rng, r.sender_drop),
            send_cost_ns: rng.range(500, 3_000),
            ingest_cost_ns: rng.range(1_000, 8_000),
            backend_cpu_ns: (1_000, rng.range(2_000, 40_000)),
            rx_queue_datagrams: draw_u(&mut rng, r.rx_queue_datagrams) as usize,
            tcp_latency_ns: (tcp_lo * 1_000, (tcp_lo + rng.below(tcp_lo + 1)) * 1_000),
            forged_per_ms: draw_f(&mut rng, r.forged_per_ms),
            links,
            daemon,
            own_receivers,
            start_skew_ns: 0,
        }
    }

    /// How pages are spread over the shards: the real routing (Neon's `key_to_shard_number`).
    pub fn shard_layout(&self) -> udp_prefetch::protocol::shard::ShardLayout {
        udp_prefetch::protocol::shard::ShardLayout::new(self.shards, self.stripe_pages)
            .expect("1 to 3 shards, a stripe of at least 4 pages")
    }
}

/// One server → compute link's faults, drawn in the order `SimConfig::for_seed` always drew
/// them (a seed's run depends on it).
fn draw_link(rng: &mut Rng, r: &FaultRanges) -> LinkFaults {
    LinkFaults {
        loss: draw_f(rng, r.loss),
        duplicate: draw_f(rng, r.duplicate),
        reorder: draw_f(rng, r.reorder),
        reorder_extra_ns: draw_u(rng, r.reorder_extra_us) * 1_000,
        latency_ns: draw_u(rng, r.latency_us) * 1_000,
        jitter_ns: draw_u(rng, r.jitter_us) * 1_000,
        corrupt: draw_f(rng, r.corrupt),
        replay: draw_f(rng, r.replay),
        partitions: windows(rng, r.partitions, r.window_us),
        clogs: windows(rng, r.clogs, r.window_us),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_deterministic_and_within_ranges() {
        for seed in 0..200 {
            let a = SimConfig::for_seed(seed, FaultProfile::Default);
            let b = SimConfig::for_seed(seed, FaultProfile::Default);
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
            let r = FaultProfile::Default.ranges();
            for l in &a.links {
                assert!(l.loss >= r.loss.0 && l.loss <= r.loss.1);
                assert!(l.corrupt <= r.corrupt.1);
            }
            assert!(a.rels as usize >= a.shards);
            assert!(a.read_path.min_wait_us <= a.read_path.max_wait_us);
            assert!(a.own_receivers <= a.backends);
        }
        assert_eq!("heavy".parse::<FaultProfile>(), Ok(FaultProfile::Heavy));
        assert!("bogus".parse::<FaultProfile>().is_err());
    }
}
