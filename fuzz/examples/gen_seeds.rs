//! Writes the committed seed corpora: a few valid inputs per fuzz target, so each run starts
//! from real files and messages rather than discovering every magic number and checksum.
//!
//! `cargo run --example gen_seeds` (from `fuzz/`) rewrites `corpus/<target>/seed-*`. The output
//! is deterministic (fixed keys, ids and times), so a rerun after a format change shows in
//! `git diff` exactly which seeds changed. Files the fuzzer adds are named by their SHA-1 and
//! are ignored by git; only `seed-*` files are committed.

use lfc::{Binding, Lfc, RelTag};
use std::path::{Path, PathBuf};
use udp_prefetch::compute::prewarm::state::{self, PageRange};
use udp_prefetch::protocol::page::synthetic_page;
use udp_prefetch::protocol::pagestream::{Header, PrefetchTarget, Request, Response};
use udp_prefetch::protocol::pgwire::{
    encode_copy_data_with, BackendMessage, ErrorFields, FrontendMessage,
};
use workers::datagram::{DatagramHeader, DatagramKey, Protection, DATAGRAM_LEN};

const KEY: [u8; 32] = [0x42; 32];

fn rel(n: u32) -> RelTag {
    RelTag::new(1663, 5, n, 0)
}

fn hdr(reqid: u64) -> Header {
    Header {
        reqid,
        request_lsn: 0x0100_0000,
        not_modified_since: 0x00ff_0000,
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn prewarm_state(dir: &Path) {
    write(dir, "empty", &state::encode(&[]));
    let one = [PageRange {
        rel: rel(16384),
        first: 0,
        len: 128,
    }];
    write(dir, "one-range", &state::encode(&one));
    // Three interleaved relations over two hotness tiers: a few ranges per tier.
    let tags: Vec<_> = (0..4200u32)
        .map(|i| rel(16384 + i % 3).block(i / 3))
        .collect();
    write(
        dir,
        "tiers",
        &state::encode(&state::ranges_from_hottest(&tags)),
    );
}

/// Offsets inside the LFC's fixed header (`lfc/src/layout.rs`).
const KEY_AT: usize = 104;
const BOOT_ID_END: usize = 176;
const CHECKSUM_AT: usize = 248;

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A real cache file, made deterministic: the random key, ids, creation time and boot id are
/// replaced by fixed values. The boot id becomes zero ("unknown"), which every boot accepts, so
/// the seed attaches on any machine rather than failing as a file from a previous boot.
fn lfc_file(scratch: &Path, capacity: u64, setup: impl FnOnce(&Lfc)) -> Vec<u8> {
    let path = scratch.join(format!("lfc-{capacity}"));
    let lfc = Lfc::create(&path, capacity).unwrap();
    setup(&lfc);
    drop(lfc);
    let mut bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    for (i, b) in bytes[KEY_AT..BOOT_ID_END].iter_mut().enumerate() {
        *b = if i < 56 { 0x5a ^ i as u8 } else { 0 };
    }
    let sum = fnv1a(&bytes[..CHECKSUM_AT]);
    bytes[CHECKSUM_AT..CHECKSUM_AT + 8].copy_from_slice(&sum.to_le_bytes());
    bytes
}

fn lfc_open(dir: &Path) {
    let scratch = std::env::temp_dir().join(format!("udpf-gen-seeds.{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let fresh = lfc_file(&scratch, 1, |_| {});
    write(dir, "header-prefix", &fresh[..256]);
    write(dir, "capacity-1", &fresh);
    write(dir, "capacity-2", &lfc_file(&scratch, 2, |_| {}));
    let bound = lfc_file(&scratch, 1, |lfc| {
        lfc.bind(&Binding {
            tenant_id: [1; 16],
            timeline_id: [2; 16],
            system_id: Some(7_318_234_567_890_123_456),
        })
        .unwrap();
        lfc.register_daemon(
            "127.0.0.1:6401".parse().unwrap(),
            4242,
            1_700_000_000_000,
            1,
        );
    });
    write(dir, "capacity-1-bound-daemon", &bound);
    // The seeds must attach, or the fuzzer never gets past the header checks.
    for name in ["capacity-1", "capacity-2", "capacity-1-bound-daemon"] {
        let copy = scratch.join("check");
        std::fs::copy(dir.join(format!("seed-{name}")), &copy).unwrap();
        let lfc = Lfc::open(&copy).unwrap_or_else(|e| panic!("seed {name} does not attach: {e}"));
        assert_eq!(lfc.binding().is_some(), name.contains("bound"), "{name}");
        assert_eq!(lfc.daemon().is_some(), name.contains("daemon"), "{name}");
        drop(lfc);
        std::fs::remove_file(&copy).unwrap();
    }
    // Not an LFC: another of the project's files at the cache's path.
    write(dir, "prewarm-state", &state::encode(&[]));
    std::fs::remove_dir_all(&scratch).unwrap();
}

/// Genuine datagrams, sealed under the target's key id but another key: the target asserts
/// that nothing it is given opens, so they reach the MAC check and must fail there.
fn datagram_open(dir: &Path) {
    let key = DatagramKey::new(7, [0x24; 32]);
    for (name, protection) in [("token", Protection::Token), ("aead", Protection::Aead)] {
        let stream = key.stream_with([3; 16], protection);
        let header = DatagramHeader {
            key_id: 7,
            tag: rel(16384).block(3),
            ..DatagramHeader::default()
        };
        let mut d = Box::new([0u8; DATAGRAM_LEN]);
        let page = synthetic_page(header.tag, 0x0100_0000);
        stream.seal(&header, &page, &mut d).unwrap();
        write(dir, name, &d[..]);
    }
}

/// Operation lists for `fragment_join` (its docs give the encoding): pages whole in order, in
/// reverse with repeats, one missing then timed out, changed fragments, made-up bytes.
fn fragment_join(dir: &Path) {
    let whole = |page: u8, count: u8| (0..count).flat_map(move |j| [1, page, j]);
    let in_order: Vec<u8> = whole(0, 8).chain(whole(2, 2)).chain(whole(3, 32)).collect();
    write(dir, "in-order", &in_order);
    let mut reversed: Vec<u8> = (0..8u8).rev().flat_map(|j| [1, 1, j, 1, 1, j]).collect();
    reversed.extend(whole(1, 8));
    write(dir, "reversed-with-repeats", &reversed);
    let mut missing: Vec<u8> = (0..7u8).flat_map(|j| [1, 0, j]).collect();
    missing.extend([3, 20, 1, 0, 7]);
    missing.extend(whole(0, 8));
    write(dir, "missing-then-timeout", &missing);
    let changed: Vec<u8> = (0..8u8).flat_map(|j| [2, 0, j, j * 13, 0xA5, 1, 0, j]).collect();
    write(dir, "changed-fragments", &changed);
    let mut junk = vec![0, 142];
    junk.extend(b"UDPF\x06\x00\x03\x08");
    junk.extend([0u8; 1128]);
    junk.extend(whole(2, 2));
    write(dir, "made-up-bytes", &junk);
}

fn requests() -> Vec<Request> {
    vec![
        Request::Exists {
            hdr: hdr(1),
            rel: rel(16384),
        },
        Request::Nblocks {
            hdr: hdr(2),
            rel: rel(16384),
        },
        Request::GetPage {
            hdr: hdr(3),
            rel: rel(16384),
            blkno: 9,
        },
        Request::DbSize {
            hdr: hdr(4),
            dbnode: 5,
        },
        Request::PrefetchTarget {
            hdr: hdr(5),
            target: PrefetchTarget {
                udp_port: 6401,
                key_id: 7,
                key: KEY,
                path_mtu: 1500,
            },
        },
        Request::Prefetch {
            hdr: hdr(6),
            rel: rel(16384),
            first_blkno: 10,
            nblocks: 32,
        },
    ]
}

fn responses() -> Vec<Response> {
    vec![
        Response::Exists {
            hdr: hdr(1),
            rel: rel(16384),
            exists: true,
        },
        Response::Nblocks {
            hdr: hdr(2),
            rel: rel(16384),
            n_blocks: 100,
        },
        Response::GetPage {
            hdr: hdr(3),
            rel: rel(16384),
            blkno: 9,
            page: synthetic_page(rel(16384).block(9), 0x0100_0000),
        },
        Response::DbSize {
            hdr: hdr(4),
            dbnode: 5,
            size: 1 << 30,
        },
        Response::Error {
            hdr: hdr(5),
            message: "relation does not exist".into(),
        },
        Response::PrefetchTarget {
            hdr: hdr(6),
            udp_port: 6401,
        },
    ]
}

fn pagestream_decode(dir: &Path) {
    for (i, req) in requests().iter().enumerate() {
        let mut out = Vec::new();
        req.encode(&mut out);
        write(dir, &format!("request-{i}"), &out);
    }
    for (i, resp) in responses().iter().enumerate() {
        let mut out = Vec::new();
        resp.encode(&mut out);
        write(dir, &format!("response-{i}"), &out);
    }
}

/// What a page server says from startup to the first pagestream response.
fn server_stream() -> Vec<u8> {
    let mut out = Vec::new();
    let msgs = [
        BackendMessage::AuthenticationCleartextPassword,
        BackendMessage::AuthenticationOk,
        BackendMessage::ParameterStatus {
            name: "data_checksums".into(),
            value: "on".into(),
        },
        BackendMessage::ParameterStatus {
            name: "system_identifier".into(),
            value: "7318234567890123456".into(),
        },
        BackendMessage::BackendKeyData { pid: 1, secret: 2 },
        BackendMessage::ReadyForQuery { status: b'I' },
        BackendMessage::CopyBothResponse,
    ];
    msgs.iter().for_each(|m| m.encode(&mut out));
    for resp in responses() {
        encode_copy_data_with(&mut out, |o| resp.encode(o));
    }
    BackendMessage::ErrorResponse(ErrorFields::fatal("57P01", "terminating connection"))
        .encode(&mut out);
    out
}

fn pgwire_decode(dir: &Path) {
    let mut front = Vec::new();
    let msgs = [
        FrontendMessage::Startup {
            params: vec![
                ("user".into(), "postgres".into()),
                ("database".into(), "postgres".into()),
            ],
        },
        FrontendMessage::Password("token".into()),
        FrontendMessage::Query(format!(
            "pagestream_v3 {} {}",
            "0".repeat(32),
            "1".repeat(32)
        )),
    ];
    msgs.iter().for_each(|m| m.encode(&mut front));
    for req in requests() {
        encode_copy_data_with(&mut front, |o| req.encode(o));
    }
    FrontendMessage::CopyDone.encode(&mut front);
    FrontendMessage::Terminate.encode(&mut front);
    write(dir, "frontend-session", &front);
    let mut ssl = Vec::new();
    FrontendMessage::SslRequest.encode(&mut ssl);
    write(dir, "ssl-request", &ssl);
    write(dir, "backend-session", &server_stream());
}

fn client_responses(dir: &Path) {
    // The first byte says how many chunk sizes follow (see the target).
    let mut whole = vec![0u8];
    whole.extend(server_stream());
    write(dir, "whole-reads", &whole);
    let mut trickled = vec![3u8, 0, 1, 200];
    trickled.extend(server_stream());
    write(dir, "trickled-reads", &trickled);
    let mut http = vec![0u8];
    http.extend(b"HTTP/1.1 400 Bad Request\r\n\r\n");
    write(dir, "http-server", &http);
}

/// One control message as Linux lays it out on a 64-bit machine (`cmsghdr` = `size_t` length,
/// `int` level, `int` type; the data padded to 8 bytes) carrying one `int`.
fn cmsg_int(level: i32, ty: i32, value: i32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(20usize.to_ne_bytes());
    b.extend(level.to_ne_bytes());
    b.extend(ty.to_ne_bytes());
    b.extend(value.to_ne_bytes());
    b.resize(24, 0);
    b
}

fn control_messages(dir: &Path) {
    // SOL_SOCKET/SO_RXQ_OVFL and SOL_UDP/UDP_GRO, as the daemon's receives get them.
    let (rxq_ovfl, gro) = (cmsg_int(1, 40, 17), cmsg_int(17, 104, 8304));
    write(dir, "gro", &gro);
    write(dir, "rxq-ovfl-and-gro", &[rxq_ovfl, gro.clone()].concat());
    write(dir, "gro-cut", &gro[..18]);
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    prewarm_state(&root.join("prewarm_state"));
    lfc_open(&root.join("lfc_open"));
    datagram_open(&root.join("datagram_open"));
    fragment_join(&root.join("fragment_join"));
    pagestream_decode(&root.join("pagestream_decode"));
    pgwire_decode(&root.join("pgwire_decode"));
    client_responses(&root.join("client_responses"));
    control_messages(&root.join("control_messages"));
    println!("seeds written under {}", root.display());
}
