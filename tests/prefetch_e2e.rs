//! The prefetch path end to end with real processes: page server, worker daemon, scan.

mod common;

use common::{scan_command, ServerProc, WorkersProc, BIN};
use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;
use udp_prefetch::compute::backend::read_path::ReadPathConfig;
use udp_prefetch::compute::backend::Backend;
use udp_prefetch::pageserver::source::Synthetic;
use udp_prefetch::protocol::client::{ConnectOptions, PageClient};
use udp_prefetch::protocol::page::{is_synthetic_page, page_lsn, synthetic_page};
use udp_prefetch::protocol::pagestream::LATEST_LSN;
use workers::datagram::{DatagramHeader, DatagramKey, Protection, DATAGRAM_LEN};

fn scan(server: &ServerProc, lfc: &std::path::Path, mode: &str, port: u16) -> serde_json::Value {
    let out = scan_command(server, lfc, mode)
        .args(["--distance", "64", "--prefetch-port", &port.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scan {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("scan --json output: {e}"))
}

fn scan_three_modes_with(io: &str) {
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    let server = ServerProc::start(&["--source", "synthetic:pages=3000"]);
    let workers = WorkersProc::start(&lfc, &["--size", "64MiB", "--io", io, "--threads", "2"]);
    assert_eq!(workers.io, io);
    let sync = scan(&server, &lfc, "tcp-sync", workers.udp_port);
    let pipelined = scan(&server, &lfc, "tcp-pipelined", workers.udp_port);
    let udp = scan(&server, &lfc, "udp", workers.udp_port);
    for r in [&sync, &pipelined, &udp] {
        assert_eq!(r["pages"], 3000, "{r}");
        assert_eq!(r["verified"], 3000, "{r}");
        assert_eq!(r["failed"], 0, "{r}");
        assert_eq!(
            r["digest"], sync["digest"],
            "every mode reads identical pages"
        );
    }
    assert!(
        udp["hits"].as_u64().unwrap() + udp["late_hits"].as_u64().unwrap() > 0,
        "{udp}"
    );
    let text = workers.scrape();
    assert!(WorkersProc::metric(&text, "udp_prefetch_datagrams_installed_total") > 0);
}

#[test]
fn udp_scan_matches_tcp_with_io_uring() {
    scan_three_modes_with("uring");
}

#[test]
fn udp_scan_matches_tcp_with_epoll() {
    scan_three_modes_with("epoll");
}

#[test]
fn io_uring_refused_by_seccomp_falls_back_to_epoll_or_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    let mut cmd = Command::new(BIN);
    workers::udp::seccomp::deny_io_uring_on_spawn(&mut cmd);
    let workers = WorkersProc::start_with(cmd, &lfc, &["--size", "8MiB", "--io", "auto"]);
    assert_eq!(
        workers.io, "epoll",
        "auto falls back when io_uring_setup is refused"
    );
    // The fallback daemon really works: a prefetched page arrives.
    let server = ServerProc::start(&["--source", "synthetic:pages=100"]);
    let cache = lfc::Lfc::open(&lfc).unwrap();
    let client = PageClient::connect(&ConnectOptions::new(server.addr.clone())).unwrap();
    let mut backend = Backend::with_prefetch_port(
        &cache,
        client,
        ReadPathConfig::default(),
        Some(workers.udp_port),
    )
    .unwrap();
    let tag = Synthetic::rel(0).block(42);
    backend.prefetch(tag.rel, 42..43).unwrap();
    assert!(
        cache.wait_for_arrival(&tag, Duration::from_secs(10)),
        "prefetched page arrives over epoll"
    );
    drop(workers);

    let mut cmd = Command::new(BIN);
    workers::udp::seccomp::deny_io_uring_on_spawn(&mut cmd);
    let out = cmd
        .args([
            "workers",
            "--listen",
            "127.0.0.1:0",
            "--io",
            "uring",
            "--size",
            "8MiB",
        ])
        .arg("--lfc")
        .arg(dir.path().join("lfc2"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("io_uring is not available"), "{stderr}");
}

#[test]
fn forged_truncated_and_corrupt_datagrams_are_dropped_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let lfc_path = dir.path().join("lfc");
    let workers = WorkersProc::start(&lfc_path, &["--size", "8MiB", "--threads", "1"]);
    let cache = lfc::Lfc::open(&lfc_path).unwrap();
    let key = DatagramKey::new(cache.key_id(), cache.key());
    let tag = Synthetic::rel(0).block(7);
    let page = synthetic_page(tag, 16);
    let header = DatagramHeader {
        key_id: key.id,
        tag,
        request_lsn: LATEST_LSN,
        ..DatagramHeader::default()
    };
    let seal_with = |key: &DatagramKey, header: &DatagramHeader, protection| {
        let mut d = vec![0u8; DATAGRAM_LEN];
        key.stream_with([0x5E; 16], protection)
            .seal(header, &page, (&mut d[..]).try_into().unwrap())
            .unwrap();
        d
    };
    let seal =
        |key: &DatagramKey, header: &DatagramHeader| seal_with(key, header, Protection::Token);
    let good = seal(&key, &header);
    let forged = seal(&DatagramKey::new(key.id, [0xEE; 32]), &header);
    let forged_aead = seal_with(
        &DatagramKey::new(key.id, [0xEE; 32]),
        &header,
        Protection::Aead,
    );
    let h2 = DatagramHeader {
        key_id: key.id.wrapping_add(1),
        ..header
    };
    let other_key_id = seal(&DatagramKey::new(h2.key_id, cache.key()), &h2);
    let truncated = good[..DATAGRAM_LEN - 100].to_vec();
    let mut flipped = good.clone();
    flipped[5000] ^= 0x10;
    let mut oversized = good.clone();
    oversized.extend_from_slice(&[0; 10]);
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';

    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = ("127.0.0.1", workers.udp_port);
    for d in [
        &forged,
        &forged_aead,
        &other_key_id,
        &truncated,
        &flipped,
        &oversized,
        &bad_magic,
    ] {
        udp.send_to(d, to).unwrap();
    }
    let text = workers.scrape_until(Duration::from_secs(10), |t| {
        WorkersProc::metric(t, "udp_prefetch_datagrams_received_total") >= 7
    });
    let dropped = |reason: &str| {
        WorkersProc::metric(
            &text,
            &format!("udp_prefetch_datagrams_dropped_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(
        WorkersProc::metric(&text, "udp_prefetch_datagrams_received_total"),
        7
    );
    assert_eq!(
        WorkersProc::metric(&text, "udp_prefetch_datagrams_installed_total"),
        0
    );
    assert_eq!(dropped("bad_mac"), 2, "forged token, forged GCM tag");
    assert_eq!(dropped("bad_checksum"), 1, "a bit flipped in the page");
    assert_eq!(dropped("unknown_key_id"), 1);
    assert_eq!(dropped("too_short"), 1);
    assert_eq!(dropped("too_long"), 1);
    assert_eq!(dropped("bad_magic"), 1);
    assert!(
        !cache.contains(&tag),
        "nothing of an invalid datagram reaches the cache"
    );

    // Positive control: the genuine datagram is installed and readable.
    udp.send_to(&good, to).unwrap();
    assert!(cache.wait_for_arrival(&tag, Duration::from_secs(10)));
    let mut out = [0u8; 8192];
    assert!(cache.lookup(&tag, &mut out).is_some());
    assert_eq!(&out[..], &page[..]);

    // The daemon takes aead datagrams too, decrypted in the slot.
    let tag2 = Synthetic::rel(0).block(8);
    let page2 = synthetic_page(tag2, 16);
    let mut d = vec![0u8; DATAGRAM_LEN];
    key.stream_with([0x5F; 16], Protection::Aead)
        .seal(
            &DatagramHeader {
                tag: tag2,
                ..header
            },
            &page2,
            (&mut d[..]).try_into().unwrap(),
        )
        .unwrap();
    assert_ne!(&d[96..96 + 8192], &page2[..], "encrypted on the wire");
    udp.send_to(&d, to).unwrap();
    assert!(cache.wait_for_arrival(&tag2, Duration::from_secs(10)));
    assert!(cache.lookup(&tag2, &mut out).is_some());
    assert_eq!(&out[..], &page2[..]);
}

#[test]
fn metrics_endpoint_passes_promtool() {
    if !common::have_command("promtool") {
        assert!(
            !common::required("UDPF_REQUIRE_PROMTOOL"),
            "UDPF_REQUIRE_PROMTOOL is set but promtool is missing"
        );
        eprintln!("skipping: promtool not installed and UDPF_REQUIRE_PROMTOOL unset");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let workers = WorkersProc::start(&dir.path().join("lfc"), &["--size", "8MiB"]);
    // Some traffic first, so counters, labels and histogram buckets are non-trivial.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(&[0u8; 100], ("127.0.0.1", workers.udp_port))
        .unwrap();
    let text = workers.scrape_until(Duration::from_secs(10), |t| {
        WorkersProc::metric(t, "udp_prefetch_datagrams_received_total") >= 1
    });
    let (status, output) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(text.as_bytes());
    assert!(status.success(), "promtool check metrics: {output}\n{text}");
}

trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> (std::process::ExitStatus, String);
}

impl OutputWithStdin for Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> (std::process::ExitStatus, String) {
        use std::io::Write;
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status, text)
    }
}

#[test]
fn a_late_prefetch_of_a_modified_page_is_rejected_as_stale() {
    let dir = tempfile::tempdir().unwrap();
    let lfc_path = dir.path().join("lfc");
    // Every response, prefetches included, is held 300 ms: the modification below happens
    // while the prefetch is in flight.
    let server = ServerProc::start(&[
        "--source",
        "synthetic:pages=100",
        "--service-delay-us",
        "300000",
    ]);
    let workers = WorkersProc::start(&lfc_path, &["--size", "8MiB", "--threads", "1"]);
    let cache = lfc::Lfc::open(&lfc_path).unwrap();
    let tag = Synthetic::rel(0).block(9);
    let client = PageClient::connect(&ConnectOptions::new(server.addr.clone())).unwrap();
    let mut reader = Backend::with_prefetch_port(
        &cache,
        client,
        ReadPathConfig::default(),
        Some(workers.udp_port),
    )
    .unwrap();
    assert_eq!(reader.prefetch(tag.rel, 9..10).unwrap(), 1);

    // Another backend modifies the page at LSN 500 while the prefetch is in flight: as on a
    // real compute, the last-written LSN moves first, then the page server receives the WAL.
    cache.set_lwlsn(&tag, 500).unwrap();
    let mut writer = PageClient::connect(&ConnectOptions::new(server.addr.clone())).unwrap();
    let v2 = synthetic_page(tag, 500);
    writer.put_page(tag, 500, &v2).unwrap();

    let text = workers.scrape_until(Duration::from_secs(10), |t| {
        WorkersProc::metric(t, "udp_prefetch_datagrams_received_total") >= 1
    });
    assert_eq!(
        WorkersProc::metric(
            &text,
            "udp_prefetch_datagrams_dropped_total{reason=\"stale\"}"
        ),
        1,
        "{text}"
    );
    assert_eq!(
        WorkersProc::metric(&text, "udp_prefetch_datagrams_installed_total"),
        0
    );
    let mut page = [0u8; 8192];
    reader.read(tag, &mut page).unwrap();
    assert_eq!(page_lsn(&page), 500, "the reader gets the new version");
    assert!(is_synthetic_page(&page, tag));
}

#[test]
fn restarted_daemon_reattaches_and_refuses_a_live_pid_file() {
    let dir = tempfile::tempdir().unwrap();
    let lfc_path = dir.path().join("lfc");
    let pid = dir.path().join("w.pid");
    let pid_s = pid.to_str().unwrap();
    let mut first = WorkersProc::start(&lfc_path, &["--size", "8MiB", "--pid-file", pid_s]);
    let key = lfc::Lfc::open(&lfc_path).unwrap().key();
    let out = Command::new(BIN)
        .args(["workers", "--listen", "127.0.0.1:0", "--pid-file", pid_s])
        .arg("--lfc")
        .arg(&lfc_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another daemon is running"));
    let status = first
        .terminate(Duration::from_secs(20))
        .expect("daemon exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!pid.exists(), "pid file removed on exit");
    let second = WorkersProc::start(&lfc_path, &["--pid-file", pid_s]);
    assert_eq!(
        lfc::Lfc::open(&lfc_path).unwrap().key(),
        key,
        "same cache, same key"
    );
    drop(second);
    std::fs::write(&pid, "0\n").unwrap();
    let out = Command::new(BIN)
        .args(["workers", "--listen", "127.0.0.1:0", "--pid-file", pid_s])
        .arg("--lfc")
        .arg(&lfc_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a process id"));
}

#[test]
fn the_page_server_serves_its_counters_and_health_over_http() {
    use udp_prefetch::pageserver::source::SourceSpec;
    use udp_prefetch::pageserver::{PageServer, ServerConfig};
    let mut server = PageServer::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        source: SourceSpec::Synthetic { rels: 1, pages: 8 },
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..ServerConfig::default()
    })
    .unwrap();
    let metrics = server.metrics_addr().expect("asked for");
    let mut client =
        PageClient::connect(&ConnectOptions::new(server.local_addr().to_string())).unwrap();
    let rel = udp_prefetch::protocol::page::synthetic_rel(0);
    client
        .get_page(
            rel.block(3),
            udp_prefetch::protocol::pagestream::LATEST_LSN,
            0,
        )
        .unwrap();

    let health = workers::http::get(metrics, "/healthz").unwrap();
    assert!(
        health.starts_with("HTTP/1.0 200 OK\r\n") && health.ends_with("\r\n\r\nok\n"),
        "{health}"
    );
    let response = workers::http::get(metrics, "/metrics").unwrap();
    let text = response.split("\r\n\r\n").nth(1).unwrap().to_string();
    assert!(
        text.contains("\nudp_prefetch_server_get_page_total 1\n"),
        "{text}"
    );
    assert!(
        text.contains("\nudp_prefetch_server_connections_active 1\n"),
        "{text}"
    );
    assert!(text.contains(&format!(
        "udp_prefetch_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    )));
    if common::have_command("promtool") {
        let (status, output) = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .output_with_stdin(text.as_bytes());
        assert!(status.success(), "promtool check metrics: {output}\n{text}");
    } else {
        assert!(
            !common::required("UDPF_REQUIRE_PROMTOOL"),
            "promtool is missing"
        );
    }
    drop(client);
    server.shutdown();
}
