//! io_uring backend: one `IORING_OP_RECVMSG` per posted slot, scattering straight into the
//! caller's regions; waits use `io_uring_enter` with an extended-argument timeout.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use super::sys::SlotTable;
use super::{Completion, SlotRegions, UdpError};

/// `user_data` of cancel requests; receives use their table index (< `MAX_SLOTS`).
const CANCEL_USER_DATA: u64 = u64::MAX;

/// How long one round of `cancel_all` waits before re-issuing cancels for stragglers.
const CANCEL_ROUND: Duration = Duration::from_millis(100);

/// Rounds of `cancel_all` before giving up (several seconds in total).
const CANCEL_ROUNDS: usize = 100;

/// Checks that io_uring can be used here: the ring can be created, has the features this
/// backend needs (`IORING_FEAT_EXT_ARG` for timed waits, `IORING_OP_RECVMSG`), and a no-op
/// round-trips through it.
pub fn probe_uring() -> Result<(), UdpError> {
    let mut ring = build_ring(4)?;
    check_ring(&ring)?;
    let nop = opcode::Nop::new().build().user_data(7);
    // SAFETY: a NOP references no memory.
    unsafe { ring.submission().push(&nop) }.map_err(|_| UdpError::UringUnavailable {
        step: "queueing a no-op",
        source: io::Error::other("submission queue full"),
    })?;
    ring.submit_and_wait(1)
        .map_err(|source| UdpError::UringUnavailable {
            step: "io_uring_enter",
            source,
        })?;
    let cqe = ring.completion().next();
    match cqe {
        Some(c) if c.user_data() == 7 && c.result() >= 0 => Ok(()),
        Some(c) => Err(UdpError::UringUnavailable {
            step: "a no-op",
            source: io::Error::from_raw_os_error(-c.result()),
        }),
        None => Err(UdpError::UringUnavailable {
            step: "a no-op",
            source: io::Error::other("no completion"),
        }),
    }
}

fn build_ring(entries: u32) -> Result<IoUring, UdpError> {
    // COOP_TASKRUN (5.19+): completion work runs when this thread next enters the kernel
    // instead of interrupting it with an IPI; TASKRUN_FLAG tells us when such work waits, so
    // `submit` then passes GETEVENTS. Older kernels reject the flags: retry without them.
    let fast = IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(entries);
    match fast {
        Ok(ring) => Ok(ring),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .build(entries)
            .map_err(|source| UdpError::UringUnavailable {
                step: "io_uring_setup",
                source,
            }),
        Err(source) => Err(UdpError::UringUnavailable {
            step: "io_uring_setup",
            source,
        }),
    }
}

fn check_ring(ring: &IoUring) -> Result<(), UdpError> {
    if !ring.params().is_feature_ext_arg() {
        return Err(UdpError::UringMissingFeature(
            "IORING_FEAT_EXT_ARG (timed waits, Linux 5.11)",
        ));
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|source| UdpError::UringUnavailable {
            step: "IORING_REGISTER_PROBE",
            source,
        })?;
    if !probe.is_supported(opcode::RecvMsg::CODE) {
        return Err(UdpError::UringMissingFeature("IORING_OP_RECVMSG"));
    }
    Ok(())
}

pub(crate) struct UringReceiver {
    ring: IoUring,
    socket: UdpSocket,
    table: SlotTable,
    /// Receives queued in the SQ or owned by the kernel; each produces exactly one CQE.
    in_flight: usize,
    drops: u32,
}

// SAFETY: the ring, the slot table's entries and the caller regions they point to are not tied
// to a thread (the ring is not set up with SINGLE_ISSUER); post's contract keeps the regions
// valid for whichever thread owns the receiver. If the thread that submitted a receive exits,
// the kernel cancels it with -ECANCELED, which `reap` re-posts.
unsafe impl Send for UringReceiver {}

impl UringReceiver {
    pub(crate) fn new(socket: UdpSocket, max_slots: usize) -> Result<Self, UdpError> {
        // SQ: one entry per slot plus the same again for cancels. CQ: the default (2x SQ) is
        // more than the at most `max_slots` receives + cancels in flight, so it never overflows.
        let entries = (2 * max_slots).next_power_of_two().max(8) as u32;
        let ring = build_ring(entries)?;
        check_ring(&ring)?;
        Ok(UringReceiver {
            ring,
            socket,
            table: SlotTable::new(max_slots),
            in_flight: 0,
            drops: 0,
        })
    }

    pub(crate) fn table(&self) -> &SlotTable {
        &self.table
    }

    pub(crate) fn kernel_drops(&self) -> u32 {
        self.drops
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub(crate) fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// # Safety
    ///
    /// `Receiver::post`'s contract.
    pub(crate) unsafe fn post(
        &mut self,
        slot_id: u32,
        regions: SlotRegions,
    ) -> Result<(), UdpError> {
        // SAFETY: forwarded contract.
        let idx = unsafe { self.table.acquire(slot_id, regions) }
            .ok_or(UdpError::NoFreeSlot(self.table.capacity()))?;
        if let Err(e) = self.push_recv(idx) {
            self.table.release(idx);
            return Err(UdpError::Io {
                context: "queueing a receive",
                source: e,
            });
        }
        Ok(())
    }

    fn recv_sqe(&self, idx: u16) -> squeue::Entry {
        let fd = types::Fd(self.socket.as_raw_fd());
        // SAFETY: only computes the address of the entry's msghdr; `entry` is in bounds.
        let hdr = unsafe { std::ptr::addr_of_mut!((*self.table.entry(idx)).hdr) };
        // MSG_TRUNC: the result is the full datagram length, so oversize is visible.
        opcode::RecvMsg::new(fd, hdr)
            .flags(libc::MSG_TRUNC as u32)
            .build()
            .user_data(u64::from(idx))
    }

    /// Queues a receive for (rearmed) entry `idx`; counts it in flight.
    fn push_recv(&mut self, idx: u16) -> io::Result<()> {
        let sqe = self.recv_sqe(idx);
        self.push(&sqe)?;
        self.in_flight += 1;
        Ok(())
    }

    fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        for _ in 0..2 {
            // SAFETY: a receive SQE references a posted entry (stable heap memory owned by
            // `self.table`) and caller regions covered by post's contract; the entry stays
            // posted — and `self` does not drop — until its CQE is reaped. Cancel SQEs
            // reference no memory.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            // SQ full: hand what is queued to the kernel and retry once.
            self.ring.submit()?;
        }
        Err(io::Error::other("io_uring submission queue stays full"))
    }

    pub(crate) fn wait(&mut self, timeout: Duration, out: &mut [Completion]) -> io::Result<usize> {
        if self.in_flight == 0 || out.is_empty() {
            return Ok(0);
        }
        let mut n = self.reap(out)?;
        if n == 0 {
            let ts = types::Timespec::from(timeout);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                // ETIME: timed out; EINTR: a signal; EBUSY: CQ overflow backlog — reap below.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e),
            }
            n = self.reap(out)?;
        }
        // Hand re-posted receives (and any posted since the last wait) to the kernel.
        if !self.ring.submission().is_empty() {
            self.submit()?;
        }
        Ok(n)
    }

    fn submit(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                // Left in the SQ; the next enter submits them.
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves finished receives from the CQ into `out`; transient failures are re-posted.
    fn reap(&mut self, out: &mut [Completion]) -> io::Result<usize> {
        let mut n = 0;
        while n < out.len() {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            if let Some(c) = self.finish(&cqe, true)? {
                out[n] = c;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Handles one CQE. Returns the completion to report, if any. With `repost`, transient
    /// errors (EAGAIN, EINTR, ECANCELED from a thread exit, ENOBUFS) re-queue the receive.
    fn finish(&mut self, cqe: &cqueue::Entry, repost: bool) -> io::Result<Option<Completion>> {
        let ud = cqe.user_data();
        if ud == CANCEL_USER_DATA {
            return Ok(None);
        }
        let idx = match u16::try_from(ud) {
            Ok(i) if self.table.is_posted(i) => i,
            // Not ours: impossible unless the ring is shared; ignore rather than panic.
            _ => return Ok(None),
        };
        self.in_flight -= 1;
        let res = cqe.result();
        if res < 0 {
            let err = -res;
            if repost
                && matches!(
                    err,
                    libc::EAGAIN | libc::EINTR | libc::ECANCELED | libc::ENOBUFS
                )
            {
                // SAFETY: the CQE means the kernel is done with this entry.
                unsafe { self.table.rearm(idx) };
                self.push_recv(idx)?;
                return Ok(None);
            }
            let c = Completion {
                slot_id: self.table.slot_id(idx),
                error: Some(err),
                kernel_drops: self.drops,
                ..Completion::default()
            };
            self.table.release(idx);
            return Ok(Some(c));
        }
        // SAFETY: only computes the address of the entry's msghdr; `entry` is in bounds.
        let hdr = unsafe { std::ptr::addr_of!((*self.table.entry(idx)).hdr) };
        // SAFETY: the CQE means the kernel finished this receive and wrote back the entry's
        // own msghdr, whose name/control pointers are the entry's buffers.
        let (mut c, drops) = unsafe { self.table.complete(idx, hdr, res as usize) };
        if let Some(d) = drops {
            self.drops = d;
        }
        c.kernel_drops = self.drops;
        self.table.release(idx);
        Ok(Some(c))
    }

    pub(crate) fn cancel_all(&mut self, released: &mut dyn FnMut(u32)) -> io::Result<()> {
        for _ in 0..CANCEL_ROUNDS {
            if self.in_flight == 0 {
                return Ok(());
            }
            // Queued receives are submitted before the cancels that follow them in the SQ, so
            // every receive is known to the kernel when its cancel is processed.
            for idx in 0..self.table.capacity() as u16 {
                if self.table.is_posted(idx) {
                    let sqe = opcode::AsyncCancel::new(u64::from(idx))
                        .build()
                        .user_data(CANCEL_USER_DATA);
                    self.push(&sqe)?;
                }
            }
            let ts = types::Timespec::from(CANCEL_ROUND);
            let args = types::SubmitArgs::new().timespec(&ts);
            let deadline_rounds = 1 + self.in_flight;
            for _ in 0..deadline_rounds {
                match self.ring.submitter().submit_with_args(1, &args) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ETIME) => break,
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                    Err(e) => return Err(e),
                }
                loop {
                    let Some(cqe) = self.ring.completion().next() else {
                        break;
                    };
                    // Without re-posting, every receive CQE (data, error or -ECANCELED)
                    // releases its slot; data that raced in is discarded.
                    if let Some(c) = self.finish(&cqe, false)? {
                        released(c.slot_id);
                    }
                }
                if self.in_flight == 0 {
                    return Ok(());
                }
            }
        }
        if self.in_flight == 0 {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "{} io_uring receives did not finish after cancellation",
                self.in_flight
            )))
        }
    }
}

impl Drop for UringReceiver {
    fn drop(&mut self) {
        if self.in_flight == 0 {
            return;
        }
        if let Err(e) = self.cancel_all(&mut |_| {}) {
            // The kernel may still write into caller memory that is about to be reused:
            // continuing would be a use-after-free, so stop the process instead.
            tracing::error!(error = %e, "cannot cancel io_uring receives; aborting");
            std::process::abort();
        }
    }
}
