//! The backend's TCP GetPage pipeline, as Neon's compute keeps one: pages queued to be fetched
//! ahead of the reader, at most `depth` requests in flight on the connection, responses
//! matched to requests. Owns only the bookkeeping and the bound on requests in flight
//! ([`DepthLimit`]): the driver decides what enters and sends what leaves.
//!
//! Neon's compute keeps a fixed 128 GetPages in flight (`Driver::tcp_only`, the baseline does
//! too). A backend that may prefetch by UDP bounds its pipeline by what the path needs instead
//! (TCP Vegas's rule, once per round trip): every request beyond the path's delay at the
//! reader's pace only queues, at the page server or in the socket, and a foreground read sent
//! behind them waits for all of them. In `bench hol` a reader that fell back to TCP pipelining
//! made its foreground reads wait behind 128 answers (a p99 of 1.2–2.3 ms against 0.45 ms
//! idle); at a fixed 32 or 48 the same reads took 0.58–1.2 ms and the scan kept its speed.

use lfc::BufferTag;
use rustc_hash::FxHashSet;
use std::collections::VecDeque;

/// Bound of the queue of pages not yet sent: a whole prefetch window moved from UDP plus the
/// pages a reader may queue ahead of it.
pub const MAX_QUEUED: usize = 2 * crate::compute::backend::read_path::MAX_WINDOW as usize;

/// GetPages between flushes of the pipelined TCP connection (Neon flushes its prefetch requests
/// in small batches, not one by one): the backend's pipeline and `scan`'s pipelined mode.
pub const PIPELINED_FLUSH_EVERY: usize = 8;

/// A page waiting for its GetPage to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    pub tag: BufferTag,
    /// Whether it is a page of the health state's probe (or race), and which.
    pub check: Check,
    /// Requested ahead of its read (false: a read is waiting for it now).
    pub ahead: bool,
}

/// What a queued page tells the health state's running probe when its turn comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Nothing: an ordinary page.
    None,
    /// Requested by UDP as a probe of that path: sent by TCP only if it has not arrived when
    /// its turn comes. Not arrived then, it failed, unless its turn came less than a GetPage
    /// round trip after the probe was sent: then its answer judges it as a race's does
    /// (already installed: UDP brought it first). Judged at the turn alone, a probe failed
    /// whenever the pipeline had room, a page's turn coming as its Prefetch was sent.
    Probe,
    /// Requested by UDP before a first miss moved it here (`UdpHealth::start_race`): UDP and
    /// the TCP pipeline race for it, and which one brings it first is judged when its turn
    /// comes (cached by then: UDP) or when its answer comes (already installed: UDP).
    Race,
    /// Taken as lost by a loss check (overtaken by later pages past the reorder grace) and
    /// fetched by TCP: judged as a race is. Cached at its turn or already installed at its
    /// answer, UDP brought it after all (reordered, not lost); else it was lost.
    Repair,
}

/// A request on the wire whose response has not been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlight {
    /// PrefetchTarget: answered in order like a GetPage.
    Target,
    Page {
        tag: BufferTag,
        /// What the GetPage asked for: a response is current only while the tag's lwlsn has
        /// not risen above it.
        not_modified_since: u64,
        ahead: bool,
        /// What its answer judges (`Check::Probe`, `Check::Race`, `Check::Repair`), or
        /// `Check::None`.
        judge: Check,
        /// When it was sent: its answer's round trip moves the depth limit.
        sent_ns: u64,
    },
}

/// Requests an adaptive pipeline keeps beyond what the path's delay needs at the reader's
/// pace, as a share of its cap: 8 at Neon's 128, room for the pace to rise by a quarter within
/// a round trip at 32 needed (a 250 µs round trip at 130k pages/s), and few enough that a
/// foreground read waits behind at most this many answers besides. Also the least it keeps
/// room for (one of Neon's flush batches at 128), so a round trip mismeasured low cannot
/// starve a scan. A slack of 16 measured alike in `bench hol` split (busy/idle 1.14 against
/// 1.07, eight alternated pairs, the busy scan at the same speed) and worse colocated (1.50
/// against 1.14, three pairs).
pub const DEPTH_SLACK_DIVISOR: usize = 16;
/// The least slack: a cap of two or less is fixed.
pub const MIN_DEPTH_SLACK: usize = 2;

/// The slack of a pipeline capped at `cap` ([`DEPTH_SLACK_DIVISOR`]).
pub fn depth_slack(cap: usize) -> usize {
    (cap / DEPTH_SLACK_DIVISOR).max(MIN_DEPTH_SLACK)
}

/// Half the window over which the least round trip is taken as the path's own delay (the
/// least of this half and the one before): long enough to hold a moment with no queue, short
/// enough that a page server slower for good is learned within a few seconds.
pub const MIN_RTT_HALF_WINDOW_NS: u64 = 1_000_000_000;
/// How long after a read's GetPage went behind the pipeline the limit keeps adapting: reads
/// outside a scan (an index's pages beside a sequential scan, `bench hol`'s foreground reads)
/// come a few per millisecond, and a pipeline that carries only a scan keeps its full depth.
/// Adapted always, a pipeline bounded by what the path needs starved the page server whenever
/// the reader was off the CPU longer than the slack covered: on a busy compute (`bench
/// many-backends`, 8 backends) and at MTU 1500 (`bench net`, the reader sharing its CPU with
/// the daemon) scans ran at 0.5–0.85 × the fixed depth's speed.
pub const CONTENDED_NS: u64 = 50_000_000;

/// The bound on requests in flight: fixed, or adapted once per round trip to the path's delay
/// times the rate answers are taken at, plus the slack ([`depth_slack`]), within
/// `[slack, cap]`.
///
/// With `n` requests in flight and a round trip of `rtt` against the path's least `base`, the
/// requests the path itself holds are `n · base / rtt`; the rest wait in a queue (the page
/// server's, or the socket's while the reader is busy). When more than the slack queue, the
/// limit moves down to those held plus the slack at once; when fewer do while the pipeline is
/// full and pages wait to be sent (the limit, not the reader, holds them back), it moves up
/// to that, at most doubling a round. With nothing queued the path holds all in flight, so
/// it rises by the slack a round trip: after a pause of the reader cut it, 128 returns in
/// about 15 round trips, and the 32 a 250 µs path needs at 130k pages/s in three.
#[derive(Debug, Clone)]
pub struct DepthLimit {
    cap: usize,
    adaptive: bool,
    limit: usize,
    /// Least round trip of the current half window and of the one before (`u64::MAX`: none).
    min_rtt_now: u64,
    min_rtt_before: u64,
    half_started_ns: u64,
    /// The limit moves at most once a round trip: on the first answer to a request sent after
    /// its last move.
    moved_ns: u64,
    /// Until when reads outside the pipeline are taken to share it (`foreground_sent`): the
    /// limit adapts only then, and is back at its cap otherwise.
    contended_until_ns: u64,
    /// Times the limit moved down.
    cuts: u64,
}

impl DepthLimit {
    /// A limit of `cap` that never moves (Neon's pipeline).
    pub fn fixed(cap: usize) -> Self {
        assert!(cap >= 1);
        DepthLimit {
            cap,
            adaptive: false,
            limit: cap,
            min_rtt_now: u64::MAX,
            min_rtt_before: u64::MAX,
            half_started_ns: 0,
            moved_ns: 0,
            contended_until_ns: 0,
            cuts: 0,
        }
    }

    /// A limit that starts at `cap` (as Neon's) and adapts within `[depth_slack(cap), cap]`
    /// (a cap at or below its slack is fixed).
    pub fn adaptive(cap: usize) -> Self {
        DepthLimit {
            adaptive: true,
            ..Self::fixed(cap)
        }
    }

    pub fn get(&self) -> usize {
        self.limit
    }

    /// Times the limit moved down.
    pub fn cuts(&self) -> u64 {
        self.cuts
    }

    /// The least round trip of the window, if any was measured.
    pub fn min_rtt_ns(&self) -> Option<u64> {
        let m = self.min_rtt_now.min(self.min_rtt_before);
        (m != u64::MAX).then_some(m)
    }

    /// A read's GetPage of a page outside the pipeline went behind requests in flight at
    /// `now_ns`: for [`CONTENDED_NS`] the limit adapts.
    pub fn foreground_sent(&mut self, now_ns: u64) {
        self.contended_until_ns = now_ns + CONTENDED_NS;
    }

    /// An answer to a request sent at `sent_ns` came at `now_ns`, with `in_flight` requests
    /// (this one included) outstanding; `waiting`: pages are queued that the limit holds back.
    pub fn on_answer(&mut self, sent_ns: u64, now_ns: u64, in_flight: usize, waiting: bool) {
        if !self.adaptive {
            return;
        }
        if now_ns >= self.contended_until_ns {
            // Nothing waits behind the pipeline: as deep as Neon's, which covers the reader's
            // time off the CPU too.
            self.limit = self.cap;
        }
        let rtt = now_ns.saturating_sub(sent_ns).max(1);
        if now_ns.saturating_sub(self.half_started_ns) >= MIN_RTT_HALF_WINDOW_NS {
            // A window with no answer at all leaves nothing of the one before it.
            let idle = now_ns.saturating_sub(self.half_started_ns) >= 2 * MIN_RTT_HALF_WINDOW_NS;
            self.min_rtt_before = if idle { u64::MAX } else { self.min_rtt_now };
            self.min_rtt_now = u64::MAX;
            self.half_started_ns = now_ns;
        }
        self.min_rtt_now = self.min_rtt_now.min(rtt);
        if sent_ns < self.moved_ns || now_ns >= self.contended_until_ns {
            return;
        }
        let base = self.min_rtt_ns().expect("a sample was just taken");
        let held = in_flight as f64 * base as f64 / rtt as f64;
        let queued = in_flight as f64 - held;
        let floor = depth_slack(self.cap).min(self.cap);
        let slack = floor as f64;
        let wanted = (held + slack).ceil() as usize;
        let next = if queued > slack {
            wanted.clamp(floor, self.limit)
        } else if waiting && in_flight >= self.limit && wanted > self.limit {
            wanted.min(2 * self.limit).min(self.cap)
        } else {
            self.limit
        };
        debug_assert!((floor..=self.cap).contains(&next));
        if next != self.limit {
            self.cuts += u64::from(next < self.limit);
            self.limit = next;
            self.moved_ns = now_ns;
        }
    }
}

#[derive(Debug)]
pub struct Pipeline {
    depth: DepthLimit,
    queued: VecDeque<Queued>,
    in_flight: VecDeque<InFlight>,
    /// Tags queued or in flight, so nothing is requested twice.
    members: FxHashSet<BufferTag>,
}

impl Pipeline {
    pub fn new(depth: DepthLimit) -> Self {
        let cap = depth.cap;
        Pipeline {
            depth,
            queued: VecDeque::with_capacity(MAX_QUEUED),
            in_flight: VecDeque::with_capacity(cap + 1),
            members: FxHashSet::default(),
        }
    }

    pub fn contains(&self, tag: &BufferTag) -> bool {
        self.members.contains(tag)
    }

    /// Whether the oldest request on the wire is the GetPage of `tag`: its response is the next
    /// one the connection brings.
    pub fn next_answer_is(&self, tag: &BufferTag) -> bool {
        matches!(self.in_flight.front(), Some(InFlight::Page { tag: t, .. }) if t == tag)
    }

    /// The page of the `n`-th request on the wire from the oldest (0: the next answer), if
    /// that request is a GetPage.
    pub fn in_flight_page(&self, n: usize) -> Option<&BufferTag> {
        match self.in_flight.get(n)? {
            InFlight::Page { tag, .. } => Some(tag),
            InFlight::Target => None,
        }
    }

    /// The `n`-th page queued to be sent (0: the next one).
    pub fn queued_page(&self, n: usize) -> Option<&BufferTag> {
        self.queued.get(n).map(|q| &q.tag)
    }

    /// Requests on the wire awaiting a response.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_idle(&self) -> bool {
        self.queued.is_empty() && self.in_flight.is_empty()
    }

    /// Queues `tag` in tag order among the pages requested ahead (the order a scan reads them
    /// in: a window moved from UDP and a scan's restarted window interleave correctly); false
    /// (nothing queued) when it is already in the pipeline or the queue is full (the read then
    /// fetches it in its turn). Usually appends; the search from the back is short.
    pub fn push_back(&mut self, q: Queued) -> bool {
        if self.queued.len() >= MAX_QUEUED || !self.members.insert(q.tag) {
            return false;
        }
        let at = self
            .queued
            .iter()
            .rposition(|e| !e.ahead || e.tag < q.tag)
            .map_or(0, |i| i + 1);
        self.queued.insert(at, q);
        true
    }

    /// Queues `tag` to go next: a read is waiting for it. If it is queued already it moves to
    /// the front (no longer a probe; the old entry is returned); if in flight, nothing changes.
    pub fn push_front(&mut self, tag: BufferTag) -> Option<Queued> {
        let mut old = None;
        if self.members.contains(&tag) {
            let i = self.queued.iter().position(|q| q.tag == tag)?;
            old = self.queued.remove(i);
        }
        self.members.insert(tag);
        self.queued.push_front(Queued {
            tag,
            check: Check::None,
            ahead: false,
        });
        old
    }

    /// The next page to send, if the pipeline has room. A page a read is waiting for (first in
    /// the queue) needs room under the cap only: the limit holds back pages fetched ahead, and
    /// a read held back by it would wait for the pipeline to drain to the limit and then for a
    /// round trip, where sent at once it waits for the answers ahead of it alone.
    pub fn next_to_send(&mut self) -> Option<Queued> {
        let n = self.in_flight.len();
        let waited_for = self.queued.front().is_some_and(|q| !q.ahead);
        if n >= self.depth.get() && !(waited_for && n < self.depth.cap) {
            return None;
        }
        self.queued.pop_front()
    }

    /// A popped page that is not sent after all (it arrived meanwhile).
    pub fn skip(&mut self, tag: &BufferTag) {
        self.members.remove(tag);
    }

    pub fn sent(&mut self, entry: InFlight) {
        self.in_flight.push_back(entry);
    }

    /// The in-flight entry a response answers: a target response answers the oldest target, a
    /// page response the oldest request for that tag (one connection answers in order, so it
    /// is the front; several shards' connections interleave, hence the search).
    /// The page's round trip, taken at `now_ns`, moves the limit (`DepthLimit::on_answer`).
    pub fn answered(&mut self, page: Option<&BufferTag>, now_ns: u64) -> Option<InFlight> {
        let i = self.in_flight.iter().position(|e| match (e, page) {
            (InFlight::Target, None) => true,
            (InFlight::Page { tag, .. }, Some(t)) => tag == t,
            _ => false,
        })?;
        let outstanding = self.in_flight.len();
        let e = self.in_flight.remove(i)?;
        if let InFlight::Page { tag, sent_ns, .. } = &e {
            self.members.remove(tag);
            self.depth
                .on_answer(*sent_ns, now_ns, outstanding, !self.queued.is_empty());
        }
        Some(e)
    }

    /// The bound on requests in flight now.
    pub fn depth(&self) -> usize {
        self.depth.get()
    }

    /// Times the bound moved down (`DepthLimit::cuts`).
    pub fn depth_cuts(&self) -> u64 {
        self.depth.cuts()
    }

    /// A read's GetPage of `tag`, a page outside the scan's window, is about to be queued:
    /// unless it is queued or in flight already, it waits behind the requests in flight, and
    /// the limit adapts for a while (`DepthLimit::foreground_sent`).
    pub fn note_foreground(&mut self, tag: &BufferTag, now_ns: u64) {
        if !self.in_flight.is_empty() && !self.members.contains(tag) {
            self.depth.foreground_sent(now_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lfc::RelTag;

    fn tag(b: u32) -> BufferTag {
        RelTag::new(1663, 5, 16384, 0).block(b)
    }

    fn q(b: u32) -> Queued {
        Queued {
            tag: tag(b),
            check: Check::None,
            ahead: true,
        }
    }

    /// Sends what the pipeline has room for; the blocks sent.
    fn send_all(p: &mut Pipeline) -> Vec<u32> {
        let mut sent = Vec::new();
        while let Some(x) = p.next_to_send() {
            p.sent(InFlight::Page {
                tag: x.tag,
                not_modified_since: 0,
                ahead: true,
                judge: Check::None,
                sent_ns: 0,
            });
            sent.push(x.tag.blkno);
        }
        sent
    }

    #[test]
    fn depth_bounds_the_requests_in_flight_and_responses_free_room() {
        let mut p = Pipeline::new(DepthLimit::fixed(2));
        for b in 0..4 {
            assert!(p.push_back(q(b)));
        }
        assert!(!p.push_back(q(1)), "no duplicates");
        let sent = send_all(&mut p);
        assert_eq!(sent, [0, 1]);
        assert_eq!(
            p.in_flight_page(1),
            Some(&tag(1)),
            "the second answer to come"
        );
        assert_eq!(p.in_flight_page(2), None);
        assert_eq!(p.queued_page(1), Some(&tag(3)), "the second page to send");
        assert!(p.answered(Some(&tag(3)), 1).is_none(), "not in flight");
        assert!(p.answered(Some(&tag(0)), 1).is_some());
        assert!(!p.contains(&tag(0)));
        assert_eq!(p.next_to_send().map(|x| x.tag.blkno), Some(2));
    }

    #[test]
    fn pages_queue_in_read_order_behind_a_waiting_read() {
        let mut p = Pipeline::new(DepthLimit::fixed(1));
        for b in [10, 11, 12, 3, 4, 20, 5] {
            assert!(p.push_back(q(b)));
        }
        p.push_front(tag(30));
        p.push_back(q(1));
        let order: Vec<u32> = std::iter::from_fn(|| p.queued.pop_front())
            .map(|x| x.tag.blkno)
            .collect();
        assert_eq!(order, [30, 1, 3, 4, 5, 10, 11, 12, 20]);
    }

    #[test]
    fn a_waiting_read_jumps_the_queue() {
        let mut p = Pipeline::new(DepthLimit::fixed(1));
        for b in 0..3 {
            p.push_back(q(b));
        }
        p.push_front(tag(2));
        p.push_front(tag(9));
        let order: Vec<u32> = std::iter::from_fn(|| p.queued.pop_front())
            .map(|x| x.tag.blkno)
            .collect();
        assert_eq!(order, [9, 2, 0, 1]);
    }

    const US: u64 = 1_000;

    /// An adaptive limit whose pipeline foreground reads share all along.
    fn shared(cap: usize) -> DepthLimit {
        let mut d = DepthLimit::adaptive(cap);
        d.contended_until_ns = u64::MAX;
        d
    }

    /// [`shared`] with a path of 250 µs, after a round trip whose answers were all read 10 ms
    /// late (a reader off the CPU).
    fn paused(cap: usize) -> DepthLimit {
        let mut d = shared(cap);
        d.on_answer(0, 250 * US, 1, false);
        answer_round(&mut d, 1_000 * US, 11_000 * US, false);
        d
    }

    /// Answers `n` requests sent at `sent_ns`, each at `now_ns`, the pipeline full (`n` in
    /// flight) with `waiting` pages queued behind it.
    fn answer_round(d: &mut DepthLimit, sent_ns: u64, now_ns: u64, waiting: bool) {
        let n = d.get();
        for k in 0..n {
            d.on_answer(sent_ns, now_ns, n - k, waiting);
        }
    }

    #[test]
    fn a_fixed_depth_never_moves() {
        let mut d = DepthLimit::fixed(128);
        d.on_answer(0, 200 * US, 1, false);
        d.on_answer(0, 5_000 * US, 128, false);
        d.on_answer(10_000 * US, 10_100 * US, 128, true);
        assert_eq!(d.get(), 128);
    }

    #[test]
    fn a_queue_beyond_the_slack_shrinks_the_limit_to_what_the_path_holds_once_a_round_trip() {
        let mut d = shared(128);
        // The path's own delay: a lone request answered in 250 µs.
        d.on_answer(0, 250 * US, 1, false);
        assert_eq!(d.get(), 128, "no queue: nothing moves");
        assert_eq!(d.min_rtt_ns(), Some(250 * US));
        // 128 in flight answered after 1 ms: the path holds 32 of them, 96 queue.
        let t = 1_000 * US;
        d.on_answer(t, 2 * t, 128, true);
        assert_eq!(d.get(), 32 + depth_slack(128));
        // The rest of that round trip's answers, sent before the move, move nothing more.
        for n in (1..128).rev() {
            d.on_answer(t, 2 * t + 1, n, true);
        }
        assert_eq!(d.get(), 40);
        // A queue within the slack is left alone: 40 · (1 − 250/280) = 4.3 queued.
        d.on_answer(3 * t, 3 * t + 280 * US, 40, false);
        assert_eq!(d.get(), 40);
    }

    #[test]
    fn the_limit_grows_by_its_slack_a_round_trip_while_it_holds_pages_back_and_none_queue() {
        // A pause of the reader: every answer of a round trip read 10 ms late.
        let mut d = paused(128);
        // 128 · 250/10000 = 3.2 held: down to 12 at once.
        assert_eq!(d.get(), 12);
        // The reader is back and waits: answers within the path's delay, pages queued. The
        // path holds all the limit lets through, so it rises to that and the slack.
        let mut t = 20_000 * US;
        let mut seen = vec![d.get()];
        while d.get() < 128 {
            answer_round(&mut d, t, t + 250 * US, true);
            t += 1_000 * US;
            seen.push(d.get());
            assert!(seen.len() <= 16, "{seen:?}");
        }
        let slack = depth_slack(128);
        assert!(
            seen.windows(2)
                .all(|w| w[1] > w[0] && w[1] <= (w[0] + slack).max(2 * w[0]).min(128)),
            "{seen:?}"
        );
        assert_eq!(seen[3], 12 + 3 * slack, "{seen:?}");
        // Nothing holds it above its cap.
        answer_round(&mut d, t, t + 250 * US, true);
        assert_eq!(d.get(), 128);
    }

    #[test]
    fn a_reader_that_asks_for_less_than_the_limit_does_not_grow_it() {
        let mut d = paused(128);
        let low = d.get();
        assert!(low < 128);
        // Answers within the path's delay, but nothing queued behind them, or the pipeline
        // not full: the limit holds nothing back.
        d.on_answer(20_000 * US, 20_250 * US, low, false);
        d.on_answer(21_000 * US, 21_250 * US, low - 1, true);
        assert_eq!(d.get(), low);
        // Full, with pages behind it: it does.
        d.on_answer(22_000 * US, 22_250 * US, low, true);
        assert!(d.get() > low);
    }

    #[test]
    fn the_least_round_trip_is_forgotten_after_two_half_windows() {
        let mut d = shared(128);
        d.on_answer(0, 100 * US, 1, false);
        let half = MIN_RTT_HALF_WINDOW_NS;
        d.on_answer(half, half + 300 * US, 1, false);
        assert_eq!(
            d.min_rtt_ns(),
            Some(100 * US),
            "the half before still counts"
        );
        d.on_answer(2 * half, 2 * half + 300 * US, 1, false);
        assert_eq!(d.min_rtt_ns(), Some(300 * US), "a slower path is learned");
        // A silence of two half windows forgets everything before it.
        d.on_answer(5 * half, 5 * half + 400 * US, 1, false);
        assert_eq!(d.min_rtt_ns(), Some(400 * US));
    }

    #[test]
    fn a_round_trip_far_above_the_paths_leaves_the_slack() {
        let mut d = shared(128);
        d.on_answer(0, 10 * US, 1, false);
        answer_round(&mut d, 1_000 * US, 101_000 * US, false);
        assert_eq!(d.get(), depth_slack(128) + 1, "0.0128 held, and the slack");
    }

    #[test]
    fn the_slack_is_a_share_of_the_cap() {
        assert_eq!(depth_slack(128), 8);
        assert_eq!(depth_slack(512), 32);
        assert_eq!(depth_slack(16), 2);
        assert_eq!(depth_slack(1), 2);
        let d = paused(16);
        assert_eq!(d.get(), 3, "0.4 held, and 2 of slack");
    }

    #[test]
    fn a_cap_at_its_slack_is_a_fixed_depth() {
        let d = paused(2);
        assert_eq!(d.get(), 2);
    }

    #[test]
    fn a_pipeline_that_carries_only_a_scan_keeps_its_cap() {
        let mut d = DepthLimit::adaptive(128);
        d.on_answer(0, 250 * US, 1, false);
        answer_round(&mut d, 1_000 * US, 11_000 * US, true);
        assert_eq!(d.get(), 128);
    }

    #[test]
    fn the_cap_returns_once_no_read_went_behind_the_pipeline_for_a_while() {
        let mut d = DepthLimit::adaptive(128);
        d.on_answer(0, 250 * US, 1, false);
        d.foreground_sent(1_000 * US);
        d.on_answer(1_000 * US, 2_000 * US, 128, true);
        assert_eq!(d.get(), 32 + depth_slack(128));
        let later = 1_000 * US + CONTENDED_NS;
        d.on_answer(later - 300 * US, later - 1, 40, false);
        assert_eq!(d.get(), 40, "still shared");
        d.on_answer(later - 300 * US, later, 40, false);
        assert_eq!(d.get(), 128);
    }

    #[test]
    fn only_a_page_outside_the_pipeline_read_behind_requests_in_flight_is_foreground() {
        let mut p = Pipeline::new(DepthLimit::adaptive(128));
        p.note_foreground(&tag(50), 0);
        assert_eq!(
            p.depth.contended_until_ns, 0,
            "nothing in flight: it waits for nothing"
        );
        for b in 0..4 {
            p.push_back(q(b));
        }
        send_all(&mut p);
        p.note_foreground(&tag(2), 10);
        assert_eq!(p.depth.contended_until_ns, 0, "in flight: a scan's read");
        p.note_foreground(&tag(50), 10);
        assert_eq!(p.depth.contended_until_ns, 10 + CONTENDED_NS);
    }

    proptest::proptest! {
        #[test]
        fn the_limit_stays_within_its_floor_and_cap(
            cap in 1usize..300,
            answers in proptest::collection::vec(
                (0u64..5_000, 1u64..20_000, 1usize..400, proptest::bool::ANY, proptest::bool::ANY),
                1..200,
            ),
        ) {
            let mut d = DepthLimit::adaptive(cap);
            let mut now = 0;
            for (gap, rtt, in_flight, waiting, foreground) in answers {
                now += gap * US;
                if foreground {
                    d.foreground_sent(now);
                }
                d.on_answer(now.saturating_sub(rtt * US), now, in_flight, waiting);
                proptest::prop_assert!((depth_slack(cap).min(cap)..=cap).contains(&d.get()));
            }
        }
    }
}
