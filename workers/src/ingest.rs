//! Sans-IO ingest: what a worker does with one received datagram. The daemon's socket loops and
//! the simulator both call this; it reads no clock (the caller passes `now`) and opens no socket.

use crate::datagram::{
    validate, validate_bytes, DatagramHeader, DatagramKey, DropReason, HEADER_LEN, TAG_LEN,
};
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

/// Validates and installs datagrams into one LFC under one key.
pub struct Ingest<'a> {
    lfc: &'a Lfc,
    key: DatagramKey,
}

impl<'a> Ingest<'a> {
    pub fn new(lfc: &'a Lfc) -> Self {
        Ingest {
            key: DatagramKey::new(lfc.key_id(), lfc.key()),
            lfc,
        }
    }

    pub fn key(&self) -> &DatagramKey {
        &self.key
    }

    /// A datagram was received straight into `slot` (its page region) with its header and tag in
    /// `received`. Publishes the slot when the datagram is valid, abandons it otherwise:
    /// nothing of an invalid datagram ever becomes visible in the cache.
    pub fn complete(
        &self,
        slot: Reservation<'a>,
        received: &Received,
        now_wall_ns: u64,
        metrics: &ThreadMetrics,
    ) -> Verdict {
        // SAFETY: a reserved slot is owned by this reservation alone until it is published or
        // abandoned: no other thread or process writes it, and readers never see it, so a
        // shared view of its bytes for the duration of validation does not alias a writer.
        let page: &[u8; PAGE_SIZE] = unsafe { &*(slot.as_mut_ptr() as *const [u8; PAGE_SIZE]) };
        let verdict = match validate(
            &self.key,
            received.len,
            received.truncated,
            &received.header,
            page,
            &received.tag,
        ) {
            Ok(hdr) => install_verdict(hdr, slot.publish(&hdr.tag, hdr.not_modified_since)),
            Err(reason) => {
                slot.abandon();
                Err(reason)
            }
        };
        metrics.record(&verdict, now_wall_ns);
        verdict
    }

    /// Validates a datagram held in one buffer and installs its page by copy (the simulator,
    /// and any path without zero-copy receive).
    pub fn offer(&self, bytes: &[u8], now_wall_ns: u64, metrics: &ThreadMetrics) -> Verdict {
        let verdict = validate_bytes(&self.key, bytes).and_then(|hdr| {
            let page: &[u8; PAGE_SIZE] = bytes[HEADER_LEN..HEADER_LEN + PAGE_SIZE]
                .try_into()
                .expect("length validated");
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
