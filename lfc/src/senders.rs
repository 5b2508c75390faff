//! Datagrams per sender, in the shared file, so that `lfc stat` (another process) sees which
//! page-server shard delivered what. A sender is the UDP source address of a datagram: one
//! sender thread of one page server (each has its own port; across hosts the IP names the
//! shard).
//!
//! Owns: the sender table at `SENDERS_OFFSET` (after the arrival channels, in space that
//! version 3 left zero: an older build ignores the table, which costs it nothing but the
//! counts, and a table of zeros reads as "no sender", so the format version stays 3).
//!
//! `SENDER_SLOTS` entries of (key, installed, dropped) and an `other` entry for senders past
//! them and IPv6 senders. An entry is claimed by compare-and-swap of its key (several receive
//! threads add at once) and never given back until [`Lfc::reset_sender_counts`] (the daemon's
//! start, while it holds the one-daemon lock and no receive thread runs), so probing from the
//! key's hash and stopping at a free entry finds a sender wherever it was claimed. Counters are
//! Relaxed and for display only. Callers batch: the daemon adds a receive batch's counts per
//! sender at once (`workers::pump`), not one atomic operation per datagram.

use crate::cache::Lfc;
use crate::layout::{SENDERS_BYTES, SENDERS_OFFSET};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

/// Senders with an entry of their own; the rest count under `other`. A page server has one
/// sender per two CPUs (at most 16), so this holds a few shards' worth of senders, and a
/// daemon restart (which resets the table) makes room again.
pub const SENDER_SLOTS: usize = 64;

#[repr(C)]
struct Slot {
    /// `(IPv4 << 16 | port) + 1`; 0 is a free entry.
    key: AtomicU64,
    installed: AtomicU64,
    dropped: AtomicU64,
}

#[repr(C)]
struct SenderArea {
    slots: [Slot; SENDER_SLOTS],
    other_installed: AtomicU64,
    other_dropped: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<SenderArea>() <= SENDERS_BYTES);

/// One sender's datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderCount {
    /// The datagrams' source address.
    pub addr: SocketAddr,
    /// Datagrams whose page was installed (for a page in fragments, the one that completed
    /// it).
    pub installed: u64,
    /// Datagrams that authenticated but were not installed (stale, already present, no room,
    /// a duplicate fragment). Forged or corrupt datagrams are not counted by sender: their
    /// source is anyone's to choose.
    pub dropped: u64,
}

/// The sender table as read now (`Lfc::sender_counts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderCounts {
    /// Every sender with an entry, in address order.
    pub senders: Vec<SenderCount>,
    /// Senders past `SENDER_SLOTS`, and IPv6 senders.
    pub other_installed: u64,
    pub other_dropped: u64,
}

impl SenderCounts {
    /// Installed datagrams over all senders, `other` included.
    pub fn installed(&self) -> u64 {
        self.senders.iter().map(|s| s.installed).sum::<u64>() + self.other_installed
    }

    /// Dropped datagrams over all senders, `other` included.
    pub fn dropped(&self) -> u64 {
        self.senders.iter().map(|s| s.dropped).sum::<u64>() + self.other_dropped
    }
}

fn key_of(addr: SocketAddr) -> Option<u64> {
    match addr {
        SocketAddr::V4(a) => Some((u64::from(a.ip().to_bits()) << 16 | u64::from(a.port())) + 1),
        SocketAddr::V6(_) => None,
    }
}

fn addr_of(key: u64) -> SocketAddr {
    let k = key - 1;
    SocketAddr::from((Ipv4Addr::from_bits((k >> 16) as u32), k as u16))
}

impl Lfc {
    fn sender_area(&self) -> &SenderArea {
        self.shared(SENDERS_OFFSET as u64)
    }

    /// Adds `installed` and `dropped` datagrams from `from`.
    pub fn count_sender(&self, from: SocketAddr, installed: u64, dropped: u64) {
        let area = self.sender_area();
        let add = |i: &AtomicU64, d: &AtomicU64| {
            if installed > 0 {
                i.fetch_add(installed, Ordering::Relaxed);
            }
            if dropped > 0 {
                d.fetch_add(dropped, Ordering::Relaxed);
            }
        };
        if let Some(key) = key_of(from) {
            // Fibonacci hashing spreads the ports of one host over the table.
            let start = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % SENDER_SLOTS;
            for n in 0..SENDER_SLOTS {
                let slot = &area.slots[(start + n) % SENDER_SLOTS];
                let found = match slot.key.load(Ordering::Relaxed) {
                    0 => match slot.key.compare_exchange(
                        0,
                        key,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => key,
                        Err(other) => other,
                    },
                    k => k,
                };
                if found == key {
                    add(&slot.installed, &slot.dropped);
                    return;
                }
            }
        }
        add(&area.other_installed, &area.other_dropped);
    }

    /// Datagrams installed from every sender so far (`SenderCounts::installed`, without
    /// collecting the table): whether the daemon delivers anything at all, for a backend's read
    /// path deciding how much one missing page says.
    pub fn datagrams_installed(&self) -> u64 {
        let area = self.sender_area();
        area.slots
            .iter()
            .map(|s| s.installed.load(Ordering::Relaxed))
            .sum::<u64>()
            + area.other_installed.load(Ordering::Relaxed)
    }

    /// The sender table as it is now.
    pub fn sender_counts(&self) -> SenderCounts {
        let area = self.sender_area();
        let mut out = SenderCounts {
            other_installed: area.other_installed.load(Ordering::Relaxed),
            other_dropped: area.other_dropped.load(Ordering::Relaxed),
            ..SenderCounts::default()
        };
        for slot in &area.slots {
            let key = slot.key.load(Ordering::Relaxed);
            if key != 0 {
                out.senders.push(SenderCount {
                    addr: addr_of(key),
                    installed: slot.installed.load(Ordering::Relaxed),
                    dropped: slot.dropped.load(Ordering::Relaxed),
                });
            }
        }
        out.senders.sort_by_key(|s| s.addr);
        out
    }

    /// Empties the table. Only for the worker daemon's start, with its lock held and before
    /// its receive threads run: the table then counts what this daemon received, as its own
    /// metrics do, and senders of earlier page-server runs (other ports) give their entries
    /// back.
    pub fn reset_sender_counts(&self) {
        let area = self.sender_area();
        for slot in &area.slots {
            slot.key.store(0, Ordering::Relaxed);
            slot.installed.store(0, Ordering::Relaxed);
            slot.dropped.store(0, Ordering::Relaxed);
        }
        area.other_installed.store(0, Ordering::Relaxed);
        area.other_dropped.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(host: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, host], port))
    }

    #[test]
    fn senders_are_counted_each_up_to_the_bound_then_as_other_and_seen_by_another_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lfc");
        let lfc = Lfc::create(&path, 16).unwrap();
        assert_eq!(lfc.sender_counts(), SenderCounts::default(), "a new file");
        lfc.count_sender(v4(2, 40000), 3, 1);
        lfc.count_sender(v4(1, 40001), 1, 0);
        lfc.count_sender(v4(2, 40000), 2, 0);
        lfc.count_sender("[::1]:5".parse().unwrap(), 4, 2);
        let other = Lfc::open(&path).unwrap();
        let c = other.sender_counts();
        assert_eq!(
            c.senders,
            vec![
                SenderCount {
                    addr: v4(1, 40001),
                    installed: 1,
                    dropped: 0
                },
                SenderCount {
                    addr: v4(2, 40000),
                    installed: 5,
                    dropped: 1
                },
            ]
        );
        assert_eq!((c.other_installed, c.other_dropped), (4, 2), "IPv6");

        for port in 0..SENDER_SLOTS as u16 {
            lfc.count_sender(v4(3, port), 1, 0);
        }
        let c = other.sender_counts();
        assert_eq!(c.senders.len(), SENDER_SLOTS);
        assert_eq!(
            c.other_installed,
            4 + 2,
            "two senders past the bound, and IPv6"
        );
        assert_eq!(c.installed(), 6 + 4 + SENDER_SLOTS as u64);
        assert_eq!(lfc.datagrams_installed(), c.installed(), "summed in place");
        assert_eq!(c.dropped(), 3);
        // A sender with an entry keeps counting there when the table is full.
        lfc.count_sender(v4(2, 40000), 1, 0);
        assert_eq!(other.sender_counts().other_installed, 6);

        other.reset_sender_counts();
        assert_eq!(lfc.sender_counts(), SenderCounts::default());
        assert_eq!(lfc.datagrams_installed(), 0);
    }

    #[test]
    fn threads_claiming_entries_at_once_lose_no_count_and_share_no_entry() {
        let dir = tempfile::tempdir().unwrap();
        let lfc = Lfc::create(dir.path().join("lfc"), 16).unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for round in 0..200u64 {
                        for port in 0..8u16 {
                            lfc.count_sender(v4(7, port), 1, round % 2);
                        }
                    }
                });
            }
        });
        let c = lfc.sender_counts();
        assert_eq!(c.senders.len(), 8, "{c:?}");
        for s in &c.senders {
            assert_eq!((s.installed, s.dropped), (800, 400), "{s:?}");
        }
        assert_eq!(c.other_installed, 0);
    }
}
