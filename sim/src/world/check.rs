//! The checkers: the version model (`TagModel`: what the page server applied, what the LFC
//! completed), `check_page` for every page a backend or prewarm obtains, the occupancy check,
//! the final checks (liveness, accounting, the audit of the cache), and the violations they
//! raise (`ViolationKind`, `Violation`).
//!
//! Owns: the version model's type and reading, and the checks. Only observes: it schedules no
//! event, sends nothing, drives no core, and writes nothing but the count of reads checked and
//! the run's violation (the page server and the backends record versions and completed writes
//! into the model; the final audit reads the LFC through `lookup`).

use super::World;
use lfc::{BufferTag, RelTag, PAGE_SIZE};
use serde::Serialize;
use udp_prefetch::pageserver::source::Synthetic;
use udp_prefetch::protocol::page::{
    is_synthetic_page, page_lsn, verify_page, Page, SYNTHETIC_BASE_LSN,
};
use workers::datagram::DropReason;

/// A read that takes longer than this (virtual) is a liveness violation.
const READ_DEADLINE_NS: u64 = 2_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    StaleRead,
    TornOrForgedPage,
    ForgedAccepted,
    Liveness,
    /// The backends' workload, or the prewarm run before it, took longer than
    /// `LIVENESS_FACTOR` × the same with UDP prefetch disabled (pure TCP pipelining, no
    /// daemon), plus `LIVENESS_SLACK_NS`.
    SlowerThanTcp,
    Accounting,
    Occupancy,
}

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub kind: ViolationKind,
    pub at_ns: u64,
    pub message: String,
    /// The last events before the violation, oldest first.
    pub trace: Vec<String>,
}

impl Violation {
    /// A short class name for summaries: the kind, with incomplete prewarms told apart (the one
    /// liveness failure the simulator currently finds, see the crate docs).
    pub fn category(&self) -> String {
        match self.kind {
            ViolationKind::Liveness if self.message.starts_with("prewarm finished") => {
                "prewarm_incomplete".to_string()
            }
            k => serde_json::to_value(k)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| format!("{k:?}")),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct ReadCtx {
    pub(super) tag: BufferTag,
    pub(super) started_ns: u64,
    /// Newest version whose write had completed when the read began: the floor of what the
    /// read may return.
    pub(super) min_lsn: u64,
}

#[derive(Default)]
pub(super) struct TagModel {
    /// LSNs the page server has applied (besides the base image).
    pub(super) versions: Vec<u64>,
    /// Highest LSN whose write completed in the LFC (`write`/`set_lwlsn` returned).
    pub(super) completed_max: u64,
}

impl World<'_> {
    fn rel_index(&self, rel: RelTag) -> Option<u32> {
        let first = Synthetic::rel(0);
        (rel.spcnode == first.spcnode
            && rel.dbnode == first.dbnode
            && rel.forknum == 0
            && rel.relnode >= first.relnode)
            .then(|| rel.relnode - first.relnode)
    }

    pub(super) fn exists(&self, tag: &BufferTag) -> bool {
        self.rel_index(tag.rel)
            .is_some_and(|i| i < self.cfg.rels && tag.blkno < self.cfg.pages_per_rel)
    }

    /// The shard that owns `tag`: the real routing, as the production backend's.
    pub(super) fn shard_of(&self, tag: &BufferTag) -> usize {
        self.cfg.shard_layout().shard_of(tag)
    }

    pub(super) fn completed_max(&self, tag: &BufferTag) -> u64 {
        self.model.get(tag).map_or(0, |m| m.completed_max)
    }

    /// The checkers for one page a backend (or prewarm) obtained: it must be exactly a version
    /// the server had (not torn, not forged) and not older than the newest write completed
    /// before the read began.
    pub(super) fn check_page(&mut self, who: &str, ctx: &ReadCtx, page: &Page) {
        self.report.reads_checked += 1;
        let tag = ctx.tag;
        if !is_synthetic_page(page, tag) || !verify_page(page, tag.blkno).is_ok() {
            self.violate(
                ViolationKind::TornOrForgedPage,
                format!(
                    "{who} read {tag} and got bytes that are no version of it (pd_lsn {}, checksum {:?})",
                    page_lsn(page),
                    verify_page(page, tag.blkno)
                ),
            );
            return;
        }
        let lsn = page_lsn(page);
        let known = lsn == SYNTHETIC_BASE_LSN
            || self
                .model
                .get(&tag)
                .is_some_and(|m| m.versions.contains(&lsn));
        if !known {
            self.violate(
                ViolationKind::TornOrForgedPage,
                format!("{who} read {tag} at LSN {lsn}, a version the page server never had"),
            );
            return;
        }
        if lsn < ctx.min_lsn {
            self.violate(
                ViolationKind::StaleRead,
                format!(
                    "{who} read {tag} at LSN {lsn}, but a write at LSN {} had completed before the read began (at {:.3} us)",
                    ctx.min_lsn,
                    ctx.started_ns as f64 / 1e3
                ),
            );
            return;
        }
        if self.now - ctx.started_ns > READ_DEADLINE_NS {
            self.violate(
                ViolationKind::Liveness,
                format!(
                    "{who} read of {tag} took {:.3} virtual ms",
                    (self.now - ctx.started_ns) as f64 / 1e6
                ),
            );
        }
    }

    pub(super) fn check_occupancy(&mut self) {
        let s = self.lfc.stats();
        if s.used_pages + s.busy_pages > s.capacity_pages {
            self.violate(
                ViolationKind::Occupancy,
                format!(
                    "LFC holds {} published + {} busy frames, capacity {}",
                    s.used_pages, s.busy_pages, s.capacity_pages
                ),
            );
        }
    }

    pub(super) fn final_checks(&mut self) {
        for (b, be) in self.backends.iter().enumerate() {
            if !be.done {
                let msg = format!("backend {b} never finished its workload");
                self.violate(ViolationKind::Liveness, msg);
                return;
            }
        }
        if !self.prewarm.done {
            self.violate(ViolationKind::Liveness, "prewarm never finished".into());
            return;
        }
        // Accounting: every datagram put on the wire was dropped by a fault or delivered, and
        // every delivered one was installed or dropped for exactly one reason.
        let delivered: u64 = self.workers.iter().map(|w| w.delivered).sum();
        let lost_after_inject = self.report.faults.tail_dropped + self.daemon_socket_lost;
        if self.injected != delivered + lost_after_inject {
            let msg = format!(
                "{} datagrams reached the compute's sockets but {} were delivered and {} tail-dropped",
                self.injected, delivered, lost_after_inject
            );
            self.violate(ViolationKind::Accounting, msg);
            return;
        }
        let Some(ingest_installed) = self.worker_accounting() else {
            return;
        };
        let stats = self.lfc.stats();
        if stats.installs != ingest_installed + self.shell_installs {
            let msg = format!(
                "LFC counted {} installs; ingest installed {ingest_installed} and backends {}",
                stats.installs, self.shell_installs
            );
            self.violate(ViolationKind::Accounting, msg);
            return;
        }
        self.check_occupancy();
        self.audit_cache();
    }

    /// Each worker's metrics against the datagrams the simulator delivered to it and the
    /// verdicts it saw: the installs they add up to, or `None` after raising the violation.
    fn worker_accounting(&mut self) -> Option<u64> {
        let mut ingest_installed = 0;
        for (i, w) in self.workers.iter().enumerate() {
            let m = &w.metrics;
            let received = m.received.load(std::sync::atomic::Ordering::Relaxed);
            let installed = m.installed.load(std::sync::atomic::Ordering::Relaxed);
            // `incomplete` counts pages given up by the daemon's join (not datagrams, and not
            // a verdict the simulator sees); held fragments are datagrams with no verdict yet.
            let per_datagram = |r: &&DropReason| **r != DropReason::Incomplete;
            let dropped: u64 = DropReason::ALL
                .iter()
                .filter(per_datagram)
                .map(|r| m.dropped(*r))
                .sum();
            let held = m.fragments_held.load(std::sync::atomic::Ordering::Relaxed);
            let per_reason_ok = DropReason::ALL
                .iter()
                .filter(per_datagram)
                .all(|r| m.dropped(*r) == w.seen[r.index()]);
            if received != w.delivered
                || installed + dropped + held != received
                || installed != w.seen_installed
                || held != w.seen_held
                || !per_reason_ok
            {
                let msg = format!(
                    "worker {i}: delivered {} but metrics say received {received}, installed {installed}, dropped {dropped}",
                    w.delivered
                );
                self.violate(ViolationKind::Accounting, msg);
                return None;
            }
            ingest_installed += installed;
        }
        Some(ingest_installed)
    }

    /// The final audit: every page still cached is a real version, not older than any
    /// completed write.
    fn audit_cache(&mut self) {
        let mut page = Box::new([0u8; PAGE_SIZE]);
        for tag in self
            .lfc
            .snapshot_hottest(self.cfg.lfc_capacity_pages as usize)
        {
            if self.lfc.lookup(&tag, &mut page).is_some() {
                let ctx = ReadCtx {
                    tag,
                    started_ns: self.now,
                    min_lsn: self.completed_max(&tag),
                };
                self.check_page("final audit", &ctx, &page);
                if self.violation.is_some() {
                    return;
                }
            }
        }
    }
}
