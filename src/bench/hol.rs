//! `udp-prefetch bench hol`: head-of-line blocking. A backend's foreground reads (pages it needs
//! now, not among its prefetches) share the backend's one pagestream connection with its
//! prefetch stream for a large scan. With Neon-style TCP prefetch the foreground GetPage is
//! answered in order, behind every prefetch response still in flight; with UDP prefetch the
//! connection carries only small fire-and-forget Prefetch requests and the pages travel as
//! datagrams to the worker daemon, so the foreground GetPage should not wait behind them.
//!
//! Cases: `udp-idle` (the foreground reader alone, on a connection registered for UDP
//! prefetch), `udp-busy` (the same connection also streams UDP prefetches for a scan),
//! `tcp-pipelined-busy` (the same connection streams pipelined GetPages, depth 128, flushed
//! every 8). The value is the foreground p99 in µs; p50 and p999 are in the params.
//!
//! The backend is one thread, as a PostgreSQL backend is: between two foreground reads it
//! scans for `--fg-interval-us` as fast as its prefetches deliver (the idle reader sleeps for
//! that long instead), so the stream runs at its own pace rather than a fixed number of pages
//! per foreground read, which would let the pipeline drain while the reader waits. All three
//! readers (one connection each) exist for the whole run and take turns in rounds.
//!
//! Owns: nothing shared; it drives the public APIs of `PageServer`, `compute::backend::Backend`,
//! `protocol::client`, `lfc` and `cmd::daemon_proc` and may not be imported by the library's other
//! modules.

use super::plot::LatencySeries;
use super::{round1, BenchRecord};
use crate::cmd::daemon_proc::{DaemonProc, ScratchDir};
use crate::compute::backend::pipeline::PIPELINED_FLUSH_EVERY;
use crate::compute::backend::read_path::{ReadPathConfig, ScanWindow};
use crate::compute::backend::{Backend, PrefetchPath};
use crate::compute::scan::percentile;
use crate::pageserver::source::{SourceSpec, Synthetic};
use crate::pageserver::ServerConfig;
use crate::protocol::client::{ConnectOptions, PageClient};
use crate::protocol::page::{verify_page, Page};
use crate::protocol::pagestream::{Request, Response, LATEST_LSN};
use lfc::{Lfc, RelTag, PAGE_SIZE};
use std::time::{Duration, Instant};

const BENCH: &str = "hol";
/// Foreground reads before measuring: the first ones pay for connection warm-up and page faults
/// in the LFC file, which are not head-of-line blocking.
const WARMUP_READS: u32 = 64;
/// Upper bound on measured reads per case (latencies are kept in memory for the CDF).
const MAX_SAMPLES: u32 = 1_000_000;
/// Measured reads are taken in this many rounds, the cases in turn, so that a burst of load
/// from elsewhere on the machine falls on every case alike rather than on one of them.
const ROUNDS: u32 = 8;
/// Blocks of every relation. Synthetic pages cost nothing to have; the scan only needs never
/// to run out within a case (at 100k pages/s this is 40 s of scanning) and stops if it does.
const REL_PAGES: u32 = 1 << 22;

#[derive(Debug, Clone, clap::Args)]
pub struct HolBenchArgs {
    /// Foreground reads measured per case (p999 needs a few thousand).
    #[arg(long, default_value_t = 4000)]
    pub samples: u32,
    /// Time between two foreground reads, microseconds: the busy cases scan meanwhile.
    #[arg(long, default_value_t = 500)]
    pub fg_interval_us: u64,
    /// Emulated storage latency of every request, microseconds.
    #[arg(long, default_value_t = 200)]
    pub delay_us: u64,
    /// Prefetch distance (UDP) and pipeline depth (TCP) of the streaming scan.
    #[arg(long, default_value_t = 128)]
    pub distance: u32,
    /// Worker daemon threads (the daemon's own default: one per two CPUs, at least one).
    // The default depends on the machine: the text above states it once, and help shows no
    // second, this machine's, number.
    #[arg(long, default_value_t = workers::daemon::default_threads(), hide_default_value = true)]
    pub daemon_threads: usize,
    /// Nice value for every worker daemon thread (0 = as started). A positive value lets the
    /// backend and the page server's responder preempt the bulk ingest on a small machine.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub daemon_nice: i32,
    /// The worker daemon's `--thread-class` (default: the daemon's own default).
    #[arg(long, value_enum)]
    pub daemon_thread_class: Option<crate::cmd::workers::WorkerClass>,
    /// LFC size, MiB; smaller than the scan is fine (CLOCK evicts pages already read).
    #[arg(long, default_value_t = 256)]
    pub lfc_mib: u64,
    /// Who receives the udp cases' prefetches (`scan --receive`): the worker daemon, or the
    /// backend itself.
    #[arg(long, value_enum, default_value_t = crate::cmd::scan::ReceiveBy::Daemon)]
    pub receive: crate::cmd::scan::ReceiveBy,
}

/// What one case observed so far.
#[derive(Default)]
struct Tally {
    /// Foreground read latencies, µs (sorted ascending once the case is done).
    latencies_us: Vec<f64>,
    /// The same reads split by the path the busy reader's scan was on when each began (moved
    /// off UDP by its read path, or on TCP by design), µs: a tail while on TCP is TCP's
    /// head-of-line blocking, not UDP's.
    while_udp_us: Vec<f64>,
    while_tcp_us: Vec<f64>,
    scan_pages: u64,
    /// Time spent in this case's rounds, for the scan rate.
    busy: Duration,
    failed: u64,
}

impl Tally {
    fn read(&mut self, blkno: u32, took: Duration, ok: bool, on_tcp: bool) {
        if blkno >= WARMUP_READS {
            let us = took.as_secs_f64() * 1e6;
            self.latencies_us.push(us);
            if on_tcp {
                self.while_tcp_us.push(us);
            } else {
                self.while_udp_us.push(us);
            }
        }
        self.failed += u64::from(!ok);
    }

    fn record(&self, case: &str, args: &HolBenchArgs) -> BenchRecord {
        let p = |q| round1(percentile(&self.latencies_us, q));
        BenchRecord::new(BENCH, case, "us", p(0.99))
            .lower_is_better()
            .param("p50_us", p(0.5))
            .param("p99_us", p(0.99))
            .param("p999_us", p(0.999))
            .param("samples", self.latencies_us.len())
            .param("delay_us", args.delay_us)
            .param("distance", args.distance)
            .param("fg_interval_us", args.fg_interval_us)
            .param("daemon_nice", args.daemon_nice)
            .param("receive", args.receive.name())
            .param(
                "daemon_thread_class",
                args.daemon_thread_class.map(|c| c.name()),
            )
            .param("scan_pages", self.scan_pages)
            .param("reads_while_tcp", self.while_tcp_us.len())
            .param(
                "p99_while_udp_us",
                round1(percentile(&self.while_udp_us, 0.99)),
            )
            .param(
                "p99_while_tcp_us",
                round1(percentile(&self.while_tcp_us, 0.99)),
            )
            .param(
                "scan_pages_per_s",
                (self.scan_pages as f64 / self.busy.as_secs_f64().max(1e-9)).round(),
            )
    }
}

pub fn run(args: &HolBenchArgs) -> anyhow::Result<Vec<BenchRecord>> {
    Ok(run_with_latencies(args)?.0)
}

/// The records and, for `--plot`, every case's latency distribution.
pub fn run_with_latencies(
    args: &HolBenchArgs,
) -> anyhow::Result<(Vec<BenchRecord>, Vec<LatencySeries>)> {
    validate(args)?;
    // One relation per role, so no case finds another case's pages in the LFC.
    let (udp_idle_fg, udp_busy_fg, udp_scan, tcp_fg, tcp_scan) = (0, 1, 2, 3, 4);
    let server = super::start_server(ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        source: SourceSpec::Synthetic {
            rels: 5,
            pages: REL_PAGES,
        },
        service_delay_us: args.delay_us,
        ..ServerConfig::default()
    })?;
    let addr = server.local_addr().to_string();
    let scratch = ScratchDir::new("udp-prefetch-bench-hol")?;
    let lfc_path = scratch.0.join("lfc");
    let threads = args.daemon_threads.to_string();
    let daemon = DaemonProc::start(
        &lfc_path,
        args.lfc_mib << 20,
        &super::daemon_flags(&threads, args.daemon_thread_class),
    )?;
    let lfc = Lfc::open(&lfc_path)?;
    if args.daemon_nice != 0 {
        daemon.renice(args.daemon_nice)?;
    }

    let rel = Synthetic::rel;
    let port = daemon.udp_port;
    let mut idle = UdpReader::new(&addr, port, &lfc, rel(udp_idle_fg), None, args)?;
    let mut busy = UdpReader::new(
        &addr,
        port,
        &lfc,
        rel(udp_busy_fg),
        Some(rel(udp_scan)),
        args,
    )?;
    let mut tcp = TcpReader::new(&addr, rel(tcp_fg), rel(tcp_scan), args)?;
    for round in 0..ROUNDS {
        let reads = args.samples / ROUNDS
            + u32::from(round < args.samples % ROUNDS)
            + if round == 0 { WARMUP_READS } else { 0 };
        idle.run(reads)?;
        busy.run(reads)?;
        tcp.run(reads)?;
    }
    results(args, idle, busy, tcp)
}

/// The flags' bounds, checked before anything starts.
fn validate(args: &HolBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=MAX_SAMPLES).contains(&args.samples),
        "--samples must be 1..={MAX_SAMPLES}"
    );
    // The client's own bound on requests in flight bounds the pipeline depth.
    let max_distance = crate::protocol::client::MAX_IN_FLIGHT as u32 - 1;
    anyhow::ensure!(
        (1..=max_distance).contains(&args.distance),
        "--distance must be 1..={max_distance}"
    );
    anyhow::ensure!(args.lfc_mib >= 16, "--lfc-mib must be at least 16");
    anyhow::ensure!(
        args.fg_interval_us <= 1_000_000,
        "--fg-interval-us must be at most 1 s"
    );
    Ok(())
}

/// The three readers' records (the busy ones against the idle UDP reader) and latency series.
fn results(
    args: &HolBenchArgs,
    idle: UdpReader,
    busy: UdpReader,
    tcp: TcpReader,
) -> anyhow::Result<(Vec<BenchRecord>, Vec<LatencySeries>)> {
    // Whether the UDP readers stayed on UDP: a busy reader that moved to TCP pipelining
    // measures the TCP design under another name.
    // The last change's reason says why (e.g. the pace calibration's verdict).
    let path = |r: &UdpReader| {
        let log = r.backend.state_log();
        let last = log.last().map(|c| c.reason.clone());
        let stats = r.backend.stats();
        (
            r.backend.path_changes(),
            (stats.tcp_pipelined, stats.tcp_depth_cuts),
            last.unwrap_or_default(),
            super::state_change_reasons([&log[..]]),
        )
    };
    let (idle_path, busy_path) = (path(&idle), path(&busy));
    let mut tallies = [
        ("udp-idle", idle.tally),
        ("udp-busy", busy.tally),
        ("tcp-pipelined-busy", tcp.tally),
    ];
    anyhow::ensure!(
        tallies.iter().all(|(_, t)| t.failed == 0),
        "a page failed verification"
    );
    for (_, t) in &mut tallies {
        t.latencies_us.sort_by(f64::total_cmp);
        t.while_udp_us.sort_by(f64::total_cmp);
        t.while_tcp_us.sort_by(f64::total_cmp);
    }
    let [(_, idle), (_, busy), (_, tcp)] = &tallies;
    let with_path = |r: BenchRecord, (changes, (pipelined, cuts), last, reasons)| {
        r.param("udp_state_changes", changes)
            .param("tcp_pipelined", pipelined)
            .param("tcp_depth_cuts", cuts)
            .param("last_udp_state_change", last)
            .param("state_change_reasons", reasons)
    };
    let idle_rec = with_path(idle.record("udp-idle", args), idle_path);
    let records = vec![
        idle_rec.clone(),
        with_path(busy.record("udp-busy", args), busy_path).against(&idle_rec),
        tcp.record("tcp-pipelined-busy", args).against(&idle_rec),
    ];
    let series = tallies
        .into_iter()
        .map(|(case, t)| LatencySeries {
            bench: BENCH.to_string(),
            case: case.to_string(),
            sorted_us: t.latencies_us,
        })
        .collect();
    Ok((records, series))
}

fn connect(addr: &str) -> anyhow::Result<PageClient> {
    Ok(PageClient::connect(&ConnectOptions::new(addr))?)
}

/// The UDP design: one backend, one connection; foreground reads go through the backend's read
/// path (an LFC miss, then a TCP GetPage) while, when `scan` is set, the same backend keeps a
/// UDP prefetch window open ahead of a sequential scan and reads the scan's pages from the LFC.
struct UdpReader<'a> {
    backend: Backend<'a>,
    scan: Option<UdpScan>,
    fg: RelTag,
    next_fg: u32,
    interval: Duration,
    page: Box<Page>,
    tally: Tally,
}

impl<'a> UdpReader<'a> {
    fn new(
        addr: &str,
        udp_port: u16,
        lfc: &'a Lfc,
        fg: RelTag,
        scan: Option<RelTag>,
        args: &HolBenchArgs,
    ) -> anyhow::Result<Self> {
        let backend = Backend::sharded(
            lfc,
            vec![connect(addr)?],
            crate::protocol::shard::ShardLayout::SINGLE,
            ReadPathConfig::default(),
            args.receive.with_port(Some(udp_port)),
        )?;
        Ok(UdpReader {
            backend,
            scan: scan.map(|rel| UdpScan::new(rel, args.distance)),
            fg,
            next_fg: 0,
            interval: Duration::from_micros(args.fg_interval_us),
            page: Box::new([0u8; PAGE_SIZE]),
            tally: Tally::default(),
        })
    }

    fn run(&mut self, reads: u32) -> anyhow::Result<()> {
        let started = Instant::now();
        for _ in 0..reads {
            match self.scan.as_mut() {
                Some(s) => {
                    let until = Instant::now() + self.interval;
                    while Instant::now() < until && s.next_read < s.end() {
                        let ok = s.step(&mut self.backend, &mut self.page)?;
                        self.tally.failed += u64::from(!ok);
                        self.tally.scan_pages += 1;
                    }
                }
                None => std::thread::sleep(self.interval),
            }
            let blkno = self.next_fg;
            self.next_fg += 1;
            let on_tcp = self.scan.is_some() && self.backend.path() != PrefetchPath::Udp;
            let t = Instant::now();
            self.backend.read(self.fg.block(blkno), &mut self.page)?;
            let took = t.elapsed();
            let ok = verify_page(&self.page, blkno).is_ok();
            self.tally.read(blkno, took, ok, on_tcp);
        }
        self.tally.busy += started.elapsed();
        Ok(())
    }
}

/// A sequential scan driven one page at a time, with the UDP prefetch window of `run_scan`'s
/// udp mode.
struct UdpScan {
    rel: RelTag,
    distance: u32,
    next_read: u32,
    window: ScanWindow,
}

impl UdpScan {
    fn new(rel: RelTag, distance: u32) -> Self {
        UdpScan {
            rel,
            distance,
            next_read: 0,
            // The window never runs past the relation.
            window: ScanWindow::new(0, REL_PAGES),
        }
    }

    /// One past the last block the scan reads.
    fn end(&self) -> u32 {
        REL_PAGES - self.distance
    }

    /// Reads the next scan page; false when it failed verification.
    fn step(&mut self, backend: &mut Backend<'_>, page: &mut Page) -> anyhow::Result<bool> {
        let blkno = self.next_read;
        let distance = backend.prefetch_distance(self.distance);
        if let Some(range) = self.window.top_up(blkno, distance) {
            backend.prefetch(self.rel, range)?;
        }
        backend.read(self.rel.block(blkno), page)?;
        self.next_read += 1;
        Ok(verify_page(page, blkno).is_ok())
    }
}

/// The Neon-style TCP design: one connection carries pipelined GetPage prefetches for the scan
/// (up to `distance` requested but not yet consumed, flushed every 8), and each foreground
/// GetPage is sent on it too and answered only after every prefetch response ahead of it.
/// Those responses are kept, as Neon keeps them in its prefetch ring, and consumed by the scan.
struct TcpReader {
    client: PageClient,
    scan: PipelinedScan,
    fg: RelTag,
    next_fg: u32,
    interval: Duration,
    tally: Tally,
}

impl TcpReader {
    fn new(addr: &str, fg: RelTag, scan: RelTag, args: &HolBenchArgs) -> anyhow::Result<Self> {
        Ok(TcpReader {
            client: connect(addr)?,
            scan: PipelinedScan::new(scan, args.distance),
            fg,
            next_fg: 0,
            interval: Duration::from_micros(args.fg_interval_us),
            tally: Tally::default(),
        })
    }

    fn run(&mut self, reads: u32) -> anyhow::Result<()> {
        let started = Instant::now();
        let (client, scan, fg) = (&mut self.client, &mut self.scan, self.fg);
        for _ in 0..reads {
            let until = Instant::now() + self.interval;
            while Instant::now() < until && scan.next_read < REL_PAGES {
                self.tally.failed += u64::from(!scan.step(client)?);
                self.tally.scan_pages += 1;
            }
            let blkno = self.next_fg;
            self.next_fg += 1;
            let hdr = client.header(LATEST_LSN, 0);
            let t = Instant::now();
            client.send(&Request::GetPage {
                hdr,
                rel: fg,
                blkno,
            })?;
            client.flush()?;
            scan.unflushed = 0;
            while client.in_flight() > 1 {
                self.tally.failed += u64::from(!scan.receive(client)?);
            }
            let ok = match client.recv()? {
                Response::GetPage {
                    rel,
                    blkno: b,
                    page,
                    ..
                } if rel == fg && b == blkno => verify_page(&page, blkno).is_ok(),
                other => return Err(unexpected("a foreground GetPage", &other)),
            };
            self.tally.read(blkno, t.elapsed(), ok, true);
        }
        self.tally.busy += started.elapsed();
        Ok(())
    }
}

/// The pipelined scan of `PageClient::get_pages_pipelined`, driven one page at a time so that
/// foreground requests can be interleaved on the same connection.
struct PipelinedScan {
    rel: RelTag,
    depth: u32,
    next_send: u32,
    /// Next response to receive; responses received ahead of `next_read` wait in the "ring".
    next_recv: u32,
    next_read: u32,
    unflushed: usize,
}

impl PipelinedScan {
    fn new(rel: RelTag, depth: u32) -> Self {
        PipelinedScan {
            rel,
            depth,
            next_send: 0,
            next_recv: 0,
            next_read: 0,
            unflushed: 0,
        }
    }

    /// Consumes the next scan page, keeping `depth` pages requested ahead; false when it failed
    /// verification.
    fn step(&mut self, client: &mut PageClient) -> anyhow::Result<bool> {
        // In flight plus received-but-unread: both occupy a slot of Neon's prefetch ring.
        while self.next_send - self.next_read < self.depth && self.next_send < REL_PAGES {
            let hdr = client.header(LATEST_LSN, 0);
            client.send(&Request::GetPage {
                hdr,
                rel: self.rel,
                blkno: self.next_send,
            })?;
            self.next_send += 1;
            self.unflushed += 1;
            if self.unflushed >= PIPELINED_FLUSH_EVERY {
                client.flush()?;
                self.unflushed = 0;
            }
        }
        let ok = if self.next_recv == self.next_read {
            self.unflushed = 0; // recv flushes whatever is buffered.
            self.receive(client)?
        } else {
            true // Verified when it was received.
        };
        self.next_read += 1;
        Ok(ok)
    }

    /// Receives the oldest prefetch response; false when the page failed verification.
    fn receive(&mut self, client: &mut PageClient) -> anyhow::Result<bool> {
        let want = self.next_recv;
        match client.recv()? {
            Response::GetPage {
                rel, blkno, page, ..
            } if rel == self.rel && blkno == want => {
                self.next_recv += 1;
                Ok(verify_page(&page, blkno).is_ok())
            }
            other => Err(unexpected("a prefetch GetPage", &other)),
        }
    }
}

/// An error for a response that is not the page asked for (without dumping page bytes).
fn unexpected(what: &str, resp: &Response) -> anyhow::Error {
    match resp {
        Response::Error { message, .. } => anyhow::anyhow!("page server refused {what}: {message}"),
        Response::GetPage { rel, blkno, .. } => {
            anyhow::anyhow!("out-of-order answer to {what}: block {blkno} of {rel}")
        }
        _ => anyhow::anyhow!("unexpected kind of answer to {what}"),
    }
}
