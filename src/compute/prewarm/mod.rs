//! LFC prewarm: save which pages are cached, and refill a cold cache through the UDP prefetch
//! path, re-requesting what does not arrive and fetching the last stragglers over TCP, so a run
//! always finishes with every page that still exists present and verified.
//!
//! Owns: the plan (`plan`: ranges to pages), the configuration and report types, and the
//! blocking shell `run_prewarm` (connections, one per shard, the plan split by shard, relation
//! sizes, real clock, sleeps, progress). Every
//! decision of a run and its constants live in the sans-IO `driver::Driver`, which the simulator
//! runs too; the state file is `state`, the retry schedule `schedule`.

pub mod driver;
pub mod schedule;
pub mod state;

use crate::protocol::client::{ClientError, ConnectOptions, PageClient};
use crate::protocol::pagestream::{PrefetchPriority, Response, LATEST_LSN};
use crate::protocol::shard::{ShardLayout, ShardMap};
use driver::{Driver, DriverConfig, Poll, Transmit};
use lfc::{monotonic_ns, BufferTag, Lfc, RelTag, PAGE_SIZE};
use schedule::{ScheduleConfig, ScheduleCounts};
use state::PageRange;
use std::collections::HashMap;
use std::time::{Duration, Instant};

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
    /// How the page server ranks this prewarm's prefetches against backends' (`prewarm run
    /// --priority`): background by default, so a prewarm beside running queries takes what
    /// the sender has to spare instead of half of it. A background run also yields the
    /// compute's CPU to backends reading beside it (`yield_pages`); a foreground one does not.
    pub priority: PrefetchPriority,
    /// Pages in flight at most while backends read beside a background run (`prewarm run
    /// --yield-pages`, `driver::DEFAULT_YIELD_PAGES`); 0 never yields.
    pub yield_pages: usize,
    /// A sharded tenant's page servers (none listed: `connect`'s address is the only one).
    pub shards: ShardMap,
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
    /// Rounds in which the run yielded to backends reading beside it (`--yield-pages`).
    pub yielded_rounds: u64,
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

/// What every shard's run starts from.
struct RunStart<'a> {
    cfg: &'a PrewarmConfig,
    lfc: &'a Lfc,
    /// Relation sizes, asked of shard 0.
    sizes: &'a HashMap<RelTag, Option<u32>>,
    /// The worker daemon's port, when the run uses UDP prefetch.
    udp_port: Option<u16>,
    started_ns: u64,
}

/// One shard's part of a run: its connection and the driver of the pages it owns.
struct ShardRun {
    client: PageClient,
    driver: Driver,
    poll: Poll,
    shown_round: u64,
    /// The shard's report, made by its final check the moment its driver is done: a shard that
    /// finishes first stops repairing, so checked at the run's end its pages could be found
    /// evicted meanwhile (by the other shards' installs or the backends beside it) and the run
    /// called incomplete although every page was in when the shard ended (the simulator's
    /// `light` seeds 501, 2096 and others, once it ran a driver per shard).
    report: Option<PrewarmReport>,
}

/// Refills `lfc` with `pages` (hottest first). The blocking shell around `driver::Driver`, which
/// makes every decision: this connects, asks the relations' sizes, carries the driver's
/// messages, reads the clock and sleeps through its waits. A sharded tenant's plan is split by
/// owner (`protocol::shard`, each part in plan order), and each shard's part runs its own
/// driver over its own connection, all at once; relation sizes come from shard 0.
pub fn run_prewarm(
    cfg: &PrewarmConfig,
    lfc: &Lfc,
    pages: &[BufferTag],
) -> anyhow::Result<PrewarmReport> {
    let started_ns = monotonic_ns();
    let layout = cfg.shards.layout()?;
    let mut clients = cfg.shards.connect(&cfg.connect)?;
    let count = clients.len();
    // Before anything is read from or installed in the cache.
    for client in &clients {
        crate::compute::bind_cache(lfc, client)?;
    }
    let udp_port = udp_port(cfg, lfc);
    let sizes = relation_sizes(&mut clients[0], pages)?;
    let parts = split_plan(pages, layout);
    let start = RunStart {
        cfg,
        lfc,
        sizes: &sizes,
        udp_port,
        started_ns,
    };
    let mut runs = Vec::with_capacity(count);
    for (s, (client, part)) in clients.into_iter().zip(parts).enumerate() {
        runs.push(ShardRun::start(&start, (s, count), client, part)?);
    }
    let mut progress = Progress::new(pages.len() as u64, cfg.progress);
    loop {
        let mut all_done = true;
        let mut progressed = false;
        let mut wake_ns = u64::MAX;
        for (s, run) in runs.iter_mut().enumerate() {
            run.step(lfc)
                .map_err(|e| name_shard(s, count, &run.client, e))?;
            match run.poll {
                Poll::Done => {
                    if run.report.is_none() {
                        let check = run.driver.final_check(lfc, |_, _| {});
                        run.report = Some(run.driver.report(check, monotonic_ns()));
                    }
                    continue;
                }
                Poll::Wait { until_ns } if until_ns > monotonic_ns() => {
                    wake_ns = wake_ns.min(until_ns);
                }
                _ => progressed = true,
            }
            all_done = false;
        }
        show_progress(&mut runs, &mut progress, pages.len(), started_ns);
        if all_done {
            break;
        }
        if !progressed {
            std::thread::sleep(Duration::from_nanos(wake_ns.saturating_sub(monotonic_ns())));
        }
    }
    progress.finish();
    let mut reports = runs.into_iter().filter_map(|r| r.report);
    let first = reports.next().expect("at least one shard");
    Ok(reports.fold(first, merge_reports))
}

/// Updates the progress bar when any shard's driver finished a round since the last update.
fn show_progress(runs: &mut [ShardRun], progress: &mut Progress, total: usize, started_ns: u64) {
    if runs.iter().all(|r| r.driver.rounds() == r.shown_round) {
        return;
    }
    for r in runs.iter_mut() {
        r.shown_round = r.driver.rounds();
    }
    let elapsed = monotonic_ns().saturating_sub(started_ns) as f64 / 1e9;
    let done = runs.iter().map(|r| r.driver.done()).sum();
    let counts = runs.iter().fold(ScheduleCounts::default(), |mut c, r| {
        let d = r.driver.counts();
        c.retries += d.retries;
        c.via_tcp += d.via_tcp;
        c
    });
    progress.update(done, total, &counts, elapsed);
}

impl ShardRun {
    /// Registers shard `s` of `count` for UDP prefetch (when the run uses it) and starts its
    /// driver over `part`, the shard's pages in plan order. An error names the shard.
    fn start(
        run: &RunStart,
        (s, count): (usize, usize),
        mut client: PageClient,
        part: Vec<BufferTag>,
    ) -> anyhow::Result<ShardRun> {
        let (cfg, lfc) = (run.cfg, run.lfc);
        let config = DriverConfig {
            schedule: cfg.schedule,
            udp_port: run.udp_port,
            rate_bytes_per_s: shard_rate(cfg.rate_bytes_per_s, count),
            deadline_ns: cfg.deadline.map(|d| d.as_nanos() as u64),
            verify: client.page_verify(u64::MAX),
            yield_pages: match cfg.priority {
                PrefetchPriority::Background => cfg.yield_pages,
                PrefetchPriority::Foreground => 0,
            },
        };
        let mut driver = Driver::new(config, part, run.sizes, lfc, run.started_ns, monotonic_ns());
        if let Some(port) = driver.udp_port() {
            // The registration is a request and its answer: a round trip on this connection.
            let registering = monotonic_ns();
            match register_shard(&mut client, s, cfg, lfc, port) {
                Ok(true) => {
                    let registered = monotonic_ns();
                    driver.registered(registered - registering, registered);
                }
                Ok(false) => driver.udp_refused(),
                Err(e) => return Err(name_shard(s, count, &client, e)),
            }
        }
        let poll = driver.step(lfc, monotonic_ns());
        Ok(ShardRun {
            client,
            driver,
            poll,
            shown_round: 0,
            report: None,
        })
    }

    /// Moves this shard's run one step: sends what its driver queued, then steps a wait that is
    /// over or reads the response it awaits. Never sleeps (the caller sleeps when every shard
    /// waits), so one shard's wait does not hold up the others.
    fn step(&mut self, lfc: &Lfc) -> anyhow::Result<()> {
        transmit(&mut self.client, &mut self.driver)?;
        self.poll = match self.poll {
            Poll::Done => Poll::Done,
            Poll::Wait { until_ns } => {
                if until_ns > monotonic_ns() {
                    return Ok(());
                }
                self.driver.step(lfc, monotonic_ns())
            }
            Poll::AwaitResponse => receive(&mut self.client, &mut self.driver, lfc)?,
        };
        Ok(())
    }
}

/// Shard `s`'s error, naming the shard when there are several.
fn name_shard(s: usize, count: usize, client: &PageClient, e: anyhow::Error) -> anyhow::Error {
    if count == 1 {
        return e;
    }
    let addr = client
        .peer_addr()
        .map_or_else(|_| "address unknown".to_string(), |a| a.to_string());
    e.context(format!("page server shard {s}/{count} ({addr})"))
}

/// A run's plan split by the shard that owns each page, each part in plan order: one shard
/// driver's pages (the simulator splits its runs with this too).
pub fn split_plan(pages: &[BufferTag], layout: ShardLayout) -> Vec<Vec<BufferTag>> {
    let mut parts: Vec<Vec<BufferTag>> = vec![Vec::new(); layout.count()];
    for tag in pages {
        parts[layout.shard_of(tag)].push(*tag);
    }
    parts
}

/// One of `count` shard drivers' pace: the run's is shared among them (0, unpaced, stays 0).
pub fn shard_rate(rate_bytes_per_s: u64, count: usize) -> u64 {
    rate_bytes_per_s / count.max(1) as u64
}

/// The report of a run over several shards from theirs: counts add up, flags of any shard
/// hold for the run, and the rate is over the longest shard's time.
pub fn merge_reports(a: PrewarmReport, b: PrewarmReport) -> PrewarmReport {
    let elapsed_s = a.elapsed_s.max(b.elapsed_s);
    let fetched = a.via_udp_first
        + a.via_udp_retry
        + a.via_tcp
        + b.via_udp_first
        + b.via_udp_retry
        + b.via_tcp;
    PrewarmReport {
        pages: a.pages + b.pages,
        requested: a.requested + b.requested,
        present: a.present + b.present,
        via_udp_first: a.via_udp_first + b.via_udp_first,
        via_udp_retry: a.via_udp_retry + b.via_udp_retry,
        via_tcp: a.via_tcp + b.via_tcp,
        skipped_present: a.skipped_present + b.skipped_present,
        skipped_gone: a.skipped_gone + b.skipped_gone,
        retries: a.retries + b.retries,
        refetched: a.refetched + b.refetched,
        yielded_rounds: a.yielded_rounds + b.yielded_rounds,
        failed_verification: a.failed_verification + b.failed_verification,
        elapsed_s,
        mb_per_s: fetched as f64 * PAGE_SIZE as f64 / 1e6 / elapsed_s.max(1e-9),
        cache_full: a.cache_full || b.cache_full,
        deadline_hit: a.deadline_hit || b.deadline_hit,
        udp_fell_back_to_tcp: a.udp_fell_back_to_tcp || b.udp_fell_back_to_tcp,
        complete: a.complete && b.complete,
    }
}

/// The worker daemon's port, if prewarm is to use UDP and there is one to use
/// (`driver::udp_port`).
fn udp_port(cfg: &PrewarmConfig, lfc: &Lfc) -> Option<u16> {
    match driver::udp_port(cfg.prefetch_port, lfc, monotonic_ns()) {
        Some(udp_port) if cfg.udp => Some(udp_port),
        _ => {
            if cfg.udp {
                tracing::warn!(
                    lfc = %lfc.path().display(),
                    "no live worker daemon serves this LFC; prewarming over TCP"
                );
            }
            None
        }
    }
}

/// Registers the worker daemon on shard `s`'s connection and asks for the run's priority.
/// False when its page server does not speak the extension (its pages then come over TCP).
fn register_shard(
    client: &mut PageClient,
    s: usize,
    cfg: &PrewarmConfig,
    lfc: &Lfc,
    udp_port: u16,
) -> anyhow::Result<bool> {
    let path_mtu = client.prefetch_path_mtu();
    let target = || crate::compute::prefetch_target(lfc, udp_port, path_mtu);
    if !client.set_prefetch_target(target())? {
        tracing::warn!(
            server = %cfg.shards.shard_options(s, &cfg.connect).addr,
            "the page server does not support UDP prefetch; prewarming its pages over TCP"
        );
        return Ok(false);
    }
    if cfg.priority != PrefetchPriority::Foreground {
        if let Err(e) = client.set_prefetch_priority(cfg.priority) {
            // A server that predates the message closed the connection: carry on, on a new
            // one, at the priority every connection starts with.
            tracing::warn!(
                error = %e,
                "the page server does not rank prefetches; prewarming at foreground priority"
            );
            *client = PageClient::connect(&cfg.shards.shard_options(s, &cfg.connect))?;
            crate::compute::bind_cache(lfc, client)?;
            if !client.set_prefetch_target(target())? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Each relation's size, `None` for one that no longer exists.
fn relation_sizes(
    client: &mut PageClient,
    pages: &[BufferTag],
) -> Result<HashMap<RelTag, Option<u32>>, ClientError> {
    driver::relations(pages)
        .into_iter()
        .map(|rel| {
            let n = if client.exists(rel, LATEST_LSN)? {
                Some(client.nblocks(rel, LATEST_LSN)?)
            } else {
                None
            };
            Ok((rel, n))
        })
        .collect()
}

/// Sends what the driver queued, then flushes.
fn transmit(client: &mut PageClient, driver: &mut Driver) -> Result<(), ClientError> {
    let mut sent = false;
    while let Some(t) = driver.poll_transmit() {
        sent = true;
        match t {
            // not_modified_since covers the whole range: the newest modification.
            Transmit::Prefetch(r) => {
                client.send_prefetch(r.rel, r.first, r.n, LATEST_LSN, r.max_lwlsn)?
            }
            Transmit::GetPage {
                tag,
                not_modified_since,
            } => client.send_get_page(tag, LATEST_LSN, not_modified_since)?,
        }
    }
    if sent {
        client.flush()?;
    }
    Ok(())
}

/// Reads the next response and hands it to the driver.
fn receive(client: &mut PageClient, driver: &mut Driver, lfc: &Lfc) -> anyhow::Result<Poll> {
    let handled = match client.recv()? {
        Response::GetPage {
            rel, blkno, page, ..
        } => {
            let tag = rel.block(blkno);
            let response = driver::Response::Page { tag, page: &page };
            driver.on_response(lfc, response, monotonic_ns())?
        }
        Response::Error { message, .. } => {
            // Gone since the plan was made: nothing to install. The connection answers in
            // order, so this is the oldest GetPage's answer.
            let tag = driver
                .awaited()
                .ok_or_else(|| ClientError::Unexpected(format!("error {message}")))?;
            tracing::debug!(%tag, %message, "page not fetched");
            driver.on_response(lfc, driver::Response::Failed { tag }, monotonic_ns())?
        }
        other => return Err(ClientError::Unexpected(format!("{other:?}")).into()),
    };
    Ok(handled.next)
}
