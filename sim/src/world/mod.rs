//! The simulated world: one single-threaded discrete-event loop in virtual nanoseconds around
//! the real sans-IO cores.
//!
//! Each node runs a real sans-IO core behind a virtual-time model of its I/O shell, in a file of
//! its own:
//! - `server`: page-server shard = each connection's real `pageserver::session::Session` (the
//!   reader: registration, prefetch routing) and `Work::answer` (the responder), and each
//!   sender thread's `PrefetchScheduler::next_send` and `seal_batch`, over a real `PageStore`,
//!   `PrefetchScheduler` and `DropFilter`; it models only the threads' order, sleeps and
//!   wake-ups. No copy of their logic lives here.
//! - `worker`: the daemon's own slot bookkeeping, `workers::pump::SlotBook` (frames posted as
//!   receive slots, `Ingest::complete`, turned-away frames posted again), behind a simulated
//!   socket that scatters each datagram into the oldest posted slot as `recvmmsg` does; or
//!   the copy path `Ingest::offer`; over the real `Lfc`;
//! - `backend`: the real sans-IO `compute::backend::driver::Driver` (read path, UDP health,
//!   GetPage pipeline), with the scan window of `compute::scan::run_scan`; it only carries its
//!   messages (`poll_transmit`, responses) and turns its `Poll::Wait` into a virtual-time wait
//!   that re-checks when a page lands or the deadline passes. No copy of its logic lives here.
//! - `prewarm`: the real sans-IO `compute::prewarm::driver::Driver` (arrival probing, retries,
//!   the fail-over to TCP, cache-full, pacing, repair rounds), on a state that went through the
//!   real state-file encoding and `plan`, before the backends start or (a quarter of the `none`
//!   and `light` seeds) beside them; it only carries its Prefetch and GetPage messages and replies and turns its
//!   `Poll::Wait` into a virtual-time event. No copy of its logic lives here.
//! - `daemon`: registers in the LFC header and heartbeats in virtual time; absent, killed or
//!   paused as `SimConfig::daemon` says.
//!
//! Around them: `net` (UDP with faults, TCP reliable with latency), `attacker` (forged and
//! replayed datagrams), `check` (the version model, the checkers and their violations) and
//! `report` (what a run did). Only the network and time are simulated.
//!
//! Owns: the event queue and virtual clock, the `World` that holds every part's state,
//! the dispatch of each event to the part that owns it, and a run's start and end; it handles
//! no node's event itself. Nothing in `world` reads a real clock, opens a socket or file, spawns
//! a thread (`lib.rs` creates the LFC file) or imports `cmd` or `bench`.
//! Its buffers are sized by the cores' own constants (`SEND_BATCH`, `SEALED_PAGE_MAX`,
//! `GET_PAGE_RESPONSE_LEN`), never by copies of them.

use crate::config::DaemonFault;
use crate::config::{FaultProfile, SimConfig, START_NS};
use crate::rng::Rng;
use crate::trace::{Kind, Trace};
use crate::workload::{ForgeKind, Op};
use lfc::{BufferTag, Lfc, PAGE_SIZE};
use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use udp_prefetch::compute::prewarm::driver::DriverConfig;
use udp_prefetch::pageserver::prefetch::SEND_BATCH;
use udp_prefetch::pageserver::session::Work;
use udp_prefetch::pageserver::source::SourceSpec;
use udp_prefetch::protocol::page::Page;
use udp_prefetch::protocol::pagestream::{Request, GET_PAGE_RESPONSE_LEN};
use workers::datagram::{SealedPage, SEALED_PAGE_MAX};
use workers::ingest::Ingest;

mod attacker;
mod backend;
mod check;
mod daemon;
mod net;
mod prewarm;
mod report;
mod server;
mod worker;

pub use check::{Violation, ViolationKind};
pub use report::{FaultCounts, RunReport, ShardCounts};

use backend::{build_backends, BackendNode, Pending};
use check::TagModel;
use net::{Conn, Packet, ToClient, REPLAY_RING};
use prewarm::{prewarm_driver_config, PrewarmNode};
use server::{build_shards, Shard};
use worker::{build_workers, WorkerNode};

/// Bounds that turn a hang into a liveness violation instead of an endless run.
const MAX_VIRTUAL_NS: u64 = 120_000_000_000;
const MAX_EVENTS: u64 = 20_000_000;
const MAX_PENDING_EVENTS: usize = 1 << 20;

#[derive(Debug)]
enum Ev {
    BackendStep(usize),
    WaitCheck {
        backend: usize,
        token: u64,
    },
    /// A read awaiting a GetPage answer looks for losses (`Driver::await_look_ns`).
    AwaitLook {
        backend: usize,
        token: u64,
    },
    /// A request reaches the connection's reader on a shard.
    AtServer {
        shard: usize,
        conn: Conn,
        req: Request,
    },
    /// The responder's turn for a request has come (due, and in order).
    Respond {
        shard: usize,
        conn: Conn,
        work: Work,
    },
    /// A responder blocked on WAL looks again: WAL advanced, or its wait's deadline came.
    WalCheck {
        shard: usize,
        conn: Conn,
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
    /// A worker thread's receive wait timed out (`workers::daemon::POLL`): it clears its
    /// assembly table as the daemon's does.
    WorkerTimeout(usize),
    AttackerTick,
    ForgeBurst {
        count: u8,
        kind: ForgeKind,
    },
    ReplayBurst {
        count: u8,
    },
    /// Prewarm's program (`shard` None: the next run) or a shard driver's wait is over.
    PrewarmRound {
        shard: Option<usize>,
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

pub struct World<'a> {
    cfg: SimConfig,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    lfc: &'a Lfc,
    /// The path MTU the compute states (`PrefetchTarget`): 1500 for a quarter of the seeds, so
    /// pages travel as 8 fragments each and the daemon's join runs under every fault; else 0
    /// (whole pages, as on loopback).
    path_mtu: u32,
    ingest: Ingest<'a>,
    shards: Vec<Shard>,
    workers: Vec<WorkerNode<'a>>,
    backends: Vec<BackendNode>,
    prewarm: PrewarmNode,
    /// In-order delivery per (connection, shard, direction): next arrival may not be earlier.
    tcp_last: HashMap<(usize, usize, bool), u64>,
    model: HashMap<BufferTag, TagModel>,
    next_lsn: u64,
    replay_ring: VecDeque<Vec<u8>>,
    net_rng: Rng,
    attack_rng: Rng,
    forged_sent: u64,
    prewarm_rng: Rng,
    prewarm_config: DriverConfig,
    /// The backends start with the prewarm instead of after it (a restart with queries at once),
    /// for a quarter of the seeds of the `none` and `light` profiles: the prewarm then yields to
    /// their reads. Not under `default` and `heavy` faults yet (ARCHITECTURE §10).
    prewarm_beside_backends: bool,
    page: Box<Page>,
    /// One encoded pagestream response (`Work::answer`'s output).
    frame: Vec<u8>,
    /// Ids of the datagram streams PrefetchTargets open.
    stream_rng: Rng,
    /// One sender batch's datagrams (`seal_batch`'s output).
    datagrams: Vec<SealedPage>,
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
        let stream_rng = Rng::stream(seed, 0x57E);
        // Its own stream: drawing it changes nothing else a seed draws.
        let path_mtu = if Rng::stream(seed, 0x3717).chance(0.25) {
            1500
        } else {
            0
        };
        let shards = build_shards(&cfg, &source, seed);
        let workers = build_workers(&cfg, lfc);
        daemon::register(&cfg, lfc);
        let programs = Programs::split(ops, cfg.backends);
        let backends = build_backends(&cfg, lfc, seed, programs.backends);
        let mut w = World {
            now: START_NS,
            seq: 0,
            queue: BinaryHeap::new(),
            lfc,
            path_mtu,
            ingest: Ingest::new(lfc),
            shards,
            workers,
            backends,
            prewarm: PrewarmNode {
                program: programs.prewarm,
                runs: Vec::new(),
                min_lsn: HashMap::new(),
                token: 0,
                reqid: 0xFFFF << 48,
                done: false,
                registering: None,
            },
            tcp_last: HashMap::new(),
            model: HashMap::new(),
            next_lsn: 1_000,
            replay_ring: VecDeque::with_capacity(REPLAY_RING),
            net_rng: Rng::stream(seed, 0x4E7),
            attack_rng: Rng::stream(seed, 0xA77),
            forged_sent: 0,
            prewarm_rng: Rng::stream(seed, 0x9E7),
            prewarm_config: prewarm_driver_config(seed),
            // Its own stream: drawing it changes nothing else a seed draws.
            prewarm_beside_backends: matches!(
                cfg.profile,
                FaultProfile::None | FaultProfile::Light
            ) && Rng::stream(seed, 0xB35).chance(0.25),
            page: Box::new([0u8; PAGE_SIZE]),
            frame: Vec::with_capacity(GET_PAGE_RESPONSE_LEN),
            stream_rng,
            datagrams: vec![[0u8; SEALED_PAGE_MAX]; SEND_BATCH],
            trace: Trace::default(),
            report: RunReport {
                seed,
                shards: vec![report::ShardCounts::default(); cfg.shards],
                ..RunReport::default()
            },
            shell_installs: 0,
            daemon_socket_lost: 0,
            injected: 0,
            events: 0,
            violation: None,
            cfg,
        };
        w.trace.note(START_NS, format_args!("{:?}", w.cfg));
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
        // Prewarm (if the workload has any) refills the cold cache first and its end starts the
        // backends, or it runs beside them.
        self.prewarm.token += 1;
        let token = self.prewarm.token;
        self.schedule(START_NS, Ev::PrewarmRound { shard: None, token });
        if self.prewarm_beside_backends {
            self.start_backends();
        }
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
            Ev::AwaitLook { backend, token } => self.await_look(backend, token),
            Ev::AtServer { shard, conn, req } => self.at_server(shard, conn, req),
            Ev::Respond { shard, conn, work } => self.respond(shard, conn, work),
            Ev::WalCheck { shard, conn } => self.wal_check(shard, conn),
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
            Ev::WorkerTimeout(w) => self.worker_timeout(w),
            Ev::AttackerTick => self.attacker_tick(),
            Ev::ForgeBurst { count, kind } => self.forge_burst(count, kind),
            Ev::ReplayBurst { count } => self.replay_burst(count),
            Ev::PrewarmRound { shard, token } => {
                let current = match shard {
                    None => Some(self.prewarm.token),
                    Some(s) => self.prewarm.shard_token(s),
                };
                if Some(token) == current {
                    self.prewarm_tick(shard);
                }
            }
            Ev::Heartbeat => self.heartbeat(),
        }
    }

    fn actors_done(&self) -> bool {
        self.prewarm.done && self.backends.iter().all(|b| b.done)
    }

    fn finish_report(mut self) -> RunReport {
        self.report.simulated_ns = self.now - START_NS;
        self.report.own_receivers = self.cfg.own_receivers as u64;
        self.count_daemon_fault();
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
