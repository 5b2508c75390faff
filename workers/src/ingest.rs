//! Sans-IO ingest: what a worker does with one received datagram. The daemon's socket loops and
//! the simulator both call this; it reads no clock (the caller passes `now`) and opens no socket.
//!
//! A whole-page datagram is verified and published in the frame it was received into. A
//! fragment is verified there too, then joined with its siblings in the thread's bounded
//! assembly table (`reassembly`, whose docs say why that takes one copy of the fragment), and
//! its page published when the last fragment arrives.
//!
//! Owns: `Ingest`, one per worker thread (its `Opener` under the cache's key, its assembly table, a
//! page buffer for the copy path), and the rule that every datagram ends in exactly one `Outcome`.
//! Changes the LFC only by publishing a frame or by `install_prefetched`, whose install rule
//! decides what is stale or present; knows no slot, socket or thread (`pump` and `daemon` do).

mod reassembly;

pub use reassembly::{max_assembly_frames, ASSEMBLY_ENTRIES, ASSEMBLY_TIMEOUT_NS};

use crate::datagram::{
    DatagramHeader, DatagramKey, DropReason, Opened, Opener, HEADER_LEN, TAG_LEN,
};
use crate::metrics::ThreadMetrics;
use lfc::{ArrivalBatch, InstallOutcome, Lfc, Reservation, PAGE_SIZE};
use reassembly::{Added, Assembly};

/// The verdict on one datagram: installed, or dropped for exactly one reason.
pub type Verdict = Result<DatagramHeader, DropReason>;

/// What became of one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its verdict: a whole page installed (or the fragment that completed a page), or the
    /// datagram dropped for one reason.
    Done(Verdict),
    /// A fragment that authenticated, kept until its page is whole.
    Held,
}

impl Outcome {
    /// The verdict, `None` for a held fragment.
    pub fn verdict(&self) -> Option<&Verdict> {
        match self {
            Outcome::Done(v) => Some(v),
            Outcome::Held => None,
        }
    }
}

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
/// keeps the thread's stream keys (`Opener`), its pages being joined from fragments, a page
/// buffer for the copy path, and the arrival notifications of the pages it installed, which
/// wait for [`announce_arrivals`](Self::announce_arrivals): the caller makes them once per
/// receive batch, after its last install.
pub struct Ingest<'a> {
    lfc: &'a Lfc,
    opener: Opener,
    assembly: Assembly<'a>,
    scratch: Box<[u8; PAGE_SIZE]>,
    arrivals: ArrivalBatch,
}

impl<'a> Ingest<'a> {
    pub fn new(lfc: &'a Lfc) -> Self {
        Ingest {
            opener: DatagramKey::new(lfc.key_id(), lfc.key()).opener(),
            assembly: Assembly::new(lfc.capacity_pages()),
            lfc,
            scratch: Box::new([0u8; PAGE_SIZE]),
            arrivals: ArrivalBatch::default(),
        }
    }

    /// Wakes the readers waiting for the pages installed since the last call (`Lfc::announce`).
    pub fn announce_arrivals(&mut self) {
        self.lfc.announce(&mut self.arrivals);
    }

    pub fn key(&self) -> &DatagramKey {
        self.opener.key()
    }

    /// Pages being joined from fragments now.
    pub fn pages_in_assembly(&self) -> usize {
        self.assembly.in_progress()
    }

    /// Frames the assembly table holds reserved (pages being joined and spares): at most
    /// [`max_assembly_frames`] of the cache's capacity.
    pub fn assembly_frames(&self) -> usize {
        self.assembly.frames()
    }

    /// Gives up the pages not whole in time and, when no fragment has come for
    /// [`ASSEMBLY_TIMEOUT_NS`], returns the assembly table's spare frames to the cache: call it
    /// whenever the worker wakes without datagrams and after each batch that took everything
    /// its socket held — not while more are queued, whose pieces may complete the pages (each
    /// give-up is counted as `DropReason::Incomplete`).
    pub fn expire_assembly(&mut self, now_wall_ns: u64, metrics: &ThreadMetrics) {
        metrics.record_incomplete(self.assembly.expire_idle(now_wall_ns));
    }

    /// Abandons the frames of the pages being joined (the daemon stops): none is published.
    pub fn abandon_assembly(&mut self) {
        self.assembly.abandon_all();
    }

    /// A datagram was received straight into `slot` (its page region) with its header and tag in
    /// `received`. A whole page is decrypted in the slot and the slot published when the
    /// datagram authenticates and the install rules accept it; a fragment that authenticates is
    /// copied into its page's frame in the assembly table, and that page published when it is
    /// whole. Otherwise nothing of the datagram becomes visible, and the slot comes back still
    /// reserved (always, for a fragment), for the caller to post again. Handing it back is
    /// what keeps junk traffic (forged, corrupt, duplicate, stale) from evicting cached pages:
    /// a worker that freed the slot would claim a new frame, through CLOCK, for every datagram
    /// it turns away.
    pub fn complete(
        &mut self,
        mut slot: Reservation<'a>,
        received: &Received,
        now_wall_ns: u64,
        metrics: &ThreadMetrics,
    ) -> (Outcome, Option<Reservation<'a>>) {
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
        match opened {
            Ok(o) if o.piece.count == 1 => {
                let (verdict, back) = match slot.try_publish_held(
                    &o.hdr.tag,
                    o.hdr.not_modified_since,
                    &mut self.arrivals,
                ) {
                    Ok(()) => (Ok(o.hdr), None),
                    Err(rejected) => (
                        install_verdict(o.hdr, rejected.outcome),
                        Some(rejected.slot),
                    ),
                };
                metrics.record(&verdict, now_wall_ns);
                (Outcome::Done(verdict), back)
            }
            Ok(o) => {
                let (assembly, lfc, arrivals) = (&mut self.assembly, self.lfc, &mut self.arrivals);
                let outcome = slot.with_page_mut(|page| {
                    join(assembly, lfc, arrivals, &o, page, now_wall_ns, metrics)
                });
                (outcome, Some(slot))
            }
            Err(reason) => {
                let verdict = Err(reason);
                metrics.record(&verdict, now_wall_ns);
                (Outcome::Done(verdict), Some(slot))
            }
        }
    }

    /// Validates a datagram held in one buffer and installs its page by copy (the simulator,
    /// and any path without zero-copy receive); a fragment is joined as `complete` joins it.
    pub fn offer(&mut self, bytes: &[u8], now_wall_ns: u64, metrics: &ThreadMetrics) -> Outcome {
        let opened = self.opener.open_any_bytes(bytes, &mut self.scratch);
        self.install_scratch(opened, now_wall_ns, metrics)
    }

    /// [`offer`](Self::offer) for a datagram that lies whole in `bytes`, a buffer of its exact
    /// length that is the caller's to overwrite (a segment of a coalesced train inside one
    /// frame): opened where it lies (`Opener::open_in_place`), its piece joined from there
    /// without a copy into `scratch` first. At MTU 1500 that copy was 8 % of the worker's CPU.
    pub fn offer_in_place(
        &mut self,
        bytes: &mut [u8],
        now_wall_ns: u64,
        metrics: &ThreadMetrics,
    ) -> Outcome {
        let opened = self.opener.open_in_place(bytes);
        let (assembly, lfc, arrivals) = (&mut self.assembly, self.lfc, &mut self.arrivals);
        let piece = bytes.get(HEADER_LEN..).unwrap_or_default();
        install_copy(assembly, lfc, arrivals, opened, piece, now_wall_ns, metrics)
    }

    /// [`offer`](Self::offer) for a datagram of `len` bytes that is not in one buffer (a
    /// segment of a coalesced train that straddles receive regions): `gather` writes it
    /// as the scatter list of a slot would, its first [`HEADER_LEN`] bytes into the header, the
    /// next up to `PAGE_SIZE` to the front of the page, the rest (up to [`TAG_LEN`]) into the
    /// tag; `truncated` when bytes of it were lost.
    pub fn offer_gathered(
        &mut self,
        len: usize,
        truncated: bool,
        gather: impl FnOnce(&mut [u8; HEADER_LEN], &mut [u8; PAGE_SIZE], &mut [u8; TAG_LEN]),
        now_wall_ns: u64,
        metrics: &ThreadMetrics,
    ) -> Outcome {
        let mut header = [0u8; HEADER_LEN];
        let mut tag = [0u8; TAG_LEN];
        gather(&mut header, &mut self.scratch, &mut tag);
        let opened = self
            .opener
            .open(len, truncated, &header, &mut self.scratch, &tag);
        self.install_scratch(opened, now_wall_ns, metrics)
    }

    /// `install_copy` of a datagram opened into `scratch`.
    fn install_scratch(
        &mut self,
        opened: Result<Opened, DropReason>,
        now_wall_ns: u64,
        metrics: &ThreadMetrics,
    ) -> Outcome {
        let (assembly, lfc, arrivals) = (&mut self.assembly, self.lfc, &mut self.arrivals);
        install_copy(
            assembly,
            lfc,
            arrivals,
            opened,
            &self.scratch[..],
            now_wall_ns,
            metrics,
        )
    }
}

/// The copy paths' verdict on an opened datagram whose piece is at the front of `piece`: a
/// whole page (`piece` then holds it) installed by copy (announced at once), a fragment joined.
fn install_copy<'a>(
    assembly: &mut Assembly<'a>,
    lfc: &'a Lfc,
    arrivals: &mut ArrivalBatch,
    opened: Result<Opened, DropReason>,
    piece: &[u8],
    now_wall_ns: u64,
    metrics: &ThreadMetrics,
) -> Outcome {
    match opened {
        Ok(o) if o.piece.count == 1 => {
            let page: &[u8; PAGE_SIZE] = piece[..PAGE_SIZE].try_into().expect("a whole page");
            let verdict = install_verdict(
                o.hdr,
                lfc.install_prefetched(&o.hdr.tag, o.hdr.not_modified_since, page),
            );
            metrics.record(&verdict, now_wall_ns);
            Outcome::Done(verdict)
        }
        Ok(o) => join(assembly, lfc, arrivals, &o, piece, now_wall_ns, metrics),
        Err(reason) => {
            let verdict = Err(reason);
            metrics.record(&verdict, now_wall_ns);
            Outcome::Done(verdict)
        }
    }
}

/// A fragment that authenticated, its piece at the front of `piece`: into the assembly
/// table, and its page published if it is now whole.
fn join<'a>(
    assembly: &mut Assembly<'a>,
    lfc: &'a Lfc,
    arrivals: &mut ArrivalBatch,
    opened: &Opened,
    piece: &[u8],
    now_wall_ns: u64,
    metrics: &ThreadMetrics,
) -> Outcome {
    let (added, gave_up) = assembly.add(lfc, opened, piece, now_wall_ns);
    metrics.record_incomplete(gave_up);
    let verdict = match added {
        Ok(Added::Held) => {
            metrics.record_held();
            return Outcome::Held;
        }
        Ok(Added::Complete(hdr, frame, rebuilt)) => {
            if rebuilt {
                metrics.record_rebuilt();
            }
            match frame.try_publish_held(&hdr.tag, hdr.not_modified_since, arrivals) {
                Ok(()) => Ok(hdr),
                Err(rejected) => {
                    assembly.keep_frame(rejected.slot);
                    install_verdict(hdr, rejected.outcome)
                }
            }
        }
        Err(reason) => Err(reason),
    };
    metrics.record(&verdict, now_wall_ns);
    Outcome::Done(verdict)
}

impl Drop for Ingest<'_> {
    fn drop(&mut self) {
        // Pages it published are visible: their waiters are told, whatever the caller forgot.
        self.announce_arrivals();
        self.assembly.abandon_all();
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

    /// A datagram header for block `blkno` of the tests' relation, under `lfc`'s key.
    fn header(lfc: &Lfc, blkno: u32) -> DatagramHeader {
        DatagramHeader {
            key_id: lfc.key_id(),
            reqid: 1,
            request_lsn: u64::MAX,
            not_modified_since: 5,
            tag: RelTag::new(1663, 5, 16384, 0).block(blkno),
            sent_at_ns: 0,
        }
    }

    #[test]
    fn turned_away_datagrams_keep_their_slot_and_evict_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let lfc = Lfc::create(dir.path().join("lfc"), 16).unwrap();
        let mut ingest = Ingest::new(&lfc);
        let metrics = ThreadMetrics::default();
        let hdr = header(&lfc, 3);
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
        assert_eq!(verdict, Outcome::Done(Ok(hdr)));
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
            assert_eq!(verdict, Outcome::Done(Err(reason)));
            slot = back.expect("a turned-away slot comes back");
            assert_eq!(slot.frame(), frame);
        }
        let s = lfc.stats();
        assert_eq!((s.used_pages, s.busy_pages, s.evictions), (1, 1, 0));
        slot.abandon();
        assert_eq!(lfc.stats().busy_pages, 0);
    }

    fn split_page(
        lfc: &Lfc,
        stream: [u8; 16],
        blkno: u32,
        fill: u8,
    ) -> (DatagramHeader, Vec<Vec<u8>>) {
        split_pages(lfc, stream, blkno..blkno + 1, fill)
            .pop()
            .unwrap()
    }

    /// Blocks `blocks`, each split into 8 fragments and a parity piece by one stream (so their
    /// page ids follow one another, as a page server's are); block `b`'s byte `i` is
    /// `fill + (b - blocks.start)` XOR `i / 1024`.
    fn split_pages(
        lfc: &Lfc,
        stream: [u8; 16],
        blocks: std::ops::Range<u32>,
        fill: u8,
    ) -> Vec<(DatagramHeader, Vec<Vec<u8>>)> {
        use crate::datagram::SEALED_PAGE_MAX;
        let s = DatagramKey::new(lfc.key_id(), lfc.key())
            .stream(stream)
            .with_fragments(8);
        let mut out = Box::new([0u8; SEALED_PAGE_MAX]);
        blocks
            .clone()
            .map(|blkno| {
                let hdr = header(lfc, blkno);
                let mut page = [0u8; PAGE_SIZE];
                let fill = fill.wrapping_add((blkno - blocks.start) as u8);
                for (i, b) in page.iter_mut().enumerate() {
                    *b = fill ^ (i / 1024) as u8;
                }
                let n = s.seal_page(&hdr, &page, &mut out).unwrap();
                let frags = out[..n]
                    .chunks_exact(s.fragment_len())
                    .map(<[u8]>::to_vec)
                    .collect();
                (hdr, frags)
            })
            .collect()
    }

    fn page_of(lfc: &Lfc, hdr: &DatagramHeader) -> Option<[u8; PAGE_SIZE]> {
        let mut out = [0u8; PAGE_SIZE];
        lfc.lookup(&hdr.tag, &mut out).map(|_| out)
    }

    #[test]
    fn fragments_in_any_order_with_duplicates_make_one_page_published_once() {
        let dir = tempfile::tempdir().unwrap();
        let lfc = Lfc::create(dir.path().join("lfc"), 64).unwrap();
        let mut ingest = Ingest::new(&lfc);
        let m = ThreadMetrics::default();
        let (hdr, frags) = split_page(&lfc, [1; 16], 7, 0x30);
        let dup = Outcome::Done(Err(DropReason::DuplicateFragment));
        for (k, i) in [5, 0, 7, 5, 2, 1, 3, 4].into_iter().enumerate() {
            let expect = if k == 3 { dup } else { Outcome::Held };
            assert_eq!(ingest.offer(&frags[i], 10, &m), expect, "fragment {i}");
            assert!(!lfc.contains(&hdr.tag), "not before the last fragment");
        }
        assert_eq!(ingest.offer(&frags[6], 10, &m), Outcome::Done(Ok(hdr)));
        let mut want = [0u8; PAGE_SIZE];
        for (i, b) in want.iter_mut().enumerate() {
            *b = 0x30 ^ (i / 1024) as u8;
        }
        assert_eq!(page_of(&lfc, &hdr), Some(want));
        assert_eq!(ingest.pages_in_assembly(), 0);
        // The parity piece, last, and a late duplicate: the page is whole already, so they
        // start nothing.
        assert_eq!(frags.len(), 9);
        assert_eq!(ingest.offer(&frags[8], 20, &m), dup);
        assert_eq!(ingest.offer(&frags[2], 20, &m), dup);
        assert_eq!(ingest.pages_in_assembly(), 0);
        // A page missing two pieces can never be whole: given up by the timeout, once the
        // worker took what was queued — not by the next datagram, however late it is dated
        // (a worker back from a long deschedule takes the pieces queued meanwhile first).
        let (_, other) = split_page(&lfc, [2; 16], 8, 0x40);
        for f in &other[..7] {
            assert_eq!(ingest.offer(f, 30, &m), Outcome::Held);
        }
        let (_, third) = split_page(&lfc, [5; 16], 9, 0x50);
        let later = 30 + ASSEMBLY_TIMEOUT_NS;
        assert_eq!(ingest.offer(&third[0], later, &m), Outcome::Held);
        assert_eq!(m.dropped(DropReason::Incomplete), 0);
        assert_eq!(ingest.pages_in_assembly(), 2);
        ingest.expire_assembly(later, &m);
        assert_eq!(m.dropped(DropReason::Incomplete), 1);
        assert_eq!(ingest.pages_in_assembly(), 1);
        let installed = m.installed.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            (installed, m.dropped(DropReason::DuplicateFragment)),
            (1, 3)
        );
    }

    #[test]
    fn batches_interleaved_piece_by_piece_join_and_their_late_parities_start_nothing() {
        use crate::ingest::reassembly::ASSEMBLY_ENTRIES;
        let dir = tempfile::tempdir().unwrap();
        let lfc = Lfc::create(dir.path().join("lfc"), 4096).unwrap();
        let mut ingest = Ingest::new(&lfc);
        let m = ThreadMetrics::default();
        // Eight batches of 32 pages of one stream, each sent as the page server sends it: the
        // first piece of every page, then the second, ..., the parity pieces last.
        let pages = split_pages(&lfc, [3; 16], 0..256, 0x11);
        let dup = Outcome::Done(Err(DropReason::DuplicateFragment));
        for batch in pages.chunks(32) {
            for piece in 0..9 {
                for (k, (hdr, frags)) in batch.iter().enumerate() {
                    let got = ingest.offer(&frags[piece], 10, &m);
                    let want = match piece {
                        0..7 => Outcome::Held,
                        7 => Outcome::Done(Ok(*hdr)),
                        _ => dup,
                    };
                    assert_eq!(got, want, "page {k} of its batch, piece {piece}");
                }
                assert!(ingest.pages_in_assembly() <= ASSEMBLY_ENTRIES);
            }
        }
        assert_eq!(ingest.pages_in_assembly(), 0);
        for (b, (hdr, _)) in pages.iter().enumerate() {
            let mut want = [0u8; PAGE_SIZE];
            for (i, byte) in want.iter_mut().enumerate() {
                *byte = 0x11u8.wrapping_add(b as u8) ^ (i / 1024) as u8;
            }
            assert_eq!(page_of(&lfc, hdr), Some(want), "block {b}");
        }
        // Every page of the stream is remembered as joined, the first ones too: a late piece of
        // any of them is a duplicate, turned away before the cache is asked (which says
        // "already present" of a page the table forgot).
        for (hdr, frags) in &pages {
            assert_eq!(ingest.offer(&frags[8], 20, &m), dup, "{:?}", hdr.tag);
        }
        assert_eq!(m.dropped(DropReason::AlreadyPresent), 0);
        assert_eq!(m.dropped(DropReason::Incomplete), 0);
        assert_eq!(ingest.pages_in_assembly(), 0);
    }

    #[test]
    fn any_one_lost_piece_is_rebuilt_from_the_parity() {
        let dir = tempfile::tempdir().unwrap();
        let lfc = Lfc::create(dir.path().join("lfc"), 64).unwrap();
        let mut ingest = Ingest::new(&lfc);
        let m = ThreadMetrics::default();
        for lost in 0..9u32 {
            let (hdr, frags) = split_page(&lfc, [0x60 + lost as u8; 16], 20 + lost, lost as u8);
            let mut last = Outcome::Held;
            for (i, f) in frags.iter().enumerate() {
                if i as u32 != lost {
                    last = ingest.offer(f, 40, &m);
                }
            }
            assert_eq!(last, Outcome::Done(Ok(hdr)), "piece {lost} lost");
            let mut want = [0u8; PAGE_SIZE];
            for (i, b) in want.iter_mut().enumerate() {
                *b = lost as u8 ^ (i / 1024) as u8;
            }
            assert_eq!(page_of(&lfc, &hdr), Some(want), "piece {lost} lost");
        }
        let rebuilt = m
            .fragments_rebuilt
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(rebuilt, 8, "every lost fragment, not the lost parity");
        assert_eq!(ingest.pages_in_assembly(), 0);
    }

    #[test]
    fn a_page_missing_a_fragment_is_given_up_and_forged_fragments_touch_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // A cache large enough for the whole table.
        let capacity = ASSEMBLY_ENTRIES as u64 * reassembly::ASSEMBLY_SHARE_OF_CACHE;
        assert_eq!(max_assembly_frames(capacity), ASSEMBLY_ENTRIES);
        let lfc = Lfc::create(dir.path().join("lfc"), capacity).unwrap();
        let mut ingest = Ingest::new(&lfc);
        let m = ThreadMetrics::default();
        // Pages missing their last fragment fill the table; each newer page pushes the oldest out.
        let mut pages = Vec::new();
        for b in 0..ASSEMBLY_ENTRIES as u32 + 3 {
            let (hdr, frags) = split_page(&lfc, [b as u8 + 100; 16], b, b as u8);
            for f in &frags[..7] {
                assert_eq!(ingest.offer(f, u64::from(b), &m), Outcome::Held);
            }
            pages.push((hdr, frags));
        }
        assert_eq!(ingest.pages_in_assembly(), ASSEMBLY_ENTRIES);
        assert_eq!(m.dropped(DropReason::Incomplete), 3);
        assert!(ingest.assembly_frames() <= ASSEMBLY_ENTRIES);
        let busy = lfc.stats().busy_pages;
        // The oldest page was given up: its last fragment now starts a new page, not a publish.
        assert_eq!(ingest.offer(&pages[0].1[7], 100, &m), Outcome::Held);
        assert!(!lfc.contains(&pages[0].0.tag));
        // Forged and corrupt fragments of a page being joined: turned away, nothing evicted.
        let (hdr, frags) = &pages[10];
        let mut forged = frags[7].clone();
        let n = forged.len();
        forged[n - 1] ^= 1;
        let mut corrupt = frags[7].clone();
        corrupt[HEADER_LEN + 3] ^= 1;
        let in_progress = ingest.pages_in_assembly();
        assert_eq!(
            ingest.offer(&forged, 100, &m),
            Outcome::Done(Err(DropReason::BadMac))
        );
        assert_eq!(
            ingest.offer(&corrupt, 100, &m),
            Outcome::Done(Err(DropReason::BadChecksum))
        );
        assert_eq!(ingest.pages_in_assembly(), in_progress);
        assert_eq!(lfc.stats().busy_pages, busy, "no frame claimed for junk");
        assert!(!lfc.contains(&hdr.tag));
        // The real last fragment completes it.
        assert_eq!(ingest.offer(&frags[7], 100, &m), Outcome::Done(Ok(*hdr)));
        assert!(lfc.contains(&hdr.tag));
        assert_eq!(lfc.stats().evictions, 0);
        // Stopping abandons every frame held; none was published.
        ingest.abandon_assembly();
        assert_eq!(lfc.stats().busy_pages, 0);
    }

    /// A worker kept off its CPU past the timeout while two pages' pieces queued in its socket:
    /// the batch it takes on return is dated after the pause, and the pages whose first pieces
    /// came before it are still joined from the pieces queued behind them. (Expired by the first
    /// new page's piece, as before, both were counted lost on a link that lost nothing.)
    #[test]
    fn pieces_queued_while_the_worker_was_away_still_complete_their_pages() {
        let dir = tempfile::tempdir().unwrap();
        let lfc = Lfc::create(dir.path().join("lfc"), 64).unwrap();
        let mut ingest = Ingest::new(&lfc);
        let m = ThreadMetrics::default();
        let (p_hdr, p) = split_page(&lfc, [1; 16], 1, 0x11);
        let (q_hdr, q) = split_page(&lfc, [2; 16], 2, 0x22);
        // The batch before the pause ended with P's first pieces.
        for f in &p[..3] {
            assert_eq!(ingest.offer(f, 100, &m), Outcome::Held);
        }
        // Back after the timeout: Q's pieces, then the rest of P's, all in one batch.
        let back = 100 + 3 * ASSEMBLY_TIMEOUT_NS;
        for f in &q[..7] {
            assert_eq!(ingest.offer(f, back, &m), Outcome::Held);
        }
        for f in &p[3..7] {
            assert_eq!(ingest.offer(f, back, &m), Outcome::Held);
        }
        assert!(matches!(
            ingest.offer(&p[7], back, &m),
            Outcome::Done(Ok(_))
        ));
        assert!(matches!(
            ingest.offer(&q[7], back, &m),
            Outcome::Done(Ok(_))
        ));
        ingest.expire_assembly(back, &m);
        assert_eq!(m.dropped(DropReason::Incomplete), 0);
        assert!(page_of(&lfc, &p_hdr).is_some() && page_of(&lfc, &q_hdr).is_some());
        assert_eq!(ingest.pages_in_assembly(), 0);
    }

    #[test]
    fn an_idle_table_gives_its_frames_back_and_cached_pages_start_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let lfc = Lfc::create(dir.path().join("lfc"), 64).unwrap();
        let mut ingest = Ingest::new(&lfc);
        let m = ThreadMetrics::default();
        // Two pages that each lost two pieces: held, then given up by the timeout.
        for b in 0..2u32 {
            let (_, frags) = split_page(&lfc, [b as u8 + 1; 16], b, b as u8);
            for f in &frags[..7] {
                assert_eq!(ingest.offer(f, 10, &m), Outcome::Held);
            }
        }
        assert_eq!(ingest.assembly_frames(), 2);
        // Within the timeout, nothing goes; past it, with no fragment since, the pages are
        // given up and their frames go back to the cache rather than stay spares.
        ingest.expire_assembly(10 + ASSEMBLY_TIMEOUT_NS - 1, &m);
        assert_eq!(ingest.assembly_frames(), 2);
        assert_eq!(lfc.stats().busy_pages, 2);
        ingest.expire_assembly(10 + ASSEMBLY_TIMEOUT_NS, &m);
        assert_eq!(m.dropped(DropReason::Incomplete), 2);
        assert_eq!(ingest.assembly_frames(), 0);
        assert_eq!(lfc.stats().busy_pages, 0, "no frame held while idle");
        // A page joined once and replayed after `recent` forgot it: the cache has it, so its
        // fragments claim no frame.
        let (hdr, frags) = split_page(&lfc, [9; 16], 9, 9);
        for f in &frags[..8] {
            ingest.offer(f, 20 * ASSEMBLY_TIMEOUT_NS, &m);
        }
        assert!(lfc.contains(&hdr.tag));
        let mut ingest = Ingest::new(&lfc);
        assert_eq!(
            ingest.offer(&frags[3], 20 * ASSEMBLY_TIMEOUT_NS, &m),
            Outcome::Done(Err(DropReason::AlreadyPresent))
        );
        assert_eq!(ingest.assembly_frames(), 0);
        assert_eq!(lfc.stats().busy_pages, 0);
    }

    #[test]
    fn a_small_caches_assembly_table_holds_a_small_share_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let lfc = Lfc::create(dir.path().join("lfc"), 64).unwrap();
        let limit = max_assembly_frames(64);
        assert!(
            limit < ASSEMBLY_ENTRIES && limit as u64 <= 64 / 8,
            "{limit}"
        );
        let mut ingest = Ingest::new(&lfc);
        let m = ThreadMetrics::default();
        // Pages that each lost their last two pieces (no parity rebuilds them): the table
        // gives the oldest up rather than taking more of the cache.
        let pages = 3 * limit as u32;
        for b in 0..pages {
            let (_, frags) = split_page(&lfc, [b as u8 + 1; 16], b, b as u8);
            for f in &frags[..7] {
                assert_eq!(ingest.offer(f, u64::from(b), &m), Outcome::Held);
            }
            assert!(ingest.assembly_frames() <= limit);
            assert!(lfc.stats().busy_pages <= limit as u64);
        }
        assert_eq!(ingest.pages_in_assembly(), limit);
        assert_eq!(
            m.dropped(DropReason::Incomplete),
            u64::from(pages) - limit as u64
        );
        ingest.abandon_assembly();
        assert_eq!(lfc.stats().busy_pages, 0);
    }

    #[test]
    fn a_fragment_received_into_a_slot_is_joined_and_the_slot_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let lfc = Lfc::create(dir.path().join("lfc"), 16).unwrap();
        let mut ingest = Ingest::new(&lfc);
        let m = ThreadMetrics::default();
        let (hdr, frags) = split_page(&lfc, [4; 16], 1, 0x11);
        let mut slot = lfc.reserve().unwrap();
        let frame = slot.frame();
        for (i, f) in frags.iter().enumerate() {
            // The kernel scatters a short datagram: header, then the rest into the page region.
            let mut page = [0u8; PAGE_SIZE];
            page[..f.len() - HEADER_LEN].copy_from_slice(&f[HEADER_LEN..]);
            slot.fill_from(&page);
            let received = Received {
                len: f.len(),
                truncated: false,
                header: f[..HEADER_LEN].try_into().unwrap(),
                tag: [0xEE; TAG_LEN],
            };
            let (outcome, back) = ingest.complete(slot, &received, 0, &m);
            let want = match i {
                0..=6 => Outcome::Held,
                7 => Outcome::Done(Ok(hdr)),
                _ => Outcome::Done(Err(DropReason::DuplicateFragment)), // the parity, late
            };
            assert_eq!(outcome, want);
            slot = back.expect("a fragment's slot always comes back");
            assert_eq!(slot.frame(), frame);
        }
        assert!(lfc.contains(&hdr.tag));
        slot.abandon();
    }
}
