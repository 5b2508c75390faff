//! Sans-IO ingest: what a worker does with one received datagram. The daemon's socket loops and
//! the simulator both call this; it reads no clock (the caller passes `now`) and opens no socket.

use crate::datagram::{DatagramHeader, DatagramKey, DropReason, Opener, HEADER_LEN, TAG_LEN};
use crate::metrics::ThreadMetrics;
use lfc::{InstallOutcome, Lfc, Reservation, PAGE_SIZE};

/// The verdict on one datagram: installed, or dropped for exactly one reason.
pub type Verdict = Result<DatagramHeader, DropReason>;

fn install_verdict(hdr: DatagramHeader, outcome: InstallOutcome) -> Verdict {
    match outcome {
        InstallOutcome::Installed => Ok(hdr),
        InstallOutcome::Stale => Err(DropReason::Stale),
        InstallOutcome::AlreadyPresent => Err(DropReason::AlreadyPresent),
        // A bucket held past the wait limit is, for the datagram, the same as no room: the page
        // is not cached and a reader falls back to TCP.
        InstallOutcome::NoRoom | InstallOutcome::Busy => Err(DropReason::NoRoom),
    }
}

/// What the kernel reported for one datagram received into a slot, with copies of the header
/// and tag regions.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    /// MSG_TRUNC: the datagram was longer than the slot.
    pub truncated: bool,
    pub header: [u8; HEADER_LEN],
    pub tag: [u8; TAG_LEN],
}

/// Validates and installs datagrams into one LFC under one key. One per worker thread: it
/// keeps the thread's stream keys (`Opener`) and a page buffer for the copy path.
pub struct Ingest<'a> {
    lfc: &'a Lfc,
    opener: Opener,
    scratch: Box<[u8; PAGE_SIZE]>,
}

impl<'a> Ingest<'a> {
    pub fn new(lfc: &'a Lfc) -> Self {
        Ingest {
            opener: DatagramKey::new(lfc.key_id(), lfc.key()).opener(),
            lfc,
            scratch: Box::new([0u8; PAGE_SIZE]),
        }
    }

    pub fn key(&self) -> &DatagramKey {
        self.opener.key()
    }

    /// A datagram was received straight into `slot` (its page region) with its header and tag in
    /// `received`. The page is decrypted in the slot and the slot published when the datagram
    /// authenticates and the install rules accept it; otherwise nothing of the datagram becomes
    /// visible and the slot comes back still reserved, for the caller to post again. Handing it
    /// back is what keeps junk traffic (forged, corrupt, duplicate, stale) from evicting cached
    /// pages: a worker that freed the slot would claim a new frame, through CLOCK, for every
    /// datagram it turns away.
    pub fn complete(
        &mut self,
        mut slot: Reservation<'a>,
        received: &Received,
        now_wall_ns: u64,
        metrics: &ThreadMetrics,
    ) -> (Verdict, Option<Reservation<'a>>) {
        let opener = &mut self.opener;
        let opened = slot.with_page_mut(|page| {
            opener.open(
                received.len,
                received.truncated,
                &received.header,
                page,
                &received.tag,
            )
        });
        let (verdict, back) = match opened {
            Ok(hdr) => match slot.try_publish(&hdr.tag, hdr.not_modified_since) {
                Ok(()) => (Ok(hdr), None),
                Err(rejected) => (install_verdict(hdr, rejected.outcome), Some(rejected.slot)),
            },
            Err(reason) => (Err(reason), Some(slot)),
        };
        metrics.record(&verdict, now_wall_ns);
        (verdict, back)
    }

    /// Validates a datagram held in one buffer and installs its page by copy (the simulator,
    /// and any path without zero-copy receive).
    pub fn offer(&mut self, bytes: &[u8], now_wall_ns: u64, metrics: &ThreadMetrics) -> Verdict {
        let page = &mut self.scratch;
        let verdict = self.opener.open_bytes(bytes, page).and_then(|hdr| {
            install_verdict(
                hdr,
                self.lfc
                    .install_prefetched(&hdr.tag, hdr.not_modified_since, page),
            )
        });
        metrics.record(&verdict, now_wall_ns);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datagram::DATAGRAM_LEN;
    use lfc::RelTag;

    /// Receives `bytes` into `slot` the way the scatter iovecs do: header, page region, tag.
    fn receive_into(slot: &mut Reservation<'_>, bytes: &[u8; DATAGRAM_LEN]) -> Received {
        let page: &[u8; PAGE_SIZE] = bytes[HEADER_LEN..HEADER_LEN + PAGE_SIZE]
            .try_into()
            .unwrap();
        slot.fill_from(page);
        Received {
            len: DATAGRAM_LEN,
            truncated: false,
            header: bytes[..HEADER_LEN].try_into().unwrap(),
            tag: bytes[HEADER_LEN + PAGE_SIZE..].try_into().unwrap(),
        }
    }

    #[test]
    fn turned_away_datagrams_keep_their_slot_and_evict_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let lfc = Lfc::create(dir.path().join("lfc"), 16).unwrap();
        let mut ingest = Ingest::new(&lfc);
        let metrics = ThreadMetrics::default();
        let hdr = DatagramHeader {
            key_id: lfc.key_id(),
            reqid: 1,
            request_lsn: u64::MAX,
            not_modified_since: 5,
            tag: RelTag::new(1663, 5, 16384, 0).block(3),
            sent_at_ns: 0,
        };
        let mut valid = Box::new([0u8; DATAGRAM_LEN]);
        ingest
            .key()
            .stream([3; 16])
            .seal(&hdr, &[0x5A; PAGE_SIZE], &mut valid)
            .unwrap();
        let mut forged = valid.clone();
        forged[DATAGRAM_LEN - 1] ^= 1; // not the stream's token
        let mut corrupt = valid.clone();
        corrupt[HEADER_LEN + 100] ^= 1;

        let mut slot = lfc.reserve().unwrap();
        let received = receive_into(&mut slot, &valid);
        let (verdict, back) = ingest.complete(slot, &received, 0, &metrics);
        assert_eq!(verdict, Ok(hdr));
        assert!(back.is_none(), "a published slot is spent");

        // A forged copy, a corrupt one, then a duplicate: each hands the same slot back, still
        // reserved.
        let mut slot = lfc.reserve().unwrap();
        let frame = slot.frame();
        for (bytes, reason) in [
            (&forged, DropReason::BadMac),
            (&corrupt, DropReason::BadChecksum),
            (&valid, DropReason::AlreadyPresent),
        ] {
            let received = receive_into(&mut slot, bytes);
            let (verdict, back) = ingest.complete(slot, &received, 0, &metrics);
            assert_eq!(verdict, Err(reason));
            slot = back.expect("a turned-away slot comes back");
            assert_eq!(slot.frame(), frame);
        }
        let s = lfc.stats();
        assert_eq!((s.used_pages, s.busy_pages, s.evictions), (1, 1, 0));
        slot.abandon();
        assert_eq!(lfc.stats().busy_pages, 0);
    }
}
