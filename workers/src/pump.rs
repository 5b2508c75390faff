//! One receive socket's slots: reserved LFC frames posted as receive slots, and what arrives in
//! them handed to [`Ingest`]. Each daemon worker thread runs one [`SlotPump`] in a loop
//! (`daemon`).
//!
//! Split as quinn splits `quinn-proto` from its sockets: [`SlotBook`] is the sans-IO half (which
//! frame is posted in which slot, the per-slot header and tag buffers, frames handed back by
//! `Ingest` and posted again before any new frame is claimed); [`SlotPump`] adds the kernel
//! (`udp::Receiver`). The simulator runs the same `SlotBook` behind its simulated network, so
//! the slot handling it checks is the daemon's. Depends on `udp` (the pump only), `ingest` and
//! `lfc`; reads no clock except to date a batch.
//!
//! The book also counts datagrams per sender (the LFC's sender table, `Lfc::count_sender`, which
//! `lfc stat` and the metrics show per page-server shard): per batch, in `SenderBatch`, so a
//! receive batch costs one shared update per sender it heard from, not one per datagram.
//!
//! Owns: `SlotBook` (the posted frames, the per-slot header and tag buffers, the frames handed
//! back, the per-sender batch) and, in `SlotPump`, the `Receiver`. Decides no datagram's fate
//! (`Ingest` does), binds no socket (the daemon hands it a `Receiver`) and starts no thread.

use crate::datagram::{DatagramHeader, DropReason, DATAGRAM_LEN, HEADER_LEN, TAG_LEN};
use crate::ingest::{Ingest, Outcome, Received};
use crate::metrics::ThreadMetrics;
use crate::udp::{Completion, Receiver, SlotRegions, UdpError, MAX_SLOT_DATAGRAMS};
use lfc::{Lfc, Reservation, PAGE_SIZE};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What one [`SlotPump::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Every frame of the cache is reserved by someone: nothing could be posted, nothing was
    /// received. The caller backs off.
    NoSlot,
    /// This many datagrams were received (installed, held or turned away; a GRO receive
    /// counts each datagram of its train).
    Received(usize),
}

/// The sans-IO slot bookkeeping of one receiver: slot ids `0..capacity`, each either free or
/// posted with 1 to `frames_per_slot` reserved LFC frames, each frame a datagram region
/// `[header | frame | tag]` with its own header and tag buffers.
///
/// A slot of several frames is for a socket with UDP GRO (`udp::set_gro`): one receive
/// then takes a train of datagrams, scattered over the frames in order. A train of whole pages
/// (segment size `DATAGRAM_LEN`) lands one page per frame, each installed in place as a single
/// datagram is; a train of another size (fragments) runs across the regions: a datagram the
/// kernel wrote inside one frame is opened there (`Ingest::offer_in_place`), and one that runs
/// over a frame's end is gathered out by copy (`Ingest::offer_gathered`). Either way its piece
/// is then copied into its page's frame, and each datagram of a train is handled,
/// authenticated and counted exactly as if it had come alone.
///
/// Whoever posts the slots (the kernel through `udp::Receiver`, or the simulator) must give
/// every posted slot back — by [`complete`](Self::complete) or [`release`](Self::release) —
/// before the book is dropped, or call [`leak_buffers`](Self::leak_buffers) when it cannot.
pub struct SlotBook<'a> {
    lfc: &'a Lfc,
    ingest: Ingest<'a>,
    /// Header and tag buffers, one entry per frame position (`slot × frames_per_slot + j`).
    /// Owned through raw pointers (from `Box::into_raw`, freed in `Drop`): the kernel may write
    /// any posted entry at any moment, so no reference to them may exist while slots are
    /// posted.
    headers: *mut [u8; HEADER_LEN],
    tags: *mut [u8; TAG_LEN],
    capacity: usize,
    frames_per_slot: usize,
    /// The frames of each posted slot, at `slot × frames_per_slot ..`, the used ones first.
    posted: Vec<Option<Reservation<'a>>>,
    free: Vec<u32>,
    spare: Vec<Reservation<'a>>,
    /// Scratch for the regions of one post (allocated once).
    regions: Vec<SlotRegions>,
    senders: SenderBatch,
    leaked: bool,
}

/// Distinct senders one batch keeps before it adds them to the LFC: a batch rarely hears from
/// more (a few shards' senders); a further one flushes the batch early.
const BATCH_SENDERS: usize = 8;

/// Datagrams per sender since the last flush: (sender, installed, dropped after
/// authentication). Allocated once; flushing keeps the capacity.
struct SenderBatch {
    entries: Vec<(SocketAddr, u64, u64)>,
}

impl SenderBatch {
    fn new() -> Self {
        SenderBatch {
            entries: Vec::with_capacity(BATCH_SENDERS),
        }
    }

    fn add(&mut self, lfc: &Lfc, from: SocketAddr, installed: u64, dropped: u64) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.0 == from) {
            e.1 += installed;
            e.2 += dropped;
            return;
        }
        if self.entries.len() == BATCH_SENDERS {
            self.flush(lfc);
        }
        self.entries.push((from, installed, dropped));
    }

    fn flush(&mut self, lfc: &Lfc) {
        for (from, installed, dropped) in self.entries.drain(..) {
            lfc.count_sender(from, installed, dropped);
        }
    }
}

/// Whether a drop counts against its sender: a genuine datagram (it authenticated) that was
/// not installed. Junk is not counted by sender (its source is anyone's to choose), nor is a
/// page given up incomplete (a page, not a datagram).
fn dropped_by_sender(reason: DropReason) -> bool {
    !crate::junk::is_junk(reason) && reason != DropReason::Incomplete
}

// SAFETY: the raw pointers are this value's own heap buffers; a book is created on one thread
// and run on another (the daemon's workers), never shared.
unsafe impl Send for SlotBook<'_> {}

fn leak_buffer<const N: usize>(capacity: usize) -> *mut [u8; N] {
    Box::into_raw(vec![[0u8; N]; capacity].into_boxed_slice()).cast::<[u8; N]>()
}

/// Frees a buffer made by [`leak_buffer`] with the same `capacity`.
///
/// # Safety
/// `ptr` came from `leak_buffer::<N>(capacity)` and is not used afterwards.
unsafe fn free_buffer<const N: usize>(ptr: *mut [u8; N], capacity: usize) {
    // SAFETY: the caller's contract: this is the boxed slice `leak_buffer` made.
    drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, capacity)) });
}

impl<'a> SlotBook<'a> {
    /// A book of `capacity` one-frame slots into `lfc` (a socket without GRO).
    pub fn new(lfc: &'a Lfc, capacity: usize) -> Self {
        Self::with_frames_per_slot(lfc, capacity, 1)
    }

    /// A book of `capacity` slots of up to `frames_per_slot` frames each (clamped to
    /// `1..=MAX_SLOT_DATAGRAMS`). All per-slot memory is allocated here, once.
    pub fn with_frames_per_slot(lfc: &'a Lfc, capacity: usize, frames_per_slot: usize) -> Self {
        let k = frames_per_slot.clamp(1, MAX_SLOT_DATAGRAMS);
        SlotBook {
            lfc,
            ingest: Ingest::new(lfc),
            headers: leak_buffer::<HEADER_LEN>(capacity * k),
            tags: leak_buffer::<TAG_LEN>(capacity * k),
            capacity,
            frames_per_slot: k,
            posted: (0..capacity * k).map(|_| None).collect(),
            free: (0..capacity as u32).rev().collect(),
            spare: Vec::with_capacity(capacity * k),
            regions: Vec::with_capacity(k),
            senders: SenderBatch::new(),
            leaked: false,
        }
    }

    /// Slots posted now.
    pub fn posted(&self) -> usize {
        self.capacity - self.free.len()
    }

    /// Frames each slot holds at most.
    pub fn frames_per_slot(&self) -> usize {
        self.frames_per_slot
    }

    /// Posts frames into every free slot while frames can be had (handed-back ones first): up
    /// to `frames_per_slot` per slot (fewer when the cache has no more to give), and
    /// `post(slot_id, regions)` hands each slot to the receiver. A failed `post` leaves that
    /// slot free (its frames kept for the next attempt) and returns the error.
    ///
    /// # Safety
    /// `post` must behave as `udp::Receiver::post`'s contract asks of its caller's receiver:
    /// until the slot comes back through `complete` or `release`, only the receiver writes the
    /// regions, and it writes nothing after.
    pub unsafe fn post_free<E>(
        &mut self,
        mut post: impl FnMut(u32, &[SlotRegions]) -> Result<(), E>,
    ) -> Result<(), E> {
        let k = self.frames_per_slot;
        while let Some(&id) = self.free.last() {
            let base = id as usize * k;
            self.regions.clear();
            for j in 0..k {
                let Some(res) = self.spare.pop().or_else(|| self.lfc.reserve()) else {
                    break;
                };
                // SAFETY: `base + j < capacity × k`, the length of both buffers.
                let (h, t) = unsafe {
                    (
                        self.headers.add(base + j).cast::<u8>(),
                        self.tags.add(base + j).cast::<u8>(),
                    )
                };
                self.regions.push(SlotRegions::new(h, res.as_mut_ptr(), t));
                self.posted[base + j] = Some(res);
            }
            if self.regions.is_empty() {
                break;
            }
            if let Err(e) = post(id, &self.regions) {
                let frames = &mut self.posted[base..base + k];
                self.spare
                    .extend(frames.iter_mut().filter_map(Option::take));
                return Err(e);
            }
            self.free.pop();
        }
        Ok(())
    }

    /// A posted slot came back with a datagram, a train of them (GRO) or an error: takes it
    /// back and hands each datagram to `Ingest`, calling `each` with every datagram's outcome
    /// in order. Returns how many datagrams it held (0 for a failed receive, whose frames are
    /// kept for the next post). A datagram of a train that the kernel cut off for want of room
    /// is dropped as [`DropReason::TooLong`] (counted, never opened).
    /// The arrivals of its pages and its senders' counts wait for [`end_batch`](Self::end_batch).
    pub fn complete(
        &mut self,
        c: &Completion,
        now_wall_ns: u64,
        metrics: &ThreadMetrics,
        mut each: impl FnMut(Outcome),
    ) -> usize {
        let k = self.frames_per_slot;
        let base = c.slot_id as usize * k;
        assert!(self.posted[base].is_some(), "a completed slot was posted");
        self.free.push(c.slot_id);
        metrics
            .kernel_drops
            .store(u64::from(c.kernel_drops), Ordering::Relaxed);
        let frames = self.posted[base..base + k]
            .iter()
            .take_while(|f| f.is_some())
            .count();
        if c.error.is_some() {
            self.spare_frames(base);
            return 0;
        }
        metrics.receives.fetch_add(1, Ordering::Relaxed);
        let in_place = match c.segment_len {
            None => true,
            Some(size) => size == DATAGRAM_LEN,
        };
        // Bytes the kernel wrote: what lies beyond was cut.
        let held = c.len.min(frames * DATAGRAM_LEN);
        if in_place {
            // Each install below misses on lines of the cache's large tables; asked for at
            // once, a train's misses overlap instead of coming one after another.
            for (j, _) in c.datagrams().take_while(|&(at, _)| at < held).enumerate() {
                // SAFETY: the slot came back, so nothing writes its headers any more.
                let header = unsafe { &*self.headers.add(base + j) };
                if let Ok(h) = DatagramHeader::decode(header) {
                    self.lfc.prefetch_install(&h.tag);
                }
            }
        }
        let mut count = 0;
        for (j, (at, len)) in c.datagrams().enumerate() {
            count += 1;
            let outcome = if at >= held && c.segment_len.is_some() {
                // A datagram of the train that found no room at all.
                let verdict = Err(DropReason::TooLong);
                metrics.record(&verdict, now_wall_ns);
                Outcome::Done(verdict)
            } else if in_place {
                let res = self.posted[base + j].take().expect("a posted frame");
                // SAFETY: the slot came back, so nothing writes its headers and tags any more.
                let received = unsafe {
                    Received {
                        // A lone datagram keeps its own length and MSG_TRUNC; a segment that
                        // starts in room lies whole in its frame (they are frame-sized).
                        len,
                        truncated: c.segment_len.is_none() && c.truncated,
                        header: self.headers.add(base + j).read(),
                        tag: self.tags.add(base + j).read(),
                    }
                };
                let (outcome, back) = self.ingest.complete(res, &received, now_wall_ns, metrics);
                self.spare.extend(back);
                outcome
            } else {
                let truncated = at + len > held;
                let (posted, headers, tags) =
                    (&self.posted[base..base + frames], self.headers, self.tags);
                // SAFETY: as above; the frames are reserved by this book and posted no more.
                let train = unsafe { Train::new(posted, headers.add(base), tags.add(base), held) };
                // SAFETY: the train's frames are this book's, and nothing else references
                // their bytes until they are posted again.
                match unsafe { train.within_frame(at, len) } {
                    Some(bytes) => self.ingest.offer_in_place(bytes, now_wall_ns, metrics),
                    None => self.ingest.offer_gathered(
                        len,
                        truncated,
                        |h, p, t| train.gather(at, len, h, p, t),
                        now_wall_ns,
                        metrics,
                    ),
                }
            };
            if let (Outcome::Done(verdict), Some(from)) = (&outcome, c.source) {
                match verdict {
                    Ok(_) => self.senders.add(self.lfc, from, 1, 0),
                    Err(r) if dropped_by_sender(*r) => self.senders.add(self.lfc, from, 0, 1),
                    Err(_) => {}
                }
            }
            each(outcome);
        }
        self.spare_frames(base);
        count
    }

    /// The frames of the slot at `base` that no datagram kept go back to be posted again.
    fn spare_frames(&mut self, base: usize) {
        let k = self.frames_per_slot;
        self.spare.extend(
            self.posted[base..base + k]
                .iter_mut()
                .filter_map(Option::take),
        );
    }

    /// Ends a batch of completions: wakes the readers waiting for the pages it installed (held
    /// until now, `Ingest::announce_arrivals`) and adds the datagrams counted per sender to the
    /// LFC's sender table. Call it after each batch.
    pub fn end_batch(&mut self) {
        self.ingest.announce_arrivals();
        self.senders.flush(self.lfc);
    }

    /// A posted slot came back without data (cancelled): its frames are abandoned.
    pub fn release(&mut self, slot_id: u32) {
        let base = slot_id as usize * self.frames_per_slot;
        let frames = &mut self.posted[base..base + self.frames_per_slot];
        if frames[0].is_some() {
            frames
                .iter_mut()
                .filter_map(Option::take)
                .for_each(Reservation::abandon);
            self.free.push(slot_id);
        }
    }

    /// Abandons the frames kept for the next post and those of pages being joined from
    /// fragments (none is published).
    pub fn abandon_spare(&mut self) {
        self.spare.drain(..).for_each(Reservation::abandon);
        self.ingest.abandon_assembly();
    }

    /// Clears the assembly table of what timed out, and of its spare frames when idle
    /// (`Ingest::expire_assembly`); nothing to do (no clock read by the caller needed) when it
    /// holds no frame.
    pub fn expire_assembly(&mut self, now_wall_ns: impl FnOnce() -> u64, metrics: &ThreadMetrics) {
        if self.ingest.assembly_frames() > 0 {
            self.ingest.expire_assembly(now_wall_ns(), metrics);
        }
    }

    /// The worker's ingest (its assembly table, for tests and the simulator's checks).
    pub fn ingest(&self) -> &Ingest<'a> {
        &self.ingest
    }

    /// The receiver could not be made to give its slots back: the header and tag buffers are
    /// never freed, since it may still write them.
    pub fn leak_buffers(&mut self) {
        self.leaked = true;
    }
}

impl Drop for SlotBook<'_> {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        if self.posted() > 0 {
            // Something may still write them: leak rather than free (a bug of the caller).
            debug_assert!(
                std::thread::panicking(),
                "a slot book dropped with slots still posted (the receiver must give them back)"
            );
            return;
        }
        // SAFETY: no slot is posted, so nothing references either buffer, and they came from
        // `leak_buffer` with this capacity.
        let n = self.capacity * self.frames_per_slot;
        unsafe {
            free_buffer(self.headers, n);
            free_buffer(self.tags, n);
        }
    }
}

/// The bytes of a coalesced train as the kernel laid them across a slot's regions:
/// `[header | frame | tag]` per frame, end to end, the first `held` bytes written.
struct Train<'s, 'a> {
    frames: &'s [Option<Reservation<'a>>],
    headers: *const [u8; HEADER_LEN],
    tags: *const [u8; TAG_LEN],
    held: usize,
}

impl<'s, 'a> Train<'s, 'a> {
    /// # Safety
    /// `headers` and `tags` point at `frames.len()` entries each, the slot's, which nothing
    /// writes while the train is read (the slot came back).
    unsafe fn new(
        frames: &'s [Option<Reservation<'a>>],
        headers: *const [u8; HEADER_LEN],
        tags: *const [u8; TAG_LEN],
        held: usize,
    ) -> Self {
        Train {
            frames,
            headers,
            tags,
            held,
        }
    }

    /// Copies train bytes `at..` into `dst` (as many as were written and `dst` holds).
    fn copy(&self, mut at: usize, mut dst: &mut [u8]) {
        while !dst.is_empty() && at < self.held {
            let (j, mut within) = (at / DATAGRAM_LEN, at % DATAGRAM_LEN);
            let Some(Some(frame)) = self.frames.get(j) else {
                return;
            };
            // The region of triple `j` that byte `within` is in, and its start.
            // SAFETY: `j < frames.len()`, so the header and tag entries exist (`new`).
            let (region, len): (*const u8, usize) = unsafe {
                if within < HEADER_LEN {
                    (self.headers.add(j).cast(), HEADER_LEN)
                } else if within < HEADER_LEN + PAGE_SIZE {
                    within -= HEADER_LEN;
                    (frame.as_mut_ptr().cast_const(), PAGE_SIZE)
                } else {
                    within -= HEADER_LEN + PAGE_SIZE;
                    (self.tags.add(j).cast(), TAG_LEN)
                }
            };
            let n = (len - within).min(dst.len()).min(self.held - at);
            // SAFETY: `within + n <= len`, inside the region; the region is this slot's and
            // nothing writes it now (`new`); `dst` is a distinct buffer of ours.
            unsafe { std::ptr::copy_nonoverlapping(region.add(within), dst.as_mut_ptr(), n) };
            dst = &mut dst[n..];
            at += n;
        }
    }

    /// The datagram of `len` bytes at `at`, when the kernel wrote all of it inside one frame
    /// (most segments of a train of fragments: only those that run over a frame's end, into
    /// its tag and the next header, are not).
    ///
    /// # Safety
    /// No other reference to the frame's bytes may exist while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn within_frame(&self, at: usize, len: usize) -> Option<&mut [u8]> {
        let (j, within) = (at / DATAGRAM_LEN, at % DATAGRAM_LEN);
        let start = within.checked_sub(HEADER_LEN)?;
        if start + len > PAGE_SIZE || at + len > self.held {
            return None;
        }
        let frame = self.frames.get(j)?.as_ref()?;
        // SAFETY: `start + len <= PAGE_SIZE`, inside the frame, which nothing else writes now
        // (`new`) and which the caller does not otherwise reference.
        Some(unsafe { std::slice::from_raw_parts_mut(frame.as_mut_ptr().add(start), len) })
    }

    /// Gathers the datagram of `len` bytes at `at` as a slot's scatter list would hold it.
    fn gather(
        &self,
        at: usize,
        len: usize,
        header: &mut [u8; HEADER_LEN],
        page: &mut [u8; PAGE_SIZE],
        tag: &mut [u8; TAG_LEN],
    ) {
        let h = len.min(HEADER_LEN);
        let p = (len - h).min(PAGE_SIZE);
        let t = (len - h - p).min(TAG_LEN);
        self.copy(at, &mut header[..h]);
        self.copy(at + h, &mut page[..p]);
        self.copy(at + h + p, &mut tag[..t]);
    }
}

/// A receiver and the LFC frames posted in it. Dropping it takes every slot back from the
/// kernel before any buffer is freed or any frame abandoned.
pub struct SlotPump<'a> {
    receiver: Receiver,
    book: SlotBook<'a>,
    completions: Vec<Completion>,
    shut: bool,
}

impl<'a> SlotPump<'a> {
    /// A pump on `receiver` into `lfc`, each receive posted with up to `frames_per_slot`
    /// frames (more than one for a socket with UDP GRO, `udp::set_gro`). All per-slot
    /// memory is allocated here, once: `step` never allocates.
    pub fn new(lfc: &'a Lfc, receiver: Receiver, frames_per_slot: usize) -> Self {
        let capacity = receiver.capacity();
        SlotPump {
            receiver,
            book: SlotBook::with_frames_per_slot(lfc, capacity, frames_per_slot),
            completions: vec![Completion::default(); capacity],
            shut: false,
        }
    }

    /// Posts a frame into every free slot, waits up to `timeout` for datagrams and hands what
    /// arrived to `Ingest` (installed, or the frame kept for the next post).
    pub fn step(&mut self, timeout: Duration, metrics: &ThreadMetrics) -> Result<Step, UdpError> {
        let receiver = &mut self.receiver;
        // SAFETY: `Receiver::post` is the contract's receiver: the kernel writes a posted
        // slot's regions only until the slot comes back in a completion or a cancel.
        unsafe {
            self.book
                .post_free(|id, regions| receiver.post_train(id, regions))?
        };
        if self.receiver.posted() == 0 {
            // Every frame reserved: the table's may be what the cache is short of.
            self.book.expire_assembly(lfc::wall_ns, metrics);
            return Ok(Step::NoSlot);
        }
        let posted = self.receiver.posted();
        let n = self
            .receiver
            .wait(timeout, &mut self.completions)
            .map_err(UdpError::io("receiving datagrams"))?;
        // One clock read per batch: it only dates arrivals for the latency histogram, and one
        // per datagram was a tenth of the daemon's CPU.
        let now_wall_ns = if n > 0 { lfc::wall_ns() } else { 0 };
        let mut datagrams = 0;
        for c in &self.completions[..n] {
            datagrams += self.book.complete(c, now_wall_ns, metrics, |_| {});
        }
        self.book.end_batch();
        // Woken by the timeout too: an idle worker gives back the frames it held for joining.
        // Not after a batch that filled every slot: more may be queued, the missing pieces of
        // the pages in the table among them, and a worker that was off its CPU would give
        // those pages up by the time it was away (`Ingest::expire_assembly`).
        if n < posted {
            self.book
                .expire_assembly(|| if n > 0 { now_wall_ns } else { lfc::wall_ns() }, metrics);
        }
        Ok(Step::Received(datagrams))
    }

    /// The receive socket, for its options (`junk`: its buffer while a flood lasts).
    pub fn socket(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.receiver.as_fd()
    }

    /// Takes every slot back from the kernel and abandons the frames (none is published).
    pub fn shutdown(&mut self) -> io::Result<()> {
        if self.shut {
            return Ok(());
        }
        self.book.abandon_spare();
        let book = &mut self.book;
        self.receiver.cancel_all(&mut |id| book.release(id))?;
        self.shut = true;
        Ok(())
    }
}

impl Drop for SlotPump<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "taking receive slots back failed");
        }
        if self.receiver.posted() > 0 {
            // The kernel may still write the buffers until the receiver's own drop (after
            // this) has cancelled its receives or aborted: they are never freed.
            self.book.leak_buffers();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datagram::{DatagramHeader, DATAGRAM_LEN};
    use lfc::{RelTag, PAGE_SIZE};
    use std::convert::Infallible;

    fn post(book: &mut SlotBook<'_>, posted: &mut Vec<(u32, SlotRegions)>) {
        // SAFETY: this test is the receiver: it writes a slot only between taking it out of
        // `posted` and completing it.
        let _ = unsafe {
            book.post_free(|id, r| {
                posted.push((id, r[0]));
                Ok::<(), Infallible>(())
            })
        };
    }

    /// Completes a one-datagram receive, returning its outcome.
    fn complete_one(book: &mut SlotBook<'_>, c: &Completion, m: &ThreadMetrics) -> Option<Outcome> {
        let mut out = None;
        let n = book.complete(c, 0, m, |o| out = Some(o));
        assert_eq!(n, usize::from(out.is_some()));
        out
    }

    #[test]
    fn a_turned_away_frame_is_posted_again_and_a_valid_page_is_installed() {
        let dir = tempfile::tempdir().unwrap();
        let lfc = Lfc::create(dir.path().join("lfc"), 16).unwrap();
        let metrics = ThreadMetrics::default();
        let mut book = SlotBook::new(&lfc, 2);
        let mut posted = Vec::new();
        post(&mut book, &mut posted);
        assert_eq!((book.posted(), posted.len()), (2, 2));
        assert_eq!(lfc.stats().busy_pages, 2);

        let tag = RelTag::new(1663, 5, 16384, 0).block(9);
        let hdr = DatagramHeader {
            key_id: lfc.key_id(),
            reqid: 1,
            request_lsn: u64::MAX,
            not_modified_since: 5,
            tag,
            sent_at_ns: 0,
        };
        let mut valid = Box::new([0u8; DATAGRAM_LEN]);
        Ingest::new(&lfc)
            .key()
            .stream([3; 16])
            .seal(&hdr, &[0x5A; PAGE_SIZE], &mut valid)
            .unwrap();
        let mut forged = valid.clone();
        forged[DATAGRAM_LEN - 1] ^= 1;

        // The forged one: turned away, and its frame (not a new one) goes back into a slot.
        let (id, regions) = posted.pop().unwrap();
        // SAFETY: the slot is posted with this test's receiver.
        unsafe { regions.scatter(&forged[..]) };
        let shard: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let done = |slot_id| Completion {
            slot_id,
            len: DATAGRAM_LEN,
            source: Some(shard),
            ..Completion::default()
        };
        assert!(matches!(
            complete_one(&mut book, &done(id), &metrics),
            Some(Outcome::Done(Err(_)))
        ));
        post(&mut book, &mut posted);
        assert_eq!(posted.last().unwrap().1.page, regions.page);
        assert_eq!(lfc.stats().busy_pages, 2, "no new frame was claimed");
        assert!(!lfc.contains(&tag));

        // The valid one is installed; the next post claims a new frame.
        let (id, regions) = posted.pop().unwrap();
        // SAFETY: as above.
        unsafe { regions.scatter(&valid[..]) };
        assert_eq!(
            complete_one(&mut book, &done(id), &metrics),
            Some(Outcome::Done(Ok(hdr)))
        );
        assert!(lfc.contains(&tag));
        // Counted by sender once the batch is flushed; the forged one not at all (its source
        // is anyone's to choose).
        assert_eq!(lfc.sender_counts().installed(), 0, "not before the flush");
        book.end_batch();
        let c = lfc.sender_counts();
        assert_eq!(
            c.senders,
            vec![lfc::SenderCount {
                addr: shard,
                installed: 1,
                dropped: 0
            }]
        );
        assert_eq!((c.other_installed, c.other_dropped), (0, 0));

        // Everything posted comes back: the frames are abandoned, none published.
        for (id, _) in posted.drain(..) {
            book.release(id);
        }
        book.abandon_spare();
        assert_eq!((book.posted(), lfc.stats().busy_pages), (0, 0));
    }
}
