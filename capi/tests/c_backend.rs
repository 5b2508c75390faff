//! Backends written in C (`tests/c/scan.c`, compiled here with the system C compiler `cc` and
//! linked with `libudp_prefetch_c.so`) against a real page server and worker daemon: a scan
//! whose every page verifies in C, and two processes sharing one LFC.
//!
//! The page server and the daemon run in this test's process (`PageServer::start`,
//! `workers::daemon::run`), as real servers on loopback sockets; the C backends are processes
//! of their own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use udp_prefetch::pageserver::source::SourceSpec;
use udp_prefetch::pageserver::{PageServer, ServerConfig};

const PAGES: u64 = 2000;

/// The tests run one at a time: each starts a page server and a daemon in this process, and a
/// scan whose UDP path competes with the other test's for two loaded CPUs falls back to TCP
/// (correctly, but then shows no hits).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
const RELNODE: &str = "16384";

/// Where cargo put this package's shared library: beside the test binary (`<profile>/deps`)
/// when built for the tests, else in `<profile>`.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    let profile = deps.parent().unwrap().to_path_buf();
    [deps, profile]
        .into_iter()
        .find(|d| d.join("libudp_prefetch_c.so").exists())
        .expect("libudp_prefetch_c.so beside the test binary")
}

/// Compiles `tests/c/scan.c` against the checked-in header and the shared library.
fn compile_scan(out_dir: &Path) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let libs = lib_dir();
    let exe = out_dir.join("scan");
    let out = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-I"])
        .arg(manifest.join("include"))
        .arg(manifest.join("tests/c/scan.c"))
        .arg("-L")
        .arg(&libs)
        .arg("-ludp_prefetch_c")
        .arg(format!("-Wl,-rpath,{}", libs.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run cc (the system C compiler)");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// A worker daemon on `lfc` (created with 64 MiB), in a thread of this process until dropped.
struct Daemon {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    fn start(lfc: &Path) -> Daemon {
        let config = workers::daemon::DaemonConfig {
            lfc: lfc.to_path_buf(),
            create_size_bytes: Some(64 << 20),
            recreate: false,
            listen: "127.0.0.1:0".parse().unwrap(),
            threads: 1,
            io: workers::udp::IoChoice::Epoll,
            metrics: None,
            pid_file: None,
            recv_buffer_bytes: 8 << 20,
            slots_per_thread: 64,
            gro: true,
            prefault: false,
            thread_classes: false,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            workers::daemon::run(&config, &stop2, |_| tx.send(()).unwrap()).expect("worker daemon");
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the daemon starts");
        Daemon {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn page_server() -> PageServer {
    PageServer::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        source: SourceSpec::Synthetic {
            rels: 1,
            pages: PAGES as u32,
        },
        ..ServerConfig::default()
    })
    .expect("page server")
}

/// The counters a C scan printed (`name=value` words).
fn run_scan(exe: &Path, lfc: &Path, server: &PageServer) -> std::collections::HashMap<String, u64> {
    let out = Command::new(exe)
        .arg(lfc)
        .arg(server.local_addr().to_string())
        .args([RELNODE, "256"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "C scan: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

#[test]
fn a_c_backend_scans_a_relation_with_every_page_verified_and_prefetches_hitting() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    let exe = compile_scan(dir.path());
    let server = page_server();
    let _daemon = Daemon::start(&lfc);
    let r = run_scan(&exe, &lfc, &server);
    assert_eq!(r["pages"], PAGES, "{r:?}");
    assert_eq!(r["verified"], PAGES, "{r:?}");
    assert_eq!(r["extension"], 1, "the server speaks the extension: {r:?}");
    assert!(r["prefetched"] > 0, "{r:?}");
    assert!(r["hits"] > 0, "prefetched pages found in the LFC: {r:?}");
}

#[test]
fn two_c_backends_share_one_lfc_and_each_page_is_prefetched_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    let exe = compile_scan(dir.path());
    let server = page_server();
    let _daemon = Daemon::start(&lfc);
    let first = run_scan(&exe, &lfc, &server);
    let second = run_scan(&exe, &lfc, &server);
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
    let c = lfc::Lfc::open(&lfc).unwrap().stats();
    assert_eq!(
        c.installs, PAGES,
        "each page entered the shared LFC once: {c:?}"
    );
}
