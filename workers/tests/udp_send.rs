//! GsoSender on loopback: with and without GSO every datagram arrives intact.

mod udp_common;

use std::io::IoSlice;
use std::time::Duration;

use udp_common::*;
use workers::udp::{
    bind_reuseport, Completion, GsoSender, IoBackend, Receiver, UdpError, DATAGRAM_LEN, HEADER_LEN,
    PAGE_LEN,
};

const N: usize = 210;
/// Datagrams per send call; the test waits for each batch before the next, so no datagram
/// can be dropped for lack of receive buffer.
const BATCH: usize = 30;

fn run(backend: IoBackend, allow_gso: bool, vectored: bool) {
    let mem = SlotMem::new(BATCH);
    let sock = bind_reuseport(localhost0(), 16 << 20).unwrap();
    let addr = sock.local_addr().unwrap();
    let mut rx = Receiver::new(sock, backend, BATCH).unwrap();
    let mut tx = GsoSender::new(sender(), DATAGRAM_LEN, 64, allow_gso).unwrap();
    if allow_gso {
        // Loopback has a 64 KiB MTU and checksum offload: GSO must be on here.
        assert!(tx.gso_active());
        assert_eq!(tx.gso_segments(), 7);
    } else {
        assert!(!tx.gso_active());
        assert_eq!(tx.gso_segments(), 1);
    }
    let data: Vec<Vec<u8>> = (0..N as u32).map(|s| pattern(s, DATAGRAM_LEN)).collect();
    let mut seqs = Vec::new();
    for chunk in data.chunks(BATCH) {
        let sent = if vectored {
            let parts: Vec<[IoSlice<'_>; 3]> = chunk
                .iter()
                .map(|d| {
                    let (h, rest) = d.split_at(HEADER_LEN);
                    let (p, t) = rest.split_at(PAGE_LEN);
                    [IoSlice::new(h), IoSlice::new(p), IoSlice::new(t)]
                })
                .collect();
            tx.send_vectored(addr, &parts).unwrap()
        } else {
            tx.send(addr, chunk).unwrap()
        };
        assert_eq!(sent, chunk.len());
        seqs.extend(receive_n(&mut rx, &mem, chunk.len(), |c, img| {
            assert_eq!((c.len, c.truncated), (DATAGRAM_LEN, false));
            assert_eq!(img, &data[seq_of(img) as usize][..]);
        }));
        let mut none = [Completion::default(); 1];
        rx.cancel_all(&mut |_| {}).unwrap();
        assert_eq!(rx.wait(Duration::ZERO, &mut none).unwrap(), 0);
    }
    assert_all_once(&seqs, N);
    assert_eq!(
        tx.gso_active(),
        allow_gso,
        "GSO was not disabled by a failure"
    );
}

#[test]
fn gso_epoll() {
    run(IoBackend::Epoll, true, false);
}

#[test]
fn no_gso_epoll() {
    run(IoBackend::Epoll, false, false);
}

#[test]
fn gso_vectored_uring() {
    run(IoBackend::Uring, true, true);
}

#[test]
fn no_gso_vectored_uring() {
    run(IoBackend::Uring, false, true);
}

/// Datagrams of other sizes break GSO runs and go alone; all arrive with their own length.
#[test]
fn mixed_sizes() {
    let lens = [
        DATAGRAM_LEN,
        DATAGRAM_LEN,
        100,
        DATAGRAM_LEN,
        DATAGRAM_LEN,
        DATAGRAM_LEN,
        DATAGRAM_LEN,
        DATAGRAM_LEN,
        DATAGRAM_LEN,
        DATAGRAM_LEN,
        DATAGRAM_LEN,
        5000,
        1,
        DATAGRAM_LEN,
    ];
    let mem = SlotMem::new(lens.len());
    let sock = bind_reuseport(localhost0(), 16 << 20).unwrap();
    let addr = sock.local_addr().unwrap();
    let mut rx = Receiver::new(sock, IoBackend::Epoll, lens.len()).unwrap();
    let mut tx = GsoSender::new(sender(), DATAGRAM_LEN, 64, true).unwrap();
    let data: Vec<Vec<u8>> = lens
        .iter()
        .enumerate()
        .map(|(s, &l)| pattern(s as u32, l.max(4)))
        .collect();
    assert_eq!(tx.send(addr, &data).unwrap(), data.len());
    let seqs = receive_n(&mut rx, &mem, data.len(), |c, img| {
        let d = &data[seq_of(img) as usize];
        assert_eq!(c.len, d.len());
        assert_eq!(&img[..d.len()], &d[..]);
    });
    assert_all_once(&seqs, data.len());
}

#[test]
fn sender_arguments() {
    assert!(matches!(
        GsoSender::new(sender(), 0, 64, true),
        Err(UdpError::InvalidSender(_))
    ));
    assert!(matches!(
        GsoSender::new(sender(), DATAGRAM_LEN, 0, true),
        Err(UdpError::InvalidSender(_))
    ));
    let mut tx = GsoSender::new(sender(), DATAGRAM_LEN, 8, true).unwrap();
    let b = [0u8; 4];
    let too_many = [[IoSlice::new(&b); 5]];
    let e = tx
        .send_vectored("127.0.0.1:9".parse().unwrap(), &too_many)
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    let none: [&[u8]; 0] = [];
    assert_eq!(tx.send("127.0.0.1:9".parse().unwrap(), &none).unwrap(), 0);
}

/// Brings up `lo` with the given MTU in the calling thread's network namespace.
fn set_loopback_mtu(mtu: i32) -> std::io::Result<()> {
    use std::io::Error;
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: ifreq is a plain C struct; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_mtu = mtu;
    // SAFETY: `ifr` is a valid ifreq naming "lo" for each request; fd is ours.
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCSIFMTU, &mut ifr) != 0
            || libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) != 0
        {
            Err(Error::last_os_error())
        } else {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut ifr) != 0 {
                Err(Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
    result
}

/// On a path whose MTU is below the segment size the kernel refuses GSO sends (EMSGSIZE on
/// Linux 6.x, EINVAL on older kernels): the sender must switch GSO off and still deliver
/// everything (as IP fragments). Runs in a private network namespace (needs root, as CI has)
/// whose loopback gets a 1500-byte MTU.
#[test]
fn gso_falls_back_on_small_mtu_path() {
    std::thread::spawn(|| {
        // SAFETY: unshare(CLONE_NEWNET) moves only this thread into a new, empty network
        // namespace; the thread ends with the test and the namespace with it.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
            eprintln!("skipped: unshare(CLONE_NEWNET) needs root: {e}");
            return;
        }
        set_loopback_mtu(1500).unwrap();
        const COUNT: usize = 14;
        let mem = SlotMem::new(2 * COUNT);
        let sock = bind_reuseport(localhost0(), 16 << 20).unwrap();
        let addr = sock.local_addr().unwrap();
        let mut rx = Receiver::new(sock, IoBackend::Epoll, 2 * COUNT).unwrap();
        let mut tx = GsoSender::new(sender(), DATAGRAM_LEN, 64, true).unwrap();
        assert!(tx.gso_active(), "the kernel supports UDP_SEGMENT");
        let data: Vec<Vec<u8>> = (0..2 * COUNT as u32)
            .map(|s| pattern(s, DATAGRAM_LEN))
            .collect();
        assert_eq!(tx.send(addr, &data[..COUNT]).unwrap(), COUNT);
        assert!(
            !tx.gso_active_for(addr),
            "GSO must be off for this destination after the refused send"
        );
        assert!(tx.gso_active(), "and only for it: other paths keep GSO");
        // Sends to the refusing destination go on, one datagram per message.
        assert_eq!(tx.send(addr, &data[COUNT..]).unwrap(), COUNT);
        let seqs = receive_n(&mut rx, &mem, 2 * COUNT, |c, img| {
            assert_eq!((c.len, c.truncated), (DATAGRAM_LEN, false));
            assert_eq!(img, &data[seq_of(img) as usize][..]);
        });
        assert_all_once(&seqs, 2 * COUNT);
    })
    .join()
    .unwrap();
}
