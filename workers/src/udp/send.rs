//! Batched sender for the page server: `sendmmsg`, with UDP GSO (`UDP_SEGMENT`) packing up to
//! 64 KiB of equal-size datagrams into one message when the kernel and the path allow it.
//!
//! Owns: `GsoSender`: its socket, the per-call message, iovec and control arrays, whether GSO is
//! on, and the destinations that refused GSO lately (tried again after `GSO_RETRY`). Sends the
//! bytes it is given: it builds and seals no datagram (the page server's senders do) and decides
//! nothing about what to send or when; its clock only dates a refusal.

use std::io::{self, IoSlice};
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::ptr;
use std::time::{Duration, Instant};

use socket2::SockAddr;

use super::socket::get_int_opt;
use super::sys::errno;
use super::UdpError;

/// Most iovec entries one datagram may be given as (e.g. header, page, tag).
pub const MAX_IOV_PER_DATAGRAM: usize = 4;
/// Most datagrams one `sendmmsg` call carries (the `max_batch` bound of [`GsoSender::new`]).
pub const MAX_SEND_BATCH: usize = 1024;

/// The kernel's cap on segments per GSO send (`UDP_MAX_SEGMENTS`, 64 before Linux 6.9).
const UDP_MAX_SEGMENTS: usize = 64;
/// Largest UDP payload of one IPv4 send (65535 - 20 IP - 8 UDP); also safe for IPv6.
const MAX_UDP_PAYLOAD: usize = 65_507;

#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct GsoControl([u8; 32]);

/// Sends batches of datagrams to one destination per call with `sendmmsg`.
///
/// With GSO active, each run of datagrams of one length is packed into one message of up to
/// 64 KiB (and 64 datagrams: 7 of 8304 bytes, 57 of a 1136-byte page fragment) that the
/// kernel (or the NIC) splits; a datagram of another length starts the next message. GSO is probed when the
/// sender is built (`getsockopt(UDP_SEGMENT)`, Linux 4.18+). If a GSO send then fails with
/// `EIO` (no checksum offload on the route's device) or `EMSGSIZE`/`EINVAL` (segment larger
/// than the path MTU; the errno depends on the kernel version), GSO is switched off for that
/// destination only, with a warning, for `GSO_RETRY` (the path may change), and the batch is
/// re-sent without it; other destinations keep it.
/// Nothing is allocated per send.
pub struct GsoSender {
    socket: UdpSocket,
    segment_len: usize,
    max_batch: usize,
    gso: bool,
    max_segments: usize,
    msgs: Box<[libc::mmsghdr]>,
    iovs: Box<[libc::iovec]>,
    controls: Box<[GsoControl]>,
    /// Datagrams carried by each message of the current `sendmmsg`.
    counts: Box<[usize]>,
    /// Destinations whose path refused a GSO send, and until when.
    refused: RefusedPaths,
}

/// How long a destination whose path refused GSO is sent one datagram per message before GSO
/// is tried on it again.
pub const GSO_RETRY: Duration = Duration::from_secs(10);
/// Destinations remembered as refusing GSO; beyond it the one due soonest for a retry is
/// forgotten (it is retried early, at the cost of one refused send).
const MAX_REFUSED_PATHS: usize = 64;

/// The destinations whose path refused GSO, each until a retry time: a bounded table with
/// `now` passed in.
#[derive(Debug, Default)]
struct RefusedPaths {
    entries: Vec<(SocketAddr, Instant)>,
}

impl RefusedPaths {
    /// Whether `dest` is to be sent without GSO at `now`; an entry whose time is up is
    /// dropped, so the next send tries GSO again.
    fn refuses(&mut self, dest: &SocketAddr, now: Instant) -> bool {
        let Some(i) = self.entries.iter().position(|(a, _)| a == dest) else {
            return false;
        };
        if now < self.entries[i].1 {
            return true;
        }
        self.entries.swap_remove(i);
        false
    }

    /// Remembers that `dest`'s path refused GSO at `now`.
    fn refuse(&mut self, dest: SocketAddr, now: Instant) {
        let until = now + GSO_RETRY;
        if let Some(e) = self.entries.iter_mut().find(|(a, _)| *a == dest) {
            e.1 = until;
            return;
        }
        if self.entries.len() == MAX_REFUSED_PATHS {
            let soonest = (0..self.entries.len())
                .min_by_key(|&i| self.entries[i].1)
                .expect("full, so not empty");
            self.entries.swap_remove(soonest);
        }
        self.entries.push((dest, until));
    }
}

// SAFETY: the raw pointers in the scratch arrays only hold addresses during a `send` call
// (they are rebuilt on every call), so nothing ties the sender to a thread.
unsafe impl Send for GsoSender {}

impl std::fmt::Debug for GsoSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GsoSender")
            .field("segment_len", &self.segment_len)
            .field("max_batch", &self.max_batch)
            .field("gso", &self.gso)
            .field("gso_segments", &self.gso_segments())
            .finish()
    }
}

impl GsoSender {
    /// Wraps `socket` (any bound UDP socket; blocking or not). `segment_len` is the datagram
    /// size GSO packs (e.g. [`DATAGRAM_LEN`](super::DATAGRAM_LEN)), `max_batch`
    /// (1..=[`MAX_SEND_BATCH`]) the most datagrams per `sendmmsg`; `allow_gso = false` forces
    /// plain `sendmmsg` (for comparisons).
    pub fn new(
        socket: UdpSocket,
        segment_len: usize,
        max_batch: usize,
        allow_gso: bool,
    ) -> Result<Self, UdpError> {
        if segment_len == 0 || segment_len > MAX_UDP_PAYLOAD {
            return Err(UdpError::InvalidSender("segment_len must be 1..=65507"));
        }
        if max_batch == 0 || max_batch > MAX_SEND_BATCH {
            return Err(UdpError::InvalidSender("max_batch must be 1..=1024"));
        }
        let max_segments = (MAX_UDP_PAYLOAD / segment_len).min(UDP_MAX_SEGMENTS);
        let gso = allow_gso && max_segments > 1 && gso_supported(&socket);
        tracing::debug!(gso, segment_len, max_segments, "UDP sender ready");
        Ok(GsoSender {
            socket,
            segment_len,
            max_batch,
            gso,
            max_segments,
            msgs: (0..max_batch)
                // SAFETY: mmsghdr is a plain C struct; all-zero is a valid value.
                .map(|_| unsafe { mem::zeroed::<libc::mmsghdr>() })
                .collect(),
            iovs: (0..max_batch * MAX_IOV_PER_DATAGRAM)
                .map(|_| libc::iovec {
                    iov_base: ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            controls: vec![GsoControl([0; 32]); max_batch].into_boxed_slice(),
            counts: vec![0; max_batch].into_boxed_slice(),
            refused: RefusedPaths::default(),
        })
    }

    /// Whether sends use GSO (the kernel supports it and it was allowed); a destination whose
    /// path refused it goes without for a while ([`gso_active_for`](Self::gso_active_for)).
    pub fn gso_active(&self) -> bool {
        self.gso
    }

    /// Whether sends to `dest` use GSO now.
    pub fn gso_active_for(&mut self, dest: SocketAddr) -> bool {
        self.gso && !self.refused.refuses(&dest, Instant::now())
    }

    /// Datagrams packed per message: up to 64 KiB worth with GSO, else 1.
    pub fn gso_segments(&self) -> usize {
        if self.gso {
            self.max_segments
        } else {
            1
        }
    }

    /// The datagram size GSO packs.
    pub fn segment_len(&self) -> usize {
        self.segment_len
    }

    /// The socket.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Sends each buffer as one datagram to `dest`. Returns how many were sent, in order; fewer
    /// than given only when the socket is non-blocking and its buffer filled up (or an error
    /// followed some successes) — send the rest again. Errors only when nothing was sent.
    pub fn send<B: AsRef<[u8]>>(&mut self, dest: SocketAddr, datagrams: &[B]) -> io::Result<usize> {
        self.send_with(dest, datagrams.len(), (usize::MAX, 0), |i, iov| {
            let b = datagrams[i].as_ref();
            iov[0] = libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            };
            Some(1)
        })
    }

    /// Like [`send`](Self::send), each datagram given as up to [`MAX_IOV_PER_DATAGRAM`] pieces
    /// (e.g. `[header, page, tag]`) that the kernel gathers.
    pub fn send_vectored<'a, D: AsRef<[IoSlice<'a>]>>(
        &mut self,
        dest: SocketAddr,
        datagrams: &[D],
    ) -> io::Result<usize> {
        for d in datagrams {
            if d.as_ref().len() > MAX_IOV_PER_DATAGRAM {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a datagram has more than MAX_IOV_PER_DATAGRAM pieces",
                ));
            }
        }
        self.send_with(dest, datagrams.len(), (usize::MAX, 0), |i, iov| {
            let parts = datagrams[i].as_ref();
            for (slot, p) in iov.iter_mut().zip(parts) {
                *slot = libc::iovec {
                    iov_base: p.as_ptr() as *mut libc::c_void,
                    iov_len: p.len(),
                };
            }
            Some(parts.len())
        })
    }

    /// Sends `count` datagrams to `dest`, datagram `i` being `datagram(i)` (e.g. the fragments
    /// of sealed pages, sliced out of their buffers without a copy). Datagram `i` is number
    /// `first + i` of a sequence cut into runs of `run` (`0..run`, `run..2 × run`, …), and a GSO
    /// message never spans two runs: what a lost message takes is at most one run. As
    /// [`send`](Self::send).
    pub fn send_pieces<'a>(
        &mut self,
        dest: SocketAddr,
        count: usize,
        (first, run): (usize, usize),
        datagram: impl Fn(usize) -> &'a [u8],
    ) -> io::Result<usize> {
        let run = run.max(1);
        self.send_with(dest, count, (run, first % run), |i, iov| {
            let b = datagram(i);
            iov[0] = libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            };
            Some(1)
        })
    }

    /// Core loop: `fill(i, iovs)` writes datagram `i`'s pieces and returns their count.
    fn send_with(
        &mut self,
        dest: SocketAddr,
        count: usize,
        runs: (usize, usize),
        fill: impl Fn(usize, &mut [libc::iovec]) -> Option<usize>,
    ) -> io::Result<usize> {
        let addr = SockAddr::from(dest);
        let mut gso = self.gso_active_for(dest);
        let mut sent = 0;
        while sent < count {
            match self.send_chunk(&addr, gso, sent, count, runs, &fill) {
                Err(e) if gso && gso_refused(&e) && self.counts.iter().any(|&c| c > 1) => {
                    tracing::warn!(
                        error = %e,
                        destination = %dest,
                        retry_after_s = GSO_RETRY.as_secs(),
                        "UDP GSO send refused on this path; sending it one datagram per message"
                    );
                    self.refused.refuse(dest, Instant::now());
                    gso = false;
                }
                Ok(n) if n > 0 => sent += n,
                Ok(_) => break,
                Err(e) if sent > 0 && e.kind() != io::ErrorKind::Interrupted => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    /// One `sendmmsg` of up to `max_batch` datagrams starting at `start`. Returns the number
    /// of datagrams the kernel took.
    fn send_chunk(
        &mut self,
        addr: &SockAddr,
        gso: bool,
        start: usize,
        count: usize,
        (run, phase): (usize, usize),
        fill: &impl Fn(usize, &mut [libc::iovec]) -> Option<usize>,
    ) -> io::Result<usize> {
        let end = count.min(start + self.max_batch);
        let mut nmsg = 0;
        let mut iov_used = 0;
        let mut i = start;
        while i < end {
            let iov_start = iov_used;
            let mut segs = 0;
            let mut segment = 0;
            let mut max_segments = 1;
            // A message is one datagram, or (GSO) a run of equal-size ones.
            loop {
                let room = &mut self.iovs[iov_used..iov_used + MAX_IOV_PER_DATAGRAM];
                let pieces = fill(i, room).unwrap_or(0);
                let len: usize = room[..pieces].iter().map(|v| v.iov_len).sum();
                if segs == 0 {
                    segment = len;
                    max_segments = MAX_UDP_PAYLOAD
                        .checked_div(len)
                        .map_or(1, |n| n.clamp(1, UDP_MAX_SEGMENTS));
                } else if len != segment {
                    // Another size: it starts the next message (its iovecs get rewritten).
                    break;
                }
                iov_used += pieces;
                segs += 1;
                i += 1;
                let run_ends = (i + phase).is_multiple_of(run);
                if !gso || segs == max_segments || i == end || run_ends {
                    break;
                }
            }
            let msg = &mut self.msgs[nmsg];
            msg.msg_len = 0;
            let h = &mut msg.msg_hdr;
            h.msg_name = addr.as_ptr() as *mut libc::c_void;
            h.msg_namelen = addr.len();
            h.msg_iov = self.iovs[iov_start..].as_mut_ptr();
            h.msg_iovlen = (iov_used - iov_start) as _;
            h.msg_flags = 0;
            if segs > 1 {
                let ctl = &mut self.controls[nmsg];
                write_gso_cmsg(ctl, segment as u16);
                h.msg_control = ctl.0.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE is a pure size computation.
                h.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as _;
            } else {
                h.msg_control = ptr::null_mut();
                h.msg_controllen = 0;
            }
            self.counts[nmsg] = segs;
            nmsg += 1;
        }
        // SAFETY: msgs[..nmsg] point at `addr` (alive for this call), at iovecs filled from
        // the caller's borrowed buffers (alive for this call) and at our control buffers.
        let rc = unsafe {
            libc::sendmmsg(
                self.socket.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                nmsg as libc::c_uint,
                0,
            )
        };
        if rc < 0 {
            // Only this call's messages count for the caller's "was GSO used" check.
            self.counts[nmsg..].fill(0);
            return Err(io::Error::from_raw_os_error(errno()));
        }
        Ok(self.counts[..rc as usize].iter().sum())
    }
}

/// Whether a failed GSO send means the path cannot take it: EIO, the route's device cannot
/// checksum-offload; EINVAL (older kernels) or EMSGSIZE (newer ones), a segment exceeds the
/// path MTU.
fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE)
    )
}

/// Whether the kernel knows `UDP_SEGMENT` (Linux 4.18+). Read-only probe: no socket state
/// changes, so sends without the cmsg stay plain datagrams.
fn gso_supported(socket: &UdpSocket) -> bool {
    match get_int_opt(socket, libc::SOL_UDP, libc::UDP_SEGMENT) {
        Ok(_) => true,
        Err(e) => {
            tracing::info!(error = %e, "UDP GSO not supported by this kernel");
            false
        }
    }
}

/// Writes one `SOL_UDP/UDP_SEGMENT` control message carrying `segment`.
fn write_gso_cmsg(ctl: &mut GsoControl, segment: u16) {
    ctl.0 = [0; 32];
    // SAFETY: the buffer is 8-byte aligned and 32 >= CMSG_SPACE(2) = 24 bytes, so a msghdr
    // describing it yields a valid first cmsghdr with room for its 2 data bytes.
    unsafe {
        let mut h: libc::msghdr = mem::zeroed();
        h.msg_control = ctl.0.as_mut_ptr().cast();
        h.msg_controllen = libc::CMSG_SPACE(2) as _;
        let c = libc::CMSG_FIRSTHDR(&h);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
        ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_path_goes_without_gso_until_its_retry_and_the_table_stays_bounded() {
        let t0 = Instant::now();
        let a: SocketAddr = "198.18.0.2:6401".parse().unwrap();
        let b: SocketAddr = "198.18.0.3:6401".parse().unwrap();
        let mut r = RefusedPaths::default();
        assert!(!r.refuses(&a, t0));
        r.refuse(a, t0);
        assert!(r.refuses(&a, t0 + GSO_RETRY / 2));
        assert!(!r.refuses(&b, t0), "only the refusing destination");
        assert!(
            !r.refuses(&a, t0 + GSO_RETRY),
            "retried once its time is up"
        );
        assert!(!r.refuses(&a, t0), "and forgotten until it refuses again");
        // Full: the entry due soonest makes room, the others stay.
        for i in 0..MAX_REFUSED_PATHS as u16 {
            r.refuse(
                SocketAddr::from(([10, 0, 0, 1], i)),
                t0 + Duration::from_millis(i.into()),
            );
        }
        r.refuse(a, t0 + Duration::from_secs(1));
        assert_eq!(r.entries.len(), MAX_REFUSED_PATHS);
        assert!(r.refuses(&a, t0 + Duration::from_secs(2)));
        let first = SocketAddr::from(([10, 0, 0, 1], 0));
        assert!(!r.refuses(&first, t0 + Duration::from_secs(2)), "evicted");
        let last = SocketAddr::from(([10, 0, 0, 1], MAX_REFUSED_PATHS as u16 - 1));
        assert!(r.refuses(&last, t0 + Duration::from_secs(2)));
    }
}
