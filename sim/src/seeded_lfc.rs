//! A real LFC whose random header fields come from the seed.
//!
//! `Lfc::create` draws the datagram key, key id and the tag-hash seed from `getrandom`. The hash
//! seed decides bucket placement, lwlsn-table and request-table collisions, so it changes which
//! pages are evicted and which prefetches are refused: a run would not replay bit for bit from
//! its seed. `Lfc::create_seeded` takes them from the caller instead.
//!
//! Owns: how the three values are drawn from the seed (a stream of its own). Knows nothing of
//! the LFC's header layout.

use crate::rng::Rng;
use lfc::{AttachError, Lfc, Secrets};
use std::path::Path;

/// Creates an LFC at `path` with `capacity_pages`, its key, key id and hash seed a function of
/// `seed`.
pub fn create(path: &Path, capacity_pages: u64, seed: u64) -> Result<Lfc, AttachError> {
    let mut rng = Rng::stream(seed, 0x1FC);
    let mut key = [0u8; 32];
    for chunk in key.chunks_exact_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let key_id = rng.next_u64() as u32;
    let hash_seed = rng.next_u64();
    Lfc::create_seeded(
        path,
        capacity_pages,
        Secrets {
            key,
            key_id,
            hash_seed,
        },
    )
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
