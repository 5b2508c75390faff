//! Raw plumbing shared by both receive backends: per-slot message storage at stable addresses,
//! control-message parsing and socket-address conversion.
//!
//! Owns: `SlotTable` (each slot's `msghdr`, iovecs, address and control buffer at stable addresses,
//! which slots are posted, the last kernel drop count) and the control-message parsing. Memory and
//! kernel structures only: it makes no system call and knows nothing of the datagram format or of
//! either backend's policy.

use std::cell::UnsafeCell;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ptr;

use super::{Completion, SlotRegions, MAX_SLOT_DATAGRAMS};

/// Room for control messages: `SO_RXQ_OVFL` and `UDP_GRO` need `CMSG_SPACE(4)` = 24 bytes
/// each; the rest is headroom so an unexpected extra cmsg only sets `MSG_CTRUNC` instead of
/// hiding one of them.
const CONTROL_LEN: usize = 96;

#[repr(C, align(8))]
struct ControlBuf([u8; CONTROL_LEN]);

/// Everything one in-flight receive needs besides the caller's regions. Lives in a boxed
/// slice that is never resized, so the pointers in `hdr` stay valid while the kernel uses them.
pub(crate) struct Entry {
    pub(crate) hdr: libc::msghdr,
    /// `[header, page, tag]` for each of the slot's datagram regions; `iov_len` are in use.
    iov: [libc::iovec; 3 * MAX_SLOT_DATAGRAMS],
    iov_len: usize,
    name: libc::sockaddr_storage,
    control: ControlBuf,
    pub(crate) slot_id: u32,
    capacity: usize,
}

/// A fixed set of [`Entry`]s with a free list, and the socket's kernel drop counter as last
/// seen in a completion. Entries are `UnsafeCell`s because the kernel writes into posted ones
/// while this table is borrowed; they are only touched through raw pointers, and only when not
/// owned by the kernel.
pub(crate) struct SlotTable {
    entries: Box<[UnsafeCell<Entry>]>,
    free: Box<[u16]>,
    free_len: usize,
    posted: Box<[bool]>,
    /// Latest `SO_RXQ_OVFL` value. The kernel attaches it only to some datagrams (none before
    /// the first drop), so every completion carries the last one seen instead.
    drops: u32,
}

impl SlotTable {
    pub(crate) fn new(capacity: usize) -> SlotTable {
        debug_assert!(capacity <= usize::from(u16::MAX));
        let entries = (0..capacity)
            .map(|_| {
                UnsafeCell::new(Entry {
                    // SAFETY: msghdr, iovec and sockaddr_storage are plain C structs for which
                    // all-zero bytes are a valid (empty) value.
                    hdr: unsafe { mem::zeroed() },
                    // SAFETY: as above.
                    iov: unsafe { mem::zeroed() },
                    // SAFETY: as above.
                    name: unsafe { mem::zeroed() },
                    control: ControlBuf([0; CONTROL_LEN]),
                    iov_len: 0,
                    slot_id: 0,
                    capacity: 0,
                })
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        // Pop order 0, 1, 2, ... (stack top at the end).
        let free = (0..capacity as u16)
            .rev()
            .collect::<Vec<_>>()
            .into_boxed_slice();
        SlotTable {
            entries,
            free,
            free_len: capacity,
            posted: vec![false; capacity].into_boxed_slice(),
            drops: 0,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn in_use(&self) -> usize {
        self.entries.len() - self.free_len
    }

    /// The latest kernel drop counter (`SO_RXQ_OVFL`) seen in a completion.
    pub(crate) fn kernel_drops(&self) -> u32 {
        self.drops
    }

    pub(crate) fn is_posted(&self, idx: u16) -> bool {
        self.posted.get(usize::from(idx)).copied().unwrap_or(false)
    }

    pub(crate) fn entry(&self, idx: u16) -> *mut Entry {
        self.entries[usize::from(idx)].get()
    }

    /// Takes a free entry and prepares its `msghdr` to scatter into `regions`, in order (1 to
    /// [`MAX_SLOT_DATAGRAMS`] of them, checked by `Receiver`).
    ///
    /// # Safety
    ///
    /// `regions` must satisfy `Receiver::post`'s contract.
    pub(crate) unsafe fn acquire(&mut self, slot_id: u32, regions: &[SlotRegions]) -> Option<u16> {
        debug_assert!((1..=MAX_SLOT_DATAGRAMS).contains(&regions.len()));
        if self.free_len == 0 {
            return None;
        }
        self.free_len -= 1;
        let idx = self.free[self.free_len];
        self.posted[usize::from(idx)] = true;
        let e = self.entry(idx);
        // SAFETY: the entry was free, so neither the kernel nor anyone else references it; the
        // pointer comes from our live boxed slice.
        unsafe {
            (*e).slot_id = slot_id;
            (*e).capacity = regions.iter().map(SlotRegions::capacity).sum();
            let iov = &mut (*e).iov;
            let mut n = 0;
            for r in regions.iter().take(MAX_SLOT_DATAGRAMS) {
                for (base, len) in [
                    (r.header, r.header_len),
                    (r.page, r.page_len),
                    (r.tag, r.tag_len),
                ] {
                    iov[n] = libc::iovec {
                        iov_base: base.cast(),
                        iov_len: len,
                    };
                    n += 1;
                }
            }
            (*e).iov_len = n;
            Self::rearm_raw(e);
        }
        Some(idx)
    }

    /// Resets the kernel-written parts of an entry's `msghdr` before a (re)issued receive.
    ///
    /// # Safety
    ///
    /// `e` must point to an entry of this table that the kernel does not currently own.
    unsafe fn rearm_raw(e: *mut Entry) {
        // SAFETY: per the contract, we have exclusive access to the entry.
        unsafe {
            // Zero the family and the control area so that a kernel that did not write them
            // back can never make us parse stale bytes as an address or a drop counter.
            (*e).name.ss_family = 0;
            ptr::write_bytes((*e).control.0.as_mut_ptr(), 0, CONTROL_LEN);
            let hdr = &mut (*e).hdr;
            hdr.msg_name = ptr::addr_of_mut!((*e).name).cast();
            hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = ptr::addr_of_mut!((*e).iov).cast();
            hdr.msg_iovlen = (*e).iov_len as _;
            hdr.msg_control = ptr::addr_of_mut!((*e).control).cast();
            hdr.msg_controllen = CONTROL_LEN as _;
            hdr.msg_flags = 0;
        }
    }

    /// [`Self::rearm_raw`] by index.
    ///
    /// # Safety
    ///
    /// The kernel must not currently own entry `idx`.
    pub(crate) unsafe fn rearm(&mut self, idx: u16) {
        // SAFETY: forwarded contract.
        unsafe { Self::rearm_raw(self.entry(idx)) }
    }

    /// Returns an entry to the free list (after its completion or cancellation).
    pub(crate) fn release(&mut self, idx: u16) {
        let i = usize::from(idx);
        if i < self.posted.len() && self.posted[i] {
            self.posted[i] = false;
            self.free[self.free_len] = idx;
            self.free_len += 1;
        }
    }

    /// Finishes a successful receive of entry `idx`: builds its completion, records the
    /// `SO_RXQ_OVFL` value if one came, reads the `UDP_GRO` segment size if the kernel
    /// coalesced datagrams, and frees the entry. `hdr` is the `msghdr` the kernel wrote back
    /// (the entry's own for io_uring, the `mmsghdr` copy for `recvmmsg`); `len` is the full
    /// length received (the receive used `MSG_TRUNC`).
    ///
    /// # Safety
    ///
    /// The kernel must be done with entry `idx`, and `hdr` must point to a `msghdr` whose
    /// name and control pointers are that entry's buffers.
    pub(crate) unsafe fn complete(
        &mut self,
        idx: u16,
        hdr: *const libc::msghdr,
        len: usize,
    ) -> Completion {
        let e = self.entry(idx);
        // SAFETY: per the contract the kernel is finished with this entry, so reading it is
        // not a race; the buffers are ours and initialised (the control area is zeroed before
        // every receive), and the slice never reaches past the entry's control buffer.
        let (completion, control) = unsafe {
            let flags = (*hdr).msg_flags;
            let completion = Completion {
                slot_id: (*e).slot_id,
                len,
                truncated: len > (*e).capacity || flags & libc::MSG_TRUNC != 0,
                source: sockaddr_to_std(ptr::addr_of!((*e).name), (*hdr).msg_namelen),
                ..Completion::default()
            };
            // `size_t` with glibc, `socklen_t` with musl.
            #[allow(clippy::unnecessary_cast)]
            let filled = ((*hdr).msg_controllen as usize).min(CONTROL_LEN);
            let control = &(*ptr::addr_of!((*e).control)).0;
            (completion, parse_control(&control[..filled]))
        };
        if let Some(d) = control.rxq_ovfl {
            self.drops = d;
        }
        self.release(idx);
        Completion {
            kernel_drops: self.drops,
            segment_len: control.gro_segment,
            ..completion
        }
    }

    /// Finishes a failed receive of entry `idx` (the kernel is done with it): builds its
    /// completion carrying `errno`, and frees the entry.
    pub(crate) fn fail(&mut self, idx: u16, errno: i32) -> Completion {
        let c = Completion {
            slot_id: self.slot_id(idx),
            error: Some(errno),
            kernel_drops: self.drops,
            ..Completion::default()
        };
        self.release(idx);
        c
    }

    /// The caller's slot id stored in entry `idx`.
    pub(crate) fn slot_id(&self, idx: u16) -> u32 {
        // SAFETY: `slot_id` is written only by `acquire`, never by the kernel, so reading it
        // while a receive is in flight does not race.
        unsafe { (*self.entry(idx)).slot_id }
    }
}

/// What the daemon reads from a receive's control messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlMessages {
    /// `SOL_SOCKET/SO_RXQ_OVFL`: the socket's cumulative kernel drop counter.
    pub rxq_ovfl: Option<u32>,
    /// `SOL_UDP/UDP_GRO`: the receive holds datagrams coalesced by the kernel, each this many
    /// bytes but the last (which may be shorter). Never `Some(0)`.
    pub gro_segment: Option<usize>,
}

/// Reads the control messages of a received `msghdr` from the bytes the kernel wrote
/// (`msg_control[..msg_controllen]`). Plain bounds-checked Rust rather than the `CMSG_*`
/// pointer macros, so that no content of `control` (a malformed length, a truncated last
/// message under `MSG_CTRUNC`) can make it read outside the slice: the fuzz target
/// `control_messages` feeds it arbitrary bytes. A walk stops at the first malformed header.
pub fn parse_control(control: &[u8]) -> ControlMessages {
    const HDR: usize = mem::size_of::<libc::cmsghdr>();
    // CMSG_ALIGN: cmsg lengths round up to the size of `size_t` (glibc and musl alike).
    const ALIGN: usize = mem::size_of::<usize>();
    let mut found = ControlMessages::default();
    let mut at = 0usize;
    while let Some(raw) = control.get(at..).and_then(|rest| rest.get(..HDR)) {
        // SAFETY: `raw` is HDR initialised bytes, and every bit pattern is a valid cmsghdr
        // (integers only); read_unaligned because `control` has no alignment promise.
        let c: libc::cmsghdr = unsafe { ptr::read_unaligned(raw.as_ptr().cast()) };
        let len = c.cmsg_len as usize;
        let Some(data) = len
            .checked_sub(HDR)
            .and_then(|n| control.get(at + HDR..)?.get(..n))
        else {
            break;
        };
        let int = data.get(..4).map(|b| [b[0], b[1], b[2], b[3]]);
        match (c.cmsg_level, c.cmsg_type, int) {
            (libc::SOL_SOCKET, libc::SO_RXQ_OVFL, Some(b)) => {
                found.rxq_ovfl = Some(u32::from_ne_bytes(b));
            }
            (libc::SOL_UDP, libc::UDP_GRO, Some(b)) => {
                // The kernel puts an int; a non-positive one is not a segment size.
                found.gro_segment = usize::try_from(i32::from_ne_bytes(b))
                    .ok()
                    .filter(|&n| n > 0);
            }
            _ => {}
        }
        match len
            .checked_next_multiple_of(ALIGN)
            .and_then(|l| at.checked_add(l))
        {
            Some(next) => at = next,
            None => break,
        }
    }
    found
}

/// Converts a kernel-filled socket address. Returns `None` for an empty or unknown one.
///
/// # Safety
///
/// `sa` must point to an initialised `sockaddr_storage`.
unsafe fn sockaddr_to_std(
    sa: *const libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    let len = len as usize;
    // SAFETY: sockaddr_storage is large and aligned enough for every address type, and the
    // family field tells which one the kernel wrote.
    unsafe {
        match i32::from((*sa).ss_family) {
            libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
                let a = &*sa.cast::<libc::sockaddr_in>();
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
                let a = &*sa.cast::<libc::sockaddr_in6>();
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// Returns `errno` of the last failed libc call.
pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A control buffer as the kernel writes it, built with the C macros: `(level, type,
    /// int)` messages in order. Returns the buffer and `msg_controllen`.
    fn kernel_control(msgs: &[(i32, i32, i32)]) -> (ControlBuf, usize) {
        let mut buf = ControlBuf([0; CONTROL_LEN]);
        // SAFETY: the buffer is aligned and large enough for the messages the tests build
        // (each CMSG_SPACE(4) = 24 bytes, at most 3 of them); the macros walk within it.
        let len = unsafe {
            let mut h: libc::msghdr = mem::zeroed();
            h.msg_control = buf.0.as_mut_ptr().cast();
            h.msg_controllen = CONTROL_LEN as _;
            let mut c = libc::CMSG_FIRSTHDR(&h);
            let mut len = 0;
            for &(level, ty, value) in msgs {
                (*c).cmsg_level = level;
                (*c).cmsg_type = ty;
                (*c).cmsg_len = libc::CMSG_LEN(4) as _;
                ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), value);
                len += libc::CMSG_SPACE(4) as usize;
                c = libc::CMSG_NXTHDR(&h, c);
            }
            len
        };
        (buf, len)
    }

    #[test]
    fn finds_the_drop_counter_and_the_gro_segment_size_in_a_kernel_control_buffer() {
        let (buf, len) = kernel_control(&[
            (libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 17),
            (libc::SOL_UDP, libc::UDP_GRO, 8304),
        ]);
        assert_eq!(
            parse_control(&buf.0[..len]),
            ControlMessages {
                rxq_ovfl: Some(17),
                gro_segment: Some(8304),
            }
        );
        // Either alone, in the other order, with an unknown message before it.
        let (buf, len) = kernel_control(&[
            (libc::SOL_IP, libc::IP_TTL, 64),
            (libc::SOL_UDP, libc::UDP_GRO, 1136),
        ]);
        assert_eq!(parse_control(&buf.0[..len]).gro_segment, Some(1136));
        assert_eq!(parse_control(&buf.0[..len]).rxq_ovfl, None);
        // Nothing (a plain datagram), and a segment size that is no size.
        assert_eq!(parse_control(&[]), ControlMessages::default());
        let (buf, len) = kernel_control(&[(libc::SOL_UDP, libc::UDP_GRO, 0)]);
        assert_eq!(parse_control(&buf.0[..len]).gro_segment, None);
        let (buf, len) = kernel_control(&[(libc::SOL_UDP, libc::UDP_GRO, -5)]);
        assert_eq!(parse_control(&buf.0[..len]).gro_segment, None);
    }

    #[test]
    fn a_cut_or_malformed_message_ends_the_walk_without_reading_past_the_buffer() {
        let (buf, len) = kernel_control(&[
            (libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 3),
            (libc::SOL_UDP, libc::UDP_GRO, 8304),
        ]);
        // MSG_CTRUNC: the second message cut short is not read; the first still is. (Its
        // alignment padding is not part of it: a buffer ending there holds it whole.)
        // SAFETY: CMSG_LEN is a pure size computation.
        let second_end = len - 24 + unsafe { libc::CMSG_LEN(4) } as usize;
        assert_eq!(parse_control(&buf.0[..second_end]).gro_segment, Some(8304));
        for cut in 24..second_end {
            let found = parse_control(&buf.0[..cut]);
            assert_eq!(found.rxq_ovfl, Some(3), "cut at {cut}");
            assert_eq!(found.gro_segment, None, "cut at {cut}");
        }
        // A length below the header's own, or beyond the buffer, stops the walk.
        let mut bad = buf;
        bad.0[..mem::size_of::<usize>()].copy_from_slice(&3usize.to_ne_bytes());
        assert_eq!(parse_control(&bad.0[..len]), ControlMessages::default());
        bad.0[..mem::size_of::<usize>()].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(parse_control(&bad.0[..len]), ControlMessages::default());
    }

    proptest! {
        /// Whatever bytes the control buffer holds, parsing returns (never panics, never reads
        /// outside the slice: the slice is all it is given), and a value it reports is one
        /// that a well-formed message of the buffer carries.
        #[test]
        fn any_control_bytes_parse_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let found = parse_control(&bytes);
            if let Some(n) = found.gro_segment {
                prop_assert!(n > 0 && n <= i32::MAX as usize);
            }
        }
    }
}
