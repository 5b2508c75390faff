//! TLS on the page server's connections (PostgreSQL's SSLRequest): psql with sslmode=require,
//! the client's verification of the server, `--tls-required`, and prefetch datagrams that are
//! encrypted for sessions over TLS and only authenticated over plain TCP. The certificates are
//! made here, per test (rcgen), so no key is committed.

mod common;

use common::{certs, scan_rel_command, Certs, ServerProc, WorkersProc};
use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;
use udp_prefetch::pageserver::source::Synthetic;
use udp_prefetch::protocol::client::{ClientError, ConnectOptions, PageClient};
use udp_prefetch::protocol::page::synthetic_page;
use udp_prefetch::protocol::pagestream::{PrefetchTarget, LATEST_LSN};
use udp_prefetch::protocol::tls::{ClientTls, ConnectTlsError};
use workers::datagram::{DatagramKey, DATAGRAM_LEN};

/// Offset of the protection flags byte in a datagram (`workers::datagram`).
const FLAGS_AT: usize = 5;
const KEY: [u8; 32] = [7; 32];

fn tls_server(certs: &Certs, extra: &[&str]) -> ServerProc {
    let mut args = vec![
        "--tls-cert",
        certs.cert.to_str().unwrap(),
        "--tls-key",
        certs.key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ServerProc::start(&args)
}

fn tls_options(server: &ServerProc, ca: &Path) -> ConnectOptions {
    ConnectOptions::new(server.addr.clone()).tls(Some(ClientTls::from_ca_file(ca).unwrap()))
}

#[test]
fn psql_with_sslmode_require_reads_show_prefetch_stats() {
    if !common::tools_or_skip(&["psql"], "UDPF_REQUIRE_PG") {
        return;
    }
    let certs = certs(&["localhost", "127.0.0.1"]);
    let server = tls_server(&certs, &["--tls-required"]);
    let (host, port) = server.addr.rsplit_once(':').unwrap();
    let psql = |sslmode: &str| {
        let mut cmd = std::process::Command::new("psql");
        cmd.arg(format!(
            "host={host} port={port} user=x dbname=y sslmode={sslmode} sslrootcert={}",
            certs.ca.display()
        ))
        .args(["-c", "SHOW prefetch_stats"])
        .env("PGCONNECT_TIMEOUT", "10");
        cmd
    };
    for sslmode in ["require", "verify-full"] {
        let out = common::output_ok(&mut psql(sslmode), &format!("psql sslmode={sslmode}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("connections_total"), "{stdout}");
    }
    // --tls-required: a plaintext startup is refused with a FATAL that says why.
    let out = psql("disable").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("accepts only TLS"), "{stderr}");
}

#[test]
fn a_udp_scan_over_tls_verifies_every_page() {
    /// Scans of relations of their own, fresh to the cache: a busy machine (the other tests
    /// of this file run beside it) can make a scan's first datagrams late, and a backend that
    /// finds UDP not delivering moves to TCP within milliseconds, as it should (it says why in
    /// udp_state_log). One scan that got pages by UDP is what this test needs.
    const ATTEMPTS: u32 = 3;
    let certs = certs(&["127.0.0.1"]);
    let server = tls_server(
        &certs,
        &["--source", &format!("synthetic:rels={ATTEMPTS},pages=2000")],
    );
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    let workers = WorkersProc::start(&lfc, &["--size", "32MiB", "--threads", "1"]);
    let mut attempt = 0;
    let (rel, r) = loop {
        let rel = Synthetic::rel(attempt).to_string();
        let r = common::json_ok(
            scan_rel_command(&server, &lfc, "udp", &rel)
                .args(["--distance", "64", "--prefetch-port"])
                .arg(workers.udp_port.to_string())
                .arg("--tls-ca")
                .arg(&certs.ca),
            "scan udp",
        );
        common::assert_every_page_verified(&r, 2000);
        attempt += 1;
        if r["hits"].as_u64().unwrap() + r["late_hits"].as_u64().unwrap() > 0 {
            break (rel, r);
        }
        assert!(attempt < ATTEMPTS, "no scan got its pages by UDP: {r}");
        eprintln!("attempt {attempt}: the scan left UDP at once (a busy machine); again: {r}");
    };
    // The daemon took them: it opens aead datagrams (the server chose aead for this session,
    // which `datagrams_are_encrypted_over_tls_and_in_the_clear_over_plain_tcp` sees).
    let text = workers.scrape();
    assert!(WorkersProc::metric(&text, "udp_prefetch_datagrams_installed_total") > 0);
    // Pipelined GetPage over TLS: the server's reader and responder threads share the one
    // rustls connection while requests and responses cross (`protocol::tls`).
    let p = common::json_ok(
        scan_rel_command(&server, &lfc, "tcp-pipelined", &rel)
            .args(["--distance", "256", "--tls-ca"])
            .arg(&certs.ca),
        "scan tcp-pipelined",
    );
    common::assert_every_page_verified(&p, 2000);
    assert_eq!(p["digest"], r["digest"], "{p} {r}");
}

/// Registers a plain UDP socket as the prefetch target of `client`, prefetches block 3 of the
/// synthetic relation and returns the first datagram received.
fn capture(mut client: PageClient) -> Vec<u8> {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(client
        .set_prefetch_target(PrefetchTarget {
            udp_port: udp.local_addr().unwrap().port(),
            key_id: 1,
            key: KEY,
            // Whole pages: the test looks for the page's bytes in one datagram.
            path_mtu: 0,
        })
        .unwrap());
    client
        .send_prefetch(Synthetic::rel(0), 3, 1, LATEST_LSN, 0)
        .unwrap();
    client.flush().unwrap();
    let mut buf = vec![0u8; 65536];
    let n = udp.recv(&mut buf).expect("a prefetch datagram");
    buf.truncate(n);
    assert_eq!(buf.len(), DATAGRAM_LEN);
    // It verifies under the key registered, whatever its protection.
    let mut page = [0u8; 8192];
    let hdr = DatagramKey::new(1, KEY)
        .opener()
        .open_bytes(&buf, &mut page)
        .expect("a valid datagram");
    assert_eq!(hdr.tag, Synthetic::rel(0).block(3));
    assert_eq!(page[..], synthetic_page(hdr.tag, 16)[..]);
    buf
}

/// Whether the page's bytes (a stretch from its middle, past the header) are in `datagram`.
fn page_in_clear(datagram: &[u8]) -> bool {
    let page = synthetic_page(Synthetic::rel(0).block(3), 16);
    let probe = &page[4096..4096 + 256];
    datagram.windows(probe.len()).any(|w| w == probe)
}

#[test]
fn datagrams_are_encrypted_over_tls_and_in_the_clear_over_plain_tcp() {
    let certs = certs(&["127.0.0.1"]);
    let server = tls_server(&certs, &[]);
    let over_tls = capture(PageClient::connect(&tls_options(&server, &certs.ca)).unwrap());
    assert_eq!(over_tls[FLAGS_AT], 1, "aead over TLS");
    assert!(!page_in_clear(&over_tls), "the page is encrypted over TLS");
    let plain = capture(PageClient::connect(&ConnectOptions::new(server.addr.clone())).unwrap());
    assert_eq!(plain[FLAGS_AT], 0, "token over plain TCP");
    assert!(page_in_clear(&plain), "the probe finds a page in the clear");
    // --datagram-protection overrides the choice for every session.
    let token = tls_server(&certs, &["--datagram-protection", "token"]);
    let forced = capture(PageClient::connect(&tls_options(&token, &certs.ca)).unwrap());
    assert_eq!(forced[FLAGS_AT], 0);
}

#[test]
fn a_certificate_the_client_cannot_verify_is_refused_clearly() {
    let certs = certs(&["127.0.0.1"]);
    let server = tls_server(&certs, &[]);
    // Another CA.
    let other = self::certs(&["127.0.0.1"]);
    let err = PageClient::connect(&tls_options(&server, &other.ca))
        .err()
        .expect("refused");
    assert!(matches!(err, ClientError::Tls { .. }), "{err:?}");
    let text = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(
        text.contains("certificate") && text.contains(&server.addr),
        "{text}"
    );
    // The right CA, a certificate for another name.
    let named = self::certs(&["db.example"]);
    let server = tls_server(&named, &[]);
    let err = PageClient::connect(&tls_options(&server, &named.ca))
        .err()
        .expect("refused");
    let text = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(
        text.contains("certificate") && text.contains("NotValidForName"),
        "{text}"
    );
    // The CLI says it too, and exits 1.
    common::fails_with(
        std::process::Command::new(common::BIN)
            .args(["getpage", "--server", &server.addr, "--rel"])
            .arg(common::REL)
            .args(["--blk", "0", "--tls-ca"])
            .arg(&named.ca),
        1,
        "certificate",
    );
}

#[test]
fn tls_required_refuses_plaintext_and_tls_to_a_plain_server_is_refused() {
    let certs = certs(&["127.0.0.1"]);
    let server = tls_server(&certs, &["--tls-required"]);
    match PageClient::connect(&ConnectOptions::new(server.addr.clone())) {
        Err(ClientError::Server(e)) => {
            assert_eq!(e.code, "28000");
            assert!(e.message.contains("accepts only TLS"), "{}", e.message);
        }
        other => panic!("plaintext accepted: {:?}", other.err()),
    }
    let mut client = PageClient::connect(&tls_options(&server, &certs.ca)).unwrap();
    let rel = Synthetic::rel(0);
    let page = client.get_page(rel.block(1), LATEST_LSN, 0).unwrap();
    assert_eq!(page[..], synthetic_page(rel.block(1), 16)[..]);

    let plain = ServerProc::start(&[]);
    match PageClient::connect(&tls_options(&plain, &certs.ca)) {
        Err(ClientError::Tls {
            source: ConnectTlsError::Refused,
            ..
        }) => {}
        other => panic!("expected a refusal of TLS: {:?}", other.err()),
    }
}

/// A page server with TLS that requires a password (`--token`): the CLI with `--tls-ca` and
/// the password reads a page and scans a relation (the udp scan's PrefetchTarget and pages
/// over the same session); a wrong password and none are refused, exit status 1, with
/// messages that say which. (`udpf_open` is checked the same way in `capi/tests/ffi.rs`.)
#[test]
fn the_cli_over_tls_needs_the_right_token() {
    let certs = certs(&["127.0.0.1"]);
    let server = tls_server(
        &certs,
        &[
            "--tls-required",
            "--token",
            "s3cret",
            "--source",
            "synthetic:pages=500",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let getpage = |token: Option<&str>| {
        let mut cmd = std::process::Command::new(common::BIN);
        cmd.args(["getpage", "--server", &server.addr, "--rel"])
            .arg(common::REL)
            .args(["--blk", "7", "--json", "--tls-ca"])
            .arg(&certs.ca)
            .env_remove("UDPF_TOKEN");
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        cmd
    };
    let page = common::json_ok(&mut getpage(Some("s3cret")), "getpage with the token");
    assert_eq!(page["blkno"], 7, "{page}");
    common::fails_with(
        &mut getpage(Some("wrong")),
        1,
        "password authentication failed",
    );
    common::fails_with(&mut getpage(None), 1, "pass a token");
    let failures = common::sample(&server.scrape(), "udp_prefetch_server_auth_failures_total");
    assert_eq!(failures, Some(1.0), "the wrong password, counted");

    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    let workers = WorkersProc::start(&lfc, &["--size", "16MiB", "--threads", "1"]);
    let r = common::json_ok(
        common::scan_command(&server, &lfc, "udp")
            .args(["--prefetch-port", &workers.udp_port.to_string()])
            .args(["--token", "s3cret", "--tls-ca"])
            .arg(&certs.ca),
        "scan udp with the token",
    );
    common::assert_every_page_verified(&r, 500);
}

#[test]
fn tls_flags_are_checked_at_start() {
    common::fails_with(
        std::process::Command::new(common::BIN)
            .args(["pageserver", "--tls-cert", "/nonexistent.pem", "--tls-key"])
            .arg("/nonexistent.key"),
        2,
        "/nonexistent.pem",
    );
    // --tls-required without a certificate would refuse everyone.
    common::fails_with(
        std::process::Command::new(common::BIN).args(["pageserver", "--tls-required"]),
        2,
        "--tls-cert",
    );
}

#[test]
fn bytes_sent_after_the_ssl_request_before_its_answer_are_refused() {
    use std::io::{Read, Write};
    use udp_prefetch::protocol::pgwire::FrontendMessage;
    let certs = certs(&["127.0.0.1"]);
    let server = tls_server(&certs, &[]);
    let mut out = Vec::new();
    FrontendMessage::SslRequest.encode(&mut out);
    FrontendMessage::Startup {
        params: vec![("user".into(), "x".into())],
    }
    .encode(&mut out);
    // One write: the startup message is there when the server reads the SSLRequest.
    let mut sock = std::net::TcpStream::connect(&server.addr).unwrap();
    sock.write_all(&out).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = sock.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with('E') && text.contains("received unencrypted data after SSL request"),
        "{text:?}"
    );
}
