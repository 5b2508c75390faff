//! Workload and fault-schedule operations. A run is a seed (topology, fault rates, every random
//! choice) plus a list of these; proptest shrinks the list, so each operation is meaningful on
//! its own and every index is taken modulo the actual topology.
//!
//! Owns: `Op`, `ForgeKind`, a seed's generated workload and the `--ops` JSON form. Plain data:
//! imports no core and knows no topology; `world` maps each index onto the topology and carries
//! the operation out.

use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// Most operations one run accepts (bounds a replayed `--ops` list too).
pub const MAX_OPS: usize = 256;

/// What an attacker puts on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForgeKind {
    /// Random bytes of random length.
    Random,
    /// A well-formed datagram sealed with a key the compute does not have (right key id).
    WrongKey,
    /// A well-formed datagram under another key id.
    WrongKeyId,
    /// Right size and header for a real page, garbage where the tag should be.
    RightShape,
}

impl ForgeKind {
    pub const ALL: [ForgeKind; 4] = [
        ForgeKind::Random,
        ForgeKind::WrongKey,
        ForgeKind::WrongKeyId,
        ForgeKind::RightShape,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Sequential scan of `len` blocks from `start`, prefetching `distance` blocks ahead.
    Scan {
        backend: u8,
        rel: u8,
        start: u16,
        len: u16,
        distance: u16,
    },
    /// `count` reads of random blocks of the hot region; the first `prefetch` of them are
    /// prefetched before reading (an index scan's lookahead).
    RandomReads {
        backend: u8,
        count: u8,
        prefetch: u8,
    },
    /// PutPage at a new LSN, then `write` (or `set_lwlsn`) in the LFC.
    Write {
        backend: u8,
        rel: u8,
        blkno: u16,
        set_lwlsn: bool,
    },
    /// The backend does nothing for a while.
    Pause { backend: u8, us: u16 },
    /// Prewarm a saved state of `pages` tags (`gone` of which no longer exist).
    Prewarm { pages: u16, gone: u8 },
    /// Link `shard` drops everything in the window.
    Partition { shard: u8, at_us: u32, len_us: u32 },
    /// Link `shard` holds everything in the window and releases it at the end.
    Clog { shard: u8, at_us: u32, len_us: u32 },
    /// The attacker sends `count` datagrams of `kind` at `at_us`.
    Forge {
        at_us: u32,
        count: u8,
        kind: ForgeKind,
    },
    /// The network re-delivers `count` recorded datagrams at `at_us`.
    Replay { at_us: u32, count: u8 },
}

impl Op {
    /// Whether the operation is a fault (network window, attacker, replay) rather than work.
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            Op::Partition { .. } | Op::Clog { .. } | Op::Forge { .. } | Op::Replay { .. }
        )
    }
}

/// The blocks writes and random reads concentrate on, so they race with scans and prefetches.
pub const HOT_BLOCKS: u32 = 24;

/// The workload of seed `seed` when no explicit list is given.
pub fn generate(seed: u64) -> Vec<Op> {
    let mut rng = Rng::stream(seed, 0x0F5);
    let n = rng.range(6, 28) as usize;
    let mut ops = Vec::with_capacity(n + 4);
    for _ in 0..n {
        ops.push(random_op(&mut rng));
    }
    // Writes racing with prefetches in flight: most seeds get a writer hammering the hot
    // blocks while the scans below read them.
    if rng.chance(0.7) {
        let backend = rng.below(4) as u8;
        let rel = rng.below(4) as u8;
        for _ in 0..rng.range(4, 24) {
            ops.push(Op::Write {
                backend,
                rel,
                blkno: rng.below(u64::from(HOT_BLOCKS)) as u16,
                set_lwlsn: rng.chance(0.4),
            });
            ops.push(Op::Pause {
                backend,
                us: rng.range(10, 500) as u16,
            });
        }
    }
    // Several backends prefetching the same pages: most seeds get overlapping scans.
    if rng.chance(0.7) {
        let rel = rng.below(4) as u8;
        let start = rng.below(8) as u16;
        for backend in 0..rng.range(2, 4) as u8 {
            ops.push(Op::Scan {
                backend,
                rel,
                start,
                len: rng.range(16, 96) as u16,
                distance: rng.range(1, 32) as u16,
            });
        }
    }
    ops
}

fn random_op(rng: &mut Rng) -> Op {
    let backend = rng.below(4) as u8;
    match rng.below(100) {
        0..=34 => Op::Scan {
            backend,
            rel: rng.below(4) as u8,
            start: rng.below(64) as u16,
            len: rng.range(1, 128) as u16,
            distance: rng.range(1, 64) as u16,
        },
        35..=54 => Op::RandomReads {
            backend,
            count: rng.range(1, 48) as u8,
            prefetch: rng.below(16) as u8,
        },
        55..=79 => Op::Write {
            backend,
            rel: rng.below(4) as u8,
            blkno: rng.below(u64::from(HOT_BLOCKS) * 2) as u16,
            set_lwlsn: rng.chance(0.4),
        },
        80..=84 => Op::Pause {
            backend,
            us: rng.range(10, 3_000) as u16,
        },
        85..=89 => Op::Prewarm {
            pages: rng.range(1, 48) as u16,
            gone: rng.below(4) as u8,
        },
        90..=92 => Op::Partition {
            shard: rng.below(3) as u8,
            at_us: rng.below(20_000) as u32,
            len_us: rng.range(100, 5_000) as u32,
        },
        93..=95 => Op::Clog {
            shard: rng.below(3) as u8,
            at_us: rng.below(20_000) as u32,
            len_us: rng.range(100, 5_000) as u32,
        },
        96..=97 => Op::Forge {
            at_us: rng.below(20_000) as u32,
            count: rng.range(1, 32) as u8,
            kind: ForgeKind::ALL[rng.below(4) as usize],
        },
        _ => Op::Replay {
            at_us: rng.below(30_000) as u32,
            count: rng.range(1, 16) as u8,
        },
    }
}

/// Parses an `--ops` list (the JSON the failure report prints).
pub fn parse_ops(json: &str) -> Result<Vec<Op>, String> {
    let ops: Vec<Op> = serde_json::from_str(json).map_err(|e| format!("--ops: {e}"))?;
    if ops.len() > MAX_OPS {
        return Err(format!("--ops: at most {MAX_OPS} operations"));
    }
    Ok(ops)
}

pub fn ops_json(ops: &[Op]) -> String {
    serde_json::to_string(ops).unwrap_or_else(|_| "[]".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_workloads_round_trip_through_the_replay_format() {
        for seed in 0..50 {
            let ops = generate(seed);
            assert_eq!(ops, generate(seed));
            assert_eq!(parse_ops(&ops_json(&ops)).unwrap(), ops);
            assert!(!ops_json(&ops).contains('\''), "must fit in single quotes");
        }
        assert!(parse_ops("[{\"nope\":1}]").is_err());
        assert!(parse_ops("not json").is_err());
    }
}
