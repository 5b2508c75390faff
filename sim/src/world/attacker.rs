//! The attacker: forged datagrams at the compute's port (random bytes, a wrong key, a wrong key
//! id, a right-shaped plaintext page), at the profile's rate and in the workload's bursts, and
//! the workload's bursts of replayed datagrams the network recorded.
//!
//! Owns: its random stream and the count of forgeries sent. Injects only through `net`; reads
//! no page server and no backend.

use super::daemon::COMPUTE_ADDR;
use super::net::Origin;
use super::{tag_key, Ev, World};
use crate::trace::Kind;
use crate::workload::ForgeKind;
use lfc::PAGE_SIZE;
use udp_prefetch::pageserver::source::Synthetic;
use udp_prefetch::protocol::page::{synthetic_page, SYNTHETIC_BASE_LSN};
use udp_prefetch::protocol::pagestream::LATEST_LSN;
use workers::datagram::{DatagramHeader, DatagramKey, DATAGRAM_LEN, HEADER_LEN};

/// Most forged datagrams one run sends.
const MAX_FORGED: u64 = 20_000;

impl World<'_> {
    pub(super) fn attack_gap(&mut self) -> u64 {
        let mean_ns = 1e6 / self.cfg.forged_per_ms.max(1e-9);
        (self.attack_rng.exp(mean_ns) as u64).max(1)
    }

    pub(super) fn attacker_tick(&mut self) {
        if self.actors_done() || self.forged_sent >= MAX_FORGED {
            return;
        }
        let kind = ForgeKind::ALL[self.attack_rng.below(4) as usize];
        self.forge(kind);
        let gap = self.attack_gap();
        self.schedule(self.now + gap, Ev::AttackerTick);
    }

    /// One forged datagram, aimed at a real page so that an accepted forgery would be read.
    pub(super) fn forge(&mut self, kind: ForgeKind) {
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
                // A well-formed header (with a live stream id of the server: the first
                // backend's on shard 0, so the forgery meets a cached stream key) over a
                // plaintext page and a random tag.
                out_arr[..HEADER_LEN].copy_from_slice(&hdr.encode());
                let live = self.shards[0].sessions[0].target();
                let stream_id = live.map(|d| d.key.stream_id()).unwrap_or_default();
                out_arr[64..80].copy_from_slice(&stream_id);
                out_arr[HEADER_LEN..HEADER_LEN + PAGE_SIZE].copy_from_slice(&page[..]);
                for b in out_arr[HEADER_LEN + PAGE_SIZE..].iter_mut() {
                    *b = r.next_u64() as u8;
                }
            }
        }
        let flow = 0xA77A_0000 | r.below(1 << 16);
        self.rec(Kind::Forged, kind as u64, tag_key(&tag), out.len() as u64);
        self.inject(out, Origin::Forged(kind), (flow, COMPUTE_ADDR.1), self.now);
    }

    /// A burst of forgeries from the workload (`Op::Forge`).
    pub(super) fn forge_burst(&mut self, count: u8, kind: ForgeKind) {
        for _ in 0..count {
            self.forge(kind);
        }
    }

    /// A burst of recorded datagrams delivered again (`Op::Replay`), from the network's replay
    /// ring.
    pub(super) fn replay_burst(&mut self, count: u8) {
        for i in 0..count as usize {
            if self.replay_ring.is_empty() {
                break;
            }
            let idx = (self.net_rng.below(self.replay_ring.len() as u64) as usize + i)
                % self.replay_ring.len();
            let bytes = self.replay_ring[idx].clone();
            self.report.faults.replayed += 1;
            self.rec(Kind::Replayed, idx as u64, 0, 0);
            self.inject(
                bytes,
                Origin::Replay,
                (0x5EED_0000 + i as u64, COMPUTE_ADDR.1),
                self.now,
            );
        }
    }
}
