//! What the binary prints when something is wrong, and in its logs, checked as a person reads
//! it (issue 16): one cause per message, names and bare hosts accepted as addresses, a peer that
//! is not a page server named as such, readable sizes, times and verdicts, logs without colour
//! codes off a terminal.

mod common;

use common::{ServerProc, BIN, REL};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("UDPF_LOG_FORMAT")
        .output()
        .expect("run udp-prefetch")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `error: ...` line of a failed command.
fn error_line(out: &Output) -> String {
    let text = stderr(out);
    text.lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {text:?}"))
        .to_string()
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn connection_refused_is_printed_once() {
    let port = closed_port();
    let server = format!("127.0.0.1:{port}");
    let out = run(&["getpage", "--server", &server, "--rel", REL, "--blk", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        error_line(&out),
        format!("error: cannot connect to {server}: Connection refused (os error 111)")
    );
}

#[test]
fn a_bad_lfc_file_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.lfc");
    // Longer than a header, so that it is read as one (a shorter file is reported as truncated).
    std::fs::write(
        &path,
        "this is not a cache file at all, only text\n".repeat(64),
    )
    .unwrap();
    let out = run(&[
        "scan",
        "--server",
        "127.0.0.1:1",
        "--rel",
        REL,
        "--mode",
        "udp",
        "--lfc",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let line = error_line(&out);
    assert!(
        line.starts_with(&format!("error: {}: not an LFC file", path.display())),
        "{line}"
    );
    assert_eq!(line.matches("garbage.lfc").count(), 1, "{line}");
}

#[test]
fn a_host_without_port_means_the_default_port() {
    // 127.0.0.3: loopback, but no page server of this machine's other users listens on it.
    let out = run(&[
        "getpage",
        "--server",
        "127.0.0.3",
        "--rel",
        REL,
        "--blk",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        error_line(&out),
        "error: cannot connect to 127.0.0.3: Connection refused (os error 111)"
    );
}

#[test]
fn an_unresolvable_name_is_one_clear_error() {
    let out = run(&[
        "getpage",
        "--server",
        "no-such-host.invalid:6400",
        "--rel",
        REL,
        "--blk",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(
        line.starts_with("error: cannot resolve no-such-host.invalid:6400: "),
        "{line}"
    );
    assert!(!line.contains("invalid socket address"), "{line}");
}

#[test]
fn servers_listen_on_names_and_clients_connect_by_name() {
    let server = ServerProc::start(&[]);
    let port = server.addr.rsplit_once(':').unwrap().1;
    let by_name = format!("localhost:{port}");
    let out = run(&[
        "getpage", "--server", &by_name, "--rel", REL, "--blk", "0", "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A listen flag takes a name too (port 0: the ready line names the port chosen).
    let (mut child, addr) = common::spawn_ready_as_set(
        Command::new(BIN)
            .args(["pageserver", "--listen", "localhost:0"])
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped()),
        "pageserver",
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    assert!(addr.ip().is_loopback(), "{addr}");

    let out = run(&["pageserver", "--listen", "no-such-host.invalid"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot resolve \"no-such-host.invalid\": "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_http_server_is_named_as_not_a_page_server() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let http = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    });
    let server = addr.to_string();
    let out = run(&["getpage", "--server", &server, "--rel", REL, "--blk", "0"]);
    http.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        error_line(&out),
        format!(
            "error: {server} is not a PostgreSQL/pagestream server (it answered like an HTTP server)"
        )
    );
}

#[test]
fn a_silent_peer_is_given_up_on() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts and holds the connection, saying nothing, until the client gives up.
    let silent = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    let server = addr.to_string();
    let out = run(&["getpage", "--server", &server, "--rel", REL, "--blk", "0"]);
    silent.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        error_line(&out),
        format!("error: {server} did not answer within 5 s: is it a PostgreSQL/pagestream server?")
    );
}

#[test]
fn sizes_take_fractions_and_refuse_nonsense() {
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("no-such-dir").join("lfc");
    let lfc = lfc.to_str().unwrap();
    // Parsed: the daemon gets as far as the missing directory.
    let out = run(&["workers", "--lfc", lfc, "--size", "1.5GiB"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(!stderr(&out).contains("invalid size"), "{}", stderr(&out));
    assert!(stderr(&out).contains("no-such-dir"), "{}", stderr(&out));
    for (size, why) in [
        ("-1GiB", "invalid size \"-1GiB\": a size cannot be negative"),
        ("0", "invalid size \"0\": must be at least one byte"),
        (
            "1.5XB",
            "invalid size unit \"XB\" in \"1.5XB\": use K, M, G or T (KiB, MiB, GiB, TiB), e.g. 268435456, 256MiB or 1.5GiB",
        ),
    ] {
        let out = run(&["workers", "--lfc", lfc, &format!("--size={size}")]);
        assert_eq!(out.status.code(), Some(2), "{size}");
        assert!(stderr(&out).contains(why), "{size}: {}", stderr(&out));
    }
}

#[test]
fn prewarm_save_refuses_to_overwrite_or_to_save_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    drop(lfc::Lfc::create(&lfc, 64).unwrap());
    let lfc = lfc.to_str().unwrap();
    let state = dir.path().join("state");
    std::fs::write(&state, b"precious").unwrap();
    let out_path = state.to_str().unwrap();

    let out = run(&["prewarm", "save", "--lfc", lfc, "--out", out_path]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        error_line(&out),
        format!("error: {out_path} already exists: pass --force to overwrite it")
    );
    assert_eq!(std::fs::read(&state).unwrap(), b"precious");

    let out = run(&[
        "prewarm", "save", "--lfc", lfc, "--out", out_path, "--force",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(std::fs::read(&state).unwrap(), b"precious");

    let fresh = dir.path().join("fresh");
    let out = run(&[
        "prewarm",
        "save",
        "--lfc",
        lfc,
        "--out",
        fresh.to_str().unwrap(),
        "--max-pages",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        error_line(&out),
        "error: --max-pages 0 would save an empty state: pass at least 1, or omit it to save every cached page"
    );
    assert!(!fresh.exists());
}

#[test]
fn lfc_stat_prints_times_in_rfc3339_utc() {
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    drop(lfc::Lfc::create(&lfc, 64).unwrap());
    let lfc = lfc.to_str().unwrap();
    let json = run(&["lfc", "stat", "--lfc", lfc, "--json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let ms = v["created_unix_ms"]
        .as_u64()
        .expect("raw ms kept in --json");
    let when = udp_prefetch::cmd::lfc_stat::rfc3339_utc(ms);
    assert_eq!(v["created"], when.as_str());
    let human = run(&["lfc", "stat", "--lfc", lfc]);
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(text.contains(&format!(" at {when}\n")), "{text}");
    assert!(!text.contains("unix ms"), "{text}");
}

#[test]
fn getpage_json_names_the_verdict_in_snake_case() {
    let server = ServerProc::start(&[]);
    let out = run(&[
        "getpage",
        "--server",
        &server.addr,
        "--rel",
        REL,
        "--blk",
        "0",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["check"], "valid");
}

/// Starts a worker daemon with `extra` flags and logging at `info`, stops it, and returns what
/// it logged on stderr (a pipe: not a terminal).
fn daemon_log(extra: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    let (child, _) = common::spawn_ready_as_set(
        Command::new(BIN)
            .arg("workers")
            .arg("--lfc")
            .arg(&lfc)
            .args(["--size", "4MiB", "--listen", "127.0.0.1:0", "--no-prefault"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .env_remove("UDPF_LOG_FORMAT")
            .envs(env.iter().copied())
            .stderr(Stdio::piped()),
        "workers",
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn logs_print_addresses_plainly_and_no_colour_off_a_terminal() {
    let log = daemon_log(&["--metrics", "127.0.0.1:0"], &[]);
    assert!(log.contains("workers started"), "{log}");
    assert!(log.contains(" metrics=127.0.0.1:"), "{log}");
    assert!(!log.contains("Some("), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a pipe: {log:?}");

    let log = daemon_log(&[], &[]);
    assert!(log.contains(" metrics=none "), "{log}");
}

#[test]
fn logs_in_json_are_one_object_per_line() {
    for (extra, env) in [
        (&["--log-format", "json"][..], &[][..]),
        (&[][..], &[("UDPF_LOG_FORMAT", "json")][..]),
    ] {
        let log = daemon_log(extra, env);
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect();
        let started = lines
            .iter()
            .find(|v| v["fields"]["message"] == "workers started")
            .unwrap_or_else(|| panic!("{log}"));
        assert_eq!(started["fields"]["metrics"], "none");
        assert_eq!(started["level"], "INFO");
    }
}

#[test]
fn scan_logs_progress_when_not_on_a_terminal() {
    let server = ServerProc::start(&["--service-delay-us", "100"]);
    let out = Command::new(BIN)
        .args([
            "scan",
            "--server",
            &server.addr,
            "--rel",
            REL,
            "--mode",
            "tcp-sync",
            "--blocks",
            "0..2000",
            "--progress-interval-ms",
            "50",
        ])
        .env("RUST_LOG", "info")
        .env_remove("UDPF_LOG_FORMAT")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    let progress: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("scan progress"))
        .collect();
    assert!(!progress.is_empty(), "no progress line in {log:?}");
    assert!(progress[0].contains("total=2000"), "{}", progress[0]);
    assert!(!log.contains('\x1b'), "{log:?}");
}
