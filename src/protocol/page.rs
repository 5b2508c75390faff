//! PostgreSQL page helpers: the data checksum (`pg_checksum_page`), the page header fields this
//! system reads, and verification of a page fetched from anywhere.
//!
//! Owns: the header fields it reads and writes (LSN, checksum), the checksum algorithm, the
//! verification rules (`PageVerify`) and the synthetic pages and relations. Pure functions over a
//! `Page`: no I/O, no clock, no LFC (of `lfc` only the tag types and `PAGE_SIZE`), and nothing else
//! of this crate.

use lfc::{BufferTag, RelTag, PAGE_SIZE};

/// One PostgreSQL page.
pub type Page = [u8; PAGE_SIZE];

/// Byte offset of `pd_checksum` in `PageHeaderData`.
const PD_CHECKSUM_OFFSET: usize = 8;
/// Size of `PageHeaderData` without line pointers.
pub const PAGE_HEADER_SIZE: usize = 24;
/// `PG_PAGE_LAYOUT_VERSION` (PostgreSQL 8.3 and later).
const PAGE_LAYOUT_VERSION: u16 = 4;
/// `PD_VALID_FLAG_BITS`: a page with any other `pd_flags` bit set is corrupt.
const PD_VALID_FLAG_BITS: u16 = 0x0007;

const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
/// Initial states of the 32 parallel FNV-1a lanes, fixed by PostgreSQL's `checksum_impl.h`:
/// changing any of them changes every checksum.
const CHECKSUM_BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

#[inline(always)]
fn checksum_comp(sum: &mut u32, value: u32) {
    let tmp = *sum ^ value;
    *sum = tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17);
}

/// `pg_checksum_block`: the page is read as native-endian 32-bit words, exactly as PostgreSQL
/// does on the machine that wrote it (checksums are not portable across endianness either).
fn checksum_block(page: &Page, zero_checksum_field: bool) -> u32 {
    let mut sums = CHECKSUM_BASE_OFFSETS;
    for (row, chunk) in page.chunks_exact(4 * N_SUMS).enumerate() {
        for (j, word) in chunk.chunks_exact(4).enumerate() {
            let mut value = u32::from_ne_bytes(word.try_into().expect("4-byte chunk"));
            // pd_checksum (bytes 8..10) counts as zero while the checksum is computed.
            if zero_checksum_field && row == 0 && j == PD_CHECKSUM_OFFSET / 4 {
                let mut bytes = value.to_ne_bytes();
                bytes[0] = 0;
                bytes[1] = 0;
                value = u32::from_ne_bytes(bytes);
            }
            checksum_comp(&mut sums[j], value);
        }
    }
    // Two rounds of zeroes for additional mixing.
    for _ in 0..2 {
        for sum in sums.iter_mut() {
            checksum_comp(sum, 0);
        }
    }
    sums.iter().fold(0, |acc, s| acc ^ s)
}

/// `pg_checksum_page`: the 16-bit data checksum PostgreSQL stores in `pd_checksum`, which mixes
/// in the block number so a page written at the wrong block does not verify.
pub fn pg_checksum_page(page: &Page, blkno: u32) -> u16 {
    let checksum = checksum_block(page, true) ^ blkno;
    // Reduce to 1..=65535 so that 0 never appears as a valid checksum.
    ((checksum % 65535) + 1) as u16
}

/// The page's LSN (`pd_lsn`): stored as two native-endian 32-bit halves, high half first.
pub fn page_lsn(page: &Page) -> u64 {
    let hi = u32::from_ne_bytes(page[0..4].try_into().expect("4 bytes"));
    let lo = u32::from_ne_bytes(page[4..8].try_into().expect("4 bytes"));
    (u64::from(hi) << 32) | u64::from(lo)
}

pub fn set_page_lsn(page: &mut Page, lsn: u64) {
    page[0..4].copy_from_slice(&((lsn >> 32) as u32).to_ne_bytes());
    page[4..8].copy_from_slice(&(lsn as u32).to_ne_bytes());
}

pub fn stored_checksum(page: &Page) -> u16 {
    u16::from_ne_bytes([page[PD_CHECKSUM_OFFSET], page[PD_CHECKSUM_OFFSET + 1]])
}

/// Computes and stores the checksum for the page at `blkno`.
pub fn set_checksum(page: &mut Page, blkno: u32) {
    let sum = pg_checksum_page(page, blkno);
    page[PD_CHECKSUM_OFFSET..PD_CHECKSUM_OFFSET + 2].copy_from_slice(&sum.to_ne_bytes());
}

/// What verifying a page found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCheck {
    /// Header is sane and, where the cluster has data checksums, the checksum matches.
    Valid,
    /// An all-zero page: PostgreSQL accepts these (a relation extended but not yet written).
    New,
    /// The stored checksum does not match the contents at this block number.
    BadChecksum { stored: u16, computed: u16 },
    /// The header is impossible: offsets `PageIsVerified` would reject, another layout
    /// version or page size, unknown flags, or (verifying without checksums) a `pd_lsn` beyond
    /// the LSN served.
    BadHeader,
}

impl PageCheck {
    pub fn is_ok(self) -> bool {
        matches!(self, PageCheck::Valid | PageCheck::New)
    }
}

fn header_u16(page: &Page, offset: usize) -> u16 {
    u16::from_ne_bytes([page[offset], page[offset + 1]])
}

/// How pages are verified: the cluster decides, by whether it maintains data checksums
/// (`data_checksum_version` in `pg_control`, PostgreSQL's `data_checksums` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageVerify {
    /// The cluster has data checksums (`initdb -k`; every synthetic page has one): the
    /// header's sanity and `pd_checksum`, as `PageIsVerified` does.
    Checksums,
    /// No data checksums (a stock `initdb`): `pd_checksum` is never set, so only the header's
    /// sanity, and `pd_lsn` not beyond `max_lsn` (the LSN served; `u64::MAX` for no bound),
    /// since a page cannot carry WAL that has not been written yet.
    Header { max_lsn: u64 },
}

impl PageVerify {
    /// The verification for a cluster whose `pg_control` says `data_checksum_version`
    /// (0: none; 1: `PG_DATA_CHECKSUM_VERSION`), serving pages as of `max_lsn`.
    pub fn for_cluster(data_checksum_version: u32, max_lsn: u64) -> PageVerify {
        if data_checksum_version == 0 {
            PageVerify::Header { max_lsn }
        } else {
            PageVerify::Checksums
        }
    }
}

/// Verifies a page as PostgreSQL's `PageIsVerified` does with data checksums enabled.
pub fn verify_page(page: &Page, blkno: u32) -> PageCheck {
    verify_page_as(page, blkno, PageVerify::Checksums)
}

/// Verifies the page at `blkno` the way `how` says (see [`PageVerify`]).
pub fn verify_page_as(page: &Page, blkno: u32, how: PageVerify) -> PageCheck {
    let lower = header_u16(page, 12);
    let upper = header_u16(page, 14);
    let special = header_u16(page, 16);
    if upper == 0 {
        return if page.iter().all(|&b| b == 0) {
            PageCheck::New
        } else {
            PageCheck::BadHeader
        };
    }
    let size = PAGE_SIZE as u16;
    let size_version = header_u16(page, 18);
    let sane = lower as usize >= PAGE_HEADER_SIZE
        && lower <= upper
        && upper <= special
        && special <= size
        && special.is_multiple_of(8)
        && size_version == size | PAGE_LAYOUT_VERSION
        && header_u16(page, 10) & !PD_VALID_FLAG_BITS == 0;
    if !sane {
        return PageCheck::BadHeader;
    }
    let max_lsn = match how {
        PageVerify::Checksums => None,
        PageVerify::Header { max_lsn } => Some(max_lsn),
    };
    if let Some(max_lsn) = max_lsn {
        return if page_lsn(page) <= max_lsn {
            PageCheck::Valid
        } else {
            PageCheck::BadHeader
        };
    }
    let stored = stored_checksum(page);
    let computed = pg_checksum_page(page, blkno);
    if stored == computed {
        PageCheck::Valid
    } else {
        PageCheck::BadChecksum { stored, computed }
    }
}

/// PostgreSQL's default tablespace.
pub const DEFAULT_TABLESPACE: u32 = 1663;
/// Database of the synthetic relations and the relfilenode of the first one.
pub const SYNTHETIC_DBNODE: u32 = 5;
pub const SYNTHETIC_FIRST_RELNODE: u32 = 16384;
/// LSN of every synthetic page's initial version.
pub const SYNTHETIC_BASE_LSN: u64 = 16;

/// The `i`th synthetic relation, `1663/5/16384+i/0`: what the page server's synthetic source
/// serves, named here so that the compute side (and its tests) need not ask the server.
pub fn synthetic_rel(i: u32) -> RelTag {
    RelTag::new(
        DEFAULT_TABLESPACE,
        SYNTHETIC_DBNODE,
        SYNTHETIC_FIRST_RELNODE + i,
        0,
    )
}

/// A deterministic 64-bit mix (SplitMix64's finaliser) used to seed synthetic page contents.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn synthetic_seed(tag: BufferTag, lsn: u64) -> u64 {
    let r = tag.rel;
    let mut h = mix64(u64::from(r.spcnode) << 32 | u64::from(r.dbnode));
    h = mix64(h ^ (u64::from(r.relnode) << 8 | u64::from(r.forknum)));
    h = mix64(h ^ u64::from(tag.blkno));
    mix64(h ^ lsn)
}

/// Fills `page` with the synthetic version of `tag` at `lsn`: a valid header (`pd_lsn = lsn`,
/// whole page as tuple space) and pseudo-random contents derived from (tag, lsn), checksummed.
/// Any client can regenerate it to check that a page is exactly the version it claims to be.
pub fn fill_synthetic_page(page: &mut Page, tag: BufferTag, lsn: u64) {
    let mut state = synthetic_seed(tag, lsn);
    for chunk in page[PAGE_HEADER_SIZE..].chunks_exact_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        chunk.copy_from_slice(&mix64(state).to_le_bytes());
    }
    page[..PAGE_HEADER_SIZE].fill(0);
    set_page_lsn(page, lsn);
    let size = PAGE_SIZE as u16;
    page[12..14].copy_from_slice(&(PAGE_HEADER_SIZE as u16).to_ne_bytes()); // pd_lower
    page[14..16].copy_from_slice(&(PAGE_HEADER_SIZE as u16).to_ne_bytes()); // pd_upper
    page[16..18].copy_from_slice(&size.to_ne_bytes()); // pd_special
    page[18..20].copy_from_slice(&(size | PAGE_LAYOUT_VERSION).to_ne_bytes());
    set_checksum(page, tag.blkno);
}

pub fn synthetic_page(tag: BufferTag, lsn: u64) -> Box<Page> {
    let mut page = Box::new([0u8; PAGE_SIZE]);
    fill_synthetic_page(&mut page, tag, lsn);
    page
}

/// True when `page` is exactly the synthetic version of `tag` at the LSN its header names.
pub fn is_synthetic_page(page: &Page, tag: BufferTag) -> bool {
    let mut expected = [0u8; PAGE_SIZE];
    fill_synthetic_page(&mut expected, tag, page_lsn(page));
    expected[..] == page[..]
}

/// Formats an LSN the way PostgreSQL prints it (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn as u32)
}

/// Parses `X/Y` (PostgreSQL notation), a decimal number, or `max`/`latest`.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("max") || s.eq_ignore_ascii_case("latest") {
        return Some(u64::MAX);
    }
    match s.split_once('/') {
        Some((hi, lo)) => {
            let hi = u32::from_str_radix(hi, 16).ok()?;
            let lo = u32::from_str_radix(lo, 16).ok()?;
            Some(u64::from(hi) << 32 | u64::from(lo))
        }
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lfc::RelTag;
    use proptest::prelude::*;

    fn tag(blkno: u32) -> BufferTag {
        RelTag::new(1663, 5, 16384, 0).block(blkno)
    }

    #[test]
    fn synthetic_pages_verify_and_carry_their_lsn() {
        for blkno in [0, 1, 7, 4096, u32::MAX - 1] {
            let page = synthetic_page(tag(blkno), 16);
            assert_eq!(verify_page(&page, blkno), PageCheck::Valid);
            assert_eq!(page_lsn(&page), 16);
            assert!(is_synthetic_page(&page, tag(blkno)));
            // The block number is mixed in: the same page at another block does not verify.
            assert!(matches!(
                verify_page(&page, blkno ^ 1),
                PageCheck::BadChecksum { .. }
            ));
            assert!(!is_synthetic_page(&page, tag(blkno ^ 1)));
        }
        assert_ne!(
            synthetic_page(tag(3), 16)[..],
            synthetic_page(tag(3), 17)[..]
        );
    }

    #[test]
    fn zero_page_is_new_and_garbage_header_is_rejected() {
        let zero = [0u8; PAGE_SIZE];
        assert_eq!(verify_page(&zero, 0), PageCheck::New);
        let mut bad = *synthetic_page(tag(0), 16);
        bad[14..16].copy_from_slice(&10u16.to_ne_bytes()); // pd_upper below pd_lower
        assert_eq!(verify_page(&bad, 0), PageCheck::BadHeader);
    }

    #[test]
    fn without_checksums_the_header_decides() {
        let mut page = *synthetic_page(tag(3), 16);
        page[PD_CHECKSUM_OFFSET..PD_CHECKSUM_OFFSET + 2].fill(0); // never set without -k
        let header = |max_lsn| PageVerify::Header { max_lsn };
        assert!(matches!(
            verify_page(&page, 3),
            PageCheck::BadChecksum { stored: 0, .. }
        ));
        assert_eq!(verify_page_as(&page, 3, header(16)), PageCheck::Valid);
        assert_eq!(verify_page_as(&page, 3, header(u64::MAX)), PageCheck::Valid);
        // A page from beyond the LSN served.
        assert_eq!(verify_page_as(&page, 3, header(15)), PageCheck::BadHeader);
        assert_eq!(
            verify_page_as(&[0u8; PAGE_SIZE], 3, header(0)),
            PageCheck::New
        );
        let broken = |at: usize, value: u16| {
            let mut p = page;
            p[at..at + 2].copy_from_slice(&value.to_ne_bytes());
            verify_page_as(&p, 3, header(u64::MAX))
        };
        assert_eq!(broken(12, 8), PageCheck::BadHeader); // pd_lower inside the header
        assert_eq!(broken(14, 16), PageCheck::BadHeader); // pd_upper below pd_lower
        assert_eq!(broken(16, 8200), PageCheck::BadHeader); // pd_special beyond the page
        assert_eq!(broken(18, 8192 | 3), PageCheck::BadHeader); // layout version 3
        assert_eq!(broken(18, 4096 | 4), PageCheck::BadHeader); // 4 KiB pages
        assert_eq!(broken(10, 0x8), PageCheck::BadHeader); // unknown pd_flags bit
        assert_eq!(broken(10, 0x7), PageCheck::Valid);
        assert_eq!(
            PageVerify::for_cluster(0, 7),
            PageVerify::Header { max_lsn: 7 }
        );
        assert_eq!(PageVerify::for_cluster(1, 7), PageVerify::Checksums);
    }

    #[test]
    fn lsn_notation_round_trips() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("200"), Some(200));
        assert_eq!(parse_lsn("max"), Some(u64::MAX));
        assert_eq!(parse_lsn("x/1"), None);
    }

    proptest! {
        #[test]
        fn any_single_byte_flip_breaks_verification(blkno in 0u32..1_000_000, at in 0usize..PAGE_SIZE, bit in 0u8..8) {
            let mut page = *synthetic_page(tag(blkno), 42);
            page[at] ^= 1 << bit;
            prop_assert!(!is_synthetic_page(&page, tag(blkno)));
        }
    }
}
