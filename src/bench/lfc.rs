//! `udp-prefetch bench lfc`: cache lookup/install throughput against a memcpy loop, and CLOCK
//! hit ratios against an exact-LRU simulation.
//!
//! Throughput cases (pages/s, ARCHITECTURE §9): `memcpy-1t` copies random 8 KiB pages out of a
//! region as large as the cache, of the same kind of memory (a shared file mapping in the same
//! directory), into a local buffer; `lookup-1t` looks up random cached tags into a local buffer;
//! `install-1t` installs never-seen tags into the full cache (every install evicts); `publish-1t`
//! does the same through reserve / fill / publish; `memcpy-2t` and `lookup-2t` use two threads.
//! `install-after-scan` goes on with a scan through a cache it just filled (every page installed
//! and read once), a new page installed and read at a time, for two revolutions of the CLOCK
//! hand: the claims that must first lower every frame's usage (its rate counts the installs'
//! time only). Besides its rate it reports the slowest run of
//! `INSTALL_RUN` consecutive installs — how long a receive batch's worth of pages could stall
//! the worker that installs them.
//! Targets: lookup >= 0.7x memcpy-1t, install >= 0.6x, lookup-2t >= 1.6x lookup-1t.
//!
//! Hit-ratio cases (unit `hit_pct`, hits per 100 lookups after warm-up): the real cache (CLOCK with
//! usage counts, plus its bucket structure) against an exact LRU of the same capacity on the same
//! trace: Zipf 0.9, Zipf 1.0, and repeated sequential scans twice the cache size mixed with a hot
//! set of half the cache.
//!
//! Owns: nothing shared; it drives the public API of `lfc` (and `cmd::daemon_proc::ScratchDir`) and
//! may not be imported by the library's other modules.

use super::BenchRecord;
use crate::cmd::daemon_proc::ScratchDir;
use lfc::{BufferTag, Lfc, LfcStats, RelTag, PAGE_SIZE};
use std::collections::HashMap;
use std::fs::File;
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct LfcBenchArgs {
    /// Cache size in MiB for the throughput cases.
    #[arg(long, default_value_t = 1024)]
    pub cache_mib: u64,
    /// Measuring time per throughput case, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub case_ms: u64,
    /// Cache size in pages for the hit-ratio cases.
    #[arg(long, default_value_t = 8192)]
    pub hit_ratio_pages: u64,
    /// Accesses per hit-ratio trace.
    #[arg(long, default_value_t = 1_000_000)]
    pub hit_ratio_accesses: u64,
}

const BENCH: &str = "lfc";

pub fn run(args: &LfcBenchArgs) -> anyhow::Result<Vec<BenchRecord>> {
    anyhow::ensure!(args.cache_mib >= 1, "--cache-mib must be at least 1");
    anyhow::ensure!(
        args.hit_ratio_pages >= 16,
        "--hit-ratio-pages must be at least 16"
    );
    // The cache file and the baseline region go where every bench puts its LFC files
    // (`bench --lfc-dir`, default /dev/shm): same memory, no writeback noise.
    let dir = ScratchDir::new("udp-prefetch-bench-lfc")?;
    let mut records = throughput(args, &dir.0)?;
    records.extend(hit_ratios(args, &dir.0)?);
    Ok(records)
}

/// xorshift64*: a fast per-thread generator; the bench needs speed, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

fn bench_tag(rel: u32, i: u64) -> BufferTag {
    RelTag::new(1663, 5, rel, 0).block(i as u32)
}

/// A shared mapping of a file as large as the cache, pre-faulted: the memcpy baseline reads the
/// same kind of memory (page-cache pages of a MAP_SHARED file) as the cache does.
struct Region {
    ptr: *mut u8,
    len: usize,
    _file: File,
}

// SAFETY: the region is only read through raw pointers after construction.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    fn new(path: &Path, len: usize) -> anyhow::Result<Region> {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(len as u64)?;
        // SAFETY: a fresh shared mapping of a file we just sized; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        anyhow::ensure!(
            ptr != libc::MAP_FAILED,
            "mmap {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        let ptr = ptr.cast::<u8>();
        // Pre-fault with non-zero bytes so every page is really backed.
        // SAFETY: in bounds of the mapping.
        unsafe { std::ptr::write_bytes(ptr, 0x5a, len) };
        Ok(Region {
            ptr,
            len,
            _file: file,
        })
    }
}

impl Region {
    /// Start of page `i`; a method so closures capture the (Sync) region, not its raw pointer.
    fn page(&self, i: usize) -> *const u8 {
        debug_assert!((i + 1) * PAGE_SIZE <= self.len);
        // SAFETY: in bounds of the mapping for i < len / PAGE_SIZE.
        unsafe { self.ptr.add(i * PAGE_SIZE) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Runs `op` on `threads` threads for `dur`; returns operations per second over all threads.
fn rate<F>(threads: usize, dur: Duration, op: F) -> f64
where
    F: Fn(&mut Rng, &mut [u8; PAGE_SIZE]) + Sync,
{
    let started = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let op = &op;
                s.spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) * 0x1234_5678_9abc));
                    let mut buf = Box::new([0u8; PAGE_SIZE]);
                    let mut n = 0u64;
                    // Check the clock every 256 operations only.
                    while started.elapsed() < dur {
                        for _ in 0..256 {
                            op(&mut rng, &mut buf);
                        }
                        n += 256;
                    }
                    black_box(&buf);
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    total as f64 / started.elapsed().as_secs_f64()
}

/// One operation of a throughput case, as `rate` runs it.
trait Op: Fn(&mut Rng, &mut [u8; PAGE_SIZE]) + Sync + Copy {}
impl<F: Fn(&mut Rng, &mut [u8; PAGE_SIZE]) + Sync + Copy> Op for F {}

/// Copies a random page of the baseline region into the local buffer.
fn memcpy_op(region: &Region, pages: u64) -> impl Op + '_ {
    move |rng: &mut Rng, buf: &mut [u8; PAGE_SIZE]| {
        let i = rng.below(pages) as usize;
        // SAFETY: page i lies inside the region; buf is a distinct local buffer.
        unsafe { std::ptr::copy_nonoverlapping(region.page(i), buf.as_mut_ptr(), PAGE_SIZE) };
        black_box(buf);
    }
}

/// Looks up a random tag of the lookup set into the local buffer.
fn lookup_op(lfc: &Lfc, pages: u64) -> impl Op + '_ {
    move |rng: &mut Rng, buf: &mut [u8; PAGE_SIZE]| {
        black_box(lfc.lookup(&bench_tag(1, rng.below(pages)), buf));
    }
}

/// Installs a never-seen tag, numbered from the shared `next`.
fn install_op<'a>(lfc: &'a Lfc, next: &'a AtomicU64, page: &'a [u8; PAGE_SIZE]) -> impl Op + 'a {
    move |_: &mut Rng, _: &mut [u8; PAGE_SIZE]| {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        black_box(lfc.install_prefetched(&bench_tag(2, i), 0, page));
    }
}

/// Installs a never-seen tag, numbered from the shared `next`, through reserve / fill / publish.
fn publish_op<'a>(lfc: &'a Lfc, next: &'a AtomicU64, page: &'a [u8; PAGE_SIZE]) -> impl Op + 'a {
    move |_: &mut Rng, _: &mut [u8; PAGE_SIZE]| {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(mut r) = lfc.reserve() {
            // Stands in for the kernel's scatter receive into the slot.
            r.fill_from(page);
            black_box(r.publish(&bench_tag(2, i), 0));
        }
    }
}

/// Caches the lookup set: tags 0..pages of relation 1.
fn fill_lookup_set(lfc: &Lfc, pages: u64, page: &[u8; PAGE_SIZE]) {
    for i in 0..pages {
        lfc.install_prefetched(&bench_tag(1, i), 0, page);
    }
}

/// The fraction of the lookups between two snapshots of the cache's counters that hit.
fn hit_fraction(before: &LfcStats, after: &LfcStats) -> f64 {
    (after.hits - before.hits) as f64
        / ((after.hits + after.misses) - (before.hits + before.misses)).max(1) as f64
}

fn throughput(args: &LfcBenchArgs, dir: &Path) -> anyhow::Result<Vec<BenchRecord>> {
    let pages = args.cache_mib * 1024 * 1024 / PAGE_SIZE as u64;
    let dur = Duration::from_millis(args.case_ms);
    let lfc = Lfc::create(dir.join("lfc"), pages)?;
    crate::cmd::daemon_proc::note_lfc_huge_pages(lfc.huge_pages().backed());
    let page = [0xa5u8; PAGE_SIZE];
    fill_lookup_set(&lfc, pages, &page);
    let resident = lfc.stats().used_pages;
    let region = Region::new(&dir.join("baseline"), (pages as usize) * PAGE_SIZE)?;
    // A case's record; `per_s` is measured before the record is made.
    let case = |name: &str, threads: u64, per_s: f64| {
        BenchRecord::new(BENCH, name, "pages/s", per_s)
            .param("cache_mib", args.cache_mib)
            .param("threads", threads)
            .param("case_ms", args.case_ms)
    };
    let memcpy = memcpy_op(&region, pages);
    let lookup = lookup_op(&lfc, pages);

    let memcpy_1t = case("memcpy-1t", 1, rate(1, dur, memcpy));
    let hits_before = lfc.stats();
    let lookup_1t = case("lookup-1t", 1, rate(1, dur, lookup));
    let hits_after = lfc.stats();
    let lookup_1t = lookup_1t
        .param("resident_pages", resident)
        .param("hit_fraction", hit_fraction(&hits_before, &hits_after))
        .against(&memcpy_1t);

    // Installs of never-seen tags: every one evicts a page. Tags come from a shared counter so
    // the two-thread variants never repeat one.
    let next = AtomicU64::new(0);
    let install = install_op(&lfc, &next, &page);
    let install_1t = case("install-1t", 1, rate(1, dur, install)).against(&memcpy_1t);
    let publish = publish_op(&lfc, &next, &page);
    let publish_1t = case("publish-1t", 1, rate(1, dur, publish)).against(&memcpy_1t);

    // Refill with the lookup set so the two-thread lookups hit as the one-thread ones did.
    fill_lookup_set(&lfc, pages, &page);
    let memcpy_2t = case("memcpy-2t", 2, rate(2, dur, memcpy)).against(&memcpy_1t);
    let lookup_2t = case("lookup-2t", 2, rate(2, dur, lookup)).against(&lookup_1t);
    let install_2t = case("install-2t", 2, rate(2, dur, install)).against(&install_1t);
    let after_scan = install_after_scan(args, dir, &page)?.against(&install_1t);
    let overhead = BenchRecord::new(
        BENCH,
        "metadata-overhead",
        "percent",
        100.0 * lfc.metadata_fraction(),
    )
    .param("cache_mib", args.cache_mib)
    .lower_is_better();
    Ok(vec![
        memcpy_1t, lookup_1t, install_1t, publish_1t, memcpy_2t, lookup_2t, install_2t, after_scan,
        overhead,
    ])
}

/// Consecutive installs whose total time `install-after-scan` reports the slowest of: a GRO
/// receive's worth of pages (the daemon's batch).
const INSTALL_RUN: usize = 64;

/// `install-after-scan`: a cache of `--cache-mib` filled as a scan fills it (each page installed,
/// then read once), then the scan going on for twice the cache's capacity of new pages, each
/// installed (timed) and read.
fn install_after_scan(
    args: &LfcBenchArgs,
    dir: &Path,
    page: &[u8; PAGE_SIZE],
) -> anyhow::Result<BenchRecord> {
    let pages = args.cache_mib * 1024 * 1024 / PAGE_SIZE as u64;
    let path = dir.join("lfc-after-scan");
    let lfc = Lfc::create(&path, pages)?;
    let mut out = Box::new([0u8; PAGE_SIZE]);
    for i in 0..pages {
        let tag = bench_tag(4, i);
        lfc.install_prefetched(&tag, 0, page);
        black_box(lfc.lookup(&tag, &mut out));
    }
    let installs = 2 * pages as usize;
    let mut took_ns = Vec::with_capacity(installs);
    for i in 0..installs as u64 {
        let tag = bench_tag(5, i);
        let t = Instant::now();
        black_box(lfc.install_prefetched(&tag, 0, page));
        took_ns.push(t.elapsed().as_nanos() as u64);
        // The scan goes on reading what it installs, so the hand meets read pages.
        black_box(lfc.lookup(&tag, &mut out));
    }
    // The installs' own time: the reads between them are the scan's, not the claim's.
    let per_s = installs as f64 / (took_ns.iter().sum::<u64>() as f64 / 1e9);
    let slowest_run_ns = took_ns
        .windows(INSTALL_RUN)
        .map(|w| w.iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    took_ns.sort_unstable();
    let quantile_us = |q: f64| took_ns[((installs - 1) as f64 * q) as usize] as f64 / 1e3;
    let stats = lfc.stats();
    drop(lfc);
    let _ = std::fs::remove_file(&path);
    Ok(
        BenchRecord::new(BENCH, "install-after-scan", "pages/s", per_s)
            .param("cache_mib", args.cache_mib)
            .param("threads", 1)
            .param("installs", installs)
            .param("p99_us", super::round3(quantile_us(0.99)))
            .param("p999_us", super::round3(quantile_us(0.999)))
            .param("max_us", super::round3(quantile_us(1.0)))
            .param("run", INSTALL_RUN)
            .param("slowest_run_us", super::round3(slowest_run_ns as f64 / 1e3))
            .param("capped_evictions", stats.capped_evictions),
    )
}

// ---- hit ratios ------------------------------------------------------------------------------

/// Samples ranks 0..n with probability proportional to 1 / (rank + 1)^s.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: u64, s: f64) -> Zipf {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (0..n)
            .map(|k| {
                acc += 1.0 / ((k + 1) as f64).powf(s);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut Rng) -> u64 {
        let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        self.cdf.partition_point(|&c| c < u) as u64
    }
}

/// Exact LRU over u64 keys: hash map into an intrusive doubly linked list.
struct Lru {
    capacity: usize,
    slots: HashMap<u64, usize>,
    keys: Vec<u64>,
    prev: Vec<usize>,
    next: Vec<usize>,
    head: usize,
    tail: usize,
}

const NIL: usize = usize::MAX;

impl Lru {
    fn new(capacity: usize) -> Lru {
        Lru {
            capacity,
            slots: HashMap::with_capacity(capacity),
            keys: Vec::with_capacity(capacity),
            prev: Vec::with_capacity(capacity),
            next: Vec::with_capacity(capacity),
            head: NIL,
            tail: NIL,
        }
    }

    fn unlink(&mut self, i: usize) {
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n] = p;
        }
    }

    fn push_front(&mut self, i: usize) {
        self.prev[i] = NIL;
        self.next[i] = self.head;
        if self.head != NIL {
            self.prev[self.head] = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    /// Touches `key`; true on a hit. A miss inserts it, evicting the least recently used.
    fn access(&mut self, key: u64) -> bool {
        if let Some(&i) = self.slots.get(&key) {
            self.unlink(i);
            self.push_front(i);
            return true;
        }
        let i = if self.keys.len() < self.capacity {
            self.keys.push(key);
            self.prev.push(NIL);
            self.next.push(NIL);
            self.keys.len() - 1
        } else {
            let i = self.tail;
            self.unlink(i);
            self.slots.remove(&self.keys[i]);
            self.keys[i] = key;
            i
        };
        self.slots.insert(key, i);
        self.push_front(i);
        false
    }
}

enum Trace {
    Zipf(Zipf, u64),
    ScanAndHot {
        hot: u64,
        scan: u64,
        hot_share_pct: u64,
    },
}

impl Trace {
    /// Key of access number `k`.
    fn key(&self, k: u64, rng: &mut Rng) -> u64 {
        match self {
            Trace::Zipf(z, _) => z.sample(rng),
            Trace::ScanAndHot {
                hot,
                scan,
                hot_share_pct,
            } => {
                if rng.below(100) < *hot_share_pct {
                    rng.below(*hot)
                } else {
                    // The scan walks the same large table over and over; keys above the hot set.
                    hot + k % scan
                }
            }
        }
    }
}

fn hit_ratios(args: &LfcBenchArgs, dir: &Path) -> anyhow::Result<Vec<BenchRecord>> {
    let cap = args.hit_ratio_pages;
    let n = args.hit_ratio_accesses;
    let workloads = [
        ("zipf-0.9", Trace::Zipf(Zipf::new(cap * 10, 0.9), cap * 10)),
        ("zipf-1.0", Trace::Zipf(Zipf::new(cap * 10, 1.0), cap * 10)),
        (
            "scan+hot",
            Trace::ScanAndHot {
                hot: cap / 2,
                scan: cap * 2,
                hot_share_pct: 30,
            },
        ),
    ];
    let page = [0x3cu8; PAGE_SIZE];
    let mut out = Box::new([0u8; PAGE_SIZE]);
    let mut records = Vec::new();
    for (name, trace) in workloads {
        let path = dir.join(format!("hit-{name}"));
        let lfc = Lfc::create(&path, cap)?;
        let mut lru = Lru::new(cap as usize);
        let mut rng = Rng(0xfeed_f00d);
        // Warm up on the first fifth of the trace; count the rest.
        let warmup = n / 5;
        let (mut clock_hits, mut lru_hits) = (0u64, 0u64);
        for k in 0..n {
            let key = trace.key(k, &mut rng);
            let tag = bench_tag(3, key);
            let hit = lfc.lookup(&tag, &mut out).is_some();
            if !hit {
                lfc.install_prefetched(&tag, 0, &page);
            }
            let lru_hit = lru.access(key);
            if k >= warmup {
                clock_hits += u64::from(hit);
                lru_hits += u64::from(lru_hit);
            }
        }
        drop(lfc);
        let _ = std::fs::remove_file(&path);
        let counted = (n - warmup).max(1) as f64;
        let universe = match &trace {
            Trace::Zipf(_, u) => *u,
            Trace::ScanAndHot { hot, scan, .. } => hot + scan,
        };
        let with_params = |r: BenchRecord| {
            r.param("cache_pages", cap)
                .param("universe_pages", universe)
                .param("accesses", n)
                .param("warmup", warmup)
        };
        let lru_rec = with_params(BenchRecord::new(
            BENCH,
            &format!("lru-{name}"),
            "hit_pct",
            100.0 * lru_hits as f64 / counted,
        ));
        let clock_rec = with_params(BenchRecord::new(
            BENCH,
            &format!("clock-{name}"),
            "hit_pct",
            100.0 * clock_hits as f64 / counted,
        ))
        .against(&lru_rec);
        records.push(lru_rec);
        records.push(clock_rec);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let mut l = Lru::new(2);
        assert!(!l.access(1));
        assert!(!l.access(2));
        assert!(l.access(1));
        assert!(!l.access(3)); // evicts 2
        assert!(l.access(1));
        assert!(!l.access(2));
        assert!(!l.access(3)); // 1 and 2 were more recent
    }

    #[test]
    fn zipf_prefers_low_ranks() {
        let z = Zipf::new(1000, 1.0);
        let mut rng = Rng(7);
        let low = (0..10_000).filter(|_| z.sample(&mut rng) < 10).count();
        // P(rank < 10) = H(10) / H(1000) ~ 0.39 for s = 1.
        assert!((3_000..5_000).contains(&low), "{low}");
    }
}
