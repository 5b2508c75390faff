//! Per-frame metadata living in the shared file, and the frame control word that is at the same
//! time the frame's state, its owner and its seqlock version.
//!
//! Owns: the `FrameMeta` line (control word, LSNs, tag, CLOCK usage) and the `Ctl` encoding with
//! its transitions. Takes no lock and touches neither the index nor the page bytes: `cache.rs`
//! does the compare-and-swaps, the locking and the dead-owner checks.
//!
//! `ctl` = `seq << 32 | kind << 30 | pid`. Every change of the frame bumps `seq`, so a reader
//! that sees the same `ctl` before and after copying knows nothing changed in between.
//! - `FREE`: no content, not in the index.
//! - `VALID`: content, tag and LSNs are published; the frame is linked in the index, in its tag's
//!   home bucket or that home's overflow window. Only a holder of the home's lock changes a VALID
//!   frame, but for raising its lwlsn (a max, safe from anyone: a bucket's repair does it when it
//!   merges two links of one tag).
//! - `BUSY(pid)`: owned by `pid` (a reservation being filled, a frame claimed for a write or an
//!   install, or an in-place rewrite). Invisible to readers. When `pid` is dead the frame may be
//!   reclaimed by anyone; its content is then garbage by definition.

use crate::tag::{BufferTag, RelTag};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub(crate) const KIND_FREE: u64 = 0;
pub(crate) const KIND_VALID: u64 = 1;
pub(crate) const KIND_BUSY: u64 = 2;
const PID_MASK: u64 = (1 << 30) - 1;

/// Usage count ceiling for CLOCK (like PostgreSQL's BM_MAX_USAGE_COUNT): a page survives that
/// many sweeps without being touched again.
pub(crate) const MAX_USAGE: u32 = 5;
/// Set beside the usage count while nobody has read the page since it was installed: most
/// often a prefetched page ahead of its reader. Such a page is installed one count up
/// (`INSTALL_USAGE`), ranking with the pages already read once, and its first read clears the
/// mark instead of counting (the use it was installed for); a capped CLOCK sweep does not
/// settle for it (`UNREAD_SWEEP_LIMIT`). Without it, a scan through a cache smaller than
/// itself left every page it had read at usage 2 and the pages of its prefetch window at 1;
/// the hand, coming round to a cache in use and lowering a thousand frames a claim, took the
/// window first (`bench hol`: bursts of 30–50 pages evicted before their reads every
/// revolution, each taken as lost, "30 % of prefetches lost", and the busy reader on TCP).
pub(crate) const UNREAD: u32 = 1 << 31;
/// The usage count a page is installed with, `UNREAD` beside it.
pub(crate) const INSTALL_USAGE: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ctl(pub u64);

impl Ctl {
    pub fn kind(self) -> u64 {
        (self.0 >> 30) & 3
    }
    pub fn pid(self) -> u32 {
        (self.0 & PID_MASK) as u32
    }
    fn next(self, kind: u64, pid: u32) -> Ctl {
        let seq = (self.0 >> 32).wrapping_add(1);
        Ctl(seq << 32 | kind << 30 | (u64::from(pid) & PID_MASK))
    }
    pub fn to_free(self) -> Ctl {
        self.next(KIND_FREE, 0)
    }
    pub fn to_valid(self) -> Ctl {
        self.next(KIND_VALID, 0)
    }
    pub fn to_busy(self, pid: u32) -> Ctl {
        self.next(KIND_BUSY, pid)
    }
}

/// One frame's metadata: exactly one cache line, so writers of neighbouring frames never
/// share a line. All fields are atomics because other processes read them concurrently.
#[repr(C, align(64))]
pub(crate) struct FrameMeta {
    pub ctl: AtomicU64,
    /// LSN at which the cached content is known current (a write's LSN, or the
    /// `not_modified_since` of the prefetch that delivered it).
    pub lsn: AtomicU64,
    /// Last-written LSN of the tag while it is cached here.
    pub lwlsn: AtomicU64,
    spcnode: AtomicU32,
    dbnode: AtomicU32,
    relnode: AtomicU32,
    blkno: AtomicU32,
    forknum: AtomicU32,
    /// CLOCK usage count, 0..=MAX_USAGE, and `UNREAD`; racy updates are fine (it is a hint).
    pub usage: AtomicU32,
    _pad: [u32; 4],
}

const _: () = assert!(std::mem::size_of::<FrameMeta>() == crate::layout::META_BYTES);

impl FrameMeta {
    pub fn ctl(&self) -> Ctl {
        Ctl(self.ctl.load(Ordering::Acquire))
    }

    pub fn tag(&self) -> BufferTag {
        let rel = RelTag::new(
            self.spcnode.load(Ordering::Relaxed),
            self.dbnode.load(Ordering::Relaxed),
            self.relnode.load(Ordering::Relaxed),
            self.forknum.load(Ordering::Relaxed) as u8,
        );
        rel.block(self.blkno.load(Ordering::Relaxed))
    }

    /// Only while the frame is BUSY and owned by the caller.
    pub fn set_tag(&self, tag: &BufferTag) {
        self.spcnode.store(tag.rel.spcnode, Ordering::Relaxed);
        self.dbnode.store(tag.rel.dbnode, Ordering::Relaxed);
        self.relnode.store(tag.rel.relnode, Ordering::Relaxed);
        self.forknum
            .store(u32::from(tag.rel.forknum), Ordering::Relaxed);
        self.blkno.store(tag.blkno, Ordering::Relaxed);
    }

    /// Counts a hit (the first one since the page was installed only clears `UNREAD`); skips
    /// the store when already at the ceiling so hot pages do not keep dirtying their metadata
    /// line for every reader.
    pub fn touch(&self) {
        let u = self.usage.load(Ordering::Relaxed);
        if u & UNREAD != 0 {
            self.usage.store(u & !UNREAD, Ordering::Relaxed);
        } else if u < MAX_USAGE {
            self.usage.store(u + 1, Ordering::Relaxed);
        }
    }

    /// The usage count, without the `UNREAD` mark.
    pub fn usage_count(&self) -> u32 {
        self.usage.load(Ordering::Relaxed) & !UNREAD
    }

    /// The uses readers made of the page: its count without the one it was installed with
    /// when nobody has read it yet (what ranks pages by heat, not for eviction).
    pub fn reads_count(&self) -> u32 {
        let u = self.usage.load(Ordering::Relaxed);
        (u & !UNREAD).saturating_sub(u32::from(u & UNREAD != 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctl_transitions_bump_seq_and_keep_owner() {
        let c = Ctl(0);
        assert_eq!(c.kind(), KIND_FREE);
        let b = c.to_busy(4_194_303);
        assert_eq!((b.kind(), b.pid()), (KIND_BUSY, 4_194_303));
        let v = b.to_valid();
        assert_eq!((v.kind(), v.pid()), (KIND_VALID, 0));
        assert_ne!(v, c.to_valid(), "same kind, different seq");
        let wrapped = Ctl(u64::from(u32::MAX) << 32).to_free();
        assert_eq!(wrapped.0 >> 32, 0, "seq wraps instead of overflowing");
    }
}
