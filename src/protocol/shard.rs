//! Which page-server shard owns a page: Neon's striping, bit for bit.
//!
//! A sharded tenant's relation blocks are cut into stripes of `stripe_pages` consecutive blocks,
//! and each stripe lives on one of `count` shards. The owner is Neon's `key_to_shard_number`
//! (`libs/pageserver_api/src/shard.rs`), which the compute evaluates as `get_shard_number` in
//! `pgxn/neon/libpagestore.c`: PostgreSQL's `murmurhash32` of the relation number, combined
//! (`hash_combine`, `common/hashfn.h`) with `murmurhash32(blkno / stripe_pages)`, modulo the
//! count. A tenant of fewer than two shards maps everything to shard 0, and so does a key that
//! is not a relation block (relation number 0, or block `InvalidBlockNumber`, Neon's
//! relation-size key): Neon keeps those on shard 0 alone (`key_is_shard0`), and with them the
//! init fork of an unlogged relation (fork 3), which a basebackup must include. Tablespace and
//! database take no part, nor does any other fork, so a block's main, FSM and VM forks live
//! together. (The compute's `get_shard_number` does not look at the fork: this follows the
//! page server, which decides where a page is stored.)
//!
//! The page server checks its own share with [`ShardIdentity`] (`--shard I/N`); the compute
//! routes with [`ShardLayout::shard_of`]. The simulator uses the same function: a second copy
//! of the hash anywhere would be the one way for the two sides to disagree.
//!
//! Owns: the routing function, its constants (`DEFAULT_STRIPE_PAGES`, `MAX_SHARDS`, `INIT_FORKNUM`)
//! and the three views of it. Pure arithmetic except `ShardMap::connect`, which opens one
//! `PageClient` per shard; it reads no clock and touches no LFC (of `lfc` only the tag types).

use crate::protocol::client::{ClientError, ConnectOptions, PageClient};
use lfc::{BufferTag, RelTag};
use std::ops::Range;

/// Neon's default stripe since 2025: 16 MiB of 8 KiB pages (it was 32768, 256 MiB, before).
pub const DEFAULT_STRIPE_PAGES: u32 = 2048;

/// The most shards a tenant can have (Neon's `ShardCount` is a `u8`).
pub const MAX_SHARDS: usize = u8::MAX as usize;

/// `InvalidBlockNumber`: Neon's relation-size key carries it in the block field.
const INVALID_BLOCK: u32 = u32::MAX;

/// PostgreSQL's `INIT_FORKNUM`: an unlogged relation's init fork, kept on shard 0.
pub const INIT_FORKNUM: u8 = 3;

/// PostgreSQL's `murmurhash32` (`src/include/common/hashfn.h`): the 32-bit MurmurHash3
/// finalizer.
fn murmurhash32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// PostgreSQL's `hash_combine` (`src/include/common/hashfn.h`), 32-bit.
fn hash_combine(a: u32, b: u32) -> u32 {
    a ^ b
        .wrapping_add(0x9e37_79b9)
        .wrapping_add(a << 6)
        .wrapping_add(a >> 2)
}

/// Neon's `key_to_shard_number` for a relation block: the shard of block `blkno` of fork
/// `forknum` of the relation `relnode` in a tenant of `count` shards striped every
/// `stripe_pages` blocks. `stripe_pages` must not be 0 (Neon refuses such a layout;
/// [`ShardLayout::new`] does too).
pub fn key_to_shard_number(
    count: u8,
    stripe_pages: u32,
    relnode: u32,
    forknum: u8,
    blkno: u32,
) -> u8 {
    if count < 2 || relnode == 0 || blkno == INVALID_BLOCK || forknum == INIT_FORKNUM {
        return 0;
    }
    let hash = hash_combine(murmurhash32(relnode), murmurhash32(blkno / stripe_pages));
    (hash % u32::from(count)) as u8
}

/// How a tenant's pages are spread: the shard count and the stripe size. Copy, two words: the
/// compute routes every request through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLayout {
    count: u8,
    stripe_pages: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("a tenant has 1 to {MAX_SHARDS} shards, not {0}")]
    Count(usize),
    #[error("the stripe size must be at least 1 page")]
    Stripe,
    #[error("shard {number} does not exist in a tenant of {count} shards (numbers run from 0 to {})", count - 1)]
    Number { number: u32, count: u32 },
    #[error("a shard is given as I/N (shard I of N, counting from 0, e.g. 1/3), not {0:?}")]
    Syntax(String),
}

impl ShardLayout {
    /// One page server holds everything (an unsharded tenant).
    pub const SINGLE: ShardLayout = ShardLayout {
        count: 1,
        stripe_pages: DEFAULT_STRIPE_PAGES,
    };

    pub fn new(count: usize, stripe_pages: u32) -> Result<ShardLayout, ShardError> {
        if count == 0 || count > MAX_SHARDS {
            return Err(ShardError::Count(count));
        }
        if stripe_pages == 0 {
            return Err(ShardError::Stripe);
        }
        Ok(ShardLayout {
            count: count as u8,
            stripe_pages,
        })
    }

    pub fn count(&self) -> usize {
        usize::from(self.count)
    }

    pub fn stripe_pages(&self) -> u32 {
        self.stripe_pages
    }

    /// The shard that owns `tag`, from 0 to `count() - 1`.
    #[inline]
    pub fn shard_of(&self, tag: &BufferTag) -> usize {
        usize::from(key_to_shard_number(
            self.count,
            self.stripe_pages,
            tag.rel.relnode,
            tag.rel.forknum,
            tag.blkno,
        ))
    }

    /// `blocks` of `rel` cut where the owner may change (stripe boundaries), in block order,
    /// each piece with its shard. One piece for a single shard.
    pub fn split(
        &self,
        rel: RelTag,
        blocks: Range<u32>,
    ) -> impl Iterator<Item = (usize, Range<u32>)> {
        let layout = *self;
        let mut next = blocks.start;
        std::iter::from_fn(move || {
            if next >= blocks.end {
                return None;
            }
            let start = next;
            next = if layout.count < 2 || rel.forknum == INIT_FORKNUM {
                blocks.end
            } else {
                // The start of the next stripe, or the end of the range.
                let stripe_end =
                    (u64::from(start / layout.stripe_pages) + 1) * u64::from(layout.stripe_pages);
                stripe_end.min(u64::from(blocks.end)) as u32
            };
            Some((layout.shard_of(&rel.block(start)), start..next))
        })
    }
}

/// One page server's place in its tenant: shard `number` of `layout` (`--shard I/N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardIdentity {
    number: u8,
    layout: ShardLayout,
}

impl ShardIdentity {
    /// The only shard of an unsharded tenant: owns every page.
    pub const SINGLE: ShardIdentity = ShardIdentity {
        number: 0,
        layout: ShardLayout::SINGLE,
    };

    pub fn new(number: usize, layout: ShardLayout) -> Result<ShardIdentity, ShardError> {
        if number >= layout.count() {
            return Err(ShardError::Number {
                number: number as u32,
                count: layout.count() as u32,
            });
        }
        Ok(ShardIdentity {
            number: number as u8,
            layout,
        })
    }

    /// `I/N` (shard I of N, from 0) with the given stripe size.
    pub fn parse(s: &str, stripe_pages: u32) -> Result<ShardIdentity, ShardError> {
        let syntax = || ShardError::Syntax(s.to_string());
        let (i, n) = s.split_once('/').ok_or_else(syntax)?;
        let i: usize = i.trim().parse().map_err(|_| syntax())?;
        let n: usize = n.trim().parse().map_err(|_| syntax())?;
        ShardIdentity::new(i, ShardLayout::new(n, stripe_pages)?)
    }

    pub fn number(&self) -> usize {
        usize::from(self.number)
    }

    pub fn layout(&self) -> ShardLayout {
        self.layout
    }

    /// The shard that owns `tag` when it is not this one.
    #[inline]
    pub fn owner_if_other(&self, tag: &BufferTag) -> Option<usize> {
        let owner = self.layout.shard_of(tag);
        (owner != self.number()).then_some(owner)
    }
}

impl std::fmt::Display for ShardIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.number, self.layout.count)
    }
}

/// Where a sharded tenant's page servers are, as a compute is told (`--server` once per shard,
/// in shard order, and `--stripe-pages`). No servers: the one of the `ConnectOptions` at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    pub servers: Vec<String>,
    pub stripe_pages: u32,
}

impl Default for ShardMap {
    fn default() -> Self {
        ShardMap {
            servers: Vec::new(),
            stripe_pages: DEFAULT_STRIPE_PAGES,
        }
    }
}

/// A shard's page server could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("page server shard {shard}/{count} ({addr}): {source}")]
pub struct ShardConnectError {
    pub shard: usize,
    pub count: usize,
    pub addr: String,
    #[source]
    pub source: ClientError,
}

impl ShardMap {
    /// `servers` in shard order (one: an unsharded tenant).
    pub fn new(servers: Vec<String>, stripe_pages: u32) -> ShardMap {
        ShardMap {
            servers,
            stripe_pages,
        }
    }

    /// Shard `s`'s connection options: `opts` with its address (`opts`'s own when the map lists
    /// no server).
    pub fn shard_options(&self, s: usize, opts: &ConnectOptions) -> ConnectOptions {
        let mut opts = opts.clone();
        if let Some(addr) = self.servers.get(s) {
            opts.addr = addr.clone();
        }
        opts
    }

    /// The routing: as many shards as servers (one when none are listed).
    pub fn layout(&self) -> Result<ShardLayout, ShardError> {
        ShardLayout::new(self.servers.len().max(1), self.stripe_pages)
    }

    /// Connects to every shard, in shard order, with `opts` (its address stands for the only
    /// server when the map lists none). An unsharded tenant's error is the connection's own.
    pub fn connect(&self, opts: &ConnectOptions) -> Result<Vec<PageClient>, anyhow::Error> {
        self.layout()?;
        if self.servers.len() <= 1 {
            return Ok(vec![PageClient::connect(&self.shard_options(0, opts))?]);
        }
        let count = self.servers.len();
        self.servers
            .iter()
            .enumerate()
            .map(|(shard, addr)| {
                PageClient::connect(&self.shard_options(shard, opts)).map_err(|source| {
                    ShardConnectError {
                        shard,
                        count,
                        addr: addr.clone(),
                        source,
                    }
                    .into()
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Neon's own spot checks (`libs/pageserver_api/src/shard.rs`, tests `murmur_hash` and
    /// `shard_mapping`): relation 0x400c, block 0x7d06, 10 shards, the old default stripe of
    /// 32768 pages → shard 8.
    #[test]
    fn neon_spot_checks() {
        assert_eq!(murmurhash32(0), 0);
        assert_eq!(hash_combine(0xb1ff_3b40, 0), 0xfb79_23c9);
        assert_eq!(key_to_shard_number(10, 32768, 0x400c, 0, 0x7d06), 8);
    }

    /// (relnode, blkno, shard count, stripe pages) → shard. Computed outside this crate by a
    /// separate evaluation of `get_shard_number` from `pgxn/neon/libpagestore.c` with
    /// PostgreSQL's `hashfn.h` (unsigned 32-bit arithmetic, masked), not by this code.
    const GOLDEN: &[(u32, u32, u8, u32, u8)] = &[
        (1259, 0, 4, 32768, 2),
        (1259, 2048, 3, 2048, 2),
        (1259, 4096, 3, 1, 0),
        (1259, 4096, 3, 2048, 2),
        (1259, 32767, 8, 1, 6),
        (1259, 32768, 2, 2048, 0),
        (1259, 32768, 8, 1, 6),
        (2619, 2047, 3, 32768, 2),
        (2619, 4095, 3, 1, 2),
        (2619, 4096, 3, 1, 0),
        (2619, 4096, 4, 2048, 0),
        (2619, 32767, 2, 32768, 0),
        (2619, 32767, 8, 2048, 1),
        (2619, 32768, 3, 1, 1),
        (2619, 32768, 3, 32768, 1),
        (16384, 2047, 3, 2048, 1),
        (16384, 2047, 8, 32768, 4),
        (16384, 2048, 2, 8, 1),
        (16384, 2048, 2, 2048, 1),
        (16384, 2048, 4, 32768, 0),
        (16384, 2048, 8, 1, 2),
        (16384, 2048, 8, 32768, 4),
        (16384, 4095, 3, 32768, 1),
        (16384, 4095, 4, 2048, 3),
        (16384, 4096, 4, 1, 1),
        (16384, 4096, 8, 1, 1),
        (16384, 32767, 2, 1, 0),
        (16384, 32768, 8, 2048, 0),
        (16384, 4294967294, 4, 2048, 0),
        (16385, 2048, 4, 32768, 1),
        (16385, 4095, 2, 2048, 0),
        (16385, 4095, 3, 1, 2),
        (16385, 4096, 3, 2048, 2),
        (16396, 0, 2, 2048, 0),
        (16396, 0, 3, 8, 0),
        (16396, 1, 4, 2048, 2),
        (4294967294, 2047, 4, 1, 1),
        (4294967294, 2047, 8, 2048, 6),
        (4294967294, 4095, 8, 32768, 6),
        (4294967294, 100000, 2, 32768, 1),
        // A single shard owns everything.
        (16384, 123456, 1, 2048, 0),
        (4294967294, 0, 1, 1, 0),
    ];

    #[test]
    fn routing_matches_neon_golden_table() {
        for &(relnode, blkno, count, stripe, want) in GOLDEN {
            let rel = RelTag::new(1663, 5, relnode, 0);
            let layout = ShardLayout::new(usize::from(count), stripe).unwrap();
            assert_eq!(
                layout.shard_of(&rel.block(blkno)),
                usize::from(want),
                "relnode {relnode} block {blkno} of {count} shards, stripe {stripe}"
            );
            // Tablespace, database and the FSM and VM forks take no part.
            for fork in [1, 2] {
                let other = RelTag::new(1, 2, relnode, fork);
                assert_eq!(layout.shard_of(&other.block(blkno)), usize::from(want));
            }
        }
    }

    #[test]
    fn keys_neon_keeps_on_shard_zero() {
        let layout = ShardLayout::new(8, 1).unwrap();
        // Relation number 0 is not a relation block; block InvalidBlockNumber is the size key.
        for blkno in [0, 1, 7, 1000] {
            assert_eq!(layout.shard_of(&RelTag::new(1663, 5, 0, 0).block(blkno)), 0);
        }
        let rel = RelTag::new(1663, 5, 16384, 0);
        assert_eq!(layout.shard_of(&rel.block(u32::MAX)), 0);
        // An unlogged relation's init fork, whatever the block (`key_is_shard0`); a range of it
        // is one piece, on shard 0.
        let init = RelTag::new(1663, 5, 16384, INIT_FORKNUM);
        assert!((0..256).all(|b| layout.shard_of(&init.block(b)) == 0));
        assert_eq!(
            layout.split(init, 0..20).collect::<Vec<_>>(),
            vec![(0, 0..20)]
        );
        // ...while the blocks of a real relation spread over all eight.
        let mut seen = [false; 8];
        for b in 0..256 {
            seen[layout.shard_of(&rel.block(b))] = true;
        }
        assert_eq!(seen, [true; 8]);
    }

    #[test]
    fn a_stripe_stays_on_one_shard_and_split_cuts_at_stripe_ends() {
        let layout = ShardLayout::new(3, 4).unwrap();
        let rel = RelTag::new(1663, 5, 16384, 0);
        let pieces: Vec<_> = layout.split(rel, 2..13).collect();
        let ranges: Vec<_> = pieces.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(ranges, vec![2..4, 4..8, 8..12, 12..13]);
        for (shard, r) in &pieces {
            for b in r.clone() {
                assert_eq!(layout.shard_of(&rel.block(b)), *shard);
            }
        }
        assert_eq!(
            ShardLayout::SINGLE
                .split(rel, 0..100_000)
                .collect::<Vec<_>>(),
            vec![(0, 0..100_000)]
        );
        assert_eq!(layout.split(rel, 5..5).count(), 0);
        // The last stripe of the block space does not overflow.
        let end: Vec<_> = layout.split(rel, u32::MAX - 5..u32::MAX).collect();
        assert_eq!(end.last().unwrap().1.end, u32::MAX);
    }

    #[test]
    fn shard_flags_parse_or_say_why_not() {
        let s = ShardIdentity::parse("1/3", 2048).unwrap();
        assert_eq!((s.number(), s.layout().count()), (1, 3));
        assert_eq!(s.to_string(), "1/3");
        assert_eq!(
            ShardIdentity::parse("3/3", 2048).unwrap_err().to_string(),
            "shard 3 does not exist in a tenant of 3 shards (numbers run from 0 to 2)"
        );
        assert!(matches!(
            ShardIdentity::parse("1-3", 2048),
            Err(ShardError::Syntax(_))
        ));
        assert_eq!(ShardIdentity::parse("0/0", 2048), Err(ShardError::Count(0)));
        assert_eq!(ShardIdentity::parse("0/2", 0), Err(ShardError::Stripe));
        assert_eq!(
            ShardIdentity::parse("0/256", 1),
            Err(ShardError::Count(256))
        );
        let rel = RelTag::new(1663, 5, 16384, 0);
        let owner = ShardLayout::new(3, 2048).unwrap().shard_of(&rel.block(0));
        let me = ShardIdentity::new(owner, ShardLayout::new(3, 2048).unwrap()).unwrap();
        assert_eq!(me.owner_if_other(&rel.block(0)), None);
        let other = ShardIdentity::new((owner + 1) % 3, me.layout()).unwrap();
        assert_eq!(other.owner_if_other(&rel.block(0)), Some(owner));
    }
}
