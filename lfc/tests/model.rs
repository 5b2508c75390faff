//! Model-based property test: random sequences of write / set_lwlsn / install / reserve+publish
//! / lookup / lwlsn / eviction pressure / reopen against a reference model of the rules.
//!
//! The model knows each tag's exact last-written LSN and the version that *may* be cached (the
//! cache may evict at any time, so a miss is always allowed, and teaches the model that the tag
//! is gone). A hit must equal the model's newest version byte for byte; installs must be
//! accepted exactly when the model says so. Pool tags are chosen with distinct lwlsn-table slots,
//! so the hashed table is exact for them and the model can demand exact lwlsn values. A second
//! property runs the same model with every pool and pressure tag homed in one index bucket, so
//! the home overflows into its neighbours and links, unlinks and rewrites cross buckets.

mod common;

use common::{check_page, make_page, tag};
use lfc::{BufferTag, InstallOutcome, Lfc, WriteOutcome, PAGE_SIZE};
use proptest::prelude::*;
use std::collections::HashMap;

const POOL: usize = 12;

#[derive(Debug, Clone)]
enum Op {
    Write { t: usize, lsn: u64 },
    SetLwlsn { t: usize, lsn: u64 },
    Install { t: usize, nms: u64 },
    ReservePublish { t: usize, nms: u64 },
    ReserveHold,
    ReleaseHeld,
    Lookup { t: usize },
    Contains { t: usize },
    Lwlsn { t: usize },
    RaiseFloor { lsn: u64 },
    Pressure { n: u32 },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let t = 0..POOL;
    let lsn = 0u64..400;
    prop_oneof![
        4 => (t.clone(), lsn.clone()).prop_map(|(t, lsn)| Op::Write { t, lsn }),
        2 => (t.clone(), lsn.clone()).prop_map(|(t, lsn)| Op::SetLwlsn { t, lsn }),
        4 => (t.clone(), lsn.clone()).prop_map(|(t, nms)| Op::Install { t, nms }),
        2 => (t.clone(), lsn.clone()).prop_map(|(t, nms)| Op::ReservePublish { t, nms }),
        1 => Just(Op::ReserveHold),
        1 => Just(Op::ReleaseHeld),
        5 => t.clone().prop_map(|t| Op::Lookup { t }),
        1 => t.clone().prop_map(|t| Op::Contains { t }),
        2 => t.clone().prop_map(|t| Op::Lwlsn { t }),
        1 => (0u64..300).prop_map(|lsn| Op::RaiseFloor { lsn }),
        1 => (1u32..12).prop_map(|n| Op::Pressure { n }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    lwlsn: HashMap<usize, u64>,
    /// Version (and the LSN its bytes encode) that may be cached.
    cached: HashMap<usize, u64>,
    floor: u64,
}

impl Model {
    fn lwlsn(&self, t: usize) -> u64 {
        self.lwlsn.get(&t).copied().unwrap_or(0).max(self.floor)
    }

    /// Install outcome for an uncached tag.
    fn absent_install(&self, t: usize, nms: u64) -> InstallOutcome {
        if self.lwlsn(t) <= nms {
            InstallOutcome::Installed
        } else {
            InstallOutcome::Stale
        }
    }

    fn check_install(
        &mut self,
        t: usize,
        nms: u64,
        got: InstallOutcome,
    ) -> Result<(), TestCaseError> {
        if got == InstallOutcome::AlreadyPresent {
            prop_assert!(
                self.cached.contains_key(&t),
                "AlreadyPresent for an uncached tag"
            );
            return Ok(());
        }
        // Anything else means the tag was not cached (possibly evicted).
        self.cached.remove(&t);
        prop_assert_eq!(got, self.absent_install(t, nms));
        if got == InstallOutcome::Installed {
            self.cached.insert(t, nms);
        }
        Ok(())
    }
}

/// Pressure tags available to one case: 11 per op at most, 120 ops at most.
const FILLERS: usize = 1400;

/// Tags with pairwise distinct lwlsn slots in this file; with `home`, only tags homed there.
fn pool(lfc: &Lfc, home: Option<u64>) -> Vec<BufferTag> {
    let mut slots = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut blk = 0;
    while out.len() < POOL {
        let t = tag(1, blk);
        blk += 1;
        if home.is_none_or(|h| lfc.home_bucket_of(&t) == h) && slots.insert(lfc.lwlsn_slot_of(&t)) {
            out.push(t);
        }
    }
    out
}

/// Eviction-pressure tags (never in the pool); with `home`, only tags homed there.
fn fillers(lfc: &Lfc, home: Option<u64>) -> Vec<BufferTag> {
    (0..)
        .map(|blk| tag(2, blk))
        .filter(|t| home.is_none_or(|h| lfc.home_bucket_of(t) == h))
        .take(FILLERS)
        .collect()
}

fn run(capacity: u64, ops: Vec<Op>, colliding: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lfc");
    let (tags, fill) = {
        let lfc = Lfc::create(&path, capacity).unwrap();
        let home = colliding.then(|| lfc.home_bucket_of(&tag(1, 0)));
        (pool(&lfc, home), fillers(&lfc, home))
    };
    let mut m = Model::default();
    let mut filler = 0usize;
    // Each Reopen ends a segment: the handle (and every reservation borrowing it) is dropped and
    // the file attached again, so state must persist in the file alone.
    for segment in ops.split(|op| matches!(op, Op::Reopen)) {
        let lfc = Lfc::open(&path).unwrap();
        run_segment(&lfc, capacity, &tags, &fill, &mut m, &mut filler, segment)?;
    }
    Ok(())
}

fn run_segment(
    lfc: &Lfc,
    capacity: u64,
    tags: &[BufferTag],
    fill: &[BufferTag],
    m: &mut Model,
    filler: &mut usize,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let mut held = Vec::new();
    let mut out = [0u8; PAGE_SIZE];
    for op in ops {
        match *op {
            Op::Write { t, lsn } => {
                let got = lfc.write(&tags[t], lsn, &make_page(&tags[t], lsn)).unwrap();
                if lsn < m.lwlsn(t) {
                    prop_assert_eq!(got, WriteOutcome::Superseded);
                } else {
                    prop_assert_eq!(got, WriteOutcome::Stored);
                    m.lwlsn.insert(t, lsn);
                    m.cached.insert(t, lsn);
                }
            }
            Op::SetLwlsn { t, lsn } => {
                lfc.set_lwlsn(&tags[t], lsn).unwrap();
                let e = m.lwlsn.entry(t).or_default();
                *e = (*e).max(lsn);
                if m.cached.get(&t).is_some_and(|&v| v < lsn) {
                    m.cached.remove(&t);
                }
            }
            Op::Install { t, nms } => {
                let got = lfc.install_prefetched(&tags[t], nms, &make_page(&tags[t], nms));
                m.check_install(t, nms, got)?;
            }
            Op::ReservePublish { t, nms } => {
                let mut r = lfc.reserve().expect("a frame is always claimable here");
                r.fill_from(&make_page(&tags[t], nms));
                let got = r.publish(&tags[t], nms);
                m.check_install(t, nms, got)?;
            }
            Op::ReserveHold => {
                // At most half the frames stay reserved, so installs always find room.
                if (held.len() as u64) < capacity / 2 {
                    held.push(lfc.reserve().expect("room"));
                }
            }
            Op::ReleaseHeld => held.clear(),
            Op::Lookup { t } => match lfc.lookup(&tags[t], &mut out) {
                Some(lsn) => {
                    let want = m.cached.get(&t).copied();
                    prop_assert_eq!(Some(lsn), want, "hit on {} must be the newest version", t);
                    prop_assert_eq!(check_page(&tags[t], &out), Ok(lsn));
                    prop_assert!(lsn >= m.lwlsn.get(&t).copied().unwrap_or(0));
                }
                None => {
                    m.cached.remove(&t);
                }
            },
            Op::Contains { t } => {
                if lfc.contains(&tags[t]) {
                    prop_assert!(m.cached.contains_key(&t));
                } else {
                    m.cached.remove(&t);
                }
            }
            Op::Lwlsn { t } => prop_assert_eq!(lfc.lwlsn(&tags[t]), m.lwlsn(t)),
            Op::RaiseFloor { lsn } => {
                lfc.raise_lwlsn_floor(lsn);
                m.floor = m.floor.max(lsn);
            }
            Op::Pressure { n } => {
                for _ in 0..n {
                    let f = fill[*filler % fill.len()];
                    *filler += 1;
                    lfc.install_prefetched(&f, u64::MAX, &make_page(&f, 0));
                }
            }
            Op::Reopen => unreachable!("segments are split at Reopen"),
        }
        let s = lfc.stats();
        prop_assert_eq!(s.busy_pages, held.len() as u64);
        prop_assert!(s.used_pages + s.busy_pages <= capacity);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn cache_follows_the_model(capacity in prop_oneof![Just(2u64), Just(4), Just(8), Just(32)],
                               ops in proptest::collection::vec(op(), 1..120)) {
        run(capacity, ops, false)?;
    }

    #[test]
    fn colliding_tags_follow_the_model(capacity in prop_oneof![Just(16u64), Just(32), Just(64)],
                                       ops in proptest::collection::vec(op(), 1..120)) {
        run(capacity, ops, true)?;
    }
}
