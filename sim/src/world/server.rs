//! The page-server shards: `pageserver::udp_sender::send_loop` (one iteration per
//! `sender_run`, in virtual time: the real `PrefetchScheduler::next_batch`, then the real
//! `seal_batch`, with the real `SEND_BATCH` and `IDLE_WAIT`) and the
//! Prefetch/GetPage/PutPage/PrefetchTarget arms of `pageserver::conn::handle` (`serve`), over
//! a real `PageStore`. It mirrors the loop and the connection handler around those cores, and
//! copies the handler's constants (ARCHITECTURE §10).
//!
//! Owns: each shard's store, scheduler and sender threads, the per-connection responder's
//! ordering, and the versions it applies (recorded in the version model). Puts datagrams on the
//! wire only through `net` and answers only over TCP; touches no worker or backend, and of the
//! LFC reads only its key (what PrefetchTarget hands the server).

use super::check::ViolationKind;
use super::daemon::COMPUTE_ADDR;
use super::net::{Conn, ToClient, ToServer};
use super::{tag_key, Ev, World};
use crate::config::{LinkFaults, SimConfig};
use crate::rng::Rng;
use crate::trace::Kind;
use lfc::{BufferTag, Lfc, RelTag, PAGE_SIZE};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use udp_prefetch::pageserver::prefetch::{
    seal_batch, Destination, DropFilter, JobOutcome, Next, PageJob, PrefetchScheduler, SkipReason,
};
use udp_prefetch::pageserver::source::PageSource;
use udp_prefetch::pageserver::store::PageStore;
use udp_prefetch::pageserver::udp_sender::{IDLE_WAIT, SEND_BATCH};
use udp_prefetch::protocol::page::{page_lsn, synthetic_page};
use udp_prefetch::protocol::pagestream::Header;
use workers::datagram::DatagramKey;

/// The page server's bounded wait for WAL (`lsn_wait_timeout`), and how often the model
/// re-checks while waiting.
const LSN_WAIT_TIMEOUT_NS: u64 = 1_000_000_000;
const LSN_RECHECK_NS: u64 = 100_000;

/// Versions the page store keeps (every write of a run fits).
const MAX_VERSIONS: usize = 1 << 16;

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

pub(super) struct Shard {
    pub(super) store: Arc<PageStore>,
    pub(super) sched: PrefetchScheduler,
    pub(super) senders: Vec<SenderThread>,
    pub(super) link: LinkFaults,
    pub(super) in_flight: usize,
    pub(super) jobs: Vec<PageJob>,
}

/// Where the simulated page servers send prefetched pages: the compute's port, sealed under a
/// stream of the LFC's key.
pub(super) fn compute_destination(lfc: &Lfc, seed: u64) -> Destination {
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

pub(super) fn build_shards(cfg: &SimConfig, source: &Arc<dyn PageSource>, seed: u64) -> Vec<Shard> {
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

impl World<'_> {
    /// The responder: requests of one connection are handled in order; those with a response
    /// are held until `arrived + service_delay` (`conn::respond`).
    pub(super) fn at_server(&mut self, shard: usize, conn: Conn, msg: ToServer) {
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
    pub(super) fn serve(&mut self, shard: usize, conn: Conn, msg: ToServer) {
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
                    udp_prefetch::protocol::page::format_lsn(hdr.not_modified_since)
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
    pub(super) fn sender_run(&mut self, shard: usize, thread: usize) {
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
                let at = t.min(now + IDLE_WAIT.as_nanos() as u64).max(now + 1);
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
        let store = self.shards[shard].store.clone();
        // The real sender's turn after `next_batch`; what it did to each job is then put on
        // the simulated wire (and in the trace) in the same order.
        let mut outcomes = Vec::with_capacity(jobs.len());
        let sealed = seal_batch(
            &store,
            jobs,
            &mut self.shards[shard].senders[thread].filter,
            || now,
            &mut self.page,
            &mut self.datagrams,
            |job, outcome| outcomes.push((job.tag, outcome)),
        );
        let mut next = 0;
        for (tag, outcome) in outcomes {
            match outcome {
                JobOutcome::Dropped => self.report.faults.sender_dropped += 1,
                JobOutcome::Sealed { page_lsn } => {
                    self.report.datagrams += 1;
                    self.rec(Kind::Sent, shard as u64, tag_key(&tag), page_lsn);
                    let bytes = self.datagrams[next].to_vec();
                    next += 1;
                    let flow = self.shards[shard].senders[thread].flow;
                    self.send_udp(shard, bytes, flow);
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
        sealed as u64
    }
}
