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

/// Datagrams the daemon has judged: installed or dropped for a reason. A thread counts a
/// datagram received before its verdict, so waiting on `received` alone can read the verdict's
/// counter a moment too early.
fn judged(text: &str) -> u64 {
    let dropped: u64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("udp_prefetch_datagrams_dropped_total{reason=\""))
        .filter_map(|l| l.split_once("} ")?.1.trim().parse::<f64>().ok())
        .map(|n| n as u64)
        .sum();
    WorkersProc::metric(text, "udp_prefetch_datagrams_installed_total") + dropped
}

fn scan(server: &ServerProc, lfc: &std::path::Path, mode: &str, port: u16) -> serde_json::Value {
    common::json_ok(
        scan_command(server, lfc, mode).args([
            "--distance",
            "64",
            "--prefetch-port",
            &port.to_string(),
        ]),
        &format!("scan {mode}"),
    )
}

fn scan_three_modes_with(io: &str) {
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    let server = ServerProc::start(&["--source", "synthetic:pages=3000"]);
    let workers = WorkersProc::start(&lfc, &["--size", "64MiB", "--io", io, "--threads", "2"]);
    assert_eq!(workers.io, io);
    // The daemon receives and installs over this I/O backend.
    common::prefetch_and_await(&server.addr, &lfc, workers.udp_port, 2000..2064);
    // A page is published (waking its waiter) just before its install is counted.
    let installed = |t: &str| WorkersProc::metric(t, "udp_prefetch_datagrams_installed_total");
    let text = workers.scrape_until(Duration::from_secs(10), |t| installed(t) >= 64);
    assert!(installed(&text) >= 64, "{text}");
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
    // At least the pages prefetched above were read from the LFC. (How many of the others the
    // scan read by UDP depends on the machine's load, not on the I/O backend.)
    assert!(
        udp["hits"].as_u64().unwrap() + udp["late_hits"].as_u64().unwrap() >= 64,
        "{udp}"
    );
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
    common::prefetch_and_await(&server.addr, &lfc, workers.udp_port, 42..43);
    drop(workers);

    let mut cmd = Command::new(BIN);
    workers::udp::seccomp::deny_io_uring_on_spawn(&mut cmd);
    common::fails_with(
        cmd.args([
            "workers",
            "--listen",
            "127.0.0.1:0",
            "--io",
            "uring",
            "--size",
            "8MiB",
        ])
        .arg("--lfc")
        .arg(dir.path().join("lfc2")),
        1,
        "io_uring is not available",
    );
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
    let text = workers.scrape_until(Duration::from_secs(10), |t| judged(t) >= 7);
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

/// Both processes' `/metrics` after real traffic (a TCP and a UDP scan, a junk datagram):
/// promtool accepts them, the page server's request counts and GetPage histogram agree, its
/// pages sent are all counted for the daemon's address, and both report process metrics.
#[test]
fn metrics_endpoints_pass_promtool_after_real_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    let server = ServerProc::start(&[
        "--source",
        "synthetic:pages=3000",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let workers = WorkersProc::start(&lfc, &["--size", "64MiB"]);
    // Pages the daemon surely installs, whatever share of the scan below UDP carries.
    common::prefetch_and_await(&server.addr, &lfc, workers.udp_port, 2000..2064);
    // Junk, so the daemon's drop counters and labels are non-trivial.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(&[0u8; 100], ("127.0.0.1", workers.udp_port))
        .unwrap();
    // tcp-sync reads every page by GetPage; udp prefetches (and may fall back to GetPage).
    for mode in ["tcp-sync", "udp"] {
        let report = scan(&server, &lfc, mode, workers.udp_port);
        assert_eq!(report["verified"], 3000, "{report}");
    }

    let destination = format!(
        "udp_prefetch_server_prefetch_destination_pages_sent_total{{destination=\"127.0.0.1:{}\"}}",
        workers.udp_port
    );
    // A sender counts a batch's pages in the total, then for its destination: scrape until
    // they agree (they must, and at once but for that instant).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = server.scrape();
        let sent = common::sample(&text, "udp_prefetch_server_prefetch_pages_sent_total");
        if sent == common::sample(&text, &destination) || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let get = |series: &str| {
        common::sample(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"))
    };
    let get_pages = get("udp_prefetch_server_requests_total{type=\"get_page\"}");
    assert!(get_pages >= 3000.0, "{text}");
    assert_eq!(
        get("udp_prefetch_server_get_page_latency_seconds_count"),
        get_pages
    );
    assert!(get("udp_prefetch_server_get_page_latency_seconds_sum") > 0.0);
    let sent = get("udp_prefetch_server_prefetch_pages_sent_total");
    assert!(sent > 0.0, "{text}");
    assert_eq!(get(&destination), sent, "{text}");
    assert_eq!(
        get("udp_prefetch_server_prefetch_destination_pages_sent_total{destination=\"other\"}"),
        0.0
    );
    assert!(
        get("udp_prefetch_server_connections_total") >= 2.0,
        "{text}"
    );
    common::assert_process_metrics(&text);
    common::promtool_check(&text);

    let installed = |t: &str| WorkersProc::metric(t, "udp_prefetch_datagrams_installed_total");
    let text = workers.scrape_until(Duration::from_secs(10), |t| installed(t) >= 64);
    assert!(installed(&text) >= 64, "{text}");
    common::assert_process_metrics(&text);
    common::promtool_check(&text);
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

    let text = workers.scrape_until(Duration::from_secs(10), |t| judged(t) >= 1);
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
    common::fails_with(
        Command::new(BIN)
            .args(["workers", "--listen", "127.0.0.1:0", "--pid-file", pid_s])
            .arg("--lfc")
            .arg(&lfc_path),
        2,
        "another daemon is running",
    );
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
    common::fails_with(
        Command::new(BIN)
            .args(["workers", "--listen", "127.0.0.1:0", "--pid-file", pid_s])
            .arg("--lfc")
            .arg(&lfc_path),
        2,
        "not a process id",
    );
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
    let opts = ConnectOptions::new(server.local_addr().to_string());
    let mut client = PageClient::connect(&opts).unwrap();
    let rel = Synthetic::rel(0);
    // Five GetPages, one of a block the relation does not have (an error), and an Exists.
    for blkno in [0, 3, 5, 7] {
        client.get_page(rel.block(blkno), LATEST_LSN, 0).unwrap();
    }
    client
        .get_page(rel.block(8), LATEST_LSN, 0)
        .expect_err("the relation has 8 blocks");
    assert!(client.exists(rel, LATEST_LSN).unwrap());
    // Four pages prefetched to a UDP socket of ours (the server sends to the TCP peer's
    // address, here 127.0.0.1).
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let port = udp.local_addr().unwrap().port();
    client
        .set_prefetch_target(udp_prefetch::protocol::pagestream::PrefetchTarget {
            udp_port: port,
            key_id: 1,
            key: [7; 32],
            path_mtu: 0,
        })
        .unwrap();
    client.send_prefetch(rel, 0, 4, LATEST_LSN, 0).unwrap();
    client.flush().unwrap();
    let mut buf = vec![0u8; DATAGRAM_LEN + 1];
    for _ in 0..4 {
        assert_eq!(udp.recv(&mut buf).unwrap(), DATAGRAM_LEN);
    }
    // A Prefetch of three pages on a connection without a target: an error, its pages
    // dropped. The Exists after it is answered only once the Prefetch was handled.
    let mut untargeted = PageClient::connect(&opts).unwrap();
    untargeted.send_prefetch(rel, 0, 3, LATEST_LSN, 0).unwrap();
    assert!(untargeted.exists(rel, LATEST_LSN).unwrap());

    let health = workers::http::get(metrics, "/healthz").unwrap();
    assert!(
        health.starts_with("HTTP/1.0 200 OK\r\n") && health.ends_with("\r\n\r\nok\n"),
        "{health}"
    );
    // The sender counts a batch just after sending it: scrape until it has.
    let sent = "udp_prefetch_server_prefetch_pages_sent_total";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut text = common::scrape(metrics);
    while common::sample(&text, sent) != Some(4.0) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        text = common::scrape(metrics);
    }
    let get = |series: &str| {
        common::sample(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"))
    };
    let server_family = |family: &str, label: &str, values: &[(&str, f64)]| {
        for (value, expected) in values {
            let series = format!("udp_prefetch_server_{family}{{{label}=\"{value}\"}}");
            assert_eq!(get(&series), *expected, "{series}\n{text}");
        }
    };
    server_family(
        "requests_total",
        "type",
        &[
            ("get_page", 5.0),
            ("exists", 2.0),
            ("nblocks", 0.0),
            ("db_size", 0.0),
            ("put_page", 0.0),
            ("prefetch_target", 1.0),
            ("prefetch", 2.0),
        ],
    );
    server_family(
        "request_errors_total",
        "type",
        &[
            ("get_page", 1.0),
            ("exists", 0.0),
            ("prefetch_target", 0.0),
            ("prefetch", 1.0),
            ("query", 0.0),
        ],
    );
    // Every GetPage answered, the failed one included, is in the histogram.
    let histogram = "udp_prefetch_server_get_page_latency_seconds";
    assert_eq!(get(&format!("{histogram}_count")), 5.0);
    assert_eq!(get(&format!("{histogram}_bucket{{le=\"+Inf\"}}")), 5.0);
    assert!(get(&format!("{histogram}_sum")) > 0.0);
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{histogram}_bucket")))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), 17, "16 bounds from 10 µs to 1 s, and +Inf");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "cumulative");
    assert_eq!(get("udp_prefetch_server_prefetch_pages_queued_total"), 4.0);
    assert_eq!(get(sent), 4.0);
    server_family(
        "prefetch_pages_dropped_total",
        "reason",
        &[("no_target", 3.0), ("overflow", 0.0), ("closed", 0.0)],
    );
    server_family(
        "prefetch_destination_pages_sent_total",
        "destination",
        &[(&format!("127.0.0.1:{port}"), 4.0), ("other", 0.0)],
    );
    assert_eq!(get("udp_prefetch_server_prefetch_queue_pages"), 0.0);
    assert_eq!(
        get("udp_prefetch_server_prefetch_queue_capacity_pages"),
        (1u64 << 20) as f64
    );
    assert_eq!(get("udp_prefetch_server_connections_total"), 2.0);
    assert_eq!(get("udp_prefetch_server_connections_active"), 2.0);
    assert!(text.contains(&format!(
        "\nudp_prefetch_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    )));
    // This test's own process: present (its CPU time may still be under one clock tick).
    for name in [
        "process_cpu_seconds_total",
        "process_threads",
        "process_open_fds",
    ] {
        assert!(common::sample(&text, name).is_some(), "{name}\n{text}");
    }
    common::promtool_check(&text);
    drop(untargeted);
    drop(client);
    server.shutdown();
}

#[test]
fn a_gated_scan_is_attached_before_its_gate_opens_and_counts_its_time_after() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    let server = ServerProc::start(&[
        "--source",
        "synthetic:pages=512",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let workers = WorkersProc::start(&lfc, &["--size", "8MiB"]);
    let mut scan = scan_command(&server, &lfc, "udp")
        .args(["--distance", "64", "--start-gate"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(scan.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), udp_prefetch::compute::scan::READY_LINE);
    // Ready means attached: connected, and its prefetch target registered (the backend waited
    // for the answer), so many scans started together leave their start-ups out of their
    // scans. Nothing of the scan itself was asked for yet.
    let metrics = server.scrape();
    let requests = |kind: &str| {
        common::sample(
            &metrics,
            &format!("udp_prefetch_server_requests_total{{type=\"{kind}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(requests("prefetch_target"), 1.0, "{metrics}");
    assert_eq!(
        requests("prefetch") + requests("get_page"),
        0.0,
        "{metrics}"
    );
    // Held at the gate for a while (a gap the scan's time must not contain), then opened: the
    // scan's own time fits between the opening and its exit.
    std::thread::sleep(Duration::from_millis(300));
    let opened = std::time::Instant::now();
    drop(scan.stdin.take());
    let mut json = String::new();
    out.read_to_string(&mut json).unwrap();
    assert!(scan.wait().unwrap().success(), "{json}");
    let since_opened = opened.elapsed().as_secs_f64();
    let report: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(report["verified"], 512, "{report}");
    let elapsed = report["elapsed_s"].as_f64().unwrap();
    assert!(
        elapsed <= since_opened,
        "the scan's {elapsed} s began before its gate opened ({since_opened} s before it exited)"
    );
    drop(workers);
}
