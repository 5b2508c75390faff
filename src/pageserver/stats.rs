//! Server counters: readable over the wire with `SHOW prefetch_stats`, and with more detail
//! (errors by request type, the GetPage latency histogram, pages sent per destination,
//! process metrics) on the `/metrics` endpoint.
//!
//! Recording never takes a lock on the GetPage path: every hook is one or two relaxed atomic
//! adds. The one lock, of the per-destination table, is taken by prefetch sender threads once
//! per batch of datagrams sent.
//!
//! Owns: `ServerStats` (the counters, the GetPage latency histogram, the per-destination table) and
//! its two renderings, the `SHOW prefetch_stats` rows and the Prometheus text. Records and renders
//! only: it decides nothing, serves nothing (`mod.rs` serves the text through `workers::http`), and
//! reads the clock only to date a destination's last batch.

use crate::protocol::pagestream::Request;
use crate::protocol::pgwire::{BackendMessage, FieldDescription};
use parking_lot::Mutex;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use workers::prom::{self, LatencyHistogram};

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Monotonic counters (and one gauge, `connections_active`), all relaxed atomics: they
        /// are statistics, never used to make decisions. The listed counters are the columns of
        /// `SHOW prefetch_stats`; `detail` holds what only `/metrics` shows.
        #[derive(Debug, Default)]
        pub struct ServerStats {
            $(pub $name: AtomicU64,)*
            detail: Detail,
        }

        impl ServerStats {
            /// Column names and current values, in a fixed order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters!(
    connections_total,
    connections_active,
    connections_rejected,
    auth_failures,
    protocol_errors,
    get_page,
    exists,
    nblocks,
    db_size,
    put_page,
    prefetch_target,
    prefetch_priority,
    prefetch,
    prefetch_dropped_no_target,
    prefetch_pages_queued,
    prefetch_pages_sent,
    prefetch_pages_dropped_overflow,
    prefetch_pages_dropped_filter,
    prefetch_pages_skipped_fetched,
    prefetch_pages_dropped_closed,
    prefetch_pages_not_ready,
    prefetch_pages_failed,
    prefetch_send_errors,
    wrong_shard,
    errors,
    extension_refused,
);

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The kinds of request a client sends, as the `type` label of `/metrics`: the pagestream
/// requests and `query`, a simple query (only its errors are counted: those outside the
/// pagestream, such as an unsupported query).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Exists,
    Nblocks,
    GetPage,
    DbSize,
    PrefetchTarget,
    PrefetchPriority,
    Prefetch,
    PutPage,
    Query,
}

impl RequestKind {
    pub const ALL: [RequestKind; 9] = [
        RequestKind::Exists,
        RequestKind::Nblocks,
        RequestKind::GetPage,
        RequestKind::DbSize,
        RequestKind::PrefetchTarget,
        RequestKind::PrefetchPriority,
        RequestKind::Prefetch,
        RequestKind::PutPage,
        RequestKind::Query,
    ];

    pub fn of(req: &Request) -> RequestKind {
        match req {
            Request::Exists { .. } => RequestKind::Exists,
            Request::Nblocks { .. } => RequestKind::Nblocks,
            Request::GetPage { .. } => RequestKind::GetPage,
            Request::DbSize { .. } => RequestKind::DbSize,
            Request::PrefetchTarget { .. } => RequestKind::PrefetchTarget,
            Request::PrefetchPriority { .. } => RequestKind::PrefetchPriority,
            Request::Prefetch { .. } => RequestKind::Prefetch,
            Request::PutPage { .. } => RequestKind::PutPage,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Exists => "exists",
            RequestKind::Nblocks => "nblocks",
            RequestKind::GetPage => "get_page",
            RequestKind::DbSize => "db_size",
            RequestKind::PrefetchTarget => "prefetch_target",
            RequestKind::PrefetchPriority => "prefetch_priority",
            RequestKind::Prefetch => "prefetch",
            RequestKind::PutPage => "put_page",
            RequestKind::Query => "query",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Destinations with a sample of their own in the per-destination family; the others are
/// summed in `destination="other"`. This bounds the family's cardinality at
/// `MAX_DESTINATIONS + 1` series per scrape.
pub const MAX_DESTINATIONS: usize = 16;
/// A destination keeps its sample while it is sent something at least this often; when the
/// table is full, the longest idle destination past this gives its place to a new one. So
/// samples are replaced at most `MAX_DESTINATIONS` times per period, and a server with more
/// active computes than places does not churn series.
pub const DESTINATION_IDLE: Duration = Duration::from_secs(300);

/// What `/metrics` shows beyond the columns of `SHOW prefetch_stats`.
#[derive(Debug, Default)]
struct Detail {
    /// Requests answered with an error, by `RequestKind::index`. Their sum is `errors`.
    errors_by_kind: [AtomicU64; RequestKind::ALL.len()],
    /// Pages of Prefetch requests on connections without a PrefetchTarget.
    prefetch_pages_no_target: AtomicU64,
    get_page_latency: LatencyHistogram,
    destinations: Mutex<DestinationTable>,
}

/// Prefetch pages sent per destination, for at most `MAX_DESTINATIONS` destinations plus
/// `other`. Its total is always every page sent: a destination that gives its place away
/// leaves its count in `other`.
#[derive(Debug, Default)]
struct DestinationTable {
    entries: Vec<DestinationEntry>,
    other: u64,
}

#[derive(Debug, Clone, Copy)]
struct DestinationEntry {
    addr: SocketAddr,
    pages: u64,
    last_sent_ns: u64,
}

impl DestinationTable {
    fn record(&mut self, addr: SocketAddr, pages: u64, now_ns: u64) {
        let fresh = DestinationEntry {
            addr,
            pages,
            last_sent_ns: now_ns,
        };
        if let Some(e) = self.entries.iter_mut().find(|e| e.addr == addr) {
            e.pages += pages;
            e.last_sent_ns = now_ns;
        } else if self.entries.len() < MAX_DESTINATIONS {
            self.entries.push(fresh);
        } else {
            let idlest = self
                .entries
                .iter_mut()
                .min_by_key(|e| e.last_sent_ns)
                .expect("the table is full");
            if now_ns.saturating_sub(idlest.last_sent_ns) >= DESTINATION_IDLE.as_nanos() as u64 {
                self.other += idlest.pages;
                *idlest = fresh;
            } else {
                self.other += pages;
            }
        }
    }

    /// The samples, in address order (stable across scrapes), then `other`.
    fn samples(&self) -> Vec<(String, u64)> {
        let mut entries = self.entries.clone();
        entries.sort_by_key(|e| e.addr);
        entries
            .iter()
            .map(|e| (e.addr.to_string(), e.pages))
            .chain([("other".to_string(), self.other)])
            .collect()
    }
}

/// Which shard this server is (`--shard I/N`, `--stripe-pages`): three gauges, so a
/// dashboard can tell the shards of a tenant apart (0, 1 and the default stripe unsharded).
pub fn render_shard(out: &mut String, shard: crate::protocol::shard::ShardIdentity) {
    prom::single(
        out,
        "udp_prefetch_server_shard_number",
        "gauge",
        "This server's shard number (--shard I/N: I).",
        shard.number() as u64,
    );
    prom::single(
        out,
        "udp_prefetch_server_shards",
        "gauge",
        "Shards of the tenant (--shard I/N: N; 1 when unsharded).",
        shard.layout().count() as u64,
    );
    prom::single(
        out,
        "udp_prefetch_server_shard_stripe_pages",
        "gauge",
        "Stripe size of the tenant's sharding, in pages (--stripe-pages).",
        u64::from(shard.layout().stripe_pages()),
    );
}

/// Each prefetch sender thread's UDP source port, so an operator can tell which shard a row
/// of the compute's `lfc stat` (or its daemon's `..._by_sender_total`) is: the row's port is
/// one of these.
pub fn render_sender_ports(out: &mut String, ports: &[u16]) {
    let name = "udp_prefetch_server_sender_port";
    prom::family(
        out,
        name,
        "gauge",
        "UDP source port of each prefetch sender thread (what the compute names a sender by).",
    );
    for (i, port) in ports.iter().enumerate() {
        let _ = writeln!(out, "{name}{{thread=\"{i}\"}} {port}");
    }
}

/// Gauges of the prefetch queue, which the sender owns.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueGauges {
    /// Prefetch pages queued now.
    pub queued_pages: u64,
    /// The queue's bound (`--prefetch-queue-pages`).
    pub capacity_pages: u64,
}

impl ServerStats {
    /// A request of `kind` was answered with an error (or, for a Prefetch, which has no
    /// answer, refused).
    pub fn on_error(&self, kind: RequestKind) {
        bump(&self.errors);
        bump(&self.detail.errors_by_kind[kind.index()]);
    }

    /// A Prefetch of `nblocks` pages came on a connection without a PrefetchTarget: an error of
    /// the request, and its pages are dropped.
    pub fn on_prefetch_without_target(&self, nblocks: u16) {
        bump(&self.prefetch_dropped_no_target);
        self.on_error(RequestKind::Prefetch);
        self.detail
            .prefetch_pages_no_target
            .fetch_add(u64::from(nblocks), Ordering::Relaxed);
    }

    /// `req` was answered `elapsed` after it arrived (errors included). Only GetPage has a
    /// histogram: it is the request a backend waits for.
    pub fn on_answered(&self, req: &Request, elapsed: Duration) {
        if let Request::GetPage { .. } = req {
            self.detail.get_page_latency.observe(elapsed);
        }
    }

    /// A sender sent `pages` prefetch datagrams to `dest`.
    pub fn on_pages_sent(&self, dest: SocketAddr, pages: u64) {
        self.prefetch_pages_sent.fetch_add(pages, Ordering::Relaxed);
        self.detail
            .destinations
            .lock()
            .record(dest, pages, lfc::monotonic_ns());
    }

    /// Requests of `kind` received (simple queries are not counted).
    fn requests(&self, kind: RequestKind) -> Option<u64> {
        let counter = match kind {
            RequestKind::Exists => &self.exists,
            RequestKind::Nblocks => &self.nblocks,
            RequestKind::GetPage => &self.get_page,
            RequestKind::DbSize => &self.db_size,
            RequestKind::PrefetchTarget => &self.prefetch_target,
            RequestKind::PrefetchPriority => &self.prefetch_priority,
            RequestKind::Prefetch => &self.prefetch,
            RequestKind::PutPage => &self.put_page,
            RequestKind::Query => return None,
        };
        Some(counter.load(Ordering::Relaxed))
    }

    /// Prefetch pages not sent, by reason (the `reason` label).
    fn pages_dropped(&self) -> [(&'static str, u64); 8] {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("overflow", load(&self.prefetch_pages_dropped_overflow)),
            ("no_target", load(&self.detail.prefetch_pages_no_target)),
            ("closed", load(&self.prefetch_pages_dropped_closed)),
            ("fetched", load(&self.prefetch_pages_skipped_fetched)),
            ("not_ready", load(&self.prefetch_pages_not_ready)),
            ("failed", load(&self.prefetch_pages_failed)),
            ("filter", load(&self.prefetch_pages_dropped_filter)),
            ("send_error", load(&self.prefetch_send_errors)),
        ]
    }

    /// Everything in Prometheus' text format (the families are listed in the README's
    /// operator guide), with the build's version and this process's `process_*` families.
    pub fn render_prometheus(&self, queue: QueueGauges) -> String {
        let mut out = String::with_capacity(8192);
        self.render_connections(&mut out);
        self.render_requests(&mut out);
        self.render_prefetch(&mut out, queue);
        prom::labelled(
            &mut out,
            "udp_prefetch_build_info",
            "gauge",
            "The server's build: always 1, the version in its label.",
            "version",
            [(env!("CARGO_PKG_VERSION"), 1)],
        );
        prom::process_metrics(&mut out);
        out
    }

    fn render_connections(&self, out: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (name, kind, help, value) in [
            (
                "connections_total",
                "counter",
                "Client connections accepted.",
                load(&self.connections_total),
            ),
            (
                "connections_active",
                "gauge",
                "Client connections open now.",
                load(&self.connections_active),
            ),
            (
                "connections_rejected_total",
                "counter",
                "Connections refused for --max-connections.",
                load(&self.connections_rejected),
            ),
            (
                "auth_failures_total",
                "counter",
                "Connections refused for a wrong password.",
                load(&self.auth_failures),
            ),
            (
                "protocol_errors_total",
                "counter",
                "Connections closed for a malformed or unexpected message.",
                load(&self.protocol_errors),
            ),
            (
                "extension_refused_total",
                "counter",
                "Extension messages (tags 0x40-0x43) refused as an unknown tag \
                 (--no-udp-extension).",
                load(&self.extension_refused),
            ),
        ] {
            prom::single(
                out,
                &format!("udp_prefetch_server_{name}"),
                kind,
                help,
                value,
            );
        }
    }

    fn render_requests(&self, out: &mut String) {
        prom::labelled(
            out,
            "udp_prefetch_server_requests_total",
            "counter",
            "Pagestream requests received, by type.",
            "type",
            RequestKind::ALL
                .iter()
                .filter_map(|&k| Some((k.as_str(), self.requests(k)?))),
        );
        prom::labelled(
            out,
            "udp_prefetch_server_request_errors_total",
            "counter",
            "Requests answered with an error, by type (prefetch: sent without a \
             PrefetchTarget; query: a simple query the server does not support).",
            "type",
            RequestKind::ALL.iter().map(|&k| {
                let errors = &self.detail.errors_by_kind[k.index()];
                (k.as_str(), errors.load(Ordering::Relaxed))
            }),
        );
        prom::single(
            out,
            "udp_prefetch_server_wrong_shard_total",
            "counter",
            "GetPage and Prefetch requests refused because another shard owns the page \
             (--shard): the compute routes with another shard map.",
            self.wrong_shard.load(Ordering::Relaxed),
        );
        prom::histogram(
            out,
            "udp_prefetch_server_get_page_latency_seconds",
            "GetPage requests from their arrival to their response (errors included): the \
             wait behind earlier requests of the connection, for WAL, and the page read.",
            [&self.detail.get_page_latency],
        );
    }

    fn render_prefetch(&self, out: &mut String, queue: QueueGauges) {
        prom::single(
            out,
            "udp_prefetch_server_prefetch_queue_pages",
            "gauge",
            "Prefetch pages queued for sending now.",
            queue.queued_pages,
        );
        prom::single(
            out,
            "udp_prefetch_server_prefetch_queue_capacity_pages",
            "gauge",
            "Bound on queued prefetch pages (--prefetch-queue-pages).",
            queue.capacity_pages,
        );
        prom::single(
            out,
            "udp_prefetch_server_prefetch_pages_queued_total",
            "counter",
            "Prefetch pages queued for sending.",
            self.prefetch_pages_queued.load(Ordering::Relaxed),
        );
        prom::single(
            out,
            "udp_prefetch_server_prefetch_pages_sent_total",
            "counter",
            "Prefetch pages sent as datagrams.",
            self.prefetch_pages_sent.load(Ordering::Relaxed),
        );
        prom::labelled(
            out,
            "udp_prefetch_server_prefetch_pages_dropped_total",
            "counter",
            "Prefetch pages not sent, by reason.",
            "reason",
            self.pages_dropped(),
        );
        prom::labelled(
            out,
            "udp_prefetch_server_prefetch_destination_pages_sent_total",
            "counter",
            "Prefetch pages sent per destination (worker daemon address), for at most 16 \
             destinations at a time; the rest under \"other\".",
            "destination",
            self.detail.destinations.lock().samples(),
        );
    }

    /// The one-row result of `SHOW prefetch_stats`.
    pub fn as_result_set(&self) -> [BackendMessage; 2] {
        let snap = self.snapshot();
        let fields = snap
            .iter()
            .map(|(n, _)| FieldDescription::int8(n))
            .collect();
        let row = snap
            .iter()
            .map(|(_, v)| Some(v.to_string().into_bytes()))
            .collect();
        [
            BackendMessage::RowDescription(fields),
            BackendMessage::DataRow(row),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn the_destination_table_is_bounded_and_counts_every_page() {
        let idle = DESTINATION_IDLE.as_nanos() as u64;
        let mut t = DestinationTable::default();
        for port in 0..MAX_DESTINATIONS as u16 {
            t.record(addr(port), 10, 1_000 + u64::from(port));
        }
        // Full, nobody idle long enough: a new destination counts under `other`.
        t.record(addr(100), 3, 2_000);
        assert_eq!(t.entries.len(), MAX_DESTINATIONS);
        assert_eq!(t.other, 3);
        // Port 0 was sent to first: once idle past the limit it gives way (its count goes to
        // `other`), while port 1, sent to again, keeps its place.
        t.record(addr(1), 5, 1_500 + idle);
        t.record(addr(100), 4, 1_500 + idle);
        let samples = t.samples();
        assert_eq!(samples.len(), MAX_DESTINATIONS + 1);
        let get = |name: &str| samples.iter().find(|(n, _)| n == name).map(|s| s.1);
        assert_eq!(get("10.0.0.1:0"), None);
        assert_eq!(get("10.0.0.1:1"), Some(15));
        assert_eq!(get("10.0.0.1:100"), Some(4));
        assert_eq!(get("other"), Some(13));
        let total: u64 = samples.iter().map(|s| s.1).sum();
        assert_eq!(total, 10 * MAX_DESTINATIONS as u64 + 3 + 5 + 4);
        assert_eq!(samples.last().unwrap().0, "other");
    }

    #[test]
    fn errors_by_type_add_up_to_the_errors_column() {
        let s = ServerStats::default();
        s.on_error(RequestKind::GetPage);
        s.on_error(RequestKind::Query);
        s.on_prefetch_without_target(7);
        let hdr = crate::protocol::pagestream::Header {
            reqid: 1,
            request_lsn: 0,
            not_modified_since: 0,
        };
        let rel = lfc::RelTag::new(1663, 5, 16384, 0);
        s.on_answered(
            &Request::GetPage { hdr, rel, blkno: 0 },
            Duration::from_micros(30),
        );
        s.on_answered(&Request::Exists { hdr, rel }, Duration::from_micros(30));
        bump(&s.get_page);
        s.on_pages_sent(addr(6401), 32);
        let text = s.render_prometheus(QueueGauges {
            queued_pages: 5,
            capacity_pages: 100,
        });
        assert_eq!(s.errors.load(Ordering::Relaxed), 3);
        for line in [
            "udp_prefetch_server_requests_total{type=\"get_page\"} 1",
            "udp_prefetch_server_request_errors_total{type=\"get_page\"} 1",
            "udp_prefetch_server_request_errors_total{type=\"query\"} 1",
            "udp_prefetch_server_request_errors_total{type=\"prefetch\"} 1",
            "udp_prefetch_server_request_errors_total{type=\"exists\"} 0",
            "udp_prefetch_server_prefetch_pages_dropped_total{reason=\"no_target\"} 7",
            "udp_prefetch_server_get_page_latency_seconds_bucket{le=\"0.00005\"} 1",
            "udp_prefetch_server_get_page_latency_seconds_count 1",
            "udp_prefetch_server_prefetch_queue_pages 5",
            "udp_prefetch_server_prefetch_queue_capacity_pages 100",
            "udp_prefetch_server_prefetch_pages_sent_total 32",
            "udp_prefetch_server_prefetch_destination_pages_sent_total{destination=\"10.0.0.1:6401\"} 32",
            "udp_prefetch_server_prefetch_destination_pages_sent_total{destination=\"other\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // Simple queries are not counted as requests (only their errors are).
        assert!(!text.contains("requests_total{type=\"query\"}"), "{text}");
    }
}
