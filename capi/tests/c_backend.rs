//! Backends written in C (`tests/c/scan.c`, compiled here with the system C compiler `cc` and
//! linked with `libudp_prefetch_c.so`, or with `libudp_prefetch_c.a` as the README says)
//! against a real page server and worker daemon: a scan whose every page verifies in C, and two
//! processes sharing one LFC, one after the other and at the same time.
//!
//! The page server and the daemon run in this test's process (`PageServer::start`,
//! `workers::daemon::run`), as real servers on loopback sockets; the C backends are processes
//! of their own.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;
use udp_prefetch::pageserver::source::SourceSpec;
use udp_prefetch::pageserver::{PageServer, ServerConfig};

const PAGES: u64 = 2000;
/// Relations the page server serves, each of [`PAGES`]: a test that retries a scan does so on a
/// relation no earlier attempt touched.
const RELS: u32 = 3;

/// The tests run one at a time: each starts a page server and a daemon in this process, and a
/// scan whose UDP path competes with the other test's for two loaded CPUs falls back to TCP
/// (correctly, but then shows no hits).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// The relation node of synthetic relation `i` (16384 for the first).
fn relnode(i: u32) -> u32 {
    udp_prefetch::protocol::page::synthetic_rel(i).relnode
}

/// What the README gives for linking a backend with the static library: the archive by its
/// path, then these system libraries (`a_c_backend_linked_statically_with_the_readme_flags_
/// reads_every_page` checks that the README still says so).
const STATIC_LINK: &str = "libudp_prefetch_c.a -lpthread -ldl -lm";

/// Where cargo put this package's shared and static libraries: beside the test binary
/// (`<profile>/deps`) when built for the tests, else in `<profile>`.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    let profile = deps.parent().unwrap().to_path_buf();
    [deps, profile]
        .into_iter()
        .find(|d| d.join("libudp_prefetch_c.so").exists())
        .expect("libudp_prefetch_c.so beside the test binary")
}

/// How `scan.c` is linked with this library.
#[derive(Clone, Copy)]
enum Link {
    /// `-ludp_prefetch_c`, found at run time through the rpath.
    Shared,
    /// The archive and [`STATIC_LINK`]'s flags; no rpath.
    Static,
}

/// Compiles `tests/c/scan.c` against the checked-in header and the library.
fn compile_scan(out_dir: &Path, link: Link) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let libs = lib_dir();
    let exe = out_dir.join("scan");
    let mut cc = Command::new("cc");
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-I"])
        .arg(manifest.join("include"))
        .arg(manifest.join("tests/c/scan.c"));
    match link {
        Link::Shared => {
            cc.arg("-L")
                .arg(&libs)
                .arg("-ludp_prefetch_c")
                .arg(format!("-Wl,-rpath,{}", libs.display()));
        }
        Link::Static => {
            // The archive by its path: `-ludp_prefetch_c` would take the shared library that
            // lies beside it.
            let (archive, flags) = STATIC_LINK.split_once(' ').unwrap();
            let archive = libs.join(archive);
            assert!(archive.exists(), "{} was not built", archive.display());
            cc.arg(archive).args(flags.split(' '));
        }
    }
    common::output_ok(cc.arg("-o").arg(&exe), "cc (the system C compiler)");
    exe
}

/// A synthetic page server of [`RELS`] relations of [`PAGES`] pages, in this process.
fn page_server() -> PageServer {
    PageServer::start(ServerConfig {
        source: SourceSpec::Synthetic {
            rels: RELS,
            pages: PAGES as u32,
        },
        ..common::synthetic_server_config(PAGES as u32)
    })
    .expect("page server")
}

/// What each test starts: a temporary directory, the compiled C backend in it, a page server
/// and a worker daemon on a new 64 MiB LFC (room for the whole relation: nothing is evicted).
struct Setup {
    lfc: PathBuf,
    exe: PathBuf,
    server: PageServer,
    _daemon: common::DaemonThread,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    setup_linked(Link::Shared)
}

fn setup_linked(link: Link) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    let exe = compile_scan(dir.path(), link);
    let server = page_server();
    let daemon = common::DaemonThread::start(&lfc, 64 << 20);
    Setup {
        lfc,
        exe,
        server,
        _daemon: daemon,
        _dir: dir,
    }
}

impl Setup {
    /// Starts a C backend on the first relation, prefetch distance 256. It opens its handle,
    /// prints `opened` and then waits for a line on stdin before it scans.
    fn spawn(&self) -> Child {
        self.spawn_on(0)
    }

    /// [`Setup::spawn`] on synthetic relation `rel`. Without a library path from the
    /// environment: the shared library is found by the rpath, and a statically linked
    /// backend needs none.
    fn spawn_on(&self, rel: u32) -> Child {
        Command::new(&self.exe)
            .arg(&self.lfc)
            .arg(self.server.local_addr().to_string())
            .args([relnode(rel).to_string(), "256".to_string()])
            .env_remove("LD_LIBRARY_PATH")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the C backend")
    }

    /// Runs one C backend on the first relation to the end and returns its counters.
    fn run_scan(&self) -> Counters {
        self.run_scan_on(0)
    }

    fn run_scan_on(&self, rel: u32) -> Counters {
        let mut child = self.spawn_on(rel);
        drop(child.stdin.take()); // end of file: scan at once
        finish(child)
    }
}

/// The counters a C scan printed (`name=value` words).
type Counters = std::collections::HashMap<String, u64>;

/// Waits (at most 2 minutes) for a C backend that must succeed, and parses its counters.
fn finish(child: Child) -> Counters {
    let done = common::wait_with_limit(child, Duration::from_secs(120));
    assert_eq!(
        done.code(),
        Some(0),
        "C scan: {} {}",
        done.stdout,
        done.stderr
    );
    done.stdout
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

/// Every page verifies in C, and prefetched pages are found in the LFC. On a loaded machine
/// (two CPUs, the other test binaries beside this one) a scan's first datagrams can be late,
/// and a backend that finds UDP not delivering moves to TCP pipelining within milliseconds, as
/// it should: it then reads every page correctly and hits none. A scan whose pages came by UDP
/// is what this test needs, so it tries up to [`RELS`] times, each on a relation no earlier
/// attempt touched (an earlier attempt's pages in the LFC would be hits without a prefetch);
/// every attempt must verify every page.
#[test]
fn a_c_backend_scans_a_relation_with_every_page_verified_and_prefetches_hitting() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup();
    for attempt in 0..RELS {
        let r = s.run_scan_on(attempt);
        assert_eq!(r["pages"], PAGES, "{r:?}");
        assert_eq!(r["verified"], PAGES, "{r:?}");
        assert_eq!(r["extension"], 1, "the server speaks the extension: {r:?}");
        if r["hits"] > 0 {
            assert!(r["prefetched"] > 0, "hits of its own prefetches: {r:?}");
            return;
        }
        eprintln!("attempt {attempt}: no hit, the scan left UDP (a busy machine): {r:?}");
    }
    panic!("no scan in {RELS} attempts found a prefetched page in the LFC");
}

/// The README's instructions for the static library, proven: `scan.c` linked with
/// `libudp_prefetch_c.a` and the flags the README gives, then run with neither an rpath nor a
/// library path (a binary that needed the shared library would not start), reads every page
/// verified.
#[test]
fn a_c_backend_linked_statically_with_the_readme_flags_reads_every_page() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    assert!(
        readme.contains(STATIC_LINK),
        "README.md no longer links the static library with `{STATIC_LINK}`"
    );
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup_linked(Link::Static);
    let r = s.run_scan();
    assert_eq!(r["pages"], PAGES, "{r:?}");
    assert_eq!(r["verified"], PAGES, "{r:?}");
    assert_eq!(r["extension"], 1, "{r:?}");
}

#[test]
fn a_second_c_backend_after_the_first_reads_everything_from_the_shared_lfc() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup();
    let first = s.run_scan();
    let second = s.run_scan();
    for r in [&first, &second] {
        assert_eq!(r["verified"], PAGES, "{r:?}");
    }
    // The second process finds every page the first brought in: it requests nothing.
    assert_eq!(second["hits"], PAGES, "{second:?}");
    assert_eq!(second["prefetched"], 0, "{second:?}");
    assert_eq!(second["tcp"], 0, "{second:?}");
    // Across both, each page was requested by UDP at most once (by the first), and entered
    // the shared LFC exactly once.
    assert!(first["prefetched"] <= PAGES, "{first:?}");
    let c = lfc::Lfc::open(&s.lfc).unwrap().stats();
    assert_eq!(
        c.installs, PAGES,
        "each page entered the shared LFC once: {c:?}"
    );
}

/// Two C backends scan the relation at the same time: both open their handles, and only then
/// are both told to start, so their prefetch windows and reads overlap.
///
/// What the design guarantees, and so what is asserted: every page verifies in both; and each
/// page entered the shared LFC exactly once. An install links a page under its bucket's lock
/// only if the tag is not there yet (`Lfc::publish_frame`), whoever offers it (the daemon from
/// a datagram, a backend from a GetPage answer) and however the offers interleave; with no
/// eviction (the LFC has room for the relation, checked) and no write or `set_lwlsn` (nothing
/// drops a page), a linked page stays, so `installs` counts distinct pages, and equal to the
/// relation's size it says that each came in once and only once: the two processes shared one
/// copy. A page the other process already offered is refused and counted `already_present`.
///
/// What the page server was asked for. Every page at least once (each installed page came
/// from it), and every page a backend counted as prefetched reached its prefetch queue
/// (nothing overflowed it). A page taken as lost (`retries`) is fetched again by the TCP
/// pipeline, or by UDP when the pipeline's queue is full, so retries add between none and all
/// of themselves to the Prefetch pages (on a loaded CI machine, whose delays pass the reorder
/// grace, the server queued 16 pages fewer than the two prefetched and retried). By UDP, the two asked for each page once
/// but for at most 1 % of the relation (20 pages): a backend prefetches a page only when it is
/// neither cached nor marked requested in the shared LFC, and a mark stays until the page is
/// installed or `REQUESTED_TTL_NS` (100 ms) passes, whichever path either backend is on. A page
/// goes to both only when one backend's check that it is not cached and its mark (a load and a
/// compare-and-swap, not a lock) straddle the other's install of that page, one page at most
/// per preemption at that point, or when a page still not installed 100 ms after its request
/// is planned again (a lost datagram its reader has not reached yet). Seen: at most one in
/// 2,000. (Within one process, once at most: its loss tracker and then the LFC hold it; retries
/// are counted apart.) The server's other Prefetch pages are the probes of UDP that a backend
/// on TCP pipelining sends (of pages it also fetches), so when both stayed on UDP from start to
/// end (no path change) it queued what the two prefetched and at most their retries more. GetPages are not deduplicated
/// across processes, by design: a backend that moved to TCP pipelining (a loaded machine makes
/// UDP look slow) neither waits for the other's UDP prefetches nor marks its own GetPages, as
/// Neon's compute does not, so it fetches every page not yet cached when its GetPage's turn
/// comes (hundreds of pages when one moved). Each duplicate costs one datagram or GetPage whose
/// page the LFC refuses; the counts are printed.
#[test]
fn two_c_backends_at_once_share_one_lfc_and_each_page_enters_it_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup();
    let mut children = [s.spawn(), s.spawn()];
    // Both handles open (connected, the LFC mapped) before either scans.
    for child in &mut children {
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        out.read_line(&mut line)
            .expect("read the C backend's output");
        if line != "opened\n" {
            // It could not open its handle and exited: its stderr says why.
            let mut why = String::new();
            let _ = child.stderr.take().expect("piped").read_to_string(&mut why);
            panic!("the C backend did not open its handle: {line:?} {why}");
        }
        // It writes nothing more until it is told to scan, so the reader holds nothing else.
        child.stdout = Some(out.into_inner());
    }
    for child in &mut children {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(b"go\n")
            .expect("start the C backend's scan");
    }
    let [a, b] = children.map(finish);
    for r in [&a, &b] {
        assert_eq!(r["pages"], PAGES, "{r:?}");
        assert_eq!(r["verified"], PAGES, "every page verified in C: {r:?}");
        assert_eq!(r["extension"], 1, "{r:?}");
        // Within one process a page is requested by UDP once at most (retries are counted
        // apart): its loss tracker and then the LFC hold it.
        assert!(r["prefetched"] <= PAGES, "{r:?}");
    }
    // Both processes have exited, but the page server may not have read all they sent yet (a
    // Prefetch has no answer to wait for): its connection threads end once they read each
    // connection to its end, so wait for that, then stop it (its sender threads joined: every
    // datagram it sent is counted), then the daemon (nothing more is offered to the LFC), then
    // read both sets of counters.
    let Setup {
        lfc,
        mut server,
        _daemon,
        _dir,
        ..
    } = s;
    let read_all = std::time::Instant::now() + Duration::from_secs(30);
    while server.stats().connections_active.load(Ordering::SeqCst) > 0 {
        assert!(
            std::time::Instant::now() < read_all,
            "the page server still serves a connection of a backend that exited"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    server.shutdown();
    drop(_daemon);
    let c = lfc::Lfc::open(&lfc).unwrap().stats();
    assert!(
        c.capacity_pages >= 2 * PAGES,
        "room for the relation: {c:?}"
    );
    assert_eq!(
        (c.evictions, c.writes, c.drops, c.stale_rejects),
        (0, 0, 0, 0),
        "nothing evicted, written or dropped: {c:?}"
    );
    assert_eq!(
        c.installs, PAGES,
        "each page entered the shared LFC once: {c:?}"
    );
    assert_eq!(c.used_pages, PAGES, "{c:?}");
    let stats = server.stats();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let sent = load(&stats.prefetch_pages_sent);
    let queued = load(&stats.prefetch_pages_queued);
    let get_page = load(&stats.get_page);
    assert!(
        c.installs + c.already_present <= sent + get_page,
        "an offer per page the server sent (fewer if a datagram was lost): {c:?}, {sent} sent, \
         {get_page} GetPages"
    );
    // What the server was asked for.
    assert_eq!(
        (
            load(&stats.prefetch_pages_dropped_overflow),
            load(&stats.prefetch_dropped_no_target)
        ),
        (0, 0),
        "every Prefetch was queued"
    );
    let prefetched = a["prefetched"] + b["prefetched"];
    let retries = a["retries"] + b["retries"];
    assert!(
        queued >= prefetched,
        "the server queued every page the backends prefetched: {queued} queued, {prefetched} \
         prefetched; a: {a:?}, b: {b:?}"
    );
    assert!(
        queued + get_page >= PAGES,
        "every page was asked for: {queued} by Prefetch, {get_page} by GetPage"
    );
    assert!(
        prefetched <= PAGES + PAGES / 100,
        "each page prefetched by UDP once across both processes, but for at most 1 %: \
         {prefetched} prefetches of {PAGES} pages; a: {a:?}, b: {b:?}"
    );
    let stayed_on_udp = [&a, &b]
        .iter()
        .all(|r| r["path_changes"] == 0 && r["on_udp"] == 1);
    if stayed_on_udp {
        assert!(
            queued <= prefetched + retries,
            "on UDP throughout, no Prefetch page beyond those the backends prefetched or retried \
             (no probe): {queued} queued; a: {a:?}, b: {b:?}"
        );
    }
    eprintln!(
        "two backends at once: {PAGES} pages installed once; the page server queued {queued} \
         Prefetch pages ({prefetched} prefetched and {} retried by the backends; both on UDP \
         throughout: {stayed_on_udp}), sent {sent} by datagram and answered {get_page} \
         GetPages ({} fallbacks); {} offers refused as already present; a: {a:?}; b: {b:?}",
        retries,
        a["fallbacks"] + b["fallbacks"],
        c.already_present
    );
}
