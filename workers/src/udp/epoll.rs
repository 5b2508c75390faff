//! epoll backend: mio readiness (edge-triggered) and `recvmmsg` over the posted slots until the
//! socket reports `EAGAIN`.
//!
//! How it meets the [`RecvBackend`] contract: the kernel touches slot memory only inside a
//! `recvmmsg` call made by `wait`, so a posted slot is merely remembered, in a FIFO ring that
//! gives the contract's oldest-first order, and `cancel_all` and drop need no kernel round trip.
//! Readiness is edge-triggered, so the backend keeps a `readable` flag that only `EAGAIN`
//! clears; that is how datagrams queued before a `wait` are found. A `recvmmsg` failure is
//! returned as `Err` by `wait` (completions never carry an errno) and leaves the unfilled slots
//! posted.
//!
//! Owns: `EpollReceiver`: its socket, the mio registration, the FIFO ring of posted slots, the
//! `readable` flag and its slot table. Reached only through `RecvBackend` (the type is private to
//! `udp`); it sees slots as raw regions and knows nothing of datagrams or the LFC.

use std::io;
use std::mem;
use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::ptr;
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};

use super::backend::RecvBackend;
use super::sys::{errno, SlotTable};
use super::{Completion, IoBackend, SlotRegions, UdpError};

const SOCKET: Token = Token(0);

pub(crate) struct EpollReceiver {
    poll: Poll,
    events: Events,
    socket: mio::net::UdpSocket,
    table: SlotTable,
    /// Posted entries in posting order (a ring of `table` indices), so slots are used FIFO.
    queue: Box<[u16]>,
    head: usize,
    len: usize,
    /// Scratch array handed to `recvmmsg`, rebuilt from `queue` before every call.
    mmsg: Box<[libc::mmsghdr]>,
    /// The socket may have queued datagrams: set by a readiness event, cleared only when
    /// `recvmmsg` says `EAGAIN`. mio is edge-triggered, so stopping early (out of slots or of
    /// room in `out`) must keep this set or the remaining datagrams would wait for a new one.
    readable: bool,
}

// SAFETY: the raw pointers inside `mmsg` and the slot table point either into this value's own
// heap allocations or into caller memory that `Receiver::post`'s contract keeps valid for
// whichever thread owns the receiver; nothing is tied to the creating thread.
unsafe impl Send for EpollReceiver {}

impl RecvBackend for EpollReceiver {
    fn new(socket: UdpSocket, max_slots: usize) -> Result<Self, UdpError> {
        let poll = Poll::new().map_err(UdpError::io("creating an epoll instance"))?;
        let mut socket = mio::net::UdpSocket::from_std(socket);
        poll.registry()
            .register(&mut socket, SOCKET, Interest::READABLE)
            .map_err(UdpError::io("registering the socket with epoll"))?;
        let mmsg = (0..max_slots)
            // SAFETY: mmsghdr is a plain C struct; all-zero is a valid value.
            .map(|_| unsafe { mem::zeroed::<libc::mmsghdr>() })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Ok(EpollReceiver {
            poll,
            events: Events::with_capacity(4),
            socket,
            table: SlotTable::new(max_slots),
            queue: vec![0; max_slots].into_boxed_slice(),
            head: 0,
            len: 0,
            mmsg,
            // Datagrams may already be queued; one recvmmsg finds out.
            readable: true,
        })
    }

    fn kind(&self) -> IoBackend {
        IoBackend::Epoll
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
        // `len < capacity` here because the table had a free entry.
        let tail = (self.head + self.len) % self.queue.len();
        self.queue[tail] = idx;
        self.len += 1;
        Ok(())
    }

    fn wait(&mut self, timeout: Duration, out: &mut [Completion]) -> io::Result<usize> {
        if self.len == 0 || out.is_empty() {
            return Ok(0);
        }
        if self.readable {
            let n = self.drain(out)?;
            if n > 0 {
                return Ok(n);
            }
        }
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(e),
        }
        if self.events.iter().any(|ev| ev.token() == SOCKET) {
            self.readable = true;
            return self.drain(out);
        }
        Ok(0)
    }

    fn cancel_all(&mut self, released: &mut dyn FnMut(u32)) -> io::Result<()> {
        // Nothing to cancel in the kernel: epoll receives only touch slots inside recvmmsg.
        while self.len > 0 {
            let idx = self.queue[self.head];
            released(self.table.slot_id(idx));
            self.table.release(idx);
            self.head = (self.head + 1) % self.queue.len();
            self.len -= 1;
        }
        Ok(())
    }
}

impl EpollReceiver {
    /// `recvmmsg` over the posted slots (oldest first) until `EAGAIN`, no slot left, or `out`
    /// full.
    fn drain(&mut self, out: &mut [Completion]) -> io::Result<usize> {
        let mut done = 0;
        while self.readable && self.len > 0 && done < out.len() {
            let batch = self.len.min(out.len() - done);
            for i in 0..batch {
                let idx = self.queue[(self.head + i) % self.queue.len()];
                // SAFETY: posted entries are not owned by the kernel between syscalls: epoll
                // receives are synchronous.
                unsafe { self.table.rearm(idx) };
                // SAFETY: the entry pointer is valid; its header was just rearmed and points
                // at the entry's own iovecs/name/control buffers, which do not move.
                let hdr = unsafe { ptr::read(ptr::addr_of!((*self.table.entry(idx)).hdr)) };
                self.mmsg[i] = libc::mmsghdr {
                    msg_hdr: hdr,
                    msg_len: 0,
                };
            }
            // SAFETY: `mmsg[..batch]` are valid headers whose buffers are either ours or
            // caller regions valid for writes (post's contract); MSG_DONTWAIT keeps it from
            // blocking; MSG_TRUNC makes msg_len the full datagram length.
            let rc = unsafe {
                libc::recvmmsg(
                    self.socket.as_raw_fd(),
                    self.mmsg.as_mut_ptr(),
                    batch as libc::c_uint,
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    ptr::null_mut(),
                )
            };
            if rc < 0 {
                match errno() {
                    libc::EAGAIN => self.readable = false,
                    libc::EINTR => continue,
                    e => {
                        if done > 0 {
                            // Hand over what we have; the error comes back on the next call.
                            return Ok(done);
                        }
                        return Err(io::Error::from_raw_os_error(e));
                    }
                }
                break;
            }
            let got = rc as usize;
            for i in 0..got {
                let idx = self.queue[self.head];
                let m = &self.mmsg[i];
                // SAFETY: recvmmsg finished with entry `idx`, and `m.msg_hdr` is the header it
                // wrote, pointing at that entry's buffers.
                out[done + i] = unsafe {
                    self.table
                        .complete(idx, ptr::addr_of!(m.msg_hdr), m.msg_len as usize)
                };
                self.head = (self.head + 1) % self.queue.len();
                self.len -= 1;
            }
            done += got;
        }
        Ok(done)
    }
}
