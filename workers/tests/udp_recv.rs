//! Receive path on real loopback sockets, for both backends.

mod udp_common;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use udp_common::*;
use workers::udp::{
    bind_reuseport, bind_reuseport_group, recv_buffer_size, Completion, IoBackend, IoChoice,
    Receiver, SlotRegions, UdpError, DATAGRAM_LEN, HEADER_LEN, MAX_SLOTS, PAGE_LEN, TAG_LEN,
};

const MIB: usize = 1 << 20;

fn receiver(backend: IoBackend, slots: usize, rcvbuf: usize) -> (Receiver, SocketAddr) {
    let sock = bind_reuseport(localhost0(), rcvbuf).unwrap();
    let addr = sock.local_addr().unwrap();
    (Receiver::new(sock, backend, slots).unwrap(), addr)
}

/// Sockets bound to port 0 never share a port, so never a group: the kernel's own pick for a
/// socket with `SO_REUSEPORT` set shared a port in 76 of 2000 binds on this project's machines,
/// and two tests' receivers then got each other's datagrams.
#[test]
fn port_0_gives_every_socket_a_port_of_its_own() {
    const SOCKETS: usize = 1500;
    let socks: Vec<_> = (0..SOCKETS)
        .map(|_| bind_reuseport(localhost0(), 0).unwrap())
        .collect();
    let mut ports: Vec<u16> = socks
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(
        ports.len(),
        SOCKETS,
        "ports shared between sockets bound to port 0"
    );
}

/// Full-size, short and oversized datagrams land in the right regions with the right flags.
fn scatter(backend: IoBackend) {
    let mem = SlotMem::new(4);
    assert!(mem.page_is_aligned(1));
    let (mut rx, addr) = receiver(backend, 4, 4 * MIB);
    assert_eq!(rx.backend(), backend);
    let tx = sender();
    let full = pattern(1, DATAGRAM_LEN);
    let short = pattern(2, 100);
    let long = pattern(3, DATAGRAM_LEN + 10);
    for d in [&full, &short, &long] {
        tx.send_to(d, addr).unwrap();
    }
    let mut seen = 0;
    receive_n(&mut rx, &mem, 3, |c, img| {
        seen += 1;
        assert_eq!(c.source, Some(tx.local_addr().unwrap()));
        assert_eq!(c.kernel_drops, 0);
        match seq_of(img) {
            1 => {
                assert_eq!((c.len, c.truncated), (DATAGRAM_LEN, false));
                assert_eq!(img, &full[..]);
                // Region by region, to be explicit about the scatter.
                assert_eq!(&img[..HEADER_LEN], &full[..HEADER_LEN]);
                assert_eq!(
                    &img[HEADER_LEN..HEADER_LEN + PAGE_LEN],
                    &full[HEADER_LEN..HEADER_LEN + PAGE_LEN]
                );
                assert_eq!(
                    &img[HEADER_LEN + PAGE_LEN..],
                    &full[DATAGRAM_LEN - TAG_LEN..]
                );
            }
            2 => {
                assert_eq!((c.len, c.truncated), (100, false));
                assert_eq!(&img[..100], &short[..]);
                assert!(
                    img[100..].iter().all(|&b| b == 0xEE),
                    "bytes past the datagram untouched"
                );
            }
            3 => {
                assert_eq!((c.len, c.truncated), (DATAGRAM_LEN + 10, true));
                assert_eq!(img, &long[..DATAGRAM_LEN]);
            }
            s => panic!("unexpected seq {s}"),
        }
    });
    assert_eq!(seen, 3);
}

#[test]
fn scatter_epoll() {
    scatter(IoBackend::Epoll);
}

#[test]
fn scatter_uring() {
    scatter(IoBackend::Uring);
}

/// 10 000 datagrams through 32 slots, sent concurrently by another thread. The sender keeps at
/// most two windows in flight (credit from the receiver), so no datagram can be dropped for
/// lack of buffer, whatever the machine's rmem limits.
fn drain_many(backend: IoBackend) {
    const N: usize = 10_000;
    const WINDOW: usize = 64;
    const LEN: usize = 200;
    let mem = SlotMem::new(32);
    let (mut rx, addr) = receiver(backend, 32, 4 * MIB);
    let (credit_tx, credit_rx) = mpsc::channel::<()>();
    let sender_thread = thread::spawn(move || {
        let tx = sender();
        for w in 0..N / WINDOW + 1 {
            if w >= 2 {
                credit_rx.recv().unwrap();
            }
            for seq in w * WINDOW..((w + 1) * WINDOW).min(N) {
                tx.send_to(&pattern(seq as u32, LEN), addr).unwrap();
            }
        }
    });
    let mut count = 0;
    let seqs = receive_n(&mut rx, &mem, N, |c, img| {
        assert_eq!((c.len, c.truncated), (LEN, false));
        assert_eq!(&img[..LEN], &pattern(seq_of(img), LEN)[..]);
        count += 1;
        if count % WINDOW == 0 {
            // The sender may already be done; a closed channel is fine.
            let _ = credit_tx.send(());
        }
    });
    sender_thread.join().unwrap();
    assert_all_once(&seqs, N);
    assert_eq!(rx.posted(), 32);
}

#[test]
fn drain_many_epoll() {
    drain_many(IoBackend::Epoll);
}

#[test]
fn drain_many_uring() {
    drain_many(IoBackend::Uring);
}

/// Receives `n` datagrams on the sockets of a group, each slot re-posted: (socket, seq) pairs.
fn receive_on_group(rxs: &mut [Receiver], mems: &[SlotMem], n: usize) -> Vec<(usize, u32)> {
    let mut got = Vec::new();
    let mut out = [Completion::default(); 16];
    let start = Instant::now();
    while got.len() < n {
        assert!(start.elapsed() < DEADLINE, "got {got:?}");
        for (k, (rx, mem)) in rxs.iter_mut().zip(mems).enumerate() {
            let n = rx.wait(Duration::from_millis(20), &mut out).unwrap();
            for c in &out[..n] {
                assert_eq!(c.len, 300);
                got.push((k, seq_of(&mem.image(c.slot_id as usize))));
                post(rx, mem, c.slot_id as usize);
            }
        }
    }
    got
}

/// A two-socket SO_REUSEPORT group with `slots` slots posted on each. The receivers are
/// declared first so they drop, and give the kernel's hold on the slots back, before the memory.
struct Group {
    rxs: Vec<Receiver>,
    mems: [SlotMem; 2],
    addr: SocketAddr,
}

fn posted_group(backend: IoBackend, slots: usize) -> Group {
    let socks = bind_reuseport_group(localhost0(), 2, 4 * MIB).unwrap();
    let addr = socks[0].local_addr().unwrap();
    assert_eq!(socks[1].local_addr().unwrap(), addr);
    let mems = [SlotMem::new(slots), SlotMem::new(slots)];
    let mut rxs: Vec<Receiver> = socks
        .into_iter()
        .map(|s| Receiver::new(s, backend, slots).unwrap())
        .collect();
    for (rx, mem) in rxs.iter_mut().zip(&mems) {
        for i in 0..slots {
            post(rx, mem, i);
        }
    }
    Group { rxs, mems, addr }
}

/// One sender's datagrams go to the socket its block number (offset 52) picks, not all to the
/// one socket a hash of its 4-tuple would pick: every worker thread shares one page server's
/// stream.
fn spread_by_block(backend: IoBackend) {
    const DATAGRAMS: u32 = 32;
    // Kept whole (not destructured): its fields drop in order, receivers before memory.
    let mut g = posted_group(backend, 16);
    let tx = sender();
    for seq in 0..DATAGRAMS {
        let mut d = pattern(seq, 300);
        d[52..56].copy_from_slice(&(seq * 7).to_be_bytes()); // the block number
        tx.send_to(&d, g.addr).unwrap();
    }
    let got = receive_on_group(&mut g.rxs, &g.mems, DATAGRAMS as usize);
    let seqs: Vec<u32> = got.iter().map(|&(_, s)| s).collect();
    assert_all_once(&seqs, DATAGRAMS as usize);
    for (socket, seq) in got {
        assert_eq!(socket, (seq * 7 % 2) as usize, "datagram {seq}");
    }
}

#[test]
fn spread_by_block_epoll() {
    spread_by_block(IoBackend::Epoll);
}

#[test]
fn spread_by_block_uring() {
    spread_by_block(IoBackend::Uring);
}

/// Two sockets of one SO_REUSEPORT group: datagrams from 64 source ports spread over both.
fn reuseport(backend: IoBackend) {
    const SENDERS: usize = 64;
    let mut g = posted_group(backend, 8);
    for seq in 0..SENDERS {
        sender().send_to(&pattern(seq as u32, 300), g.addr).unwrap();
    }
    let got = receive_on_group(&mut g.rxs, &g.mems, SENDERS);
    let seqs: Vec<u32> = got.iter().map(|&(_, s)| s).collect();
    let mut per_socket = [0usize; 2];
    for &(k, _) in &got {
        per_socket[k] += 1;
    }
    assert_all_once(&seqs, SENDERS);
    assert!(per_socket.iter().all(|&n| n > 0), "spread {per_socket:?}");
}

#[test]
fn reuseport_epoll() {
    reuseport(IoBackend::Epoll);
}

#[test]
fn reuseport_uring() {
    reuseport(IoBackend::Uring);
}

/// Overflow a tiny receive buffer while nobody receives; the next datagram queued after the
/// drops carries the kernel's counter (SO_RXQ_OVFL), which the completion reports.
fn rxq_ovfl(backend: IoBackend) {
    let sock = bind_reuseport(localhost0(), 4096).unwrap();
    assert!(recv_buffer_size(&sock).unwrap() < 64 * 1024);
    let addr = sock.local_addr().unwrap();
    let tx = sender();
    // The kernel always admits one datagram into an empty queue, then drops while full.
    for seq in 0..50 {
        tx.send_to(&pattern(seq, DATAGRAM_LEN), addr).unwrap();
    }
    let mem = SlotMem::new(4);
    let mut rx = Receiver::new(sock, backend, 4).unwrap();
    let mut out = [Completion::default(); 4];
    let start = Instant::now();
    let mut first = None;
    for i in 0..4 {
        post(&mut rx, &mem, i);
    }
    while first.is_none() {
        assert!(start.elapsed() < DEADLINE);
        let n = rx.wait(Duration::from_millis(200), &mut out).unwrap();
        first = out[..n].first().copied();
    }
    // Now a datagram queued after the drops.
    tx.send_to(&pattern(1000, 64), addr).unwrap();
    let mut last = None;
    while last.is_none() {
        assert!(start.elapsed() < DEADLINE);
        let n = rx.wait(Duration::from_millis(200), &mut out).unwrap();
        last = out[..n].iter().find(|c| c.len == 64).copied();
    }
    let last = last.unwrap();
    assert!(last.kernel_drops > 0, "{last:?}");
    assert_eq!(rx.kernel_drops(), last.kernel_drops);
    assert!(last.kernel_drops < 50);
}

#[test]
fn rxq_ovfl_epoll() {
    rxq_ovfl(IoBackend::Epoll);
}

#[test]
fn rxq_ovfl_uring() {
    rxq_ovfl(IoBackend::Uring);
}

/// cancel_all hands back every posted slot and leaves the receiver reusable; dropping a
/// receiver with posted slots returns (io_uring: after cancelling in the kernel).
fn cancel(backend: IoBackend) {
    let mem = SlotMem::new(16);
    let (mut rx, addr) = receiver(backend, 16, MIB);
    for i in 0..16 {
        post(&mut rx, &mem, i);
    }
    let mut out = [Completion::default(); 16];
    // Submits the receives (io_uring) and times out: nothing was sent.
    assert_eq!(rx.wait(Duration::from_millis(1), &mut out).unwrap(), 0);
    let mut back = Vec::new();
    rx.cancel_all(&mut |id| back.push(id)).unwrap();
    back.sort_unstable();
    assert_eq!(back, (0..16).collect::<Vec<u32>>());
    assert_eq!(rx.posted(), 0);
    // With nothing posted, wait returns at once.
    assert_eq!(rx.wait(Duration::from_secs(3600), &mut out).unwrap(), 0);
    // Still usable.
    sender().send_to(&pattern(5, 500), addr).unwrap();
    let seqs = receive_n(&mut rx, &mem, 1, |c, _| assert_eq!(c.len, 500));
    assert_eq!(seqs, vec![5]);
    // Dropped with 16 slots posted and submitted.
    assert_eq!(rx.wait(Duration::ZERO, &mut out).unwrap(), 0);
    drop(rx);
}

#[test]
fn cancel_epoll() {
    cancel(IoBackend::Epoll);
}

#[test]
fn cancel_uring() {
    cancel(IoBackend::Uring);
}

#[test]
fn io_choice_parses() {
    assert_eq!("auto".parse::<IoChoice>().unwrap(), IoChoice::Auto);
    assert_eq!("uring".parse::<IoChoice>().unwrap(), IoChoice::Uring);
    assert_eq!("EPOLL".parse::<IoChoice>().unwrap(), IoChoice::Epoll);
    let e = "kqueue".parse::<IoChoice>().unwrap_err();
    assert!(matches!(e, UdpError::InvalidIoChoice(_)));
    assert!(e.to_string().contains("auto, uring or epoll"), "{e}");
    assert_eq!(IoChoice::Epoll.resolve().unwrap(), IoBackend::Epoll);
    // This machine allows io_uring (the uring tests need it too).
    assert_eq!(IoChoice::Auto.resolve().unwrap(), IoBackend::Uring);
    assert_eq!(IoChoice::Uring.resolve().unwrap(), IoBackend::Uring);
}

#[test]
fn bad_arguments_are_errors() {
    for backend in [IoBackend::Epoll, IoBackend::Uring] {
        for n in [0, MAX_SLOTS + 1] {
            let s = bind_reuseport(localhost0(), 0).unwrap();
            assert!(matches!(
                Receiver::new(s, backend, n),
                Err(UdpError::BadSlotCount { .. })
            ));
        }
        let mem = SlotMem::new(2);
        let (mut rx, _) = receiver(backend, 1, 0);
        let mut r = mem.regions(0);
        r.page = std::ptr::null_mut();
        // SAFETY: rejected before anything is referenced.
        let res = unsafe { rx.post(0, r) };
        assert!(matches!(res, Err(UdpError::InvalidRegions(_))));
        let empty = SlotRegions {
            header_len: 0,
            page_len: 0,
            tag_len: 0,
            ..mem.regions(0)
        };
        // SAFETY: as above.
        let res = unsafe { rx.post(0, empty) };
        assert!(matches!(res, Err(UdpError::InvalidRegions(_))));
        post(&mut rx, &mem, 0);
        // SAFETY: rejected (no free slot) before anything is referenced.
        let res = unsafe { rx.post(1, mem.regions(1)) };
        assert!(matches!(res, Err(UdpError::NoFreeSlot(1))));
        assert_eq!(rx.posted(), 1);
    }
}
