//! The local file cache (LFC): a fixed-capacity cache of 8 KiB pages keyed by [`BufferTag`], in
//! one memory-mapped file that several processes (worker daemon, backends, prewarm tool) map at
//! once, each with several threads.
//!
//! # API
//! - [`Lfc::create`]`(path, capacity_pages)`, [`Lfc::open`]`(path)`,
//!   [`Lfc::open_or_create`]`(path, capacity_pages)`; header accessors [`Lfc::key`] (32-byte
//!   datagram key, fresh per create), [`Lfc::key_id`], [`Lfc::capacity_pages`],
//!   [`Lfc::creator_pid`], [`Lfc::geometry`].
//! - Readers: [`Lfc::lookup`]`(tag, &mut page) -> Option<lsn>`, [`Lfc::contains`], [`Lfc::touch`],
//!   [`Lfc::lwlsn`].
//! - Writers: [`Lfc::write`]`(tag, lsn, page) -> WriteOutcome`, [`Lfc::set_lwlsn`]`(tag, lsn)`,
//!   [`Lfc::install_prefetched`]`(tag, not_modified_since, page) -> InstallOutcome`,
//!   [`Lfc::raise_lwlsn_floor`].
//! - Zero-copy: [`Lfc::reserve`]` -> Option<Reservation>`; [`Reservation::as_mut_ptr`] (4 KiB
//!   aligned, `PAGE_SIZE` bytes), [`Reservation::publish`]`(tag, not_modified_since)`,
//!   [`Reservation::abandon`]; dropping a reservation abandons it.
//! - Prefetch coordination: [`Lfc::mark_requested`]`(tag, now_ns) -> already_requested`,
//!   [`Lfc::wait_for_arrival`]`(tag, timeout) -> arrived` (cross-process futex).
//! - Monitoring: [`Lfc::stats`]` -> LfcStats`, [`Lfc::snapshot_hottest`]`(max)`; datagrams per
//!   sender (a page-server shard's sender threads): [`Lfc::count_sender`],
//!   [`Lfc::sender_counts`]` -> SenderCounts`, [`Lfc::reset_sender_counts`].
//! - Worker daemon rendezvous: [`Lfc::lock_for_daemon`]` -> DaemonLock` (one daemon per cache,
//!   released by the kernel on death), [`Lfc::register_daemon`], [`Lfc::daemon_heartbeat`],
//!   [`Lfc::clear_daemon`]; readers [`Lfc::daemon`]` -> Option<DaemonRecord>` and the one-load
//!   [`Lfc::daemon_heartbeat_ns`], [`Lfc::daemon_generation`]; [`monotonic_ns`] is their clock.
//! - Timeline binding: [`Lfc::bind`]`(&Binding) -> BindOutcome` (records the tenant, timeline
//!   and system identifier the cache's pages belong to, or checks them), [`Lfc::binding`].
//!
//! # Errors
//! Attaching fails with an [`AttachError`] (bad file, other boot, in use...); operations on an
//! attached cache fail with an [`OpError`] (`Busy`, a failed system call). The two are distinct
//! types so that a runtime refusal cannot be handled, or dropped, as if it were an attach error.
//! [`Lfc::bind`] fails with a [`BindError`]: the cache belongs to another timeline.
//!
//! # The invariant
//! A lookup returns nothing, or the version that is newest as of the latest `write`/`set_lwlsn`
//! for that tag: never an older version, never a torn mix, never bytes that did not come from a
//! `write` or an accepted install. A prefetched page is accepted only when
//! `lwlsn(tag) <= not_modified_since`.
//!
//! # How
//! Frames (8 KiB, 4 KiB aligned) each have a 64-byte metadata line whose control word is state,
//! owner pid and seqlock version at once; a hashed index of 64-byte buckets (a lock word and 15
//! entries) maps tags to frames. A tag's entry lives in its home bucket or, when that is full, in
//! one of the next 64 buckets (the home's lock word records how far), so lookups read one cache
//! line unless the home overflowed, and no page is evicted for lack of index room while frames
//! are free. Readers never lock: they copy and validate the control word. Writers lock the home,
//! then at most one higher overflow bucket. Eviction is CLOCK with usage counts (0..=5), a page
//! not read since it was installed ranking with the pages read once (`frame::UNREAD`). Dead
//! processes' locks are broken and their frames reclaimed, checked with `kill(pid, 0)`; see the
//! `cache` module for the invariants that make that safe. Index and metadata take under 1 % of
//! the page data (about 0.93 % at 1 GiB).
//!
//! # One cache, one timeline
//! Pages are keyed by `BufferTag` alone, and another timeline or cluster has other pages under
//! the same tags. A new cache is unbound; the first backend or prewarm run binds it to its
//! [`Binding`] (tenant id, timeline id, and the page source's system identifier when the page
//! server announces one), atomically, so of two racing binders one records and the other
//! compares. Every later `bind` for another binding is refused
//! ([`BindError::OtherTimeline`]). The binding lasts as long as the file: only `create` (the
//! worker daemon's `--recreate`) starts an empty, unbound cache; `open` keeps it (and so does
//! `open_or_create`, unless it replaces the file).
//!
//! # Operating notes
//! - All processes sharing a file must share a pid namespace (owner pids are compared).
//! - The file content is trusted only within one boot: `open` refuses a file created before the
//!   last reboot ([`AttachError::FromPreviousBoot`]); `open_or_create` replaces it.
//! - Do not truncate or rewrite the file with other tools while it is attached (SIGBUS).

mod arrival;
mod attach;
mod binding;
mod bucket;
mod cache;
mod clock;
mod daemon;
mod error;
mod frame;
mod hash;
mod huge;
mod layout;
mod process;
mod requested;
mod senders;
mod stats;
mod tag;

pub use arrival::ArrivalBatch;
pub use attach::{getrandom, Secrets};
pub use binding::{BindOutcome, Binding};
pub use cache::{
    HomeLockForTest, InstallOutcome, Lfc, LfcGeometry, Rejected, Reservation, WriteOutcome,
    CLOCK_SETTLE_USAGE, CLOCK_SWEEP_LIMIT, MAX_ARRIVAL_WAIT,
};
pub use clock::{monotonic_ns, wall_ns};
pub use daemon::{DaemonLock, DaemonRecord, DAEMON_HEARTBEAT_NS, DAEMON_STALE_NS};
pub use error::{AttachError, BindError, DaemonLockError, OpError};
pub use huge::{advice as huge_pages_advice, HugePages};
pub use layout::{FORMAT_VERSION, MAX_CAPACITY_PAGES, OVERFLOW_WINDOW};
pub use requested::REQUESTED_TTL_NS;
pub use senders::{SenderCount, SenderCounts, SENDER_SLOTS};
pub use stats::LfcStats;
pub use tag::{BufferTag, ParseRelTagError, RelTag, MAX_FORKNUM, PAGE_SIZE};
