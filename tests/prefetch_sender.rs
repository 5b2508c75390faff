//! The page server's UDP prefetch sender, seen from a plain UDP socket: datagrams go to the TCP
//! peer's address, carry the requested pages, and verify under the registered key.

mod common;

use common::ServerProc;
use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::time::Duration;
use udp_prefetch::pageserver::source::Synthetic;
use udp_prefetch::protocol::client::{ConnectOptions, PageClient};
use udp_prefetch::protocol::page::{is_synthetic_page, page_lsn};
use udp_prefetch::protocol::pagestream::{PrefetchTarget, LATEST_LSN};
use workers::datagram::{DatagramKey, DropReason, DATAGRAM_LEN};

const KEY: [u8; 32] = [9; 32];

fn setup(extra: &[&str]) -> (ServerProc, PageClient, UdpSocket) {
    let server = ServerProc::start(extra);
    let mut client = PageClient::connect(&ConnectOptions::new(server.addr.clone())).unwrap();
    // A large receive buffer, as the daemon has: the sender is unpaced and a default-sized
    // buffer would overflow (that loss is the kernel's, not the sender's).
    let udp = workers::udp::bind_reuseport("127.0.0.1:0".parse().unwrap(), 64 << 20).unwrap();
    udp.set_nonblocking(false).unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    client
        .set_prefetch_target(PrefetchTarget {
            udp_port: udp.local_addr().unwrap().port(),
            key_id: 3,
            key: KEY,
            path_mtu: 0,
        })
        .unwrap();
    (server, client, udp)
}

/// Receives until at least `want` datagrams came (20 s at most) and then the socket stays quiet
/// for its read timeout: a sender descheduled for a while on a loaded machine does not cut the
/// stream short, and what comes after the expected ones (a duplicate) is still caught.
fn drain(udp: &UdpSocket, want: usize) -> Vec<Vec<u8>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match udp.recv(&mut buf) {
            Ok(n) => got.push(buf[..n].to_vec()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if got.len() >= want || std::time::Instant::now() > deadline {
                    return got;
                }
            }
            Err(e) => panic!("receive: {e}"),
        }
    }
}

#[test]
fn prefetched_pages_arrive_sealed_and_verifiable() {
    every_prefetched_page_arrives_once_sealed(&[]);
}

/// Without GSO the sender packs its own `sendmmsg` calls (a few whole pages each, as they are
/// sealed, not the batch at once): every page still leaves once.
#[test]
fn without_gso_every_prefetched_page_arrives_once() {
    every_prefetched_page_arrives_once_sealed(&["--no-gso"]);
}

fn every_prefetched_page_arrives_once_sealed(extra: &[&str]) {
    let mut args = vec!["--source", "synthetic:pages=300"];
    args.extend_from_slice(extra);
    let (_server, mut client, udp) = setup(&args);
    let rel = Synthetic::rel(0);
    client.send_prefetch(rel, 10, 200, LATEST_LSN, 0).unwrap();
    client.flush().unwrap();
    // A GetPage on the same connection is answered while prefetches are in flight.
    let page = client.get_page(rel.block(5), LATEST_LSN, 0).unwrap();
    assert!(is_synthetic_page(&page, rel.block(5)));

    let mut opener = DatagramKey::new(3, KEY).opener();
    let mut other_secret = DatagramKey::new(3, [8; 32]).opener();
    let mut page = [0u8; 8192];
    let mut blocks = BTreeSet::new();
    for d in drain(&udp, 200) {
        assert_eq!(d.len(), DATAGRAM_LEN);
        let hdr = opener.open_bytes(&d, &mut page).expect("valid datagram");
        assert!(is_synthetic_page(&page, hdr.tag));
        assert_eq!(page_lsn(&page), 16);
        assert_eq!(hdr.tag.rel, rel);
        blocks.insert(hdr.tag.blkno);
        // Any other secret rejects it.
        assert_eq!(
            other_secret.open_bytes(&d, &mut page),
            Err(DropReason::BadMac)
        );
    }
    assert_eq!(
        blocks,
        (10..210).collect::<BTreeSet<u32>>(),
        "every prefetched block once"
    );
}

#[test]
fn drop_prefetch_loses_about_that_fraction_and_only_prefetches() {
    let (_server, mut client, udp) = setup(&[
        "--source",
        "synthetic:pages=4000",
        "--drop-prefetch",
        "0.25",
    ]);
    let rel = Synthetic::rel(0);
    client.send_prefetch(rel, 0, 4000, LATEST_LSN, 0).unwrap();
    client.flush().unwrap();
    // At least the assertion's floor, then whatever else comes.
    let got = drain(&udp, 2700).len();
    // 25 % of 4000 dropped by a seeded filter: far from both 0 and 4000 loss.
    assert!((2700..3300).contains(&got), "received {got} of 4000");
    for blkno in [0, 1999, 3999] {
        assert!(is_synthetic_page(
            &client.get_page(rel.block(blkno), LATEST_LSN, 0).unwrap(),
            rel.block(blkno)
        ));
    }
}

#[test]
fn prefetch_without_a_target_is_counted_and_sends_nothing() {
    let server = ServerProc::start(&[]);
    let mut client = PageClient::connect(&ConnectOptions::new(server.addr.clone())).unwrap();
    client
        .send_prefetch(Synthetic::rel(0), 0, 10, LATEST_LSN, 0)
        .unwrap();
    // The next synchronous request proves the prefetch was processed before it.
    assert!(client.exists(Synthetic::rel(0), LATEST_LSN).unwrap());
    let err = client
        .set_prefetch_target(PrefetchTarget {
            udp_port: 0,
            key_id: 1,
            key: KEY,
            path_mtu: 0,
        })
        .unwrap_err();
    assert!(err.to_string().contains("UDP port 0"), "{err}");
}

/// The nice value of each of a process's threads, by thread name (from /proc).
fn thread_nices(pid: u32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        // Fields after "(comm)": state is the 3rd field overall, nice the 19th.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let nice: i32 = after.split(' ').nth(19 - 3).unwrap().parse().unwrap();
        out.push((comm.trim().to_string(), nice));
    }
    out
}

#[test]
fn prefetch_sender_nice_applies_to_the_sender_threads_only() {
    // A positive value needs no privilege, so this runs as any user.
    let (server, _client, _udp) =
        setup(&["--prefetch-senders", "2", "--prefetch-sender-nice", "7"]);
    let nices = thread_nices(server.child.id());
    let senders: Vec<i32> = nices
        .iter()
        .filter(|(name, _)| name.starts_with("prefetch-send"))
        .map(|&(_, n)| n)
        .collect();
    assert_eq!(senders, [7, 7], "{nices:?}");
    // SAFETY: getpriority only reads its scalar arguments. The server inherited this value.
    let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    assert!(
        nices
            .iter()
            .filter(|(name, _)| !name.starts_with("prefetch-send"))
            .all(|&(_, n)| n == own),
        "only the senders are reniced: {nices:?}"
    );
}

#[test]
fn an_out_of_range_sender_nice_is_refused_at_start() {
    let out = std::process::Command::new(common::BIN)
        .args(["pageserver", "--listen", "127.0.0.1:0"])
        .args(["--prefetch-sender-nice", "25"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--prefetch-sender-nice must be -20..=19"),
        "{err}"
    );
}
