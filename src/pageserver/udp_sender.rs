//! The I/O shell around `PrefetchScheduler`: sender threads that read pages, seal datagrams and
//! send them in batches. GetPage never waits for any of this: prefetches live only here.
//!
//! Each thread's decisions are the sans-IO core's (`PrefetchScheduler::next_send`: what to send
//! next, how long to sleep; `seal_batch`: what becomes of each page), which the simulator runs
//! too; this file owns the threads, the lock, their wake-ups, the clock, the socket and the
//! counters.
//!
//! Owns: besides those, the channel connections submit Prefetches on and the list they report
//! served GetPages in, neither taking the scheduler's lock, and each thread's socket, source
//! port and `DropFilter`.
//! Decides no page, order, pace or sleep length itself; of `workers` it uses only the shared
//! layer (`datagram`, `udp`, `sched`), and it touches no LFC.

use super::prefetch::{
    batch_datagram, seal_batch, Destination, DropFilter, JobOutcome, Overflow, PageJob,
    PrefetchScheduler, SchedulerLimits, SendStep, SkipReason, IDLE_WAIT, SEND_BATCH,
};
use super::stats::{bump, ServerStats};
use super::store::PageStore;
use crate::protocol::pagestream::Header;
use lfc::{monotonic_ns, RelTag, PAGE_SIZE};
use parking_lot::Mutex;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use workers::datagram::{SealedPage, DATAGRAM_LEN, MAX_FRAGMENTS, SEALED_PAGE_MAX};
use workers::udp::{set_dont_fragment, GsoSender, MAX_SEND_BATCH};

#[derive(Debug, Clone)]
pub struct SenderConfig {
    pub threads: usize,
    pub limits: SchedulerLimits,
    /// Fraction of datagrams dropped before sending (loss experiments), and its seed.
    pub drop_probability: f64,
    pub drop_seed: u64,
    /// Use UDP GSO when the kernel allows it (off only for comparisons).
    pub allow_gso: bool,
    /// Nice value of the sender threads; 0 leaves them as started (`workers::sched`).
    pub nice: i32,
    /// Run the sender threads as `SCHED_BATCH` (`workers::sched::ThreadClass::Bulk`).
    pub bulk_class: bool,
}

/// A Prefetch request (`session::Routed::Prefetch`) a connection handed the senders.
struct Submission {
    dest: Destination,
    hdr: Header,
    rel: RelTag,
    first_blkno: u32,
    nblocks: u16,
    due_ns: u64,
}

/// Prefetches waiting for a sender to take the lock. Connections only ever `try_send` here: a
/// connection's reader that blocked on the scheduler's lock while a sender held it (a
/// `SCHED_BATCH` thread preempted inside its critical section, then waiting for a CPU behind
/// the latency threads) held up every GetPage behind its Prefetch on the TCP stream for
/// 130-900 µs. Bounded: a submission that finds it full is dropped and counted, as an
/// overflow of the scheduler's own queue is.
const MAX_SUBMISSIONS: usize = 16_384;
/// GetPages served and not yet handed to the scheduler (`fetched_by_get_page`), in a list of
/// their own: shared with the Prefetches' channel, they filled it when the senders fell behind
/// (64 backends on TCP pipelining report every page) and Prefetches were dropped. A report that
/// finds the list full or its lock taken is dropped: its page is sent twice at worst, and
/// installed once.
const MAX_FETCHED_REPORTS: usize = 16_384;

/// The scheduler and what connections handed over since a sender last held it.
struct Queue {
    sched: PrefetchScheduler,
    submitted: mpsc::Receiver<Submission>,
    /// The reports taken from `Inner::fetched`, swapped with it (empty between takes).
    fetched: Vec<(SocketAddr, lfc::BufferTag)>,
}

impl Queue {
    /// Hands the GetPages reported and then the Prefetches submitted so far to the scheduler.
    /// (A report that overtakes an earlier Prefetch of its page costs that page a second
    /// send: `PrefetchScheduler::push` serves a page asked for again.)
    fn take_submitted(&mut self, inner: &Inner) {
        let stats = &inner.stats;
        // A sender never waits for a connection thread preempted while it reports, as no
        // reporter waits for a sender: the reports wait for the next take instead.
        if let Some(mut reports) = inner.fetched.try_lock() {
            std::mem::swap(&mut *reports, &mut self.fetched);
        }
        for (addr, tag) in self.fetched.drain(..) {
            self.sched.on_get_page(addr, tag);
        }
        while let Ok(s) = self.submitted.try_recv() {
            let pushed = self.sched.push(
                &s.dest,
                s.hdr,
                s.rel,
                s.first_blkno,
                u32::from(s.nblocks),
                s.due_ns,
            );
            let counter = match pushed {
                Ok(()) => &stats.prefetch_pages_queued,
                Err(Overflow::QueueFull | Overflow::ConnQueueFull | Overflow::TooManyQueues) => {
                    &stats.prefetch_pages_dropped_overflow
                }
            };
            counter.fetch_add(u64::from(s.nblocks), Ordering::Relaxed);
        }
    }
}

struct Inner {
    scheduler: Mutex<Queue>,
    /// Connections submit here, never taking the scheduler's lock (`MAX_SUBMISSIONS`).
    submit: mpsc::SyncSender<Submission>,
    /// GetPages report here (`MAX_FETCHED_REPORTS`), only ever with `try_lock`. Not a
    /// bounded channel: its `try_send` spins while another thread is inside the slot it needs,
    /// and with 64 connections' threads on the page server's one CPU (a sender holding the
    /// receiving end preempted among them) the spinning took 27 % of that CPU in `bench
    /// many-backends`, and the udp case ran at 0.73× TCP pipelining with every backend on it.
    fetched: Mutex<Vec<(SocketAddr, lfc::BufferTag)>>,
    /// Pages queued as of the last time a sender held the lock, plus those submitted since:
    /// while it is 0, GetPages report nothing.
    queued_pages: AtomicU64,
    /// The sender threads, each woken by `unpark` (its token makes a wake-up that comes
    /// before it parks return at once: none is lost). Set before any connection can submit.
    senders: std::sync::OnceLock<Vec<std::thread::Thread>>,
    /// Which sender the next submission wakes.
    next_wake: AtomicU64,
    stopping: AtomicBool,
    store: Arc<PageStore>,
    stats: Arc<ServerStats>,
}

impl Inner {
    /// Wakes one sender thread (in turn), to take what was just submitted.
    fn wake_one(&self) {
        if let Some(senders) = self.senders.get() {
            let i = self.next_wake.fetch_add(1, Ordering::Relaxed) as usize % senders.len();
            senders[i].unpark();
        }
    }

    fn wake_all(&self) {
        for t in self.senders.get().into_iter().flatten() {
            t.unpark();
        }
    }
}

/// Binds sender thread `i`'s socket and starts the thread; returns its UDP source port. The
/// thread reports on `ready` whether it took its priority before it sends anything.
fn spawn_sender_thread(
    i: usize,
    config: &SenderConfig,
    inner: Arc<Inner>,
    ready: std::sync::mpsc::Sender<Result<(), workers::sched::NiceError>>,
) -> std::io::Result<(u16, JoinHandle<()>)> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    let port = socket.local_addr()?.port();
    // Datagrams are sized to the compute's path MTU (fragments on a small one): IP
    // must never fragment them, since one lost IP fragment loses the datagram and
    // incomplete sets clog the receiver's reassembly memory.
    set_dont_fragment(&socket)?;
    // A batch of split pages is up to SEND_BATCH × MAX_FRAGMENTS datagrams: one
    // `sendmmsg` takes as many as the sender allows.
    let per_call = (SEND_BATCH * MAX_FRAGMENTS).min(MAX_SEND_BATCH);
    let sender = GsoSender::new(socket, DATAGRAM_LEN, per_call, config.allow_gso)
        .map_err(std::io::Error::other)?;
    if i == 0 {
        tracing::info!(
            gso = sender.gso_active(),
            segments = sender.gso_segments(),
            "prefetch sender ready"
        );
    }
    let filter = DropFilter::new(
        config.drop_probability,
        config.drop_seed.wrapping_add(i as u64),
    );
    let (nice, bulk) = (config.nice, config.bulk_class);
    let thread = std::thread::Builder::new()
        .name(format!("prefetch-send-{i}"))
        .spawn(move || {
            if bulk {
                // Sending prefetches is bulk work: it must never preempt a thread that
                // serves a GetPage (ARCHITECTURE §4: GetPage is never queued behind
                // prefetch work, and that includes the CPU).
                workers::sched::set_thread_class_or_warn(workers::sched::ThreadClass::Bulk);
            }
            let priority = match nice {
                0 => Ok(()),
                n => workers::sched::set_thread_nice(0, n),
            };
            let ok = priority.is_ok();
            let _ = ready.send(priority);
            drop(ready);
            if ok {
                send_loop(&inner, sender, filter);
            }
        })?;
    Ok((port, thread))
}

/// Handle owned by the server; connections call `enqueue`.
pub struct PrefetchSender {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Each sender thread's UDP source port, in thread order: what the compute's `lfc stat`
    /// and daemon metrics name a sender by.
    ports: Vec<u16>,
}

impl PrefetchSender {
    pub fn start(
        config: SenderConfig,
        store: Arc<PageStore>,
        stats: Arc<ServerStats>,
    ) -> std::io::Result<Self> {
        let (submit, submitted) = mpsc::sync_channel(MAX_SUBMISSIONS);
        let inner = Arc::new(Inner {
            scheduler: Mutex::new(Queue {
                sched: PrefetchScheduler::new(config.limits),
                submitted,
                fetched: Vec::with_capacity(MAX_FETCHED_REPORTS),
            }),
            submit,
            fetched: Mutex::new(Vec::with_capacity(MAX_FETCHED_REPORTS)),
            queued_pages: AtomicU64::new(0),
            senders: std::sync::OnceLock::new(),
            next_wake: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            store,
            stats,
        });
        let mut threads = Vec::new();
        let mut ports = Vec::new();
        // Each thread reports whether it took its priority before it sends anything, so a
        // refused --prefetch-sender-nice fails the start instead of passing unnoticed.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for i in 0..config.threads.max(1) {
            let (port, thread) = spawn_sender_thread(i, &config, inner.clone(), ready_tx.clone())?;
            ports.push(port);
            threads.push(thread);
        }
        let handles = threads.iter().map(|t| t.thread().clone()).collect();
        inner
            .senders
            .set(handles)
            .expect("set once, before any submission");
        let sender = PrefetchSender {
            inner,
            threads: Mutex::new(threads),
            ports,
        };
        drop(ready_tx);
        // Ends when every thread has reported and dropped its sending half.
        for priority in ready_rx {
            if let Err(e) = priority {
                sender.shutdown();
                return Err(std::io::Error::other(e));
            }
        }
        Ok(sender)
    }

    /// Queues a Prefetch request (`session::Routed::Prefetch`), not to be sent before `due_ns`;
    /// never blocks and takes no lock (`MAX_SUBMISSIONS`). Overflow is counted and the request
    /// dropped.
    pub fn enqueue(
        &self,
        dest: &Destination,
        hdr: Header,
        rel: RelTag,
        first_blkno: u32,
        nblocks: u16,
        due_ns: u64,
    ) {
        let submission = Submission {
            dest: dest.clone(),
            hdr,
            rel,
            first_blkno,
            nblocks,
            due_ns,
        };
        match self.inner.submit.try_send(submission) {
            Ok(()) => {
                self.inner
                    .queued_pages
                    .fetch_add(u64::from(nblocks), Ordering::Relaxed);
                self.inner.wake_one();
            }
            Err(_) => {
                self.inner
                    .stats
                    .prefetch_pages_dropped_overflow
                    .fetch_add(u64::from(nblocks), Ordering::Relaxed);
            }
        }
    }

    /// A GetPage of `tag` was served on a connection whose prefetches go to `addr`: its queued
    /// prefetch, if any, is no longer needed (`PrefetchScheduler::on_get_page`).
    pub fn fetched_by_get_page(&self, addr: SocketAddr, tag: lfc::BufferTag) {
        if self.inner.queued_pages.load(Ordering::Relaxed) == 0 {
            return;
        }
        // Never waits: a connection thread preempted while it holds the lock costs the others
        // their reports, not their time.
        if let Some(mut reports) = self.inner.fetched.try_lock() {
            if reports.len() < MAX_FETCHED_REPORTS {
                reports.push((addr, tag));
            }
        }
    }

    /// Prefetch pages queued now (as of the last enqueue or batch taken).
    pub fn queued_pages(&self) -> u64 {
        self.inner.queued_pages.load(Ordering::Relaxed)
    }

    /// Each sender thread's UDP source port, in thread order.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// A connection closed: its queued prefetches are dropped (nobody reads them now).
    /// Returns the pages dropped.
    pub fn forget(&self, conn: super::prefetch::ConnId) -> u64 {
        let mut q = self.inner.scheduler.lock();
        // Its submissions still waiting are queued first, then forgotten with the rest.
        q.take_submitted(&self.inner);
        let pages = q.sched.forget(conn);
        self.inner
            .queued_pages
            .store(q.sched.queued_pages(), Ordering::Relaxed);
        pages
    }

    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.wake_all();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for PrefetchSender {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Whole pages sealed and sent per `sendmmsg` when the socket has no GSO (one datagram per
/// message): as many as a GSO message would carry on a loopback or jumbo path, so that without
/// GSO a batch costs no more calls than with it.
const PAGES_PER_SEND_WITHOUT_GSO: usize = 8;

/// How many of a batch's pages to seal before sending them. Whole pages leave a GSO message at
/// a time, each as soon as its pages are sealed: sealed as one batch (32 pages at 4-6 µs each on
/// the reference machine: read, checksum, copy), a batch's first page left 150-200 µs after its
/// turn came, on top of the service time, and a backend that reads at the front of its window
/// waits that long. A batch of split pages is sealed whole: its datagrams interleave across
/// pages.
fn pages_per_send(jobs: &[PageJob], sender: &GsoSender) -> usize {
    if jobs.first().is_some_and(|j| j.key.datagrams_per_page() > 1) {
        return jobs.len().max(1);
    }
    match sender.gso_segments() {
        1 => PAGES_PER_SEND_WITHOUT_GSO,
        segments => segments,
    }
}

fn send_loop(inner: &Inner, mut sender: GsoSender, mut filter: DropFilter) {
    let mut jobs: Vec<PageJob> = Vec::with_capacity(SEND_BATCH);
    let mut datagrams: Vec<SealedPage> = vec![[0u8; SEALED_PAGE_MAX]; SEND_BATCH];
    let mut page = Box::new([0u8; PAGE_SIZE]);
    let stats = &inner.stats;
    while !inner.stopping.load(Ordering::Relaxed) {
        let idle = {
            let mut q = inner.scheduler.lock();
            q.take_submitted(inner);
            let step = q.sched.next_send(monotonic_ns(), &mut jobs);
            inner
                .queued_pages
                .store(q.sched.queued_pages(), Ordering::Relaxed);
            stats
                .prefetch_pages_skipped_fetched
                .store(q.sched.skipped_fetched(), Ordering::Relaxed);
            match step {
                SendStep::Send(_) => None,
                SendStep::Sleep { until_ns } => Some(Duration::from_nanos(
                    until_ns.saturating_sub(monotonic_ns()),
                )),
                SendStep::Idle => Some(IDLE_WAIT),
            }
        };
        if let Some(wait) = idle {
            // Outside the lock: a submission made since it was released unparks this thread
            // (or left its token, and this returns at once).
            std::thread::park_timeout(wait);
            continue;
        }
        for part in jobs.chunks(pages_per_send(&jobs, &sender)) {
            let ready = seal_batch(
                &inner.store,
                part,
                &mut filter,
                lfc::wall_ns,
                &mut page,
                &mut datagrams,
                |_, outcome| match outcome {
                    JobOutcome::Sealed { .. } => {}
                    JobOutcome::Dropped => bump(&stats.prefetch_pages_dropped_filter),
                    JobOutcome::Skipped(SkipReason::NotReady) => {
                        bump(&stats.prefetch_pages_not_ready)
                    }
                    JobOutcome::Skipped(SkipReason::Failed) => bump(&stats.prefetch_pages_failed),
                },
            );
            if ready > 0 {
                send_sealed(&mut sender, part, &datagrams, ready, stats);
            }
            // Bulk work gives the CPU up between messages: a connection thread woken meanwhile
            // (a GetPage, or a Prefetch with a GetPage behind it on the stream) is not always
            // let preempt a running thread, and waited out the sender's whole run. On the
            // page server's one CPU `bench hol` measured its foreground GetPages at p99 640–660
            // µs with the busy reader on UDP (400 µs of it before the reader thread could read
            // the request) against 320–330 µs when the sender yields here; the idle reader's
            // p99 is 320–340 µs. Costs a system call per message when nothing else runs.
            std::thread::yield_now();
        }
    }
}

/// Sends the first `ready` sealed pages of a batch (one destination and datagram layout: the
/// scheduler hands out batches so), each `fragments` datagrams, counting pages whose last
/// datagram left and, on a send error, the pages that did not.
fn send_sealed(
    sender: &mut GsoSender,
    jobs: &[PageJob],
    datagrams: &[SealedPage],
    ready: usize,
    stats: &ServerStats,
) {
    let dest: SocketAddr = jobs[0].addr;
    let (fragments, len) = (
        usize::from(jobs[0].key.datagrams_per_page()),
        jobs[0].key.fragment_len(),
    );
    let total = ready * fragments;
    let mut sent = 0;
    while sent < total {
        let from = sent;
        // Interleaved (`batch_datagram`), and no GSO message longer than the batch's page
        // count: a lost message costs each page at most the one piece its parity rebuilds.
        match sender.send_pieces(dest, total - from, (from, ready), |i| {
            let (page, piece) = batch_datagram(from + i, ready, fragments);
            &datagrams[page][piece * len..][..len]
        }) {
            Ok(n) => {
                sent += n;
                // Pages whose last datagram left (every page's last piece is in the last
                // run).
                let last_run = total - ready;
                let done = |s: usize| s.saturating_sub(last_run);
                stats.on_pages_sent(dest, (done(sent) - done(from)) as u64);
            }
            Err(_) => {
                // Best effort by design: the backend falls back to GetPage.
                let unsent_pages = ready - sent.saturating_sub(total - ready);
                stats
                    .prefetch_send_errors
                    .fetch_add(unsent_pages as u64, Ordering::Relaxed);
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pageserver::source::{SourceSpec, Synthetic};
    use crate::protocol::pagestream::PrefetchPriority;
    use crate::protocol::pagestream::LATEST_LSN;
    use std::sync::mpsc::RecvTimeoutError;
    use workers::datagram::DatagramKey;

    /// A sender with one thread over a synthetic relation, and the UDP socket its datagrams
    /// for connection 1 go to.
    fn sender() -> (PrefetchSender, Destination, UdpSocket, Arc<ServerStats>) {
        let source = SourceSpec::Synthetic { rels: 1, pages: 64 }.open().unwrap();
        let store = Arc::new(PageStore::new(source, 16, Duration::from_millis(10)));
        let stats = Arc::new(ServerStats::default());
        let config = SenderConfig {
            threads: 1,
            limits: SchedulerLimits::default(),
            drop_probability: 0.0,
            drop_seed: 1,
            allow_gso: true,
            nice: 0,
            bulk_class: false,
        };
        let sender = PrefetchSender::start(config, store, stats.clone()).unwrap();
        let daemon = UdpSocket::bind("127.0.0.1:0").unwrap();
        daemon
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let dest = Destination {
            addr: daemon.local_addr().unwrap(),
            key: Arc::new(DatagramKey::new(1, [0; 32]).stream([7; 16])),
            conn: 1,
            priority: PrefetchPriority::Foreground,
        };
        (sender, dest, daemon, stats)
    }

    fn hdr() -> Header {
        Header {
            reqid: 1,
            request_lsn: LATEST_LSN,
            not_modified_since: 0,
        }
    }

    #[test]
    fn a_prefetch_is_taken_while_a_sender_holds_the_lock_and_sent_once_it_lets_go() {
        let (sender, dest, daemon, stats) = sender();
        let sender = Arc::new(sender);
        let held = sender.inner.scheduler.lock();
        let (done_tx, done_rx) = mpsc::channel();
        let submitting = {
            let (sender, dest) = (sender.clone(), dest.clone());
            std::thread::spawn(move || {
                sender.enqueue(&dest, hdr(), Synthetic::rel(0), 0, 4, 0);
                done_tx.send(()).unwrap();
            })
        };
        // The connection's reader returns while the lock is held (before this change it
        // waited for the lock, and every GetPage behind the Prefetch on its stream with it).
        let returned = done_rx.recv_timeout(Duration::from_secs(10));
        drop(held);
        assert_eq!(returned, Ok(()), "enqueue returned with the lock held");
        submitting.join().unwrap();
        let mut buf = vec![0u8; 65536];
        for _ in 0..4 {
            daemon.recv(&mut buf).expect("each page arrives");
        }
        assert_eq!(stats.prefetch_pages_queued.load(Ordering::Relaxed), 4);
        assert_eq!(
            stats
                .prefetch_pages_dropped_overflow
                .load(Ordering::Relaxed),
            0
        );
        assert_eq!(
            done_rx.recv_timeout(Duration::ZERO),
            Err(RecvTimeoutError::Disconnected)
        );
    }

    #[test]
    fn submissions_beyond_the_bound_are_dropped_and_counted_never_waited_for() {
        let (sender, dest, _daemon, stats) = sender();
        let held = sender.inner.scheduler.lock();
        let extra = 10;
        for i in 0..MAX_SUBMISSIONS + extra {
            sender.enqueue(&dest, hdr(), Synthetic::rel(0), i as u32, 1, u64::MAX);
        }
        assert_eq!(
            stats
                .prefetch_pages_dropped_overflow
                .load(Ordering::Relaxed),
            extra as u64
        );
        drop(held);
        // The sender takes every submission it kept, each one page.
        let want = MAX_SUBMISSIONS as u64;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while stats.prefetch_pages_queued.load(Ordering::Relaxed) < want
            && std::time::Instant::now() < deadline
        {
            sender.inner.wake_one();
            std::thread::yield_now();
        }
        assert_eq!(stats.prefetch_pages_queued.load(Ordering::Relaxed), want);
    }

    #[test]
    fn get_page_reports_never_wait_are_bounded_and_skip_the_queued_prefetch() {
        let (sender, dest, daemon, stats) = sender();
        let tag = |blkno| Synthetic::rel(0).block(blkno);
        let wait_for = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !done() {
                assert!(std::time::Instant::now() < deadline, "{what}");
                std::thread::yield_now();
            }
        };
        // Nothing queued: nothing reported.
        sender.fetched_by_get_page(dest.addr, tag(0));
        assert!(sender.inner.fetched.lock().is_empty());
        // Pages 0..4 due in two seconds (room for a loaded machine), taken into the scheduler
        // by the sender.
        let due = monotonic_ns() + 2_000_000_000;
        sender.enqueue(&dest, hdr(), Synthetic::rel(0), 0, 4, due);
        wait_for("queued", &|| {
            stats.prefetch_pages_queued.load(Ordering::Relaxed) == 4
        });
        // A report made while the list's lock is taken returns, and is dropped.
        let held = sender.inner.fetched.lock();
        sender.fetched_by_get_page(dest.addr, tag(1));
        drop(held);
        assert!(sender.inner.fetched.lock().is_empty());
        // The list holds at most its bound.
        sender.fetched_by_get_page(dest.addr, tag(2));
        for _ in 0..MAX_FETCHED_REPORTS + 10 {
            sender.fetched_by_get_page(dest.addr, tag(3));
        }
        assert_eq!(sender.inner.fetched.lock().len(), MAX_FETCHED_REPORTS);
        assert!(monotonic_ns() < due, "reported before the pages were due");
        // When the range falls due, pages 0 and 1 are sent; 2 and 3 were fetched by GetPage.
        let mut buf = vec![0u8; 65536];
        for _ in 0..2 {
            daemon.recv(&mut buf).expect("pages 0 and 1 arrive");
        }
        wait_for("skipped", &|| {
            stats.prefetch_pages_skipped_fetched.load(Ordering::Relaxed) == 2
        });
        wait_for("sent", &|| {
            stats.prefetch_pages_sent.load(Ordering::Relaxed) == 2
        });
        assert!(sender.inner.fetched.lock().is_empty());
    }
}
