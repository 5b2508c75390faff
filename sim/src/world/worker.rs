//! The worker nodes: the daemon's own slot bookkeeping, `workers::pump::SlotBook` (frames
//! posted as receive slots, `Ingest::complete`, turned-away frames posted again), behind a
//! simulated socket that scatters each datagram into the oldest posted slot as `recvmmsg`
//! does; or the copy path `Ingest::offer`; over the real `Lfc`. A paused daemon's workers stop
//! and a killed one's lose what their sockets held.
//!
//! Owns: each worker's socket queue, posted slots and metrics, and the accounting of every
//! delivered datagram. Decides nothing ingest decides; sends nothing.

use super::check::ViolationKind;
use super::net::{Origin, Packet};
use super::{tag_key, Ev, World};
use crate::config::SimConfig;
use crate::trace::Kind;
use lfc::Lfc;
use std::collections::VecDeque;
use workers::datagram::DropReason;
use workers::ingest::{Outcome, Verdict};
use workers::metrics::ThreadMetrics;

/// The source address the copy path counts its datagrams under (the simulated network has no
/// addresses; 198.18.0.0/15 is the benchmarking range the project's own hosts use).
const SIM_SENDER: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::new(198, 18, 0, 1),
    6400,
));
use workers::pump::SlotBook;
use workers::udp::{Completion, SlotRegions};

pub(super) struct WorkerNode<'a> {
    pub(super) queue: VecDeque<Packet>,
    /// The daemon's own slot bookkeeping (`workers::pump::SlotBook`); this node stands in for
    /// the kernel that receives into the slots it posts.
    pub(super) book: SlotBook<'a>,
    /// Slots posted with the simulated socket, oldest first (epoll's `recvmmsg` fills them in
    /// that order).
    pub(super) posted: VecDeque<(u32, SlotRegions)>,
    pub(super) scheduled: bool,
    /// A `WorkerTimeout` is pending.
    pub(super) timeout_scheduled: bool,
    pub(super) metrics: ThreadMetrics,
    pub(super) delivered: u64,
    pub(super) tail_drops: u64,
    /// Per-reason verdicts as the simulator saw them, to cross-check the metrics.
    pub(super) seen: [u64; DropReason::ALL.len()],
    pub(super) seen_installed: u64,
    /// Fragments ingest kept for their page.
    pub(super) seen_held: u64,
}

impl WorkerNode<'_> {
    /// Takes every posted slot back (the daemon's `cancel_all`) and abandons their frames, as
    /// when the daemon dies or stops.
    pub(super) fn give_slots_back(&mut self) {
        for (id, _) in self.posted.drain(..) {
            self.book.release(id);
        }
        self.book.abandon_spare();
    }
}

fn verdict_code(v: &Verdict) -> u64 {
    match v {
        Ok(_) => 0,
        Err(r) => 1 + r.index() as u64,
    }
}

/// Receive slots a backend's own socket keeps posted: the real receiver's rule
/// (`own_receive::slots_for`; one in the simulated caches of tens of pages), each slot one
/// frame here (the simulated socket delivers one datagram per receive).
pub(super) fn own_slots(cfg: &SimConfig) -> usize {
    udp_prefetch::compute::backend::own_receive::slots_for(cfg.lfc_capacity_pages)
}

/// The UDP port of backend `b`'s own socket (`SimConfig::own_receivers`).
pub(super) fn own_port(b: usize) -> u16 {
    super::daemon::COMPUTE_ADDR.1 + 1 + b as u16
}

/// The daemon's workers, then one node per backend that receives its own prefetches (node
/// `cfg.workers + b` is backend `b`'s socket).
pub(super) fn build_workers<'a>(cfg: &SimConfig, lfc: &'a Lfc) -> Vec<WorkerNode<'a>> {
    let slots = |w: usize| {
        if w < cfg.workers {
            cfg.slots_per_worker
        } else {
            own_slots(cfg)
        }
    };
    (0..cfg.workers + cfg.own_receivers)
        .map(|w| WorkerNode {
            queue: VecDeque::with_capacity(cfg.rx_queue_datagrams),
            book: SlotBook::new(lfc, slots(w)),
            posted: VecDeque::with_capacity(slots(w)),
            scheduled: false,
            timeout_scheduled: false,
            metrics: ThreadMetrics::default(),
            delivered: 0,
            tail_drops: 0,
            seen: [0; DropReason::ALL.len()],
            seen_installed: 0,
            seen_held: 0,
        })
        .collect()
}

impl World<'_> {
    /// Keeps the worker's slots posted (the top of `SlotPump::step`).
    pub(super) fn refill_slots(&mut self, w: usize) {
        let worker = &mut self.workers[w];
        let posted = &mut worker.posted;
        // SAFETY: this simulated socket writes a posted slot's regions only in
        // `receive_into_slot`, for the slot it has just taken out of `posted`, and then hands
        // the slot back at once.
        let _ = unsafe {
            // One-frame slots: the simulated socket delivers datagrams one by one (no GRO).
            worker.book.post_free(|id, regions| {
                posted.push_back((id, regions[0]));
                Ok::<(), std::convert::Infallible>(())
            })
        };
    }

    pub(super) fn worker_run(&mut self, w: usize) {
        self.workers[w].scheduled = false;
        if self.workers[w].queue.is_empty() {
            return;
        }
        self.worker_run_queue(w);
        // The daemon's step clears the assembly table after each batch that emptied its
        // socket, and its receive wait times out while the table holds frames
        // (`SlotPump::step`).
        if self.workers[w].queue.is_empty()
            && !self.cfg.daemon.gone_at(self.now)
            && self.cfg.daemon.paused_until(self.now).is_none()
        {
            self.expire_assembly(w);
        }
    }

    /// A receive wait timed out (nothing came for `POLL`): the table is cleared, and the wait
    /// goes on while it still holds frames. A paused daemon does nothing; a dead one holds
    /// nothing.
    pub(super) fn worker_timeout(&mut self, w: usize) {
        self.workers[w].timeout_scheduled = false;
        if self.cfg.daemon.gone_at(self.now) {
            return;
        }
        if let Some(until) = self.cfg.daemon.paused_until(self.now) {
            self.workers[w].timeout_scheduled = true;
            self.schedule(until, Ev::WorkerTimeout(w));
            return;
        }
        self.expire_assembly(w);
    }

    /// `SlotBook::expire_assembly` (or the copy path's `Ingest`'s) now, and a timeout ahead
    /// while frames are still held.
    fn expire_assembly(&mut self, w: usize) {
        let now = self.now;
        let zero_copy = self.cfg.slots_per_worker > 0;
        let worker = &mut self.workers[w];
        let held = if zero_copy {
            worker.book.expire_assembly(|| now, &worker.metrics);
            worker.book.ingest().assembly_frames()
        } else {
            self.ingest.expire_assembly(now, &worker.metrics);
            self.ingest.assembly_frames()
        };
        if held > 0 && !worker.timeout_scheduled {
            worker.timeout_scheduled = true;
            self.schedule(
                now + workers::daemon::POLL.as_nanos() as u64,
                Ev::WorkerTimeout(w),
            );
        }
    }

    /// The body of `worker_run`: one datagram off the queue, received and ingested.
    fn worker_run_queue(&mut self, w: usize) {
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
        let outcome = if zero_copy {
            let Some(v) = self.receive_into_slot(w, &packet.bytes) else {
                return;
            };
            v
        } else {
            let outcome = self
                .ingest
                .offer(&packet.bytes, now, &self.workers[w].metrics);
            // A receive batch here is one datagram: its page's waiters are told now.
            self.ingest.announce_arrivals();
            // Counted per sender as the daemon's receive batches are (`SlotBook`), under a
            // stand-in source address: backends read the total (`Lfc::datagrams_installed`).
            if matches!(outcome, Outcome::Done(Ok(_))) {
                self.lfc.count_sender(SIM_SENDER, 1, 0);
            }
            outcome
        };
        self.account(w, &packet, &outcome);
        if !self.workers[w].queue.is_empty() {
            self.workers[w].scheduled = true;
            self.schedule(now + self.cfg.ingest_cost_ns, Ev::WorkerRun(w));
        }
    }

    /// A datagram for a backend's own socket (`packet.port`): queued, or tail-dropped on a
    /// full buffer; a backend waiting for a page wakes (its wait is on the socket). A port
    /// nobody holds drops it (ICMP port unreachable).
    pub(super) fn own_arrive(&mut self, packet: Packet) {
        let open = |b: usize| !self.backends[b].done;
        let Some(b) = (0..self.cfg.own_receivers).find(|&b| own_port(b) == packet.port && open(b))
        else {
            self.report.faults.daemon_down += 1;
            self.report.datagrams_dropped_by_faults += 1;
            self.daemon_socket_lost += 1;
            return;
        };
        let w = self.cfg.workers + b;
        let node = &mut self.workers[w];
        if node.queue.len() >= self.cfg.rx_queue_datagrams {
            self.report.faults.tail_dropped += 1;
            self.report.datagrams_dropped_by_faults += 1;
            node.tail_drops += 1;
            self.rec(Kind::TailDrop, w as u64, 0, 0);
            return;
        }
        node.queue.push_back(packet);
        self.wake_on_socket(b);
    }

    /// Backend `b` exits: what its own socket held is gone with it (counted as a socket
    /// lost, as a dead daemon's), its slots go back to the cache.
    pub(super) fn own_socket_closed(&mut self, b: usize) {
        if b >= self.cfg.own_receivers {
            return;
        }
        let w = self.cfg.workers + b;
        let n = self.workers[w].queue.len() as u64;
        self.workers[w].queue.clear();
        self.report.datagrams_dropped_by_faults += n;
        self.daemon_socket_lost += n;
        self.workers[w].give_slots_back();
    }

    /// Backend `b`'s own socket drained as `OwnReceiver::drain` does (the real `SlotBook` and
    /// `Ingest`, one datagram per slot): everything it holds while a slot can be posted, then
    /// the join table's pages given up if too old, as `SlotPump::step` does after a receive
    /// that did not fill every slot. No-op for a backend fed by the daemon.
    pub(super) fn own_drain(&mut self, b: usize) {
        if b >= self.cfg.own_receivers {
            return;
        }
        let w = self.cfg.workers + b;
        loop {
            self.refill_slots(w);
            if self.workers[w].posted.is_empty() {
                // Every frame reserved: `Step::NoSlot`, the read goes on without.
                break;
            }
            let Some(packet) = self.workers[w].queue.pop_front() else {
                break;
            };
            let Some(outcome) = self.receive_into_slot(w, &packet.bytes) else {
                break;
            };
            self.account(w, &packet, &outcome);
        }
        let now = self.now;
        let node = &mut self.workers[w];
        node.book.expire_assembly(|| now, &node.metrics);
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
        // The copy path's pages being joined die with the daemon too.
        self.ingest.abandon_assembly();
    }

    /// The zero-copy path: one datagram received into the oldest posted slot and completed by
    /// the daemon's `SlotBook` (ingest); `None` if the worker has no slot posted.
    fn receive_into_slot(&mut self, w: usize, b: &[u8]) -> Option<Outcome> {
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
        let mut verdict = None;
        let datagrams = worker
            .book
            .complete(&completion, now, &worker.metrics, |o| verdict = Some(o));
        assert_eq!(datagrams, 1, "a simulated receive holds one datagram");
        let verdict = verdict.expect("a simulated receive never fails");
        // The daemon ends each receive batch so (a batch here is one datagram): the waiters
        // of its pages are told, its counts per sender added to the LFC.
        worker.book.end_batch();
        // A slot turned away is posted again, as the daemon's next step does.
        self.refill_slots(w);
        Some(verdict)
    }

    fn account(&mut self, w: usize, packet: &Packet, outcome: &Outcome) {
        self.report.datagrams_delivered += 1;
        self.workers[w].delivered += 1;
        let Outcome::Done(verdict) = outcome else {
            // A fragment kept for its page: its page's verdict comes with its last fragment.
            self.workers[w].seen_held += 1;
            self.rec(Kind::Delivered, w as u64, 0, u64::MAX);
            if matches!(packet.origin, Origin::Corrupted | Origin::Forged(_)) {
                self.violate(
                    ViolationKind::ForgedAccepted,
                    format!("a {:?} fragment was kept by ingest", packet.origin),
                );
            }
            return;
        };
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
                if w >= self.cfg.workers {
                    self.report.own_receiver_installs += 1;
                }
                let shard = self.shard_of(&hdr.tag);
                self.report.shards[shard].datagrams_installed += 1;
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
}
