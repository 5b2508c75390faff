//! LFC prewarm: save which pages are cached, and refill a cold cache through the UDP prefetch
//! path, re-requesting what does not arrive and fetching the last stragglers over TCP, so a run
//! always finishes with every page that still exists present and verified.

pub mod schedule;
pub mod state;

use crate::backend::monotonic_ns;
use crate::client::{ClientError, ConnectOptions, PageClient};
use crate::page::verify_page;
use crate::pagestream::{PrefetchTarget, Request, Response, LATEST_LSN};
use lfc::{BufferTag, Lfc, RelTag, PAGE_SIZE};
use schedule::{Schedule, ScheduleConfig, ScheduleCounts};
use state::PageRange;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Pages per Prefetch request at most (a run of consecutive blocks).
const MAX_RANGE_PAGES: u32 = 256;
/// Pages sent per scheduling round.
const ROUND_PAGES: usize = 1024;
/// How long a round waits for arrivals when it has nothing to send.
const POLL: Duration = Duration::from_millis(2);
/// GetPages in flight while fetching stragglers over TCP.
const TCP_DEPTH: usize = 64;
/// Final passes over pages that left the cache after arriving.
const REPAIR_ROUNDS: usize = 2;
/// A round's arrival check stops at this many consecutive pages still missing that were
/// requested less than a smoothed arrival time ago: the server sends in request order, so the
/// rest are in flight behind them. Older missing pages (lost, or late) never stop it. Probing
/// the whole window (up to 8192 pages) every round cost the prewarm thread a millisecond a round.
const ARRIVAL_PROBE_RUN: usize = 256;

#[derive(Debug, Clone)]
pub struct PrewarmConfig {
    pub connect: ConnectOptions,
    /// UDP port of the worker daemon; `None` takes it from the LFC header, where the daemon
    /// serving the cache records its address (no live daemon there: everything over TCP).
    pub prefetch_port: Option<u16>,
    /// Pacing of requested pages, bytes per second (0 = unpaced).
    pub rate_bytes_per_s: u64,
    pub deadline: Option<Duration>,
    pub schedule: ScheduleConfig,
    /// Print progress (a bar on a terminal, else a line every few seconds).
    pub progress: bool,
    /// Use the UDP path; false fetches everything with pipelined GetPages (the baseline).
    pub udp: bool,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PrewarmReport {
    pub pages: u64,
    pub requested: u64,
    /// Pages of the plan present and verified in the LFC at the end.
    pub present: u64,
    pub via_udp_first: u64,
    pub via_udp_retry: u64,
    pub via_tcp: u64,
    pub skipped_present: u64,
    pub skipped_gone: u64,
    pub retries: u64,
    /// Pages fetched again at the end because they had left the cache after arriving.
    pub refetched: u64,
    pub failed_verification: u64,
    pub elapsed_s: f64,
    pub mb_per_s: f64,
    pub cache_full: bool,
    pub deadline_hit: bool,
    pub udp_fell_back_to_tcp: bool,
    pub complete: bool,
}

/// Expands ranges to pages, keeping their order (hottest first) and dropping repeats.
pub fn plan(ranges: &[PageRange]) -> Vec<BufferTag> {
    let mut seen = std::collections::HashSet::new();
    ranges
        .iter()
        .flat_map(|r| r.tags().collect::<Vec<_>>())
        .filter(|t| seen.insert(*t))
        .collect()
}

/// Token bucket for `--rate`, in pages.
struct Pacer {
    rate_pages_per_s: f64,
    started: Instant,
    granted: f64,
}

impl Pacer {
    fn allowance(&mut self, want: usize) -> usize {
        if self.rate_pages_per_s <= 0.0 {
            return want;
        }
        // A burst of at most 64 pages above the average rate.
        let budget =
            self.started.elapsed().as_secs_f64() * self.rate_pages_per_s + 64.0 - self.granted;
        let n = (budget.max(0.0) as usize).min(want);
        self.granted += n as f64;
        n
    }
}

struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last_log: Instant,
    enabled: bool,
}

impl Progress {
    fn new(total: u64, enabled: bool) -> Progress {
        use std::io::IsTerminal;
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} pages {msg} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Progress {
            bar,
            last_log: Instant::now(),
            enabled,
        }
    }

    fn update(&mut self, done: usize, total: usize, counts: &ScheduleCounts, elapsed: f64) {
        let mb_s = done as f64 * PAGE_SIZE as f64 / 1e6 / elapsed.max(1e-9);
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
            bar.set_message(format!(
                "{mb_s:.0} MB/s, {} retries, {} via TCP",
                counts.retries, counts.via_tcp
            ));
        } else if self.enabled && self.last_log.elapsed() >= Duration::from_secs(2) {
            self.last_log = Instant::now();
            tracing::info!(
                done,
                total,
                mb_per_s = format!("{mb_s:.0}"),
                retries = counts.retries,
                via_tcp = counts.via_tcp,
                "prewarm progress"
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// True when the pages cached, the frames reserved (the worker daemon keeps its receive slots
/// reserved, so those frames are taken even though they hold no page yet) and the pages still
/// in flight leave no free frame: bringing in more would evict.
pub fn cache_is_full(lfc: &Lfc, in_flight: usize) -> bool {
    // The O(1) lower bound on free frames settles the common case; only near full is every
    // frame counted (`Lfc::stats` reads all their metadata: asked every round, that was a
    // quarter of a 1 GiB prewarm's CPU on an 8 GiB cache).
    if lfc.free_frames_at_least() > in_flight as u64 {
        return false;
    }
    let s = lfc.stats();
    s.used_pages + s.busy_pages + in_flight as u64 >= lfc.capacity_pages()
}

/// Refills `lfc` with `pages` (hottest first).
pub fn run_prewarm(
    cfg: &PrewarmConfig,
    lfc: &Lfc,
    pages: &[BufferTag],
) -> anyhow::Result<PrewarmReport> {
    let started = Instant::now();
    let mut client = PageClient::connect(&cfg.connect)?;
    let port = cfg.prefetch_port.or_else(|| {
        lfc.daemon()
            .filter(|d| d.is_live(monotonic_ns()))
            .map(|d| d.addr.port())
    });
    let udp = cfg.udp && port.is_some();
    match port {
        Some(udp_port) if udp => client.set_prefetch_target(PrefetchTarget {
            udp_port,
            key_id: lfc.key_id(),
            key: lfc.key(),
        })?,
        _ if cfg.udp => tracing::warn!(
            lfc = %lfc.path().display(),
            "no live worker daemon serves this LFC; prewarming over TCP"
        ),
        _ => {}
    }
    let mut sched = Schedule::new(pages.len(), cfg.schedule);
    // Pages of relations that no longer exist, or beyond their current end, are gone.
    let mut nblocks: HashMap<RelTag, Option<u32>> = HashMap::new();
    for (i, tag) in pages.iter().enumerate() {
        let n = match nblocks.get(&tag.rel) {
            Some(n) => *n,
            None => {
                let n = if client.exists(tag.rel, LATEST_LSN)? {
                    Some(client.nblocks(tag.rel, LATEST_LSN)?)
                } else {
                    None
                };
                nblocks.insert(tag.rel, n);
                n
            }
        };
        if n.is_none_or(|n| tag.blkno >= n) {
            sched.skip_gone(i);
        } else if lfc.contains(tag) {
            sched.skip_present(i);
        }
    }
    if !udp {
        sched.fail_over_to_tcp();
    }
    let mut pacer = Pacer {
        rate_pages_per_s: cfg.rate_bytes_per_s as f64 / PAGE_SIZE as f64,
        started: Instant::now(),
        granted: 0.0,
    };
    let mut progress = Progress::new(pages.len() as u64, cfg.progress);
    let mut report = PrewarmReport {
        pages: pages.len() as u64,
        ..PrewarmReport::default()
    };
    let mut batch = Vec::with_capacity(ROUND_PAGES);
    let mut arrived = Vec::new();
    // When to conclude that nothing will ever arrive: several first timeouts, and never less
    // than a quarter second, so a slow first batch is not mistaken for a missing daemon.
    let give_up_on_udp =
        (3 * Duration::from_nanos(sched.timeout_ns(0))).max(Duration::from_millis(250));
    while !sched.is_complete() {
        if cfg.deadline.is_some_and(|d| started.elapsed() > d) {
            report.deadline_hit = true;
            break;
        }
        let now = monotonic_ns();
        // Arrivals, oldest request first.
        arrived.clear();
        let in_flight_for = sched.srtt_ns().unwrap_or(0);
        let mut missing_run = 0;
        for (i, at) in sched.requested_at() {
            if lfc.contains(&pages[i]) {
                arrived.push(i);
                missing_run = 0;
            } else if now.saturating_sub(at) < in_flight_for {
                missing_run += 1;
                if missing_run >= ARRIVAL_PROBE_RUN {
                    break;
                }
            }
        }
        for &i in &arrived {
            sched.on_arrived(i, now);
        }
        // Nothing ever arrived within a few timeouts: no daemon, or UDP blocked. Finish over TCP.
        if udp
            && !sched.any_udp_arrival()
            && !report.udp_fell_back_to_tcp
            && sched.in_flight() > 0
            && started.elapsed() > give_up_on_udp
        {
            tracing::warn!(
                port = port.unwrap_or(0),
                "no prefetched page arrived; is the worker daemon running on this port? finishing over TCP"
            );
            report.udp_fell_back_to_tcp = true;
            sched.fail_over_to_tcp();
        }
        // Stop bringing in new pages once the cache is full: evicting would push out pages that
        // are already cached (and, the state being hottest first, hotter than the rest).
        if !report.cache_full && cache_is_full(lfc, sched.in_flight()) {
            report.cache_full = true;
            sched.stop_new_requests();
        }
        let want = pacer.allowance(ROUND_PAGES);
        sched.next_requests(now, want, &mut batch);
        send_ranges(&mut client, lfc, pages, &batch)?;
        sched.take_tcp(TCP_DEPTH, &mut batch);
        if !batch.is_empty() {
            fetch_tcp(&mut client, lfc, pages, &batch)?;
            for &i in &batch {
                sched.on_tcp_done(i);
            }
        }
        progress.update(
            sched.done(),
            pages.len(),
            &sched.counts(),
            started.elapsed().as_secs_f64(),
        );
        if report.cache_full && sched.in_flight() == 0 && batch.is_empty() {
            break;
        }
        if batch.is_empty() {
            std::thread::sleep(POLL);
        }
    }
    progress.finish();
    // A page can leave the cache after it arrived (another process's eviction, a modification
    // dropping it): fetch what is missing again, a bounded number of times.
    let exists = |tag: &BufferTag| {
        nblocks
            .get(&tag.rel)
            .copied()
            .flatten()
            .is_some_and(|n| tag.blkno < n)
    };
    for _ in 0..REPAIR_ROUNDS {
        if report.cache_full || report.deadline_hit {
            break;
        }
        let missing: Vec<usize> = (0..pages.len())
            .filter(|&i| exists(&pages[i]) && !lfc.contains(&pages[i]))
            .collect();
        if missing.is_empty() {
            break;
        }
        tracing::debug!(
            missing = missing.len(),
            "re-fetching pages that left the cache"
        );
        for chunk in missing.chunks(TCP_DEPTH) {
            fetch_tcp(&mut client, lfc, pages, chunk)?;
        }
        report.refetched += missing.len() as u64;
    }
    let counts = sched.counts();
    // Final check: every page of the plan that exists must be in the LFC and verify.
    let mut page = [0u8; PAGE_SIZE];
    for tag in pages.iter().filter(|t| exists(t)) {
        if lfc.lookup(tag, &mut page).is_some() {
            if verify_page(&page, tag.blkno).is_ok() {
                report.present += 1;
            } else {
                report.failed_verification += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let fetched = counts.via_udp_first + counts.via_udp_retry + counts.via_tcp;
    // Whether or not the early give-up fired, a run where nothing came by UDP says so.
    report.udp_fell_back_to_tcp |= udp && !sched.any_udp_arrival() && counts.via_tcp > 0;
    report.requested = counts.requested;
    report.via_udp_first = counts.via_udp_first;
    report.via_udp_retry = counts.via_udp_retry;
    report.via_tcp = counts.via_tcp;
    report.skipped_present = counts.skipped_present;
    report.skipped_gone = counts.skipped_gone;
    report.retries = counts.retries;
    report.elapsed_s = elapsed;
    report.mb_per_s = fetched as f64 * PAGE_SIZE as f64 / 1e6 / elapsed.max(1e-9);
    report.complete =
        report.present + counts.skipped_gone == report.pages && report.failed_verification == 0;
    Ok(report)
}

/// Requests the given pages by UDP, as few Prefetch messages as their runs allow.
fn send_ranges(
    client: &mut PageClient,
    lfc: &Lfc,
    pages: &[BufferTag],
    batch: &[usize],
) -> Result<(), ClientError> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut run: Option<(RelTag, u32, u32, u64)> = None;
    for &i in batch {
        let tag = pages[i];
        let lw = lfc.lwlsn(&tag);
        run = match run {
            Some((rel, first, n, max_lw))
                if rel == tag.rel && first + n == tag.blkno && n < MAX_RANGE_PAGES =>
            {
                Some((rel, first, n + 1, max_lw.max(lw)))
            }
            Some((rel, first, n, max_lw)) => {
                client.send_prefetch(rel, first, n as u16, LATEST_LSN, max_lw)?;
                Some((tag.rel, tag.blkno, 1, lw))
            }
            None => Some((tag.rel, tag.blkno, 1, lw)),
        };
    }
    if let Some((rel, first, n, max_lw)) = run {
        client.send_prefetch(rel, first, n as u16, LATEST_LSN, max_lw)?;
    }
    client.flush()
}

/// Fetches pages over TCP, pipelined, and installs them under the lwlsn rule.
fn fetch_tcp(
    client: &mut PageClient,
    lfc: &Lfc,
    pages: &[BufferTag],
    batch: &[usize],
) -> Result<(), ClientError> {
    let mut nms = Vec::with_capacity(batch.len());
    for &i in batch {
        let tag = pages[i];
        let lw = lfc.lwlsn(&tag);
        nms.push(lw);
        let hdr = client.header(LATEST_LSN, lw);
        client.send(&Request::GetPage {
            hdr,
            rel: tag.rel,
            blkno: tag.blkno,
        })?;
    }
    client.flush()?;
    for (k, &i) in batch.iter().enumerate() {
        match client.recv()? {
            Response::GetPage { page, .. } => {
                // Already present (arrived late by UDP) or stale: either way, not installed here.
                let _ = lfc.install_prefetched(&pages[i], nms[k], &page);
            }
            Response::Error { message, .. } => {
                // Gone since the plan was made: nothing to install.
                tracing::debug!(tag = %pages[i], %message, "page not fetched");
            }
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }
    Ok(())
}
