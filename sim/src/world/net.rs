//! The simulated network: TCP (reliable, in order, with latency) carrying the page-server
//! connection's messages (`Conn`; pagestream `Request`s, and `ToClient`, the decoded answers), and UDP from each shard's link to
//! the compute through the link's faults (partitions, loss, duplication, replay, reordering,
//! clogs, corruption, a bounded queue), up to the kernel's delivery into the workers' sockets
//! (SO_REUSEPORT by flow, tail drop on a full receive queue, nothing while the daemon is gone).
//!
//! Owns: the links' in-flight counts, the replay ring, the network's random stream and the
//! fault counters it bumps. It does not decide what is sent (the shards, backends, prewarm and
//! attacker do) nor what a worker does with a datagram (`worker`).

use super::daemon::COMPUTE_ADDR;
use super::{Ev, World};
use crate::trace::Kind;
use crate::workload::ForgeKind;
use lfc::BufferTag;
use udp_prefetch::protocol::page::Page;
use udp_prefetch::protocol::pagestream::Request;

/// Datagrams in flight on one link; beyond it the link drops (a router queue).
const MAX_IN_FLIGHT: usize = 8192;

/// Recorded datagrams kept for replay.
pub(super) const REPLAY_RING: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Conn {
    Backend(usize),
    Prewarm,
}

impl Conn {
    /// Backends first, then prewarm: the connection's index in per-connection tables.
    pub(super) fn index(self, backends: usize) -> usize {
        match self {
            Conn::Backend(b) => b,
            Conn::Prewarm => backends,
        }
    }

    pub(super) fn from_index(index: usize, backends: usize) -> Conn {
        if index < backends {
            Conn::Backend(index)
        } else {
            Conn::Prewarm
        }
    }
}

#[derive(Debug)]
pub(super) enum ToClient {
    Page {
        tag: BufferTag,
        result: Result<Box<Page>, String>,
    },
    PutDone,
    /// A PrefetchTarget answered by this shard.
    TargetSet {
        shard: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Server,
    Corrupted,
    Replay,
    Forged(ForgeKind),
}

#[derive(Debug)]
pub(super) struct Packet {
    pub(super) bytes: Vec<u8>,
    pub(super) origin: Origin,
    /// Source 4-tuple stand-in: SO_REUSEPORT picks the worker by it.
    pub(super) flow: u64,
    /// The compute's UDP port it is sent to: the daemon's, or a backend's own socket's.
    pub(super) port: u16,
}

impl World<'_> {
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

    pub(super) fn send_to_server(&mut self, conn: Conn, shard: usize, req: Request) {
        self.tcp_send(conn, shard, true, Ev::AtServer { shard, conn, req });
    }

    pub(super) fn send_to_client(&mut self, conn: Conn, shard: usize, msg: ToClient) {
        self.tcp_send(conn, shard, false, Ev::AtClient { conn, msg });
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
    pub(super) fn send_udp(&mut self, shard: usize, bytes: Vec<u8>, flow: u64, port: u16) {
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
            self.send_udp_copy(shard, &bytes, (flow, port), clog_end);
        }
        if self.net_rng.chance(replay) {
            // Recorded on the way and re-delivered much later (a replaying middlebox).
            let later = now + self.net_rng.range(1_000_000, 50_000_000);
            self.report.faults.replayed += 1;
            self.inject(bytes, Origin::Replay, (flow, port), later);
        }
    }

    /// One copy of a datagram across the link: latency, jitter, reordering, a clog until
    /// `clog_end`, corruption; then it arrives, unless the link already holds its maximum.
    fn send_udp_copy(
        &mut self,
        shard: usize,
        bytes: &[u8],
        (flow, port): (u64, u16),
        clog_end: Option<u64>,
    ) {
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
                    port,
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
    pub(super) fn inject(
        &mut self,
        bytes: Vec<u8>,
        origin: Origin,
        (flow, port): (u64, u16),
        at: u64,
    ) {
        self.injected += 1;
        self.schedule(
            at,
            Ev::UdpArrive {
                packet: Packet {
                    bytes,
                    origin,
                    flow,
                    port,
                },
            },
        );
    }

    /// The kernel: SO_REUSEPORT picks a socket by flow; a full receive buffer drops the tail.
    pub(super) fn udp_arrive(&mut self, packet: Packet) {
        if matches!(packet.origin, Origin::Server | Origin::Corrupted) {
            let shard = (packet.flow >> 60) as usize;
            self.shards[shard].in_flight -= 1;
        }
        if packet.port != COMPUTE_ADDR.1 {
            // A backend's own socket: there whatever the daemon does.
            return self.own_arrive(packet);
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
}
