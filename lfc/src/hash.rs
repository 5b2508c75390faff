//! Placement of a tag: one 64-bit keyed hash whose bit ranges feed the home index bucket, the entry
//! fingerprint, the lwlsn slot, the requested-table line and the arrival channel (the ranges start
//! at different bits but may overlap for large tables; each table only needs its own index to be
//! well spread). The seed is random per file, so page placement cannot be aimed at one bucket.
//!
//! Owns: the hash function and which bits feed which table. Pure functions: stores nothing and
//! reads no shared memory; the caller passes the file's seed and every table size.

use crate::tag::BufferTag;

/// splitmix64's finaliser: cheap, and every input bit affects every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TagHash(pub u64);

impl TagHash {
    pub fn of(tag: &BufferTag, seed: u64) -> TagHash {
        let a = u64::from(tag.rel.spcnode) | (u64::from(tag.rel.dbnode) << 32);
        let b = u64::from(tag.rel.relnode) | (u64::from(tag.blkno) << 32);
        let c = u64::from(tag.rel.forknum);
        let mut h = mix(seed ^ 0x9e37_79b9_7f4a_7c15);
        h = mix(h ^ a);
        h = mix(h.wrapping_add(b));
        TagHash(mix(h ^ c))
    }

    /// Home bucket index in `0..buckets` from the high 32 bits (multiply-shift, no modulo bias that
    /// matters at these sizes).
    pub fn bucket(self, buckets: u64) -> u64 {
        ((self.0 >> 32) * buckets) >> 32
    }

    /// 7-bit fingerprint stored next to the frame number in an index entry.
    pub fn fingerprint(self) -> u32 {
        (self.0 & 0x7f) as u32
    }

    /// Slot in a power-of-two table (lwlsn); uses bits independent of the bucket.
    pub fn lwlsn_slot(self, slots: u64) -> u64 {
        (self.0 >> 7) & (slots - 1)
    }

    /// Line (of 8 entries) in the power-of-two requested table.
    pub fn requested_line(self, lines: u64) -> u64 {
        (self.0 >> 9) & (lines - 1)
    }

    /// 24-bit non-zero key identifying the tag inside a requested line, from the top bits: the
    /// line index takes bits 9 and up, and a key sharing them would tell apart only the few
    /// tags of a line that differ outside them (it once took bits 7..31, so two tags of one line
    /// had equal keys about once in a thousand, and each such prefetch was skipped as "already
    /// requested" and then waited for in vain).
    pub fn requested_key(self) -> u64 {
        ((self.0 >> 40) & 0xff_ffff) | 1
    }

    pub fn arrival_channel(self, channels: usize) -> usize {
        ((self.0 >> 13) as usize) & (channels - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tag::RelTag;
    use std::collections::HashMap;

    #[test]
    fn tags_sharing_a_requested_line_have_distinct_keys() {
        // 200k pages of a scan over 16384 lines (a 1 Mi-page cache): about 12 tags a line, 1.2M
        // pairs sharing a line. Independent 24-bit keys collide about 0.07 times in that many;
        // keys that reuse the line bits collide about a thousand times.
        let lines = 1u64 << 14;
        let rel = RelTag::new(1663, 5, 16384, 0);
        let mut seen: HashMap<(u64, u64), u32> = HashMap::new();
        let mut collisions = 0;
        for blkno in 0..200_000u32 {
            let h = TagHash::of(&rel.block(blkno), 0x5eed);
            let n = seen
                .entry((h.requested_line(lines), h.requested_key()))
                .or_default();
            collisions += *n;
            *n += 1;
        }
        assert!(collisions <= 2, "{collisions} key collisions within lines");
    }
}
