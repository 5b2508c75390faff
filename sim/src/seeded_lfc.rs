//! A real LFC whose random header fields come from the seed.
//!
//! `Lfc::create` draws the datagram key, key id and the tag-hash seed from `getrandom`. The hash
//! seed decides bucket placement, lwlsn-table and request-table collisions, so it changes which
//! pages are evicted and which prefetches are refused: a run would not replay bit for bit from
//! its seed. The `lfc` crate has no seeded constructor, so this rewrites those three header
//! fields of a freshly created (still unused) file and re-opens it through `Lfc::open`, which
//! validates the whole header again. If the header format ever changes, the version check and
//! the key cross-check below turn that into an error instead of a silently random run.
//! (A `Lfc::create_seeded` in the `lfc` crate would make this module unnecessary.)
//!
//! Owns: a copy of the LFC header's offsets and checksum (`OFF_*`, `fnv1a`). Writes the file only
//! between dropping the `Lfc` that created it and `Lfc::open`, and rewrites only the key, key id,
//! hash seed and checksum.

use crate::rng::Rng;
use lfc::{AttachError, Lfc, FORMAT_VERSION};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

const HEADER_LEN: usize = 256;
const OFF_VERSION: usize = 8;
const OFF_KEY: usize = 104;
const OFF_KEY_ID: usize = 136;
const OFF_HASH_SEED: usize = 152;
const OFF_CHECKSUM: usize = HEADER_LEN - 8;
/// Header formats whose fixed header has these offsets (format 2 changed the index, format 3
/// added the timeline binding after the fixed header; neither moved a field of it).
const KNOWN_FORMAT_VERSIONS: [u32; 3] = [1, 2, 3];

#[derive(Debug, thiserror::Error)]
pub enum SeededLfcError {
    #[error(transparent)]
    Lfc(#[from] AttachError),
    #[error("LFC header: {0}")]
    Io(#[from] std::io::Error),
    #[error("LFC header format {found} is not one the simulator knows ({KNOWN_FORMAT_VERSIONS:?}); update sim/src/seeded_lfc.rs")]
    UnknownFormat { found: u32 },
    #[error("LFC header layout changed: the key is not where the simulator expects it")]
    LayoutChanged,
}

/// The header checksum (FNV-1a 64 over the header before the checksum field).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Creates an LFC at `path` with `capacity_pages`, then makes its key, key id and hash seed a
/// function of `seed`.
pub fn create(path: &Path, capacity_pages: u64, seed: u64) -> Result<Lfc, SeededLfcError> {
    if !KNOWN_FORMAT_VERSIONS.contains(&FORMAT_VERSION) {
        return Err(SeededLfcError::UnknownFormat {
            found: FORMAT_VERSION,
        });
    }
    let random = Lfc::create(path, capacity_pages)?;
    let (old_key, old_key_id) = (random.key(), random.key_id());
    drop(random);

    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut h = [0u8; HEADER_LEN];
    file.read_exact_at(&mut h, 0)?;
    let version = u32::from_le_bytes(h[OFF_VERSION..OFF_VERSION + 4].try_into().expect("4"));
    if version != FORMAT_VERSION {
        return Err(SeededLfcError::UnknownFormat { found: version });
    }
    if h[OFF_KEY..OFF_KEY + 32] != old_key
        || h[OFF_KEY_ID..OFF_KEY_ID + 4] != old_key_id.to_le_bytes()
        || u64::from_le_bytes(h[OFF_CHECKSUM..].try_into().expect("8")) != fnv1a(&h[..OFF_CHECKSUM])
    {
        return Err(SeededLfcError::LayoutChanged);
    }
    let mut rng = Rng::stream(seed, 0x1FC);
    let mut key = [0u8; 32];
    for chunk in key.chunks_exact_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let key_id = (rng.next_u64() as u32).max(1);
    let hash_seed = rng.next_u64();
    h[OFF_KEY..OFF_KEY + 32].copy_from_slice(&key);
    h[OFF_KEY_ID..OFF_KEY_ID + 4].copy_from_slice(&key_id.to_le_bytes());
    h[OFF_HASH_SEED..OFF_HASH_SEED + 8].copy_from_slice(&hash_seed.to_le_bytes());
    let sum = fnv1a(&h[..OFF_CHECKSUM]);
    h[OFF_CHECKSUM..].copy_from_slice(&sum.to_le_bytes());
    file.write_all_at(&h, 0)?;
    drop(file);

    let lfc = Lfc::open(path)?;
    if lfc.key() != key || lfc.key_id() != key_id {
        return Err(SeededLfcError::LayoutChanged);
    }
    Ok(lfc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_placement() {
        let dir = tempfile::tempdir().unwrap();
        let a = create(&dir.path().join("a"), 64, 9).unwrap();
        let b = create(&dir.path().join("b"), 64, 9).unwrap();
        let c = create(&dir.path().join("c"), 64, 10).unwrap();
        assert_eq!(a.key(), b.key());
        let tag = lfc::RelTag::new(1663, 5, 16384, 0);
        let slots = |l: &Lfc| {
            (0..64)
                .map(|i| l.lwlsn_slot_of(&tag.block(i)))
                .collect::<Vec<_>>()
        };
        assert_eq!(slots(&a), slots(&b));
        assert_ne!(slots(&a), slots(&c));
        assert_ne!(a.key(), c.key());
    }
}
