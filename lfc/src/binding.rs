//! Which timeline an LFC's pages belong to.
//!
//! A cache holds pages by `BufferTag` alone, and two clusters (or two timelines of one tenant,
//! or a synthetic page server and a real data directory) use the same relation numbers for
//! different pages. A cache filled from one and read for another would serve the other's pages
//! as hits, and no LSN rule can tell: both may carry the same LSNs. So a cache belongs to one
//! [`Binding`] (tenant, timeline and, where the page source has one, its system identifier),
//! recorded once in the file, and every backend or prewarm run checks it before using the cache
//! ([`Lfc::bind`]).
//!
//! # The record
//! A fresh cache is unbound. The first `bind` records its caller's binding; from then on the
//! record never changes for the life of the file (only re-creating the cache, the worker
//! daemon's `--recreate`, starts an unbound one). It lives in a runtime area after the
//! checksummed fixed header (`BINDING_OFFSET`), atomics only:
//! - `state`: 0 while unbound, `RECORDING | pid` while a binder writes the fields, `BOUND` once
//!   they are final. Binders race by compare-and-swap on it from 0, so exactly one records and
//!   every other one compares against what it recorded: two backends that attach at once agree.
//! - the fields, written only by the binder that won the swap and published by its release
//!   store of `BOUND`; readers load them only after an acquire load of `BOUND`.
//!
//! A binder killed while recording leaves `RECORDING | pid` with a dead pid: the next binder
//! takes the record over (another swap) and records its own binding; the dead one never used
//! the cache, since `bind` had not returned. A live binder is waited for (recording takes a few
//! stores); one stopped mid-record for longer than `RECORD_PATIENCE` is reported, never taken
//! over, since it would overwrite the fields after the taker published its own.
//!
//! Owns: the binding area of the file and the `Binding` type. Tenant and timeline are 16 raw bytes
//! to it: it talks to no page server (the caller brings its session's binding), touches nothing
//! else of the file, and its clock only bounds the wait for a live binder.

use crate::cache::Lfc;
use crate::error::BindError;
use crate::layout::BINDING_OFFSET;
use crate::process::{current_pid, process_alive};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long `bind` waits for a live binder to finish recording before giving up.
const RECORD_PATIENCE: Duration = Duration::from_secs(1);
const RECORD_SLEEP: Duration = Duration::from_micros(100);

/// `state` values: 0 unbound, `RECORDING | pid` while being recorded, `BOUND` when final.
const UNBOUND: u64 = 0;
const RECORDING: u64 = 1 << 32;
const BOUND: u64 = 2 << 32;

/// Who a cache's pages belong to: a Neon tenant and timeline and, where the page server
/// announces one, its page source's system identifier (PostgreSQL's `system_identifier` from
/// `pg_control`). Two bindings are the same only when all three are equal, a missing system
/// identifier included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Binding {
    pub tenant_id: [u8; 16],
    pub timeline_id: [u8; 16],
    /// None when the page server announced none (it is never 0 in a PostgreSQL cluster, which
    /// is how the file records "none").
    pub system_id: Option<u64>,
}

/// What a successful [`Lfc::bind`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindOutcome {
    /// The cache was unbound; this call bound it.
    Bound,
    /// The cache was already bound to the same binding.
    AlreadyBound,
}

/// 32 lowercase hex digits, as Neon writes tenant and timeline ids.
pub(crate) fn hex_id(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for Binding {
    /// `tenant 0123… timeline 4567… (system 7318…)`: the ids in full, so that two can be told
    /// apart by eye and pasted into other tools.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tenant {} timeline {}",
            hex_id(&self.tenant_id),
            hex_id(&self.timeline_id)
        )?;
        match self.system_id {
            Some(id) => write!(f, " (system {id})"),
            None => write!(f, " (no system identifier)"),
        }
    }
}

/// The binding area in the shared file. Atomics only (valid for any bit pattern; zero =
/// unbound, which is what a freshly created file holds).
#[repr(C, align(64))]
pub(crate) struct BindingArea {
    state: AtomicU64,
    /// 0 = none announced.
    system_id: AtomicU64,
    tenant: [AtomicU64; 2],
    timeline: [AtomicU64; 2],
    _pad: [AtomicU64; 2],
}

pub(crate) const BINDING_AREA_BYTES: usize = std::mem::size_of::<BindingArea>();
const _: () = assert!(BINDING_AREA_BYTES <= crate::layout::BINDING_BYTES);

fn split(id: &[u8; 16]) -> [u64; 2] {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&id[..8]);
    lo.copy_from_slice(&id[8..]);
    [u64::from_be_bytes(hi), u64::from_be_bytes(lo)]
}

fn join(words: [u64; 2]) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&words[0].to_be_bytes());
    id[8..].copy_from_slice(&words[1].to_be_bytes());
    id
}

impl BindingArea {
    /// The recorded fields; call only after an acquire load of `BOUND`.
    fn fields(&self) -> Binding {
        let load =
            |w: &[AtomicU64; 2]| join([w[0].load(Ordering::Relaxed), w[1].load(Ordering::Relaxed)]);
        let system_id = self.system_id.load(Ordering::Relaxed);
        Binding {
            tenant_id: load(&self.tenant),
            timeline_id: load(&self.timeline),
            system_id: (system_id != 0).then_some(system_id),
        }
    }

    /// Writes the fields and publishes them; the caller owns `state` (it won the swap).
    fn record(&self, b: &Binding) {
        for (cell, word) in self.tenant.iter().zip(split(&b.tenant_id)) {
            cell.store(word, Ordering::Relaxed);
        }
        for (cell, word) in self.timeline.iter().zip(split(&b.timeline_id)) {
            cell.store(word, Ordering::Relaxed);
        }
        self.system_id
            .store(b.system_id.unwrap_or(0), Ordering::Relaxed);
        self.state.store(BOUND, Ordering::Release);
    }
}

impl Lfc {
    fn binding_area(&self) -> &BindingArea {
        self.shared(BINDING_OFFSET as u64)
    }

    /// The binding recorded in the cache; None while it is unbound (or its first binder is
    /// still recording).
    pub fn binding(&self) -> Option<Binding> {
        let area = self.binding_area();
        (area.state.load(Ordering::Acquire) == BOUND).then(|| area.fields())
    }

    /// Binds the cache to `want` if it is unbound, or checks that it is bound to `want`.
    /// Call it before reading or filling the cache for a timeline: on
    /// [`BindError::OtherTimeline`] the cache holds another timeline's (or cluster's) pages and
    /// must not be used. Of several processes binding an unbound cache at once, exactly one
    /// records its binding; the others compare with it.
    pub fn bind(&self, want: &Binding) -> Result<BindOutcome, BindError> {
        let area = self.binding_area();
        let me = RECORDING | u64::from(current_pid());
        let mut waiting_since: Option<Instant> = None;
        loop {
            let state = area.state.load(Ordering::Acquire);
            if state == BOUND {
                let bound = area.fields();
                if bound == *want {
                    return Ok(BindOutcome::AlreadyBound);
                }
                return Err(BindError::OtherTimeline {
                    path: self.path().to_path_buf(),
                    bound,
                    asked: *want,
                });
            }
            // Unbound, or a binder that died recording (its fields are not published, and it
            // never used the cache): take the record.
            let recorder = u32::try_from(state & !RECORDING).unwrap_or(0);
            let takeable = state == UNBOUND || !process_alive(recorder);
            if takeable
                && area
                    .state
                    .compare_exchange(state, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                area.record(want);
                return Ok(BindOutcome::Bound);
            }
            if state != UNBOUND && !takeable {
                let since = *waiting_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= RECORD_PATIENCE {
                    return Err(BindError::Busy {
                        path: self.path().to_path_buf(),
                        pid: recorder,
                        waited_ms: since.elapsed().as_millis() as u64,
                    });
                }
                std::thread::sleep(RECORD_SLEEP);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(n: u8, system_id: Option<u64>) -> Binding {
        Binding {
            tenant_id: [n; 16],
            timeline_id: [n.wrapping_add(1); 16],
            system_id,
        }
    }

    #[test]
    fn ids_round_trip_through_words_and_print_as_neon_hex() {
        let id: [u8; 16] = std::array::from_fn(|i| i as u8 * 17);
        assert_eq!(join(split(&id)), id);
        let b = Binding {
            tenant_id: id,
            timeline_id: [0xab; 16],
            system_id: Some(7_318_234_567_890_123_456),
        };
        assert_eq!(
            b.to_string(),
            "tenant 00112233445566778899aabbccddeeff timeline abababababababababababababababab \
             (system 7318234567890123456)"
        );
        let none = Binding {
            system_id: None,
            ..b
        };
        assert!(none.to_string().ends_with(" (no system identifier)"));
    }

    #[test]
    fn a_binder_that_died_recording_is_taken_over_and_a_live_one_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let lfc = Lfc::create(dir.path().join("lfc"), 16).unwrap();
        let area = lfc.binding_area();
        // A reaped child's pid is dead (until reused, which a test run does not wait for).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        area.state
            .store(RECORDING | u64::from(dead), Ordering::Release);
        // Half-written fields of the dead binder are never shown.
        area.system_id.store(99, Ordering::Relaxed);
        assert_eq!(lfc.binding(), None);
        let mine = binding(1, Some(5));
        assert_eq!(lfc.bind(&mine), Ok(BindOutcome::Bound));
        assert_eq!(lfc.binding(), Some(mine));

        // A live recorder (pid 1, always alive) that never finishes: bounded wait, then Busy.
        let lfc = Lfc::create(dir.path().join("lfc2"), 16).unwrap();
        lfc.binding_area()
            .state
            .store(RECORDING | 1, Ordering::Release);
        let started = Instant::now();
        let err = lfc.bind(&mine).unwrap_err();
        assert!(matches!(err, BindError::Busy { pid: 1, .. }), "{err}");
        assert!(started.elapsed() >= RECORD_PATIENCE);
        assert_eq!(lfc.binding(), None);
    }
}
