//! A compute backend's page access (ARCHITECTURE §4 step 7, §6): the blocking shell around the
//! sans-IO `driver::Driver`, over a shared LFC and one TCP pagestream connection per page-server
//! shard (one `Driver` per shard, each request routed by `protocol::shard`).
//!
//! Dependency rule: `read_path`, `loss`, `health` and `pipeline` are pure state (no LFC, no
//! socket); `driver` composes them over `&Lfc` with `now` passed in, and `sharded` routes over
//! one driver per page-server shard; this module and `own_receive` (a backend's own UDP
//! socket) alone do I/O (sockets, clock, futex waits). The simulator drives `driver` with
//! virtual time and network.
//!
//! Owns: the pagestream connections (`PageClient`, one per shard), their `Driver`s, which shard
//! a request goes to, when to flush pipelined GetPages, and when a backend that receives its
//! own prefetches drains its socket; every read decision is a driver's. Imports only
//! `protocol`, `lfc` and `workers` (the receive code a backend shares with the daemon): never
//! `pageserver` or `scan` (which is built on it).

pub mod driver;
pub mod health;
mod loss;
pub mod own_receive;
pub mod pipeline;
pub mod read_path;
pub mod sharded;

pub use crate::protocol::client::Extension;
use crate::protocol::client::{unexpected, ClientError, PageClient};
use crate::protocol::page::Page;
use crate::protocol::pagestream::{Response, LATEST_LSN};
use crate::protocol::shard::ShardLayout;
pub use driver::ReadSource;
use driver::{Driver, Poll, Transmit};
pub use health::{PrefetchPath, StateChange, MAX_STATE_LOG};
use lfc::{BufferTag, Lfc, RelTag};
use own_receive::OwnReceiver;
use read_path::{ReadPathConfig, ReadStats};
use sharded::ShardedDriver;
use std::ops::Range;
use std::time::Duration;

use lfc::monotonic_ns;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Driver(#[from] driver::DriverError),
    /// The LFC belongs to another timeline or cluster: this backend must not use it. Kept as a
    /// source (not transparent), so that the CLI finds it in the error chain (exit status 2).
    #[error("{0}")]
    Bind(#[from] lfc::BindError),
    /// A sharded tenant's shard failed: which one, at which address, and why.
    #[error("page server shard {shard}/{count} ({addr}): {source}")]
    Shard {
        shard: usize,
        count: usize,
        addr: String,
        #[source]
        source: Box<BackendError>,
    },
    /// The backend's own prefetch socket (`Receive::Backend`) could not be set up.
    #[error("the backend's own prefetch receiver: {0}")]
    Receive(#[from] workers::udp::UdpError),
    /// The shard map names another number of shards than there are connections.
    #[error("{connections} page server connections for a tenant of {shards} shards")]
    ShardMap { connections: usize, shards: usize },
    /// The LFC refused the backend's own new version. The tag's last-written LSN is raised
    /// through the global floor first, so no older version can be installed later; the caller
    /// must not assume the write reached the cache.
    #[error("storing the new version of {tag} at {} in the LFC: {source}", crate::protocol::page::format_lsn(*lsn))]
    Write {
        tag: BufferTag,
        lsn: u64,
        #[source]
        source: lfc::OpError,
    },
}

/// Stores the compute's own new version of `tag` at `lsn` in the LFC. On any failure the global
/// last-written-LSN floor rises to `lsn` before the error is returned: an older prefetched
/// version can then never be installed. Shared by the shell and the simulator.
pub fn store_own_write(
    lfc: &Lfc,
    tag: &BufferTag,
    lsn: u64,
    page: &Page,
) -> Result<lfc::WriteOutcome, BackendError> {
    lfc.write(tag, lsn, page).map_err(|source| {
        lfc.raise_lwlsn_floor(lsn);
        BackendError::Write {
            tag: *tag,
            lsn,
            source,
        }
    })
}

/// One shard's connection: the I/O half of a shard (its read-path core is the
/// `ShardedDriver`'s driver of the same number).
struct ShardConn {
    client: PageClient,
    /// GetPages written to the connection's buffer since the last flush.
    unflushed_get_pages: usize,
    /// A Prefetch or Target was written since the last flush: it must leave now.
    urgent: bool,
    warned_loopback: bool,
    /// The server's address as connected (a dead connection may no longer say).
    addr: String,
}

/// Who receives a backend's UDP prefetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receive {
    /// The compute's worker daemon, found through the LFC header; `port` overrides the port
    /// the header gives (the operator's `--prefetch-port`).
    Daemon { port: Option<u16> },
    /// The backend itself, on a socket of its own (`own_receive`), in its own context (a read
    /// of an own prefetch, a wait for one, a TCP answer while UDP may be bringing pages): its
    /// UDP path then needs no daemon.
    Backend,
}

pub struct Backend<'a> {
    lfc: &'a Lfc,
    /// In shard order; one for an unsharded tenant.
    shards: Vec<ShardConn>,
    /// Every read decision, and which shard each request goes to.
    core: ShardedDriver,
    /// The backend's own prefetch receiver (`Receive::Backend`).
    own: Option<OwnReceiver<'a>>,
}

impl<'a> Backend<'a> {
    /// A backend that finds the worker daemon through the LFC header. Every constructor binds
    /// the LFC to `client`'s timeline first (`compute::bind_cache`) and fails with
    /// [`BackendError::Bind`] if the cache belongs to another.
    pub fn new(
        lfc: &'a Lfc,
        client: PageClient,
        config: ReadPathConfig,
    ) -> Result<Self, BackendError> {
        Self::with_prefetch_port(lfc, client, config, None)
    }

    /// `prefetch_port` overrides the daemon's port from the LFC header (the operator's
    /// `--prefetch-port`).
    pub fn with_prefetch_port(
        lfc: &'a Lfc,
        client: PageClient,
        config: ReadPathConfig,
        prefetch_port: Option<u16>,
    ) -> Result<Self, BackendError> {
        Self::sharded(
            lfc,
            vec![client],
            ShardLayout::SINGLE,
            config,
            Receive::Daemon {
                port: prefetch_port,
            },
        )
    }

    /// A backend of a sharded tenant: `clients` are the shards' connections in shard order
    /// (`layout.count()` of them). Every GetPage and Prefetch goes to the shard that owns its
    /// page (`sharded::ShardedDriver`, Neon's routing), and each shard's connection registers
    /// the prefetch target, so every shard sends its pages to the one receiver (`receive`).
    /// Everything else (`client()`) goes to shard 0.
    pub fn sharded(
        lfc: &'a Lfc,
        clients: Vec<PageClient>,
        layout: ShardLayout,
        config: ReadPathConfig,
        receive: Receive,
    ) -> Result<Self, BackendError> {
        let mut backend = match receive {
            Receive::Daemon { port } => Self::build(lfc, clients, layout, || {
                Driver::new(config, port, lfc, monotonic_ns())
            })?,
            Receive::Backend => {
                let own = OwnReceiver::open(lfc, receive_ip(&clients))?;
                let port = own.port();
                let mut backend = Self::build(lfc, clients, layout, || {
                    Driver::receiving_itself(config, port, lfc, monotonic_ns())
                })?;
                backend.own = Some(own);
                backend
            }
        };
        backend.learn_extension()?;
        Ok(backend)
    }

    /// A backend that registers its prefetch target at once asks each shard whether it speaks
    /// the extension before it sends anything else: the answers are awaited here, one round
    /// trip, rather than behind the first prefetches, which each client holds until then
    /// (`protocol::client`) while the first read would wait for them.
    fn learn_extension(&mut self) -> Result<(), BackendError> {
        self.transmit()?;
        for s in 0..self.shards.len() {
            if self.shards[s].client.extension() == Extension::Unknown && self.core.pipeline_busy(s)
            {
                let mut scratch: Box<Page> = Box::new([0u8; lfc::PAGE_SIZE]);
                self.receive_handled(s, &mut scratch)?;
            }
        }
        Ok(())
    }

    /// Whether shard 0's page server speaks this project's extension, as far as known yet;
    /// without it the backend reads by pipelined GetPage only.
    pub fn extension(&self) -> Extension {
        self.shards[0].client.extension()
    }

    /// A backend that never prefetches by UDP: Neon's compute with its LFC (`Driver::tcp_only`).
    pub fn tcp_only(
        lfc: &'a Lfc,
        client: PageClient,
        config: ReadPathConfig,
    ) -> Result<Self, BackendError> {
        Self::sharded_tcp_only(lfc, vec![client], ShardLayout::SINGLE, config)
    }

    /// [`Backend::tcp_only`] over a sharded tenant's connections (see [`Backend::sharded`]).
    pub fn sharded_tcp_only(
        lfc: &'a Lfc,
        clients: Vec<PageClient>,
        layout: ShardLayout,
        config: ReadPathConfig,
    ) -> Result<Self, BackendError> {
        Self::build(lfc, clients, layout, || {
            Driver::tcp_only(config, monotonic_ns())
        })
    }

    fn build(
        lfc: &'a Lfc,
        clients: Vec<PageClient>,
        layout: ShardLayout,
        driver: impl FnMut() -> Driver,
    ) -> Result<Self, BackendError> {
        if clients.len() != layout.count() {
            return Err(BackendError::ShardMap {
                connections: clients.len(),
                shards: layout.count(),
            });
        }
        // Every shard must serve the timeline the cache holds.
        for client in &clients {
            crate::compute::bind_cache(lfc, client)?;
        }
        let shards = clients
            .into_iter()
            .map(|client| ShardConn {
                addr: client
                    .peer_addr()
                    .map_or_else(|_| "address unknown".to_string(), |a| a.to_string()),
                client,
                unflushed_get_pages: 0,
                urgent: false,
                warned_loopback: false,
            })
            .collect();
        Ok(Backend {
            lfc,
            shards,
            core: ShardedDriver::new(layout, driver),
            own: None,
        })
    }

    /// Pages installed by the backend's own receiver (`None` when the daemon receives).
    pub fn own_installed(&self) -> Option<u64> {
        self.own.as_ref().map(OwnReceiver::installed)
    }

    /// Shard 0's connection: where Exists, Nblocks and DbSize go (as Neon's compute sends
    /// them), and the only one of an unsharded tenant.
    pub fn client(&mut self) -> &mut PageClient {
        &mut self.shards[0].client
    }

    pub fn shard_layout(&self) -> ShardLayout {
        self.core.layout()
    }

    /// The path of the shard the backend read from last (each shard has its own).
    pub fn path(&self) -> PrefetchPath {
        self.core.path()
    }

    /// Each shard's path, in shard order.
    pub fn shard_paths(&self) -> Vec<PrefetchPath> {
        self.core.shard_paths()
    }

    /// See `Driver::path_changes`: summed over the shards.
    pub fn path_changes(&self) -> u64 {
        self.core.path_changes()
    }

    /// The moves between UDP and TCP; of several shards, each reason names its shard.
    pub fn state_log(&self) -> Vec<StateChange> {
        self.core.state_log()
    }

    /// The error of shard `s`'s connection, naming the shard when there are several (an
    /// unsharded backend's errors read as they always did).
    fn shard_error(&self, s: usize, e: BackendError) -> BackendError {
        if self.shards.len() == 1 {
            return e;
        }
        BackendError::Shard {
            shard: s,
            count: self.shards.len(),
            addr: self.shards[s].addr.clone(),
            source: Box::new(e),
        }
    }

    /// Sends what the drivers queued, each message on its shard's connection. Prefetch and
    /// Target messages are flushed at once (nothing else would carry them: reads wait on the
    /// LFC, not the socket); GetPages every `PIPELINED_FLUSH_EVERY`, as Neon batches its
    /// pipeline, and before any wait (`recv` flushes what is buffered before it blocks). A
    /// flush per GetPage cost a system call and a server wake-up per page: half the pipeline's
    /// speed.
    fn transmit(&mut self) -> Result<(), BackendError> {
        let lfc = self.lfc;
        while let Some((s, t)) = self.core.poll_transmit() {
            let shard = &mut self.shards[s];
            let sent = match t {
                Transmit::Target { udp_port } => {
                    shard.urgent = true;
                    shard.warn_if_unreachable(self.core.shard(s).daemon_addr());
                    let path_mtu = shard.client.prefetch_path_mtu();
                    shard
                        .client
                        .send_prefetch_target(crate::compute::prefetch_target(
                            lfc, udp_port, path_mtu,
                        ))
                }
                Transmit::Prefetch(r) => {
                    shard.urgent = true;
                    // not_modified_since covers the whole range: the newest modification.
                    shard
                        .client
                        .send_prefetch(r.rel, r.first, r.n, LATEST_LSN, r.max_lwlsn)
                }
                Transmit::GetPage {
                    tag,
                    not_modified_since,
                    urgent,
                } => {
                    shard.unflushed_get_pages += 1;
                    shard.urgent |= urgent;
                    shard
                        .client
                        .send_get_page(tag, LATEST_LSN, not_modified_since)
                }
            };
            sent.map_err(|e| self.shard_error(s, e.into()))?;
        }
        for s in 0..self.shards.len() {
            let shard = &mut self.shards[s];
            if shard.urgent || shard.unflushed_get_pages >= pipeline::PIPELINED_FLUSH_EVERY {
                shard.urgent = false;
                shard.flush().map_err(|e| self.shard_error(s, e.into()))?;
            }
        }
        Ok(())
    }

    /// Before blocking on shard `s` (a wait or a response): the other shards' buffered
    /// GetPages leave now, or their pipelines would stall meanwhile. Nothing for one shard.
    fn flush_others(&mut self, s: usize) -> Result<(), BackendError> {
        for i in 0..self.shards.len() {
            if i != s && self.shards[i].unflushed_get_pages > 0 {
                self.shards[i]
                    .flush()
                    .map_err(|e| self.shard_error(i, e.into()))?;
            }
        }
        Ok(())
    }

    /// How many pages ahead to prefetch when `wanted` is asked for (less while own prefetches
    /// keep missing their wait budget; the pipeline's reach while on TCP), as the shard of the
    /// latest read sees it.
    pub fn prefetch_distance(&mut self, wanted: u32) -> u32 {
        self.core.prefetch_distance(wanted)
    }

    /// Requests `blocks` ahead of their reads (UDP prefetch, or the TCP pipeline while UDP is
    /// not delivering), each stripe from its shard. Returns pages requested.
    pub fn prefetch(&mut self, rel: RelTag, blocks: Range<u32>) -> Result<u32, BackendError> {
        let started_ns = monotonic_ns();
        let n = self.core.prefetch(self.lfc, rel, blocks, started_ns);
        self.transmit()?;
        self.core
            .io_outside_reads(monotonic_ns().saturating_sub(started_ns));
        Ok(n)
    }

    /// Reads the current version of `tag` into `out`: LFC, else a prefetch in flight (waited
    /// for within the adaptive budget), else the TCP pipeline of the shard that owns it; every
    /// page fetched by TCP is installed in the LFC.
    pub fn read(&mut self, tag: BufferTag, out: &mut Page) -> Result<ReadSource, BackendError> {
        if let Some(own) = self.own.as_mut() {
            let s = self.core.shard_of(&tag);
            if self.core.shard(s).expects_by_udp(&tag) && !self.lfc.contains(&tag) {
                own.drain(Duration::ZERO);
            }
        }
        let mut poll = self.core.start_read(self.lfc, tag, out, monotonic_ns());
        let s = self.core.reading();
        loop {
            self.transmit()?;
            poll = match poll {
                Poll::Done(source) => {
                    // What the read left to send just went: its cost, counted in the next
                    // read's pace (`Driver::read_returned`).
                    self.core.read_returned(monotonic_ns());
                    return Ok(source);
                }
                Poll::Wait { tag, until_ns } => {
                    if self.shards[s].unflushed_get_pages > 0 {
                        self.shards[s]
                            .flush()
                            .map_err(|e| self.shard_error(s, e.into()))?;
                    }
                    self.flush_others(s)?;
                    let left = until_ns.saturating_sub(monotonic_ns());
                    // A backend that receives itself waits on its socket for its own
                    // prefetch (what came meanwhile; if the page was not in it, the next
                    // datagrams to come: any, so the driver looks again after each), and on
                    // the LFC's futex, as any backend, for a page someone else requested
                    // (another backend's prefetch comes to the daemon or to that backend).
                    match self.own.as_mut() {
                        Some(own) => {
                            own.drain(Duration::ZERO);
                            if left > 0 && !self.lfc.contains(&tag) {
                                if self.core.shard(s).expects_by_udp(&tag) {
                                    own.drain(Duration::from_nanos(left));
                                } else {
                                    self.lfc.wait_for_arrival(&tag, Duration::from_nanos(left));
                                }
                            }
                        }
                        None if left > 0 => {
                            self.lfc.wait_for_arrival(&tag, Duration::from_nanos(left));
                        }
                        None => {}
                    }
                    self.core.on_wait_over(self.lfc, out, monotonic_ns())
                }
                Poll::AwaitResponse => match self.receive_handled(s, out)?.next {
                    Some(p) => p,
                    None => unreachable!("a read in progress always has a next step"),
                },
            };
        }
    }

    /// Reads one response of shard `s` and hands it to its driver.
    fn receive_handled(
        &mut self,
        s: usize,
        out: &mut Page,
    ) -> Result<driver::Handled, BackendError> {
        self.flush_others(s)?;
        self.receive_from(s, out)
            .map_err(|e| self.shard_error(s, e))
    }

    fn receive_from(&mut self, s: usize, out: &mut Page) -> Result<driver::Handled, BackendError> {
        // A probe's page is judged at its turn in the pipeline by whether it is cached: what
        // the backend's own socket holds must be in by then. The requests go first, so that
        // the drain overlaps their round trip.
        if let Some(own) = self.own.as_mut() {
            if self.core.shard(s).awaits_udp() {
                self.shards[s].flush()?;
                own.drain(Duration::ZERO);
            }
        }
        let lfc = self.lfc;
        // While the read awaits its answer, the driver looks for losses among its prefetches
        // now and then (`Driver::on_await_look`): their repairs leave meanwhile.
        while s == self.core.reading() {
            let Some(at) = self.core.await_look_ns() else {
                break;
            };
            let left = Duration::from_nanos(at.saturating_sub(monotonic_ns()));
            self.shards[s].unflushed_get_pages = 0;
            if self.shards[s].client.answer_within(left)? {
                break;
            }
            // A backend receiving itself takes what its socket holds first: the awaited page
            // may be in it.
            if let Some(own) = self.own.as_mut() {
                own.drain(Duration::ZERO);
            }
            let next = self.core.on_await_look(lfc, out, monotonic_ns());
            self.transmit()?;
            if next.is_some() {
                return Ok(driver::Handled {
                    next,
                    installed: false,
                });
            }
        }
        let shard = &mut self.shards[s];
        // `recv` flushes what is buffered before it blocks.
        shard.unflushed_get_pages = 0;
        let resp = match shard.client.recv() {
            Ok(resp) => resp,
            // The oldest request in flight was a PrefetchTarget, and the server does not
            // speak the extension (the client already goes on without it).
            Err(ClientError::ExtensionUnsupported) => {
                let refused = driver::Response::TargetRefused;
                return Ok(self
                    .core
                    .on_response(s, lfc, refused, out, monotonic_ns())?);
            }
            Err(e) => return Err(e.into()),
        };
        let response = match &resp {
            Response::GetPage {
                rel, blkno, page, ..
            } => driver::Response::Page {
                tag: rel.block(*blkno),
                page,
            },
            Response::PrefetchTarget { .. } => driver::Response::Target,
            Response::Error { message, .. } => {
                return Err(ClientError::Request(message.clone()).into())
            }
            other => return Err(unexpected("pipelined GetPage", other).into()),
        };
        Ok(self
            .core
            .on_response(s, lfc, response, out, monotonic_ns())?)
    }

    /// Reads every pipelined response (installing the pages), so a synchronous call may follow.
    pub fn drain(&mut self) -> Result<(), BackendError> {
        let mut scratch: Box<Page> = Box::new([0u8; lfc::PAGE_SIZE]);
        for s in 0..self.shards.len() {
            loop {
                self.transmit()?;
                if !self.core.pipeline_busy(s) {
                    break;
                }
                self.receive_handled(s, &mut scratch)?;
            }
        }
        Ok(())
    }

    /// The compute's own new version of a page: to the page server that owns it (standing in
    /// for WAL) and into the LFC, which raises the tag's last-written LSN (see
    /// `store_own_write` for a cache that refuses it). A page server without this project's
    /// extension takes no PutPage: it gets its WAL another way, as a real compute's page
    /// server does, and the version goes into the LFC only.
    pub fn write(&mut self, tag: BufferTag, lsn: u64, page: &Page) -> Result<(), BackendError> {
        self.drain()?;
        let s = self.core.shard_of(&tag);
        if self.shards[s].client.extension() != Extension::Unsupported {
            match self.shards[s].client.put_page(tag, lsn, page) {
                Ok(()) => {}
                // Learnt here, with nothing in flight: no PrefetchTarget from now on either.
                Err(ClientError::ExtensionUnsupported) => {
                    self.core.without_extension(s, self.lfc, monotonic_ns())
                }
                Err(e) => return Err(self.shard_error(s, e.into())),
            }
        }
        store_own_write(self.lfc, &tag, lsn, page)?;
        Ok(())
    }

    /// The read path's counters, summed over the shards.
    pub fn stats(&self) -> ReadStats {
        self.core.stats()
    }

    /// Each shard's counters, in shard order.
    pub fn shard_stats(&self) -> Vec<ReadStats> {
        self.core.shard_stats()
    }

    /// Ends a scan: prefetches never read count as wasted. Summed over the shards.
    pub fn finish(&mut self) -> ReadStats {
        self.core.finish()
    }
}

/// Where a backend's own prefetch socket listens: the address its connections reach the page
/// servers from (the one the server sends to), or every address when the shards' differ.
fn receive_ip(clients: &[PageClient]) -> std::net::IpAddr {
    let mut ips = clients
        .iter()
        .filter_map(|c| c.local_addr().ok())
        .map(|a| a.ip());
    match ips.next() {
        Some(ip) if ips.all(|other| other == ip) => ip,
        Some(std::net::IpAddr::V6(_)) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        _ => std::net::Ipv4Addr::UNSPECIFIED.into(),
    }
}

impl ShardConn {
    fn flush(&mut self) -> Result<(), ClientError> {
        self.unflushed_get_pages = 0;
        self.client.flush()
    }

    /// A daemon listening on loopback never receives from a page server elsewhere: say so once
    /// instead of crawling (the read path falls back to TCP anyway).
    fn warn_if_unreachable(&mut self, daemon: Option<std::net::SocketAddr>) {
        let (Some(daemon), Ok(server)) = (daemon, self.client.peer_addr()) else {
            return;
        };
        if !self.warned_loopback && daemon.ip().is_loopback() && !server.ip().is_loopback() {
            self.warned_loopback = true;
            tracing::warn!(
                "the worker daemon listens on {daemon}, a loopback address, but the page server \
                 is {server}: its datagrams cannot reach the daemon; start the daemon on an \
                 address the page server can reach (reads use TCP pipelining meanwhile)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::page::synthetic_page;
    use crate::protocol::page::synthetic_rel;

    #[test]
    fn an_own_write_the_cache_refuses_raises_the_floor_so_no_older_version_is_installed() {
        let dir = tempfile::tempdir().unwrap();
        let lfc = Lfc::create(dir.path().join("lfc"), 64).unwrap();
        let tag = synthetic_rel(0).block(3);
        // Another process holds the tag's index bucket for longer than the lock wait limit:
        // the write gives up with Busy. Discarding that (as `Backend::write` once did) left the
        // tag's lwlsn below the write, and an older prefetched version could be installed and
        // read after it.
        let held = lfc.lock_home_for_test(&tag).unwrap();
        let result = std::thread::scope(|s| {
            s.spawn(|| store_own_write(&lfc, &tag, 500, &synthetic_page(tag, 500)))
                .join()
                .unwrap()
        });
        drop(held);
        let err = result.expect_err("a busy bucket refuses the write");
        assert!(matches!(err, BackendError::Write { lsn: 500, .. }), "{err}");
        assert!(err.to_string().contains("0/1F4"), "LSN as X/Y: {err}");
        assert!(lfc.lwlsn_floor() >= 500);
        // A prefetch requested before the write (not_modified_since 16) comes in: refused.
        assert_eq!(
            lfc.install_prefetched(&tag, 16, &synthetic_page(tag, 16)),
            lfc::InstallOutcome::Stale
        );
        let mut out = [0u8; lfc::PAGE_SIZE];
        assert_eq!(lfc.lookup(&tag, &mut out), None);
        // The retried write goes through.
        store_own_write(&lfc, &tag, 500, &synthetic_page(tag, 500)).unwrap();
        assert_eq!(lfc.lookup(&tag, &mut out), Some(500));
    }
}
