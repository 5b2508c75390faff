//! On-disk layout: the fixed header (encoded explicitly, little-endian, so a garbage file can be
//! parsed without any unsafe reinterpretation) and the geometry that every attached process
//! derives from the capacity alone.
//!
//! ```text
//! 0      fixed header (256 B: magic, version, geometry, key, creator, checksum)
//! 256    clock hand            (own cache line)
//! 320    global lwlsn floor    (own cache line)
//! 384    free-frame count      (own cache line; a hint, never above the true count)
//! 448    free-frame hand       (own cache line)
//! 512    daemon record         (heartbeat + generation line, seqlocked record line; see
//!                               `daemon`)
//! 768    timeline binding      (state word, tenant, timeline, system identifier; zero =
//!                               unbound; see `binding`)
//! 1024   stats: STAT_STRIPES stripes x STAT_COUNTERS u64
//! 4096   arrival channels: ARRIVAL_CHANNELS x (futex seq u32, waiters u32)
//! 6144   sender table: datagrams per sender (see `senders`; zero = empty)
//! 8192   frame metadata: capacity x 64 B
//!        index buckets: (buckets + OVERFLOW_WINDOW) x 64 B (homes, then overflow-only spill)
//!        lwlsn table: lwlsn_slots x u64
//!        requested table: requested_slots x u64
//!        (pad to 4 KiB) page data: capacity x 8192 B
//! ```

use crate::error::AttachError;
use crate::tag::PAGE_SIZE;
use std::path::Path;

pub const MAGIC: [u8; 8] = *b"UPLFC\0\r\n";
/// 2: bucket lock words carry an overflow distance and the index has `OVERFLOW_WINDOW` spill
/// buckets after the homes.
/// 3: the timeline binding at `BINDING_OFFSET`. Its zeros would read as "unbound" in a version 2
/// file, but a version 2 build attaching a bound version 3 cache would ignore the binding and
/// fill it with another timeline's pages, so the versions refuse each other.
/// 4: a frame's usage word carries `UNREAD` (bit 31) beside its count. A version 3 build would
/// read a marked page's usage as a count in the billions, never take it, and end its claims
/// with no room.
pub const FORMAT_VERSION: u32 = 4;

/// Length of the encoded fixed header; the file must be at least this long to be parsed.
pub const FIXED_HEADER_LEN: usize = 256;

pub const HAND_OFFSET: usize = 256;
pub const GLOBAL_LWLSN_OFFSET: usize = 320;
pub const FREE_COUNT_OFFSET: usize = 384;
pub const FREE_HAND_OFFSET: usize = 448;
/// The worker daemon's record and lock byte (mutable runtime area, outside the checksummed
/// header).
pub const DAEMON_OFFSET: usize = 512;
pub const DAEMON_BYTES: usize = 256;
/// The timeline binding (mutable runtime area, outside the checksummed header: it is recorded
/// after creation, by the first backend). Zero in a new file = unbound.
pub const BINDING_OFFSET: usize = 768;
pub const BINDING_BYTES: usize = 256;
const _: () = assert!(
    FREE_HAND_OFFSET + 64 <= DAEMON_OFFSET
        && DAEMON_OFFSET + DAEMON_BYTES <= BINDING_OFFSET
        && BINDING_OFFSET + BINDING_BYTES <= STATS_OFFSET
        && DAEMON_OFFSET.is_multiple_of(64)
        && BINDING_OFFSET.is_multiple_of(64)
);
pub const STATS_OFFSET: usize = 1024;
pub const STAT_STRIPES: usize = 16;
pub const STAT_COUNTERS: usize = 24;
pub const ARRIVAL_OFFSET: usize = 4096;
pub const ARRIVAL_CHANNELS: usize = 256;
/// Datagrams per sender (mutable runtime area; zero in a new file and in a file from a build
/// that did not have it, which reads as "no sender", so it needed no new format version).
pub const SENDERS_OFFSET: usize = 6144;
pub const SENDERS_BYTES: usize = 2048;
const _: () = assert!(
    ARRIVAL_OFFSET + ARRIVAL_CHANNELS * 8 <= SENDERS_OFFSET
        && SENDERS_OFFSET + SENDERS_BYTES <= META_OFFSET
        && SENDERS_OFFSET.is_multiple_of(64)
);
pub const META_OFFSET: usize = 8192;

pub const META_BYTES: usize = 64;
pub const BUCKET_BYTES: usize = 64;
/// Index entries per bucket: one lock word plus 15 entries fill a cache line.
pub const BUCKET_ENTRIES: usize = 15;
/// A full home bucket overflows into the next `OVERFLOW_WINDOW` buckets. The index ends with
/// that many overflow-only buckets, so every home has the whole window and no window wraps
/// (which keeps "lower index first" a total lock order). At mean load 7.5 of 15, 65 consecutive
/// full buckets do not happen by chance; see the `cache` module.
pub const OVERFLOW_WINDOW: u64 = 64;
const _: () = assert!(OVERFLOW_WINDOW <= crate::bucket::MAX_DIST as u64);

/// Index entries pack frame number + 1 into the low 25 bits (the rest is a tag fingerprint; 0
/// marks an empty entry), so frame numbers stay below 2^25 - 2 (256 GiB of pages).
pub const MAX_CAPACITY_PAGES: u64 = (1 << 25) - 2;

const DATA_ALIGN: usize = 4096;

// Field offsets inside the fixed header.
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_HEADER_LEN: usize = 12;
const OFF_PAGE_SIZE: usize = 16;
const OFF_META_BYTES: usize = 20;
const OFF_CAPACITY: usize = 24;
const OFF_BUCKETS: usize = 32;
const OFF_LWLSN_SLOTS: usize = 40;
const OFF_REQUESTED_SLOTS: usize = 48;
const OFF_META: usize = 56;
const OFF_BUCKET: usize = 64;
const OFF_LWLSN: usize = 72;
const OFF_REQUESTED: usize = 80;
const OFF_DATA: usize = 88;
const OFF_FILE_LEN: usize = 96;
const OFF_KEY: usize = 104;
const OFF_KEY_ID: usize = 136;
const OFF_CREATOR_PID: usize = 140;
const OFF_CREATED_MS: usize = 144;
const OFF_HASH_SEED: usize = 152;
const OFF_BOOT_ID: usize = 160;
const OFF_CHECKSUM: usize = FIXED_HEADER_LEN - 8;

/// Where everything lives, derived deterministically from the capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub capacity_pages: u64,
    pub buckets: u64,
    pub lwlsn_slots: u64,
    pub requested_slots: u64,
    pub meta_offset: u64,
    pub bucket_offset: u64,
    pub lwlsn_offset: u64,
    pub requested_offset: u64,
    pub data_offset: u64,
    pub file_len: u64,
}

impl Geometry {
    pub fn for_capacity(capacity_pages: u64) -> Result<Geometry, AttachError> {
        if capacity_pages == 0 || capacity_pages > MAX_CAPACITY_PAGES {
            return Err(AttachError::BadCapacity {
                requested: capacity_pages,
                max: MAX_CAPACITY_PAGES,
            });
        }
        // Two index entries per page keeps the mean home load at 7.5 of 15, so a home overflows
        // into its neighbours only rarely (about 1 % of homes at full occupancy).
        let buckets = (capacity_pages * 2).div_ceil(BUCKET_ENTRIES as u64).max(1);
        // The lwlsn table only holds pages that are *not* cached; a quarter of the capacity keeps
        // collisions (which only make the install check more conservative) uncommon.
        let lwlsn_slots = (capacity_pages / 4).next_power_of_two().max(1024);
        // Requested marks live for a bounded TTL, so only the in-flight window needs room.
        let requested_slots = (capacity_pages / 8).next_power_of_two().max(1024);
        let meta_offset = META_OFFSET as u64;
        let bucket_offset = meta_offset + capacity_pages * META_BYTES as u64;
        let lwlsn_offset = bucket_offset + (buckets + OVERFLOW_WINDOW) * BUCKET_BYTES as u64;
        let requested_offset = lwlsn_offset + lwlsn_slots * 8;
        let data_offset =
            (requested_offset + requested_slots * 8).next_multiple_of(DATA_ALIGN as u64);
        let file_len = data_offset + capacity_pages * PAGE_SIZE as u64;
        Ok(Geometry {
            capacity_pages,
            buckets,
            lwlsn_slots,
            requested_slots,
            meta_offset,
            bucket_offset,
            lwlsn_offset,
            requested_offset,
            data_offset,
            file_len,
        })
    }

    /// Index buckets including the overflow-only spill after the homes.
    pub fn index_buckets(&self) -> u64 {
        self.buckets + OVERFLOW_WINDOW
    }

    /// Bytes spent on everything but page data, as a fraction of the page data.
    pub fn metadata_fraction(&self) -> f64 {
        let data = self.capacity_pages as f64 * PAGE_SIZE as f64;
        (self.data_offset as f64) / data
    }
}

/// The immutable part of the header, as stored in the first 256 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    pub geometry: Geometry,
    pub key: [u8; 32],
    pub key_id: u32,
    pub creator_pid: u32,
    pub created_unix_ms: u64,
    pub hash_seed: u64,
    /// Kernel boot id at creation: page contents written through a shared mapping are not
    /// crash-consistent on disk, so a file from an earlier boot must never be trusted.
    pub boot_id: [u8; 16],
}

fn put_u32(b: &mut [u8; FIXED_HEADER_LEN], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8; FIXED_HEADER_LEN], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(b: &[u8; FIXED_HEADER_LEN], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(w)
}

fn get_u64(b: &[u8; FIXED_HEADER_LEN], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

/// FNV-1a 64: enough to catch a corrupt or hand-edited header; not a security measure (the file
/// is 0600 and anyone who can write it can also write a matching checksum).
fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl FixedHeader {
    pub fn encode(&self) -> [u8; FIXED_HEADER_LEN] {
        let g = &self.geometry;
        let mut b = [0u8; FIXED_HEADER_LEN];
        b[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&MAGIC);
        put_u32(&mut b, OFF_VERSION, FORMAT_VERSION);
        put_u32(&mut b, OFF_HEADER_LEN, FIXED_HEADER_LEN as u32);
        put_u32(&mut b, OFF_PAGE_SIZE, PAGE_SIZE as u32);
        put_u32(&mut b, OFF_META_BYTES, META_BYTES as u32);
        put_u64(&mut b, OFF_CAPACITY, g.capacity_pages);
        put_u64(&mut b, OFF_BUCKETS, g.buckets);
        put_u64(&mut b, OFF_LWLSN_SLOTS, g.lwlsn_slots);
        put_u64(&mut b, OFF_REQUESTED_SLOTS, g.requested_slots);
        put_u64(&mut b, OFF_META, g.meta_offset);
        put_u64(&mut b, OFF_BUCKET, g.bucket_offset);
        put_u64(&mut b, OFF_LWLSN, g.lwlsn_offset);
        put_u64(&mut b, OFF_REQUESTED, g.requested_offset);
        put_u64(&mut b, OFF_DATA, g.data_offset);
        put_u64(&mut b, OFF_FILE_LEN, g.file_len);
        b[OFF_KEY..OFF_KEY + 32].copy_from_slice(&self.key);
        put_u32(&mut b, OFF_KEY_ID, self.key_id);
        put_u32(&mut b, OFF_CREATOR_PID, self.creator_pid);
        put_u64(&mut b, OFF_CREATED_MS, self.created_unix_ms);
        put_u64(&mut b, OFF_HASH_SEED, self.hash_seed);
        b[OFF_BOOT_ID..OFF_BOOT_ID + 16].copy_from_slice(&self.boot_id);
        let sum = checksum(&b[..OFF_CHECKSUM]);
        put_u64(&mut b, OFF_CHECKSUM, sum);
        b
    }

    /// Parses and validates a header read from `path`; `file_len` is the file's actual length.
    /// Every field that locates something is recomputed from the capacity and must match, so a
    /// validated header can never point outside the file.
    pub fn decode(
        path: &Path,
        b: &[u8; FIXED_HEADER_LEN],
        file_len: u64,
    ) -> Result<FixedHeader, AttachError> {
        check_identity(path, b)?;
        let geometry = decode_geometry(path, b, file_len)?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&b[OFF_KEY..OFF_KEY + 32]);
        let mut boot_id = [0u8; 16];
        boot_id.copy_from_slice(&b[OFF_BOOT_ID..OFF_BOOT_ID + 16]);
        Ok(FixedHeader {
            boot_id,
            geometry,
            key,
            key_id: get_u32(b, OFF_KEY_ID),
            creator_pid: get_u32(b, OFF_CREATOR_PID),
            created_unix_ms: get_u64(b, OFF_CREATED_MS),
            hash_seed: get_u64(b, OFF_HASH_SEED),
        })
    }
}

/// Checks that the header is an LFC header of this format version with a matching checksum.
fn check_identity(path: &Path, b: &[u8; FIXED_HEADER_LEN]) -> Result<(), AttachError> {
    let path_buf = || path.to_path_buf();
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&b[OFF_MAGIC..OFF_MAGIC + 8]);
    if magic != MAGIC {
        return Err(AttachError::BadMagic {
            path: path_buf(),
            found: magic,
        });
    }
    let version = get_u32(b, OFF_VERSION);
    if version != FORMAT_VERSION {
        return Err(AttachError::UnsupportedVersion {
            path: path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if get_u64(b, OFF_CHECKSUM) != checksum(&b[..OFF_CHECKSUM]) {
        return Err(AttachError::BadChecksum { path: path_buf() });
    }
    Ok(())
}

/// The header's geometry, if its fixed sizes are this build's, every stored offset is the one
/// recomputed from its capacity, and the file is exactly as long as it describes.
fn decode_geometry(
    path: &Path,
    b: &[u8; FIXED_HEADER_LEN],
    file_len: u64,
) -> Result<Geometry, AttachError> {
    let path_buf = || path.to_path_buf();
    let bad = |reason: String| AttachError::BadGeometry {
        path: path_buf(),
        reason,
    };
    let fixed = [
        (
            "header length",
            get_u32(b, OFF_HEADER_LEN),
            FIXED_HEADER_LEN as u32,
        ),
        ("page size", get_u32(b, OFF_PAGE_SIZE), PAGE_SIZE as u32),
        (
            "frame metadata size",
            get_u32(b, OFF_META_BYTES),
            META_BYTES as u32,
        ),
    ];
    for (what, found, want) in fixed {
        if found != want {
            return Err(bad(format!("{what} is {found}, expected {want}")));
        }
    }
    let capacity = get_u64(b, OFF_CAPACITY);
    let geometry = Geometry::for_capacity(capacity)
        .map_err(|_| bad(format!("capacity of {capacity} pages is out of range")))?;
    let stored = Geometry {
        capacity_pages: capacity,
        buckets: get_u64(b, OFF_BUCKETS),
        lwlsn_slots: get_u64(b, OFF_LWLSN_SLOTS),
        requested_slots: get_u64(b, OFF_REQUESTED_SLOTS),
        meta_offset: get_u64(b, OFF_META),
        bucket_offset: get_u64(b, OFF_BUCKET),
        lwlsn_offset: get_u64(b, OFF_LWLSN),
        requested_offset: get_u64(b, OFF_REQUESTED),
        data_offset: get_u64(b, OFF_DATA),
        file_len: get_u64(b, OFF_FILE_LEN),
    };
    if stored != geometry {
        return Err(bad(format!(
            "stored layout {stored:?} differs from the layout for {capacity} pages {geometry:?}"
        )));
    }
    if file_len < geometry.file_len {
        return Err(AttachError::Truncated {
            path: path_buf(),
            expected: geometry.file_len,
            actual: file_len,
        });
    }
    if file_len > geometry.file_len {
        return Err(bad(format!(
            "file is {file_len} bytes, longer than the {} its header describes",
            geometry.file_len
        )));
    }
    Ok(geometry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_is_aligned_and_metadata_stays_under_one_percent() {
        for cap in [
            1u64,
            7,
            1000,
            16_384,
            40_960,
            131_072,
            1 << 22,
            MAX_CAPACITY_PAGES,
        ] {
            let g = Geometry::for_capacity(cap).unwrap();
            assert_eq!(g.data_offset % 4096, 0);
            assert_eq!(g.bucket_offset % 64, 0);
            assert!(g.buckets * BUCKET_ENTRIES as u64 >= 2 * cap);
            assert_eq!(
                g.lwlsn_offset - g.bucket_offset,
                g.index_buckets() * BUCKET_BYTES as u64
            );
            if cap >= 16_384 {
                assert!(
                    g.metadata_fraction() < 0.01,
                    "{cap}: {}",
                    g.metadata_fraction()
                );
            }
        }
        assert!(Geometry::for_capacity(0).is_err());
        assert!(Geometry::for_capacity(MAX_CAPACITY_PAGES + 1).is_err());
    }

    #[test]
    fn header_round_trips_and_rejects_any_single_corruption() {
        let h = FixedHeader {
            geometry: Geometry::for_capacity(100).unwrap(),
            key: [7; 32],
            key_id: 42,
            creator_pid: 1234,
            created_unix_ms: 99,
            hash_seed: 5,
            boot_id: [3; 16],
        };
        let b = h.encode();
        let p = Path::new("x");
        assert_eq!(FixedHeader::decode(p, &b, h.geometry.file_len).unwrap(), h);
        assert!(matches!(
            FixedHeader::decode(p, &b, h.geometry.file_len - 1),
            Err(AttachError::Truncated { .. })
        ));
        for i in 0..FIXED_HEADER_LEN {
            let mut c = b;
            c[i] ^= 0x10;
            assert!(
                FixedHeader::decode(p, &c, h.geometry.file_len).is_err(),
                "byte {i}"
            );
        }
    }
}
