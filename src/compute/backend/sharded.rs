//! A backend's read path over a sharded tenant (ARCHITECTURE §6a), sans-IO: one
//! `driver::Driver` per page-server shard, and which shard each request goes to. The blocking
//! `Backend` and the simulator's backends both drive it, so both route as Neon routes
//! (`protocol::shard`) through the same code.
//!
//! Each shard has its own driver, so its own read path, loss detector, `UdpHealth` and TCP
//! pipeline: a shard whose datagrams stop arriving moves to TCP pipelining for its pages alone,
//! the others stay on UDP. A read goes to its page's shard; a prefetch range is cut at stripe
//! ends, each piece to its shard's driver; every driver registers the prefetch target on its
//! own connection (its `Transmit::Target`), so every shard sends to the one worker daemon.
//! One shard: one driver, and routing costs one comparison (`shard_of` returns 0 below two
//! shards).
//!
//! Owns: the drivers, the routing, and the sums over shards. Reads no clock, opens no socket.

use super::driver::{Driver, DriverError, Handled, Poll, Response, Transmit};
use super::health::{PrefetchPath, StateChange, MAX_STATE_LOG};
use super::read_path::ReadStats;
use crate::protocol::page::Page;
use crate::protocol::shard::ShardLayout;
use lfc::{BufferTag, Lfc, RelTag};
use std::ops::Range;

pub struct ShardedDriver {
    /// In shard order.
    drivers: Vec<Driver>,
    layout: ShardLayout,
    /// The shard of the latest read: the one whose window a scan is in.
    last: usize,
    /// The next driver `poll_transmit` looks at first (each gets its turn).
    next_transmit: usize,
    /// Each shard's path as last seen, to tell the others when one leaves UDP.
    paths: Vec<PrefetchPath>,
}

impl ShardedDriver {
    /// `layout.count()` drivers, made by `driver` in shard order.
    pub fn new(layout: ShardLayout, driver: impl FnMut() -> Driver) -> ShardedDriver {
        let drivers: Vec<Driver> = std::iter::repeat_with(driver)
            .take(layout.count())
            .collect();
        let paths = drivers.iter().map(Driver::path).collect();
        ShardedDriver {
            drivers,
            layout,
            last: 0,
            next_transmit: 0,
            paths,
        }
    }

    pub fn layout(&self) -> ShardLayout {
        self.layout
    }

    /// Shard `s`'s driver.
    pub fn shard(&self, s: usize) -> &Driver {
        &self.drivers[s]
    }

    /// The shard that owns `tag`.
    #[inline]
    pub fn shard_of(&self, tag: &BufferTag) -> usize {
        self.layout.shard_of(tag)
    }

    /// The shard of the latest `start_read`: the read in progress, if any, is its driver's.
    pub fn reading(&self) -> usize {
        self.last
    }

    /// The next message to send, and the shard whose connection carries it.
    pub fn poll_transmit(&mut self) -> Option<(usize, Transmit)> {
        let n = self.drivers.len();
        for k in 0..n {
            let s = (self.next_transmit + k) % n;
            if let Some(t) = self.drivers[s].poll_transmit() {
                self.next_transmit = s;
                return Some((s, t));
            }
        }
        None
    }

    /// How many pages ahead to prefetch (see `Driver::prefetch_distance`): the largest
    /// distance among the shard of the latest read and the shards on UDP. The window's far end
    /// reaches the next stripe, another shard's, before the reader does; with the reading
    /// shard's distance alone, a shard on UDP following one on TCP got only TCP's reach of
    /// lead (192 pages) and then a burst of the rest of its window as the reader entered its
    /// stripe, a cold start at every such stripe: in `bench shards` at 8 shards, each shard's
    /// first stripe after one on TCP lost two reads to late datagrams and left UDP. A shard
    /// on TCP handed a longer window only queues it (its pipeline keeps `tcp_depth` in flight).
    pub fn prefetch_distance(&mut self, wanted: u32) -> u32 {
        let last = self.last;
        let mut d = self.drivers[last].prefetch_distance(wanted);
        if self.drivers.len() > 1 {
            for (s, driver) in self.drivers.iter_mut().enumerate() {
                if s != last && driver.path() == PrefetchPath::Udp {
                    d = d.max(driver.prefetch_distance(wanted));
                }
            }
        }
        d
    }

    /// `Driver::prefetch`, each stripe of `blocks` by its shard's driver. Returns pages
    /// requested.
    pub fn prefetch(&mut self, lfc: &Lfc, rel: RelTag, blocks: Range<u32>, now_ns: u64) -> u32 {
        let mut n = 0;
        for (s, piece) in self.layout.split(rel, blocks) {
            n += self.drivers[s].prefetch(lfc, rel, piece, now_ns);
        }
        n
    }

    /// `Driver::start_read` by the driver of `tag`'s shard, which the read's later steps
    /// (`on_wait_over`, its response) go to.
    pub fn start_read(&mut self, lfc: &Lfc, tag: BufferTag, out: &mut Page, now_ns: u64) -> Poll {
        self.last = self.layout.shard_of(&tag);
        let poll = self.drivers[self.last].start_read(lfc, tag, out, now_ns);
        self.after_step(lfc, poll, now_ns)
    }

    /// The shell spent `ns` sending what a finished read or a `prefetch` queued
    /// (`Driver::io_outside_reads`): charged to the shard of the latest read, whose next read
    /// it delays (a prefetch's messages may go to several shards; its reader's pace pays).
    pub fn io_outside_reads(&mut self, ns: u64) {
        self.drivers[self.last].io_outside_reads(ns);
    }

    /// `Driver::read_returned` of the latest read's shard.
    pub fn read_returned(&mut self, now_ns: u64) {
        self.drivers[self.last].read_returned(now_ns);
    }

    /// `Driver::await_look_ns` of the read in progress.
    pub fn await_look_ns(&self) -> Option<u64> {
        self.drivers[self.last].await_look_ns()
    }

    /// `Driver::on_await_look` of the read in progress.
    pub fn on_await_look(&mut self, lfc: &Lfc, out: &mut Page, now_ns: u64) -> Option<Poll> {
        let poll = self.drivers[self.last].on_await_look(lfc, out, now_ns)?;
        Some(self.after_step(lfc, poll, now_ns))
    }

    /// `Driver::on_wait_over` of the read in progress.
    pub fn on_wait_over(&mut self, lfc: &Lfc, out: &mut Page, now_ns: u64) -> Poll {
        let poll = self.drivers[self.last].on_wait_over(lfc, out, now_ns);
        self.after_step(lfc, poll, now_ns)
    }

    /// A step of the read in progress returned `poll`: when the read is done, the other
    /// shards' drivers time their next reads from now (`Driver::read_ended_elsewhere`), so
    /// that each shard's pace holds only its own reads (ARCHITECTURE §6a), and those still on
    /// UDP after one left move if their oldest prefetch is overdue (`Driver::sibling_overdue`).
    fn after_step(&mut self, lfc: &Lfc, poll: Poll, now_ns: u64) -> Poll {
        self.note_path(self.last);
        if matches!(poll, Poll::Done(_)) && self.drivers.len() > 1 {
            let reading = self.last;
            let rtt_ns = self
                .drivers
                .iter()
                .map(Driver::tcp_rtt_ns)
                .max()
                .unwrap_or(0);
            for s in 0..self.drivers.len() {
                if s != reading {
                    self.drivers[s].read_ended_elsewhere(now_ns);
                    self.drivers[s].sibling_overdue(lfc, rtt_ns, now_ns);
                    self.note_path(s);
                }
            }
        }
        poll
    }

    /// Shard `s` may have changed path: if it left UDP, the others on UDP leave at their next
    /// prefetch read that does not arrive in time.
    fn note_path(&mut self, s: usize) {
        let path = self.drivers[s].path();
        if self.paths[s] == PrefetchPath::Udp && path == PrefetchPath::TcpPipelined {
            for (o, d) in self.drivers.iter_mut().enumerate() {
                if o != s {
                    d.on_sibling_left_udp();
                }
            }
        }
        self.paths[s] = path;
    }

    /// A response that came on shard `s`'s connection, to its driver.
    pub fn on_response(
        &mut self,
        s: usize,
        lfc: &Lfc,
        response: Response<'_>,
        out: &mut Page,
        now_ns: u64,
    ) -> Result<Handled, DriverError> {
        let mut handled = self.drivers[s].on_response(lfc, response, out, now_ns)?;
        self.note_path(s);
        // Only the reading shard's driver has a read to finish.
        if let (Some(poll), true) = (handled.next, s == self.last) {
            handled.next = Some(self.after_step(lfc, poll, now_ns));
        }
        Ok(handled)
    }

    /// Whether shard `s`'s pipeline has requests in flight or queued.
    /// Shard `s`'s page server does not speak the extension: its driver reads by pipelined
    /// GetPage for good (`Driver::without_extension`).
    pub fn without_extension(&mut self, s: usize, lfc: &Lfc, now_ns: u64) {
        self.drivers[s].without_extension(lfc, now_ns);
        // A page server without the extension says nothing of the other shards' UDP.
        self.paths[s] = self.drivers[s].path();
    }

    pub fn pipeline_busy(&self, s: usize) -> bool {
        self.drivers[s].pipeline_busy()
    }

    /// The path of the shard read last.
    pub fn path(&self) -> PrefetchPath {
        self.drivers[self.last].path()
    }

    /// Each shard's path, in shard order.
    pub fn shard_paths(&self) -> Vec<PrefetchPath> {
        self.drivers.iter().map(Driver::path).collect()
    }

    /// Moves between UDP and TCP, summed over the shards.
    pub fn path_changes(&self) -> u64 {
        self.drivers.iter().map(Driver::path_changes).sum()
    }

    /// The moves between UDP and TCP in time order; of several shards, each reason names its
    /// shard.
    pub fn state_log(&self) -> Vec<StateChange> {
        if let [only] = &self.drivers[..] {
            return only.state_log().to_vec();
        }
        merge_state_logs(self.drivers.iter().map(Driver::state_log))
    }

    /// The read path's counters, summed over the shards.
    pub fn stats(&self) -> ReadStats {
        sum(self.drivers.iter().map(Driver::stats))
    }

    /// Each shard's counters, in shard order.
    pub fn shard_stats(&self) -> Vec<ReadStats> {
        self.drivers.iter().map(Driver::stats).collect()
    }

    /// `Driver::finish` of every shard, summed.
    pub fn finish(&mut self) -> ReadStats {
        sum(self.drivers.iter_mut().map(Driver::finish))
    }
}

/// The sum of `stats`, field by field. Destructured, so that a new counter cannot be left out.
fn sum(stats: impl Iterator<Item = ReadStats>) -> ReadStats {
    let mut a = ReadStats::default();
    for b in stats {
        let ReadStats {
            reads,
            hits,
            late_hits,
            fallbacks,
            wait_timeouts,
            prefetched,
            duplicates_avoided,
            wasted_prefetches,
            retries,
            window_cuts,
            tcp_pipelined,
            udp_state_changes,
            tcp_depth_cuts,
        } = b;
        a.reads += reads;
        a.hits += hits;
        a.late_hits += late_hits;
        a.fallbacks += fallbacks;
        a.wait_timeouts += wait_timeouts;
        a.prefetched += prefetched;
        a.duplicates_avoided += duplicates_avoided;
        a.wasted_prefetches += wasted_prefetches;
        a.retries += retries;
        a.window_cuts += window_cuts;
        a.tcp_pipelined += tcp_pipelined;
        a.udp_state_changes += udp_state_changes;
        a.tcp_depth_cuts += tcp_depth_cuts;
    }
    a
}

/// Several shards' state logs as one, each reason naming its shard: every shard's first entry
/// (where it started), then the latest of their changes in time order, `MAX_STATE_LOG` entries
/// at most, as one shard's log keeps them.
fn merge_state_logs<'a>(logs: impl Iterator<Item = &'a [StateChange]>) -> Vec<StateChange> {
    let (mut starts, mut changes) = (Vec::new(), Vec::new());
    for (i, log) in logs.enumerate() {
        let Some((first, rest)) = log.split_first() else {
            continue;
        };
        starts.push((i, first));
        changes.extend(rest.iter().map(|c| (i, c)));
    }
    let by_time =
        |a: &(usize, &StateChange), b: &(usize, &StateChange)| a.1.at_ms.total_cmp(&b.1.at_ms);
    starts.sort_by(by_time);
    starts.truncate(MAX_STATE_LOG);
    changes.sort_by(by_time);
    let room = MAX_STATE_LOG - starts.len();
    let kept = &changes[changes.len().saturating_sub(room)..];
    starts
        .iter()
        .chain(kept)
        .map(|&(i, c)| StateChange {
            reason: format!("shard {i}: {}", c.reason),
            ..c.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::backend::read_path::ReadPathConfig;
    use crate::compute::test_support::{fixture, T0, US};

    #[test]
    fn merged_state_logs_keep_every_shards_start_and_the_latest_changes() {
        let change = |at_ms: f64, reason: &str| StateChange {
            at_ms,
            to: PrefetchPath::Udp,
            reason: reason.to_string(),
        };
        // Two shards: each starts at 0, then changes every ms, shard 1 half a ms later.
        let logs: Vec<Vec<StateChange>> = (0..2)
            .map(|shard| {
                std::iter::once(change(0.0, "start"))
                    .chain(
                        (1..=MAX_STATE_LOG)
                            .map(|k| change(k as f64 + 0.5 * shard as f64, &format!("change {k}"))),
                    )
                    .collect()
            })
            .collect();
        let merged = merge_state_logs(logs.iter().map(Vec::as_slice));
        assert_eq!(merged.len(), MAX_STATE_LOG);
        assert_eq!(merged[0].reason, "shard 0: start");
        assert_eq!(merged[1].reason, "shard 1: start");
        let last = merged.last().unwrap();
        assert_eq!(last.reason, format!("shard 1: change {MAX_STATE_LOG}"));
        assert!(
            merged[2..].windows(2).all(|w| w[0].at_ms <= w[1].at_ms),
            "changes in time order"
        );
        // The latest: the oldest change kept is later than every change left out.
        let kept_from = merged[2].at_ms;
        let left_out = 2 * MAX_STATE_LOG - (MAX_STATE_LOG - 2);
        assert_eq!(
            logs.iter()
                .flat_map(|l| &l[1..])
                .filter(|c| c.at_ms < kept_from)
                .count(),
            left_out
        );
    }

    #[test]
    fn reads_and_prefetches_go_to_their_shards_driver_each_with_its_own_target() {
        let f = fixture(256);
        let lfc = &f.lfc;
        let layout = ShardLayout::new(3, 4).unwrap();
        let mut d = ShardedDriver::new(layout, || {
            Driver::new(ReadPathConfig::default(), Some(7000), lfc, T0)
        });
        // Each shard's driver registers the daemon on its own connection.
        let mut targets = Vec::new();
        while let Some((s, t)) = d.poll_transmit() {
            assert_eq!(t, Transmit::Target { udp_port: 7000 });
            targets.push(s);
        }
        targets.sort();
        assert_eq!(targets, vec![0, 1, 2]);
        // A prefetch over several stripes: each Prefetch goes to the shard owning its blocks.
        let rel = crate::protocol::page::synthetic_rel(0);
        let n = d.prefetch(lfc, rel, 0..24, T0);
        assert_eq!(n, 24);
        let mut covered = 0;
        while let Some((s, t)) = d.poll_transmit() {
            let Transmit::Prefetch(run) = t else {
                panic!("expected a Prefetch, got {t:?}")
            };
            for b in run.first..run.first + u32::from(run.n) {
                assert_eq!(layout.shard_of(&rel.block(b)), s, "block {b}");
                covered += 1;
            }
        }
        assert_eq!(covered, 24);
        // A read goes to its page's shard.
        let mut page = [0u8; lfc::PAGE_SIZE];
        let tag = rel.block(13);
        d.start_read(lfc, tag, &mut page, T0);
        assert_eq!(d.reading(), layout.shard_of(&tag));
    }

    /// The window reaches the next shard's stripe before the reader does: a shard on UDP gets
    /// its own window's lead, whichever shard is being read (a shard's window grows with its
    /// own hits, so a shard read for the first time has the initial one).
    #[test]
    fn the_distance_is_the_longest_of_the_reading_shard_and_the_shards_on_udp() {
        let f = fixture(4096);
        let lfc = &f.lfc;
        let layout = ShardLayout::new(2, 4).unwrap();
        let mut d = ShardedDriver::new(layout, || {
            Driver::new(ReadPathConfig::default(), Some(7000), lfc, T0)
        });
        let rel = crate::protocol::page::synthetic_rel(0);
        let page = |b: u32| crate::protocol::page::synthetic_page(rel.block(b), 16);
        let (warm, cold) = (0, 1);
        let of_shard = |s: usize| (0u32..).filter(move |&b| layout.shard_of(&rel.block(b)) == s);
        let mut out = [0u8; lfc::PAGE_SIZE];
        let initial = d.drivers[cold].prefetch_distance(u32::MAX);
        // The warm shard's own prefetches arrive and are read: its window grows.
        let blocks: Vec<u32> = of_shard(warm).take(400).collect();
        d.prefetch(lfc, rel, 0..blocks[blocks.len() - 1] + 1, T0);
        while d.poll_transmit().is_some() {}
        for &b in &blocks {
            let tag = rel.block(b);
            lfc.install_prefetched(&tag, lfc.lwlsn(&tag), &page(b));
            let poll = d.start_read(lfc, tag, &mut out, T0);
            assert_eq!(poll, Poll::Done(super::super::driver::ReadSource::Hit));
        }
        let grown = d.drivers[warm].prefetch_distance(u32::MAX);
        assert!(grown > initial, "{grown} {initial}");
        // Reading the cold shard: the warm shard's window still leads.
        let b = of_shard(cold).next().unwrap();
        d.start_read(lfc, rel.block(b), &mut out, T0);
        assert_eq!(d.reading(), cold);
        assert_eq!(d.prefetch_distance(u32::MAX), grown);
        // A shard on TCP lends no window: the reading shard's own distance.
        d.without_extension(warm, lfc, T0);
        assert_eq!(d.prefetch_distance(u32::MAX), initial);
    }

    /// Two shards (stripes of 4 pages) over `lfc`, whose daemon is registered at port 7000,
    /// both on UDP: each connection sent its PrefetchTarget and had it answered.
    fn two_registered_shards(lfc: &Lfc) -> ShardedDriver {
        lfc.register_daemon("127.0.0.1:7000".parse().unwrap(), 1, 0, T0);
        let layout = ShardLayout::new(2, 4).unwrap();
        let mut d = ShardedDriver::new(layout, || {
            Driver::new(ReadPathConfig::default(), None, lfc, T0)
        });
        let mut out = [0u8; lfc::PAGE_SIZE];
        while let Some((s, t)) = d.poll_transmit() {
            assert_eq!(t, Transmit::Target { udp_port: 7000 });
            d.on_response(s, lfc, Response::Target, &mut out, T0)
                .unwrap();
        }
        d
    }

    /// Synthetic relation 0 and a function making its block `b`'s page (at LSN 16).
    fn rel0() -> (RelTag, impl Fn(u32) -> Box<Page>) {
        let rel = crate::protocol::page::synthetic_rel(0);
        (rel, move |b| {
            crate::protocol::page::synthetic_page(rel.block(b), 16)
        })
    }

    /// The first `n` blocks of synthetic relation 0 that shard `s` of `d` owns.
    fn blocks_of(d: &ShardedDriver, s: usize, n: usize) -> Vec<u32> {
        let (layout, rel) = (d.layout(), crate::protocol::page::synthetic_rel(0));
        (0u32..)
            .filter(|&b| layout.shard_of(&rel.block(b)) == s)
            .take(n)
            .collect()
    }

    /// A shard that leaves UDP marks the others still on it: one prefetch read of theirs that
    /// does not arrive in time moves them too, where two in eight would (their daemon and
    /// compute are the same).
    /// Lets a read's wait run out: `on_wait_over` at each deadline it gives (it looks for
    /// losses on the way). Returns the read's next step and the time the wait ended.
    fn wait_out(
        d: &mut ShardedDriver,
        lfc: &Lfc,
        out: &mut Page,
        mut until_ns: u64,
    ) -> (Poll, u64) {
        loop {
            match d.on_wait_over(lfc, out, until_ns) {
                Poll::Wait { until_ns: next, .. } => until_ns = next,
                p => return (p, until_ns),
            }
        }
    }

    #[test]
    fn a_shard_leaving_udp_moves_the_others_at_their_first_miss() {
        let f = fixture(4096);
        let lfc = &f.lfc;
        let mut d = two_registered_shards(lfc);
        let mut out = [0u8; lfc::PAGE_SIZE];
        let (rel, page) = rel0();
        let (first, second) = (0, 1);
        let b1 = blocks_of(&d, second, 2);
        let b0 = blocks_of(&d, first, 1)[0];
        // The second shard's first prefetch arrives and is read: UDP delivers there.
        d.prefetch(lfc, rel, b1[0]..b1[0] + 1, T0);
        d.prefetch(lfc, rel, b1[1]..b1[1] + 1, T0);
        d.prefetch(lfc, rel, b0..b0 + 1, T0);
        while d.poll_transmit().is_some() {}
        let tag = rel.block(b1[0]);
        lfc.install_prefetched(&tag, lfc.lwlsn(&tag), &page(b1[0]));
        let now = T0 + 100 * US;
        assert!(matches!(
            d.start_read(lfc, tag, &mut out, now),
            Poll::Done(_)
        ));
        // The first shard's prefetch never comes: its wait runs out and it leaves UDP.
        let Poll::Wait { until_ns, .. } = d.start_read(lfc, rel.block(b0), &mut out, now) else {
            panic!("a read of a prefetch in flight waits");
        };
        let (poll, until_ns) = wait_out(&mut d, lfc, &mut out, until_ns);
        assert_eq!(poll, Poll::AwaitResponse);
        assert_eq!(d.shard(first).path(), PrefetchPath::TcpPipelined);
        assert_eq!(d.shard(second).path(), PrefetchPath::Udp);
        // The second shard's next prefetch does not come either: one miss moves it.
        let Poll::Wait { until_ns, .. } = d.start_read(lfc, rel.block(b1[1]), &mut out, until_ns)
        else {
            panic!("a read of a prefetch in flight waits");
        };
        wait_out(&mut d, lfc, &mut out, until_ns);
        assert_eq!(d.shard(second).path(), PrefetchPath::TcpPipelined);
        let log = d.state_log();
        assert!(
            log.iter()
                .any(|c| c.reason.contains("another shard left UDP")),
            "{log:?}"
        );
    }

    /// After one shard left UDP, another whose oldest prefetch is overdue beyond doubt (three
    /// of the round trips the first shard measured, and more than this path's waits allow: a
    /// read of it would miss, and one miss moves it) moves when a read ends, its window to the
    /// TCP pipeline at once; while that prefetch may still arrive it stays.
    #[test]
    fn a_shard_whose_oldest_prefetch_is_overdue_follows_a_sibling_off_udp_before_its_read() {
        let f = fixture(4096);
        let lfc = &f.lfc;
        let mut d = two_registered_shards(lfc);
        let (rel, page) = rel0();
        let (first, second) = (0, 1);
        let b1 = blocks_of(&d, second, 1)[0];
        let b0 = blocks_of(&d, first, 2);
        d.prefetch(lfc, rel, b1..b1 + 1, T0);
        d.prefetch(lfc, rel, b0[0]..b0[0] + 1, T0);
        while d.poll_transmit().is_some() {}
        let mut out = [0u8; lfc::PAGE_SIZE];
        // The first shard's prefetch never comes: it leaves UDP and fetches the page.
        let Poll::Wait { until_ns, .. } =
            d.start_read(lfc, rel.block(b0[0]), &mut out, T0 + 100 * US)
        else {
            panic!("a read of a prefetch in flight waits");
        };
        let (poll, until_ns) = wait_out(&mut d, lfc, &mut out, until_ns);
        assert_eq!(poll, Poll::AwaitResponse);
        assert_eq!(d.shard(first).path(), PrefetchPath::TcpPipelined);
        let get_pages_of = |d: &mut ShardedDriver, s: usize| {
            std::iter::from_fn(|| d.poll_transmit())
                .filter_map(|(sh, t)| match t {
                    Transmit::GetPage { tag, .. } if sh == s => Some(tag),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        get_pages_of(&mut d, first);
        // The first shard's answer to a read of `b`, at `at`: the read is done.
        let answer = |d: &mut ShardedDriver, b: u32, at: u64| {
            let (p, mut out) = (page(b), [0u8; lfc::PAGE_SIZE]);
            let r = Response::Page {
                tag: rel.block(b),
                page: &p,
            };
            let h = d.on_response(first, lfc, r, &mut out, at).unwrap();
            assert!(matches!(h.next, Some(Poll::Done(_))), "{h:?}");
        };
        // Its answer (a 200 µs round trip) comes while the second shard's prefetch may still
        // arrive: it stays.
        let early = until_ns + 200 * US;
        answer(&mut d, b0[0], early);
        assert_eq!(d.shard(second).path(), PrefetchPath::Udp);
        assert!(get_pages_of(&mut d, second).is_empty());
        // The next read on the first shard ends when that prefetch was requested more than
        // three such round trips and two (unmeasured) wait budgets ago: the second shard
        // moves, and its page is fetched.
        assert_eq!(
            d.start_read(lfc, rel.block(b0[1]), &mut out, early),
            Poll::AwaitResponse
        );
        get_pages_of(&mut d, first);
        answer(&mut d, b0[1], T0 + 3_000 * US);
        assert_eq!(d.shard(second).path(), PrefetchPath::TcpPipelined);
        assert_eq!(get_pages_of(&mut d, second), vec![rel.block(b1)]);
        assert!(
            d.state_log()
                .iter()
                .any(|c| c.reason.contains("oldest prefetch is overdue")),
            "{:?}",
            d.state_log()
        );
    }

    /// The bug `tests/shards.rs` caught: a shard's read cycle held the other shards' reads, so
    /// its UDP pace looked slow while another shard waited out lost datagrams, and a
    /// calibration (which compares that pace with TCP's) took a healthy shard off UDP. Now a
    /// shard's pace is the time of its own reads (and the application's time before them).
    #[test]
    fn a_shards_pace_holds_none_of_another_shards_slow_reads() {
        let f = fixture(4096);
        let lfc = &f.lfc;
        let mut d = two_registered_shards(lfc);
        let layout = d.layout();
        let mut out = [0u8; lfc::PAGE_SIZE];
        let mut now = T0;
        let rel = crate::protocol::page::synthetic_rel(0);
        let page = |b: u32| crate::protocol::page::synthetic_page(rel.block(b), 16);
        let (fast, slow) = (0, 1);
        let of_shard = |s: usize| (0u32..).filter(move |&b| layout.shard_of(&rel.block(b)) == s);
        // The fast shard's pages are cached: its reads hit.
        let fast_blocks: Vec<u32> = of_shard(fast).take(10).collect();
        for &b in &fast_blocks {
            let tag = rel.block(b);
            lfc.install_prefetched(&tag, lfc.lwlsn(&tag), &page(b));
        }
        let mut slow_blocks = of_shard(slow);
        for _ in 0..60 {
            // Ten hits on the fast shard, 10 µs of the application's time before each...
            for &b in &fast_blocks {
                now += 10 * US;
                let poll = d.start_read(lfc, rel.block(b), &mut out, now);
                assert_eq!(poll, Poll::Done(super::super::driver::ReadSource::Hit));
            }
            // ... then a read on the slow shard that nobody prefetched: a GetPage answered
            // after 1 ms.
            now += 10 * US;
            let b = slow_blocks.next().unwrap();
            assert_eq!(
                d.start_read(lfc, rel.block(b), &mut out, now),
                Poll::AwaitResponse
            );
            while let Some((s, t)) = d.poll_transmit() {
                assert_eq!((s, t), (slow, t));
            }
            now += 1_000 * US;
            let r = Response::Page {
                tag: rel.block(b),
                page: &page(b),
            };
            let h = d.on_response(slow, lfc, r, &mut out, now).unwrap();
            assert!(matches!(h.next, Some(Poll::Done(_))), "{h:?}");
        }
        // Each shard's pace is its own reads': a hit costs nothing of the driver's time, a
        // GetPage 1 ms. Before, the fast shard's cycles held the slow shard's reads: about
        // 110 µs a read.
        let fast_ns = d.shard(fast).pace_ns(PrefetchPath::Udp).unwrap();
        assert!(fast_ns < 1_000.0, "{fast_ns}");
        let slow_ns =
            [PrefetchPath::Udp, PrefetchPath::TcpPipelined].map(|p| d.shard(slow).pace_ns(p));
        assert!(
            slow_ns.iter().flatten().all(|&ns| ns >= 1_000_000.0),
            "{slow_ns:?}"
        );
        assert_eq!(d.shard(fast).path(), PrefetchPath::Udp);
        assert_eq!(d.shard(fast).path_changes(), 0);
    }
}
