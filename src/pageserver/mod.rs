//! The reference page server: pagestream v3 over the PostgreSQL protocol (ARCHITECTURE §4, steps
//! 2–3).
//!
//! One thread accepts; each connection gets a reader thread and a responder thread. The server
//! is embeddable (`PageServer::start`) for the demo, the benchmarks and tests, and wrapped by
//! `udp-prefetch pageserver`.
//!
//! Owns: `ServerConfig` and its validation, `PageServer` (listener, acceptor thread, the `/metrics`
//! endpoint's thread, shutdown) and `Shared`, what every connection sees: store, stats, prefetch
//! senders and the live sockets. The page server never imports the compute, not even in tests, nor
//! the compute's half of `workers` (daemon, pump, ingest, junk, metrics, pidfile), and maps no LFC:
//! of `lfc` it uses only the tag types, `PAGE_SIZE`, the clocks and `Binding`.

mod conn;
pub mod prefetch;
pub mod session;
pub mod source;
pub mod stats;
pub mod store;
pub mod udp_sender;

use parking_lot::Mutex;
use prefetch::SchedulerLimits;
use source::SourceSpec;
use stats::{bump, ServerStats};
use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use store::PageStore;
use udp_sender::{PrefetchSender, SenderConfig};

/// Prefetch sender threads by default: one per two CPUs this process may use, at least one
/// (`workers::sched::default_threads`, the worker daemon's rule for its receive threads too),
/// at most 16. One sender seals and sends about 200k pages/s on the machines measured (reading
/// the page is most of it); a server with more CPUs serves more computes, and the senders'
/// fairness across connections holds with any number of them.
pub fn default_prefetch_senders() -> usize {
    workers::sched::default_threads().min(16)
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub source: SourceSpec,
    /// Cleartext password clients must send, when set.
    pub token: Option<String>,
    pub max_connections: usize,
    /// How long a client may take from connecting to finishing its startup (and password):
    /// a connection that says nothing holds a slot of `max_connections` only this long.
    pub startup_timeout: Duration,
    /// How long an established connection may stay silent before it is closed (None: forever,
    /// as PostgreSQL's `idle_session_timeout` of 0).
    pub idle_timeout: Option<Duration>,
    /// Emulated storage latency added to every response, in microseconds.
    pub service_delay_us: u64,
    /// How long a request waits for WAL to reach its `not_modified_since`.
    pub lsn_wait_timeout: Duration,
    /// Bound on page versions added by PutPage.
    pub max_page_versions: usize,
    /// UDP prefetch sender threads.
    pub prefetch_senders: usize,
    /// Pacing of prefetch datagrams per destination, bytes per second (0 = unpaced).
    pub prefetch_rate_bytes_per_s: u64,
    /// Bound on queued prefetch pages across all destinations.
    pub prefetch_queue_pages: u64,
    /// Bound on one connection's queued prefetch pages.
    pub prefetch_queue_pages_per_conn: u64,
    /// Fraction of prefetch datagrams dropped before sending, and the drop pattern's seed.
    pub drop_prefetch: f64,
    pub drop_seed: u64,
    /// Send prefetch datagrams with UDP GSO when the kernel allows it.
    pub prefetch_gso: bool,
    /// Nice value of the prefetch sender threads (0 = as started; negative needs privilege).
    pub prefetch_sender_nice: i32,
    /// Scheduling classes (`workers::sched::ThreadClass`): connection threads, which serve
    /// GetPage, ask for a short slice; prefetch sender threads are `SCHED_BATCH`.
    pub thread_classes: bool,
    /// How prefetch datagrams are protected (`workers::datagram` explains the choice); `None`
    /// chooses per session: `Aead` for a session that arrived over TLS (its datagram key was
    /// sent encrypted, so encrypting the pages protects something), `Token` for a plain one.
    pub datagram_protection: Option<workers::datagram::Protection>,
    /// Accept TLS through PostgreSQL's SSLRequest with this certificate (`None`: refuse it).
    pub tls: Option<crate::protocol::tls::ServerTls>,
    /// Refuse a startup that did not negotiate TLS.
    pub tls_required: bool,
    /// Serve `/metrics` and `/healthz` over HTTP here (`None`: no endpoint).
    pub metrics: Option<SocketAddr>,
    /// Speak this project's pagestream extension (PrefetchTarget, Prefetch, PutPage). False
    /// answers those tags as Neon's page server answers any tag it does not know
    /// (`session::unknown_tag_error`): a stand-in for a stock page server, which clients must
    /// detect and use as Neon's compute does.
    pub udp_extension: bool,
    /// Which shard of its tenant this server is (`--shard I/N`, `--stripe-pages`): it serves
    /// GetPage and Prefetch for that shard's pages only.
    pub shard: crate::protocol::shard::ShardIdentity,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:6400".parse().expect("valid address"),
            source: SourceSpec::default(),
            token: None,
            max_connections: 256,
            // PostgreSQL's `authentication_timeout` default.
            startup_timeout: Duration::from_secs(60),
            idle_timeout: None,
            service_delay_us: 0,
            lsn_wait_timeout: Duration::from_secs(2),
            max_page_versions: 65_536,
            prefetch_senders: default_prefetch_senders(),
            prefetch_rate_bytes_per_s: 0,
            prefetch_queue_pages: 1 << 20,
            prefetch_queue_pages_per_conn: 1 << 16,
            drop_prefetch: 0.0,
            drop_seed: 1,
            prefetch_gso: true,
            prefetch_sender_nice: 0,
            thread_classes: true,
            datagram_protection: None,
            tls: None,
            tls_required: false,
            metrics: None,
            udp_extension: true,
            shard: crate::protocol::shard::ShardIdentity::SINGLE,
        }
    }
}

/// State shared by every connection.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) store: Arc<PageStore>,
    pub(crate) stats: Arc<ServerStats>,
    pub(crate) prefetch: PrefetchSender,
    shutting_down: AtomicBool,
    /// Clones of live sockets, so shutdown can unblock their readers.
    live: Mutex<HashMap<u64, TcpStream>>,
    next_conn_id: AtomicU64,
}

/// A running server; dropping it stops the server.
pub struct PageServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
    metrics_addr: Option<SocketAddr>,
    metrics: Option<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ServerConfig {
    /// Refuses a configuration no server could run with, naming the flag.
    fn validate(&self) -> Result<(), ServerError> {
        if self.max_connections == 0 {
            return Err(ServerError::Config(
                "--max-connections must be at least 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.drop_prefetch) {
            return Err(ServerError::Config(
                "--drop-prefetch must be between 0 and 1".into(),
            ));
        }
        if self.prefetch_senders == 0 || self.prefetch_senders > 64 {
            return Err(ServerError::Config(
                "--prefetch-senders must be 1..=64".into(),
            ));
        }
        if !workers::sched::NICE_RANGE.contains(&self.prefetch_sender_nice) {
            return Err(ServerError::Config(
                "--prefetch-sender-nice must be -20..=19".into(),
            ));
        }
        if self.tls_required && self.tls.is_none() {
            return Err(ServerError::Config(
                "--tls-required needs --tls-cert and --tls-key".into(),
            ));
        }
        if self.prefetch_queue_pages == 0 {
            return Err(ServerError::Config(
                "--prefetch-queue-pages must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// What the prefetch sender threads need of the configuration.
    fn sender_config(&self) -> SenderConfig {
        SenderConfig {
            threads: self.prefetch_senders,
            limits: SchedulerLimits {
                max_queued_pages: self.prefetch_queue_pages,
                max_queued_pages_per_conn: self.prefetch_queue_pages_per_conn,
                rate_bytes_per_s: self.prefetch_rate_bytes_per_s,
                ..SchedulerLimits::default()
            },
            drop_probability: self.drop_prefetch,
            drop_seed: self.drop_seed,
            allow_gso: self.prefetch_gso,
            nice: self.prefetch_sender_nice,
            bulk_class: self.thread_classes,
        }
    }
}

impl PageServer {
    pub fn start(config: ServerConfig) -> Result<PageServer, ServerError> {
        config.validate()?;
        let source = config.source.open()?;
        let listener = TcpListener::bind(config.listen).map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let local_addr = listener.local_addr()?;
        let metrics_listener = match config.metrics {
            Some(addr) => {
                Some(TcpListener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?)
            }
            None => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        tracing::info!(%local_addr, source = %source.describe(), "page server listening");
        let store = Arc::new(PageStore::new(
            source,
            config.max_page_versions,
            config.lsn_wait_timeout,
        ));
        let stats = Arc::new(ServerStats::default());
        let prefetch = PrefetchSender::start(config.sender_config(), store.clone(), stats.clone())?;
        let shared = Arc::new(Shared {
            config,
            store,
            stats,
            prefetch,
            shutting_down: AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
            next_conn_id: AtomicU64::new(0),
        });
        let metrics = match metrics_listener {
            Some(l) => {
                let shared = shared.clone();
                Some(
                    std::thread::Builder::new()
                        .name("pageserver-metrics".into())
                        .spawn(move || serve_metrics(l, &shared))?,
                )
            }
            None => None,
        };
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("pageserver-accept".into())
                .spawn(move || accept_loop(listener, shared))?
        };
        Ok(PageServer {
            shared,
            local_addr,
            acceptor: Some(acceptor),
            metrics_addr,
            metrics,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Each prefetch sender thread's UDP source port: what the compute's `lfc stat` names this
    /// server's datagrams by.
    pub fn sender_ports(&self) -> &[u16] {
        self.shared.prefetch.ports()
    }

    /// Whether the accept loop still runs: false once it ended (shutdown) or died (a panic), when
    /// new connections go unanswered and a service manager's watchdog should restart the server.
    pub fn is_accepting(&self) -> bool {
        self.acceptor.as_ref().is_some_and(|a| !a.is_finished())
    }

    /// Where `/metrics` and `/healthz` are served, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn stats(&self) -> &ServerStats {
        &self.shared.stats
    }

    pub fn store(&self) -> &PageStore {
        &self.shared.store
    }

    /// Stops accepting, closes every connection and waits for the acceptor to exit.
    pub fn shutdown(&mut self) {
        if self.shared.shutting_down.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the blocking accept with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_secs(1));
        for (_, s) in self.shared.live.lock().drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        if let Some(m) = self.metrics.take() {
            let _ = m.join();
        }
        self.shared.prefetch.shutdown();
        tracing::info!("page server stopped");
    }
}

/// The HTTP endpoint: `/metrics` (`ServerStats::render_prometheus`), `/healthz`; until the
/// server shuts down.
fn serve_metrics(listener: TcpListener, shared: &Shared) {
    workers::http::serve(listener, &shared.shutting_down, |path| match path {
        "/healthz" => workers::http::healthy(),
        "/metrics" | "/" => {
            let queue = stats::QueueGauges {
                queued_pages: shared.prefetch.queued_pages(),
                capacity_pages: shared.config.prefetch_queue_pages,
            };
            let mut text = shared.stats.render_prometheus(queue);
            stats::render_shard(&mut text, shared.config.shard);
            stats::render_sender_ports(&mut text, shared.prefetch.ports());
            Some((workers::http::PROMETHEUS, text))
        }
        _ => None,
    });
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.shutting_down.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        bump(&shared.stats.connections_total);
        let active = shared
            .stats
            .connections_active
            .fetch_add(1, Ordering::SeqCst)
            + 1;
        let over_limit = active as usize > shared.config.max_connections;
        let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            shared.live.lock().insert(id, clone);
        }
        let peer = stream.peer_addr().ok();
        let conn_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("pagestream-read".into())
            .spawn(move || {
                if let Err(e) = conn::serve(stream, conn_shared.clone(), over_limit, id) {
                    tracing::info!(?peer, error = %e, "connection ended with an error");
                }
                conn_shared.live.lock().remove(&id);
                conn_shared
                    .stats
                    .connections_active
                    .fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a connection thread");
            shared.live.lock().remove(&id);
            shared
                .stats
                .connections_active
                .fetch_sub(1, Ordering::SeqCst);
        }
    }
}
