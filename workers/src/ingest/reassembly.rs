//! Joining a page's fragments (`datagram` module docs, "Fragments") into a reserved LFC frame:
//! one worker thread's bounded assembly table.
//!
//! # Why one copy per fragment, not zero
//!
//! A receive slot's scatter list is fixed when the slot is posted, before the kernel has
//! chosen the datagram, so it cannot point a fragment at its page's frame and offset: only the
//! header, read after the receive, says which page and which piece. (`MSG_PEEK` first would
//! double the system calls per datagram; posting one slot per possible offset would multiply
//! the reserved frames by the fragment count.) So a fragment is received, like a whole page,
//! into a posted slot's frame, verified there, and its piece (1 KiB at MTU 1500) copied into
//! the frame its page is joined in: a copy of a few tens of nanoseconds, against the
//! microseconds the datagram costs the kernel. A whole page (any path with an MTU above 8332
//! bytes, loopback included) never comes here and stays zero copy.
//!
//! The one way around it was built and measured (BENCHMARKS, thirty-eighth session): the page
//! server sending a batch page after page, whole pages to a GSO message, and the worker
//! posting slots shaped for that (each frame as `[header | piece | tag]` regions at the pieces'
//! offsets), so a train's pieces land in their page's frame. The worker's CPU per split page
//! did not fall (3.75 µs against 3.49): the bytes go into a cold frame either way, and the
//! kernel's copy has no prefetch ahead of it where this one does (`prefetch_for_write`).
//!
//! # Parity
//!
//! A split page's parity piece (the XOR of its fragments) is kept in the entry's own buffer.
//! The page is whole as soon as all its fragments, or all but one and the parity piece, have
//! arrived: a missing fragment is then rebuilt in the frame (the parity XOR the others), so any
//! one lost datagram of a page costs nothing but that XOR. Pieces of a page already whole (the
//! parity piece usually comes last, after the fragments made the page) are recognised by a
//! small table of recently joined pages and turned away as duplicates, rather than starting a
//! page that could never be whole.
//!
//! # Bounds
//!
//! At most [`ASSEMBLY_ENTRIES`] pages are joined at once per thread (fewer in a small cache:
//! [`max_assembly_frames`]), each in one reserved frame; a frame of a page given up is kept (still reserved, never published) for the next
//! page, so the table holds at most that many frames and never grows. Only fragments that
//! authenticated enter it: forged or corrupt ones are turned away before, and can neither
//! evict a page being joined nor publish anything. A page not complete within
//! [`ASSEMBLY_TIMEOUT_NS`] of its first fragment (judged when the worker has taken what its
//! socket held, `expire_idle`), or the oldest page when a new one finds the table full, is
//! given up ([`DropReason::Incomplete`]): a lost page, which the reader fetches over TCP like
//! any other.
//!
//! Owns: the table's entries (each a page's frame, the pieces seen and a parity buffer), its spare
//! frames and the table of recently joined pages. Authenticates nothing (it is handed opened
//! fragments) and publishes nothing (a whole page's frame goes back to `ingest`, which publishes
//! it); reads no clock: `now` is passed in.

use crate::datagram::{xor_into, DatagramHeader, DropReason, Opened, STREAM_ID_LEN};
use lfc::{Lfc, Reservation, PAGE_SIZE};

/// Pages one worker thread joins at once. A page's fragments leave the sender back to back
/// in one GSO send, so a handful are in progress per sender thread; the rest of the room
/// absorbs reordering between senders.
pub const ASSEMBLY_ENTRIES: usize = 64;
/// How long after its first fragment a page may take to be whole before it is given up. Its
/// fragments are sent within microseconds of each other; a page not whole after this long has
/// lost one, and its reader has asked for it over TCP already (a wait budget is at most 4 ms).
/// Its frame is reserved meanwhile: at 100 ms, pages that lost two pieces held the table full
/// on a lossy link.
pub const ASSEMBLY_TIMEOUT_NS: u64 = 10_000_000;
/// Frames of pages given up kept reserved for the next pages; the others go back to the
/// cache. A spare saves the next page a claim, but holds a frame no reader can use: kept
/// without bound, the table's high-water mark stayed reserved for good.
pub const MAX_SPARE_FRAMES: usize = 4;
/// See `max_assembly_frames`.
pub const ASSEMBLY_SHARE_OF_CACHE: u64 = 16;
/// A page per sender thread of a few shards in flight at once: fewer gave up pages whose
/// pieces were merely interleaved with other pages'.
pub const MIN_ASSEMBLY_FRAMES: usize = 6;
/// Slots of the table of pages remembered as joined, so their late pieces start nothing: a
/// power of two, direct-mapped by page id. A stream's consecutive pages have page ids a fixed
/// stride apart (their datagram count, odd for a split page), so one stream's last
/// `RECENT_SLOTS` pages all stay; a page forgotten early is still turned away by the cache
/// check that follows. A ring searched from end to end cost the worker a scan of 128 entries
/// for every page's first piece and its parity piece: a fifth of the joining's time at MTU 1500.
const RECENT_SLOTS: usize = 4 * ASSEMBLY_ENTRIES;
const _: () = assert!(RECENT_SLOTS.is_power_of_two());
/// The stride of [`prefetch_for_write`].
const CACHE_LINE: usize = 64;
/// Which page's frame a fragment's arrival prefetches: the entry this many places after its
/// own (see `Assembly::add`).
const PREFETCH_AHEAD: usize = 2;
/// The largest piece: half a page (2 fragments).
const MAX_PIECE: usize = PAGE_SIZE / 2;

/// One page being joined.
struct Entry<'a> {
    stream_id: [u8; STREAM_ID_LEN],
    page_id: u64,
    hdr: DatagramHeader,
    count: u8,
    /// Bit `i`: fragment `i` is in `frame`; bit `count`: the parity piece is in `parity`.
    have: u64,
    started_ns: u64,
    frame: Reservation<'a>,
    parity: Box<[u8; MAX_PIECE]>,
}

impl Entry<'_> {
    /// Whether the page can be made whole: every fragment, or all but one and the parity.
    fn joinable(&self) -> bool {
        self.have.count_ones() >= u32::from(self.count)
    }

    /// Rebuilds the one missing fragment, if any, from the parity piece and the others;
    /// returns whether one was.
    fn rebuild(&mut self) -> bool {
        let count = usize::from(self.count);
        let Some(missing) = (0..count).find(|&i| self.have & (1 << i) == 0) else {
            return false;
        };
        let size = PAGE_SIZE / count;
        let parity = &mut self.parity[..size];
        self.frame.with_page_mut(|page| {
            for (i, piece) in page.chunks_exact(size).enumerate() {
                if i != missing {
                    xor_into(parity, piece);
                }
            }
            page[missing * size..][..size].copy_from_slice(parity);
        });
        self.have |= 1 << missing;
        true
    }
}

/// What [`Assembly::add`] did with a verified fragment.
pub(crate) enum Added<'a> {
    /// Kept until its page is whole.
    Held,
    /// The last piece needed: the page is whole in this frame, for the install rule; `true`
    /// when a lost fragment was rebuilt from the parity.
    Complete(DatagramHeader, Reservation<'a>, bool),
}

/// One worker thread's pages being joined. Allocated once; `add` never allocates.
pub(crate) struct Assembly<'a> {
    /// Most frames held at once (pages being joined and spares): `max_assembly_frames`.
    limit: usize,
    entries: Vec<Entry<'a>>,
    /// Frames of pages given up or refused by the install rule, still reserved, for the next
    /// page (so junk-free loss costs no new frame from CLOCK).
    spare: Vec<Reservation<'a>>,
    /// Where the previous fragment went: the next one is most likely its sibling.
    last: usize,
    /// Parity buffers of entries not in use (one per entry, allocated once).
    parity_pool: Vec<Box<[u8; MAX_PIECE]>>,
    /// Pages recently made whole (or refused whole), direct-mapped (`RECENT_SLOTS`): their late
    /// pieces start nothing.
    recent: Box<[([u8; STREAM_ID_LEN], u64)]>,
    /// When the last fragment came (`add`): spares are kept only while fragments flow
    /// (`expire_idle`).
    last_add_ns: u64,
}

impl<'a> Assembly<'a> {
    pub(crate) fn new(lfc_capacity_pages: u64) -> Self {
        Assembly {
            limit: max_assembly_frames(lfc_capacity_pages),
            entries: Vec::with_capacity(ASSEMBLY_ENTRIES),
            spare: Vec::with_capacity(ASSEMBLY_ENTRIES),
            last: 0,
            parity_pool: (0..ASSEMBLY_ENTRIES)
                .map(|_| Box::new([0u8; MAX_PIECE]))
                .collect(),
            // Page id u64::MAX with stream id zero: no real page's (its counter would be the
            // stream's last).
            recent: vec![([0u8; STREAM_ID_LEN], u64::MAX); RECENT_SLOTS].into_boxed_slice(),
            last_add_ns: 0,
        }
    }

    fn remember(&mut self, stream_id: [u8; STREAM_ID_LEN], page_id: u64) {
        self.recent[recent_slot(&stream_id, page_id)] = (stream_id, page_id);
    }

    fn recently_joined(&self, stream_id: &[u8; STREAM_ID_LEN], page_id: u64) -> bool {
        let (s, p) = &self.recent[recent_slot(stream_id, page_id)];
        *p == page_id && s == stream_id
    }

    /// Pages being joined now.
    pub(crate) fn in_progress(&self) -> usize {
        self.entries.len()
    }

    /// Frames held (pages being joined, and spares).
    pub(crate) fn frames(&self) -> usize {
        self.entries.len() + self.spare.len()
    }

    /// A frame that went back unpublished (refused by the install rule) is kept for the next
    /// page, up to the table's bound; beyond it, abandoned.
    pub(crate) fn keep_frame(&mut self, frame: Reservation<'a>) {
        if self.frames() < self.limit && self.spare.len() < MAX_SPARE_FRAMES {
            self.spare.push(frame);
        } else {
            frame.abandon();
        }
    }

    fn find(&self, stream_id: &[u8; STREAM_ID_LEN], page_id: u64) -> Option<usize> {
        let hit = |e: &Entry<'_>| e.page_id == page_id && e.stream_id == *stream_id;
        // The page of the last piece (a page's pieces back to back), else the entry after it:
        // the page server interleaves a batch's pages piece by piece (one GSO message per
        // piece index), so the next piece is the next page's, and entries are made in page
        // order. Searched from the start, the lookup of most pieces scanned half the table.
        for i in [self.last, self.last + 1] {
            if self.entries.get(i).is_some_and(hit) {
                return Some(i);
            }
        }
        self.entries.iter().position(hit)
    }

    /// Gives up page `i`: its frame becomes a spare. Returns 1, the pages given up.
    fn give_up(&mut self, i: usize) -> u32 {
        let e = self.entries.swap_remove(i);
        self.keep_frame(e.frame);
        self.parity_pool.push(e.parity);
        1
    }

    /// Gives up every page older than the timeout at `now_ns`; returns how many.
    fn expire(&mut self, now_ns: u64) -> u32 {
        let mut gave_up = 0;
        let mut i = 0;
        while i < self.entries.len() {
            if now_ns.saturating_sub(self.entries[i].started_ns) >= ASSEMBLY_TIMEOUT_NS {
                gave_up += self.give_up(i);
            } else {
                i += 1;
            }
        }
        gave_up
    }

    /// For a worker with nothing to join right now (woken by its timeout, or after a batch that
    /// emptied its socket):
    /// gives up the pages not whole within the timeout and, once no fragment has come for
    /// [`ASSEMBLY_TIMEOUT_NS`], returns the spare frames to the cache. Nothing else applies the
    /// timeout (`add` only evicts the oldest page of a full table), and before this ran when
    /// idle, frames reserved for pages that lost a piece stayed reserved as long as no fragment
    /// came: in the simulator, after its backends
    /// left a lossy UDP path, the daemon held 6 to 23 frames of a 49–148-page cache, pages
    /// other backends then missed (up to 2.4× the evictions of the same workload with no
    /// daemon). Returns the pages given up.
    pub(crate) fn expire_idle(&mut self, now_ns: u64) -> u32 {
        if self.frames() == 0 {
            return 0;
        }
        let gave_up = self.expire(now_ns);
        if now_ns.saturating_sub(self.last_add_ns) >= ASSEMBLY_TIMEOUT_NS {
            self.spare.drain(..).for_each(Reservation::abandon);
        }
        gave_up
    }

    /// Adds a fragment that authenticated (`opened`, its piece at the front of `piece_src`,
    /// which holds at least the piece).
    /// Returns what became of it and the pages given up to make room or by the timeout
    /// (each a [`DropReason::Incomplete`] for the caller to count).
    pub(crate) fn add(
        &mut self,
        lfc: &'a Lfc,
        opened: &Opened,
        piece_src: &[u8],
        now_ns: u64,
    ) -> (Result<Added<'a>, DropReason>, u32) {
        let (hdr, piece) = (&opened.hdr, &opened.piece);
        debug_assert!(piece.count > 1, "a whole page is never joined");
        self.last_add_ns = now_ns;
        let bit = 1u64 << piece.index;
        let src = &piece_src[..piece.size()];
        if let Some(i) = self.find(&piece.stream_id, piece.page_id) {
            self.last = i;
            let e = &mut self.entries[i];
            // Authenticated, so a sibling that disagrees comes from a broken sender, not the
            // network: refused, and the page left to its timeout.
            if e.count != piece.count || e.hdr != *hdr {
                return (Err(DropReason::BadHeader), 0);
            }
            if e.have & bit != 0 {
                return (Err(DropReason::DuplicateFragment), 0);
            }
            store(e, piece.is_parity(), piece.offset(), src);
            e.have |= bit;
            if !piece.is_parity() {
                // The piece after next is most likely the same piece of the page
                // `PREFETCH_AHEAD` entries on (interleaved batches, see `find`); its frame is
                // cold (the cache's least recently used), and without asking for it ahead each
                // copy stalled the worker on its stores: 1.2 of the 4.7 us a split page cost
                // it at MTU 1500.
                if let Some(next) = self.entries.get(i + PREFETCH_AHEAD) {
                    prefetch_for_write(next.frame.as_mut_ptr(), piece.offset(), src.len());
                }
            }
            let e = &mut self.entries[i];
            if e.joinable() {
                let rebuilt = e.rebuild();
                let e = self.entries.swap_remove(i);
                self.parity_pool.push(e.parity);
                self.remember(e.stream_id, e.page_id);
                return (Ok(Added::Complete(e.hdr, e.frame, rebuilt)), 0);
            }
            return (Ok(Added::Held), 0);
        }
        if self.recently_joined(&piece.stream_id, piece.page_id) {
            // A late piece (typically the parity) of a page already whole.
            return (Err(DropReason::DuplicateFragment), 0);
        }
        // A new page the install rule would refuse starts nothing: cached already (a replay or
        // a duplicate of a page joined before `recent` remembers) or stale. Without this, such
        // pages held the table's frames until their timeout; under a replay flood in the
        // simulator, every table sat at its bound, a third of a 58-page cache.
        match lfc.lwlsn_unless_cached(&hdr.tag) {
            None => return (Err(DropReason::AlreadyPresent), 0),
            Some(lwlsn) if lwlsn > hdr.not_modified_since => return (Err(DropReason::Stale), 0),
            Some(_) => {}
        }
        // A new page: make room first (the oldest page). The timeout is not applied here but
        // by the worker once it has taken what was queued (`expire_idle`): the first datagram
        // a descheduled worker takes is dated after its pause, and applied here it gave up
        // pages whose other pieces sat right behind it in the socket (pages counted lost on a
        // link that lost nothing, when a loaded compute held a worker off its CPU for 10 ms).
        let gave_up = if self.entries.len() >= self.limit {
            let oldest = (0..self.entries.len())
                .min_by_key(|&i| self.entries[i].started_ns)
                .expect("full, so not empty");
            self.give_up(oldest)
        } else {
            0
        };
        let Some(frame) = self.spare.pop().or_else(|| lfc.reserve()) else {
            return (Err(DropReason::NoRoom), gave_up);
        };
        let parity = self
            .parity_pool
            .pop()
            .expect("one parity buffer per entry, and a free entry");
        let mut e = Entry {
            stream_id: piece.stream_id,
            page_id: piece.page_id,
            hdr: *hdr,
            count: piece.count,
            have: bit,
            started_ns: now_ns,
            frame,
            parity,
        };
        store(&mut e, piece.is_parity(), piece.offset(), src);
        self.entries.push(e);
        self.last = self.entries.len() - 1;
        (Ok(Added::Held), gave_up)
    }

    /// Abandons every frame (pages being joined and spares); none is published.
    pub(crate) fn abandon_all(&mut self) {
        for e in self.entries.drain(..) {
            e.frame.abandon();
            self.parity_pool.push(e.parity);
        }
        self.spare.drain(..).for_each(Reservation::abandon);
    }
}

/// Most frames one thread's table holds for a cache of `capacity_pages`: `ASSEMBLY_ENTRIES`,
/// but no more than 1/`ASSEMBLY_SHARE_OF_CACHE` of the cache (and at least
/// `MIN_ASSEMBLY_FRAMES`). The table's frames are reserved and hold no page a reader can use:
/// on a lossy link nearly every entry is a page that lost two pieces and waits for its
/// timeout, and in the simulator a table of 64 held 29 frames of a 49-page cache, whose
/// backends then found their pages evicted (368 evictions against none with TCP pipelining
/// alone) and ran five times as long. A large cache never notices the bound. In the
/// simulator's small caches, 1/32 and at least 4 gave up pages of three shards' senders that
/// were merely interleaved; at least 8 took too much of a 49-page cache that the workers'
/// posted receive slots shared.
pub fn max_assembly_frames(capacity_pages: u64) -> usize {
    usize::try_from(capacity_pages / ASSEMBLY_SHARE_OF_CACHE)
        .unwrap_or(usize::MAX)
        .clamp(MIN_ASSEMBLY_FRAMES, ASSEMBLY_ENTRIES)
}

/// The slot of `recent` a page takes: its page id, XORed with its stream's id so that two
/// streams' pages spread differently (the page ids of one stream's consecutive pages are an odd
/// stride apart, so they fill every slot before one repeats).
fn recent_slot(stream_id: &[u8; STREAM_ID_LEN], page_id: u64) -> usize {
    let stream = u64::from_le_bytes(stream_id[..8].try_into().expect("8 bytes"));
    ((page_id ^ stream) as usize) & (RECENT_SLOTS - 1)
}

/// Asks the CPU to bring `len` bytes at `offset` of the frame at `frame` into its cache, for
/// writing (a hint: no effect on what the program does, and none off x86-64).
fn prefetch_for_write(frame: *mut u8, offset: usize, len: usize) {
    assert!(offset + len <= PAGE_SIZE);
    #[cfg(target_arch = "x86_64")]
    for line in (offset..offset + len).step_by(CACHE_LINE) {
        // SAFETY: `line` is inside the frame (asserted above); a prefetch never faults and
        // reads or writes nothing the program sees.
        unsafe {
            use core::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
            _mm_prefetch::<_MM_HINT_ET0>(frame.add(line).cast::<i8>());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (frame, CACHE_LINE);
}

/// Puts a verified piece where it belongs: a fragment at its offset in the frame, the parity
/// piece in the entry's buffer.
fn store(e: &mut Entry<'_>, parity: bool, offset: usize, src: &[u8]) {
    if parity {
        e.parity[..src.len()].copy_from_slice(src);
    } else {
        e.frame
            .with_page_mut(|page| page[offset..offset + src.len()].copy_from_slice(src));
    }
}
