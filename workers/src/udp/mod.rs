//! Platform UDP layer of the worker daemon and the page server's batched sender.
//!
//! Everything that talks to the kernel about UDP sockets lives here, behind a small interface
//! (in the spirit of `quinn-udp`): the rest of the crate never builds a `msghdr`.
//!
//! # Receiving
//!
//! * [`bind_reuseport`] makes one `SO_REUSEPORT` socket with a large receive buffer and
//!   `SO_RXQ_OVFL` enabled; each worker thread calls it for the same address (the first may bind
//!   port 0, which gets a port no other socket holds, never another group's; the others then
//!   bind the port it got; [`bind_reuseport_group`] does exactly that).
//! * [`Receiver`] receives datagrams **straight into caller-owned memory**. The caller hands it
//!   *slots* with [`Receiver::post`]: three raw regions, `[header | page | tag]`, filled by one
//!   `recvmsg` with a three-entry iovec, so the page lands directly in (for example) a shared
//!   LFC slot without a copy. [`Receiver::wait`] returns [`Completion`]s; a completed slot is no
//!   longer posted and belongs to the caller again.
//! * Two backends behind the same type, chosen at run time ([`IoBackend`]): io_uring (one
//!   `IORING_OP_RECVMSG` per posted slot) and epoll (mio readiness, then `recvmmsg` over all
//!   posted slots until `EAGAIN`). Both implement one crate-private trait, `RecvBackend`
//!   (`udp/backend.rs`), whose documentation is the written contract every backend keeps;
//!   [`Receiver`] only checks arguments and forwards. [`IoChoice::resolve`] turns
//!   `--io auto|uring|epoll` into a backend, probing io_uring with [`probe_uring`] and falling
//!   back to epoll with a warning.
//! * Everything is allocated in [`Receiver::new`] (at most [`MAX_SLOTS`] slots): posting,
//!   waiting and completing never allocate.
//! * UDP GRO ([`set_gro`]): the kernel may hand one receive a train of datagrams of one
//!   size from one sender. A slot then holds up to [`MAX_SLOT_DATAGRAMS`] triples
//!   ([`Receiver::post_train`]), and the completion names the segment size
//!   ([`Completion::segment_len`], read from the `UDP_GRO` control message by
//!   [`parse_control`]); the caller splits the train ([`Completion::datagrams`]).
//!
//! # Sending
//!
//! [`GsoSender`] sends batches of equal-size datagrams to one destination with `sendmmsg`,
//! packing up to 64 KiB per message with UDP GSO (`UDP_SEGMENT`) when the kernel and the path
//! allow it, and falling back to one datagram per message otherwise.
//!
//! # Testing aids
//!
//! [`seccomp`] installs a seccomp filter that makes `io_uring_setup` fail, to test the
//! fallback for real.
//!
//! Owns: `Receiver`, the choice of its backend (`IoChoice::resolve`) and the types callers see
//! (`SlotRegions`, `Completion`, `UdpError`). Moves bytes only: it takes the datagram's lengths
//! from `datagram` (and the page's from `lfc`) but parses no datagram and decides nothing about a
//! page; a slot is raw memory its caller posted, never an `Lfc`. It uses none of the daemon's
//! modules.

mod backend;
mod epoll;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub mod seccomp;
mod send;
mod socket;
mod sys;
mod uring;

use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::str::FromStr;
use std::time::Duration;

use backend::RecvBackend;

pub use send::{GsoSender, MAX_IOV_PER_DATAGRAM, MAX_SEND_BATCH};
pub use socket::{
    attach_spread_by_block, bind_reuseport, bind_reuseport_group, recv_buffer_size,
    resize_recv_buffer, route_mtu, set_dont_fragment, set_gro,
};
pub use sys::{parse_control, ControlMessages};
pub use uring::probe_uring;

/// Bytes of the datagram header region of a standard slot (ARCHITECTURE §4 step 4).
pub const HEADER_LEN: usize = crate::datagram::HEADER_LEN;
/// Bytes of the page region of a standard slot.
pub const PAGE_LEN: usize = lfc::PAGE_SIZE;
/// Bytes of the tag region of a standard slot.
pub const TAG_LEN: usize = crate::datagram::TAG_LEN;
/// Length of a standard prefetch datagram: header, page and tag.
pub const DATAGRAM_LEN: usize = crate::datagram::DATAGRAM_LEN;
/// Upper bound on the slots one [`Receiver`] can have posted at once.
pub const MAX_SLOTS: usize = 256;
/// Most datagram regions (`[header | page | tag]` triples) one slot may be scattered into
/// ([`Receiver::post_train`]): a receive on a socket with UDP GRO ([`set_gro`]) may hold a
/// train of datagrams the kernel coalesced, and 8 × [`DATAGRAM_LEN`] (66432 bytes) holds the
/// largest aggregate the kernel builds for UDP (below 64 KiB), so a train of whole pages never
/// loses one to truncation.
pub const MAX_SLOT_DATAGRAMS: usize = 8;

/// Errors of socket setup and of the receive/send layer's non-I/O checks.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    /// The kernel refused io_uring (or a step of the probe failed).
    #[error(
        "io_uring is not available: {step} failed: {source} (disabled by sysctl \
         kernel.io_uring_disabled, seccomp, or an old kernel)"
    )]
    UringUnavailable {
        /// The probe step that failed, e.g. `io_uring_setup`.
        step: &'static str,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },
    /// io_uring works but lacks something this layer relies on.
    #[error("io_uring is not usable: the kernel lacks {0}")]
    UringMissingFeature(&'static str),
    /// `--io` got something other than `auto`, `uring` or `epoll`.
    #[error("invalid I/O backend {0:?}: expected auto, uring or epoll")]
    InvalidIoChoice(String),
    /// A receiver was asked for zero slots or more than [`MAX_SLOTS`].
    #[error("a receiver holds 1..={max} slots, {requested} were requested")]
    BadSlotCount {
        /// What was asked for.
        requested: usize,
        /// The bound.
        max: usize,
    },
    /// [`Receiver::post`] was called while every slot is already posted.
    #[error("all {0} receive slots are already posted")]
    NoFreeSlot(usize),
    /// A slot region is null while its length is not zero, or the slot has no room at all.
    #[error("invalid slot regions: {0}")]
    InvalidRegions(&'static str),
    /// A sender parameter is out of range.
    #[error("invalid sender configuration: {0}")]
    InvalidSender(&'static str),
    /// A system call failed during setup.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl UdpError {
    pub fn io(context: &'static str) -> impl FnOnce(io::Error) -> UdpError {
        move |source| UdpError::Io { context, source }
    }
}

/// The `--io` setting: which receive backend to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IoChoice {
    /// io_uring when the kernel allows it, otherwise epoll (with a warning).
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll (mio + `recvmmsg`): the default, measured faster (`bench ingest`).
    #[default]
    Epoll,
}

impl FromStr for IoChoice {
    type Err = UdpError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(IoChoice::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(IoChoice::Uring),
            "epoll" => Ok(IoChoice::Epoll),
            _ => Err(UdpError::InvalidIoChoice(s.to_owned())),
        }
    }
}

impl fmt::Display for IoChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoChoice::Auto => "auto",
            IoChoice::Uring => "uring",
            IoChoice::Epoll => "epoll",
        })
    }
}

impl IoChoice {
    /// Picks the backend. `Auto` probes io_uring and falls back to epoll with a
    /// `tracing::warn!` naming the reason; `Uring` fails with the probe's error.
    pub fn resolve(self) -> Result<IoBackend, UdpError> {
        match self {
            IoChoice::Epoll => Ok(IoBackend::Epoll),
            IoChoice::Uring => probe_uring().map(|()| IoBackend::Uring),
            IoChoice::Auto => match probe_uring() {
                Ok(()) => Ok(IoBackend::Uring),
                Err(e) => {
                    tracing::warn!(reason = %e, "io_uring refused, falling back to epoll");
                    Ok(IoBackend::Epoll)
                }
            },
        }
    }
}

/// A resolved receive backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoBackend {
    /// One `IORING_OP_RECVMSG` per posted slot.
    Uring,
    /// mio readiness + `recvmmsg` drained until `EAGAIN`.
    Epoll,
}

impl fmt::Display for IoBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoBackend::Uring => "uring",
            IoBackend::Epoll => "epoll",
        })
    }
}

/// The three caller-owned memory regions one datagram is scattered into, in order.
///
/// Raw pointers on purpose: the page region is typically a slot of a shared `mmap` that other
/// processes read, so no `&mut [u8]` may ever exist for it. A zero-length region may be null.
#[derive(Clone, Copy, Debug)]
pub struct SlotRegions {
    /// Start of the header region.
    pub header: *mut u8,
    /// Its length in bytes.
    pub header_len: usize,
    /// Start of the page region (4 KiB-aligned in the daemon, though the kernel does not care).
    pub page: *mut u8,
    /// Its length in bytes.
    pub page_len: usize,
    /// Start of the tag region.
    pub tag: *mut u8,
    /// Its length in bytes.
    pub tag_len: usize,
}

// SAFETY: a `SlotRegions` is only a set of addresses; nothing is dereferenced until
// `Receiver::post`, whose (unsafe) contract makes the caller vouch for the memory.
unsafe impl Send for SlotRegions {}

impl SlotRegions {
    /// Standard regions: [`HEADER_LEN`], [`PAGE_LEN`] and [`TAG_LEN`] bytes.
    pub const fn new(header: *mut u8, page: *mut u8, tag: *mut u8) -> Self {
        SlotRegions {
            header,
            header_len: HEADER_LEN,
            page,
            page_len: PAGE_LEN,
            tag,
            tag_len: TAG_LEN,
        }
    }

    /// Total bytes a datagram can fill; a longer one is reported as truncated.
    pub const fn capacity(&self) -> usize {
        self.header_len + self.page_len + self.tag_len
    }

    /// Writes `bytes` across the regions in order, as `recvmsg`'s scatter iovecs do, cutting
    /// what does not fit; returns the bytes written. For stand-ins of the kernel (the
    /// simulator's socket, tests).
    ///
    /// # Safety
    /// Each region must be valid for writes of its length, and nothing else may read or write
    /// it meanwhile (a slot posted with the caller, `Receiver::post`'s contract).
    pub unsafe fn scatter(&self, bytes: &[u8]) -> usize {
        let mut rest = bytes;
        for (ptr, len) in [
            (self.header, self.header_len),
            (self.page, self.page_len),
            (self.tag, self.tag_len),
        ] {
            let n = rest.len().min(len);
            // SAFETY: the caller's contract; `n` is within the region.
            unsafe { std::ptr::copy_nonoverlapping(rest.as_ptr(), ptr, n) };
            rest = &rest[n..];
        }
        bytes.len() - rest.len()
    }

    fn validate(&self) -> Result<(), UdpError> {
        let parts = [
            (self.header, self.header_len),
            (self.page, self.page_len),
            (self.tag, self.tag_len),
        ];
        if parts.iter().any(|&(p, len)| p.is_null() && len != 0) {
            return Err(UdpError::InvalidRegions(
                "null region with a non-zero length",
            ));
        }
        let total = parts
            .iter()
            .try_fold(0usize, |acc, &(_, len)| acc.checked_add(len));
        match total {
            None => Err(UdpError::InvalidRegions("total length overflows")),
            Some(0) => Err(UdpError::InvalidRegions("all regions are empty")),
            Some(t) if t > u32::MAX as usize => {
                Err(UdpError::InvalidRegions("a slot holds at most 4 GiB"))
            }
            Some(_) => Ok(()),
        }
    }
}

/// One finished receive. The slot it names is no longer posted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    /// The id given to [`Receiver::post`].
    pub slot_id: u32,
    /// The datagram's full length, even when it did not fit (the receive uses `MSG_TRUNC`).
    /// The bytes written to the slot are `min(len, capacity)`, header region first.
    pub len: usize,
    /// The datagram was longer than the slot: its tail was discarded by the kernel.
    pub truncated: bool,
    /// Sender address, when the kernel reported one.
    pub source: Option<SocketAddr>,
    /// The socket's cumulative kernel drop counter (`SO_RXQ_OVFL`) as last seen by this
    /// receiver: datagrams the kernel dropped because the receive buffer was full. The kernel
    /// only attaches it once drops have happened, so it is 0 before the first drop.
    pub kernel_drops: u32,
    /// `Some(errno)` when the receive failed; the slot's contents are then meaningless.
    /// Only io_uring produces these (a per-operation error); epoll reports errors from `wait`.
    pub error: Option<i32>,
    /// `Some(size)` when the kernel coalesced a train of datagrams into this one receive
    /// (UDP GRO, [`set_gro`]): `len` bytes of datagrams of `size` bytes each but the last,
    /// which may be shorter, all from one sender, laid end to end across the slot's regions
    /// (each datagram in its own `[header | page | tag]` triple when `size` is
    /// [`DATAGRAM_LEN`]). `None`: one datagram. [`Completion::datagrams`] splits it.
    pub segment_len: Option<usize>,
}

impl Completion {
    /// The datagrams this receive holds, as `(offset, length)` in the bytes received (laid end
    /// to end across the slot's regions): one for a plain receive, the GRO segments otherwise.
    /// Whatever lies beyond the slot's capacity was cut by the kernel (`truncated`).
    pub fn datagrams(&self) -> impl Iterator<Item = (usize, usize)> {
        let (len, step) = match self.segment_len {
            Some(size) if size > 0 => (self.len, size),
            // One datagram (an empty one still counts as one).
            _ => (self.len, self.len.max(1)),
        };
        let count = len.div_ceil(step).max(1);
        (0..count).map(move |i| {
            let at = i * step;
            (at, step.min(len - at.min(len)))
        })
    }
}

enum Backend {
    Epoll(epoll::EpollReceiver),
    Uring(uring::UringReceiver),
}

/// Receives datagrams on one socket into caller-posted slots, with either backend.
///
/// Dropping a receiver first makes sure the kernel no longer references any posted memory
/// (io_uring: cancels every outstanding receive and waits for its completion).
pub struct Receiver {
    inner: Backend,
}

impl Receiver {
    /// Takes ownership of `socket` (made non-blocking) and allocates room for `max_slots`
    /// (1..=[`MAX_SLOTS`]) posted slots. With [`IoBackend::Uring`] this sets up a ring, which
    /// fails like [`probe_uring`] when the kernel refuses io_uring.
    pub fn new(socket: UdpSocket, backend: IoBackend, max_slots: usize) -> Result<Self, UdpError> {
        if max_slots == 0 || max_slots > MAX_SLOTS {
            return Err(UdpError::BadSlotCount {
                requested: max_slots,
                max: MAX_SLOTS,
            });
        }
        socket
            .set_nonblocking(true)
            .map_err(UdpError::io("setting the socket non-blocking"))?;
        let inner = match backend {
            IoBackend::Epoll => Backend::Epoll(epoll::EpollReceiver::new(socket, max_slots)?),
            IoBackend::Uring => Backend::Uring(uring::UringReceiver::new(socket, max_slots)?),
        };
        Ok(Receiver { inner })
    }

    /// The backend, for everything but [`wait`](Self::wait).
    fn inner(&self) -> &dyn RecvBackend {
        match &self.inner {
            Backend::Epoll(r) => r,
            Backend::Uring(r) => r,
        }
    }

    /// The backend, mutably, for everything but [`wait`](Self::wait).
    fn inner_mut(&mut self) -> &mut dyn RecvBackend {
        match &mut self.inner {
            Backend::Epoll(r) => r,
            Backend::Uring(r) => r,
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> IoBackend {
        self.inner().kind()
    }

    /// How many slots can be posted at once.
    pub fn capacity(&self) -> usize {
        self.inner().capacity()
    }

    /// How many slots are posted right now.
    pub fn posted(&self) -> usize {
        self.inner().posted()
    }

    /// The latest kernel drop counter (`SO_RXQ_OVFL`) seen on this socket.
    pub fn kernel_drops(&self) -> u32 {
        self.inner().kernel_drops()
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner().local_addr()
    }

    /// Hands a slot to the receiver. With io_uring the receive is queued at once (submitted to
    /// the kernel by the next [`wait`](Self::wait)); with epoll the slot is remembered.
    ///
    /// Fails with [`UdpError::NoFreeSlot`] when [`capacity`](Self::capacity) slots are posted.
    ///
    /// # Safety
    ///
    /// Until this slot comes back — in a [`Completion`] from [`wait`](Self::wait), from
    /// [`cancel_all`](Self::cancel_all), or when the receiver is dropped — each region must stay
    /// valid for writes of its length, and nothing else may read or write it (the kernel
    /// writes into it at any moment). The receiver must not be leaked (`mem::forget`) while
    /// slots are posted, since then nobody would stop the kernel.
    pub unsafe fn post(&mut self, slot_id: u32, regions: SlotRegions) -> Result<(), UdpError> {
        // SAFETY: forwarded contract.
        unsafe { self.post_train(slot_id, &[regions]) }
    }

    /// Like [`post`](Self::post), for a slot of 1 to [`MAX_SLOT_DATAGRAMS`] datagram regions
    /// that one receive scatters into in order, as one iovec `[header, page, tag] × k`: on a
    /// socket with UDP GRO a receive may hold a train of datagrams
    /// ([`Completion::segment_len`]), and a train of whole pages then lands one page per
    /// triple. The same contract applies to every region.
    ///
    /// # Safety
    ///
    /// As [`post`](Self::post), for each region.
    pub unsafe fn post_train(
        &mut self,
        slot_id: u32,
        regions: &[SlotRegions],
    ) -> Result<(), UdpError> {
        if regions.is_empty() || regions.len() > MAX_SLOT_DATAGRAMS {
            return Err(UdpError::InvalidRegions(
                "a slot holds 1..=MAX_SLOT_DATAGRAMS datagram regions",
            ));
        }
        let mut total = 0usize;
        for r in regions {
            r.validate()?;
            total = total.saturating_add(r.capacity());
        }
        if total > u32::MAX as usize {
            return Err(UdpError::InvalidRegions("a slot holds at most 4 GiB"));
        }
        // SAFETY: forwarded contract.
        unsafe { self.inner_mut().post(slot_id, regions) }
    }

    /// Waits up to `timeout` for at least one receive to finish and writes up to `out.len()`
    /// completions to `out`, returning how many. Returns 0 on timeout, on a signal, after a
    /// spurious wake-up, and at once when no slot is posted (so a caller out of slots never
    /// sleeps here forever); callers simply loop. `Duration::ZERO` only collects what is ready.
    /// With io_uring this call is also what hands newly posted slots to the kernel.
    pub fn wait(&mut self, timeout: Duration, out: &mut [Completion]) -> io::Result<usize> {
        // Matched here rather than through `inner_mut`: this is the per-batch call, and static
        // dispatch keeps it a direct, inlinable call instead of one through a vtable.
        match &mut self.inner {
            Backend::Epoll(r) => r.wait(timeout, out),
            Backend::Uring(r) => r.wait(timeout, out),
        }
    }

    /// Takes back every posted slot, calling `released` with each slot id; when it returns the
    /// kernel no longer references any of their memory. Data that raced in is discarded.
    pub fn cancel_all(&mut self, released: &mut dyn FnMut(u32)) -> io::Result<()> {
        self.inner_mut().cancel_all(released)
    }
}

impl AsRawFd for Receiver {
    fn as_raw_fd(&self) -> RawFd {
        self.inner().as_raw_fd()
    }
}

impl AsFd for Receiver {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner().socket()
    }
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("backend", &self.backend())
            .field("capacity", &self.capacity())
            .field("posted", &self.posted())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(len: usize, segment_len: Option<usize>) -> Vec<(usize, usize)> {
        Completion {
            len,
            segment_len,
            ..Completion::default()
        }
        .datagrams()
        .collect()
    }

    #[test]
    fn a_completion_splits_into_its_datagrams() {
        // A plain receive is one datagram, even an empty one.
        assert_eq!(split(8304, None), [(0, 8304)]);
        assert_eq!(split(0, None), [(0, 0)]);
        // A GRO train: equal segments, the last shorter.
        assert_eq!(
            split(2 * 8304 + 1136, Some(8304)),
            [(0, 8304), (8304, 8304), (16608, 1136)]
        );
        assert_eq!(
            split(3 * 1136, Some(1136)),
            [(0, 1136), (1136, 1136), (2272, 1136)]
        );
        // A train of one.
        assert_eq!(split(1136, Some(1136)), [(0, 1136)]);
        assert_eq!(split(100, Some(1136)), [(0, 100)]);
    }
}
