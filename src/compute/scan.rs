//! A sequential scan of one relation, verifying every page, in one of three prefetch designs:
//! synchronous TCP, Neon-style pipelined TCP, or UDP prefetch into the LFC. Shared by
//! `udp-prefetch scan`, the demo and the benchmarks.
//!
//! Owns: the scan's configuration and report (`ScanConfig`, `ScanReport`), its window top-up loop,
//! and the tally of verified pages, waits, CPU per page and digest. A blocking shell: it connects,
//! reads the real clock and thread CPU, and in the udp and tcp-lfc modes reads every page through
//! `Backend`, so it makes no read-path decision and never touches the LFC itself; the TCP modes use
//! no LFC.

use crate::compute::backend::pipeline::PIPELINED_FLUSH_EVERY;
use crate::compute::backend::read_path::{ReadPathConfig, ReadStats, ScanWindow};
use crate::compute::backend::{Backend, PrefetchPath, ReadSource, Receive, StateChange};
use crate::protocol::client::{ConnectOptions, PageClient};
use crate::protocol::page::{verify_page_as, Page, PageVerify};
use crate::protocol::pagestream::LATEST_LSN;
use crate::protocol::shard::{ShardLayout, ShardMap};
use lfc::{Lfc, RelTag, PAGE_SIZE};
use std::ops::Range;
use std::time::{Duration, Instant};

/// The first line `udp-prefetch scan --start-gate` prints, once it is ready to start (a bench
/// starting many scans waits for it).
pub const READY_LINE: &str = "udp-prefetch scan ready";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScanMode {
    /// One GetPage at a time over TCP.
    TcpSync,
    /// Up to `distance` GetPages in flight on the TCP connection, responses read in order.
    TcpPipelined,
    /// UDP prefetch `distance` blocks ahead into the LFC; reads through the LFC read path.
    Udp,
    /// Neon's compute with its LFC: the LFC looked up before each read, up to `distance` GetPages
    /// in flight, every page received stored in the LFC. The udp mode's read path with UDP
    /// switched off, so `udp` against `tcp-lfc` isolates what UDP prefetch adds.
    TcpLfc,
}

/// The TCP modes' default pipeline depth: Neon's, as the udp mode's TCP path has it.
pub const DEFAULT_TCP_DEPTH: u32 = crate::compute::backend::read_path::NEON_TCP_DEPTH;
/// The udp mode's default prefetch distance. Longer than TCP's depth because it costs LFC
/// frames, not connection buffers, and because a datagram reaches a reader later than a TCP
/// answer does (through the worker daemon, which on a busy compute CPU runs when the reader
/// blocks): at the page server's 200 µs, `bench scan` pairs (fortieth session, Intel) left UDP
/// at a distance of 128 (0.90 and 0.93 × tcp-pipelined at depth 128, a udp share of 0.05–0.11)
/// and kept it at 512 (1.07 and 1.09 ×, a share of 0.97). Every bench and the demo use 512.
pub const DEFAULT_UDP_DISTANCE: u32 = 512;

impl ScanMode {
    /// The default of `pages_ahead`: `DEFAULT_TCP_DEPTH` or `DEFAULT_UDP_DISTANCE`.
    pub fn default_ahead(self) -> u32 {
        self.pages_ahead(DEFAULT_TCP_DEPTH, DEFAULT_UDP_DISTANCE)
    }

    /// How far ahead a scan in this mode reads: the pipeline `depth` for the TCP modes, the
    /// prefetch `distance` for UDP.
    pub fn pages_ahead(self, depth: u32, distance: u32) -> u32 {
        match self {
            ScanMode::Udp => distance,
            ScanMode::TcpSync | ScanMode::TcpPipelined | ScanMode::TcpLfc => depth,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ScanMode::TcpSync => "tcp-sync",
            ScanMode::TcpPipelined => "tcp-pipelined",
            ScanMode::Udp => "udp",
            ScanMode::TcpLfc => "tcp-lfc",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScanConfig {
    pub connect: ConnectOptions,
    pub rel: RelTag,
    /// Blocks to read; `None` = the whole relation.
    pub blocks: Option<Range<u32>>,
    pub mode: ScanMode,
    pub distance: u32,
    /// Emulated per-page backend work (query processing), in microseconds of CPU.
    pub cpu_per_page_us: u64,
    /// Who receives the udp mode's prefetches: the worker daemon (its port `None`: from the
    /// LFC header, where the daemon serving the cache records its address) or the backend.
    pub receive: Receive,
    pub read_path: ReadPathConfig,
    /// A sharded tenant's page servers (none listed: `connect`'s address is the only one).
    pub shards: ShardMap,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ScanReport {
    pub mode: String,
    pub pages: u64,
    pub verified: u64,
    pub failed: u64,
    pub hits: u64,
    pub late_hits: u64,
    pub fallbacks: u64,
    pub wasted_prefetches: u64,
    pub prefetched: u64,
    pub duplicates_avoided: u64,
    /// Prefetches requested again because they were taken as lost.
    pub retries: u64,
    /// Waits for a prefetch in flight that ran out (each then read over TCP).
    pub wait_timeouts: u64,
    /// Times the adaptive prefetch window was halved (own prefetches missing the budget).
    pub window_cuts: u64,
    /// Pages read through the backend's TCP pipeline (requested ahead by GetPage) because UDP
    /// was not delivering.
    pub tcp_pipelined: u64,
    /// Times the read path moved between UDP prefetch and TCP pipelining.
    pub udp_state_changes: u64,
    /// Times the TCP pipeline's depth limit came down because reads waited behind it
    /// (ARCHITECTURE §6, "The pipeline's depth"). `default` so reports written before it
    /// still load.
    #[serde(default)]
    pub tcp_depth_cuts: u64,
    /// Each move, in order (at most `backend::MAX_STATE_LOG`): when, to which path and why.
    pub udp_state_log: Vec<StateChange>,
    /// Of a sharded tenant in the udp and tcp-lfc modes, each shard's share of the read path,
    /// in shard order (absent for one server).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardScanStats>,
    pub elapsed_s: f64,
    pub pages_per_s: f64,
    /// Backend thread CPU per page, excluding the emulated per-page work and the digest.
    pub cpu_us_per_page: f64,
    /// Time the backend spent obtaining each page (waiting), percentiles.
    pub wait_p50_us: f64,
    pub wait_p99_us: f64,
    /// The longest any one page took: the worst stall a query saw (a fault's cost shows here
    /// long before it moves a percentile). `default` so reports written before it still load.
    #[serde(default)]
    pub wait_max_us: f64,
    /// Times the scanning thread left the CPU during the scan (blocked or preempted): on a busy
    /// compute each costs a switch out and one back in, and a backend that blocks for every
    /// page pays that per page. `default` so reports written before it still load.
    #[serde(default)]
    pub context_switches: u64,
    /// BLAKE3 over every page's XXH3-64 in block order: equal digests mean identical results.
    pub digest: String,
    /// Pages the backend's own receiver installed (`--receive backend`; absent when the
    /// worker daemon receives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_by_backend: Option<u64>,
}

/// One shard's part of a scan's reads.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ShardScanStats {
    pub shard: usize,
    /// The path its pages took at the end.
    pub path: PrefetchPath,
    pub reads: u64,
    pub hits: u64,
    pub late_hits: u64,
    pub fallbacks: u64,
    pub tcp_pipelined: u64,
    pub prefetched: u64,
    pub udp_state_changes: u64,
}

impl ScanReport {
    /// Share of the scan's pages read from a datagram (a hit or a late hit): how much of it
    /// UDP prefetch carried, the rest having come by TCP.
    pub fn udp_share(&self) -> f64 {
        udp_share(std::slice::from_ref(self))
    }
}

/// `ScanReport::udp_share` of several scans taken together (every page weighs the same).
pub fn udp_share(reports: &[ScanReport]) -> f64 {
    let (udp, pages) = reports
        .iter()
        .fold((0, 0), |(u, p), r| (u + r.hits + r.late_hits, p + r.pages));
    udp as f64 / pages.max(1) as f64
}

impl ShardScanStats {
    /// As `ScanReport::udp_share`, of this shard's reads.
    pub fn udp_share(&self) -> f64 {
        (self.hits + self.late_hits) as f64 / self.reads.max(1) as f64
    }
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec into valid memory; the clock id is valid on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Context switches of the calling thread so far, voluntary (it blocked) and involuntary (it
/// was preempted).
pub fn thread_context_switches() -> u64 {
    // SAFETY: an all-zero rusage is a valid value; getrusage writes one into valid memory.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_THREAD is valid on Linux.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    (usage.ru_nvcsw + usage.ru_nivcsw) as u64
}

/// Burns `us` microseconds of this thread's CPU, standing in for a query's work on each page;
/// returns the CPU time it took (thread CPU, so a preemption inside it counts for nothing).
fn busy_work(us: u64) -> Duration {
    if us == 0 {
        return Duration::ZERO;
    }
    let start = thread_cpu();
    let target = Duration::from_micros(us);
    loop {
        let used = thread_cpu() - start;
        if used >= target {
            return used;
        }
        std::hint::spin_loop();
    }
}

/// The `p` quantile (0..=1) of `sorted` (ascending), nearest rank; 0 for no samples. The one
/// percentile helper of the crate: scans, benches and plots all use it.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// How a scan reports progress while it runs: a bar on a terminal (as prewarm's), otherwise a
/// log line every `log_every`, so a long scan into a file or a pipe is not one long silence.
#[derive(Debug, Clone, Copy)]
pub struct ScanProgress {
    pub log_every: Duration,
}

impl Default for ScanProgress {
    fn default() -> Self {
        ScanProgress {
            log_every: Duration::from_secs(5),
        }
    }
}

/// The running side of [`ScanProgress`].
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    log_every: Duration,
    started: Instant,
    last_log: Instant,
    total: u64,
}

impl Progress {
    /// Pages between looks at the clock: the check stays off the per-page cost.
    const CHECK_EVERY: u64 = 64;

    fn new(cfg: ScanProgress, mode: ScanMode, total: u64) -> Progress {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} {bar:40} {pos}/{len} pages {per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_prefix(mode.name());
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            log_every: cfg.log_every,
            started: now,
            last_log: now,
            total,
        }
    }

    fn update(&mut self, done: u64) {
        if !done.is_multiple_of(Self::CHECK_EVERY) {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        } else if self.last_log.elapsed() >= self.log_every {
            self.last_log = Instant::now();
            let secs = self.started.elapsed().as_secs_f64();
            tracing::info!(
                done,
                total = self.total,
                pages_per_s = format!("{:.0}", done as f64 / secs.max(1e-9)),
                "scan progress"
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Digests of one page timed together to find a digest's CPU (`digest_cpu_per_page`)...
const DIGEST_CALIBRATION_PAGES: u32 = 64;
/// ... in this many rounds, the quickest taken.
const DIGEST_CALIBRATION_ROUNDS: u32 = 8;

/// Collects what a scan observed page by page.
struct Tally {
    progress: Option<Progress>,
    hasher: blake3::Hasher,
    verified: u64,
    failed: u64,
    waits_us: Vec<f64>,
    /// The emulated work's CPU so far.
    work_cpu: Duration,
    /// Pages digested, and the CPU one digest takes (`digest_cpu_per_page`).
    digested: u32,
    digest_cpu: Duration,
    cpu_per_page_us: u64,
    /// The cluster's verification (checksums, or headers when it has none).
    verify: PageVerify,
}

impl Tally {
    fn page(&mut self, blkno: u32, page: &Page, wait: Duration) {
        if verify_page_as(page, blkno, self.verify).is_ok() {
            self.verified += 1;
        } else {
            self.failed += 1;
        }
        if let Some(p) = &mut self.progress {
            p.update(self.verified + self.failed);
        }
        self.waits_us.push(wait.as_secs_f64() * 1e6);
        // The digest (the test harness's, not a backend's) and the emulated query work are
        // excluded from the backend CPU figure; page verification, which PostgreSQL does on
        // every read, is included. The digest's CPU is measured once, before the scan
        // (`digest_cpu_per_page`): timed page by page with the monotonic clock, a preemption
        // inside the hash counted as its CPU, and with 64 backends on one CPU (`bench
        // many-backends`) backends reported 0 µs of CPU a page; the thread CPU clock is a
        // system call (~0.5 µs), too dear twice a page.
        digest_page(&mut self.hasher, blkno, page);
        self.digested += 1;
        // The emulated work in thread CPU time: a backend preempted during it (by the worker
        // daemon, on a busy compute) once reported 0 µs of CPU per page.
        self.work_cpu += busy_work(self.cpu_per_page_us);
    }

    /// The CPU to leave out of the backend's figure: the emulated work and the digests.
    fn work_cpu(&self) -> Duration {
        self.work_cpu + self.digest_cpu * self.digested
    }
}

/// Adds `page` to a scan's digest of per-page hashes. It only has to tell identical results
/// from different ones, and it is overhead every mode pays on the reading thread, so each page
/// gets XXH3-64 (0.17 µs) rather than BLAKE3 (1.5 µs, a third of a UDP backend's CPU and a
/// fixed cost that hid how much cheaper the read path itself is); BLAKE3 folds the 64-bit
/// hashes into the printed digest.
fn digest_page(hasher: &mut blake3::Hasher, blkno: u32, page: &Page) {
    hasher.update(&twox_hash::XxHash3_64::oneshot(&page[..]).to_le_bytes());
    hasher.update(&blkno.to_le_bytes());
}

/// The thread CPU one page's digest takes (`digest_page`), timed over
/// `DIGEST_CALIBRATION_PAGES` digests of a page in the CPU's cache, as a page just copied out
/// for its read is. The quickest of `DIGEST_CALIBRATION_ROUNDS` rounds: a single round that
/// took an interrupt, or a new process's first page faults, was charged to every page of the
/// scan, and sometimes came to more than a page's whole CPU, so that `cpu_us_per_page` read
/// 0.0 in about one scan of six on a KVM guest.
fn digest_cpu_per_page() -> Duration {
    let page: Page = std::array::from_fn(|i| i as u8);
    let mut hasher = blake3::Hasher::new();
    let rounds = (0..DIGEST_CALIBRATION_ROUNDS).map(|_| {
        let before = thread_cpu();
        for blkno in 0..DIGEST_CALIBRATION_PAGES {
            digest_page(&mut hasher, blkno, std::hint::black_box(&page));
        }
        thread_cpu() - before
    });
    let quickest = rounds.min().expect("at least one round");
    std::hint::black_box(hasher.finalize());
    quickest / DIGEST_CALIBRATION_PAGES
}

/// Runs one scan. `lfc` is required for the udp mode and unused otherwise (the TCP modes are
/// the baselines without a cache).
pub fn run_scan(cfg: &ScanConfig, lfc: Option<&Lfc>) -> anyhow::Result<ScanReport> {
    run_scan_with_progress(cfg, lfc, None, &mut || Ok(()))
}

/// [`run_scan`], reporting progress as `progress` says (the `scan` command's; the benchmarks and
/// the demo print their own lines and pass `None`). `gate` is called once the scan is attached
/// (its connections up and, in the LFC modes, its backend registered with the page server) and
/// returns when it may start: the scan's time starts then (`scan --start-gate`, with which
/// `bench many-backends` starts its backends together).
pub fn run_scan_with_progress(
    cfg: &ScanConfig,
    lfc: Option<&Lfc>,
    progress: Option<ScanProgress>,
    gate: &mut dyn FnMut() -> std::io::Result<()>,
) -> anyhow::Result<ScanReport> {
    // A backend is what a query waits on: the same short slice as the page server's GetPage
    // threads, in every mode, so that neither preempts the other for a Prefetch or a response.
    workers::sched::set_thread_class_or_warn(workers::sched::ThreadClass::Latency);
    let layout = cfg.shards.layout()?;
    let mut clients = cfg.shards.connect(&cfg.connect)?;
    // Relation sizes come from shard 0, as Neon's compute asks for them.
    let blocks = match &cfg.blocks {
        Some(b) => b.clone(),
        None => 0..clients[0].nblocks(cfg.rel, LATEST_LSN)?,
    };
    anyhow::ensure!(cfg.distance >= 1, "--distance must be at least 1");
    let mut tally = Tally {
        progress: progress.map(|p| Progress::new(p, cfg.mode, blocks.len() as u64)),
        hasher: blake3::Hasher::new(),
        verified: 0,
        failed: 0,
        waits_us: Vec::with_capacity(blocks.len()),
        work_cpu: Duration::ZERO,
        digested: 0,
        digest_cpu: digest_cpu_per_page(),
        cpu_per_page_us: cfg.cpu_per_page_us,
        verify: clients[0].page_verify(u64::MAX),
    };
    // Attached: the LFC modes' backend is built (a udp backend registers its prefetch target
    // and learns whether the server speaks the extension) before the gate opens.
    let mut backend = match cfg.mode {
        ScanMode::Udp | ScanMode::TcpLfc => {
            Some(lfc_backend(cfg, lfc, std::mem::take(&mut clients), layout)?)
        }
        ScanMode::TcpSync | ScanMode::TcpPipelined => None,
    };
    gate()?;
    let cpu_start = thread_cpu();
    let switches_start = thread_context_switches();
    let started = Instant::now();
    let (stats, state_log, shards) = match (cfg.mode, &mut clients[..], &mut backend) {
        (_, _, Some(backend)) => scan_lfc(cfg, backend, &blocks, &mut tally)?,
        (ScanMode::TcpSync, clients, None) => (
            scan_tcp_sync(cfg, clients, layout, &blocks, &mut tally)?,
            Vec::new(),
            Vec::new(),
        ),
        (_, [client], None) => (
            scan_tcp_pipelined(cfg, client, &blocks, &mut tally)?,
            Vec::new(),
            Vec::new(),
        ),
        (_, clients, None) => (
            scan_tcp_pipelined_sharded(cfg, clients, layout, &blocks, &mut tally)?,
            Vec::new(),
            Vec::new(),
        ),
    };
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (thread_cpu() - cpu_start).saturating_sub(tally.work_cpu());
    if let Some(p) = &tally.progress {
        p.finish();
    }
    let mut report = tally.report(cfg, blocks.len() as u64, stats, state_log, elapsed, cpu);
    report.shards = shards;
    report.context_switches = thread_context_switches() - switches_start;
    report.installed_by_backend = backend.as_ref().and_then(Backend::own_installed);
    Ok(report)
}

/// Shard `s`'s error, naming the shard when there are several.
fn shard_error(s: usize, clients: &[PageClient], e: anyhow::Error) -> anyhow::Error {
    if clients.len() == 1 {
        return e;
    }
    let addr = clients[s]
        .peer_addr()
        .map_or_else(|_| "address unknown".to_string(), |a| a.to_string());
    e.context(format!("page server shard {s}/{} ({addr})", clients.len()))
}

/// The tcp-sync scan: one GetPage at a time, each from the shard that owns it.
fn scan_tcp_sync(
    cfg: &ScanConfig,
    clients: &mut [PageClient],
    layout: ShardLayout,
    blocks: &Range<u32>,
    tally: &mut Tally,
) -> anyhow::Result<ReadStats> {
    for blkno in blocks.clone() {
        let t = Instant::now();
        let tag = cfg.rel.block(blkno);
        let s = layout.shard_of(&tag);
        let page = clients[s]
            .get_page(tag, LATEST_LSN, 0)
            .map_err(|e| shard_error(s, clients, e.into()))?;
        tally.page(blkno, &page, t.elapsed());
    }
    Ok(ReadStats {
        fallbacks: blocks.len() as u64,
        ..ReadStats::default()
    })
}

/// The tcp-pipelined scan: up to `distance` GetPages in flight.
fn scan_tcp_pipelined(
    cfg: &ScanConfig,
    client: &mut PageClient,
    blocks: &Range<u32>,
    tally: &mut Tally,
) -> anyhow::Result<ReadStats> {
    let mut t = Instant::now();
    client.get_pages_pipelined(
        cfg.rel,
        blocks.clone(),
        LATEST_LSN,
        cfg.distance as usize,
        PIPELINED_FLUSH_EVERY,
        |blkno, page| {
            tally.page(blkno, page, t.elapsed());
            t = Instant::now();
            Ok(())
        },
    )?;
    Ok(ReadStats {
        fallbacks: blocks.len() as u64,
        ..ReadStats::default()
    })
}

/// The tcp-pipelined scan over several shards: up to `distance` GetPages in flight in all,
/// each on its shard's connection. Requests leave in block order and are read in block order,
/// so each connection's oldest answer is the page read next from that shard.
fn scan_tcp_pipelined_sharded(
    cfg: &ScanConfig,
    clients: &mut [PageClient],
    layout: ShardLayout,
    blocks: &Range<u32>,
    tally: &mut Tally,
) -> anyhow::Result<ReadStats> {
    use crate::protocol::pagestream::Response;
    let mut unflushed = vec![0usize; clients.len()];
    let mut next_send = blocks.start;
    let mut t = Instant::now();
    for blkno in blocks.clone() {
        while next_send < blocks.end && next_send - blkno < cfg.distance {
            let tag = cfg.rel.block(next_send);
            let s = layout.shard_of(&tag);
            clients[s]
                .send_get_page(tag, LATEST_LSN, 0)
                .map_err(|e| shard_error(s, clients, e.into()))?;
            unflushed[s] += 1;
            if unflushed[s] >= PIPELINED_FLUSH_EVERY {
                unflushed[s] = 0;
                clients[s]
                    .flush()
                    .map_err(|e| shard_error(s, clients, e.into()))?;
            }
            next_send += 1;
        }
        let s = layout.shard_of(&cfg.rel.block(blkno));
        // `recv` flushes this shard's buffered requests before it blocks; the others' leave
        // every PIPELINED_FLUSH_EVERY or when their turn comes (a flush per page would cost a
        // system call and a server wake-up each).
        unflushed[s] = 0;
        let resp = clients[s]
            .recv()
            .map_err(|e| shard_error(s, clients, e.into()))?;
        match resp {
            Response::GetPage {
                blkno: got, page, ..
            } if got == blkno => {
                tally.page(blkno, &page, t.elapsed());
                t = Instant::now();
            }
            Response::Error { message, .. } => {
                let e = crate::protocol::client::ClientError::Request(message);
                return Err(shard_error(s, clients, e.into()));
            }
            other => {
                let e = crate::protocol::client::unexpected("pipelined GetPage", &other);
                return Err(shard_error(s, clients, e.into()));
            }
        }
    }
    Ok(ReadStats {
        fallbacks: blocks.len() as u64,
        ..ReadStats::default()
    })
}

/// The backend of a udp or tcp-lfc scan, over the LFC.
fn lfc_backend<'a>(
    cfg: &ScanConfig,
    lfc: Option<&'a Lfc>,
    clients: Vec<PageClient>,
    layout: ShardLayout,
) -> anyhow::Result<Backend<'a>> {
    let lfc =
        lfc.ok_or_else(|| anyhow::anyhow!("the {} mode needs an LFC (--lfc)", cfg.mode.name()))?;
    Ok(if cfg.mode == ScanMode::Udp {
        Backend::sharded(lfc, clients, layout, cfg.read_path, cfg.receive)?
    } else {
        // The distance is the pipeline depth, as in tcp-pipelined.
        let read_path = ReadPathConfig {
            tcp_depth: cfg.distance,
            ..cfg.read_path
        };
        Backend::sharded_tcp_only(lfc, clients, layout, read_path)?
    })
}

/// The udp and tcp-lfc scans: every read through a `Backend` over the LFC, its window topped up
/// ahead of the scan. Returns the backend's statistics and its log of path changes.
fn scan_lfc(
    cfg: &ScanConfig,
    backend: &mut Backend<'_>,
    blocks: &Range<u32>,
    tally: &mut Tally,
) -> anyhow::Result<(ReadStats, Vec<StateChange>, Vec<ShardScanStats>)> {
    // Top the window up in batches, as a backend does, rather than one block at a time.
    let mut window = ScanWindow::new(blocks.start, blocks.end);
    let mut page: Box<Page> = Box::new([0u8; PAGE_SIZE]);
    let mut path_changes = 0;
    for blkno in blocks.clone() {
        if backend.path_changes() != path_changes {
            path_changes = backend.path_changes();
            window.restart_at(blkno);
        }
        let distance = backend.prefetch_distance(cfg.distance);
        if let Some(range) = window.top_up(blkno, distance) {
            backend.prefetch(cfg.rel, range)?;
        }
        let t = Instant::now();
        let source = backend.read(cfg.rel.block(blkno), &mut page)?;
        debug_assert!(matches!(
            source,
            ReadSource::Hit | ReadSource::LateHit | ReadSource::Tcp
        ));
        tally.page(blkno, &page, t.elapsed());
    }
    let stats = backend.finish();
    let shards = if backend.shard_layout().count() > 1 {
        let paths = backend.shard_paths();
        backend
            .shard_stats()
            .into_iter()
            .zip(paths)
            .enumerate()
            .map(|(shard, (s, path))| ShardScanStats {
                shard,
                path,
                reads: s.reads,
                hits: s.hits,
                late_hits: s.late_hits,
                fallbacks: s.fallbacks,
                tcp_pipelined: s.tcp_pipelined,
                prefetched: s.prefetched,
                udp_state_changes: s.udp_state_changes,
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok((stats, backend.state_log(), shards))
}

impl Tally {
    /// The scan's report from what was tallied and what the read path counted.
    fn report(
        mut self,
        cfg: &ScanConfig,
        pages: u64,
        stats: ReadStats,
        state_log: Vec<StateChange>,
        elapsed: f64,
        cpu: Duration,
    ) -> ScanReport {
        self.waits_us.sort_by(f64::total_cmp);
        ScanReport {
            mode: cfg.mode.name().to_string(),
            pages,
            verified: self.verified,
            failed: self.failed,
            hits: stats.hits,
            late_hits: stats.late_hits,
            fallbacks: stats.fallbacks,
            wasted_prefetches: stats.wasted_prefetches,
            prefetched: stats.prefetched,
            duplicates_avoided: stats.duplicates_avoided,
            retries: stats.retries,
            wait_timeouts: stats.wait_timeouts,
            window_cuts: stats.window_cuts,
            tcp_pipelined: stats.tcp_pipelined,
            udp_state_changes: stats.udp_state_changes,
            tcp_depth_cuts: stats.tcp_depth_cuts,
            udp_state_log: state_log,
            shards: Vec::new(),
            elapsed_s: elapsed,
            pages_per_s: if elapsed > 0.0 {
                pages as f64 / elapsed
            } else {
                0.0
            },
            cpu_us_per_page: if pages > 0 {
                cpu.as_secs_f64() * 1e6 / pages as f64
            } else {
                0.0
            },
            wait_p50_us: percentile(&self.waits_us, 0.5),
            wait_p99_us: percentile(&self.waits_us, 0.99),
            wait_max_us: self.waits_us.last().copied().unwrap_or(0.0),
            // Set by the caller, which counted them over the whole scan.
            context_switches: 0,
            digest: self.hasher.finalize().to_hex().to_string(),
            installed_by_backend: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_switches_count_this_threads_blocking_not_another_threads() {
        let before = thread_context_switches();
        // Blocking gives up the CPU: a voluntary switch each time.
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let slept = thread_context_switches() - before;
        assert!(slept >= 5, "5 sleeps counted {slept} switches");
        // The count is this thread's: another thread's sleeps do not move it.
        let before = thread_context_switches();
        std::thread::spawn(|| {
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .join()
        .unwrap();
        let joined = thread_context_switches() - before;
        assert!(
            joined < 20,
            "another thread's 20 sleeps counted {joined} here"
        );
    }
}
