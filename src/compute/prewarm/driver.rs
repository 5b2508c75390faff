//! A prewarm run as a sans-IO driver, in the style of quinn-proto and of `backend::driver`: the
//! whole decision of a refill — which pages are gone or already cached, the rounds of UDP
//! requests (built into Prefetch runs), probing the LFC for arrivals, retries (`Schedule`),
//! the fail-over to TCP when nothing ever arrives, stopping when the cache is full, pacing,
//! yielding to backends' reads, the TCP batches and the repair rounds, and the final report —
//! with `now` passed in and the messages to send returned (`poll_transmit`). The blocking shell
//! (`run_prewarm`) and the simulator both run this code; neither keeps a copy of it.
//!
//! Owns: every prewarm decision and constant. Reads and writes the shared LFC (not I/O:
//! memory); opens no socket, reads no clock, sleeps never.
//!
//! A run is driven as: `Driver::new` → `step` → `Poll`; after every call the caller sends what
//! `poll_transmit` returns. On `Poll::Wait` it waits (pages land in the LFC meanwhile) until
//! `until_ns` and calls `step` again; on `Poll::AwaitResponse` it reads the next GetPage
//! response and calls `on_response`; on `Poll::Done` it runs the `final_check`, then asks for
//! the `report`.

#[cfg(test)]
use super::schedule::STALL_PROBE_PAGES;
use super::schedule::{Schedule, ScheduleConfig, ScheduleCounts};
use super::PrewarmReport;
use crate::compute::backend::read_path::{group_runs, PrefetchRun};
use crate::protocol::page::{verify_page_as, Page, PageVerify};
use lfc::{BufferTag, InstallOutcome, Lfc, RelTag, PAGE_SIZE};
use std::collections::{HashMap, HashSet, VecDeque};

/// Pages per Prefetch request at most (a run of consecutive blocks).
pub const MAX_RANGE_PAGES: u16 = 256;
/// Pages sent per scheduling round.
pub const ROUND_PAGES: usize = 1024;
/// How long a round waits for arrivals when it has nothing to send.
pub const POLL_NS: u64 = 2_000_000;
/// GetPages in flight while fetching stragglers over TCP.
pub const TCP_DEPTH: usize = 64;
/// Final passes over pages that left the cache after arriving.
pub const REPAIR_ROUNDS: usize = 2;
/// GetPage answers refused as stale (the page was modified while it was fetched) that are
/// fetched again at once, per page of the plan: a page rewritten faster than a round trip is
/// left to its readers.
pub const STALE_REFETCHES_PER_PAGE: u64 = 1;
/// A round's arrival check stops at this many consecutive pages still missing that were
/// requested less than a smoothed arrival time ago: the server sends in request order, so the
/// rest are in flight behind them. Older missing pages (lost, or late) never stop it. Probing
/// the whole window (up to 8192 pages) every round cost the prewarm thread a millisecond a round.
pub const ARRIVAL_PROBE_RUN: usize = 256;
/// The least time without any UDP arrival before the run concludes that nothing will ever
/// arrive, so a slow first batch is not mistaken for a missing daemon.
pub const MIN_GIVE_UP_NS: u64 = 250_000_000;
/// First timeouts without any UDP arrival before that conclusion.
const GIVE_UP_TIMEOUTS: u64 = 3;
/// Pages the pacer may send above its average rate at once.
const PACING_BURST_PAGES: f64 = 64.0;
/// Pages in flight at most while backends read, by default (`prewarm run --yield-pages`): at
/// one round per `POLL_NS`, at most about 8k pages/s. `bench prewarm` (two scans beside a 1 GiB
/// background prewarm, Intel, 2 MiB pages; one run moves by ±0.1): 64 left the scans 0.66–0.86
/// of their speed alone (four runs, mean 0.73), 16 left them 0.68–0.91 (six, mean 0.80), 8
/// 0.65–0.92 (three, mean 0.81), with the prewarm about as fast in each (1270–1540 MB/s: it
/// refills at full speed once the reads stop). Those runs watched lookups, blind to the scans'
/// reads on TCP pipelining; counting every read (`Lfc::reads`), 16 brought in about 1.1k pages
/// during the scans instead of 21k–75k and left them 1.05–1.41 of their speed alone (four runs,
/// busy machine).
pub const DEFAULT_YIELD_PAGES: usize = 16;
/// How long after the last backend read seen the run keeps yielding; then its cap doubles
/// every round until the congestion window alone bounds it again.
pub const YIELD_HOLD_NS: u64 = 20_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriverConfig {
    pub schedule: ScheduleConfig,
    /// The worker daemon's UDP port, registered on the connection; `None`: everything over TCP.
    pub udp_port: Option<u16>,
    /// Pacing of requested pages, bytes per second (0 = unpaced).
    pub rate_bytes_per_s: u64,
    /// Longest run, from `started_ns`; the run stops (incomplete) at the first round after it.
    pub deadline_ns: Option<u64>,
    /// How the final check verifies pages: the cluster's checksums, or headers when it has
    /// none (`PageClient::page_verify`).
    pub verify: PageVerify,
    /// While backends read pages (the LFC's `reads` move), pages in flight at most; 0 never
    /// yields (a foreground prewarm).
    pub yield_pages: usize,
}

/// A message for the page server, on prewarm's TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmit {
    /// A fire-and-forget Prefetch of a run at the latest LSN (no response).
    Prefetch(PrefetchRun),
    /// A GetPage at the latest LSN (pipelined; its response is awaited).
    GetPage {
        tag: BufferTag,
        not_modified_since: u64,
    },
}

/// What the caller does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// Wait (for arrivals in the LFC) until `until_ns`, then `step`.
    Wait { until_ns: u64 },
    /// Read the next GetPage response on the connection, then `on_response`.
    AwaitResponse,
    /// The run is over: `final_check`, then `report`.
    Done,
}

/// What the final check found: pages of the plan present and verified, present but not
/// verifying, and whether pages are missing from a cache that is full (evicted to make room).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FinalCheck {
    pub present: u64,
    pub failed_verification: u64,
    pub evicted_from_full_cache: bool,
}

/// A GetPage response the caller read from the connection.
#[derive(Debug, Clone, Copy)]
pub enum Response<'p> {
    Page {
        tag: BufferTag,
        page: &'p Page,
    },
    /// The server answered an error: the page is gone since the plan was made.
    Failed {
        tag: BufferTag,
    },
}

/// What a response did: the next step, and whether its page went into the LFC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handled {
    pub next: Poll,
    pub installed: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DriverError {
    #[error("the page server answered for {0}, which no GetPage in flight asked for")]
    Unrequested(BufferTag),
}

/// Token bucket for `--rate`, in pages.
#[derive(Debug)]
struct Pacer {
    rate_pages_per_s: f64,
    started_ns: u64,
    granted: f64,
}

impl Pacer {
    fn allowance(&mut self, now_ns: u64, want: usize) -> usize {
        if self.rate_pages_per_s <= 0.0 {
            return want;
        }
        let elapsed_s = now_ns.saturating_sub(self.started_ns) as f64 / 1e9;
        let budget = elapsed_s * self.rate_pages_per_s + PACING_BURST_PAGES - self.granted;
        let n = (budget.max(0.0) as usize).min(want);
        self.granted += n as f64;
        n
    }
}

/// Yielding to foreground reads (ARCHITECTURE §2). Beside scans, what runs short is the compute's
/// CPU, not the page server's sender: the worker daemon receives and installs every prewarm
/// page on the cores the backends read on. So while backends read (any read counted in the
/// LFC since the last round, `Lfc::reads`, on every read path), the run keeps at most `pages`
/// in flight and fetches at most that many per TCP batch, one batch a round; `YIELD_HOLD_NS`
/// after the last read it doubles the cap each round until it no longer binds. A run with no
/// reader beside it never yields. The signal was the LFC's lookups until `bench prewarm` showed
/// scans on TCP pipelining (they take their pages from the GetPage answers without a lookup)
/// invisible to it: the prewarm then ran at full speed beside them.
#[derive(Debug)]
struct Yield {
    pages: usize,
    last_reads: u64,
    last_read_ns: u64,
    /// The in-flight cap now; `usize::MAX`: none.
    cap: usize,
    /// Rounds run under a cap, for the report.
    rounds: u64,
}

impl Yield {
    fn new(pages: usize, reads: u64) -> Yield {
        Yield {
            pages,
            last_reads: reads,
            last_read_ns: 0,
            cap: usize::MAX,
            rounds: 0,
        }
    }

    /// The cap for a round at `now_ns`, from the LFC's read count now; `window_pages` is the
    /// largest window, above which a cap no longer binds.
    fn cap(&mut self, reads: u64, now_ns: u64, window_pages: usize) -> usize {
        if self.pages == 0 {
            return usize::MAX;
        }
        if reads != self.last_reads {
            self.last_reads = reads;
            self.last_read_ns = now_ns;
            self.cap = self.pages;
        } else if self.cap != usize::MAX
            && now_ns.saturating_sub(self.last_read_ns) >= YIELD_HOLD_NS
        {
            self.cap = self.cap.saturating_mul(2);
            if self.cap >= window_pages {
                self.cap = usize::MAX;
            }
        }
        if self.yielding() {
            self.rounds += 1;
        }
        self.cap
    }

    fn yielding(&self) -> bool {
        self.cap != usize::MAX
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The main loop: rounds of arrivals, UDP requests and TCP batches.
    Rounds,
    /// A TCP batch of the main loop is out; its pages are done when its last reply is in.
    Batch,
    /// Repair round `n` (1-based) is being fetched, a chunk at a time.
    Repair(usize),
    Done,
}

/// The relations of `pages`, first appearance first: the shell asks the page server for each
/// one's size (`Exists`, then `Nblocks`) and passes the answers to `Driver::new`.
pub fn relations(pages: &[BufferTag]) -> Vec<RelTag> {
    let mut seen = HashSet::new();
    pages
        .iter()
        .map(|t| t.rel)
        .filter(|r| seen.insert(*r))
        .collect()
}

/// The worker daemon's UDP port to prefetch to: the one given (`--prefetch-port`), else the
/// port of the live daemon registered in the LFC header; `None`: prewarm goes over TCP.
pub fn udp_port(given: Option<u16>, lfc: &Lfc, now_ns: u64) -> Option<u16> {
    given.or_else(|| {
        lfc.daemon()
            .filter(|d| d.is_live(now_ns))
            .map(|d| d.addr.port())
    })
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

/// One prewarm run (see the module docs for how it is driven).
#[derive(Debug)]
pub struct Driver {
    config: DriverConfig,
    pages: Vec<BufferTag>,
    /// Whether each page existed when the plan was made (its relation, and the block in it).
    exists: Vec<bool>,
    sched: Schedule,
    pacer: Pacer,
    yielding: Yield,
    phase: Phase,
    started_ns: u64,
    give_up_on_udp_ns: u64,
    transmits: VecDeque<Transmit>,
    /// GetPages sent and not answered, oldest first: (page index, not_modified_since).
    fetching: VecDeque<(usize, u64)>,
    /// The main loop's TCP batch, done when its last reply is in.
    batch: Vec<usize>,
    /// Pages of the repair round in progress not requested yet.
    repair_queue: VecDeque<usize>,
    arrived: Vec<usize>,
    rounds: u64,
    refetched: u64,
    /// GetPage answers refused as stale and fetched again (at most `STALE_REFETCHES_PER_PAGE`
    /// times the plan's pages).
    stale_refetched: u64,
    cache_full: bool,
    deadline_hit: bool,
    fell_back: bool,
}

impl Driver {
    /// A run over `pages` (hottest first, no repeats: `prewarm::plan`). `sizes` holds each
    /// relation's block count, `None` when it does not exist (a relation missing from it is
    /// taken as gone). `started_ns` is when the run began (its deadline and elapsed time count
    /// from it), `now_ns` when requesting starts (pacing counts from it, or from `registered`).
    pub fn new(
        mut config: DriverConfig,
        pages: Vec<BufferTag>,
        sizes: &HashMap<RelTag, Option<u32>>,
        lfc: &Lfc,
        started_ns: u64,
        now_ns: u64,
    ) -> Self {
        let mut sched = Schedule::new(pages.len(), config.schedule);
        // Pages of relations that no longer exist, or beyond their current end, are gone.
        let exists: Vec<bool> = pages
            .iter()
            .map(|t| {
                sizes
                    .get(&t.rel)
                    .copied()
                    .flatten()
                    .is_some_and(|n| t.blkno < n)
            })
            .collect();
        for (i, tag) in pages.iter().enumerate() {
            if !exists[i] {
                sched.skip_gone(i);
            } else if lfc.contains(tag) {
                sched.skip_present(i);
            }
        }
        // A run that one TCP batch fetches whole takes one round trip over TCP, which UDP cannot
        // beat (its pages come a round trip after their request too), while a page it loses
        // costs a timeout more: in the simulator, runs of a few dozen pages over lossy links
        // took two to three times as long as over TCP alone.
        // Decided before the caller registers the daemon (`udp_port`): such a run never waits
        // for a registration's round trip either.
        let small = pages.len() - sched.done() <= TCP_DEPTH;
        if small {
            config.udp_port = None;
        }
        if config.udp_port.is_none() {
            sched.fail_over_to_tcp();
        }
        let give_up_on_udp_ns = (GIVE_UP_TIMEOUTS * sched.timeout_ns(0)).max(MIN_GIVE_UP_NS);
        Driver {
            pacer: Pacer {
                rate_pages_per_s: config.rate_bytes_per_s as f64 / PAGE_SIZE as f64,
                started_ns: now_ns,
                granted: 0.0,
            },
            yielding: Yield::new(config.yield_pages, lfc.reads()),
            config,
            pages,
            exists,
            sched,
            phase: Phase::Rounds,
            started_ns,
            give_up_on_udp_ns,
            transmits: VecDeque::new(),
            fetching: VecDeque::new(),
            batch: Vec::with_capacity(ROUND_PAGES),
            repair_queue: VecDeque::new(),
            arrived: Vec::new(),
            rounds: 0,
            refetched: 0,
            stale_refetched: 0,
            cache_full: false,
            deadline_hit: false,
            fell_back: false,
        }
    }

    /// The daemon's port when the run requests pages by UDP: a port was given and TCP cannot
    /// take the run in one batch. Only then does the caller register the daemon on the run's
    /// connection and report how that went (`registered` or `udp_refused`) before stepping.
    pub fn udp_port(&self) -> Option<u16> {
        self.config.udp_port
    }

    /// The daemon was registered on the run's connection, a request and its answer `rtt_ns`
    /// long: that round trip bounds the first UDP timeout (`Schedule::observe_tcp_rtt`).
    /// Requesting (and pacing) starts at `now_ns`.
    pub fn registered(&mut self, rtt_ns: u64, now_ns: u64) {
        self.sched.observe_tcp_rtt(rtt_ns);
        self.pacer.started_ns = now_ns;
    }

    /// The page server does not speak the extension: the run goes over TCP.
    pub fn udp_refused(&mut self) {
        self.config.udp_port = None;
        self.sched.fail_over_to_tcp();
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn pages(&self) -> &[BufferTag] {
        &self.pages
    }

    /// Whether page `i` of the plan existed when the plan was made.
    pub fn exists(&self, i: usize) -> bool {
        self.exists[i]
    }

    /// Pages settled so far (arrived, fetched or skipped), for progress.
    pub fn done(&self) -> usize {
        self.sched.done()
    }

    pub fn counts(&self) -> ScheduleCounts {
        self.sched.counts()
    }

    /// Main-loop rounds run so far (progress is shown once a round).
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// The oldest GetPage not answered yet: what an in-order connection answers next.
    pub fn awaited(&self) -> Option<BufferTag> {
        self.fetching.front().map(|&(i, _)| self.pages[i])
    }

    /// Runs the run forward: at the start and when a `Poll::Wait` is over.
    pub fn step(&mut self, lfc: &Lfc, now_ns: u64) -> Poll {
        match self.phase {
            Phase::Rounds => self.round(lfc, now_ns),
            Phase::Batch | Phase::Repair(_) => Poll::AwaitResponse,
            Phase::Done => Poll::Done,
        }
    }

    /// One round of the main loop: arrivals, fail-over, cache-full, UDP requests, a TCP batch.
    fn round(&mut self, lfc: &Lfc, now_ns: u64) -> Poll {
        if self.sched.is_complete() {
            return self.repair(lfc);
        }
        if self
            .config
            .deadline_ns
            .is_some_and(|d| now_ns.saturating_sub(self.started_ns) > d)
        {
            self.deadline_hit = true;
            return self.repair(lfc);
        }
        self.rounds += 1;
        self.take_arrivals(lfc, now_ns);
        self.give_up_on_udp(now_ns);
        // Stop bringing in new pages once the cache is full: evicting would push out pages that
        // are already cached (and, the state being hottest first, hotter than the rest).
        if !self.cache_full && cache_is_full(lfc, self.sched.in_flight()) {
            self.cache_full = true;
            self.sched.stop_new_requests();
        }
        let cap = self
            .yielding
            .cap(lfc.reads(), now_ns, self.config.schedule.window_pages);
        self.sched.limit_in_flight(cap);
        // Timed-out pages go to this round's TCP batch while it has room.
        self.sched.set_tcp_room(TCP_DEPTH.min(cap));
        let want = self.pacer.allowance(now_ns, ROUND_PAGES);
        self.sched.next_requests(now_ns, want, &mut self.batch);
        // What the pacer granted and UDP did not use (it gets no new pages while stalled) is
        // TCP's to take new pages with.
        let left = want - self.batch.len();
        self.queue_prefetches(lfc);
        self.sched
            .take_tcp(TCP_DEPTH.min(cap), left, now_ns, &mut self.batch);
        if !self.batch.is_empty() {
            for k in 0..self.batch.len() {
                self.queue_get_page(lfc, self.batch[k]);
            }
            self.phase = Phase::Batch;
            return Poll::AwaitResponse;
        }
        if self.cache_full && self.sched.in_flight() == 0 {
            return self.repair(lfc);
        }
        Poll::Wait {
            until_ns: now_ns + POLL_NS,
        }
    }

    /// Arrivals, oldest request first, probing the LFC only as far as `ARRIVAL_PROBE_RUN` says.
    fn take_arrivals(&mut self, lfc: &Lfc, now_ns: u64) {
        self.arrived.clear();
        let in_flight_for = self.sched.srtt_ns().unwrap_or(0);
        let mut missing_run = 0;
        for (i, at) in self.sched.requested_at() {
            if lfc.contains(&self.pages[i]) {
                self.arrived.push(i);
                missing_run = 0;
            } else if now_ns.saturating_sub(at) < in_flight_for {
                missing_run += 1;
                if missing_run >= ARRIVAL_PROBE_RUN {
                    break;
                }
            }
        }
        for &i in &self.arrived {
            self.sched.on_arrived(i, now_ns);
        }
    }

    /// Nothing ever arrived within a few timeouts: no daemon, or UDP blocked. Finish over TCP.
    fn give_up_on_udp(&mut self, now_ns: u64) {
        if self.config.udp_port.is_some()
            && !self.sched.any_udp_arrival()
            && !self.fell_back
            && self.sched.in_flight() > 0
            && now_ns.saturating_sub(self.started_ns) > self.give_up_on_udp_ns
        {
            tracing::warn!(
                port = self.config.udp_port.unwrap_or(0),
                "no prefetched page arrived; is the worker daemon running on this port? finishing over TCP"
            );
            self.fell_back = true;
            self.sched.fail_over_to_tcp();
        }
    }

    /// The round's UDP requests as few Prefetch messages as their runs allow, each with the
    /// highest last-written LSN of its pages.
    fn queue_prefetches(&mut self, lfc: &Lfc) {
        let (pages, transmits) = (&self.pages, &mut self.transmits);
        let batch = self.batch.iter().map(|&i| (pages[i], lfc.lwlsn(&pages[i])));
        group_runs(batch, MAX_RANGE_PAGES, |r| {
            transmits.push_back(Transmit::Prefetch(r))
        });
    }

    /// A GetPage with `not_modified_since` the page's last-written LSN now, so that what comes
    /// back is installed under the lwlsn rule.
    fn queue_get_page(&mut self, lfc: &Lfc, i: usize) {
        let tag = self.pages[i];
        let not_modified_since = lfc.lwlsn(&tag);
        self.fetching.push_back((i, not_modified_since));
        self.transmits.push_back(Transmit::GetPage {
            tag,
            not_modified_since,
        });
    }

    /// A GetPage response (in any order across connections). Installs its page under the lwlsn
    /// rule: one already present (arrived late by UDP) or stale is not installed.
    pub fn on_response(
        &mut self,
        lfc: &Lfc,
        response: Response<'_>,
        now_ns: u64,
    ) -> Result<Handled, DriverError> {
        let tag = match response {
            Response::Page { tag, .. } | Response::Failed { tag } => tag,
        };
        let pos = self
            .fetching
            .iter()
            .position(|&(i, _)| self.pages[i] == tag)
            .ok_or(DriverError::Unrequested(tag))?;
        let Some((i, not_modified_since)) = self.fetching.remove(pos) else {
            return Err(DriverError::Unrequested(tag));
        };
        let outcome = match response {
            Response::Page { page, .. } => {
                Some(lfc.install_prefetched(&tag, not_modified_since, page))
            }
            Response::Failed { .. } => None,
        };
        let installed = outcome == Some(InstallOutcome::Installed);
        if outcome == Some(InstallOutcome::Stale)
            && self.stale_refetched < STALE_REFETCHES_PER_PAGE * self.pages.len() as u64
        {
            // Modified while it was fetched: the answer may predate the change, so the cache
            // refused it; the page still exists, so it is fetched again under the new lwlsn. In
            // the simulator a write landing during the last repair round's GetPage left the
            // run one page short, reported incomplete.
            self.stale_refetched += 1;
            self.queue_get_page(lfc, i);
            return Ok(Handled {
                next: Poll::AwaitResponse,
                installed,
            });
        }
        let next = if self.fetching.is_empty() {
            self.fetched(lfc, now_ns)
        } else {
            Poll::AwaitResponse
        };
        Ok(Handled { next, installed })
    }

    /// The last reply of a TCP batch is in.
    fn fetched(&mut self, lfc: &Lfc, now_ns: u64) -> Poll {
        match self.phase {
            Phase::Batch => {
                for k in 0..self.batch.len() {
                    self.sched.on_tcp_done(self.batch[k]);
                }
                self.batch.clear();
                self.phase = Phase::Rounds;
                if self.yielding.yielding() {
                    // Batch after batch back to back would take the CPU the yield leaves to
                    // the backends (prewarm installs TCP pages itself): one a round.
                    return Poll::Wait {
                        until_ns: now_ns + POLL_NS,
                    };
                }
                self.round(lfc, now_ns)
            }
            Phase::Repair(_) if !self.repair_queue.is_empty() => self.repair_chunk(lfc),
            Phase::Repair(_) => self.repair(lfc),
            Phase::Rounds | Phase::Done => Poll::Done,
        }
    }

    /// After the main loop: a page can leave the cache after it arrived (another process's
    /// eviction, a modification dropping it), so what is missing is fetched again over TCP, a
    /// bounded number of rounds. Not when the cache is full (it would evict) or time is up.
    fn repair(&mut self, lfc: &Lfc) -> Poll {
        let done_rounds = match self.phase {
            Phase::Repair(n) => n,
            _ => 0,
        };
        if done_rounds >= REPAIR_ROUNDS || self.cache_full || self.deadline_hit {
            self.phase = Phase::Done;
            return Poll::Done;
        }
        self.repair_queue = (0..self.pages.len())
            .filter(|&i| self.exists[i] && !lfc.contains(&self.pages[i]))
            .collect();
        if self.repair_queue.is_empty() {
            self.phase = Phase::Done;
            return Poll::Done;
        }
        if cache_is_full(lfc, 0) {
            // The pages that left made room for others: fetching them again would evict
            // others in turn (in a small cache, this plan's own), round after round. The plan
            // does not fit, as when the main loop finds the cache full.
            self.cache_full = true;
            self.repair_queue.clear();
            self.phase = Phase::Done;
            return Poll::Done;
        }
        tracing::debug!(
            missing = self.repair_queue.len(),
            "re-fetching pages that left the cache"
        );
        self.refetched += self.repair_queue.len() as u64;
        self.phase = Phase::Repair(done_rounds + 1);
        self.repair_chunk(lfc)
    }

    fn repair_chunk(&mut self, lfc: &Lfc) -> Poll {
        for _ in 0..TCP_DEPTH {
            let Some(i) = self.repair_queue.pop_front() else {
                break;
            };
            self.queue_get_page(lfc, i);
        }
        Poll::AwaitResponse
    }

    /// The final check, once `Poll::Done`: every page of the plan that exists must be in the
    /// LFC and verify. `inspect` sees every page read: its lookups count as uses for eviction,
    /// so a caller that checks the pages itself (the simulator) must not look them up a second
    /// time (that made them look hotter than after a real run).
    pub fn final_check(&self, lfc: &Lfc, mut inspect: impl FnMut(&BufferTag, &Page)) -> FinalCheck {
        let mut check = FinalCheck::default();
        let mut page = [0u8; PAGE_SIZE];
        for (i, tag) in self.pages.iter().enumerate() {
            if self.exists[i] && lfc.lookup(tag, &mut page).is_some() {
                inspect(tag, &page);
                if verify_page_as(&page, tag.blkno, self.config.verify).is_ok() {
                    check.present += 1;
                } else {
                    check.failed_verification += 1;
                }
            }
        }
        // A page missing from a full cache was evicted for others' pages after the last repair
        // round looked: the plan did not fit beside them, as when a round finds the cache full.
        // In the simulator backends beside a prewarm filled a 116-page cache after its last
        // repair round, and the run reported itself incomplete.
        let existing = self.exists.iter().filter(|&&e| e).count() as u64;
        check.evicted_from_full_cache =
            check.present + check.failed_verification < existing && cache_is_full(lfc, 0);
        check
    }

    /// The outcome, from the final check and the time after it (the run's elapsed time
    /// includes the check, as it always has).
    pub fn report(&self, check: FinalCheck, now_ns: u64) -> PrewarmReport {
        let counts = self.sched.counts();
        let elapsed = now_ns.saturating_sub(self.started_ns) as f64 / 1e9;
        let fetched = counts.via_udp_first + counts.via_udp_retry + counts.via_tcp;
        let pages = self.pages.len() as u64;
        PrewarmReport {
            pages,
            requested: counts.requested,
            present: check.present,
            via_udp_first: counts.via_udp_first,
            via_udp_retry: counts.via_udp_retry,
            via_tcp: counts.via_tcp,
            skipped_present: counts.skipped_present,
            skipped_gone: counts.skipped_gone,
            retries: counts.retries,
            refetched: self.refetched,
            yielded_rounds: self.yielding.rounds,
            failed_verification: check.failed_verification,
            elapsed_s: elapsed,
            mb_per_s: fetched as f64 * PAGE_SIZE as f64 / 1e6 / elapsed.max(1e-9),
            cache_full: self.cache_full || check.evicted_from_full_cache,
            deadline_hit: self.deadline_hit,
            // Whether or not the early give-up fired, a run where nothing came by UDP says so.
            udp_fell_back_to_tcp: self.fell_back
                || (self.config.udp_port.is_some()
                    && !self.sched.any_udp_arrival()
                    && counts.via_tcp > 0),
            complete: check.present + counts.skipped_gone == pages
                && check.failed_verification == 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::page::synthetic_page;
    use crate::protocol::page::synthetic_rel;

    use crate::compute::test_support::{fixture, Fixture, MS, T0};

    fn config(udp_port: Option<u16>) -> DriverConfig {
        DriverConfig {
            schedule: ScheduleConfig::default(),
            udp_port,
            rate_bytes_per_s: 0,
            deadline_ns: None,
            verify: PageVerify::Checksums,
            yield_pages: 0,
        }
    }

    /// Blocks `0..n` of relation 0 (which has `size` blocks).
    fn driver(f: &Fixture, config: DriverConfig, n: u32, size: u32) -> Driver {
        let rel = synthetic_rel(0);
        let pages = (0..n).map(|b| rel.block(b)).collect();
        let sizes = HashMap::from([(rel, Some(size))]);
        Driver::new(config, pages, &sizes, &f.lfc, T0, T0)
    }

    fn drain(d: &mut Driver) -> Vec<Transmit> {
        std::iter::from_fn(|| d.poll_transmit()).collect()
    }

    /// Answers every GetPage queued, as an in-order connection would; returns the last poll.
    fn answer_all(f: &Fixture, d: &mut Driver, mut poll: Poll, now: u64) -> Poll {
        while poll == Poll::AwaitResponse {
            let ts = drain(d);
            for t in ts {
                let Transmit::GetPage { tag, .. } = t else {
                    continue;
                };
                let page = synthetic_page(tag, 16);
                let response = Response::Page { tag, page: &page };
                poll = d.on_response(&f.lfc, response, now).unwrap().next;
            }
        }
        poll
    }

    #[test]
    fn without_udp_everything_goes_over_tcp_in_batches_and_gone_pages_are_skipped() {
        let f = fixture(4096);
        let mut d = driver(&f, config(None), 150, 140);
        let poll = d.step(&f.lfc, T0);
        assert_eq!(poll, Poll::AwaitResponse);
        let first = drain(&mut d);
        assert_eq!(first.len(), TCP_DEPTH, "one batch of TCP_DEPTH GetPages");
        let tag = synthetic_rel(0).block(0);
        let page = synthetic_page(tag, 16);
        let handled = d
            .on_response(&f.lfc, Response::Page { tag, page: &page }, T0)
            .unwrap();
        assert!(handled.installed);
        assert_eq!(handled.next, Poll::AwaitResponse);
        for t in &first[1..] {
            let Transmit::GetPage { tag, .. } = *t else {
                panic!("{t:?}")
            };
            d.on_response(&f.lfc, Response::Failed { tag }, T0).unwrap();
        }
        let poll = answer_all(&f, &mut d, Poll::AwaitResponse, T0);
        assert_eq!(poll, Poll::Done);
        let r = d.report(d.final_check(&f.lfc, |_, _| {}), T0 + MS);
        assert_eq!((r.pages, r.skipped_gone, r.via_tcp), (150, 10, 140));
        // The pages answered with an error were fetched again by the repair rounds.
        assert_eq!(r.refetched, TCP_DEPTH as u64 - 1);
        assert!(r.complete && !r.udp_fell_back_to_tcp, "{r:?}");
    }

    /// A page modified while its GetPage was in flight: the answer may predate the change, so
    /// the cache refuses it, and the page is fetched again under its new last-written LSN.
    #[test]
    fn a_page_modified_while_fetched_is_fetched_again_and_the_run_completes() {
        let f = fixture(4096);
        let mut d = driver(&f, config(None), 4, 4);
        assert_eq!(d.step(&f.lfc, T0), Poll::AwaitResponse);
        let sent = drain(&mut d);
        assert_eq!(sent.len(), 4);
        let tag = synthetic_rel(0).block(0);
        // A backend writes block 0 (LSN 100) and lets its page go.
        f.lfc.set_lwlsn(&tag, 100).unwrap();
        let old = synthetic_page(tag, 16);
        let h = d
            .on_response(&f.lfc, Response::Page { tag, page: &old }, T0)
            .unwrap();
        assert!(!h.installed, "a page that may predate the write is refused");
        assert_eq!(
            drain(&mut d),
            [Transmit::GetPage {
                tag,
                not_modified_since: 100
            }]
        );
        for t in &sent[1..] {
            let Transmit::GetPage { tag, .. } = *t else {
                panic!("{t:?}")
            };
            let page = synthetic_page(tag, 16);
            d.on_response(&f.lfc, Response::Page { tag, page: &page }, T0)
                .unwrap();
        }
        let new = synthetic_page(tag, 100);
        let h = d
            .on_response(&f.lfc, Response::Page { tag, page: &new }, T0)
            .unwrap();
        assert!(h.installed);
        let poll = answer_all(&f, &mut d, h.next, T0);
        assert_eq!(poll, Poll::Done);
        let r = d.report(d.final_check(&f.lfc, |_, _| {}), T0 + MS);
        assert!(r.complete && r.present == 4, "{r:?}");
    }

    #[test]
    fn a_run_that_one_tcp_batch_takes_whole_goes_over_tcp() {
        let f = fixture(4096);
        let mut d = driver(&f, config(Some(7000)), TCP_DEPTH as u32, TCP_DEPTH as u32);
        assert_eq!(d.step(&f.lfc, T0), Poll::AwaitResponse);
        let ts = drain(&mut d);
        assert_eq!(get_pages(&ts), (0..TCP_DEPTH as u32).collect::<Vec<_>>());
        assert_eq!(answer_all_drained(&f, &mut d, &ts, T0), Poll::Done);
        let r = d.report(d.final_check(&f.lfc, |_, _| {}), T0 + MS);
        assert!(r.complete && r.requested == 0, "{r:?}");
        assert_eq!(r.via_tcp, TCP_DEPTH as u64);
    }

    /// Answers the GetPages in `ts` (already drained); returns the last poll.
    fn answer_all_drained(f: &Fixture, d: &mut Driver, ts: &[Transmit], now: u64) -> Poll {
        let mut poll = Poll::AwaitResponse;
        for t in ts {
            let Transmit::GetPage { tag, .. } = *t else {
                continue;
            };
            let page = synthetic_page(tag, 16);
            poll = d
                .on_response(&f.lfc, Response::Page { tag, page: &page }, now)
                .unwrap()
                .next;
        }
        poll
    }

    #[test]
    fn udp_requests_are_runs_and_arrivals_finish_the_run() {
        let f = fixture(4096);
        let mut d = driver(&f, config(Some(7000)), 300, 300);
        assert_eq!(d.step(&f.lfc, T0), Poll::AwaitResponse);
        let ts = drain(&mut d);
        // The window starts at its floor (256 pages): one full run of 256. The 44 pages it
        // holds back are all that is left and fit in a TCP batch: TCP takes them meanwhile.
        assert_eq!(
            ts[0],
            Transmit::Prefetch(PrefetchRun {
                rel: synthetic_rel(0),
                first: 0,
                n: 256,
                max_lwlsn: f.lfc.lwlsn(&synthetic_rel(0).block(0)),
            })
        );
        assert_eq!(get_pages(&ts), (256..300).collect::<Vec<_>>());
        let poll = answer_all_drained(&f, &mut d, &ts, T0);
        assert!(matches!(poll, Poll::Wait { .. }), "{poll:?}");
        assert!(drain(&mut d).is_empty());
        let mut now = T0;
        for _ in 0..10 {
            for tag in d.pages().to_vec() {
                let _ = f.lfc.install_prefetched(&tag, 0, &synthetic_page(tag, 16));
            }
            now += POLL_NS;
            match d.step(&f.lfc, now) {
                Poll::Done => break,
                Poll::Wait { until_ns } => assert_eq!(until_ns, now + POLL_NS),
                Poll::AwaitResponse => panic!("nothing should go over TCP"),
            }
            drain(&mut d);
        }
        let r = d.report(d.final_check(&f.lfc, |_, _| {}), now);
        assert!(r.complete, "{r:?}");
        assert_eq!(r.via_udp_first + r.skipped_present, 256, "{r:?}");
        assert_eq!(r.via_tcp, 44);
    }

    /// The blocks of the GetPages in `ts`.
    fn get_pages(ts: &[Transmit]) -> Vec<u32> {
        ts.iter()
            .filter_map(|t| match t {
                Transmit::GetPage { tag, .. } => Some(tag.blkno),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn when_nothing_arrives_tcp_takes_over_at_the_first_timeout() {
        let f = fixture(4096);
        let mut cfg = config(Some(7000));
        // Enough attempts that retries alone would outlast the give-up time.
        cfg.schedule.max_udp_attempts = 10;
        // More than the window (256 pages at the start).
        let pages = 1000;
        let mut d = driver(&f, cfg, pages, pages);
        let mut poll = d.step(&f.lfc, T0);
        let mut now = T0;
        // When each GetPage left.
        let mut fetched_at = Vec::new();
        while poll != Poll::Done {
            if poll == Poll::AwaitResponse {
                let ts = drain(&mut d);
                for t in ts {
                    let Transmit::GetPage { tag, .. } = t else {
                        continue;
                    };
                    fetched_at.push(now - T0);
                    let page = synthetic_page(tag, 16);
                    poll = d
                        .on_response(&f.lfc, Response::Page { tag, page: &page }, now)
                        .unwrap()
                        .next;
                }
                continue;
            }
            drain(&mut d);
            now += POLL_NS;
            poll = d.step(&f.lfc, now);
        }
        let first_timeout = ScheduleConfig::default().initial_timeout_ns;
        assert!(fetched_at.iter().all(|&t| t >= first_timeout));
        // At the first timeout UDP has stalled: TCP fetches what timed out and every page not
        // requested yet, batch after batch; UDP keeps a probe in flight, which times out too.
        let at_first_timeout = fetched_at.iter().filter(|&&t| t == first_timeout).count();
        assert!(
            at_first_timeout >= pages as usize - STALL_PROBE_PAGES,
            "{at_first_timeout} of {pages}"
        );
        assert!(now - T0 < MIN_GIVE_UP_NS, "took {} ns", now - T0);
        let r = d.report(d.final_check(&f.lfc, |_, _| {}), now);
        // Nothing came by UDP: the report says so, although the give-up never fired.
        assert!(r.complete && r.udp_fell_back_to_tcp, "{r:?}");
        assert_eq!(r.via_tcp, u64::from(pages));
    }

    /// Under 10 % loss UDP carries the run: every tenth page is lost on its first attempt and
    /// is retried by UDP or fetched over TCP (when the TCP path has room, a timed-out page goes
    /// there at once); UDP never stalls, so TCP takes no page that was not lost. Time is passed in, so the split is exact here;
    /// `tests/prewarm.rs` runs the same under a real daemon, where a daemon descheduled for
    /// a stall's length rightly hands pages to TCP.
    #[test]
    fn under_loss_udp_carries_the_run_and_retries_what_was_lost() {
        let f = fixture(4096);
        let pages = 2000u32;
        let mut d = driver(&f, config(Some(7000)), pages, pages);
        let mut attempts = vec![0u32; pages as usize];
        let mut pending: Vec<Transmit> = Vec::new();
        let mut now = T0;
        let mut poll = d.step(&f.lfc, now);
        for _ in 0..10_000 {
            if poll == Poll::Done {
                break;
            }
            poll = answer_all(&f, &mut d, poll, now);
            // What was requested last round arrives one round later, less the lost.
            for t in std::mem::take(&mut pending) {
                let Transmit::Prefetch(r) = t else { continue };
                for b in r.first..r.first + u32::from(r.n) {
                    attempts[b as usize] += 1;
                    if b % 10 == 3 && attempts[b as usize] == 1 {
                        continue;
                    }
                    let tag = r.rel.block(b);
                    let _ = f.lfc.install_prefetched(&tag, 0, &synthetic_page(tag, 16));
                }
            }
            pending = drain(&mut d);
            if poll == Poll::Done {
                break;
            }
            now += POLL_NS;
            poll = d.step(&f.lfc, now);
        }
        assert_eq!(poll, Poll::Done);
        let r = d.report(d.final_check(&f.lfc, |_, _| {}), now);
        assert!(r.complete && !r.udp_fell_back_to_tcp, "{r:?}");
        // Every page not lost arrives on its first attempt (no timeout fires early), and only
        // the lost ones take a second path.
        let lost = u64::from(pages / 10);
        assert_eq!(r.via_udp_first, u64::from(pages) - lost, "{r:?}");
        assert_eq!(r.via_udp_retry + r.via_tcp, lost, "{r:?}");
        assert!(r.retries + r.via_tcp >= lost, "{r:?}");
    }

    #[test]
    fn pacing_grants_the_burst_then_the_rate() {
        let f = fixture(4096);
        let mut cfg = config(Some(7000));
        // 1000 pages per second.
        cfg.rate_bytes_per_s = 1000 * PAGE_SIZE as u64;
        let mut d = driver(&f, cfg, 1000, 1000);
        d.step(&f.lfc, T0);
        assert_eq!(d.counts().requested, PACING_BURST_PAGES as u64);
        drain(&mut d);
        // 100 ms on, nothing arrived: the first pages timed out and go to TCP, UDP has
        // stalled and keeps a probe in flight, and TCP may take new pages too: together no more
        // than the 100 pages the rate grants.
        let now = T0 + 100 * MS;
        let poll = d.step(&f.lfc, now);
        assert_eq!(
            answer_all(&f, &mut d, poll, now),
            Poll::Wait {
                until_ns: now + POLL_NS
            }
        );
        let c = d.counts();
        let burst = PACING_BURST_PAGES as u64;
        assert_eq!(c.requested, burst + STALL_PROBE_PAGES as u64);
        assert_eq!(c.via_tcp, burst, "the timed-out ones");
        // The allowance is spent: the next round, 2 ms on, has two pages' worth.
        let next = d.step(&f.lfc, now + POLL_NS);
        let ts = drain(&mut d);
        assert!(ts.len() <= 2, "{next:?} {ts:?}");
    }

    /// What a backend's read does to the LFC's counters, whichever path serves it
    /// (`backend::driver::Driver::start_read`).
    fn backend_read(f: &Fixture) {
        f.lfc.note_read();
    }

    /// Installs what the daemon would from the driver's Prefetches in `ts`.
    fn deliver(f: &Fixture, ts: &[Transmit]) -> usize {
        let mut n = 0;
        for t in ts {
            let Transmit::Prefetch(r) = t else { continue };
            for b in r.first..r.first + u32::from(r.n) {
                let tag = r.rel.block(b);
                let _ = f.lfc.install_prefetched(&tag, 0, &synthetic_page(tag, 16));
                n += 1;
            }
        }
        n
    }

    fn yielding(yield_pages: usize, udp_port: Option<u16>) -> DriverConfig {
        DriverConfig {
            yield_pages,
            ..config(udp_port)
        }
    }

    #[test]
    fn beside_backend_reads_the_run_keeps_few_pages_in_flight_then_recovers() {
        let f = fixture(4096);
        let mut d = driver(&f, yielding(16, Some(7000)), 2000, 2000);
        backend_read(&f);
        let mut now = T0;
        d.step(&f.lfc, now);
        assert_eq!(
            d.counts().requested,
            16,
            "capped below the first window (256)"
        );
        let mut ts = drain(&mut d);
        // Reads go on: each round brings in at most what arrived, never more than 16 in flight.
        for _ in 0..5 {
            assert_eq!(deliver(&f, &ts), 16);
            backend_read(&f);
            now += POLL_NS;
            d.step(&f.lfc, now);
            ts = drain(&mut d);
            assert_eq!(d.sched.in_flight(), 16);
        }
        assert_eq!(d.counts().requested, 16 * 6);
        // The reads stop: the cap holds for YIELD_HOLD_NS, then doubles each round until only
        // the window bounds the run.
        let mut in_flight = Vec::new();
        while now < T0 + 10 * YIELD_HOLD_NS && !d.sched.is_complete() {
            deliver(&f, &ts);
            now += POLL_NS;
            d.step(&f.lfc, now);
            ts = drain(&mut d);
            in_flight.push(d.sched.in_flight());
        }
        let held = (YIELD_HOLD_NS / POLL_NS) as usize;
        assert!(
            in_flight[..held - 1].iter().all(|&n| n == 16),
            "{in_flight:?}"
        );
        assert_eq!(
            in_flight[held - 1..held + 2],
            [32, 64, 128],
            "{in_flight:?}"
        );
        assert!(
            in_flight.iter().any(|&n| n > 256),
            "the cap lifted: {in_flight:?}"
        );
        let r = d.report(d.final_check(&f.lfc, |_, _| {}), now);
        assert!(r.complete, "{r:?}");
        assert!(r.yielded_rounds as usize >= 6 + held, "{r:?}");
    }

    #[test]
    fn the_cap_cuts_at_once_on_a_read_and_doubles_back_after_the_hold() {
        let mut y = Yield::new(16, 100);
        assert_eq!(y.cap(100, T0, 1024), usize::MAX, "no read since the start");
        assert_eq!(y.cap(101, T0 + MS, 1024), 16);
        assert_eq!(y.cap(101, T0 + MS + YIELD_HOLD_NS - 1, 1024), 16, "held");
        let after = T0 + MS + YIELD_HOLD_NS;
        let caps: Vec<_> = (0..5).map(|k| y.cap(101, after + k, 1024)).collect();
        assert_eq!(caps, [32, 64, 128, 256, 512]);
        assert_eq!(
            y.cap(101, after + 5, 1024),
            usize::MAX,
            "at the window: lifted"
        );
        assert_eq!(y.cap(150, after + 6, 1024), 16, "reads again: cut at once");
        assert_eq!(y.rounds, 8);
    }

    #[test]
    fn with_no_backend_reading_or_a_zero_cap_the_run_does_not_yield() {
        let f = fixture(4096);
        // The run's own probes (`contains`), the daemon's installs and lookups that are not a
        // backend's read (another prewarm's final check) are not backend reads.
        let mut d = driver(&f, yielding(16, Some(7000)), 2000, 2000);
        let mut page = [0u8; PAGE_SIZE];
        f.lfc.lookup(&synthetic_rel(9).block(0), &mut page);
        d.step(&f.lfc, T0);
        assert_eq!(d.counts().requested, 256, "the whole first window");
        let ts = drain(&mut d);
        deliver(&f, &ts);
        d.step(&f.lfc, T0 + POLL_NS);
        assert_eq!(
            d.counts().requested,
            256 + 512,
            "the window doubled by its arrivals"
        );
        assert_eq!(d.yielding.rounds, 0);
        // --yield-pages 0 (a foreground prewarm) does not yield even beside reads.
        let f = fixture(4096);
        let mut d = driver(&f, yielding(0, Some(7000)), 2000, 2000);
        backend_read(&f);
        d.step(&f.lfc, T0);
        assert_eq!(d.counts().requested, 256);
        assert_eq!(d.yielding.rounds, 0);
    }

    #[test]
    fn over_tcp_a_yielding_run_fetches_small_batches_one_a_round() {
        let f = fixture(4096);
        let mut d = driver(&f, yielding(8, None), 100, 100);
        backend_read(&f);
        assert_eq!(d.step(&f.lfc, T0), Poll::AwaitResponse);
        let ts = drain(&mut d);
        assert_eq!(ts.len(), 8, "a batch of 8, not TCP_DEPTH");
        let mut poll = Poll::AwaitResponse;
        for t in ts {
            let Transmit::GetPage { tag, .. } = t else {
                panic!("{t:?}")
            };
            let page = synthetic_page(tag, 16);
            poll = d
                .on_response(&f.lfc, Response::Page { tag, page: &page }, T0 + MS)
                .unwrap()
                .next;
        }
        assert_eq!(
            poll,
            Poll::Wait {
                until_ns: T0 + MS + POLL_NS
            },
            "the next batch waits its round"
        );
        // Alone, the batches follow each other at once (as before).
        let mut d = driver(&f, yielding(8, None), 100, 100);
        assert_eq!(d.step(&f.lfc, T0), Poll::AwaitResponse);
        assert_eq!(drain(&mut d).len(), TCP_DEPTH);
    }

    /// Pages of `all_arrived`'s run: more than one TCP batch, so that it goes by UDP.
    const UDP_RUN: u32 = TCP_DEPTH as u32 + 4;

    /// A run by UDP whose pages have all arrived, waiting for its next round.
    fn all_arrived(f: &Fixture) -> Driver {
        let mut d = driver(f, config(Some(7000)), UDP_RUN, UDP_RUN);
        d.step(&f.lfc, T0);
        drain(&mut d);
        for tag in d.pages().to_vec() {
            let _ = f.lfc.install_prefetched(&tag, 0, &synthetic_page(tag, 16));
        }
        assert!(matches!(d.step(&f.lfc, T0 + MS), Poll::Wait { .. }));
        d
    }

    #[test]
    fn a_page_that_left_a_full_cache_is_not_fetched_again_and_the_run_says_full() {
        // A small cache: the plan's pages, others in every other frame, and, once a plan page
        // has left, a frame a worker keeps reserved for its receive slot. Fetching the page
        // again would evict.
        let f = fixture(2 * u64::from(UDP_RUN));
        let mut d = all_arrived(&f);
        fill_with_others(&f.lfc);
        assert!(
            d.pages().iter().all(|t| f.lfc.contains(t)),
            "no plan page evicted yet"
        );
        let gone = d.pages()[1];
        f.lfc.set_lwlsn(&gone, 100).unwrap();
        let slot = f.lfc.reserve().expect("the freed frame");
        assert!(cache_is_full(&f.lfc, 0));
        assert_eq!(d.step(&f.lfc, T0 + 2 * MS), Poll::Done);
        assert_eq!(drain(&mut d), vec![], "nothing fetched into a full cache");
        let r = d.report(d.final_check(&f.lfc, |_, _| {}), T0 + 3 * MS);
        assert!(
            r.cache_full && !r.complete && r.present == u64::from(UDP_RUN) - 1,
            "{r:?}"
        );
        slot.abandon();
    }

    /// Installs pages of another relation until the cache is full.
    fn fill_with_others(lfc: &Lfc) {
        let other = synthetic_rel(1);
        for b in 0..lfc.capacity_pages() as u32 {
            if cache_is_full(lfc, 0) {
                break;
            }
            let tag = other.block(b);
            let _ = lfc.install_prefetched(&tag, 0, &synthetic_page(tag, 16));
        }
    }

    #[test]
    fn a_page_evicted_from_a_full_cache_after_the_run_makes_it_full_not_failed() {
        let f = fixture(2 * u64::from(UDP_RUN));
        let mut d = all_arrived(&f);
        assert_eq!(d.step(&f.lfc, T0 + 2 * MS), Poll::Done);
        // After the run's last look, a plan page leaves while the cache has room: incomplete.
        let gone = d.pages()[1];
        f.lfc.set_lwlsn(&gone, 100).unwrap();
        let r = d.report(d.final_check(&f.lfc, |_, _| {}), T0 + 3 * MS);
        assert!(!r.cache_full && !r.complete, "{r:?}");
        // Others' pages fill the cache (the page's frame among them): it was evicted for room.
        fill_with_others(&f.lfc);
        let r = d.report(d.final_check(&f.lfc, |_, _| {}), T0 + 3 * MS);
        assert!(r.cache_full && !r.complete, "{r:?}");
        assert_eq!(r.present, u64::from(UDP_RUN) - 1);
    }

    #[test]
    fn a_page_that_left_the_cache_is_repaired_and_a_deadline_stops_the_run() {
        let f = fixture(4096);
        let mut d = all_arrived(&f);
        // Modified after arriving: the cached copy is dropped.
        let gone = d.pages()[2];
        f.lfc.set_lwlsn(&gone, 100).unwrap();
        assert_eq!(d.step(&f.lfc, T0 + 2 * MS), Poll::AwaitResponse);
        let ts = drain(&mut d);
        assert_eq!(
            ts,
            vec![Transmit::GetPage {
                tag: gone,
                not_modified_since: 100
            }]
        );
        let page = synthetic_page(gone, 100);
        let handled = d
            .on_response(
                &f.lfc,
                Response::Page {
                    tag: gone,
                    page: &page,
                },
                T0,
            )
            .unwrap();
        assert!(handled.installed);
        assert_eq!(handled.next, Poll::Done);
        let r = d.report(d.final_check(&f.lfc, |_, _| {}), T0 + 3 * MS);
        assert!(r.complete && r.refetched == 1, "{r:?}");

        let mut cfg = config(Some(7000));
        cfg.deadline_ns = Some(MS);
        // Eight pages past the first run's, which are cached.
        let mut d = driver(&f, cfg, UDP_RUN + 8, UDP_RUN + 8);
        assert_eq!(d.step(&f.lfc, T0 + 2 * MS), Poll::Done);
        let r = d.report(d.final_check(&f.lfc, |_, _| {}), T0 + 2 * MS);
        assert!(r.deadline_hit && !r.complete, "{r:?}");
    }
}
