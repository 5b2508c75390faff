//! One LFC, one timeline, end to end with real processes: a page server, the worker daemon and
//! scans. The first scan binds the cache to its tenant, timeline and the server's system
//! identifier (`lfc stat` shows them); a scan for another timeline, another tenant or another
//! cluster (a data directory whose relation numbers are the synthetic source's) is refused with
//! exit status 2 and one line naming both; `workers --recreate` starts an unbound cache.

mod common;

use common::{lfc_stat, run_with_limit, scan_command, ServerProc, WorkersProc, BIN, REL};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use udp_prefetch::pageserver::source::SYNTHETIC_SYSTEM_IDENTIFIER;
use udp_prefetch::protocol::page::{synthetic_page, synthetic_rel};

const LIMIT: Duration = Duration::from_secs(60);
const TENANT_A: &str = "0123456789abcdef0123456789abcdef";
const TIMELINE_A: &str = "11111111111111111111111111111111";
const TIMELINE_B: &str = "22222222222222222222222222222222";
const ZERO: &str = "00000000000000000000000000000000";

fn lfc_stat_human(lfc: &Path) -> String {
    let done = run_with_limit(
        Command::new(BIN).args(["lfc", "stat", "--lfc"]).arg(lfc),
        LIMIT,
    );
    assert_eq!(done.code(), Some(0), "lfc stat: {}", done.stderr);
    done.stdout
}

/// A udp scan of the first 200 blocks of [`REL`] for `tenant`/`timeline`.
fn scan(server: &ServerProc, lfc: &Path, tenant: &str, timeline: &str) -> common::Finished {
    let mut cmd = scan_command(server, lfc, "udp");
    cmd.args([
        "--blocks",
        "0..200",
        "--tenant",
        tenant,
        "--timeline",
        timeline,
    ]);
    run_with_limit(&mut cmd, LIMIT)
}

fn refusal(lfc: &Path, bound: (&str, &str, u64), asked: (&str, &str, u64)) -> String {
    format!(
        "LFC {} belongs to tenant {} timeline {} (system {}), not tenant {} timeline {} (system \
         {}); restart its worker daemon with --recreate to start a new cache",
        lfc.display(),
        bound.0,
        bound.1,
        bound.2,
        asked.0,
        asked.1,
        asked.2
    )
}

#[test]
fn a_scan_for_another_timeline_is_refused_and_recreate_starts_a_new_cache() {
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("x.lfc");
    let server = ServerProc::start(&["--source", "synthetic:pages=1000"]);
    let mut workers = WorkersProc::start(&lfc, &["--size", "8MiB", "--threads", "1"]);

    let stat = lfc_stat(&lfc);
    assert_eq!(stat["bound"], false, "{stat}");
    assert_eq!(stat["tenant_id"], serde_json::Value::Null, "{stat}");
    assert!(lfc_stat_human(&lfc).contains("  timeline   unbound"));

    let first = scan(&server, &lfc, TENANT_A, TIMELINE_A);
    assert_eq!(first.code(), Some(0), "first scan: {}", first.stderr);
    let stat = lfc_stat(&lfc);
    assert_eq!(stat["bound"], true, "{stat}");
    assert_eq!(stat["tenant_id"], TENANT_A, "{stat}");
    assert_eq!(stat["timeline_id"], TIMELINE_A, "{stat}");
    assert_eq!(
        stat["system_identifier"],
        SYNTHETIC_SYSTEM_IDENTIFIER.to_string(),
        "{stat}"
    );
    let human = lfc_stat_human(&lfc);
    assert!(
        human.contains(&format!(
            "  timeline   tenant {TENANT_A} timeline {TIMELINE_A} (system {SYNTHETIC_SYSTEM_IDENTIFIER})"
        )),
        "{human}"
    );

    // The same timeline again: served from the cache it filled.
    let again = scan(&server, &lfc, TENANT_A, TIMELINE_A);
    assert_eq!(again.code(), Some(0), "same timeline: {}", again.stderr);

    // Another timeline of the same tenant, and another tenant: refused, nothing read.
    let sys = SYNTHETIC_SYSTEM_IDENTIFIER;
    let other = scan(&server, &lfc, TENANT_A, TIMELINE_B);
    assert_eq!(other.code(), Some(2), "stderr: {}", other.stderr);
    assert_eq!(other.stdout, "", "no report for a refused scan");
    let want = refusal(
        &lfc,
        (TENANT_A, TIMELINE_A, sys),
        (TENANT_A, TIMELINE_B, sys),
    );
    assert!(
        other.stderr.contains(&want) && other.stderr.matches("belongs to").count() == 1,
        "want one line {want:?}, got {:?}",
        other.stderr
    );
    let other_tenant = scan(&server, &lfc, ZERO, TIMELINE_A);
    assert_eq!(
        other_tenant.code(),
        Some(2),
        "stderr: {}",
        other_tenant.stderr
    );
    assert!(other_tenant.stderr.contains(&refusal(
        &lfc,
        (TENANT_A, TIMELINE_A, sys),
        (ZERO, TIMELINE_A, sys)
    )));

    // So is prewarm for another timeline.
    let done = run_with_limit(
        Command::new(BIN)
            .args([
                "prewarm",
                "run",
                "--relation",
                REL,
                "--server",
                &server.addr,
            ])
            .args([
                "--tenant",
                TENANT_A,
                "--timeline",
                TIMELINE_B,
                "--json",
                "--lfc",
            ])
            .arg(&lfc)
            .env("RUST_LOG", "warn"),
        LIMIT,
    );
    assert_eq!(done.code(), Some(2), "prewarm: {}", done.stderr);
    assert!(done.stderr.contains(&want), "{}", done.stderr);

    // A restarted daemon keeps the binding; --recreate starts an unbound cache for timeline B.
    workers.terminate(Duration::from_secs(10));
    drop(workers);
    let restarted = WorkersProc::start(&lfc, &["--threads", "1"]);
    assert_eq!(lfc_stat(&lfc)["timeline_id"], TIMELINE_A);
    drop(restarted);
    let recreated = WorkersProc::start(&lfc, &["--recreate", "--threads", "1"]);
    let stat = lfc_stat(&lfc);
    assert_eq!(stat["bound"], false, "{stat}");
    assert_eq!(stat["used_pages"], 0, "{stat}");
    let b = scan(&server, &lfc, TENANT_A, TIMELINE_B);
    assert_eq!(
        b.code(),
        Some(0),
        "timeline B after --recreate: {}",
        b.stderr
    );
    assert_eq!(lfc_stat(&lfc)["timeline_id"], TIMELINE_B);
    drop(recreated);
}

/// A minimal PostgreSQL data directory: a `pg_control` (version 1300, 8 KiB blocks, data
/// checksums on, `system_id`) and the synthetic source's first relation, `blocks` pages of it,
/// so that it has the same relation number as the synthetic source but another cluster.
fn fake_pgdata(root: &Path, system_id: u64, blocks: u32) {
    let mut control = vec![0u8; 8192];
    control[0..8].copy_from_slice(&system_id.to_ne_bytes());
    control[8..12].copy_from_slice(&1300u32.to_ne_bytes());
    control[216..220].copy_from_slice(&8192u32.to_ne_bytes());
    control[252..256].copy_from_slice(&1u32.to_ne_bytes());
    std::fs::create_dir_all(root.join("global")).unwrap();
    std::fs::write(root.join("global/pg_control"), control).unwrap();
    let rel = synthetic_rel(0);
    let dir = root.join("base").join(rel.dbnode.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let mut data = Vec::with_capacity(blocks as usize * 8192);
    for blkno in 0..blocks {
        data.extend_from_slice(&synthetic_page(rel.block(blkno), 16)[..]);
    }
    std::fs::write(dir.join(rel.relnode.to_string()), data).unwrap();
}

#[test]
fn a_synthetic_and_a_pgdata_relation_of_the_same_number_never_share_an_lfc() {
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    let pgdata = dir.path().join("pgdata");
    let system_id = 7_318_234_567_890_123_456;
    fake_pgdata(&pgdata, system_id, 200);
    let synthetic = ServerProc::start(&["--source", "synthetic:pages=1000"]);
    let cluster = ServerProc::start(&["--source", &format!("pgdata:{}", pgdata.display())]);
    let _workers = WorkersProc::start(&lfc, &["--size", "8MiB", "--threads", "1"]);

    let first = scan(&synthetic, &lfc, ZERO, ZERO);
    assert_eq!(first.code(), Some(0), "synthetic scan: {}", first.stderr);
    let other = scan(&cluster, &lfc, ZERO, ZERO);
    assert_eq!(other.code(), Some(2), "pgdata scan: {}", other.stderr);
    assert!(
        other.stderr.contains(&refusal(
            &lfc,
            (ZERO, ZERO, SYNTHETIC_SYSTEM_IDENTIFIER),
            (ZERO, ZERO, system_id)
        )),
        "{}",
        other.stderr
    );
}
