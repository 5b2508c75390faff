//! Loss detection for one backend's own prefetches (ARCHITECTURE §4 step 7): which pages it
//! asked for and has not read yet, in the order it asked (the order the page server sends
//! them in), and which of those were most likely lost on the way, so they are requested again
//! before their reads come.
//!
//! Owns: the table of own prefetches and the request-order queue, both bounded. Touches no LFC,
//! clock or socket, and keeps no latency estimate: the caller (`read_path::ReadPath`) passes
//! `now`, the in-flight time and the reorder grace it derives from its own estimate, and an
//! `is_cached` probe. `ReadPath` decides what a loss means for a read (wait, or fall back);
//! this module only says what is missing, overtaken or retried.

use lfc::BufferTag;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;

/// A prefetch still missing after this many later-requested prefetches have arrived is taken
/// as lost. The page server sends one destination's pages in request order and loopback or a
/// LAN reorders little, so a few overtakers are already strong evidence; more than one keeps a
/// little reordering from costing duplicate sends.
pub const OVERTAKEN_BY: usize = 4;
/// Own prefetches still outstanding, oldest first, that a periodic loss check may probe: the
/// bound on any check's probes (and the size of its scratch array).
/// Arrived ones leave the queue as a check meets them, so these are the lost and the in-flight
/// ones; more than a quarter of the window, so a burst loss of a few GSO messages (or a dropped
/// Prefetch request of 128 pages) is seen past.
pub const LOSS_SCAN: usize = 256;
/// The probes of the check a read miss runs at once: enough to see whether the missed page was
/// overtaken, cheap when the sender is backlogged and every read misses.
pub const MISS_SCAN: usize = 32;
/// A loss check stops at this many consecutive missing prefetches requested within the
/// in-flight time: in request order, those and everything after them are still in flight
/// (more than one GSO message's worth, so a reordered message does not hide the arrivals
/// after it). Without the stop, every check probed the whole in-flight window again: a fifth of
/// a backend's read-path CPU at 0 % loss. Older missing entries never stop a check, so a burst
/// loss is found once its pages are older than that.
pub const IN_FLIGHT_RUN: usize = 8;
/// Where a loss check looks past a run of `IN_FLIGHT_RUN` missing pages (places in the request
/// queue after the run) for pages that arrived, which make the run a hole rather than the front
/// in flight: bursts of up to 64 pages, a page server's interleaved batch of split pages (32)
/// with room for stale entries. Three probes per check at the front, where nothing is there.
pub const HOLE_LOOKAHEAD: [usize; 3] = [IN_FLIGHT_RUN, 3 * IN_FLIGHT_RUN, 7 * IN_FLIGHT_RUN];
/// Reads between two loss checks (`LossDetector::plan_retries`) in a backend's read loop: a
/// check costs up to `LOSS_SCAN` LFC probes, and a lost page is noticed a few pages after it
/// should have arrived, far ahead of its read at a useful prefetch distance.
pub const READS_PER_LOSS_CHECK: u32 = 8;
/// A lost prefetch is requested again at most this many times; after that the read falls back
/// to TCP. A retry costs one datagram, a fallback a wait and a GetPage round trip: at 5 % loss
/// a single retry left 1 page in 400 lost twice, each waiting out its budget.
pub const MAX_RETRIES: u8 = 3;

/// What is known of an own prefetch's loss, for the caller's judgement of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnLoss {
    /// Requested again after being taken as lost.
    pub retried: bool,
    /// Overtaken by later pages since its last request (lost, or reordered).
    pub overtaken: bool,
}

/// An entry of the request-order queue: an own prefetch not yet seen arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    tag: BufferTag,
    /// When it was (last) requested; the entry is stale once `own` holds another time.
    sent_ns: u64,
    /// Prefetches requested after it that loss checks have seen arrive while it was missing.
    overtaken: u8,
    /// When a check first found it overtaken `OVERTAKEN_BY` times (0: not yet).
    suspect_ns: u64,
}

impl Pending {
    fn new(tag: BufferTag, sent_ns: u64) -> Self {
        Pending {
            tag,
            sent_ns,
            overtaken: 0,
            suspect_ns: 0,
        }
    }
}

/// One of this backend's prefetches, not read yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Own {
    /// When it was (last) requested.
    pub(super) sent_ns: u64,
    pub(super) retries: u8,
    /// When a loss check first found it overtaken since that request (0: not overtaken): it
    /// is lost or reordered, not queued.
    pub(super) suspect_ns: u64,
}

impl Own {
    /// Missing because of loss (or reordering), not because the sender is behind.
    pub(super) fn lost_or_late_by_reorder(&self) -> bool {
        self.retries > 0 || self.suspect_ns != 0
    }
}

/// The own prefetches of one backend and the evidence of their loss.
#[derive(Debug, Clone)]
pub(super) struct LossDetector {
    /// Prefetches not yet read. Keyed by tags this backend chose itself, so a fast non-keyed
    /// hash is safe (no outside input can pick colliding keys); SipHash here was about 0.7 µs
    /// of every page read.
    own: FxHashMap<BufferTag, Own>,
    /// The same prefetches in request order, the order the server sends them in, until a loss
    /// check sees them arrive. An entry is stale once its tag was read or requested again
    /// (`own` then no longer holds its time); checks drop stale entries as they meet them.
    order: VecDeque<Pending>,
    /// Bound on `own` (and twice it on `order`).
    max_tracked: usize,
    /// A check's missing entries (`plan_retries`), kept between checks: an array of
    /// `LOSS_SCAN` entries made afresh was 12 KiB of stores every eighth read.
    missing: Vec<(Pending, u32)>,
}

/// Entries `own` starts with room for; it grows to what the window needs. Sized for the bound
/// (`max_tracked`, 8192 by default) the table was 16384 buckets, 0.6 MiB, of which a scan's
/// window of a few hundred pages used one line in thirty: every lookup, three or four per read,
/// was a cache miss behind the daemon's page copies, and a forced-UDP scan's backend spent
/// 2.22 µs a page against 2.08 with this start (five alternated scans each, Intel).
const OWN_INITIAL_CAPACITY: usize = 1024;

impl LossDetector {
    pub(super) fn new(max_tracked: usize) -> Self {
        assert!(max_tracked > 0);
        LossDetector {
            own: FxHashMap::with_capacity_and_hasher(
                max_tracked.min(OWN_INITIAL_CAPACITY),
                Default::default(),
            ),
            order: VecDeque::with_capacity(max_tracked),
            max_tracked,
            missing: Vec::with_capacity(LOSS_SCAN),
        }
    }

    pub(super) fn contains(&self, tag: &BufferTag) -> bool {
        self.own.contains_key(tag)
    }

    /// Whether any own prefetch is tracked (requested, not read yet).
    pub(super) fn is_empty(&self) -> bool {
        self.own.is_empty()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.own.len()
    }

    /// Starts tracking a prefetch of `tag` (not tracked yet) sent at `now_ns`. Returns how many
    /// older ones were forgotten to stay within the bound: forgotten prefetches still land in
    /// the LFC, they are only no longer waited for.
    pub(super) fn track(&mut self, tag: BufferTag, now_ns: u64) -> u64 {
        debug_assert!(!self.own.contains_key(&tag));
        let mut forgotten = 0;
        if self.own.len() >= self.max_tracked {
            // Bounded: forget the oldest half.
            let mut times: Vec<u64> = self.own.values().map(|o| o.sent_ns).collect();
            times.sort_unstable();
            let cutoff = times[times.len() / 2];
            let before = self.own.len();
            self.own.retain(|_, o| o.sent_ns > cutoff);
            forgotten = (before - self.own.len()) as u64;
            self.order.retain(|p| self.own.contains_key(&p.tag));
        }
        self.own.insert(
            tag,
            Own {
                sent_ns: now_ns,
                retries: 0,
                suspect_ns: 0,
            },
        );
        if self.order.len() >= 2 * self.max_tracked {
            // Bounded even if the shell never checks for losses: keep the live entries only.
            let own = &self.own;
            self.order
                .retain(|p| own.get(&p.tag).is_some_and(|o| o.sent_ns == p.sent_ns));
        }
        self.order.push_back(Pending::new(tag, now_ns));
        forgotten
    }

    /// Stops tracking `tag` (its read came), returning what was known of it.
    pub(super) fn take(&mut self, tag: &BufferTag) -> Option<Own> {
        self.own.remove(tag)
    }

    /// Tracks `tag` again as `own` after `take`, e.g. while its read waits for it. Its queue
    /// entry, if a check has not dropped it, is live again.
    pub(super) fn put_back(&mut self, tag: BufferTag, own: Own) {
        self.own.insert(tag, own);
    }

    pub(super) fn loss(&self, tag: &BufferTag) -> Option<OwnLoss> {
        self.own.get(tag).map(|o| OwnLoss {
            retried: o.retries > 0,
            overtaken: o.suspect_ns != 0,
        })
    }

    /// When `tag` was (last) requested, if it is tracked.
    pub(super) fn sent_ns(&self, tag: &BufferTag) -> Option<u64> {
        self.own.get(tag).map(|o| o.sent_ns)
    }

    fn is_live(&self, p: &Pending) -> bool {
        self.own.get(&p.tag).is_some_and(|o| o.sent_ns == p.sent_ns)
    }

    /// Finds own prefetches that were most likely lost, so the shell requests them again
    /// (appending them to `out`) while there is still time before they are read, instead of
    /// each costing a wait and a TCP round trip at read time. A page is taken as lost when it
    /// is still missing `grace_ns` (the reorder grace) after `OVERTAKEN_BY` pages requested
    /// after it were seen to arrive (the server sends in request order); a retry that is lost
    /// too is found the same way, up to `MAX_RETRIES` times, and a page lost that often leaves
    /// the queue (the read falls back to TCP for it). A check inspects the oldest outstanding
    /// entries, at most `max_probes` (≤ `LOSS_SCAN`) of them: the arrived ones leave the queue,
    /// counted as overtaking every missing one before them, so each arrival is probed once; it
    /// stops early at `IN_FLIGHT_RUN` consecutive missing pages requested less than
    /// `in_flight_ns` ago. `is_cached` asks the LFC; it is called at most `max_probes` times.
    /// Returns the number of retries planned.
    pub(super) fn plan_retries(
        &mut self,
        now_ns: u64,
        max_probes: usize,
        in_flight_ns: u64,
        grace_ns: u64,
        is_cached: impl FnMut(&BufferTag) -> bool,
        out: &mut Vec<BufferTag>,
    ) -> u64 {
        let mut missing = std::mem::take(&mut self.missing);
        missing.clear();
        let arrivals = self.probe_oldest(now_ns, max_probes, in_flight_ns, is_cached, &mut missing);
        let first_new = out.len();
        for (m, arrivals_before) in missing.iter_mut().rev() {
            let overtaken_now = (arrivals - *arrivals_before).min(u32::from(u8::MAX)) as u8;
            m.overtaken = m.overtaken.saturating_add(overtaken_now);
            // Lateness alone is not taken as loss: when the sender is backlogged every page is
            // late, and requesting them again would only lengthen the queue. Being overtaken is,
            // once it lasts longer than reordering does.
            if usize::from(m.overtaken) >= OVERTAKEN_BY && m.suspect_ns == 0 {
                m.suspect_ns = now_ns.max(1);
            }
            let lost = m.suspect_ns != 0 && now_ns.saturating_sub(m.suspect_ns) >= grace_ns;
            let o = self.own.get_mut(&m.tag).expect("live entries are owned");
            o.suspect_ns = m.suspect_ns;
            if lost && o.retries < MAX_RETRIES {
                o.retries += 1;
                o.sent_ns = now_ns;
                o.suspect_ns = 0;
                out.push(m.tag);
            } else if !lost {
                self.order.push_front(*m);
            }
            // Lost with no retry left: out of the queue, so it no longer takes a probe in every
            // check; `own` keeps it, and its read goes to TCP at once.
        }
        // Retried pages were collected newest first; they go to the back oldest first.
        out[first_new..].reverse();
        for &tag in &out[first_new..] {
            self.order.push_back(Pending::new(tag, now_ns));
        }
        self.missing = missing;
        (out.len() - first_new) as u64
    }

    /// The probing half of `plan_retries`: takes the oldest live entries off the queue, at most
    /// `max_probes` of them, and appends the missing ones to `missing` (oldest first, each with
    /// the number of arrivals seen before it: the arrivals after it overtook it). Returns how
    /// many arrived.
    fn probe_oldest(
        &mut self,
        now_ns: u64,
        max_probes: usize,
        in_flight_ns: u64,
        mut is_cached: impl FnMut(&BufferTag) -> bool,
        missing: &mut Vec<(Pending, u32)>,
    ) -> u32 {
        let max_probes = max_probes.min(LOSS_SCAN);
        let mut arrivals = 0u32;
        let mut probed = 0;
        let mut in_flight_run = 0;
        // Stale entries cost a map lookup and no probe; there are at most as many as the queue
        // holds (twice the tracked prefetches), and each is met once.
        while probed < max_probes {
            let Some(entry) = self.order.pop_front() else {
                break;
            };
            if !self.is_live(&entry) {
                continue;
            }
            probed += 1;
            if is_cached(&entry.tag) {
                in_flight_run = 0;
                arrivals += 1;
            } else {
                missing.push((entry, arrivals));
                // One overtaken before is a hole, not the front in flight, however young: the
                // arrivals that showed it left the queue when a check saw them.
                let young = now_ns.saturating_sub(entry.sent_ns) < in_flight_ns;
                in_flight_run = if young && entry.suspect_ns == 0 {
                    in_flight_run + 1
                } else {
                    0
                };
                if in_flight_run >= IN_FLIGHT_RUN {
                    // The front of the pages in flight, or a hole: a burst loss (one dropped GSO
                    // message is a run of consecutive pages, a page server's whole interleaved
                    // batch when two of a split page's pieces are lost) looks the same until
                    // the pages behind it are looked at.
                    let (looked, hole) =
                        self.arrivals_past_the_run(max_probes - probed, &mut is_cached);
                    probed += looked;
                    if !hole {
                        break;
                    }
                    in_flight_run = 0;
                }
            }
        }
        arrivals
    }

    /// Whether pages requested after a run of `IN_FLIGHT_RUN` missing ones have arrived: looks
    /// at the live entries `HOLE_LOOKAHEAD` places past the run, one probe each and at most
    /// `max_probes`, and says how many it probed. At MTU 1500 with 5 % packet loss, the page
    /// server's lost batches of 32 split pages each stopped every check at their first 8
    /// pages, taken as the front in flight: no page of them was found lost before its read came, and each read
    /// waited and fetched it alone (1861 such reads in a 65536-page scan at 0.24x TCP).
    fn arrivals_past_the_run(
        &self,
        max_probes: usize,
        is_cached: &mut impl FnMut(&BufferTag) -> bool,
    ) -> (usize, bool) {
        let mut looked = 0;
        for at in HOLE_LOOKAHEAD {
            let Some(entry) = self.order.get(at).filter(|_| looked < max_probes) else {
                break;
            };
            if !self.is_live(entry) {
                continue;
            }
            looked += 1;
            if is_cached(&entry.tag) {
                return (looked, true);
            }
        }
        (looked, false)
    }

    /// Own prefetches requested right after `tag` (requested at `sent_ns`, its read just given
    /// up on it as overdue), appended to `out` for the caller to fetch another way (it then
    /// `take`s each it does): the live entries that follow `tag`'s in the request queue, while
    /// they are missing (not `is_cached`) and were requested no later than it, at most `limit`. A page server
    /// sends a batch of pages together (one GSO message per split pages' piece index), so a
    /// batch lost is a run of consecutive pages that nothing after it has overtaken yet when
    /// the reader is close behind the arrivals; fetched one at a time, each page of the run
    /// cost its read a round trip. Looks at most `LOSS_SCAN` entries for `tag`'s own.
    pub(super) fn run_after(
        &self,
        tag: &BufferTag,
        sent_ns: u64,
        limit: usize,
        mut is_cached: impl FnMut(&BufferTag) -> bool,
        out: &mut Vec<BufferTag>,
    ) -> usize {
        let Some(at) = self
            .order
            .iter()
            .take(LOSS_SCAN)
            .position(|p| p.tag == *tag && p.sent_ns == sent_ns)
        else {
            return 0;
        };
        let first = out.len();
        for entry in self.order.iter().skip(at + 1) {
            if out.len() - first >= limit || entry.sent_ns > sent_ns {
                break;
            }
            if !self.is_live(entry) {
                continue;
            }
            if is_cached(&entry.tag) {
                break;
            }
            out.push(entry.tag);
        }
        out.len() - first
    }

    /// The oldest own prefetch still missing (live, not `is_cached`) and never requested
    /// again nor overtaken, with when it was requested: the one whose read would be judged by
    /// its age alone. Looks at most `LOSS_SCAN` entries; `is_cached` is asked at most that often.
    pub(super) fn oldest_missing(
        &self,
        mut is_cached: impl FnMut(&BufferTag) -> bool,
    ) -> Option<(BufferTag, u64)> {
        self.order
            .iter()
            .take(LOSS_SCAN)
            .filter(|p| self.is_live(p))
            .find(|p| !is_cached(&p.tag))
            .filter(|p| {
                self.own
                    .get(&p.tag)
                    .is_some_and(|o| !o.lost_or_late_by_reorder())
            })
            .map(|p| (p.tag, p.sent_ns))
    }

    /// Own prefetches still outstanding (not `is_cached`), oldest request first, appended to
    /// `out` and forgotten: the UDP path is given up on and the caller fetches them another
    /// way. Returns how many were forgotten (cached or not).
    pub(super) fn take_outstanding(
        &mut self,
        mut is_cached: impl FnMut(&BufferTag) -> bool,
        out: &mut Vec<BufferTag>,
    ) -> u64 {
        let first = out.len();
        let mut forgotten = 0;
        while let Some(p) = self.order.pop_front() {
            if !self.is_live(&p) {
                continue;
            }
            self.own.remove(&p.tag);
            forgotten += 1;
            if !is_cached(&p.tag) {
                out.push(p.tag);
            }
        }
        // Owned prefetches whose queue entry a loss check already dropped (lost with no retry
        // left): after the ones in request order.
        let mut rest: Vec<BufferTag> = self.own.drain().map(|(t, _)| t).collect();
        rest.sort_unstable();
        forgotten += rest.len() as u64;
        out.extend(rest.into_iter().filter(|t| !is_cached(t)));
        debug_assert!(out[first..].iter().all(|t| !self.own.contains_key(t)));
        forgotten
    }

    /// Forgets everything; returns how many prefetches were still tracked.
    pub(super) fn clear(&mut self) -> u64 {
        let n = self.own.len() as u64;
        self.own.clear();
        self.order.clear();
        n
    }
}
