//! Helpers shared by the integration tests: self-verifying page contents, fresh caches.
#![allow(dead_code)]

pub mod tmpfs;
pub mod workload;

use lfc::{BufferTag, Lfc, RelTag, PAGE_SIZE};

const MAGIC: u64 = 0x4c46_4354_4553_5450; // "LFCTESTP"
const WORDS: usize = PAGE_SIZE / 8;
const BODY_START: usize = 6;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn tag_words(tag: &BufferTag) -> [u64; 3] {
    [
        u64::from(tag.rel.spcnode) << 32 | u64::from(tag.rel.dbnode),
        u64::from(tag.rel.relnode) << 32 | u64::from(tag.blkno),
        u64::from(tag.rel.forknum),
    ]
}

fn body_word(seed: u64, i: usize) -> u64 {
    mix(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn checksum(words: &[u64]) -> u64 {
    words
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, w| mix(h ^ w))
}

/// A page whose every byte is determined by (tag, lsn), with a checksum over the body.
pub fn make_page(tag: &BufferTag, lsn: u64) -> [u8; PAGE_SIZE] {
    let t = tag_words(tag);
    let seed = mix(t[0] ^ mix(t[1] ^ mix(t[2] ^ mix(lsn))));
    let mut words = [0u64; WORDS];
    for (i, w) in words.iter_mut().enumerate().skip(BODY_START) {
        *w = body_word(seed, i);
    }
    words[0] = MAGIC;
    words[1] = t[0];
    words[2] = t[1];
    words[3] = t[2];
    words[4] = lsn;
    words[5] = checksum(&words[BODY_START..]);
    let mut page = [0u8; PAGE_SIZE];
    for (chunk, w) in page.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    page
}

/// The LSN encoded in `page` if it is an intact page of `tag`; else why not.
pub fn check_page(tag: &BufferTag, page: &[u8; PAGE_SIZE]) -> Result<u64, String> {
    let mut words = [0u64; WORDS];
    for (w, chunk) in words.iter_mut().zip(page.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *w = u64::from_le_bytes(b);
    }
    if words[0] != MAGIC {
        return Err(format!("{tag}: bad magic {:#x}", words[0]));
    }
    let t = tag_words(tag);
    if words[1..4] != t {
        return Err(format!(
            "{tag}: page belongs to another tag {:?}",
            &words[1..4]
        ));
    }
    let lsn = words[4];
    if words[5] != checksum(&words[BODY_START..]) {
        return Err(format!(
            "{tag}: checksum mismatch (torn page?) at lsn {lsn}"
        ));
    }
    let expect = make_page(tag, lsn);
    if expect[..] != page[..] {
        return Err(format!(
            "{tag}: body differs from version {lsn} (torn page)"
        ));
    }
    Ok(lsn)
}

/// A fresh cache of `pages` pages in a directory of its own, removed when the `TempDir` drops.
pub fn new_cache(pages: u64) -> (tempfile::TempDir, Lfc) {
    let dir = tempfile::tempdir().unwrap();
    let lfc = Lfc::create(dir.path().join("lfc"), pages).unwrap();
    (dir, lfc)
}

pub fn tag(rel: u32, blk: u32) -> BufferTag {
    RelTag::new(1663, 5, rel, 0).block(blk)
}

/// Deterministic PRNG for test workloads (no clock, no global state).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
