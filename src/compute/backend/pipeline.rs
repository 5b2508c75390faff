//! The backend's TCP GetPage pipeline, as Neon's compute keeps one: pages queued to be fetched
//! ahead of the reader, at most `depth` requests in flight on the connection, responses
//! matched to requests. Owns only the bookkeeping: the driver decides what enters and sends
//! what leaves.

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
    },
}

#[derive(Debug)]
pub struct Pipeline {
    depth: usize,
    queued: VecDeque<Queued>,
    in_flight: VecDeque<InFlight>,
    /// Tags queued or in flight, so nothing is requested twice.
    members: FxHashSet<BufferTag>,
}

impl Pipeline {
    pub fn new(depth: usize) -> Self {
        assert!(depth >= 1);
        Pipeline {
            depth,
            queued: VecDeque::with_capacity(MAX_QUEUED),
            in_flight: VecDeque::with_capacity(depth + 1),
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

    /// The next page to send, if the pipeline has room.
    pub fn next_to_send(&mut self) -> Option<Queued> {
        if self.in_flight.len() >= self.depth {
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
    pub fn answered(&mut self, page: Option<&BufferTag>) -> Option<InFlight> {
        let i = self.in_flight.iter().position(|e| match (e, page) {
            (InFlight::Target, None) => true,
            (InFlight::Page { tag, .. }, Some(t)) => tag == t,
            _ => false,
        })?;
        let e = self.in_flight.remove(i)?;
        if let InFlight::Page { tag, .. } = &e {
            self.members.remove(tag);
        }
        Some(e)
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

    #[test]
    fn depth_bounds_the_requests_in_flight_and_responses_free_room() {
        let mut p = Pipeline::new(2);
        for b in 0..4 {
            assert!(p.push_back(q(b)));
        }
        assert!(!p.push_back(q(1)), "no duplicates");
        let mut sent = Vec::new();
        while let Some(x) = p.next_to_send() {
            p.sent(InFlight::Page {
                tag: x.tag,
                not_modified_since: 0,
                ahead: true,
                judge: Check::None,
            });
            sent.push(x.tag.blkno);
        }
        assert_eq!(sent, [0, 1]);
        assert_eq!(
            p.in_flight_page(1),
            Some(&tag(1)),
            "the second answer to come"
        );
        assert_eq!(p.in_flight_page(2), None);
        assert_eq!(p.queued_page(1), Some(&tag(3)), "the second page to send");
        assert!(p.answered(Some(&tag(3))).is_none(), "not in flight");
        assert!(p.answered(Some(&tag(0))).is_some());
        assert!(!p.contains(&tag(0)));
        assert_eq!(p.next_to_send().map(|x| x.tag.blkno), Some(2));
    }

    #[test]
    fn pages_queue_in_read_order_behind_a_waiting_read() {
        let mut p = Pipeline::new(1);
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
        let mut p = Pipeline::new(1);
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
}
