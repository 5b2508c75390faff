//! The backends: the real sans-IO `compute::backend::driver::Driver` (read path, UDP health,
//! GetPage pipeline), with the scan window of `compute::scan::run_scan`. This file only carries
//! its messages (`poll_transmit`, responses) and turns its `Poll::Wait` into a virtual-time wait
//! that re-checks when a page lands (`notify`) or the deadline passes. No copy of its logic
//! lives here.
//!
//! Owns: each backend's program, activity and pending step, and the completed writes it records
//! in the version model. Talks to the page servers only over `net`'s TCP; reads the LFC only
//! through the driver and `store_own_write`.

use super::check::{ReadCtx, ViolationKind};
use super::net::{Conn, ToClient};
use super::server::compute_target;
use super::{tag_key, Ev, World};
use crate::config::{SimConfig, START_NS};
use crate::rng::Rng;
use crate::trace::Kind;
use crate::workload::{Op, HOT_BLOCKS};
use lfc::{BufferTag, Lfc, RelTag, WriteOutcome, PAGE_SIZE};
use std::collections::VecDeque;
use udp_prefetch::compute::backend::driver::{
    Driver, Poll, ReadSource, Response as DriverResponse, Transmit,
};
use udp_prefetch::compute::backend::read_path::{PrefetchRun, ScanWindow};
use udp_prefetch::compute::backend::sharded::ShardedDriver;
use udp_prefetch::compute::backend::store_own_write;
use udp_prefetch::pageserver::source::Synthetic;
use udp_prefetch::protocol::page::{page_lsn, synthetic_page, Page};
use udp_prefetch::protocol::pagestream::{Header, PrefetchTarget, Request, LATEST_LSN};

/// Time from an install to a waiting backend re-checking the cache (futex wake-up).
const WAKE_NS: u64 = 2_000;

pub(super) enum Activity {
    None,
    Scan {
        rel: RelTag,
        cur: u32,
        end: u32,
        window: ScanWindow,
        distance: u32,
        path_changes: u64,
    },
    Reads(VecDeque<BufferTag>),
}

pub(super) enum Pending {
    None,
    Sleep,
    Wait {
        ctx: ReadCtx,
        token: u64,
    },
    /// Awaiting a response on the TCP pipeline; `token` tells this await's looks for losses
    /// from an earlier one's.
    Await {
        ctx: ReadCtx,
        token: u64,
    },
    Put {
        tag: BufferTag,
        lsn: u64,
        set_lwlsn: bool,
    },
}

pub(super) struct BackendNode {
    /// The real `backend::sharded::ShardedDriver`: a `backend::driver::Driver` per shard and
    /// the routing between them.
    pub(super) driver: ShardedDriver,
    /// Its path changes as last traced.
    pub(super) path_changes: u64,
    pub(super) program: VecDeque<Op>,
    pub(super) activity: Activity,
    pub(super) pending: Pending,
    pub(super) wait_token: u64,
    pub(super) reqid: u64,
    pub(super) page: Box<Page>,
    pub(super) rng: Rng,
    pub(super) done: bool,
    /// The wait (its token) a datagram on the backend's own socket has already woken: one
    /// wake-up per wait, however many datagrams come.
    pub(super) socket_woke: u64,
    /// The wait in progress is on the backend's own socket (an own prefetch it expects by
    /// UDP), not on the LFC's futex (`Backend::read`).
    pub(super) wait_on_socket: bool,
}

pub(super) fn build_backends(
    cfg: &SimConfig,
    lfc: &Lfc,
    seed: u64,
    programs: Vec<VecDeque<Op>>,
) -> Vec<BackendNode> {
    programs
        .into_iter()
        .enumerate()
        .map(|(i, program)| BackendNode {
            driver: new_driver(cfg, lfc, START_NS, i),
            path_changes: 0,
            program,
            activity: Activity::None,
            pending: Pending::None,
            wait_token: 0,
            reqid: (i as u64) << 48,
            page: Box::new([0u8; PAGE_SIZE]),
            rng: Rng::stream(seed, 0xB0 + i as u64),
            done: false,
            socket_woke: 0,
            wait_on_socket: false,
        })
        .collect()
}

/// Backend `b`'s read path as the real shell builds it when the backend process starts: fed
/// by the daemon, or receiving its own prefetches on its own port (`Backend::sharded` with
/// `Receive::Backend`).
pub(super) fn new_driver(cfg: &SimConfig, lfc: &Lfc, now_ns: u64, b: usize) -> ShardedDriver {
    ShardedDriver::new(cfg.shard_layout(), || {
        if b < cfg.own_receivers {
            Driver::receiving_itself(cfg.read_path, super::worker::own_port(b), lfc, now_ns)
        } else {
            Driver::new(cfg.read_path, None, lfc, now_ns)
        }
    })
}

impl World<'_> {
    /// A page landed in the LFC: backends waiting for it re-check (the futex wake-up).
    /// A backend that receives its own prefetches waits on its socket for those instead
    /// (`own_arrive`).
    pub(super) fn notify(&mut self, tag: BufferTag) {
        for b in 0..self.backends.len() {
            if let Pending::Wait { ctx, token, .. } = self.backends[b].pending {
                if ctx.tag == tag && !self.backends[b].wait_on_socket {
                    self.schedule(self.now + WAKE_NS, Ev::WaitCheck { backend: b, token });
                }
            }
        }
    }

    fn cpu_cost(&mut self, b: usize) -> u64 {
        let (lo, hi) = self.cfg.backend_cpu_ns;
        self.backends[b].rng.range(lo, hi)
    }

    fn sleep_then_step(&mut self, b: usize, ns: u64) {
        self.backends[b].pending = Pending::Sleep;
        self.schedule(self.now + ns, Ev::BackendStep(b));
    }

    pub(super) fn backend_step(&mut self, b: usize) {
        if !matches!(self.backends[b].pending, Pending::None) || self.backends[b].done {
            return;
        }
        loop {
            let be = &mut self.backends[b];
            match &mut be.activity {
                Activity::None => {
                    let Some(op) = be.program.pop_front() else {
                        let stats = be.driver.finish();
                        be.done = true;
                        self.report.prefetch_retries += stats.retries;
                        self.report.tcp_pipelined += stats.tcp_pipelined;
                        self.report.udp_state_changes += stats.udp_state_changes;
                        self.report.tcp_depth_cuts += stats.tcp_depth_cuts;
                        self.report.backends_done_ns = self.now - START_NS;
                        self.rec(Kind::BackendDone, b as u64, 0, 0);
                        self.own_socket_closed(b);
                        return;
                    };
                    self.start_op(b, op);
                    if !matches!(self.backends[b].pending, Pending::None) {
                        return;
                    }
                }
                Activity::Scan {
                    rel,
                    cur,
                    end,
                    window,
                    distance,
                    path_changes,
                } => {
                    if *cur >= *end {
                        // `run_scan` ends with `backend.finish()`.
                        be.driver.finish();
                        be.activity = Activity::None;
                        continue;
                    }
                    let (rel, blkno) = (*rel, *cur);
                    *cur += 1;
                    // `run_scan`: a path change restarts the window.
                    if be.driver.path_changes() != *path_changes {
                        *path_changes = be.driver.path_changes();
                        window.restart_at(blkno);
                    }
                    // `run_scan`: the window topped up at the distance the read path allows.
                    let allowed = be.driver.prefetch_distance(*distance);
                    if let Some(range) = window.top_up(blkno, allowed) {
                        self.prefetch(b, rel, range);
                    }
                    self.start_read(b, rel.block(blkno));
                    return;
                }
                Activity::Reads(tags) => {
                    let Some(tag) = tags.pop_front() else {
                        be.activity = Activity::None;
                        continue;
                    };
                    self.start_read(b, tag);
                    return;
                }
            }
        }
    }

    fn start_op(&mut self, b: usize, op: Op) {
        let pages = self.cfg.pages_per_rel;
        match op {
            Op::Scan {
                rel,
                start,
                len,
                distance,
                ..
            } => {
                let rel = Synthetic::rel(u32::from(rel) % self.cfg.rels);
                let start = u32::from(start) % pages;
                let end = (start + u32::from(len).max(1)).min(pages);
                let distance = u32::from(distance).max(1);
                self.backends[b].activity = Activity::Scan {
                    rel,
                    cur: start,
                    end,
                    window: ScanWindow::new(start, end),
                    distance,
                    path_changes: self.backends[b].driver.path_changes(),
                };
            }
            Op::RandomReads {
                count, prefetch, ..
            } => {
                let hot = (HOT_BLOCKS * 2).min(pages);
                let rels = self.cfg.rels;
                let be = &mut self.backends[b];
                let tags: VecDeque<BufferTag> = (0..count.max(1))
                    .map(|_| {
                        Synthetic::rel(be.rng.below(u64::from(rels)) as u32)
                            .block(be.rng.below(u64::from(hot)) as u32)
                    })
                    .collect();
                for tag in tags
                    .iter()
                    .take(usize::from(prefetch))
                    .copied()
                    .collect::<Vec<_>>()
                {
                    self.prefetch(b, tag.rel, tag.blkno..tag.blkno + 1);
                }
                self.backends[b].activity = Activity::Reads(tags);
            }
            Op::Write {
                rel,
                blkno,
                set_lwlsn,
                ..
            } => {
                let tag =
                    Synthetic::rel(u32::from(rel) % self.cfg.rels).block(u32::from(blkno) % pages);
                let lsn = self.next_lsn;
                self.next_lsn += 8;
                self.backends[b].pending = Pending::Put {
                    tag,
                    lsn,
                    set_lwlsn,
                };
                let shard = self.backends[b].driver.shard_of(&tag);
                let put = Request::PutPage {
                    hdr: Header::default(),
                    rel: tag.rel,
                    blkno: tag.blkno,
                    lsn,
                    page: synthetic_page(tag, lsn),
                };
                self.send_to_server(Conn::Backend(b), shard, put);
            }
            Op::Pause { us, .. } => self.sleep_then_step(b, u64::from(us) * 1_000),
            _ => {}
        }
    }

    /// `Backend::prefetch`: the real driver decides; its messages go on the wire. Sending takes
    /// no virtual time here, so there is no send time to charge to the reads' pace
    /// (`Driver::io_outside_reads`, which the real shell calls).
    pub(super) fn prefetch(&mut self, b: usize, rel: RelTag, blocks: std::ops::Range<u32>) {
        let lfc = self.lfc;
        self.backends[b].driver.prefetch(lfc, rel, blocks, self.now);
        self.flush_transmits(b);
    }

    /// `Backend::transmit`: what the drivers queued, each on the backend's connection to the
    /// shard whose driver queued it (the `ShardedDriver` routes: a prefetch run is already cut
    /// at stripe ends, and each shard's driver registers the target on its own connection).
    fn flush_transmits(&mut self, b: usize) {
        let conn = Conn::Backend(b);
        while let Some((shard, t)) = self.backends[b].driver.poll_transmit() {
            let reqid = self.next_reqid(conn);
            match t {
                Transmit::Target { udp_port } => {
                    let hdr = Header {
                        reqid,
                        ..Header::default()
                    };
                    let target = PrefetchTarget {
                        udp_port,
                        ..compute_target(self.lfc, self.path_mtu)
                    };
                    let req = Request::PrefetchTarget { hdr, target };
                    self.send_to_server(conn, shard, req)
                }
                Transmit::Prefetch(PrefetchRun {
                    rel,
                    first,
                    n,
                    max_lwlsn,
                }) => {
                    self.rec(
                        Kind::Prefetch,
                        u64::from(rel.relnode),
                        u64::from(first),
                        u64::from(n),
                    );
                    let hdr = Header {
                        reqid,
                        request_lsn: LATEST_LSN,
                        not_modified_since: max_lwlsn,
                    };
                    let req = Request::Prefetch {
                        hdr,
                        rel,
                        first_blkno: first,
                        nblocks: n,
                    };
                    self.send_to_server(conn, shard, req);
                }
                // Sent at once: the simulated connection does not batch (`urgent` says nothing).
                Transmit::GetPage {
                    tag,
                    not_modified_since,
                    ..
                } => {
                    self.rec(Kind::Fetch, b as u64, tag_key(&tag), not_modified_since);
                    let hdr = Header {
                        reqid,
                        request_lsn: LATEST_LSN,
                        not_modified_since,
                    };
                    let req = Request::GetPage {
                        hdr,
                        rel: tag.rel,
                        blkno: tag.blkno,
                    };
                    self.send_to_server(conn, shard, req);
                }
            }
        }
    }

    pub(super) fn next_reqid(&mut self, conn: Conn) -> u64 {
        let r = match conn {
            Conn::Backend(b) => &mut self.backends[b].reqid,
            Conn::Prewarm => &mut self.prewarm.reqid,
        };
        *r += 1;
        *r
    }

    /// `Backend::read` up to its first blocking point.
    fn start_read(&mut self, b: usize, tag: BufferTag) {
        let now = self.now;
        let ctx = ReadCtx {
            tag,
            started_ns: now,
            min_lsn: self.completed_max(&tag),
        };
        self.rec(Kind::ReadStart, b as u64, tag_key(&tag), ctx.min_lsn);
        self.drain_own_for(b, &tag);
        let lfc = self.lfc;
        let be = &mut self.backends[b];
        let poll = be.driver.start_read(lfc, tag, &mut be.page, now);
        self.flush_transmits(b);
        self.on_poll(b, ctx, poll);
    }

    /// `Backend::read`'s first step for a backend that receives itself: its socket drained
    /// when `tag` is not cached and is an own prefetch its shard still expects by UDP.
    fn drain_own_for(&mut self, b: usize, tag: &BufferTag) {
        let driver = &self.backends[b].driver;
        if b < self.cfg.own_receivers
            && driver.shard(driver.shard_of(tag)).expects_by_udp(tag)
            && !self.lfc.contains(tag)
        {
            self.own_drain(b);
        }
    }

    /// `Backend::drain_own`: what its socket holds, when shard `s` awaits UDP.
    fn drain_own(&mut self, b: usize, s: usize) {
        if b < self.cfg.own_receivers && self.backends[b].driver.shard(s).awaits_udp() {
            self.own_drain(b);
        }
    }

    /// What backend `b`'s own socket holds, if it receives its own prefetches.
    fn drain_own_receiver(&mut self, b: usize) {
        if b < self.cfg.own_receivers {
            self.own_drain(b);
        }
    }

    /// Whether backend `b`'s wait for `tag` is on its own socket (`Backend::read`: an own
    /// prefetch it expects by UDP) rather than on the LFC's futex.
    fn waits_on_socket(&self, b: usize, tag: &BufferTag) -> bool {
        let driver = &self.backends[b].driver;
        b < self.cfg.own_receivers && driver.shard(driver.shard_of(tag)).expects_by_udp(tag)
    }

    /// A datagram reached backend `b`'s own socket: a wait on it ends (once per wait).
    pub(super) fn wake_on_socket(&mut self, b: usize) {
        let be = &mut self.backends[b];
        if let Pending::Wait { token, .. } = be.pending {
            if be.wait_on_socket && be.socket_woke != token {
                be.socket_woke = token;
                self.schedule(self.now + WAKE_NS, Ev::WaitCheck { backend: b, token });
            }
        }
    }

    /// The blocking points of `Backend::read` in virtual time.
    fn on_poll(&mut self, b: usize, ctx: ReadCtx, poll: Poll) {
        match poll {
            Poll::Done(source) => {
                let kind = match source {
                    ReadSource::Hit => Kind::ReadHit,
                    ReadSource::LateHit => Kind::ReadLateHit,
                    ReadSource::Tcp => Kind::ReadTcp,
                };
                self.backends[b].pending = Pending::None;
                self.complete_read(b, ctx, kind)
            }
            Poll::Wait { until_ns, .. } => {
                let be = &mut self.backends[b];
                be.wait_token += 1;
                let token = be.wait_token;
                let deadline = until_ns.max(self.now);
                be.pending = Pending::Wait { ctx, token };
                self.backends[b].wait_on_socket = self.waits_on_socket(b, &ctx.tag);
                self.rec(
                    Kind::WaitStart,
                    b as u64,
                    tag_key(&ctx.tag),
                    deadline - self.now,
                );
                self.schedule(deadline, Ev::WaitCheck { backend: b, token });
            }
            Poll::AwaitResponse => {
                let be = &mut self.backends[b];
                be.wait_token += 1;
                let token = be.wait_token;
                be.pending = Pending::Await { ctx, token };
                self.schedule_await_look(b, token);
            }
        }
    }

    /// `Backend::receive_from` blocking on the connection until the driver's next look for
    /// losses, if it asks for one.
    fn schedule_await_look(&mut self, b: usize, token: u64) {
        if let Some(at) = self.backends[b].driver.await_look_ns() {
            self.schedule(at.max(self.now), Ev::AwaitLook { backend: b, token });
        }
    }

    /// No answer came by the look's time: `Driver::on_await_look`, what it sends, and the next
    /// look, or the read's next step (its page came by UDP meanwhile).
    pub(super) fn await_look(&mut self, b: usize, token: u64) {
        let Pending::Await { ctx, token: t } = self.backends[b].pending else {
            return;
        };
        if t != token || self.backends[b].driver.await_look_ns().is_none() {
            return;
        }
        // `Backend::receive_from`: a backend receiving itself takes what its socket holds.
        self.drain_own_receiver(b);
        let lfc = self.lfc;
        let now = self.now;
        let be = &mut self.backends[b];
        let next = be.driver.on_await_look(lfc, &mut be.page, now);
        self.flush_transmits(b);
        match next {
            Some(poll) => self.on_poll(b, ctx, poll),
            None => self.schedule_await_look(b, token),
        }
    }

    /// `wait_for_arrival` returning (arrival, deadline or a wake-up for another page), then
    /// `Driver::on_wait_over`.
    pub(super) fn wait_check(&mut self, b: usize, token: u64) {
        let Pending::Wait { ctx, token: t, .. } = self.backends[b].pending else {
            return;
        };
        if t != token {
            return;
        }
        // A backend receiving itself took what its socket held (the wait's end, by a
        // datagram or the deadline): `OwnReceiver::drain`.
        self.drain_own_receiver(b);
        let lfc = self.lfc;
        let now = self.now;
        let be = &mut self.backends[b];
        let poll = be.driver.on_wait_over(lfc, &mut be.page, now);
        if let Poll::Wait { until_ns, .. } = poll {
            // The wait goes on (woken for another page on the same channel, or the page was
            // evicted again): until the deadline the driver gives now, as the real shell
            // waits, whatever was scheduled before.
            be.wait_token += 1;
            let token = be.wait_token;
            be.pending = Pending::Wait { ctx, token };
            self.backends[b].wait_on_socket = self.waits_on_socket(b, &ctx.tag);
            self.schedule(until_ns.max(now), Ev::WaitCheck { backend: b, token });
            self.flush_transmits(b);
            return;
        }
        if !matches!(poll, Poll::Done(_)) {
            self.rec(Kind::WaitTimeout, b as u64, tag_key(&ctx.tag), 0);
        }
        self.flush_transmits(b);
        self.on_poll(b, ctx, poll);
    }

    pub(super) fn backend_reply(&mut self, b: usize, msg: ToClient) {
        let lfc = self.lfc;
        let now = self.now;
        let handled = match msg {
            ToClient::Page { tag, result } => {
                let page = match result {
                    Ok(p) => p,
                    Err(e) => {
                        self.violate(
                            ViolationKind::Liveness,
                            format!("backend {b}: GetPage {tag} failed: {e}"),
                        );
                        return;
                    }
                };
                // `Backend::receive_from`: a backend receiving itself drains first.
                let shard = self.backends[b].driver.shard_of(&tag);
                self.drain_own(b, shard);
                let be = &mut self.backends[b];
                let r = be.driver.on_response(
                    shard,
                    lfc,
                    DriverResponse::Page { tag, page: &page },
                    &mut be.page,
                    now,
                );
                if r.as_ref().is_ok_and(|h| h.installed) {
                    self.shell_installs += 1;
                    self.notify(tag);
                }
                r
            }
            ToClient::TargetSet { shard } => {
                self.drain_own(b, shard);
                let be = &mut self.backends[b];
                be.driver
                    .on_response(shard, lfc, DriverResponse::Target, &mut be.page, now)
            }
            ToClient::PutDone => return self.write_done(b),
        };
        let handled = match handled {
            Ok(h) => h,
            Err(e) => {
                self.violate(ViolationKind::Liveness, format!("backend {b}: {e}"));
                return;
            }
        };
        self.check_occupancy();
        self.flush_transmits(b);
        if let (Some(poll), Pending::Await { ctx, .. }) = (handled.next, &self.backends[b].pending)
        {
            let ctx = *ctx;
            if poll != Poll::AwaitResponse {
                self.on_poll(b, ctx, poll);
            }
        }
    }

    /// `Backend::write` after the page server took the version: `store_own_write` (or
    /// `set_lwlsn` for a modification whose content the compute does not keep).
    fn write_done(&mut self, b: usize) {
        let Pending::Put {
            tag,
            lsn,
            set_lwlsn,
        } = std::mem::replace(&mut self.backends[b].pending, Pending::None)
        else {
            self.violate(
                ViolationKind::Liveness,
                format!("backend {b} got a PutPage answer it was not waiting for"),
            );
            return;
        };
        if set_lwlsn {
            if let Err(e) = self.lfc.set_lwlsn(&tag, lsn) {
                self.violate(ViolationKind::Liveness, format!("set_lwlsn {tag}: {e}"));
                return;
            }
        } else {
            let page = synthetic_page(tag, lsn);
            match store_own_write(self.lfc, &tag, lsn, &page) {
                Ok(WriteOutcome::Stored) => self.notify(tag),
                Ok(_) => {}
                Err(e) => {
                    self.violate(ViolationKind::Liveness, format!("write {tag}: {e}"));
                    return;
                }
            }
        }
        let m = self.model.entry(tag).or_default();
        m.completed_max = m.completed_max.max(lsn);
        self.report.writes += 1;
        self.rec(Kind::WriteDone, b as u64, tag_key(&tag), lsn);
        self.check_occupancy();
        let cpu = self.cpu_cost(b);
        self.sleep_then_step(b, cpu);
    }

    fn complete_read(&mut self, b: usize, ctx: ReadCtx, kind: Kind) {
        let changes = self.backends[b].driver.stats().udp_state_changes;
        if changes != self.backends[b].path_changes {
            self.backends[b].path_changes = changes;
            let path = self.backends[b].driver.path() as u64;
            self.rec(Kind::PathChange, b as u64, path, changes);
            if let Some(c) = self.backends[b].driver.state_log().last() {
                self.trace
                    .note(self.now, format_args!("backend {b}: {}", c.reason));
            }
        }
        let shard = self.shard_of(&ctx.tag);
        let counts = &mut self.report.shards[shard];
        match kind {
            Kind::ReadHit => {
                self.report.read_hits += 1;
                counts.read_hits += 1;
            }
            Kind::ReadLateHit => {
                self.report.read_late_hits += 1;
                counts.read_late_hits += 1;
            }
            _ => {
                self.report.read_tcp += 1;
                counts.read_tcp += 1;
            }
        }
        let page = std::mem::replace(&mut self.backends[b].page, Box::new([0u8; PAGE_SIZE]));
        self.rec(kind, b as u64, tag_key(&ctx.tag), page_lsn(&page));
        self.check_page(&format!("backend {b}"), &ctx, &page);
        self.backends[b].page = page;
        let cpu = self.cpu_cost(b);
        self.sleep_then_step(b, cpu);
    }
}
