//! Worker counters and their Prometheus text rendering. Counters are process-local relaxed
//! atomics, one set per thread, summed when scraped.

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
    /// Sender timestamp to publish, installed datagrams.
    latency: LatencyHistogram,
    /// Installed datagrams by sender address: which page-server shard they came from.
    pub senders: SenderCounts,
}

/// Senders with a series of their own, per thread; the rest count under `other`.
pub const MAX_SENDERS: usize = 16;

/// Installed datagrams per sender (IPv4 address and port), for the first [`MAX_SENDERS`]
/// senders a thread sees; later ones and IPv6 senders count under `other`. Written only by
/// its worker thread (so claiming an entry needs no compare-and-swap) and read by the scrape.
/// Only installed datagrams count: forged ones, whose source is anyone's to choose, never
/// take an entry.
#[derive(Debug, Default)]
pub struct SenderCounts {
    /// `(IPv4 << 16 | port) + 1`; 0 is a free entry.
    keys: [AtomicU64; MAX_SENDERS],
    counts: [AtomicU64; MAX_SENDERS],
    other: AtomicU64,
}

impl SenderCounts {
    /// One installed datagram from `from`. Called by the owning thread only.
    pub fn record(&self, from: std::net::SocketAddr) {
        let key = match from {
            std::net::SocketAddr::V4(a) => {
                (u64::from(a.ip().to_bits()) << 16 | u64::from(a.port())) + 1
            }
            std::net::SocketAddr::V6(_) => 0,
        };
        if key != 0 {
            for (k, c) in self.keys.iter().zip(&self.counts) {
                match k.load(Ordering::Relaxed) {
                    0 => {
                        // Count first, then publish the key: a scrape never sees a key whose
                        // count is missing.
                        c.fetch_add(1, Ordering::Relaxed);
                        k.store(key, Ordering::Release);
                        return;
                    }
                    found if found == key => {
                        c.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    _ => {}
                }
            }
        }
        self.other.fetch_add(1, Ordering::Relaxed);
    }

    /// `(sender, count)` of every claimed entry, and the `other` count.
    pub fn samples(&self) -> (Vec<(std::net::SocketAddr, u64)>, u64) {
        let mut out = Vec::new();
        for (k, c) in self.keys.iter().zip(&self.counts) {
            let key = k.load(Ordering::Acquire);
            if key == 0 {
                break;
            }
            let key = key - 1;
            let ip = std::net::Ipv4Addr::from_bits((key >> 16) as u32);
            let addr = std::net::SocketAddr::from((ip, key as u16));
            out.push((addr, c.load(Ordering::Relaxed)));
        }
        (out, self.other.load(Ordering::Relaxed))
    }
}

/// Installed datagrams by sender over all threads, in sender order, `other` last.
fn by_sender(out: &mut String, threads: &[ThreadMetrics]) {
    let name = "udp_prefetch_datagrams_installed_by_sender_total";
    family(
        out,
        name,
        "counter",
        "Datagrams installed, by sender address (a page-server shard's sender threads): the \
         first 16 senders each thread saw have their own series, the rest are \"other\".",
    );
    let mut total = std::collections::BTreeMap::new();
    let mut other = 0;
    for m in threads {
        let (samples, o) = m.senders.samples();
        for (addr, n) in samples {
            *total.entry(addr).or_insert(0) += n;
        }
        other += o;
    }
    for (addr, n) in total {
        let _ = writeln!(out, "{name}{{sender=\"{addr}\"}} {n}");
    }
    let _ = writeln!(out, "{name}{{sender=\"other\"}} {other}");
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
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheGauges {
    /// The cache's own counters and occupancy (every process attached to it counts there).
    pub lfc: lfc::LfcStats,
    /// Frames not yet mapped by the daemon's background prefault (0 when done or disabled).
    pub prefault_remaining_pages: u64,
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
    let t = totals(threads);
    single(
        &mut out,
        "udp_prefetch_datagrams_received_total",
        "counter",
        "Datagrams received by the workers.",
        t.received,
    );
    single(
        &mut out,
        "udp_prefetch_datagrams_installed_total",
        "counter",
        "Datagrams whose page was installed in the LFC.",
        t.installed,
    );
    single(
        &mut out,
        "udp_prefetch_receives_total",
        "counter",
        "Receives that brought datagrams: one per datagram, or one per train the kernel \
         coalesced (UDP GRO); datagrams received / receives is the datagrams per receive.",
        t.receives,
    );
    dropped_by_reason(&mut out, &t);
    single(
        &mut out,
        "udp_prefetch_fragments_held_total",
        "counter",
        "Page fragments that authenticated and were kept until their page was whole (or given \
         up: dropped reason=\"incomplete\", counted per page).",
        t.fragments_held,
    );
    single(
        &mut out,
        "udp_prefetch_fragments_rebuilt_total",
        "counter",
        "Pages made whole by rebuilding a lost fragment from their parity piece.",
        t.fragments_rebuilt,
    );
    single(
        &mut out,
        "udp_prefetch_kernel_drops_total",
        "counter",
        "Datagrams the kernel dropped for a full socket buffer (SO_RXQ_OVFL).",
        t.kernel_drops,
    );
    per_thread(
        &mut out,
        "udp_prefetch_thread_junk_throttled_windows_total",
        "Windows of 10 ms in which a worker thread turned away its budget of junk datagrams \
         and slept out the rest of the window.",
        threads,
        |m| &m.junk_throttled,
    );
    per_thread(
        &mut out,
        "udp_prefetch_thread_datagrams_received_total",
        "Datagrams received, per worker thread.",
        threads,
        |m| &m.received,
    );
    per_thread(
        &mut out,
        "udp_prefetch_thread_datagrams_installed_total",
        "Datagrams installed, per worker thread.",
        threads,
        |m| &m.installed,
    );
    by_sender(&mut out, threads);
    histogram(
        &mut out,
        "udp_prefetch_ingest_latency_seconds",
        "Sender timestamp to publish in the LFC, installed datagrams.",
        threads.iter().map(|m| &m.latency),
    );
    single(
        &mut out,
        "udp_prefetch_lfc_capacity_pages",
        "gauge",
        "Pages the LFC can hold.",
        cache.lfc.capacity_pages,
    );
    single(
        &mut out,
        "udp_prefetch_lfc_used_pages",
        "gauge",
        "Pages cached in the LFC.",
        cache.lfc.used_pages,
    );
    lfc_counters(&mut out, &cache.lfc);
    single(
        &mut out,
        "udp_prefetch_lfc_prefault_remaining_pages",
        "gauge",
        "LFC frames the daemon has not prefaulted yet (0: done, or --no-prefault).",
        cache.prefault_remaining_pages,
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn senders_are_counted_each_up_to_the_bound_then_as_other() {
        let c = SenderCounts::default();
        let a: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let b: SocketAddr = "10.0.0.3:40001".parse().unwrap();
        c.record(a);
        c.record(b);
        c.record(a);
        c.record("[::1]:5".parse().unwrap());
        let (samples, other) = c.samples();
        assert_eq!(samples, vec![(a, 2), (b, 1)]);
        assert_eq!(other, 1, "IPv6 counts under other");
        for port in 0..MAX_SENDERS as u16 {
            c.record(SocketAddr::from(([10, 0, 1, 1], port)));
        }
        let (samples, other) = c.samples();
        assert_eq!(samples.len(), MAX_SENDERS);
        assert_eq!(other, 3, "two senders past the bound, and the IPv6 one");
        assert_eq!(
            samples.iter().map(|s| s.1).sum::<u64>() + other,
            3 + 1 + MAX_SENDERS as u64
        );
    }
}
