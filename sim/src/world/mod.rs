//! The simulated world: one single-threaded discrete-event loop in virtual nanoseconds around
//! the real sans-IO cores.
//!
//! Each node is a virtual-time copy of a real I/O shell, step for step:
//! - page-server shard = `pageserver::udp_sender::send_loop` + the Prefetch/GetPage/PutPage arms
//!   of `pageserver::conn::handle`, over a real `PageStore`, `PrefetchScheduler`, `DropFilter` and
//!   `seal_page_job`;
//! - worker = the daemon's own slot bookkeeping, `workers::pump::SlotBook` (frames posted as
//!   receive slots, `Ingest::complete`, turned-away frames posted again), behind a simulated
//!   socket that scatters each datagram into the oldest posted slot as `recvmmsg` does; or
//!   the copy path `Ingest::offer`; over the real `Lfc`;
//! - backend = the real sans-IO `compute::backend::driver::Driver` (read path, UDP health,
//!   GetPage pipeline), with the scan window of `compute::scan::run_scan`; this file only carries
//!   its messages (`poll_transmit`, responses) and turns its `Poll::Wait` into a virtual-time wait
//!   that re-checks when a page lands or the deadline passes. No copy of its logic lives here.
//! - prewarm = the real sans-IO `compute::prewarm::driver::Driver` (arrival probing, retries, the
//!   fail-over to TCP, cache-full, pacing, repair rounds), on a state that went through the real
//!   state-file encoding and `plan`; this file only carries its Prefetch and GetPage messages and
//!   replies and turns its `Poll::Wait` into a virtual-time event. No copy of its logic lives
//!   here.
//! - daemon = registers in the LFC header and heartbeats in virtual time; absent, killed or
//!   paused as `SimConfig::daemon` says.
//!
//! Only the network (UDP with faults, TCP reliable with latency) and time are simulated.
//!
//! Owns: the event queue and virtual clock, every node's shell state, the faulty network and the
//! checkers. Reads no real clock, opens no socket or file, spawns no thread (`lib.rs` creates the
//! LFC file) and imports no `cmd` or `bench`. It still mirrors the sender loop and `conn::handle`
//! in virtual time and copies their constants (ARCHITECTURE §10).

use crate::config::DaemonFault;
use crate::config::{LinkFaults, SimConfig, START_NS};
use crate::rng::Rng;
use crate::trace::{Kind, Trace};
use crate::workload::{ForgeKind, Op, HOT_BLOCKS};
use lfc::{BufferTag, Lfc, RelTag, WriteOutcome, PAGE_SIZE};
use serde::Serialize;
use std::cmp::Ordering as CmpOrdering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use udp_prefetch::compute::backend::driver::{
    Driver, Poll, ReadSource, Response as DriverResponse, Transmit,
};
use udp_prefetch::compute::backend::read_path::{PrefetchRun, ScanWindow};
use udp_prefetch::compute::backend::store_own_write;
use udp_prefetch::compute::prewarm::{
    self,
    driver::{
        Driver as PrewarmDriver, DriverConfig, Poll as PrewarmPoll, Response as PrewarmResponse,
        Transmit as PrewarmTransmit,
    },
    schedule::ScheduleConfig,
};
use udp_prefetch::pageserver::prefetch::{
    seal_page_job, Destination, DropFilter, Next, PageJob, PrefetchScheduler, SkipReason,
};
use udp_prefetch::pageserver::source::{PageSource, SourceSpec, Synthetic};
use udp_prefetch::pageserver::store::PageStore;
use udp_prefetch::protocol::page::{
    is_synthetic_page, page_lsn, synthetic_page, verify_page, Page, SYNTHETIC_BASE_LSN,
};
use udp_prefetch::protocol::pagestream::{Header, LATEST_LSN};
use workers::datagram::{DatagramHeader, DatagramKey, DropReason, DATAGRAM_LEN, HEADER_LEN};
use workers::ingest::{Ingest, Verdict};
use workers::metrics::ThreadMetrics;
use workers::pump::SlotBook;
use workers::udp::{Completion, SlotRegions};

/// `udp_sender::SEND_BATCH`: datagrams per `next_batch`.
const SEND_BATCH: usize = 32;
/// `udp_sender::IDLE_WAIT`: longest a sender sleeps on a `WaitUntil`.
const IDLE_WAIT_NS: u64 = 100_000_000;
/// Time from an install to a waiting backend re-checking the cache (futex wake-up).
const WAKE_NS: u64 = 2_000;
/// Bounds that turn a hang into a liveness violation instead of an endless run.
const MAX_VIRTUAL_NS: u64 = 120_000_000_000;
const MAX_EVENTS: u64 = 20_000_000;
const MAX_PENDING_EVENTS: usize = 1 << 20;
/// Datagrams in flight on one link; beyond it the link drops (a router queue).
const MAX_IN_FLIGHT: usize = 8192;
/// A read that takes longer than this (virtual) is a liveness violation.
const READ_DEADLINE_NS: u64 = 2_000_000_000;
/// The page server's bounded wait for WAL (`lsn_wait_timeout`), and how often the model
/// re-checks while waiting.
const LSN_WAIT_TIMEOUT_NS: u64 = 1_000_000_000;
const LSN_RECHECK_NS: u64 = 100_000;
/// Versions the page store keeps (every write of a run fits).
const MAX_VERSIONS: usize = 1 << 16;
/// Recorded datagrams kept for replay.
const REPLAY_RING: usize = 64;
/// Most forged datagrams one run sends.
const MAX_FORGED: u64 = 20_000;
/// The compute's prefetch port, as registered with PrefetchTarget.
const COMPUTE_ADDR: ([u8; 4], u16) = ([10, 0, 0, 1], 6000);
/// The simulated daemon's pid in the LFC header (never signalled).
const DAEMON_PID: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    StaleRead,
    TornOrForgedPage,
    ForgedAccepted,
    Liveness,
    /// The backends' workload took longer than `LIVENESS_FACTOR` × the same workload with UDP
    /// prefetch disabled (pure TCP pipelining), plus `LIVENESS_SLACK_NS`.
    SlowerThanTcp,
    Accounting,
    Occupancy,
}

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub kind: ViolationKind,
    pub at_ns: u64,
    pub message: String,
    /// The last events before the violation, oldest first.
    pub trace: Vec<String>,
}

impl RunReport {
    /// Virtual time the backends' workload took.
    pub fn workload_ns(&self) -> u64 {
        self.backends_done_ns
            .saturating_sub(self.backends_started_ns)
    }
}

impl Violation {
    /// A short class name for summaries: the kind, with incomplete prewarms told apart (the one
    /// liveness failure the simulator currently finds, see the crate docs).
    pub fn category(&self) -> String {
        match self.kind {
            ViolationKind::Liveness if self.message.starts_with("prewarm finished") => {
                "prewarm_incomplete".to_string()
            }
            k => serde_json::to_value(k)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| format!("{k:?}")),
        }
    }
}

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
    /// Virtual times from the start until the backends began (prewarm over) and until the last
    /// one finished its workload.
    pub backends_started_ns: u64,
    pub backends_done_ns: u64,
    pub seal_not_ready: u64,
    pub seal_failed: u64,
    pub prewarm_pages: u64,
    pub prewarm_covered: u64,
    pub digest: String,
    pub violation: Option<Violation>,
}

// ---- events -------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    Backend(usize),
    Prewarm,
}

impl Conn {
    fn index(self, backends: usize) -> usize {
        match self {
            Conn::Backend(b) => b,
            Conn::Prewarm => backends,
        }
    }
}

#[derive(Debug)]
enum ToServer {
    Prefetch {
        hdr: Header,
        rel: RelTag,
        first: u32,
        n: u16,
    },
    GetPage {
        hdr: Header,
        tag: BufferTag,
        /// When the server first looked at it (bounds the WAL wait).
        first_try_ns: Option<u64>,
    },
    PutPage {
        tag: BufferTag,
        lsn: u64,
    },
    /// PrefetchTarget: the simulated servers send to the one compute whatever it says.
    Target,
}

#[derive(Debug)]
enum ToClient {
    Page {
        tag: BufferTag,
        result: Result<Box<Page>, String>,
    },
    PutDone,
    TargetSet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Server,
    Corrupted,
    Replay,
    Forged(ForgeKind),
}

#[derive(Debug)]
struct Packet {
    bytes: Vec<u8>,
    origin: Origin,
    /// Source 4-tuple stand-in: SO_REUSEPORT picks the worker by it.
    flow: u64,
}

#[derive(Debug)]
enum Ev {
    BackendStep(usize),
    WaitCheck {
        backend: usize,
        token: u64,
    },
    /// `ready`: the responder's turn has come (service delay and in-order handling done).
    AtServer {
        shard: usize,
        conn: Conn,
        msg: ToServer,
        ready: bool,
    },
    AtClient {
        conn: Conn,
        msg: ToClient,
    },
    SenderWake {
        shard: usize,
        thread: usize,
        token: u64,
    },
    UdpArrive {
        packet: Packet,
    },
    WorkerRun(usize),
    AttackerTick,
    ForgeBurst {
        count: u8,
        kind: ForgeKind,
    },
    ReplayBurst {
        count: u8,
    },
    PrewarmRound {
        token: u64,
    },
    /// The daemon's heartbeat thread.
    Heartbeat,
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    // Reversed: BinaryHeap is a max-heap and the earliest event must come first; `seq` breaks
    // ties in scheduling order, which is what makes a run deterministic.
    fn cmp(&self, o: &Self) -> CmpOrdering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

// ---- nodes --------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct ReadCtx {
    tag: BufferTag,
    started_ns: u64,
    /// Newest version whose write had completed when the read began: the floor of what the
    /// read may return.
    min_lsn: u64,
}

enum Activity {
    None,
    Scan {
        rel: RelTag,
        cur: u32,
        end: u32,
        window: ScanWindow,
        distance: u32,
        path_changes: u64,
    },
    Reads(VecDeque<BufferTag>),
}

enum Pending {
    None,
    Sleep,
    Wait {
        ctx: ReadCtx,
        token: u64,
    },
    /// Awaiting a response on the TCP pipeline.
    Await {
        ctx: ReadCtx,
    },
    Put {
        tag: BufferTag,
        lsn: u64,
        set_lwlsn: bool,
    },
}

struct BackendNode {
    /// The real `backend::driver::Driver`.
    driver: Driver,
    /// Its path changes as last traced.
    path_changes: u64,
    program: VecDeque<Op>,
    activity: Activity,
    pending: Pending,
    wait_token: u64,
    reqid: u64,
    page: Box<Page>,
    rng: Rng,
    done: bool,
}

enum SenderState {
    Running,
    Sleeping,
}

struct SenderThread {
    filter: DropFilter,
    state: SenderState,
    token: u64,
    flow: u64,
}

struct Shard {
    store: Arc<PageStore>,
    sched: PrefetchScheduler,
    senders: Vec<SenderThread>,
    link: LinkFaults,
    in_flight: usize,
    jobs: Vec<PageJob>,
}

struct WorkerNode<'a> {
    queue: VecDeque<Packet>,
    /// The daemon's own slot bookkeeping (`workers::pump::SlotBook`); this node stands in for
    /// the kernel that receives into the slots it posts.
    book: SlotBook<'a>,
    /// Slots posted with the simulated socket, oldest first (epoll's `recvmmsg` fills them in
    /// that order).
    posted: VecDeque<(u32, SlotRegions)>,
    scheduled: bool,
    metrics: ThreadMetrics,
    delivered: u64,
    tail_drops: u64,
    /// Per-reason verdicts as the simulator saw them, to cross-check the metrics.
    seen: [u64; DropReason::ALL.len()],
    seen_installed: u64,
}

impl WorkerNode<'_> {
    /// Takes every posted slot back (the daemon's `cancel_all`) and abandons their frames, as
    /// when the daemon dies or stops.
    fn give_slots_back(&mut self) {
        for (id, _) in self.posted.drain(..) {
            self.book.release(id);
        }
        self.book.abandon_spare();
    }
}

struct PrewarmNode {
    program: VecDeque<(u16, u8)>,
    /// The run in progress: the real driver.
    run: Option<PrewarmDriver>,
    /// The newest completed write of each page whose GetPage is in flight: the floor of what
    /// its reply may hold.
    min_lsn: HashMap<BufferTag, u64>,
    token: u64,
    reqid: u64,
    done: bool,
}

#[derive(Default)]
struct TagModel {
    /// LSNs the page server has applied (besides the base image).
    versions: Vec<u64>,
    /// Highest LSN whose write completed in the LFC (`write`/`set_lwlsn` returned).
    completed_max: u64,
}

pub struct World<'a> {
    cfg: SimConfig,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    lfc: &'a Lfc,
    ingest: Ingest<'a>,
    dest: Destination,
    shards: Vec<Shard>,
    workers: Vec<WorkerNode<'a>>,
    backends: Vec<BackendNode>,
    prewarm: PrewarmNode,
    /// In-order delivery per (connection, shard, direction): next arrival may not be earlier.
    tcp_last: HashMap<(usize, usize, bool), u64>,
    /// The per-connection responder of the page server is sequential.
    server_busy: HashMap<(usize, usize), u64>,
    model: HashMap<BufferTag, TagModel>,
    next_lsn: u64,
    replay_ring: VecDeque<Vec<u8>>,
    net_rng: Rng,
    attack_rng: Rng,
    forged_sent: u64,
    prewarm_rng: Rng,
    prewarm_config: DriverConfig,
    page: Box<Page>,
    datagram: Box<[u8; DATAGRAM_LEN]>,
    trace: Trace,
    report: RunReport,
    /// Installs into the LFC by backends and prewarm (`install_prefetched` → Installed).
    shell_installs: u64,
    /// Datagrams that reached the compute while the daemon was gone, or sat in its sockets
    /// when it was killed.
    daemon_socket_lost: u64,
    /// Datagrams put on links/sockets and what became of them, for conservation.
    injected: u64,
    events: u64,
    violation: Option<Violation>,
}

fn tag_key(tag: &BufferTag) -> u64 {
    u64::from(tag.rel.relnode) << 32 | u64::from(tag.blkno)
}

fn verdict_code(v: &Verdict) -> u64 {
    match v {
        Ok(_) => 0,
        Err(r) => 1 + r.index() as u64,
    }
}

/// Where the simulated page servers send prefetched pages: the compute's port, sealed under a
/// stream of the LFC's key.
fn compute_destination(lfc: &Lfc, seed: u64) -> Destination {
    // What PrefetchTarget hands the server is the LFC's key; the server seals under a
    // stream of it with a random id (here from the seed, so runs replay exactly).
    let mut stream_rng = Rng::stream(seed, 0x57E);
    let mut stream_id = [0u8; 16];
    for c in stream_id.chunks_exact_mut(8) {
        c.copy_from_slice(&stream_rng.next_u64().to_le_bytes());
    }
    Destination {
        addr: SocketAddr::from(COMPUTE_ADDR),
        key: Arc::new(DatagramKey::new(lfc.key_id(), lfc.key()).stream(stream_id)),
        // Each connection's Prefetches take their own queue (`serve` sets it).
        conn: 0,
    }
}

fn build_shards(cfg: &SimConfig, source: &Arc<dyn PageSource>, seed: u64) -> Vec<Shard> {
    (0..cfg.shards)
        .map(|s| Shard {
            store: Arc::new(PageStore::new(
                source.clone(),
                MAX_VERSIONS,
                Duration::from_nanos(LSN_WAIT_TIMEOUT_NS),
            )),
            sched: PrefetchScheduler::new(cfg.scheduler),
            senders: (0..cfg.sender_threads)
                .map(|t| SenderThread {
                    filter: DropFilter::new(
                        cfg.sender_drop,
                        seed.wrapping_add((s * 16 + t) as u64),
                    ),
                    state: SenderState::Sleeping,
                    token: 0,
                    flow: (s * 16 + t) as u64,
                })
                .collect(),
            link: cfg.links[s].clone(),
            in_flight: 0,
            jobs: Vec::with_capacity(SEND_BATCH),
        })
        .collect()
}

fn build_workers<'a>(cfg: &SimConfig, lfc: &'a Lfc) -> Vec<WorkerNode<'a>> {
    (0..cfg.workers)
        .map(|_| WorkerNode {
            queue: VecDeque::with_capacity(cfg.rx_queue_datagrams),
            book: SlotBook::new(lfc, cfg.slots_per_worker),
            posted: VecDeque::with_capacity(cfg.slots_per_worker),
            scheduled: false,
            metrics: ThreadMetrics::default(),
            delivered: 0,
            tail_drops: 0,
            seen: [0; DropReason::ALL.len()],
            seen_installed: 0,
        })
        .collect()
}

fn build_backends(
    cfg: &SimConfig,
    lfc: &Lfc,
    seed: u64,
    programs: Vec<VecDeque<Op>>,
) -> Vec<BackendNode> {
    programs
        .into_iter()
        .enumerate()
        .map(|(i, program)| BackendNode {
            driver: Driver::new(cfg.read_path, None, lfc, START_NS),
            path_changes: 0,
            program,
            activity: Activity::None,
            pending: Pending::None,
            wait_token: 0,
            reqid: (i as u64) << 48,
            page: Box::new([0u8; PAGE_SIZE]),
            rng: Rng::stream(seed, 0xB0 + i as u64),
            done: false,
        })
        .collect()
}

/// The workload's ops, dealt out to the nodes that carry them out.
struct Programs {
    /// One program per backend.
    backends: Vec<VecDeque<Op>>,
    /// Prewarm runs: (pages, gone).
    prewarm: VecDeque<(u16, u8)>,
    /// Partitions, clogs, forge and replay bursts.
    faults: Vec<Op>,
}

impl Programs {
    fn split(ops: &[Op], backends: usize) -> Self {
        let mut programs: Vec<VecDeque<Op>> = vec![VecDeque::new(); backends];
        let mut prewarm_program = VecDeque::new();
        let mut fault_events = Vec::new();
        for op in ops {
            match op {
                Op::Scan { backend, .. }
                | Op::RandomReads { backend, .. }
                | Op::Write { backend, .. }
                | Op::Pause { backend, .. } => {
                    programs[*backend as usize % backends].push_back(op.clone())
                }
                Op::Prewarm { pages, gone } => prewarm_program.push_back((*pages, *gone)),
                Op::Partition { .. } | Op::Clog { .. } | Op::Forge { .. } | Op::Replay { .. } => {
                    fault_events.push(op.clone())
                }
            }
        }
        Programs {
            backends: programs,
            prewarm: prewarm_program,
            faults: fault_events,
        }
    }
}

/// Prewarm's configuration: the real schedule defaults, with the first timeout, the attempts
/// and the window varied per seed; no deadline. Half the seeds give the daemon's port
/// (`--prefetch-port`), so prewarm tries UDP even with no daemon alive and must fail over to
/// TCP; the others take it from the LFC header, as by default. A quarter are paced (`--rate`,
/// 2k to 50k pages/s), in virtual time.
fn prewarm_driver_config(seed: u64) -> DriverConfig {
    let mut r = Rng::stream(seed, 0x9E8);
    let window_pages = r.range(4, 64) as usize;
    let schedule = ScheduleConfig {
        initial_timeout_ns: r.range(1, 20) * 1_000_000,
        max_udp_attempts: r.range(1, 3) as u32,
        window_pages,
        min_window_pages: r.range(1, window_pages as u64) as usize,
        ..ScheduleConfig::default()
    };
    DriverConfig {
        schedule,
        udp_port: (r.below(2) == 0).then_some(COMPUTE_ADDR.1),
        rate_bytes_per_s: if r.below(4) == 0 {
            r.range(2_000, 50_000) * PAGE_SIZE as u64
        } else {
            0
        },
        deadline_ns: None,
    }
}

impl<'a> World<'a> {
    pub fn new(
        cfg: SimConfig,
        lfc: &'a Lfc,
        seed: u64,
        ops: &[Op],
    ) -> Result<Self, crate::SimError> {
        let source = SourceSpec::Synthetic {
            rels: cfg.rels,
            pages: cfg.pages_per_rel,
        }
        .open()
        .map_err(|e| crate::SimError::Setup(e.to_string()))?;
        let dest = compute_destination(lfc, seed);
        let shards = build_shards(&cfg, &source, seed);
        let workers = build_workers(&cfg, lfc);
        // The daemon registers in the LFC header as it starts listening, before any backend.
        if cfg.daemon != DaemonFault::Absent {
            lfc.register_daemon(SocketAddr::from(COMPUTE_ADDR), DAEMON_PID, 0, START_NS);
        }
        let programs = Programs::split(ops, cfg.backends);
        let backends = build_backends(&cfg, lfc, seed, programs.backends);
        let mut w = World {
            now: START_NS,
            seq: 0,
            queue: BinaryHeap::new(),
            lfc,
            ingest: Ingest::new(lfc),
            dest,
            shards,
            workers,
            backends,
            prewarm: PrewarmNode {
                program: programs.prewarm,
                run: None,
                min_lsn: HashMap::new(),
                token: 0,
                reqid: 0xFFFF << 48,
                done: false,
            },
            tcp_last: HashMap::new(),
            server_busy: HashMap::new(),
            model: HashMap::new(),
            next_lsn: 1_000,
            replay_ring: VecDeque::with_capacity(REPLAY_RING),
            net_rng: Rng::stream(seed, 0x4E7),
            attack_rng: Rng::stream(seed, 0xA77),
            forged_sent: 0,
            prewarm_rng: Rng::stream(seed, 0x9E7),
            prewarm_config: prewarm_driver_config(seed),
            page: Box::new([0u8; PAGE_SIZE]),
            datagram: Box::new([0u8; DATAGRAM_LEN]),
            trace: Trace::default(),
            report: RunReport {
                seed,
                ..RunReport::default()
            },
            shell_installs: 0,
            daemon_socket_lost: 0,
            injected: 0,
            events: 0,
            violation: None,
            cfg,
        };
        w.add_fault_events(programs.faults);
        w.schedule_start();
        Ok(w)
    }

    /// Adds the workload's fault windows to the links' own and schedules its forge and replay
    /// bursts.
    fn add_fault_events(&mut self, fault_events: Vec<Op>) {
        for op in fault_events {
            match op {
                Op::Partition {
                    shard,
                    at_us,
                    len_us,
                }
                | Op::Clog {
                    shard,
                    at_us,
                    len_us,
                } => {
                    let link = &mut self.shards[shard as usize % self.cfg.shards].link;
                    let windows = if matches!(op, Op::Partition { .. }) {
                        &mut link.partitions
                    } else {
                        &mut link.clogs
                    };
                    let at = START_NS + u64::from(at_us) * 1_000;
                    windows.push((at, at + u64::from(len_us) * 1_000));
                }
                Op::Forge { at_us, count, kind } => self.schedule(
                    START_NS + u64::from(at_us) * 1_000,
                    Ev::ForgeBurst { count, kind },
                ),
                Op::Replay { at_us, count } => self.schedule(
                    START_NS + u64::from(at_us) * 1_000,
                    Ev::ReplayBurst { count },
                ),
                _ => {}
            }
        }
    }

    /// The first events of a run (prewarm, attacker, heartbeat) and the workers' first slots.
    fn schedule_start(&mut self) {
        // Prewarm (if the workload has any) refills the cold cache first; its end starts the
        // backends.
        self.prewarm.token += 1;
        let token = self.prewarm.token;
        self.schedule(START_NS, Ev::PrewarmRound { token });
        if self.cfg.forged_per_ms > 0.0 {
            let gap = self.attack_gap();
            self.schedule(START_NS + gap, Ev::AttackerTick);
        }
        if self.cfg.daemon != DaemonFault::Absent {
            self.schedule(START_NS + lfc::DAEMON_HEARTBEAT_NS, Ev::Heartbeat);
        }
        // Workers post their slots before anything arrives, as the daemon does at start.
        for i in 0..self.workers.len() {
            self.refill_slots(i);
        }
    }

    // ---- the loop ---------------------------------------------------------------------------

    fn schedule(&mut self, at: u64, ev: Ev) {
        if self.queue.len() >= MAX_PENDING_EVENTS {
            self.violate(
                ViolationKind::Liveness,
                format!("event queue exceeded its bound of {MAX_PENDING_EVENTS}"),
            );
            return;
        }
        self.seq += 1;
        self.queue.push(Scheduled {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    fn violate(&mut self, kind: ViolationKind, message: String) {
        if self.violation.is_none() {
            self.violation = Some(Violation {
                kind,
                at_ns: self.now,
                message,
                trace: self.trace.excerpt(40),
            });
        }
    }

    fn rec(&mut self, kind: Kind, a: u64, b: u64, c: u64) {
        self.trace.record(self.now, kind, a, b, c);
    }

    /// Runs to quiescence (or the first violation) and returns the report.
    pub fn run(mut self) -> RunReport {
        while self.violation.is_none() {
            let Some(s) = self.queue.pop() else { break };
            self.now = s.at;
            self.events += 1;
            if self.now - START_NS > MAX_VIRTUAL_NS || self.events > MAX_EVENTS {
                self.violate(
                    ViolationKind::Liveness,
                    format!(
                        "no quiescence after {} events and {:.3} virtual s",
                        self.events,
                        (self.now - START_NS) as f64 / 1e9
                    ),
                );
                break;
            }
            self.dispatch(s.ev);
        }
        if self.violation.is_none() {
            self.final_checks();
        }
        self.finish_report()
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::BackendStep(b) => {
                if matches!(self.backends[b].pending, Pending::Sleep) {
                    self.backends[b].pending = Pending::None;
                }
                self.backend_step(b);
            }
            Ev::WaitCheck { backend, token } => self.wait_check(backend, token),
            Ev::AtServer {
                shard,
                conn,
                msg,
                ready,
            } => {
                if ready {
                    self.serve(shard, conn, msg)
                } else {
                    self.at_server(shard, conn, msg)
                }
            }
            Ev::AtClient { conn, msg } => match conn {
                Conn::Backend(b) => self.backend_reply(b, msg),
                Conn::Prewarm => self.prewarm_reply(msg),
            },
            Ev::SenderWake {
                shard,
                thread,
                token,
            } => {
                if self.shards[shard].senders[thread].token == token {
                    self.sender_run(shard, thread);
                }
            }
            Ev::UdpArrive { packet } => self.udp_arrive(packet),
            Ev::WorkerRun(w) => self.worker_run(w),
            Ev::AttackerTick => self.attacker_tick(),
            Ev::ForgeBurst { count, kind } => {
                for _ in 0..count {
                    self.forge(kind);
                }
            }
            Ev::ReplayBurst { count } => {
                for i in 0..count as usize {
                    if self.replay_ring.is_empty() {
                        break;
                    }
                    let idx = (self.net_rng.below(self.replay_ring.len() as u64) as usize + i)
                        % self.replay_ring.len();
                    let bytes = self.replay_ring[idx].clone();
                    self.report.faults.replayed += 1;
                    self.rec(Kind::Replayed, idx as u64, 0, 0);
                    self.inject(bytes, Origin::Replay, 0x5EED_0000 + i as u64, self.now);
                }
            }
            Ev::PrewarmRound { token } => {
                if token == self.prewarm.token {
                    self.prewarm_tick();
                }
            }
            Ev::Heartbeat => self.heartbeat(),
        }
    }

    /// `workers::daemon`'s heartbeat: refreshed while the daemon runs, silent while it is
    /// paused, gone with it. Stops when the workload is done (so the run can end).
    fn heartbeat(&mut self) {
        if self.cfg.daemon.gone_at(self.now) || self.actors_done() {
            return;
        }
        if self.cfg.daemon.running_at(self.now) {
            self.lfc.daemon_heartbeat(self.now);
        }
        self.schedule(self.now + lfc::DAEMON_HEARTBEAT_NS, Ev::Heartbeat);
    }

    fn actors_done(&self) -> bool {
        self.prewarm.done && self.backends.iter().all(|b| b.done)
    }

    // ---- version model and checks ----------------------------------------------------------

    fn rel_index(&self, rel: RelTag) -> Option<u32> {
        let first = Synthetic::rel(0);
        (rel.spcnode == first.spcnode
            && rel.dbnode == first.dbnode
            && rel.forknum == 0
            && rel.relnode >= first.relnode)
            .then(|| rel.relnode - first.relnode)
    }

    fn exists(&self, tag: &BufferTag) -> bool {
        self.rel_index(tag.rel)
            .is_some_and(|i| i < self.cfg.rels && tag.blkno < self.cfg.pages_per_rel)
    }

    fn shard_of(&self, tag_rel: RelTag) -> usize {
        self.rel_index(tag_rel)
            .map_or(0, |i| self.cfg.shard_of_rel(i))
    }

    fn completed_max(&self, tag: &BufferTag) -> u64 {
        self.model.get(tag).map_or(0, |m| m.completed_max)
    }

    /// The checkers for one page a backend (or prewarm) obtained: it must be exactly a version
    /// the server had (not torn, not forged) and not older than the newest write completed
    /// before the read began.
    fn check_page(&mut self, who: &str, ctx: &ReadCtx, page: &Page) {
        self.report.reads_checked += 1;
        let tag = ctx.tag;
        if !is_synthetic_page(page, tag) || !verify_page(page, tag.blkno).is_ok() {
            self.violate(
                ViolationKind::TornOrForgedPage,
                format!(
                    "{who} read {tag} and got bytes that are no version of it (pd_lsn {}, checksum {:?})",
                    page_lsn(page),
                    verify_page(page, tag.blkno)
                ),
            );
            return;
        }
        let lsn = page_lsn(page);
        let known = lsn == SYNTHETIC_BASE_LSN
            || self
                .model
                .get(&tag)
                .is_some_and(|m| m.versions.contains(&lsn));
        if !known {
            self.violate(
                ViolationKind::TornOrForgedPage,
                format!("{who} read {tag} at LSN {lsn}, a version the page server never had"),
            );
            return;
        }
        if lsn < ctx.min_lsn {
            self.violate(
                ViolationKind::StaleRead,
                format!(
                    "{who} read {tag} at LSN {lsn}, but a write at LSN {} had completed before the read began (at {:.3} us)",
                    ctx.min_lsn,
                    ctx.started_ns as f64 / 1e3
                ),
            );
            return;
        }
        if self.now - ctx.started_ns > READ_DEADLINE_NS {
            self.violate(
                ViolationKind::Liveness,
                format!(
                    "{who} read of {tag} took {:.3} virtual ms",
                    (self.now - ctx.started_ns) as f64 / 1e6
                ),
            );
        }
    }

    fn check_occupancy(&mut self) {
        let s = self.lfc.stats();
        if s.used_pages + s.busy_pages > s.capacity_pages {
            self.violate(
                ViolationKind::Occupancy,
                format!(
                    "LFC holds {} published + {} busy frames, capacity {}",
                    s.used_pages, s.busy_pages, s.capacity_pages
                ),
            );
        }
    }

    /// A page landed in the LFC: backends waiting for it re-check (the futex wake-up).
    fn notify(&mut self, tag: BufferTag) {
        for b in 0..self.backends.len() {
            if let Pending::Wait { ctx, token, .. } = self.backends[b].pending {
                if ctx.tag == tag {
                    self.schedule(self.now + WAKE_NS, Ev::WaitCheck { backend: b, token });
                }
            }
        }
    }

    // ---- TCP ----------------------------------------------------------------------------

    fn tcp_latency(&mut self) -> u64 {
        let (lo, hi) = self.cfg.tcp_latency_ns;
        self.net_rng.range(lo, hi)
    }

    /// Reliable, in-order delivery with latency.
    fn tcp_send(&mut self, conn: Conn, shard: usize, to_server: bool, ev: Ev) {
        let key = (conn.index(self.cfg.backends), shard, to_server);
        let lat = self.tcp_latency();
        let last = self.tcp_last.get(&key).copied().unwrap_or(0);
        let at = (self.now + lat).max(last + 1);
        self.tcp_last.insert(key, at);
        self.schedule(at, ev);
    }

    fn send_to_server(&mut self, conn: Conn, shard: usize, msg: ToServer) {
        self.tcp_send(
            conn,
            shard,
            true,
            Ev::AtServer {
                shard,
                conn,
                msg,
                ready: false,
            },
        );
    }

    fn send_to_client(&mut self, conn: Conn, shard: usize, msg: ToClient) {
        self.tcp_send(conn, shard, false, Ev::AtClient { conn, msg });
    }

    // ---- page server ------------------------------------------------------------------------

    /// The responder: requests of one connection are handled in order; those with a response
    /// are held until `arrived + service_delay` (`conn::respond`).
    fn at_server(&mut self, shard: usize, conn: Conn, msg: ToServer) {
        let key = (conn.index(self.cfg.backends), shard);
        let busy = self.server_busy.get(&key).copied().unwrap_or(0);
        let delay = match msg {
            ToServer::Prefetch { .. } => 0,
            _ => self.cfg.service_delay_ns,
        };
        let due = (self.now + delay).max(busy);
        self.server_busy.insert(key, due);
        self.schedule(
            due,
            Ev::AtServer {
                shard,
                conn,
                msg,
                ready: true,
            },
        );
    }

    /// `conn::handle` for the requests the simulator sends.
    fn serve(&mut self, shard: usize, conn: Conn, msg: ToServer) {
        match msg {
            ToServer::Prefetch { hdr, rel, first, n } => {
                self.serve_prefetch(shard, conn, hdr, rel, first, n)
            }
            ToServer::GetPage {
                hdr,
                tag,
                first_try_ns,
            } => self.serve_get_page(shard, conn, hdr, tag, first_try_ns),
            ToServer::Target => self.send_to_client(conn, shard, ToClient::TargetSet),
            ToServer::PutPage { tag, lsn } => self.serve_put_page(shard, conn, tag, lsn),
        }
    }

    /// A Prefetch: queued on the connection's queue, or counted as overflow.
    fn serve_prefetch(
        &mut self,
        shard: usize,
        conn: Conn,
        hdr: Header,
        rel: RelTag,
        first: u32,
        n: u16,
    ) {
        // `PrefetchSender::enqueue`: due = arrival + service delay; overflow drops.
        let due = self.now + self.cfg.service_delay_ns;
        let dest = Destination {
            conn: conn.index(self.cfg.backends) as u64,
            ..self.dest.clone()
        };
        let pushed = self.shards[shard]
            .sched
            .push(&dest, hdr, rel, first, u32::from(n), due);
        match pushed {
            Ok(()) => {
                self.rec(
                    Kind::PrefetchQueued,
                    shard as u64,
                    u64::from(first),
                    u64::from(n),
                );
                self.wake_one_sender(shard);
            }
            Err(_) => {
                self.report.prefetch_overflow_pages += u64::from(n);
                self.rec(
                    Kind::PrefetchOverflow,
                    shard as u64,
                    u64::from(first),
                    u64::from(n),
                );
            }
        }
    }

    /// A GetPage: answered from the store, or re-checked later while the WAL has not reached
    /// the requested LSN (until the bounded wait runs out).
    fn serve_get_page(
        &mut self,
        shard: usize,
        conn: Conn,
        hdr: Header,
        tag: BufferTag,
        first_try_ns: Option<u64>,
    ) {
        let store = self.shards[shard].store.clone();
        let result = match store.try_effective_lsn(hdr.request_lsn, hdr.not_modified_since) {
            Ok(Some(lsn)) => {
                let mut page = Box::new([0u8; PAGE_SIZE]);
                store
                    .read_page(tag, lsn, &mut page)
                    .map(|_| page)
                    .map_err(|e| e.to_string())
            }
            Ok(None) => {
                // `effective_lsn` waits (bounded) for WAL; the model re-checks.
                let first = first_try_ns.unwrap_or(self.now);
                if self.now - first < LSN_WAIT_TIMEOUT_NS {
                    self.schedule(
                        self.now + LSN_RECHECK_NS,
                        Ev::AtServer {
                            shard,
                            conn,
                            msg: ToServer::GetPage {
                                hdr,
                                tag,
                                first_try_ns: Some(first),
                            },
                            ready: true,
                        },
                    );
                    return;
                }
                Err(format!(
                    "timed out waiting for WAL to reach {}",
                    hdr.not_modified_since
                ))
            }
            Err(e) => Err(e.to_string()),
        };
        let lsn = result.as_ref().map_or(0, |p| page_lsn(p));
        // `conn::handle`: every simulated connection has registered the compute as its
        // prefetch target, so a queued prefetch of this page is no longer needed.
        let addr = self.dest.addr;
        self.shards[shard].sched.on_get_page(addr, tag);
        self.rec(Kind::GetPageServed, shard as u64, tag_key(&tag), lsn);
        self.send_to_client(conn, shard, ToClient::Page { tag, result });
    }

    /// A PutPage: applied on every shard and recorded in the version model.
    fn serve_put_page(&mut self, shard: usize, conn: Conn, tag: BufferTag, lsn: u64) {
        // Every shard ingests the whole WAL stream (as Neon's shards do), so each one's
        // last-record LSN covers every LSN the compute can name; only the owner is ever
        // asked for this page.
        let page = synthetic_page(tag, lsn);
        let mut err = None;
        for s in 0..self.shards.len() {
            if let Err(e) = self.shards[s].store.put_page(tag, lsn, &page) {
                err = Some(e.to_string());
            }
        }
        if let Some(e) = err {
            self.violate(ViolationKind::Liveness, format!("PutPage {tag}@{lsn}: {e}"));
            return;
        }
        self.model.entry(tag).or_default().versions.push(lsn);
        self.rec(Kind::PutApplied, shard as u64, tag_key(&tag), lsn);
        self.send_to_client(conn, shard, ToClient::PutDone);
    }

    /// `Condvar::notify_one` on enqueue: one sleeping sender thread runs.
    fn wake_one_sender(&mut self, shard: usize) {
        if let Some(t) = self.shards[shard]
            .senders
            .iter()
            .position(|t| matches!(t.state, SenderState::Sleeping))
        {
            let th = &mut self.shards[shard].senders[t];
            th.token += 1;
            th.state = SenderState::Running;
            let token = th.token;
            self.schedule(
                self.now,
                Ev::SenderWake {
                    shard,
                    thread: t,
                    token,
                },
            );
        }
    }

    /// One iteration of `udp_sender::send_loop`.
    fn sender_run(&mut self, shard: usize, thread: usize) {
        let now = self.now;
        let sh = &mut self.shards[shard];
        let next = sh.sched.next_batch(now, SEND_BATCH, &mut sh.jobs);
        match next {
            Next::Ready(_) => {
                let jobs = std::mem::take(&mut self.shards[shard].jobs);
                let sent = self.send_jobs(shard, thread, &jobs);
                self.shards[shard].jobs = jobs;
                let th = &mut self.shards[shard].senders[thread];
                th.token += 1;
                let token = th.token;
                // The batch costs sender CPU (sealing is a BLAKE3 pass over each page).
                let cost = self.cfg.send_cost_ns * sent.max(1);
                self.schedule(
                    now + cost,
                    Ev::SenderWake {
                        shard,
                        thread,
                        token,
                    },
                );
            }
            Next::WaitUntil(t) => {
                let th = &mut self.shards[shard].senders[thread];
                th.token += 1;
                th.state = SenderState::Sleeping;
                let token = th.token;
                let at = t.min(now + IDLE_WAIT_NS).max(now + 1);
                self.schedule(
                    at,
                    Ev::SenderWake {
                        shard,
                        thread,
                        token,
                    },
                );
            }
            Next::Idle => {
                // Sleeps until an enqueue notifies it. (The real loop also wakes every
                // IDLE_WAIT to check for shutdown; that changes nothing here.)
                let th = &mut self.shards[shard].senders[thread];
                th.token += 1;
                th.state = SenderState::Sleeping;
            }
        }
    }

    /// Seals and sends one batch through the thread's drop filter; returns how many datagrams
    /// went out.
    fn send_jobs(&mut self, shard: usize, thread: usize, jobs: &[PageJob]) -> u64 {
        let now = self.now;
        let mut sent = 0u64;
        for job in jobs {
            if self.shards[shard].senders[thread].filter.drop_next() {
                self.report.faults.sender_dropped += 1;
                continue;
            }
            let store = self.shards[shard].store.clone();
            match seal_page_job(&store, job, now, &mut self.page, &mut self.datagram) {
                Ok(()) => {
                    sent += 1;
                    self.report.datagrams += 1;
                    self.rec(
                        Kind::Sent,
                        shard as u64,
                        tag_key(&job.tag),
                        page_lsn(&self.page),
                    );
                    let bytes = self.datagram.to_vec();
                    let flow = self.shards[shard].senders[thread].flow;
                    self.send_udp(shard, bytes, flow);
                }
                Err(reason) => {
                    match reason {
                        SkipReason::NotReady => self.report.seal_not_ready += 1,
                        SkipReason::Failed => self.report.seal_failed += 1,
                    }
                    self.rec(
                        Kind::SealSkipped,
                        shard as u64,
                        tag_key(&job.tag),
                        reason as u64,
                    );
                }
            }
        }
        sent
    }

    // ---- the faulty UDP network -----------------------------------------------------------

    fn in_window(windows: &[(u64, u64)], t: u64) -> Option<u64> {
        windows
            .iter()
            .filter(|(s, e)| *s <= t && t < *e)
            .map(|&(_, e)| e)
            .max()
    }

    /// A page server's datagram onto its link to the compute, through the link's faults.
    fn send_udp(&mut self, shard: usize, bytes: Vec<u8>, flow: u64) {
        let now = self.now;
        let link = &self.shards[shard].link;
        if Self::in_window(&link.partitions, now).is_some() {
            self.report.faults.partitioned += 1;
            self.report.datagrams_dropped_by_faults += 1;
            self.rec(Kind::Partitioned, shard as u64, 0, 0);
            return;
        }
        let (loss, dup, replay) = (link.loss, link.duplicate, link.replay);
        let clog_end = Self::in_window(&link.clogs, now);
        if self.net_rng.chance(loss) {
            self.report.faults.lost += 1;
            self.report.datagrams_dropped_by_faults += 1;
            self.rec(Kind::Lost, shard as u64, 0, 0);
            return;
        }
        if self.replay_ring.len() == REPLAY_RING {
            self.replay_ring.pop_front();
        }
        if self.net_rng.chance(0.1) {
            self.replay_ring.push_back(bytes.clone());
        }
        let copies = if self.net_rng.chance(dup) {
            self.report.faults.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            self.send_udp_copy(shard, &bytes, flow, clog_end);
        }
        if self.net_rng.chance(replay) {
            // Recorded on the way and re-delivered much later (a replaying middlebox).
            let later = now + self.net_rng.range(1_000_000, 50_000_000);
            self.report.faults.replayed += 1;
            self.inject(bytes, Origin::Replay, flow, later);
        }
    }

    /// One copy of a datagram across the link: latency, jitter, reordering, a clog until
    /// `clog_end`, corruption; then it arrives, unless the link already holds its maximum.
    fn send_udp_copy(&mut self, shard: usize, bytes: &[u8], flow: u64, clog_end: Option<u64>) {
        let now = self.now;
        let link = &self.shards[shard].link;
        let (reorder, corrupt) = (link.reorder, link.corrupt);
        let (latency, jitter, extra) = (link.latency_ns, link.jitter_ns, link.reorder_extra_ns);
        let mut delay = latency + self.net_rng.below(jitter + 1);
        if self.net_rng.chance(reorder) {
            self.report.faults.reordered += 1;
            delay += self.net_rng.below(extra + 1);
        }
        let mut at = now + delay;
        if let Some(end) = clog_end {
            // Clogged: held in the network until the window ends, then released together.
            self.report.faults.clogged += 1;
            at = at.max(end + self.net_rng.below(jitter + 1));
        }
        let (data, origin) = if self.net_rng.chance(corrupt) {
            let data = self.corrupt(bytes.to_vec());
            // Flips that cancel out leave the original datagram, which is no forgery.
            let origin = if data == bytes {
                Origin::Server
            } else {
                Origin::Corrupted
            };
            (data, origin)
        } else {
            (bytes.to_vec(), Origin::Server)
        };
        if self.shards[shard].in_flight >= MAX_IN_FLIGHT {
            self.report.faults.link_overflow += 1;
            self.report.datagrams_dropped_by_faults += 1;
            return;
        }
        self.shards[shard].in_flight += 1;
        self.injected += 1;
        self.schedule(
            at,
            Ev::UdpArrive {
                packet: Packet {
                    bytes: data,
                    origin,
                    flow: flow | (shard as u64) << 60,
                },
            },
        );
    }

    fn corrupt(&mut self, mut bytes: Vec<u8>) -> Vec<u8> {
        if self.net_rng.chance(0.3) {
            self.report.faults.truncated += 1;
            let len = self.net_rng.below(bytes.len() as u64) as usize;
            bytes.truncate(len);
        } else {
            self.report.faults.bit_flipped += 1;
            for _ in 0..self.net_rng.range(1, 8) {
                let at = self.net_rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << self.net_rng.below(8);
            }
        }
        self.rec(Kind::Corrupted, bytes.len() as u64, 0, 0);
        bytes
    }

    /// A datagram that reaches the compute's socket without crossing a server link (replays,
    /// the attacker).
    fn inject(&mut self, bytes: Vec<u8>, origin: Origin, flow: u64, at: u64) {
        self.injected += 1;
        self.schedule(
            at,
            Ev::UdpArrive {
                packet: Packet {
                    bytes,
                    origin,
                    flow,
                },
            },
        );
    }

    /// The kernel: SO_REUSEPORT picks a socket by flow; a full receive buffer drops the tail.
    fn udp_arrive(&mut self, packet: Packet) {
        if matches!(packet.origin, Origin::Server | Origin::Corrupted) {
            let shard = (packet.flow >> 60) as usize;
            self.shards[shard].in_flight -= 1;
        }
        if self.cfg.daemon.gone_at(self.now) {
            // No socket on the port: the kernel drops it (ICMP port unreachable).
            self.report.faults.daemon_down += 1;
            self.report.datagrams_dropped_by_faults += 1;
            self.daemon_socket_lost += 1;
            return;
        }
        let w = (crate::rng::Rng::new(packet.flow).next_u64() % self.workers.len() as u64) as usize;
        let worker = &mut self.workers[w];
        if worker.queue.len() >= self.cfg.rx_queue_datagrams {
            self.report.faults.tail_dropped += 1;
            self.report.datagrams_dropped_by_faults += 1;
            worker.tail_drops += 1;
            // SO_RXQ_OVFL is cumulative per socket.
            worker
                .metrics
                .kernel_drops
                .store(worker.tail_drops, std::sync::atomic::Ordering::Relaxed);
            self.rec(Kind::TailDrop, w as u64, 0, 0);
            return;
        }
        worker.queue.push_back(packet);
        if !worker.scheduled {
            worker.scheduled = true;
            self.schedule(self.now, Ev::WorkerRun(w));
        }
    }

    // ---- workers ----------------------------------------------------------------------------

    /// Keeps the worker's slots posted (the top of `SlotPump::step`).
    fn refill_slots(&mut self, w: usize) {
        let worker = &mut self.workers[w];
        let posted = &mut worker.posted;
        // SAFETY: this simulated socket writes a posted slot's regions only in
        // `receive_into_slot`, for the slot it has just taken out of `posted`, and then hands
        // the slot back at once.
        let _ = unsafe {
            worker.book.post_free(|id, regions| {
                posted.push_back((id, regions));
                Ok::<(), std::convert::Infallible>(())
            })
        };
    }

    fn worker_run(&mut self, w: usize) {
        self.workers[w].scheduled = false;
        if self.workers[w].queue.is_empty() {
            return;
        }
        if let Some(until) = self.cfg.daemon.paused_until(self.now) {
            // SIGSTOPped: the socket keeps queueing; the thread runs again when continued.
            self.workers[w].scheduled = true;
            self.schedule(until, Ev::WorkerRun(w));
            return;
        }
        if self.cfg.daemon.gone_at(self.now) {
            self.worker_killed(w);
            return;
        }
        let zero_copy = self.cfg.slots_per_worker > 0;
        if zero_copy {
            self.refill_slots(w);
            if self.workers[w].posted.is_empty() {
                // Every frame is reserved by someone: the daemon backs off and retries.
                self.workers[w].scheduled = true;
                self.schedule(
                    self.now + workers::daemon::NO_SLOT_BACKOFF.as_nanos() as u64,
                    Ev::WorkerRun(w),
                );
                return;
            }
        }
        let Some(packet) = self.workers[w].queue.pop_front() else {
            return;
        };
        let now = self.now;
        let verdict = if zero_copy {
            let Some(v) = self.receive_into_slot(w, &packet.bytes) else {
                return;
            };
            v
        } else {
            self.ingest
                .offer(&packet.bytes, now, &self.workers[w].metrics)
        };
        self.account(w, &packet, &verdict);
        if !self.workers[w].queue.is_empty() {
            self.workers[w].scheduled = true;
            self.schedule(now + self.cfg.ingest_cost_ns, Ev::WorkerRun(w));
        }
    }

    /// The daemon was killed: what the worker's socket held is gone with it, and the LFC
    /// reclaims its frames.
    fn worker_killed(&mut self, w: usize) {
        let n = self.workers[w].queue.len() as u64;
        self.workers[w].queue.clear();
        self.report.faults.daemon_down += n;
        self.report.datagrams_dropped_by_faults += n;
        self.daemon_socket_lost += n;
        self.workers[w].give_slots_back();
    }

    /// The zero-copy path: one datagram received into the oldest posted slot and completed by
    /// the daemon's `SlotBook` (ingest); `None` if the worker has no slot posted.
    fn receive_into_slot(&mut self, w: usize, b: &[u8]) -> Option<Verdict> {
        let now = self.now;
        let worker = &mut self.workers[w];
        let (slot_id, regions) = worker.posted.pop_front()?;
        // SAFETY: the slot was posted by `SlotBook::post_free` and is with this simulated
        // socket only for this call: nothing else touches its regions (post_free's contract).
        unsafe { regions.scatter(b) };
        let completion = Completion {
            slot_id,
            len: b.len(),
            truncated: b.len() > regions.capacity(),
            ..Completion::default()
        };
        let verdict = worker
            .book
            .complete(&completion, now, &worker.metrics)
            .expect("a simulated receive never fails");
        // A slot turned away is posted again, as the daemon's next step does.
        self.refill_slots(w);
        Some(verdict)
    }

    fn account(&mut self, w: usize, packet: &Packet, verdict: &Verdict) {
        self.report.datagrams_delivered += 1;
        self.workers[w].delivered += 1;
        let origin_code = match packet.origin {
            Origin::Server => 0,
            Origin::Corrupted => 1,
            Origin::Replay => 2,
            Origin::Forged(k) => 3 + k as u64,
        };
        self.rec(
            Kind::Delivered,
            w as u64,
            origin_code,
            verdict_code(verdict),
        );
        match verdict {
            Ok(hdr) => {
                self.workers[w].seen_installed += 1;
                self.report.datagrams_installed += 1;
                self.rec(
                    Kind::Installed,
                    tag_key(&hdr.tag),
                    hdr.not_modified_since,
                    0,
                );
                if matches!(packet.origin, Origin::Corrupted | Origin::Forged(_)) {
                    self.violate(
                        ViolationKind::ForgedAccepted,
                        format!(
                            "a {:?} datagram for {} was accepted by ingest",
                            packet.origin, hdr.tag
                        ),
                    );
                    return;
                }
                self.notify(hdr.tag);
            }
            Err(reason) => {
                self.workers[w].seen[reason.index()] += 1;
                *self
                    .report
                    .drops_by_reason
                    .entry(reason.as_str().to_string())
                    .or_insert(0) += 1;
                match reason {
                    DropReason::Stale => self.report.stale_rejected += 1,
                    _ if matches!(packet.origin, Origin::Corrupted | Origin::Forged(_)) => {
                        self.report.forged_rejected += 1
                    }
                    _ => {}
                }
                self.rec(Kind::Dropped, w as u64, reason.index() as u64, 0);
            }
        }
        self.check_occupancy();
    }

    // ---- attacker -------------------------------------------------------------------------

    fn attack_gap(&mut self) -> u64 {
        let mean_ns = 1e6 / self.cfg.forged_per_ms.max(1e-9);
        (self.attack_rng.exp(mean_ns) as u64).max(1)
    }

    fn attacker_tick(&mut self) {
        if self.actors_done() || self.forged_sent >= MAX_FORGED {
            return;
        }
        let kind = ForgeKind::ALL[self.attack_rng.below(4) as usize];
        self.forge(kind);
        let gap = self.attack_gap();
        self.schedule(self.now + gap, Ev::AttackerTick);
    }

    /// One forged datagram, aimed at a real page so that an accepted forgery would be read.
    fn forge(&mut self, kind: ForgeKind) {
        if self.forged_sent >= MAX_FORGED {
            return;
        }
        self.forged_sent += 1;
        self.report.faults.forged += 1;
        let r = &mut self.attack_rng;
        let rel = Synthetic::rel(r.below(u64::from(self.cfg.rels)) as u32);
        let tag = rel.block(r.below(u64::from(self.cfg.pages_per_rel)) as u32);
        let real_id = self.lfc.key_id();
        let mut random_key = [0u8; 32];
        for c in random_key.chunks_exact_mut(8) {
            c.copy_from_slice(&r.next_u64().to_le_bytes());
        }
        let mut forged_stream_id = [0u8; 16];
        for c in forged_stream_id.chunks_exact_mut(8) {
            c.copy_from_slice(&r.next_u64().to_le_bytes());
        }
        // A page that would pass every content check: only the MAC can stop it.
        let lsn = r.range(SYNTHETIC_BASE_LSN, self.next_lsn + 64);
        let hdr = DatagramHeader {
            key_id: real_id,
            reqid: r.next_u64(),
            request_lsn: LATEST_LSN,
            // Claims to be fresher than anything, to get past the lwlsn check.
            not_modified_since: u64::MAX - 1,
            tag,
            sent_at_ns: self.now,
        };
        let mut out = vec![0u8; DATAGRAM_LEN];
        let out_arr: &mut [u8; DATAGRAM_LEN] =
            out.as_mut_slice().try_into().expect("DATAGRAM_LEN bytes");
        let page = synthetic_page(tag, lsn);
        match kind {
            ForgeKind::Random => {
                let len = r.below(9_000) as usize;
                out = (0..len).map(|_| r.next_u64() as u8).collect();
            }
            ForgeKind::WrongKey => DatagramKey::new(real_id, random_key)
                .stream(forged_stream_id)
                .seal(&hdr, &page, out_arr)
                .expect("a fresh stream seals"),
            ForgeKind::WrongKeyId => {
                let id = real_id.wrapping_add(1 + r.below(1000) as u32).max(1);
                let hdr = DatagramHeader { key_id: id, ..hdr };
                DatagramKey::new(id, random_key)
                    .stream(forged_stream_id)
                    .seal(&hdr, &page, out_arr)
                    .expect("a fresh stream seals")
            }
            ForgeKind::RightShape => {
                // A well-formed header (with the server's real stream id, so the forgery meets
                // a cached stream key) over a plaintext page and a random tag.
                out_arr[..HEADER_LEN].copy_from_slice(&hdr.encode());
                out_arr[64..80].copy_from_slice(&self.dest.key.stream_id());
                out_arr[HEADER_LEN..HEADER_LEN + PAGE_SIZE].copy_from_slice(&page[..]);
                for b in out_arr[HEADER_LEN + PAGE_SIZE..].iter_mut() {
                    *b = r.next_u64() as u8;
                }
            }
        }
        let flow = 0xA77A_0000 | r.below(1 << 16);
        self.rec(Kind::Forged, kind as u64, tag_key(&tag), out.len() as u64);
        self.inject(out, Origin::Forged(kind), flow, self.now);
    }

    // ---- backends ---------------------------------------------------------------------------

    fn cpu_cost(&mut self, b: usize) -> u64 {
        let (lo, hi) = self.cfg.backend_cpu_ns;
        self.backends[b].rng.range(lo, hi)
    }

    fn sleep_then_step(&mut self, b: usize, ns: u64) {
        self.backends[b].pending = Pending::Sleep;
        self.schedule(self.now + ns, Ev::BackendStep(b));
    }

    fn backend_step(&mut self, b: usize) {
        if !matches!(self.backends[b].pending, Pending::None) || self.backends[b].done {
            return;
        }
        loop {
            let be = &mut self.backends[b];
            match &mut be.activity {
                Activity::None => {
                    let Some(op) = be.program.pop_front() else {
                        let stats = be.driver.finish();
                        be.done = true;
                        self.report.prefetch_retries += stats.retries;
                        self.report.tcp_pipelined += stats.tcp_pipelined;
                        self.report.udp_state_changes += stats.udp_state_changes;
                        self.report.backends_done_ns = self.now - START_NS;
                        self.rec(Kind::BackendDone, b as u64, 0, 0);
                        return;
                    };
                    self.start_op(b, op);
                    if !matches!(self.backends[b].pending, Pending::None) {
                        return;
                    }
                }
                Activity::Scan {
                    rel,
                    cur,
                    end,
                    window,
                    distance,
                    path_changes,
                } => {
                    if *cur >= *end {
                        // `run_scan` ends with `backend.finish()`.
                        be.driver.finish();
                        be.activity = Activity::None;
                        continue;
                    }
                    let (rel, blkno) = (*rel, *cur);
                    *cur += 1;
                    // `run_scan`: a path change restarts the window.
                    if be.driver.path_changes() != *path_changes {
                        *path_changes = be.driver.path_changes();
                        window.restart_at(blkno);
                    }
                    // `run_scan`: the window topped up at the distance the read path allows.
                    let allowed = be.driver.prefetch_distance(*distance);
                    if let Some(range) = window.top_up(blkno, allowed) {
                        self.prefetch(b, rel, range);
                    }
                    self.start_read(b, rel.block(blkno));
                    return;
                }
                Activity::Reads(tags) => {
                    let Some(tag) = tags.pop_front() else {
                        be.activity = Activity::None;
                        continue;
                    };
                    self.start_read(b, tag);
                    return;
                }
            }
        }
    }

    fn start_op(&mut self, b: usize, op: Op) {
        let pages = self.cfg.pages_per_rel;
        match op {
            Op::Scan {
                rel,
                start,
                len,
                distance,
                ..
            } => {
                let rel = Synthetic::rel(u32::from(rel) % self.cfg.rels);
                let start = u32::from(start) % pages;
                let end = (start + u32::from(len).max(1)).min(pages);
                let distance = u32::from(distance).max(1);
                self.backends[b].activity = Activity::Scan {
                    rel,
                    cur: start,
                    end,
                    window: ScanWindow::new(start, end),
                    distance,
                    path_changes: self.backends[b].driver.path_changes(),
                };
            }
            Op::RandomReads {
                count, prefetch, ..
            } => {
                let hot = (HOT_BLOCKS * 2).min(pages);
                let rels = self.cfg.rels;
                let be = &mut self.backends[b];
                let tags: VecDeque<BufferTag> = (0..count.max(1))
                    .map(|_| {
                        Synthetic::rel(be.rng.below(u64::from(rels)) as u32)
                            .block(be.rng.below(u64::from(hot)) as u32)
                    })
                    .collect();
                for tag in tags
                    .iter()
                    .take(usize::from(prefetch))
                    .copied()
                    .collect::<Vec<_>>()
                {
                    self.prefetch(b, tag.rel, tag.blkno..tag.blkno + 1);
                }
                self.backends[b].activity = Activity::Reads(tags);
            }
            Op::Write {
                rel,
                blkno,
                set_lwlsn,
                ..
            } => {
                let tag =
                    Synthetic::rel(u32::from(rel) % self.cfg.rels).block(u32::from(blkno) % pages);
                let lsn = self.next_lsn;
                self.next_lsn += 8;
                self.backends[b].pending = Pending::Put {
                    tag,
                    lsn,
                    set_lwlsn,
                };
                let shard = self.shard_of(tag.rel);
                self.send_to_server(Conn::Backend(b), shard, ToServer::PutPage { tag, lsn });
            }
            Op::Pause { us, .. } => self.sleep_then_step(b, u64::from(us) * 1_000),
            _ => {}
        }
    }

    /// `Backend::prefetch`: the real driver decides; its messages go on the wire.
    fn prefetch(&mut self, b: usize, rel: RelTag, blocks: std::ops::Range<u32>) {
        let lfc = self.lfc;
        self.backends[b].driver.prefetch(lfc, rel, blocks, self.now);
        self.flush_transmits(b);
    }

    /// `Backend::transmit`: what the driver queued, on the backend's connection to the shard
    /// that owns each page. The prefetch target is registered on shard 0's connection only (the
    /// simulated servers all send to the one compute), so exactly one answer comes back.
    fn flush_transmits(&mut self, b: usize) {
        let conn = Conn::Backend(b);
        while let Some(t) = self.backends[b].driver.poll_transmit() {
            let reqid = self.next_reqid(conn);
            match t {
                Transmit::Target { .. } => self.send_to_server(conn, 0, ToServer::Target),
                Transmit::Prefetch(PrefetchRun {
                    rel,
                    first,
                    n,
                    max_lwlsn,
                }) => {
                    self.rec(
                        Kind::Prefetch,
                        u64::from(rel.relnode),
                        u64::from(first),
                        u64::from(n),
                    );
                    let shard = self.shard_of(rel);
                    let hdr = Header {
                        reqid,
                        request_lsn: LATEST_LSN,
                        not_modified_since: max_lwlsn,
                    };
                    self.send_to_server(conn, shard, ToServer::Prefetch { hdr, rel, first, n });
                }
                Transmit::GetPage {
                    tag,
                    not_modified_since,
                } => {
                    self.rec(Kind::Fetch, b as u64, tag_key(&tag), not_modified_since);
                    let shard = self.shard_of(tag.rel);
                    let hdr = Header {
                        reqid,
                        request_lsn: LATEST_LSN,
                        not_modified_since,
                    };
                    let msg = ToServer::GetPage {
                        hdr,
                        tag,
                        first_try_ns: None,
                    };
                    self.send_to_server(conn, shard, msg);
                }
            }
        }
    }

    fn next_reqid(&mut self, conn: Conn) -> u64 {
        let r = match conn {
            Conn::Backend(b) => &mut self.backends[b].reqid,
            Conn::Prewarm => &mut self.prewarm.reqid,
        };
        *r += 1;
        *r
    }

    /// `Backend::read` up to its first blocking point.
    fn start_read(&mut self, b: usize, tag: BufferTag) {
        let now = self.now;
        let ctx = ReadCtx {
            tag,
            started_ns: now,
            min_lsn: self.completed_max(&tag),
        };
        self.rec(Kind::ReadStart, b as u64, tag_key(&tag), ctx.min_lsn);
        let lfc = self.lfc;
        let be = &mut self.backends[b];
        let poll = be.driver.start_read(lfc, tag, &mut be.page, now);
        self.flush_transmits(b);
        self.on_poll(b, ctx, poll);
    }

    /// The blocking points of `Backend::read` in virtual time.
    fn on_poll(&mut self, b: usize, ctx: ReadCtx, poll: Poll) {
        match poll {
            Poll::Done(source) => {
                let kind = match source {
                    ReadSource::Hit => Kind::ReadHit,
                    ReadSource::LateHit => Kind::ReadLateHit,
                    ReadSource::Tcp => Kind::ReadTcp,
                };
                self.backends[b].pending = Pending::None;
                self.complete_read(b, ctx, kind)
            }
            Poll::Wait { until_ns, .. } => {
                let be = &mut self.backends[b];
                be.wait_token += 1;
                let token = be.wait_token;
                let deadline = until_ns.max(self.now);
                be.pending = Pending::Wait { ctx, token };
                self.rec(
                    Kind::WaitStart,
                    b as u64,
                    tag_key(&ctx.tag),
                    deadline - self.now,
                );
                self.schedule(deadline, Ev::WaitCheck { backend: b, token });
            }
            Poll::AwaitResponse => self.backends[b].pending = Pending::Await { ctx },
        }
    }

    /// `wait_for_arrival` returning (arrival, deadline or a wake-up for another page), then
    /// `Driver::on_wait_over`.
    fn wait_check(&mut self, b: usize, token: u64) {
        let Pending::Wait { ctx, token: t, .. } = self.backends[b].pending else {
            return;
        };
        if t != token {
            return;
        }
        let lfc = self.lfc;
        let now = self.now;
        let be = &mut self.backends[b];
        let poll = be.driver.on_wait_over(lfc, &mut be.page, now);
        if matches!(poll, Poll::Wait { .. }) {
            // Woken for another page on the same channel, or it was evicted again: sleep on
            // until the deadline already scheduled.
            return;
        }
        if !matches!(poll, Poll::Done(_)) {
            self.rec(Kind::WaitTimeout, b as u64, tag_key(&ctx.tag), 0);
        }
        self.flush_transmits(b);
        self.on_poll(b, ctx, poll);
    }

    fn backend_reply(&mut self, b: usize, msg: ToClient) {
        let lfc = self.lfc;
        let now = self.now;
        let handled = match msg {
            ToClient::Page { tag, result } => {
                let page = match result {
                    Ok(p) => p,
                    Err(e) => {
                        self.violate(
                            ViolationKind::Liveness,
                            format!("backend {b}: GetPage {tag} failed: {e}"),
                        );
                        return;
                    }
                };
                let be = &mut self.backends[b];
                let r = be.driver.on_response(
                    lfc,
                    DriverResponse::Page { tag, page: &page },
                    &mut be.page,
                    now,
                );
                if r.as_ref().is_ok_and(|h| h.installed) {
                    self.shell_installs += 1;
                    self.notify(tag);
                }
                r
            }
            ToClient::TargetSet => {
                let be = &mut self.backends[b];
                be.driver
                    .on_response(lfc, DriverResponse::Target, &mut be.page, now)
            }
            ToClient::PutDone => return self.write_done(b),
        };
        let handled = match handled {
            Ok(h) => h,
            Err(e) => {
                self.violate(ViolationKind::Liveness, format!("backend {b}: {e}"));
                return;
            }
        };
        self.check_occupancy();
        self.flush_transmits(b);
        if let (Some(poll), Pending::Await { ctx }) = (handled.next, &self.backends[b].pending) {
            let ctx = *ctx;
            if poll != Poll::AwaitResponse {
                self.on_poll(b, ctx, poll);
            }
        }
    }

    /// `Backend::write` after the page server took the version: `store_own_write` (or
    /// `set_lwlsn` for a modification whose content the compute does not keep).
    fn write_done(&mut self, b: usize) {
        let Pending::Put {
            tag,
            lsn,
            set_lwlsn,
        } = std::mem::replace(&mut self.backends[b].pending, Pending::None)
        else {
            self.violate(
                ViolationKind::Liveness,
                format!("backend {b} got a PutPage answer it was not waiting for"),
            );
            return;
        };
        if set_lwlsn {
            if let Err(e) = self.lfc.set_lwlsn(&tag, lsn) {
                self.violate(ViolationKind::Liveness, format!("set_lwlsn {tag}: {e}"));
                return;
            }
        } else {
            let page = synthetic_page(tag, lsn);
            match store_own_write(self.lfc, &tag, lsn, &page) {
                Ok(WriteOutcome::Stored) => self.notify(tag),
                Ok(_) => {}
                Err(e) => {
                    self.violate(ViolationKind::Liveness, format!("write {tag}: {e}"));
                    return;
                }
            }
        }
        let m = self.model.entry(tag).or_default();
        m.completed_max = m.completed_max.max(lsn);
        self.report.writes += 1;
        self.rec(Kind::WriteDone, b as u64, tag_key(&tag), lsn);
        self.check_occupancy();
        let cpu = self.cpu_cost(b);
        self.sleep_then_step(b, cpu);
    }

    fn complete_read(&mut self, b: usize, ctx: ReadCtx, kind: Kind) {
        let changes = self.backends[b].driver.stats().udp_state_changes;
        if changes != self.backends[b].path_changes {
            self.backends[b].path_changes = changes;
            let path = self.backends[b].driver.path() as u64;
            self.rec(Kind::PathChange, b as u64, path, changes);
        }
        match kind {
            Kind::ReadHit => self.report.read_hits += 1,
            Kind::ReadLateHit => self.report.read_late_hits += 1,
            _ => self.report.read_tcp += 1,
        }
        let page = std::mem::replace(&mut self.backends[b].page, Box::new([0u8; PAGE_SIZE]));
        self.rec(kind, b as u64, tag_key(&ctx.tag), page_lsn(&page));
        self.check_page(&format!("backend {b}"), &ctx, &page);
        self.backends[b].page = page;
        let cpu = self.cpu_cost(b);
        self.sleep_then_step(b, cpu);
    }

    // ---- prewarm ----------------------------------------------------------------------------
    //
    // The real sans-IO `prewarm::driver::Driver` in virtual time, with the saved state going
    // through the real state-file encoding and `plan`: this only carries its messages and turns
    // its `Poll::Wait` into an event. Prewarm runs on the cold cache before the backends start,
    // as after a compute restart.

    /// The saved state: the cache's own hottest pages (`snapshot_hottest`, empty when cold),
    /// then pages of the relations, then `gone` tags that no longer exist (a dropped relation,
    /// blocks past a relation's end).
    fn start_prewarm(&mut self, pages: u16, gone: u8) {
        // Small enough to fit next to the workers' reserved slots, so "complete" is reachable.
        let reserved = (self.cfg.workers * self.cfg.slots_per_worker) as u64;
        let budget = (self.cfg.lfc_capacity_pages.saturating_sub(reserved) / 2).max(1) as usize;
        let want = usize::from(pages).clamp(1, budget);
        let mut tags = self.lfc.snapshot_hottest(want / 2);
        let r = &mut self.prewarm_rng;
        // Bounded draws: a small relation set may hold fewer distinct pages than wanted.
        for _ in 0..want * 4 {
            if tags.len() >= want {
                break;
            }
            let rel = Synthetic::rel(r.below(u64::from(self.cfg.rels)) as u32);
            // Mostly runs of neighbours, as a real cache's hot set has.
            let tag = rel.block(r.below(u64::from(self.cfg.pages_per_rel)) as u32);
            for k in 0..r.range(1, 4) as u32 {
                let t = tag.rel.block((tag.blkno + k) % self.cfg.pages_per_rel);
                if tags.len() < want && !tags.contains(&t) {
                    tags.push(t);
                }
            }
        }
        for i in 0..u32::from(gone) {
            tags.push(if i % 2 == 0 {
                Synthetic::rel(self.cfg.rels + i).block(i)
            } else {
                Synthetic::rel(0).block(self.cfg.pages_per_rel + i)
            });
        }
        // Through the state file, as `prewarm save` then `prewarm run` would.
        let ranges = prewarm::state::ranges_from_hottest(&tags);
        let ranges = match prewarm::state::decode(&prewarm::state::encode(&ranges)) {
            Ok(r) => r,
            Err(e) => {
                self.violate(
                    ViolationKind::Liveness,
                    format!("prewarm state round trip: {e}"),
                );
                return;
            }
        };
        self.start_prewarm_driver(prewarm::plan(&ranges));
    }

    /// `run_prewarm`'s start: the relations' sizes (asked of the page server that owns each),
    /// the daemon's port, then the driver.
    fn start_prewarm_driver(&mut self, pages: Vec<BufferTag>) {
        let sizes: HashMap<RelTag, Option<u32>> = prewarm::driver::relations(&pages)
            .into_iter()
            .map(|rel| {
                let store = &self.shards[self.shard_of(rel)].store;
                (rel, store.nblocks(rel).ok().flatten())
            })
            .collect();
        let config = DriverConfig {
            udp_port: prewarm::driver::udp_port(self.prewarm_config.udp_port, self.lfc, self.now),
            ..self.prewarm_config
        };
        let driver = PrewarmDriver::new(config, pages, &sizes, self.lfc, self.now, self.now);
        for (i, tag) in driver.pages().iter().enumerate() {
            if driver.exists(i) != self.exists(tag) {
                let e = driver.exists(i);
                self.violate(
                    ViolationKind::Liveness,
                    format!("prewarm: the page server says {tag} exists={e}, the model disagrees"),
                );
                return;
            }
        }
        self.report.prewarm_pages += driver.pages().len() as u64;
        self.rec(Kind::PrewarmRound, driver.pages().len() as u64, 0, 0);
        self.prewarm.run = Some(driver);
    }

    /// A `Poll::Wait` of the driver is over (or the next prewarm of the program starts).
    fn prewarm_tick(&mut self) {
        if self.prewarm.done {
            return;
        }
        if self.prewarm.run.is_none() {
            match self.prewarm.program.pop_front() {
                Some((pages, gone)) => self.start_prewarm(pages, gone),
                None => {
                    self.prewarm.done = true;
                    self.report.backends_started_ns = self.now - START_NS;
                    // Cold start over: the backends begin.
                    for b in 0..self.backends.len() {
                        self.schedule(self.now, Ev::BackendStep(b));
                    }
                    return;
                }
            }
        }
        let lfc = self.lfc;
        let now = self.now;
        if let Some(poll) = self.prewarm.run.as_mut().map(|d| d.step(lfc, now)) {
            self.prewarm_poll(poll);
        }
    }

    /// Sends what the driver queued, then does what it says next.
    fn prewarm_poll(&mut self, poll: PrewarmPoll) {
        self.prewarm_transmit();
        match poll {
            PrewarmPoll::Wait { until_ns } => {
                self.prewarm.token += 1;
                let token = self.prewarm.token;
                self.schedule(until_ns, Ev::PrewarmRound { token });
            }
            // Continues when a reply comes in (`prewarm_reply`).
            PrewarmPoll::AwaitResponse => {}
            PrewarmPoll::Done => self.prewarm_finish(),
        }
    }

    /// `run_prewarm`'s `transmit`: each message on the connection to the shard that owns its
    /// pages. A GetPage notes the newest completed write of its page, the checkers' floor.
    fn prewarm_transmit(&mut self) {
        while let Some(t) = self.prewarm.run.as_mut().and_then(|d| d.poll_transmit()) {
            let reqid = self.next_reqid(Conn::Prewarm);
            let (shard, msg) = match t {
                PrewarmTransmit::Prefetch(PrefetchRun {
                    rel,
                    first,
                    n,
                    max_lwlsn,
                }) => {
                    let (relnode, first64, n64) = (rel.relnode, u64::from(first), u64::from(n));
                    self.rec(Kind::Prefetch, u64::from(relnode), first64, n64);
                    let hdr = Header {
                        reqid,
                        request_lsn: LATEST_LSN,
                        not_modified_since: max_lwlsn,
                    };
                    let msg = ToServer::Prefetch { hdr, rel, first, n };
                    (self.shard_of(rel), msg)
                }
                PrewarmTransmit::GetPage {
                    tag,
                    not_modified_since,
                } => {
                    let min_lsn = self.completed_max(&tag);
                    self.prewarm.min_lsn.insert(tag, min_lsn);
                    self.rec(Kind::PrewarmFetch, tag_key(&tag), not_modified_since, 0);
                    let hdr = Header {
                        reqid,
                        request_lsn: LATEST_LSN,
                        not_modified_since,
                    };
                    let first_try_ns = None;
                    let msg = ToServer::GetPage {
                        hdr,
                        tag,
                        first_try_ns,
                    };
                    (self.shard_of(tag.rel), msg)
                }
            };
            self.send_to_server(Conn::Prewarm, shard, msg);
        }
    }

    /// A GetPage reply: checked, then handed to the driver (which installs it).
    fn prewarm_reply(&mut self, msg: ToClient) {
        let ToClient::Page { tag, result } = msg else {
            return;
        };
        let (lfc, now) = (self.lfc, self.now);
        let min_lsn = self.prewarm.min_lsn.remove(&tag).unwrap_or(0);
        let handled = match &result {
            Ok(page) => {
                let ctx = ReadCtx {
                    tag,
                    started_ns: now,
                    min_lsn,
                };
                self.check_page("prewarm", &ctx, page);
                let response = PrewarmResponse::Page { tag, page };
                self.prewarm
                    .run
                    .as_mut()
                    .map(|d| d.on_response(lfc, response, now))
            }
            Err(e) if self.exists(&tag) => {
                let msg = format!("prewarm: GetPage {tag} failed although it exists: {e}");
                self.violate(ViolationKind::Liveness, msg);
                return;
            }
            Err(_) => {
                let response = PrewarmResponse::Failed { tag };
                self.prewarm
                    .run
                    .as_mut()
                    .map(|d| d.on_response(lfc, response, now))
            }
        };
        match handled {
            Some(Ok(handled)) => {
                if handled.installed {
                    self.shell_installs += 1;
                    self.notify(tag);
                }
                self.check_occupancy();
                self.prewarm_poll(handled.next);
            }
            Some(Err(e)) => self.violate(ViolationKind::Liveness, format!("prewarm: {e}")),
            None => {}
        }
    }

    /// `Poll::Done`: the checkers read every page the run left, its report must say complete
    /// (unless the cache filled up), and the next prewarm of the program starts.
    fn prewarm_finish(&mut self) {
        let Some(driver) = self.prewarm.run.take() else {
            return;
        };
        // The checkers see the pages the driver's final check reads (one lookup each, as in a
        // real run: a second one would count as a use for eviction).
        let (lfc, now) = (self.lfc, self.now);
        let check = driver.final_check(lfc, |tag, page| {
            let ctx = ReadCtx {
                tag: *tag,
                started_ns: now,
                min_lsn: self.completed_max(tag),
            };
            self.check_page("prewarm final check", &ctx, page);
        });
        let report = driver.report(check, now);
        let existing = report.pages - report.skipped_gone;
        self.report.prewarm_covered += report.present;
        self.rec(Kind::PrewarmDone, existing, report.present, report.via_tcp);
        if !report.complete && !report.cache_full {
            self.violate(
                ViolationKind::Liveness,
                format!(
                    "prewarm finished with {} of {existing} existing pages present ({} gone, {} failed verification, {:?})",
                    report.present, report.skipped_gone, report.failed_verification, driver.counts()
                ),
            );
            return;
        }
        self.prewarm.token += 1;
        let token = self.prewarm.token;
        self.schedule(self.now, Ev::PrewarmRound { token });
    }

    // ---- end of run -------------------------------------------------------------------------

    fn final_checks(&mut self) {
        for (b, be) in self.backends.iter().enumerate() {
            if !be.done {
                let msg = format!("backend {b} never finished its workload");
                self.violate(ViolationKind::Liveness, msg);
                return;
            }
        }
        if !self.prewarm.done {
            self.violate(ViolationKind::Liveness, "prewarm never finished".into());
            return;
        }
        // Accounting: every datagram put on the wire was dropped by a fault or delivered, and
        // every delivered one was installed or dropped for exactly one reason.
        let delivered: u64 = self.workers.iter().map(|w| w.delivered).sum();
        let lost_after_inject = self.report.faults.tail_dropped + self.daemon_socket_lost;
        if self.injected != delivered + lost_after_inject {
            let msg = format!(
                "{} datagrams reached the compute's sockets but {} were delivered and {} tail-dropped",
                self.injected, delivered, lost_after_inject
            );
            self.violate(ViolationKind::Accounting, msg);
            return;
        }
        let mut ingest_installed = 0;
        for (i, w) in self.workers.iter().enumerate() {
            let m = &w.metrics;
            let received = m.received.load(std::sync::atomic::Ordering::Relaxed);
            let installed = m.installed.load(std::sync::atomic::Ordering::Relaxed);
            let dropped: u64 = DropReason::ALL.iter().map(|r| m.dropped(*r)).sum();
            let per_reason_ok = DropReason::ALL
                .iter()
                .all(|r| m.dropped(*r) == w.seen[r.index()]);
            if received != w.delivered
                || installed + dropped != received
                || installed != w.seen_installed
                || !per_reason_ok
            {
                let msg = format!(
                    "worker {i}: delivered {} but metrics say received {received}, installed {installed}, dropped {dropped}",
                    w.delivered
                );
                self.violate(ViolationKind::Accounting, msg);
                return;
            }
            ingest_installed += installed;
        }
        let stats = self.lfc.stats();
        if stats.installs != ingest_installed + self.shell_installs {
            let msg = format!(
                "LFC counted {} installs; ingest installed {ingest_installed} and backends {}",
                stats.installs, self.shell_installs
            );
            self.violate(ViolationKind::Accounting, msg);
            return;
        }
        self.check_occupancy();
        // Audit: every page still cached is a real version, not older than any completed write.
        let mut page = Box::new([0u8; PAGE_SIZE]);
        for tag in self
            .lfc
            .snapshot_hottest(self.cfg.lfc_capacity_pages as usize)
        {
            if self.lfc.lookup(&tag, &mut page).is_some() {
                let ctx = ReadCtx {
                    tag,
                    started_ns: self.now,
                    min_lsn: self.completed_max(&tag),
                };
                self.check_page("final audit", &ctx, &page);
                if self.violation.is_some() {
                    return;
                }
            }
        }
    }

    fn finish_report(mut self) -> RunReport {
        self.report.simulated_ns = self.now - START_NS;
        match &self.cfg.daemon {
            DaemonFault::Healthy => {}
            DaemonFault::Absent => self.report.faults.daemon_absent += 1,
            DaemonFault::KilledAt(_) => self.report.faults.daemon_killed += 1,
            DaemonFault::Paused(_) => self.report.faults.daemon_paused += 1,
        }
        self.report.events = self.events;
        self.report.digest = format!("{:016x}", self.trace.digest());
        self.report.violation = self.violation.take();
        // Give the posted slots back before the LFC goes away (the daemon's `cancel_all`).
        for w in &mut self.workers {
            w.give_slots_back();
        }
        std::mem::take(&mut self.report)
    }
}
