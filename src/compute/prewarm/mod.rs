//! LFC prewarm: save which pages are cached, and refill a cold cache through the UDP prefetch
//! path, re-requesting what does not arrive and fetching the last stragglers over TCP, so a run
//! always finishes with every page that still exists present and verified.
//!
//! Owns: the plan (`plan`: ranges to pages), the configuration and report types, and the
//! blocking shell `run_prewarm` (connection, relation sizes, real clock, sleeps, progress). Every
//! decision of a run and its constants live in the sans-IO `driver::Driver`, which the simulator
//! runs too; the state file is `state`, the retry schedule `schedule`.

pub mod driver;
pub mod schedule;
pub mod state;

use crate::protocol::client::{ClientError, ConnectOptions, PageClient};
use crate::protocol::pagestream::{PrefetchTarget, Response, LATEST_LSN};
use driver::{Driver, DriverConfig, Poll, Transmit};
use lfc::{monotonic_ns, BufferTag, Lfc, RelTag, PAGE_SIZE};
use schedule::{ScheduleConfig, ScheduleCounts};
use state::PageRange;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct PrewarmConfig {
    pub connect: ConnectOptions,
    /// UDP port of the worker daemon; `None` takes it from the LFC header, where the daemon
    /// serving the cache records its address (no live daemon there: everything over TCP).
    pub prefetch_port: Option<u16>,
    /// Pacing of requested pages, bytes per second (0 = unpaced).
    pub rate_bytes_per_s: u64,
    pub deadline: Option<Duration>,
    pub schedule: ScheduleConfig,
    /// Print progress (a bar on a terminal, else a line every few seconds).
    pub progress: bool,
    /// Use the UDP path; false fetches everything with pipelined GetPages (the baseline).
    pub udp: bool,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PrewarmReport {
    pub pages: u64,
    pub requested: u64,
    /// Pages of the plan present and verified in the LFC at the end.
    pub present: u64,
    pub via_udp_first: u64,
    pub via_udp_retry: u64,
    pub via_tcp: u64,
    pub skipped_present: u64,
    pub skipped_gone: u64,
    pub retries: u64,
    /// Pages fetched again at the end because they had left the cache after arriving.
    pub refetched: u64,
    pub failed_verification: u64,
    pub elapsed_s: f64,
    pub mb_per_s: f64,
    pub cache_full: bool,
    pub deadline_hit: bool,
    pub udp_fell_back_to_tcp: bool,
    pub complete: bool,
}

/// Expands ranges to pages, keeping their order (hottest first) and dropping repeats.
pub fn plan(ranges: &[PageRange]) -> Vec<BufferTag> {
    let mut seen = std::collections::HashSet::new();
    ranges
        .iter()
        .flat_map(|r| r.tags().collect::<Vec<_>>())
        .filter(|t| seen.insert(*t))
        .collect()
}

struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last_log: Instant,
    enabled: bool,
}

impl Progress {
    fn new(total: u64, enabled: bool) -> Progress {
        use std::io::IsTerminal;
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} pages {msg} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Progress {
            bar,
            last_log: Instant::now(),
            enabled,
        }
    }

    fn update(&mut self, done: usize, total: usize, counts: &ScheduleCounts, elapsed: f64) {
        let mb_s = done as f64 * PAGE_SIZE as f64 / 1e6 / elapsed.max(1e-9);
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
            bar.set_message(format!(
                "{mb_s:.0} MB/s, {} retries, {} via TCP",
                counts.retries, counts.via_tcp
            ));
        } else if self.enabled && self.last_log.elapsed() >= Duration::from_secs(2) {
            self.last_log = Instant::now();
            tracing::info!(
                done,
                total,
                mb_per_s = format!("{mb_s:.0}"),
                retries = counts.retries,
                via_tcp = counts.via_tcp,
                "prewarm progress"
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Refills `lfc` with `pages` (hottest first). The blocking shell around `driver::Driver`, which
/// makes every decision: this connects, asks the relations' sizes, carries the driver's
/// messages, reads the clock and sleeps through its waits.
pub fn run_prewarm(
    cfg: &PrewarmConfig,
    lfc: &Lfc,
    pages: &[BufferTag],
) -> anyhow::Result<PrewarmReport> {
    let started_ns = monotonic_ns();
    let mut client = PageClient::connect(&cfg.connect)?;
    // Before anything is read from or installed in the cache.
    crate::compute::bind_cache(lfc, &client)?;
    let udp_port = register_udp(&mut client, cfg, lfc)?;
    let sizes = relation_sizes(&mut client, pages)?;
    let config = DriverConfig {
        schedule: cfg.schedule,
        udp_port,
        rate_bytes_per_s: cfg.rate_bytes_per_s,
        deadline_ns: cfg.deadline.map(|d| d.as_nanos() as u64),
        verify: client.page_verify(u64::MAX),
    };
    let mut driver = Driver::new(
        config,
        pages.to_vec(),
        &sizes,
        lfc,
        started_ns,
        monotonic_ns(),
    );
    let mut progress = Progress::new(pages.len() as u64, cfg.progress);
    let mut shown_round = 0;
    let mut poll = driver.step(lfc, monotonic_ns());
    loop {
        transmit(&mut client, &mut driver)?;
        if driver.rounds() != shown_round {
            shown_round = driver.rounds();
            let elapsed = monotonic_ns().saturating_sub(started_ns) as f64 / 1e9;
            progress.update(driver.done(), pages.len(), &driver.counts(), elapsed);
        }
        poll = match poll {
            Poll::Done => break,
            Poll::Wait { until_ns } => {
                std::thread::sleep(Duration::from_nanos(
                    until_ns.saturating_sub(monotonic_ns()),
                ));
                driver.step(lfc, monotonic_ns())
            }
            Poll::AwaitResponse => receive(&mut client, &mut driver, lfc)?,
        };
    }
    progress.finish();
    let check = driver.final_check(lfc, |_, _| {});
    Ok(driver.report(check, monotonic_ns()))
}

/// Registers the worker daemon's port on the connection, if prewarm is to use UDP and there is
/// one to use (`driver::udp_port`); returns it.
fn register_udp(
    client: &mut PageClient,
    cfg: &PrewarmConfig,
    lfc: &Lfc,
) -> Result<Option<u16>, ClientError> {
    match driver::udp_port(cfg.prefetch_port, lfc, monotonic_ns()) {
        Some(udp_port) if cfg.udp => {
            let path_mtu = client.prefetch_path_mtu();
            client.set_prefetch_target(PrefetchTarget {
                udp_port,
                key_id: lfc.key_id(),
                key: lfc.key(),
                path_mtu,
            })?;
            Ok(Some(udp_port))
        }
        _ => {
            if cfg.udp {
                tracing::warn!(
                    lfc = %lfc.path().display(),
                    "no live worker daemon serves this LFC; prewarming over TCP"
                );
            }
            Ok(None)
        }
    }
}

/// Each relation's size, `None` for one that no longer exists.
fn relation_sizes(
    client: &mut PageClient,
    pages: &[BufferTag],
) -> Result<HashMap<RelTag, Option<u32>>, ClientError> {
    driver::relations(pages)
        .into_iter()
        .map(|rel| {
            let n = if client.exists(rel, LATEST_LSN)? {
                Some(client.nblocks(rel, LATEST_LSN)?)
            } else {
                None
            };
            Ok((rel, n))
        })
        .collect()
}

/// Sends what the driver queued, then flushes.
fn transmit(client: &mut PageClient, driver: &mut Driver) -> Result<(), ClientError> {
    let mut sent = false;
    while let Some(t) = driver.poll_transmit() {
        sent = true;
        match t {
            // not_modified_since covers the whole range: the newest modification.
            Transmit::Prefetch(r) => {
                client.send_prefetch(r.rel, r.first, r.n, LATEST_LSN, r.max_lwlsn)?
            }
            Transmit::GetPage {
                tag,
                not_modified_since,
            } => client.send_get_page(tag, LATEST_LSN, not_modified_since)?,
        }
    }
    if sent {
        client.flush()?;
    }
    Ok(())
}

/// Reads the next response and hands it to the driver.
fn receive(client: &mut PageClient, driver: &mut Driver, lfc: &Lfc) -> anyhow::Result<Poll> {
    let handled = match client.recv()? {
        Response::GetPage {
            rel, blkno, page, ..
        } => {
            let tag = rel.block(blkno);
            let response = driver::Response::Page { tag, page: &page };
            driver.on_response(lfc, response, monotonic_ns())?
        }
        Response::Error { message, .. } => {
            // Gone since the plan was made: nothing to install. The connection answers in
            // order, so this is the oldest GetPage's answer.
            let tag = driver
                .awaited()
                .ok_or_else(|| ClientError::Unexpected(format!("error {message}")))?;
            tracing::debug!(%tag, %message, "page not fetched");
            driver.on_response(lfc, driver::Response::Failed { tag }, monotonic_ns())?
        }
        other => return Err(ClientError::Unexpected(format!("{other:?}")).into()),
    };
    Ok(handled.next)
}
