//! Issue 18 end to end, with real processes: three page-server shards (`--shard 0/3`, `1/3`,
//! `2/3`), one worker daemon, and a scan and a prewarm across all three. Every page verified,
//! each shard served only its own pages (its counters), a shard that drops every datagram
//! served its own pages by TCP while the others stayed on UDP, and a shard killed mid-scan
//! fails the scan promptly, naming the shard. The routing itself is pinned by the golden test
//! in `src/protocol/shard.rs`; here the routing function only says which pages each shard owns.

mod common;

use common::{run_with_limit, sample, wait_with_limit, ServerProc, WorkersProc, BIN};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use udp_prefetch::protocol::client::{ClientError, ConnectOptions, PageClient};
use udp_prefetch::protocol::pagestream::LATEST_LSN;
use udp_prefetch::protocol::shard::ShardLayout;

const SHARDS: usize = 3;
/// Small stripes, so that a small relation has pages on every shard.
const STRIPE: u32 = 16;
const STRIPE_ARG: &str = "16";
const PAGES: u32 = 1200;
const REL0: &str = "1663/5/16384/0";
const REL1: &str = "1663/5/16385/0";
/// Generous bound on a scan or prewarm of PAGES pages on a loaded machine: only a hang fails it.
const LIMIT: Duration = Duration::from_secs(120);
/// The tests of this file that start page servers take turns: each starts three servers, a
/// daemon and a scan, and whether a healthy shard's first datagrams arrive within their wait
/// is what one of them checks. Run side by side on two cores (debug builds), they made every
/// attempt of that test a busy machine's (CI: all three attempts' first prefetches late).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes this file's turn (a test that failed holding it does not stop the others).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn layout() -> ShardLayout {
    ShardLayout::new(SHARDS, STRIPE).unwrap()
}

/// Pages of relation number `relnode` (0..PAGES) each shard owns.
fn pages_per_shard(relnode: u32) -> [u64; SHARDS] {
    let rel = lfc::RelTag::new(1663, 5, relnode, 0);
    let mut n = [0; SHARDS];
    for b in 0..PAGES {
        n[layout().shard_of(&rel.block(b))] += 1;
    }
    n
}

/// The three shards, shard `drop_on` (if any) dropping every prefetch datagram.
fn start_shards(drop_on: Option<usize>, extra: &[&str]) -> Vec<ServerProc> {
    let source = format!("synthetic:rels=2,pages={PAGES}");
    (0..SHARDS)
        .map(|i| {
            let shard = format!("{i}/{SHARDS}");
            let mut args = vec![
                "--source",
                &source,
                "--shard",
                &shard,
                "--stripe-pages",
                STRIPE_ARG,
                "--metrics",
                "127.0.0.1:0",
            ];
            if drop_on == Some(i) {
                args.extend(["--drop-prefetch", "1.0"]);
            }
            args.extend(extra);
            ServerProc::start(&args)
        })
        .collect()
}

fn shard_args(cmd: &mut Command, shards: &[ServerProc]) {
    for s in shards {
        cmd.args(["--server", &s.addr]);
    }
    cmd.args(["--stripe-pages", STRIPE_ARG]);
}

fn scan_command(shards: &[ServerProc], lfc: &std::path::Path, rel: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["scan", "--mode", "udp", "--rel", rel, "--json"])
        .arg("--lfc")
        .arg(lfc)
        .env("RUST_LOG", "warn");
    shard_args(&mut cmd, shards);
    cmd
}

fn json(what: &str, done: &common::Finished) -> serde_json::Value {
    assert!(
        done.status.is_some(),
        "{what}: still running, killed; {}",
        done.stderr
    );
    assert_eq!(done.code(), Some(0), "{what}: stderr: {}", done.stderr);
    serde_json::from_str(&done.stdout).unwrap_or_else(|e| panic!("{what}: {e}: {}", done.stdout))
}

fn counter(text: &str, series: &str) -> u64 {
    sample(text, series).unwrap_or_else(|| panic!("{series} missing")) as u64
}

/// What one shard served: (GetPages, prefetch pages queued, requests refused as another
/// shard's).
fn served(server: &ServerProc) -> (u64, u64, u64) {
    let text = server.scrape();
    (
        counter(
            &text,
            "udp_prefetch_server_requests_total{type=\"get_page\"}",
        ),
        counter(&text, "udp_prefetch_server_prefetch_pages_queued_total"),
        counter(&text, "udp_prefetch_server_wrong_shard_total"),
    )
}

#[test]
fn scan_and_prewarm_across_three_shards_each_shard_serving_only_its_own_pages() {
    let _turn = serial();
    // On a loaded machine a shard can leave UDP at its first late datagrams and bring all its
    // pages by TCP pipelining (`.ci/run` once: 576 datagrams received, every one already
    // present; once: one shard delivered 4, the other two none): the senders' table then
    // cannot show every shard, and the attempt is made again from scratch.
    const ATTEMPTS: usize = 4;
    for attempt in 1..=ATTEMPTS {
        let dir = tempfile::tempdir().unwrap();
        let lfc = dir.path().join("lfc");
        let shards = start_shards(None, &[]);
        let workers = WorkersProc::start(&lfc, &["--size", "64M"]);

        let done = run_with_limit(&mut scan_command(&shards, &lfc, REL0), LIMIT);
        let r = json("scan", &done);
        assert_eq!(r["pages"], u64::from(PAGES), "{r}");
        assert_eq!(r["verified"], u64::from(PAGES), "{r}");
        assert_eq!(r["failed"], 0, "{r}");

        let mut prewarm = Command::new(BIN);
        prewarm
            .args(["prewarm", "run", "--relation", REL1, "--json", "--lfc"])
            .arg(&lfc)
            .env("RUST_LOG", "warn");
        shard_args(&mut prewarm, &shards);
        let p = json("prewarm", &run_with_limit(&mut prewarm, LIMIT));
        assert_eq!(p["complete"], true, "{p}");
        assert_eq!(p["present"], u64::from(PAGES), "{p}");
        assert_eq!(p["failed_verification"], 0, "{p}");

        // Each shard was asked for its own pages only (a stray one is refused and counted), and
        // every shard took part: what it served (GetPage or prefetch) covers at least its pages of
        // both relations.
        let owned: Vec<u64> = (0..SHARDS)
            .map(|s| pages_per_shard(16384)[s] + pages_per_shard(16385)[s])
            .collect();
        for (s, server) in shards.iter().enumerate() {
            let text = server.scrape();
            assert_eq!(counter(&text, "udp_prefetch_server_shard_number"), s as u64);
            assert_eq!(counter(&text, "udp_prefetch_server_shards"), SHARDS as u64);
            let (get_page, prefetched, wrong) = served(server);
            assert_eq!(wrong, 0, "shard {s} was sent another shard's page");
            assert!(owned[s] > 0, "the stripes put pages on shard {s}");
            assert!(
                get_page + prefetched >= owned[s],
                "shard {s} served {get_page} GetPages and {prefetched} prefetched pages for the \
                 {} pages it owns",
                owned[s]
            );
        }
        // The daemon counts what each sender (a shard's sender thread: IP and port) delivered:
        // every installed datagram under a sender of its own, from more than one shard.
        // A thread counts each install at once but adds it to its sender's count at the end of
        // its receive batch: a thread descheduled within a batch shows the two apart for a while,
        // so the daemon is read until they agree.
        let family = "udp_prefetch_datagrams_installed_by_sender_total{sender=\"";
        let senders = |text: &str| -> Vec<(String, u64)> {
            text.lines()
                .filter_map(|l| l.strip_prefix(family))
                .filter_map(|l| {
                    let (addr, n) = l.split_once("\"} ")?;
                    Some((addr.to_string(), n.trim().parse::<f64>().ok()? as u64))
                })
                .collect()
        };
        let by_sender = |text: &str| -> u64 {
            senders(text)
                .iter()
                .filter(|(a, _)| a != "other")
                .map(|(_, n)| n)
                .sum()
        };
        let text = workers.scrape_until(LIMIT, |t| {
            by_sender(t) == counter(t, "udp_prefetch_datagrams_installed_total")
        });
        let installed = counter(&text, "udp_prefetch_datagrams_installed_total");
        let senders = senders(&text);
        let delivering = senders
            .iter()
            .filter(|(a, n)| a != "other" && *n > 0)
            .count();
        if delivering < SHARDS && attempt < ATTEMPTS {
            // `.ci/run` once: 4 datagrams from one shard, the other two all by TCP.
            eprintln!(
                "attempt {attempt}: {delivering} of {SHARDS} shards delivered by UDP, the rest \
                 came by TCP (a busy machine); again: {senders:?}"
            );
            continue;
        }
        assert!(installed > 0, "{text}");
        assert_eq!(by_sender(&text), installed, "{senders:?}");
        assert!(
            delivering >= SHARDS,
            "one sender or more per shard: {senders:?}"
        );
        lfc_stat_counts_each_shards_senders(&lfc, &workers, &shards);
        // And the servers hold to the map: another shard's page is refused, naming its owner.
        let rel = lfc::RelTag::new(1663, 5, 16384, 0);
        let foreign = (0..PAGES)
            .find(|&b| layout().shard_of(&rel.block(b)) != 0)
            .unwrap();
        let owner = layout().shard_of(&rel.block(foreign));
        let mut client = PageClient::connect(&ConnectOptions::new(shards[0].addr.clone())).unwrap();
        match client.get_page(rel.block(foreign), LATEST_LSN, 0) {
            Err(ClientError::Request(message)) => assert!(
                message.contains(&format!("belongs to shard {owner}/3"))
                    && message.contains("this page server, shard 0/3"),
                "{message}"
            ),
            other => panic!(
                "shard 0 served another shard's page: {:?}",
                other.map(|_| ())
            ),
        }
        assert_eq!(served(&shards[0]).2, 1);
        return;
    }
}

/// `lfc stat --json` (the LFC's sender table, another process's view) names each shard's
/// senders, which its metrics list by port, with datagrams installed from every shard, and its
/// rows add up to what the daemon installed.
fn lfc_stat_counts_each_shards_senders(
    lfc: &std::path::Path,
    workers: &WorkersProc,
    shards: &[ServerProc],
) {
    let stat = || {
        let mut cmd = Command::new(BIN);
        cmd.args(["lfc", "stat", "--json", "--lfc"]).arg(lfc);
        json("lfc stat", &run_with_limit(&mut cmd, LIMIT))
    };
    // Datagrams still in flight after the prewarm would make the two counts differ for a
    // moment: read until the table and the daemon's own counter agree.
    let deadline = Instant::now() + LIMIT;
    let (s, installed) = loop {
        let s = stat();
        let installed = counter(&workers.scrape(), "udp_prefetch_datagrams_installed_total");
        if s["sender_installed_total"] == installed {
            break (s, installed);
        }
        assert!(
            Instant::now() < deadline,
            "lfc stat counts {} installed by sender, the daemon {installed}",
            s["sender_installed_total"]
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let rows = s["senders"].as_array().expect("senders");
    let row_sum: u64 = rows.iter().map(|r| r["installed"].as_u64().unwrap()).sum();
    assert_eq!(s["senders_other"]["installed"], 0, "{s}");
    assert_eq!(row_sum, installed, "{s}");
    for (i, shard) in shards.iter().enumerate() {
        let text = shard.scrape();
        let ports: Vec<u16> = text
            .lines()
            .filter(|l| l.starts_with("udp_prefetch_server_sender_port{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(
            !ports.is_empty(),
            "shard {i} names its sender ports: {text}"
        );
        let from_shard: u64 = rows
            .iter()
            .filter(|r| {
                let addr: std::net::SocketAddr = r["addr"].as_str().unwrap().parse().unwrap();
                ports.contains(&addr.port())
            })
            .map(|r| r["installed"].as_u64().unwrap())
            .sum();
        assert!(
            from_shard > 0,
            "lfc stat shows no datagram from shard {i} (ports {ports:?}): {s}"
        );
    }
}

#[test]
fn a_shard_whose_datagrams_are_all_dropped_serves_its_pages_by_tcp_and_the_others_stay_on_udp() {
    let _turn = serial();
    const DROPPING: usize = 1;
    // On an idle Intel Xeon guest (2 CPUs) a healthy shard left UDP in about 45 % of attempts
    // of the debug build (its first two reads missed their 1 ms wait; the release build: 0 of
    // 10); a loaded machine's calibrations take one off too. Ten attempts keep a false failure
    // under 1 % even at 60 % a run (0.6^10).
    const ATTEMPTS: usize = 10;
    // A healthy shard's pages that may come through the TCP pipeline (loss repairs of pages
    // reordered on a loaded machine), as a share of its reads: "only the dropping shard's pages
    // went through the TCP pipeline", give or take these. Idle, the release build read none.
    const HEALTHY_TCP_SHARE: f64 = 0.05;
    let owned = pages_per_shard(16384);
    // On a loaded machine a healthy shard's prefetches may miss their wait too, and that shard
    // then rightly leaves UDP as well: such a run shows nothing about the dropping shard, so it
    // is set up again (fresh servers, daemon and LFC), a few times at most.
    for attempt in 1..=ATTEMPTS {
        let dir = tempfile::tempdir().unwrap();
        let lfc = dir.path().join("lfc");
        let shards = start_shards(Some(DROPPING), &[]);
        let workers = WorkersProc::start(&lfc, &["--size", "64M"]);
        // A long-running daemon's frames are all mapped: a scan started while it still
        // prefaults (a background thread on the same CPUs) can see its first datagrams late
        // and leave UDP, as it should, but that shows nothing about the dropping shard.
        workers.scrape_until(LIMIT, |m| {
            WorkersProc::metric(m, "udp_prefetch_lfc_prefault_remaining_pages") == 0
        });

        let done = run_with_limit(&mut scan_command(&shards, &lfc, REL0), LIMIT);
        let r = json("scan", &done);
        assert_eq!(r["verified"], u64::from(PAGES), "{r}");
        assert_eq!(r["failed"], 0, "{r}");

        // None of the dropping shard's pages can have come by UDP: every one was a GetPage.
        let (get_page, _, wrong) = served(&shards[DROPPING]);
        assert_eq!(wrong, 0);
        assert!(
            get_page >= owned[DROPPING],
            "shard {DROPPING} drops every datagram, so its {} pages came by TCP, yet it served \
             only {get_page} GetPages",
            owned[DROPPING]
        );
        // It moved to TCP, and the scan's report says so, shard by shard.
        let log = r["udp_state_log"].as_array().unwrap();
        let moved = |s: usize| {
            log.iter().any(|c| {
                c["to"] == "tcp-pipelined"
                    && c["reason"]
                        .as_str()
                        .unwrap()
                        .starts_with(&format!("shard {s}:"))
            })
        };
        assert!(moved(DROPPING), "{r}");
        let per_shard = r["shards"]
            .as_array()
            .expect("a sharded scan reports its shards");
        assert_eq!(per_shard.len(), SHARDS, "{r}");
        assert_eq!(per_shard[DROPPING]["path"], "tcp-pipelined", "{r}");
        let healthy: Vec<usize> = (0..SHARDS).filter(|&s| s != DROPPING).collect();
        // A healthy shard may leave UDP for a calibration window (it measures TCP's pace when
        // its reads block, ARCHITECTURE §6), and stay on TCP when that window finds its own
        // reads faster there ("reads took X µs each on UDP, Y µs on TCP pipelining"): on a
        // loaded machine the debug build's daemon shares the CPUs with the scan, and the
        // never-worse-than-TCP rule then takes a healthy shard off UDP by its own measurement
        // (2 of 8 runs of this test on an AMD EPYC guest), which says nothing of the dropping
        // shard. Leaving counts when a rule that sees missing pages moved it: that is what
        // the dropping shard's datagrams could leak into.
        let moved = |s: usize| {
            log.iter().any(|c| {
                let reason = c["reason"].as_str().unwrap();
                c["to"] == "tcp-pipelined"
                    && reason.starts_with(&format!("shard {s}:"))
                    && !reason.contains("measuring TCP pipelining's pace")
                    && !reason.contains("on TCP pipelining")
            })
        };
        let pipelined_share = |s: usize| {
            let shard = &per_shard[s];
            shard["tcp_pipelined"].as_u64().unwrap() as f64
                / shard["reads"].as_u64().unwrap().max(1) as f64
        };
        // Any move counts for a retry, calibrations too: the attempt that counts shows the
        // healthy shards reading by UDP alone.
        let left = |s: usize| {
            per_shard[s]["path"] != "udp"
                || per_shard[s]["udp_state_changes"] != 0
                || pipelined_share(s) > HEALTHY_TCP_SHARE
        };
        if healthy.iter().any(|&s| moved(s) || left(s)) && attempt < ATTEMPTS {
            let why: Vec<String> = log
                .iter()
                .filter(|c| {
                    let r = c["reason"].as_str().unwrap_or("");
                    healthy
                        .iter()
                        .any(|s| r.starts_with(&format!("shard {s}:")))
                })
                .map(|c| format!("{} ms: {}", c["at_ms"], c["reason"].as_str().unwrap_or("")))
                .collect();
            eprintln!(
                "attempt {attempt}: a healthy shard left UDP too (a busy machine): {why:?}; again"
            );
            continue;
        }
        // It alone moved: the other shards stayed on UDP, and their pages came mostly by it.
        for &s in &healthy {
            assert!(
                !moved(s),
                "shard {s} (not dropping) left UDP in every attempt: {r}"
            );
            assert_eq!(per_shard[s]["path"], "udp", "{r}");
            assert!(
                pipelined_share(s) <= HEALTHY_TCP_SHARE,
                "shard {s} (not dropping) read {:.0} % of its pages from the TCP pipeline: {r}",
                100.0 * pipelined_share(s)
            );
            let (get_page, prefetched, wrong) = served(&shards[s]);
            assert_eq!(wrong, 0);
            assert!(prefetched > 0, "shard {s} prefetched nothing");
            assert!(
                get_page < owned[s],
                "shard {s} (not dropping) served all its {} pages by TCP ({get_page} GetPages)",
                owned[s]
            );
        }
        return;
    }
}

#[test]
fn a_shard_killed_mid_scan_fails_the_scan_promptly_naming_the_shard() {
    let _turn = serial();
    const KILLED: usize = 2;
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    // Slow enough per page that the scan is still running when the shard dies.
    let mut shards = start_shards(None, &["--service-delay-us", "300"]);
    let _workers = WorkersProc::start(&lfc, &["--size", "64M"]);
    let scan = scan_command(&shards, &lfc, REL0)
        .args(["--cpu-per-page-us", "500"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn scan");
    // Mid-scan: the doomed shard has served part of the relation.
    let deadline = Instant::now() + LIMIT;
    while served(&shards[KILLED]).0 + served(&shards[KILLED]).1 == 0 {
        assert!(
            Instant::now() < deadline,
            "the scan never reached shard {KILLED}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    shards[KILLED].child.kill().unwrap();
    shards[KILLED].child.wait().unwrap();
    let killed_at = Instant::now();
    let done = wait_with_limit(scan, LIMIT);
    assert!(
        done.status.is_some(),
        "the scan hung after shard {KILLED} died"
    );
    assert!(
        killed_at.elapsed() < Duration::from_secs(30),
        "the scan took {:?} to notice",
        killed_at.elapsed()
    );
    assert_eq!(
        done.code(),
        Some(1),
        "stdout {} stderr {}",
        done.stdout,
        done.stderr
    );
    assert!(
        done.stderr
            .contains(&format!("page server shard {KILLED}/3 (")),
        "the error names the shard: {}",
        done.stderr
    );
}

#[test]
fn bad_shard_flags_are_refused_with_status_2_saying_why() {
    for (args, says) in [
        (
            vec!["pageserver", "--listen", "127.0.0.1:0", "--shard", "3/3"],
            "shard 3 does not exist in a tenant of 3 shards",
        ),
        (
            vec!["pageserver", "--listen", "127.0.0.1:0", "--shard", "1-3"],
            "a shard is given as I/N",
        ),
        (
            vec![
                "pageserver",
                "--listen",
                "127.0.0.1:0",
                "--shard",
                "0/2",
                "--stripe-pages",
                "0",
            ],
            "the stripe size must be at least 1 page",
        ),
        (
            vec![
                "scan",
                "--rel",
                REL0,
                "--mode",
                "tcp-sync",
                "--stripe-pages",
                "0",
            ],
            "the stripe size must be at least 1 page",
        ),
    ] {
        let done = run_with_limit(Command::new(BIN).args(&args), Duration::from_secs(30));
        assert_eq!(done.code(), Some(2), "{args:?}: {}", done.stderr);
        assert!(done.stderr.contains(says), "{args:?}: {}", done.stderr);
    }
}
