//! The prewarm state file: which pages were cached, hottest first, as compact ranges.
//!
//! ```text
//! "UDPFPREW"  8 bytes magic
//! u32         format version (1)
//! u32         flags (0)
//! u64         range count R
//! u64         page count (sum of range lengths)
//! R × 21      ranges: spcnode u32, dbnode u32, relnode u32, forknum u8, first u32, len u32
//! 32          BLAKE3 of everything above
//! ```
//! Little-endian. Hotness is kept in tiers: the hottest-first tag list is cut into tiers of
//! `TIER_PAGES`; each tier is sorted and merged into runs, and tiers are stored hottest first.
//! So a prewarm that stops early (full cache, deadline) has loaded the hottest pages, and
//! sequential runs still compress to one range each.
//!
//! Owns: the format (magic, version, the `TIER_PAGES` tiering, the `MAX_PAGES` bound, the digest
//! check). Bytes in, bytes out: it opens no file (the `prewarm` command reads and writes it) and
//! touches no LFC, clock, socket or page server.

use lfc::{BufferTag, RelTag, MAX_FORKNUM};

pub const MAGIC: [u8; 8] = *b"UDPFPREW";
pub const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8;
const RANGE_LEN: usize = 21;
const DIGEST_LEN: usize = 32;
/// Pages per hotness tier.
pub const TIER_PAGES: usize = 4096;
/// Largest state a file may describe (1 Ti pages of 8 KiB would be 8 PiB: far beyond any LFC).
pub const MAX_PAGES: u64 = 1 << 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRange {
    pub rel: RelTag,
    pub first: u32,
    pub len: u32,
}

impl PageRange {
    pub fn tags(&self) -> impl Iterator<Item = BufferTag> + '_ {
        (self.first..self.first + self.len).map(|b| self.rel.block(b))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("not a prewarm state file (bad magic)")]
    BadMagic,
    #[error("prewarm state format version {found} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion { found: u32 },
    #[error("prewarm state file is truncated ({len} bytes, expected {expected})")]
    Truncated { len: usize, expected: usize },
    #[error("prewarm state file is corrupt: {0}")]
    Corrupt(&'static str),
}

/// Ranges from a hottest-first tag list (see the module docs for the tiering).
pub fn ranges_from_hottest(tags: &[BufferTag]) -> Vec<PageRange> {
    let mut out: Vec<PageRange> = Vec::new();
    for tier in tags.chunks(TIER_PAGES) {
        let mut sorted = tier.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let tier_start = out.len();
        for tag in sorted {
            let extends = out.len() > tier_start
                && out.last().is_some_and(|r| {
                    r.rel == tag.rel
                        && r.first.checked_add(r.len) == Some(tag.blkno)
                        && r.len < u32::MAX
                });
            match out.last_mut() {
                Some(r) if extends => r.len += 1,
                _ => out.push(PageRange {
                    rel: tag.rel,
                    first: tag.blkno,
                    len: 1,
                }),
            }
        }
    }
    out
}

pub fn encode(ranges: &[PageRange]) -> Vec<u8> {
    let pages: u64 = ranges.iter().map(|r| u64::from(r.len)).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + ranges.len() * RANGE_LEN + DIGEST_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(ranges.len() as u64).to_le_bytes());
    out.extend_from_slice(&pages.to_le_bytes());
    for r in ranges {
        out.extend_from_slice(&r.rel.spcnode.to_le_bytes());
        out.extend_from_slice(&r.rel.dbnode.to_le_bytes());
        out.extend_from_slice(&r.rel.relnode.to_le_bytes());
        out.push(r.rel.forknum);
        out.extend_from_slice(&r.first.to_le_bytes());
        out.extend_from_slice(&r.len.to_le_bytes());
    }
    let digest = blake3::hash(&out);
    out.extend_from_slice(digest.as_bytes());
    out
}

pub fn decode(bytes: &[u8]) -> Result<Vec<PageRange>, StateError> {
    if bytes.len() < 8 || bytes[..8] != MAGIC {
        return Err(StateError::BadMagic);
    }
    if bytes.len() < HEADER_LEN + DIGEST_LEN {
        return Err(StateError::Truncated {
            len: bytes.len(),
            expected: HEADER_LEN + DIGEST_LEN,
        });
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let version = u32_at(8);
    if version != VERSION {
        return Err(StateError::UnsupportedVersion { found: version });
    }
    if u32_at(12) != 0 {
        return Err(StateError::Corrupt("unknown flags"));
    }
    let count = u64_at(16);
    let pages = u64_at(24);
    let expected = (count as u128) * RANGE_LEN as u128 + (HEADER_LEN + DIGEST_LEN) as u128;
    if expected != bytes.len() as u128 {
        return Err(if (bytes.len() as u128) < expected {
            StateError::Truncated {
                len: bytes.len(),
                expected: usize::try_from(expected).unwrap_or(usize::MAX),
            }
        } else {
            StateError::Corrupt("length does not match the range count")
        });
    }
    let body_end = bytes.len() - DIGEST_LEN;
    if blake3::hash(&bytes[..body_end]).as_bytes() != &bytes[body_end..] {
        return Err(StateError::Corrupt("checksum mismatch"));
    }
    let mut ranges = Vec::with_capacity(count as usize);
    let mut total = 0u64;
    for i in 0..count as usize {
        let at = HEADER_LEN + i * RANGE_LEN;
        let rel = RelTag::new(u32_at(at), u32_at(at + 4), u32_at(at + 8), bytes[at + 12]);
        let (first, len) = (u32_at(at + 13), u32_at(at + 17));
        if rel.forknum > MAX_FORKNUM || len == 0 || first.checked_add(len).is_none() {
            return Err(StateError::Corrupt("invalid range"));
        }
        total += u64::from(len);
        ranges.push(PageRange { rel, first, len });
    }
    if total != pages || total > MAX_PAGES {
        return Err(StateError::Corrupt("page count does not match the ranges"));
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rel(n: u32) -> RelTag {
        RelTag::new(1663, 5, n, 0)
    }

    #[test]
    fn sequential_runs_compress_and_tiers_keep_hotness() {
        let hot: Vec<BufferTag> = (0..100).map(|b| rel(1).block(b)).collect();
        let ranges = ranges_from_hottest(&hot);
        assert_eq!(
            ranges,
            vec![PageRange {
                rel: rel(1),
                first: 0,
                len: 100
            }]
        );
        let mut two_tiers: Vec<BufferTag> =
            (0..TIER_PAGES as u32).map(|b| rel(2).block(b)).collect();
        two_tiers.push(rel(1).block(0));
        let ranges = ranges_from_hottest(&two_tiers);
        assert_eq!(ranges[0].rel, rel(2), "hottest tier first");
        assert_eq!(
            ranges[1],
            PageRange {
                rel: rel(1),
                first: 0,
                len: 1
            }
        );
    }

    #[test]
    fn bad_files_are_typed_errors() {
        let good = encode(&[PageRange {
            rel: rel(1),
            first: 5,
            len: 10,
        }]);
        assert_eq!(decode(&good).unwrap().len(), 1);
        assert_eq!(decode(b""), Err(StateError::BadMagic));
        assert_eq!(decode(b"garbage!garbage!"), Err(StateError::BadMagic));
        assert!(matches!(
            decode(&good[..good.len() - 1]),
            Err(StateError::Truncated { .. })
        ));
        assert!(matches!(
            decode(&good[..20]),
            Err(StateError::Truncated { .. })
        ));
        let mut v2 = good.clone();
        v2[8] = 2;
        assert_eq!(
            decode(&v2),
            Err(StateError::UnsupportedVersion { found: 2 })
        );
        let mut flipped = good.clone();
        flipped[40] ^= 1;
        assert_eq!(
            decode(&flipped),
            Err(StateError::Corrupt("checksum mismatch"))
        );
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    proptest! {
        #[test]
        fn round_trips_every_page_once(blocks in prop::collection::vec((1u32..4, 0u32..5000), 0..3000)) {
            let tags: Vec<BufferTag> = blocks.iter().map(|&(r, b)| rel(r).block(b)).collect();
            let ranges = ranges_from_hottest(&tags);
            let decoded = decode(&encode(&ranges)).unwrap();
            prop_assert_eq!(&decoded, &ranges);
            let mut from_ranges: Vec<BufferTag> = decoded.iter().flat_map(|r| r.tags().collect::<Vec<_>>()).collect();
            let mut want = tags.clone();
            from_ranges.sort_unstable();
            want.sort_unstable();
            want.dedup();
            // Duplicates across tiers may appear twice in the ranges; as a set they match.
            from_ranges.dedup();
            prop_assert_eq!(from_ranges, want);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..500)) {
            let _ = decode(&bytes);
        }
    }
}
