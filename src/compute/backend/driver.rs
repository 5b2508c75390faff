//! One backend's page access as a sans-IO driver (ARCHITECTURE §4 step 7, §6): the whole decision
//! of a read — LFC lookup, loss checks and retries, waiting for a prefetch in flight, the TCP
//! pipeline and the move between UDP and TCP — with `now` passed in and the messages to send
//! returned (`poll_transmit`), in the style of quinn-proto. The blocking shell (`backend::Backend`)
//! and the simulator both run this code; neither keeps a copy of it.
//!
//! Owns: the read path core (`ReadPath`), the UDP health state (`UdpHealth`), the GetPage
//! pipeline. Reads and writes the shared LFC (not I/O: memory); opens no socket, reads no clock.
//!
//! A read is driven as: `start_read` → `Poll`; on `Poll::Wait` the caller waits for the tag's
//! arrival in the LFC (at most until the deadline) and calls `on_wait_over`; on
//! `Poll::AwaitResponse` it reads the next TCP response and calls `on_response`; until
//! `Poll::Done`. After every call, the caller sends what `poll_transmit` returns.

use super::health::{
    DaemonView, PrefetchPath, ReadTiming, StateChange, UdpHealth, PROBE_MIN_PAGES, PROBE_PAGES,
};
use super::pipeline::{Check, DepthLimit, InFlight, Pipeline, Queued};
use super::read_path::{
    prefetch_runs, OwnLoss, PrefetchRun, ReadPath, ReadPathConfig, ReadStats, Step, LOSS_SCAN,
    MISS_SCAN, READS_PER_LOSS_CHECK, REORDER_GRACE_NS,
};
use crate::protocol::page::Page;
use lfc::{BufferTag, InstallOutcome, Lfc, RelTag};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;

/// Pages a TCP-pipelining backend requests ahead beyond its pipeline depth, as a share of the
/// depth: a probe page requested by UDP this far ahead of the pipeline's send point has that
/// many pages' read time to arrive before its turn comes (64 pages at depth 128 and 50k
/// pages/s: 1.3 ms, several UDP latencies). Proportional, so that a small cache is not
/// overrun by pages fetched far ahead of their reads.
pub const PROBE_LEAD_SHARE: f64 = 0.5;

/// Reads, in TCP reaches (`Driver::tcp_reach`), during which the pipeline fetches pages ahead
/// even when they are cached, once a read found a page evicted that the pipeline had skipped as
/// cached. A small or busy cache evicts pages before their reads (installing the pages fetched
/// for the reader evicts the next ones: a CLOCK hand moving along a window that was installed
/// in order), and each such page then cost a synchronous GetPage queued behind the pipeline's
/// requests further ahead: in the simulator, scans whose windows had been prefetched by other
/// backends ran at one round trip per page, three to five times as long as TCP pipelining.
/// Fetching a cached page costs the page server a read, not the reader a wait (its copy waits
/// in `ready`), but it takes a place in the pipeline that a page not cached then waits for:
/// at 8 reaches, small pipelines (a depth of 4) spent their places on pages the cache still
/// held, while reads of the pages it did not hold waited behind them. Two reaches cover the
/// window being read when the eviction was seen, and the next one. Skipping resumes after
/// that, so a cache that keeps its pages again is used again; one that still evicts costs one
/// more synchronous GetPage per two reaches.
const CACHE_DISTRUST_REACHES: u32 = 2;

/// How many pages ahead of the one at hand the driver asks the CPU for the LFC lines that page
/// will need (`Lfc::prefetch_install`): the answers on the wire to install, the GetPages to
/// send, the pages of a window to prefetch. Far enough to cover a memory access behind the
/// work of a page (about a microsecond each); each of those lines was a miss per page.
const LFC_PREFETCH_AHEAD: usize = 3;

/// How far ahead a backend on TCP requests: the pipeline depth plus the probe lead.
fn tcp_reach(tcp_depth: u32) -> u32 {
    let lead = (f64::from(tcp_depth) * PROBE_LEAD_SHARE) as u32;
    tcp_depth + lead.max(PROBE_PAGES as u32)
}

/// Where a read was satisfied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSource {
    Hit,
    LateHit,
    Tcp,
}

/// A message for the page server, on the backend's TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmit {
    /// PrefetchTarget with the LFC's key; answered in order like a GetPage.
    Target { udp_port: u16 },
    /// A fire-and-forget Prefetch of a run (no response).
    Prefetch(PrefetchRun),
    /// A GetPage at the latest LSN (pipelined; its response is awaited in order). GetPages
    /// leave in batches (`pipeline::PIPELINED_FLUSH_EVERY`, or when the reader blocks); an
    /// `urgent` one leaves now, with what is buffered before it.
    GetPage {
        tag: BufferTag,
        not_modified_since: u64,
        urgent: bool,
    },
}

/// What the caller does next for the read in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    Done(ReadSource),
    /// Wait for `tag` to arrive in the LFC, at most until `until_ns`, then `on_wait_over`.
    Wait {
        tag: BufferTag,
        until_ns: u64,
    },
    /// Read the next response on the TCP connection, then `on_response`.
    AwaitResponse,
}

/// A response the caller read from the connection.
#[derive(Debug, Clone, Copy)]
pub enum Response<'p> {
    Target,
    /// The server answered a PrefetchTarget as a page server without this project's extension
    /// answers it (Neon's answer to an unknown tag): this backend reads as Neon's compute does,
    /// by pipelined GetPage, for good.
    TargetRefused,
    Page {
        tag: BufferTag,
        page: &'p Page,
    },
}

/// What a response did: the read's next step (`None` when no read is in progress, or the read
/// awaits more), and whether its page went into the LFC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handled {
    pub next: Option<Poll>,
    pub installed: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DriverError {
    #[error("the page server answered {0} which no request in flight asked for")]
    Unrequested(String),
}

/// Reads on a path during which waits for just-requested prefetches do not count as waited...
const FRESH_WAITS_GRACE_READS: u64 = 64;
/// ...unless the path is already this many long waits (half GetPage round trips) old: a
/// window's start costs about one round trip, and when every read takes one (a window of one
/// page), 64 of them were 64 round trips of grace — in the simulator, a backend spent twice
/// TCP pipelining's whole run that way.
const FRESH_WAITS_GRACE_LONG_WAITS: u64 = 8;

/// How soon a blocked read first looks for losses among its own prefetches
/// (`Driver::next_look`, `Driver::await_look_ns`): half the least reorder grace. The page a
/// reader waits for is taken as lost as soon as a look sees it overtaken, so the step bounds
/// how late a loss at the reader is found. Each look is a wake-up and up to `MISS_SCAN` LFC
/// probes, so the step doubles from look to look up to `MAX_LOOK_STEP_NS`: a wait for a
/// sender that is merely behind (64 backends on one CPU, each waiting) looks a few times, not
/// forty times a millisecond.
const LOOK_STEP_NS: u64 = REORDER_GRACE_NS / 2;
const MAX_LOOK_STEP_NS: u64 = 8 * LOOK_STEP_NS;

/// Why a read gave up on a prefetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Miss {
    /// Never seen lost: nothing arrived for it (a dead or stalled path).
    Unexplained,
    /// Lost and requested again, and still not there: a loss, weighed by the loss share.
    AfterLoss,
    /// Arrived, and evicted before its read (`ReadPath::on_own_gone`): UDP delivered, but the
    /// window outran the cache, and the read pays a round trip as if nothing had come. A
    /// miss, like one that never came: in the simulator, a 27-page cache shared by four
    /// backends evicted nearly every prefetch, and a shard that kept UDP read one page per
    /// round trip (TCP pipelining keeps its pages for their reads, out of the cache's reach).
    Evicted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `own`: whether the read is of an own prefetch, and what was known of its loss.
    Waiting {
        until_ns: u64,
        own: Option<OwnLoss>,
    },
    Awaiting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Current {
    tag: BufferTag,
    phase: Phase,
}

/// A pipelined page whose response was read before its own read came (the reader needed a
/// later response first): kept here as Neon's prefetch ring keeps it, so that its read does
/// not depend on the LFC still holding it. A small or busy cache evicts such pages, and every
/// read that then fetched its page again drained the pipeline ahead of it, pushing out the
/// next pages in turn.
struct Ready {
    tag: BufferTag,
    not_modified_since: u64,
    page: Box<Page>,
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ready({})", self.tag)
    }
}

#[derive(Debug)]
pub struct Driver {
    core: ReadPath,
    health: UdpHealth,
    pipeline: Pipeline,
    transmits: VecDeque<Transmit>,
    tcp_depth: u32,
    port_override: Option<u16>,
    /// The UDP port registered on the connection (or about to be).
    target_port: Option<u16>,
    daemon_addr: Option<SocketAddr>,
    daemon_generation: u64,
    daemon_view: DaemonView,
    /// The LFC's count of datagrams installed when the backend started: any above it says the
    /// daemon delivers (`UdpHealth::on_miss`).
    datagrams_at_start: u64,
    reads_since_loss_check: u32,
    current: Option<Current>,
    /// When the read in progress sent its own GetPage (0: it did not).
    fetch_sent_ns: u64,
    /// When the backend's previous read finished (this driver's, or another shard's:
    /// `read_ended_elsewhere`).
    last_done_ns: Option<u64>,
    /// The shell's time for this backend outside its reads' dated steps since the last read
    /// (`io_outside_reads`, `read_returned`): added to the next read's own time.
    io_carry_ns: u64,
    /// When the read in progress began waiting for a prefetch that was not fresh (see
    /// `own_is_fresh`), and whether the wait was long (`ReadPath::long_wait_ns`).
    wait_started_ns: Option<u64>,
    read_waited: bool,
    /// The read's wait for a prefetch ran out (a TCP answer that finds the page arrived says
    /// the budget was short; after a fetch that did not wait it says nothing of the budget).
    read_gave_up: bool,
    /// The read in progress counted a miss of the path (`Miss::Unexplained`).
    read_missed: bool,
    /// When the current read started, and whether UDP failed it (a wait that ran out, or an
    /// own prefetch lost past retries): its whole time then counts as lost to UDP.
    read_started_ns: u64,
    read_udp_failed: bool,
    /// The current read fetched, on UDP, a page no prefetch covers (`ReadTiming::foreground`).
    read_foreground: bool,
    read_fresh: bool,
    /// The relation of the latest prefetch and the end of what was requested of it (the
    /// furthest block, while prefetches stay on that relation): the window a scan reads
    /// behind. A page of it that nobody requested and the LFC lacks was cached when the window
    /// came to it and evicted since; a page outside it is a foreground read.
    window: Option<(RelTag, u32)>,
    scratch: Vec<BufferTag>,
    pairs: Vec<(BufferTag, u64)>,
    runs: Vec<PrefetchRun>,
    /// Pipelined pages read off the connection before their reads, oldest first, at most
    /// twice the pipeline's reach (every page requested ahead, while the previous ones wait
    /// for their reads; at twice the depth only, a pipeline of two with its probe lead of
    /// eight dropped pages it had fetched before their reads came); and the buffers of
    /// entries gone, for reuse (no allocation per page).
    ready: VecDeque<Ready>,
    spare: Vec<Box<Page>>,
    /// Pages of the window the pipeline did not fetch because they were cached when their turn
    /// came, oldest first, at most twice `tcp_depth`. When a read then finds one evicted, the
    /// ones after it are likely gone too: they are fetched together, not one round trip each.
    skipped: VecDeque<BufferTag>,
    /// Reads left during which `pump` does not skip cached pages (`CACHE_DISTRUST_REACHES`).
    cache_distrust_reads: u32,
    /// False for a backend that never uses UDP (`Driver::tcp_only`): Neon's compute with its
    /// LFC, the baseline UDP prefetch has to beat.
    udp_allowed: bool,
    /// The backend receives its own prefetches (`Driver::receiving_itself`): no daemon's
    /// liveness says anything of its UDP path.
    own_receiver: bool,
    /// A repair was judged since the last `pump` (its loss sample taken): `pump` checks the
    /// loss share then.
    repair_judged: bool,
    /// While the read in progress awaits a GetPage answer: when to look for losses among the
    /// own prefetches if no answer came by then (`on_await_look`).
    await_look_ns: Option<u64>,
    /// The blocked read's next look step (`LOOK_STEP_NS`, doubling).
    look_step_ns: u64,
}

impl Driver {
    /// A backend that never prefetches by UDP: TCP pipelining with the LFC looked up before
    /// every read and every page received stored in it, as Neon's compute does. It ignores any
    /// daemon and sends no extension message.
    pub fn tcp_only(config: ReadPathConfig, now_ns: u64) -> Self {
        // Neon's pipeline: a fixed depth.
        let config = ReadPathConfig {
            tcp_depth_adaptive: false,
            ..config
        };
        let mut d = Self::build(config, None, now_ns);
        d.udp_allowed = false;
        d.health
            .note_start("UDP prefetch off: TCP pipelining with the LFC, as Neon's compute");
        d
    }

    /// Another shard's driver of the same backend finished a read at `now_ns`
    /// (`ShardedDriver`): this driver's next read is timed from there. A read's cycle is then
    /// the backend's time since its previous read, whichever shard served that one, and holds
    /// no other shard's reads: a shard's pace stays its own when another shard waits out lost
    /// datagrams, so comparing its paces on UDP and TCP (a calibration) stays fair.
    pub fn read_ended_elsewhere(&mut self, now_ns: u64) {
        self.last_done_ns = Some(now_ns);
    }

    /// The shell spent `ns` on this backend's behalf outside the time its reads' steps measure
    /// (each step is dated when it is called): from a read's last step to the read's return
    /// (that step's own work, such as a hit's copy or a response's install, and the messages
    /// it left to send), and around a `prefetch`. Counted in the next read's own time
    /// (`ReadTiming::io_ns`), which the paths' paces compare. On TCP pipelining a read is done
    /// when its answer is in, and the GetPage that refills the pipeline leaves after it (a
    /// write every `PIPELINED_FLUSH_EVERY` pages); left out, TCP's pace on loopback was
    /// 1.7–2.7 µs a read where the reader's own clock saw 3.2–5.4, and a calibration at a
    /// scan's start took a UDP path that ran at 1.3–1.5× TCP pipelining to TCP ("2.8 µs each
    /// on UDP, 2.2 µs on TCP pipelining").
    pub fn io_outside_reads(&mut self, ns: u64) {
        self.io_carry_ns = self.io_carry_ns.saturating_add(ns);
    }

    /// The shell returned the read whose last step was dated `last_done_ns` at `now_ns`: the
    /// time between is `io_outside_reads`.
    pub fn read_returned(&mut self, now_ns: u64) {
        if let Some(done_ns) = self.last_done_ns {
            self.io_outside_reads(now_ns.saturating_sub(done_ns));
        }
    }

    /// A backend over `lfc`. `port_override` is the operator's `--prefetch-port`; without it
    /// the daemon's port comes from the LFC header. Starts on UDP when a daemon is alive (or a
    /// port was given), else on TCP pipelining, probing UDP as daemons come and go.
    pub fn new(config: ReadPathConfig, port_override: Option<u16>, lfc: &Lfc, now_ns: u64) -> Self {
        let mut d = Self::build(config, port_override, now_ns);
        d.datagrams_at_start = lfc.datagrams_installed();
        if let Some(port) = port_override {
            d.register(port);
        }
        d.observe_daemon(lfc, now_ns);
        match (d.daemon_view, d.daemon_addr, port_override) {
            (_, _, Some(port)) => d
                .health
                .start_udp(now_ns, &format!("prefetch port {port} given")),
            (DaemonView::Alive, Some(addr), None) => d
                .health
                .start_udp(now_ns, &format!("worker daemon at {addr}")),
            _ => d.health.note_start(if d.daemon_view == DaemonView::Absent {
                "no worker daemon serves this LFC"
            } else {
                "the worker daemon of this LFC is not alive"
            }),
        }
        d
    }

    fn build(config: ReadPathConfig, port_override: Option<u16>, now_ns: u64) -> Self {
        let tcp_depth = config
            .tcp_depth
            .clamp(1, crate::protocol::client::MAX_IN_FLIGHT as u32 / 2);
        Driver {
            core: ReadPath::new(config),
            health: UdpHealth::new(now_ns, port_override.is_some()),
            pipeline: Pipeline::new(if config.tcp_depth_adaptive {
                DepthLimit::adaptive(tcp_depth as usize)
            } else {
                DepthLimit::fixed(tcp_depth as usize)
            }),
            transmits: VecDeque::new(),
            tcp_depth,
            port_override,
            target_port: None,
            daemon_addr: None,
            daemon_generation: 0,
            daemon_view: DaemonView::Absent,
            datagrams_at_start: 0,
            reads_since_loss_check: 0,
            current: None,
            fetch_sent_ns: 0,
            last_done_ns: None,
            io_carry_ns: 0,
            wait_started_ns: None,
            read_waited: false,
            read_gave_up: false,
            read_missed: false,
            read_started_ns: 0,
            read_udp_failed: false,
            read_foreground: false,
            read_fresh: false,
            window: None,
            scratch: Vec::with_capacity(LOSS_SCAN),
            pairs: Vec::with_capacity(LOSS_SCAN),
            runs: Vec::with_capacity(LOSS_SCAN),
            ready: VecDeque::with_capacity(2 * tcp_reach(tcp_depth) as usize),
            spare: Vec::new(),
            skipped: VecDeque::with_capacity(2 * tcp_reach(tcp_depth) as usize),
            cache_distrust_reads: 0,
            udp_allowed: true,
            repair_judged: false,
            await_look_ns: None,
            look_step_ns: LOOK_STEP_NS,
            own_receiver: false,
        }
    }

    /// A backend that receives its own prefetches on UDP port `port` (the shell's socket,
    /// `own_receive`), not through the worker daemon: starts on UDP, and only its own
    /// arrivals, losses and times move it (the daemon's heartbeat is never consulted, so a
    /// daemon dead, paused or absent costs it nothing).
    pub fn receiving_itself(config: ReadPathConfig, port: u16, lfc: &Lfc, now_ns: u64) -> Self {
        let mut d = Self::build(config, Some(port), now_ns);
        d.own_receiver = true;
        d.datagrams_at_start = lfc.datagrams_installed();
        d.register(port);
        d.health.start_udp(
            now_ns,
            &format!("the backend receives its prefetches itself, on port {port}"),
        );
        d
    }

    /// Whether UDP may bring pages this driver is waiting for or judging now (on UDP, or a
    /// probe of it running): a backend that receives its own prefetches drains its socket
    /// before such a read or turn, and not otherwise (an empty receive per TCP read is
    /// pure cost).
    pub fn awaits_udp(&self) -> bool {
        self.udp_allowed && (self.health.path() == PrefetchPath::Udp || self.health.probing())
    }

    /// Whether `tag` is an own UDP prefetch this driver still expects (`awaits_udp`, and
    /// tracked as outstanding): a backend that receives itself drains its socket before such a
    /// read, not before a foreground read, whose GetPage goes first (the socket is drained
    /// while it is in flight, `Backend::receive_from`).
    pub fn expects_by_udp(&self, tag: &BufferTag) -> bool {
        self.awaits_udp() && self.core.own_loss(tag).is_some()
    }

    fn register(&mut self, port: u16) {
        if self.target_port != Some(port) {
            self.target_port = Some(port);
            self.pipeline.sent(InFlight::Target);
            self.transmits
                .push_back(Transmit::Target { udp_port: port });
        }
    }

    /// The next message to send, until `None`.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn path(&self) -> PrefetchPath {
        self.health.path()
    }

    /// Another shard of this backend left UDP (`UdpHealth::on_sibling_left_udp`).
    pub fn on_sibling_left_udp(&mut self) {
        self.health.on_sibling_left_udp();
    }

    /// Another shard of this backend left UDP, and a read ended: if this shard's oldest own
    /// prefetch is overdue beyond doubt (`ReadPath::oldest_own_overdue`, judged by `rtt_ns`,
    /// the longest GetPage round trip the backend's shards measured), the miss its read would
    /// be moves the window to TCP now (`UdpHealth::on_sibling_overdue`). In the simulator a
    /// backend whose daemon delivered nothing left one shard after a wait, then paid a TCP
    /// round trip at each other shard's first read of a window requested long before (`heavy`
    /// seed 522). Not for a backend that receives itself: its arrivals wait in its socket until
    /// it drains it, so a page missing from the cache may well have come.
    pub fn sibling_overdue(&mut self, lfc: &Lfc, rtt_ns: u64, now_ns: u64) {
        if !self.own_receiver
            && self.health.sibling_left()
            && self
                .core
                .oldest_own_overdue(|t| lfc.contains(t), rtt_ns, now_ns)
        {
            self.health.on_sibling_overdue(now_ns);
            self.move_window_to_tcp(lfc, now_ns);
        }
    }

    /// The smoothed GetPage round trip this shard measured (0 before one).
    pub fn tcp_rtt_ns(&self) -> u64 {
        self.core.tcp_rtt_ns()
    }

    /// Mean own time per read in `path`'s last measured window (`UdpHealth::pace_ns`).
    pub fn pace_ns(&self, path: PrefetchPath) -> Option<f64> {
        self.health.pace_ns(path)
    }

    /// Moves between UDP and TCP so far: a scan that sees it change restarts its window
    /// (`ScanWindow::restart_at`).
    pub fn path_changes(&self) -> u64 {
        self.health.changes()
    }

    /// The daemon's address as the LFC header gave it (None when not registered).
    pub fn daemon_addr(&self) -> Option<SocketAddr> {
        self.daemon_addr
    }

    pub fn state_log(&self) -> &[StateChange] {
        self.health.log()
    }

    pub fn stats(&self) -> ReadStats {
        let mut s = self.core.stats();
        s.udp_state_changes = self.health.changes();
        s.tcp_depth_cuts = self.pipeline.depth_cuts();
        s
    }

    /// Ends a scan: prefetches never read are wasted.
    pub fn finish(&mut self) -> ReadStats {
        self.core.finish();
        self.stats()
    }

    /// Requests in flight or queued on the TCP pipeline: a caller that must make a synchronous
    /// call (PutPage) first drives `on_response` until this is false.
    pub fn pipeline_busy(&self) -> bool {
        !self.pipeline.is_idle()
    }

    /// Reads the daemon's liveness from the LFC header (two atomic loads; the record itself only
    /// when a new daemon registered) and lets the health state react.
    fn observe_daemon(&mut self, lfc: &Lfc, now_ns: u64) {
        if !self.udp_allowed || self.own_receiver {
            return;
        }
        let heartbeat = lfc.daemon_heartbeat_ns();
        self.daemon_view = if heartbeat == 0 {
            DaemonView::Absent
        } else {
            let age_ns = now_ns.saturating_sub(heartbeat);
            if age_ns >= lfc::DAEMON_STALE_NS {
                DaemonView::Stale { age_ns }
            } else {
                DaemonView::Alive
            }
        };
        let generation = lfc.daemon_generation();
        let restarted =
            generation != self.daemon_generation && self.daemon_view == DaemonView::Alive;
        if restarted {
            self.daemon_generation = generation;
            if let Some(rec) = lfc.daemon() {
                self.daemon_addr = Some(rec.addr);
                if self.port_override.is_none() {
                    self.register(rec.addr.port());
                }
            }
        }
        if self.health.on_daemon(self.daemon_view, restarted, now_ns) {
            self.move_window_to_tcp(lfc, now_ns);
        }
    }

    /// How many pages ahead to prefetch when the caller wants `wanted`: the UDP window (see
    /// `ReadPath::prefetch_distance`), or on TCP the pipeline depth plus the probe lead.
    pub fn prefetch_distance(&mut self, wanted: u32) -> u32 {
        match self.health.path() {
            PrefetchPath::Udp => {
                let d = self.core.prefetch_distance(wanted);
                self.health
                    .set_transient_reads(u64::from(d) + u64::from(self.tcp_reach()));
                d
            }
            PrefetchPath::TcpPipelined => self.tcp_reach(),
        }
    }

    fn tcp_reach(&self) -> u32 {
        tcp_reach(self.tcp_depth)
    }

    /// Requests `blocks` of `rel` ahead of their reads: by UDP (every block neither cached nor
    /// requested by anyone, in runs), or on TCP by queueing GetPages, a few of them sent by UDP
    /// instead when a probe is due. Returns pages requested.
    pub fn prefetch(&mut self, lfc: &Lfc, rel: RelTag, blocks: Range<u32>, now_ns: u64) -> u32 {
        self.observe_daemon(lfc, now_ns);
        self.window = Some(match self.window {
            Some((r, end)) if r == rel => (rel, end.max(blocks.end)),
            _ => (rel, blocks.end),
        });
        let requested = match self.health.path() {
            PrefetchPath::Udp => self.prefetch_udp(lfc, rel, blocks, now_ns),
            PrefetchPath::TcpPipelined => self.prefetch_tcp(lfc, rel, blocks, now_ns),
        };
        self.pump(lfc, now_ns);
        requested
    }

    fn prefetch_udp(&mut self, lfc: &Lfc, rel: RelTag, blocks: Range<u32>, now_ns: u64) -> u32 {
        self.pairs.clear();
        // Each page's probe and mark miss on lines of large tables: asked for a few pages on.
        let ahead = LFC_PREFETCH_AHEAD as u32;
        for blkno in blocks.start..blocks.end.min(blocks.start.saturating_add(ahead)) {
            lfc.prefetch_install(&rel.block(blkno));
        }
        for blkno in blocks.clone() {
            if let Some(next) = blkno.checked_add(ahead).filter(|b| blocks.contains(b)) {
                lfc.prefetch_install(&rel.block(next));
            }
            let tag = rel.block(blkno);
            if self.pipeline.contains(&tag) {
                continue;
            }
            let lwlsn = lfc.lwlsn_unless_cached(&tag);
            let cached = lwlsn.is_none();
            let already = !cached && lfc.mark_requested(&tag, now_ns);
            if self.core.plan_prefetch(tag, cached, already, now_ns) {
                self.pairs
                    .push((tag, lwlsn.expect("only pages not cached are planned")));
            }
        }
        let n = self.pairs.len() as u32;
        self.send_runs();
        n
    }

    fn prefetch_tcp(&mut self, lfc: &Lfc, rel: RelTag, blocks: Range<u32>, now_ns: u64) -> u32 {
        // The last pages of the range probe UDP (at most half of them, so most of a long
        // range still goes by TCP, and at least `PROBE_MIN_PAGES`: a shorter range does not
        // probe).
        let probe_pages = (blocks.len() / 2).clamp(PROBE_MIN_PAGES, PROBE_PAGES);
        let probe = blocks.len() >= PROBE_MIN_PAGES
            && self.target_port.is_some()
            && self.health.probe_due(self.daemon_view, probe_pages, now_ns);
        let probe_from = blocks.end.saturating_sub(probe_pages as u32);
        self.pairs.clear();
        let mut requested = 0;
        for blkno in blocks {
            let tag = rel.block(blkno);
            if self.pipeline.contains(&tag) {
                continue;
            }
            let mut is_probe = probe && blkno >= probe_from;
            // A cached page is queued too: whether to fetch it is decided when its turn comes
            // (`pump`), closer to its read, and remembered if not (`skipped`).
            let mut lwlsn = 0;
            if is_probe {
                match lfc.lwlsn_unless_cached(&tag) {
                    Some(l) => lwlsn = l,
                    None => {
                        // Cached already: says nothing about UDP, and is queued as any other
                        // page (a cache that evicts it before its read is seen so).
                        self.health.skip_probe_page(now_ns);
                        is_probe = false;
                    }
                }
            }
            if self.pipeline.push_back(Queued {
                tag,
                check: if is_probe { Check::Probe } else { Check::None },
                ahead: true,
            }) {
                requested += 1;
                if is_probe {
                    self.pairs.push((tag, lwlsn));
                }
            } else if is_probe {
                self.health.skip_probe_page(now_ns);
            }
        }
        self.send_runs();
        requested
    }

    /// Prefetch messages for `self.pairs`, in as few runs as they allow.
    fn send_runs(&mut self) {
        self.runs.clear();
        prefetch_runs(&mut self.pairs, &mut self.runs);
        for r in &self.runs {
            self.transmits.push_back(Transmit::Prefetch(*r));
        }
    }

    /// Sends queued GetPages while the pipeline has room. A probe page that arrived by UDP is
    /// not sent (and counts for the probe); any page found cached meanwhile is not sent, unless
    /// the cache was seen evicting such pages before their reads (`cache_distrust_reads`).
    fn pump(&mut self, lfc: &Lfc, now_ns: u64) {
        while let Some(q) = self.pipeline.next_to_send() {
            if let Some(next) = self.pipeline.queued_page(LFC_PREFETCH_AHEAD) {
                lfc.prefetch_install(next);
            }
            // One probe answers both "cached?" and the lwlsn the GetPage must carry.
            let lwlsn = lfc.lwlsn_unless_cached(&q.tag);
            let cached = lwlsn.is_none();
            // Not cached yet, a race or repair page is judged by its answer, and so is a probe
            // page whose turn came too soon to judge it (`UdpHealth::turn_judges_probe`).
            let judge_at_answer = !cached
                && match q.check {
                    Check::Probe => !self
                        .health
                        .turn_judges_probe(self.core.tcp_rtt_ns(), now_ns),
                    Check::Race | Check::Repair => true,
                    Check::None => false,
                };
            match q.check {
                Check::Probe | Check::Race if cached => self.health.on_probe_page(true, now_ns),
                Check::Probe if !judge_at_answer => self.health.on_probe_page(false, now_ns),
                Check::Repair if cached => self.judge_repair(false),
                Check::Probe | Check::Race | Check::Repair | Check::None => {}
            }
            if cached && q.ahead && self.cache_distrust_reads == 0 {
                self.pipeline.skip(&q.tag);
                if q.check != Check::Probe {
                    // Twice the reach: every page of a window skipped is remembered.
                    if self.skipped.len() >= 2 * self.tcp_reach() as usize {
                        self.skipped.pop_front();
                    }
                    self.skipped.push_back(q.tag);
                }
                continue;
            }
            let not_modified_since = lwlsn.unwrap_or_else(|| lfc.lwlsn(&q.tag));
            self.pipeline.sent(InFlight::Page {
                tag: q.tag,
                not_modified_since,
                ahead: q.ahead,
                judge: if judge_at_answer {
                    q.check
                } else {
                    Check::None
                },
                sent_ns: now_ns,
            });
            self.transmits.push_back(Transmit::GetPage {
                tag: q.tag,
                not_modified_since,
                // A repair is a loss found on a window the reader reads without blocking:
                // batched, it waited for the next Prefetch message or for its own read to
                // flush it, and at 5 % datagram loss reads blocked a round trip each on repairs
                // found hundreds of microseconds earlier.
                urgent: q.check == Check::Repair,
            });
        }
        if std::mem::take(&mut self.repair_judged) && self.health.check_loss(now_ns) {
            self.move_window_to_tcp(lfc, now_ns);
        }
    }

    /// A page taken as lost and fetched by TCP (`Check::Repair`) is judged: `lost` unless UDP
    /// brought it first. The loss sample is taken now, not when the loss check queued it: on a
    /// one-CPU compute a daemon's two threads deliver a shard's pages out of order by more than
    /// the reorder grace, and taken as lost at once such pages made healthy shards of `bench
    /// shards` leave UDP ("32 % of prefetches lost" on loopback with nothing dropped).
    fn judge_repair(&mut self, lost: bool) {
        self.health.on_arrival(lost);
        self.repair_judged = true;
    }

    /// The UDP path is not delivering: this backend's own prefetches still outstanding go to
    /// the TCP pipeline, in request order, as far as the pipeline reaches (`tcp_reach`); the
    /// caller requests the rest again as its reader comes near them (a scan restarts its window
    /// on a path change). Beyond the reach, pages fetched ahead outran what `ready` keeps while
    /// the reader caught up, and came back one synchronous GetPage each. Pages already cached
    /// are queued too: `pump` skips them, remembered in `skipped`, so that one evicted before
    /// its read is seen so (in the simulator a window moved with its cached pages left out
    /// cost a synchronous GetPage for each of them).
    ///
    /// After a first miss, the window's first pages race UDP (`UdpHealth::start_race`).
    fn move_window_to_tcp(&mut self, lfc: &Lfc, now_ns: u64) {
        self.scratch.clear();
        self.core.take_outstanding(|_| false, &mut self.scratch);
        let n = self.scratch.len().min(self.tcp_reach() as usize);
        let racing = self.health.start_race(n.min(PROBE_PAGES));
        for i in 0..n {
            let tag = self.scratch[i];
            let race = racing && i < PROBE_PAGES;
            let queued = self.pipeline.push_back(Queued {
                tag,
                check: if race { Check::Race } else { Check::None },
                ahead: true,
            });
            if race && !queued {
                self.health.skip_probe_page(now_ns);
            }
        }
        self.pump(lfc, now_ns);
    }

    /// The page server does not speak the extension (a refused PrefetchTarget, or another
    /// extension request refused while no target was in flight): TCP pipelining for good, as
    /// `tcp_only` (no probe, no PrefetchTarget or Prefetch ever again); the prefetches of the
    /// window that were never sent go to the pipeline.
    pub fn without_extension(&mut self, lfc: &Lfc, now_ns: u64) {
        if !self.udp_allowed {
            return;
        }
        self.udp_allowed = false;
        self.target_port = None;
        self.health.without_udp(
            now_ns,
            "the page server does not support UDP prefetch: TCP pipelining, as Neon's compute",
        );
        self.move_window_to_tcp(lfc, now_ns);
    }

    /// Requests again own prefetches most likely lost (`ReadPath::plan_retries`, probing at
    /// most `max_probes`).
    fn loss_check(&mut self, lfc: &Lfc, now_ns: u64, max_probes: usize) {
        self.reads_since_loss_check = 0;
        self.scratch.clear();
        self.core
            .plan_retries(now_ns, max_probes, |t| lfc.contains(t), &mut self.scratch);
        if self.scratch.is_empty() {
            return;
        }
        // A lost page is fetched ahead by the TCP pipeline, as Neon's compute fetches every
        // page: it is then in `ready` or on its way when its read comes, and cannot be lost
        // again. Requested again by UDP, each loss found too late cost its read a wait and a
        // synchronous GetPage (in the simulator, links losing 14-43 % made a scan take twice
        // as long as TCP pipelining). Only when the pipeline's queue is full does a retry go
        // by UDP.
        self.pairs.clear();
        for i in 0..self.scratch.len() {
            let tag = self.scratch[i];
            if !self.queue_repair(tag) {
                self.pairs.push((tag, lfc.lwlsn(&tag)));
            }
        }
        self.send_runs();
        // The repairs' loss samples are taken as they are judged (`judge_repair`, `pump`).
        self.pump(lfc, now_ns);
    }

    /// Queues own prefetch `tag` in the TCP pipeline as a repair (judged lost or not when its
    /// turn comes: `judge_repair`), no longer tracked as in flight; false when the pipeline's
    /// queue is full.
    fn queue_repair(&mut self, tag: BufferTag) -> bool {
        let queued = self.pipeline.push_back(Queued {
            tag,
            check: Check::Repair,
            ahead: true,
        });
        if queued {
            self.core.repair_by_tcp(&tag);
        }
        queued
    }

    /// If the read gave up on an overdue own prefetch and stays on UDP: the pages requested
    /// with it that are still missing (`ReadPath::overdue_run`) go to the TCP pipeline behind
    /// its GetPage, counted as retries, as the loss check's repairs do; those the pipeline's
    /// queue has no room for stay in flight. (A read that moves the window to TCP moves them
    /// with the rest, some racing UDP.)
    fn repair_overdue_run(&mut self, lfc: &Lfc) {
        self.scratch.clear();
        self.core
            .overdue_run(|t| lfc.contains(t), &mut self.scratch);
        for i in 0..self.scratch.len() {
            if !self.queue_repair(self.scratch[i]) {
                break;
            }
            self.core.stats_mut().retries += 1;
        }
        // Sent by the caller's fetch, behind the read's own GetPage (which goes first).
    }

    /// Starts reading `tag` into `out`.
    pub fn start_read(&mut self, lfc: &Lfc, tag: BufferTag, out: &mut Page, now_ns: u64) -> Poll {
        assert!(self.current.is_none(), "one read at a time");
        self.begin_read(lfc, now_ns);
        let own = self.core.own_loss(&tag);
        self.read_fresh = false;
        if self.health.path() == PrefetchPath::TcpPipelined
            && self.cache_distrust_reads == 0
            && self.pipeline.next_answer_is(&tag)
        {
            // On TCP, a read whose GetPage is the next answer on the wire takes that answer
            // (stored in the LFC as it comes) without looking in the LFC first: the lookup
            // nearly always missed (the page comes in the answer being awaited), and skipping
            // it took a `tcp-lfc` scan's backend CPU from 5.0–5.4 to 4.1–4.7 µs per page. Not
            // while `pump` sends cached pages too: then the LFC may have it now.
            self.core.stats_mut().reads += 1;
            return self.await_response(lfc, tag, now_ns);
        }
        // A page read ahead on TCP is both in the LFC and in `ready`; the copy in `ready` is the
        // one in the CPU's cache (the install streamed the LFC's copy past it), so it goes first.
        if !self.ready.is_empty() && self.take_ready(lfc, &tag, out) {
            self.core.stats_mut().reads += 1;
            return self.done(lfc, ReadSource::Tcp, now_ns);
        }
        let mut hit = lfc.lookup(&tag, out).is_some();
        if !hit {
            // Only a miss needs it (a lookup in the own table; hits are most reads), and
            // before the loss check, which may request the page again.
            self.read_fresh = self.core.own_is_fresh(&tag, now_ns);
        }
        if !hit && self.reads_since_loss_check > 0 && !self.pipeline.contains(&tag) {
            // A miss: check for losses now, so that a lost page is known as lost (and fetched
            // by the pipeline, as the others found lost) before deciding how long to wait.
            self.loss_check(lfc, now_ns, MISS_SCAN);
            hit = lfc.contains(&tag) && lfc.lookup_again(&tag, out).is_some();
        }
        if !hit && self.pipeline.contains(&tag) {
            // Its GetPage is queued or in flight: the response brings it.
            self.core.stats_mut().reads += 1;
            self.read_next(tag, now_ns);
            return self.await_response(lfc, tag, now_ns);
        }
        // Marking on a miss both asks "is it in flight?" and, when nobody asked, tells other
        // backends that this one is fetching it, so they wait instead of fetching it twice. On
        // TCP nobody's UDP prefetch is worth a wait.
        let marked = !hit && lfc.mark_requested(&tag, now_ns);
        if !hit && !marked && own.is_some() && !self.read_fresh {
            // An own prefetch, missing, and its request mark is gone: it arrived and was
            // evicted (a small or busy cache), not lost. Waiting is waiting for nothing: in the
            // simulator, backends waited a whole budget for each such page. Not for one
            // requested within a wait budget: a mark can also go when its line of the
            // requested table overflows (many pages requested at once), and such a page is
            // most likely still on its way.
            self.core.on_own_gone(&tag, now_ns);
            return self.fetch(lfc, tag, Some(Miss::Evicted), now_ns);
        }
        let requested_elsewhere = marked && self.health.path() == PrefetchPath::Udp;
        match self.core.on_lookup(tag, hit, requested_elsewhere, now_ns) {
            None => {
                if let Some(loss) = own {
                    self.own_arrived(lfc, loss.retried, now_ns);
                }
                self.done(lfc, ReadSource::Hit, now_ns)
            }
            Some(Step::Wait(budget)) => self.wait_for_prefetch(tag, budget, own, now_ns),
            // The core sends an own prefetch to TCP at once only when it was lost (overtaken,
            // retries spent or overdue): a loss, not a dead path.
            Some(Step::Fetch) => self.fetch_planned(lfc, tag, own, now_ns),
            // As if it had waited out its budget, without the wait.
            Some(Step::FetchTooSlow) => self.fetch(lfc, tag, Some(Miss::Unexplained), now_ns),
        }
    }

    /// A read starts: its state is reset, the daemon observed, and the own prefetches checked
    /// for losses every `READS_PER_LOSS_CHECK` reads.
    fn begin_read(&mut self, lfc: &Lfc, now_ns: u64) {
        // Counted before any shortcut: a background prewarm yields to reads on every path.
        lfc.note_read();
        self.fetch_sent_ns = 0;
        self.read_waited = false;
        self.read_gave_up = false;
        self.read_missed = false;
        self.read_started_ns = now_ns;
        self.read_udp_failed = false;
        self.read_foreground = false;
        self.wait_started_ns = None;
        self.observe_daemon(lfc, now_ns);
        self.reads_since_loss_check += 1;
        if self.reads_since_loss_check >= READS_PER_LOSS_CHECK {
            self.loss_check(lfc, now_ns, LOSS_SCAN);
        }
    }

    /// The core said to wait up to `budget` for `tag`'s prefetch (own or another backend's).
    fn wait_for_prefetch(
        &mut self,
        tag: BufferTag,
        budget: std::time::Duration,
        own: Option<OwnLoss>,
        now_ns: u64,
    ) -> Poll {
        // A wait for a prefetch requested just now is the start of a window, not a
        // failing path: not counted while the path is young. Later, a backend whose
        // reads keep waiting for prefetches it has just sent (one page ahead, or random
        // reads) is using UDP as a slower synchronous fetch, and those waits count.
        let young = self.health.reads_on_path() < FRESH_WAITS_GRACE_READS
            && self.health.time_on_path_ns(now_ns)
                < FRESH_WAITS_GRACE_LONG_WAITS * self.core.long_wait_ns();
        if !self.read_fresh || !young {
            self.wait_started_ns = Some(now_ns);
        }
        let until_ns = now_ns + budget.as_nanos() as u64;
        self.current = Some(Current {
            tag,
            phase: Phase::Waiting { until_ns, own },
        });
        self.look_step_ns = LOOK_STEP_NS;
        Poll::Wait {
            tag,
            until_ns: self.next_look(own.is_some(), now_ns, until_ns),
        }
    }

    /// When a wait for `tag` that ends at `until_ns` is next looked at: for an own prefetch,
    /// after the look step (`on_wait_over` then checks for its loss), else at its end.
    fn next_look(&mut self, own: bool, now_ns: u64, until_ns: u64) -> u64 {
        if own {
            until_ns.min(now_ns + self.take_look_step())
        } else {
            until_ns
        }
    }

    /// The current look step, doubling the next (`MAX_LOOK_STEP_NS`).
    fn take_look_step(&mut self) -> u64 {
        let step = self.look_step_ns;
        self.look_step_ns = (2 * step).min(MAX_LOOK_STEP_NS);
        step
    }

    /// The core said to fetch `tag` by GetPage now: a lost own prefetch, or a page nobody
    /// requested.
    fn fetch_planned(
        &mut self,
        lfc: &Lfc,
        tag: BufferTag,
        own: Option<OwnLoss>,
        now_ns: u64,
    ) -> Poll {
        let miss = own.map(|_| Miss::AfterLoss);
        // On UDP, a page neither prefetched by this backend nor requested by another:
        // nobody asked (random reads), or it was cached when the window came to it and
        // has been evicted since. Its read is one synchronous GetPage, which TCP
        // pipelining's read-ahead would have avoided: counted as a read UDP failed
        // (`LOST_SHARE_TO_DEGRADE`), not as a miss. Since installs clear request marks,
        // such pages no longer look requested elsewhere (whose waits did count), and in
        // the simulator (`none` seed 2851, a 30-page cache) a scan stayed on UDP reading
        // one GetPage at a time. A page outside the window (another relation, or
        // ahead of what was requested) is a foreground read: a GetPage on TCP
        // pipelining too, behind the pipeline's responses, so no evidence against UDP
        // and no blocked time TCP could save (`ReadTiming::foreground`). In `bench
        // hol`, a scanning backend's foreground GetPages counted as failed reads and
        // as blocked time, and took it to TCP.
        if own.is_none() && self.health.path() == PrefetchPath::Udp {
            let in_window = self.in_window(&tag);
            self.read_udp_failed |= in_window;
            self.read_foreground = !in_window;
        }
        self.fetch(lfc, tag, miss, now_ns)
    }

    /// The wait of `Poll::Wait` is over: the tag arrived, the deadline passed, or a wake-up for
    /// another page (then the wait goes on).
    pub fn on_wait_over(&mut self, lfc: &Lfc, out: &mut Page, now_ns: u64) -> Poll {
        let Some(Current {
            tag,
            phase: Phase::Waiting { until_ns, own },
        }) = self.current
        else {
            panic!("on_wait_over without a wait");
        };
        // The read counted its miss when it began; each look counts nothing more, and an
        // arrival counts as a hit (`lookup`). A wait now looks many times, and counted a miss
        // at each, `lfc stat`'s hit ratio would fall with the loss rate.
        let mut arrived = lfc.contains(&tag) && lfc.lookup(&tag, out).is_some();
        if !arrived && own.is_some() {
            // A wait for an own prefetch looks for its loss as it goes: when the reader has
            // caught up with the pages in flight (a young window, or a path slower than the
            // reader), a lost page is read before the check of its read could see anything
            // overtake it, and the pages after it arrive during the wait. Judged at the end
            // of the budget as a page nothing overtook, each such loss took the backend off a
            // path that delivers: at 5 % datagram loss a scan read 99 % of its pages by TCP,
            // left by "the first prefetch read did not arrive in time" and by probation.
            self.loss_check(lfc, now_ns, MISS_SCAN);
            // Overtaken is lost for the page the reader waits for, without the reorder grace
            // a page ahead of the reader gets: a grace (up to `MAX_REORDER_GRACE_NS`, most of
            // a round trip) spent blocked on every loss the reader meets costs more than a
            // GetPage, and a page that was only reordered still ends the read when it lands
            // (`on_await_look`).
            let overtaken = self.core.own_loss(&tag).is_some_and(|l| l.overtaken);
            let repaired_now = overtaken && self.queue_repair(tag);
            if repaired_now {
                self.core.stats_mut().retries += 1;
            }
            if repaired_now || self.pipeline.contains(&tag) {
                // Its GetPage is queued as a repair (a loss sample when it comes first in the
                // pipeline, `read_next`).
                return self.wait_lost(lfc, tag, now_ns);
            }
            arrived = lfc.lookup_again(&tag, out).is_some();
        }
        if !arrived && now_ns < until_ns {
            return Poll::Wait {
                tag,
                until_ns: self.next_look(own.is_some(), now_ns, until_ns),
            };
        }
        self.current = None;
        self.note_wait_length(now_ns);
        // What the checks during the wait found (overtaken, requested again) is newer than what
        // was known when it began.
        let own = own.map(|l| self.core.own_loss(&tag).unwrap_or(l));
        match self.core.on_wait_result(tag, arrived, now_ns) {
            None => {
                self.own_arrived(lfc, own.is_some_and(|l| l.retried), now_ns);
                self.done(lfc, ReadSource::LateHit, now_ns)
            }
            // Any wait that ran out is evidence against UDP, an own prefetch's or another
            // backend's: a page requested elsewhere that never lands (its requester's daemon
            // path is as dead as ours, or it came and went) costs a whole budget each time. A
            // page requested again after a loss, or overtaken, counts as a loss.
            Some(_) => {
                self.read_gave_up = true;
                let miss = match own {
                    Some(l) if l.retried || l.overtaken => Miss::AfterLoss,
                    _ => Miss::Unexplained,
                };
                self.fetch(lfc, tag, Some(miss), now_ns)
            }
        }
    }

    fn note_wait_length(&mut self, now_ns: u64) {
        if let Some(started) = self.wait_started_ns {
            self.read_waited = now_ns.saturating_sub(started) >= self.core.long_wait_ns();
        }
    }

    /// A loss check during the wait for own prefetch `tag` found it lost and queued its
    /// GetPage: the read awaits that answer, as a read that finds its page repaired does.
    fn wait_lost(&mut self, lfc: &Lfc, tag: BufferTag, now_ns: u64) -> Poll {
        self.current = None;
        self.note_wait_length(now_ns);
        self.core.stats_mut().fallbacks += 1;
        self.read_next(tag, now_ns);
        self.await_response(lfc, tag, now_ns)
    }

    /// A read is done: the pace of reads feeds the health state.
    fn done(&mut self, lfc: &Lfc, source: ReadSource, now_ns: u64) -> Poll {
        self.cache_distrust_reads = self.cache_distrust_reads.saturating_sub(1);
        let io_ns = std::mem::take(&mut self.io_carry_ns);
        if let Some(last) = self.last_done_ns {
            let blocked_ns = now_ns.saturating_sub(self.read_started_ns);
            let read = ReadTiming {
                cycle_ns: now_ns.saturating_sub(last),
                blocked_ns,
                io_ns,
                foreground: self.read_foreground,
                waited: self.read_waited,
                lost_ns: if self.read_udp_failed {
                    blocked_ns.max(1)
                } else {
                    0
                },
            };
            if self.health.on_read(&read, now_ns) {
                self.move_window_to_tcp(lfc, now_ns);
            }
        }
        self.last_done_ns = Some(now_ns);
        Poll::Done(source)
    }

    fn own_arrived(&mut self, lfc: &Lfc, retried: bool, now_ns: u64) {
        self.health.on_arrival(retried);
        if self.health.check_loss(now_ns) {
            self.move_window_to_tcp(lfc, now_ns);
        }
    }

    /// The read goes to TCP: its GetPage goes next in the pipeline. A prefetch given up on
    /// (`miss`) is evidence against UDP, and may move the rest of the window to TCP behind it.
    fn fetch(&mut self, lfc: &Lfc, tag: BufferTag, miss: Option<Miss>, now_ns: u64) -> Poll {
        self.fetch_sent_ns = now_ns;
        self.read_udp_failed |= miss.is_some();
        self.read_next(tag, now_ns);
        self.refetch_skipped_after(lfc, &tag);
        let moved = match miss {
            None => false,
            Some(Miss::AfterLoss) => {
                self.health.on_arrival(true);
                self.health.check_loss(now_ns)
            }
            // An evicted page had come: UDP delivers.
            Some(Miss::Evicted) => self.health.on_miss(now_ns, true),
            Some(Miss::Unexplained) => {
                self.read_missed = true;
                let delivers = lfc.datagrams_installed() > self.datagrams_at_start;
                self.health.on_miss(now_ns, delivers)
            }
        };
        if moved {
            self.move_window_to_tcp(lfc, now_ns);
        } else {
            self.repair_overdue_run(lfc);
        }
        self.await_response(lfc, tag, now_ns)
    }

    /// A read of `tag` found it evicted and fetches it: pages the pipeline skipped after it (of
    /// the same relation) that are no longer cached follow it in the pipeline; those before it
    /// are behind the reader. When `tag` itself was skipped as cached, the cache is evicting
    /// the window ahead of the reader: every page skipped after it follows, cached or not (the
    /// next ones are the next to go), and `pump` stops skipping for a while
    /// (`CACHE_DISTRUST_REACHES`).
    fn refetch_skipped_after(&mut self, lfc: &Lfc, tag: &BufferTag) {
        if self.skipped.is_empty() {
            return;
        }
        let evicted_ahead = self.skipped.contains(tag);
        if evicted_ahead {
            self.cache_distrust_reads = CACHE_DISTRUST_REACHES * self.tcp_reach();
        }
        // In place, so the queue keeps its capacity (no allocation per fallback).
        let pipeline = &mut self.pipeline;
        self.skipped.retain(|t| {
            if t.rel != tag.rel || t.blkno <= tag.blkno {
                return false;
            }
            if !evicted_ahead && lfc.contains(t) {
                return true;
            }
            pipeline.push_back(Queued {
                tag: *t,
                check: Check::None,
                ahead: true,
            });
            false
        });
    }

    fn keep_ready(&mut self, tag: BufferTag, not_modified_since: u64, page: &Page) {
        let mut buf = if self.ready.len() >= 2 * self.tcp_reach() as usize {
            self.ready.pop_front().map(|r| r.page)
        } else {
            self.spare.pop()
        }
        .unwrap_or_else(|| Box::new([0u8; lfc::PAGE_SIZE]));
        buf.copy_from_slice(&page[..]);
        self.ready.push_back(Ready {
            tag,
            not_modified_since,
            page: buf,
        });
    }

    /// Copies `tag` from the pipelined pages read ahead, if there and still current (the same
    /// rule as an install: not modified after its GetPage), and counts the read as a use of
    /// its LFC copy (see `on_response`).
    fn take_ready(&mut self, lfc: &Lfc, tag: &BufferTag, out: &mut Page) -> bool {
        let Some(i) = self.ready.iter().position(|r| r.tag == *tag) else {
            return false;
        };
        let r = self.ready.remove(i).expect("found");
        let current = lfc.lwlsn(tag) <= r.not_modified_since;
        if current {
            out.copy_from_slice(&r.page[..]);
            lfc.touch(tag);
        }
        self.spare.push(r.page);
        current
    }

    /// Whether `tag` is a page of the window a scan reads behind (`window`).
    fn in_window(&self, tag: &BufferTag) -> bool {
        self.window
            .is_some_and(|(rel, end)| tag.rel == rel && tag.blkno < end)
    }

    /// Puts `tag`'s GetPage first in the pipeline; a probe page whose read came first has not
    /// arrived (the read looked in the LFC), and counts so for its probe.
    fn read_next(&mut self, tag: BufferTag, now_ns: u64) {
        // A page of the window is the scan's own, fetched late (lost, or evicted): the scan's
        // pace matters more to it than one read's wait, and a pipeline cut for such reads
        // (47 a scan at MTU 1500 and 5 % loss) slowed the scans of `bench net`.
        if !self.in_window(&tag) {
            self.pipeline.note_foreground(&tag, now_ns);
        }
        match self.pipeline.push_front(tag).map(|q| q.check) {
            Some(Check::Probe | Check::Race) => self.health.on_probe_page(false, now_ns),
            // Read before UDP or TCP brought it: lost, as the check took it.
            Some(Check::Repair) => self.judge_repair(true),
            Some(Check::None) | None => {}
        }
    }

    fn await_response(&mut self, lfc: &Lfc, tag: BufferTag, now_ns: u64) -> Poll {
        self.current = Some(Current {
            tag,
            phase: Phase::Awaiting,
        });
        self.pump(lfc, now_ns);
        self.look_step_ns = LOOK_STEP_NS;
        self.await_look_ns = self.next_await_look(now_ns);
        Poll::AwaitResponse
    }

    /// When a read awaiting a GetPage answer next looks for losses: on UDP with own
    /// prefetches in flight, a look step from `now_ns`.
    fn next_await_look(&mut self, now_ns: u64) -> Option<u64> {
        (self.health.path() == PrefetchPath::Udp && self.core.prefetches_outstanding())
            .then(|| now_ns + self.take_look_step())
    }

    /// While the read in progress awaits a GetPage answer: when the caller should call
    /// `on_await_look` if no answer has come by then (`None`: just await it).
    pub fn await_look_ns(&self) -> Option<u64> {
        match self.current {
            Some(Current {
                phase: Phase::Awaiting,
                ..
            }) => self.await_look_ns,
            _ => None,
        }
    }

    /// No answer came by `await_look_ns`. If UDP brought the awaited page meanwhile (a page
    /// taken as lost was late, or reordered), the read is done with it (`Some`): its GetPage's
    /// answer, when it comes, is a page nobody awaits. Otherwise the own prefetches are
    /// checked for losses, and the pages found lost are queued for the pipeline (urgent
    /// GetPages, `pump`): a reader that caught up with the pages in flight blocks a round trip
    /// on each lost one, and pages after it are lost meanwhile. Found only once the read was
    /// over, each was requested a grace later, and at 5 % datagram loss reads blocked on one
    /// repair after another.
    pub fn on_await_look(&mut self, lfc: &Lfc, out: &mut Page, now_ns: u64) -> Option<Poll> {
        let Some(Current {
            tag,
            phase: Phase::Awaiting,
        }) = self.current
        else {
            panic!("on_await_look without an awaited answer");
        };
        if lfc.lookup_again(&tag, out).is_some() {
            self.current = None;
            self.await_look_ns = None;
            if self.read_gave_up {
                self.core.on_fetch_raced();
            }
            if self.read_missed {
                self.health.on_late_arrival();
            }
            return Some(self.done(lfc, ReadSource::LateHit, now_ns));
        }
        self.loss_check(lfc, now_ns, MISS_SCAN);
        self.await_look_ns = self.next_await_look(now_ns);
        None
    }

    /// A response read from the connection. Every page goes into the LFC under the lwlsn rule
    /// (other backends gain); the one the read awaits is copied to `out` unless the tag was
    /// modified after its GetPage was sent (then it is requested again). Returns the next step
    /// of the read in progress (`Poll::AwaitResponse` while it awaits more), or `None` when no
    /// read is in progress (draining).
    pub fn on_response(
        &mut self,
        lfc: &Lfc,
        response: Response<'_>,
        out: &mut Page,
        now_ns: u64,
    ) -> Result<Handled, DriverError> {
        let mut installed = false;
        let next = match response {
            Response::Target => {
                self.pipeline
                    .answered(None, now_ns)
                    .ok_or_else(|| DriverError::Unrequested("PrefetchTarget".into()))?;
                None
            }
            Response::TargetRefused => {
                self.pipeline
                    .answered(None, now_ns)
                    .ok_or_else(|| DriverError::Unrequested("PrefetchTarget".into()))?;
                self.without_extension(lfc, now_ns);
                None
            }
            Response::Page { tag, page } => {
                let (next, was_installed) = self.on_page(lfc, tag, page, out, now_ns)?;
                installed = was_installed;
                next
            }
        };
        self.pump(lfc, now_ns);
        Ok(Handled {
            next: next.or_else(|| {
                self.current
                    .filter(|c| c.phase == Phase::Awaiting)
                    .map(|_| Poll::AwaitResponse)
            }),
            installed,
        })
    }

    /// A page answered on the connection: into the LFC under the lwlsn rule, a race or repair
    /// judged, and to `out` if the read in progress awaits it. Returns the read's next step
    /// (`None` when the page was not the one awaited) and whether the LFC took the page.
    fn on_page(
        &mut self,
        lfc: &Lfc,
        tag: BufferTag,
        page: &Page,
        out: &mut Page,
        now_ns: u64,
    ) -> Result<(Option<Poll>, bool), DriverError> {
        let Some(InFlight::Page {
            not_modified_since,
            ahead,
            judge,
            ..
        }) = self.pipeline.answered(Some(&tag), now_ns)
        else {
            return Err(DriverError::Unrequested(format!("page {tag}")));
        };
        if ahead {
            self.core.stats_mut().tcp_pipelined += 1;
        }
        // The answers come in order: the install a few answers on misses the lines this one
        // is about to wait for, unless asked for now.
        if let Some(next) = self.pipeline.in_flight_page(LFC_PREFETCH_AHEAD) {
            lfc.prefetch_install(next);
        }
        let outcome = lfc.install_prefetched(&tag, not_modified_since, page);
        let installed = outcome == InstallOutcome::Installed;
        // Already there: UDP brought it first.
        let by_udp = outcome == InstallOutcome::AlreadyPresent;
        match judge {
            Check::Probe | Check::Race => self.health.on_probe_page(by_udp, now_ns),
            Check::Repair => self.judge_repair(!by_udp),
            Check::None => {}
        }
        let awaited = self
            .current
            .is_some_and(|c| c.tag == tag && c.phase == Phase::Awaiting);
        let next = if !awaited {
            if ahead {
                self.keep_ready(tag, not_modified_since, page);
            }
            None
        } else if lfc.lwlsn(&tag) > not_modified_since {
            // Modified after the request: this version may be older than the change.
            self.read_next(tag, now_ns);
            None
        } else {
            out.copy_from_slice(&page[..]);
            // A read is a use of the page for the LFC's eviction whichever path brought
            // it: a UDP hit counts as one (`lookup`), so a page read from its TCP answer
            // does too. Without it, pages read by TCP sat one use below pages read from
            // the LFC and went first: in the simulator, a backend trailing another over
            // a relation larger than the cache found the pages the other had read by
            // TCP 10 ms earlier evicted, and fetched them again (heavy seeds 5183 and
            // 6344 came to 1.07 and 1.04 of the limit; 0.70 and 0.76 with the use).
            lfc.touch(&tag);
            if outcome == InstallOutcome::AlreadyPresent && !ahead {
                // Arrived by UDP after the read gave up on it: the budget was short,
                // and the path delivers.
                if self.read_gave_up {
                    self.core.on_fetch_raced();
                }
                // Bounds the latency if the read was fetched at once as too slow (the
                // core remembers which page that was).
                self.core.on_too_slow_raced(&tag, now_ns);
                if self.read_missed {
                    self.health.on_late_arrival();
                }
            }
            if !ahead && self.fetch_sent_ns != 0 {
                self.core
                    .observe_tcp_rtt(now_ns.saturating_sub(self.fetch_sent_ns));
            }
            self.current = None;
            Some(self.done(lfc, ReadSource::Tcp, now_ns))
        };
        Ok((next, installed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::backend::read_path::ScanWindow;
    use crate::compute::test_support::{Fixture, MS, T0, US};
    use crate::protocol::page::synthetic_page;
    use crate::protocol::page::synthetic_rel;
    use lfc::PAGE_SIZE;

    fn fixture(daemon: bool) -> Fixture {
        let f = crate::compute::test_support::fixture(4096);
        if daemon {
            f.lfc
                .register_daemon("127.0.0.1:7000".parse().unwrap(), 1, 0, T0);
        }
        f
    }

    fn drain(d: &mut Driver) -> Vec<Transmit> {
        std::iter::from_fn(|| d.poll_transmit()).collect()
    }

    fn get_page_tags(ts: &[Transmit]) -> Vec<BufferTag> {
        ts.iter()
            .filter_map(|t| match t {
                Transmit::GetPage { tag, .. } => Some(*tag),
                _ => None,
            })
            .collect()
    }

    fn get_pages(ts: &[Transmit]) -> Vec<u32> {
        get_page_tags(ts).iter().map(|t| t.blkno).collect()
    }

    fn prefetch_runs(ts: &[Transmit]) -> Vec<PrefetchRun> {
        ts.iter()
            .filter_map(|t| match t {
                Transmit::Prefetch(r) => Some(*r),
                _ => None,
            })
            .collect()
    }

    /// Answers `Poll::AwaitResponse` with the page of the oldest GetPage in `wire`.
    fn answer(
        d: &mut Driver,
        lfc: &Lfc,
        wire: &mut VecDeque<u32>,
        out: &mut Page,
        now: u64,
    ) -> Handled {
        let blkno = wire.pop_front().expect("a GetPage in flight");
        let tag = synthetic_rel(0).block(blkno);
        let page = synthetic_page(tag, 16);
        let h = d
            .on_response(lfc, Response::Page { tag, page: &page }, out, now)
            .unwrap();
        wire.extend(get_pages(&drain(d)));
        h
    }

    /// Page `blkno` of relation 0 lands in the LFC, as the daemon installs it.
    fn land(lfc: &Lfc, blkno: u32) {
        let tag = synthetic_rel(0).block(blkno);
        lfc.install_prefetched(&tag, 0, &synthetic_page(tag, 16));
    }

    /// A backend on UDP that has just prefetched pages `0..n` of relation 0.
    fn prefetching(lfc: &Lfc, n: u32) -> Driver {
        let mut d = Driver::new(ReadPathConfig::default(), None, lfc, T0);
        assert_eq!(d.path(), PrefetchPath::Udp);
        d.prefetch(lfc, synthetic_rel(0), 0..n, T0);
        drain(&mut d);
        d
    }

    /// Lets the wait of `Poll::Wait { until_ns, .. }` run out: `on_wait_over` at each of the
    /// deadlines it gives (it looks for losses on the way) until the wait is over. Returns the
    /// read's next step and the time it ended.
    fn wait_out(d: &mut Driver, lfc: &Lfc, out: &mut Page, mut until_ns: u64) -> (Poll, u64) {
        loop {
            match d.on_wait_over(lfc, out, until_ns) {
                Poll::Wait { until_ns: next, .. } => {
                    assert!(next > until_ns, "a wait goes on to a later deadline");
                    until_ns = next;
                }
                p => return (p, until_ns),
            }
        }
    }

    /// Reads `blkno` to the end, answering GetPages from `wire` and letting every wait run out.
    fn read(
        d: &mut Driver,
        lfc: &Lfc,
        wire: &mut VecDeque<u32>,
        blkno: u32,
        now: &mut u64,
    ) -> ReadSource {
        let mut out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
        let mut poll = d.start_read(lfc, synthetic_rel(0).block(blkno), &mut out, *now);
        wire.extend(get_pages(&drain(d)));
        loop {
            poll = match poll {
                Poll::Done(s) => {
                    assert_eq!(crate::protocol::page::page_lsn(&out), 16);
                    return s;
                }
                Poll::Wait { until_ns, .. } => {
                    *now = until_ns;
                    let p = d.on_wait_over(lfc, &mut out, *now);
                    wire.extend(get_pages(&drain(d)));
                    p
                }
                Poll::AwaitResponse => answer(d, lfc, wire, &mut out, *now)
                    .next
                    .expect("the read goes on"),
            };
        }
    }

    /// On TCP pipelining, a read of a page outside the scan's window goes behind every GetPage
    /// in flight. When the answers then show them queued (round trips of 2 ms on a path of
    /// 250 µs), the pipeline keeps only what the path holds plus the slack; a scan alone, with
    /// the same answers, keeps Neon's 128.
    #[test]
    fn a_read_behind_a_queued_pipeline_cuts_its_depth_and_a_scan_alone_does_not() {
        for foreground in [false, true] {
            let f = fixture(false);
            let lfc = &f.lfc;
            let mut d = Driver::new(ReadPathConfig::default(), None, lfc, T0);
            assert_eq!(d.path(), PrefetchPath::TcpPipelined);
            let (scan, fg) = (synthetic_rel(0), synthetic_rel(1));
            let mut out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
            d.prefetch(lfc, scan, 0..1024, T0);
            let mut wire: VecDeque<BufferTag> = get_page_tags(&drain(&mut d)).into();
            assert_eq!(wire.len(), 128);
            let mut answer = |d: &mut Driver, wire: &mut VecDeque<BufferTag>, now: u64| {
                let tag = wire.pop_front().expect("in flight");
                let page = synthetic_page(tag, 16);
                d.on_response(lfc, Response::Page { tag, page: &page }, &mut out, now)
                    .unwrap();
                wire.extend(get_page_tags(&drain(d)));
            };
            // The path's own round trip.
            answer(&mut d, &mut wire, T0 + 250 * US);
            if foreground {
                let mut fg_out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
                let poll = d.start_read(lfc, fg.block(0), &mut fg_out, T0 + 300 * US);
                assert_eq!(poll, Poll::AwaitResponse);
                assert!(
                    drain(&mut d).is_empty(),
                    "the pipeline is full: it waits its turn"
                );
            }
            for _ in 0..10 {
                answer(&mut d, &mut wire, T0 + 2 * MS);
            }
            let stats = d.stats();
            if foreground {
                assert_eq!(stats.tcp_depth_cuts, 1, "once a round trip");
                // About 16 of the 128 held (250 µs of 2 ms), and the slack of 8.
                let depth = d.pipeline.depth();
                assert!((22..=26).contains(&depth), "{depth}");
                // The read waiting for its page went with the first answer that made room
                // under the cap; the scan's pages wait for the pipeline to fall below the
                // limit.
                assert_eq!(wire.len(), 128 - 10 + 1);
                let at = wire.iter().position(|t| *t == fg.block(0));
                assert_eq!(
                    at,
                    Some(127 - 9),
                    "behind the 127 in flight then, 9 answered since"
                );
            } else {
                assert_eq!(stats.tcp_depth_cuts, 0);
                assert_eq!(d.pipeline.depth(), 128);
                assert_eq!(wire.len(), 128, "each answer makes room for one more");
            }
        }
    }

    /// `bench hol`'s busy reader: a scan whose pages are cached (hits), and between them
    /// GetPages of 1 ms for pages of another relation, outside the prefetch window. Those cost
    /// a GetPage on TCP pipelining too: they are neither reads that UDP failed (90 % of the
    /// time, which took the reader to TCP) nor blocked time to calibrate for.
    #[test]
    fn foreground_reads_outside_the_prefetch_window_keep_a_scan_on_udp() {
        let f = fixture(true);
        let lfc = &f.lfc;
        let mut d = Driver::new(ReadPathConfig::default(), None, lfc, T0);
        assert_eq!(d.path(), PrefetchPath::Udp);
        let mut out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
        let mut now = T0;
        drain(&mut d);
        d.on_response(lfc, Response::Target, &mut out, now).unwrap();
        let (scan, fg) = (synthetic_rel(0), synthetic_rel(1));
        for b in 0..16 {
            let tag = scan.block(b);
            lfc.install_prefetched(&tag, lfc.lwlsn(&tag), &synthetic_page(tag, 16));
        }
        d.prefetch(lfc, scan, 0..16, now);
        drain(&mut d);
        for k in 0..60 {
            for b in 0..16 {
                now += 10 * US;
                let poll = d.start_read(lfc, scan.block(b), &mut out, now);
                assert_eq!(poll, Poll::Done(ReadSource::Hit));
            }
            now += 10 * US;
            let tag = fg.block(k);
            assert_eq!(d.start_read(lfc, tag, &mut out, now), Poll::AwaitResponse);
            assert_eq!(get_pages(&drain(&mut d)), vec![k]);
            now += 1_000 * US;
            let page = synthetic_page(tag, 16);
            let h = d
                .on_response(lfc, Response::Page { tag, page: &page }, &mut out, now)
                .unwrap();
            assert_eq!(h.next, Some(Poll::Done(ReadSource::Tcp)));
        }
        assert_eq!(d.path(), PrefetchPath::Udp, "{:?}", d.state_log());
        assert_eq!(d.path_changes(), 0);
    }

    #[test]
    fn without_a_daemon_the_window_goes_by_tcp_pipelining_from_the_start() {
        let f = fixture(false);
        let mut d = Driver::new(ReadPathConfig::default(), None, &f.lfc, T0);
        assert_eq!(d.path(), PrefetchPath::TcpPipelined);
        assert!(d.state_log()[0].reason.contains("no worker daemon"));
        let distance = d.prefetch_distance(512);
        assert_eq!(distance, 128 + 64);
        d.prefetch(&f.lfc, synthetic_rel(0), 0..distance, T0);
        let sent = drain(&mut d);
        assert!(sent.iter().all(|t| matches!(t, Transmit::GetPage { .. })));
        let mut wire: VecDeque<u32> = get_pages(&sent).into();
        assert_eq!(
            wire.len(),
            128,
            "the pipeline depth bounds what is in flight"
        );
        let mut now = T0;
        for b in 0..distance {
            let s = read(&mut d, &f.lfc, &mut wire, b, &mut now);
            assert_ne!(s, ReadSource::LateHit);
        }
        assert_eq!(now, T0, "no read ever waited");
        // Reads that take their GetPage's answer without a lookup still count as reads, which
        // a background prewarm watches to yield to them.
        assert_eq!(f.lfc.reads(), u64::from(distance));
        assert!(f.lfc.lookups() < u64::from(distance), "{}", f.lfc.lookups());
        let stats = d.finish();
        assert_eq!(stats.tcp_pipelined, u64::from(distance));
        assert_eq!(stats.udp_state_changes, 0);
    }

    #[test]
    fn a_tcp_only_driver_ignores_a_live_daemon_and_stores_every_page_in_the_lfc() {
        let f = fixture(true);
        f.lfc.daemon_heartbeat(T0);
        let mut d = Driver::tcp_only(ReadPathConfig::default(), T0);
        assert_eq!(d.path(), PrefetchPath::TcpPipelined);
        let mut wire = VecDeque::new();
        let mut now = T0;
        for b in 0..512u32 {
            f.lfc.daemon_heartbeat(now);
            if b % 64 == 0 {
                let distance = d.prefetch_distance(128);
                d.prefetch(&f.lfc, synthetic_rel(0), b..(b + distance).min(512), now);
                let sent = drain(&mut d);
                assert!(
                    sent.iter().all(|t| matches!(t, Transmit::GetPage { .. })),
                    "no PrefetchTarget, no Prefetch: {sent:?}"
                );
                wire.extend(get_pages(&sent));
            }
            let s = read(&mut d, &f.lfc, &mut wire, b, &mut now);
            assert_ne!(s, ReadSource::LateHit);
            now += 1_000_000;
        }
        assert!((0..512).all(|b| f.lfc.contains(&synthetic_rel(0).block(b))));
        let stats = d.finish();
        assert_eq!(stats.udp_state_changes, 0);
        assert_eq!(stats.prefetched, 0);
    }

    /// A read is a use of its page for the LFC's eviction whether the page came in the answer
    /// the read awaited, from the pages the pipeline read ahead, or from the LFC: pages read
    /// by TCP must not go before pages read as hits.
    #[test]
    fn a_page_read_by_tcp_counts_as_used_in_the_lfc_as_a_hit_does() {
        let f = fixture(false);
        let lfc = &f.lfc;
        let rel = synthetic_rel(0);
        let mut d = Driver::tcp_only(ReadPathConfig::default(), T0);
        let mut out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
        d.prefetch(lfc, rel, 0..16, T0);
        assert_eq!(get_pages(&drain(&mut d)), (0..16).collect::<Vec<_>>());
        let answer = |d: &mut Driver, b: u32, out: &mut Page| {
            let tag = rel.block(b);
            let page = synthetic_page(tag, 16);
            d.on_response(lfc, Response::Page { tag, page: &page }, out, T0)
                .unwrap()
                .next
        };
        // Block 0 from the answer its read awaits.
        assert_eq!(
            d.start_read(lfc, rel.block(0), &mut out, T0),
            Poll::AwaitResponse
        );
        assert_eq!(
            answer(&mut d, 0, &mut out),
            Some(Poll::Done(ReadSource::Tcp))
        );
        // Blocks 1-15 answered ahead of their reads (installed, kept ready); 9-15 then read,
        // the last ones installed (an LFC that ranked by age alone would keep 1-8).
        for b in 1..16 {
            assert_eq!(answer(&mut d, b, &mut out), None);
        }
        for b in 9..16 {
            let poll = d.start_read(lfc, rel.block(b), &mut out, T0);
            assert_eq!(poll, Poll::Done(ReadSource::Tcp));
        }
        // A page another backend's prefetch installed, read as a hit.
        let other = synthetic_rel(1).block(0);
        lfc.install_prefetched(&other, lfc.lwlsn(&other), &synthetic_page(other, 16));
        assert_eq!(
            d.start_read(lfc, other, &mut out, T0),
            Poll::Done(ReadSource::Hit)
        );
        let mut hottest = lfc.snapshot_hottest(9);
        hottest.sort();
        let mut read: Vec<BufferTag> = [0].into_iter().chain(9..16).map(|b| rel.block(b)).collect();
        read.push(other);
        read.sort();
        assert_eq!(
            hottest, read,
            "the pages read rank above those only fetched"
        );
    }

    #[test]
    fn own_prefetches_that_arrived_and_were_evicted_are_fetched_at_once_and_count_as_misses() {
        // A cache of 16 pages, and a window of 16 prefetches that all arrive: the other pages a
        // busy cache takes in before their reads evict them.
        let f = crate::compute::test_support::fixture(16);
        let lfc = &f.lfc;
        lfc.register_daemon("127.0.0.1:7000".parse().unwrap(), 1, 0, T0);
        let mut d = Driver::new(ReadPathConfig::default(), None, lfc, T0);
        let rel = synthetic_rel(0);
        d.prefetch(lfc, rel, 0..16, T0);
        drain(&mut d);
        let mut out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
        d.on_response(lfc, Response::Target, &mut out, T0).unwrap();
        for b in 0..16 {
            let tag = rel.block(b);
            lfc.install_prefetched(&tag, lfc.lwlsn(&tag), &synthetic_page(tag, 16));
        }
        let other = synthetic_rel(1);
        for b in 0..64 {
            let tag = other.block(b);
            lfc.install_prefetched(&tag, lfc.lwlsn(&tag), &synthetic_page(tag, 16));
        }
        let evicted: Vec<u32> = (0..16).filter(|&b| !lfc.contains(&rel.block(b))).collect();
        assert!(evicted.len() >= 4, "{evicted:?}");
        // Read more than a wait budget after their request, each is fetched by GetPage without
        // a wait; two such reads are two misses, and the window moves to TCP pipelining, whose
        // pages wait for their reads out of the cache. (The pages had come, so one such miss
        // alone is not enough: the daemon delivers.)
        let mut wire = VecDeque::new();
        let mut now = T0 + 5 * MS;
        let start = now;
        assert_eq!(
            read(&mut d, lfc, &mut wire, evicted[0], &mut now),
            ReadSource::Tcp
        );
        assert_eq!(d.path(), PrefetchPath::Udp);
        assert_eq!(
            read(&mut d, lfc, &mut wire, evicted[1], &mut now),
            ReadSource::Tcp
        );
        assert_eq!(now, start, "no wait");
        assert_eq!(d.path(), PrefetchPath::TcpPipelined);
        assert!(
            d.state_log()[1].reason.contains("did not arrive"),
            "{:?}",
            d.state_log()
        );
        let stats = d.stats();
        assert_eq!((stats.wait_timeouts, stats.fallbacks), (0, 2));
    }

    #[test]
    fn prefetches_that_stop_arriving_move_the_window_to_tcp_within_one_wait() {
        let f = fixture(true);
        f.lfc.daemon_heartbeat(T0);
        let mut d = Driver::new(ReadPathConfig::default(), None, &f.lfc, T0);
        assert_eq!(d.path(), PrefetchPath::Udp);
        let rel = synthetic_rel(0);
        d.prefetch(&f.lfc, rel, 0..256, T0);
        let sent = drain(&mut d);
        assert_eq!(sent[0], Transmit::Target { udp_port: 7000 });
        assert!(matches!(sent[1], Transmit::Prefetch(r) if r.first == 0 && r.n == 256));
        // The Target's answer comes first on the connection.
        let mut out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
        d.on_response(&f.lfc, Response::Target, &mut out, T0)
            .unwrap();
        // Nothing arrives: the first read waits and falls back (nothing has ever arrived, so
        // that is enough), then the window is on the TCP pipeline as far as it reaches.
        let mut wire = VecDeque::new();
        let mut now = T0;
        assert_eq!(
            read(&mut d, &f.lfc, &mut wire, 0, &mut now),
            ReadSource::Tcp
        );
        assert_eq!(d.path(), PrefetchPath::TcpPipelined);
        let waited = now - T0;
        assert!(waited <= 4 * MS, "{waited}");
        assert_eq!(
            read(&mut d, &f.lfc, &mut wire, 1, &mut now),
            ReadSource::Tcp
        );
        let before = now;
        // As `run_scan`: the window restarts at the reader, topped up as it goes.
        let mut window = ScanWindow::new(2, 256);
        for b in 2..256 {
            if let Some(range) = window.top_up(b, d.prefetch_distance(512)) {
                d.prefetch(&f.lfc, rel, range, now);
                wire.extend(get_pages(&drain(&mut d)));
            }
            read(&mut d, &f.lfc, &mut wire, b, &mut now);
        }
        assert_eq!(now, before, "no more waits once on TCP");
        let stats = d.finish();
        assert_eq!(stats.tcp_pipelined, 255);
        assert_eq!(stats.wait_timeouts, 1);
        assert_eq!(stats.udp_state_changes, 1);
    }

    #[test]
    fn a_first_page_that_comes_late_takes_the_window_back_to_udp_when_udp_beats_tcp() {
        // A fresh daemon's first datagrams come after the first read's budget (a slow start),
        // then before the TCP answers of the window the miss moved to the pipeline.
        for udp_first in [true, false] {
            let f = fixture(true);
            f.lfc.daemon_heartbeat(T0);
            let mut d = Driver::new(ReadPathConfig::default(), None, &f.lfc, T0);
            let rel = synthetic_rel(0);
            d.prefetch(&f.lfc, rel, 0..32, T0);
            drain(&mut d);
            let mut out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
            d.on_response(&f.lfc, Response::Target, &mut out, T0)
                .unwrap();
            let Poll::Wait { until_ns, .. } = d.start_read(&f.lfc, rel.block(0), &mut out, T0)
            else {
                panic!("the first read waits for its prefetch");
            };
            let (poll, until_ns) = wait_out(&mut d, &f.lfc, &mut out, until_ns);
            assert_eq!(poll, Poll::AwaitResponse);
            assert_eq!(d.path(), PrefetchPath::TcpPipelined);
            let mut wire: VecDeque<u32> = get_pages(&drain(&mut d)).into();
            assert_eq!(wire.len(), 32, "the read's page, then the window: {wire:?}");
            if udp_first {
                for b in 0..32 {
                    let tag = rel.block(b);
                    f.lfc.install_prefetched(&tag, 0, &synthetic_page(tag, 16));
                }
            }
            let now = until_ns + 100 * US;
            let done = answer(&mut d, &f.lfc, &mut wire, &mut out, now);
            assert_eq!(done.next, Some(Poll::Done(ReadSource::Tcp)));
            while !wire.is_empty() {
                answer(&mut d, &f.lfc, &mut wire, &mut out, now);
            }
            let log = d.state_log();
            if udp_first {
                assert_eq!(d.path(), PrefetchPath::Udp, "{log:?}");
                assert!(log[2].reason.contains("late, not lost"), "{log:?}");
            } else {
                assert_eq!(d.path(), PrefetchPath::TcpPipelined, "{log:?}");
                assert_eq!(d.path_changes(), 1);
            }
        }
    }

    #[test]
    fn a_skipped_page_evicted_before_its_read_makes_the_pipeline_fetch_cached_pages() {
        let f = crate::compute::test_support::fixture(64);
        let mut d = Driver::new(ReadPathConfig::default(), None, &f.lfc, T0);
        let rel = synthetic_rel(0);
        let install = |tag: BufferTag| {
            f.lfc
                .install_prefetched(&tag, 0, &synthetic_page(tag, 16))
                .eq(&InstallOutcome::Installed)
                .then_some(())
                .unwrap()
        };
        // 10..20 are cached (another backend's prefetches): the pipeline skips them.
        (10..20).for_each(|b| install(rel.block(b)));
        d.prefetch(&f.lfc, rel, 0..20, T0);
        let mut wire: VecDeque<u32> = get_pages(&drain(&mut d)).into();
        assert_eq!(Vec::from(wire.clone()), (0..10).collect::<Vec<_>>());
        let mut now = T0;
        for b in 0..10 {
            read(&mut d, &f.lfc, &mut wire, b, &mut now);
        }
        // A busy cache evicts them before the reader comes.
        (0..256).for_each(|b| install(synthetic_rel(1).block(b)));
        assert!((10..20).all(|b| !f.lfc.contains(&rel.block(b))));
        // The first one's read finds it gone: the ones skipped after it follow its GetPage,
        // not one round trip each.
        let mut out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
        assert_eq!(
            d.start_read(&f.lfc, rel.block(10), &mut out, now),
            Poll::AwaitResponse
        );
        wire.extend(get_pages(&drain(&mut d)));
        assert_eq!(Vec::from(wire.clone()), (10..20).collect::<Vec<_>>());
        answer(&mut d, &f.lfc, &mut wire, &mut out, now);
        for b in 11..20 {
            assert_eq!(
                read(&mut d, &f.lfc, &mut wire, b, &mut now),
                ReadSource::Tcp
            );
        }
        // For a while the pipeline fetches cached pages too; a read still takes the LFC's copy.
        (20..24).for_each(|b| install(rel.block(b)));
        d.prefetch(&f.lfc, rel, 20..24, now);
        let mut wire: VecDeque<u32> = get_pages(&drain(&mut d)).into();
        assert_eq!(Vec::from(wire.clone()), (20..24).collect::<Vec<_>>());
        assert_eq!(
            read(&mut d, &f.lfc, &mut wire, 20, &mut now),
            ReadSource::Hit
        );
    }

    /// A page taken as lost (overtaken by later ones, past the reorder grace) is fetched by the
    /// TCP pipeline, not requested by UDP again, and its read takes the pipeline's answer
    /// without waiting.
    #[test]
    fn a_lost_prefetch_is_fetched_by_the_pipeline_and_its_read_does_not_wait() {
        let f = fixture(true);
        let lfc = &f.lfc;
        let rel = synthetic_rel(0);
        let mut d = Driver::new(ReadPathConfig::default(), None, lfc, T0);
        assert_eq!(d.path(), PrefetchPath::Udp);
        d.prefetch(lfc, rel, 0..64, T0);
        let sent = drain(&mut d);
        assert_eq!(prefetch_runs(&sent).iter().map(|r| r.n).sum::<u16>(), 64);
        // All but page 10 arrive.
        for b in (0..64).filter(|b| *b != 10) {
            let tag = rel.block(b);
            lfc.install_prefetched(&tag, 0, &synthetic_page(tag, 16));
        }
        let mut wire = VecDeque::new();
        let mut now = T0 + 100 * US;
        for b in 0..10 {
            assert_eq!(read(&mut d, lfc, &mut wire, b, &mut now), ReadSource::Hit);
        }
        assert!(wire.is_empty(), "nothing fetched yet: {wire:?}");
        // Past the grace, the read of page 10 finds it lost: a GetPage, no UDP retry.
        now += MS;
        let mut out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
        let poll = d.start_read(lfc, rel.block(10), &mut out, now);
        assert_eq!(poll, Poll::AwaitResponse);
        let sent = drain(&mut d);
        assert!(
            prefetch_runs(&sent).is_empty(),
            "requested by UDP again: {sent:?}"
        );
        assert_eq!(get_pages(&sent), [10]);
        wire.extend(get_pages(&sent));
        let h = answer(&mut d, lfc, &mut wire, &mut out, now);
        assert_eq!(h.next, Some(Poll::Done(ReadSource::Tcp)));
        assert_eq!(d.path(), PrefetchPath::Udp, "one loss keeps the path");
        let stats = d.stats();
        assert_eq!((stats.wait_timeouts, stats.retries), (0, 1));
    }

    /// The reader caught up with the pages in flight: the page it waits for is lost, and the
    /// pages after it land during the wait. A look during the wait sees it overtaken and
    /// fetches it at once, as a loss: the path stays on UDP, no wait runs out. (Judged at the
    /// end of the budget as a page nothing overtook, it was a dead path's miss, and at 5 %
    /// datagram loss a scan read 99 % of its pages by TCP.)
    #[test]
    fn a_page_lost_at_the_reader_is_fetched_as_a_loss_when_later_pages_land_during_its_wait() {
        let f = fixture(true);
        let lfc = &f.lfc;
        let rel = synthetic_rel(0);
        let install = |b: u32| land(lfc, b);
        let mut d = prefetching(lfc, 32);
        (0..5).for_each(install);
        let mut wire = VecDeque::new();
        let mut now = T0 + 100 * US;
        for b in 0..5 {
            assert_eq!(read(&mut d, lfc, &mut wire, b, &mut now), ReadSource::Hit);
        }
        let mut out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
        let Poll::Wait { tag, until_ns } = d.start_read(lfc, rel.block(5), &mut out, now) else {
            panic!("page 5 is in flight: its read waits");
        };
        assert_eq!(tag, rel.block(5));
        assert!(
            until_ns <= now + LOOK_STEP_NS,
            "a wait for an own prefetch looks for its loss within a step"
        );
        // Page 5 is lost; the pages after it land.
        (6..32).for_each(install);
        let (poll, ended) = wait_out(&mut d, lfc, &mut out, until_ns);
        assert_eq!(poll, Poll::AwaitResponse);
        assert!(
            ended < now + d.core.wait_budget().as_nanos() as u64,
            "found lost before the budget ran out"
        );
        let sent = get_pages(&drain(&mut d));
        assert_eq!(sent, [5]);
        wire.extend(sent);
        let h = answer(&mut d, lfc, &mut wire, &mut out, ended + 300 * US);
        assert_eq!(h.next, Some(Poll::Done(ReadSource::Tcp)));
        assert_eq!(d.path(), PrefetchPath::Udp, "{:?}", d.state_log());
        let stats = d.stats();
        assert_eq!((stats.wait_timeouts, stats.retries), (0, 1));
    }

    /// A read that awaits its GetPage on UDP looks for losses while it is blocked: pages lost
    /// meanwhile are requested now, as urgent GetPages, not once the read is over. And when
    /// UDP brings the awaited page (it was late, not lost), the read ends with it.
    #[test]
    fn a_blocked_read_requests_the_losses_behind_it_and_ends_when_udp_brings_its_page() {
        let f = fixture(true);
        let lfc = &f.lfc;
        let rel = synthetic_rel(0);
        let install = |b: u32| land(lfc, b);
        let mut d = prefetching(lfc, 64);
        // Page 0 is lost past its grace: its read awaits a GetPage.
        (1..25).for_each(install);
        let mut out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
        let mut now = T0 + MS;
        let mut wire = VecDeque::new();
        d.loss_check(lfc, now, LOSS_SCAN);
        now += MS;
        d.loss_check(lfc, now, LOSS_SCAN);
        wire.extend(get_pages(&drain(&mut d)));
        assert_eq!(Vec::from(wire.clone()), [0], "page 0 was taken as lost");
        assert_eq!(
            d.start_read(lfc, rel.block(0), &mut out, now),
            Poll::AwaitResponse
        );
        let look = d
            .await_look_ns()
            .expect("on UDP with prefetches in flight, it looks");
        assert_eq!(look, now + LOOK_STEP_NS);
        // Meanwhile page 25 is lost and the pages after it land: two looks a grace apart
        // take it as lost, and its GetPage leaves at once.
        (26..40).for_each(install);
        now = look;
        assert_eq!(d.on_await_look(lfc, &mut out, now), None);
        assert_eq!(
            d.await_look_ns(),
            Some(now + 2 * LOOK_STEP_NS),
            "the step doubles"
        );
        now += REORDER_GRACE_NS;
        assert_eq!(d.on_await_look(lfc, &mut out, now), None);
        let sent = drain(&mut d);
        assert!(
            matches!(
                sent[..],
                [Transmit::GetPage { tag, urgent: true, .. }] if tag == rel.block(25)
            ),
            "{sent:?}"
        );
        // UDP brings page 0 before its answer: the read ends with it.
        install(0);
        let next = d.on_await_look(lfc, &mut out, now + 4 * LOOK_STEP_NS);
        assert_eq!(next, Some(Poll::Done(ReadSource::LateHit)));
        assert_eq!(d.await_look_ns(), None, "no read awaits");
        assert_eq!(crate::protocol::page::page_lsn(&out), 16);
        // Its answer comes later, for nobody.
        let h = answer(&mut d, lfc, &mut wire, &mut out, now + 300 * US);
        assert_eq!(h.next, None);
    }

    /// TCP pipelining's reads never look for losses: nothing of theirs is in flight by UDP.
    #[test]
    fn reads_on_tcp_await_their_answers_without_looking() {
        let f = fixture(true);
        let lfc = &f.lfc;
        let rel = synthetic_rel(0);
        let mut d = Driver::tcp_only(ReadPathConfig::default(), T0);
        d.prefetch(lfc, rel, 0..8, T0);
        drain(&mut d);
        let mut out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
        assert_eq!(
            d.start_read(lfc, rel.block(0), &mut out, T0),
            Poll::AwaitResponse
        );
        assert_eq!(d.await_look_ns(), None);
    }

    /// Pages taken as lost are fetched by TCP; whether they were is judged by who brings them
    /// first. Reordered (UDP's copies land before the GetPages' answers), they are no loss and
    /// the path stays; lost (only TCP brings them), half of a window takes it to TCP.
    #[test]
    fn a_page_taken_as_lost_counts_as_lost_only_if_tcp_brings_it_first() {
        for udp_first in [true, false] {
            let f = fixture(true);
            let lfc = &f.lfc;
            let rel = synthetic_rel(0);
            let install = |b: u32| {
                let tag = rel.block(b);
                lfc.install_prefetched(&tag, 0, &synthetic_page(tag, 16));
            };
            let mut d = Driver::new(ReadPathConfig::default(), None, lfc, T0);
            d.prefetch(lfc, rel, 0..256, T0);
            drain(&mut d);
            // Every second page of 64..192 is late (or lost); the rest arrive.
            let late = |b: u32| (64..192).contains(&b) && b % 2 == 1;
            (0..256).filter(|&b| !late(b)).for_each(install);
            let mut wire = VecDeque::new();
            let mut now = T0 + 100 * US;
            for b in 0..256 {
                now += 10 * US;
                if udp_first {
                    wire.iter().for_each(|&w| install(w));
                }
                read(&mut d, lfc, &mut wire, b, &mut now);
            }
            let mut out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
            while !wire.is_empty() {
                answer(&mut d, lfc, &mut wire, &mut out, now);
            }
            let log = d.state_log();
            if udp_first {
                assert_eq!(d.path(), PrefetchPath::Udp, "{log:?}");
            } else {
                assert_eq!(d.path(), PrefetchPath::TcpPipelined, "{log:?}");
                assert!(log[1].reason.contains("lost"), "{log:?}");
            }
            assert!(d.stats().retries > 0, "the checks took pages as lost");
        }
    }

    #[test]
    fn a_passing_probe_returns_to_udp_and_a_failing_one_costs_no_wait() {
        let d = probe_whose_pages_are_cached();
        assert_eq!(d.path(), PrefetchPath::Udp);
        assert!(d.state_log().last().unwrap().reason.contains("8/8"));
    }

    /// A driver on TCP (its daemon stale) prefetches `first` of relation 0 at `at`; the daemon
    /// comes back a millisecond later, and the top-up of `then` another millisecond later
    /// probes UDP with its last `PROBE_PAGES` pages. Returns the first GetPages on the wire,
    /// what the top-up sent, and when.
    fn start_probe(
        d: &mut Driver,
        lfc: &Lfc,
        first: Range<u32>,
        then: Range<u32>,
        at: u64,
    ) -> (VecDeque<u32>, Vec<Transmit>, u64) {
        let rel = synthetic_rel(0);
        d.prefetch(lfc, rel, first, at);
        let wire: VecDeque<u32> = get_pages(&drain(d)).into();
        lfc.daemon_heartbeat(at + MS);
        let sent_at = at + 2 * MS;
        let probe_first = then.end - PROBE_PAGES as u32;
        d.prefetch(lfc, rel, then, sent_at);
        let sent = drain(d);
        let probe = prefetch_runs(&sent);
        assert_eq!(probe.len(), 1, "{sent:?}");
        assert_eq!(
            (probe[0].first, probe[0].n),
            (probe_first, PROBE_PAGES as u16)
        );
        (wire, sent, sent_at)
    }

    /// A probe page not in the cache at a turn that came before UDP could have brought it (no
    /// GetPage round trip since the probe was sent; none measured here) is fetched by TCP and
    /// judged by its answer: UDP passes it if it brought the page first (the answer finds the
    /// page installed). Judged at the turn alone, a probe failed whenever the pipeline had
    /// room: a page's turn then comes right after its Prefetch is sent (`bench hol`'s busy
    /// reader, once on TCP, never passed a probe in a run of seconds). Either way no read waits.
    #[test]
    fn a_probe_page_sent_by_tcp_too_passes_if_udp_brings_it_before_the_answer() {
        for udp_first in [true, false] {
            let f = fixture(true);
            let lfc = &f.lfc;
            let start = T0 + lfc::DAEMON_STALE_NS;
            let mut d = Driver::new(ReadPathConfig::default(), None, lfc, start);
            assert_eq!(d.path(), PrefetchPath::TcpPipelined);
            let rel = synthetic_rel(0);
            let (mut wire, sent, now) = start_probe(&mut d, lfc, 0..16, 16..32, start);
            // The pipeline has room: every page's GetPage goes at once, the probe's too.
            assert_eq!(get_pages(&sent), (16..32).collect::<Vec<_>>());
            wire.extend(get_pages(&sent));
            if udp_first {
                for b in 24..32 {
                    let tag = rel.block(b);
                    lfc.install_prefetched(&tag, 0, &synthetic_page(tag, 16));
                }
            }
            let mut out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
            let mut t = now;
            for b in 0..32 {
                if b == 16 {
                    // The Target's answer, in order after the GetPages sent before it.
                    d.on_response(lfc, Response::Target, &mut out, t).unwrap();
                }
                read(&mut d, lfc, &mut wire, b, &mut t);
            }
            assert_eq!(t, now, "no read waited");
            let log = d.state_log();
            if udp_first {
                assert_eq!(d.path(), PrefetchPath::Udp, "{log:?}");
                assert!(log.last().unwrap().reason.contains("8/8"), "{log:?}");
            } else {
                assert_eq!(d.path(), PrefetchPath::TcpPipelined, "{log:?}");
                assert_eq!(d.path_changes(), 0, "{log:?}");
            }
        }
    }

    /// A probe page whose turn comes a GetPage round trip or more after its Prefetch is judged
    /// at its turn: UDP had as long as TCP takes, and a page it brings later is late.
    #[test]
    fn a_probe_page_whose_turn_comes_a_round_trip_late_is_judged_at_its_turn() {
        let f = fixture(true);
        let lfc = &f.lfc;
        let start = T0 + lfc::DAEMON_STALE_NS;
        // A full pipeline of 128 whose answers all come at once: no depth adapts under it.
        let config = ReadPathConfig {
            tcp_depth_adaptive: false,
            ..ReadPathConfig::default()
        };
        let mut d = Driver::new(config, None, lfc, start);
        assert_eq!(d.path(), PrefetchPath::TcpPipelined);
        let mut out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
        // A read of another relation's page measures a GetPage round trip of 500 µs.
        let fg = synthetic_rel(1).block(0);
        assert_eq!(d.start_read(lfc, fg, &mut out, start), Poll::AwaitResponse);
        assert_eq!(get_pages(&drain(&mut d)), vec![0]);
        let t = start + 500 * US;
        let page = synthetic_page(fg, 16);
        d.on_response(
            lfc,
            Response::Page {
                tag: fg,
                page: &page,
            },
            &mut out,
            t,
        )
        .unwrap();
        // A full pipeline: the probe's pages wait for their turn.
        let rel = synthetic_rel(0);
        let (mut wire, sent, sent_at) = start_probe(&mut d, lfc, 0..144, 144..192, t);
        wire.extend(get_pages(&sent));
        // The reads come a millisecond later; by the 64th every page has had its turn, and
        // the probe's had not arrived: their GetPages went. UDP brings them before the
        // answers, too late for the probe.
        let mut now = sent_at + MS;
        for b in 0..192 {
            if b == 1 {
                d.on_response(lfc, Response::Target, &mut out, now).unwrap();
            }
            if b == 64 {
                assert!(wire.contains(&184), "the probe's GetPages went: {wire:?}");
                for p in 184..192 {
                    let tag = rel.block(p);
                    lfc.install_prefetched(&tag, 0, &synthetic_page(tag, 16));
                }
            }
            read(&mut d, lfc, &mut wire, b, &mut now);
        }
        assert_eq!(now, sent_at + MS, "no read waited");
        assert_eq!(d.path(), PrefetchPath::TcpPipelined, "{:?}", d.state_log());
        assert_eq!(d.path_changes(), 0);
    }

    /// A backend on TCP probes UDP when the daemon comes back; the probe's pages are cached
    /// before their turn in the pipeline. Reads the whole window (no read may wait) and returns
    /// the driver.
    fn probe_whose_pages_are_cached() -> Driver {
        let f = fixture(true);
        // The daemon's heartbeat is old: on TCP from the start, no probe while it is stale.
        let start = T0 + lfc::DAEMON_STALE_NS;
        let mut d = Driver::new(ReadPathConfig::default(), None, &f.lfc, start);
        assert_eq!(d.path(), PrefetchPath::TcpPipelined);
        let rel = synthetic_rel(0);
        d.prefetch(&f.lfc, rel, 0..144, start);
        let first = drain(&mut d);
        assert!(first.iter().all(|t| matches!(t, Transmit::GetPage { .. })));
        // The daemon comes back to life (heartbeat): the next top-up probes with its last
        // pages by UDP, the rest by TCP; the pipeline is full, so they wait for their turn.
        f.lfc.daemon_heartbeat(start + MS);
        d.prefetch(&f.lfc, rel, 144..192, start + 2 * MS);
        let sent = drain(&mut d);
        let probe = prefetch_runs(&sent);
        assert_eq!(probe.len(), 1);
        assert_eq!((probe[0].first, probe[0].n), (184, PROBE_PAGES as u16));
        assert_eq!(sent[0], Transmit::Target { udp_port: 7000 });
        // They arrive by UDP before their turn in the pipeline: not fetched, and back to UDP.
        for b in 184..192 {
            let tag = rel.block(b);
            f.lfc
                .install_prefetched(&tag, 0, &synthetic_page(tag, 16))
                .eq(&InstallOutcome::Installed)
                .then_some(())
                .unwrap();
        }
        let mut wire: VecDeque<u32> = get_pages(&first).into();
        let mut out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
        let mut now = start + 2 * MS;
        for b in 0..192 {
            if b == 1 {
                // The Target's answer, in order after the first GetPage (sent before it).
                d.on_response(&f.lfc, Response::Target, &mut out, now)
                    .unwrap();
            }
            read(&mut d, &f.lfc, &mut wire, b, &mut now);
        }
        assert!(
            !wire.iter().any(|b| (184..192).contains(b)),
            "cached probe pages not fetched"
        );
        assert_eq!(now, start + 2 * MS, "no read waited");
        d
    }

    #[test]
    fn a_backend_receiving_itself_ignores_the_daemon_but_leaves_udp_when_its_pages_miss() {
        let f = fixture(true);
        // The cache's daemon is dead (its heartbeat old): a daemon-fed driver starts on TCP.
        let start = T0 + lfc::DAEMON_STALE_NS;
        let fed = Driver::new(ReadPathConfig::default(), None, &f.lfc, start);
        assert_eq!(fed.path(), PrefetchPath::TcpPipelined);
        let mut d = Driver::receiving_itself(ReadPathConfig::default(), 9000, &f.lfc, start);
        assert_eq!(d.path(), PrefetchPath::Udp);
        assert!(d.awaits_udp());
        let rel = synthetic_rel(0);
        d.prefetch(&f.lfc, rel, 0..64, start);
        let sent = drain(&mut d);
        assert_eq!(sent[0], Transmit::Target { udp_port: 9000 });
        assert!(
            prefetch_runs(&sent)
                .iter()
                .map(|r| u32::from(r.n))
                .sum::<u32>()
                == 64
        );
        // Its socket is drained before a read of its own prefetches, not of another page.
        assert!(d.expects_by_udp(&rel.block(40)));
        assert!(!d.expects_by_udp(&synthetic_rel(1).block(40)));
        let mut out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
        d.on_response(&f.lfc, Response::Target, &mut out, start)
            .unwrap();
        // Its own receiver installs the window; a daemon that registers meanwhile (another
        // port) changes nothing: no new target, no move.
        for b in 0..32 {
            let tag = rel.block(b);
            assert_eq!(
                f.lfc.install_prefetched(&tag, 0, &synthetic_page(tag, 16)),
                InstallOutcome::Installed
            );
        }
        f.lfc
            .register_daemon("127.0.0.1:7001".parse().unwrap(), 2, 0, start);
        let mut wire = VecDeque::new();
        let mut now = start;
        for b in 0..32 {
            assert_eq!(
                read(&mut d, &f.lfc, &mut wire, b, &mut now),
                ReadSource::Hit
            );
        }
        assert!(drain(&mut d)
            .iter()
            .all(|t| !matches!(t, Transmit::Target { .. })));
        assert_eq!(d.path(), PrefetchPath::Udp, "{:?}", d.state_log());
        // The daemon goes stale again: still nothing. Then its own pages stop coming: its
        // own rules take it to TCP pipelining.
        now += lfc::DAEMON_STALE_NS;
        for b in 32..64 {
            read(&mut d, &f.lfc, &mut wire, b, &mut now);
            if d.path() == PrefetchPath::TcpPipelined {
                break;
            }
        }
        assert_eq!(d.path(), PrefetchPath::TcpPipelined, "{:?}", d.state_log());
        assert!(!d.awaits_udp() && !d.expects_by_udp(&rel.block(63)));
        assert!(
            d.state_log().iter().all(|c| !c.reason.contains("daemon")),
            "{:?}",
            d.state_log()
        );
    }

    #[test]
    fn a_refused_target_moves_to_tcp_for_good_and_sends_no_extension_message_again() {
        let f = fixture(true);
        f.lfc.daemon_heartbeat(T0);
        let mut d = Driver::new(ReadPathConfig::default(), None, &f.lfc, T0);
        assert_eq!(d.path(), PrefetchPath::Udp);
        d.prefetch(&f.lfc, synthetic_rel(0), 0..64, T0);
        let sent = drain(&mut d);
        assert_eq!(sent[0], Transmit::Target { udp_port: 7000 });
        // The server does not speak the extension: the window's prefetches, never sent, go
        // to the pipeline at once.
        let mut out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
        let h = d
            .on_response(&f.lfc, Response::TargetRefused, &mut out, T0)
            .unwrap();
        assert_eq!(h.next, None);
        assert_eq!(d.path(), PrefetchPath::TcpPipelined);
        assert!(d
            .state_log()
            .last()
            .unwrap()
            .reason
            .contains("does not support UDP prefetch"));
        let mut wire: VecDeque<u32> = get_pages(&drain(&mut d)).into();
        assert_eq!(wire.len(), 64);
        // A live daemon, a restarted one and the probe backoff passing change nothing: reads
        // and top-ups send GetPages only, and no read waits.
        let mut now = T0;
        for b in 0..512u32 {
            f.lfc.daemon_heartbeat(now);
            if b == 200 {
                f.lfc
                    .register_daemon("127.0.0.1:7001".parse().unwrap(), 2, 0, now);
            }
            if b % 32 == 0 {
                let distance = d.prefetch_distance(128);
                d.prefetch(&f.lfc, synthetic_rel(0), b..(b + distance).min(512), now);
                let sent = drain(&mut d);
                assert!(
                    sent.iter().all(|t| matches!(t, Transmit::GetPage { .. })),
                    "{sent:?}"
                );
                wire.extend(get_pages(&sent));
            }
            let before = now;
            assert_eq!(
                read(&mut d, &f.lfc, &mut wire, b, &mut now),
                ReadSource::Tcp
            );
            assert_eq!(now, before, "no read waits");
            now += 100 * MS;
        }
        assert_eq!(d.path(), PrefetchPath::TcpPipelined);
    }

    #[test]
    fn a_pipelined_page_modified_after_its_request_is_requested_again() {
        let f = fixture(false);
        let mut d = Driver::new(ReadPathConfig::default(), None, &f.lfc, T0);
        let tag = synthetic_rel(0).block(0);
        d.prefetch(&f.lfc, tag.rel, 0..1, T0);
        assert_eq!(get_pages(&drain(&mut d)), [0]);
        let mut out: Box<Page> = Box::new([0u8; PAGE_SIZE]);
        // Another backend writes the page at LSN 100 before the response is read.
        f.lfc.set_lwlsn(&tag, 100).unwrap();
        assert_eq!(d.start_read(&f.lfc, tag, &mut out, T0), Poll::AwaitResponse);
        let old = synthetic_page(tag, 16);
        let h = d
            .on_response(&f.lfc, Response::Page { tag, page: &old }, &mut out, T0)
            .unwrap();
        assert_eq!(h.next, Some(Poll::AwaitResponse));
        assert!(!h.installed, "an older version never enters the LFC");
        let again = drain(&mut d);
        assert!(
            matches!(
                again[..],
                [Transmit::GetPage {
                    not_modified_since: 100,
                    ..
                }]
            ),
            "{again:?}"
        );
        let new = synthetic_page(tag, 100);
        let h = d
            .on_response(&f.lfc, Response::Page { tag, page: &new }, &mut out, T0)
            .unwrap();
        assert_eq!(h.next, Some(Poll::Done(ReadSource::Tcp)));
        assert_eq!(crate::protocol::page::page_lsn(&out), 100);
    }
}
