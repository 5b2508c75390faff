//! Real PostgreSQL: initdb with data checksums, pgbench, then the page server serves the data
//! directory and every block of `pgbench_accounts` must verify. Skips only when PostgreSQL is
//! missing and `UDPF_REQUIRE_PG` is unset.

mod common;

use common::ServerProc;
use std::path::{Path, PathBuf};
use std::process::Command;
use udp_prefetch::protocol::client::{ConnectOptions, PageClient};
use udp_prefetch::protocol::page::{page_lsn, verify_page, PageCheck};
use udp_prefetch::protocol::pagestream::LATEST_LSN;

/// Runs a PostgreSQL tool as the `postgres` user when we are root (PostgreSQL refuses root).
fn pg(tool: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", tool]);
        c
    } else {
        Command::new(tool)
    };
    common::output_ok(cmd.args(args), &format!("{tool} {args:?}"))
}

/// Stops the PostgreSQL server even when the test fails half-way.
struct Cluster {
    data: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    running: bool,
}

impl Cluster {
    fn psql(&self, sql: &str) -> String {
        let port = self.port.to_string();
        let host = self.socket_dir.to_str().unwrap();
        let out = pg(
            "psql",
            &["-h", host, "-p", &port, "-d", "postgres", "-Atc", sql],
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn stop(&mut self) {
        if self.running {
            pg(
                "pg_ctl",
                &[
                    "-D",
                    self.data.to_str().unwrap(),
                    "-m",
                    "fast",
                    "-w",
                    "stop",
                ],
            );
            self.running = false;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = Command::new("runuser")
                .args([
                    "-u",
                    "postgres",
                    "--",
                    "pg_ctl",
                    "-D",
                    self.data.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "stop",
                ])
                .output();
        }
    }
}

fn chown_to_postgres(path: &Path) {
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    common::output_ok(
        Command::new("chown").args(["postgres:postgres", path.to_str().unwrap()]),
        "chown",
    );
}

#[test]
fn serves_a_real_pgbench_database_with_valid_checksums() {
    if !common::tools_or_skip(&["initdb", "pgbench"], "UDPF_REQUIRE_PG") {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("udpf-pg-")
        .tempdir()
        .unwrap();
    chown_to_postgres(tmp.path());
    let data = tmp.path().join("data");
    let socket_dir = tmp.path().join("sock");
    std::fs::create_dir(&socket_dir).unwrap();
    chown_to_postgres(&socket_dir);
    pg(
        "initdb",
        &[
            "--data-checksums",
            "-A",
            "trust",
            "-U",
            "postgres",
            "-D",
            data.to_str().unwrap(),
        ],
    );

    // A port of our own, and only a unix socket in our temp dir: nothing else is disturbed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=''",
        socket_dir.display()
    );
    let log = tmp.path().join("pg.log");
    pg(
        "pg_ctl",
        &[
            "-D",
            data.to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "start",
        ],
    );
    let mut cluster = Cluster {
        data: data.clone(),
        socket_dir: socket_dir.clone(),
        port,
        running: true,
    };

    let port_s = port.to_string();
    pg(
        "pgbench",
        &[
            "-i",
            "-s",
            "5",
            "-q",
            "-h",
            socket_dir.to_str().unwrap(),
            "-p",
            &port_s,
            "postgres",
        ],
    );
    cluster.psql("CHECKPOINT");
    let row = cluster.psql("SELECT pg_relation_filepath('pgbench_accounts') || ' ' || pg_relation_size('pgbench_accounts')");
    cluster.stop();

    let (filepath, size) = row.split_once(' ').expect("path and size");
    let size: u64 = size.parse().unwrap();
    let parts: Vec<&str> = filepath.split('/').collect();
    assert_eq!(parts[0], "base", "{filepath}");
    let rel = lfc::RelTag::new(
        1663,
        parts[1].parse().unwrap(),
        parts[2].parse().unwrap(),
        0,
    );
    let expected_blocks = (size / 8192) as u32;
    assert!(
        expected_blocks > 8000,
        "pgbench -s 5 has ~8200 blocks of accounts, got {expected_blocks}"
    );

    let source = format!("pgdata:{}", data.display());
    let server = ServerProc::start(&["--source", &source]);
    let mut client = PageClient::connect(&ConnectOptions::new(server.addr.clone())).unwrap();
    assert!(client.exists(rel, LATEST_LSN).unwrap());
    let n = client.nblocks(rel, LATEST_LSN).unwrap();
    assert_eq!(n, expected_blocks, "block count of {filepath}");
    let mut valid = 0u32;
    let mut max_lsn = 0;
    client
        .get_pages_pipelined(rel, 0..n, LATEST_LSN, 64, 8, |blkno, page| {
            assert_eq!(
                verify_page(page, blkno),
                PageCheck::Valid,
                "block {blkno} of {filepath}"
            );
            max_lsn = max_lsn.max(page_lsn(page));
            valid += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(valid, expected_blocks);
    assert!(max_lsn > 0, "pages carry their LSN in the header");

    // The free space map fork of the same relation also checksums (forks are served too).
    let fsm = lfc::RelTag { forknum: 1, ..rel };
    let fsm_blocks = client.nblocks(fsm, LATEST_LSN).unwrap();
    assert!(fsm_blocks > 0);
    for blkno in 0..fsm_blocks {
        let page = client.get_page(fsm.block(blkno), LATEST_LSN, 0).unwrap();
        assert!(verify_page(&page, blkno).is_ok(), "fsm block {blkno}");
    }
    // A shared catalog (pg_database, relfilenode 1262 in PostgreSQL 15) from the global tablespace.
    let pg_database = lfc::RelTag::new(1664, 0, 1262, 0);
    assert!(client.nblocks(pg_database, LATEST_LSN).unwrap() >= 1);
    assert_eq!(
        verify_page(
            &client
                .get_page(pg_database.block(0), LATEST_LSN, 0)
                .unwrap(),
            0
        ),
        PageCheck::Valid
    );
}
