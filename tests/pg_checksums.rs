//! Page verification follows the cluster: a stock `initdb` (no data checksums) has
//! `pd_checksum` 0 on every page, so its pages are verified by their header; a `-k` cluster by
//! checksum. Reads `data_checksum_version` from a real `pg_control` of each kind and verifies
//! every page of template1 and the shared catalogs, directly and through the page server.
//! Skips only when PostgreSQL is missing and `UDPF_REQUIRE_PG` is unset.

mod common;

use common::ServerProc;
use std::path::{Path, PathBuf};
use std::process::Command;
use udp_prefetch::pageserver::source::{PageSource, PgData};
use udp_prefetch::protocol::client::{ConnectOptions, PageClient};
use udp_prefetch::protocol::page::{verify_page, verify_page_as, PageCheck, PageVerify};
use udp_prefetch::protocol::pagestream::LATEST_LSN;

/// Runs initdb as the `postgres` user when we are root (PostgreSQL refuses root).
fn initdb(data: &Path, checksums: bool) {
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "initdb"]);
        c
    } else {
        Command::new("initdb")
    };
    if checksums {
        cmd.arg("--data-checksums");
    }
    common::output_ok(
        cmd.args(["-A", "trust", "-U", "postgres", "-D"]).arg(data),
        "initdb",
    );
}

fn cluster(checksums: bool) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix("udpf-pgck-")
        .tempdir()
        .unwrap();
    if unsafe { libc::geteuid() } == 0 {
        common::output_ok(
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(tmp.path()),
            "chown",
        );
    }
    let data = tmp.path().join("data");
    initdb(&data, checksums);
    (tmp, data)
}

/// Every fork of every relation in `dir` (`N`, `N_fsm`, `N_vm`; no segments beyond the first
/// in a fresh cluster) as tags of `spcnode/dbnode`.
fn relations(dir: &Path, spcnode: u32, dbnode: u32) -> Vec<lfc::RelTag> {
    let mut rels = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let (node, fork) = match name.split_once('_') {
            None => (name.as_str(), 0),
            Some((n, "fsm")) => (n, 1),
            Some((n, "vm")) => (n, 2),
            Some(_) => continue,
        };
        if let Ok(relnode) = node.parse() {
            rels.push(lfc::RelTag::new(spcnode, dbnode, relnode, fork));
        }
    }
    rels.sort_by_key(|r| (r.relnode, r.forknum));
    rels
}

fn all_relations(data: &Path) -> Vec<lfc::RelTag> {
    let mut rels = relations(&data.join("base/1"), 1663, 1);
    rels.extend(relations(&data.join("global"), 1664, 0));
    rels
}

/// Verifies every page of the cluster as its page source says; returns (verified, non-new
/// pages that would fail a checksum check).
fn verify_all(source: &PgData, rels: &[lfc::RelTag]) -> (u32, u32) {
    let how = PageVerify::for_cluster(source.data_checksum_version(), source.wal_lsn());
    let (mut verified, mut bad_checksum) = (0, 0);
    let mut page = [0u8; lfc::PAGE_SIZE];
    for &rel in rels {
        let n = source.nblocks(rel).unwrap().unwrap();
        for blkno in 0..n {
            source.read(rel.block(blkno), &mut page).unwrap();
            let check = verify_page_as(&page, blkno, how);
            assert!(check.is_ok(), "{rel} blk {blkno}: {check:?} ({how:?})");
            verified += 1;
            if matches!(verify_page(&page, blkno), PageCheck::BadChecksum { .. }) {
                bad_checksum += 1;
            }
        }
    }
    (verified, bad_checksum)
}

fn postgres_available() -> bool {
    common::tools_or_skip(&["initdb"], "UDPF_REQUIRE_PG")
}

#[test]
fn a_stock_initdb_cluster_verifies_by_page_header() {
    if !postgres_available() {
        return;
    }
    let (_tmp, data) = cluster(false);
    let source = PgData::open(&data).unwrap();
    assert_eq!(source.data_checksum_version(), 0);
    assert!(
        source.describe().contains("data checksums off"),
        "{}",
        source.describe()
    );
    let rels = all_relations(&data);
    let (verified, bad_checksum) = verify_all(&source, &rels);
    assert!(
        verified > 100,
        "template1 has hundreds of pages: {verified}"
    );
    // What the scan reported before: every written page "fails" a checksum it never had.
    assert!(bad_checksum > 100, "{bad_checksum} of {verified}");

    // Through the page server, as a compute that knows the cluster has no checksums.
    let how = PageVerify::for_cluster(0, source.wal_lsn());
    let server = ServerProc::start(&["--source", &format!("pgdata:{}", data.display())]);
    let mut client = PageClient::connect(&ConnectOptions::new(server.addr.clone())).unwrap();
    // The server said so at startup, and the client verifies accordingly.
    assert_eq!(
        client.page_verify(7),
        PageVerify::Header { max_lsn: 7 },
        "the client did not learn that the cluster has no checksums"
    );
    let pg_class = lfc::RelTag::new(1663, 1, 1259, 0);
    let n = client.nblocks(pg_class, LATEST_LSN).unwrap();
    assert!(n > 0);
    let mut served = 0;
    client
        .get_pages_pipelined(pg_class, 0..n, LATEST_LSN, 16, 4, |blkno, page| {
            assert_eq!(verify_page_as(page, blkno, how), PageCheck::Valid);
            served += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(served, n);

    // The scan tool verifies the same way: every page of pg_class, none failed (before, every
    // page failed its checksum: "verified 0, FAILED ...").
    let report = common::json_ok(
        Command::new(common::BIN)
            .args(["scan", "--server", &server.addr, "--mode", "tcp-pipelined"])
            .args(["--rel", "1663/1/1259/0", "--json"]),
        "scan",
    );
    assert_eq!(
        (report["verified"].as_u64(), report["failed"].as_u64()),
        (Some(u64::from(n)), Some(0)),
        "{report}"
    );

    // A page whose header is broken still fails without checksums.
    let mut page = client.get_page(pg_class.block(0), LATEST_LSN, 0).unwrap();
    page[14..16].copy_from_slice(&8u16.to_ne_bytes()); // pd_upper inside the header
    assert_eq!(verify_page_as(&page, 0, how), PageCheck::BadHeader);
}

#[test]
fn a_checksummed_cluster_verifies_by_checksum() {
    if !postgres_available() {
        return;
    }
    let (_tmp, data) = cluster(true);
    let source = PgData::open(&data).unwrap();
    assert_eq!(source.data_checksum_version(), 1);
    assert!(source.describe().contains("data checksums on"));
    assert_eq!(
        PageVerify::for_cluster(source.data_checksum_version(), source.wal_lsn()),
        PageVerify::Checksums
    );
    let (verified, bad_checksum) = verify_all(&source, &all_relations(&data));
    assert!(verified > 100, "{verified}");
    assert_eq!(bad_checksum, 0);
}

/// `pg_controldata`'s "Database system identifier", from the bin directory of `initdb`.
fn controldata_system_identifier(data: &Path) -> u64 {
    let initdb = std::fs::canonicalize(
        String::from_utf8(
            Command::new("sh")
                .args(["-c", "command -v initdb"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim(),
    )
    .unwrap();
    let out = Command::new(initdb.with_file_name("pg_controldata"))
        .arg(data)
        .output()
        .expect("running pg_controldata");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Database system identifier:"))
        .unwrap_or_else(|| panic!("no system identifier in: {text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn the_server_announces_the_clusters_system_identifier() {
    if !postgres_available() {
        return;
    }
    let (_tmp, data) = cluster(false);
    let want = controldata_system_identifier(&data);
    assert_eq!(PgData::open(&data).unwrap().system_identifier(), Some(want));
    // A compute binds its LFC to it (`lfc::Binding`), so another cluster's cache is refused.
    let server = ServerProc::start(&["--source", &format!("pgdata:{}", data.display())]);
    let client = PageClient::connect(&ConnectOptions::new(server.addr.clone())).unwrap();
    assert_eq!(client.binding().system_id, Some(want));
}
