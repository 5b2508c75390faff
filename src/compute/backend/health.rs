//! Whether the UDP path delivers, per backend (ARCHITECTURE §6): the state machine that moves a
//! backend's prefetch window to TCP pipelining when it does not, and back when it does again.
//!
//! Owns: the path in use, the evidence (daemon liveness from the LFC header, own prefetches
//! arriving or not, loss rate), the probe schedule and the log of changes. Touches no socket,
//! no clock and no cache: the driver (`backend::driver`) feeds it observations with `now`.
//!
//! Best effort must never cost more than the TCP path it replaces: every signal that UDP is
//! not delivering moves the window to TCP within a few reads, and a failed probe costs no wait
//! (probe pages are fetched by TCP in their turn when they did not arrive).

use std::time::Duration;

/// Prefetches among the last `MISS_HISTORY` a read looked for whose reads found nothing (waits
/// ran out): UDP is not delivering (daemon dead or paused, sender backlogged, port wrong, a
/// link losing most pages). A miss is rare on a working path (a page lost past three retries:
/// about 1 in 8000 at 5 % loss), and each costs a whole wait budget (up to 4 ms) and then a
/// round trip, so two decide: in the simulator a daemon paused three times cost three misses
/// each, more than TCP pipelining's whole lead. Not only two in a row: on a link losing half
/// its datagrams, misses alternated with hits, and a backend paid three or four of them (a
/// wait and a round trip each) before any other rule had seen enough reads.
pub const MISSES_TO_DEGRADE: u32 = 2;
/// How many of the latest prefetches a read looked for `MISSES_TO_DEGRADE` counts over (the
/// bits of `UdpHealth::recent_misses`).
pub const MISS_HISTORY: u32 = u8::BITS;
/// Smoothed share of own prefetches that needed a retry or never came, above which TCP
/// pipelining is cheaper: each loss costs a retry datagram and usually a wait, and at this
/// rate a scan spends more time recovering than the TCP round trip it saves.
pub const LOSS_TO_DEGRADE: f64 = 0.3;
/// Smoothing of that share, per own read (about the last 128 reads weigh). Losses come in
/// bursts: a GSO train of datagrams crosses a veth (and many NICs' queues) as one packet and
/// is dropped as one, eight pages at MTU 9000. Over the last 32 reads, two such bursts close
/// together were half of the samples, and `bench net` at 5 % packet loss left UDP with "30 %
/// of prefetches lost" in most runs.
const LOSS_EWMA_ALPHA: f64 = 1.0 / 128.0;
/// Own reads before the loss share may decide anything.
const LOSS_MIN_SAMPLES: u32 = 32;
/// Backoff between probes of the UDP path while on TCP: the first probe soon (a restarted
/// daemon is back in milliseconds), doubling to a second.
pub const PROBE_BACKOFF_MIN_NS: u64 = 10_000_000;
pub const PROBE_BACKOFF_MAX_NS: u64 = 1_000_000_000;
/// Most pages a probe requests by UDP; at least three quarters of them must arrive to return
/// to UDP.
pub const PROBE_PAGES: usize = 8;
/// Fewest probe pages that can pass a probe: one or two arriving says little of a lossy link
/// (in the simulator a backend returned to a link losing 14 % on "1/1 probe pages arrived",
/// and paid for it again). A probe left with fewer pages to check is no evidence.
pub const PROBE_MIN_PAGES: usize = 3;
/// Bound of the log of path changes kept for the report: its first entry (where the backend
/// started) and the latest changes; the ones in between are only counted (`changes`). The
/// first 32 alone were kept before: a backend that changed path more often (`bench hol`'s busy
/// reader, 30–56 times a run) reported its 32nd change as its last, and a long-lived backend
/// none of the changes that explain the path it is on now.
pub const MAX_STATE_LOG: usize = 64;
/// Once both paths were measured, a backend on UDP whose reads take this many times as long
/// as they took on TCP pipelining (their pace: the mean of the reads' own time over a window,
/// `Pace`) moves to TCP: waits that mostly succeed late cost as much as waits that fail, and a
/// backlogged sender produces exactly that mix, which no count of consecutive misses sees.
/// The time reads spend blocked is no criterion on its own: at 5 % loss a UDP scan spent 80 %
/// of its time blocked and still ran 1.4× as fast as TCP pipelining, whose reads block too.
pub const SLOWER_THAN_TCP_TO_DEGRADE: f64 = 1.25;
/// Consecutive measured windows that must be over that bound, each on its own and in the
/// smoothed pace, for it to move the backend: one window of a few milliseconds weighs a quarter
/// in the smoothed pace, and `bench hol`'s busy reader, UDP the faster path overall, left it on
/// single windows of 21–28 µs a read against 5–6 on TCP. Four, not two: its stretches of a few
/// milliseconds of slow UDP reads (10–18 µs a read against 5–8) still made pace verdicts, each
/// a 10 ms stay on TCP pipelining with the other backend's GetPages queued behind its pipeline;
/// over 18 alternated pairs of `bench hol` the busy/idle p99 fell from 1.79 to 1.61 (median;
/// lower in 13), busy / tcp-pipelined-busy from 0.70 to 0.62, foreground reads made on TCP from
/// 124 to 85. A path that turned slower for good is still left, four windows (8–20 ms) on.
pub const SLOW_WINDOWS_TO_DEGRADE: u32 = 4;
/// Share of a UDP window's time (its reads' cycles) its reads spent blocked (waiting for a
/// prefetch, or for a GetPage after one failed; foreground reads left out), at or above which
/// UDP may cost the application more than TCP pipelining would, so that TCP's pace is measured
/// (`calibration`) when none is known or it is due again. Below it, it cannot: a window's time
/// is the application's own time between reads plus the reads' CPU, their foreground GetPages
/// and their blocked time; on TCP pipelining the application's time is the same, a read costs
/// at least the CPU of a read that hits the LFC (a response to receive and install, a page to
/// copy) and a foreground read at least its GetPage, so the application runs at most
/// `1 / (1 - share)` times as long on UDP as on TCP — under `SLOWER_THAN_TCP_TO_DEGRADE` below
/// this share. (The pace a calibration then compares is the reads' own time, stricter: its
/// ratio is at least the application's.) A healthy path whose prefetches are in the cache
/// before their reads never blocks that long and never pays for a calibration.
pub const CALIBRATE_BLOCKED_SHARE: f64 = 1.0 - 1.0 / SLOWER_THAN_TCP_TO_DEGRADE;
/// Time between two reads of the application's own (a read's cycle less its own time) at or
/// above which a calibration under way measures again after a transient (`on_read`): the
/// answers to a full pipeline take a few milliseconds.
pub const CALIBRATION_PAUSE_NS: u64 = 5_000_000;
/// A calibration's measured TCP window this many times as slow a read as UDP's pace is not
/// taken as TCP's pace but as its start, and the next window is measured instead (once): a
/// pipeline still filling (its first answers a round trip away, the page server still working
/// off the UDP window's prefetches) made TCP pipelining "190.3 µs" and "26.7 µs" a read at a
/// scan's first calibration at MTU 1500, where its steady pace was 4–8 µs, and kept scans
/// that ran at 0.75–0.8 × TCP pipelining on UDP. Twice, because a steady pipeline never
/// reads that much slower than the UDP path it is compared with: a calibration starts only
/// where UDP's reads block a fifth of their time or more.
const TCP_START_IMPLAUSIBLE: f64 = 2.0;
/// A calibration takes a backend whose UDP reads are losing pages (at least
/// `CALIBRATION_LOSS_SHARE` of them retried or failed, `loss_share`) back to UDP only when
/// UDP's pace is at most this many times TCP pipelining's, both just measured; above it, the
/// backend stays on TCP. A path that loses nothing keeps the pace verdict's wider
/// `SLOWER_THAN_TCP_TO_DEGRADE`. At 1.25 a scan at 5 % loss, whose UDP reads cost it about 15 %
/// more than TCP pipelining with the LFC store, returned to UDP at every calibration and
/// finished at 0.84–0.89 × tcp-pipelined in five of nine alternated `bench scan --delays 200
/// --drops 0.05 --repeat 3` runs (the forty-third session); at 1.10 it stayed on TCP and made
/// 0.96–1.04 × in all nine (mean 1.00 against 0.92). Without loss the narrower margin cost: a
/// single TCP window of 2 ms is noisy (2.8–5.3 µs a read where its steady pace is 3.9), and
/// scans losing nothing stayed on TCP pipelining at a calibration in 2 of 9 runs, 0.01 below
/// the wider margin's mean; losses are a cause of UDP's slower pace that persists, noise is
/// not.
const CALIBRATION_MARGIN: f64 = 1.10;
/// Share of UDP's reads retried or failed (`loss_share`) from which a calibration judges with
/// `CALIBRATION_MARGIN`: 5 % drop measures about 0.05, none well under 0.01.
const CALIBRATION_LOSS_SHARE: f64 = 0.02;
/// Backoff between calibrations while UDP keeps proving faster: conditions change (a server
/// gets busy, a link starts losing), so TCP's pace is measured again, less and less often...
pub const CALIBRATION_BACKOFF_MIN_NS: u64 = 50_000_000;
pub const CALIBRATION_BACKOFF_MAX_NS: u64 = 2_000_000_000;
/// ... and never sooner than this many times the last calibration's length after it: a
/// calibration's reads go at TCP's pace, so this bounds what calibrating costs a UDP path that
/// is faster (at most 1/40 of its time, 2.5 %, on TCP; at a 1.4× lead, under 1 % of its time).
pub const CALIBRATION_SPACING: u64 = 40;
/// Share of a window's reads on UDP that waited long (half a GetPage round trip or more) for a
/// prefetch requested longer than a wait budget earlier (one still in flight when its read came),
/// at or above which the backend moves to TCP: the path is not delivering ahead of the reader (a
/// backlogged or paced sender), and TCP pipelining's responses come from the connection, not from
/// behind the queue. Loss makes few reads wait, however long (5 % loss: about 5 % of reads); a
/// healthy path 1–2 %.
pub const WAITED_SHARE_TO_DEGRADE: f64 = 0.5;
/// Share of a window's time that went to reads UDP failed (a wait that ran out, or an own
/// prefetch lost past its retries, then a synchronous GetPage), at or above which the backend
/// moves to TCP, given at least `LOST_READS_TO_DEGRADE` such reads: TCP pipelining would have
/// had those pages in flight. No other rule sees every such path. One that loses some of its
/// pages while its window has shrunk to a few (no room to retry ahead of the reader)
/// interleaves each miss with hits, so misses are never consecutive; one whose losses are all
/// known (overtaken) falls back without a wait, one 4 ms GetPage per read, and its loss share
/// needs 32 reads to say anything; with no TCP pace measured, the pace rule is silent. In the
/// simulator such backends ran two to three times as long as TCP pipelining. A healthy path
/// rarely fails a read at all (a page lost past three retries: about 1 in 8000 at 5 % loss).
pub const LOST_SHARE_TO_DEGRADE: f64 = 0.5;
const LOST_READS_TO_DEGRADE: u32 = 2;
/// Reads are judged over windows of at least this many reads and this much time, so that one
/// wait among fast hits (a 50 µs late hit between 7 µs reads) decides nothing; or, when reads
/// are slow (each a round trip of milliseconds), of a few reads over a longer time, so that
/// finding out does not take sixteen slow reads.
const SHARE_WINDOW_READS: u32 = 16;
const SHARE_WINDOW_NS: u64 = 2_000_000;
const SLOW_WINDOW_READS: u32 = 3;
const SLOW_WINDOW_NS: u64 = 5_000_000;
/// The longest a path's transient (`UdpHealth::set_transient_reads`) lasts: when reads are
/// slow (each waits), the pages requested ahead take long to read and the path has long been
/// in its steady state; in the simulator a workload of a few hundred slow reads never left a
/// UDP path slower than TCP pipelining, counted in reads alone.
const TRANSIENT_MAX_NS: u64 = 5_000_000;
/// ... and while UDP's window grows (from `read_path::INITIAL_WINDOW` to the distance wanted,
/// or back after a cut), its transient runs on, `transient_reads` reads past its latest
/// growth, for at most this long from the path's first read: the pages read until then were
/// requested by a shorter window, and it is the path's start, not its pace. At a 200 µs
/// service delay a scan's window took 8–13 ms to grow from 32 pages to 512, its reads 4–12 µs
/// each against 2.3–3.9 µs after; counted in UDP's pace, the first calibration compared that
/// with TCP pipelining's steady pace and left UDP in 6 of 12 standalone scans (0.04–0.70 of
/// their pages by UDP, 189–237k pages/s, against 230–247k for those that stayed; 2 of 12
/// with this rule). Bounded, so that a window growing slowly on slow reads does not keep the
/// pace unjudged.
const TRANSIENT_GROWING_MAX_NS: u64 = 20_000_000;
/// Measured windows of UDP reads a pace verdict (`SLOWER_THAN_TCP_TO_DEGRADE`) or a
/// calibration needs, judged on their smoothed pace (`Pace::smoothed`), not on one window: a
/// window is 2 ms, and a healthy scan's UDP windows ranged over 1.0–3.7 µs a read (a daemon
/// thread scheduled late, a burst of installs into cold frames) around a mean of 2.0, against
/// 2.2–2.6 µs on TCP pipelining. Any one of them above 1.25 × TCP's took the scan to TCP
/// pipelining, and a calibration at 5 ms compared UDP's first windows with TCP's steady state:
/// `bench degrade`'s healthy scans ran on TCP for most of their pages, 1.01–1.10 × TCP
/// pipelining, where the same scans kept on UDP ran at 1.22–1.24 ×.
const PACE_MIN_WINDOWS: u32 = 4;
/// Weight of a new window in the smoothed pace once `PACE_MIN_WINDOWS` are in (a plain mean
/// before that).
const PACE_SMOOTHING: f64 = 1.0 / PACE_MIN_WINDOWS as f64;
/// Reads on UDP after a passed probe during which one miss sends the backend back to TCP: a
/// probe of a few pages is weak evidence on a link that loses a third of them, and in the
/// simulator backends that needed two misses to leave again paid a wait and a round trip for
/// each, on every return, more than TCP pipelining's whole lead.
const PROBATION_READS: u64 = 256;
/// Reads on UDP after which leaving it again resets the probe backoff: a path that passed a
/// probe but cannot hold its own for this long is probed less and less often (and, for the
/// same reason, the stay on TCP after a pace verdict, `PACE_STAY_MIN_NS`).
const UDP_PROVEN_READS: u64 = 4096;
/// How long a backend stays on TCP pipelining after its UDP reads were judged slower than
/// TCP's (`SLOWER_THAN_TCP_TO_DEGRADE`) while its latest calibration had found UDP the faster:
/// then it returns to UDP by itself, and UDP's pace is judged again. Doubling while UDP is
/// judged slower again before it holds for `UDP_PROVEN_READS`, up to the longest. A probe
/// cannot judge this: UDP delivers, and what it measures is whether a few prefetches beat a
/// full TCP pipeline to the page server. On a page server busy with that very pipeline they do
/// not: `bench hol`'s busy reader, sent to TCP by a few milliseconds of slow UDP reads (a
/// stalled sender, 13–39 µs a read against 5–6), saw its probes fail with 0 of 8 pages or find
/// no range long enough to probe, and stayed on TCP for 1.0–1.5 s, its pipeline ahead of every
/// foreground read of the other backend.
const PACE_STAY_MIN_NS: u64 = 10_000_000;
const PACE_STAY_MAX_NS: u64 = 1_000_000_000;

/// Which transport brings the pages of a backend's prefetch window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrefetchPath {
    /// Prefetch by UDP into the LFC; reads look in the LFC.
    Udp,
    /// Pipelined GetPage on the backend's TCP connection, as Neon's compute does.
    TcpPipelined,
}

/// One move between the paths, for the human report and `scan --json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StateChange {
    /// Since the backend started, milliseconds.
    pub at_ms: f64,
    pub to: PrefetchPath,
    pub reason: String,
}

/// What the LFC header says about the daemon, as the driver read it at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonView {
    /// None ever registered, or it stopped cleanly.
    Absent,
    /// Registered, heartbeat older than `lfc::DAEMON_STALE_NS`: dead or stopped.
    Stale {
        age_ns: u64,
    },
    Alive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Probe {
    /// When its Prefetch was sent (`probe_due`; a race's pages were requested before).
    sent_ns: u64,
    pages: usize,
    checked: usize,
    arrived: usize,
    /// A race after a first miss (`start_race`), not a probe sent from TCP.
    race: bool,
}

#[derive(Debug, Clone)]
pub struct UdpHealth {
    path: PrefetchPath,
    /// Another shard of this backend left UDP while this one was on it: its next prefetch read
    /// that does not arrive in time moves it too.
    sibling_left: bool,
    started_ns: u64,
    /// A prefetch port given by the operator: with no daemon registered, UDP is still tried.
    port_overridden: bool,
    /// The latest prefetches reads looked for, newest in bit 0: 1 a miss, 0 an arrival
    /// (`MISS_HISTORY` bits).
    recent_misses: u8,
    /// Prefetches reads found since the path was entered: before the first, UDP has shown
    /// nothing, and one miss decides (`on_miss`).
    arrivals_on_path: u64,
    loss_share: f64,
    loss_samples: u32,
    next_probe_ns: u64,
    backoff_ns: u64,
    probe: Option<Probe>,
    changes: u64,
    log: Vec<StateChange>,
    /// Per path (indexed by `PrefetchPath as usize`): how long its reads take.
    pace: [Pace; 2],
    /// Reads since the path was entered, and when it was entered.
    reads_on_path: u64,
    path_since_ns: u64,
    /// When the first read on the path ended: its transient (`in_transient`) runs from there,
    /// not from the move. `bench hol`'s busy reader was created half a second before its first
    /// read (the readers take turns), so its first window of prefetches, a round trip away,
    /// counted as UDP's steady pace and sent it to TCP for a calibration.
    first_read_ns: Option<u64>,
    /// The UDP path in use was entered by passing a probe (not at start-up).
    udp_by_probe: bool,
    /// On TCP for a calibration: measuring TCP pipelining's pace, to compare it with UDP's.
    calibration: Option<Calibration>,
    /// The latest move to TCP was a first miss's (`on_miss`): the window it moved may race
    /// UDP once (`start_race`).
    race_armed: bool,
    /// The daemon as last observed (`on_daemon`).
    view: DaemonView,
    next_calibration_ns: u64,
    calibration_backoff_ns: u64,
    /// The path the latest calibration chose (`conclude_calibration`), if one concluded.
    last_calibration: Option<PrefetchPath>,
    /// On TCP for UDP's pace (`PACE_STAY_MIN_NS`): when to return to UDP.
    return_at_ns: Option<u64>,
    /// The next such stay's length.
    pace_stay_ns: u64,
    /// Reads a path's transient lasts for a calibration (`set_transient_reads`): no UDP window
    /// starts a calibration before this many reads on UDP, and a calibration measures TCP
    /// only after this many reads on TCP.
    transient_reads: u64,
    /// Reads on UDP when its window last grew (`set_transient_reads`), 0 before it did.
    transient_grown_at: u64,
    /// UDP's transient was running at its latest read: when it ends, the pace measured so far
    /// is forgotten (`Pace::forget_measured`).
    udp_transient_running: bool,
    /// Consecutive windows on UDP over `SLOWER_THAN_TCP_TO_DEGRADE` × TCP's pace, each on its
    /// own and smoothed (`SLOW_WINDOWS_TO_DEGRADE`).
    slow_windows: u32,
}

/// A calibration under way (`CALIBRATE_BLOCKED_SHARE`): the backend left a UDP path whose reads
/// blocked much of the time for a couple of windows of TCP pipelining, and goes back to UDP
/// unless TCP's reads proved faster (`conclude_calibration`). Without it, a backend that
/// started on UDP never knew TCP's pace, and a path delivering every page but slowly (pages
/// split into 9 datagrams each, a daemon short of CPU) was never left: 0.24–0.33× TCP
/// pipelining's throughput in `bench net` at MTU 1500; in the simulator, backends on lossy
/// fragmented paths ran twice as long as TCP pipelining.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Calibration {
    started_ns: u64,
    /// UDP's pace (ns per read) in the window that started it.
    udp_ns: f64,
    /// TCP's pace is measured from the first window that starts after this many reads on TCP
    /// (`transient_reads` when the calibration began).
    measure_after_reads: u64,
    /// That window started (the pace's accumulators were reset for it).
    measuring: bool,
    /// When the application last paused (`CALIBRATION_PAUSE_NS`): the transient is counted
    /// again from there, in reads and in time.
    paused_ns: Option<u64>,
    /// A first measured window was set aside as TCP's start (`TCP_START_IMPLAUSIBLE`).
    extended: bool,
}

/// How one read went, for `UdpHealth::on_read`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadTiming {
    /// From the previous read's end to this one's: the backend's whole cycle. Of a sharded
    /// backend, from the previous read of any shard (`Driver::read_ended_elsewhere`), so that
    /// it holds none of the other shards' reads.
    pub cycle_ns: u64,
    /// From this read's start to its end: time blocked waiting for a prefetch or a response,
    /// and the read path's CPU between (receiving and installing the pipeline's responses on
    /// TCP). The read's own cost, which the paths' paces compare (`Pace`).
    pub blocked_ns: u64,
    /// The shell's time for the backend outside its reads' dated steps since its previous read
    /// (`Driver::io_outside_reads`: the previous read's last step's work and what it left to
    /// send, and `prefetch` calls): part of the reads' own cost, not time blocked.
    pub io_ns: u64,
    /// A foreground read: a GetPage, on UDP, for a page no prefetch covers (outside the
    /// backend's prefetch window, requested by nobody). It costs a GetPage on TCP pipelining
    /// too (behind the pipeline's responses), so its time counts in the pace but is not blocked
    /// time that TCP could save (`CALIBRATE_BLOCKED_SHARE`) nor a read that UDP failed.
    pub foreground: bool,
    /// It waited long for a prefetch requested more than a wait budget earlier.
    pub waited: bool,
    /// Its whole time when UDP failed it (a wait that ran out, or an own prefetch lost past
    /// its retries, then a GetPage); 0 otherwise.
    pub lost_ns: u64,
}

/// The reads of a path in windows (`SHARE_WINDOW_*` of reads and of the backend's time, read
/// cycles), and their pace: the mean of the reads' own time (`ReadTiming::blocked_ns` and
/// `io_ns`), not of their cycles. The application's time between reads is the same on either path, and a cycle
/// holds it: a reader that thinks between reads compared its think time (an interactive reader
/// in `bench hol`: windows of 5 ms with 4 reads, one of which held a 1 s pause while other
/// readers ran, "414768.9 µs each on UDP, 959.1 µs on TCP"), and a 1.25× margin on cycles let a
/// path whose reads cost a multiple of the other's pass when the application's time dominated.
/// What the pace leaves out is CPU outside the reads (sending prefetches, a daemon's threads
/// competing with the application), which the windows' shares below still see in cycles.
#[derive(Debug, Clone, Copy, Default)]
struct Pace {
    elapsed_ns: u64,
    reads: u32,
    waited: u32,
    /// The reads' own time, all of them (the pace).
    own_ns: u64,
    /// Their blocked time, foreground reads left out (`CALIBRATE_BLOCKED_SHARE`).
    blocked_ns: u64,
    /// Reads UDP failed in the window, and the time they took.
    lost: u32,
    lost_ns: u64,
    /// The previous window's failed reads, their time and its length: failed reads are
    /// judged over the last two windows, since a slow window closes after three reads and
    /// would otherwise never hold two failures however many there were.
    prev_lost: u32,
    prev_lost_ns: u64,
    prev_elapsed_ns: u64,
    /// Windows closed since the path was entered: the first one holds the move's transient
    /// (the other path's requests still draining, a window growing again) and decides nothing.
    windows: u32,
    /// The last closed window's pace, own ns per read.
    last: Option<f64>,
    /// The measured windows' pace since the path was entered, smoothed (`PACE_SMOOTHING`);
    /// every window but the first (`windows`) went into it.
    smoothed: Option<f64>,
}

/// A closed window: its share of reads that waited, and its mean time per read (`None` for
/// the first window after entering the path).
struct Window {
    waited_share: f64,
    /// Share of the window's time its reads spent blocked, foreground reads left out.
    blocked_share: f64,
    /// Share of the time of this window and the one before that went to reads UDP failed, and
    /// how many there were.
    lost_share: f64,
    lost: u32,
    mean_ns: Option<f64>,
    /// The smoothed pace of the path's measured windows, once `PACE_MIN_WINDOWS` are in.
    smoothed_ns: Option<f64>,
}

impl Pace {
    /// Adds a read; returns the window when this read closes it.
    fn add(&mut self, r: &ReadTiming) -> Option<Window> {
        self.elapsed_ns += r.cycle_ns;
        self.reads += 1;
        self.waited += u32::from(r.waited);
        // A read's blocked time is part of its cycle (the first read of a path may have
        // started before it, hence the bound).
        let blocked = r.blocked_ns.min(r.cycle_ns);
        self.own_ns += (r.blocked_ns + r.io_ns).min(r.cycle_ns);
        if !r.foreground {
            self.blocked_ns += blocked;
        }
        self.lost += u32::from(r.lost_ns > 0);
        self.lost_ns += r.lost_ns;
        let full = self.reads >= SHARE_WINDOW_READS && self.elapsed_ns >= SHARE_WINDOW_NS;
        let slow = self.reads >= SLOW_WINDOW_READS && self.elapsed_ns >= SLOW_WINDOW_NS;
        if !full && !slow {
            return None;
        }
        let mean = self.own_ns as f64 / f64::from(self.reads);
        let waited_share = f64::from(self.waited) / f64::from(self.reads);
        let blocked_share = self.blocked_ns as f64 / self.elapsed_ns.max(1) as f64;
        // A failed read is part of its cycle, so the share is at most one.
        let lost_share = (self.lost_ns + self.prev_lost_ns) as f64
            / (self.elapsed_ns + self.prev_elapsed_ns).max(1) as f64;
        let lost = self.lost + self.prev_lost;
        self.prev_lost = self.lost;
        self.prev_lost_ns = self.lost_ns;
        self.prev_elapsed_ns = self.elapsed_ns;
        self.elapsed_ns = 0;
        self.reads = 0;
        self.waited = 0;
        self.own_ns = 0;
        self.blocked_ns = 0;
        self.lost = 0;
        self.lost_ns = 0;
        self.windows += 1;
        let mean_ns = (self.windows > 1).then_some(mean);
        if let Some(m) = mean_ns {
            self.last = mean_ns;
            let measured = self.windows - 1;
            let weight = (1.0 / f64::from(measured)).max(PACE_SMOOTHING);
            self.smoothed = Some(self.smoothed.map_or(m, |s| s + weight * (m - s)));
        }
        let smoothed_ns = self.smoothed.filter(|_| self.windows > PACE_MIN_WINDOWS);
        Some(Window {
            waited_share,
            blocked_share,
            lost_share,
            lost,
            mean_ns,
            smoothed_ns,
        })
    }

    /// Forgets the measured pace, the open window included: the transient it held has just
    /// ended (`UdpHealth::in_transient`), so that window decides nothing, as a path's first
    /// does, and the ones after it are the pace.
    fn forget_measured(&mut self) {
        self.windows = 0;
        self.smoothed = None;
    }

    /// Starts a window afresh, the next one to close being measured (its mean is reported):
    /// what came before was a transient.
    fn restart_measured(&mut self) {
        self.restart();
        self.windows = 1;
    }

    /// The path is entered anew.
    fn restart(&mut self) {
        self.elapsed_ns = 0;
        self.reads = 0;
        self.waited = 0;
        self.own_ns = 0;
        self.blocked_ns = 0;
        self.lost = 0;
        self.lost_ns = 0;
        self.prev_lost = 0;
        self.prev_lost_ns = 0;
        self.prev_elapsed_ns = 0;
        self.windows = 0;
        self.smoothed = None;
    }
}

impl UdpHealth {
    /// Starts on TCP: the first daemon observation (`on_daemon`) decides.
    pub fn new(now_ns: u64, port_overridden: bool) -> Self {
        UdpHealth {
            path: PrefetchPath::TcpPipelined,
            started_ns: now_ns,
            port_overridden,
            recent_misses: 0,
            arrivals_on_path: 0,
            loss_share: 0.0,
            loss_samples: 0,
            next_probe_ns: now_ns,
            backoff_ns: PROBE_BACKOFF_MIN_NS,
            probe: None,
            changes: 0,
            log: Vec::new(),
            pace: [Pace::default(); 2],
            reads_on_path: 0,
            path_since_ns: now_ns,
            first_read_ns: None,
            udp_by_probe: false,
            calibration: None,
            race_armed: false,
            sibling_left: false,
            view: DaemonView::Absent,
            next_calibration_ns: now_ns,
            calibration_backoff_ns: CALIBRATION_BACKOFF_MIN_NS,
            last_calibration: None,
            return_at_ns: None,
            pace_stay_ns: PACE_STAY_MIN_NS,
            slow_windows: 0,
            transient_reads: 0,
            transient_grown_at: 0,
            udp_transient_running: true,
        }
    }

    pub fn path(&self) -> PrefetchPath {
        self.path
    }

    /// The mean own time per read (`ReadTiming::blocked_ns` and `io_ns`) of `path`'s last measured window
    /// (ns), if one was measured: the pace the 1.25× rule and a calibration compare.
    pub fn pace_ns(&self, path: PrefetchPath) -> Option<f64> {
        self.pace[path as usize].last
    }

    /// Logs why the backend starts where it starts (not counted as a change).
    pub fn note_start(&mut self, reason: &str) {
        self.log.push(StateChange {
            at_ms: 0.0,
            to: self.path,
            reason: reason.to_string(),
        });
    }

    pub fn changes(&self) -> u64 {
        self.changes
    }

    pub fn log(&self) -> &[StateChange] {
        &self.log
    }

    fn set(&mut self, to: PrefetchPath, now_ns: u64, reason: String) {
        if self.path == to {
            return;
        }
        self.path = to;
        self.changes += 1;
        self.recent_misses = 0;
        self.arrivals_on_path = 0;
        self.loss_share = 0.0;
        self.loss_samples = 0;
        self.probe = None;
        self.calibration = None;
        self.return_at_ns = None;
        self.race_armed = false;
        self.sibling_left = false;
        self.slow_windows = 0;
        if to == PrefetchPath::TcpPipelined {
            // UDP failing soon after it passed a probe: probe less often. Else (it held for
            // long, or this is its first failure) its failure is news: probe soon.
            self.backoff_ns = if self.udp_by_probe && self.reads_on_path < UDP_PROVEN_READS {
                (self.backoff_ns * 2).min(PROBE_BACKOFF_MAX_NS)
            } else {
                PROBE_BACKOFF_MIN_NS
            };
            self.next_probe_ns = now_ns + self.backoff_ns;
        }
        self.reads_on_path = 0;
        self.path_since_ns = now_ns;
        self.first_read_ns = None;
        self.transient_grown_at = 0;
        self.udp_transient_running = true;
        self.pace[to as usize].restart();
        self.note(now_ns, reason);
    }

    /// Logs `reason` for the path in use at `now_ns`. Bounded by `MAX_STATE_LOG`: a full log
    /// drops its oldest change, never its first entry (where the backend started).
    fn note(&mut self, now_ns: u64, reason: String) {
        if self.log.len() >= MAX_STATE_LOG {
            self.log.remove(1);
        }
        self.log.push(StateChange {
            at_ms: now_ns.saturating_sub(self.started_ns) as f64 / 1e6,
            to: self.path,
            reason,
        });
    }

    /// The daemon as the LFC header shows it. `restarted` is true when a daemon registered
    /// since the last observation (a new generation): worth a probe at once. Returns true when
    /// this observation moved the backend to TCP (the caller then moves its window).
    pub fn on_daemon(&mut self, view: DaemonView, restarted: bool, now_ns: u64) -> bool {
        self.view = view;
        match (self.path, view) {
            (PrefetchPath::Udp, DaemonView::Stale { age_ns }) => {
                let age = Duration::from_nanos(age_ns);
                self.set(
                    PrefetchPath::TcpPipelined,
                    now_ns,
                    format!("worker daemon not alive (heartbeat {age:.0?} old)"),
                );
                true
            }
            (PrefetchPath::Udp, DaemonView::Absent) if !self.port_overridden => {
                self.set(
                    PrefetchPath::TcpPipelined,
                    now_ns,
                    "no worker daemon serves this LFC".into(),
                );
                true
            }
            (PrefetchPath::TcpPipelined, DaemonView::Alive) if restarted => {
                // A (re)started daemon: probe now rather than after the backoff.
                self.backoff_ns = PROBE_BACKOFF_MIN_NS;
                self.next_probe_ns = now_ns;
                false
            }
            _ => false,
        }
    }

    /// A probe (or a race) of UDP is running.
    pub fn probing(&self) -> bool {
        self.probe.is_some()
    }

    /// May a probe start now? True only on TCP, when the backoff has passed and someone may be
    /// receiving (`view`), and no probe is running. The caller sends `pages`
    /// (`PROBE_MIN_PAGES` to `PROBE_PAGES`) by UDP and reports each with `on_probe_page`.
    pub fn probe_due(&mut self, view: DaemonView, pages: usize, now_ns: u64) -> bool {
        debug_assert!((PROBE_MIN_PAGES..=PROBE_PAGES).contains(&pages));
        // A calibration returns to UDP by its own verdict; a probe passing meanwhile would cut
        // the measurement short.
        if self.path != PrefetchPath::TcpPipelined
            || self.probe.is_some()
            || self.calibration.is_some()
            || !self.receiving(view)
            || now_ns < self.next_probe_ns
        {
            return false;
        }
        self.probe = Some(Probe {
            sent_ns: now_ns,
            pages,
            checked: 0,
            arrived: 0,
            race: false,
        });
        true
    }

    /// Whether a probe page's turn in the TCP pipeline at `now_ns`, the page not cached, fails
    /// it: only once UDP has had a GetPage round trip (`tcp_rtt_ns`, 0 if none was measured)
    /// since the probe was sent. A turn sooner than that comes before UDP could have brought
    /// the page (with room in the pipeline, in the call that sent its Prefetch), and the
    /// page's GetPage answer judges it instead.
    pub fn turn_judges_probe(&self, tcp_rtt_ns: u64, now_ns: u64) -> bool {
        tcp_rtt_ns > 0
            && self
                .probe
                .is_some_and(|p| now_ns >= p.sent_ns.saturating_add(tcp_rtt_ns))
    }

    /// Right after a first miss moved the backend to TCP (`on_miss`), its window's outstanding
    /// UDP prefetches go to the TCP pipeline: may `pages` of them race UDP, as a probe whose
    /// pages were requested by UDP before their GetPages? Each is reported with
    /// `on_probe_page` (arrived: UDP brought it before TCP did). If every one wins, the first
    /// page was late rather than UDP failing, and the backend returns to UDP at once (on
    /// probation). Every one, not a probe's three quarters: in the simulator a link losing
    /// 42 % won 7 of 8 (its window's datagrams came in bursts) and the return cost a wait. On
    /// a guest whose idle CPUs wake slowly, a fresh scan's first datagrams came 1.0–1.5 ms
    /// after their request (its first wait was 1 ms) in six runs of eight; each scan then ran
    /// on TCP, and on a page server busy with its GetPages every later probe failed.
    pub fn start_race(&mut self, pages: usize) -> bool {
        if !std::mem::take(&mut self.race_armed)
            || pages < PROBE_MIN_PAGES
            || self.path != PrefetchPath::TcpPipelined
            || self.probe.is_some()
        {
            return false;
        }
        self.probe = Some(Probe {
            // Requested before the move: its pages' turns come a round trip late or more.
            sent_ns: 0,
            pages: pages.min(PROBE_PAGES),
            checked: 0,
            arrived: 0,
            race: true,
        });
        true
    }

    /// Whether someone may be receiving UDP prefetches, as `view` shows the daemon.
    fn receiving(&self, view: DaemonView) -> bool {
        match view {
            DaemonView::Alive => true,
            DaemonView::Absent => self.port_overridden,
            DaemonView::Stale { .. } => false,
        }
    }

    /// A probe page was judged: `arrived` if UDP delivered it by its turn in the TCP pipeline,
    /// or, when that turn came less than a GetPage round trip after the probe was sent, before
    /// its GetPage's answer (`driver::pump`). After the last one, the probe passes (back to
    /// UDP) or the backoff doubles.
    pub fn on_probe_page(&mut self, arrived: bool, now_ns: u64) {
        let Some(p) = &mut self.probe else {
            return;
        };
        p.checked += 1;
        p.arrived += usize::from(arrived);
        self.conclude_probe(now_ns);
    }

    /// Once every page of the probe was checked: back to UDP if three quarters arrived, else
    /// a longer backoff. A probe left with fewer than `PROBE_MIN_PAGES` to check is no
    /// evidence either way.
    fn conclude_probe(&mut self, now_ns: u64) {
        let Some(Probe {
            pages,
            checked,
            arrived,
            race,
            ..
        }) = self.probe
        else {
            return;
        };
        if checked < pages {
            return;
        }
        self.probe = None;
        if race && (pages < PROBE_MIN_PAGES || arrived < pages) {
            // Lost or too few to tell: the first miss stands, and its move set the next probe.
        } else if pages < PROBE_MIN_PAGES {
            self.next_probe_ns = now_ns + self.backoff_ns;
        } else if 4 * arrived >= 3 * pages {
            self.udp_by_probe = true;
            let reason = if race {
                format!(
                    "the first prefetch read was late, not lost: UDP brought {arrived} of \
                     {pages} pages of its window before TCP"
                )
            } else {
                format!("UDP delivers again ({arrived}/{pages} probe pages arrived)")
            };
            self.set(PrefetchPath::Udp, now_ns, reason);
            if race {
                // UDP has delivered on this path: a miss now is probation's to judge, not a
                // first miss that races again (no flapping between the two).
                self.arrivals_on_path = arrived as u64;
            }
        } else {
            self.backoff_ns = (self.backoff_ns * 2).min(PROBE_BACKOFF_MAX_NS);
            self.next_probe_ns = now_ns + self.backoff_ns;
        }
    }

    /// A probe page that could not be requested (cached already, queue full): the probe checks
    /// one page fewer.
    pub fn skip_probe_page(&mut self, now_ns: u64) {
        let Some(p) = &mut self.probe else {
            return;
        };
        p.pages -= 1;
        self.conclude_probe(now_ns);
    }

    /// The read of a UDP prefetch (own, or waited for) found it: `retried` when it needed a
    /// retry (a loss).
    pub fn on_arrival(&mut self, retried: bool) {
        self.recent_misses <<= 1;
        self.arrivals_on_path += 1;
        self.loss_sample(retried);
        if self.calibration.is_some() {
            // On TCP for a calibration, a read served by a page UDP brought before the move is
            // UDP's pace, not TCP's: TCP's is measured from the reads after the last such one
            // (a transient window, then the measured one). A window of prefetched pages can
            // outlast the transient window, and TCP pipelining then looked several times as
            // fast as it was (16 µs a read, against UDP's 145 µs, in `tests/shards.rs` on a
            // busy machine), taking a healthy shard off UDP.
            self.pace[PrefetchPath::TcpPipelined as usize].restart();
        }
    }

    /// The page whose read just missed (`on_miss`, the latest) arrived by UDP after all, before
    /// its GetPage's answer: late, not lost, so the miss no longer counts toward
    /// `MISSES_TO_DEGRADE`, and UDP delivered. On a loaded machine a healthy shard's pages
    /// came a little after their reads gave up on them, and two such in eight took the shard
    /// off UDP (`tests/shards.rs`); a path whose pages keep coming late is the pace rules'
    /// (`SLOWER_THAN_TCP_TO_DEGRADE`) to judge.
    pub fn on_late_arrival(&mut self) {
        self.recent_misses &= !1;
        self.arrivals_on_path += 1;
    }

    /// The read of a UDP prefetch (own, or another backend's it waited for) gave up on it.
    /// `daemon_delivers`: the daemon has installed datagrams (anyone's) since the backend
    /// started, or this very page came and was evicted. Returns true when that moved the
    /// backend to TCP: at once when nothing shows that UDP works — none of its own prefetches
    /// arrived since it moved to UDP and the daemon delivers nothing, or it came back by a probe
    /// less than `PROBATION_READS` reads ago — since a wait that ran out is then the evidence
    /// that it does not (in the simulator, backends whose links were partitioned from their
    /// start paid two waits and two round trips per shard before leaving, 1.3–2.5× TCP
    /// pipelining's time); else after `MISSES_TO_DEGRADE` of the last `MISS_HISTORY`. A daemon
    /// that delivers to others is worth the second miss: on a loaded machine a healthy shard's
    /// first page came after its first wait (`tests/shards.rs`).
    pub fn on_miss(&mut self, now_ns: u64, daemon_delivers: bool) -> bool {
        self.recent_misses = (self.recent_misses << 1) | 1;
        self.loss_sample(true);
        if self.path != PrefetchPath::Udp {
            return false;
        }
        if self.arrivals_on_path == 0 && !daemon_delivers {
            self.set(
                PrefetchPath::TcpPipelined,
                now_ns,
                "the first prefetch read on UDP did not arrive in time".into(),
            );
            self.race_armed = true;
            return true;
        }
        if self.fails_probation(now_ns) {
            return true;
        }
        if self.sibling_left {
            self.set(
                PrefetchPath::TcpPipelined,
                now_ns,
                "another shard left UDP, and a prefetch read on this one did not arrive in time"
                    .into(),
            );
            return true;
        }
        let n = self.recent_misses.count_ones();
        if n >= MISSES_TO_DEGRADE {
            self.set(
                PrefetchPath::TcpPipelined,
                now_ns,
                format!("{n} of the last {MISS_HISTORY} prefetches read did not arrive in time"),
            );
            return true;
        }
        self.check_loss(now_ns)
    }

    /// Another shard of this backend left UDP: while this one stays on UDP, one prefetch read
    /// that does not arrive in time moves it too (its daemon and compute are the other's).
    pub fn on_sibling_left_udp(&mut self) {
        self.sibling_left = self.path == PrefetchPath::Udp;
    }

    /// Whether another shard of this backend left UDP while this one stayed (and still is) on
    /// it: then one prefetch read that does not arrive in time moves this one too.
    pub fn sibling_left(&self) -> bool {
        self.sibling_left && self.path == PrefetchPath::Udp
    }

    /// Another shard left UDP (`sibling_left`), and this one's oldest outstanding prefetch is
    /// already overdue: the miss its read would be (`on_miss` with `sibling_left`) is certain,
    /// so the backend moves now, before its reader gets there and pays a round trip for the
    /// window.
    pub fn on_sibling_overdue(&mut self, now_ns: u64) {
        debug_assert!(self.sibling_left());
        self.set(
            PrefetchPath::TcpPipelined,
            now_ns,
            "another shard left UDP, and this one's oldest prefetch is overdue".into(),
        );
    }

    /// On UDP by a probe passed less than `PROBATION_READS` reads ago: one prefetch that did
    /// not arrive in time moves the backend back to TCP. Returns true when it did. (A lost
    /// page does not: it is fetched by the pipeline, and a link losing a few percent would
    /// fail every probation.)
    fn fails_probation(&mut self, now_ns: u64) -> bool {
        if self.path != PrefetchPath::Udp
            || !self.udp_by_probe
            || self.reads_on_path >= PROBATION_READS
        {
            return false;
        }
        self.set(
            PrefetchPath::TcpPipelined,
            now_ns,
            format!(
                "a prefetch did not arrive in time within {} reads of a passed probe",
                self.reads_on_path
            ),
        );
        true
    }

    fn loss_sample(&mut self, lost: bool) {
        let x = if lost { 1.0 } else { 0.0 };
        self.loss_share += LOSS_EWMA_ALPHA * (x - self.loss_share);
        self.loss_samples = self.loss_samples.saturating_add(1);
    }

    /// Checks the loss share after a sample; true when it moved the backend to TCP.
    pub fn check_loss(&mut self, now_ns: u64) -> bool {
        if self.path == PrefetchPath::Udp
            && self.loss_samples >= LOSS_MIN_SAMPLES
            && self.loss_share > LOSS_TO_DEGRADE
        {
            let pct = self.loss_share * 100.0;
            self.set(
                PrefetchPath::TcpPipelined,
                now_ns,
                format!("{pct:.0} % of prefetches lost"),
            );
            return true;
        }
        false
    }

    /// Reads done on the current path since the last change.
    pub fn reads_on_path(&self) -> u64 {
        self.reads_on_path
    }

    /// How long the current path has been in use at `now_ns`.
    pub fn time_on_path_ns(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.path_since_ns)
    }

    /// A read finished (`ReadTiming`). On UDP, returns true when a closed window moved the
    /// backend to TCP: most of its reads waited (`WAITED_SHARE_TO_DEGRADE`), reads UDP failed
    /// took most of its time (`LOST_SHARE_TO_DEGRADE`), reads took longer than they did on TCP
    /// pipelining (`SLOWER_THAN_TCP_TO_DEGRADE`), or they blocked long enough that TCP's pace
    /// is to be measured (`CALIBRATE_BLOCKED_SHARE`). On TCP during a calibration, a measured
    /// window concludes it.
    pub fn on_read(&mut self, read: &ReadTiming, now_ns: u64) -> bool {
        self.reads_on_path += 1;
        self.first_read_ns.get_or_insert(now_ns);
        if self.path == PrefetchPath::Udp && self.reads_on_path == UDP_PROVEN_READS {
            // UDP holds its own: a later stay on TCP for its pace starts short again.
            self.pace_stay_ns = PACE_STAY_MIN_NS;
        }
        if self.path == PrefetchPath::TcpPipelined
            && self.return_at_ns.is_some_and(|t| now_ns >= t)
            && self.receiving(self.view)
        {
            let stayed_ms = now_ns.saturating_sub(self.path_since_ns) / 1_000_000;
            // Not on probation: UDP delivered all along, it is its pace that is in question.
            self.udp_by_probe = false;
            self.set(
                PrefetchPath::Udp,
                now_ns,
                format!(
                    "back to UDP after {stayed_ms} ms on TCP pipelining, to measure its pace again"
                ),
            );
            return false;
        }
        let reading_ns = self.reading_ns(now_ns);
        if let Some(c) = &mut self.calibration {
            if read.cycle_ns.saturating_sub(read.blocked_ns) >= CALIBRATION_PAUSE_NS {
                // The application paused: meanwhile the pipeline's answers all came, and the
                // reads after it take them at no cost of their own. Measured from there, a
                // calibration found TCP at 0.0 µs a read, and `bench hol`'s busy reader (idle
                // while the other cases take their turn) stayed on TCP for good. The transient
                // is counted again from the pause.
                c.measuring = false;
                c.measure_after_reads =
                    self.reads_on_path + self.transient_reads.max(u64::from(SHARE_WINDOW_READS));
                c.paused_ns = Some(now_ns);
            }
            let transient_ns = c.paused_ns.map_or(reading_ns, |p| now_ns.saturating_sub(p));
            if !c.measuring
                && (self.reads_on_path > c.measure_after_reads || transient_ns >= TRANSIENT_MAX_NS)
            {
                // TCP's transient is over: the pages UDP had brought ahead of the reader, read
                // as hits, are behind it and the pipeline is full. Measured from here.
                c.measuring = true;
                self.pace[PrefetchPath::TcpPipelined as usize].restart_measured();
            }
        }
        if self.path == PrefetchPath::Udp {
            // UDP's pace is its reads after its transient, as TCP's in a calibration is: its
            // windows so far measured its start (the first prefetches a round trip away, a
            // window still growing), slower than the path's steady state.
            let running = self.in_transient(now_ns);
            if self.udp_transient_running && !running {
                self.pace[PrefetchPath::Udp as usize].forget_measured();
            }
            self.udp_transient_running = running;
        }
        let Some(window) = self.pace[self.path as usize].add(read) else {
            return false;
        };
        if self.path == PrefetchPath::TcpPipelined {
            if self.calibration.is_some_and(|c| c.measuring) {
                self.conclude_calibration(&window, now_ns);
            }
            return false;
        }
        if let Some((reason, pace)) = self.window_verdict(&window, now_ns) {
            self.set(PrefetchPath::TcpPipelined, now_ns, reason);
            if pace && self.last_calibration == Some(PrefetchPath::Udp) {
                self.stay_for_pace(now_ns);
            }
            return true;
        }
        self.calibrate_if_due(&window, now_ns)
    }

    /// On TCP for UDP's pace, which a calibration had found the faster: back by itself after
    /// the stay (`PACE_STAY_MIN_NS`), which doubles for the next.
    fn stay_for_pace(&mut self, now_ns: u64) {
        self.return_at_ns = Some(now_ns + self.pace_stay_ns);
        self.pace_stay_ns = (self.pace_stay_ns * 2).min(PACE_STAY_MAX_NS);
    }

    /// Starts a calibration after a measured UDP window whose reads blocked for
    /// `CALIBRATE_BLOCKED_SHARE` of its time or more, when one is due: on TCP for the windows
    /// it takes to measure TCP's pace (the first after a move is its transient). True when it
    /// moved the backend to TCP.
    fn calibrate_if_due(&mut self, window: &Window, now_ns: u64) -> bool {
        let Some(udp_ns) = window.smoothed_ns else {
            return false;
        };
        // A window already over the pace bound is judged by the next one, not measured anew.
        if window.blocked_share < CALIBRATE_BLOCKED_SHARE
            || now_ns < self.next_calibration_ns
            || self.in_transient(now_ns)
            || self.slow_windows > 0
        {
            return false;
        }
        self.set(
            PrefetchPath::TcpPipelined,
            now_ns,
            format!(
                "measuring TCP pipelining's pace: reads on UDP blocked {:.0} % of the time",
                window.blocked_share * 100.0
            ),
        );
        self.calibration = Some(Calibration {
            started_ns: now_ns,
            udp_ns,
            measure_after_reads: self.transient_reads,
            // With no transient known, TCP's first window is taken as its transient (`Pace`).
            measuring: self.transient_reads == 0,
            paused_ns: None,
            extended: false,
        });
        true
    }

    /// How many reads a path's transient lasts, for calibrations: the pages the backend
    /// requests ahead on UDP plus its TCP pipeline's reach (the driver updates it as its UDP
    /// window changes). Each path's first reads are the other path's work or its own start:
    /// after a move to TCP, the reads of the pages UDP had requested are hits (UDP's datagrams
    /// still landing) while the pipeline fills, and on UDP the first window of prefetches is
    /// one round trip away. Measured within a few milliseconds of a move (16 reads), a
    /// calibration compared UDP's start with TCP reading UDP's pages: at MTU 9000, 4.4 µs a
    /// read "on TCP" against 20–50 µs on UDP, and healthy paths that ran at 1.3–2.4× TCP
    /// pipelining when kept on UDP went to TCP for good.
    pub fn set_transient_reads(&mut self, reads: u64) {
        if reads > self.transient_reads && self.path == PrefetchPath::Udp && self.reads_on_path > 0
        {
            self.transient_grown_at = self.reads_on_path;
        }
        self.transient_reads = reads;
    }

    /// Whether the path in use is still in its transient (`set_transient_reads`): its first
    /// `transient_reads` reads, for at most `TRANSIENT_MAX_NS` from its first read, or as many
    /// past the latest growth of its window, for at most `TRANSIENT_GROWING_MAX_NS`.
    fn in_transient(&self, now_ns: u64) -> bool {
        let reading_ns = self.reading_ns(now_ns);
        let start = self.reads_on_path < self.transient_reads && reading_ns < TRANSIENT_MAX_NS;
        let growing = self.transient_grown_at > 0
            && self.reads_on_path < self.transient_grown_at + self.transient_reads
            && reading_ns < TRANSIENT_GROWING_MAX_NS;
        start || growing
    }

    /// How long the path has been read at `now_ns`: since its first read ended.
    fn reading_ns(&self, now_ns: u64) -> u64 {
        self.first_read_ns
            .map_or(0, |first| now_ns.saturating_sub(first))
    }

    /// The first measured TCP window of a calibration: back to UDP unless TCP pipelining's
    /// reads were faster by `SLOWER_THAN_TCP_TO_DEGRADE`, or by `CALIBRATION_MARGIN` while UDP
    /// loses pages (or nobody receives UDP now). The next
    /// calibration is due after the backoff, and no sooner than `CALIBRATION_SPACING` times
    /// this one's length.
    fn conclude_calibration(&mut self, window: &Window, now_ns: u64) {
        let (Some(c), Some(tcp_ns)) = (self.calibration, window.mean_ns) else {
            return;
        };
        if !c.extended && tcp_ns > TCP_START_IMPLAUSIBLE * c.udp_ns {
            if let Some(c) = &mut self.calibration {
                c.extended = true;
            }
            return;
        }
        self.calibration = None;
        let margin = if self.loss_share >= CALIBRATION_LOSS_SHARE {
            CALIBRATION_MARGIN
        } else {
            SLOWER_THAN_TCP_TO_DEGRADE
        };
        let stay = c.udp_ns > margin * tcp_ns || !self.receiving(self.view);
        let chose = if stay {
            PrefetchPath::TcpPipelined
        } else {
            PrefetchPath::Udp
        };
        // A verdict that reverses the previous one is news: the backoff that the previous
        // verdicts grew (calibrations spaced out while they agreed) says nothing of it, so it
        // starts again and the next calibration checks this one soon.
        let reversed = self.last_calibration.is_some_and(|p| p != chose);
        self.last_calibration = Some(chose);
        if reversed {
            self.calibration_backoff_ns = CALIBRATION_BACKOFF_MIN_NS;
        }
        if chose == PrefetchPath::Udp {
            self.pace_stay_ns = PACE_STAY_MIN_NS;
        }
        let took = now_ns.saturating_sub(c.started_ns);
        self.next_calibration_ns =
            now_ns + self.calibration_backoff_ns.max(CALIBRATION_SPACING * took);
        self.calibration_backoff_ns =
            (self.calibration_backoff_ns * 2).min(CALIBRATION_BACKOFF_MAX_NS);
        let (udp_us, tcp_us) = (c.udp_ns / 1e3, tcp_ns / 1e3);
        if stay {
            // Staying: probes return to UDP as after any other move (their backoff was set
            // when the calibration began, counted from now), but not before the next
            // calibration would be due. A probe shows that UDP delivers a few pages before
            // TCP's answers, not that a scan reads faster on it: passed at the probe backoff
            // (10 ms on), it took a backend back to a path this calibration had just measured
            // slower, again and again (at MTU 1500, where a page is nine datagrams through the
            // compute's CPU, `bench net` kept up to a fifth of its pages on UDP at 0.86–0.88 ×
            // TCP pipelining).
            //
            // After a reversal, that is not so: one window of TCP faster than UDP, measured
            // right after calibrations that found UDP the faster, is as likely a transient of
            // either path (`bench hol`'s busy reader measured TCP at 4.1–19.6 µs a read
            // against 4.6–5.6 on UDP, and a single 4.1 kept it on TCP for the two seconds its
            // calibrations had grown apart, with every foreground read of the other backend
            // behind its pipeline). It returns after a pace stay (or a probe), and UDP's pace
            // (`window_verdict`) judges again what this window said.
            if reversed {
                self.next_probe_ns = now_ns + self.backoff_ns;
                self.stay_for_pace(now_ns);
            } else {
                self.next_probe_ns = (now_ns + self.backoff_ns).max(self.next_calibration_ns);
            }
            self.note(
                now_ns,
                format!("reads took {udp_us:.1} µs each on UDP, {tcp_us:.1} µs on TCP pipelining"),
            );
        } else {
            self.set(
                PrefetchPath::Udp,
                now_ns,
                format!("reads took {udp_us:.1} µs each on UDP, {tcp_us:.1} µs on TCP pipelining: back to UDP"),
            );
        }
    }

    /// Why a closed window on UDP should move the backend to TCP, if it should, and whether
    /// for its pace alone (`SLOWER_THAN_TCP_TO_DEGRADE`) rather than for what it failed to
    /// deliver.
    fn window_verdict(&mut self, window: &Window, now_ns: u64) -> Option<(String, bool)> {
        if window.waited_share >= WAITED_SHARE_TO_DEGRADE {
            return Some((
                format!(
                    "{:.0} % of reads waited for prefetches in flight",
                    window.waited_share * 100.0
                ),
                false,
            ));
        }
        if window.lost >= LOST_READS_TO_DEGRADE && window.lost_share >= LOST_SHARE_TO_DEGRADE {
            return Some((
                format!(
                    "{:.0} % of the time went to {} reads that UDP failed",
                    window.lost_share * 100.0,
                    window.lost
                ),
                false,
            ));
        }
        let udp = window.smoothed_ns?;
        let tcp = self.pace[PrefetchPath::TcpPipelined as usize].last?;
        // UDP's start is not its pace (`set_transient_reads`): back from TCP, its first
        // prefetches are a round trip away and its window refills.
        if self.in_transient(now_ns) {
            return None;
        }
        let bound = SLOWER_THAN_TCP_TO_DEGRADE * tcp;
        if udp <= bound || window.mean_ns.is_none_or(|m| m <= bound) {
            self.slow_windows = 0;
            return None;
        }
        self.slow_windows += 1;
        (self.slow_windows >= SLOW_WINDOWS_TO_DEGRADE).then(|| {
            let reason = format!(
                "reads took {:.1} µs each on UDP, {:.1} µs on TCP pipelining",
                udp / 1e3,
                tcp / 1e3
            );
            (reason, true)
        })
    }

    /// UDP is not available at all (the page server does not speak the extension): TCP from
    /// now on, logged (a change when it leaves UDP); the driver sends nothing that would probe.
    pub fn without_udp(&mut self, now_ns: u64, reason: &str) {
        if self.path == PrefetchPath::Udp {
            self.set(PrefetchPath::TcpPipelined, now_ns, reason.to_string());
        } else {
            // A calibration under way would return to UDP.
            self.calibration = None;
            self.note(now_ns, reason.to_string());
        }
    }

    /// Starts on UDP, when a daemon is known (registered or given by the operator): logged,
    /// not counted as a change.
    pub fn start_udp(&mut self, now_ns: u64, reason: &str) {
        debug_assert!(self.changes == 0 && self.log.is_empty());
        self.path = PrefetchPath::Udp;
        self.path_since_ns = now_ns;
        self.first_read_ns = None;
        self.next_probe_ns = now_ns;
        self.note_start(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// A read of `cycle` ns that UDP failed after `lost` ns of it (0: it did not), blocked for
    /// the failure only.
    fn timing(cycle: u64, lost: u64) -> ReadTiming {
        ReadTiming {
            cycle_ns: cycle,
            blocked_ns: lost,
            io_ns: 0,
            foreground: false,
            waited: false,
            lost_ns: lost,
        }
    }

    fn on_udp() -> UdpHealth {
        let mut h = UdpHealth::new(0, false);
        h.start_udp(0, "daemon alive");
        h
    }

    #[test]
    fn a_full_state_log_keeps_where_the_backend_started_and_its_latest_changes() {
        let mut h = on_udp();
        let n = 3 * MAX_STATE_LOG as u64;
        for i in 1..=n {
            let to = if i % 2 == 1 {
                PrefetchPath::TcpPipelined
            } else {
                PrefetchPath::Udp
            };
            h.set(to, i * MS, format!("change {i}"));
        }
        assert_eq!(h.changes(), n, "every change counted");
        let log = h.log();
        assert_eq!(log.len(), MAX_STATE_LOG, "bounded");
        assert_eq!(log[0].reason, "daemon alive", "the start stays first");
        let kept: Vec<u64> = log[1..]
            .iter()
            .map(|c| c.reason["change ".len()..].parse().unwrap())
            .collect();
        let latest: Vec<u64> = (n + 2 - MAX_STATE_LOG as u64..=n).collect();
        assert_eq!(kept, latest, "the latest changes, in order");
        let last = log.last().unwrap();
        assert_eq!((last.to, last.at_ms), (PrefetchPath::Udp, n as f64));
    }

    #[test]
    fn after_another_shard_left_udp_one_miss_moves_this_one_and_the_mark_ends_with_the_path() {
        let mut h = on_udp();
        h.on_arrival(false);
        h.on_sibling_left_udp();
        // UDP has delivered, but a sibling left: the first miss decides.
        assert!(h.on_miss(MS, true));
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
        assert!(h.log()[1].reason.contains("another shard"), "{:?}", h.log());
        // The mark does not outlive the path it was set on.
        assert!(!h.sibling_left);
        // And a path on TCP takes no mark: on UDP later, one miss is one miss.
        let mut t = UdpHealth::new(0, false);
        t.on_sibling_left_udp();
        t.start_udp(MS, "daemon alive");
        t.on_arrival(false);
        assert!(!t.on_miss(2 * MS, true));
    }

    #[test]
    fn two_misses_among_the_last_eight_move_to_tcp_and_older_ones_are_forgotten() {
        let mut h = on_udp();
        // UDP has delivered: one miss is not enough.
        h.on_arrival(false);
        assert!(!h.on_miss(MS, false));
        // Seven arrivals push the miss out of the history.
        for _ in 0..MISS_HISTORY - 1 {
            h.on_arrival(false);
        }
        assert!(!h.on_miss(3 * MS, false));
        assert_eq!(h.path(), PrefetchPath::Udp);
        // A miss, an arrival, a miss: a link losing every other page.
        h.on_arrival(false);
        assert!(h.on_miss(5 * MS, false));
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
        assert_eq!(h.changes(), 1);
        assert!(
            h.log()[1].reason.contains("2 of the last 8"),
            "{:?}",
            h.log()
        );
    }

    #[test]
    fn a_missed_page_that_arrives_late_takes_its_miss_back() {
        let mut h = on_udp();
        h.on_arrival(false);
        assert!(!h.on_miss(MS, false));
        // Its page came by UDP before its GetPage's answer: late, not lost.
        h.on_late_arrival();
        assert!(!h.on_miss(2 * MS, false), "one miss left in the history");
        assert_eq!(h.path(), PrefetchPath::Udp);
        // That one's page never comes: two misses, to TCP.
        assert!(h.on_miss(3 * MS, false));
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
    }

    #[test]
    fn a_first_miss_window_that_beats_tcp_returns_to_udp_and_one_that_loses_changes_nothing() {
        // UDP brings all 8 racing pages first: the first page was late, not lost.
        let mut h = on_udp();
        assert!(h.on_miss(MS, false));
        assert!(!h.start_race(PROBE_MIN_PAGES - 1), "too few pages to tell");
        let mut h = on_udp();
        assert!(h.on_miss(MS, false));
        assert!(h.start_race(PROBE_PAGES));
        assert!(!h.start_race(PROBE_PAGES), "one race per first miss");
        for _ in 0..PROBE_PAGES {
            h.on_probe_page(true, 2 * MS);
        }
        assert_eq!(h.path(), PrefetchPath::Udp);
        assert!(
            h.log()[2].reason.contains("late, not lost"),
            "{:?}",
            h.log()
        );
        // Back on UDP on probation: a miss soon after sends it back at once.
        assert!(h.on_miss(3 * MS, false));
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
        assert!(!h.start_race(PROBE_PAGES), "only a first miss races");

        // TCP brings one of 8 first (a probe would pass with that): the miss stands, and the
        // next probe is due when the move made it due (no later).
        let mut h = on_udp();
        assert!(h.on_miss(MS, false));
        assert!(h.start_race(PROBE_PAGES));
        for i in 0..PROBE_PAGES {
            h.on_probe_page(i != 3, 2 * MS);
        }
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
        assert_eq!(h.changes(), 1);
        assert!(!h.probe_due(
            DaemonView::Alive,
            PROBE_PAGES,
            MS + PROBE_BACKOFF_MIN_NS - 1
        ));
        assert!(h.probe_due(DaemonView::Alive, PROBE_PAGES, MS + PROBE_BACKOFF_MIN_NS));
        // A miss after UDP delivered something is no first miss: nothing races.
        let mut h = on_udp();
        h.on_arrival(false);
        assert!(!h.on_miss(MS, false));
        assert!(h.on_miss(MS, false));
        assert!(!h.start_race(PROBE_PAGES));
    }

    #[test]
    fn one_miss_moves_to_tcp_before_udp_delivered_anything_or_soon_after_a_passed_probe() {
        // Nothing arrived yet, but the daemon delivers others' pages: one miss is not enough.
        let mut h = on_udp();
        assert!(!h.on_miss(MS, true));
        // Nothing arrived yet and the daemon installs nothing: the first miss decides.
        let mut h = on_udp();
        assert!(h.on_miss(MS, false));
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
        assert!(
            h.log()[1].reason.contains("first prefetch"),
            "{:?}",
            h.log()
        );
        // A probe passes; a miss among the first reads after it sends the backend back.
        let t = PROBE_BACKOFF_MIN_NS + MS;
        pass_probe(&mut h, t);
        assert_eq!(h.path(), PrefetchPath::Udp);
        let mut now = t;
        reads(&mut h, 10, 20 * US, 0, &mut now);
        h.on_arrival(false);
        assert!(h.on_miss(now, false));
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
        assert!(h.log()[3].reason.contains("passed probe"), "{:?}", h.log());
        // Once proven (past its probation), a path needs two misses again.
        let t = now + PROBE_BACKOFF_MAX_NS;
        pass_probe(&mut h, t);
        let mut now = t;
        reads(&mut h, PROBATION_READS as u32, 20 * US, 0, &mut now);
        h.on_arrival(false);
        assert!(!h.on_miss(now, false));
        assert!(h.on_miss(now, false));
        assert!(
            h.log()[5].reason.contains("2 of the last 8"),
            "{:?}",
            h.log()
        );
    }

    #[test]
    fn a_probe_left_with_fewer_than_the_fewest_pages_passes_nothing() {
        let mut h = on_udp();
        assert!(h.on_miss(MS, false));
        let t = PROBE_BACKOFF_MIN_NS + MS;
        assert!(h.probe_due(DaemonView::Alive, PROBE_MIN_PAGES, t));
        // One page was cached already: the two left arrive, and that says too little.
        h.skip_probe_page(t);
        h.on_probe_page(true, t);
        h.on_probe_page(true, t);
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
        // No evidence against UDP either: the next probe comes after the same backoff.
        assert!(!h.probe_due(DaemonView::Alive, PROBE_MIN_PAGES, t + MS));
        let t = t + PROBE_BACKOFF_MIN_NS;
        assert!(h.probe_due(DaemonView::Alive, PROBE_MIN_PAGES, t));
        for _ in 0..PROBE_MIN_PAGES {
            h.on_probe_page(true, t);
        }
        assert_eq!(h.path(), PrefetchPath::Udp);
    }

    #[test]
    fn reads_udp_failed_between_hits_move_to_tcp_when_they_take_most_of_the_time() {
        const US: u64 = 1_000;
        // One read in five fails after 1.4 ms, the others hit in 15 µs: never two misses in a
        // row, yet the window's time goes to failed reads.
        let mut h = on_udp();
        let mut now = 0;
        let mut moved = false;
        for i in 0..32 {
            let lost = if i % 5 == 4 { 1_400 * US } else { 0 };
            let cycle = 15 * US + lost;
            now += cycle;
            moved |= h.on_read(&timing(cycle, lost), now);
        }
        assert!(moved);
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
        assert!(
            h.log()[1].reason.contains("reads that UDP failed"),
            "{:?}",
            h.log()
        );
        // Slow reads: each window of three holds one failure of 6 ms; two windows decide.
        let mut h = on_udp();
        let mut now = 0;
        let mut moved_at = None;
        for i in 0..12 {
            let lost = if i % 3 == 0 { 6_000 * US } else { 0 };
            let cycle = 100 * US + lost;
            now += cycle;
            if h.on_read(&timing(cycle, lost), now) {
                moved_at.get_or_insert(i);
            }
        }
        assert_eq!(moved_at, Some(5), "{:?}", h.log());
        // One such read decides nothing, however long it is.
        let mut h = on_udp();
        let mut now = 0;
        for i in 0..16 {
            let lost = if i == 8 { 4_000 * US } else { 0 };
            let cycle = 15 * US + lost;
            now += cycle;
            assert!(!h.on_read(&timing(cycle, lost), now));
        }
        assert_eq!(h.path(), PrefetchPath::Udp);
    }

    #[test]
    fn a_stale_or_missing_daemon_moves_to_tcp_unless_a_port_was_given() {
        let mut h = on_udp();
        assert!(h.on_daemon(DaemonView::Stale { age_ns: 500 * MS }, false, MS));
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
        let mut h = on_udp();
        assert!(h.on_daemon(DaemonView::Absent, false, MS));
        let mut h = UdpHealth::new(0, true);
        h.start_udp(0, "port given");
        assert!(!h.on_daemon(DaemonView::Absent, false, MS));
        assert_eq!(h.path(), PrefetchPath::Udp);
    }

    #[test]
    fn heavy_loss_moves_to_tcp_light_loss_does_not() {
        let mut h = on_udp();
        // 5 % of reads needed a retry: stays.
        for i in 0..400 {
            h.on_arrival(i % 20 == 0);
            assert!(!h.check_loss(MS));
        }
        assert_eq!(h.path(), PrefetchPath::Udp);
        // Half of them: leaves.
        let mut moved = false;
        for i in 0..400 {
            h.on_arrival(i % 2 == 0);
            moved |= h.check_loss(MS);
        }
        assert!(moved);
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
    }

    #[test]
    fn probes_back_off_while_failing_and_return_to_udp_when_they_pass() {
        let mut h = on_udp();
        h.on_daemon(DaemonView::Stale { age_ns: 400 * MS }, false, 0);
        // Not while the daemon is stale, nor before the backoff.
        assert!(!h.probe_due(
            DaemonView::Stale { age_ns: 400 * MS },
            PROBE_PAGES,
            100 * MS
        ));
        assert!(!h.probe_due(DaemonView::Alive, PROBE_PAGES, PROBE_BACKOFF_MIN_NS - 1));
        let mut t = PROBE_BACKOFF_MIN_NS;
        let mut gaps = Vec::new();
        for _ in 0..10 {
            assert!(h.probe_due(DaemonView::Alive, PROBE_PAGES, t));
            assert!(
                !h.probe_due(DaemonView::Alive, PROBE_PAGES, t),
                "one probe at a time"
            );
            for _ in 0..PROBE_PAGES {
                h.on_probe_page(false, t);
            }
            let next = (t..t + 2 * PROBE_BACKOFF_MAX_NS)
                .step_by(MS as usize)
                .find(|&x| {
                    let mut c = h.clone();
                    c.probe_due(DaemonView::Alive, PROBE_PAGES, x)
                })
                .unwrap();
            gaps.push(next - t);
            t = next;
        }
        assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
        assert_eq!(*gaps.last().unwrap(), PROBE_BACKOFF_MAX_NS);
        // A restarted daemon is probed at once, and a passing probe returns to UDP.
        h.on_daemon(DaemonView::Alive, true, t + MS);
        assert!(h.probe_due(DaemonView::Alive, PROBE_PAGES, t + MS));
        for i in 0..PROBE_PAGES {
            h.on_probe_page(i != 0, t + 2 * MS);
        }
        assert_eq!(h.path(), PrefetchPath::Udp);
        assert!(h.log().last().unwrap().reason.contains("7/8"));
    }

    /// A probe of 4 pages starts at `t` and all of them arrive.
    fn pass_probe(h: &mut UdpHealth, t: u64) {
        assert!(h.probe_due(DaemonView::Alive, 4, t));
        for _ in 0..4 {
            h.on_probe_page(true, t);
        }
    }

    /// Feeds `n` reads of `cycle` ns each, `blocked` of them blocked, from `*now`; returns
    /// the `on_read` results that were true.
    fn reads(h: &mut UdpHealth, n: u32, cycle: u64, blocked: u64, now: &mut u64) -> u32 {
        let mut moved = 0;
        for _ in 0..n {
            *now += cycle;
            let r = ReadTiming {
                cycle_ns: cycle,
                blocked_ns: blocked,
                io_ns: 0,
                foreground: false,
                waited: false,
                lost_ns: 0,
            };
            moved += u32::from(h.on_read(&r, *now));
        }
        moved
    }

    const US: u64 = 1_000;

    /// Feeds reads of `cycle` ns, `blocked` of them blocked, until one moves the backend (a
    /// calibration or a pace verdict); returns how many it took, which is never fewer than
    /// the path's transient window and `PACE_MIN_WINDOWS` measured ones.
    fn until_moved(h: &mut UdpHealth, cycle: u64, blocked: u64, now: &mut u64) -> u32 {
        let window = SHARE_WINDOW_READS.max(SHARE_WINDOW_NS.div_ceil(cycle) as u32);
        for n in 1..=100_000 {
            if reads(h, 1, cycle, blocked, now) == 1 {
                assert!(
                    n >= (1 + PACE_MIN_WINDOWS) * window,
                    "judged after {n} reads: {:?}",
                    h.log()
                );
                return n;
            }
        }
        panic!("never moved: {:?}", h.log());
    }

    #[test]
    fn a_udp_path_slower_than_tcp_pipelining_moves_to_tcp_after_a_calibration() {
        // Started on UDP (no TCP pace ever measured): every page arrives, but each read
        // blocks 60 of its 80 µs (pages in 9 datagrams each, a daemon short of CPU).
        let mut h = on_udp();
        h.on_daemon(DaemonView::Alive, false, 0);
        let mut now = 0;
        // The first window is the path's transient; `PACE_MIN_WINDOWS` more measure it, and
        // then it calibrates.
        until_moved(&mut h, 80 * US, 60 * US, &mut now);
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
        assert!(h.log()[1].reason.contains("measuring TCP"), "{:?}", h.log());
        assert!(
            !h.probe_due(DaemonView::Alive, PROBE_PAGES, now + PROBE_BACKOFF_MAX_NS),
            "no probe cuts a calibration short"
        );
        // TCP pipelining: 30 µs a read, the application's 20 µs and 10 of the read's own. Its
        // transient window, then a measured one: stays. The paces are the reads' own time.
        let changes = h.changes();
        reads(&mut h, 2 * 80, 30 * US, 10 * US, &mut now);
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
        assert_eq!(h.changes(), changes, "no more moves");
        let last = &h.log().last().unwrap().reason;
        assert!(last.contains("60.0 µs each on UDP, 10.0 µs"), "{last}");
        // UDP delivers, but was just measured slower: no probe at the probe backoff, which
        // would pass and take the backend back to it; not before the next calibration is due.
        assert!(!h.probe_due(DaemonView::Alive, PROBE_PAGES, now + PROBE_BACKOFF_MIN_NS));
        assert!(!h.probe_due(
            DaemonView::Alive,
            PROBE_PAGES,
            now + CALIBRATION_BACKOFF_MIN_NS
        ));
        // Probes resume; one that passes returns to UDP, where the known TCP pace moves the
        // backend back once `PACE_MIN_WINDOWS` windows are measured.
        let t = now + PROBE_BACKOFF_MAX_NS;
        assert!(h.probe_due(DaemonView::Alive, PROBE_PAGES, t));
        (0..PROBE_PAGES).for_each(|_| h.on_probe_page(true, t));
        assert_eq!(h.path(), PrefetchPath::Udp);
        now = t;
        until_moved(&mut h, 80 * US, 60 * US, &mut now);
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
        assert!(
            h.log().last().unwrap().reason.contains("on TCP pipelining"),
            "{:?}",
            h.log()
        );
    }

    /// A backend on UDP whose reads block 60 of their 80 µs, moved to TCP for a calibration
    /// and through TCP's transient window (reads of 10 µs of their own): the next window it
    /// closes is measured. Returns it and the time.
    fn calibrating_past_tcps_transient() -> (UdpHealth, u64) {
        let mut h = on_udp();
        h.on_daemon(DaemonView::Alive, false, 0);
        let mut now = 0;
        until_moved(&mut h, 80 * US, 60 * US, &mut now);
        assert!(h.log()[1].reason.contains("measuring TCP"), "{:?}", h.log());
        while h.pace[PrefetchPath::TcpPipelined as usize].windows == 0 {
            reads(&mut h, 1, 30 * US, 10 * US, &mut now);
        }
        (h, now)
    }

    #[test]
    fn a_calibration_takes_a_tcp_window_far_slower_than_udp_for_the_pipelines_start() {
        // Reads that wait 300 µs each (the pipeline's first answers a round trip away) until
        // a measured window closes on them: it is set aside.
        let (mut h, mut now) = calibrating_past_tcps_transient();
        while h.calibration.is_some_and(|c| !c.extended) {
            reads(&mut h, 1, 320 * US, 300 * US, &mut now);
        }
        assert_eq!(h.log().len(), 2, "not concluded on it: {:?}", h.log());
        // TCP's steady pace, 10 µs a read, concludes it: UDP was the slower path.
        while h.calibration.is_some() {
            reads(&mut h, 1, 30 * US, 10 * US, &mut now);
        }
        let last = &h.log().last().unwrap().reason;
        assert!(last.contains("60.0 µs each on UDP, 10.0 µs"), "{last}");
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
        // Set aside once only: a TCP path that stays that slow is measured as it is.
        let (mut h, mut now) = calibrating_past_tcps_transient();
        while h.calibration.is_some() {
            reads(&mut h, 1, 320 * US, 300 * US, &mut now);
        }
        assert_eq!(h.path(), PrefetchPath::Udp, "{:?}", h.log());
    }

    /// Reads of `read` on TCP pipelining, 10 µs apart, for a calibration's two windows (the
    /// transient and the measured one).
    fn calibration_windows(h: &mut UdpHealth, read: &ReadTiming, now: &mut u64) {
        for _ in 0..2 * SHARE_WINDOW_READS.max(SHARE_WINDOW_NS.div_ceil(10 * US) as u32) {
            *now += 10 * US;
            h.on_read(read, *now);
        }
    }

    #[test]
    fn a_calibration_counts_what_reads_leave_to_send_in_their_pace_but_not_as_blocked() {
        // UDP: reads block 6 of their 10 µs and send nothing worth counting.
        let mut h = on_udp();
        h.on_daemon(DaemonView::Alive, false, 0);
        let mut now = 0;
        until_moved(&mut h, 10 * US, 6 * US, &mut now);
        assert!(h.log()[1].reason.contains("measuring TCP"), "{:?}", h.log());
        // TCP pipelining: each read blocks 4 µs for its answer, then the shell spends 3 µs
        // sending the GetPage that refills the pipeline. Counted on the answer alone (4 µs)
        // UDP's 6 would be over 1.25 × TCP's and the backend would stay; its own cost is 7.
        let tcp = ReadTiming {
            cycle_ns: 10 * US,
            blocked_ns: 4 * US,
            io_ns: 3 * US,
            ..ReadTiming::default()
        };
        calibration_windows(&mut h, &tcp, &mut now);
        let last = &h.log().last().unwrap().reason;
        assert!(last.contains("6.0 µs each on UDP, 7.0 µs"), "{last}");
        assert_eq!(h.path(), PrefetchPath::Udp, "{:?}", h.log());

        // Time spent sending is the read's cost, not time blocked that TCP could save: a UDP
        // path whose reads send for 6 of their 10 µs and block for none never calibrates.
        let mut h = on_udp();
        h.on_daemon(DaemonView::Alive, false, 0);
        let sending = ReadTiming {
            cycle_ns: 10 * US,
            io_ns: 6 * US,
            ..ReadTiming::default()
        };
        let mut now = 0;
        for _ in 0..100_000 {
            now += 10 * US;
            assert!(!h.on_read(&sending, now), "{:?}", h.log());
        }
        assert_eq!(h.pace_ns(PrefetchPath::Udp), Some(6_000.0));
    }

    #[test]
    fn a_calibration_keeps_tcp_when_a_losing_udp_costs_a_sixth_more() {
        // UDP reads block 7 of their 10 µs, 7 µs of their own against TCP pipelining's 6:
        // within the pace verdict's 1.25, past the calibration's margin for a losing path.
        const { assert!(7.0 / 6.0 > CALIBRATION_MARGIN && 7.0 / 6.0 < SLOWER_THAN_TCP_TO_DEGRADE) };
        let calibrated = |loss_share: f64, tcp_own_ns: u64| {
            let mut h = on_udp();
            h.on_daemon(DaemonView::Alive, false, 0);
            let mut now = 0;
            until_moved(&mut h, 10 * US, 7 * US, &mut now);
            assert!(h.log()[1].reason.contains("measuring TCP"), "{:?}", h.log());
            // What the read path's retries measured of UDP before the move (5 % loss: 0.05).
            h.loss_share = loss_share;
            let tcp = ReadTiming {
                cycle_ns: 10 * US,
                blocked_ns: tcp_own_ns,
                ..ReadTiming::default()
            };
            calibration_windows(&mut h, &tcp, &mut now);
            h
        };
        let h = calibrated(0.05, 6 * US);
        let last = &h.log().last().unwrap().reason;
        assert!(last.contains("7.0 µs each on UDP, 6.0 µs"), "{last}");
        assert_eq!(h.path(), PrefetchPath::TcpPipelined, "{:?}", h.log());
        // Losing, but within the margin (7 against 6.5: 1.08): UDP is taken back.
        let h = calibrated(0.05, 6_500);
        assert_eq!(h.path(), PrefetchPath::Udp, "{:?}", h.log());
        // Losing nothing, 7 against 6 is as likely a noisy TCP window: back to UDP.
        let h = calibrated(0.0, 6 * US);
        assert_eq!(h.path(), PrefetchPath::Udp, "{:?}", h.log());
    }

    #[test]
    fn a_pause_during_a_calibration_measures_tcp_again_after_a_transient() {
        let mut h = on_udp();
        h.set_transient_reads(32);
        h.on_daemon(DaemonView::Alive, false, 0);
        let mut now = 0;
        until_moved(&mut h, 80 * US, 60 * US, &mut now);
        assert!(h.log()[1].reason.contains("measuring TCP"), "{:?}", h.log());
        // A few reads on TCP, then the application pauses for 100 ms; the 32 reads after it
        // take answers that came meanwhile, at no time of their own; then TCP's steady pace.
        reads(&mut h, 4, 30 * US, 10 * US, &mut now);
        reads(&mut h, 1, 100_000 * US, 0, &mut now);
        reads(&mut h, 32, 20 * US, 0, &mut now);
        assert_eq!(
            h.log().len(),
            2,
            "not concluded on the reads after the pause"
        );
        reads(&mut h, 2 * 80, 30 * US, 10 * US, &mut now);
        let last = &h.log().last().unwrap().reason;
        assert!(last.contains("60.0 µs each on UDP, 10.0 µs"), "{last}");
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
    }

    /// One window of slow UDP reads among fast ones is a spike, not the path's pace: the
    /// backend stays on UDP; `SLOW_WINDOWS_TO_DEGRADE` slow windows in a row move it.
    #[test]
    fn one_slow_window_does_not_take_a_faster_udp_path_to_tcp_but_enough_in_a_row_do() {
        // UDP at 28 µs a read against TCP pipelining's 44 (a calibration), back on UDP.
        let mut now = 0;
        let mut h = on_udp();
        h.on_daemon(DaemonView::Alive, false, 0);
        until_moved(&mut h, 40 * US, 28 * US, &mut now);
        reads(&mut h, 2 * 80, 56 * US, 44 * US, &mut now);
        assert_eq!(h.path(), PrefetchPath::Udp, "{:?}", h.log());
        reads(&mut h, 400, 40 * US, 28 * US, &mut now);
        // A window of 16 reads blocking 290 µs each (4.8 ms: a stalled sender), then the
        // steady pace: the smoothed pace stays over 1.25 × TCP's for a while, the windows do not.
        assert_eq!(reads(&mut h, 16, 300 * US, 290 * US, &mut now), 0);
        assert_eq!(reads(&mut h, 2_000, 40 * US, 28 * US, &mut now), 0);
        assert_eq!(h.path(), PrefetchPath::Udp, "{:?}", h.log());
        assert_eq!(h.changes(), 2, "{:?}", h.log());
        // Such windows in a row (16 reads each): the path is slower, found at the
        // `SLOW_WINDOWS_TO_DEGRADE`th.
        let n = (1..=256)
            .find(|_| reads(&mut h, 1, 300 * US, 290 * US, &mut now) == 1)
            .expect("moved");
        let windows = SLOW_WINDOWS_TO_DEGRADE;
        assert!(
            (16 * (windows - 1) + 1..=16 * (windows + 1)).contains(&n),
            "moved after {n} slow reads: {:?}",
            h.log()
        );
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
        assert!(
            h.log().last().unwrap().reason.contains("on TCP pipelining"),
            "{:?}",
            h.log()
        );
    }

    #[test]
    fn a_calibration_that_reverses_the_ones_before_holds_tcp_only_until_a_probe() {
        // UDP at 40 µs a read (28 of them its own) against TCP pipelining's 56 (44): four
        // calibrations return to UDP, each later than the one before.
        let mut h = on_udp();
        h.on_daemon(DaemonView::Alive, false, 0);
        let mut now = 0;
        let back = |h: &UdpHealth| {
            h.log()
                .iter()
                .filter(|c| c.reason.contains("back to UDP"))
                .count()
        };
        while back(&h) < 4 {
            match h.path() {
                PrefetchPath::Udp => reads(&mut h, 1, 40 * US, 28 * US, &mut now),
                PrefetchPath::TcpPipelined => reads(&mut h, 1, 56 * US, 44 * US, &mut now),
            };
        }
        assert!(h.calibration_backoff_ns >= 8 * CALIBRATION_BACKOFF_MIN_NS);
        // The fifth measures TCP at 8 µs a read (a window of answers that had all come): it
        // stays on TCP, but only until the next probe, not for the backoff the four grew.
        until_moved(&mut h, 40 * US, 28 * US, &mut now);
        assert!(h.log().last().unwrap().reason.contains("measuring TCP"));
        let started_ms = h.log().last().unwrap().at_ms;
        while h.calibration.is_some() {
            reads(&mut h, 1, 20 * US, 8 * US, &mut now);
        }
        let last = h.log().last().unwrap().clone();
        assert!(
            last.reason.contains("28.0 µs each on UDP, 8.0 µs"),
            "{:?}",
            h.log()
        );
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
        // The calibrations start over: the next is due after the spacing alone.
        let took = ((last.at_ms - started_ms) * 1e6) as u64;
        let spacing = CALIBRATION_BACKOFF_MIN_NS.max(CALIBRATION_SPACING * took);
        assert!(h.next_calibration_ns <= now + spacing + MS, "{:?}", h.log());
        // A probe may return it from the probe backoff on, and it returns by itself after the
        // shortest pace stay, to have UDP's pace judged again.
        let mut c = h.clone();
        assert!(c.probe_due(DaemonView::Alive, PROBE_PAGES, now + PROBE_BACKOFF_MIN_NS));
        let left = now;
        while h.path() == PrefetchPath::TcpPipelined {
            reads(&mut h, 1, 20 * US, 8 * US, &mut now);
            assert!(now <= left + PACE_STAY_MIN_NS + 20 * US, "{:?}", h.log());
        }
        assert!(now >= left + PACE_STAY_MIN_NS);
        let back = &h.log().last().unwrap().reason;
        assert!(back.contains("to measure its pace again"), "{back}");
    }

    #[test]
    fn a_udp_path_faster_than_tcp_pipelining_returns_and_calibrates_rarely() {
        // 5 % loss: reads block 70 % of the time, yet run at 40 µs against TCP's 56 µs (the
        // application's 12 µs, then 28 µs of the read's own on UDP, 44 on TCP).
        let mut h = on_udp();
        h.on_daemon(DaemonView::Alive, false, 0);
        let mut now = 0;
        let mut on_tcp_ns = 0;
        let mut calibrations = 0;
        let end = 20 * CALIBRATION_BACKOFF_MAX_NS;
        while now < end {
            match h.path() {
                PrefetchPath::Udp => {
                    calibrations += reads(&mut h, 1, 40 * US, 28 * US, &mut now);
                }
                PrefetchPath::TcpPipelined => {
                    let before = now;
                    reads(&mut h, 1, 56 * US, 44 * US, &mut now);
                    on_tcp_ns += now - before;
                }
            }
        }
        assert_eq!(h.path(), PrefetchPath::Udp);
        assert!(calibrations >= 2, "calibrated again: {calibrations}");
        assert_eq!(h.changes(), 2 * u64::from(calibrations), "{:?}", h.log());
        let share = on_tcp_ns as f64 / end as f64;
        assert!(share < 0.01, "{share}");
        assert!(h.log()[2].reason.contains("back to UDP"), "{:?}", h.log());
        // The spacing bounds the share from the start: at most one calibration in the first
        // `CALIBRATION_SPACING` calibration lengths.
        let first = h.log()[1].at_ms;
        let second = h.log()[3].at_ms;
        let took = h.log()[2].at_ms - first;
        assert!(
            second - first >= CALIBRATION_SPACING as f64 * took,
            "{:?}",
            h.log()
        );
    }

    #[test]
    fn a_calibration_measures_neither_path_in_its_transient() {
        // A backend requesting 1000 pages ahead on UDP and TCP together.
        let mut h = on_udp();
        h.on_daemon(DaemonView::Alive, false, 0);
        h.set_transient_reads(1000);
        let mut now = 0;
        // UDP at 10 µs a read, 70 % blocked: windows of 200 reads (2 ms). The transient ends
        // by time at 5 ms (`TRANSIENT_MAX_NS`), in the third window, which measures nothing;
        // the seventh is the fourth measured (`PACE_MIN_WINDOWS`).
        assert_eq!(reads(&mut h, 1399, 10 * US, 7 * US, &mut now), 0);
        assert_eq!(h.path(), PrefetchPath::Udp);
        assert_eq!(reads(&mut h, 1, 10 * US, 7 * US, &mut now), 1);
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
        // On TCP, the pages UDP had brought ahead are read first, 1 µs each: not TCP's pace.
        reads(&mut h, 1000, US, 0, &mut now);
        assert_eq!(h.path(), PrefetchPath::TcpPipelined, "{:?}", h.log());
        // Then the pipeline's own, 14 µs each (11 in the read): UDP was faster, back to UDP.
        reads(&mut h, 200, 14 * US, 11 * US, &mut now);
        assert_eq!(h.path(), PrefetchPath::Udp, "{:?}", h.log());
        let last = &h.log().last().unwrap().reason;
        assert!(last.contains("7.0 µs each on UDP, 11.0 µs"), "{last}");
        // Back on UDP, its refill (30 µs a read, mostly blocked) is not compared with TCP's
        // pace during the transient; its steady state is, and stays.
        let changes = h.changes();
        assert_eq!(reads(&mut h, 100, 30 * US, 25 * US, &mut now), 0);
        assert_eq!(reads(&mut h, 1000, 10 * US, 7 * US, &mut now), 0);
        assert_eq!(h.path(), PrefetchPath::Udp, "{:?}", h.log());
        assert_eq!(h.changes(), changes);
    }

    #[test]
    fn a_calibration_measures_tcp_after_the_pages_udp_brought_before_it() {
        // UDP: 40 µs a read, 30 of them blocked: a calibration.
        let mut h = on_udp();
        h.on_daemon(DaemonView::Alive, false, 0);
        let mut now = 0;
        until_moved(&mut h, 40 * US, 30 * US, &mut now);
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
        // On TCP, the reader first reads the pages UDP brought: hits of 5 µs, for more than
        // two windows. They are no measure of TCP.
        for _ in 0..1000 {
            h.on_arrival(false);
            reads(&mut h, 1, 5 * US, 0, &mut now);
        }
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
        // TCP pipelining's own reads, 45 µs each (35 in the read): UDP was faster, back to UDP.
        reads(&mut h, 2 * 64, 45 * US, 35 * US, &mut now);
        assert_eq!(h.path(), PrefetchPath::Udp, "{:?}", h.log());
        assert!(
            h.log()
                .last()
                .unwrap()
                .reason
                .contains("30.0 µs each on UDP, 35.0 µs"),
            "{:?}",
            h.log()
        );
    }

    /// `bench hol`'s readers: created together, reading in turns, pausing between reads.
    #[test]
    fn a_reader_is_judged_by_its_reads_not_by_its_pauses_or_its_foreground_reads() {
        // A scan whose prefetches arrive in time (hits, no time of their own) with a foreground
        // GetPage of 350 µs after every 100 of them: 40 % of its time, but TCP pipelining
        // would make it wait behind the pipeline, not save it. No calibration, and no failed
        // reads. (Counted as blocked, it took `bench hol`'s busy reader to TCP.)
        let mut h = on_udp();
        h.on_daemon(DaemonView::Alive, false, 0);
        let mut now = 0;
        for _ in 0..100 {
            assert_eq!(reads(&mut h, 100, 5 * US, 0, &mut now), 0);
            now += 350 * US;
            let fg = ReadTiming {
                cycle_ns: 350 * US,
                blocked_ns: 350 * US,
                io_ns: 0,
                foreground: true,
                waited: false,
                lost_ns: 0,
            };
            assert!(!h.on_read(&fg, now), "{:?}", h.log());
        }
        assert_eq!(h.changes(), 0, "{:?}", h.log());

        // A reader that calibrated (UDP's reads 30 µs of their own, TCP's 35), then pauses
        // between reads: for a second now and then, while other readers run. Its pace is its
        // reads', so it stays; compared in cycles, a window holding a pause took it to TCP.
        let mut h = on_udp();
        h.on_daemon(DaemonView::Alive, false, 0);
        let mut now = 0;
        until_moved(&mut h, 40 * US, 30 * US, &mut now);
        reads(&mut h, 2 * 64, 45 * US, 35 * US, &mut now);
        assert_eq!(h.path(), PrefetchPath::Udp, "{:?}", h.log());
        for _ in 0..20 {
            reads(&mut h, 1, 1_000 * MS, 30 * US, &mut now);
            reads(&mut h, 200, 40 * US, 30 * US, &mut now);
        }
        // Calibrations recur (the reads block), and each returns to UDP.
        assert_eq!(h.path(), PrefetchPath::Udp, "{:?}", h.log());
        assert!(
            h.log()
                .iter()
                .filter(|c| c.reason.contains("reads took"))
                .all(|c| c.reason.ends_with("back to UDP")),
            "{:?}",
            h.log()
        );
    }

    /// A UDP window growing from its start is the path's start, not its pace: a calibration
    /// compares UDP's reads after it with TCP's.
    #[test]
    fn a_calibration_measures_udp_after_its_window_stopped_growing() {
        let mut h = on_udp();
        h.on_daemon(DaemonView::Alive, false, 0);
        let mut now = 0;
        // The window grows by a page every other read for 8 ms, reads of 10 µs blocked for 7
        // (the reader catching up with its prefetches) ...
        for i in 0..800 {
            h.set_transient_reads(100 + i / 2);
            assert_eq!(
                reads(&mut h, 1, 10 * US, 7 * US, &mut now),
                0,
                "{:?}",
                h.log()
            );
        }
        // ... then holds at 500 pages: 5 µs a read, 3 of them blocked, which calibrates.
        let n = until_moved(&mut h, 5 * US, 3 * US, &mut now);
        assert!(
            n > 500,
            "calibrated {n} reads after the growth: {:?}",
            h.log()
        );
        assert!(h.log()[1].reason.contains("measuring TCP"), "{:?}", h.log());
        // TCP pipelining's pace, 4 µs of a read's own: UDP's 3 are faster, back to UDP. Had
        // the growth counted in UDP's pace, TCP would have won.
        reads(&mut h, 1500, 6 * US, 4 * US, &mut now);
        assert_eq!(h.path(), PrefetchPath::Udp, "{:?}", h.log());
        let last = &h.log().last().unwrap().reason;
        assert!(last.contains("3.0 µs each on UDP, 4.0 µs"), "{last}");
    }

    #[test]
    fn a_paths_transient_runs_from_its_first_read_not_from_the_move() {
        // Created half a second before its first read. Then as in
        // `a_calibration_measures_neither_path_in_its_transient`: windows of 200 reads, the
        // transient 500 reads (5 ms) from the first read, so the seventh window calibrates.
        let mut h = on_udp();
        h.on_daemon(DaemonView::Alive, false, 0);
        h.set_transient_reads(1000);
        let mut now = 500 * MS;
        assert_eq!(
            reads(&mut h, 1399, 10 * US, 7 * US, &mut now),
            0,
            "{:?}",
            h.log()
        );
        assert_eq!(reads(&mut h, 1, 10 * US, 7 * US, &mut now), 1);
    }

    #[test]
    fn a_udp_path_that_rarely_blocks_is_never_calibrated() {
        // Hits with a late arrival now and then: 15 % of the time blocked.
        let mut h = on_udp();
        h.on_daemon(DaemonView::Alive, false, 0);
        let mut now = 0;
        for _ in 0..10_000 {
            assert_eq!(reads(&mut h, 1, 20 * US, 3 * US, &mut now), 0);
        }
        assert_eq!(h.path(), PrefetchPath::Udp);
        assert_eq!(h.changes(), 0);
    }

    #[test]
    fn a_calibration_does_not_return_to_udp_once_the_daemon_is_gone_or_udp_is_off() {
        let mut h = on_udp();
        h.on_daemon(DaemonView::Alive, false, 0);
        let mut now = 0;
        until_moved(&mut h, 80 * US, 60 * US, &mut now);
        h.on_daemon(DaemonView::Stale { age_ns: 400 * MS }, false, now);
        reads(&mut h, 2 * 80, 100 * US, 10 * US, &mut now);
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
        let mut h = on_udp();
        h.on_daemon(DaemonView::Alive, false, 0);
        let mut now = 0;
        until_moved(&mut h, 80 * US, 60 * US, &mut now);
        h.without_udp(now, "refused");
        reads(&mut h, 2 * 80, 100 * US, 10 * US, &mut now);
        assert_eq!(h.path(), PrefetchPath::TcpPipelined);
    }
}
