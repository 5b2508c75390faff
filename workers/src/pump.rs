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
//! `lfc stat` and the metrics show per page-server shard): per batch, in [`SenderBatch`], so a
//! receive batch costs one shared update per sender it heard from, not one per datagram.

use crate::datagram::DropReason;
use crate::datagram::{HEADER_LEN, TAG_LEN};
use crate::ingest::{Ingest, Outcome, Received};
use crate::metrics::ThreadMetrics;
use crate::udp::{Completion, Receiver, SlotRegions, UdpError};
use lfc::{Lfc, Reservation};
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
    /// This many datagrams were received (installed or turned away).
    Received(usize),
}

/// The sans-IO slot bookkeeping of one receiver: slot ids `0..capacity`, each either free or
/// posted with a reserved LFC frame as its page region and its own header and tag buffers.
///
/// Whoever posts the slots (the kernel through `udp::Receiver`, or the simulator) must give
/// every posted slot back — by [`complete`](Self::complete) or [`release`](Self::release) —
/// before the book is dropped, or call [`leak_buffers`](Self::leak_buffers) when it cannot.
pub struct SlotBook<'a> {
    lfc: &'a Lfc,
    ingest: Ingest<'a>,
    /// Header and tag buffers, one entry per slot. Owned through raw pointers (from
    /// `Box::into_raw`, freed in `Drop`): the kernel may write any posted entry at any moment,
    /// so no reference to them may exist while slots are posted.
    headers: *mut [u8; HEADER_LEN],
    tags: *mut [u8; TAG_LEN],
    capacity: usize,
    posted: Vec<Option<Reservation<'a>>>,
    free: Vec<u32>,
    spare: Vec<Reservation<'a>>,
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
    /// A book of `capacity` slots into `lfc`. All per-slot memory is allocated here, once.
    pub fn new(lfc: &'a Lfc, capacity: usize) -> Self {
        SlotBook {
            lfc,
            ingest: Ingest::new(lfc),
            headers: leak_buffer::<HEADER_LEN>(capacity),
            tags: leak_buffer::<TAG_LEN>(capacity),
            capacity,
            posted: (0..capacity).map(|_| None).collect(),
            free: (0..capacity as u32).rev().collect(),
            spare: Vec::with_capacity(capacity),
            senders: SenderBatch::new(),
            leaked: false,
        }
    }

    /// Slots posted now.
    pub fn posted(&self) -> usize {
        self.capacity - self.free.len()
    }

    /// Posts a frame into every free slot while frames can be had (handed-back ones first):
    /// `post(slot_id, regions)` hands each to the receiver. A failed `post` leaves that slot
    /// free (its frame kept for the next attempt) and returns the error.
    ///
    /// # Safety
    /// `post` must behave as `udp::Receiver::post`'s contract asks of its caller's receiver:
    /// until the slot comes back through `complete` or `release`, only the receiver writes the
    /// regions, and it writes nothing after.
    pub unsafe fn post_free<E>(
        &mut self,
        mut post: impl FnMut(u32, SlotRegions) -> Result<(), E>,
    ) -> Result<(), E> {
        while let Some(&id) = self.free.last() {
            let Some(res) = self.spare.pop().or_else(|| self.lfc.reserve()) else {
                break;
            };
            let i = id as usize;
            // SAFETY: `i < capacity`, the length of both buffers.
            let (h, t) = unsafe {
                (
                    self.headers.add(i).cast::<u8>(),
                    self.tags.add(i).cast::<u8>(),
                )
            };
            if let Err(e) = post(id, SlotRegions::new(h, res.as_mut_ptr(), t)) {
                self.spare.push(res);
                return Err(e);
            }
            self.posted[i] = Some(res);
            self.free.pop();
        }
        Ok(())
    }

    /// A posted slot came back with a datagram (or an error): takes it back and hands what it
    /// received to `Ingest`. `None` for a failed receive (the frame is kept for the next post).
    /// Its sender's count waits for [`flush_senders`](Self::flush_senders).
    pub fn complete(
        &mut self,
        c: &Completion,
        now_wall_ns: u64,
        metrics: &ThreadMetrics,
    ) -> Option<Outcome> {
        let i = c.slot_id as usize;
        let res = self.posted[i].take().expect("a completed slot was posted");
        self.free.push(c.slot_id);
        metrics
            .kernel_drops
            .store(u64::from(c.kernel_drops), Ordering::Relaxed);
        if c.error.is_some() {
            self.spare.push(res);
            return None;
        }
        // SAFETY: the slot came back, so nothing writes its header and tag any more.
        let received = unsafe {
            Received {
                len: c.len,
                truncated: c.truncated,
                header: self.headers.add(i).read(),
                tag: self.tags.add(i).read(),
            }
        };
        let (outcome, back) = self.ingest.complete(res, &received, now_wall_ns, metrics);
        if let (Outcome::Done(verdict), Some(from)) = (&outcome, c.source) {
            match verdict {
                Ok(_) => self.senders.add(self.lfc, from, 1, 0),
                Err(r) if dropped_by_sender(*r) => self.senders.add(self.lfc, from, 0, 1),
                Err(_) => {}
            }
        }
        self.spare.extend(back);
        Some(outcome)
    }

    /// Adds the datagrams counted per sender since the last call to the LFC's sender table.
    /// Call it after each batch of completions.
    pub fn flush_senders(&mut self) {
        self.senders.flush(self.lfc);
    }

    /// A posted slot came back without data (cancelled): its frame is abandoned.
    pub fn release(&mut self, slot_id: u32) {
        if let Some(res) = self.posted[slot_id as usize].take() {
            res.abandon();
            self.free.push(slot_id);
        }
    }

    /// Abandons the frames kept for the next post and those of pages being joined from
    /// fragments (none is published).
    pub fn abandon_spare(&mut self) {
        self.spare.drain(..).for_each(Reservation::abandon);
        self.ingest.abandon_assembly();
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
        unsafe {
            free_buffer(self.headers, self.capacity);
            free_buffer(self.tags, self.capacity);
        }
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
    /// A pump on `receiver` into `lfc`. All per-slot memory is allocated here, once: `step`
    /// never allocates.
    pub fn new(lfc: &'a Lfc, receiver: Receiver) -> Self {
        let capacity = receiver.capacity();
        SlotPump {
            receiver,
            book: SlotBook::new(lfc, capacity),
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
                .post_free(|id, regions| receiver.post(id, regions))?
        };
        if self.receiver.posted() == 0 {
            return Ok(Step::NoSlot);
        }
        let n = self
            .receiver
            .wait(timeout, &mut self.completions)
            .map_err(UdpError::io("receiving datagrams"))?;
        // One clock read per batch: it only dates arrivals for the latency histogram, and one
        // per datagram was a tenth of the daemon's CPU.
        let now_wall_ns = if n > 0 { lfc::wall_ns() } else { 0 };
        for c in &self.completions[..n] {
            self.book.complete(c, now_wall_ns, metrics);
        }
        self.book.flush_senders();
        Ok(Step::Received(n))
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
                posted.push((id, r));
                Ok::<(), Infallible>(())
            })
        };
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
            book.complete(&done(id), 0, &metrics),
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
            book.complete(&done(id), 0, &metrics),
            Some(Outcome::Done(Ok(hdr)))
        );
        assert!(lfc.contains(&tag));
        // Counted by sender once the batch is flushed; the forged one not at all (its source
        // is anyone's to choose).
        assert_eq!(lfc.sender_counts().installed(), 0, "not before the flush");
        book.flush_senders();
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
