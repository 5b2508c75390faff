//! The cache operations over the shared mapping.
//!
//! Placement: a tag's hash selects its *home* bucket H. An entry for the tag lives in H, or, when
//! H is full, in the first of the next `OVERFLOW_WINDOW` buckets with room; H's lock word records
//! `dist(H)`, how far past H its tags may live. So a lookup reads one cache line unless its home
//! has overflowed, and a page is never evicted for lack of index room while frames are free
//! unless the home and all 64 buckets after it are full. With at most half of all entries in use
//! (two per page) and a per-file random hash seed, that needs hundreds of tags aimed at one home,
//! which nobody without the seed can do; in-bucket eviction (which a single full home used to
//! cause, in ~0.5 % of homes at full occupancy) remains only as the last resort for it.
//!
//! Invariants (see also `frame` and `bucket`):
//! 1. Every change of which frame holds a tag, and every change to a VALID frame, happens under
//!    the lock of the tag's home; the entries of a bucket change only under that bucket's lock.
//!    Locks are taken lower index first: the home, then at most one overflow bucket at a time,
//!    which is always higher (windows never wrap), so there is no lock cycle.
//! 2. A frame becomes VALID only after an entry linking it is stored inside its tag's window
//!    (`dist` is raised before the entry), and it leaves VALID before its entries are removed;
//!    repair never removes an entry of a VALID frame that lies inside its tag's window, and
//!    `dist` never shrinks below such an entry. So the home's owner finds every VALID frame of
//!    the tag and a tag is never linked to two VALID frames. Any other entry (a stale link left by a dead
//!    process, or by an unlink that could not lock an overflow bucket) is harmless: readers only
//!    accept a VALID frame that carries their tag, which is then the tag's only VALID frame.
//! 3. Readers take no lock: they find a frame through the window, copy, and accept the copy only
//!    if the frame's control word was VALID and unchanged around the copy (seqlock).
//! 4. A page becomes visible only by a single release store of `ctl` to VALID after its bytes,
//!    tag and LSNs are in place, so a half-written frame is never published.
//! 5. The last-written LSN of a tag never goes backwards: while cached it is in the frame, and it
//!    is folded (max) into the hashed table *before* the frame leaves VALID, so a crash between
//!    the two steps leaves a conservative value, never a lost one.
//! 6. A process that dies leaves only BUSY frames (reclaimed, lwlsn folded, by whoever meets them:
//!    the CLOCK sweep or the repair of a bucket, which also sweeps its home's window) and bucket
//!    locks (broken by the next locker, which then repairs the bucket). Neither can hide a newer
//!    version or expose a torn one.
//! 7. A VALID frame's lwlsn never exceeds its version (the LSN its page is current at): a frame
//!    is linked with its tag's own lwlsn, at most the version or the link is refused, and raised
//!    only by modifications its version is at least as new as. The hashed table is no tag's own:
//!    a colliding tag raises it too, so it answers for a tag only while the tag is uncached and
//!    is never copied into a frame that replaces a cached copy (`tag_lwlsn_locked`).

use crate::arrival::{futex_wait, ArrivalBatch, Channel};
use crate::attach::{self, Attached, Secrets};
use crate::bucket::{encode_entry, entry_fingerprint, entry_frame, Bucket, EMPTY, LOCK_WAIT_LIMIT};
use crate::error::{AttachError, OpError};
use crate::frame::{
    Ctl, FrameMeta, INSTALL_USAGE, KIND_BUSY, KIND_FREE, KIND_VALID, MAX_USAGE, UNREAD,
};
use crate::hash::TagHash;
use crate::layout::{
    FixedHeader, Geometry, ARRIVAL_CHANNELS, ARRIVAL_OFFSET, BUCKET_BYTES, BUCKET_ENTRIES,
    FREE_COUNT_OFFSET, FREE_HAND_OFFSET, GLOBAL_LWLSN_OFFSET, HAND_OFFSET, META_BYTES,
    OVERFLOW_WINDOW, STATS_OFFSET, STAT_COUNTERS, STAT_STRIPES,
};
use crate::process::{current_pid, process_alive};
use crate::requested::{self, LINE_ENTRIES};
use crate::stats::{self, Counter, LfcStats};
use crate::tag::{BufferTag, PAGE_SIZE};
use memmap2::{Advice, MmapRaw};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Copies a page into a frame with non-temporal stores where the CPU has them.
///
/// A frame being filled is cold (free frames are the ones nobody read for longest), so a plain
/// copy first reads the frame's 128 lines from memory only to overwrite them. Streaming stores
/// skip that read. The trailing `sfence` orders them before the release store that publishes
/// the frame (non-temporal stores are not ordered by it).
///
/// # Safety
/// `dst` is valid for `PAGE_SIZE` bytes of writes, 16-byte aligned, and does not overlap `page`.
#[inline]
unsafe fn stream_page(page: &[u8; PAGE_SIZE], dst: *mut u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        debug_assert_eq!(dst as usize % 16, 0);
        let src = page.as_ptr().cast::<__m128i>();
        let dst = dst.cast::<__m128i>();
        for i in 0..PAGE_SIZE / 16 {
            _mm_stream_si128(dst.add(i), _mm_loadu_si128(src.add(i)));
        }
        _mm_sfence();
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::ptr::copy_nonoverlapping(page.as_ptr(), dst, PAGE_SIZE);
}

/// Optimistic read attempts before a reader reports a miss (or, for `lwlsn`, takes the lock).
/// A writer holds a frame for one 8 KiB copy, so a handful of short spins cover it.
const READ_ATTEMPTS: u32 = 16;

/// Most frames one claim inspects looking for a FREE frame before it falls back to the CLOCK
/// sweep (64 B of metadata each, so 16 KiB).
const FREE_SCAN_LIMIT: u64 = 256;

/// Frames one CLOCK claim lowers the usage of before it settles for a lightly used one
/// (`CLOCK_SETTLE_USAGE`): what one claim may cost, about 40 ns a frame (the frame's metadata
/// line is rarely cached). A scan fills the cache with pages installed and read once (usage
/// 2), so when the hand came round again every frame was in use, and without a bound one
/// claim walked the whole cache, twice, before a frame reached zero: 0.2–0.5 ms per walk at
/// 32768 frames in the worker daemon (`bench hol`: the datagrams queued meanwhile reached the
/// busy reader after its GetPages for them, each counted lost, and "31 % of prefetches lost"
/// took it to TCP), tens of milliseconds at a million frames. The lowering still reaches every
/// frame once a revolution, spread over the claims. At 1024 the hand's first two revolutions
/// over a cache a scan filled came as 256 claims of 40 µs each at 131072 frames, one after
/// another: installs stalled for 3 ms (`bench lfc`'s `install-after-scan`, slowest run of 64
/// installs) and the udp scan that first evicted judged UDP at 46–78 µs a read. At 64 the
/// same revolutions are 4096 claims of about 2.5 µs, spread over the scan's next 4096 pages.
pub const CLOCK_SWEEP_LIMIT: u64 = 64;
/// Past `CLOCK_SWEEP_LIMIT`, a claim evicts a frame whose usage is at most this, as it is: a
/// page installed and read at most once since the hand last passed. Hotter pages keep losing
/// one count per pass, as before.
pub const CLOCK_SETTLE_USAGE: u32 = 2;
/// Frames one CLOCK claim lowers before it settles for a page not read since installed
/// (`UNREAD`) as it would for any other: a capped sweep passing a prefetch window (512 pages
/// at the default distance) does not take its pages ahead of their reads, and a cache full of
/// pages nobody read yet (a prewarm's) still costs a claim a bounded walk. A bound of its own,
/// not a multiple of `CLOCK_SWEEP_LIMIT`: it is sized by the windows it must walk past.
const UNREAD_SWEEP_LIMIT: u64 = 2048;

/// Upper bound on one `wait_for_arrival`, whatever the caller asks.
pub const MAX_ARRIVAL_WAIT: Duration = Duration::from_secs(10);

/// Result of offering a prefetched page (`install_prefetched`, `Reservation::publish`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallOutcome {
    /// The page is now cached and visible.
    Installed,
    /// The tag was modified after `not_modified_since` (`lwlsn(tag) > not_modified_since`): the
    /// page may predate that modification and was dropped.
    Stale,
    /// A copy of the tag is already cached; the offered page was dropped.
    AlreadyPresent,
    /// No frame could be claimed (every frame reserved or being filled).
    NoRoom,
    /// The tag's index bucket stayed locked by a live process past the wait limit.
    Busy,
}

/// Result of `write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The page is cached at the given LSN and the tag's last-written LSN is at least that.
    Stored,
    /// The tag already has a newer last-written LSN; nothing changed.
    Superseded,
    /// No frame could be claimed: the last-written LSN was recorded and any older cached copy
    /// dropped, but the page is not cached.
    NoRoom,
}

/// Geometry of an attached file, for display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LfcGeometry {
    pub capacity_pages: u64,
    pub file_len: u64,
    /// Bytes before the first page: header, frame metadata, index and tables.
    pub metadata_bytes: u64,
    /// Home buckets plus the `OVERFLOW_WINDOW` overflow-only buckets after them.
    pub index_buckets: u64,
    pub lwlsn_slots: u64,
    pub requested_slots: u64,
}

/// A shared, memory-mapped cache of 8 KiB pages; see the crate documentation.
///
/// `Lfc` is `Send + Sync`: threads share one instance by reference or `Arc`.
pub struct Lfc {
    path: PathBuf,
    /// Keeping it open keeps the shared `flock`; the daemon lock re-opens it.
    file: File,
    map: MmapRaw,
    header: FixedHeader,
    geo: Geometry,
    /// Chunks of `MAPPED_CHUNK_FRAMES` frames that `prefault` put in this process's page
    /// tables, writable, one bit each: a frame there is filled with a plain copy.
    mapped_chunks: Box<[AtomicU64]>,
    /// How the mapping is backed, measured at attach (`huge::detect`).
    huge: crate::huge::HugePages,
}

/// Frames per bit of `Lfc::mapped_chunks` (2 MiB).
const MAPPED_CHUNK_FRAMES: u64 = 256;

impl std::fmt::Debug for Lfc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lfc")
            .field("path", &self.path)
            .field("capacity_pages", &self.geo.capacity_pages)
            .field("key_id", &self.header.key_id)
            .finish_non_exhaustive()
    }
}

/// A bucket lock held by this process; unlocks on drop (also on unwind).
struct Locked<'a> {
    bucket: &'a Bucket,
    index: u64,
    me: u32,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.bucket.unlock(self.me);
    }
}

impl Locked<'_> {
    /// This home's overflow distance, clamped to the window (a corrupt word must not send us
    /// past the index).
    fn dist(&self) -> u64 {
        u64::from(self.bucket.dist()).min(OVERFLOW_WINDOW)
    }

    fn set_dist(&self, dist: u64) {
        debug_assert!(dist <= OVERFLOW_WINDOW);
        self.bucket.set_dist(self.me, dist as u32);
    }
}

enum Probe {
    Found(u64),
    Absent,
    Contended,
}

/// How `unlink_entries` takes the lock of an overflow bucket holding a link.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Wait as for any lock (writers).
    Block,
    /// One attempt (the CLOCK sweep, which would rather leave a harmless stale link).
    Try,
}

impl Lfc {
    /// Creates (or re-creates) the cache file with room for `capacity_pages` pages, a fresh
    /// random datagram key and key id, bound to no timeline (`Lfc::bind`), and attaches to it.
    /// Fails with `InUse` if another process has the existing file attached.
    pub fn create(path: impl AsRef<Path>, capacity_pages: u64) -> Result<Lfc, AttachError> {
        let path = path.as_ref();
        Ok(Lfc::from_attached(
            path,
            attach::create(path, capacity_pages, None)?,
        ))
    }

    /// [`create`](Lfc::create) with the key, key id and tag-hash seed given instead of drawn
    /// from the OS: for a simulation that must replay bit for bit from its seed (the hash seed
    /// decides which pages collide and are evicted). A cache for real backends never uses it:
    /// a key that does not come from a random source is no secret.
    pub fn create_seeded(
        path: impl AsRef<Path>,
        capacity_pages: u64,
        secrets: Secrets,
    ) -> Result<Lfc, AttachError> {
        let path = path.as_ref();
        Ok(Lfc::from_attached(
            path,
            attach::create(path, capacity_pages, Some(secrets))?,
        ))
    }

    /// Attaches to an existing cache file, validating its header first; its pages, key and
    /// timeline binding are as the last process left them.
    pub fn open(path: impl AsRef<Path>) -> Result<Lfc, AttachError> {
        let path = path.as_ref();
        Ok(Lfc::from_attached(path, attach::open(path)?))
    }

    /// Attaches to the file if it is a valid cache of exactly `capacity_pages`; otherwise (missing,
    /// not a cache, other capacity, from a previous boot) creates a fresh one in its place.
    pub fn open_or_create(path: impl AsRef<Path>, capacity_pages: u64) -> Result<Lfc, AttachError> {
        let path = path.as_ref();
        match Lfc::open(path) {
            Ok(lfc) if lfc.capacity_pages() == capacity_pages => Ok(lfc),
            Ok(lfc) => {
                drop(lfc);
                Lfc::create(path, capacity_pages)
            }
            Err(e) if e.is_not_found() => Lfc::create(path, capacity_pages),
            Err(e) if e.is_bad_file() => Lfc::create(path, capacity_pages),
            Err(e) => Err(e),
        }
    }

    fn from_attached(path: &Path, a: Attached) -> Lfc {
        let geo = a.header.geometry;
        assert!(
            a.map.len() as u64 >= geo.file_len,
            "attach maps the whole file"
        );
        let chunks = geo.capacity_pages.div_ceil(MAPPED_CHUNK_FRAMES);
        let huge = crate::huge::detect(&a.file, a.map.as_mut_ptr(), geo.file_len);
        Lfc {
            huge,
            path: path.to_path_buf(),
            file: a.file,
            map: a.map,
            header: a.header,
            geo,
            mapped_chunks: (0..chunks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the kernel maps this cache with 2 MiB pages, as measured when this process
    /// attached (see [`HugePages`](crate::HugePages)).
    pub fn huge_pages(&self) -> &crate::huge::HugePages {
        &self.huge
    }

    /// The attached file (holding our shared `flock`).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub fn capacity_pages(&self) -> u64 {
        self.geo.capacity_pages
    }

    /// The 32-byte datagram MAC key, fresh for every `create`.
    pub fn key(&self) -> [u8; 32] {
        self.header.key
    }

    /// Random non-zero id of the key, fresh for every `create`; datagrams carry it.
    pub fn key_id(&self) -> u32 {
        self.header.key_id
    }

    pub fn creator_pid(&self) -> u32 {
        self.header.creator_pid
    }

    pub fn created_unix_ms(&self) -> u64 {
        self.header.created_unix_ms
    }

    pub fn geometry(&self) -> LfcGeometry {
        LfcGeometry {
            capacity_pages: self.geo.capacity_pages,
            file_len: self.geo.file_len,
            metadata_bytes: self.geo.data_offset,
            index_buckets: self.geo.index_buckets(),
            lwlsn_slots: self.geo.lwlsn_slots,
            requested_slots: self.geo.requested_slots,
        }
    }

    /// Metadata bytes (header, index, tables) over page bytes.
    pub fn metadata_fraction(&self) -> f64 {
        self.geo.metadata_fraction()
    }

    // ---- raw access to the mapping -------------------------------------------------------

    fn hash(&self, tag: &BufferTag) -> TagHash {
        TagHash::of(tag, self.header.hash_seed)
    }

    /// # Safety contract (internal)
    /// `offset + size_of::<T>()` lies inside the mapping, `offset` is aligned for `T`, and `T`
    /// is made only of atomics (valid for any bit pattern, shared mutation allowed). Offsets come
    /// from the validated geometry; the mapping lives as long as `self`.
    pub(crate) fn shared<T>(&self, offset: u64) -> &T {
        debug_assert!(offset as usize + std::mem::size_of::<T>() <= self.map.len());
        debug_assert_eq!(offset as usize % std::mem::align_of::<T>(), 0);
        // SAFETY: see the contract above; every caller passes a geometry-derived offset.
        unsafe { &*(self.map.as_ptr().add(offset as usize) as *const T) }
    }

    fn meta(&self, frame: u32) -> &FrameMeta {
        assert!(u64::from(frame) < self.geo.capacity_pages);
        self.shared(self.geo.meta_offset + u64::from(frame) * META_BYTES as u64)
    }

    fn bucket(&self, index: u64) -> &Bucket {
        assert!(index < self.geo.index_buckets());
        self.shared(self.geo.bucket_offset + index * BUCKET_BYTES as u64)
    }

    fn home(&self, h: TagHash) -> u64 {
        h.bucket(self.geo.buckets)
    }

    /// Overflow distance of a home read without its lock (readers), clamped to the window.
    fn dist_unlocked(&self, home: u64) -> u64 {
        u64::from(self.bucket(home).dist()).min(OVERFLOW_WINDOW)
    }

    fn lwlsn_cell(&self, h: TagHash) -> &AtomicU64 {
        self.shared(self.geo.lwlsn_offset + h.lwlsn_slot(self.geo.lwlsn_slots) * 8)
    }

    fn requested_line(&self, h: TagHash) -> &[AtomicU64] {
        let lines = self.geo.requested_slots / LINE_ENTRIES as u64;
        let off = self.geo.requested_offset + h.requested_line(lines) * (LINE_ENTRIES as u64 * 8);
        let first: &AtomicU64 = self.shared(off);
        // SAFETY: LINE_ENTRIES consecutive u64 cells inside the requested table.
        unsafe { std::slice::from_raw_parts(first, LINE_ENTRIES) }
    }

    fn channel(&self, h: TagHash) -> &Channel {
        self.channel_at(h.arrival_channel(ARRIVAL_CHANNELS))
    }

    fn channel_at(&self, ch: usize) -> &Channel {
        debug_assert!(ch < ARRIVAL_CHANNELS);
        self.shared((ARRIVAL_OFFSET + ch * 8) as u64)
    }

    fn hand(&self) -> &AtomicU64 {
        self.shared(HAND_OFFSET as u64)
    }

    fn free_count(&self) -> &AtomicU64 {
        self.shared(FREE_COUNT_OFFSET as u64)
    }

    fn free_hand(&self) -> &AtomicU64 {
        self.shared(FREE_HAND_OFFSET as u64)
    }

    fn global_lwlsn(&self) -> &AtomicU64 {
        self.shared(GLOBAL_LWLSN_OFFSET as u64)
    }

    fn stat_cells(&self) -> &[AtomicU64] {
        let first: &AtomicU64 = self.shared(STATS_OFFSET as u64);
        // SAFETY: the stats area holds STAT_STRIPES * STAT_COUNTERS u64 cells.
        unsafe { std::slice::from_raw_parts(first, STAT_STRIPES * STAT_COUNTERS) }
    }

    fn bump(&self, c: Counter) {
        stats::bump(self.stat_cells(), c);
    }

    /// Start of a frame's 8 KiB of page data (4 KiB aligned). Only ever used through raw-pointer
    /// copies: other processes write this memory, so no Rust reference to it may exist.
    fn frame_ptr(&self, frame: u32) -> *mut u8 {
        assert!(u64::from(frame) < self.geo.capacity_pages);
        let off = self.geo.data_offset + u64::from(frame) * PAGE_SIZE as u64;
        // SAFETY: in bounds of the mapping by the geometry.
        unsafe { self.map.as_mut_ptr().add(off as usize) }
    }

    /// Frame number of an index entry, or None if the entry is empty or out of range (a
    /// corrupt entry must not make us index outside the metadata array).
    /// Frames linked from `bucket` by entries carrying the fingerprint of `h`: the candidates
    /// for the tag (the caller checks the frame's state and tag).
    fn candidate_frames<'b>(
        &'b self,
        bucket: &'b Bucket,
        h: TagHash,
    ) -> impl Iterator<Item = u32> + 'b {
        let fp = h.fingerprint();
        (0..BUCKET_ENTRIES).filter_map(move |slot| {
            let e = bucket.entry(slot);
            if entry_fingerprint(e) == fp {
                self.entry_frame(e)
            } else {
                None
            }
        })
    }

    fn entry_frame(&self, entry: u32) -> Option<u32> {
        let f = entry_frame(entry)?;
        (u64::from(f) < self.geo.capacity_pages).then_some(f)
    }

    // ---- optimistic readers --------------------------------------------------------------

    /// Finds `tag` without locking; copies its page into `out` if given. Returns the cached
    /// version's LSN, or None on a miss or when writers kept the frame busy for every attempt.
    fn read_optimistic(
        &self,
        h: TagHash,
        tag: &BufferTag,
        mut out: Option<&mut [u8; PAGE_SIZE]>,
        touch: bool,
    ) -> Option<u64> {
        let home = self.home(h);
        let home_bucket = self.bucket(home);
        for attempt in 0..READ_ATTEMPTS {
            let mut contended = false;
            if let Some(lsn) =
                self.read_bucket(home_bucket, h, tag, &mut out, touch, &mut contended)
            {
                return Some(lsn);
            }
            // Read after the home's entries, from the same cache line: only a home that has
            // overflowed costs a second line.
            let dist = u64::from(home_bucket.dist()).min(OVERFLOW_WINDOW);
            for index in home + 1..=home + dist {
                let b = self.bucket(index);
                if let Some(lsn) = self.read_bucket(b, h, tag, &mut out, touch, &mut contended) {
                    return Some(lsn);
                }
            }
            if !contended {
                return None;
            }
            for _ in 0..(1u32 << attempt.min(8)) {
                std::hint::spin_loop();
            }
        }
        None
    }

    /// One bucket of `read_optimistic`; sets `contended` when a frame of the tag was busy or
    /// changed under the copy.
    #[inline(always)]
    fn read_bucket(
        &self,
        bucket: &Bucket,
        h: TagHash,
        tag: &BufferTag,
        out: &mut Option<&mut [u8; PAGE_SIZE]>,
        touch: bool,
        contended: &mut bool,
    ) -> Option<u64> {
        for frame in self.candidate_frames(bucket, h) {
            let m = self.meta(frame);
            let c1 = m.ctl();
            if c1.kind() != KIND_VALID {
                // A BUSY frame still linked here is an in-place rewrite, or a link being made.
                *contended |= c1.kind() == KIND_BUSY && m.tag() == *tag;
                continue;
            }
            if m.tag() != *tag {
                continue;
            }
            let lsn = m.lsn.load(Ordering::Relaxed);
            if let Some(out) = out.as_deref_mut() {
                // SAFETY: source is one frame of the mapping, destination the caller's
                // buffer; they cannot overlap. A concurrent writer may change the source
                // during the copy: the seqlock check below then rejects the result.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        self.frame_ptr(frame),
                        out.as_mut_ptr(),
                        PAGE_SIZE,
                    )
                };
            }
            fence(Ordering::Acquire);
            if m.ctl.load(Ordering::Relaxed) != c1.0 {
                *contended = true;
                continue;
            }
            if touch {
                m.touch();
            }
            return Some(lsn);
        }
        None
    }

    /// Last-written LSN of `tag` as recorded in its cached frame, if it is cached.
    fn probe_lwlsn(&self, h: TagHash, tag: &BufferTag) -> Probe {
        let home = self.home(h);
        match self.probe_bucket(home, h, tag) {
            Probe::Absent => {}
            found_or_contended => return found_or_contended,
        }
        for index in home + 1..=home + self.dist_unlocked(home) {
            match self.probe_bucket(index, h, tag) {
                Probe::Absent => {}
                found_or_contended => return found_or_contended,
            }
        }
        Probe::Absent
    }

    fn probe_bucket(&self, index: u64, h: TagHash, tag: &BufferTag) -> Probe {
        let bucket = self.bucket(index);
        for frame in self.candidate_frames(bucket, h) {
            let m = self.meta(frame);
            let c1 = m.ctl();
            match c1.kind() {
                KIND_VALID => {
                    let t = m.tag();
                    let lwlsn = m.lwlsn.load(Ordering::Relaxed);
                    fence(Ordering::Acquire);
                    if m.ctl.load(Ordering::Relaxed) != c1.0 {
                        return Probe::Contended;
                    }
                    if t == *tag {
                        return Probe::Found(lwlsn);
                    }
                }
                KIND_BUSY if m.tag() == *tag => return Probe::Contended,
                _ => {}
            }
        }
        Probe::Absent
    }

    /// Copies the cached page of `tag` into `out` and returns the LSN at which it is known
    /// current (the LSN of the `write` that stored it, or the `not_modified_since` of the prefetch
    /// that delivered it). On `None`, `out` holds unspecified bytes.
    pub fn lookup(&self, tag: &BufferTag, out: &mut [u8; PAGE_SIZE]) -> Option<u64> {
        let h = self.hash(tag);
        let r = self.read_optimistic(h, tag, Some(out), true);
        self.bump(if r.is_some() {
            Counter::Hits
        } else {
            Counter::Misses
        });
        r
    }

    /// `lookup` for a read that already counted its miss (a second look after doing something
    /// else): counted neither as a hit nor as a miss, but a use for eviction.
    pub fn lookup_again(&self, tag: &BufferTag, out: &mut [u8; PAGE_SIZE]) -> Option<u64> {
        self.read_optimistic(self.hash(tag), tag, Some(out), true)
    }

    /// Counts a use of cached `tag` for eviction, without copying it or counting a hit: for a
    /// read served from elsewhere (a backend's TCP answer, which it also installed here).
    /// False if it is not cached.
    pub fn touch(&self, tag: &BufferTag) -> bool {
        self.read_optimistic(self.hash(tag), tag, None, true)
            .is_some()
    }

    /// Whether `tag` is cached (does not count as a use for eviction or in the hit statistics).
    pub fn contains(&self, tag: &BufferTag) -> bool {
        self.read_optimistic(self.hash(tag), tag, None, false)
            .is_some()
    }

    /// The tag's last-written LSN: from its frame while cached, else from the hashed table
    /// (where a collision can only make it larger), and never below the global floor.
    pub fn lwlsn(&self, tag: &BufferTag) -> u64 {
        let h = self.hash(tag);
        let floor = self.global_lwlsn().load(Ordering::Acquire);
        for _ in 0..READ_ATTEMPTS {
            match self.probe_lwlsn(h, tag) {
                Probe::Found(v) => return v.max(floor),
                // Read after the probe: the table only grows, so this is at least the value it
                // had when the probe saw the tag absent.
                Probe::Absent => return self.lwlsn_cell(h).load(Ordering::Acquire).max(floor),
                Probe::Contended => std::hint::spin_loop(),
            }
        }
        // A writer kept the frame busy (or died in it): the locked path is exact and repairs.
        match self.lock_bucket(h) {
            Ok(g) => self.tag_lwlsn_locked(&g, h, tag).1.max(floor),
            Err(_) => self.lwlsn_conservative(h, tag).max(floor),
        }
    }

    /// Upper bound of every value the tag's lwlsn could have, for when a live process keeps its
    /// home locked: the table and every frame in the window that carries the tag.
    fn lwlsn_conservative(&self, h: TagHash, tag: &BufferTag) -> u64 {
        let home = self.home(h);
        let mut v = self.lwlsn_cell(h).load(Ordering::Acquire);
        for index in home..=home + self.dist_unlocked(home) {
            let bucket = self.bucket(index);
            for slot in 0..BUCKET_ENTRIES {
                if let Some(frame) = self.entry_frame(bucket.entry(slot)) {
                    let m = self.meta(frame);
                    if m.tag() == *tag {
                        v = v.max(m.lwlsn.load(Ordering::Acquire));
                    }
                }
            }
        }
        v
    }

    /// Asks the CPU to bring the shared lines an install of `tag` reads and locks (its home
    /// bucket, lwlsn cell and requested line) into its cache, without waiting for them: a
    /// hint that changes nothing. Each of the three is a random line of a table of tens of
    /// megabytes, missed at every install, probe (`lwlsn_unless_cached`) and request mark of a
    /// new tag; a caller that knows which tags come next (the answers on the wire of a TCP
    /// pipeline, a train of datagrams, a prefetch window) hides the misses behind its work.
    pub fn prefetch_install(&self, tag: &BufferTag) {
        let h = self.hash(tag);
        let lines: [*const u8; 3] = [
            std::ptr::from_ref(self.bucket(self.home(h))).cast(),
            std::ptr::from_ref(self.lwlsn_cell(h)).cast(),
            self.requested_line(h).as_ptr().cast(),
        ];
        for line in lines {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch never faults and has no effect on memory; the addresses come
            // from the accessors every install uses.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(line.cast());
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = line;
        }
    }

    /// `None` when `tag` is cached, else its last-written LSN (as [`lwlsn`](Lfc::lwlsn)): what
    /// a backend asks of every page it might prefetch, in one probe instead of two.
    pub fn lwlsn_unless_cached(&self, tag: &BufferTag) -> Option<u64> {
        let h = self.hash(tag);
        match self.probe_lwlsn(h, tag) {
            Probe::Found(_) => None,
            // Read after the probe, as in `lwlsn`: the table only grows.
            Probe::Absent => Some(
                self.lwlsn_cell(h)
                    .load(Ordering::Acquire)
                    .max(self.global_lwlsn().load(Ordering::Acquire)),
            ),
            // A writer is busy with the tag: the two exact answers, one after the other.
            Probe::Contended => (!self.contains(tag)).then(|| self.lwlsn(tag)),
        }
    }

    /// Raises the global lwlsn floor: every tag's lwlsn is at least this from now on. For events
    /// that modify pages without per-page tracking. Cached pages are not dropped by it.
    pub fn raise_lwlsn_floor(&self, lsn: u64) {
        self.global_lwlsn().fetch_max(lsn, Ordering::AcqRel);
    }

    pub fn lwlsn_floor(&self) -> u64 {
        self.global_lwlsn().load(Ordering::Acquire)
    }

    // ---- locking and repair ----------------------------------------------------------------

    /// Locks the home bucket of `h`.
    fn lock_bucket(&self, h: TagHash) -> Result<Locked<'_>, OpError> {
        self.lock_index(self.home(h))
    }

    /// Locks bucket `index`, waiting for a live owner up to the limit and repairing after a
    /// dead one. Callers holding a lock only ever ask for a higher index.
    fn lock_index(&self, index: u64) -> Result<Locked<'_>, OpError> {
        let me = current_pid();
        let bucket = self.bucket(index);
        match bucket.lock(me) {
            Ok(acq) => {
                let g = Locked { bucket, index, me };
                if acq.broken {
                    self.bump(Counter::LockBreaks);
                    self.repair_bucket(&g);
                }
                Ok(g)
            }
            Err(owner) => {
                self.bump(Counter::Busy);
                Err(OpError::Busy {
                    owner,
                    waited_ms: LOCK_WAIT_LIMIT.as_millis() as u64,
                })
            }
        }
    }

    /// One attempt at bucket `index`, repairing after a dead owner.
    fn try_lock_index(&self, index: u64) -> Option<Locked<'_>> {
        let me = current_pid();
        let bucket = self.bucket(index);
        let acq = bucket.try_lock(me)?;
        let g = Locked { bucket, index, me };
        if acq.broken {
            self.bump(Counter::LockBreaks);
            self.repair_bucket(&g);
        }
        Some(g)
    }

    /// Whether bucket `index` lies inside the window of the tag hashed to `th`, as its home's
    /// distance says now. Entries of VALID frames are always inside (invariant 2), so an entry
    /// outside is stale whatever races with this read.
    fn in_window(&self, th: TagHash, index: u64) -> bool {
        let home = self.home(th);
        home <= index && index - home <= self.dist_unlocked(home)
    }

    /// Makes a bucket consistent again (after a dead owner, or before giving up on a full one):
    /// drops entries that do not link a VALID page of a tag whose window covers this bucket (a
    /// frame since reclaimed or reused, a dead owner's half-done link or unlink), and duplicates;
    /// reclaims frames of dead owners linked here or, as a home, anywhere in its window (so
    /// their lwlsn is folded before anyone decides from the table). Entries of frames that a
    /// live process holds BUSY are kept: that may be the home owner's in-place rewrite, which
    /// does not lock the overflow bucket. Idempotent, so a repairer that dies is simply
    /// followed by another.
    fn repair_bucket(&self, g: &Locked<'_>) {
        for slot in 0..BUCKET_ENTRIES {
            let e = g.bucket.entry(slot);
            if e == EMPTY {
                continue;
            }
            let keep = match self.entry_frame(e) {
                None => false,
                Some(frame) => {
                    let m = self.meta(frame);
                    let c = m.ctl();
                    match c.kind() {
                        KIND_VALID => {
                            let tag = m.tag();
                            let th = self.hash(&tag);
                            self.in_window(th, g.index)
                                && th.fingerprint() == entry_fingerprint(e)
                                && !self.linked_before(g, slot, frame, &tag)
                        }
                        KIND_BUSY => !self.reclaim_if_dead(frame, c),
                        _ => false,
                    }
                }
            };
            if !keep {
                g.bucket.set_entry(slot, EMPTY);
            }
        }
        // As a home: a dead owner may have been rewriting a frame that overflowed (rewrites
        // lock only the home), so its raised lwlsn must be folded before the table is trusted.
        // The links stay; they are stale and harmless until that bucket is repaired.
        // Spill buckets are no one's home; a distance there can only be corruption.
        let dist = if g.index < self.geo.buckets {
            g.dist()
        } else {
            0
        };
        for index in g.index + 1..=g.index + dist {
            let b = self.bucket(index);
            for slot in 0..BUCKET_ENTRIES {
                if let Some(frame) = self.entry_frame(b.entry(slot)) {
                    let c = self.meta(frame).ctl();
                    if c.kind() == KIND_BUSY {
                        self.reclaim_if_dead(frame, c);
                    }
                }
            }
        }
        // A dead owner may have raised the distance and died before linking.
        if dist > 0 {
            self.shrink_dist(g);
        }
    }

    /// Reclaims and frees a BUSY frame whose owner is dead; true if it was (or just became)
    /// not ours to keep linked. False for a live owner, including ourselves.
    fn reclaim_if_dead(&self, frame: u32, c: Ctl) -> bool {
        if c.pid() == current_pid() || process_alive(c.pid()) {
            return false;
        }
        if self.reclaim_dead(frame, c) {
            self.release_frame(frame);
        }
        true
    }

    /// Whether an entry before `slot` already links `frame`, or another VALID frame with `tag`
    /// (a second frame of one tag, which invariant 2 rules out: only a corrupt file holds one).
    /// Of two such frames the one with the newer version keeps its entry and takes the
    /// other's lwlsn, so that the page left findable is the newest and not older than its
    /// lwlsn (invariant 7): when that is the later one, the earlier one's entry goes here, and
    /// otherwise the caller clears `slot`'s. (Raising an lwlsn is always safe, without the
    /// home's lock too.)
    fn linked_before(&self, g: &Locked<'_>, slot: usize, frame: u32, tag: &BufferTag) -> bool {
        let later = self.meta(frame);
        for s in 0..slot {
            let Some(f) = self.entry_frame(g.bucket.entry(s)) else {
                continue;
            };
            if f == frame {
                return true;
            }
            let m = self.meta(f);
            if m.ctl().kind() != KIND_VALID || m.tag() != *tag {
                continue;
            }
            let lwlsn = m
                .lwlsn
                .load(Ordering::Acquire)
                .max(later.lwlsn.load(Ordering::Acquire));
            if m.lsn.load(Ordering::Acquire) >= later.lsn.load(Ordering::Acquire) {
                m.lwlsn.fetch_max(lwlsn, Ordering::AcqRel);
                return true;
            }
            later.lwlsn.fetch_max(lwlsn, Ordering::AcqRel);
            g.bucket.set_entry(s, EMPTY);
        }
        false
    }

    /// Takes over a frame owned by a dead process (it becomes BUSY for us). Folds the lwlsn the
    /// dead owner may have been recording into the table first: it could have died mid-rewrite
    /// after raising it, and a max is always safe.
    fn reclaim_dead(&self, frame: u32, c: Ctl) -> bool {
        let m = self.meta(frame);
        let tag = m.tag();
        self.lwlsn_cell(self.hash(&tag))
            .fetch_max(m.lwlsn.load(Ordering::Acquire), Ordering::AcqRel);
        let ok = m
            .ctl
            .compare_exchange(
                c.0,
                c.to_busy(current_pid()).0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok();
        if ok {
            self.bump(Counter::Reclaims);
        }
        ok
    }

    /// The VALID frame of `tag`, searching the window of its locked home `g`. Under the home
    /// lock VALID frames of the tag cannot change, so no seqlock validation is needed.
    fn find_locked(&self, g: &Locked<'_>, h: TagHash, tag: &BufferTag) -> Option<u32> {
        (g.index..=g.index + g.dist()).find_map(|index| {
            self.candidate_frames(self.bucket(index), h).find(|&frame| {
                let m = self.meta(frame);
                m.ctl().kind() == KIND_VALID && m.tag() == *tag
            })
        })
    }

    // ---- frame ownership -----------------------------------------------------------------

    /// Claims a frame for this process (BUSY(me)): a FREE frame while any is known to exist,
    /// else by the CLOCK sweep.
    fn claim_frame(&self) -> Option<u32> {
        self.claim_free().or_else(|| self.claim_by_clock())
    }

    /// Takes a FREE frame if the free-frame count says there is one, inspecting at most
    /// `FREE_SCAN_LIMIT` frames from the free hand. Without this, the CLOCK hand evicts a cold
    /// page whenever it meets one before a free frame, so a cache with room would still lose
    /// pages (e.g. frames freed by rejected installs sit behind the hand).
    ///
    /// The count is a hint kept at or below the true number of FREE frames: a unit is taken
    /// before the search and not given back when the search fails, releases add after the
    /// frame is FREE. A process dying at any point, or a race with the CLOCK sweep, can only
    /// make it low, which costs an eviction, never a fruitless scan on every claim.
    fn claim_free(&self) -> Option<u32> {
        let count = self.free_count();
        count
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| v.checked_sub(1))
            .ok()?;
        let me = current_pid();
        let n = self.geo.capacity_pages;
        for _ in 0..FREE_SCAN_LIMIT.min(n) {
            let frame = (self.free_hand().fetch_add(1, Ordering::Relaxed) % n) as u32;
            let m = self.meta(frame);
            let c = m.ctl();
            if c.kind() == KIND_FREE
                && m.ctl
                    .compare_exchange(c.0, c.to_busy(me).0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                return Some(frame);
            }
        }
        None
    }

    /// Takes one unit off the free-frame count, if it has one (a FREE frame was taken).
    fn took_free_frame(&self) {
        let _ = self
            .free_count()
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| v.checked_sub(1));
    }

    /// The CLOCK sweep: free frames are taken, dead owners' frames reclaimed, used frames lose
    /// one usage count per pass and are evicted at zero; past `CLOCK_SWEEP_LIMIT` frames, a
    /// frame used at most `CLOCK_SETTLE_USAGE` is evicted as it is. Bounded: after enough passes
    /// to drain every usage count, gives up (NoRoom).
    fn claim_by_clock(&self) -> Option<u32> {
        let me = current_pid();
        let n = self.geo.capacity_pages;
        let limit = n * (u64::from(MAX_USAGE) + 2);
        for step in 0..limit {
            let frame = (self.hand().fetch_add(1, Ordering::Relaxed) % n) as u32;
            let m = self.meta(frame);
            let c = m.ctl();
            match c.kind() {
                KIND_VALID => {
                    let raw = m.usage.load(Ordering::Relaxed);
                    let (u, unread) = (raw & !UNREAD, raw & UNREAD);
                    let settle = step >= CLOCK_SWEEP_LIMIT
                        && u <= CLOCK_SETTLE_USAGE
                        && (unread == 0 || step >= UNREAD_SWEEP_LIMIT);
                    if u > 0 && !settle {
                        m.usage.store((u - 1) | unread, Ordering::Relaxed);
                        continue;
                    }
                    if raw > 0 {
                        // A hint, as every usage store: a reader touching it meanwhile makes
                        // `try_evict` refuse, and the sweep goes on. (At a count of 0 it may
                        // still carry `UNREAD`, a page lowered twice and never read.)
                        m.usage.store(0, Ordering::Relaxed);
                    }
                    if self.try_evict(frame, c) {
                        if u > 0 {
                            self.bump(Counter::CappedEvictions);
                        }
                        return Some(frame);
                    }
                }
                KIND_BUSY => {
                    if c.pid() != me && !process_alive(c.pid()) && self.reclaim_dead(frame, c) {
                        return Some(frame);
                    }
                }
                // FREE, or a kind no writer produces (corruption): take it. A FREE frame's unit
                // comes off the free count before the frame is taken, as in `claim_free`, and is
                // not given back when the race is lost: taken after, the count would run ahead
                // of the truth while the claim is under way, and stay ahead for good if this
                // process died in between (the frame's reclaim adds a unit of its own).
                _ => {
                    if c.kind() == KIND_FREE {
                        self.took_free_frame();
                    }
                    let busy = c.to_busy(me);
                    if m.ctl
                        .compare_exchange(c.0, busy.0, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        return Some(frame);
                    }
                }
            }
        }
        None
    }

    /// Evicts a cold VALID frame for reuse by us, if its home's lock is free right now.
    fn try_evict(&self, frame: u32, c: Ctl) -> bool {
        let m = self.meta(frame);
        let tag = m.tag();
        fence(Ordering::Acquire);
        if m.ctl.load(Ordering::Relaxed) != c.0 {
            return false;
        }
        let h = self.hash(&tag);
        let Some(g) = self.try_lock_index(self.home(h)) else {
            return false;
        };
        // Re-check under the lock: same VALID frame (tag unchanged), still cold.
        if m.ctl.load(Ordering::Acquire) != c.0 || m.usage.load(Ordering::Relaxed) != 0 {
            return false;
        }
        // Fold first, leave VALID second, unlink last (invariants 2 and 5).
        self.lwlsn_cell(h)
            .fetch_max(m.lwlsn.load(Ordering::Acquire), Ordering::AcqRel);
        let taken = m
            .ctl
            .compare_exchange(c.0, c.to_busy(g.me).0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        debug_assert!(taken, "a VALID frame changed under its home's lock");
        if taken {
            self.unlink_entries(&g, frame, Wait::Try);
            self.bump(Counter::Evictions);
        }
        taken
    }

    /// Removes the entries linking `frame` (no longer VALID) from the window of the locked home
    /// `g`, then lowers the home's distance if an overflow link went. A link in an overflow
    /// bucket we cannot lock is left behind: it is stale and harmless (invariant 2).
    fn unlink_entries(&self, g: &Locked<'_>, frame: u32, wait: Wait) {
        debug_assert_ne!(self.meta(frame).ctl().kind(), KIND_VALID);
        let clear = |b: &Bucket| {
            let mut cleared = false;
            for slot in 0..BUCKET_ENTRIES {
                if self.entry_frame(b.entry(slot)) == Some(frame) {
                    b.set_entry(slot, EMPTY);
                    cleared = true;
                }
            }
            cleared
        };
        clear(g.bucket);
        let mut overflow_cleared = false;
        for index in g.index + 1..=g.index + g.dist() {
            let b = self.bucket(index);
            if !(0..BUCKET_ENTRIES).any(|s| self.entry_frame(b.entry(s)) == Some(frame)) {
                continue;
            }
            // Higher than the home we hold: lock order is kept.
            let other = match wait {
                Wait::Block => self.lock_index(index).ok(),
                Wait::Try => self.try_lock_index(index),
            };
            if let Some(other) = other {
                overflow_cleared |= clear(other.bucket);
            }
        }
        if overflow_cleared {
            self.shrink_dist(g);
        }
    }

    /// Lowers the locked home's distance to the farthest bucket still holding an entry whose
    /// frame's tag is homed here. Conservative: a frame changing under us (not VALID for one of
    /// our tags, since those need our lock) can only make the result larger.
    fn shrink_dist(&self, g: &Locked<'_>) {
        let mut dist = g.dist();
        while dist > 0 {
            let b = self.bucket(g.index + dist);
            let homed_here = (0..BUCKET_ENTRIES).any(|s| {
                self.entry_frame(b.entry(s))
                    .is_some_and(|f| self.home(self.hash(&self.meta(f).tag())) == g.index)
            });
            if homed_here {
                break;
            }
            dist -= 1;
        }
        if dist != g.dist() {
            g.set_dist(dist);
        }
    }

    /// Unlinks a VALID frame of a tag homed in the locked `g` and frees it.
    fn drop_locked(&self, g: &Locked<'_>, h: TagHash, frame: u32, lwlsn: u64) {
        let m = self.meta(frame);
        self.lwlsn_cell(h).fetch_max(lwlsn, Ordering::AcqRel);
        let c = m.ctl();
        debug_assert_eq!(c.kind(), KIND_VALID);
        // Under the home lock nobody else changes a VALID frame, so a plain store suffices.
        m.ctl.store(c.to_busy(g.me).0, Ordering::Release);
        self.unlink_entries(g, frame, Wait::Block);
        self.release_frame(frame);
    }

    /// Returns a frame we own (BUSY(me)) to FREE.
    fn release_frame(&self, frame: u32) {
        let m = self.meta(frame);
        let c = m.ctl();
        debug_assert!(c.kind() == KIND_BUSY && c.pid() == current_pid());
        m.ctl.store(c.to_free().0, Ordering::Release);
        // After the store, so the count never exceeds the FREE frames (see `claim_free`).
        self.free_count().fetch_add(1, Ordering::AcqRel);
    }

    /// Last resort when the home and its whole window are full: frees the least used page of the
    /// home that is homed there (an overflowed page belongs to a lower home, whose lock we do
    /// not hold) and returns its slot.
    fn evict_in_bucket(&self, g: &Locked<'_>) -> Option<usize> {
        let mut victim: Option<(usize, u32, u32)> = None;
        for slot in 0..BUCKET_ENTRIES {
            let Some(frame) = self.entry_frame(g.bucket.entry(slot)) else {
                return Some(slot);
            };
            let m = self.meta(frame);
            if m.ctl().kind() != KIND_VALID || self.home(self.hash(&m.tag())) != g.index {
                continue;
            }
            let u = m.usage_count();
            if victim.is_none_or(|(_, _, vu)| u < vu) {
                victim = Some((slot, frame, u));
            }
        }
        let (slot, frame, _) = victim?;
        let m = self.meta(frame);
        let h = self.hash(&m.tag());
        self.drop_locked(g, h, frame, m.lwlsn.load(Ordering::Acquire));
        self.bump(Counter::Evictions);
        Some(slot)
    }

    fn free_slot(b: &Bucket) -> Option<usize> {
        (0..BUCKET_ENTRIES).find(|&s| b.entry(s) == EMPTY)
    }

    /// Cheap unlocked hint that locking `b` could yield a slot: an empty entry, or one that
    /// repair would drop.
    fn may_have_room(&self, b: &Bucket) -> bool {
        (0..BUCKET_ENTRIES).any(|s| match self.entry_frame(b.entry(s)) {
            None => true,
            Some(f) => self.meta(f).ctl().kind() != KIND_VALID,
        })
    }

    /// Publishes our filled BUSY frame as `tag`, homed in the locked `g`: in the home if it has
    /// room, else in the first bucket of the window that has. False if no entry could be made
    /// free (the whole window full of pages of other homes); the frame is then still ours.
    fn link_locked(
        &self,
        g: &Locked<'_>,
        h: TagHash,
        tag: &BufferTag,
        frame: u32,
        version: u64,
        lwlsn: u64,
    ) -> bool {
        let home_slot = Self::free_slot(g.bucket).or_else(|| {
            self.repair_bucket(g);
            Self::free_slot(g.bucket)
        });
        if let Some(slot) = home_slot {
            self.publish_at(g.bucket, slot, h, tag, frame, version, lwlsn);
            return true;
        }
        for dist in 1..=OVERFLOW_WINDOW {
            let index = g.index + dist;
            if !self.may_have_room(self.bucket(index)) {
                continue;
            }
            // Higher than the home we hold: lock order is kept. A bucket kept locked by a live
            // process past the wait limit is skipped like a full one.
            let Ok(other) = self.lock_index(index) else {
                continue;
            };
            let slot = Self::free_slot(other.bucket).or_else(|| {
                self.repair_bucket(&other);
                Self::free_slot(other.bucket)
            });
            let Some(slot) = slot else {
                continue;
            };
            // Raised before the entry exists, so no reader or repairer ever sees the entry
            // outside the window (invariant 2); dying here only leaves the distance too large.
            if g.dist() < dist {
                g.set_dist(dist);
            }
            self.publish_at(other.bucket, slot, h, tag, frame, version, lwlsn);
            return true;
        }
        match self.evict_in_bucket(g) {
            Some(slot) => {
                self.publish_at(g.bucket, slot, h, tag, frame, version, lwlsn);
                true
            }
            None => false,
        }
    }

    /// Links our filled BUSY frame at `slot` of the locked bucket `b`, then makes it VALID.
    #[allow(clippy::too_many_arguments)]
    fn publish_at(
        &self,
        b: &Bucket,
        slot: usize,
        h: TagHash,
        tag: &BufferTag,
        frame: u32,
        version: u64,
        lwlsn: u64,
    ) {
        let m = self.meta(frame);
        let c = m.ctl();
        debug_assert!(c.kind() == KIND_BUSY && c.pid() == current_pid());
        // A version older than the tag's lwlsn is stale the moment it is linked.
        debug_assert!(
            lwlsn <= version,
            "{tag}: version {version} under lwlsn {lwlsn}"
        );
        m.set_tag(tag);
        m.lsn.store(version, Ordering::Relaxed);
        m.lwlsn.store(lwlsn, Ordering::Relaxed);
        m.usage.store(INSTALL_USAGE | UNREAD, Ordering::Relaxed);
        // Linked while still BUSY (readers skip it), so a VALID frame is always findable.
        b.set_entry(slot, encode_entry(h.fingerprint(), frame));
        // The one store that publishes: bytes, tag and LSNs happen-before any reader's Acquire
        // load that sees VALID.
        m.ctl.store(c.to_valid().0, Ordering::Release);
    }

    /// Fills a BUSY frame owned by this process: with a plain copy through the mapping when
    /// the mapping is on 2 MiB pages (one write fault maps 256 frames) or this process
    /// prefaulted the frame's chunk (`prefault`, `map_all`: the daemon, and long-running
    /// backends), else with `pwrite` on the file. On 4 KiB pages, a process that fills frames
    /// it never touched (a backend installing its TCP pipeline's pages) would otherwise take
    /// two write faults per frame (shared file mappings get no fault-around on write): a
    /// quarter of its CPU per page, and `pwrite` ran about a fifth faster. Prefaulting the
    /// chunk on first use measured slower still (the populate walks the same fault path per
    /// 4 KiB page). `pwrite` is no default for everyone, though: it takes the file's inode
    /// lock, and with 32 backends installing at once they queued on it (a twentieth of the
    /// compute's CPU in `rwsem_down_write_slowpath`) — which 2 MiB pages avoid. Either way the
    /// bytes land in the same page-cache pages every process maps, before the publishing
    /// Release store, so readers that see the frame VALID see the bytes. Should `pwrite` fail,
    /// the copy goes through the mapping.
    fn copy_into_frame(&self, frame: u32, page: &[u8; PAGE_SIZE]) {
        use std::os::unix::fs::FileExt;
        if !self.huge.backed() && !self.chunk_mapped(frame) {
            let offset = self.geo.data_offset + u64::from(frame) * PAGE_SIZE as u64;
            if self.file.write_all_at(page, offset).is_ok() {
                return;
            }
        }
        // SAFETY: the frame is BUSY and owned by us, so no other process writes it; readers
        // ignore BUSY frames. Source and destination cannot overlap.
        unsafe { stream_page(page, self.frame_ptr(frame)) };
    }

    /// Whether `prefault` put `frame`'s chunk in this process's page tables.
    fn chunk_mapped(&self, frame: u32) -> bool {
        let chunk = u64::from(frame) / MAPPED_CHUNK_FRAMES;
        self.mapped_chunks[(chunk / 64) as usize].load(Ordering::Relaxed) & (1 << (chunk % 64)) != 0
    }

    // ---- writers ---------------------------------------------------------------------------

    /// Stores the compute's own new version of `tag` at `lsn` (and raises the tag's lwlsn to
    /// `lsn`). Refused as `Superseded` when the tag's lwlsn is already above `lsn`.
    ///
    /// On `Err` (`OpError::Busy`: the tag's bucket stayed locked by a live process) nothing
    /// changed, the tag's lwlsn included: an older version could still be installed later, so
    /// the caller must not drop the error (raising [`Lfc::raise_lwlsn_floor`] to `lsn` is always
    /// safe).
    pub fn write(
        &self,
        tag: &BufferTag,
        lsn: u64,
        page: &[u8; PAGE_SIZE],
    ) -> Result<WriteOutcome, OpError> {
        let h = self.hash(tag);
        let floor = self.lwlsn_floor();
        {
            let g = self.lock_bucket(h)?;
            let (cached, lwlsn) = self.tag_lwlsn_locked(&g, h, tag);
            if lsn < lwlsn.max(floor) {
                self.bump(Counter::SupersededWrites);
                return Ok(WriteOutcome::Superseded);
            }
            if let Some(frame) = cached {
                self.rewrite_locked(frame, lsn, page);
                drop(g);
                self.bump(Counter::Writes);
                self.channel(h).notify();
                return Ok(WriteOutcome::Stored);
            }
        }
        // Not cached: fill a frame with no lock held, since claiming may evict and so lock
        // another home, possibly a lower one (lock order).
        let Some(frame) = self.claim_frame() else {
            let g = self.lock_bucket(h)?;
            self.set_lwlsn_locked(&g, h, tag, lsn);
            self.bump(Counter::NoRoom);
            return Ok(WriteOutcome::NoRoom);
        };
        self.copy_into_frame(frame, page);
        self.link_written(h, tag, lsn, frame, floor)
    }

    /// Second half of [`Lfc::write`]: links our filled `frame` as version `lsn` of `tag`,
    /// replacing a copy cached since the first look (an install that landed meanwhile).
    fn link_written(
        &self,
        h: TagHash,
        tag: &BufferTag,
        lsn: u64,
        frame: u32,
        floor: u64,
    ) -> Result<WriteOutcome, OpError> {
        let g = match self.lock_bucket(h) {
            Ok(g) => g,
            Err(e) => {
                self.release_frame(frame);
                return Err(e);
            }
        };
        let (old, lwlsn) = self.tag_lwlsn_locked(&g, h, tag);
        if lsn < lwlsn.max(floor) {
            self.release_frame(frame);
            self.bump(Counter::SupersededWrites);
            return Ok(WriteOutcome::Superseded);
        }
        if let Some(old) = old {
            self.drop_locked(&g, h, old, lwlsn);
        }
        // The tag's lwlsn is at most `lsn` now, so the new version is its lwlsn. (The shared
        // cell is no part of it while a copy was cached: a colliding tag may have raised the
        // cell past `lsn` meanwhile, and a frame whose lwlsn exceeds its own version reads as
        // stale to anyone who compares the two.)
        if !self.link_locked(&g, h, tag, frame, lsn, lsn) {
            self.release_frame(frame);
            self.set_lwlsn_locked(&g, h, tag, lsn);
            self.bump(Counter::NoRoom);
            return Ok(WriteOutcome::NoRoom);
        }
        drop(g);
        self.bump(Counter::Writes);
        self.channel(h).notify();
        Ok(WriteOutcome::Stored)
    }

    /// The tag's VALID frame, if cached, and its lwlsn under its home's lock `g`: the frame's
    /// while cached, else the shared cell's. Exact for the tag's own history: its raises go to
    /// its frame while it is cached and are folded into the cell when the frame goes, so the
    /// cell's excess over a cached frame's lwlsn can only be a colliding tag's.
    fn tag_lwlsn_locked(&self, g: &Locked<'_>, h: TagHash, tag: &BufferTag) -> (Option<u32>, u64) {
        match self.find_locked(g, h, tag) {
            Some(frame) => (Some(frame), self.meta(frame).lwlsn.load(Ordering::Acquire)),
            None => (None, self.lwlsn_cell(h).load(Ordering::Acquire)),
        }
    }

    /// In-place rewrite of a VALID frame under its home's lock (seqlock writer side). The entry
    /// stays as it is, so an overflow bucket holding it need not be locked; its repair keeps
    /// entries of live owners' BUSY frames.
    fn rewrite_locked(&self, frame: u32, lsn: u64, page: &[u8; PAGE_SIZE]) {
        let m = self.meta(frame);
        let c = m.ctl();
        debug_assert_eq!(c.kind(), KIND_VALID);
        let busy = c.to_busy(current_pid());
        m.ctl.store(busy.0, Ordering::Relaxed);
        // Orders the BUSY store before the data stores below, for readers' validation.
        fence(Ordering::Release);
        // Raised before the copy, so whoever cleans up after our death folds the new value.
        m.lwlsn.fetch_max(lsn, Ordering::AcqRel);
        m.lsn.store(lsn, Ordering::Relaxed);
        self.copy_into_frame(frame, page);
        m.ctl.store(busy.to_valid().0, Ordering::Release);
    }

    /// Records that `tag` was modified at `lsn` without supplying the content: raises its
    /// lwlsn and drops a cached copy that is older than `lsn`. On `Err` nothing changed (see
    /// [`Lfc::write`]).
    pub fn set_lwlsn(&self, tag: &BufferTag, lsn: u64) -> Result<(), OpError> {
        let h = self.hash(tag);
        let g = self.lock_bucket(h)?;
        self.set_lwlsn_locked(&g, h, tag, lsn);
        Ok(())
    }

    fn set_lwlsn_locked(&self, g: &Locked<'_>, h: TagHash, tag: &BufferTag, lsn: u64) {
        match self.find_locked(g, h, tag) {
            Some(frame) => {
                let m = self.meta(frame);
                if m.lsn.load(Ordering::Acquire) < lsn {
                    let lwlsn = m.lwlsn.load(Ordering::Acquire).max(lsn);
                    self.drop_locked(g, h, frame, lwlsn);
                    self.bump(Counter::Drops);
                } else {
                    m.lwlsn.fetch_max(lsn, Ordering::AcqRel);
                }
            }
            None => {
                self.lwlsn_cell(h).fetch_max(lsn, Ordering::AcqRel);
            }
        }
    }

    /// Offers a prefetched page that the page server produced for a request whose
    /// `not_modified_since` was `not_modified_since`. Accepted only when the tag is not cached
    /// and `lwlsn(tag) <= not_modified_since`.
    pub fn install_prefetched(
        &self,
        tag: &BufferTag,
        not_modified_since: u64,
        page: &[u8; PAGE_SIZE],
    ) -> InstallOutcome {
        let h = self.hash(tag);
        // Unlocked pre-checks, so duplicates and stale pages cost no eviction. The locked
        // checks in `publish_frame` decide.
        if self.read_optimistic(h, tag, None, false).is_some() {
            self.bump(Counter::AlreadyPresent);
            return InstallOutcome::AlreadyPresent;
        }
        let lw = self
            .lwlsn_cell(h)
            .load(Ordering::Acquire)
            .max(self.lwlsn_floor());
        if lw > not_modified_since {
            self.bump(Counter::StaleRejects);
            return InstallOutcome::Stale;
        }
        let Some(frame) = self.claim_frame() else {
            self.bump(Counter::NoRoom);
            return InstallOutcome::NoRoom;
        };
        self.copy_into_frame(frame, page);
        let outcome = self.publish_frame(frame, tag, h, not_modified_since);
        if outcome != InstallOutcome::Installed {
            self.release_frame(frame);
        }
        outcome
    }

    /// Links our filled frame as `tag` if the install rules allow. On any other outcome the
    /// frame stays reserved by us (BUSY, ours): the caller frees it or refills it.
    pub(crate) fn publish_frame(
        &self,
        frame: u32,
        tag: &BufferTag,
        h: TagHash,
        not_modified_since: u64,
    ) -> InstallOutcome {
        self.publish_frame_held(frame, tag, h, not_modified_since, None)
    }

    /// `publish_frame`, its arrival notification held in `held` when given (`announce` makes
    /// it).
    fn publish_frame_held(
        &self,
        frame: u32,
        tag: &BufferTag,
        h: TagHash,
        not_modified_since: u64,
        held: Option<&mut ArrivalBatch>,
    ) -> InstallOutcome {
        let g = match self.lock_bucket(h) {
            Ok(g) => g,
            Err(_) => return InstallOutcome::Busy,
        };
        if self.find_locked(&g, h, tag).is_some() {
            self.bump(Counter::AlreadyPresent);
            return InstallOutcome::AlreadyPresent;
        }
        let lwlsn = self.lwlsn_cell(h).load(Ordering::Acquire);
        if lwlsn.max(self.lwlsn_floor()) > not_modified_since {
            self.bump(Counter::StaleRejects);
            return InstallOutcome::Stale;
        }
        if !self.link_locked(&g, h, tag, frame, not_modified_since, lwlsn) {
            self.bump(Counter::NoRoom);
            return InstallOutcome::NoRoom;
        }
        drop(g);
        self.bump(Counter::Installs);
        // After the page is visible: whoever then finds no mark and no page knows it came and
        // went (see `mark_requested`).
        requested::clear(self.requested_line(h), h.requested_key());
        let ch = h.arrival_channel(ARRIVAL_CHANNELS);
        if !held.is_some_and(|b| b.hold(ch)) {
            self.channel_at(ch).notify();
        }
        InstallOutcome::Installed
    }

    /// Makes the arrival notifications `batch` held back (`Reservation::try_publish_held`):
    /// the waiters of those pages wake now.
    pub fn announce(&self, batch: &mut ArrivalBatch) {
        for ch in batch.take() {
            self.channel_at(ch).notify();
        }
    }

    /// Maps the page frames `frames` into this process's page tables now
    /// (`MADV_POPULATE_WRITE`; contents are untouched), so that receiving into or reading them
    /// later takes no page fault. A process that fills frames at packet rate (the worker
    /// daemon) otherwise spends about half its time in first-touch faults on a fresh cache. On
    /// tmpfs this allocates the memory the frames hold when full (about 3 s per GiB on the
    /// reference machine, so callers go in steps); on a disk file it allocates their blocks.
    pub fn prefault(&self, frames: std::ops::Range<u64>) -> Result<(), OpError> {
        assert!(frames.start <= frames.end && frames.end <= self.geo.capacity_pages);
        let offset = self.geo.data_offset + frames.start * PAGE_SIZE as u64;
        let len = (frames.end - frames.start) * PAGE_SIZE as u64;
        self.map
            .advise_range(Advice::PopulateWrite, offset as usize, len as usize)
            .map_err(|e| OpError::io(&self.path, "madvise(MADV_POPULATE_WRITE)", e))?;
        // Chunks wholly inside the range are now mapped writable here.
        let end = frames.end.min(self.geo.capacity_pages);
        let mut chunk = frames.start.div_ceil(MAPPED_CHUNK_FRAMES);
        while ((chunk + 1) * MAPPED_CHUNK_FRAMES).min(self.geo.capacity_pages) <= end
            && chunk * MAPPED_CHUNK_FRAMES < end
        {
            self.mapped_chunks[(chunk / 64) as usize]
                .fetch_or(1 << (chunk % 64), Ordering::Relaxed);
            chunk += 1;
        }
        Ok(())
    }

    /// Maps every frame and the metadata into this process's page tables, writable
    /// (`MADV_POPULATE_WRITE`), as a long-running process has them once it has touched every
    /// frame: its reads then take no page fault, and it fills frames with a plain copy rather
    /// than `pwrite` (see `copy_into_frame`). Costs a page-table page per 2 MiB of cache (the
    /// file's blocks are allocated already, by `create` or `open`).
    pub fn map_all(&self) -> Result<(), OpError> {
        self.prefault_metadata()?;
        self.prefault(0..self.geo.capacity_pages)
    }

    /// Like `prefault`, for the metadata in front of the frames (frame states, buckets,
    /// last-written LSNs, request marks; about 1 % of the file), which every claim and lookup
    /// touches: on a fresh cache its first touches are page faults with zeroing too.
    pub fn prefault_metadata(&self) -> Result<(), OpError> {
        self.map
            .advise_range(Advice::PopulateWrite, 0, self.geo.data_offset as usize)
            .map_err(|e| OpError::io(&self.path, "madvise(MADV_POPULATE_WRITE)", e))
    }

    // ---- zero-copy reservations ------------------------------------------------------------

    /// Claims a frame for the caller to fill in place (e.g. with `recvmsg` scatter I/O); see
    /// [`Reservation`]. None when no frame can be claimed.
    pub fn reserve(&self) -> Option<Reservation<'_>> {
        match self.claim_frame() {
            Some(frame) => {
                self.bump(Counter::Reservations);
                Some(Reservation {
                    lfc: self,
                    frame,
                    done: false,
                })
            }
            None => {
                self.bump(Counter::NoRoom);
                None
            }
        }
    }

    // ---- request marks and arrival waits ---------------------------------------------------

    /// Marks `tag` as requested at `now_ns` (any clock shared by the processes, e.g.
    /// CLOCK_MONOTONIC). True when it was already marked less than `REQUESTED_TTL_NS` ago,
    /// i.e. a prefetch for it is probably in flight. Installing the page clears its mark, so
    /// false for a page that was requested, arrived and has since been evicted.
    pub fn mark_requested(&self, tag: &BufferTag, now_ns: u64) -> bool {
        let h = self.hash(tag);
        let dup = requested::mark(self.requested_line(h), h.requested_key(), now_ns);
        self.bump(if dup {
            Counter::RequestedDuplicates
        } else {
            Counter::RequestedMarks
        });
        dup
    }

    /// Sleeps until `tag` is cached or `timeout` (capped at `MAX_ARRIVAL_WAIT`) passes; true if
    /// it is cached. Woken across processes by `write`, `install_prefetched` and `publish`.
    pub fn wait_for_arrival(&self, tag: &BufferTag, timeout: Duration) -> bool {
        let h = self.hash(tag);
        let ch = self.channel(h);
        let deadline = Instant::now() + timeout.min(MAX_ARRIVAL_WAIT);
        loop {
            ch.waiters.fetch_add(1, Ordering::SeqCst);
            let seq = ch.seq.load(Ordering::SeqCst);
            let arrived = self.contains(tag);
            let now = Instant::now();
            if arrived || now >= deadline {
                ch.waiters.fetch_sub(1, Ordering::SeqCst);
                self.bump(if arrived {
                    Counter::WaitArrivals
                } else {
                    Counter::WaitTimeouts
                });
                return arrived;
            }
            futex_wait(&ch.seq, seq, deadline - now);
            ch.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Number of waiters registered on the arrival channel of `tag` (for tests and debugging).
    #[doc(hidden)]
    pub fn arrival_waiters(&self, tag: &BufferTag) -> u32 {
        self.channel(self.hash(tag)).waiters.load(Ordering::SeqCst)
    }

    /// Holds the lock of `tag`'s home bucket until the guard is dropped, as a stalled process
    /// would: other threads' `write`/`set_lwlsn` of tags sharing that home then give up with
    /// `OpError::Busy` after the lock wait limit (500 ms). For tests of callers' error paths.
    #[doc(hidden)]
    pub fn lock_home_for_test(&self, tag: &BufferTag) -> Result<HomeLockForTest<'_>, OpError> {
        Ok(HomeLockForTest {
            _held: self.lock_bucket(self.hash(tag))?,
        })
    }

    /// Home bucket of `tag`: tests use it to craft tags that overflow one home.
    #[doc(hidden)]
    pub fn home_bucket_of(&self, tag: &BufferTag) -> u64 {
        self.home(self.hash(tag))
    }

    /// How many buckets past `home` its tags currently may live in (0 = never overflowed).
    #[doc(hidden)]
    pub fn overflow_distance(&self, home: u64) -> u64 {
        self.dist_unlocked(home)
    }

    /// Index of the lwlsn table slot of `tag`: tests use it to pick tags that do not collide.
    #[doc(hidden)]
    pub fn lwlsn_slot_of(&self, tag: &BufferTag) -> u64 {
        self.hash(tag).lwlsn_slot(self.geo.lwlsn_slots)
    }

    // ---- statistics and snapshots ------------------------------------------------------------

    /// Counters summed over all processes, plus frame occupancy (a scan of the metadata array,
    /// so O(capacity): meant for monitoring, not for hot paths).
    pub fn stats(&self) -> LfcStats {
        let mut sums = [0u64; STAT_COUNTERS];
        let cells = self.stat_cells();
        for stripe in 0..STAT_STRIPES {
            for (i, sum) in sums.iter_mut().enumerate() {
                // Wrapping: the cells are shared memory any process (or a damaged file) may
                // have filled with anything; a statistic must not panic on it (found by the
                // `lfc_open` fuzz target).
                *sum = sum.wrapping_add(cells[stripe * STAT_COUNTERS + i].load(Ordering::Relaxed));
            }
        }
        let mut s = LfcStats::from_sums(&sums);
        s.capacity_pages = self.geo.capacity_pages;
        for frame in 0..self.geo.capacity_pages as u32 {
            let c = self.meta(frame).ctl();
            match c.kind() {
                KIND_VALID => s.used_pages += 1,
                KIND_BUSY => {
                    s.busy_pages += 1;
                    // One system call per busy frame: few, unless many owners died.
                    if c.pid() != current_pid() && !process_alive(c.pid()) {
                        s.busy_dead_pages += 1;
                    }
                }
                _ => {}
            }
        }
        s
    }

    /// Lookups so far by every process (the `hits` and `misses` of [`stats`](Lfc::stats)), read
    /// in O(stripes) rather than `stats`' O(capacity). Relaxed sums, for display.
    pub fn lookups(&self) -> u64 {
        self.sum_counters(&[Counter::Hits, Counter::Misses])
    }

    /// Counts one read of a page by a backend, whichever path serves it: a read on TCP
    /// pipelining takes its page from the GetPage answer without a lookup, so `lookups` does not
    /// see it. One relaxed add on this thread's stripe.
    pub fn note_read(&self) {
        self.bump(Counter::Reads);
    }

    /// Backend reads so far by every process ([`note_read`](Lfc::note_read)), in O(stripes). A
    /// background task that polls this sees whether foreground reads are running, and how many
    /// (prewarm yields to them); the worker daemon and prewarm never count. Relaxed sums: a
    /// moment's undercount only delays what the caller sees.
    pub fn reads(&self) -> u64 {
        self.sum_counters(&[Counter::Reads])
    }

    /// The sum of `counters` over every stripe.
    fn sum_counters(&self, counters: &[Counter]) -> u64 {
        let cells = self.stat_cells();
        (0..STAT_STRIPES)
            .flat_map(|stripe| {
                counters.iter().map(move |&c| {
                    cells[stripe * STAT_COUNTERS + c as usize].load(Ordering::Relaxed)
                })
            })
            .fold(0u64, u64::wrapping_add)
    }

    /// Takes back every frame a dead process left BUSY (its reservations and half-done
    /// installs), folding their lwlsn as the CLOCK sweep does; returns how many. O(capacity):
    /// the worker daemon runs it once at start, so the frames its crashed predecessor held are
    /// free again at once instead of whenever the sweep next passes them. Safe beside live
    /// processes: it changes only frames whose owner is dead, by the same compare-and-swap the
    /// sweep uses, and a stale bucket link to a freed frame is harmless (invariant 2).
    pub fn reclaim_dead_frames(&self) -> u64 {
        let me = current_pid();
        let mut reclaimed = 0;
        for frame in 0..self.geo.capacity_pages as u32 {
            let c = self.meta(frame).ctl();
            if c.kind() == KIND_BUSY
                && c.pid() != me
                && !process_alive(c.pid())
                && self.reclaim_dead(frame, c)
            {
                self.release_frame(frame);
                reclaimed += 1;
            }
        }
        reclaimed
    }

    /// A lower bound on the frames that are FREE, read in O(1) (the hint `claim_free` keeps; it
    /// is at or below the truth). [`stats`](Lfc::stats) counts exactly but reads every frame's
    /// metadata, a millisecond per million frames.
    pub fn free_frames_at_least(&self) -> u64 {
        self.free_count().load(Ordering::Acquire)
    }

    /// Up to `max` cached tags, most used first (CLOCK usage count, then LSN), for prewarm.
    pub fn snapshot_hottest(&self, max: usize) -> Vec<BufferTag> {
        let mut found: Vec<(u32, u64, BufferTag)> = Vec::new();
        for frame in 0..self.geo.capacity_pages as u32 {
            let m = self.meta(frame);
            let c = m.ctl();
            if c.kind() != KIND_VALID {
                continue;
            }
            let tag = m.tag();
            let lsn = m.lsn.load(Ordering::Relaxed);
            let usage = m.reads_count();
            fence(Ordering::Acquire);
            if m.ctl.load(Ordering::Relaxed) == c.0 {
                found.push((usage, lsn, tag));
            }
        }
        found.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        found.truncate(max);
        found.into_iter().map(|(_, _, t)| t).collect()
    }
}

/// A frame claimed for zero-copy filling: write exactly `PAGE_SIZE` bytes at [`as_mut_ptr`]
/// (4 KiB aligned), then [`publish`] it under a tag or [`abandon`] it. Until published it is
/// invisible to readers. Dropping it abandons it; if the process dies holding it, the frame is
/// reclaimed by the next CLOCK sweep that meets it.
///
/// [`as_mut_ptr`]: Reservation::as_mut_ptr
/// [`publish`]: Reservation::publish
/// [`abandon`]: Reservation::abandon
#[derive(Debug)]
pub struct Reservation<'a> {
    lfc: &'a Lfc,
    frame: u32,
    done: bool,
}

impl<'a> Reservation<'a> {
    /// Bytes to fill.
    pub const LEN: usize = PAGE_SIZE;

    /// Start of the frame's `PAGE_SIZE` bytes, 4 KiB aligned. Valid while the reservation lives;
    /// hand it to the kernel (iovec) or write through it; for a `&mut` view use
    /// [`with_page_mut`](Reservation::with_page_mut).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.lfc.frame_ptr(self.frame)
    }

    /// Frame number (for logs and tests).
    pub fn frame(&self) -> u32 {
        self.frame
    }

    /// Runs `f` on the frame's bytes, for transforms that must work in place (decrypting a page
    /// received straight into the frame). The one exception to "never a `&mut` into shared
    /// memory", and a narrow one: a reserved frame is written by its reservation alone, no
    /// reader can find it through the index until it is published, and the borrow cannot
    /// outlive this call. A reader in another process that still holds the frame's number from
    /// before it was claimed may read the bytes meanwhile; it validates the frame's version
    /// afterwards and discards what it read, as it does for every racing write.
    pub fn with_page_mut<R>(&mut self, f: impl FnOnce(&mut [u8; PAGE_SIZE]) -> R) -> R {
        // SAFETY: the frame is PAGE_SIZE bytes inside the live mapping, and while reserved no
        // one else writes it (see above); `&mut self` keeps a second borrow from existing.
        let page = unsafe { &mut *self.as_mut_ptr().cast::<[u8; PAGE_SIZE]>() };
        f(page)
    }

    /// Copies `page` into the frame (for callers that do not receive in place).
    pub fn fill_from(&mut self, page: &[u8; PAGE_SIZE]) {
        self.lfc.copy_into_frame(self.frame, page);
    }

    /// Publishes the filled frame as `tag`, under the same rule as `install_prefetched`. A frame
    /// that is not installed is freed.
    pub fn publish(self, tag: &BufferTag, not_modified_since: u64) -> InstallOutcome {
        match self.try_publish(tag, not_modified_since) {
            Ok(()) => InstallOutcome::Installed,
            Err(mut rejected) => {
                rejected.slot.done = true;
                rejected.slot.lfc.release_frame(rejected.slot.frame);
                rejected.outcome
            }
        }
    }

    /// Publishes the filled frame as `tag`; when the install rules refuse it (already cached,
    /// stale, no room in the bucket window, bucket busy) the reservation comes back still
    /// reserved, so a receiver can post it again instead of claiming, and so possibly evicting,
    /// another frame for every datagram it turns away.
    pub fn try_publish(self, tag: &BufferTag, not_modified_since: u64) -> Result<(), Rejected<'a>> {
        self.publish_or_return(tag, not_modified_since, None)
    }

    /// `try_publish`, with the page's arrival notification held in `batch` until
    /// [`Lfc::announce`]: for a receiver installing a batch of pages, so that the waiter of
    /// its first one does not wake before the rest are there.
    pub fn try_publish_held(
        self,
        tag: &BufferTag,
        not_modified_since: u64,
        batch: &mut ArrivalBatch,
    ) -> Result<(), Rejected<'a>> {
        self.publish_or_return(tag, not_modified_since, Some(batch))
    }

    fn publish_or_return(
        mut self,
        tag: &BufferTag,
        not_modified_since: u64,
        held: Option<&mut ArrivalBatch>,
    ) -> Result<(), Rejected<'a>> {
        let h = self.lfc.hash(tag);
        match self
            .lfc
            .publish_frame_held(self.frame, tag, h, not_modified_since, held)
        {
            InstallOutcome::Installed => {
                self.done = true;
                Ok(())
            }
            outcome => Err(Rejected {
                outcome,
                slot: self,
            }),
        }
    }

    /// Returns the frame unused.
    pub fn abandon(mut self) {
        self.release();
    }

    fn release(&mut self) {
        if !self.done {
            self.done = true;
            self.lfc.release_frame(self.frame);
            self.lfc.bump(Counter::Abandons);
        }
    }
}

/// A home bucket lock held by [`Lfc::lock_home_for_test`]; released on drop.
#[doc(hidden)]
pub struct HomeLockForTest<'a> {
    _held: Locked<'a>,
}

/// A reservation the install rules refused, handed back unpublished and still reserved.
#[derive(Debug)]
pub struct Rejected<'a> {
    pub outcome: InstallOutcome,
    pub slot: Reservation<'a>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

const fn assert_send_sync<T: Send + Sync>() {}
const _: () = assert_send_sync::<Lfc>();

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tag::RelTag;

    fn tag(blk: u32) -> BufferTag {
        RelTag::new(1663, 5, 1, 0).block(blk)
    }

    /// Two tags of different homes that share an lwlsn cell.
    fn colliding_pair(lfc: &Lfc) -> (BufferTag, BufferTag) {
        let t = tag(0);
        let slot = lfc.lwlsn_slot_of(&t);
        let u = (1..)
            .map(tag)
            .find(|u| {
                lfc.lwlsn_slot_of(u) == slot && lfc.home_bucket_of(u) != lfc.home_bucket_of(&t)
            })
            .unwrap();
        (t, u)
    }

    /// A repair that finds a tag linked twice in one bucket (a corrupt file: invariant 2 rules
    /// it out) keeps the newer version findable, with the older one's lwlsn if larger. It kept
    /// the earlier entry before, the older page, raised to the newer one's lwlsn.
    #[test]
    fn a_repair_of_a_tag_linked_twice_keeps_its_newer_version() {
        let dir = tempfile::tempdir().unwrap();
        let lfc = Lfc::create(dir.path().join("lfc"), 64).unwrap();
        let t = tag(0);
        let h = lfc.hash(&t);
        assert_eq!(
            lfc.install_prefetched(&t, 5, &[5; PAGE_SIZE]),
            InstallOutcome::Installed
        );
        // A second frame of the tag, linked after the first in the same bucket.
        let frame = lfc.claim_frame().unwrap();
        lfc.copy_into_frame(frame, &[9; PAGE_SIZE]);
        let g = lfc.lock_bucket(h).unwrap();
        let slot = Lfc::free_slot(g.bucket).unwrap();
        lfc.publish_at(g.bucket, slot, h, &t, frame, 9, 9);
        lfc.repair_bucket(&g);
        drop(g);
        let mut out = [0; PAGE_SIZE];
        assert_eq!(lfc.lookup(&t, &mut out), Some(9));
        assert_eq!(out, [9; PAGE_SIZE]);
        assert_eq!(lfc.lwlsn(&t), 9);
        let linked = (0..BUCKET_ENTRIES)
            .filter(|&s| lfc.bucket(lfc.home(h)).entry(s) != EMPTY)
            .count();
        assert_eq!(linked, 1, "the older frame's entry went");
    }

    /// A write that finds its tag cached by an install that landed while it filled its frame
    /// stores its version with that version as the lwlsn, even when a colliding tag raised
    /// the shared cell past it meanwhile (the stress test saw the page "older than its lwlsn").
    #[test]
    fn a_write_that_replaces_a_concurrent_install_is_not_stale_by_a_colliding_tags_lwlsn() {
        let dir = tempfile::tempdir().unwrap();
        let lfc = Lfc::create(dir.path().join("lfc"), 64).unwrap();
        let (t, u) = colliding_pair(&lfc);
        // The writer's first look: `t` uncached at lwlsn 0, so it claims and fills a frame.
        let frame = lfc.claim_frame().unwrap();
        lfc.copy_into_frame(frame, &[6; PAGE_SIZE]);
        // Meanwhile a prefetch installs `t` as of 5, and `u` (uncached) is modified at 7.
        assert_eq!(
            lfc.install_prefetched(&t, 5, &[5; PAGE_SIZE]),
            InstallOutcome::Installed
        );
        lfc.set_lwlsn(&u, 7).unwrap();
        assert_eq!(lfc.lwlsn(&u), 7);
        let h = lfc.hash(&t);
        let outcome = lfc.link_written(h, &t, 6, frame, lfc.lwlsn_floor());
        assert_eq!(outcome.unwrap(), WriteOutcome::Stored);
        let mut out = [0; PAGE_SIZE];
        assert_eq!(lfc.lookup(&t, &mut out), Some(6));
        assert_eq!(out, [6; PAGE_SIZE]);
        assert_eq!(lfc.lwlsn(&t), 6, "the cached version is current");
        // Once evicted, the shared cell answers for both tags again, as large as either needs.
        lfc.set_lwlsn(&t, 8).unwrap();
        assert!(!lfc.contains(&t));
        assert_eq!((lfc.lwlsn(&t), lfc.lwlsn(&u)), (8, 8));
    }
}
