//! Helpers shared by the end-to-end tests: spawning the real `udp-prefetch` binary, or servers
//! in the test's process, running commands, test certificates. The capi crate's tests include
//! this module too (`#[path]`), so it names only dependencies both crates' tests have.
#![allow(dead_code)] // Each test file uses a different subset.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use udp_prefetch::pageserver::source::SourceSpec;
use udp_prefetch::pageserver::ServerConfig;

/// The `udp-prefetch` binary, which cargo builds for the root crate's tests. The capi crate's
/// tests, which have no such binary, run their servers in process and never use it.
pub const BIN: &str = match option_env!("CARGO_BIN_EXE_udp-prefetch") {
    Some(bin) => bin,
    None => "udp-prefetch (not built for this crate's tests)",
};
/// The first relation of a synthetic page server (`Synthetic::rel(0)`).
pub const REL: &str = "1663/5/16384/0";

/// Sends SIGTERM and returns the exit status, waiting at most `limit`.
fn terminate(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops a child that is still running (SIGTERM, then SIGKILL) and reaps it.
fn reap(child: &mut Child) {
    if child.try_wait().ok().flatten().is_none() {
        let _ = terminate(child, Duration::from_secs(5));
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Spawns `cmd` (a `udp-prefetch <what>` server) logging warnings to the test's stderr, and
/// waits for its ready line (see [`spawn_ready_as_set`]).
fn spawn_ready(cmd: &mut Command, what: &str) -> (Child, String) {
    spawn_ready_as_set(cmd.env("RUST_LOG", "warn").stderr(Stdio::inherit()), what)
}

/// Spawns `cmd` (a `udp-prefetch <what>` server; its log level and stderr as the caller set
/// them) with stdout piped, and waits for its ready line, `udp-prefetch <what> listening on …`;
/// returns the child (stdout taken) and the rest of that line.
pub fn spawn_ready_as_set(cmd: &mut Command, what: &str) -> (Child, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn udp-prefetch {what}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read ready line");
    let rest = line
        .trim()
        .strip_prefix(&format!("udp-prefetch {what} listening on "))
        .unwrap_or_else(|| panic!("unexpected first line from {what}: {line:?}"))
        .to_string();
    (child, rest)
}

/// A `udp-prefetch pageserver` child process; SIGTERMed and reaped on drop.
pub struct ServerProc {
    pub child: Child,
    pub addr: String,
    /// The `/metrics` endpoint, when started with `--metrics`.
    pub metrics: Option<std::net::SocketAddr>,
}

impl ServerProc {
    /// Starts the server on an ephemeral port with extra flags and waits for its ready line.
    pub fn start(extra: &[&str]) -> ServerProc {
        Self::start_on("127.0.0.1:0", extra)
    }

    /// Like `start`, listening on `listen`.
    pub fn start_on(listen: &str, extra: &[&str]) -> ServerProc {
        let (child, rest) = spawn_ready(
            Command::new(BIN)
                .arg("pageserver")
                .args(["--listen", listen])
                .args(extra),
            "pageserver",
        );
        let rest = rest.as_str();
        let (addr, metrics) = match rest.split_once(" metrics=") {
            Some((addr, m)) => (addr, Some(m.parse().expect("metrics address"))),
            None => (rest, None),
        };
        ServerProc {
            child,
            addr: addr.to_string(),
            metrics,
        }
    }

    /// The `/metrics` endpoint's text (the server must have been started with `--metrics`).
    pub fn scrape(&self) -> String {
        scrape(self.metrics.expect("started with --metrics"))
    }

    /// Sends SIGTERM and returns the exit status (waits at most `limit`).
    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        terminate(&mut self.child, limit)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        reap(&mut self.child);
    }
}

/// `udp-prefetch scan --json` of [`REL`] on `server` in `mode` through the LFC at `lfc`; more
/// flags may be added.
pub fn scan_command(server: &ServerProc, lfc: &Path, mode: &str) -> Command {
    scan_rel_command(server, lfc, mode, REL)
}

/// Like [`scan_command`], of relation `rel`.
pub fn scan_rel_command(server: &ServerProc, lfc: &Path, mode: &str, rel: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "scan",
        "--server",
        &server.addr,
        "--rel",
        rel,
        "--mode",
        mode,
    ])
    .arg("--lfc")
    .arg(lfc)
    .arg("--json")
    .env("RUST_LOG", "warn");
    cmd
}

/// `GET /metrics` from `addr`: the body of a 200 answer.
pub fn scrape(addr: std::net::SocketAddr) -> String {
    let response = workers::http::get(addr, "/metrics").expect("GET /metrics");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    body.to_string()
}

/// The value of one sample of a scrape, by its series as written (`name{label="v"}`), or
/// `None` when it is absent.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a sample value"))
}

/// Checks a scrape with `promtool check metrics`: `Some(())` when it passed, `None` when
/// promtool is not installed (and not required by `UDPF_REQUIRE_PROMTOOL`).
pub fn promtool_check(text: &str) -> Option<()> {
    use std::io::Write;
    if !tools_or_skip(&["promtool"], "UDPF_REQUIRE_PROMTOOL") {
        return None;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(())
}

/// The standard `process_*` families are present with plausible values.
pub fn assert_process_metrics(text: &str) {
    let get = |name: &str| sample(text, name).unwrap_or_else(|| panic!("{name} missing:\n{text}"));
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
    ] {
        assert!(get(name) > 0.0, "{name} is not positive:\n{text}");
    }
    assert!(get("process_max_fds") >= get("process_open_fds"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = get("process_start_time_seconds");
    assert!(
        started > now - 3600.0 && started <= now + 1.0,
        "started at {started}, now {now}"
    );
}

/// Whether an optional external tool is required: tests that need it skip only when the
/// variable is unset (CI sets it).
pub fn required(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Whether every one of `tools` is installed; when one is not, the test is skipped (a line on
/// stderr says so) unless `var` requires the tools (`required`), which fails it.
pub fn tools_or_skip(tools: &[&str], var: &str) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have_command(t)).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(!required(var), "{var} is set but {missing:?} missing");
    eprintln!("skipping: {missing:?} not installed and {var} unset");
    false
}

pub fn have_command(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Prefetches `blocks` of synthetic relation 0 from the page server at `server` to the daemon
/// on `udp_port` and waits (10 s at most each) for every one to reach the LFC at `lfc`: the
/// daemon received, verified and installed them. A scan's hits cannot show that on a loaded
/// machine, where its reads may rightly all go over TCP before a descheduled daemon's
/// datagrams land (those count as already present, not installed).
pub fn prefetch_and_await(server: &str, lfc: &Path, udp_port: u16, blocks: std::ops::Range<u32>) {
    use udp_prefetch::compute::backend::{read_path::ReadPathConfig, Backend};
    use udp_prefetch::protocol::client::{ConnectOptions, PageClient};
    let cache = lfc::Lfc::open(lfc).expect("open the LFC");
    let client = PageClient::connect(&ConnectOptions::new(server.to_string())).expect("connect");
    let mut backend =
        Backend::with_prefetch_port(&cache, client, ReadPathConfig::default(), Some(udp_port))
            .expect("a backend over the LFC");
    let rel = udp_prefetch::pageserver::source::Synthetic::rel(0);
    backend.prefetch(rel, blocks.clone()).expect("prefetch");
    for blkno in blocks {
        assert!(
            cache.wait_for_arrival(&rel.block(blkno), Duration::from_secs(10)),
            "prefetched block {blkno} did not arrive in the LFC within 10 s"
        );
    }
}

/// A `udp-prefetch workers` child process; SIGTERMed and reaped on drop.
pub struct WorkersProc {
    pub child: Child,
    pub udp_port: u16,
    pub metrics: String,
    pub io: String,
}

impl WorkersProc {
    pub fn start(lfc: &Path, extra: &[&str]) -> WorkersProc {
        Self::start_with(Command::new(BIN), lfc, extra)
    }

    /// Starts the daemon from a prepared command (e.g. one with a seccomp filter applied).
    pub fn start_with(cmd: Command, lfc: &Path, extra: &[&str]) -> WorkersProc {
        Self::start_on(cmd, "127.0.0.1:0", lfc, extra)
    }

    /// Like `start_with`, receiving datagrams on `listen`.
    pub fn start_on(mut cmd: Command, listen: &str, lfc: &Path, extra: &[&str]) -> WorkersProc {
        let (child, rest) = spawn_ready(
            cmd.arg("workers")
                .arg("--lfc")
                .arg(lfc)
                .args(["--listen", listen, "--metrics", "127.0.0.1:0"])
                .args(extra),
            "workers",
        );
        let mut words = rest.split_whitespace();
        let addr: std::net::SocketAddr = words.next().unwrap().parse().unwrap();
        let field = |w: &str, k: &str| w.strip_prefix(k).map(str::to_string);
        let words: Vec<&str> = words.collect();
        let io = words.iter().find_map(|w| field(w, "io=")).unwrap();
        let metrics = words.iter().find_map(|w| field(w, "metrics=")).unwrap();
        WorkersProc {
            child,
            udp_port: addr.port(),
            metrics,
            io,
        }
    }

    /// The metrics endpoint's text.
    pub fn scrape(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.metrics).expect("connect to metrics");
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").expect("HTTP response");
        assert!(head.starts_with("HTTP/1.0 200"), "{head}");
        body.to_string()
    }

    /// One sample's value, e.g. `metric(&text, "udp_prefetch_datagrams_dropped_total{reason=\"bad_mac\"}")`.
    pub fn metric(text: &str, name: &str) -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("metric {name} missing"))
            .trim()
            .parse::<f64>()
            .unwrap() as u64
    }

    /// Scrapes until `done` holds for the text, for at most `limit` (the daemon works
    /// asynchronously; this bounds the wait rather than guessing a sleep).
    pub fn scrape_until(&self, limit: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let text = self.scrape();
            if done(&text) || std::time::Instant::now() > deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        terminate(&mut self.child, limit)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash, and reap at once (a zombie's pid still looks alive to `kill(pid, 0)`).
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the worker daemon");
        self.child.wait().expect("reap the worker daemon");
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`, `libc::SIGCONT`) to the running daemon.
    pub fn signal(&mut self, signal: i32) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "the worker daemon has exited"
        );
        // SAFETY: signalling our own child, not yet reaped, so its pid is not reused.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }
}

impl Drop for WorkersProc {
    fn drop(&mut self) {
        // A paused daemon must wake up to handle SIGTERM.
        if self.child.try_wait().ok().flatten().is_none() {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
        }
        reap(&mut self.child);
    }
}

/// What a child run by [`run_with_limit`] did: its exit status (None: still running when the
/// limit ran out, then killed) and its output.
pub struct Finished {
    pub status: Option<std::process::ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

/// Spawns `cmd` with piped output and waits for it at most `limit`; a child still running then
/// is SIGKILLed (so a test that expects a refusal or a bounded scan cannot hang).
pub fn run_with_limit(cmd: &mut Command, limit: Duration) -> Finished {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_with_limit(child, limit)
}

/// Waits for a child spawned with piped stdout and stderr, at most `limit` (see
/// [`run_with_limit`]).
pub fn wait_with_limit(mut child: Child, limit: Duration) -> Finished {
    use std::io::Read;
    let started = std::time::Instant::now();
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = started + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = started.elapsed();
    Finished {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed,
    }
}

/// The JSON report of a `scan --json` (or another `--json` command) that exited 0 (`what`
/// names it in failures).
pub fn report(what: &str, done: &Finished) -> serde_json::Value {
    assert!(
        done.status.is_some(),
        "{what}: still running after {:.1} s, killed (a crawl?); stderr: {}",
        done.elapsed.as_secs_f64(),
        done.stderr
    );
    assert_eq!(done.code(), Some(0), "{what}: stderr: {}", done.stderr);
    serde_json::from_str(&done.stdout)
        .unwrap_or_else(|e| panic!("{what}: scan --json output: {e}: {:?}", done.stdout))
}

/// One counter of a scan's JSON report.
pub fn counter(r: &serde_json::Value, name: &str) -> u64 {
    r[name]
        .as_u64()
        .unwrap_or_else(|| panic!("scan --json lacks counter {name}: {r}"))
}

pub fn assert_every_page_verified(r: &serde_json::Value, pages: u64) {
    assert_eq!(counter(r, "pages"), pages, "{r}");
    assert_eq!(counter(r, "verified"), pages, "{r}");
    assert_eq!(counter(r, "failed"), 0, "{r}");
}

/// `udp-prefetch lfc stat --json` of `lfc`, which must succeed.
pub fn lfc_stat(lfc: &Path) -> serde_json::Value {
    let done = run_with_limit(
        Command::new(BIN)
            .args(["lfc", "stat", "--json", "--lfc"])
            .arg(lfc),
        Duration::from_secs(60),
    );
    assert_eq!(done.code(), Some(0), "lfc stat: {}", done.stderr);
    serde_json::from_str(&done.stdout).expect("lfc stat --json output")
}

/// Measures a tcp-pipelined scan of [`REL`], `pages` long (no LFC needed), and returns how long
/// a faulted udp scan of it may run, and the reference report (its digest is the right
/// answer). Generous (30 s plus 20 times as long): only a guard against a crawl.
pub fn scan_limit(server: &ServerProc, lfc: &Path, pages: u64) -> (Duration, serde_json::Value) {
    let done = run_with_limit(
        &mut scan_command(server, lfc, "tcp-pipelined"),
        Duration::from_secs(120),
    );
    let r = report("tcp-pipelined scan", &done);
    assert_every_page_verified(&r, pages);
    (Duration::from_secs(30) + done.elapsed * 20, r)
}

/// Runs `cmd` to completion and returns its output, failing the test (with `what` and the
/// child's stderr) unless it exited 0.
pub fn output_ok(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd`, which must fail with exit status `code` and a stderr that contains `says` (and
/// no panic); returns that stderr.
pub fn fails_with(cmd: &mut Command, code: i32, says: &str) -> String {
    let out = cmd.output().expect("run the command");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(says), "{says:?} not in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// Runs a `scan --json` (or another command printing one JSON document first) that must exit
/// 0, and returns that document.
pub fn json_ok(cmd: &mut Command, what: &str) -> serde_json::Value {
    json_of(&output_ok(cmd, what), what)
}

/// The first JSON document `out` printed on stdout.
pub fn json_of(out: &std::process::Output, what: &str) -> serde_json::Value {
    serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<serde_json::Value>()
        .next()
        .unwrap_or_else(|| panic!("{what}: no JSON output"))
        .unwrap_or_else(|e| {
            let text = String::from_utf8_lossy(&out.stdout);
            panic!("{what}: JSON output: {e}: {text}")
        })
}

/// A page server configuration on an ephemeral loopback port serving one synthetic relation
/// ([`REL`]) of `pages` pages; the rest is the default.
pub fn synthetic_server_config(pages: u32) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        source: SourceSpec::Synthetic { rels: 1, pages },
        ..ServerConfig::default()
    }
}

/// A worker daemon in a thread of this process (`workers::daemon::run`, as the binary runs it),
/// on `lfc` (created with `create_bytes` if absent), one receive thread on an ephemeral
/// loopback port; stopped and joined on drop.
pub struct DaemonThread {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DaemonThread {
    /// Starts the daemon and waits (at most 30 s) until it serves.
    pub fn start(lfc: &Path, create_bytes: u64) -> DaemonThread {
        let config = workers::daemon::DaemonConfig {
            lfc: lfc.to_path_buf(),
            create_size_bytes: Some(create_bytes),
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
            thread_class: None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            workers::daemon::run(&config, &stop2, |_| tx.send(()).unwrap()).expect("worker daemon");
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the daemon starts");
        DaemonThread {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for DaemonThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A CA and a server certificate it signed, as PEM files in a temporary directory (made per
/// test with rcgen, so no key is committed).
pub struct Certs {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A fresh CA, and a server certificate from it for `names` (host names or IP addresses).
pub fn certs(names: &[&str]) -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "udp-prefetch test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Certs {
        ca: write("ca.pem", ca.pem()),
        cert: write("server.pem", cert.pem()),
        key: write("server.key", key.serialize_pem()),
        _dir: dir,
    }
}

/// Sets its flag when dropped, also while a panic unwinds: a `std::thread::scope` whose body
/// panics waits for its threads first, and a thread that loops until the flag is set would
/// hang the test instead of failing it.
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
