//! Against a page server without this project's extension (`pageserver --no-udp-extension`,
//! which answers tags 0x40-0x42 as Neon's page server answers an unknown tag): a scan and a
//! prewarm learn it from their first extension message and read as Neon's compute does,
//! pipelined GetPage over TCP, every page verified, and send no extension message after that
//! first answer.

mod common;

use common::{scan_command, ServerProc, WorkersProc, BIN, REL};
use std::process::Command;
use udp_prefetch::protocol::client::{ClientError, ConnectOptions, Extension, PageClient};
use udp_prefetch::protocol::page::synthetic_rel;
use udp_prefetch::protocol::pagestream::{PrefetchTarget, LATEST_LSN};

const PAGES: u64 = 3000;

fn server() -> ServerProc {
    ServerProc::start(&[
        "--source",
        &format!("synthetic:pages={PAGES}"),
        "--no-udp-extension",
        "--metrics",
        "127.0.0.1:0",
    ])
}

/// The server's count of extension messages it refused, and of those it served.
fn extension_counts(server: &ServerProc) -> (f64, f64, f64) {
    let text = server.scrape();
    let refused = common::sample(&text, "udp_prefetch_server_extension_refused_total").unwrap();
    let served = |t: &str| {
        common::sample(
            &text,
            &format!("udp_prefetch_server_requests_total{{type=\"{t}\"}}"),
        )
        .unwrap_or(0.0)
    };
    (refused, served("prefetch_target"), served("prefetch"))
}

/// What each test starts: a server without the extension, and a worker daemon on a new LFC in
/// a temporary directory.
struct Setup {
    server: ServerProc,
    workers: WorkersProc,
    lfc: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    Setup {
        server: server(),
        workers: WorkersProc::start(&lfc, &["--size", "64MiB", "--threads", "1"]),
        lfc,
        _dir: dir,
    }
}

#[test]
fn a_udp_scan_reads_every_page_by_tcp_pipelining_after_one_refused_message() {
    let s = setup();
    let r = common::json_ok(
        scan_command(&s.server, &s.lfc, "udp")
            .args(["--prefetch-port", &s.workers.udp_port.to_string()]),
        "scan",
    );
    common::assert_every_page_verified(&r, PAGES);
    assert_eq!(r["prefetched"], 0, "no page requested by UDP: {r}");
    assert_eq!(r["wait_timeouts"], 0, "no read waited for UDP: {r}");
    assert!(
        r["tcp_pipelined"].as_u64().unwrap() >= PAGES - 1,
        "the window went by TCP pipelining: {r}"
    );
    let log = r["udp_state_log"].to_string();
    assert!(log.contains("does not support UDP prefetch"), "{log}");
    // One extension message reached the server (the PrefetchTarget), refused; none after it.
    assert_eq!(extension_counts(&s.server), (1.0, 0.0, 0.0));
}

#[test]
fn a_prewarm_completes_over_tcp_after_one_refused_message() {
    let s = setup();
    let out = common::output_ok(
        Command::new(BIN)
            .args(["prewarm", "run", "--lfc"])
            .arg(&s.lfc)
            .args(["--relation", REL, "--server", &s.server.addr])
            .args(["--prefetch-port", &s.workers.udp_port.to_string(), "--json"])
            .env("RUST_LOG", "warn"),
        "prewarm run",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not support UDP prefetch"), "{stderr}");
    let r = common::json_of(&out, "prewarm run");
    assert_eq!(r["complete"], true, "{r}");
    assert_eq!(r["present"], PAGES, "{r}");
    assert_eq!(r["failed_verification"], 0, "{r}");
    assert_eq!(r["via_tcp"], PAGES, "{r}");
    assert_eq!(extension_counts(&s.server), (1.0, 0.0, 0.0));
}

/// The client's view of the refusal over a real connection: the pagestream is resumed on the
/// same connection, requests held behind the refused one are sent, and extension messages are
/// refused locally from then on.
#[test]
fn the_client_resumes_the_pagestream_and_sends_no_extension_message_again() {
    let server = server();
    let mut client = PageClient::connect(&ConnectOptions::new(server.addr.clone())).unwrap();
    assert_eq!(client.extension(), Extension::Unknown);
    let target = PrefetchTarget {
        udp_port: 9,
        key_id: 1,
        key: [7; 32],
        path_mtu: 0,
    };
    // A target, then GetPages and a Prefetch behind it before its answer is read.
    client.send_prefetch_target(target.clone()).unwrap();
    let rel = synthetic_rel(0);
    for b in 0..4 {
        client.send_get_page(rel.block(b), LATEST_LSN, 0).unwrap();
    }
    client.send_prefetch(rel, 4, 8, LATEST_LSN, 0).unwrap();
    client.flush().unwrap();
    assert!(matches!(
        client.recv(),
        Err(ClientError::ExtensionUnsupported)
    ));
    assert_eq!(client.extension(), Extension::Unsupported);
    for b in 0..4 {
        match client.recv().unwrap() {
            udp_prefetch::protocol::pagestream::Response::GetPage { blkno, .. } => {
                assert_eq!(blkno, b)
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(!client.set_prefetch_target(target).unwrap());
    assert!(matches!(
        client.send_prefetch(rel, 0, 1, LATEST_LSN, 0),
        Err(ClientError::ExtensionUnsupported)
    ));
    assert_eq!(client.nblocks(rel, LATEST_LSN).unwrap(), PAGES as u32);
    assert_eq!(extension_counts(&server), (1.0, 0.0, 0.0));
    let text = server.scrape();
    assert_eq!(
        common::sample(&text, "udp_prefetch_server_connections_total"),
        Some(1.0),
        "the same connection went on"
    );
}
