//! The contract between `Receiver` and its I/O backends.
//!
//! As in mio's `sys` layer, every backend implements one written-down interface,
//! [`RecvBackend`], and `Receiver` only forwards to it. Checks that do not depend on the backend
//! (slot count, region validation, making the socket non-blocking) happen once in `Receiver`,
//! before a backend sees its arguments. Whatever a caller may rely on is stated on the trait: a
//! backend that cannot keep a rule changes the contract here (and `Receiver`'s public docs)
//! rather than quietly behaving differently from the other one.
//!
//! Owns: the contract alone (`RecvBackend`, whose default methods read the backend's `SlotTable`);
//! no state, and no system call beyond reading the socket's address. It names neither
//! implementation, and only `Receiver` calls through it.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use socket2::SockRef;

use super::sys::SlotTable;
use super::{Completion, IoBackend, SlotRegions, UdpError};

/// A receive backend: owns one UDP socket and a [`SlotTable`], and moves datagrams from the
/// socket into caller-posted slots.
///
/// # Contract
///
/// **Construction.** [`new`](Self::new) gets a non-blocking socket and `max_slots` in
/// `1..=MAX_SLOTS` (checked by `Receiver`), and allocates everything the backend will ever need
/// for that many posted slots.
///
/// **Slot memory.** The caller owns every slot's memory. From a successful
/// [`post`](Self::post) until the slot comes back, the backend — and through it the kernel —
/// may write any byte of the slot's regions at any moment. A slot comes back exactly once, by
/// exactly one of: a [`Completion`] from [`wait`](Self::wait); the `released` callback of
/// [`cancel_all`](Self::cancel_all); or the backend being dropped. A failed `post` leaves
/// nothing posted. `slot_id` is the caller's: the backend returns it as given and never
/// interprets it.
///
/// **Slots of several regions.** A posted slot is 1 to `MAX_SLOT_DATAGRAMS` datagram regions
/// (checked by `Receiver`), and one receive fills it through one iovec `[header, page, tag] ×
/// k`: the backend never splits a slot over several receives, nor joins slots in one. Its
/// completion reports the bytes received and, when the kernel coalesced datagrams (UDP GRO),
/// their segment size (`Completion::segment_len`, from the `UDP_GRO` control message); the
/// backend interprets neither.
///
/// **Waiting.** `wait` blocks for at most about `timeout` until at least one posted slot
/// completes, then writes up to `out.len()` completions and returns how many. It returns
/// `Ok(0)`, never an error, on timeout, on a signal and after a spurious wake-up, and at once,
/// without sleeping, when no slot is posted or `out` is empty (a caller out of slots must not
/// sleep here forever). `Duration::ZERO` only collects what is ready. Datagrams that were
/// already queued on the socket before `wait` are found without a new wake-up.
///
/// **Order.** epoll fills posted slots first in, first out (oldest posted first) and reports
/// them in that order. io_uring promises no order: completions come in the kernel's order.
/// Callers identify slots by `slot_id` only.
///
/// **Errors.** A receive that failed for one slot comes back as a completion with
/// `error: Some(errno)` (slot contents meaningless) — only io_uring does this; it re-posts
/// transient failures (`EAGAIN`, `EINTR`, `ECANCELED`, `ENOBUFS`) itself, and reports one (with
/// that errno) only when the re-post cannot be queued, so the slot is never left posted with no
/// receive behind it. epoll's completions never carry an error: a failed `recvmmsg` is an
/// `Err` from `wait` (after the completions gathered before it were returned by an `Ok`).
/// After an `Err` from `wait` the slots not returned stay posted; the caller may wait again,
/// `cancel_all`, or drop.
///
/// **No allocation.** `post`, `wait` and `cancel_all` do not allocate, except to build an
/// `io::Error` on a failure path.
///
/// **Cancelling.** `cancel_all` calls `released` once for every posted slot. When it returns
/// `Ok(())` no slot is posted, the kernel references no slot memory, data that raced in is
/// discarded, and the backend is usable again. On `Err` (io_uring only: the kernel did not give
/// its receives back in several seconds) the slots not released are still posted.
///
/// **Drop.** When dropping a backend returns, the kernel references no slot memory. io_uring
/// cancels and waits for its receives; if that fails it aborts the process rather than let the
/// kernel write into memory the caller is about to reuse. (Leaking a backend with slots posted
/// is therefore forbidden by `post`'s contract.)
///
/// **Threads.** A backend is `Send`, with slots posted: it is created on one thread and run on
/// a worker thread.
pub(crate) trait RecvBackend: Send {
    /// Sets the backend up on `socket` for up to `max_slots` posted slots (see the contract).
    fn new(socket: UdpSocket, max_slots: usize) -> Result<Self, UdpError>
    where
        Self: Sized;

    /// Which backend this is.
    fn kind(&self) -> IoBackend;

    /// The slot table: which slots are posted, and the last kernel drop counter seen.
    fn table(&self) -> &SlotTable;

    /// The socket the backend receives on.
    fn socket(&self) -> BorrowedFd<'_>;

    /// Posts a slot (validated by `Receiver`). io_uring queues the receive, which the kernel
    /// sees from the next [`wait`](Self::wait) on; epoll only remembers the slot.
    ///
    /// Fails with [`UdpError::NoFreeSlot`] when [`capacity`](Self::capacity) slots are posted.
    ///
    /// # Safety
    ///
    /// `Receiver::post`'s contract: until the slot comes back, each region stays valid for
    /// writes of its length and nothing else reads or writes it.
    unsafe fn post(&mut self, slot_id: u32, regions: &[SlotRegions]) -> Result<(), UdpError>;

    /// Waits for completions (see the contract).
    fn wait(&mut self, timeout: Duration, out: &mut [Completion]) -> io::Result<usize>;

    /// Takes back every posted slot (see the contract).
    fn cancel_all(&mut self, released: &mut dyn FnMut(u32)) -> io::Result<()>;

    /// How many slots can be posted at once.
    fn capacity(&self) -> usize {
        self.table().capacity()
    }

    /// How many slots are posted right now.
    fn posted(&self) -> usize {
        self.table().in_use()
    }

    /// The latest kernel drop counter (`SO_RXQ_OVFL`) seen on the socket.
    fn kernel_drops(&self) -> u32 {
        self.table().kernel_drops()
    }

    /// The socket's local address.
    fn local_addr(&self) -> io::Result<SocketAddr> {
        SockRef::from(&self.socket())
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("the receive socket has no IP address"))
    }

    /// The socket's descriptor.
    fn as_raw_fd(&self) -> RawFd {
        self.socket().as_raw_fd()
    }
}
