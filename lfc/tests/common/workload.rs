//! Worker roles for the multi-process tests: every page written or installed is
//! `make_page(tag, L)` where L is the tag's last modification LSN, so a reader can check that a
//! page is intact, not older than any modification completed before the lookup (the `Truth`
//! file), and never older than a version it saw earlier.
#![allow(dead_code)]

use super::{check_page, make_page, tag, Rng};
use lfc::{BufferTag, Lfc, WriteOutcome, PAGE_SIZE};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Per-thread results; violations are capped so a broken run still prints quickly.
#[derive(Debug, Default)]
pub struct Report {
    pub ops: u64,
    pub hits: u64,
    pub max_op: Duration,
    pub violations: Vec<String>,
}

impl Report {
    fn violation(&mut self, v: String) {
        if self.violations.len() < 10 {
            self.violations.push(v);
        }
    }

    fn timed<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let r = f();
        self.max_op = self.max_op.max(t0.elapsed());
        self.ops += 1;
        r
    }

    pub fn merge(&mut self, o: Report) {
        self.ops += o.ops;
        self.hits += o.hits;
        self.max_op = self.max_op.max(o.max_op);
        for v in o.violations {
            self.violation(v);
        }
    }
}

/// The last modification each tag's owner completed, by universe index, in a file beside the
/// cache that every process maps: what a reader checks pages against. The cache's own
/// `lwlsn` cannot serve: it is an upper bound (tags sharing an lwlsn cell raise each other's
/// while uncached), so an uncached tag can read a colliding tag's LSN and then be installed
/// older than that, legitimately. No page may be older than a modification that completed
/// before its lookup began, and no `lwlsn` below one.
pub struct Truth {
    map: memmap2::MmapRaw,
    len: u64,
}

impl Truth {
    /// Maps (creating it if needed) the truth file of the cache at `lfc_path` for `len` tags.
    pub fn beside(lfc_path: &Path, len: u64) -> Truth {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(lfc_path.with_extension("truth"))
            .unwrap();
        // Only ever grows to this one length, so racing processes agree and keep the contents.
        if file.metadata().unwrap().len() < len * 8 {
            file.set_len(len * 8).unwrap();
        }
        let map = memmap2::MmapOptions::new()
            .len(len as usize * 8)
            .map_raw(&file)
            .unwrap();
        Truth { map, len }
    }

    fn cell(&self, i: u64) -> &AtomicU64 {
        assert!(i < self.len);
        // SAFETY: in bounds (above), 8-aligned (the mapping is page aligned), and only ever
        // accessed as atomics by every process.
        unsafe { &*self.map.as_ptr().cast::<AtomicU64>().add(i as usize) }
    }

    /// After the owner's modification of tag `i` at `lsn` returned.
    pub fn record(&self, i: u64, lsn: u64) {
        self.cell(i).fetch_max(lsn, Ordering::Release);
    }

    pub fn completed(&self, i: u64) -> u64 {
        self.cell(i).load(Ordering::Acquire)
    }
}

pub fn universe_tag(i: u64) -> BufferTag {
    tag(1, i as u32)
}

/// The tags the workers pick from: `universe_tag(0..n)`, or with `colliding` the first `n` tags
/// homed in index buckets 0 and 1 of this file (alternately), so that both homes overflow and
/// their windows overlap. Deterministic per file, so every process derives the same list.
pub fn universe(lfc: &Lfc, n: u64, colliding: bool) -> Vec<BufferTag> {
    if !colliding {
        return (0..n).map(universe_tag).collect();
    }
    let mut homes: [Vec<BufferTag>; 2] = [Vec::new(), Vec::new()];
    for t in (0u64..).map(universe_tag) {
        if let Some(v) = homes.get_mut(lfc.home_bucket_of(&t) as usize) {
            v.push(t);
        }
        if homes.iter().all(|v| v.len() as u64 >= n.div_ceil(2)) {
            break;
        }
    }
    let [a, b] = homes;
    a.into_iter()
        .zip(b)
        .flat_map(|(x, y)| [x, y])
        .take(n as usize)
        .collect()
}

/// Writes and drops versions of the tags it owns (`owned(i)`), and installs pages of any tag
/// through both install paths. `hold` reservations are kept filled-but-unpublished at all times,
/// to exercise reclaiming a dead process's reservations.
pub fn writer(
    lfc: &Lfc,
    tags: &[BufferTag],
    owned: &dyn Fn(u64) -> bool,
    seed: u64,
    hold: usize,
    stop: &AtomicBool,
) -> Report {
    let mut r = Report::default();
    let mut rng = Rng(seed);
    let mut held = Vec::new();
    let truth = Truth::beside(lfc.path(), tags.len() as u64);
    while !stop.load(Ordering::Relaxed) {
        let i = rng.below(tags.len() as u64);
        let t = tags[i as usize];
        match rng.below(10) {
            0..=3 if owned(i) => {
                // Only this thread modifies `t`, so lwlsn + 1 is a new, higher version.
                let lsn = r.timed(|| lfc.lwlsn(&t)) + 1;
                let page = make_page(&t, lsn);
                match r.timed(|| lfc.write(&t, lsn, &page)) {
                    Ok(WriteOutcome::Superseded) => {}
                    Ok(_) => truth.record(i, lsn),
                    Err(e) => r.violation(format!("write {t}: {e}")),
                }
            }
            4 if owned(i) => {
                let lsn = r.timed(|| lfc.lwlsn(&t)) + 1;
                match r.timed(|| lfc.set_lwlsn(&t, lsn)) {
                    Ok(()) => truth.record(i, lsn),
                    Err(e) => r.violation(format!("set_lwlsn {t}: {e}")),
                }
            }
            5..=6 => {
                // A page server answering "as of lwlsn": content of the last modification.
                let lsn = r.timed(|| lfc.lwlsn(&t));
                let page = make_page(&t, lsn);
                r.timed(|| lfc.install_prefetched(&t, lsn, &page));
            }
            _ => {
                let lsn = r.timed(|| lfc.lwlsn(&t));
                let page = make_page(&t, lsn);
                if let Some(mut res) = r.timed(|| lfc.reserve()) {
                    res.fill_from(&page);
                    held.push((res, t, lsn));
                }
                if held.len() > hold {
                    let (res, t, lsn) = held.remove(0);
                    r.timed(|| res.publish(&t, lsn));
                }
            }
        }
    }
    r
}

/// Looks pages up and checks them: intact, at least the last modification completed before the
/// lookup (as its `lwlsn`, read just before), and never older than what this thread saw
/// before for the same tag. Also exercises request marks and waits.
pub fn reader(lfc: &Lfc, tags: &[BufferTag], seed: u64, stop: &AtomicBool) -> Report {
    let mut r = Report::default();
    let mut rng = Rng(seed);
    let mut seen: HashMap<u64, u64> = HashMap::new();
    let mut out = Box::new([0u8; PAGE_SIZE]);
    let mut now_ns = 0u64;
    let truth = Truth::beside(lfc.path(), tags.len() as u64);
    while !stop.load(Ordering::Relaxed) {
        let i = rng.below(tags.len() as u64);
        let t = tags[i as usize];
        let done = truth.completed(i);
        let lw = r.timed(|| lfc.lwlsn(&t));
        if lw < done {
            r.violation(format!("{t}: lwlsn {lw} below the modification at {done}"));
        }
        if lfc.contains(&t) {
            r.ops += 1;
        }
        match r.timed(|| lfc.lookup(&t, &mut out)) {
            Some(_) => {
                r.hits += 1;
                match check_page(&t, &out) {
                    Err(e) => r.violation(format!("torn or foreign page: {e}")),
                    Ok(lsn) => {
                        if lsn < done {
                            r.violation(format!(
                                "{t}: page at {lsn} older than the modification at {done}"
                            ));
                        }
                        let prev = seen.entry(i).or_default();
                        if lsn < *prev {
                            r.violation(format!("{t}: went back from {prev} to {lsn}"));
                        }
                        *prev = (*prev).max(lsn);
                    }
                }
            }
            None => {
                now_ns += 1_000_000;
                if !r.timed(|| lfc.mark_requested(&t, now_ns)) && rng.below(8) == 0 {
                    r.timed(|| lfc.wait_for_arrival(&t, Duration::from_micros(200)));
                }
            }
        }
    }
    r
}

/// Re-runs the current test binary as a child running only `test_name`, with `env` set.
pub fn spawn_role(test_name: &str, env: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Blocks until the child printed `READY` (after attaching and starting its threads).
pub fn wait_ready(child: &mut Child) {
    let out = child.stdout.as_mut().unwrap();
    let mut reader = std::io::BufReader::new(out);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "child exited before READY");
        // The harness prints "test NAME ... " right before the child's own output.
        if line.trim_end().ends_with("READY") {
            return;
        }
    }
}

/// In a child: a thread that sets `stop` when the parent closes our stdin.
pub fn stop_on_stdin_eof(stop: &'static AtomicBool) {
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
        stop.store(true, Ordering::Relaxed);
    });
}
