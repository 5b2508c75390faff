//! The receive thread's CPU per installed page, with and without UDP GRO: one daemon worker
//! loop (`SlotPump::step`, as `daemon::worker_loop` runs it) on a loopback socket, fed by a
//! sender that sends as the page server does (GSO trains of whole pages, or of split pages'
//! pieces interleaved across a batch of 32 pages, MTU-1500 style: 8 fragments + parity).
//!
//! Measures the worker thread's own CPU (`CLOCK_THREAD_CPUTIME_ID`), not wall time, so it
//! means something on a busy machine; the loopback's kernel enqueue work runs on the sender's
//! thread and is not counted (as on a real NIC, where it is softirq time).
//!
//! `cargo run --release -p workers --example gro_cpu -- [whole|fragments] [gro|nogro]
//! [epoll|uring] [pages] [gso|nogso]`
//!
//! Or against a running daemon process (`udp-prefetch workers ... --metrics ADDR`, with or
//! without `--no-gro`), whose CPU is then read from `/proc/PID/task/*/schedstat`, every thread
//! counted (metrics scrapes included):
//! `gro_cpu external LFC UDP_ADDR PID METRICS_ADDR [whole|fragments] [pages]`

use lfc::{Lfc, RelTag, PAGE_SIZE};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use workers::datagram::{DatagramHeader, DatagramKey, DATAGRAM_LEN, SEALED_PAGE_MAX};
use workers::metrics::ThreadMetrics;
use workers::pump::SlotPump;
use workers::udp::{bind_reuseport, set_gro, GsoSender, IoBackend, Receiver, MAX_SLOT_DATAGRAMS};

/// Frames posted per thread (the daemon's `--slots` default).
const SLOTS: usize = 64;
/// Pages per sender batch (the page server's `SEND_BATCH`).
const BATCH: usize = 32;
/// Pages sent but not yet counted by the receiver before the sender waits: well within the
/// socket buffer, so nothing is lost to overflow.
const IN_FLIGHT: u64 = 1024;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("external") {
        external(&args[2..]);
        return;
    }
    let fragments = args.get(1).map(String::as_str) == Some("fragments");
    let gro = args.get(2).map(String::as_str) != Some("nogro");
    let backend = match args.get(3).map(String::as_str) {
        Some("uring") => IoBackend::Uring,
        _ => IoBackend::Epoll,
    };
    let pages: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    // `nogso`: the sender sends one datagram per message, so nothing coalesces.
    let gso = args.get(5).map(String::as_str) != Some("nogso");
    let distinct = 16384u32;

    let dir = tempfile::tempdir_in("/dev/shm").expect("tempdir");
    let lfc = Lfc::create(dir.path().join("lfc"), u64::from(distinct / 4)).expect("lfc");
    let socket = bind_reuseport("127.0.0.1:0".parse().unwrap(), 64 << 20).expect("bind");
    set_gro(&socket, gro).expect("UDP_GRO");
    let dest = socket.local_addr().unwrap();
    let k = if gro { MAX_SLOT_DATAGRAMS } else { 1 };
    let rx = Receiver::new(socket, backend, SLOTS / k).expect("receiver");

    let (sealed, per_page, len) = seal_all(&lfc, fragments, distinct);

    let metrics = ThreadMetrics::default();
    let stop = AtomicBool::new(false);
    let warmup = u64::from(distinct / 4) * 2;
    let (cpu_ns, measured, receives) = std::thread::scope(|s| {
        let m = &metrics;
        let stop = &stop;
        let lfc = &lfc;
        // Named, so a profile (`perf report --comm gro-worker`) can pick it out.
        let worker = std::thread::Builder::new()
            .name("gro-worker".into())
            .spawn_scoped(s, move || receive_until(lfc, rx, k, m, stop, warmup))
            .unwrap();
        let sender_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut sender = GsoSender::new(sender_socket, DATAGRAM_LEN, 1024, gso).unwrap();
        let installed = || m.installed.load(Ordering::Relaxed);
        send_all(
            &mut sender,
            dest,
            &sealed,
            per_page,
            len,
            warmup + pages,
            &installed,
        );
        stop.store(true, Ordering::Relaxed);
        worker.join().unwrap()
    });
    let datagrams_per_receive = measured as f64 * per_page as f64 / receives.max(1) as f64;
    println!(
        "{} {} {}: {measured} pages installed, {:.3} µs worker CPU per page, {:.2} datagrams \
         per receive (≈, pages × {per_page}), dropped other than duplicate parity {}",
        if fragments { "fragments" } else { "whole" },
        if gro { "gro" } else { "nogro" },
        backend,
        cpu_ns as f64 / 1000.0 / measured as f64,
        datagrams_per_receive,
        workers::datagram::DropReason::ALL
            .iter()
            .filter(|r| **r != workers::datagram::DropReason::DuplicateFragment)
            .map(|r| metrics.dropped(*r))
            .sum::<u64>(),
    );
}

/// The receiving thread: installs until `warmup` pages are in (every frame touched once:
/// first-touch faults are not the receive's), then measures until `stop`. Returns its CPU ns,
/// pages installed and receives made while measured.
fn receive_until(
    lfc: &Lfc,
    rx: Receiver,
    k: usize,
    m: &ThreadMetrics,
    stop: &AtomicBool,
    warmup: u64,
) -> (u64, u64, u64) {
    let mut pump = SlotPump::new(lfc, rx, k);
    while m.installed.load(Ordering::Relaxed) < warmup && !stop.load(Ordering::Relaxed) {
        pump.step(Duration::from_millis(50), m).unwrap();
    }
    let (cpu0, pages0, recv0) = (
        thread_cpu_ns(),
        m.installed.load(Ordering::Relaxed),
        m.receives.load(Ordering::Relaxed),
    );
    while !stop.load(Ordering::Relaxed) {
        pump.step(Duration::from_millis(50), m).unwrap();
    }
    let r = (
        thread_cpu_ns() - cpu0,
        m.installed.load(Ordering::Relaxed) - pages0,
        m.receives.load(Ordering::Relaxed) - recv0,
    );
    pump.shutdown().unwrap();
    r
}

/// Every datagram sealed once: per page 1 whole datagram or 9 pieces; with the datagrams per
/// page and their length.
fn seal_all(lfc: &Lfc, fragments: bool, distinct: u32) -> (Vec<Vec<u8>>, usize, usize) {
    let key = DatagramKey::new(lfc.key_id(), lfc.key());
    let stream = if fragments {
        key.stream(workers::datagram::random_stream_id().unwrap())
            .with_fragments(8)
    } else {
        key.stream(workers::datagram::random_stream_id().unwrap())
    };
    let per_page = usize::from(stream.datagrams_per_page());
    let len = stream.fragment_len();
    let rel = RelTag::new(1663, 5, 16384, 0);
    let sealed: Vec<Vec<u8>> = (0..distinct)
        .map(|b| {
            let hdr = DatagramHeader {
                key_id: key.id,
                tag: rel.block(b),
                request_lsn: u64::MAX,
                ..DatagramHeader::default()
            };
            let mut page = [0u8; PAGE_SIZE];
            page[..4].copy_from_slice(&b.to_be_bytes());
            let mut out = vec![0u8; SEALED_PAGE_MAX.max(DATAGRAM_LEN)];
            let n = stream.seal_page(
                &hdr,
                &page,
                (&mut out[..SEALED_PAGE_MAX]).try_into().unwrap(),
            );
            out.truncate(n.unwrap());
            out
        })
        .collect();
    (sealed, per_page, len)
}

/// Sends `total` pages cycling through `sealed`, in batches of [`BATCH`] pages interleaved
/// piece by piece as the page server sends them, never more than [`IN_FLIGHT`] pages ahead of
/// what the receiver counted.
fn send_all(
    sender: &mut GsoSender,
    dest: SocketAddr,
    sealed: &[Vec<u8>],
    per_page: usize,
    len: usize,
    total: u64,
    installed: &dyn Fn() -> u64,
) {
    let start = Instant::now();
    let mut sent_pages = 0u64;
    let mut at = 0usize;
    while sent_pages < total {
        while sent_pages.saturating_sub(installed()) > IN_FLIGHT {
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "receiver stalled"
            );
            // Not a spin: polling the worker's counters in a tight loop would bounce their
            // cache line and charge the worker for it.
            std::thread::sleep(Duration::from_micros(200));
        }
        let batch: Vec<&Vec<u8>> = (0..BATCH)
            .map(|i| &sealed[(at + i) % sealed.len()])
            .collect();
        at = (at + BATCH) % sealed.len();
        let count = BATCH * per_page;
        let mut sent = 0;
        while sent < count {
            let from = sent;
            sent += sender
                .send_pieces(dest, count - from, (from, BATCH), |i| {
                    let d = from + i;
                    let (page, piece) = (d % BATCH, d / BATCH);
                    &batch[page][piece * len..][..len]
                })
                .expect("send");
        }
        sent_pages += BATCH as u64;
    }
    // Let the receiver count what is still queued.
    let t = Instant::now();
    while installed() + 2 * (BATCH as u64) < sent_pages && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// CPU time of every thread of process `pid` so far, in ns (`/proc/PID/task/*/schedstat`).
fn process_cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the daemon's /proc entry")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// One counter of the daemon's `/metrics`.
fn scrape(metrics: SocketAddr, name: &str) -> u64 {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(metrics).expect("metrics endpoint");
    write!(c, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the daemon's metrics"))
}

/// `external LFC UDP_ADDR PID METRICS_ADDR [whole|fragments] [pages]`: the daemon process's CPU
/// per installed page.
fn external(args: &[String]) {
    let lfc = Lfc::open(&args[0]).expect("the daemon's LFC");
    let dest: SocketAddr = args[1].parse().expect("UDP address");
    let pid: u32 = args[2].parse().expect("pid");
    let metrics: SocketAddr = args[3].parse().expect("metrics address");
    let fragments = args.get(4).map(String::as_str) == Some("fragments");
    let pages: u64 = args
        .get(5)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let distinct = u32::try_from(lfc.capacity_pages() * 4).unwrap();
    let (sealed, per_page, len) = seal_all(&lfc, fragments, distinct);
    // Scraped at most every 5 ms: each scrape costs the daemon CPU, which is being measured.
    let last = std::cell::Cell::new((Instant::now(), 0u64));
    let installed_total = || {
        let (at, n) = last.get();
        if n != 0 && at.elapsed() < Duration::from_millis(5) {
            return n;
        }
        let n = scrape(metrics, "udp_prefetch_datagrams_installed_total");
        last.set((Instant::now(), n));
        n
    };
    let mut sender = GsoSender::new(
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        DATAGRAM_LEN,
        1024,
        true,
    )
    .unwrap();
    // Warm-up: every frame received into once.
    let base = installed_total();
    let installed = || installed_total() - base;
    send_all(
        &mut sender,
        dest,
        &sealed,
        per_page,
        len,
        lfc.capacity_pages() * 2,
        &installed,
    );
    let (cpu0, inst0, recv0, rcvs0) = (
        process_cpu_ns(pid),
        scrape(metrics, "udp_prefetch_datagrams_installed_total"),
        scrape(metrics, "udp_prefetch_datagrams_received_total"),
        scrape(metrics, "udp_prefetch_receives_total"),
    );
    let installed = || installed_total() - inst0;
    send_all(&mut sender, dest, &sealed, per_page, len, pages, &installed);
    let (cpu1, inst1, recv1, rcvs1) = (
        process_cpu_ns(pid),
        scrape(metrics, "udp_prefetch_datagrams_installed_total"),
        scrape(metrics, "udp_prefetch_datagrams_received_total"),
        scrape(metrics, "udp_prefetch_receives_total"),
    );
    let n = inst1 - inst0;
    println!(
        "{}: {n} pages installed, {:.3} µs daemon CPU per page, {:.2} datagrams per receive",
        if fragments { "fragments" } else { "whole" },
        (cpu1 - cpu0) as f64 / 1000.0 / n as f64,
        (recv1 - recv0) as f64 / (rcvs1 - rcvs0).max(1) as f64,
    );
}
