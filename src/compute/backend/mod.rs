//! A compute backend's page access (ARCHITECTURE §4 step 7, §6): the blocking shell around the
//! sans-IO `driver::Driver`, over a shared LFC and one TCP pagestream connection.
//!
//! Dependency rule: `read_path`, `loss`, `health` and `pipeline` are pure state (no LFC, no
//! socket); `driver` composes them over `&Lfc` with `now` passed in; this module alone does I/O
//! (socket, clock, futex waits). The simulator drives `driver` with virtual time and network.
//!
//! Owns: the pagestream connection (`PageClient`), the `Driver` and when to flush pipelined
//! GetPages; every read decision is the driver's. Imports only `protocol` and `lfc`:
//! never `pageserver` or `scan` (which is built on it).

pub mod driver;
pub mod health;
mod loss;
pub mod pipeline;
pub mod read_path;

use crate::protocol::client::{unexpected, ClientError, PageClient};
use crate::protocol::page::Page;
use crate::protocol::pagestream::{PrefetchTarget, Response, LATEST_LSN};
pub use driver::ReadSource;
use driver::{Driver, Poll, Transmit};
pub use health::{PrefetchPath, StateChange, MAX_STATE_LOG};
use lfc::{BufferTag, Lfc, RelTag};
use read_path::{ReadPathConfig, ReadStats};
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

pub struct Backend<'a> {
    lfc: &'a Lfc,
    client: PageClient,
    driver: Driver,
    warned_loopback: bool,
    /// GetPages written to the connection's buffer since the last flush.
    unflushed_get_pages: usize,
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
        crate::compute::bind_cache(lfc, &client)?;
        let driver = Driver::new(config, prefetch_port, lfc, monotonic_ns());
        Ok(Self::with_driver(lfc, client, driver))
    }

    /// A backend that never prefetches by UDP: Neon's compute with its LFC (`Driver::tcp_only`).
    pub fn tcp_only(
        lfc: &'a Lfc,
        client: PageClient,
        config: ReadPathConfig,
    ) -> Result<Self, BackendError> {
        crate::compute::bind_cache(lfc, &client)?;
        let driver = Driver::tcp_only(config, monotonic_ns());
        Ok(Self::with_driver(lfc, client, driver))
    }

    fn with_driver(lfc: &'a Lfc, client: PageClient, driver: Driver) -> Self {
        Backend {
            lfc,
            client,
            driver,
            warned_loopback: false,
            unflushed_get_pages: 0,
        }
    }

    pub fn client(&mut self) -> &mut PageClient {
        &mut self.client
    }

    pub fn path(&self) -> PrefetchPath {
        self.driver.path()
    }

    /// See `Driver::path_changes`.
    pub fn path_changes(&self) -> u64 {
        self.driver.path_changes()
    }

    pub fn state_log(&self) -> &[StateChange] {
        self.driver.state_log()
    }

    /// Sends what the driver queued. Prefetch and Target messages are flushed at once (nothing
    /// else would carry them: reads wait on the LFC, not the socket); GetPages every
    /// `PIPELINED_FLUSH_EVERY`, as Neon batches its pipeline, and before any wait (`recv`
    /// flushes what is buffered before it blocks). A flush per GetPage cost a system call and
    /// a server wake-up per page: half the pipeline's speed.
    fn transmit(&mut self) -> Result<(), ClientError> {
        let mut urgent = false;
        while let Some(t) = self.driver.poll_transmit() {
            match t {
                Transmit::Target { udp_port } => {
                    urgent = true;
                    self.warn_if_unreachable();
                    let path_mtu = self.client.prefetch_path_mtu();
                    self.client.send_prefetch_target(PrefetchTarget {
                        udp_port,
                        key_id: self.lfc.key_id(),
                        key: self.lfc.key(),
                        path_mtu,
                    })?
                }
                Transmit::Prefetch(r) => {
                    urgent = true;
                    // not_modified_since covers the whole range: the newest modification.
                    self.client
                        .send_prefetch(r.rel, r.first, r.n, LATEST_LSN, r.max_lwlsn)?
                }
                Transmit::GetPage {
                    tag,
                    not_modified_since,
                } => {
                    self.unflushed_get_pages += 1;
                    self.client
                        .send_get_page(tag, LATEST_LSN, not_modified_since)?
                }
            }
        }
        if urgent || self.unflushed_get_pages >= pipeline::PIPELINED_FLUSH_EVERY {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ClientError> {
        self.unflushed_get_pages = 0;
        self.client.flush()
    }

    /// A daemon listening on loopback never receives from a page server elsewhere: say so once
    /// instead of crawling (the read path falls back to TCP anyway).
    fn warn_if_unreachable(&mut self) {
        let (Some(daemon), Ok(server)) = (self.driver.daemon_addr(), self.client.peer_addr())
        else {
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

    /// How many pages ahead to prefetch when `wanted` is asked for (less while own prefetches
    /// keep missing their wait budget; the pipeline's reach while on TCP).
    pub fn prefetch_distance(&mut self, wanted: u32) -> u32 {
        self.driver.prefetch_distance(wanted)
    }

    /// Requests `blocks` ahead of their reads (UDP prefetch, or the TCP pipeline while UDP is
    /// not delivering). Returns pages requested.
    pub fn prefetch(&mut self, rel: RelTag, blocks: Range<u32>) -> Result<u32, BackendError> {
        let n = self.driver.prefetch(self.lfc, rel, blocks, monotonic_ns());
        self.transmit()?;
        Ok(n)
    }

    /// Reads the current version of `tag` into `out`: LFC, else a prefetch in flight (waited
    /// for within the adaptive budget), else the TCP pipeline; every page fetched by TCP is
    /// installed in the LFC.
    pub fn read(&mut self, tag: BufferTag, out: &mut Page) -> Result<ReadSource, BackendError> {
        let mut poll = self.driver.start_read(self.lfc, tag, out, monotonic_ns());
        loop {
            self.transmit()?;
            poll = match poll {
                Poll::Done(source) => return Ok(source),
                Poll::Wait { tag, until_ns } => {
                    if self.unflushed_get_pages > 0 {
                        self.flush()?;
                    }
                    let left = until_ns.saturating_sub(monotonic_ns());
                    if left > 0 {
                        self.lfc.wait_for_arrival(&tag, Duration::from_nanos(left));
                    }
                    self.driver.on_wait_over(self.lfc, out, monotonic_ns())
                }
                Poll::AwaitResponse => match self.receive(out)? {
                    Some(p) => p,
                    None => unreachable!("a read in progress always has a next step"),
                },
            };
        }
    }

    /// Reads one response and hands it to the driver.
    fn receive(&mut self, out: &mut Page) -> Result<Option<Poll>, BackendError> {
        Ok(self.receive_handled(out)?.next)
    }

    fn receive_handled(&mut self, out: &mut Page) -> Result<driver::Handled, BackendError> {
        // `recv` flushes what is buffered before it blocks.
        self.unflushed_get_pages = 0;
        let resp = self.client.recv()?;
        let next = match &resp {
            Response::GetPage {
                rel, blkno, page, ..
            } => self.driver.on_response(
                self.lfc,
                driver::Response::Page {
                    tag: rel.block(*blkno),
                    page,
                },
                out,
                monotonic_ns(),
            )?,
            Response::PrefetchTarget { .. } => {
                self.driver
                    .on_response(self.lfc, driver::Response::Target, out, monotonic_ns())?
            }
            Response::Error { message, .. } => {
                return Err(ClientError::Request(message.clone()).into())
            }
            other => return Err(unexpected("pipelined GetPage", other).into()),
        };
        Ok(next)
    }

    /// Reads every pipelined response (installing the pages), so a synchronous call may follow.
    pub fn drain(&mut self) -> Result<(), BackendError> {
        let mut scratch: Box<Page> = Box::new([0u8; lfc::PAGE_SIZE]);
        loop {
            self.transmit()?;
            if !self.driver.pipeline_busy() {
                return Ok(());
            }
            self.receive_handled(&mut scratch)?;
        }
    }

    /// The compute's own new version of a page: to the page server (standing in for WAL) and
    /// into the LFC, which raises the tag's last-written LSN (see `store_own_write` for a
    /// cache that refuses it).
    pub fn write(&mut self, tag: BufferTag, lsn: u64, page: &Page) -> Result<(), BackendError> {
        self.drain()?;
        self.client.put_page(tag, lsn, page)?;
        store_own_write(self.lfc, &tag, lsn, page)?;
        Ok(())
    }

    pub fn stats(&self) -> ReadStats {
        self.driver.stats()
    }

    /// Ends a scan: prefetches never read count as wasted.
    pub fn finish(&mut self) -> ReadStats {
        self.driver.finish()
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
