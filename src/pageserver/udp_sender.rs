//! The I/O shell around `PrefetchScheduler`: sender threads that read pages, seal datagrams and
//! send them in batches. GetPage never waits for any of this: prefetches live only here.
//!
//! Each thread's decisions are the sans-IO core's (`PrefetchScheduler::next_send`: what to send
//! next, how long to sleep; `seal_batch`: what becomes of each page), which the simulator runs
//! too; this file owns the threads, the lock and condvar, the clock, the socket and the
//! counters.
//!
//! Owns: besides those, the channel GetPages report on without taking the scheduler's lock, and
//! each thread's socket, source port and `DropFilter`. Decides no page, order, pace or sleep length
//! itself; of `workers` it uses only the shared layer (`datagram`, `udp`, `sched`), and it touches
//! no LFC.

use super::prefetch::{
    batch_datagram, seal_batch, Destination, DropFilter, JobOutcome, Overflow, PageJob,
    PrefetchScheduler, SchedulerLimits, SendStep, SkipReason, IDLE_WAIT, SEND_BATCH,
};
use super::stats::{bump, ServerStats};
use super::store::PageStore;
use crate::protocol::pagestream::Header;
use lfc::{monotonic_ns, RelTag, PAGE_SIZE};
use parking_lot::{Condvar, Mutex};
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

/// The scheduler and what GetPages reported since a sender last held it.
struct Queue {
    sched: PrefetchScheduler,
    fetched: mpsc::Receiver<(SocketAddr, lfc::BufferTag)>,
}

impl Queue {
    /// Hands the GetPages reported since to the scheduler.
    fn take_fetched(&mut self) {
        while let Ok((addr, tag)) = self.fetched.try_recv() {
            self.sched.on_get_page(addr, tag);
        }
    }
}

struct Inner {
    scheduler: Mutex<Queue>,
    /// GetPages report here without the scheduler's lock, which a sender holds while it
    /// takes a batch: a GetPage never waits for prefetch work. Only while pages are queued
    /// (`queued_pages`), so an idle server's channel stays empty.
    fetched: mpsc::Sender<(SocketAddr, lfc::BufferTag)>,
    queued_pages: AtomicU64,
    work: Condvar,
    stopping: AtomicBool,
    store: Arc<PageStore>,
    stats: Arc<ServerStats>,
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
        let (fetched, fetched_rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            scheduler: Mutex::new(Queue {
                sched: PrefetchScheduler::new(config.limits),
                fetched: fetched_rx,
            }),
            fetched,
            queued_pages: AtomicU64::new(0),
            work: Condvar::new(),
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
    /// never blocks. Overflow is counted and the request dropped.
    pub fn enqueue(
        &self,
        dest: &Destination,
        hdr: Header,
        rel: RelTag,
        first_blkno: u32,
        nblocks: u16,
        due_ns: u64,
    ) {
        let result = {
            let mut q = self.inner.scheduler.lock();
            // GetPages reported before this request must not skip what it asks for again.
            q.take_fetched();
            let r = q
                .sched
                .push(dest, hdr, rel, first_blkno, u32::from(nblocks), due_ns);
            self.inner
                .queued_pages
                .store(q.sched.queued_pages(), Ordering::Relaxed);
            r
        };
        let stats = &self.inner.stats;
        match result {
            Ok(()) => {
                stats
                    .prefetch_pages_queued
                    .fetch_add(u64::from(nblocks), Ordering::Relaxed);
                self.inner.work.notify_one();
            }
            Err(Overflow::QueueFull | Overflow::ConnQueueFull | Overflow::TooManyQueues) => {
                stats
                    .prefetch_pages_dropped_overflow
                    .fetch_add(u64::from(nblocks), Ordering::Relaxed);
            }
        }
    }

    /// A GetPage of `tag` was served on a connection whose prefetches go to `addr`: its queued
    /// prefetch, if any, is no longer needed (`PrefetchScheduler::on_get_page`).
    pub fn fetched_by_get_page(&self, addr: SocketAddr, tag: lfc::BufferTag) {
        if self.inner.queued_pages.load(Ordering::Relaxed) > 0 {
            // Lock-free: a sender hands it to the scheduler when it next takes a batch.
            let _ = self.inner.fetched.send((addr, tag));
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
        let pages = q.sched.forget(conn);
        self.inner
            .queued_pages
            .store(q.sched.queued_pages(), Ordering::Relaxed);
        pages
    }

    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.work.notify_all();
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
        {
            let mut q = inner.scheduler.lock();
            q.take_fetched();
            let step = q.sched.next_send(monotonic_ns(), &mut jobs);
            inner
                .queued_pages
                .store(q.sched.queued_pages(), Ordering::Relaxed);
            stats
                .prefetch_pages_skipped_fetched
                .store(q.sched.skipped_fetched(), Ordering::Relaxed);
            match step {
                SendStep::Send(_) => {}
                SendStep::Sleep { until_ns } => {
                    let wait = Duration::from_nanos(until_ns.saturating_sub(monotonic_ns()));
                    inner.work.wait_for(&mut q, wait);
                    continue;
                }
                SendStep::Idle => {
                    inner.work.wait_for(&mut q, IDLE_WAIT);
                    continue;
                }
            }
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
        }
    }
}

/// Sends the first `ready` sealed pages of a batch (one destination and stream: the scheduler
/// hands out batches per connection), each `fragments` datagrams, counting pages whose last
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
