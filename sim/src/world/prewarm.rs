//! Prewarm: the real sans-IO `compute::prewarm::driver::Driver` (arrival probing, retries, the
//! fail-over to TCP, cache-full, pacing, repair rounds) in virtual time, on a saved state that
//! went through the real state-file encoding and `plan`. This file only carries its Prefetch
//! and GetPage messages and replies and turns its `Poll::Wait` into an event; no copy of its
//! logic lives here. Prewarm runs on the cold cache before the backends start, as after a
//! compute restart, and its end starts them; for a quarter of the seeds of the `none` and
//! `light` profiles the backends start with it (queries at once after the restart), and the
//! driver yields to their reads. As `run_prewarm`, a run's plan is split by owning shard
//! (`prewarm::split_plan`), each part run by a driver of its own at its share of the pace, all
//! at once; when they use UDP, the shards are first registered one after another, each a round
//! trip on its connection (PrefetchTarget, then PrefetchPriority: the shell's messages, built
//! here because the real ones are sent by its blocking shell), and the drivers' first messages
//! go out once the last is registered. The run is over when every driver is done; its report is
//! the shards' merged (`prewarm::merge_reports`).
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
use udp_prefetch::compute::prewarm::driver::{
    Driver as PrewarmDriver, DriverConfig, Poll as PrewarmPoll, Response as PrewarmResponse,
    Transmit as PrewarmTransmit,
};
use udp_prefetch::compute::prewarm::schedule::ScheduleConfig;
use udp_prefetch::compute::prewarm::{self, PrewarmReport};
use udp_prefetch::pageserver::source::Synthetic;
use udp_prefetch::protocol::page::PageVerify;
use udp_prefetch::protocol::pagestream::{
    Header, PrefetchPriority, PrefetchTarget, Request, LATEST_LSN,
};

pub(super) struct PrewarmNode {
    pub(super) program: VecDeque<(u16, u8)>,
    /// The run in progress, one real driver per shard (empty between runs).
    pub(super) runs: Vec<ShardRun>,
    /// The newest completed write of each page whose GetPage is in flight: the floor of what
    /// its reply may hold.
    pub(super) min_lsn: HashMap<BufferTag, u64>,
    /// The latest wake-up's token: the program's (the next run's start) while no run is in
    /// progress; each shard's driver keeps the one of its own latest.
    pub(super) token: u64,
    pub(super) reqid: u64,
    pub(super) done: bool,
    /// While a run registers: the shard whose PrefetchTarget is out, and when it was sent.
    pub(super) registering: Option<(usize, u64)>,
}

impl PrewarmNode {
    /// The token of shard `s`'s latest wake-up, if a run is in progress.
    pub(super) fn shard_token(&self, s: usize) -> Option<u64> {
        self.runs.get(s).map(|r| r.token)
    }
}

/// One shard's part of a run: its driver, what it said last (held back while the shards
/// register, as the shell steps each driver when its shard is registered but sends nothing
/// until all are), and the token of its latest wake-up.
pub(super) struct ShardRun {
    driver: PrewarmDriver,
    poll: PrewarmPoll,
    token: u64,
    /// Its final check's report, made the moment the driver is done, as `run_prewarm` makes it.
    report: Option<PrewarmReport>,
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
            self.backends[b].driver = super::backend::new_driver(&self.cfg, self.lfc, at, b);
            self.schedule(at, Ev::BackendStep(b));
        }
    }

    /// The saved state: the cache's own hottest pages (`snapshot_hottest`, empty when cold),
    /// then pages of the relations, then `gone` tags that no longer exist (a dropped relation,
    /// blocks past a relation's end).
    fn start_prewarm(&mut self, pages: u16, gone: u8) {
        // Small enough to fit next to the workers' reserved slots, so "complete" is reachable.
        let reserved = (self.cfg.workers * self.cfg.slots_per_worker
            + self.cfg.own_receivers * super::worker::own_slots(&self.cfg))
            as u64;
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
        self.start_prewarm_drivers(prewarm::plan(&ranges));
    }

    /// `run_prewarm`'s start: the relations' sizes (asked of shard 0, as the real one asks),
    /// the daemon's port, and a driver per shard over its part of the plan, started shard by
    /// shard (`start_prewarm_shards`).
    fn start_prewarm_drivers(&mut self, pages: Vec<BufferTag>) {
        let sizes: HashMap<RelTag, Option<u32>> = prewarm::driver::relations(&pages)
            .into_iter()
            .map(|rel| {
                let store = &self.shards[0].store;
                (rel, store.nblocks(rel).ok().flatten())
            })
            .collect();
        let count = self.shards.len();
        let config = DriverConfig {
            udp_port: prewarm::driver::udp_port(self.prewarm_config.udp_port, self.lfc, self.now),
            rate_bytes_per_s: prewarm::shard_rate(self.prewarm_config.rate_bytes_per_s, count),
            ..self.prewarm_config
        };
        let mut runs = Vec::with_capacity(count);
        for part in prewarm::split_plan(&pages, self.cfg.shard_layout()) {
            let driver = PrewarmDriver::new(config, part, &sizes, self.lfc, self.now, self.now);
            if !self.check_prewarm_plan(&driver) {
                return;
            }
            runs.push(ShardRun {
                driver,
                poll: PrewarmPoll::AwaitResponse,
                token: 0,
                report: None,
            });
        }
        self.prewarm.runs = runs;
        self.start_prewarm_shards(0);
    }

    /// `ShardRun::start` for shards `from..`, in order: a driver that uses UDP registers its
    /// shard first (a round trip: the next shard starts on its answer, `prewarm_registered`),
    /// then takes its first step; one that does not takes it at once. After the last shard,
    /// every driver's messages go out.
    fn start_prewarm_shards(&mut self, from: usize) {
        let (lfc, now) = (self.lfc, self.now);
        for s in from..self.prewarm.runs.len() {
            if self.prewarm.runs[s].driver.udp_port().is_some() {
                return self.register_prewarm_shard(s);
            }
            let run = &mut self.prewarm.runs[s];
            run.poll = run.driver.step(lfc, now);
        }
        // The run ends (and `runs` empties) at the poll that finds every driver done.
        let mut s = 0;
        while let Some(poll) = self.prewarm.runs.get(s).map(|r| r.poll) {
            self.prewarm_poll(s, poll);
            s += 1;
        }
    }

    /// `register_shard`: the daemon's PrefetchTarget, then the run's background priority, on
    /// shard `shard`'s connection; its answer starts the next shard.
    fn register_prewarm_shard(&mut self, shard: usize) {
        let udp_port = self.prewarm.runs[shard]
            .driver
            .udp_port()
            .expect("registering a driver that uses UDP");
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
        self.prewarm.registering = Some((shard, self.now));
    }

    /// A shard answered prewarm's PrefetchTarget: its driver learns the round trip and takes
    /// its first step (sending nothing yet), and the next shard starts.
    fn prewarm_registered(&mut self) {
        let Some((shard, sent_ns)) = self.prewarm.registering.take() else {
            return self.violate(
                ViolationKind::Liveness,
                "prewarm: a PrefetchTarget answered that it did not send".into(),
            );
        };
        let (lfc, now) = (self.lfc, self.now);
        let run = &mut self.prewarm.runs[shard];
        run.driver.registered(now - sent_ns, now);
        run.poll = run.driver.step(lfc, now);
        self.start_prewarm_shards(shard + 1);
    }

    /// A shard's driver, checked against the model's idea of which pages exist; counted.
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

    /// The program's wake-up (`shard` None: the next run starts, or the program is over) or a
    /// shard driver's (its `Poll::Wait` is over).
    pub(super) fn prewarm_tick(&mut self, shard: Option<usize>) {
        if let Some(s) = shard {
            let (lfc, now) = (self.lfc, self.now);
            if let Some(run) = self.prewarm.runs.get_mut(s) {
                let poll = run.driver.step(lfc, now);
                self.prewarm_poll(s, poll);
            }
            return;
        }
        if self.prewarm.done || !self.prewarm.runs.is_empty() {
            return;
        }
        match self.prewarm.program.pop_front() {
            Some((pages, gone)) => self.start_prewarm(pages, gone),
            None => {
                self.prewarm.done = true;
                if !self.prewarm_beside_backends {
                    // Cold start over: the backends begin.
                    self.start_backends();
                }
            }
        }
    }

    /// Sends what shard `s`'s driver queued, then does what it says next.
    fn prewarm_poll(&mut self, s: usize, poll: PrewarmPoll) {
        self.prewarm_transmit(s);
        self.prewarm.runs[s].poll = poll;
        match poll {
            PrewarmPoll::Wait { until_ns } => {
                // From the node's counter: unique across runs, so a wake-up of a run that has
                // ended never steps the next one.
                self.prewarm.token += 1;
                let token = self.prewarm.token;
                self.prewarm.runs[s].token = token;
                self.schedule(
                    until_ns,
                    Ev::PrewarmRound {
                        shard: Some(s),
                        token,
                    },
                );
            }
            // Continues when a reply comes in (`prewarm_reply`).
            PrewarmPoll::AwaitResponse => {}
            PrewarmPoll::Done => {
                self.prewarm_shard_done(s);
                if self.prewarm.runs.iter().all(|r| r.report.is_some()) {
                    self.prewarm_finish();
                }
            }
        }
    }

    /// `run_prewarm`'s `transmit` for shard `s`: its driver's messages on its connection. A
    /// GetPage notes the newest completed write of its page, the checkers' floor.
    fn prewarm_transmit(&mut self, s: usize) {
        while let Some(t) = self.prewarm.runs[s].driver.poll_transmit() {
            let reqid = self.next_reqid(Conn::Prewarm);
            let msg = match t {
                PrewarmTransmit::Prefetch(PrefetchRun {
                    rel,
                    first,
                    n,
                    max_lwlsn,
                }) => {
                    let (relnode, first64, n64) = (rel.relnode, u64::from(first), u64::from(n));
                    self.rec(Kind::Prefetch, u64::from(relnode), first64, n64);
                    let hdr = Header {
                        reqid,
                        request_lsn: LATEST_LSN,
                        not_modified_since: max_lwlsn,
                    };
                    Request::Prefetch {
                        hdr,
                        rel,
                        first_blkno: first,
                        nblocks: n,
                    }
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
                    Request::GetPage {
                        hdr,
                        rel: tag.rel,
                        blkno: tag.blkno,
                    }
                }
            };
            self.send_to_server(Conn::Prewarm, s, msg);
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
        // Its shard's driver asked for it: the plan was split by owner.
        let s = self.shard_of(&tag);
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
                    .runs
                    .get_mut(s)
                    .map(|r| r.driver.on_response(lfc, response, now))
            }
            Err(e) if self.exists(&tag) => {
                let msg = format!("prewarm: GetPage {tag} failed although it exists: {e}");
                self.violate(ViolationKind::Liveness, msg);
                return;
            }
            Err(_) => {
                let response = PrewarmResponse::Failed { tag };
                self.prewarm
                    .runs
                    .get_mut(s)
                    .map(|r| r.driver.on_response(lfc, response, now))
            }
        };
        match handled {
            Some(Ok(handled)) => {
                if handled.installed {
                    self.shell_installs += 1;
                    self.notify(tag);
                }
                self.check_occupancy();
                self.prewarm_poll(s, handled.next);
            }
            Some(Err(e)) => self.violate(ViolationKind::Liveness, format!("prewarm: {e}")),
            None => {}
        }
    }

    /// Shard `s`'s driver is done: the checkers read every page its final check reads (one
    /// lookup each, as in a real run: a second one would count as a use for eviction), and its
    /// report is made, then and there as `run_prewarm` makes it.
    fn prewarm_shard_done(&mut self, s: usize) {
        if self.prewarm.runs[s].report.is_some() {
            return;
        }
        let (lfc, now) = (self.lfc, self.now);
        let runs = std::mem::take(&mut self.prewarm.runs);
        let check = runs[s].driver.final_check(lfc, |tag, page| {
            let ctx = ReadCtx {
                tag: *tag,
                started_ns: now,
                min_lsn: self.completed_max(tag),
            };
            self.check_page("prewarm final check", &ctx, page);
        });
        self.prewarm.runs = runs;
        let run = &mut self.prewarm.runs[s];
        run.report = Some(run.driver.report(check, now));
    }

    /// Every shard's driver is done: the run's report is the shards' merged, and must say
    /// complete (unless the cache filled up); the next prewarm of the program starts.
    fn prewarm_finish(&mut self) {
        let runs = std::mem::take(&mut self.prewarm.runs);
        let counts: Vec<_> = runs.iter().map(|r| r.driver.counts()).collect();
        let Some(report) = runs
            .into_iter()
            .filter_map(|r| r.report)
            .reduce(prewarm::merge_reports)
        else {
            return;
        };
        let existing = report.pages - report.skipped_gone;
        self.report.prewarm_covered += report.present;
        self.report.prewarm_yielded_rounds += report.yielded_rounds;
        self.rec(Kind::PrewarmDone, existing, report.present, report.via_tcp);
        if !report.complete && !report.cache_full {
            self.violate(
                ViolationKind::Liveness,
                format!(
                    "prewarm finished with {} of {existing} existing pages present ({} gone, {} failed verification, per shard {counts:?})",
                    report.present, report.skipped_gone, report.failed_verification
                ),
            );
            return;
        }
        self.prewarm.token += 1;
        let token = self.prewarm.token;
        self.schedule(self.now, Ev::PrewarmRound { shard: None, token });
    }
}
