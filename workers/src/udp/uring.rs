//! io_uring backend: one `IORING_OP_RECVMSG` per posted slot, scattering straight into the
//! caller's regions; waits use `io_uring_enter` with an extended-argument timeout.
//!
//! How it meets the [`RecvBackend`] contract: the kernel owns a posted slot from the moment its
//! receive is submitted (normally by the next `wait`) until that receive's CQE is reaped, and
//! every receive produces exactly one CQE, so `in_flight` counts every slot the kernel may
//! still write.
//! Transient per-receive failures are re-posted; other ones, and transient ones whose re-post
//! cannot be queued, become completions carrying the errno (so every reaped receive CQE either
//! re-arms its slot or returns it). `cancel_all` issues `IORING_OP_ASYNC_CANCEL` for every
//! posted slot and reaps until none is in flight; `Drop` does the same and aborts the process
//! if the kernel never lets go. Completion order is the kernel's.
//!
//! Owns: `UringReceiver` (the ring, the socket, its slot table and the count of receives in flight)
//! and the capability probe `probe_uring`. Reached only through `RecvBackend` (the type is private
//! to `udp`); it sees slots as raw regions and knows nothing of datagrams or the LFC.

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use super::backend::RecvBackend;
use super::sys::SlotTable;
use super::{Completion, IoBackend, SlotRegions, UdpError};

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
    /// Test hook: makes the submit that frees room in a full SQ misbehave.
    #[cfg(test)]
    room_fault: RoomFault,
}

/// How the submit that [`UringReceiver::push`] makes to free room in a full SQ misbehaves, in
/// tests: the two ways a re-post can fail.
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default)]
enum RoomFault {
    /// Submit for real.
    #[default]
    None,
    /// The submit returns but the kernel takes nothing: the SQ stays full.
    Stuck,
    /// The submit fails with this errno.
    Fail(i32),
}

// SAFETY: the ring, the slot table's entries and the caller regions they point to are not tied
// to a thread (the ring is not set up with SINGLE_ISSUER); post's contract keeps the regions
// valid for whichever thread owns the receiver. If the thread that submitted a receive exits,
// the kernel cancels it with -ECANCELED, which `reap` re-posts.
unsafe impl Send for UringReceiver {}

impl RecvBackend for UringReceiver {
    fn new(socket: UdpSocket, max_slots: usize) -> Result<Self, UdpError> {
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
            #[cfg(test)]
            room_fault: RoomFault::None,
        })
    }

    fn kind(&self) -> IoBackend {
        IoBackend::Uring
    }

    fn table(&self) -> &SlotTable {
        &self.table
    }

    fn socket(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    unsafe fn post(&mut self, slot_id: u32, regions: &[SlotRegions]) -> Result<(), UdpError> {
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

    fn wait(&mut self, timeout: Duration, out: &mut [Completion]) -> io::Result<usize> {
        if self.in_flight == 0 || out.is_empty() {
            return Ok(0);
        }
        let mut n = self.reap(out);
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
            n = self.reap(out);
        }
        // Hand re-posted receives (and any posted since the last wait) to the kernel. Their
        // slots are released from the table already, so completions in `out` must not be
        // lost to an `Err`: the SQEs stay queued, and the next wait's enter submits them (or
        // reports the error).
        if !self.ring.submission().is_empty() {
            if let Err(e) = self.submit() {
                if n == 0 {
                    return Err(e);
                }
            }
        }
        Ok(n)
    }

    fn cancel_all(&mut self, released: &mut dyn FnMut(u32)) -> io::Result<()> {
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
                    if let Some(c) = self.finish(&cqe, false) {
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

impl UringReceiver {
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
            self.make_room()?;
        }
        Err(io::Error::other("io_uring submission queue stays full"))
    }

    /// Submits what is queued, to free room in a full SQ.
    fn make_room(&mut self) -> io::Result<()> {
        #[cfg(test)]
        match self.room_fault {
            RoomFault::None => {}
            RoomFault::Stuck => return Ok(()),
            RoomFault::Fail(errno) => return Err(io::Error::from_raw_os_error(errno)),
        }
        self.ring.submit().map(drop)
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
    fn reap(&mut self, out: &mut [Completion]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            if let Some(c) = self.finish(&cqe, true) {
                out[n] = c;
                n += 1;
            }
        }
        n
    }

    /// Handles one CQE. Returns the completion to report, if any. With `repost`, transient
    /// errors (EAGAIN, EINTR, ECANCELED from a thread exit, ENOBUFS) re-queue the receive; if
    /// the re-post cannot be queued, the slot comes back as a failed completion carrying that
    /// transient errno. Infallible on purpose: a receive CQE that is reaped has left the kernel,
    /// so its slot must be re-armed or returned here, never left posted behind an `Err`.
    fn finish(&mut self, cqe: &cqueue::Entry, repost: bool) -> Option<Completion> {
        let ud = cqe.user_data();
        if ud == CANCEL_USER_DATA {
            return None;
        }
        let idx = match u16::try_from(ud) {
            Ok(i) if self.table.is_posted(i) => i,
            // Not ours: impossible unless the ring is shared; ignore rather than panic.
            _ => return None,
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
                if self.push_recv(idx).is_ok() {
                    return None;
                }
                // The SQ stayed full after a submit, or that submit failed. Nothing of this
                // slot is in flight any more, so left posted it would be lost: `wait` would
                // never see a CQE for it and `cancel_all` (in_flight == 0) would not release
                // it. Fail it like any other receive instead. The errno is the receive's own,
                // not the submit's (which may have none): it tells the caller the failure was
                // transient and posting the slot again is the right reaction. A submit error
                // that persists comes back from the next `io_uring_enter` of `wait`.
            }
            return Some(self.table.fail(idx, err));
        }
        // SAFETY: only computes the address of the entry's msghdr; `entry` is in bounds.
        let hdr = unsafe { std::ptr::addr_of!((*self.table.entry(idx)).hdr) };
        // SAFETY: the CQE means the kernel finished this receive and wrote back the entry's
        // own msghdr, whose name/control pointers are the entry's buffers.
        Some(unsafe { self.table.complete(idx, hdr, res as usize) })
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

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, UdpSocket};
    use std::time::Instant;

    use super::*;
    use crate::udp::{HEADER_LEN, PAGE_LEN, TAG_LEN};

    /// Guard against a hung test; never used to decide success.
    const DEADLINE: Duration = Duration::from_secs(20);

    /// A receive that fails transiently (-ECANCELED) while its re-post cannot be queued comes
    /// back from `wait` as a failed completion and frees its slot, rather than as an `Err` that
    /// left the slot posted with nothing in flight, lost to `wait` and `cancel_all` alike.
    fn failed_repost_returns_the_slot(fault: RoomFault) {
        // Declared before the receiver, so dropped after it.
        let mut mem = vec![0u8; HEADER_LEN + PAGE_LEN + TAG_LEN];
        let base = mem.as_mut_ptr();
        // SAFETY: all three offsets are within `mem`.
        let regions = unsafe {
            SlotRegions::new(base, base.add(HEADER_LEN), base.add(HEADER_LEN + PAGE_LEN))
        };
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        sock.set_nonblocking(true).unwrap();
        let addr = sock.local_addr().unwrap();
        // One slot: had it leaked, the second `post` below would find no free one.
        let mut rx = UringReceiver::new(sock, 1).unwrap();
        let mut out = [Completion::default(); 4];

        // SAFETY: `mem` outlives `rx` and is only read while the slot is not posted.
        unsafe { rx.post(7, &[regions]) }.unwrap();
        // Submits the receive, which waits in the kernel: nothing was sent.
        assert_eq!(rx.wait(Duration::ZERO, &mut out).unwrap(), 0);
        assert_eq!((rx.in_flight, rx.table.is_posted(0)), (1, true));

        // Cancel it behind the backend's back: its CQE is -ECANCELED, which `wait` re-posts.
        let cancel = opcode::AsyncCancel::new(0)
            .build()
            .user_data(CANCEL_USER_DATA);
        rx.push(&cancel).unwrap();
        let start = Instant::now();
        while rx.ring.completion().len() < 2 {
            assert!(start.elapsed() < DEADLINE, "the cancel did not complete");
            let ts = types::Timespec::from(Duration::from_millis(100));
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = rx.ring.submitter().submit_with_args(2, &args);
        }
        // Fill the SQ (NOP CQEs carry the cancel user_data, which `finish` ignores) and make
        // the submit that should free room misbehave.
        let nop = opcode::Nop::new().build().user_data(CANCEL_USER_DATA);
        {
            let mut sq = rx.ring.submission();
            // SAFETY: a NOP references no memory.
            while unsafe { sq.push(&nop) }.is_ok() {}
        }
        rx.room_fault = fault;

        let n = rx.wait(Duration::ZERO, &mut out).unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            out[0],
            Completion {
                slot_id: 7,
                error: Some(libc::ECANCELED),
                ..Completion::default()
            }
        );
        assert_eq!(
            (rx.in_flight, rx.posted(), rx.table.is_posted(0)),
            (0, 0, false)
        );

        // Nothing is left to take back, and the slot is free again and works.
        rx.room_fault = RoomFault::None;
        let mut released = 0;
        rx.cancel_all(&mut |_| released += 1).unwrap();
        assert_eq!(released, 0);
        // SAFETY: as above.
        unsafe { rx.post(8, &[regions]) }.unwrap();
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        tx.send_to(&[0x5A; 100], addr).unwrap();
        let c = loop {
            assert!(start.elapsed() < DEADLINE, "no datagram");
            if rx.wait(Duration::from_millis(100), &mut out).unwrap() == 1 {
                break out[0];
            }
        };
        assert_eq!((c.slot_id, c.len, c.error), (8, 100, None));
        assert_eq!(c.source, Some(tx.local_addr().unwrap()));
        assert!(mem[..100].iter().all(|&b| b == 0x5A));
    }

    #[test]
    fn repost_into_a_queue_that_stays_full_returns_the_slot() {
        failed_repost_returns_the_slot(RoomFault::Stuck);
    }

    #[test]
    fn repost_after_a_failed_submit_returns_the_slot() {
        failed_repost_returns_the_slot(RoomFault::Fail(libc::EBUSY));
    }
}
