//! The page-server shards, running the real sans-IO cores of the page server's I/O shells:
//! each connection's `pageserver::session::Session` (what `conn.rs`'s reader does with a
//! request: registration, prefetch routing, due times) and `Work::answer` (what its responder
//! answers, the WAL wait's deadline included), and each sender thread's
//! `PrefetchScheduler::next_send` and `seal_batch` (what `udp_sender::send_loop` sends and how
//! long it sleeps), over a real `PageStore`, `PrefetchScheduler`, `DropFilter` and
//! `ServerStats`. No copy of their logic or constants lives here.
//!
//! What this file models is only what the shells do with threads, clocks and sockets: the
//! responder's order (one request at a time, held until due, blocked while a request waits for
//! WAL: woken by a PutPage that reaches the LSN or at the deadline), the sender threads' sleeps
//! and wake-ups (`Condvar::notify_one` on enqueue), GetPage reports reaching the scheduler at
//! once (the real ones cross a channel), and every shard ingesting the whole WAL stream (a
//! PutPage on one shard is applied on all).
//!
//! Owns: each shard's store, scheduler, stats, sessions, responders and sender threads, and the
//! versions it applies (recorded in the version model). Puts datagrams on the wire only through
//! `net` and answers only over TCP; touches no worker or backend, and of the LFC reads only its
//! key (what PrefetchTarget hands the server).

use super::check::ViolationKind;
use super::daemon::COMPUTE_ADDR;
use super::net::{Conn, ToClient};
use super::{tag_key, Ev, World};
use crate::config::{LinkFaults, SimConfig};
use crate::rng::Rng;
use crate::trace::Kind;
use lfc::{BufferTag, Lfc};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use udp_prefetch::pageserver::prefetch::{
    batch_datagram, seal_batch, DropFilter, JobOutcome, PageJob, PrefetchScheduler, SendStep,
    SkipReason, SEND_BATCH,
};
use udp_prefetch::pageserver::session::{Answer, Routed, Session, SessionConfig, Work};
use udp_prefetch::pageserver::source::PageSource;
use udp_prefetch::pageserver::stats::ServerStats;
use udp_prefetch::pageserver::store::PageStore;
use udp_prefetch::pageserver::ServerConfig;
use udp_prefetch::protocol::page::{page_lsn, synthetic_page};
use udp_prefetch::protocol::pagestream::{PrefetchTarget, Request, Response};
use workers::datagram::{Protection, STREAM_ID_LEN};

pub(super) enum SenderState {
    Running,
    Sleeping,
}

pub(super) struct SenderThread {
    pub(super) filter: DropFilter,
    pub(super) state: SenderState,
    pub(super) token: u64,
    pub(super) flow: u64,
}

/// One connection's responder thread (`conn::respond`).
#[derive(Default)]
pub(super) struct Responder {
    /// When the last request handed to it is due: requests are answered in order.
    busy_until: u64,
    /// A request waiting for WAL: nothing else is answered meanwhile.
    blocked: Option<Work>,
    /// Requests that came due while it was blocked, in order.
    held: VecDeque<Work>,
}

pub(super) struct Shard {
    pub(super) store: Arc<PageStore>,
    pub(super) sched: PrefetchScheduler,
    pub(super) stats: ServerStats,
    /// One session per connection (`Conn::index`): each connection's reader keeps one.
    pub(super) sessions: Vec<Session>,
    responders: Vec<Responder>,
    pub(super) senders: Vec<SenderThread>,
    pub(super) link: LinkFaults,
    pub(super) in_flight: usize,
    pub(super) jobs: Vec<PageJob>,
}

/// The PrefetchTarget every simulated connection registers: the compute's port and the LFC's
/// key.
pub(super) fn compute_target(lfc: &Lfc, path_mtu: u32) -> PrefetchTarget {
    udp_prefetch::compute::prefetch_target(lfc, COMPUTE_ADDR.1, path_mtu)
}

/// The id of the next datagram stream a PrefetchTarget opens: random in the server, from the
/// seed here (so runs replay exactly).
fn next_stream_id(rng: &mut Rng) -> Result<[u8; STREAM_ID_LEN], Infallible> {
    let mut id = [0u8; STREAM_ID_LEN];
    for c in id.chunks_exact_mut(8) {
        c.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    Ok(id)
}

/// The shards, each with a session per connection (`connections`: the backends and prewarm).
/// Every session starts as the real one does, without a target: each connection registers
/// through its own PrefetchTarget, as the real compute sends it (a backend's from its shard's
/// driver, `Transmit::Target`; prewarm's before its run, `World::start_prewarm_driver`), and
/// a Prefetch before one is dropped as the real server drops it.
pub(super) fn build_shards(cfg: &SimConfig, source: &Arc<dyn PageSource>, seed: u64) -> Vec<Shard> {
    // The real server's defaults: the sim runs the server as shipped.
    let server = ServerConfig::default();
    let connections = cfg.backends + 1;
    (0..cfg.shards)
        .map(|s| {
            // Each shard refuses another's pages, as the real one does: a misrouted request is
            // an error the checkers see.
            let session_config = SessionConfig {
                service_delay_ns: cfg.service_delay_ns,
                protection: Protection::default(),
                shard: udp_prefetch::protocol::shard::ShardIdentity::new(s, cfg.shard_layout())
                    .expect("shard numbers run below the count"),
            };
            let stats = ServerStats::default();
            let peer_ip = IpAddr::V4(Ipv4Addr::from(COMPUTE_ADDR.0));
            let sessions = (0..connections)
                .map(|c| Session::new(c as u64, Some(peer_ip), session_config))
                .collect();
            Shard {
                store: Arc::new(PageStore::new(
                    source.clone(),
                    server.max_page_versions,
                    server.lsn_wait_timeout,
                )),
                sched: PrefetchScheduler::new(cfg.scheduler),
                stats,
                sessions,
                responders: (0..connections).map(|_| Responder::default()).collect(),
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
            }
        })
        .collect()
}

impl World<'_> {
    /// The connection's reader thread: the request goes through the connection's real
    /// `Session` as it arrives. A Prefetch is queued for the senders at once; anything with a
    /// response waits for the responder, in order, until it is due.
    pub(super) fn at_server(&mut self, shard: usize, conn: Conn, req: Request) {
        let c = conn.index(self.cfg.backends);
        let now = self.now;
        let stream_rng = &mut self.stream_rng;
        let sh = &mut self.shards[shard];
        // What a dropped Prefetch asked for, for the trace (`route` takes the request).
        let dropped = match &req {
            Request::Prefetch {
                first_blkno,
                nblocks,
                ..
            } => (u64::from(*first_blkno), u64::from(*nblocks)),
            _ => (0, 0),
        };
        let routed = sh.sessions[c].route(req, now, &sh.stats, || next_stream_id(stream_rng));
        let (first, n, pushed) = match routed {
            Routed::Prefetch {
                dest,
                hdr,
                rel,
                first_blkno,
                nblocks,
                due_ns,
            } => {
                let n = u32::from(nblocks);
                let pushed = sh.sched.push(dest, hdr, rel, first_blkno, n, due_ns);
                (first_blkno, nblocks, pushed.is_ok())
            }
            // No target registered on this connection: the session counted it, and nothing
            // is answered, as `conn.rs` does. A simulated connection never reconnects, so
            // its compute sent a Prefetch before its PrefetchTarget: a registration bug.
            Routed::Dropped => {
                let (first, n) = dropped;
                self.rec(Kind::PrefetchWithoutTarget, shard as u64, first, n);
                let msg = format!(
                    "{conn:?} sent shard {shard} a Prefetch of {n} pages from block {first} \
                     before any PrefetchTarget"
                );
                return self.violate(ViolationKind::Liveness, msg);
            }
            Routed::Respond(work) => {
                let r = &mut sh.responders[c];
                let due = work.due_ns().max(r.busy_until);
                r.busy_until = due;
                self.schedule(due, Ev::Respond { shard, conn, work });
                return;
            }
        };
        let (shard64, first64, n64) = (shard as u64, u64::from(first), u64::from(n));
        if pushed {
            self.rec(Kind::PrefetchQueued, shard64, first64, n64);
            self.wake_one_sender(shard);
        } else {
            self.report.prefetch_overflow_pages += n64;
            self.rec(Kind::PrefetchOverflow, shard64, first64, n64);
        }
    }

    /// The responder's turn for `work` (it is due): answered unless the responder is blocked
    /// on an earlier request's WAL wait.
    pub(super) fn respond(&mut self, shard: usize, conn: Conn, work: Work) {
        let r = &mut self.shards[shard].responders[conn.index(self.cfg.backends)];
        if r.blocked.is_some() {
            r.held.push_back(work);
            return;
        }
        self.answer(shard, conn, work);
    }

    /// A blocked responder's wake-up: WAL advanced (a PutPage) or its wait's deadline came.
    pub(super) fn wal_check(&mut self, shard: usize, conn: Conn) {
        let c = conn.index(self.cfg.backends);
        if let Some(work) = self.shards[shard].responders[c].blocked.take() {
            self.answer(shard, conn, work);
        }
    }

    /// `Work::answer` at `now`: the response goes back over TCP, and the requests held behind
    /// it get their turn; or the responder blocks until WAL reaches the LSN or the deadline.
    fn answer(&mut self, shard: usize, conn: Conn, mut work: Work) {
        let c = conn.index(self.cfg.backends);
        let now = self.now;
        let sh = &mut self.shards[shard];
        let sched = &mut sh.sched;
        let answer = work.answer(
            &sh.store,
            &sh.stats,
            now,
            &mut self.page,
            &mut self.frame,
            |addr, tag| sched.on_get_page(addr, tag),
        );
        match answer {
            Answer::Ready => {
                self.deliver(shard, conn, work.request());
                let held = std::mem::take(&mut self.shards[shard].responders[c].held);
                for w in held {
                    self.respond(shard, conn, w);
                }
            }
            Answer::WaitForWal { deadline_ns, .. } => {
                let first_wait = work.wal_wait_since_ns().is_some_and(|t| t == now);
                self.shards[shard].responders[c].blocked = Some(work);
                if first_wait {
                    self.schedule(deadline_ns, Ev::WalCheck { shard, conn });
                }
            }
        }
    }

    /// The response in `self.frame`, decoded, to the client that sent `req` (`None`: the answer
    /// to a PrefetchTarget).
    fn deliver(&mut self, shard: usize, conn: Conn, req: Option<&Request>) {
        let response = match Response::decode(&self.frame) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("shard {shard}: undecodable response: {e}");
                return self.violate(ViolationKind::Liveness, msg);
            }
        };
        match (req, response) {
            (Some(Request::GetPage { rel, blkno, .. }), response) => {
                let tag = rel.block(*blkno);
                let result = match response {
                    Response::GetPage { page, .. } => Ok(page),
                    Response::Error { message, .. } => Err(message),
                    other => Err(format!("unexpected response {other:?}")),
                };
                let lsn = result.as_ref().map_or(0, |p| page_lsn(p));
                self.rec(Kind::GetPageServed, shard as u64, tag_key(&tag), lsn);
                self.send_to_client(conn, shard, ToClient::Page { tag, result });
            }
            (
                Some(Request::PutPage { .. }),
                Response::PutPage {
                    rel, blkno, lsn, ..
                },
            ) => self.put_applied(shard, conn, rel.block(blkno), lsn),
            (None, Response::PrefetchTarget { .. }) => {
                self.send_to_client(conn, shard, ToClient::TargetSet { shard })
            }
            // Only prewarm asks for a priority, right after its PrefetchTarget on the same
            // connection: the reader applied it on arrival, before any of the run's prefetches,
            // and the run starts on the target's answer, which comes just before this one.
            (None, Response::PrefetchPriority { .. }) => {}
            (_, other) => {
                let msg = format!("shard {shard}: request {req:?} failed: {other:?}");
                self.violate(ViolationKind::Liveness, msg);
            }
        }
    }

    /// A PutPage the owning shard applied: every other shard applies it too (each ingests the
    /// whole WAL stream, as Neon's shards do, so each one's last-record LSN covers every LSN
    /// the compute can name; only the owner is ever asked for this page). Responders waiting
    /// for WAL are woken, and the version joins the model.
    fn put_applied(&mut self, shard: usize, conn: Conn, tag: BufferTag, lsn: u64) {
        let page = synthetic_page(tag, lsn);
        for s in (0..self.shards.len()).filter(|s| *s != shard) {
            if let Err(e) = self.shards[s].store.put_page(tag, lsn, &page) {
                let msg = format!("PutPage {tag}@{lsn} on shard {s}: {e}");
                return self.violate(ViolationKind::Liveness, msg);
            }
        }
        for s in 0..self.shards.len() {
            for c in 0..self.shards[s].responders.len() {
                if self.shards[s].responders[c].blocked.is_some() {
                    let conn = Conn::from_index(c, self.cfg.backends);
                    self.schedule(self.now, Ev::WalCheck { shard: s, conn });
                }
            }
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

    /// One iteration of `udp_sender::send_loop`: the real decision step, then the batch (or
    /// the sleep it asks for) in virtual time.
    pub(super) fn sender_run(&mut self, shard: usize, thread: usize) {
        let now = self.now;
        let sh = &mut self.shards[shard];
        let step = sh.sched.next_send(now, &mut sh.jobs);
        let wake_at = match step {
            SendStep::Send(_) => {
                let jobs = std::mem::take(&mut self.shards[shard].jobs);
                let sent = self.send_jobs(shard, thread, &jobs);
                self.shards[shard].jobs = jobs;
                // The batch costs sender CPU (reading and sealing each page).
                Some(now + self.cfg.send_cost_ns * sent.max(1))
            }
            SendStep::Sleep { until_ns } => Some(until_ns),
            // Sleeps until an enqueue notifies it. (The real thread also wakes every
            // `IDLE_WAIT` to check for shutdown; that changes nothing here.)
            SendStep::Idle => None,
        };
        let th = &mut self.shards[shard].senders[thread];
        th.token += 1;
        let token = th.token;
        if !matches!(step, SendStep::Send(_)) {
            th.state = SenderState::Sleeping;
        }
        if let Some(at) = wake_at {
            self.schedule(
                at,
                Ev::SenderWake {
                    shard,
                    thread,
                    token,
                },
            );
        }
    }

    /// Seals and sends one batch through the thread's drop filter; returns how many datagrams
    /// went out.
    fn send_jobs(&mut self, shard: usize, thread: usize, jobs: &[PageJob]) -> u64 {
        let now = self.now;
        let store = self.shards[shard].store.clone();
        // The real sender's turn after `next_batch`; what it did to each job is then put on
        // the simulated wire (and in the trace) in the same order.
        let mut outcomes = Vec::with_capacity(jobs.len());
        // One stream per batch: each sealed page is its datagrams (fragments) back to back.
        let (fragments, len) = jobs.first().map_or((1, 0), |j| {
            (
                usize::from(j.key.datagrams_per_page()),
                j.key.fragment_len(),
            )
        });
        let sealed = seal_batch(
            &store,
            jobs,
            &mut self.shards[shard].senders[thread].filter,
            || now,
            &mut self.page,
            &mut self.datagrams,
            |job, outcome| outcomes.push((job.tag, outcome)),
        );
        for (tag, outcome) in outcomes {
            match outcome {
                JobOutcome::Dropped => self.report.faults.sender_dropped += 1,
                JobOutcome::Sealed { page_lsn } => {
                    self.report.datagrams += 1;
                    self.rec(Kind::Sent, shard as u64, tag_key(&tag), page_lsn);
                }
                JobOutcome::Skipped(reason) => {
                    match reason {
                        SkipReason::NotReady => self.report.seal_not_ready += 1,
                        SkipReason::Failed => self.report.seal_failed += 1,
                    }
                    self.rec(
                        Kind::SealSkipped,
                        shard as u64,
                        tag_key(&tag),
                        reason as u64,
                    );
                }
            }
        }
        // On the wire in the sender's order (`batch_datagram`: interleaved when pages are split).
        let flow = self.shards[shard].senders[thread].flow;
        // A batch has one destination (`PrefetchScheduler::next_batch`): the daemon's port or
        // a backend's own.
        let port = jobs.first().map_or(COMPUTE_ADDR.1, |j| j.addr.port());
        for d in 0..sealed * fragments {
            let (page, piece) = batch_datagram(d, sealed, fragments);
            let bytes = self.datagrams[page][piece * len..][..len].to_vec();
            self.send_udp(shard, bytes, flow, port);
        }
        sealed as u64
    }
}
