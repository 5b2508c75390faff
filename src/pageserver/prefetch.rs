//! The page server's prefetch queue and pacing, sans-IO (ARCHITECTURE §4, steps 2–3): Prefetch
//! requests become per-connection queues of page ranges; `next_batch(now)` hands out pages that the
//! pacing of their destination allows, round-robin across connections. Time is passed in, so the
//! simulator drives the same code with virtual time.
//!
//! Fairness is per connection, not per destination: every backend of a compute sends to the
//! same worker daemon, so a queue per destination served one backend's next page after every
//! other backend's far-ahead window (at 64 backends, most reads timed out waiting). Each turn
//! takes up to [`CONN_QUANTUM`] pages from one connection (deficit round robin, every page
//! costing the same), and one batch takes turns of every connection of its destination, so
//! batches stay whole however many backends share it. Within a connection the page its
//! backend reads soonest goes first: ranges in the order requested, except that a range below
//! the front of the queue (a page requested again after a loss, which the backend is waiting
//! for) goes ahead of it.
//!
//! Priority is per connection too (`PrefetchPriority`, set by the client): a background
//! connection (prewarm) has a ring of its own, served when no foreground connection has a page
//! due, and otherwise once after every [`BACKGROUND_SHARE`] foreground batches, so a prewarm
//! neither slows the scans beside it by more than that share nor waits forever behind them.
//!
//! Owns: the per-connection queues and the two rings, each destination's pacing bucket, the pages
//! fetched by GetPage per destination, the queue bounds, and the seeded `DropFilter`. Holds no
//! lock, thread, socket or clock (`udp_sender` wraps it in a mutex and passes `now_ns` and the send
//! time); reads pages only through `PageStore`, never waiting for WAL (`try_effective_lsn`), and
//! seals them with the shared `workers::datagram`.

use super::store::PageStore;
use crate::protocol::page::{page_lsn, Page};
use crate::protocol::pagestream::{Header, PrefetchPriority};
use lfc::{BufferTag, RelTag};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use workers::datagram::{DatagramHeader, SealStream, SealedPage, DATAGRAM_LEN};

/// Which connection a Prefetch came on: the unit of fairness.
pub type ConnId = u64;

/// Where one connection's prefetches go, and the datagram stream (derived key and nonce
/// counter) they are sealed with.
#[derive(Debug, Clone)]
pub struct Destination {
    pub addr: SocketAddr,
    pub key: Arc<SealStream>,
    pub conn: ConnId,
    /// How the senders rank this connection's prefetches.
    pub priority: PrefetchPriority,
}

/// One connection's queued ranges.
#[derive(Debug, Default)]
struct ConnQueue {
    addr: Option<SocketAddr>,
    jobs: VecDeque<RangeJob>,
    /// Pages left in `jobs`.
    pages: u64,
    /// In the background ring, not the foreground one.
    background: bool,
}

/// One Prefetch request still (partly) to be sent.
#[derive(Debug, Clone)]
struct RangeJob {
    key: Arc<SealStream>,
    hdr: Header,
    rel: RelTag,
    next_blkno: u32,
    remaining: u32,
    /// Not before this time: the emulated service delay.
    due_ns: u64,
}

/// One page to send.
#[derive(Debug, Clone)]
pub struct PageJob {
    pub addr: SocketAddr,
    pub key: Arc<SealStream>,
    pub hdr: Header,
    pub tag: BufferTag,
}

/// Token bucket in bytes. Tokens accrue at `rate` up to `burst`.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    last_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerLimits {
    /// Pages queued across all connections; a Prefetch that does not fit is dropped whole.
    pub max_queued_pages: u64,
    /// Pages one connection may have queued: one client (a runaway prewarm, or a connection
    /// that registered another compute's daemon) cannot fill the whole queue. A backend's
    /// window is at most a few thousand pages.
    pub max_queued_pages_per_conn: u64,
    /// Connections with queued work.
    pub max_queues: usize,
    /// Pacing per destination, bytes per second of datagrams; 0 = unpaced.
    pub rate_bytes_per_s: u64,
    /// Burst allowance per destination, bytes.
    pub burst_bytes: u64,
}

impl Default for SchedulerLimits {
    fn default() -> Self {
        SchedulerLimits {
            max_queued_pages: 1 << 20,
            max_queued_pages_per_conn: 1 << 16,
            max_queues: 4096,
            rate_bytes_per_s: 0,
            burst_bytes: 64 * DATAGRAM_LEN as u64,
        }
    }
}

/// Why a Prefetch request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    QueueFull,
    /// The connection has `max_queued_pages_per_conn` queued already.
    ConnQueueFull,
    TooManyQueues,
}

/// Datagrams sealed and sent per batch (one `sendmmsg`).
pub const SEND_BATCH: usize = 32;
/// Longest a sender thread sleeps before it looks at the queue again, even unwoken: the real
/// thread rechecks for shutdown that often.
pub const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Foreground batches a waiting background connection lets go first, at most: under a sender
/// saturated by foreground work, background gets one batch in `BACKGROUND_SHARE + 1` (6 %),
/// enough that a prewarm always finishes, too little to slow the scans.
pub const BACKGROUND_SHARE: u32 = 16;

/// What a sender thread does next ([`PrefetchScheduler::next_send`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStep {
    /// The jobs hold one batch, for one destination: seal it ([`seal_batch`]) and send it, then
    /// ask again.
    Send(usize),
    /// Nothing may be sent yet (pacing or service delay): sleep until `until_ns` (never now:
    /// at least 1 ns on) unless an enqueue wakes the thread first.
    Sleep { until_ns: u64 },
    /// Nothing queued: sleep until an enqueue wakes the thread (the real thread also wakes
    /// every [`IDLE_WAIT`] to check for shutdown, and finds nothing to do).
    Idle,
}

/// What the sender should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// `out` was filled with this many pages.
    Ready(usize),
    /// Nothing may be sent before this time (pacing or service delay).
    WaitUntil(u64),
    /// Nothing queued.
    Idle,
}

#[derive(Debug)]
pub struct PrefetchScheduler {
    limits: SchedulerLimits,
    queues: HashMap<ConnId, ConnQueue>,
    /// Pacing state per destination (the path to one compute), shared by its connections.
    buckets: HashMap<SocketAddr, Bucket>,
    /// Foreground connections with queued work, in round-robin order.
    ring: VecDeque<ConnId>,
    /// Background connections with queued work, in round-robin order.
    background_ring: VecDeque<ConnId>,
    /// Foreground batches sent since the last background one while background work was
    /// queued (see [`BACKGROUND_SHARE`]).
    foreground_turns: u32,
    /// Connections with queued work per destination.
    queues_per_addr: HashMap<SocketAddr, usize>,
    queued_pages: u64,
    /// Per destination with pages queued: pages its backends fetched by GetPage since. Their
    /// queued prefetches are skipped when their turn comes: the reader has the page, and a
    /// sender that is behind (many backends sharing it) catches up with the readers instead
    /// of spending itself on pages nobody waits for.
    fetched: HashMap<SocketAddr, HashSet<BufferTag>>,
    skipped_fetched: u64,
    /// Scratch of `next_batch_from` (allocated once, empty between calls).
    scratch_passed: Vec<ConnId>,
    scratch_served: Vec<ConnId>,
}

/// Pages a batch takes from one connection before it goes on to the next connection of the
/// same destination (deficit round robin, every page costing the same). Every backend of a
/// compute sends to its one worker daemon, so a turn of a whole batch (32 pages) per
/// connection put a backend's first page behind every other backend's 32: with 64 backends
/// starting together, the last one's first page left ~2000 pages into the sender's work,
/// milliseconds after its read began waiting. With a few pages per turn the front of every
/// backend's window goes first, and the batch stays as large as before (one `sendmmsg`).
pub const CONN_QUANTUM: usize = 4;

/// What datagrams a page of a stream becomes: a batch is sent as one run of datagrams of one
/// size, so its pages must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    datagrams_per_page: u8,
    fragment_len: usize,
}

impl Layout {
    fn of(key: &SealStream) -> Self {
        Layout {
            datagrams_per_page: key.datagrams_per_page(),
            fragment_len: key.fragment_len(),
        }
    }
}

/// Fetched pages remembered per destination; beyond it the set is forgotten (a forgotten page
/// is merely sent in vain, as before).
pub const MAX_FETCHED_TRACKED: usize = 65_536;

impl PrefetchScheduler {
    pub fn new(limits: SchedulerLimits) -> Self {
        assert!(limits.max_queued_pages > 0 && limits.max_queues > 0);
        PrefetchScheduler {
            limits,
            queues: HashMap::new(),
            buckets: HashMap::new(),
            ring: VecDeque::new(),
            background_ring: VecDeque::new(),
            foreground_turns: 0,
            queues_per_addr: HashMap::new(),
            queued_pages: 0,
            fetched: HashMap::new(),
            skipped_fetched: 0,
            scratch_passed: Vec::new(),
            scratch_served: Vec::new(),
        }
    }

    pub fn queued_pages(&self) -> u64 {
        self.queued_pages
    }

    /// Queued pages skipped so far because a GetPage had fetched them.
    pub fn skipped_fetched(&self) -> u64 {
        self.skipped_fetched
    }

    /// A backend whose prefetches go to `addr` fetched `tag` by GetPage: a prefetch of it still
    /// queued for `addr` will be skipped.
    pub fn on_get_page(&mut self, addr: SocketAddr, tag: BufferTag) {
        if !self.queues_per_addr.contains_key(&addr) {
            return;
        }
        let set = self.fetched.entry(addr).or_default();
        if set.len() >= MAX_FETCHED_TRACKED {
            set.clear();
        }
        set.insert(tag);
    }

    /// Queues `nblocks` pages of `rel` from `first_blkno` for `dest`, not before `due_ns`.
    pub fn push(
        &mut self,
        dest: &Destination,
        hdr: Header,
        rel: RelTag,
        first_blkno: u32,
        nblocks: u32,
        due_ns: u64,
    ) -> Result<(), Overflow> {
        // A range running past the last block number is clipped, not wrapped.
        let nblocks = nblocks.min(u32::MAX - first_blkno);
        if nblocks == 0 {
            return Ok(());
        }
        if self.queued_pages + u64::from(nblocks) > self.limits.max_queued_pages {
            return Err(Overflow::QueueFull);
        }
        let conn_pages = self.queues.get(&dest.conn).map(|q| q.pages);
        if conn_pages.is_none() && self.queues.len() >= self.limits.max_queues {
            return Err(Overflow::TooManyQueues);
        }
        if conn_pages.unwrap_or(0) + u64::from(nblocks) > self.limits.max_queued_pages_per_conn {
            return Err(Overflow::ConnQueueFull);
        }
        if let Some(fetched) = self.fetched.get_mut(&dest.addr) {
            // Asked for again (e.g. evicted since its GetPage): this request must be served.
            for b in first_blkno..first_blkno + nblocks {
                fetched.remove(&rel.block(b));
            }
        }
        let background = dest.priority == PrefetchPriority::Background;
        let queue = self.queues.entry(dest.conn).or_default();
        if queue.jobs.is_empty() {
            queue.addr = Some(dest.addr);
            queue.background = background;
            *self.queues_per_addr.entry(dest.addr).or_default() += 1;
            rings(&mut self.ring, &mut self.background_ring, background).push_back(dest.conn);
        } else if queue.background != background {
            // Re-ranked with pages queued: they move to the other ring.
            rings(&mut self.ring, &mut self.background_ring, queue.background)
                .retain(|c| *c != dest.conn);
            rings(&mut self.ring, &mut self.background_ring, background).push_back(dest.conn);
            queue.background = background;
        }
        let job = RangeJob {
            key: dest.key.clone(),
            hdr,
            rel,
            next_blkno: first_blkno,
            remaining: nblocks,
            due_ns,
        };
        // A range below the front of the queue is a page asked for again: its backend is
        // waiting for it, so it goes first.
        match queue.jobs.front() {
            Some(front) if front.rel == rel && first_blkno < front.next_blkno => {
                queue.jobs.push_front(job)
            }
            _ => queue.jobs.push_back(job),
        }
        queue.pages += u64::from(nblocks);
        self.queued_pages += u64::from(nblocks);
        Ok(())
    }

    fn refill(&mut self, addr: SocketAddr, now_ns: u64) -> f64 {
        let limits = self.limits;
        let b = self.buckets.entry(addr).or_insert(Bucket {
            tokens: limits.burst_bytes as f64,
            last_ns: now_ns,
        });
        let elapsed_s = now_ns.saturating_sub(b.last_ns) as f64 / 1e9;
        b.tokens =
            (b.tokens + elapsed_s * limits.rate_bytes_per_s as f64).min(limits.burst_bytes as f64);
        b.last_ns = now_ns;
        b.tokens
    }

    /// Fills `out` (cleared first) with up to `max` pages that may be sent at `now_ns`, taking
    /// from each connection in turn: foreground connections first, background ones when no
    /// foreground page is due or when their share is owed ([`BACKGROUND_SHARE`]). The pages of
    /// one call share a destination and datagram layout, so the sender can batch them into one
    /// `sendmmsg`; they come from one or more of its connections ([`CONN_QUANTUM`]).
    pub fn next_batch(&mut self, now_ns: u64, max: usize, out: &mut Vec<PageJob>) -> Next {
        out.clear();
        let mut earliest: Option<u64> = None;
        let share_owed =
            !self.background_ring.is_empty() && self.foreground_turns >= BACKGROUND_SHARE;
        for background in [share_owed, !share_owed] {
            if let Some(n) = self.next_batch_from(background, now_ns, max, out, &mut earliest) {
                if background {
                    self.foreground_turns = 0;
                } else if !self.background_ring.is_empty() {
                    self.foreground_turns = self.foreground_turns.saturating_add(1);
                }
                return Next::Ready(n);
            }
        }
        // Buckets of destinations with nothing queued are forgotten (bounded state).
        let queued = &self.queues_per_addr;
        self.buckets.retain(|a, _| queued.contains_key(a));
        match earliest {
            Some(t) => Next::WaitUntil(t),
            None if self.ring.is_empty() && self.background_ring.is_empty() => Next::Idle,
            None => Next::WaitUntil(now_ns),
        }
    }

    /// One batch from the foreground or the background ring: the first connection with pages it
    /// may send starts it, and the batch goes on with the next connections in ring order that
    /// share its destination and datagram layout, [`CONN_QUANTUM`] pages from each, passing
    /// over the others (which keep their places), until `max` pages or nothing more is due;
    /// more passes over the connections served only while no other destination waits, so a
    /// connection never gets more than a quantum per round of the ring while others wait.
    /// Connections served go to the back of the ring. Returns how many pages are in
    /// `out`; lowers `earliest` to when a connection that could not send may (pacing or
    /// service delay).
    fn next_batch_from(
        &mut self,
        background: bool,
        now_ns: u64,
        max: usize,
        out: &mut Vec<PageJob>,
        earliest: &mut Option<u64>,
    ) -> Option<usize> {
        let paced = self.limits.rate_bytes_per_s > 0;
        // The batch's destination and layout, once its first page is taken.
        let mut batch: Option<(SocketAddr, Layout)> = None;
        let mut allowance = usize::MAX;
        // Connections passed over (another destination, or nothing due), in ring order; and
        // those served, for the back of the ring.
        let mut passed = std::mem::take(&mut self.scratch_passed);
        let mut served = std::mem::take(&mut self.scratch_served);
        let mut taken_this_pass = 0;
        let mut first_pass = true;
        let mut other_waiting = false;
        loop {
            // A batch stops when full or when its destination's pacing allows no more.
            if out.len() >= max || (batch.is_some() && allowance == 0) {
                break;
            }
            let Some(conn) =
                rings(&mut self.ring, &mut self.background_ring, background).pop_front()
            else {
                // A pass is over. Another one over the connections served while it took
                // something, so that a lone connection fills the batch as before, unless a
                // connection of another destination is waiting: it would then wait for more
                // than one quantum of each connection ahead of it.
                if taken_this_pass == 0 || served.is_empty() || other_waiting {
                    break;
                }
                taken_this_pass = 0;
                first_pass = false;
                rings(&mut self.ring, &mut self.background_ring, background)
                    .extend(served.drain(..));
                continue;
            };
            let cq = &self.queues[&conn];
            let addr = cq.addr.expect("a queued connection has a destination");
            let layout = cq.jobs.front().map(|j| Layout::of(&j.key));
            if batch.is_some_and(|b| Some(b) != layout.map(|l| (addr, l))) {
                other_waiting |= cq.jobs.front().is_some_and(|j| j.due_ns <= now_ns);
                passed.push(conn);
                continue;
            }
            if batch.is_none() && paced {
                // Until the batch has a destination, each connection's own bucket says.
                allowance = (self.refill(addr, now_ns) / DATAGRAM_LEN as f64).floor() as usize;
            }
            let cq = self.queues.get_mut(&conn).expect("ring names a queue");
            let queue = &mut cq.jobs;
            let before = out.len();
            let limit = max.min(before + CONN_QUANTUM);
            while out.len() < limit && allowance > 0 {
                let Some(job) = queue.front_mut() else { break };
                if job.due_ns > now_ns {
                    *earliest = Some(earliest.map_or(job.due_ns, |e| e.min(job.due_ns)));
                    break;
                }
                if batch.is_some_and(|(_, l)| l != Layout::of(&job.key)) {
                    // Re-registered with another layout: its own batch later.
                    break;
                }
                let tag = job.rel.block(job.next_blkno);
                let page = PageJob {
                    addr,
                    key: job.key.clone(),
                    hdr: job.hdr,
                    tag,
                };
                job.next_blkno += 1;
                job.remaining -= 1;
                cq.pages -= 1;
                self.queued_pages -= 1;
                if job.remaining == 0 {
                    queue.pop_front();
                }
                if self.fetched.get_mut(&addr).is_some_and(|f| f.remove(&tag)) {
                    self.skipped_fetched += 1;
                    continue;
                }
                if batch.is_none() {
                    batch = Some((addr, Layout::of(&page.key)));
                }
                out.push(page);
                allowance -= 1;
            }
            let taken = out.len() - before;
            taken_this_pass += taken;
            let drained = queue.is_empty();
            if paced && taken > 0 {
                let b = self.buckets.get_mut(&addr).expect("refilled above");
                b.tokens -= (taken * DATAGRAM_LEN) as f64;
            }
            if paced && allowance == 0 && !drained {
                let at = self.next_token_at(addr, now_ns);
                *earliest = Some(earliest.map_or(at, |e| e.min(at)));
            }
            if drained {
                self.queues.remove(&conn);
                self.queue_gone(addr);
            } else if taken > 0 || !first_pass {
                served.push(conn);
            } else {
                passed.push(conn);
            }
        }
        // The ring again: those passed over in their places, then the ones not reached, then
        // the ones served.
        let ring = rings(&mut self.ring, &mut self.background_ring, background);
        for conn in passed.drain(..).rev() {
            ring.push_front(conn);
        }
        ring.extend(served.drain(..));
        self.scratch_passed = passed;
        self.scratch_served = served;
        (!out.is_empty()).then_some(out.len())
    }

    /// A sender thread's decision step at `now_ns`: a batch of at most [`SEND_BATCH`] pages
    /// into `jobs` (`next_batch`), or how long to sleep, at most [`IDLE_WAIT`]. The real sender
    /// threads (`udp_sender::send_loop`) and the simulator both call this.
    pub fn next_send(&mut self, now_ns: u64, jobs: &mut Vec<PageJob>) -> SendStep {
        match self.next_batch(now_ns, SEND_BATCH, jobs) {
            Next::Ready(n) => SendStep::Send(n),
            Next::WaitUntil(t) => SendStep::Sleep {
                until_ns: t
                    .min(now_ns.saturating_add(IDLE_WAIT.as_nanos() as u64))
                    .max(now_ns + 1),
            },
            Next::Idle => SendStep::Idle,
        }
    }

    /// Drops every range queued by `conn` (its connection closed: nobody reads them). Returns
    /// the pages dropped.
    pub fn forget(&mut self, conn: ConnId) -> u64 {
        let Some(queue) = self.queues.remove(&conn) else {
            return 0;
        };
        self.ring.retain(|c| *c != conn);
        self.background_ring.retain(|c| *c != conn);
        let pages = queue.pages;
        debug_assert_eq!(
            pages,
            queue
                .jobs
                .iter()
                .map(|j| u64::from(j.remaining))
                .sum::<u64>()
        );
        self.queued_pages -= pages;
        if let Some(addr) = queue.addr {
            self.queue_gone(addr);
        }
        pages
    }

    /// A connection's queue for `addr` is gone: when it was the destination's last, the
    /// destination's fetched pages are forgotten too (bounded state).
    /// When `addr`'s bucket holds a token for one more datagram (never now: 1 ns on at least).
    fn next_token_at(&self, addr: SocketAddr, now_ns: u64) -> u64 {
        let b = &self.buckets[&addr];
        let need = DATAGRAM_LEN as f64 - b.tokens;
        let wait_ns = (need.max(0.0) / self.limits.rate_bytes_per_s as f64 * 1e9).ceil() as u64;
        now_ns + wait_ns.max(1)
    }

    fn queue_gone(&mut self, addr: SocketAddr) {
        let left = self
            .queues_per_addr
            .get_mut(&addr)
            .expect("counted on push");
        *left -= 1;
        if *left == 0 {
            self.queues_per_addr.remove(&addr);
            self.fetched.remove(&addr);
        }
    }
}

/// The foreground or the background ring (a function of the two fields, not a method, so a
/// caller may hold another field of the scheduler meanwhile).
fn rings<'a>(
    foreground: &'a mut VecDeque<ConnId>,
    background: &'a mut VecDeque<ConnId>,
    which_background: bool,
) -> &'a mut VecDeque<ConnId> {
    if which_background {
        background
    } else {
        foreground
    }
}

/// Why a queued page produced no datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// WAL has not reached the request's `not_modified_since`: a prefetch never waits for it
    /// (the backend's GetPage will).
    NotReady,
    /// The page does not exist (or the source failed).
    Failed,
}

/// Reads the page a job names, at the LSN its request allows, and seals it into `out`: the
/// stream's datagrams for it, one or (a small-MTU path) its fragments, back to back
/// (`SealStream::seal_page`). The real sender threads and the simulator both call this.
pub fn seal_page_job(
    store: &PageStore,
    job: &PageJob,
    sent_at_ns: u64,
    page: &mut Page,
    out: &mut SealedPage,
) -> Result<(), SkipReason> {
    let lsn = match store.try_effective_lsn(job.hdr.request_lsn, job.hdr.not_modified_since) {
        Ok(Some(lsn)) => lsn,
        Ok(None) => return Err(SkipReason::NotReady),
        Err(_) => return Err(SkipReason::Failed),
    };
    store
        .read_page(job.tag, lsn, page)
        .map_err(|_| SkipReason::Failed)?;
    let header = DatagramHeader {
        key_id: job.key.key_id(),
        reqid: job.hdr.reqid,
        request_lsn: job.hdr.request_lsn,
        not_modified_since: job.hdr.not_modified_since,
        tag: job.tag,
        sent_at_ns,
    };
    // Exhausting a stream's 2^64 nonces takes centuries; were it to happen, the page is not
    // sent (the backend falls back) rather than sealed under a repeated nonce.
    job.key
        .seal_page(&header, page, out)
        .map(|_| ())
        .map_err(|_| SkipReason::Failed)
}

/// What became of one job of a batch in [`seal_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// Sealed into the next datagram of the batch; the LSN of the page it carries.
    Sealed { page_lsn: u64 },
    /// Dropped by the sender's drop filter (`--drop-prefetch`).
    Dropped,
    /// Not sealed, for this reason.
    Skipped(SkipReason),
}

/// The part of a sender's turn after `next_batch`, done outside the scheduler's lock: each job
/// of the batch through `filter`, then [`seal_page_job`] (dated by `sent_at_ns()`) into the
/// next free page buffer of `out`; `outcome` sees every job, in order. Returns how many pages
/// were sealed (`out[..n]`, all for the batch's one destination and stream, each
/// `key.sealed_len()` bytes of datagrams). The real sender threads and the simulator both call
/// this.
pub fn seal_batch(
    store: &PageStore,
    jobs: &[PageJob],
    filter: &mut DropFilter,
    mut sent_at_ns: impl FnMut() -> u64,
    page: &mut Page,
    out: &mut [SealedPage],
    mut outcome: impl FnMut(&PageJob, JobOutcome),
) -> usize {
    assert!(jobs.len() <= out.len(), "a batch fits its datagram buffers");
    let mut sealed = 0;
    for job in jobs {
        if filter.drop_next() {
            outcome(job, JobOutcome::Dropped);
            continue;
        }
        match seal_page_job(store, job, sent_at_ns(), page, &mut out[sealed]) {
            Ok(()) => {
                sealed += 1;
                outcome(
                    job,
                    JobOutcome::Sealed {
                        page_lsn: page_lsn(page),
                    },
                );
            }
            Err(reason) => outcome(job, JobOutcome::Skipped(reason)),
        }
    }
    sealed
}

/// The order a sealed batch's datagrams leave in: datagram `d` of `pages × per_page` is piece
/// `d / pages` of page `d % pages` (every page's first piece, then every page's second, …).
/// Interleaved so that a run of up to `pages` consecutive datagrams (one GSO message, or a
/// burst of loss) holds at most one piece of any page, which the page's parity piece rebuilds;
/// in page order, one lost GSO message took whole pages. Whole pages (`per_page` 1) keep their
/// order. Returns `(page, piece)`.
pub fn batch_datagram(d: usize, pages: usize, per_page: usize) -> (usize, usize) {
    debug_assert!(d < pages * per_page);
    (d % pages, d / pages)
}

/// Seeded Bernoulli drops (`--drop-prefetch P`) for loss experiments on one machine.
#[derive(Debug, Clone)]
pub struct DropFilter {
    threshold: u64,
    state: u64,
}

impl DropFilter {
    pub fn new(probability: f64, seed: u64) -> Self {
        let p = probability.clamp(0.0, 1.0);
        DropFilter {
            threshold: (p * u64::MAX as f64) as u64,
            state: seed ^ 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// True when this datagram should be dropped.
    pub fn drop_next(&mut self) -> bool {
        if self.threshold == 0 {
            return false;
        }
        // SplitMix64: cheap, seedable, good enough for a loss pattern.
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) < self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use workers::datagram::DatagramKey;

    /// Connection `port` of a compute whose daemon listens on `port`.
    fn dest(port: u16) -> Destination {
        conn_to(port, u64::from(port))
    }

    /// Connection `conn` of a compute whose daemon listens on `port`.
    fn conn_to(port: u16, conn: ConnId) -> Destination {
        Destination {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            key: Arc::new(DatagramKey::new(1, [0; 32]).stream([port as u8; 16])),
            conn,
            priority: PrefetchPriority::Foreground,
        }
    }

    const REL: RelTag = RelTag::new(1663, 5, 16384, 0);

    /// Queues `n` pages from `first` for connection `conn` of the compute on port 9, due now.
    fn push_for(s: &mut PrefetchScheduler, conn: ConnId, first: u32, n: u32) {
        s.push(&conn_to(9, conn), Header::default(), REL, first, n, 0)
            .unwrap();
    }

    #[test]
    fn a_batch_is_sealed_in_order_with_each_job_accounted_for() {
        use crate::pageserver::source::{SourceSpec, Synthetic};
        use crate::protocol::pagestream::LATEST_LSN;
        let source = SourceSpec::Synthetic { rels: 1, pages: 8 }.open().unwrap();
        let store = PageStore::new(source, 16, std::time::Duration::from_millis(10));
        let rel = Synthetic::rel(0);
        let hdr = Header {
            reqid: 1,
            request_lsn: LATEST_LSN,
            not_modified_since: 0,
        };
        // Blocks 6..10 of an 8-page relation: the last two do not exist.
        let mut s = PrefetchScheduler::new(SchedulerLimits::default());
        s.push(&dest(1), hdr, rel, 6, 4, 0).unwrap();
        let mut jobs = Vec::new();
        assert_eq!(s.next_batch(0, 8, &mut jobs), Next::Ready(4));
        let mut page = Box::new([0u8; lfc::PAGE_SIZE]);
        let mut out = vec![[0u8; workers::datagram::SEALED_PAGE_MAX]; 8];
        let mut seen = Vec::new();
        let sealed = seal_batch(
            &store,
            &jobs,
            &mut DropFilter::new(0.0, 1),
            || 7,
            &mut page,
            &mut out,
            |job, o| seen.push((job.tag.blkno, o)),
        );
        assert_eq!(sealed, 2);
        let lsn = crate::protocol::page::SYNTHETIC_BASE_LSN;
        assert_eq!(
            seen,
            vec![
                (6, JobOutcome::Sealed { page_lsn: lsn }),
                (7, JobOutcome::Sealed { page_lsn: lsn }),
                (8, JobOutcome::Skipped(SkipReason::Failed)),
                (9, JobOutcome::Skipped(SkipReason::Failed)),
            ]
        );
        // Each sealed datagram opens to its page, dated by the clock it was given.
        let mut opener = DatagramKey::new(1, [0; 32]).opener();
        for (i, blkno) in [6, 7].into_iter().enumerate() {
            let hdr = opener
                .open_bytes(&out[i][..DATAGRAM_LEN], &mut page)
                .unwrap();
            assert_eq!((hdr.tag, hdr.sent_at_ns), (rel.block(blkno), 7));
        }
        // A filter that drops everything seals nothing and says so for every job.
        seen.clear();
        let sealed = seal_batch(
            &store,
            &jobs,
            &mut DropFilter::new(1.0, 1),
            || 7,
            &mut page,
            &mut out,
            |job, o| seen.push((job.tag.blkno, o)),
        );
        assert_eq!(sealed, 0);
        assert!(seen.iter().all(|&(_, o)| o == JobOutcome::Dropped) && seen.len() == 4);
    }

    #[test]
    fn a_batch_leaves_interleaved_so_a_run_of_its_pages_count_holds_one_piece_of_each() {
        let (pages, per_page) = (5, 9);
        let order: Vec<_> = (0..pages * per_page)
            .map(|d| batch_datagram(d, pages, per_page))
            .collect();
        let mut all = order.clone();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), pages * per_page, "every datagram once");
        for run in order.chunks(pages) {
            let mut p: Vec<_> = run.iter().map(|&(page, _)| page).collect();
            p.sort_unstable();
            p.dedup();
            assert_eq!(p.len(), run.len(), "one piece per page in {run:?}");
        }
        assert_eq!(batch_datagram(3, 4, 1), (3, 0), "whole pages in order");
    }

    #[test]
    fn ranges_come_out_in_order_and_round_robin() {
        let mut s = PrefetchScheduler::new(SchedulerLimits::default());
        s.push(&dest(1), Header::default(), REL, 10, 3, 0).unwrap();
        s.push(&dest(2), Header::default(), REL, 100, 2, 0).unwrap();
        let mut out = Vec::new();
        let mut seen = Vec::new();
        while let Next::Ready(_) = s.next_batch(0, 2, &mut out) {
            seen.push(
                out.iter()
                    .map(|j| (j.addr.port(), j.tag.blkno))
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(
            seen,
            vec![
                vec![(1, 10), (1, 11)],
                vec![(2, 100), (2, 101)],
                vec![(1, 12)]
            ]
        );
        assert_eq!(s.queued_pages(), 0);
        assert_eq!(s.next_batch(0, 2, &mut out), Next::Idle);
    }

    #[test]
    fn pages_fetched_by_get_page_are_skipped_unless_asked_for_again() {
        let mut s = PrefetchScheduler::new(SchedulerLimits::default());
        // Nothing queued for the destination: nothing to remember.
        s.on_get_page(dest(1).addr, REL.block(0));
        s.push(&dest(1), Header::default(), REL, 0, 6, 0).unwrap();
        s.on_get_page(dest(1).addr, REL.block(1));
        s.on_get_page(dest(1).addr, REL.block(3));
        // Another destination's reader.
        s.on_get_page(dest(2).addr, REL.block(4));
        // Block 3 is asked for again (evicted since): it must be sent (the earlier queued copy
        // goes out too; a duplicate is harmless, a skipped page would cost the reader a wait).
        s.push(&dest(1), Header::default(), REL, 3, 1, 0).unwrap();
        let mut out = Vec::new();
        let mut sent = Vec::new();
        while let Next::Ready(_) = s.next_batch(0, 4, &mut out) {
            sent.extend(out.iter().map(|j| j.tag.blkno));
        }
        assert_eq!(sent, vec![0, 2, 3, 4, 5, 3]);
        assert_eq!(s.skipped_fetched(), 1, "block 1");
        assert_eq!(s.queued_pages(), 0);
        assert!(s.fetched.is_empty(), "forgotten once the queue drained");
    }

    #[test]
    fn queue_bound_drops_whole_requests() {
        let limits = SchedulerLimits {
            max_queued_pages: 10,
            max_queues: 1,
            ..SchedulerLimits::default()
        };
        let mut s = PrefetchScheduler::new(limits);
        s.push(&dest(1), Header::default(), REL, 0, 8, 0).unwrap();
        assert_eq!(
            s.push(&dest(1), Header::default(), REL, 8, 3, 0),
            Err(Overflow::QueueFull)
        );
        assert_eq!(
            s.push(&dest(2), Header::default(), REL, 0, 1, 0),
            Err(Overflow::TooManyQueues)
        );
        assert_eq!(s.queued_pages(), 8);
        // Clipped at the top of the block number space rather than wrapping.
        let mut s = PrefetchScheduler::new(SchedulerLimits::default());
        s.push(&dest(1), Header::default(), REL, u32::MAX - 1, 5, 0)
            .unwrap();
        assert_eq!(s.queued_pages(), 1);
    }

    #[test]
    fn one_connection_cannot_fill_the_queue_and_its_bound_frees_as_pages_go() {
        let limits = SchedulerLimits {
            max_queued_pages: 100,
            max_queued_pages_per_conn: 10,
            ..SchedulerLimits::default()
        };
        let mut s = PrefetchScheduler::new(limits);
        // A hog: its second request would pass the per-connection bound, refused whole.
        s.push(&conn_to(7, 1), Header::default(), REL, 0, 8, 0)
            .unwrap();
        assert_eq!(
            s.push(&conn_to(7, 1), Header::default(), REL, 8, 3, 0),
            Err(Overflow::ConnQueueFull)
        );
        // Another connection, even to the same destination, still gets its pages queued.
        s.push(&conn_to(7, 2), Header::default(), REL, 100, 10, 0)
            .unwrap();
        assert_eq!(s.queued_pages(), 18);
        // Pages sent free the hog's bound.
        let mut out = Vec::new();
        assert_eq!(s.next_batch(0, 4, &mut out), Next::Ready(4));
        let hog_sent = out.iter().filter(|j| j.tag.blkno < 100).count() as u32;
        assert_eq!(hog_sent, 4, "the hog's queue is served first (ring order)");
        s.push(&conn_to(7, 1), Header::default(), REL, 8, 3, 0)
            .unwrap();
        // A closed connection's pages are dropped with it, counted exactly.
        assert_eq!(s.forget(1), 8 - u64::from(hog_sent) + 3);
        assert_eq!(s.queued_pages(), 10);
    }

    #[test]
    fn connections_of_one_compute_take_turns_and_a_page_asked_again_goes_first() {
        // Three backends of one compute (one daemon port): the second and third are not
        // served after the whole of the first's window, as a queue per destination did.
        let mut s = PrefetchScheduler::new(SchedulerLimits::default());
        push_for(&mut s, 1, 0, 6);
        push_for(&mut s, 2, 100, 4);
        push_for(&mut s, 3, 200, 2);
        let mut out = Vec::new();
        let mut turns = Vec::new();
        let take = |s: &mut PrefetchScheduler, out: &mut Vec<PageJob>, turns: &mut Vec<_>| {
            assert!(matches!(s.next_batch(0, 2, out), Next::Ready(_)));
            turns.push(out.iter().map(|j| j.tag.blkno).collect::<Vec<_>>());
        };
        take(&mut s, &mut out, &mut turns);
        // Block 0 and 1 went out; backend 1 lost block 1 and asks again: ahead of 2..6.
        push_for(&mut s, 1, 1, 1);
        while let Next::Ready(_) = s.next_batch(0, 2, &mut out) {
            turns.push(out.iter().map(|j| j.tag.blkno).collect());
        }
        assert_eq!(
            turns,
            vec![
                vec![0, 1],
                vec![100, 101],
                vec![200, 201],
                vec![1, 2],
                vec![102, 103],
                vec![3, 4],
                vec![5],
            ]
        );
        assert_eq!(s.queued_pages(), 0);
    }

    /// Sends every queued page in batches of at most `max`, returning the batches' blocks.
    fn drain_batches(s: &mut PrefetchScheduler, max: usize) -> Vec<Vec<(u16, u32)>> {
        let mut out = Vec::new();
        let mut batches = Vec::new();
        while let Next::Ready(_) = s.next_batch(0, max, &mut out) {
            batches.push(out.iter().map(|j| (j.addr.port(), j.tag.blkno)).collect());
        }
        batches
    }

    #[test]
    fn a_batch_takes_a_quantum_from_each_backend_of_a_compute_so_every_window_front_goes_first() {
        // 64 backends of one compute (one daemon port) ask for their first 32 pages at once,
        // backend `c` for blocks `1000 c ..`.
        let mut s = PrefetchScheduler::new(SchedulerLimits::default());
        for conn in 0..64u32 {
            push_for(&mut s, ConnId::from(conn), 1000 * conn, 32);
        }
        let batches = drain_batches(&mut s, SEND_BATCH);
        let sent: Vec<u32> = batches.iter().flatten().map(|&(_, b)| b).collect();
        assert_eq!(sent.len(), 64 * 32);
        assert!(
            batches.iter().all(|b| b.len() == SEND_BATCH),
            "batches stay whole"
        );
        // Every backend's first page within the first round (a quantum each), where a turn
        // of a whole batch each put the last one's 2016 pages in.
        for conn in 0..64u32 {
            let at = sent.iter().position(|&b| b == 1000 * conn).unwrap();
            assert!(
                at < 64 * CONN_QUANTUM,
                "backend {conn}'s first page went {at}th"
            );
        }
        // Each backend's pages in order.
        for conn in 0..64u32 {
            let own: Vec<u32> = sent.iter().copied().filter(|b| b / 1000 == conn).collect();
            assert_eq!(own, (1000 * conn..1000 * conn + 32).collect::<Vec<_>>());
        }
        // A lone backend still fills its batches.
        push_for(&mut s, 7, 0, 100);
        let lens: Vec<usize> = drain_batches(&mut s, SEND_BATCH)
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(lens, vec![32, 32, 32, 4]);
    }

    #[test]
    fn a_connection_of_another_compute_gets_a_quantum_per_round_and_keeps_its_place() {
        // Backends 1..=3 of the compute on port 9 and one connection (10) of the compute on
        // port 10, between them in the ring.
        let mut s = PrefetchScheduler::new(SchedulerLimits::default());
        push_for(&mut s, 1, 0, 8);
        s.push(&conn_to(10, 10), Header::default(), REL, 500, 12, 0)
            .unwrap();
        push_for(&mut s, 2, 100, 8);
        push_for(&mut s, 3, 200, 8);
        let q = CONN_QUANTUM as u32;
        let range = |port, from: u32, n: u32| (from..from + n).map(move |b| (port, b));
        let batches = drain_batches(&mut s, 3 * CONN_QUANTUM);
        // One destination per batch; the other compute's connection is passed over in its
        // place, then takes one quantum, not a whole batch, while port 9's backends wait.
        let expected: Vec<Vec<(u16, u32)>> = vec![
            range(9, 0, q)
                .chain(range(9, 100, q))
                .chain(range(9, 200, q))
                .collect(),
            range(10, 500, q).collect(),
            range(9, q, q)
                .chain(range(9, 100 + q, q))
                .chain(range(9, 200 + q, q))
                .collect(),
            range(10, 500 + q, 12 - q).collect(),
        ];
        assert_eq!(batches, expected);
        assert_eq!(s.queued_pages(), 0);
    }

    #[test]
    fn a_closed_connection_is_forgotten_and_its_compute_keeps_its_other_queues() {
        let mut s = PrefetchScheduler::new(SchedulerLimits::default());
        push_for(&mut s, 1, 0, 100);
        push_for(&mut s, 2, 500, 3);
        s.on_get_page(conn_to(9, 2).addr, REL.block(501));
        assert_eq!(s.forget(1), 100);
        assert_eq!(s.forget(1), 0, "already gone");
        assert_eq!(s.queued_pages(), 3);
        let mut out = Vec::new();
        assert_eq!(s.next_batch(0, 8, &mut out), Next::Ready(2));
        let sent: Vec<u32> = out.iter().map(|j| j.tag.blkno).collect();
        assert_eq!(sent, vec![500, 502], "the GetPage of 501 still counts");
        assert_eq!(s.next_batch(0, 8, &mut out), Next::Idle);
        assert!(s.fetched.is_empty() && s.queues_per_addr.is_empty());
    }

    #[test]
    fn service_delay_holds_pages_until_due() {
        let mut s = PrefetchScheduler::new(SchedulerLimits::default());
        s.push(&dest(1), Header::default(), REL, 0, 1, 500).unwrap();
        let mut out = Vec::new();
        assert_eq!(s.next_batch(100, 8, &mut out), Next::WaitUntil(500));
        assert_eq!(s.next_batch(500, 8, &mut out), Next::Ready(1));
    }

    #[test]
    fn a_sender_sends_a_batch_at_most_or_sleeps_at_most_idle_wait() {
        let mut s = PrefetchScheduler::new(SchedulerLimits::default());
        let mut jobs = Vec::new();
        assert_eq!(s.next_send(0, &mut jobs), SendStep::Idle);
        let idle_ns = IDLE_WAIT.as_nanos() as u64;
        s.push(&dest(1), Header::default(), REL, 0, 100, 3 * idle_ns)
            .unwrap();
        let until_ns = idle_ns + 5;
        assert_eq!(s.next_send(5, &mut jobs), SendStep::Sleep { until_ns });
        let step = s.next_send(3 * idle_ns - 10, &mut jobs);
        assert_eq!(
            step,
            SendStep::Sleep {
                until_ns: 3 * idle_ns
            }
        );
        assert_eq!(
            s.next_send(3 * idle_ns, &mut jobs),
            SendStep::Send(SEND_BATCH)
        );
        assert_eq!(jobs.len(), SEND_BATCH);
    }

    #[test]
    fn pacing_limits_bytes_per_second() {
        let rate = 100 * DATAGRAM_LEN as u64; // 100 datagrams per second
        let limits = SchedulerLimits {
            rate_bytes_per_s: rate,
            burst_bytes: 10 * DATAGRAM_LEN as u64,
            ..SchedulerLimits::default()
        };
        let mut s = PrefetchScheduler::new(limits);
        s.push(&dest(1), Header::default(), REL, 0, 1000, 0)
            .unwrap();
        let mut out = Vec::new();
        let mut now = 0u64;
        let mut sent = 0;
        // Simulate one virtual second: burst of 10, then 100 more at the paced rate.
        while now <= 1_000_000_000 {
            match s.next_batch(now, 64, &mut out) {
                Next::Ready(n) => sent += n,
                Next::WaitUntil(t) => now = t,
                Next::Idle => break,
            }
        }
        assert!(
            (105..=111).contains(&sent),
            "sent {sent} in one virtual second"
        );
    }

    #[test]
    fn a_destination_out_of_tokens_does_not_hold_back_another() {
        let limits = SchedulerLimits {
            rate_bytes_per_s: 100 * DATAGRAM_LEN as u64,
            burst_bytes: 2 * DATAGRAM_LEN as u64,
            ..SchedulerLimits::default()
        };
        let mut s = PrefetchScheduler::new(limits);
        s.push(&dest(1), Header::default(), REL, 0, 10, 0).unwrap();
        s.push(&dest(2), Header::default(), REL, 100, 10, 0)
            .unwrap();
        let mut out = Vec::new();
        assert_eq!(s.next_batch(0, 8, &mut out), Next::Ready(2));
        assert_eq!(batch_conn(&out), 1, "its burst");
        assert_eq!(s.next_batch(0, 8, &mut out), Next::Ready(2));
        assert_eq!(
            batch_conn(&out),
            2,
            "the other destination's burst, though 1 is out"
        );
        // Both out of tokens: the next one comes at the rate (100 datagrams per second).
        assert_eq!(s.next_batch(0, 8, &mut out), Next::WaitUntil(10_000_000));
        assert_eq!(s.next_batch(10_000_000, 8, &mut out), Next::Ready(1));
    }

    #[test]
    fn drop_filter_is_seeded_and_near_its_probability() {
        let count = |seed| {
            let mut f = DropFilter::new(0.05, seed);
            (0..100_000).filter(|_| f.drop_next()).count()
        };
        assert_eq!(count(1), count(1));
        assert!((4_500..5_500).contains(&count(1)), "{}", count(1));
        let mut never = DropFilter::new(0.0, 3);
        assert!((0..1000).all(|_| !never.drop_next()));
    }

    /// Connection `conn` (its own compute on port `conn`), at `priority`.
    fn ranked(conn: u16, priority: PrefetchPriority) -> Destination {
        Destination {
            priority,
            ..dest(conn)
        }
    }

    /// The connection a batch came from: each test connection has its own port.
    fn batch_conn(out: &[PageJob]) -> u16 {
        out[0].addr.port()
    }

    #[test]
    fn background_waits_for_due_foreground_work_but_gets_its_share() {
        use PrefetchPriority::{Background, Foreground};
        let mut s = PrefetchScheduler::new(SchedulerLimits::default());
        s.push(&ranked(1, Background), Header::default(), REL, 0, 10_000, 0)
            .unwrap();
        s.push(&ranked(2, Foreground), Header::default(), REL, 0, 10_000, 0)
            .unwrap();
        let mut out = Vec::new();
        let mut order = Vec::new();
        for _ in 0..3 * (BACKGROUND_SHARE + 1) {
            assert!(matches!(s.next_batch(0, 4, &mut out), Next::Ready(4)));
            order.push(batch_conn(&out));
        }
        // BACKGROUND_SHARE foreground batches, then one background batch, and again.
        let mut expected = vec![2; BACKGROUND_SHARE as usize];
        expected.push(1);
        assert_eq!(order, expected.repeat(3));
        // A background connection re-ranked foreground shares the ring equally.
        s.push(&ranked(1, Foreground), Header::default(), REL, 10_000, 1, 0)
            .unwrap();
        let turns: Vec<_> = (0..4)
            .map(|_| {
                s.next_batch(0, 4, &mut out);
                batch_conn(&out)
            })
            .collect();
        assert_eq!(turns.iter().filter(|&&c| c == 1).count(), 2, "{turns:?}");
    }

    #[test]
    fn background_is_sent_at_once_when_no_foreground_page_is_due() {
        use PrefetchPriority::{Background, Foreground};
        let mut s = PrefetchScheduler::new(SchedulerLimits::default());
        let mut out = Vec::new();
        // A foreground request not due before 1000 (service delay) does not hold it back.
        s.push(&ranked(2, Foreground), Header::default(), REL, 0, 8, 1000)
            .unwrap();
        s.push(&ranked(1, Background), Header::default(), REL, 0, 8, 0)
            .unwrap();
        assert_eq!(s.next_batch(0, 4, &mut out), Next::Ready(4));
        assert_eq!(batch_conn(&out), 1);
        // Once the foreground pages are due they go first.
        assert_eq!(s.next_batch(1000, 4, &mut out), Next::Ready(4));
        assert_eq!(batch_conn(&out), 2);
        // A connection that closes takes its background queue with it.
        assert_eq!(s.forget(1), 4);
        assert_eq!(s.next_batch(1000, 8, &mut out), Next::Ready(4));
        assert_eq!(batch_conn(&out), 2);
        assert_eq!(s.next_batch(1000, 8, &mut out), Next::Idle);
    }

    /// One step of the priority property test: a push or a sender's turn.
    #[derive(Debug, Clone)]
    enum Op {
        /// `pages` for connection `conn`, due `delay` after the last push's due time.
        Push { conn: u16, pages: u32, delay: u64 },
        /// A sender's turn, `advance` after the previous one.
        Turn { advance: u64, max: usize },
    }

    fn arb_op(conns: u16) -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            1 => (1..=conns, 1..40u32, 0..50u64)
                .prop_map(|(conn, pages, delay)| Op::Push { conn, pages, delay }),
            3 => (0..20u64, 1..8usize).prop_map(|(advance, max)| Op::Turn { advance, max }),
        ]
    }

    proptest::proptest! {
        /// Against a model of the queues: a background batch goes only when no foreground page
        /// is due or its share is owed (after exactly `BACKGROUND_SHARE` foreground batches
        /// while it waited), and then it does go first; a batch is its connection's next due
        /// pages in order (a quantum of them while another connection's pages are due: each
        /// test connection is a destination of its own); the scheduler waits exactly until the
        /// next due page; and once pushes stop, every page of every connection, background
        /// included, is sent (no starvation), within one turn per page.
        #[test]
        fn priority_is_strict_for_due_foreground_work_and_background_is_never_starved(
            background in proptest::collection::vec(proptest::bool::ANY, 4),
            ops in proptest::collection::vec(arb_op(4), 1..300),
        ) {
            use std::collections::BTreeMap;
            let is_bg = |conn: u16| background[usize::from(conn) - 1];
            let priority = |conn| if is_bg(conn) {
                PrefetchPriority::Background
            } else {
                PrefetchPriority::Foreground
            };
            let mut s = PrefetchScheduler::new(SchedulerLimits::default());
            // Per connection: pending (due, next blkno, pages left) ranges, and the next blkno
            // to push (increasing, so no range ever jumps the queue).
            let mut model: BTreeMap<u16, VecDeque<(u64, u32, u32)>> = BTreeMap::new();
            let mut next_blkno: BTreeMap<u16, u32> = BTreeMap::new();
            let mut due_of: BTreeMap<u16, u64> = BTreeMap::new();
            let mut now = 0u64;
            let mut fg_since_bg = 0u32;
            let mut out = Vec::new();
            let due = |m: &BTreeMap<u16, VecDeque<(u64, u32, u32)>>, bg: bool, now: u64| {
                m.iter().any(|(&c, q)| is_bg(c) == bg && q.front().is_some_and(|r| r.0 <= now))
            };
            let pending = |m: &BTreeMap<u16, VecDeque<(u64, u32, u32)>>, bg: bool| {
                m.iter().any(|(&c, q)| is_bg(c) == bg && !q.is_empty())
            };
            let mut turn = |s: &mut PrefetchScheduler,
                            model: &mut BTreeMap<u16, VecDeque<(u64, u32, u32)>>,
                            now: u64,
                            max: usize,
                            fg_since_bg: &mut u32|
             -> Next {
                let fg_due = due(model, false, now);
                let bg_due = due(model, true, now);
                let next = s.next_batch(now, max, &mut out);
                match next {
                    Next::Ready(n) => {
                        let conn = batch_conn(&out);
                        if is_bg(conn) {
                            assert!(!fg_due || *fg_since_bg >= BACKGROUND_SHARE,
                                "background sent while foreground was due, {fg_since_bg} turns");
                            *fg_since_bg = 0;
                        } else {
                            assert!(!(bg_due && *fg_since_bg >= BACKGROUND_SHARE),
                                "background's share owed but foreground sent");
                        }
                        // The connection's next due pages, in order, up to max, or up to
                        // a quantum while another destination of its ring has pages due.
                        let other_due = model.iter().any(|(&c, q)| {
                            c != conn
                                && is_bg(c) == is_bg(conn)
                                && q.front().is_some_and(|r| r.0 <= now)
                        });
                        let limit = if other_due { max.min(CONN_QUANTUM) } else { max };
                        let q = model.get_mut(&conn).unwrap();
                        let mut expected = Vec::new();
                        while expected.len() < limit {
                            let Some(r) = q.front_mut() else { break };
                            if r.0 > now {
                                break;
                            }
                            expected.push(r.1);
                            r.1 += 1;
                            r.2 -= 1;
                            if r.2 == 0 {
                                q.pop_front();
                            }
                        }
                        let got: Vec<u32> = out.iter().map(|j| j.tag.blkno).collect();
                        assert_eq!(got, expected);
                        assert_eq!(n, got.len());
                        if !is_bg(conn) && pending(model, true) {
                            *fg_since_bg += 1;
                        }
                    }
                    Next::WaitUntil(t) => {
                        assert!(!fg_due && !bg_due, "due work not sent");
                        let first = model.values().filter_map(|q| q.front()).map(|r| r.0).min();
                        assert_eq!(Some(t), first);
                    }
                    Next::Idle => assert!(model.values().all(|q| q.is_empty())),
                }
                next
            };
            for op in ops {
                match op {
                    Op::Push { conn, pages, delay } => {
                        let d = due_of.entry(conn).or_insert(now);
                        *d = (*d).max(now) + delay;
                        let first = next_blkno.entry(conn).or_insert(0);
                        s.push(&ranked(conn, priority(conn)), Header::default(), REL, *first, pages, *d)
                            .unwrap();
                        model.entry(conn).or_default().push_back((*d, *first, pages));
                        *first += pages;
                    }
                    Op::Turn { advance, max } => {
                        now += advance;
                        turn(&mut s, &mut model, now, max, &mut fg_since_bg);
                    }
                }
            }
            // Drain: every page goes, within one turn per page (plus one wait per range).
            let left: u64 = model.values().flatten().map(|r| u64::from(r.2)).sum();
            let ranges = model.values().map(|q| q.len() as u64).sum::<u64>();
            let mut turns = 0;
            loop {
                match turn(&mut s, &mut model, now, 3, &mut fg_since_bg) {
                    Next::Idle => break,
                    Next::WaitUntil(t) => now = t,
                    Next::Ready(_) => {}
                }
                turns += 1;
                assert!(turns <= left + ranges + 1, "not drained in {turns} turns");
            }
            assert_eq!(s.queued_pages(), 0);
        }
    }
}
