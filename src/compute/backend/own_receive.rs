//! A backend that receives its own prefetches (`scan --receive backend`): a UDP socket of its
//! own, registered as its connections' prefetch target, drained into the LFC with the worker
//! daemon's receive code (`workers::pump::SlotPump` and `Ingest`: the same checks, the same
//! install rule, UDP GRO) in the backend's own context — when a read misses and while it
//! waits — as a TCP page is received in the backend's own `recv`.
//!
//! Why: a page for the daemon waits until the daemon's thread gets the CPU, one runnable
//! thread among the compute's busy backends (ARCHITECTURE §10); a page for the backend is
//! received by the process that waits for it, whenever it runs.
//!
//! Owns: the socket and the LFC frames posted in it. Limits: at most [`SLOTS`] receives of
//! [`FRAMES_PER_SLOT`] frames each (64 frames, 512 KiB of the LFC held per backend), and no
//! more than 1/512 of the cache ([`slots_for`]); a receive buffer of [`RECV_BUFFER_BYTES`]. Does I/O (a socket); imports `workers` and `lfc`.

use lfc::Lfc;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use workers::metrics::ThreadMetrics;
use workers::pump::{SlotPump, Step};
use workers::udp::{self, IoBackend, Receiver, UdpError};

/// Receives posted at once, each a train of up to [`FRAMES_PER_SLOT`] datagrams with UDP GRO:
/// a drain takes up to 64 pages, the front of a scan's window and more.
pub const SLOTS: usize = 8;
/// Cache frames per frame a backend's receiver may hold posted (`slots_for`).
pub const CACHE_FRAMES_PER_POSTED: u64 = 512;

/// The receives a backend posts in a cache of `capacity_pages`: [`SLOTS`], fewer in a cache
/// too small for every backend to hold 64 frames (at least one). Frames held for receiving
/// hold no page: in the simulator, four such backends holding 4 frames each of a 99-page
/// cache evicted half as often again as TCP pipelining and ran 1.7 × as long.
pub fn slots_for(capacity_pages: u64) -> usize {
    let per_slot = CACHE_FRAMES_PER_POSTED * FRAMES_PER_SLOT as u64;
    (capacity_pages / per_slot).clamp(1, SLOTS as u64) as usize
}
pub const FRAMES_PER_SLOT: usize = 8;
/// Holds a window of 128 pages twice over (the kernel counts about twice a datagram's bytes),
/// so a backend busy with its query between reads loses nothing to its buffer.
pub const RECV_BUFFER_BYTES: usize = 4 << 20;

/// The backend's own prefetch receiver.
pub struct OwnReceiver<'a> {
    pump: SlotPump<'a>,
    metrics: ThreadMetrics,
    port: u16,
}

impl<'a> OwnReceiver<'a> {
    /// A socket on `ip` (the address the page server's connection reaches this host at), any
    /// free port, receiving into `lfc`.
    pub fn open(lfc: &'a Lfc, ip: IpAddr) -> Result<Self, UdpError> {
        let socket = udp::bind_reuseport(SocketAddr::new(ip, 0), RECV_BUFFER_BYTES)
            .map_err(UdpError::io("binding the backend's prefetch socket"))?;
        udp::set_gro(&socket, true).map_err(UdpError::io("enabling UDP GRO"))?;
        let port = socket
            .local_addr()
            .map_err(UdpError::io(
                "reading the backend's prefetch socket's address",
            ))?
            .port();
        let receiver = Receiver::new(socket, IoBackend::Epoll, slots_for(lfc.capacity_pages()))?;
        Ok(OwnReceiver {
            pump: SlotPump::new(lfc, receiver, FRAMES_PER_SLOT),
            metrics: ThreadMetrics::default(),
            port,
        })
    }

    /// The port to register as the prefetch target.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Installs what has arrived, waiting up to `timeout` for a first datagram when none has
    /// (zero: never blocks). Returns the datagrams received. A failure of the socket is
    /// logged and counts as nothing received: the read path's loss rules then take the
    /// backend to TCP, as for any UDP path that stops delivering.
    pub fn drain(&mut self, timeout: Duration) -> usize {
        match self.pump.step(timeout, &self.metrics) {
            Ok(Step::Received(n)) => n,
            Ok(Step::NoSlot) => 0,
            Err(e) => {
                tracing::warn!(error = %e, "the backend's prefetch socket failed");
                0
            }
        }
    }

    /// Pages installed so far.
    pub fn installed(&self) -> u64 {
        self.metrics
            .installed
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_holds_at_most_a_512th_of_the_cache_for_receiving_and_never_nothing() {
        let frames = |capacity| slots_for(capacity) * FRAMES_PER_SLOT;
        // 1 GiB and more: the whole 64 frames.
        assert_eq!(slots_for(131_072), SLOTS);
        assert_eq!(slots_for(u64::MAX), SLOTS);
        // 128 MiB: half of them.
        assert_eq!(frames(16_384), 32);
        for capacity in [1, 24, 4_095, 8_192, 65_536, 262_144] {
            let n = slots_for(capacity);
            assert!((1..=SLOTS).contains(&n), "{capacity}: {n}");
            assert!(
                n == 1 || frames(capacity) as u64 * CACHE_FRAMES_PER_POSTED <= capacity,
                "{capacity}: {n} slots"
            );
        }
    }
}
