//! Running under systemd: both services report `READY=1` on `$NOTIFY_SOCKET` only once they
//! serve, ping the watchdog, and report `STOPPING=1` on SIGTERM; `service-unit` prints units that
//! `systemd-analyze verify` accepts without a warning (skipped only when `systemd-analyze` is
//! missing and `UDPF_REQUIRE_SYSTEMD` is unset), and refuses flags that would fail or leak under
//! a service manager.

mod common;

use common::{run_with_limit, BIN};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A test's stand-in for the service manager: the socket a service notifies.
struct Manager {
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Manager {
    fn new() -> Manager {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        Manager {
            socket,
            _dir: dir,
            path,
        }
    }

    /// The next message, if one arrives within 20 ms.
    fn try_recv(&self) -> Option<String> {
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8(buf[..n].to_vec()).unwrap())
    }

    /// Messages until one holds `line`, within `limit`; returns that one.
    fn wait_for(&self, line: &str, limit: Duration, child: &mut Child) -> String {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(m) = self.try_recv() {
                if m.lines().any(|l| l == line) {
                    return m;
                }
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the service exited before sending {line}"
            );
        }
        let _ = child.kill();
        panic!("no {line} within {limit:?}");
    }
}

/// Starts `udp-prefetch ARGS` as a Type=notify service with a 200 ms watchdog would be.
fn start_notifying(manager: &Manager, args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .env("NOTIFY_SOCKET", &manager.path)
        .env("WATCHDOG_USEC", "200000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// The ready line's word after `prefix` (`listening on ADDR`, `metrics=ADDR`).
fn ready_line_addr(line: &str, prefix: &str) -> SocketAddr {
    let rest = &line[line
        .find(prefix)
        .unwrap_or_else(|| panic!("{prefix} in {line}"))
        + prefix.len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

fn sigterm_and_expect_stopping(manager: &Manager, mut child: Child) {
    // SAFETY: kill only sends a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    manager.wait_for("STOPPING=1", Duration::from_secs(10), &mut child);
    let status = common::wait_with_limit(child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "exit after SIGTERM");
}

#[test]
fn pageserver_is_ready_only_when_it_accepts_and_says_stopping_on_sigterm() {
    let manager = Manager::new();
    // A port known before the start (not port 0 and the ready line): the check below must not
    // wait for anything the server does after sending READY=1.
    let addr = free_port(|a| TcpListener::bind(a).and_then(|l| l.local_addr()));
    let mut child = start_notifying(
        &manager,
        &[
            "pageserver",
            "--listen",
            &addr.to_string(),
            "--source",
            "synthetic:pages=64",
        ],
    );
    let ready = manager.wait_for("READY=1", Duration::from_secs(30), &mut child);
    // READY=1 means serving, not starting: the address takes a connection at once.
    TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("READY=1 sent but {addr} refuses connections: {e}"));
    // Kept open to the end: a write to a closed pipe would fail the service.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(ready_line_addr(&line, "listening on "), addr);
    assert!(
        ready.contains(&format!("STATUS=serving pagestream on {addr}")),
        "{ready}"
    );
    // And it serves a page.
    let out = run_with_limit(
        Command::new(BIN).args([
            "getpage",
            "--server",
            &addr.to_string(),
            "--rel",
            common::REL,
            "--blk",
            "3",
        ]),
        Duration::from_secs(20),
    );
    assert_eq!(out.code(), Some(0), "getpage after READY=1: {}", show(&out));
    manager.wait_for("WATCHDOG=1", Duration::from_secs(10), &mut child);
    sigterm_and_expect_stopping(&manager, child);
    drop(stdout);
}

#[test]
fn workers_are_ready_only_when_the_udp_port_is_bound_and_say_stopping_on_sigterm() {
    let manager = Manager::new();
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    let lfc_arg = lfc.to_str().unwrap();
    // Ports known before the start, as for the page server.
    let udp = free_port(|a| UdpSocket::bind(a).and_then(|s| s.local_addr()));
    let metrics = free_port(|a| TcpListener::bind(a).and_then(|l| l.local_addr()));
    let mut child = start_notifying(
        &manager,
        &[
            "workers",
            "--lfc",
            lfc_arg,
            "--size",
            "8MiB",
            "--listen",
            &udp.to_string(),
            "--metrics",
            &metrics.to_string(),
            "--threads",
            "1",
        ],
    );
    let ready = manager.wait_for("READY=1", Duration::from_secs(30), &mut child);
    // At READY=1 the daemon's SO_REUSEPORT group holds the port (a plain bind is refused), its
    // metrics endpoint takes connections, and the LFC names it to backends.
    let probe = UdpSocket::bind(udp);
    assert_eq!(
        probe.map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::AddrInUse,
        "READY=1 sent but nothing holds {udp}"
    );
    TcpStream::connect_timeout(&metrics, Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("READY=1 sent but metrics {metrics} refuse: {e}"));
    let stat = run_with_limit(
        Command::new(BIN).args(["lfc", "stat", "--lfc", lfc_arg, "--json"]),
        Duration::from_secs(20),
    );
    assert!(
        stat.stdout.contains("\"daemon_alive\":true"),
        "READY=1 sent before the daemon registered in the LFC: {}",
        show(&stat)
    );
    assert!(
        ready.contains(&format!("STATUS=receiving on {udp}")),
        "{ready}"
    );
    // A datagram sent now is received (and turned away as junk).
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.send_to(&[0u8; 64], udp).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = workers::http::get(metrics, "/metrics").unwrap_or_default();
        if text.contains("udp_prefetch_datagrams_received_total 1") {
            break;
        }
        assert!(Instant::now() < deadline, "datagram not received:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The watchdog is fed from the daemon's LFC heartbeat.
    manager.wait_for("WATCHDOG=1", Duration::from_secs(10), &mut child);
    // Kept open to the end: a write to a closed pipe would fail the service.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(ready_line_addr(&line, "listening on "), udp);
    sigterm_and_expect_stopping(&manager, child);
    drop(stdout);
}

/// A loopback port that `bind` got from the kernel and gave back: free for the service to take
/// (the kernel hands out ephemeral ports in turn, so it does not come back at once).
fn free_port(bind: impl Fn(&str) -> std::io::Result<SocketAddr>) -> SocketAddr {
    bind("127.0.0.1:0").unwrap()
}

#[test]
fn without_notify_socket_nothing_changes() {
    // The plain start the other tests and the README use: no variable, no notification, and
    // the same ready line.
    let dir = tempfile::tempdir().unwrap();
    let w = common::WorkersProc::start(&dir.path().join("lfc"), &["--size", "8MiB"]);
    assert!(w.udp_port != 0);
}

/// `udp-prefetch service-unit ARGS`.
fn service_unit(args: &[&str]) -> common::Finished {
    run_with_limit(
        Command::new(BIN).arg("service-unit").args(args),
        Duration::from_secs(20),
    )
}

fn workers_unit(flags: &[&str]) -> String {
    let mut args = vec!["workers", "--binary", BIN, "--"];
    args.extend_from_slice(flags);
    let out = service_unit(&args);
    assert_eq!(out.code(), Some(0), "{}", show(&out));
    out.stdout
}

/// The `.mount` unit of the LFC's directory, for a worker daemon running as root (a user every
/// host has).
fn mount_unit(lfc: &str) -> String {
    let out = service_unit(&[
        "workers",
        "--user",
        "root",
        "--mount-unit",
        "--",
        "--lfc",
        lfc,
        "--size",
        "1GiB",
    ]);
    assert_eq!(out.code(), Some(0), "{}", show(&out));
    out.stdout
}

#[test]
fn the_mount_unit_puts_the_lfc_directory_on_2_mib_pages() {
    let m = mount_unit("/mnt/lfc/cache");
    assert_eq!(setting(&m, "Where"), ["/mnt/lfc"]);
    assert_eq!(setting(&m, "Type"), ["tmpfs"]);
    // Twice the file (a --recreate builds the new one beside the old) plus 64 MiB.
    assert_eq!(
        setting(&m, "Options"),
        ["huge=within_size,size=2258632704,mode=0700,uid=0,gid=0,nosuid,nodev"]
    );
    assert_eq!(setting(&m, "WantedBy"), ["local-fs.target"]);
    // The service requires the mount of the LFC's directory, which pulls the unit in.
    let w = workers_unit(&["--lfc", "/mnt/lfc/cache", "--size", "1GiB"]);
    assert_eq!(setting(&w, "RequiresMountsFor"), ["/mnt/lfc"]);
}

fn pageserver_unit(flags: &[&str]) -> String {
    let mut args = vec!["pageserver", "--binary", BIN, "--"];
    args.extend_from_slice(flags);
    let out = service_unit(&args);
    assert_eq!(out.code(), Some(0), "{}", show(&out));
    out.stdout
}

fn setting<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn units_carry_the_flags_readiness_restart_and_scheduling() {
    let w = workers_unit(&[
        "--lfc",
        "/mnt/lfc/cache",
        "--size",
        "1GiB",
        "--listen",
        "0.0.0.0:6401",
        "--pid-file",
        "/run/udpf/workers.pid",
    ]);
    assert_eq!(
        setting(&w, "ExecStart"),
        [format!(
            "{BIN} workers --lfc /mnt/lfc/cache --size 1GiB --listen 0.0.0.0:6401 --pid-file /run/udpf/workers.pid"
        )]
    );
    assert_eq!(setting(&w, "Type"), ["notify"]);
    assert_eq!(setting(&w, "NotifyAccess"), ["main"]);
    assert_eq!(setting(&w, "Restart"), ["on-failure"]);
    assert_eq!(setting(&w, "RestartPreventExitStatus"), ["2"]);
    assert_eq!(setting(&w, "Nice"), ["-10"]);
    assert_eq!(setting(&w, "User"), ["postgres"]);
    assert_eq!(setting(&w, "ReadWritePaths"), ["-/mnt/lfc -/run/udpf"]);
    assert_eq!(setting(&w, "RequiresMountsFor"), ["/mnt/lfc /run/udpf"]);
    assert_eq!(setting(&w, "CapabilityBoundingSet"), [""]);
    assert!(
        setting(&w, "PrivateDevices").is_empty(),
        "would hide /dev/shm"
    );
    assert!(setting(&w, "CPUSchedulingPolicy").is_empty());
    assert!(setting(&w, "AmbientCapabilities").is_empty());
    // The real-time class needs CAP_SYS_NICE as the service's user; the unit grants it only
    // when the flags ask for that class.
    let rt = workers_unit(&[
        "--lfc",
        "/mnt/lfc/cache",
        "--size",
        "1GiB",
        "--thread-class",
        "realtime",
    ]);
    assert_eq!(setting(&rt, "AmbientCapabilities"), ["CAP_SYS_NICE"]);
    assert_eq!(setting(&rt, "CapabilityBoundingSet"), ["CAP_SYS_NICE"]);

    // The page server: the README's sender nice unless the flags set one, and the capability
    // a negative one needs; its file limit follows --max-connections.
    let p = pageserver_unit(&["--listen", "0.0.0.0:6400", "--max-connections", "50000"]);
    assert_eq!(
        setting(&p, "ExecStart"),
        [format!(
            "{BIN} pageserver --listen 0.0.0.0:6400 --max-connections 50000 --prefetch-sender-nice=-10"
        )]
    );
    assert_eq!(setting(&p, "AmbientCapabilities"), ["CAP_SYS_NICE"]);
    assert_eq!(setting(&p, "LimitNOFILE"), ["201024"]);
    assert!(
        setting(&p, "Nice").is_empty(),
        "Nice= would slow every connection thread"
    );
    let p = pageserver_unit(&["--listen", "0.0.0.0:6400", "--prefetch-sender-nice", "0"]);
    assert_eq!(
        setting(&p, "ExecStart"),
        [format!(
            "{BIN} pageserver --listen 0.0.0.0:6400 --prefetch-sender-nice 0"
        )]
    );
    assert!(setting(&p, "AmbientCapabilities").is_empty());
    assert_eq!(setting(&p, "LimitNOFILE"), ["65536"]);

    // Words systemd would otherwise split or expand reach the daemon as given.
    let w = workers_unit(&["--lfc", "/dev/shm/a b%1$x", "--size", "8MiB"]);
    assert_eq!(
        setting(&w, "ExecStart"),
        [format!(
            "{BIN} workers --lfc \"/dev/shm/a b%%1$$x\" --size 8MiB"
        )]
    );
}

#[test]
fn service_unit_refuses_what_would_fail_under_systemd() {
    let refused = |args: &[&str], why: &str| {
        let out = service_unit(args);
        assert_eq!(out.code(), Some(2), "{args:?}: {}", show(&out));
        assert!(out.stderr.contains(why), "{args:?}: {}", out.stderr);
        assert!(
            out.stdout.is_empty(),
            "printed a unit anyway: {}",
            out.stdout
        );
    };
    // A typo fails now, with the daemon's own parser's message.
    refused(
        &[
            "workers",
            "--",
            "--lfc",
            "/dev/shm/lfc",
            "--size",
            "1GiB",
            "--thread",
            "2",
        ],
        "unexpected argument '--thread'",
    );
    refused(
        &[
            "workers",
            "--",
            "--lfc",
            "/dev/shm/lfc",
            "--size",
            "1 parsec",
        ],
        "invalid size unit",
    );
    refused(
        &["workers", "--", "--lfc", "lfc", "--size", "1GiB"],
        "--lfc lfc is not an absolute path",
    );
    refused(&["workers", "--", "--lfc", "/dev/shm/lfc"], "needs --size");
    refused(
        &["pageserver", "--", "--token", "secret"],
        "UDPF_TOKEN=... in /etc/udp-prefetch/pageserver.env",
    );
    refused(
        &["pageserver", "--", "--token=secret"],
        "readable by every user",
    );
    refused(
        &["pageserver", "--", "--source", "pgdata:data"],
        "is not an absolute path",
    );
    refused(
        &["pageserver", "--binary", "bin/udp-prefetch", "--"],
        "--binary bin/udp-prefetch is not an absolute path",
    );
    refused(
        &["pageserver", "--", "--max-connections", "0x"],
        "invalid value '0x'",
    );
    // The huge-page tmpfs never goes over a directory other programs use.
    refused(
        &[
            "workers",
            "--user",
            "root",
            "--mount-unit",
            "--",
            "--lfc",
            "/dev/shm/lfc",
            "--size",
            "1GiB",
        ],
        "a directory of its own",
    );
    refused(
        &["pageserver", "--mount-unit", "--"],
        "--mount-unit is for `workers`",
    );
}

#[test]
fn generated_units_pass_systemd_analyze_verify() {
    if !common::tools_or_skip(&["systemd-analyze"], "UDPF_REQUIRE_SYSTEMD") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let units = [
        (
            "udp-prefetch-workers.service",
            workers_unit(&[
                "--lfc",
                "/dev/shm/udpf lfc",
                "--size",
                "1GiB",
                "--listen",
                "0.0.0.0:6401",
                "--metrics",
                "127.0.0.1:9187",
                "--pid-file",
                "/run/udp-prefetch/workers.pid",
                "--log-format",
                "json",
            ]),
        ),
        (
            "udp-prefetch-pageserver.service",
            pageserver_unit(&[
                "--listen",
                "0.0.0.0:6400",
                "--source",
                "pgdata:/var/lib/postgresql/data",
                "--metrics",
                "127.0.0.1:9188",
            ]),
        ),
        (
            "udp-prefetch-pageserver-plain.service",
            pageserver_unit(&["--prefetch-sender-nice", "0"]),
        ),
    ];
    let mount = mount_unit("/run/udp-prefetch-lfc/lfc");
    let name = mount
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# Save as /etc/systemd/system/"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the mount unit names its file")
        .to_string();
    assert_eq!(name, "run-udp\\x2dprefetch\\x2dlfc.mount");
    let units = units
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .chain([(name, mount)]);
    for (name, text) in units {
        let path = dir.path().join(&name);
        std::fs::write(&path, &text).unwrap();
        let out = verify(&path);
        assert_eq!(out.code(), Some(0), "{name}: {}\n{text}", show(&out));
        // verify reports unknown keys and bad values as warnings with status 0: none allowed.
        assert!(
            out.stdout.trim().is_empty() && out.stderr.trim().is_empty(),
            "{name}: systemd-analyze verify warned: {}\n{text}",
            show(&out)
        );
    }
    // And it does catch a broken unit (so the test above checks something).
    let broken = dir.path().join("udp-prefetch-broken.service");
    let text =
        workers_unit(&["--lfc", "/dev/shm/lfc", "--size", "1GiB"]).replace("Nice=-10", "Nice=-30");
    std::fs::write(&broken, text).unwrap();
    let out = verify(&broken);
    assert!(out.stderr.contains("Nice"), "{}", show(&out));
}

/// A finished child's status and output, for failure messages.
fn show(out: &common::Finished) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status, out.stdout, out.stderr
    )
}

fn verify(path: &Path) -> common::Finished {
    run_with_limit(
        Command::new("systemd-analyze").arg("verify").arg(path),
        Duration::from_secs(60),
    )
}
