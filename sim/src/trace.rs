//! The event trace: a digest of every event (two runs of one seed must agree on it bit for bit)
//! and a bounded ring of the latest events for failure reports.
//!
//! Owns: the digest, the ring and the event kinds. Imports nothing of ours and never feeds back
//! into a run: `world` records into it, and `UDPF_SIM_TRACE=1` only adds printing to stderr.

use std::collections::VecDeque;

/// Events kept for the excerpt printed with a violation.
pub const TRACE_RING: usize = 96;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ReadStart,
    ReadHit,
    ReadLateHit,
    ReadTcp,
    WaitStart,
    WaitTimeout,
    Fetch,

    Prefetch,
    /// A backend moved between UDP prefetch and TCP pipelining (a = backend, b = 0 for UDP).
    PathChange,
    PrefetchQueued,
    PrefetchOverflow,
    PutApplied,
    WriteDone,
    SealSkipped,
    Sent,
    Lost,
    Partitioned,
    TailDrop,
    Delivered,
    Installed,
    Dropped,
    Forged,
    Replayed,
    Corrupted,
    PrewarmRound,
    PrewarmFetch,
    PrewarmDone,
    BackendDone,
    GetPageServed,
    /// A Prefetch that reached a connection with no PrefetchTarget, dropped by its session
    /// (a = shard, b = first block, c = pages).
    PrefetchWithoutTarget,
}

/// One traced event: time, kind and three kind-specific numbers (tags are packed as
/// `relnode << 32 | blkno`).
#[derive(Debug, Clone, Copy)]
pub struct Record {
    pub at_ns: u64,
    pub kind: Kind,
    pub a: u64,
    pub b: u64,
    pub c: u64,
}

impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>14.3} us  {:<16} {} {} {}",
            self.at_ns as f64 / 1e3,
            format!("{:?}", self.kind),
            self.a,
            self.b,
            self.c
        )
    }
}

#[derive(Debug)]
pub struct Trace {
    ring: VecDeque<Record>,
    digest: u64,
    records: u64,
}

impl Default for Trace {
    fn default() -> Self {
        Trace {
            ring: VecDeque::with_capacity(TRACE_RING),
            digest: 0xcbf2_9ce4_8422_2325,
            records: 0,
        }
    }
}

/// `UDPF_SIM_TRACE=1` prints every event to stderr as it is recorded: a debugging aid for
/// reading one seed's run whole (the violation report keeps only the last events).
fn print_all() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("UDPF_SIM_TRACE").is_some_and(|v| v == "1"))
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Trace {
    pub fn record(&mut self, at_ns: u64, kind: Kind, a: u64, b: u64, c: u64) {
        // Order-sensitive chaining: any difference in any event changes the digest.
        for v in [at_ns, kind as u64, a, b, c] {
            self.digest = mix(self.digest ^ v).wrapping_add(0x9e37_79b9_7f4a_7c15);
        }
        self.records += 1;
        if print_all() {
            eprintln!(
                "{}",
                Record {
                    at_ns,
                    kind,
                    a,
                    b,
                    c
                }
            );
        }
        if self.ring.len() == TRACE_RING {
            self.ring.pop_front();
        }
        self.ring.push_back(Record {
            at_ns,
            kind,
            a,
            b,
            c,
        });
    }

    /// With `UDPF_SIM_TRACE=1`, prints `text` among the events (not part of the digest): what
    /// the numbers of an event do not say, such as why a backend changed paths.
    pub fn note(&self, at_ns: u64, text: impl std::fmt::Display) {
        if print_all() {
            eprintln!("{:>14.3} us  note: {text}", at_ns as f64 / 1e3);
        }
    }

    pub fn digest(&self) -> u64 {
        self.digest
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// The last `n` events, oldest first.
    pub fn excerpt(&self, n: usize) -> Vec<String> {
        let skip = self.ring.len().saturating_sub(n);
        self.ring.iter().skip(skip).map(|r| r.to_string()).collect()
    }
}
