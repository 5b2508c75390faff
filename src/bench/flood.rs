//! `udp-prefetch bench flood`: what a flood of forged datagrams costs a compute (ARCHITECTURE §10,
//! "cheap rejection"). An off-path attacker sees the key id in every datagram on the wire but
//! not the stream token, so it can aim datagrams that pass every check but the token at the
//! daemon's port. One thread on the page server's CPUs (an attacker with one core) sends such
//! datagrams as fast as it can, first at a closed port (the baseline: the compute's kernel drops
//! them, the daemon never sees them), then at the daemon's port, each time beside a udp scan.
//! Reports the scans' pages/s and their ratio (target ≥ 0.8), the flood rate reached, and the
//! daemon's CPU per forged datagram against its CPU per valid one.
//!
//! Owns: nothing shared; it drives the public APIs of `PageServer`, `compute::scan`,
//! `workers::datagram` and `cmd::daemon_proc` and may not be imported by the library's other
//! modules.

use super::{relation_scan, round1, round3, BenchRecord};
use crate::cmd::daemon_proc::{DaemonProc, ScratchDir};
use crate::compute::scan::{run_scan, ScanMode, ScanReport};
use crate::pageserver::source::Synthetic;
use crate::pageserver::PageServer;
use lfc::{BufferTag, Lfc, PAGE_SIZE};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use workers::datagram::{random_stream_id, DatagramHeader, DatagramKey, DATAGRAM_LEN};

const BENCH: &str = "flood";
/// Distinct forged datagrams the flooder cycles through: enough block numbers that the daemon's
/// steering spreads them over every receive thread, as a real attacker's would be.
const FORGED_SET: u32 = 256;
/// How long the daemon's cost per forged datagram is measured with no scan beside it.
const CPU_PROBE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, clap::Args)]
pub struct FloodBenchArgs {
    /// Pages per scan.
    #[arg(long, default_value_t = 32_768)]
    pub pages: u32,
    /// Page server service delay of every request, microseconds.
    #[arg(long, default_value_t = 200)]
    pub delay_us: u64,
    /// Prefetch distance of the udp scans (as in `bench scan`).
    #[arg(long, default_value_t = crate::compute::scan::DEFAULT_UDP_DISTANCE)]
    pub distance: u32,
    /// Worker daemon threads (the daemon's own default: one per two CPUs, at least one).
    // The default depends on the machine: the text above states it once, and help shows no
    // second, this machine's, number.
    #[arg(long, default_value_t = workers::daemon::default_threads(), hide_default_value = true)]
    pub daemon_threads: usize,
    /// Repetitions (each a scan under each flood); the record is the one with the median ratio.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub repeat: u32,
}

/// One flood: a thread sending forged datagrams at `target` until dropped.
struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Flood {
    /// Starts flooding `target` with datagrams forged for `key_id` (right id, wrong key), from
    /// the page server's CPUs.
    fn start(target: SocketAddr, key_id: u32) -> anyhow::Result<Flood> {
        let forged = forged_datagrams(key_id)?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let thread = super::topology::on_server(|| {
            std::thread::Builder::new().name("flood".into()).spawn(
                move || -> std::io::Result<()> {
                    let sock = UdpSocket::bind("127.0.0.1:0")?;
                    let mut n = 0u64;
                    while !stop2.load(Ordering::Relaxed) {
                        for d in &forged {
                            // A closed port answers with ICMP, which an unconnected socket
                            // never reports; a full buffer is the attacker's problem.
                            let _ = sock.send_to(&d[..], target);
                        }
                        n += forged.len() as u64;
                        sent2.store(n, Ordering::Relaxed);
                    }
                    Ok(())
                },
            )
        })??;
        Ok(Flood {
            stop,
            sent,
            thread: Some(thread),
        })
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Datagrams that pass every check before the token: the LFC's key id, a well-formed header,
/// a stream of their own, sealed under a key that is not the LFC's.
fn forged_datagrams(key_id: u32) -> anyhow::Result<Vec<Box<[u8; DATAGRAM_LEN]>>> {
    // Any key but the LFC's: a stream id's random bytes twice over serve.
    let mut wrong = [0u8; 32];
    wrong[..16].copy_from_slice(&random_stream_id()?);
    wrong[16..].copy_from_slice(&random_stream_id()?);
    let stream = DatagramKey::new(key_id, wrong).stream(random_stream_id()?);
    let page = [0x5au8; PAGE_SIZE];
    (0..FORGED_SET)
        .map(|blkno| {
            let header = DatagramHeader {
                key_id,
                reqid: u64::from(blkno),
                request_lsn: u64::MAX,
                not_modified_since: 0,
                tag: BufferTag {
                    rel: Synthetic::rel(0),
                    blkno,
                },
                sent_at_ns: 0,
            };
            let mut out = Box::new([0u8; DATAGRAM_LEN]);
            stream.seal(&header, &page, &mut out)?;
            Ok(out)
        })
        .collect()
}

/// A UDP port on loopback that nothing listens on (bound, then closed).
fn closed_port() -> anyhow::Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

/// Datagrams the daemon turned away, every reason summed.
fn dropped(daemon: &DaemonProc) -> anyhow::Result<u64> {
    let text = daemon.scrape()?;
    Ok(workers::datagram::DropReason::ALL
        .iter()
        .map(|r| {
            DaemonProc::metric(
                &text,
                &format!(
                    "udp_prefetch_datagrams_dropped_total{{reason=\"{}\"}}",
                    r.as_str()
                ),
            )
        })
        .sum())
}

fn installed(daemon: &DaemonProc) -> anyhow::Result<u64> {
    Ok(DaemonProc::metric(
        &daemon.scrape()?,
        "udp_prefetch_datagrams_installed_total",
    ))
}

/// One repetition's figures.
struct Rep {
    closed: ScanReport,
    flooded: ScanReport,
    closed_rate: f64,
    flooded_rate: f64,
    cpu_per_forged_us: f64,
    cpu_per_valid_us: f64,
    /// Datagrams installed during the scan the per-valid cost is measured over (with no flood),
    /// and the share of its pages UDP brought.
    valid: u64,
    valid_udp_share: f64,
    forged_dropped: u64,
}

fn run_once(
    args: &FloodBenchArgs,
    server: &PageServer,
    scratch: &ScratchDir,
    rep: u32,
) -> anyhow::Result<Rep> {
    let lfc_path = scratch.0.join(format!("lfc-{rep}"));
    let daemon = DaemonProc::start(
        &lfc_path,
        (u64::from(args.pages) + 8192) * PAGE_SIZE as u64,
        &["--threads", &args.daemon_threads.to_string()],
    )?;
    let lfc = Lfc::open(&lfc_path)?;
    lfc.map_all()?;
    let daemon_addr: SocketAddr = ([127, 0, 0, 1], daemon.udp_port).into();
    let cfg = |rel| crate::compute::scan::ScanConfig {
        rel: Synthetic::rel(rel),
        ..relation_scan(server, ScanMode::Udp, args.distance)
    };

    // The daemon's cost per valid datagram, over a udp scan with no flood: beside either flood
    // a scan leaves UDP (the flooder takes the page server's CPU from its sender), and the
    // daemon's CPU over the few pages it installs then is its idle wake-ups, no cost of a page.
    let (cpu0, inst0) = (daemon.cpu_seconds()?, installed(&daemon)?);
    let clean = run_scan(&cfg(2), Some(&lfc))?;
    let valid = installed(&daemon)? - inst0;
    let cpu_per_valid_us = (daemon.cpu_seconds()? - cpu0) * 1e6 / valid.max(1) as f64;

    // The baseline: the same flood at a closed port, beside a scan.
    let flood = Flood::start(closed_port()?, lfc.key_id())?;
    let started = Instant::now();
    let closed = run_scan(&cfg(0), Some(&lfc))?;
    let closed_rate = flood.sent() as f64 / started.elapsed().as_secs_f64();
    drop(flood);

    // The flood at the daemon, beside a scan of another relation (the first is cached now).
    let flood = Flood::start(daemon_addr, lfc.key_id())?;
    let started = Instant::now();
    let flooded = run_scan(&cfg(1), Some(&lfc))?;
    let flooded_rate = flood.sent() as f64 / started.elapsed().as_secs_f64();
    drop(flood);

    // The daemon's cost per forged datagram, alone. Last, so that every scan above meets a
    // daemon no flood of its own has touched (one measured first left junk queued that a scan
    // started right after found its first prefetches behind, before the daemon cut its
    // buffer under floods, `workers::junk`).
    let (cpu0, drop0) = (daemon.cpu_seconds()?, dropped(&daemon)?);
    {
        let _flood = Flood::start(daemon_addr, lfc.key_id())?;
        std::thread::sleep(CPU_PROBE);
    }
    let forged_dropped = dropped(&daemon)? - drop0;
    let cpu_per_forged_us = (daemon.cpu_seconds()? - cpu0) * 1e6 / forged_dropped.max(1) as f64;
    drop(lfc);
    drop(daemon);
    let _ = std::fs::remove_file(&lfc_path);
    anyhow::ensure!(
        clean.failed == 0 && closed.failed == 0 && flooded.failed == 0,
        "a page failed verification (no flood {}, closed port {}, daemon port {})",
        clean.failed,
        closed.failed,
        flooded.failed
    );
    Ok(Rep {
        closed,
        flooded,
        closed_rate,
        flooded_rate,
        cpu_per_forged_us,
        cpu_per_valid_us,
        valid,
        valid_udp_share: clean.udp_share(),
        forged_dropped,
    })
}

/// Datagrams a scan must have installed for its per-valid cost to be a baseline.
const MIN_VALID_FOR_RATIO: u64 = 1000;

pub fn run(args: &FloodBenchArgs) -> anyhow::Result<Vec<BenchRecord>> {
    anyhow::ensure!(args.pages > 0, "--pages must be at least 1");
    anyhow::ensure!(args.distance >= 1, "--distance must be at least 1");
    let scratch = ScratchDir::new("udp-prefetch-bench-flood")?;
    let server = super::synthetic_server(args.pages, 3, args.delay_us, 0.0)?;
    let reps = (0..args.repeat)
        .map(|rep| run_once(args, &server, &scratch, rep))
        .collect::<anyhow::Result<Vec<Rep>>>()?;
    // The per-valid cost of every repetition whose scan stayed on UDP: a scan on a fresh daemon
    // now and then leaves UDP at its first read, and installs too little to say anything.
    let mut valid_costs: Vec<(f64, u64, f64)> = reps
        .iter()
        .filter(|r| r.valid >= MIN_VALID_FOR_RATIO)
        .map(|r| (r.cpu_per_valid_us, r.valid, r.valid_udp_share))
        .collect();
    valid_costs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (r, ratios) = super::median_by_ratio(reps, |r: &Rep| {
        r.flooded.pages_per_s / r.closed.pages_per_s.max(1e-9)
    });
    let ratios: Vec<f64> = ratios.into_iter().map(round3).collect();
    let base = BenchRecord::new(
        BENCH,
        "udp-flood-closed-port",
        "pages/s",
        r.closed.pages_per_s,
    )
    .param("pages", r.closed.pages)
    .param("delay_us", args.delay_us)
    .param("flood_per_s", r.closed_rate.round())
    .param("hits", r.closed.hits)
    .param("tcp_pipelined", r.closed.tcp_pipelined);
    let flooded = BenchRecord::new(BENCH, "udp-flood-daemon", "pages/s", r.flooded.pages_per_s)
        .param("pages", r.flooded.pages)
        .param("delay_us", args.delay_us)
        .param("flood_per_s", r.flooded_rate.round())
        .param("hits", r.flooded.hits)
        .param("tcp_pipelined", r.flooded.tcp_pipelined)
        .param("ratios", ratios)
        .param("daemon_threads", args.daemon_threads)
        .against(&base);
    // The median over the repetitions that measured it, else the median repetition's own.
    let (valid_us, valid_datagrams, valid_share) = valid_costs
        .get(valid_costs.len() / 2)
        .copied()
        .unwrap_or((r.cpu_per_valid_us, r.valid, r.valid_udp_share));
    let valid = BenchRecord::new(BENCH, "daemon-cpu-per-valid", "µs", valid_us)
        .param("valid_datagrams", valid_datagrams)
        .param("repetitions_measured", valid_costs.len())
        .param("udp_share", round3(valid_share))
        .lower_is_better();
    let mut forged = BenchRecord::new(BENCH, "daemon-cpu-per-forged", "µs", r.cpu_per_forged_us)
        .param("forged_dropped", r.forged_dropped)
        .param("probe_ms", CPU_PROBE.as_millis() as u64)
        .lower_is_better();
    // The per-valid cost is the daemon's whole CPU over the scan divided by what it installed:
    // a scan that left UDP installs a handful, and the quotient is then the daemon's idle
    // wake-ups (300–750 µs "per page" over 8–32 pages, when it was measured beside the flood),
    // no cost of a page.
    if valid_datagrams >= MIN_VALID_FOR_RATIO {
        forged = forged.against(&valid);
    }
    Ok(vec![
        flooded,
        base,
        forged.param("valid_us", round1(valid_us)),
        valid,
    ])
}
