//! A compute backend's page access: the blocking shell around the sans-IO `ReadPath`, over a
//! shared LFC and one TCP pagestream connection (DESIGN §5).

pub mod read_path;

use crate::client::{ClientError, PageClient};
use crate::page::Page;
use crate::pagestream::{PrefetchTarget, LATEST_LSN};
use lfc::{BufferTag, Lfc, RelTag};
use read_path::{
    prefetch_runs, PrefetchRun, ReadPath, ReadPathConfig, ReadStats, Step, READS_PER_LOSS_CHECK,
};
use std::ops::Range;

/// Where a page read was satisfied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSource {
    Hit,
    LateHit,
    Tcp,
}

/// Nanoseconds on CLOCK_MONOTONIC: the clock every process on the machine shares, so request
/// marks in the LFC compare across processes.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into valid memory; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub struct Backend<'a> {
    lfc: &'a Lfc,
    client: PageClient,
    core: ReadPath,
    /// Reused buffers for the pages a loss check asks to request again, and their runs.
    retry: Vec<BufferTag>,
    retry_runs: Vec<PrefetchRun>,
    reads_since_loss_check: u32,
}

impl<'a> Backend<'a> {
    pub fn new(lfc: &'a Lfc, client: PageClient, config: ReadPathConfig) -> Self {
        Backend {
            lfc,
            client,
            core: ReadPath::new(config),
            retry: Vec::with_capacity(read_path::LOSS_SCAN),
            retry_runs: Vec::with_capacity(read_path::LOSS_SCAN),
            reads_since_loss_check: 0,
        }
    }

    pub fn client(&mut self) -> &mut PageClient {
        &mut self.client
    }

    /// Registers the worker daemon's UDP port with the page server, with the LFC's datagram key.
    pub fn enable_udp_prefetch(&mut self, udp_port: u16) -> Result<(), ClientError> {
        self.client.set_prefetch_target(PrefetchTarget {
            udp_port,
            key_id: self.lfc.key_id(),
            key: self.lfc.key(),
        })
    }

    /// How many pages ahead to prefetch when `wanted` is asked for (`ReadPath::prefetch_distance`:
    /// less while own prefetches keep missing the wait budget).
    pub fn prefetch_distance(&mut self, wanted: u32) -> u32 {
        self.core.prefetch_distance(wanted)
    }

    /// Requests by UDP every block of `blocks` that is neither cached nor already requested by
    /// anyone, in as few Prefetch messages as the runs allow. Returns pages requested.
    pub fn prefetch(&mut self, rel: RelTag, blocks: Range<u32>) -> Result<u32, ClientError> {
        let now = monotonic_ns();
        let mut requested = 0;
        let mut run: Option<(u32, u16, u64)> = None; // first block, length, max lwlsn
        for blkno in blocks {
            let tag = rel.block(blkno);
            let lwlsn = self.lfc.lwlsn_unless_cached(&tag);
            let cached = lwlsn.is_none();
            let already = !cached && self.lfc.mark_requested(&tag, now);
            if !self.core.plan_prefetch(tag, cached, already, now) {
                if let Some(r) = run.take() {
                    self.send_run(rel, r)?;
                }
                continue;
            }
            requested += 1;
            let lw = lwlsn.expect("only pages not cached are planned");
            run = match run {
                Some((first, n, max_lw)) if n < u16::MAX => Some((first, n + 1, max_lw.max(lw))),
                Some(r) => {
                    self.send_run(rel, r)?;
                    Some((blkno, 1, lw))
                }
                None => Some((blkno, 1, lw)),
            };
        }
        if let Some(r) = run {
            self.send_run(rel, r)?;
        }
        self.client.flush()?;
        Ok(requested)
    }

    /// Requests again, by UDP, own prefetches that were most likely lost (see
    /// `ReadPath::plan_retries`, probing at most `max_probes` of them), so a lost datagram is
    /// replaced while the scan is still `distance` pages away from it. Returns pages requested
    /// again.
    pub fn retry_lost_prefetches(&mut self, max_probes: usize) -> Result<usize, ClientError> {
        self.reads_since_loss_check = 0;
        let lfc = self.lfc;
        self.retry.clear();
        self.core.plan_retries(
            monotonic_ns(),
            max_probes,
            |t| lfc.contains(t),
            &mut self.retry,
        );
        if self.retry.is_empty() {
            return Ok(0);
        }
        self.retry_runs.clear();
        prefetch_runs(&mut self.retry, |t| lfc.lwlsn(t), &mut self.retry_runs);
        for i in 0..self.retry_runs.len() {
            let r = self.retry_runs[i];
            self.send_run(r.rel, (r.first, r.n, r.max_lwlsn))?;
        }
        self.client.flush()?;
        Ok(self.retry.len())
    }

    fn send_run(
        &mut self,
        rel: RelTag,
        (first, n, max_lwlsn): (u32, u16, u64),
    ) -> Result<(), ClientError> {
        // not_modified_since covers the whole range: the newest modification of any block.
        self.client
            .send_prefetch(rel, first, n, LATEST_LSN, max_lwlsn)
    }

    /// Reads the current version of `tag` into `out`: LFC, else a prefetch in flight (waited
    /// for within the adaptive budget), else TCP GetPage, whose page is installed in the LFC.
    pub fn read(&mut self, tag: BufferTag, out: &mut Page) -> Result<ReadSource, ClientError> {
        self.reads_since_loss_check += 1;
        if self.reads_since_loss_check >= READS_PER_LOSS_CHECK {
            self.retry_lost_prefetches(read_path::LOSS_SCAN)?;
        }
        let mut hit = self.lfc.lookup(&tag, out).is_some();
        if !hit && self.reads_since_loss_check > 0 {
            // A miss: check for losses now, so that a lost page is known as lost (and the
            // others requested again) before deciding how long to wait for this one.
            self.retry_lost_prefetches(read_path::MISS_SCAN)?;
            hit = self.lfc.contains(&tag) && self.lfc.lookup_again(&tag, out).is_some();
        }
        // Marking on a miss both asks "is it in flight?" and, when nobody asked, tells other
        // backends that this one is fetching it, so they wait instead of fetching it twice.
        let requested_elsewhere = !hit && self.lfc.mark_requested(&tag, monotonic_ns());
        let mut step = match self
            .core
            .on_lookup(tag, hit, requested_elsewhere, monotonic_ns())
        {
            None => return Ok(ReadSource::Hit),
            Some(step) => step,
        };
        if let Step::Wait(budget) = step {
            let arrived =
                self.lfc.wait_for_arrival(&tag, budget) && self.lfc.lookup(&tag, out).is_some();
            match self.core.on_wait_result(tag, arrived, monotonic_ns()) {
                None => return Ok(ReadSource::LateHit),
                Some(s) => step = s,
            }
        }
        debug_assert_eq!(step, Step::Fetch);
        let not_modified_since = self.lfc.lwlsn(&tag);
        let page = self.client.get_page(tag, LATEST_LSN, not_modified_since)?;
        out.copy_from_slice(&page[..]);
        // Same rule as a prefetched page: refused if the page was modified after the request.
        if self.lfc.install_prefetched(&tag, not_modified_since, &page)
            == lfc::InstallOutcome::AlreadyPresent
        {
            self.core.on_fetch_raced();
        }
        Ok(ReadSource::Tcp)
    }

    /// The compute's own new version of a page: to the page server (standing in for WAL) and
    /// into the LFC, which raises the tag's last-written LSN.
    pub fn write(&mut self, tag: BufferTag, lsn: u64, page: &Page) -> Result<(), ClientError> {
        self.client.put_page(tag, lsn, page)?;
        let _ = self.lfc.write(&tag, lsn, page);
        Ok(())
    }

    pub fn stats(&self) -> ReadStats {
        self.core.stats()
    }

    /// Ends a scan: prefetches never read count as wasted.
    pub fn finish(&mut self) -> ReadStats {
        self.core.finish()
    }
}
