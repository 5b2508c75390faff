//! `udp-prefetch bench ingest`: worker daemon ingest rate and CPU per page for io_uring and
//! epoll with 1 and 2 threads, against a raw receive ceiling measured in the same run with the
//! same sender; the sender with and without UDP GSO. A last case floods the daemon with forged
//! datagrams (the cache's key id, another secret: each one is turned away as `bad_mac`) and
//! reports its CPU per forged datagram, beside the CPU per valid one.
//!
//! Owns: nothing shared; it drives the public APIs of `workers::datagram`, `workers::udp`, `lfc`
//! and `cmd::daemon_proc` and may not be imported by the library's other modules.

use super::BenchRecord;
use crate::cmd::daemon_proc::{DaemonProc, ScratchDir};
use lfc::Lfc;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use workers::datagram::{
    random_stream_id, DatagramHeader, DatagramKey, DATAGRAM_LEN, HEADER_LEN, TAG_LEN,
};
use workers::udp::{
    bind_reuseport, Completion, GsoSender, IoBackend, Receiver, SlotRegions, MAX_SLOTS,
};

#[derive(Debug, Clone, clap::Args)]
pub struct IngestBenchArgs {
    /// Seconds each case sends for.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Distinct pages the sender cycles through (more than the LFC holds, so pages keep being
    /// installed rather than found present). The LFC holds a quarter of them: a million makes
    /// its tables as large as a 2 GiB cache's. Sealed up front in memory (8.3 KiB each), so at
    /// most `MAX_DISTINCT_PAGES`.
    #[arg(long, default_value_t = 8192,
          value_parser = clap::value_parser!(u32).range(64..=i64::from(MAX_DISTINCT_PAGES)))]
    pub distinct_pages: u32,
}

/// Bound of `--distinct-pages`: its sealed datagrams take 8.3 GiB (two million took 20 GiB and
/// the kernel's OOM killer ended the bench without a word).
pub const MAX_DISTINCT_PAGES: u32 = 1_000_000;

/// Datagrams sealed once, sent in a loop by one thread until told to stop.
fn spawn_sender(
    datagrams: Arc<Vec<[u8; DATAGRAM_LEN]>>,
    dest: SocketAddr,
    gso: bool,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
        let mut sender = GsoSender::new(socket, DATAGRAM_LEN, 64, gso).expect("sender");
        let mut sent = 0u64;
        let mut at = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let end = (at + 64).min(datagrams.len());
            if let Ok(n) = sender.send(dest, &datagrams[at..end]) {
                sent += n as u64;
                at += n;
            }
            if at >= datagrams.len() {
                at = 0;
            }
        }
        sent
    })
}

fn sealed(key: &DatagramKey, n: u32) -> anyhow::Result<Arc<Vec<[u8; DATAGRAM_LEN]>>> {
    let rel = lfc::RelTag::new(1663, 5, 16384, 0);
    let stream = key.stream(random_stream_id()?);
    let mut page = [0u8; 8192];
    let v = (0..n)
        .map(|b| {
            crate::protocol::page::fill_synthetic_page(&mut page, rel.block(b), 16);
            let hdr = DatagramHeader {
                key_id: key.id,
                tag: rel.block(b),
                request_lsn: u64::MAX,
                ..DatagramHeader::default()
            };
            let mut d = [0u8; DATAGRAM_LEN];
            stream
                .seal(&hdr, &page, &mut d)
                .expect("a fresh stream seals");
            d
        })
        .collect();
    Ok(Arc::new(v))
}

/// The ceiling: one epoll receiver with recvmmsg into scratch memory, discarding everything.
fn raw_ceiling(
    datagrams: &Arc<Vec<[u8; DATAGRAM_LEN]>>,
    seconds: f64,
    gso: bool,
) -> anyhow::Result<f64> {
    let socket = bind_reuseport("127.0.0.1:0".parse()?, 64 << 20)?;
    let dest = socket.local_addr()?;
    let mut rx = Receiver::new(socket, IoBackend::Epoll, MAX_SLOTS.min(64))?;
    let slots = rx.capacity();
    let layout = Layout::from_size_align(slots * DATAGRAM_LEN, 4096)?;
    // SAFETY: non-zero size; freed below with the same layout.
    let mem = unsafe { alloc_zeroed(layout) };
    anyhow::ensure!(!mem.is_null(), "allocation failed");
    let region = |i: usize| {
        // SAFETY: each slot is a disjoint DATAGRAM_LEN-byte piece of `mem`.
        let base = unsafe { mem.add(i * DATAGRAM_LEN) };
        unsafe { SlotRegions::new(base, base.add(HEADER_LEN), base.add(HEADER_LEN + 8192)) }
    };
    for i in 0..slots {
        // SAFETY: the memory outlives the receiver's use (cancel_all before dealloc).
        unsafe { rx.post(i as u32, region(i))? };
    }
    let stop = Arc::new(AtomicBool::new(false));
    let sender = spawn_sender(datagrams.clone(), dest, gso, stop.clone());
    let mut done = vec![Completion::default(); slots];
    let mut received = 0u64;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        let n = rx.wait(Duration::from_millis(50), &mut done)?;
        for c in &done[..n] {
            received += u64::from(c.len == DATAGRAM_LEN);
            // SAFETY: as above.
            unsafe { rx.post(c.slot_id, region(c.slot_id as usize))? };
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    rx.cancel_all(&mut |_| {})?;
    drop(rx);
    // SAFETY: allocated above with this layout; the kernel no longer references it.
    unsafe { dealloc(mem, layout) };
    let _ = TAG_LEN;
    Ok(received as f64 / elapsed)
}

/// What a daemon case sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Traffic {
    /// Pages sealed under the cache's key: counted as installed.
    Valid,
    /// The same pages sealed under the cache's key id and another secret: each is received
    /// and turned away (`bad_mac`), counted as received.
    Forged,
}

/// The daemon: installed pages per second and daemon CPU per installed page.
pub(crate) fn daemon_case(
    scratch: &ScratchDir,
    name: &str,
    io: &str,
    threads: usize,
    seconds: f64,
    gso: bool,
    distinct: u32,
) -> anyhow::Result<(f64, f64)> {
    daemon_run(
        scratch,
        name,
        io,
        threads,
        seconds,
        gso,
        distinct,
        Traffic::Valid,
    )
}

/// The daemon under `traffic`: datagrams per second it counted (installed, or received for
/// forgeries) and its CPU per counted datagram.
#[allow(clippy::too_many_arguments)]
fn daemon_run(
    scratch: &ScratchDir,
    name: &str,
    io: &str,
    threads: usize,
    seconds: f64,
    gso: bool,
    distinct: u32,
    traffic: Traffic,
) -> anyhow::Result<(f64, f64)> {
    let lfc_path = scratch.0.join(format!("lfc-{name}"));
    // A quarter of the distinct pages fit: every datagram is a fresh install.
    let capacity_bytes = u64::from(distinct / 4).max(256) * 8192;
    let t = threads.to_string();
    let mut daemon = DaemonProc::start(&lfc_path, capacity_bytes, &["--io", io, "--threads", &t])?;
    let key = {
        let lfc = Lfc::open(&lfc_path)?;
        let mut secret = lfc.key();
        if traffic == Traffic::Forged {
            // The right key id (so it reaches the token compare), a secret nobody has.
            secret.iter_mut().for_each(|b| *b ^= 0xA5);
        }
        DatagramKey::new(lfc.key_id(), secret)
    };
    let datagrams = sealed(&key, distinct)?;
    let dest: SocketAddr = format!("127.0.0.1:{}", daemon.udp_port).parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    let counted = match traffic {
        Traffic::Valid => "udp_prefetch_datagrams_installed_total",
        Traffic::Forged => "udp_prefetch_datagrams_received_total",
    };
    let before = DaemonProc::metric(&daemon.scrape()?, counted);
    let cpu_before = daemon.cpu_seconds()?;
    let start = Instant::now();
    let sender = spawn_sender(datagrams, dest, gso, stop.clone());
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let after = DaemonProc::metric(&daemon.scrape()?, counted);
    let cpu_after = daemon.cpu_seconds()?;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    daemon.stop();
    let installed = after.saturating_sub(before) as f64;
    let cpu_us = if installed > 0.0 {
        (cpu_after - cpu_before) * 1e6 / installed
    } else {
        0.0
    };
    Ok((installed / elapsed, cpu_us))
}

pub fn run(args: &IngestBenchArgs) -> anyhow::Result<Vec<BenchRecord>> {
    anyhow::ensure!(
        args.seconds > 0.0 && (64..=MAX_DISTINCT_PAGES).contains(&args.distinct_pages),
        "--seconds > 0 and --distinct-pages in 64..={MAX_DISTINCT_PAGES}"
    );
    let scratch = ScratchDir::new("udp-prefetch-bench-ingest")?;
    let plain_key = DatagramKey::new(1, [1; 32]);
    let datagrams = sealed(&plain_key, args.distinct_pages)?;
    let mut records = Vec::new();
    for gso in [true, false] {
        let suffix = if gso { "" } else { "-nogso" };
        let ceiling = BenchRecord::new(
            "ingest",
            &format!("raw-ceiling{suffix}"),
            "pages/s",
            raw_ceiling(&datagrams, args.seconds, gso)?,
        )
        .param("gso", gso);
        records.push(ceiling.clone());
        let cases: &[(&str, &str, usize)] = if gso {
            &[
                ("uring-1t", "uring", 1),
                ("uring-2t", "uring", 2),
                ("epoll-1t", "epoll", 1),
                ("epoll-2t", "epoll", 2),
            ]
        } else {
            &[("uring-1t", "uring", 1), ("epoll-1t", "epoll", 1)]
        };
        for &(case, io, threads) in cases {
            let name = format!("{case}{suffix}");
            let (rate, cpu_us) = daemon_case(
                &scratch,
                &name,
                io,
                threads,
                args.seconds,
                gso,
                args.distinct_pages,
            )?;
            records.push(
                BenchRecord::new("ingest", &name, "pages/s", rate)
                    .param("gso", gso)
                    .param("threads", threads)
                    .param("daemon_cpu_us_per_page", (cpu_us * 100.0).round() / 100.0)
                    .against(&ceiling),
            );
        }
    }
    // Forged against valid, one epoll thread, GSO: the daemon's CPU per datagram of each.
    let per_datagram = |traffic: Traffic, name: &str| {
        daemon_run(
            &scratch,
            name,
            "epoll",
            1,
            args.seconds,
            true,
            args.distinct_pages,
            traffic,
        )
    };
    let (valid_rate, valid_cpu) = per_datagram(Traffic::Valid, "valid-epoll-1t")?;
    let valid = BenchRecord::new("ingest", "valid-epoll-1t", "datagrams/s", valid_rate).param(
        "daemon_cpu_us_per_datagram",
        (valid_cpu * 100.0).round() / 100.0,
    );
    let (forged_rate, forged_cpu) = per_datagram(Traffic::Forged, "forged-epoll-1t")?;
    let forged = BenchRecord::new("ingest", "forged-epoll-1t", "datagrams/s", forged_rate)
        .param(
            "daemon_cpu_us_per_datagram",
            (forged_cpu * 100.0).round() / 100.0,
        )
        .against(&valid);
    records.extend([valid, forged]);
    Ok(records)
}
