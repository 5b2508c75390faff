//! The backend read path as a sans-IO state machine (ARCHITECTURE §4 step 7, §6): LFC hit → wait
//! (adaptive, capped) for a prefetch in flight → TCP GetPage. The shell performs the lookups, waits
//! and fetches and tells the core what happened; the core decides and counts. Time is passed in.
//!
//! Owns the wait budget (latency estimate, GetPage round trip) and the prefetch window; which
//! own prefetches are outstanding or lost is `loss::LossDetector`'s, fed the timings derived
//! here.

use super::loss::{LossDetector, Own};
use lfc::{BufferTag, RelTag};
use std::time::Duration;

pub use super::loss::{
    OwnLoss, HOLE_LOOKAHEAD, IN_FLIGHT_RUN, LOSS_SCAN, MAX_RETRIES, MISS_SCAN, OVERTAKEN_BY,
    READS_PER_LOSS_CHECK,
};

/// How long a prefetch must stay missing after it was first seen overtaken before it is taken
/// as lost: datagrams do overtake one another without loss. On loopback a sender thread that
/// moves to the other CPU queues its next GSO message (7 datagrams) on that CPU's backlog, and
/// whole messages pass one another; each such reordering cost 7 needless retries (about 300 in
/// a 64k-page scan at 0 % loss). With 20 µs of grace none were left; 50 µs leaves a margin
/// and still finds a loss long before the reader reaches it. The grace grows with the observed
/// variation of arrival times (`ReadPath::reorder_grace_ns`).
pub const REORDER_GRACE_NS: u64 = 50_000;
/// The most the reorder grace grows to with the observed variation of arrival times.
pub const MAX_REORDER_GRACE_NS: u64 = 500_000;
/// The wait budget's cap in measured GetPage round trips. One round trip cut waits for
/// retried pages just short of their arrival at 5 % loss (a retry takes about as long as a
/// GetPage), turning them into fallbacks; two leaves them time and still bounds a wait for a
/// page that never comes (the simulator's daemon faults and stale prefetches).
pub const WAIT_CAP_RTTS: f64 = 2.0;
/// GetPage round trips after its request past which an own prefetch that has not arrived is
/// taken as failed without a read (`oldest_own_overdue`): one more than the longest a read
/// waits for it (`WAIT_CAP_RTTS`) after a round trip of its own.
pub const SIBLING_OVERDUE_RTTS: u64 = 3;
/// Most pages a read that gives up on an overdue prefetch sends to TCP with it
/// (`ReadPath::overdue_run`): as many as a loss check takes for the front in flight. A page
/// server's lost batch of 32 split pages then costs its reader four round trips, not 32; a
/// whole batch at once (31) also fetched pages that were late, not lost, and under the
/// simulator's heavy reordering (40 % of datagrams 5-12 ms late, a 93-page cache) one seed's
/// workload went from 0.98 to 1.03 of the liveness limit (0.96 with 8).
pub const OVERDUE_RUN: usize = IN_FLIGHT_RUN;
/// Before any GetPage round trip was measured, a wait at least this long counts as long. The
/// prefetches' own latency is no yardstick then: a slow path raises it (in the simulator a
/// backend waited 330 µs a read, every read, for pages a paced prewarm had requested, while its
/// latency estimate said 2 ms). Most reads waiting this long is a reader below 10k pages/s
/// that TCP pipelining would feed faster at any realistic round trip.
const UNMEASURED_LONG_WAIT_NS: u64 = 200_000;

/// Latency samples whose least predicts when a page requested a moment ago will arrive
/// (`ReadPath::may_arrive_within`). The smoothed latency carries the queue of a burst or a
/// stall for a dozen samples after it; a page requested now has no such queue ahead of it.
const RECENT_SAMPLES: usize = 8;
/// Latency samples before they, rather than a measured GetPage round trip, predict arrivals.
/// The first samples of a path carry its start: in `bench hol` the scan's first page took
/// 1.2-1.4 ms and the next ones 0.5-0.7 ms, and a prediction from that one sample sent the
/// reads of the next two pages to TCP at once, as too slow, which took the scan off UDP.
const PREDICT_MIN_SAMPLES: u64 = 4;

/// Floor and ceiling of the adaptive prefetch window (pages ahead of the reader).
pub const MIN_WINDOW: u32 = 4;
pub const MAX_WINDOW: u32 = 4096;
/// Where the window starts: as far ahead as TCP pipelining's depth (`NEON_TCP_DEPTH`), which
/// that path has in flight from its first read; hits grow it to the distance the caller wants.
/// Started at 32 pages, a scan's window took 8–13 ms to reach 512 at a 200 µs service delay,
/// its reads blocked for 55–93 % of that time, and its first calibration still held that
/// start: 32768-page scans ran at 1.05 × TCP pipelining (mean of 20, 6 below 1.0; at 5 % loss
/// 1.03), against 1.10 (none below; 1.07) from 128. Many backends starting at once put their
/// windows in the sender's queue together, which serves each connection's front first
/// (`pageserver::prefetch`): `bench many-backends` read 0.86–0.96 × TCP pipelining either way.
pub const INITIAL_WINDOW: u32 = NEON_TCP_DEPTH;
/// Window growth per prefetched page found in the LFC when read: a few hundred hits undo a cut.
const WINDOW_GROWTH_PER_HIT: f64 = 0.5;
/// Window growth per own prefetch a read had to wait for and got (a late hit): the reader
/// caught up with its prefetches, so the window is shorter than the path's latency at the
/// reader's pace, and it doubles per round trip as TCP's slow start does (a miss still halves
/// it). Grown by hits alone, a scan's window stayed near its initial 32 pages for its first
/// milliseconds: at a 200 µs service delay that paced UDP at 9.8–21 µs a read against TCP
/// pipelining's 2.3–3.2 µs at depth 128, and the pace rules took the backend to TCP for good.
const WINDOW_GROWTH_PER_LATE_HIT: f64 = 1.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPathConfig {
    /// Wait budget before any latency has been observed.
    pub initial_wait_us: u64,
    /// Floor and cap of the adaptive wait budget.
    pub min_wait_us: u64,
    pub max_wait_us: u64,
    /// Prefetches this backend tracks as its own in flight.
    pub max_tracked: usize,
    /// GetPages in flight on the TCP pipeline when UDP is not delivering (Neon's 128).
    pub tcp_depth: u32,
    /// Whether that many are a cap the pipeline adapts under, to the path's delay at the
    /// reader's pace (`pipeline::DepthLimit`), rather than a fixed depth. A backend that never
    /// uses UDP (`Driver::tcp_only`, Neon's compute) keeps a fixed depth either way.
    pub tcp_depth_adaptive: bool,
}

/// Neon's pipeline depth (`neon.readahead_buffer_size`): GetPages in flight on a backend's
/// connection.
pub const NEON_TCP_DEPTH: u32 = 128;

impl Default for ReadPathConfig {
    fn default() -> Self {
        ReadPathConfig {
            initial_wait_us: 1_000,
            min_wait_us: 50,
            max_wait_us: 4_000,
            max_tracked: 8192,
            tcp_depth: NEON_TCP_DEPTH,
            tcp_depth_adaptive: true,
        }
    }
}

/// Counters of one backend's reads and prefetches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReadStats {
    pub reads: u64,
    /// Found in the LFC at once.
    pub hits: u64,
    /// Arrived while the backend waited for a prefetch in flight.
    pub late_hits: u64,
    /// Read over TCP (nothing in flight, or the wait ran out).
    pub fallbacks: u64,
    /// Waits that ran out before the page arrived.
    pub wait_timeouts: u64,
    /// Pages requested by UDP prefetch.
    pub prefetched: u64,
    /// Pages not requested because they were cached or another backend had asked already.
    pub duplicates_avoided: u64,
    /// Pages this backend prefetched that it never found in the LFC when it read them, or never
    /// read at all.
    pub wasted_prefetches: u64,
    /// Prefetches requested again because they were taken as lost (overtaken).
    pub retries: u64,
    /// Times the prefetch window was halved (own prefetches missing the wait budget).
    pub window_cuts: u64,
    /// Pages read from the backend's TCP pipeline: requested ahead by GetPage while the UDP
    /// path was not delivering (see `backend::health`).
    pub tcp_pipelined: u64,
    /// Moves between the UDP path and TCP pipelining.
    pub udp_state_changes: u64,
    /// Times the TCP pipeline's depth limit came down to what the path needs because reads
    /// waited behind it (`pipeline::DepthLimit`).
    pub tcp_depth_cuts: u64,
}

/// The pages of one Prefetch message: consecutive blocks of one relation, with the newest
/// last-written LSN among them as `not_modified_since` (it must cover every block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefetchRun {
    pub rel: RelTag,
    pub first: u32,
    pub n: u16,
    pub max_lwlsn: u64,
}

/// Sorts `pages` (tag, last-written LSN) and groups them into as few runs as possible
/// ([`group_runs`]).
pub fn prefetch_runs(pages: &mut [(BufferTag, u64)], out: &mut Vec<PrefetchRun>) {
    pages.sort_unstable_by_key(|p| p.0);
    group_runs(pages.iter().copied(), u16::MAX, |r| out.push(r));
}

/// Groups `pages` (tag, last-written LSN), in the order given, into runs of consecutive blocks
/// of one relation of at most `max_pages` each, handing each run to `emit`: the one place
/// Prefetch messages are built (a backend's window, sorted first by [`prefetch_runs`]; a
/// prewarm round, in its hottest-first order).
pub fn group_runs(
    pages: impl IntoIterator<Item = (BufferTag, u64)>,
    max_pages: u16,
    mut emit: impl FnMut(PrefetchRun),
) {
    let mut run: Option<PrefetchRun> = None;
    for (tag, lw) in pages {
        match &mut run {
            Some(r)
                if r.rel == tag.rel
                    && r.first.checked_add(u32::from(r.n)) == Some(tag.blkno)
                    && r.n < max_pages =>
            {
                r.n += 1;
                r.max_lwlsn = r.max_lwlsn.max(lw);
            }
            _ => {
                if let Some(r) = run.take() {
                    emit(r);
                }
                run = Some(PrefetchRun {
                    rel: tag.rel,
                    first: tag.blkno,
                    n: 1,
                    max_lwlsn: lw,
                });
            }
        }
    }
    if let Some(r) = run {
        emit(r);
    }
}

/// The prefetch side of a sequential scan: which blocks to request before reading each one.
/// The window ahead of the reader is topped up in batches of a quarter of the distance (at
/// most 128 pages), so Prefetch messages carry runs rather than single pages (each message is a
/// TCP write and a wake-up of the server's reader), and never runs past the scan's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanWindow {
    end: u32,
    next_prefetch: u32,
}

impl ScanWindow {
    /// A scan of `start..end`.
    pub fn new(start: u32, end: u32) -> Self {
        ScanWindow {
            end,
            next_prefetch: start,
        }
    }

    /// Forgets what was requested beyond `blkno`: the next top-up requests from there. For when
    /// the requests made no longer bring their pages (the backend moved from UDP to TCP
    /// pipelining: pages other backends had asked for by UDP are not coming either).
    pub fn restart_at(&mut self, blkno: u32) {
        self.next_prefetch = blkno;
    }

    /// Before reading `blkno` with `distance` pages of prefetch allowed ahead of it (see
    /// `ReadPath::prefetch_distance`): the blocks to request now, if any.
    pub fn top_up(&mut self, blkno: u32, distance: u32) -> Option<std::ops::Range<u32>> {
        let distance = distance.max(1);
        let batch = (distance / 4).clamp(1, 128);
        let horizon = blkno.saturating_add(distance).min(self.end);
        let from = self.next_prefetch.max(blkno);
        if from < horizon && (horizon - from >= batch || horizon == self.end) {
            self.next_prefetch = horizon;
            Some(from..horizon)
        } else {
            None
        }
    }
}

/// What the shell should do next for a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Wait(Duration),
    Fetch,
    /// Fetch now: the own prefetch is not expected within a wait from now (the path's latency
    /// exceeds what a read may wait, or the page is overdue by more than a budget), so waiting
    /// would only add the budget to the GetPage. A miss of the path, like a wait that ran out.
    FetchTooSlow,
}

/// Smoothed prefetch latency, in the style of TCP's RTO estimator: budget = srtt + 4·rttvar,
/// clamped. A prefetch that arrives later than that is cheaper to replace by a GetPage.
///
/// Waits that run out are no evidence of latency: the page may never come (daemon dead, heavy
/// loss), and raising the budget on them made every read of a dead UDP path wait the cap
/// (ARCHITECTURE §6: a wait never grows because waits keep failing). Only a page seen to arrive
/// after its read gave up on it (`on_fetch_raced`) raises the estimate.
#[derive(Debug, Clone)]
struct LatencyEstimate {
    srtt_ns: f64,
    rttvar_ns: f64,
    samples: u64,
    /// The latest `RECENT_SAMPLES` samples (a ring indexed by `samples`).
    recent_ns: [u64; RECENT_SAMPLES],
}

impl LatencyEstimate {
    fn observe(&mut self, sample_ns: u64) {
        self.recent_ns[(self.samples % RECENT_SAMPLES as u64) as usize] = sample_ns;
        let s = sample_ns as f64;
        if self.samples == 0 {
            self.srtt_ns = s;
            self.rttvar_ns = s / 2.0;
        } else {
            self.rttvar_ns = 0.75 * self.rttvar_ns + 0.25 * (self.srtt_ns - s).abs();
            self.srtt_ns = 0.875 * self.srtt_ns + 0.125 * s;
        }
        self.samples += 1;
    }

    /// The least of the latest samples: the path's latency without the queue that a burst of
    /// requests or a stall put ahead of some of its pages.
    fn recent_min_ns(&self) -> u64 {
        let n = (self.samples as usize).min(RECENT_SAMPLES);
        self.recent_ns[..n].iter().copied().min().unwrap_or(0)
    }

    /// A page arrived, but only after a wait of `budget_ns` had run out: its latency is above
    /// the budget.
    fn arrived_after(&mut self, budget_ns: u64) {
        self.observe((budget_ns as f64 * 1.5) as u64);
    }
}

/// See `ReadPath::own_loss`.
#[derive(Debug, Clone)]
pub struct ReadPath {
    config: ReadPathConfig,
    latency: LatencyEstimate,
    /// Smoothed time a GetPage sent at read time took to answer (0: none seen yet).
    tcp_rtt_ns: f64,
    /// This backend's prefetches not yet read, and which of them look lost.
    loss: LossDetector,
    /// How far ahead this backend may prefetch, pages (see `prefetch_distance`).
    window: f64,
    /// The distance last handed out, which a cut halves.
    distance_in_use: u32,
    last_cut_ns: Option<u64>,
    /// Whether any own prefetch was ever found (at once or after a wait): until then the path
    /// has delivered nothing, and an old request is not presumed queued (`may_arrive_within`).
    own_found: bool,
    /// The own prefetch the read in progress fetched at once as too slow
    /// (`Step::FetchTooSlow`), and when it was requested: if its datagram beats the GetPage's answer (`on_too_slow_raced`), that
    /// bounds the path's latency.
    too_slow: Option<(BufferTag, u64)>,
    /// The own prefetch the read in progress gave up on as overdue (never overtaken, never
    /// retried: too slow, or its wait ran out), and when it was requested: the pages requested
    /// with it are likely as late (`overdue_run`).
    overdue: Option<(BufferTag, u64)>,
    stats: ReadStats,
}

impl ReadPath {
    pub fn new(config: ReadPathConfig) -> Self {
        assert!(config.min_wait_us <= config.max_wait_us && config.max_tracked > 0);
        ReadPath {
            config,
            tcp_rtt_ns: 0.0,
            latency: LatencyEstimate {
                srtt_ns: 0.0,
                rttvar_ns: 0.0,
                samples: 0,
                recent_ns: [0; RECENT_SAMPLES],
            },
            loss: LossDetector::new(config.max_tracked),
            window: f64::from(INITIAL_WINDOW),
            distance_in_use: MAX_WINDOW,
            last_cut_ns: None,
            own_found: false,
            too_slow: None,
            overdue: None,
            stats: ReadStats::default(),
        }
    }

    pub fn stats(&self) -> ReadStats {
        self.stats
    }

    /// Counters the caller keeps for reads outside this core's decisions (pipelined pages,
    /// path changes).
    pub fn stats_mut(&mut self) -> &mut ReadStats {
        &mut self.stats
    }

    /// How many pages ahead to prefetch when the caller wants `wanted`: `wanted`, unless own
    /// prefetches recently failed to arrive within the wait budget. Such a miss (after the
    /// loss retries) means the prefetch path is queueing, e.g. many backends sharing one
    /// sender; prefetching further ahead then only lengthens the queue and every read that
    /// gives up on it adds a TCP fetch on top. The window halves on such a miss (at most once
    /// per wait budget) and grows back by half a page per prefetched page read from the LFC.
    pub fn prefetch_distance(&mut self, wanted: u32) -> u32 {
        let d = wanted.min(self.window as u32).max(1);
        self.distance_in_use = d;
        d
    }

    /// An own prefetch missed its wait budget. One that was overtaken (lost, or requested
    /// again after a loss) is loss, not queueing: the window stays, since a smaller window only
    /// leaves less time to recover from the next loss (and fewer later pages to notice it by).
    /// A page never overtaken that still misses is the sign of a queue ahead of it.
    fn on_own_miss(&mut self, own: Own, now_ns: u64) {
        if !own.lost_or_late_by_reorder() {
            self.cut_window(now_ns);
        }
    }

    fn cut_window(&mut self, now_ns: u64) {
        let budget = self.wait_budget().as_nanos() as u64;
        if self
            .last_cut_ns
            .is_some_and(|t| now_ns.saturating_sub(t) < budget)
        {
            return;
        }
        self.last_cut_ns = Some(now_ns);
        let from = self.window.min(f64::from(self.distance_in_use));
        self.window = (from / 2.0).max(f64::from(MIN_WINDOW));
        self.stats.window_cuts += 1;
    }

    /// The current wait budget for a page in flight.
    /// Never more than `WAIT_CAP_RTTS` GetPage round trips, once one was measured: waiting much
    /// longer for a page than TCP takes to bring it is best effort costing more than what it
    /// replaces (a read that gives up then pays at most three round trips, not the budget cap
    /// plus one).
    pub fn wait_budget(&self) -> Duration {
        let mut us = if self.latency.samples == 0 {
            self.config.initial_wait_us
        } else {
            ((self.latency.srtt_ns + 4.0 * self.latency.rttvar_ns) / 1e3) as u64
        };
        if self.tcp_rtt_ns > 0.0 {
            us = us.min((WAIT_CAP_RTTS * self.tcp_rtt_ns / 1e3) as u64);
        }
        Duration::from_micros(us.clamp(self.config.min_wait_us, self.config.max_wait_us))
    }

    /// Whether a wait of `budget` from `now_ns` may see a prefetch sent at `sent_ns` (never
    /// overtaken) arrive. It may come after the least of the latest latency samples and is
    /// due after the prefetches' smoothed latency or, before `PREDICT_MIN_SAMPLES` were
    /// observed, after a measured GetPage round trip for both (a prefetch takes the same
    /// request and a response of the same size). Not if even its soonest arrival is after the
    /// budget ends (the path's latency is above what a read may wait), nor if it is overdue by
    /// more than a budget already (lost, or a path that stopped). In the simulator (shard round trips of
    /// 3-4 ms, a 2.3 ms cap, 13-43 % loss) reads waited out their budget for such pages and
    /// then fetched them, twice TCP's cost per page.
    ///
    /// While nothing was measured: always if an own prefetch was ever found (it came, so this
    /// one is most likely queued behind others: a backlogged sender), else the budget itself
    /// stands for the latency and a page requested more than two budgets ago is overdue. Such a
    /// page was prefetched ahead of its read (the window reached a new shard long before the
    /// reader), and waiting a third budget for it cost each new shard of a backend a whole wait
    /// on a path that had delivered nothing (`heavy` seeds 4711, 6982 and 7920: a 3.6 ms wait
    /// before each shard's first GetPage, on links losing 14-42 %).
    fn may_arrive_within(&self, sent_ns: u64, budget: Duration, now_ns: u64) -> bool {
        let measured = self.latency.samples >= PREDICT_MIN_SAMPLES
            || (self.latency.samples > 0 && self.tcp_rtt_ns == 0.0);
        // When it may come at the soonest, and when it is due.
        let (soonest_ns, latency) = if measured {
            (self.latency.recent_min_ns(), self.latency.srtt_ns)
        } else {
            (self.tcp_rtt_ns as u64, self.tcp_rtt_ns)
        };
        let budget_ns = budget.as_nanos() as u64;
        if latency == 0.0 {
            return self.own_found || now_ns.saturating_sub(sent_ns) <= 2 * budget_ns;
        }
        sent_ns + soonest_ns <= now_ns + budget_ns && now_ns <= sent_ns + latency as u64 + budget_ns
    }

    /// How long a read must wait for a prefetch to count as waiting (for the health state's
    /// waited share): half a measured GetPage round trip; before one was measured, the least
    /// of half the prefetches' own smoothed latency (a read that waits that long waited for a
    /// prefetch sent about when it started: UDP used as a synchronous fetch), half the initial
    /// budget and `UNMEASURED_LONG_WAIT_NS`. Shorter waits are a path keeping up with its
    /// reader, give or take.
    pub fn long_wait_ns(&self) -> u64 {
        if self.tcp_rtt_ns > 0.0 {
            return (self.tcp_rtt_ns / 2.0) as u64;
        }
        let mut ns = (self.config.initial_wait_us * 1_000 / 2).min(UNMEASURED_LONG_WAIT_NS);
        if self.latency.samples > 0 {
            ns = ns.min((self.latency.srtt_ns / 2.0) as u64);
        }
        ns
    }

    /// The smoothed GetPage round trip (`observe_tcp_rtt`), 0 before one was measured.
    pub fn tcp_rtt_ns(&self) -> u64 {
        self.tcp_rtt_ns as u64
    }

    /// A GetPage sent when its read needed it was answered `rtt_ns` later.
    pub fn observe_tcp_rtt(&mut self, rtt_ns: u64) {
        let s = rtt_ns as f64;
        self.tcp_rtt_ns = if self.tcp_rtt_ns == 0.0 {
            s
        } else {
            0.875 * self.tcp_rtt_ns + 0.125 * s
        };
    }

    /// Decides whether to prefetch `tag`: not if it is cached, or if someone (this backend or
    /// another) requested it recently — `already_requested` is what marking it in the LFC
    /// answered. Returns true when the page should go into a Prefetch request.
    pub fn plan_prefetch(
        &mut self,
        tag: BufferTag,
        cached: bool,
        already_requested: bool,
        now_ns: u64,
    ) -> bool {
        if cached || already_requested || self.loss.contains(&tag) {
            self.stats.duplicates_avoided += 1;
            return false;
        }
        self.stats.wasted_prefetches += self.loss.track(tag, now_ns);
        self.stats.prefetched += 1;
        true
    }

    /// How long a page must stay missing after it was first seen overtaken before it is taken
    /// as lost: `REORDER_GRACE_NS`, or the arrival time's observed variation if that is larger
    /// (a loaded machine delays some deliveries, e.g. a worker thread's wake-up, more than
    /// others), but at most `MAX_REORDER_GRACE_NS`: the variation is mostly queueing, which
    /// delays a page and its successors alike, and a longer grace only makes retries late.
    fn reorder_grace_ns(&self) -> u64 {
        (self.latency.rttvar_ns as u64).clamp(REORDER_GRACE_NS, MAX_REORDER_GRACE_NS)
    }

    /// Pages requested less than this long ago are taken as in flight by a loss check: twice
    /// the observed arrival time (not capped like the wait budget, so a backlogged sender's
    /// long queue counts as in flight too), or the initial budget before any sample.
    fn in_flight_for_ns(&self) -> u64 {
        if self.latency.samples == 0 {
            self.config.initial_wait_us * 1_000
        } else {
            (2.0 * (self.latency.srtt_ns + 4.0 * self.latency.rttvar_ns)) as u64
        }
    }

    /// Finds own prefetches that were most likely lost and appends them to `out` to be
    /// requested again (`LossDetector::plan_retries`), with the in-flight time and reorder
    /// grace of the current latency estimate; counts the retries.
    pub fn plan_retries(
        &mut self,
        now_ns: u64,
        max_probes: usize,
        is_cached: impl FnMut(&BufferTag) -> bool,
        out: &mut Vec<BufferTag>,
    ) {
        let in_flight_ns = self.in_flight_for_ns();
        let grace_ns = self.reorder_grace_ns();
        self.stats.retries +=
            self.loss
                .plan_retries(now_ns, max_probes, in_flight_ns, grace_ns, is_cached, out);
    }

    /// After the LFC lookup for a read. `requested_elsewhere` is true when another backend's
    /// prefetch (or read) of the tag is in flight. `None` means the read is done (a hit).
    pub fn on_lookup(
        &mut self,
        tag: BufferTag,
        hit: bool,
        requested_elsewhere: bool,
        now_ns: u64,
    ) -> Option<Step> {
        self.stats.reads += 1;
        // Only the read in progress may have been fetched as too slow.
        self.too_slow = None;
        self.overdue = None;
        let own = self.loss.take(&tag);
        if hit {
            // Arrived before it was needed: that only bounds its latency from above, so it is
            // not a sample (a long prefetch distance would inflate the budget).
            self.stats.hits += 1;
            if own.is_some() {
                self.own_found = true;
                self.window = (self.window + WINDOW_GROWTH_PER_HIT).min(f64::from(MAX_WINDOW));
            }
            return None;
        }
        match own {
            Some(o) => {
                let budget = self.wait_budget();
                let since = |t: u64| Duration::from_nanos(now_ns.saturating_sub(t));
                // A page never overtaken is queued behind other pages, however long ago it was
                // asked for: the server sends in request order. Waiting a budget from now costs
                // less than a TCP fetch, which would add load to the queue it gave up on (many
                // backends sharing one sender). A page requested again after a loss is overdue
                // a budget after that retry. One overtaken (since its last request) is lost
                // unless it was merely reordered, which resolves within the reorder grace: a
                // check has requested it again by now if it had a retry left, so once the grace
                // is over it goes to TCP at once.
                let wait = if o.suspect_ns != 0 {
                    Duration::from_nanos(self.reorder_grace_ns())
                        .saturating_sub(since(o.suspect_ns))
                        .min(budget)
                } else if o.retries > 0 {
                    budget.saturating_sub(since(o.sent_ns))
                } else if !self.may_arrive_within(o.sent_ns, budget, now_ns) {
                    self.stats.fallbacks += 1;
                    self.stats.wasted_prefetches += 1;
                    self.on_own_miss(o, now_ns);
                    self.too_slow = Some((tag, o.sent_ns));
                    self.overdue = Some((tag, o.sent_ns));
                    return Some(Step::FetchTooSlow);
                } else {
                    budget
                };
                if wait.is_zero() {
                    self.stats.fallbacks += 1;
                    self.stats.wasted_prefetches += 1;
                    self.on_own_miss(o, now_ns);
                    return Some(Step::Fetch);
                }
                // Put it back so `on_wait_result` can measure the arrival.
                self.loss.put_back(tag, o);
                Some(Step::Wait(wait))
            }
            None if requested_elsewhere => Some(Step::Wait(self.wait_budget())),
            None => {
                self.stats.fallbacks += 1;
                Some(Step::Fetch)
            }
        }
    }

    /// A read of own prefetch `tag` missed, and the LFC holds no request mark for it: an
    /// install clears the mark, so the page came and was evicted before its read (or was
    /// requested longer than `lfc::REQUESTED_TTL_NS` ago). Waiting would wait for nothing: the
    /// read is a fallback, fetched at once. Not the path's failure but the window's: prefetching
    /// further ahead than the cache keeps pages is waste, so the window is cut as after a miss.
    pub fn on_own_gone(&mut self, tag: &BufferTag, now_ns: u64) {
        self.stats.reads += 1;
        self.stats.fallbacks += 1;
        if self.loss.take(tag).is_some() {
            self.stats.wasted_prefetches += 1;
            self.cut_window(now_ns);
        }
    }

    /// After waiting: `arrived` if the page is now in the LFC. `None` means done (a late hit).
    pub fn on_wait_result(&mut self, tag: BufferTag, arrived: bool, now_ns: u64) -> Option<Step> {
        let own = self.loss.take(&tag);
        if arrived {
            self.stats.late_hits += 1;
            if let Some(o) = own {
                self.own_found = true;
                self.latency.observe(now_ns.saturating_sub(o.sent_ns));
                self.window = (self.window + WINDOW_GROWTH_PER_LATE_HIT).min(f64::from(MAX_WINDOW));
            }
            None
        } else {
            self.stats.wait_timeouts += 1;
            self.stats.fallbacks += 1;
            if let Some(o) = own {
                self.stats.wasted_prefetches += 1;
                self.on_own_miss(o, now_ns);
                if !o.lost_or_late_by_reorder() {
                    self.overdue = Some((tag, o.sent_ns));
                }
            }
            Some(Step::Fetch)
        }
    }

    /// The page fetched over TCP after giving up on its prefetch turned out to have arrived in
    /// the meantime: the budget was too short for the current prefetch latency (queueing in
    /// the sender, not loss), so raise it.
    pub fn on_fetch_raced(&mut self) {
        let budget = self.wait_budget().as_nanos() as u64;
        self.latency.arrived_after(budget);
    }

    /// Own prefetch `tag`, fetched at once as too slow (`Step::FetchTooSlow`), arrived by UDP
    /// before the GetPage's answer (`now_ns`): its latency was at most the time since its
    /// request, a sample when that is below the estimate. Without it an estimate that is too
    /// high never comes down: every page predicted too slow is fetched without a wait, so no
    /// wait measures the path again. In `bench hol` the scan's first page took 1.3 ms (the
    /// path's start), every later page was predicted as late, its datagram came within 0.7 ms
    /// of its request, each read cut the window, and the scan went to TCP pipelining for good.
    pub fn on_too_slow_raced(&mut self, tag: &BufferTag, now_ns: u64) {
        if let Some((t, sent_ns)) = self.too_slow.take() {
            let bound = now_ns.saturating_sub(sent_ns);
            if t == *tag && (bound as f64) < self.latency.srtt_ns {
                self.latency.observe(bound);
            }
        }
    }

    /// After a read gave up on its own prefetch as overdue (`Step::FetchTooSlow`, or a wait
    /// that ran out): the pages requested with it that follow it and are still missing
    /// (`LossDetector::run_after`, at most `OVERDUE_RUN`), appended to `out` for the caller to
    /// fetch another way (`repair_by_tcp` each). At MTU 1500 with 5 % loss, a lost batch of 32
    /// split pages was read one synchronous GetPage at a time: 738 such reads in a 65536-page
    /// scan.
    pub fn overdue_run(
        &mut self,
        is_cached: impl FnMut(&BufferTag) -> bool,
        out: &mut Vec<BufferTag>,
    ) -> usize {
        let Some((tag, sent_ns)) = self.overdue.take() else {
            return 0;
        };
        self.loss
            .run_after(&tag, sent_ns, OVERDUE_RUN, is_cached, out)
    }

    /// Whether the oldest own prefetch still missing (never requested again nor overtaken) is
    /// overdue beyond doubt: requested more than `SIBLING_OVERDUE_RTTS` GetPage round trips ago
    /// (this driver's, or `rtt_ns` measured by another shard's if longer; never before one was
    /// measured) and, by what this path measured, unable to arrive within a wait
    /// (`may_arrive_within`). A read of it would then fetch it at once. Lets a backend whose
    /// other shard left UDP move this shard before its reader reaches that page
    /// (`Driver::sibling_overdue`). Not by the wait budget alone: before anything was measured
    /// it stands for a latency it may be far below (in the simulator an initial budget of
    /// 208 µs took shards off UDP whose pages came 1 ms after their requests, before their reads).
    pub fn oldest_own_overdue(
        &self,
        is_cached: impl FnMut(&BufferTag) -> bool,
        rtt_ns: u64,
        now_ns: u64,
    ) -> bool {
        let rtt_ns = self.tcp_rtt_ns().max(rtt_ns);
        if rtt_ns == 0 {
            return false;
        }
        self.loss
            .oldest_missing(is_cached)
            .is_some_and(|(_, sent_ns)| {
                now_ns.saturating_sub(sent_ns) > SIBLING_OVERDUE_RTTS * rtt_ns
                    && !self.may_arrive_within(sent_ns, self.wait_budget(), now_ns)
            })
    }

    /// Own prefetch `tag`, taken as lost by `plan_retries` or late by `overdue_run`, is
    /// fetched by the TCP pipeline instead of requested again: it is no longer tracked as in
    /// flight.
    pub fn repair_by_tcp(&mut self, tag: &BufferTag) {
        self.loss.take(tag);
    }

    /// What is known of own prefetch `tag`'s loss, if it is one (not read yet): lets the
    /// caller tell an own prefetch's read from another's, and a clean arrival or miss from one
    /// after a loss.
    pub fn own_loss(&self, tag: &BufferTag) -> Option<OwnLoss> {
        self.loss.loss(tag)
    }

    /// Whether own prefetch `tag` was (last) requested less than a wait budget before
    /// `now_ns`: a read that waits for it waits for the path's latency (TCP would wait as long
    /// for its first responses), not because the path is behind.
    pub fn own_is_fresh(&self, tag: &BufferTag, now_ns: u64) -> bool {
        let budget = self.wait_budget().as_nanos() as u64;
        self.loss
            .sent_ns(tag)
            .is_some_and(|sent| now_ns.saturating_sub(sent) < budget)
    }

    /// Own prefetches still outstanding (not `is_cached`), oldest
    /// request first, appended to `out` and forgotten (counted as wasted): the UDP path is
    /// given up on and the caller fetches them another way.
    pub fn take_outstanding(
        &mut self,
        is_cached: impl FnMut(&BufferTag) -> bool,
        out: &mut Vec<BufferTag>,
    ) {
        self.stats.wasted_prefetches += self.loss.take_outstanding(is_cached, out);
    }

    /// Whether own prefetches are in flight (requested, not read yet): losses to look for.
    pub fn prefetches_outstanding(&self) -> bool {
        !self.loss.is_empty()
    }

    /// Ends a scan: prefetches never read are wasted.
    pub fn finish(&mut self) -> ReadStats {
        self.stats.wasted_prefetches += self.loss.clear();
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lfc::RelTag;

    fn tag(b: u32) -> BufferTag {
        RelTag::new(1663, 5, 16384, 0).block(b)
    }

    /// Two loss checks, at `now` and once the reorder grace has passed: what takes an
    /// overtaken page as lost.
    fn check_twice(
        rp: &mut ReadPath,
        now: u64,
        mut cached: impl FnMut(&BufferTag) -> bool,
        out: &mut Vec<BufferTag>,
    ) {
        rp.plan_retries(now, LOSS_SCAN, &mut cached, out);
        assert!(out.is_empty(), "taken as lost before the grace: {out:?}");
        let grace = rp.reorder_grace_ns();
        rp.plan_retries(now + grace, LOSS_SCAN, cached, out);
    }

    #[test]
    fn hit_wait_and_fallback_are_decided_and_counted() {
        let mut rp = ReadPath::new(ReadPathConfig::default());
        assert!(rp.plan_prefetch(tag(1), false, false, 0));
        assert!(!rp.plan_prefetch(tag(1), false, false, 0), "own duplicate");
        assert!(!rp.plan_prefetch(tag(2), true, false, 0), "cached");
        assert!(
            !rp.plan_prefetch(tag(3), false, true, 0),
            "someone else asked"
        );
        // Own prefetch not there yet (never taken as lost): wait a budget, then it arrives.
        assert_eq!(
            rp.on_lookup(tag(1), false, false, 10),
            Some(Step::Wait(Duration::from_micros(1_000)))
        );
        assert_eq!(rp.on_wait_result(tag(1), true, 300_000), None);
        // Nothing in flight: straight to TCP.
        assert_eq!(rp.on_lookup(tag(4), false, false, 0), Some(Step::Fetch));
        // In flight elsewhere but never arrives: wait, then fall back.
        assert!(matches!(
            rp.on_lookup(tag(3), false, true, 0),
            Some(Step::Wait(_))
        ));
        assert_eq!(rp.on_wait_result(tag(3), false, 0), Some(Step::Fetch));
        assert_eq!(rp.on_lookup(tag(2), true, false, 0), None);
        let s = rp.finish();
        assert_eq!(
            (s.reads, s.hits, s.late_hits, s.fallbacks, s.wait_timeouts),
            (4, 1, 1, 2, 1)
        );
        assert_eq!(
            (s.prefetched, s.duplicates_avoided, s.wasted_prefetches),
            (1, 3, 0)
        );
    }

    #[test]
    fn a_long_wait_is_half_a_getpage_round_trip_and_bounded_before_one_is_measured() {
        let mut rp = ReadPath::new(ReadPathConfig::default());
        assert_eq!(
            rp.long_wait_ns(),
            UNMEASURED_LONG_WAIT_NS,
            "nothing measured"
        );
        // Prefetches arriving 2 ms after their request do not make a 330 µs wait short.
        let late = |rp: &mut ReadPath, i: u32, after_ns: u64| {
            assert!(rp.plan_prefetch(tag(i), false, false, 0));
            assert!(matches!(
                rp.on_lookup(tag(i), false, false, 0),
                Some(Step::Wait(_))
            ));
            assert_eq!(rp.on_wait_result(tag(i), true, after_ns), None);
        };
        for i in 0..8u32 {
            late(&mut rp, i, 2_000_000);
        }
        assert_eq!(rp.long_wait_ns(), UNMEASURED_LONG_WAIT_NS);
        // Fast ones lower it.
        let mut rp = ReadPath::new(ReadPathConfig::default());
        for i in 0..8u32 {
            late(&mut rp, i, 100_000);
        }
        assert!(
            rp.long_wait_ns() < UNMEASURED_LONG_WAIT_NS,
            "{}",
            rp.long_wait_ns()
        );
        // A measured GetPage round trip decides.
        rp.observe_tcp_rtt(900_000);
        assert_eq!(rp.long_wait_ns(), 450_000);
    }

    #[test]
    fn a_prefetch_that_cannot_arrive_within_a_wait_is_fetched_at_once_as_a_miss() {
        const MS: u64 = 1_000_000;
        // A 2 ms cap on waits, a 4 ms round trip: a page read as soon as it was requested
        // would arrive after any wait ran out.
        let cfg = ReadPathConfig {
            initial_wait_us: 2_000,
            max_wait_us: 2_000,
            ..ReadPathConfig::default()
        };
        let mut rp = ReadPath::new(cfg);
        assert!(rp.plan_prefetch(tag(1), false, false, 0));
        // Nothing measured: the initial budget is all there is to go by.
        assert!(matches!(
            rp.on_lookup(tag(1), false, false, 0),
            Some(Step::Wait(_))
        ));
        assert_eq!(rp.on_wait_result(tag(1), false, MS), Some(Step::Fetch));
        rp.observe_tcp_rtt(4 * MS);
        let budget = rp.wait_budget().as_nanos() as u64;
        assert_eq!(budget, 2 * MS);
        let fallbacks = rp.stats().fallbacks;
        // Requested at `sent`, read (and missed) at `read`.
        let read = |rp: &mut ReadPath, b: u32, sent: u64, read: u64| {
            assert!(rp.plan_prefetch(tag(b), false, false, sent));
            rp.on_lookup(tag(b), false, false, read)
        };
        let waits = |step: Option<Step>| matches!(step, Some(Step::Wait(_)));
        // Expected 4 ms after its request: a read 1 ms after it cannot see it within 2 ms.
        assert_eq!(read(&mut rp, 2, 10 * MS, 11 * MS), Some(Step::FetchTooSlow));
        // A read 3 ms after it may: it waits.
        assert!(waits(read(&mut rp, 3, 20 * MS, 23 * MS)));
        // Due 4 ms after its request and still missing a budget after that: overdue.
        assert!(waits(read(&mut rp, 4, 30 * MS, 36 * MS)));
        assert_eq!(
            read(&mut rp, 5, 40 * MS, 46 * MS + 1),
            Some(Step::FetchTooSlow)
        );
        let stats = rp.stats();
        assert_eq!(stats.fallbacks, fallbacks + 2);
        assert_eq!(
            stats.wait_timeouts, 1,
            "no wait ran out for the fetched ones"
        );
        // Nothing measured and nothing found yet: the budget stands for the latency, so a page
        // requested two budgets ago may still come, and one requested longer ago is overdue.
        let mut fresh = ReadPath::new(cfg);
        assert!(waits(read(&mut fresh, 6, 0, 4 * MS)));
        assert_eq!(
            read(&mut fresh, 7, 10 * MS, 14 * MS + 1),
            Some(Step::FetchTooSlow)
        );
    }

    /// Requests own prefetch `b` at `sent`, reads it at once, waits and sees it come `lat`
    /// later: one latency sample.
    fn arrives(rp: &mut ReadPath, b: u32, sent: u64, lat: u64) {
        assert!(rp.plan_prefetch(tag(b), false, false, sent));
        assert!(matches!(
            rp.on_lookup(tag(b), false, false, sent),
            Some(Step::Wait(_))
        ));
        assert_eq!(rp.on_wait_result(tag(b), true, sent + lat), None);
    }

    /// Requests own prefetch `b` at `sent` and reads it, missing, at `read`.
    fn read_missing(rp: &mut ReadPath, b: u32, sent: u64, read: u64) -> Option<Step> {
        assert!(rp.plan_prefetch(tag(b), false, false, sent));
        rp.on_lookup(tag(b), false, false, read)
    }

    /// `bench hol`'s start: the path's first page came 1.3 ms after its request, the next ones
    /// 0.55 ms after theirs; a GetPage takes 400 µs, so a read waits at most 800 µs. The first
    /// sample predicts nothing, and once enough are in, a page requested a moment ago is
    /// judged by the least of the latest, not by the smoothed latency the start still inflates.
    /// A page due by the smoothed latency and missing a budget after that is still overdue.
    #[test]
    fn the_paths_start_does_not_make_fresh_pages_look_too_slow() {
        const US: u64 = 1_000;
        let mut rp = ReadPath::new(ReadPathConfig::default());
        rp.observe_tcp_rtt(400 * US);
        arrives(&mut rp, 0, 0, 1_300 * US);
        let budget = rp.wait_budget().as_nanos() as u64;
        assert_eq!(budget, 800 * US);
        let waits = |step: Option<Step>| matches!(step, Some(Step::Wait(_)));
        // One sample: the GetPage round trip stands in for the latency.
        assert!(waits(read_missing(&mut rp, 1, 10_000 * US, 10_150 * US)));
        assert_eq!(rp.on_wait_result(tag(1), true, 10_550 * US), None);
        for b in 2..PREDICT_MIN_SAMPLES as u32 {
            arrives(&mut rp, b, u64::from(b) * 10_000 * US, 550 * US);
        }
        assert!(
            rp.latency.srtt_ns > 1_000_000.0,
            "the start still weighs: {}",
            rp.latency.srtt_ns
        );
        // Requested 150 µs ago: at the soonest 400 µs from now, within a wait.
        assert!(waits(read_missing(&mut rp, 10, 50_000 * US, 50_150 * US)));
        assert_eq!(rp.on_wait_result(tag(10), true, 50_550 * US), None);
        // Requested 3 ms ago, due after the smoothed latency: overdue by more than a budget.
        let srtt = rp.latency.srtt_ns as u64;
        let sent = 60_000 * US;
        assert_eq!(
            read_missing(&mut rp, 11, sent, sent + srtt + budget + US),
            Some(Step::FetchTooSlow)
        );
        assert_eq!(rp.stats().wait_timeouts, 0);
    }

    /// A path that has been slow (every page 1.3 ms) predicts a page requested a moment ago
    /// as too slow, and fetches it at once; its datagram then comes before the GetPage's
    /// answer, 500 µs after the request. That bounds the latency: the estimate comes down, and
    /// the next fresh page is waited for (without the bound no wait would ever measure the
    /// path again). A datagram of another page than the one fetched proves nothing.
    #[test]
    fn a_too_slow_page_whose_datagram_beats_its_getpage_lowers_the_estimate() {
        const US: u64 = 1_000;
        let mut rp = ReadPath::new(ReadPathConfig::default());
        rp.observe_tcp_rtt(400 * US);
        for b in 0..RECENT_SAMPLES as u32 {
            // Read 600 µs after its request: it may come within the wait.
            let sent = u64::from(b) * 10_000 * US;
            assert!(matches!(
                read_missing(&mut rp, b, sent, sent + 600 * US),
                Some(Step::Wait(_))
            ));
            assert_eq!(rp.on_wait_result(tag(b), true, sent + 1_300 * US), None);
        }
        let sent = 100_000 * US;
        assert_eq!(
            read_missing(&mut rp, 20, sent, sent + 100 * US),
            Some(Step::FetchTooSlow)
        );
        let before = rp.latency.srtt_ns;
        rp.on_too_slow_raced(&tag(21), sent + 500 * US);
        assert_eq!(rp.latency.srtt_ns, before, "another page");
        assert_eq!(
            read_missing(&mut rp, 22, sent, sent + 100 * US),
            Some(Step::FetchTooSlow)
        );
        rp.on_too_slow_raced(&tag(22), sent + 500 * US);
        assert!(rp.latency.srtt_ns < before);
        let later = 200_000 * US;
        assert!(matches!(
            read_missing(&mut rp, 23, later, later + 100 * US),
            Some(Step::Wait(_))
        ));
    }

    #[test]
    fn budget_adapts_to_observed_latency_within_bounds() {
        let cfg = ReadPathConfig::default();
        let mut rp = ReadPath::new(cfg);
        for i in 0..100u32 {
            rp.plan_prefetch(tag(i), false, false, 0);
            rp.on_lookup(tag(i), false, false, 0);
            rp.on_wait_result(tag(i), true, 200_000); // 200 µs every time
        }
        let b = rp.wait_budget();
        assert!(
            b >= Duration::from_micros(200) && b < Duration::from_micros(400),
            "{b:?}"
        );
        for i in 100..200u32 {
            rp.plan_prefetch(tag(i), false, false, 0);
            rp.on_lookup(tag(i), false, false, 0);
            rp.on_wait_result(tag(i), true, 1_000_000_000); // 1 s: capped
        }
        assert_eq!(rp.wait_budget(), Duration::from_micros(cfg.max_wait_us));
    }

    #[test]
    fn queued_prefetches_are_waited_for_and_overdue_retries_fall_back_at_once() {
        let mut rp = ReadPath::new(ReadPathConfig::default());
        let budget = rp.wait_budget();
        // Requested long ago and never taken as lost, on a path that delivers (an own
        // prefetch was found): queued, so a full budget from now.
        rp.plan_prefetch(tag(0), false, false, 0);
        assert_eq!(rp.on_lookup(tag(0), true, false, 0), None);
        rp.plan_prefetch(tag(1), false, false, 0);
        let long_after = 10 * budget.as_nanos() as u64;
        assert_eq!(
            rp.on_lookup(tag(1), false, false, long_after),
            Some(Step::Wait(budget))
        );
        assert_eq!(rp.on_wait_result(tag(1), true, long_after + 1_000), None);
        // Taken as lost (overtaken), requested again, and that retry overdue: TCP at once.
        let t0 = 20 * budget.as_nanos() as u64;
        for b in 2..7u32 {
            rp.plan_prefetch(tag(b), false, false, t0);
        }
        let mut retry = Vec::new();
        let grace = rp.reorder_grace_ns();
        check_twice(&mut rp, t0, |t| t.blkno != 2, &mut retry);
        assert_eq!(retry, [tag(2)]);
        let budget = rp.wait_budget().as_nanos() as u64;
        assert_eq!(
            rp.on_lookup(tag(2), false, false, t0 + grace + budget),
            Some(Step::Fetch)
        );
        let s = rp.finish();
        assert_eq!((s.late_hits, s.fallbacks, s.retries), (1, 1, 1));
    }

    #[test]
    fn waits_that_run_out_never_raise_the_budget_but_a_late_arrival_does() {
        let mut rp = ReadPath::new(ReadPathConfig::default());
        // One loss in twenty waits: the budget follows the arrivals.
        for i in 10..30u32 {
            rp.plan_prefetch(tag(i), false, false, 0);
            rp.on_lookup(tag(i), false, false, 0);
            rp.on_wait_result(tag(i), i != 10, 300_000);
        }
        let settled = rp.wait_budget();
        assert!(settled < Duration::from_micros(700), "{settled:?}");
        // Every wait runs out (a dead daemon looks like this): the budget stays where the
        // arrivals put it; it used to grow to the cap, so every read of a dead path waited 4 ms.
        for i in 100..110u32 {
            rp.plan_prefetch(tag(i), false, false, 0);
            rp.on_lookup(tag(i), false, false, 0);
            rp.on_wait_result(tag(i), false, 0);
        }
        assert_eq!(rp.wait_budget(), settled);
        // A page that arrived after its read gave up is evidence of latency: it grows.
        rp.on_fetch_raced();
        assert!(
            rp.wait_budget() > settled,
            "{:?} <= {settled:?}",
            rp.wait_budget()
        );
        let s = rp.finish();
        assert_eq!(s.fallbacks, 1 + 10);
    }

    #[test]
    fn overtaken_prefetches_are_retried_until_the_retry_budget_is_spent() {
        let mut rp = ReadPath::new(ReadPathConfig::default());
        for i in 0..10u32 {
            assert!(rp.plan_prefetch(tag(i), false, false, 0));
        }
        // Block 3 is missing while the six requested after it arrived: lost. Block 9 is missing
        // with nothing after it: maybe just late.
        let mut arrived: Vec<u32> = (0..10).filter(|&b| b != 3 && b != 9).collect();
        let mut out = Vec::new();
        check_twice(&mut rp, 1_000, |t| arrived.contains(&t.blkno), &mut out);
        assert_eq!(out, vec![tag(3)]);
        // Block 9 was only late. Block 3's retry is lost too: once OVERTAKEN_BY pages requested
        // after the retry arrive (and the grace passes), it is requested again; then again;
        // then never more.
        arrived.push(9);
        let mut next = 10u32;
        let round_start = |round: u8| u64::from(round) * 1_000_000;
        for round in 1..=MAX_RETRIES {
            out.clear();
            for _ in 0..OVERTAKEN_BY {
                rp.plan_prefetch(tag(next), false, false, round_start(round));
                arrived.push(next);
                next += 1;
            }
            check_twice(
                &mut rp,
                round_start(round) + 1,
                |t| arrived.contains(&t.blkno),
                &mut out,
            );
            let want = if round < MAX_RETRIES {
                vec![tag(3)]
            } else {
                vec![]
            };
            assert_eq!(out, want, "round {round}");
        }
        assert_eq!(rp.stats().retries, u64::from(MAX_RETRIES));
        // Lost again with no retry left and the grace over: its read goes to TCP at once.
        let after = round_start(MAX_RETRIES) + 1 + REORDER_GRACE_NS + 1_000;
        assert_eq!(rp.on_lookup(tag(3), false, false, after), Some(Step::Fetch));
        assert_eq!(rp.stats().window_cuts, 0);
    }

    #[test]
    fn an_overtaken_page_is_waited_for_only_the_reorder_grace_and_its_miss_keeps_the_window() {
        let mut rp = ReadPath::new(ReadPathConfig::default());
        for i in 0..400u32 {
            rp.plan_prefetch(tag(i), false, false, 0);
            assert_eq!(rp.on_lookup(tag(i), true, false, 0), None);
        }
        assert_eq!(rp.prefetch_distance(128), 128);
        for b in 1000..1010u32 {
            rp.plan_prefetch(tag(b), false, false, 0);
        }
        // 1000 is overtaken at t=1 ms and read 10 µs later, before the grace ran out and before
        // any retry: it is waited for the rest of the grace only, not a whole budget.
        let mut out = Vec::new();
        rp.plan_retries(1_000_000, LOSS_SCAN, |t| t.blkno != 1000, &mut out);
        assert!(out.is_empty());
        assert_eq!(
            rp.on_lookup(tag(1000), false, false, 1_010_000),
            Some(Step::Wait(Duration::from_nanos(REORDER_GRACE_NS - 10_000)))
        );
        // It does not come: lost, so TCP, and neither the window nor the budget move.
        let budget = rp.wait_budget();
        assert_eq!(
            rp.on_wait_result(tag(1000), false, 1_000_000 + REORDER_GRACE_NS),
            Some(Step::Fetch)
        );
        assert_eq!(rp.prefetch_distance(128), 128);
        assert_eq!(rp.wait_budget(), budget);
        assert_eq!(rp.stats().window_cuts, 0);
    }

    #[test]
    fn a_check_stops_at_the_in_flight_window_but_not_at_an_overdue_burst_loss() {
        let mut rp = ReadPath::new(ReadPathConfig::default());
        let budget = rp.wait_budget().as_nanos() as u64;
        for i in 0..100u32 {
            rp.plan_prefetch(tag(i), false, false, 0);
        }
        // Nothing has arrived yet: a check probes one in-flight run and stops.
        let mut probes = 0;
        let mut out = Vec::new();
        rp.plan_retries(
            1,
            LOSS_SCAN,
            |_| {
                probes += 1;
                false
            },
            &mut out,
        );
        assert_eq!(probes, IN_FLIGHT_RUN + HOLE_LOOKAHEAD.len());
        // Blocks 0..20 are lost, 20.. arrived. Once the lost ones are older than a budget the
        // check goes past them, sees the arrivals and, after the reorder grace, retries them.
        let lost = |t: &BufferTag| t.blkno >= 20;
        check_twice(&mut rp, budget + 1, lost, &mut out);
        assert_eq!(out, (0..20).map(tag).collect::<Vec<_>>());
    }

    #[test]
    fn a_young_hole_with_arrivals_behind_it_is_found_but_the_front_in_flight_is_not() {
        let mut rp = ReadPath::new(ReadPathConfig::default());
        for i in 0..128u32 {
            rp.plan_prefetch(tag(i), false, false, 0);
        }
        // A batch of 32 consecutive pages lost (a page server's interleaved batch of split
        // pages), the 32 after it arrived, the rest still in flight; all requested just now,
        // well within the in-flight time. The check looks past the hole's first pages, sees
        // the arrivals and, after the reorder grace, retries the whole batch.
        let arrived = |t: &BufferTag| (32..64).contains(&t.blkno);
        let mut out = Vec::new();
        check_twice(&mut rp, 1, arrived, &mut out);
        assert_eq!(out, (0..32).map(tag).collect::<Vec<_>>());
        // Past the arrivals, the front in flight: a run of missing pages with nothing behind
        // it, which is neither retried nor probed past the run and its look ahead.
        out.clear();
        let mut probes = 0;
        let grace = rp.reorder_grace_ns();
        rp.plan_retries(
            1 + 2 * grace,
            LOSS_SCAN,
            |_| {
                probes += 1;
                false
            },
            &mut out,
        );
        assert!(out.is_empty(), "in flight, not lost: {out:?}");
        assert_eq!(probes, IN_FLIGHT_RUN + HOLE_LOOKAHEAD.len());
    }

    #[test]
    fn a_read_giving_up_on_an_overdue_page_names_the_missing_pages_sent_with_it() {
        let mut rp = ReadPath::new(ReadPathConfig::default());
        let budget = rp.wait_budget().as_nanos() as u64;
        // Two requests: 0..48 at time 0, 48..64 later.
        for i in 0..64u32 {
            rp.plan_prefetch(tag(i), false, false, if i < 48 { 0 } else { budget });
        }
        // Page 0's wait runs out: 1..40 are missing (40 arrived), 48.. are a later request.
        let missing = |t: &BufferTag| t.blkno == 40;
        assert!(matches!(
            rp.on_lookup(tag(0), false, false, 1),
            Some(Step::Wait(_))
        ));
        assert_eq!(
            rp.on_wait_result(tag(0), false, 1 + budget),
            Some(Step::Fetch)
        );
        let mut out = Vec::new();
        assert_eq!(rp.overdue_run(missing, &mut out), OVERDUE_RUN);
        assert_eq!(out, (1..=OVERDUE_RUN as u32).map(tag).collect::<Vec<_>>());
        // Asked once per read that gave up: nothing more until another does.
        assert_eq!(rp.overdue_run(|_| false, &mut out), 0);
        // A run stops at the first page that arrived, and at a page of a later request.
        for t in &out {
            rp.repair_by_tcp(t);
        }
        out.clear();
        assert!(matches!(
            rp.on_lookup(tag(32), false, false, 2 + budget),
            Some(Step::Wait(_))
        ));
        assert_eq!(
            rp.on_wait_result(tag(32), false, 2 + 2 * budget),
            Some(Step::Fetch)
        );
        assert_eq!(rp.overdue_run(|t| t.blkno == 40, &mut out), 7);
        assert_eq!(out, (33..40).map(tag).collect::<Vec<_>>());
        out.clear();
        assert!(rp
            .on_lookup(tag(41), false, false, 3 + 2 * budget)
            .is_some());
        rp.overdue = Some((tag(41), 0));
        assert_eq!(rp.overdue_run(|_| false, &mut out), 6, "42..48, not 48..");
        // A page already known lost (overtaken) is not overdue: no run.
        out.clear();
        let mut lost = ReadPath::new(ReadPathConfig::default());
        for i in 0..16u32 {
            lost.plan_prefetch(tag(i), false, false, 0);
        }
        check_twice(&mut lost, 1, |t| t.blkno >= 1, &mut out);
        assert_eq!(out, vec![tag(0)]);
        out.clear();
        let _ = lost.on_lookup(tag(0), false, false, 2 + budget);
        let _ = lost.on_wait_result(tag(0), false, 3 + 2 * budget);
        assert_eq!(lost.overdue_run(|_| false, &mut out), 0);
    }

    #[test]
    fn a_burst_loss_longer_than_a_check_used_to_see_is_found_and_exhausted_pages_leave() {
        let mut rp = ReadPath::new(ReadPathConfig::default());
        let budget = rp.wait_budget().as_nanos() as u64;
        // 200 consecutive pages lost, the 50 after them arrived.
        for i in 0..250u32 {
            rp.plan_prefetch(tag(i), false, false, 0);
        }
        let mut arrived: Vec<u32> = (200..250).collect();
        let mut out = Vec::new();
        check_twice(
            &mut rp,
            budget + 1,
            |t| arrived.contains(&t.blkno),
            &mut out,
        );
        assert_eq!(out, (0..200).map(tag).collect::<Vec<_>>());
        // Every retry is lost too, round after round, until none is left: then they leave the
        // queue (a check no longer probes them) and their reads go to TCP at once.
        let mut next = 250u32;
        for round in 1..=u64::from(MAX_RETRIES) {
            out.clear();
            let t = round * 10 * budget;
            for _ in 0..OVERTAKEN_BY {
                rp.plan_prefetch(tag(next), false, false, t);
                arrived.push(next);
                next += 1;
            }
            check_twice(&mut rp, t + 1, |t| arrived.contains(&t.blkno), &mut out);
        }
        assert_eq!(rp.stats().retries, 200 * u64::from(MAX_RETRIES));
        let late = 100 * budget;
        let mut probes = 0;
        rp.plan_retries(
            late,
            LOSS_SCAN,
            |t| {
                probes += 1;
                arrived.contains(&t.blkno)
            },
            &mut out,
        );
        assert_eq!(probes, 0, "nothing left to probe");
        assert_eq!(rp.on_lookup(tag(5), false, false, late), Some(Step::Fetch));
        assert_eq!(rp.stats().window_cuts, 0, "loss never cuts the window");
    }

    #[test]
    fn reordered_pages_are_not_taken_as_lost() {
        let mut rp = ReadPath::new(ReadPathConfig::default());
        for i in 0..20u32 {
            rp.plan_prefetch(tag(i), false, false, 0);
        }
        // One GSO message (blocks 0..7) overtaken by the next two, then arriving within the
        // grace: no retry.
        let mut out = Vec::new();
        rp.plan_retries(1_000, LOSS_SCAN, |t| t.blkno >= 7, &mut out);
        rp.plan_retries(1_000 + REORDER_GRACE_NS / 2, LOSS_SCAN, |_| true, &mut out);
        rp.plan_retries(1_000 + 2 * REORDER_GRACE_NS, LOSS_SCAN, |_| true, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(rp.stats().retries, 0);
    }

    #[test]
    fn arrivals_leave_the_queue_so_checks_reach_further_ahead() {
        let mut rp = ReadPath::new(ReadPathConfig::default());
        let n = 3 * LOSS_SCAN as u32;
        for i in 0..n {
            rp.plan_prefetch(tag(i), false, false, 0);
        }
        // Only one block near the end is lost; a check probes LOSS_SCAN entries, so it takes
        // three checks to reach it, each probing each arrived page once.
        let lost = n - 1 - OVERTAKEN_BY as u32;
        let mut probes = 0;
        let mut out = Vec::new();
        for now in [1, 1, 1, 1 + REORDER_GRACE_NS] {
            rp.plan_retries(
                now,
                LOSS_SCAN,
                |t| {
                    probes += 1;
                    t.blkno != lost
                },
                &mut out,
            );
        }
        assert_eq!(out, vec![tag(lost)]);
        // Every page once, and the lost one once more to confirm it after the grace.
        assert_eq!(probes, n as usize + 1);
    }

    #[test]
    fn late_prefetches_are_not_retried_and_read_ones_leave_the_queue() {
        let mut rp = ReadPath::new(ReadPathConfig::default());
        for i in 0..6u32 {
            rp.plan_prefetch(tag(i), false, false, 0);
        }
        // Block 2 missing with only two later ones in (3, 4): fewer than OVERTAKEN_BY. However
        // late it gets, lateness alone (a backlogged sender) is no reason to ask again.
        let cached = |t: &BufferTag| t.blkno != 2 && t.blkno < 5;
        let mut out = Vec::new();
        rp.plan_retries(10_000, LOSS_SCAN, cached, &mut out);
        rp.plan_retries(10_000_000_000, LOSS_SCAN, cached, &mut out);
        assert!(out.is_empty(), "{out:?}");
        // Reads take pages out of the queue: 0 and 1 read, then 2 is retried once overtaken.
        assert_eq!(rp.on_lookup(tag(0), true, false, 0), None);
        assert_eq!(rp.on_lookup(tag(1), true, false, 0), None);
        for i in 6..8u32 {
            rp.plan_prefetch(tag(i), false, false, 0);
        }
        let arrived = |t: &BufferTag| t.blkno != 2;
        check_twice(&mut rp, 20_000, arrived, &mut out);
        assert_eq!(out, vec![tag(2)]);
        assert_eq!(rp.stats().retries, 1);
    }

    #[test]
    fn the_prefetch_window_halves_on_misses_and_grows_with_hits() {
        let mut rp = ReadPath::new(ReadPathConfig::default());
        assert_eq!(rp.prefetch_distance(128), INITIAL_WINDOW);
        assert_eq!(rp.prefetch_distance(8), 8, "never more than asked");
        // Hits of own prefetches grow it, half a page each.
        for i in 0..400u32 {
            rp.plan_prefetch(tag(i), false, false, 0);
            assert_eq!(rp.on_lookup(tag(i), true, false, 0), None);
        }
        assert_eq!(rp.prefetch_distance(128), 128);
        // An own prefetch whose wait runs out halves the distance in use, once per budget.
        let budget = rp.wait_budget().as_nanos() as u64;
        let t0 = 10 * budget;
        let miss = |rp: &mut ReadPath, b: u32, now: u64| {
            rp.plan_prefetch(tag(b), false, false, 0);
            assert!(matches!(
                rp.on_lookup(tag(b), false, false, now),
                Some(Step::Wait(_))
            ));
            assert_eq!(rp.on_wait_result(tag(b), false, now), Some(Step::Fetch));
        };
        miss(&mut rp, 1000, t0);
        miss(&mut rp, 1001, t0 + 1);
        assert_eq!(rp.prefetch_distance(128), 64);
        let budget = rp.wait_budget().as_nanos() as u64;
        miss(&mut rp, 1002, t0 + budget);
        assert_eq!(rp.prefetch_distance(128), 32);
        // Never below the floor.
        for k in 2..20u64 {
            miss(&mut rp, 2000, t0 + k * 100 * budget);
        }
        assert_eq!(rp.prefetch_distance(128), MIN_WINDOW);
        assert!(rp.stats().window_cuts >= 3);
    }

    #[test]
    fn late_hits_grow_the_window_a_page_each_and_others_prefetches_do_not() {
        let mut rp = ReadPath::new(ReadPathConfig::default());
        // A reader that catches up with its own prefetches (each waited for, then there):
        // a window's worth of late hits doubles it, as a round trip of TCP's slow start would.
        for i in 0..INITIAL_WINDOW {
            rp.plan_prefetch(tag(i), false, false, 0);
            assert!(matches!(
                rp.on_lookup(tag(i), false, false, 100),
                Some(Step::Wait(_))
            ));
            assert_eq!(rp.on_wait_result(tag(i), true, 300), None);
        }
        assert_eq!(rp.prefetch_distance(512), 2 * INITIAL_WINDOW);
        assert_eq!(rp.stats().late_hits, u64::from(INITIAL_WINDOW));
        // Another backend's prefetch waited for says nothing of this window.
        for i in 100..116u32 {
            rp.on_lookup(tag(i), false, true, 400);
            assert_eq!(rp.on_wait_result(tag(i), true, 500), None);
        }
        assert_eq!(rp.prefetch_distance(512), 2 * INITIAL_WINDOW);
    }

    #[test]
    fn a_lost_and_retried_prefetch_that_misses_again_leaves_the_window() {
        let mut rp = ReadPath::new(ReadPathConfig::default());
        for i in 0..400u32 {
            rp.plan_prefetch(tag(i), false, false, 0);
            assert_eq!(rp.on_lookup(tag(i), true, false, 0), None);
        }
        assert_eq!(rp.prefetch_distance(128), 128);
        // Block 1000 is overtaken by the 4 requested after it: taken as lost, retried.
        for b in 1000..1005u32 {
            rp.plan_prefetch(tag(b), false, false, 0);
        }
        let mut retry = Vec::new();
        check_twice(&mut rp, 1, |t| t.blkno != 1000, &mut retry);
        assert_eq!(retry, [tag(1000)]);
        // The retry is lost too: the read falls back, the window stays.
        let late = 10 * rp.wait_budget().as_nanos() as u64;
        assert_eq!(
            rp.on_lookup(tag(1000), false, false, late),
            Some(Step::Fetch)
        );
        assert_eq!(rp.prefetch_distance(128), 128);
        assert_eq!(rp.stats().window_cuts, 0);
        // One never taken as lost whose wait runs out is queueing: the window halves.
        rp.plan_prefetch(tag(2000), false, false, late);
        assert!(matches!(
            rp.on_lookup(tag(2000), false, false, 3 * late),
            Some(Step::Wait(_))
        ));
        assert_eq!(
            rp.on_wait_result(tag(2000), false, 4 * late),
            Some(Step::Fetch)
        );
        assert_eq!(rp.prefetch_distance(128), 64);
    }

    #[test]
    fn scan_window_tops_up_in_batches_and_stops_at_the_end() {
        let mut w = ScanWindow::new(10, 100);
        assert_eq!(w.top_up(10, 32), Some(10..42));
        // Nothing until a batch (8 pages at distance 32) has been read.
        for b in 11..18 {
            assert_eq!(w.top_up(b, 32), None, "block {b}");
        }
        assert_eq!(w.top_up(18, 32), Some(42..50));
        // A smaller distance (window cut) requests nothing until the reader catches up.
        assert_eq!(w.top_up(19, 4), None);
        assert_eq!(w.top_up(50, 4), Some(50..54));
        // Near the end the last pages go out even when fewer than a batch.
        assert_eq!(w.top_up(95, 32), Some(95..100));
        assert_eq!(w.top_up(99, 32), None);
    }

    #[test]
    fn prefetch_runs_group_consecutive_blocks_of_one_relation() {
        let other = RelTag::new(1663, 5, 16385, 0);
        let mut pages: Vec<(BufferTag, u64)> = [tag(5), tag(3), other.block(4), tag(4), tag(9)]
            .into_iter()
            .map(|t| (t, u64::from(t.blkno) * 10))
            .collect();
        let mut runs = Vec::new();
        prefetch_runs(&mut pages, &mut runs);
        let run = |rel, first, n, max_lwlsn| PrefetchRun {
            rel,
            first,
            n,
            max_lwlsn,
        };
        let rel = tag(0).rel;
        assert_eq!(
            runs,
            vec![run(rel, 3, 3, 50), run(rel, 9, 1, 90), run(other, 4, 1, 40)]
        );
    }

    #[test]
    fn tracking_is_bounded_and_unread_prefetches_are_wasted() {
        let mut rp = ReadPath::new(ReadPathConfig {
            max_tracked: 10,
            ..ReadPathConfig::default()
        });
        for i in 0..25u32 {
            assert!(rp.plan_prefetch(tag(i), false, false, u64::from(i)));
        }
        assert!(rp.loss.len() <= 10);
        let s = rp.finish();
        assert_eq!(s.prefetched, 25);
        assert_eq!(s.wasted_prefetches, 25);
    }
}
