//! What one run did: `RunReport` and the faults it injected (`FaultCounts`), as `soak` sums
//! them and the binary prints them.
//!
//! Owns: the report's types and their arithmetic. Fills in nothing itself (the other parts of
//! `world` do) and touches no node, event or core.

use super::check::Violation;
use serde::Serialize;
use std::collections::BTreeMap;

/// Faults the network and the attacker injected.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct FaultCounts {
    pub lost: u64,
    pub partitioned: u64,
    pub clogged: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub bit_flipped: u64,
    pub truncated: u64,
    pub tail_dropped: u64,
    pub link_overflow: u64,
    pub replayed: u64,
    pub forged: u64,
    pub sender_dropped: u64,
    /// Datagrams that reached a killed or absent daemon's port.
    pub daemon_down: u64,
    /// Runs in which the daemon was absent, killed, or paused (one each per run).
    pub daemon_absent: u64,
    pub daemon_killed: u64,
    pub daemon_paused: u64,
}

impl FaultCounts {
    pub fn total(&self) -> u64 {
        self.lost
            + self.partitioned
            + self.clogged
            + self.duplicated
            + self.reordered
            + self.bit_flipped
            + self.truncated
            + self.tail_dropped
            + self.link_overflow
            + self.replayed
            + self.forged
            + self.sender_dropped
            + self.daemon_down
    }

    pub fn add(&mut self, o: &FaultCounts) {
        self.lost += o.lost;
        self.partitioned += o.partitioned;
        self.clogged += o.clogged;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.bit_flipped += o.bit_flipped;
        self.truncated += o.truncated;
        self.tail_dropped += o.tail_dropped;
        self.link_overflow += o.link_overflow;
        self.replayed += o.replayed;
        self.forged += o.forged;
        self.sender_dropped += o.sender_dropped;
        self.daemon_down += o.daemon_down;
        self.daemon_absent += o.daemon_absent;
        self.daemon_killed += o.daemon_killed;
        self.daemon_paused += o.daemon_paused;
    }
}

impl RunReport {
    /// Virtual time the backends' workload took.
    pub fn workload_ns(&self) -> u64 {
        self.backends_done_ns
            .saturating_sub(self.backends_started_ns)
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    pub seed: u64,
    pub simulated_ns: u64,
    pub events: u64,
    pub reads_checked: u64,
    pub read_hits: u64,
    pub read_late_hits: u64,
    pub read_tcp: u64,
    pub writes: u64,
    /// Datagrams sealed and sent by the page servers.
    pub datagrams: u64,
    /// Datagrams handed to the workers' ingest (all sources).
    pub datagrams_delivered: u64,
    pub datagrams_installed: u64,
    /// Of them, installed by backends that receive their own prefetches
    /// (`SimConfig::own_receivers`), and those backends.
    pub own_receiver_installs: u64,
    pub own_receivers: u64,
    /// Lost, partitioned, tail-dropped or overflowed on the way (not counting the server's own
    /// drop filter, which is in `faults.sender_dropped`).
    pub datagrams_dropped_by_faults: u64,
    pub drops_by_reason: BTreeMap<String, u64>,
    pub stale_rejected: u64,
    /// Forged or corrupted datagrams that ingest rejected.
    pub forged_rejected: u64,
    pub faults: FaultCounts,
    pub prefetch_overflow_pages: u64,
    /// Prefetches the backends requested again after taking them as lost.
    pub prefetch_retries: u64,
    /// Pages the backends read through their TCP pipelines, and their moves between UDP and
    /// TCP pipelining.
    pub tcp_pipelined: u64,
    pub udp_state_changes: u64,
    /// Times a backend's TCP pipeline came down to what its path needs, reads outside its
    /// scan waiting behind it (`pipeline::DepthLimit`).
    pub tcp_depth_cuts: u64,
    /// Per shard (index = shard number): datagrams installed, and the backends' reads of its
    /// pages by how they were served (a shard that fails falls back alone, ARCHITECTURE §6a).
    pub shards: Vec<ShardCounts>,
    /// Virtual times from the start until the backends began (prewarm over) and until the last
    /// one finished its workload.
    pub backends_started_ns: u64,
    pub backends_done_ns: u64,
    /// Pages the LFC evicted over the run: a cache about the size of the working set thrashes,
    /// and prefetched pages landing ahead of their reads evict more (the one cost of UDP
    /// prefetch that the slower-than-TCP check still finds, ARCHITECTURE §10).
    pub lfc_evictions: u64,
    pub seal_not_ready: u64,
    pub seal_failed: u64,
    pub prewarm_pages: u64,
    pub prewarm_covered: u64,
    /// Rounds in which a prewarm yielded to the backends' reads beside it.
    pub prewarm_yielded_rounds: u64,
    pub digest: String,
    /// The liveness comparison's nearest approach to its limit: the mean time with UDP over
    /// the limit drawn from the mean without (the larger of the prewarm's and the workload's
    /// shares); above 1 is a `SlowerThanTcp` violation. `None` when no comparison ran (a
    /// violation before it, or a daemon absent from the start).
    pub liveness_share: Option<f64>,
    pub violation: Option<Violation>,
}

/// What one shard's pages did in a run (`RunReport::shards`).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ShardCounts {
    pub datagrams_installed: u64,
    pub read_hits: u64,
    pub read_late_hits: u64,
    pub read_tcp: u64,
}
