//! `udp-prefetch pageserver`: the reference page server.
//!
//! Owns: its flags (`PageServerArgs`, turned into a `ServerConfig` and a `ShardIdentity`), the
//! signal handling, and the readiness and watchdog messages to a service manager. Every serving
//! decision is `PageServer`'s; it touches no LFC and uses nothing of the compute.

use super::{BadInput, Outcome};
use crate::pageserver::source::SourceSpec;
use crate::pageserver::{PageServer, ServerConfig, ServerError};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct PageServerArgs {
    /// Address to listen on for pagestream connections: HOST:PORT, or HOST alone for port 6400;
    /// names are resolved.
    #[arg(long, default_value = "127.0.0.1:6400", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Page source: `synthetic[:rels=R,pages=N]` or `pgdata:PATH` (a PostgreSQL data directory,
    /// read-only).
    #[arg(long, default_value = "synthetic", value_parser = parse_source)]
    pub source: SourceSpec,
    /// Require this cleartext password from clients.
    #[arg(long, env = "UDPF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Connections served at once; more are refused with SQLSTATE 53300.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Milliseconds a client may take from connecting to the end of its startup (and
    /// password); a silent connection is then closed with SQLSTATE 57014, as PostgreSQL's
    /// `authentication_timeout` does.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub startup_timeout_ms: u64,
    /// Seconds an established connection may stay silent before it is closed (SQLSTATE
    /// 57P05); 0 = never, as PostgreSQL's `idle_session_timeout`.
    #[arg(long, default_value_t = 0)]
    pub idle_timeout_s: u64,
    /// Emulated storage latency added to every response, in microseconds; applied per request
    /// without delaying other requests.
    #[arg(long, default_value_t = 0)]
    pub service_delay_us: u64,
    /// How long a request waits for WAL to reach its not_modified_since before error 103.
    #[arg(long, default_value_t = 2000)]
    pub lsn_wait_timeout_ms: u64,
    /// Most page versions PutPage may add.
    #[arg(long, default_value_t = 65_536)]
    pub max_page_versions: usize,
    /// Pacing of UDP prefetch datagrams per destination, bytes per second; 0 = unpaced.
    #[arg(long, default_value_t = 0)]
    pub prefetch_rate: u64,
    /// Threads sending UDP prefetch datagrams (default: one per two CPUs, at least one, at most 16).
    // The default depends on the machine: the text above states it once, and help shows no
    // second, this machine's, number.
    #[arg(long, default_value_t = crate::pageserver::default_prefetch_senders(), hide_default_value = true)]
    pub prefetch_senders: usize,
    /// Prefetch pages queued across all destinations; beyond it Prefetch requests are dropped
    /// (counted), never GetPages.
    #[arg(long, default_value_t = 1 << 20)]
    pub prefetch_queue_pages: u64,
    /// Prefetch pages one connection may have queued; beyond it its Prefetch requests are
    /// dropped (counted), so one client cannot fill the queue for all.
    #[arg(long, default_value_t = 1 << 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub prefetch_queue_pages_per_conn: u64,
    /// Drop this fraction (0..1) of prefetch datagrams before sending, for loss experiments.
    #[arg(long, default_value_t = 0.0)]
    pub drop_prefetch: f64,
    /// Seed of the --drop-prefetch pattern.
    #[arg(long, default_value_t = 1)]
    pub drop_seed: u64,
    /// Send prefetch datagrams without UDP GSO (one datagram per message), for comparisons.
    #[arg(long)]
    pub no_gso: bool,
    /// Nice value of the prefetch sender threads (0 = as started). One sender serves every
    /// connection, so on a busy server it gets the CPU share of one connection thread among
    /// hundreds and prefetches arrive too late; a negative value (e.g. -10, needs root or
    /// CAP_SYS_NICE) gives it the weight of several.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub prefetch_sender_nice: i32,
    /// Leave every thread in the default scheduling class. By default the threads that serve
    /// connections ask for a short CPU slice (their wake-ups preempt bulk work; Linux 6.12+)
    /// and the prefetch sender threads run as SCHED_BATCH.
    #[arg(long)]
    pub no_thread_classes: bool,
    /// Protection of prefetch datagrams: `token` (the page in the clear with the stream's
    /// 128-bit token and an XXH3-64 checksum: as secure as the plain TCP connection that
    /// registered the stream, which carries the key in the clear) or `aead` (AES-128-GCM,
    /// several µs per page on CPUs without VAES; for when the connection itself is encrypted).
    /// Without it, each session gets `aead` if it arrived over TLS and `token` if not. Worker
    /// daemons accept both.
    #[arg(long)]
    pub datagram_protection: Option<workers::datagram::Protection>,
    /// Accept TLS (PostgreSQL's SSLRequest, as `psql sslmode=require` sends) with this
    /// certificate chain, PEM, the server's certificate first. Needs --tls-key. Sessions over
    /// TLS get encrypted datagrams unless --datagram-protection says otherwise.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Refuse connections that do not negotiate TLS (FATAL at their startup message). Needs
    /// --tls-cert and --tls-key.
    #[arg(long, requires = "tls_cert")]
    pub tls_required: bool,
    /// Serve Prometheus metrics (GET /metrics: connections, requests and errors by type, GetPage
    /// latency, prefetch queue and pages, process metrics) and a health check (GET /healthz)
    /// over HTTP on this address: HOST:PORT, names resolved.
    #[arg(long, value_parser = super::parse_metrics)]
    pub metrics: Option<SocketAddr>,
    /// Behave as a page server without this project's extension: PrefetchTarget, Prefetch,
    /// PutPage and PrefetchPriority (tags 0x40-0x43) get what Neon's page server answers an
    /// unknown tag (ErrorResponse SQLSTATE XX000 "invalid tag N", then ReadyForQuery: the
    /// pagestream ends). Clients then read as Neon's compute does, pipelined GetPage over TCP.
    #[arg(long)]
    pub no_udp_extension: bool,
    /// This server is shard I of a tenant of N shards (I from 0, e.g. 1/3): it serves GetPage
    /// and Prefetch only for the pages Neon's routing gives to shard I, and answers any other
    /// with error 103 naming the owner. Exists, Nblocks and DbSize are served whatever the
    /// shard (computes send them to shard 0). Default 0/1: every page.
    #[arg(long, default_value = "0/1")]
    pub shard: String,
    /// Stripe size of the tenant's sharding, in 8 KiB pages (Neon's default, 16 MiB); every
    /// shard and compute of a tenant must use the same.
    #[arg(long, default_value_t = crate::protocol::shard::DEFAULT_STRIPE_PAGES)]
    pub stripe_pages: u32,
}

impl PageServerArgs {
    /// `--shard` with `--stripe-pages`, or why not (the service unit generator refuses the
    /// same flags the server would).
    pub fn shard_identity(&self) -> Result<crate::protocol::shard::ShardIdentity, BadInput> {
        crate::protocol::shard::ShardIdentity::parse(&self.shard, self.stripe_pages).map_err(|e| {
            BadInput(format!(
                "--shard {} --stripe-pages {}: {e}",
                self.shard, self.stripe_pages
            ))
        })
    }
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    super::listen_addr(s, crate::protocol::client::DEFAULT_PORT)
}

fn parse_source(s: &str) -> Result<SourceSpec, String> {
    s.parse()
        .map_err(|e: crate::pageserver::source::SourceError| e.to_string())
}

impl PageServerArgs {
    /// The server's configuration from the flags; a shard spec that does not parse or a TLS key
    /// pair that cannot be read is bad input.
    fn server_config(self) -> Result<ServerConfig, BadInput> {
        let shard = self.shard_identity()?;
        Ok(ServerConfig {
            listen: self.listen,
            source: self.source,
            token: self.token,
            max_connections: self.max_connections,
            startup_timeout: Duration::from_millis(self.startup_timeout_ms),
            idle_timeout: (self.idle_timeout_s > 0)
                .then(|| Duration::from_secs(self.idle_timeout_s)),
            service_delay_us: self.service_delay_us,
            lsn_wait_timeout: Duration::from_millis(self.lsn_wait_timeout_ms),
            max_page_versions: self.max_page_versions,
            prefetch_senders: self.prefetch_senders,
            prefetch_rate_bytes_per_s: self.prefetch_rate,
            prefetch_queue_pages: self.prefetch_queue_pages,
            prefetch_queue_pages_per_conn: self.prefetch_queue_pages_per_conn,
            drop_prefetch: self.drop_prefetch,
            drop_seed: self.drop_seed,
            prefetch_gso: !self.no_gso,
            prefetch_sender_nice: self.prefetch_sender_nice,
            thread_classes: !self.no_thread_classes,
            datagram_protection: self.datagram_protection,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(
                    crate::protocol::tls::ServerTls::from_pem_files(cert, key)
                        .map_err(|e| BadInput(e.to_string()))?,
                ),
                _ => None,
            },
            tls_required: self.tls_required,
            metrics: self.metrics,
            udp_extension: !self.no_udp_extension,
            shard,
        })
    }
}

pub fn run(args: PageServerArgs) -> anyhow::Result<Outcome> {
    let config = args.server_config()?;
    let shard = config.shard;
    if shard.layout().count() > 1 {
        tracing::info!(
            %shard,
            stripe_pages = shard.layout().stripe_pages(),
            "serving one shard's pages"
        );
    }
    // Register signal handlers before listening, so a SIGTERM right after start is not lost.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    let mut server = PageServer::start(config).map_err(|e| match e {
        ServerError::Source(_) | ServerError::Config(_) => {
            anyhow::Error::new(BadInput(e.to_string()))
        }
        other => anyhow::Error::new(other),
    })?;
    // One stable line on stdout for scripts and tests that start the server on port 0.
    match server.metrics_addr() {
        Some(m) => println!(
            "udp-prefetch pageserver listening on {} metrics={m}",
            server.local_addr()
        ),
        None => println!(
            "udp-prefetch pageserver listening on {}",
            server.local_addr()
        ),
    }
    std::io::stdout().flush()?;
    // Ready for a service manager (Type=notify) only now: the listener is bound and accepting.
    let notifier = workers::sd_notify::Notifier::from_env();
    if let Some(n) = &notifier {
        n.ready(&format!("serving pagestream on {}", server.local_addr()));
    }
    let server_ref = &server;
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        if let Some(n) = notifier
            .as_ref()
            .filter(|n| n.watchdog_interval().is_some())
        {
            let done = &done;
            // The watchdog pings while the accept loop runs: a server whose acceptor died
            // answers nobody new and is better restarted.
            scope.spawn(move || n.watch(done, || server_ref.is_accepting()));
        }
        if let Some(sig) = signals.forever().next() {
            tracing::info!(signal = sig, "stopping");
            if let Some(n) = &notifier {
                n.stopping("closing connections");
            }
        }
        done.store(true, Ordering::Relaxed);
    });
    server.shutdown();
    Ok(Outcome::Success)
}
