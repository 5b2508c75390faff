//! One receive socket's slots: reserved LFC frames posted as receive slots, and what arrives in
//! them handed to [`Ingest`]. Each daemon worker thread runs one pump in a loop (`daemon`).
//!
//! Owns the per-slot header and tag buffers, the reservation posted in each slot and the frames
//! handed back by `Ingest` (posted again before any new frame is claimed). Depends on `udp`
//! (sockets), `ingest` (validation) and `lfc`; nothing here reads a clock except to date a batch.

use crate::datagram::{HEADER_LEN, TAG_LEN};
use crate::ingest::{Ingest, Received};
use crate::metrics::ThreadMetrics;
use crate::udp::{Completion, Receiver, SlotRegions, UdpError};
use lfc::{Lfc, Reservation};
use std::io;
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

/// A receiver and the LFC frames posted in it. Dropping it takes every slot back from the
/// kernel before any buffer is freed or any frame abandoned.
pub struct SlotPump<'a> {
    // Declared first so that, should `shutdown` fail, the receiver is dropped (and the kernel
    // stops writing) before the buffers below.
    receiver: Receiver,
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
    completions: Vec<Completion>,
    shut: bool,
}

// SAFETY: the raw pointers are this value's own heap buffers; a pump is created on one thread
// and run on another (the daemon's workers), never shared.
unsafe impl Send for SlotPump<'_> {}

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

impl<'a> SlotPump<'a> {
    /// A pump on `receiver` into `lfc`. All per-slot memory is allocated here, once: `step`
    /// never allocates.
    pub fn new(lfc: &'a Lfc, receiver: Receiver) -> Self {
        let capacity = receiver.capacity();
        SlotPump {
            receiver,
            lfc,
            ingest: Ingest::new(lfc),
            headers: leak_buffer::<HEADER_LEN>(capacity),
            tags: leak_buffer::<TAG_LEN>(capacity),
            capacity,
            posted: (0..capacity).map(|_| None).collect(),
            free: (0..capacity as u32).rev().collect(),
            spare: Vec::with_capacity(capacity),
            completions: vec![Completion::default(); capacity],
            shut: false,
        }
    }

    /// Posts a frame into every free slot, waits up to `timeout` for datagrams and hands what
    /// arrived to `Ingest` (installed, or the frame kept for the next post).
    pub fn step(&mut self, timeout: Duration, metrics: &ThreadMetrics) -> Result<Step, UdpError> {
        self.post_free()?;
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
        for i in 0..n {
            let c = self.completions[i];
            self.complete(&c, now_wall_ns, metrics);
        }
        Ok(Step::Received(n))
    }

    /// Takes every slot back from the kernel and abandons the frames (none is published).
    pub fn shutdown(&mut self) -> io::Result<()> {
        if self.shut {
            return Ok(());
        }
        self.spare.drain(..).for_each(Reservation::abandon);
        let posted = &mut self.posted;
        self.receiver.cancel_all(&mut |id| {
            if let Some(res) = posted[id as usize].take() {
                res.abandon();
            }
        })?;
        self.shut = true;
        Ok(())
    }

    /// Posts a frame into every free slot while frames can be had (handed-back ones first).
    fn post_free(&mut self) -> Result<(), UdpError> {
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
            // SAFETY: the header and tag buffers live until this pump is dropped, after every
            // posted slot was taken back; the page region is a reserved LFC frame that no one
            // else reads or writes until the reservation is published or abandoned, which
            // happens only after the slot is back.
            unsafe {
                self.receiver
                    .post(id, SlotRegions::new(h, res.as_mut_ptr(), t))?
            };
            self.posted[i] = Some(res);
            self.free.pop();
        }
        Ok(())
    }

    /// Takes back one completed slot and hands what it received to `ingest`.
    fn complete(&mut self, c: &Completion, now_wall_ns: u64, metrics: &ThreadMetrics) {
        let i = c.slot_id as usize;
        let res = self.posted[i].take().expect("a completed slot was posted");
        self.free.push(c.slot_id);
        metrics
            .kernel_drops
            .store(u64::from(c.kernel_drops), Ordering::Relaxed);
        if c.error.is_some() {
            self.spare.push(res);
            return;
        }
        // SAFETY: the slot came back, so the kernel no longer writes its header and tag.
        let received = unsafe {
            Received {
                len: c.len,
                truncated: c.truncated,
                header: self.headers.add(i).read(),
                tag: self.tags.add(i).read(),
            }
        };
        let (_, back) = self.ingest.complete(res, &received, now_wall_ns, metrics);
        self.spare.extend(back);
    }
}

impl Drop for SlotPump<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "taking receive slots back failed");
        }
        if self.receiver.posted() == 0 {
            // SAFETY: no slot is posted, so the kernel references neither buffer, and they
            // came from `leak_buffer` with this capacity.
            unsafe {
                free_buffer(self.headers, self.capacity);
                free_buffer(self.tags, self.capacity);
            }
        }
        // Otherwise they are leaked on purpose: the kernel may still write them until the
        // receiver's own drop (after this) has cancelled its receives or aborted.
    }
}
