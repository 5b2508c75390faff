//! Server counters, readable over the wire with `SHOW prefetch_stats`.

use crate::protocol::pgwire::{BackendMessage, FieldDescription};
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Monotonic counters (and one gauge, `connections_active`), all relaxed atomics: they
        /// are statistics, never used to make decisions.
        #[derive(Debug, Default)]
        pub struct ServerStats {
            $(pub $name: AtomicU64,)*
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
    errors,
);

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl ServerStats {
    /// The counters in Prometheus' text format: `udp_prefetch_server_<name>_total` (and the
    /// gauge `udp_prefetch_server_connections_active`), with the build's version.
    pub fn render_prometheus(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(4096);
        for (name, value) in self.snapshot() {
            let (metric, kind) = if name == "connections_active" {
                (format!("udp_prefetch_server_{name}"), "gauge")
            } else {
                (format!("udp_prefetch_server_{name}_total"), "counter")
            };
            let _ = writeln!(
                out,
                "# HELP {metric} The page server's {name} (as in SHOW prefetch_stats).\n\
                 # TYPE {metric} {kind}\n{metric} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP udp_prefetch_build_info The server's build: always 1, the version in its \
             label.\n# TYPE udp_prefetch_build_info gauge\nudp_prefetch_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out
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
