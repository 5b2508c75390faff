//! Ad-hoc receive-rate measurement (ignored by default):
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-udp cargo test --release -p workers --test udp_rate -- --ignored --nocapture
//! ```
//!
//! One sender thread pushes 8272-byte datagrams over loopback with `GsoSender` (with and
//! without GSO) as fast as it can for `UDP_RATE_SECS` (default 2) seconds; one receiver thread
//! receives them into 4 KiB-aligned slots with each backend and re-posts at once. Prints
//! datagrams/s sent and received and the kernel's drop count. Numbers, not assertions.

mod udp_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use udp_common::*;
use workers::udp::{
    bind_reuseport, Completion, GsoSender, IoBackend, Receiver, DATAGRAM_LEN, MAX_SLOTS,
};

fn measure(backend: IoBackend, gso: bool, slots: usize, secs: f64) {
    let sock = bind_reuseport(localhost0(), 64 << 20).unwrap();
    let addr = sock.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = thread::spawn({
        let stop = stop.clone();
        move || {
            let mem = SlotMem::new(slots);
            let mut rx = Receiver::new(sock, backend, slots).unwrap();
            for i in 0..slots {
                // SAFETY: `mem` outlives `rx` (declared first, dropped last).
                unsafe { rx.post(i as u32, mem.regions(i)) }.unwrap();
            }
            let mut out = [Completion::default(); MAX_SLOTS];
            let mut received = 0u64;
            let mut truncated = 0u64;
            let mut first: Option<Instant> = None;
            let mut last = Instant::now();
            let mut idle = 0;
            loop {
                let n = rx.wait(Duration::from_millis(50), &mut out).unwrap();
                if n == 0 {
                    if stop.load(Ordering::Relaxed) {
                        idle += 1;
                        if idle > 2 {
                            break;
                        }
                    }
                    continue;
                }
                idle = 0;
                first.get_or_insert_with(Instant::now);
                last = Instant::now();
                for c in &out[..n] {
                    received += 1;
                    truncated += u64::from(c.truncated || c.len != DATAGRAM_LEN);
                    // SAFETY: as above; the slot just came back.
                    unsafe { rx.post(c.slot_id, mem.regions(c.slot_id as usize)) }.unwrap();
                }
            }
            let span = first.map_or(0.0, |f| (last - f).as_secs_f64());
            (received, truncated, span, rx.kernel_drops())
        }
    });
    let mut tx = GsoSender::new(sender(), DATAGRAM_LEN, 64, gso).unwrap();
    // A deep send buffer so the sender is not throttled by SO_SNDBUF accounting.
    socket2::SockRef::from(tx.socket())
        .set_send_buffer_size(8 << 20)
        .unwrap();
    let data: Vec<Vec<u8>> = (0..64).map(|s| pattern(s, DATAGRAM_LEN)).collect();
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        sent += tx.send(addr, &data).unwrap() as u64;
    }
    let send_span = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (received, truncated, span, drops) = receiver.join().unwrap();
    assert_eq!(truncated, 0);
    println!(
        "{backend:>5} gso={:<5} slots={slots:<3}  sent {:>9.0}/s  received {:>9.0}/s ({:>6.2} Gbit/s)  \
         received {received:>8} of {sent:>8}  kernel drops {drops}",
        tx.gso_active(),
        sent as f64 / send_span,
        received as f64 / span,
        received as f64 * DATAGRAM_LEN as f64 * 8.0 / span / 1e9,
    );
}

/// Receiver capacity alone: queue `count` datagrams in a huge receive buffer while nobody
/// receives, then time draining them (the live test above is bound by the sender, which on
/// loopback also runs the kernel's receive path up to the socket queue).
fn drain_prefilled(backend: IoBackend, slots: usize, count: usize) {
    let sock = bind_reuseport(localhost0(), 1 << 30).unwrap();
    let addr = sock.local_addr().unwrap();
    let mut tx = GsoSender::new(sender(), DATAGRAM_LEN, 64, true).unwrap();
    let data: Vec<Vec<u8>> = (0..64).map(|s| pattern(s, DATAGRAM_LEN)).collect();
    let mut sent = 0;
    while sent < count {
        sent += tx.send(addr, &data[..64.min(count - sent)]).unwrap();
    }
    let mem = SlotMem::new(slots);
    let mut rx = Receiver::new(sock, backend, slots).unwrap();
    for i in 0..slots {
        // SAFETY: `mem` outlives `rx` (declared first, dropped last).
        unsafe { rx.post(i as u32, mem.regions(i)) }.unwrap();
    }
    let mut out = [Completion::default(); MAX_SLOTS];
    let mut received = 0;
    let start = Instant::now();
    loop {
        let n = rx.wait(Duration::from_millis(100), &mut out).unwrap();
        if n == 0 {
            break;
        }
        for c in &out[..n] {
            received += 1;
            // SAFETY: as above; the slot just came back.
            unsafe { rx.post(c.slot_id, mem.regions(c.slot_id as usize)) }.unwrap();
        }
    }
    // The last wait timed out after the queue was empty: not part of the drain.
    let span = start.elapsed().as_secs_f64() - 0.1;
    println!(
        "{backend:>5} prefilled slots={slots:<3}  drained {received} of {count} queued at {:>9.0}/s \
         ({:.2} Gbit/s), kernel drops {}",
        received as f64 / span,
        received as f64 * DATAGRAM_LEN as f64 * 8.0 / span / 1e9,
        rx.kernel_drops(),
    );
}

#[test]
#[ignore = "measurement, run by hand"]
fn receive_rate() {
    let secs: f64 = std::env::var("UDP_RATE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    for slots in [64, 256] {
        for backend in [IoBackend::Epoll, IoBackend::Uring] {
            for gso in [true, false] {
                measure(backend, gso, slots, secs);
            }
        }
    }
    for slots in [64, 256] {
        for backend in [IoBackend::Epoll, IoBackend::Uring] {
            drain_prefilled(backend, slots, 50_000);
        }
    }
}
