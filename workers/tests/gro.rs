//! UDP GRO receives end to end, through the daemon's own receive loop (`SlotPump`, as each
//! worker thread runs it) on a real loopback socket with `UDP_GRO` on: a GSO train sent to it
//! arrives as one receive (loopback keeps a GSO send whole), and every datagram of the train is
//! installed, held or turned away exactly as it would have been alone. Both receive backends
//! (io_uring when this kernel allows it).

use lfc::{Lfc, RelTag, PAGE_SIZE};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use workers::datagram::{
    DatagramHeader, DatagramKey, DropReason, SealStream, DATAGRAM_LEN, SEALED_PAGE_MAX,
};
use workers::metrics::ThreadMetrics;
use workers::pump::SlotPump;
use workers::udp::{bind_reuseport, probe_uring, set_gro, GsoSender, IoBackend, Receiver};

/// Guard against a hung test; never used to decide success.
const DEADLINE: Duration = Duration::from_secs(20);

fn backends() -> Vec<IoBackend> {
    let mut b = vec![IoBackend::Epoll];
    if probe_uring().is_ok() {
        b.push(IoBackend::Uring);
    }
    b
}

/// A cache, a receive socket with GRO on its port, and the daemon's pump on it.
struct Rig {
    _dir: tempfile::TempDir,
    lfc: &'static Lfc,
    dest: SocketAddr,
    key: DatagramKey,
}

fn rig() -> (Rig, UdpSocket) {
    let dir = tempfile::tempdir().unwrap();
    // Leaked so the pump (borrowing it) can live in the test body without lifetimes games.
    // 1024 pages: the assembly table holds at most 1/16 of the cache, and the interleaved test
    // has 32 split pages in assembly at once.
    let lfc: &'static Lfc = Box::leak(Box::new(Lfc::create(dir.path().join("lfc"), 1024).unwrap()));
    let socket = bind_reuseport("127.0.0.1:0".parse().unwrap(), 4 << 20).unwrap();
    set_gro(&socket, true).unwrap();
    let dest = socket.local_addr().unwrap();
    let key = DatagramKey::new(lfc.key_id(), lfc.key());
    (
        Rig {
            _dir: dir,
            lfc,
            dest,
            key,
        },
        socket,
    )
}

fn page_of(blkno: u32) -> [u8; PAGE_SIZE] {
    let mut page = [0u8; PAGE_SIZE];
    for (i, b) in page.iter_mut().enumerate() {
        *b = (i as u32)
            .wrapping_mul(31)
            .wrapping_add(blkno.wrapping_mul(7)) as u8;
    }
    page
}

fn header(lfc: &Lfc, blkno: u32) -> DatagramHeader {
    DatagramHeader {
        key_id: lfc.key_id(),
        reqid: 1,
        request_lsn: u64::MAX,
        not_modified_since: 5,
        tag: RelTag::new(1663, 5, 16384, 0).block(blkno),
        sent_at_ns: 0,
    }
}

/// A whole-page datagram of block `blkno`.
fn whole(lfc: &Lfc, stream: &SealStream, blkno: u32) -> Vec<u8> {
    let mut d = vec![0u8; DATAGRAM_LEN];
    stream
        .seal(
            &header(lfc, blkno),
            &page_of(blkno),
            (&mut d[..]).try_into().unwrap(),
        )
        .unwrap();
    d
}

/// The nine datagrams (eight fragments and the parity piece) of block `blkno`.
fn split(lfc: &Lfc, stream: &SealStream, blkno: u32) -> Vec<Vec<u8>> {
    let mut out = Box::new([0u8; SEALED_PAGE_MAX]);
    let n = stream
        .seal_page(&header(lfc, blkno), &page_of(blkno), &mut out)
        .unwrap();
    out[..n]
        .chunks_exact(stream.fragment_len())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Sends `datagrams` as one GSO message (`UDP_SEGMENT` = the first one's length): every one
/// but the last must have that length, the last may be shorter, as the kernel requires.
fn send_train(tx: &UdpSocket, dest: SocketAddr, datagrams: &[Vec<u8>]) {
    use std::os::fd::AsRawFd;
    let segment = datagrams[0].len();
    assert!(datagrams[..datagrams.len() - 1]
        .iter()
        .all(|d| d.len() == segment));
    assert!(datagrams.last().unwrap().len() <= segment);
    let bytes: Vec<u8> = datagrams.concat();
    let addr = socket2::SockAddr::from(dest);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    #[repr(C, align(8))]
    struct Control([u8; 32]);
    let mut control = Control([0; 32]);
    // SAFETY: a msghdr pointing at live locals for the duration of the call; the control
    // buffer is aligned and holds CMSG_SPACE(2) bytes.
    let rc = unsafe {
        let mut h: libc::msghdr = std::mem::zeroed();
        h.msg_name = addr.as_ptr() as *mut libc::c_void;
        h.msg_namelen = addr.len();
        h.msg_iov = &mut iov;
        h.msg_iovlen = 1;
        h.msg_control = control.0.as_mut_ptr().cast();
        h.msg_controllen = libc::CMSG_SPACE(2) as _;
        let c = libc::CMSG_FIRSTHDR(&h);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment as u16);
        libc::sendmsg(tx.as_raw_fd(), &h, 0)
    };
    assert_eq!(
        rc,
        bytes.len() as isize,
        "GSO send: {}",
        std::io::Error::last_os_error()
    );
}

/// Runs the pump until `metrics` counts `datagrams` received.
fn pump_until(pump: &mut SlotPump<'_>, metrics: &ThreadMetrics, datagrams: u64) {
    let start = Instant::now();
    while metrics.received.load(std::sync::atomic::Ordering::Relaxed) < datagrams {
        assert!(start.elapsed() < DEADLINE, "datagrams did not all arrive");
        pump.step(Duration::from_millis(50), metrics).unwrap();
    }
}

fn count(m: &std::sync::atomic::AtomicU64) -> u64 {
    m.load(std::sync::atomic::Ordering::Relaxed)
}

fn cached(lfc: &Lfc, blkno: u32) -> Option<[u8; PAGE_SIZE]> {
    let mut out = [0u8; PAGE_SIZE];
    lfc.lookup(&header(lfc, blkno).tag, &mut out).map(|_| out)
}

#[test]
fn a_gso_train_of_whole_pages_arrives_in_one_receive_and_is_installed_page_by_page() {
    for backend in backends() {
        let (r, socket) = rig();
        let rx = Receiver::new(socket, backend, 2).unwrap();
        let mut pump = SlotPump::new(r.lfc, rx, 8);
        let m = ThreadMetrics::default();
        let stream = r.key.stream([1; 16]);
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // The page server's own sender: 7 whole pages fill one 64 KiB GSO message.
        let mut sender = GsoSender::new(tx, DATAGRAM_LEN, 64, true).unwrap();
        assert!(sender.gso_active(), "this kernel has UDP GSO");
        let train: Vec<Vec<u8>> = (0..7).map(|b| whole(r.lfc, &stream, b)).collect();
        assert_eq!(sender.send(r.dest, &train).unwrap(), 7);
        pump_until(&mut pump, &m, 7);
        assert_eq!(count(&m.installed), 7, "{backend}");
        assert_eq!(
            count(&m.receives),
            1,
            "{backend}: one receive for the train"
        );
        for b in 0..7 {
            assert_eq!(cached(r.lfc, b), Some(page_of(b)), "{backend}: block {b}");
        }
        // Seven frames were published; the eighth of the slot went back to be posted again.
        pump.shutdown().unwrap();
        let s = r.lfc.stats();
        assert_eq!((s.used_pages, s.busy_pages), (7, 0), "{backend}");
    }
}

#[test]
fn a_forged_segment_and_a_short_last_one_are_each_handled_as_a_lone_datagram() {
    for backend in backends() {
        let (r, socket) = rig();
        let rx = Receiver::new(socket, backend, 2).unwrap();
        let mut pump = SlotPump::new(r.lfc, rx, 8);
        let m = ThreadMetrics::default();
        let stream = r.key.stream([2; 16]);
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut forged = whole(r.lfc, &stream, 11);
        *forged.last_mut().unwrap() ^= 1; // not the stream's token
        let pieces = split(r.lfc, &r.key.stream([6; 16]).with_fragments(8), 13);
        // Whole pages 10 and 12 around a forged 11, then the first fragment of split block 13
        // as the train's short last segment: it lands at the front of the fourth frame.
        send_train(
            &tx,
            r.dest,
            &[
                whole(r.lfc, &stream, 10),
                forged,
                whole(r.lfc, &stream, 12),
                pieces[0].clone(),
            ],
        );
        pump_until(&mut pump, &m, 4);
        assert_eq!(count(&m.receives), 1, "{backend}");
        assert_eq!(count(&m.installed), 2, "{backend}");
        assert_eq!(m.dropped(DropReason::BadMac), 1, "{backend}");
        assert_eq!(count(&m.fragments_held), 1, "{backend}");
        assert_eq!(
            m.junk(),
            1,
            "{backend}: the forged segment counts against the budget"
        );
        assert_eq!(cached(r.lfc, 11), None, "{backend}");
        assert_eq!(cached(r.lfc, 13), None, "{backend}: not whole yet");
        // The rest of block 13 as a fragment train (1136-byte segments: not frame-sized, so
        // they run across the regions and each is gathered out).
        send_train(&tx, r.dest, &pieces[1..]);
        pump_until(&mut pump, &m, 12);
        assert_eq!(count(&m.receives), 2, "{backend}");
        assert_eq!(count(&m.installed), 3, "{backend}");
        assert_eq!(cached(r.lfc, 10), Some(page_of(10)), "{backend}");
        assert_eq!(cached(r.lfc, 12), Some(page_of(12)), "{backend}");
        assert_eq!(cached(r.lfc, 13), Some(page_of(13)), "{backend}");
        // The parity piece came after the page was whole.
        assert_eq!(m.dropped(DropReason::DuplicateFragment), 1, "{backend}");
        pump.shutdown().unwrap();
        assert_eq!(r.lfc.stats().busy_pages, 0, "{backend}");
    }
}

#[test]
fn interleaved_fragment_trains_of_several_pages_make_every_page() {
    // As the page server sends a batch of split pages: every page's piece 0, then every
    // page's piece 1, ..., each run one GSO message.
    let (r, socket) = rig();
    let rx = Receiver::new(socket, IoBackend::Epoll, 2).unwrap();
    let mut pump = SlotPump::new(r.lfc, rx, 8);
    let m = ThreadMetrics::default();
    let stream = r.key.stream([3; 16]).with_fragments(8);
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let pages: Vec<Vec<Vec<u8>>> = (20..52).map(|b| split(r.lfc, &stream, b)).collect();
    for piece in 0..9 {
        let run: Vec<Vec<u8>> = pages.iter().map(|p| p[piece].clone()).collect();
        send_train(&tx, r.dest, &run);
    }
    pump_until(&mut pump, &m, 32 * 9);
    assert_eq!(count(&m.receives), 9, "one receive per run");
    assert_eq!(count(&m.installed), 32);
    for b in 20..52 {
        assert_eq!(cached(r.lfc, b), Some(page_of(b)), "block {b}");
    }
    pump.shutdown().unwrap();
}

#[test]
fn junk_trains_count_each_datagram_and_what_found_no_room_is_dropped_as_too_long() {
    let (r, socket) = rig();
    let rx = Receiver::new(socket, IoBackend::Epoll, 1).unwrap();
    // Slots of 2 frames: a train of 3 whole pages has room for two of them.
    let mut pump = SlotPump::new(r.lfc, rx, 2);
    let m = ThreadMetrics::default();
    let stream = r.key.stream([4; 16]);
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Five 100-byte datagrams: each too short, each junk.
    send_train(&tx, r.dest, &vec![vec![0x55; 100]; 5]);
    pump_until(&mut pump, &m, 5);
    assert_eq!(m.dropped(DropReason::TooShort), 5);
    assert_eq!(m.junk(), 5);
    assert_eq!(count(&m.receives), 1);
    let train: Vec<Vec<u8>> = (30..33).map(|b| whole(r.lfc, &stream, b)).collect();
    send_train(&tx, r.dest, &train);
    pump_until(&mut pump, &m, 8);
    assert_eq!(count(&m.installed), 2);
    assert_eq!(m.dropped(DropReason::TooLong), 1);
    assert_eq!(cached(r.lfc, 30), Some(page_of(30)));
    assert_eq!(cached(r.lfc, 31), Some(page_of(31)));
    assert_eq!(cached(r.lfc, 32), None);
    pump.shutdown().unwrap();
    assert_eq!(r.lfc.stats().busy_pages, 0);
}

#[test]
fn without_gro_the_same_train_arrives_as_lone_datagrams() {
    let (r, socket) = rig();
    set_gro(&socket, false).unwrap();
    let rx = Receiver::new(socket, IoBackend::Epoll, 8).unwrap();
    let mut pump = SlotPump::new(r.lfc, rx, 1);
    let m = ThreadMetrics::default();
    let stream = r.key.stream([5; 16]);
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let train: Vec<Vec<u8>> = (40..45).map(|b| whole(r.lfc, &stream, b)).collect();
    send_train(&tx, r.dest, &train);
    pump_until(&mut pump, &m, 5);
    assert_eq!((count(&m.installed), count(&m.receives)), (5, 5));
    pump.shutdown().unwrap();
}
