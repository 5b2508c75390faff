//! Worker counters and their Prometheus text rendering. Counters are process-local relaxed
//! atomics, one set per thread, summed when scraped.
//!
//! Owns: `ThreadMetrics` (one set per worker thread), their sums (`totals`) and the daemon's
//! `/metrics` text, the cache's gauges included. Records and renders only: it decides nothing,
//! reads no clock (an install's wall time is passed in), serves nothing (the daemon does, through
//! `http`) and sees the LFC only as the `CacheGauges` it is handed.

use crate::datagram::{DatagramHeader, DropReason};
use crate::prom::{family, histogram, single, LatencyHistogram};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct ThreadMetrics {
    pub received: AtomicU64,
    pub installed: AtomicU64,
    pub dropped: [AtomicU64; DropReason::ALL.len()],
    /// Fragments that authenticated and were kept for their page (each later part of an
    /// installed page or of one given up, `DropReason::Incomplete`). With whole pages,
    /// received = installed + dropped; fragments add these.
    pub fragments_held: AtomicU64,
    /// Pages made whole by rebuilding a lost fragment from their parity piece.
    pub fragments_rebuilt: AtomicU64,
    /// Latest cumulative SO_RXQ_OVFL value seen by this thread's socket.
    pub kernel_drops: AtomicU64,
    /// Receives that completed with datagrams: one per datagram without UDP GRO, one per
    /// coalesced train with it (`received / receives` datagrams per receive).
    pub receives: AtomicU64,
    /// Windows in which this thread's junk budget ran out and it slept (`crate::junk`).
    pub junk_throttled: AtomicU64,
    /// The thread's socket receive buffer as the kernel accounts it, bytes: the configured one,
    /// or `junk::FLOOD_RECV_BUFFER`'s while a flood lasts.
    pub recv_buffer_bytes: AtomicU64,
    /// 1 while the thread runs in the real-time class (`workers --thread-class`), else 0.
    pub realtime: AtomicU64,
    /// Times the thread left the real-time class for exceeding its CPU share
    /// (`sched::ShareBound`).
    pub realtime_demotions: AtomicU64,
    /// Sender timestamp to publish, installed datagrams.
    latency: LatencyHistogram,
}

/// Datagrams by sender over the daemon's life, from the LFC's sender table
/// (`lfc::SenderCounts`, which `lfc stat` shows too), in sender order, `other` last.
fn by_sender(out: &mut String, senders: &lfc::SenderCounts) {
    for (name, help, count, other) in [
        (
            "udp_prefetch_datagrams_installed_by_sender_total",
            "Datagrams installed, by sender address (a page-server shard's sender threads).",
            (|s: &lfc::SenderCount| s.installed) as fn(&lfc::SenderCount) -> u64,
            senders.other_installed,
        ),
        (
            "udp_prefetch_datagrams_dropped_by_sender_total",
            "Datagrams that authenticated but were not installed (stale, already present, no \
             room, duplicate fragment), by sender address.",
            |s: &lfc::SenderCount| s.dropped,
            senders.other_dropped,
        ),
    ] {
        family(out, name, "counter", help);
        for s in &senders.senders {
            let _ = writeln!(out, "{name}{{sender=\"{}\"}} {}", s.addr, count(s));
        }
        let _ = writeln!(out, "{name}{{sender=\"other\"}} {other}");
    }
}

impl ThreadMetrics {
    pub fn record(&self, verdict: &Result<DatagramHeader, DropReason>, now_wall_ns: u64) {
        self.received.fetch_add(1, Ordering::Relaxed);
        match verdict {
            Ok(hdr) => {
                self.installed.fetch_add(1, Ordering::Relaxed);
                // Clocks of two hosts may disagree; a negative latency counts as zero.
                self.latency
                    .observe_ns(now_wall_ns.saturating_sub(hdr.sent_at_ns));
            }
            Err(reason) => {
                self.dropped[reason.index()].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A fragment kept for its page: a datagram received, neither installed nor dropped yet.
    pub fn record_held(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.fragments_held.fetch_add(1, Ordering::Relaxed);
    }

    /// A page made whole by rebuilding a lost fragment from its parity piece.
    pub fn record_rebuilt(&self) {
        self.fragments_rebuilt.fetch_add(1, Ordering::Relaxed);
    }

    /// `pages` given up with fragments missing (pages, not datagrams: no `received`).
    pub fn record_incomplete(&self, pages: u32) {
        if pages > 0 {
            self.dropped[DropReason::Incomplete.index()]
                .fetch_add(u64::from(pages), Ordering::Relaxed);
        }
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()].load(Ordering::Relaxed)
    }

    /// Datagrams this thread turned away as junk (`crate::junk::is_junk`), cumulative.
    pub fn junk(&self) -> u64 {
        DropReason::ALL
            .iter()
            .filter(|r| crate::junk::is_junk(**r))
            .map(|r| self.dropped(*r))
            .sum()
    }
}

/// Sum of all threads' counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub received: u64,
    pub installed: u64,
    pub dropped: [u64; DropReason::ALL.len()],
    pub fragments_held: u64,
    pub fragments_rebuilt: u64,
    pub kernel_drops: u64,
    pub receives: u64,
}

pub fn totals(threads: &[ThreadMetrics]) -> Totals {
    let mut t = Totals::default();
    for m in threads {
        t.received += m.received.load(Ordering::Relaxed);
        t.installed += m.installed.load(Ordering::Relaxed);
        for (i, d) in m.dropped.iter().enumerate() {
            t.dropped[i] += d.load(Ordering::Relaxed);
        }
        t.fragments_held += m.fragments_held.load(Ordering::Relaxed);
        t.fragments_rebuilt += m.fragments_rebuilt.load(Ordering::Relaxed);
        t.kernel_drops += m.kernel_drops.load(Ordering::Relaxed);
        t.receives += m.receives.load(Ordering::Relaxed);
    }
    t
}

/// What the daemon reports of the cache it serves, alongside its own counters.
#[derive(Debug, Clone, Default)]
pub struct CacheGauges {
    /// The cache's own counters and occupancy (every process attached to it counts there).
    pub lfc: lfc::LfcStats,
    /// Datagrams per sender since the daemon started (the cache's sender table, which only the
    /// daemon writes).
    pub senders: lfc::SenderCounts,
    /// Frames not yet mapped by the daemon's background prefault (0 when done or disabled).
    pub prefault_remaining_pages: u64,
    /// Whether the daemon's mapping of the cache is on 2 MiB pages (`lfc::HugePages::backed`).
    pub huge_pages: bool,
}

/// A counter family with one sample per worker thread, labelled by its index.
fn per_thread(
    out: &mut String,
    name: &str,
    help: &str,
    threads: &[ThreadMetrics],
    counter: impl Fn(&ThreadMetrics) -> &AtomicU64,
) {
    family(out, name, "counter", help);
    for (i, m) in threads.iter().enumerate() {
        let _ = writeln!(
            out,
            "{name}{{thread=\"{i}\"}} {}",
            counter(m).load(Ordering::Relaxed)
        );
    }
}

fn dropped_by_reason(out: &mut String, t: &Totals) {
    family(
        out,
        "udp_prefetch_datagrams_dropped_total",
        "counter",
        "Datagrams dropped, by reason.",
    );
    for r in DropReason::ALL {
        let _ = writeln!(
            out,
            "udp_prefetch_datagrams_dropped_total{{reason=\"{}\"}} {}",
            r.as_str(),
            t.dropped[r.index()]
        );
    }
}

/// Renders Prometheus text exposition format 0.0.4, this process's `process_*` families
/// included.
pub fn render_prometheus(threads: &[ThreadMetrics], cache: CacheGauges) -> String {
    let mut out = String::with_capacity(4096);
    datagram_totals(&mut out, &totals(threads));
    thread_families(&mut out, threads);
    by_sender(&mut out, &cache.senders);
    histogram(
        &mut out,
        "udp_prefetch_ingest_latency_seconds",
        "Sender timestamp to publish in the LFC, installed datagrams.",
        threads.iter().map(|m| &m.latency),
    );
    cache_gauges(&mut out, &cache);
    family(
        &mut out,
        "udp_prefetch_build_info",
        "gauge",
        "The daemon's build: always 1, the version in its label.",
    );
    let _ = writeln!(
        out,
        "udp_prefetch_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    crate::prom::process_metrics(&mut out);
    out
}

/// The workers' datagram counters, summed over threads.
fn datagram_totals(out: &mut String, t: &Totals) {
    single(
        out,
        "udp_prefetch_datagrams_received_total",
        "counter",
        "Datagrams received by the workers.",
        t.received,
    );
    single(
        out,
        "udp_prefetch_datagrams_installed_total",
        "counter",
        "Datagrams whose page was installed in the LFC.",
        t.installed,
    );
    single(
        out,
        "udp_prefetch_receives_total",
        "counter",
        "Receives that brought datagrams: one per datagram, or one per train the kernel \
         coalesced (UDP GRO); datagrams received / receives is the datagrams per receive.",
        t.receives,
    );
    dropped_by_reason(out, t);
    single(
        out,
        "udp_prefetch_fragments_held_total",
        "counter",
        "Page fragments that authenticated and were kept until their page was whole (or given \
         up: dropped reason=\"incomplete\", counted per page).",
        t.fragments_held,
    );
    single(
        out,
        "udp_prefetch_fragments_rebuilt_total",
        "counter",
        "Pages made whole by rebuilding a lost fragment from their parity piece.",
        t.fragments_rebuilt,
    );
    single(
        out,
        "udp_prefetch_kernel_drops_total",
        "counter",
        "Datagrams the kernel dropped for a full socket buffer (SO_RXQ_OVFL).",
        t.kernel_drops,
    );
}

/// The per-thread families: junk throttling, the real-time class, datagrams received and
/// installed.
fn thread_families(out: &mut String, threads: &[ThreadMetrics]) {
    per_thread(
        out,
        "udp_prefetch_thread_junk_throttled_windows_total",
        "Windows of 10 ms in which a worker thread turned away its budget of junk datagrams \
         and slept out the rest of the window.",
        threads,
        |m| &m.junk_throttled,
    );
    family(
        out,
        "udp_prefetch_thread_recv_buffer_bytes",
        "gauge",
        "A worker thread's socket receive buffer as the kernel accounts it: the configured \
         --recv-buffer, cut while a flood of junk lasts so that what it leaves queued is gone \
         soon after it stops.",
    );
    for (i, m) in threads.iter().enumerate() {
        let _ = writeln!(
            out,
            "udp_prefetch_thread_recv_buffer_bytes{{thread=\"{i}\"}} {}",
            m.recv_buffer_bytes.load(Ordering::Relaxed)
        );
    }
    family(
        out,
        "udp_prefetch_thread_realtime",
        "gauge",
        "1 while a worker thread runs in the real-time scheduling class (SCHED_FIFO), 0 when it \
         runs in another (workers --thread-class; a demoted thread counts 0).",
    );
    for (i, m) in threads.iter().enumerate() {
        let _ = writeln!(
            out,
            "udp_prefetch_thread_realtime{{thread=\"{i}\"}} {}",
            m.realtime.load(Ordering::Relaxed)
        );
    }
    per_thread(
        out,
        "udp_prefetch_thread_realtime_demotions_total",
        "Times a real-time worker thread took more than its share of a CPU over a window and \
         left the real-time class for a while.",
        threads,
        |m| &m.realtime_demotions,
    );
    per_thread(
        out,
        "udp_prefetch_thread_datagrams_received_total",
        "Datagrams received, per worker thread.",
        threads,
        |m| &m.received,
    );
    per_thread(
        out,
        "udp_prefetch_thread_datagrams_installed_total",
        "Datagrams installed, per worker thread.",
        threads,
        |m| &m.installed,
    );
}

/// The cache's occupancy, counters and mapping.
fn cache_gauges(out: &mut String, cache: &CacheGauges) {
    single(
        out,
        "udp_prefetch_lfc_capacity_pages",
        "gauge",
        "Pages the LFC can hold.",
        cache.lfc.capacity_pages,
    );
    single(
        out,
        "udp_prefetch_lfc_used_pages",
        "gauge",
        "Pages cached in the LFC.",
        cache.lfc.used_pages,
    );
    lfc_counters(out, &cache.lfc);
    single(
        out,
        "udp_prefetch_lfc_prefault_remaining_pages",
        "gauge",
        "LFC frames the daemon has not prefaulted yet (0: done, or --no-prefault).",
        cache.prefault_remaining_pages,
    );
    single(
        out,
        "udp_prefetch_lfc_huge_pages",
        "gauge",
        "1 when the LFC is mapped with 2 MiB pages, 0 when with 4 KiB pages (see the operator guide).",
        u64::from(cache.huge_pages),
    );
}

/// The cache's counters, as every attached process (backends, prewarm, this daemon) bumped
/// them since the cache was created.
fn lfc_counters(out: &mut String, s: &lfc::LfcStats) {
    for (name, help, value) in [
        ("hits", "Lookups that found the page.", s.hits),
        ("misses", "Lookups that did not find the page.", s.misses),
        ("installs", "Prefetched pages installed.", s.installs),
        (
            "writes",
            "Pages written by their backends (own new versions).",
            s.writes,
        ),
        (
            "stale_rejects",
            "Installs refused because the tag was written at a newer LSN.",
            s.stale_rejects,
        ),
        ("evictions", "Pages evicted to make room.", s.evictions),
        (
            "capped_evictions",
            "Of the evictions, pages still in use taken by a CLOCK sweep at its limit.",
            s.capped_evictions,
        ),
        (
            "no_room",
            "Installs refused for lack of a frame or of index room.",
            s.no_room,
        ),
    ] {
        single(
            out,
            &format!("udp_prefetch_lfc_{name}_total"),
            "counter",
            help,
            value,
        );
    }
}
