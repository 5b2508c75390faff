//! Prewarm: the real sans-IO `compute::prewarm::driver::Driver` (arrival probing, retries, the
//! fail-over to TCP, cache-full, pacing, repair rounds) in virtual time, on a saved state that
//! went through the real state-file encoding and `plan`. This file only carries its Prefetch
//! and GetPage messages and replies and turns its `Poll::Wait` into an event; no copy of its
//! logic lives here. Prewarm runs on the cold cache before the backends start, as after a
//! compute restart, and its end starts them; for a quarter of the seeds of the `none` and
//! `light` profiles the backends start with it (queries at once after the restart), and the
//! driver yields to their reads. Each run first registers on every shard's connection, as
//! `run_prewarm` does (PrefetchTarget, then PrefetchPriority): the shell's messages, built here
//! because the real ones are sent by its blocking shell.
//!
//! Owns: the prewarm program, the run in progress and its configuration. Talks to the page
//! servers only over `net`'s TCP; reads the LFC only through the driver.

use super::check::{ReadCtx, ViolationKind};
use super::daemon::COMPUTE_ADDR;
use super::net::{Conn, ToClient};
use super::server::compute_target;
use super::{tag_key, Ev, World};
use crate::config::START_NS;
use crate::rng::Rng;
use crate::trace::Kind;
use lfc::{BufferTag, RelTag, PAGE_SIZE};
use std::collections::{HashMap, VecDeque};
use udp_prefetch::compute::backend::read_path::PrefetchRun;
use udp_prefetch::compute::prewarm;
use udp_prefetch::compute::prewarm::driver::{
    Driver as PrewarmDriver, DriverConfig, Poll as PrewarmPoll, Response as PrewarmResponse,
    Transmit as PrewarmTransmit,
};
use udp_prefetch::compute::prewarm::schedule::ScheduleConfig;
use udp_prefetch::pageserver::source::Synthetic;
use udp_prefetch::protocol::page::PageVerify;
use udp_prefetch::protocol::pagestream::{
    Header, PrefetchPriority, PrefetchTarget, Request, LATEST_LSN,
};

pub(super) struct PrewarmNode {
    pub(super) program: VecDeque<(u16, u8)>,
    /// The run in progress: the real driver.
    pub(super) run: Option<PrewarmDriver>,
    /// The newest completed write of each page whose GetPage is in flight: the floor of what
    /// its reply may hold.
    pub(super) min_lsn: HashMap<BufferTag, u64>,
    pub(super) token: u64,
    pub(super) reqid: u64,
    pub(super) done: bool,
    /// A run whose PrefetchTargets are not all answered yet: its driver starts on the last.
    pub(super) registering: Option<Registering>,
}

/// A run whose driver uses UDP, before it starts: the driver, when the registration began, and
/// the shards whose PrefetchTarget is unanswered.
pub(super) struct Registering {
    driver: PrewarmDriver,
    started_ns: u64,
    awaiting: usize,
}

/// Prewarm's configuration: the real schedule defaults, with the first timeout, the attempts
/// and the window varied per seed; no deadline. Half the seeds give the daemon's port
/// (`--prefetch-port`), so prewarm tries UDP even with no daemon alive and must fail over to
/// TCP; the others take it from the LFC header, as by default. A quarter are paced (`--rate`,
/// 2k to 50k pages/s), in virtual time.
pub(super) fn prewarm_driver_config(seed: u64) -> DriverConfig {
    let mut r = Rng::stream(seed, 0x9E8);
    let window_pages = r.range(4, 64) as usize;
    let schedule = ScheduleConfig {
        initial_timeout_ns: r.range(1, 20) * 1_000_000,
        max_udp_attempts: r.range(1, 3) as u32,
        window_pages,
        min_window_pages: r.range(1, window_pages as u64) as usize,
        ..ScheduleConfig::default()
    };
    DriverConfig {
        schedule,
        udp_port: (r.below(2) == 0).then_some(COMPUTE_ADDR.1),
        rate_bytes_per_s: if r.below(4) == 0 {
            r.range(2_000, 50_000) * PAGE_SIZE as u64
        } else {
            0
        },
        deadline_ns: None,
        // Every synthetic page carries a checksum.
        verify: PageVerify::Checksums,
        // Drawn last: the draws before it are what they were.
        yield_pages: r.range(1, 64) as usize,
    }
}

impl World<'_> {
    /// The backends' first steps: the first now, each next one `start_skew_ns` later.
    pub(super) fn start_backends(&mut self) {
        self.report.backends_started_ns = self.now - START_NS;
        for b in 0..self.backends.len() {
            let at = self.now + b as u64 * self.cfg.start_skew_ns;
            // Connected when it starts, as a real backend process is: its PrefetchTarget goes
            // out with its first step, and the round trip it measures is one.
            self.backends[b].driver = super::backend::new_driver(&self.cfg, self.lfc, at);
            self.schedule(at, Ev::BackendStep(b));
        }
    }

    /// The saved state: the cache's own hottest pages (`snapshot_hottest`, empty when cold),
    /// then pages of the relations, then `gone` tags that no longer exist (a dropped relation,
    /// blocks past a relation's end).
    fn start_prewarm(&mut self, pages: u16, gone: u8) {
        // Small enough to fit next to the workers' reserved slots, so "complete" is reachable.
        let reserved = (self.cfg.workers * self.cfg.slots_per_worker) as u64;
        let budget = (self.cfg.lfc_capacity_pages.saturating_sub(reserved) / 2).max(1) as usize;
        let want = usize::from(pages).clamp(1, budget);
        let mut tags = self.lfc.snapshot_hottest(want / 2);
        let r = &mut self.prewarm_rng;
        // Bounded draws: a small relation set may hold fewer distinct pages than wanted.
        for _ in 0..want * 4 {
            if tags.len() >= want {
                break;
            }
            let rel = Synthetic::rel(r.below(u64::from(self.cfg.rels)) as u32);
            // Mostly runs of neighbours, as a real cache's hot set has.
            let tag = rel.block(r.below(u64::from(self.cfg.pages_per_rel)) as u32);
            for k in 0..r.range(1, 4) as u32 {
                let t = tag.rel.block((tag.blkno + k) % self.cfg.pages_per_rel);
                if tags.len() < want && !tags.contains(&t) {
                    tags.push(t);
                }
            }
        }
        for i in 0..u32::from(gone) {
            tags.push(if i % 2 == 0 {
                Synthetic::rel(self.cfg.rels + i).block(i)
            } else {
                Synthetic::rel(0).block(self.cfg.pages_per_rel + i)
            });
        }
        // Through the state file, as `prewarm save` then `prewarm run` would.
        let ranges = prewarm::state::ranges_from_hottest(&tags);
        let ranges = match prewarm::state::decode(&prewarm::state::encode(&ranges)) {
            Ok(r) => r,
            Err(e) => {
                self.violate(
                    ViolationKind::Liveness,
                    format!("prewarm state round trip: {e}"),
                );
                return;
            }
        };
        self.start_prewarm_driver(prewarm::plan(&ranges));
    }

    /// `run_prewarm`'s start: the relations' sizes (asked of shard 0, as the real one asks),
    /// the daemon's port and the driver; when the driver uses UDP, the daemon's registration on
    /// every shard's connection (`register_shard`: PrefetchTarget, then the run's background
    /// priority), and the driver starts once every target is answered (`prewarm_registered`);
    /// else at once.
    fn start_prewarm_driver(&mut self, pages: Vec<BufferTag>) {
        let sizes: HashMap<RelTag, Option<u32>> = prewarm::driver::relations(&pages)
            .into_iter()
            .map(|rel| {
                let store = &self.shards[0].store;
                (rel, store.nblocks(rel).ok().flatten())
            })
            .collect();
        let config = DriverConfig {
            udp_port: prewarm::driver::udp_port(self.prewarm_config.udp_port, self.lfc, self.now),
            ..self.prewarm_config
        };
        let driver = PrewarmDriver::new(config, pages, &sizes, self.lfc, self.now, self.now);
        if !self.check_prewarm_plan(&driver) {
            return;
        }
        let Some(udp_port) = driver.udp_port() else {
            self.prewarm.run = Some(driver);
            return;
        };
        for shard in 0..self.shards.len() {
            let hdr = Header {
                reqid: self.next_reqid(Conn::Prewarm),
                ..Header::default()
            };
            let target = PrefetchTarget {
                udp_port,
                ..compute_target(self.lfc, self.path_mtu)
            };
            self.send_to_server(
                Conn::Prewarm,
                shard,
                Request::PrefetchTarget { hdr, target },
            );
            let hdr = Header {
                reqid: self.next_reqid(Conn::Prewarm),
                ..Header::default()
            };
            let priority = PrefetchPriority::Background;
            self.send_to_server(
                Conn::Prewarm,
                shard,
                Request::PrefetchPriority { hdr, priority },
            );
        }
        self.prewarm.registering = Some(Registering {
            driver,
            started_ns: self.now,
            awaiting: self.shards.len(),
        });
    }

    /// A shard answered prewarm's PrefetchTarget: after the last one, the driver starts.
    fn prewarm_registered(&mut self) {
        let Some(run) = self.prewarm.registering.as_mut() else {
            return self.violate(
                ViolationKind::Liveness,
                "prewarm: a PrefetchTarget answered that it did not send".into(),
            );
        };
        run.awaiting -= 1;
        if run.awaiting > 0 {
            return;
        }
        let Registering {
            mut driver,
            started_ns,
            ..
        } = self.prewarm.registering.take().expect("registering");
        // Every shard answered its PrefetchTarget, a round trip since the registration began.
        driver.registered(self.now - started_ns, self.now);
        self.prewarm.run = Some(driver);
        let (lfc, now) = (self.lfc, self.now);
        if let Some(poll) = self.prewarm.run.as_mut().map(|d| d.step(lfc, now)) {
            self.prewarm_poll(poll);
        }
    }

    /// The run's driver, checked against the model's idea of which pages exist; counted.
    fn check_prewarm_plan(&mut self, driver: &PrewarmDriver) -> bool {
        for (i, tag) in driver.pages().iter().enumerate() {
            if driver.exists(i) != self.exists(tag) {
                let e = driver.exists(i);
                self.violate(
                    ViolationKind::Liveness,
                    format!("prewarm: the page server says {tag} exists={e}, the model disagrees"),
                );
                return false;
            }
        }
        self.report.prewarm_pages += driver.pages().len() as u64;
        self.rec(Kind::PrewarmRound, driver.pages().len() as u64, 0, 0);
        true
    }

    /// A `Poll::Wait` of the driver is over (or the next prewarm of the program starts).
    pub(super) fn prewarm_tick(&mut self) {
        // A run still registering starts on its last PrefetchTarget answer.
        if self.prewarm.done || self.prewarm.registering.is_some() {
            return;
        }
        if self.prewarm.run.is_none() {
            match self.prewarm.program.pop_front() {
                Some((pages, gone)) => self.start_prewarm(pages, gone),
                None => {
                    self.prewarm.done = true;
                    if !self.prewarm_beside_backends {
                        // Cold start over: the backends begin.
                        self.start_backends();
                    }
                    return;
                }
            }
        }
        let lfc = self.lfc;
        let now = self.now;
        if let Some(poll) = self.prewarm.run.as_mut().map(|d| d.step(lfc, now)) {
            self.prewarm_poll(poll);
        }
    }

    /// Sends what the driver queued, then does what it says next.
    fn prewarm_poll(&mut self, poll: PrewarmPoll) {
        self.prewarm_transmit();
        match poll {
            PrewarmPoll::Wait { until_ns } => {
                self.prewarm.token += 1;
                let token = self.prewarm.token;
                self.schedule(until_ns, Ev::PrewarmRound { token });
            }
            // Continues when a reply comes in (`prewarm_reply`).
            PrewarmPoll::AwaitResponse => {}
            PrewarmPoll::Done => self.prewarm_finish(),
        }
    }

    /// `run_prewarm`'s `transmit`: each message on the connection to the shard that owns its
    /// pages. A GetPage notes the newest completed write of its page, the checkers' floor.
    fn prewarm_transmit(&mut self) {
        while let Some(t) = self.prewarm.run.as_mut().and_then(|d| d.poll_transmit()) {
            let reqid = self.next_reqid(Conn::Prewarm);
            let (shard, msg) = match t {
                PrewarmTransmit::Prefetch(PrefetchRun {
                    rel,
                    first,
                    n,
                    max_lwlsn,
                }) => {
                    let (relnode, first64, n64) = (rel.relnode, u64::from(first), u64::from(n));
                    self.rec(Kind::Prefetch, u64::from(relnode), first64, n64);
                    // One Prefetch per stripe piece, each to its shard (`protocol::shard`).
                    let end = first + u32::from(n);
                    let pieces: Vec<_> = self.cfg.shard_layout().split(rel, first..end).collect();
                    for (i, (shard, piece)) in pieces.into_iter().enumerate() {
                        let hdr = Header {
                            reqid: if i == 0 {
                                reqid
                            } else {
                                self.next_reqid(Conn::Prewarm)
                            },
                            request_lsn: LATEST_LSN,
                            not_modified_since: max_lwlsn,
                        };
                        let msg = Request::Prefetch {
                            hdr,
                            rel,
                            first_blkno: piece.start,
                            nblocks: piece.len() as u16,
                        };
                        self.send_to_server(Conn::Prewarm, shard, msg);
                    }
                    continue;
                }
                PrewarmTransmit::GetPage {
                    tag,
                    not_modified_since,
                } => {
                    let min_lsn = self.completed_max(&tag);
                    self.prewarm.min_lsn.insert(tag, min_lsn);
                    self.rec(Kind::PrewarmFetch, tag_key(&tag), not_modified_since, 0);
                    let hdr = Header {
                        reqid,
                        request_lsn: LATEST_LSN,
                        not_modified_since,
                    };
                    let msg = Request::GetPage {
                        hdr,
                        rel: tag.rel,
                        blkno: tag.blkno,
                    };
                    (self.shard_of(&tag), msg)
                }
            };
            self.send_to_server(Conn::Prewarm, shard, msg);
        }
    }

    /// A GetPage reply: checked, then handed to the driver (which installs it).
    pub(super) fn prewarm_reply(&mut self, msg: ToClient) {
        let (tag, result) = match msg {
            ToClient::Page { tag, result } => (tag, result),
            ToClient::TargetSet { .. } => return self.prewarm_registered(),
            ToClient::PutDone => return,
        };
        let (lfc, now) = (self.lfc, self.now);
        let min_lsn = self.prewarm.min_lsn.remove(&tag).unwrap_or(0);
        let handled = match &result {
            Ok(page) => {
                let ctx = ReadCtx {
                    tag,
                    started_ns: now,
                    min_lsn,
                };
                self.check_page("prewarm", &ctx, page);
                let response = PrewarmResponse::Page { tag, page };
                self.prewarm
                    .run
                    .as_mut()
                    .map(|d| d.on_response(lfc, response, now))
            }
            Err(e) if self.exists(&tag) => {
                let msg = format!("prewarm: GetPage {tag} failed although it exists: {e}");
                self.violate(ViolationKind::Liveness, msg);
                return;
            }
            Err(_) => {
                let response = PrewarmResponse::Failed { tag };
                self.prewarm
                    .run
                    .as_mut()
                    .map(|d| d.on_response(lfc, response, now))
            }
        };
        match handled {
            Some(Ok(handled)) => {
                if handled.installed {
                    self.shell_installs += 1;
                    self.notify(tag);
                }
                self.check_occupancy();
                self.prewarm_poll(handled.next);
            }
            Some(Err(e)) => self.violate(ViolationKind::Liveness, format!("prewarm: {e}")),
            None => {}
        }
    }

    /// `Poll::Done`: the checkers read every page the run left, its report must say complete
    /// (unless the cache filled up), and the next prewarm of the program starts.
    fn prewarm_finish(&mut self) {
        let Some(driver) = self.prewarm.run.take() else {
            return;
        };
        // The checkers see the pages the driver's final check reads (one lookup each, as in a
        // real run: a second one would count as a use for eviction).
        let (lfc, now) = (self.lfc, self.now);
        let check = driver.final_check(lfc, |tag, page| {
            let ctx = ReadCtx {
                tag: *tag,
                started_ns: now,
                min_lsn: self.completed_max(tag),
            };
            self.check_page("prewarm final check", &ctx, page);
        });
        let report = driver.report(check, now);
        let existing = report.pages - report.skipped_gone;
        self.report.prewarm_covered += report.present;
        self.report.prewarm_yielded_rounds += report.yielded_rounds;
        self.rec(Kind::PrewarmDone, existing, report.present, report.via_tcp);
        if !report.complete && !report.cache_full {
            self.violate(
                ViolationKind::Liveness,
                format!(
                    "prewarm finished with {} of {existing} existing pages present ({} gone, {} failed verification, {:?})",
                    report.present, report.skipped_gone, report.failed_verification, driver.counts()
                ),
            );
            return;
        }
        self.prewarm.token += 1;
        let token = self.prewarm.token;
        self.schedule(self.now, Ev::PrewarmRound { token });
    }
}
