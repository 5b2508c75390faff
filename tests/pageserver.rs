//! End to end: the real `udp-prefetch pageserver` binary, real TCP, the real client.

mod common;

use common::ServerProc;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use udp_prefetch::pageserver::source::Synthetic;
use udp_prefetch::protocol::client::{ClientError, ConnectOptions, PageClient};
use udp_prefetch::protocol::page::{
    is_synthetic_page, page_lsn, synthetic_page, verify_page, PageCheck,
};
use udp_prefetch::protocol::pagestream::LATEST_LSN;
use udp_prefetch::protocol::pgwire::{BackendDecoder, BackendMessage, FrontendMessage};

fn connect(server: &ServerProc) -> PageClient {
    PageClient::connect(&ConnectOptions::new(server.addr.clone())).expect("connect")
}

#[test]
fn reads_and_verifies_every_page_then_serves_versions_by_lsn() {
    let server = ServerProc::start(&["--source", "synthetic:rels=2,pages=1500"]);
    let mut client = connect(&server);
    for i in 0..2 {
        let rel = Synthetic::rel(i);
        assert!(client.exists(rel, LATEST_LSN).unwrap());
        let n = client.nblocks(rel, LATEST_LSN).unwrap();
        assert_eq!(n, 1500);
        let mut seen = 0;
        client
            .get_pages_pipelined(rel, 0..n, LATEST_LSN, 32, 8, |blkno, page| {
                assert_eq!(verify_page(page, blkno), PageCheck::Valid, "blk {blkno}");
                assert_eq!(page_lsn(page), 16);
                assert!(is_synthetic_page(page, rel.block(blkno)));
                seen += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, n);
    }
    assert_eq!(client.db_size(5, LATEST_LSN).unwrap(), 2 * 1500 * 8192);

    let tag = Synthetic::rel(1).block(77);
    let v2 = synthetic_page(tag, 200);
    client.put_page(tag, 200, &v2).unwrap();
    let at150 = client.get_page(tag, 150, 0).unwrap();
    let at250 = client.get_page(tag, 250, 200).unwrap();
    assert_eq!(page_lsn(&at150), 16);
    assert!(is_synthetic_page(&at150, tag));
    assert_eq!(&at250[..], &v2[..]);
    // A second connection sees the same versions.
    let mut other = connect(&server);
    assert_eq!(page_lsn(&other.get_page(tag, LATEST_LSN, 0).unwrap()), 200);
    assert_eq!(page_lsn(&other.get_page(tag, 199, 0).unwrap()), 16);
}

#[test]
fn unknown_relation_or_block_is_error_103_and_the_connection_continues() {
    let server = ServerProc::start(&[
        "--source",
        "synthetic:pages=10",
        "--lsn-wait-timeout-ms",
        "50",
    ]);
    let mut client = connect(&server);
    let err = client
        .get_page(lfc::RelTag::new(1663, 5, 99, 0).block(0), LATEST_LSN, 0)
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Request(m) if m.contains("does not exist")),
        "{err}"
    );
    let err = client
        .get_page(Synthetic::rel(0).block(10), LATEST_LSN, 0)
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Request(m) if m.contains("block 10")),
        "{err}"
    );
    assert!(!client
        .exists(lfc::RelTag::new(1663, 5, 99, 0), LATEST_LSN)
        .unwrap());
    // WAL never reaches 1000: bounded wait, then an error; the session goes on.
    let err = client
        .get_page(Synthetic::rel(0).block(1), LATEST_LSN, 1000)
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Request(m) if m.contains("waiting for WAL")),
        "{err}"
    );
    let page = client
        .get_page(Synthetic::rel(0).block(9), LATEST_LSN, 0)
        .unwrap();
    assert_eq!(verify_page(&page, 9), PageCheck::Valid);
}

#[test]
fn too_many_connections_is_53300_and_frees_up_after_a_disconnect() {
    let server = ServerProc::start(&["--max-connections", "2"]);
    let a = connect(&server);
    let _b = connect(&server);
    match PageClient::connect(&ConnectOptions::new(server.addr.clone())) {
        Err(ClientError::Server(e)) => assert_eq!(e.code, "53300", "{e:?}"),
        other => panic!("third connection: {:?}", other.map(|_| ())),
    }
    drop(a);
    // The slot is released when the server notices the close; retry until it has (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match PageClient::connect(&ConnectOptions::new(server.addr.clone())) {
            Ok(mut c) => {
                assert!(c.exists(Synthetic::rel(0), LATEST_LSN).unwrap());
                break;
            }
            Err(ClientError::Server(e))
                if e.code == "53300" && std::time::Instant::now() < deadline =>
            {
                std::thread::yield_now()
            }
            Err(e) => panic!("reconnect: {e}"),
        }
    }
}

/// Reads what the server sends on `s` until it closes the connection (bounded by `limit`).
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("the server closes the connection within the limit");
    got
}

#[test]
fn a_connection_that_says_nothing_is_closed_after_the_startup_timeout_and_frees_its_slot() {
    let server = ServerProc::start(&["--max-connections", "1", "--startup-timeout-ms", "200"]);
    // Connects and never sends a startup packet: before this change it held the only slot
    // for as long as it stayed open.
    let mut silent = TcpStream::connect(&server.addr).unwrap();
    let got = read_until_closed(&mut silent, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("canceling authentication due to timeout") && text.contains("57014"),
        "{text:?}"
    );
    // Its slot is free: a real client gets in (retrying while the server counts the close).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut client = loop {
        match PageClient::connect(&ConnectOptions::new(server.addr.clone())) {
            Ok(c) => break c,
            Err(ClientError::Server(e))
                if e.code == "53300" && std::time::Instant::now() < deadline =>
            {
                std::thread::yield_now()
            }
            Err(e) => panic!("a client after the silent one: {e}"),
        }
    };
    assert!(client.exists(Synthetic::rel(0), LATEST_LSN).unwrap());
}

#[test]
fn an_established_connection_silent_past_the_idle_timeout_is_closed() {
    let server = ServerProc::start(&["--idle-timeout-s", "1"]);
    let mut s = TcpStream::connect(&server.addr).unwrap();
    let mut startup = Vec::new();
    FrontendMessage::Startup {
        params: vec![("user".into(), "idle".into())],
    }
    .encode(&mut startup);
    s.write_all(&startup).unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("terminating connection due to idle-session timeout")
            && text.contains("57P05"),
        "{text:?}"
    );
    // Without the flag a connection stays open: the same startup gets ReadyForQuery and no
    // close within twice the timeout above.
    let patient = ServerProc::start(&[]);
    let mut s = TcpStream::connect(&patient.addr).unwrap();
    s.write_all(&startup).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break false
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(
        !closed,
        "no idle timeout by default: {:?}",
        String::from_utf8_lossy(&seen)
    );
}

#[test]
fn token_is_required_and_checked() {
    let server = ServerProc::start(&["--token", "s3cret"]);
    let opts = ConnectOptions::new(server.addr.clone());
    assert!(matches!(
        PageClient::connect(&opts),
        Err(ClientError::PasswordRequired)
    ));
    match PageClient::connect(&opts.clone().token(Some("wrong".into()))) {
        Err(ClientError::Server(e)) => assert_eq!(e.code, "28P01", "{e:?}"),
        other => panic!("wrong token: {:?}", other.map(|_| ())),
    }
    let mut ok = PageClient::connect(&opts.token(Some("s3cret".into()))).unwrap();
    assert!(ok.exists(Synthetic::rel(0), LATEST_LSN).unwrap());
}

/// A raw protocol session: startup, then whatever the test sends.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(addr: &str) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut raw = Raw {
            stream,
            buf: Vec::new(),
        };
        raw.send(&FrontendMessage::Startup {
            params: vec![("user".into(), "raw".into())],
        });
        while !matches!(raw.recv(), Some(BackendMessage::ReadyForQuery { .. })) {}
        raw
    }

    fn send(&mut self, m: &FrontendMessage) {
        let mut out = Vec::new();
        m.encode(&mut out);
        self.stream.write_all(&out).unwrap();
    }

    fn send_bytes(&mut self, b: &[u8]) {
        self.stream.write_all(b).unwrap();
    }

    /// Next message, or `None` once the server closed the connection.
    fn recv(&mut self) -> Option<BackendMessage> {
        loop {
            if let Some((m, used)) = BackendDecoder::new().decode(&self.buf).unwrap() {
                self.buf.drain(..used);
                return Some(m);
            }
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

#[test]
fn unsupported_query_is_an_error_and_the_session_continues() {
    let server = ServerProc::start(&[]);
    let mut raw = Raw::connect(&server.addr);
    raw.send(&FrontendMessage::Query("select 1".into()));
    match raw.recv() {
        Some(BackendMessage::ErrorResponse(e)) => assert_eq!(e.code, "0A000"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        raw.recv(),
        Some(BackendMessage::ReadyForQuery { .. })
    ));
    raw.send(&FrontendMessage::Query("SHOW prefetch_stats;".into()));
    let Some(BackendMessage::RowDescription(fields)) = raw.recv() else {
        panic!("no row description")
    };
    let Some(BackendMessage::DataRow(row)) = raw.recv() else {
        panic!("no data row")
    };
    assert_eq!(fields.len(), row.len());
    let errors_at = fields.iter().position(|f| f.name == "errors").unwrap();
    assert_eq!(
        row[errors_at].as_deref(),
        Some(&b"1"[..]),
        "the failed query is counted"
    );
    assert!(matches!(raw.recv(), Some(BackendMessage::CommandComplete(t)) if t == "SHOW"));
}

#[test]
fn malformed_frame_gets_an_error_and_a_close_without_disturbing_others() {
    let server = ServerProc::start(&[]);
    let mut good = connect(&server);
    let mut bad = Raw::connect(&server.addr);
    bad.send(&FrontendMessage::Query(format!(
        "pagestream_v3 {} {}",
        "a".repeat(32),
        "b".repeat(32)
    )));
    assert!(matches!(bad.recv(), Some(BackendMessage::CopyBothResponse)));
    // A GetPage request cut short by one byte.
    let mut frame = Vec::new();
    FrontendMessage::CopyData(vec![2; 41]).encode(&mut frame);
    bad.send_bytes(&frame);
    match bad.recv() {
        Some(BackendMessage::ErrorResponse(e)) => {
            assert_eq!(e.code, "08P01");
            assert!(e.message.contains("malformed"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(bad.recv(), None, "connection closed after the error");

    // A frame whose length field claims 2 GiB.
    let mut huge = Raw::connect(&server.addr);
    huge.send_bytes(&[b'Q', 0x7f, 0xff, 0xff, 0xff]);
    assert!(matches!(huge.recv(), Some(BackendMessage::ErrorResponse(e)) if e.code == "08P01"));
    assert_eq!(huge.recv(), None);

    let page = good
        .get_page(Synthetic::rel(0).block(3), LATEST_LSN, 0)
        .unwrap();
    assert_eq!(verify_page(&page, 3), PageCheck::Valid);
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = ServerProc::start(&[]);
    let _idle = connect(&server);
    let status = server
        .terminate(Duration::from_secs(20))
        .expect("server exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_flags_exit_with_status_2() {
    common::fails_with(
        std::process::Command::new(common::BIN).args([
            "pageserver",
            "--source",
            "synthetic:rels=0",
        ]),
        2,
        "rels must be",
    );
    let out = std::process::Command::new(common::BIN)
        .args([
            "pageserver",
            "--source",
            "pgdata:/nonexistent/dir",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a PostgreSQL data directory"));
}

#[test]
fn psql_reads_show_prefetch_stats() {
    if !common::tools_or_skip(&["psql"], "UDPF_REQUIRE_PG") {
        return;
    }
    let server = ServerProc::start(&[]);
    let mut client = connect(&server);
    client
        .get_page(Synthetic::rel(0).block(0), LATEST_LSN, 0)
        .unwrap();
    let (host, port) = server.addr.rsplit_once(':').unwrap();
    let out = common::output_ok(
        std::process::Command::new("psql")
            .arg(format!(
                "host={host} port={port} user=x dbname=y sslmode=disable"
            ))
            .args(["-c", "SHOW prefetch_stats"])
            .env("PGCONNECT_TIMEOUT", "10"),
        "psql",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("connections_total") && stdout.contains("get_page"),
        "{stdout}"
    );
    assert!(stdout.contains("(1 row)"), "{stdout}");
}
