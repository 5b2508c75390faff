//! `udp-prefetch demo`: everything on one machine, no set-up. Starts a page server (or
//! `--shards N` of them), a worker
//! daemon (a separate process) over a temporary LFC, scans a synthetic relation in the three
//! prefetch designs, then again with 5 % of prefetch datagrams dropped, and prints one table.
//!
//! Owns: its flags, the order of the runs and the table it prints. Makes no decision of a scan's or
//! of the page server's: it starts `PageServer`s in-process and the daemon as a child
//! (`daemon_proc`), reads pages only through `run_scan`, and of `bench` uses only where the
//! benches place a run (`bench::topology`, its LFC directory set up by `main`), so that its table
//! and the benches' measure the same deployment.

use super::daemon_proc::{DaemonProc, ScratchDir};
use super::Outcome;
use crate::compute::backend::read_path::ReadPathConfig;
use crate::compute::backend::PrefetchPath;
use crate::compute::scan::{run_scan, ScanConfig, ScanMode, ScanReport};
use crate::pageserver::source::{SourceSpec, Synthetic};
use crate::pageserver::{PageServer, ServerConfig};
use crate::protocol::client::ConnectOptions;
use crate::protocol::shard::{ShardIdentity, ShardLayout, ShardMap};
use lfc::Lfc;
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Size of each synthetic relation, in MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub size_mib: u32,
    /// Emulated page server latency per response, microseconds.
    #[arg(long, default_value_t = 200)]
    pub service_delay_us: u64,
    /// Pipeline depth of the tcp-pipelined scans (Neon's 128).
    #[arg(long, default_value_t = crate::compute::scan::DEFAULT_TCP_DEPTH)]
    pub depth: u32,
    /// Prefetch distance of the UDP scans (as in `bench scan`: it costs LFC space, not
    /// connection buffers, and hides lost datagrams' retries).
    #[arg(long, default_value_t = crate::compute::scan::DEFAULT_UDP_DISTANCE)]
    pub distance: u32,
    /// Page-server shards to split the relations over (each its own server, `--shard i/N`);
    /// the scans read from all of them, each page from its shard.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub shards: u32,
    /// Stripe size of the sharding, in 8 KiB pages.
    #[arg(long, default_value_t = crate::protocol::shard::DEFAULT_STRIPE_PAGES)]
    pub stripe_pages: u32,
    /// Where the page servers run, as `bench --topology`: `split` puts them on the last half
    /// of the CPUs and the scans and the worker daemon on the others, as two hosts would be;
    /// `colocated` lets everything run everywhere.
    #[arg(long, value_enum, default_value_t)]
    pub topology: crate::bench::topology::Topology,
}

/// The page servers of one case, shard i of `args.shards` each, and the map a scan uses.
fn start_servers(
    args: &DemoArgs,
    pages: u32,
    drop: f64,
) -> anyhow::Result<(Vec<PageServer>, ShardMap)> {
    let layout = ShardLayout::new(args.shards as usize, args.stripe_pages)
        .map_err(|e| super::BadInput(format!("--shards/--stripe-pages: {e}")))?;
    let servers = (0..layout.count())
        .map(|i| {
            let config = ServerConfig {
                listen: "127.0.0.1:0".parse()?,
                source: SourceSpec::Synthetic { rels: 2, pages },
                service_delay_us: args.service_delay_us,
                drop_prefetch: drop,
                shard: ShardIdentity::new(i, layout)?,
                ..ServerConfig::default()
            };
            // Where the run's topology puts the page server, as the benches do.
            crate::bench::start_server(config)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let map = ShardMap::new(
        servers.iter().map(|s| s.local_addr().to_string()).collect(),
        args.stripe_pages,
    );
    Ok((servers, map))
}

pub fn run(args: DemoArgs) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let pages = args.size_mib * 128;
    let scratch = ScratchDir::new("udp-prefetch-demo")?;
    let result = demo(&args, pages, &scratch.0);
    drop(scratch);
    let outcome = result?;
    println!(
        "\nfinished in {:.1} s; temporary files removed",
        started.elapsed().as_secs_f64()
    );
    Ok(outcome)
}

fn demo(args: &DemoArgs, pages: u32, dir: &std::path::Path) -> anyhow::Result<Outcome> {
    let lfc_path = dir.join("lfc");
    // Room for both relations, so the lossy run starts as cold as the first one.
    let lfc_bytes = u64::from(pages) * 2 * 8192 + (16 << 20);
    let mut daemon = DaemonProc::start(&lfc_path, lfc_bytes, &[])?;
    let lfc = Lfc::open(&lfc_path)?;
    // Mapped whole before the scans, as a backend that has served queries for a while has it
    // (and as the benches map it): the table compares the read paths, not this new process's
    // first touch of each frame, two page faults a page on 4 KiB pages, which the udp rows
    // paid and the TCP-only rows never do (0.59–0.81 × tcp-pipelined in a run without it).
    lfc.map_all()?;
    println!(
        "worker daemon: pid {}, UDP port {}, metrics http://{}/metrics",
        daemon.pid(),
        daemon.udp_port,
        daemon.metrics
    );
    println!(
        "LFC: {} ({} MiB, shared by the daemon and this process; {} pages)",
        lfc_path.display(),
        lfc_bytes >> 20,
        if lfc.huge_pages().backed() {
            "2 MiB"
        } else {
            "4 KiB"
        }
    );
    println!("{}", crate::bench::topology::describe());
    println!(
        "relations 1663/5/16384/0 and 1663/5/16385/0: {pages} pages ({} MiB) each; service delay {} us; TCP depth {}, UDP distance {}",
        args.size_mib, args.service_delay_us, args.depth, args.distance
    );
    if args.shards > 1 {
        println!(
            "{} page-server shards, stripes of {} pages (Neon's routing); every scan reads from all",
            args.shards, args.stripe_pages
        );
    }

    let rows = scan_all(args, pages, daemon.udp_port, &lfc)?;
    print_table(&rows);
    let digests_match = rows
        .chunks(3)
        .all(|c| c.iter().all(|(_, r)| r.digest == c[0].1.digest));
    let failed: u64 = rows.iter().map(|(_, r)| r.failed).sum();

    print_daemon_counters(&daemon)?;
    let stats = lfc.stats();
    println!(
        "LFC: {} of {} pages used, {} installs, {} hits",
        stats.used_pages, stats.capacity_pages, stats.installs, stats.hits
    );
    println!(
        "every page verified: {}; identical pages in every mode: {}",
        if failed == 0 { "yes" } else { "NO" },
        if digests_match { "yes" } else { "NO" }
    );
    println!("{}", conclusion(&rows));
    drop(lfc);
    daemon.stop();
    Ok(if failed == 0 && digests_match {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}

/// Scans relation 0 without drops and relation 1 with 5 % of prefetch datagrams dropped, in
/// each of the three modes (each relation on a fresh page server); returns (drop, report) rows.
fn scan_all(
    args: &DemoArgs,
    pages: u32,
    udp_port: u16,
    lfc: &Lfc,
) -> anyhow::Result<Vec<(f64, ScanReport)>> {
    let mut rows: Vec<(f64, ScanReport)> = Vec::new();
    for (rel_index, drop) in [(0u32, 0.0), (1, 0.05)] {
        let (_servers, map) = start_servers(args, pages, drop)?;
        for mode in [ScanMode::TcpSync, ScanMode::TcpPipelined, ScanMode::Udp] {
            let cfg = ScanConfig {
                connect: ConnectOptions::new(map.servers[0].clone()),
                rel: Synthetic::rel(rel_index),
                blocks: None,
                mode,
                distance: mode.pages_ahead(args.depth, args.distance),
                cpu_per_page_us: 0,
                receive: crate::compute::backend::Receive::Daemon {
                    port: Some(udp_port),
                },
                read_path: ReadPathConfig::default(),
                shards: map.clone(),
            };
            print!(
                "  scanning {} with drop {:.0}% ...",
                mode.name(),
                drop * 100.0
            );
            std::io::stdout().flush()?;
            let r = run_scan(&cfg, Some(lfc))?;
            println!(" {:.0} pages/s", r.pages_per_s);
            rows.push((drop, r));
        }
    }
    Ok(rows)
}

/// One line per scan, its speed against the tcp-pipelined scan with the same drop rate. The
/// LFC columns (hits, late, wasted, pipelined) are `-` for the TCP modes, which do not use it.
fn print_table(rows: &[(f64, ScanReport)]) {
    println!();
    println!(
        "{:<14} {:>5} {:>10} {:>8} {:>8} {:>6} {:>9} {:>10} {:>7} {:>10} {:>9}",
        "mode",
        "drop",
        "pages/s",
        "vs pipe",
        "hits",
        "late",
        "fallback",
        "pipelined",
        "wasted",
        "cpu us/pg",
        "verified"
    );
    for (drop, r) in rows {
        let pipelined = rows
            .iter()
            .find(|(d, x)| d == drop && x.mode == "tcp-pipelined")
            .map_or(0.0, |(_, x)| x.pages_per_s);
        let lfc_only = |v: u64| {
            if r.mode == ScanMode::Udp.name() {
                v.to_string()
            } else {
                "-".to_string()
            }
        };
        println!(
            "{:<14} {:>4.0}% {:>10.0} {:>7.2}x {:>8} {:>6} {:>9} {:>10} {:>7} {:>10.2} {:>9}",
            r.mode,
            drop * 100.0,
            r.pages_per_s,
            r.pages_per_s / pipelined.max(f64::MIN_POSITIVE),
            lfc_only(r.hits),
            lfc_only(r.late_hits),
            r.fallbacks,
            lfc_only(r.tcp_pipelined),
            lfc_only(r.wasted_prefetches),
            r.cpu_us_per_page,
            format!("{}/{}", r.verified, r.pages)
        );
    }
    print_path_changes(rows);
}

/// The udp scans' moves between UDP prefetch and TCP pipelining, with their reasons (the
/// `pipelined` column's pages were read after a move to TCP).
fn print_path_changes(rows: &[(f64, ScanReport)]) {
    const SHOWN: usize = 4;
    for (drop, r) in rows.iter().filter(|(_, r)| !r.udp_state_log.is_empty()) {
        println!(
            "udp at drop {:.0}% changed path {} time(s):",
            drop * 100.0,
            r.udp_state_changes
        );
        for c in r.udp_state_log.iter().take(SHOWN) {
            let to = match c.to {
                PrefetchPath::Udp => "to UDP prefetch",
                PrefetchPath::TcpPipelined => "to TCP pipelining",
            };
            println!("  at {:.1} ms {to}: {}", c.at_ms, c.reason);
        }
        if r.udp_state_log.len() > SHOWN {
            println!("  ... and {} more", r.udp_state_log.len() - SHOWN);
        }
    }
}

/// What the table shows, in one sentence computed from it (never a fixed claim: on a loaded or
/// unusual machine the order can change): the fastest mode at each drop rate and by what factor,
/// and how many of the udp scan's reads found their page in the LFC.
fn conclusion(rows: &[(f64, ScanReport)]) -> String {
    let mut drops: Vec<f64> = Vec::new();
    for (d, _) in rows {
        if !drops.contains(d) {
            drops.push(*d);
        }
    }
    let parts: Vec<String> = drops
        .iter()
        .map(|&drop| {
            let mut group: Vec<&ScanReport> = rows
                .iter()
                .filter(|(d, _)| *d == drop)
                .map(|(_, r)| r)
                .collect();
            group.sort_by(|a, b| b.pages_per_s.total_cmp(&a.pages_per_s));
            let fastest = group[0];
            let mut part = if drop == 0.0 {
                "without loss ".to_string()
            } else {
                format!("with {:.0} % of prefetch datagrams dropped ", drop * 100.0)
            };
            part.push_str(&format!("{} was the fastest", fastest.mode));
            let slower: Vec<String> = group[1..]
                .iter()
                .map(|r| {
                    format!(
                        "{:.2}x {}'s",
                        fastest.pages_per_s / r.pages_per_s.max(f64::MIN_POSITIVE),
                        r.mode
                    )
                })
                .collect();
            if !slower.is_empty() {
                part.push_str(&format!(", at {} pages/s", slower.join(" and ")));
            }
            if let Some(udp) = group.iter().find(|r| r.mode == ScanMode::Udp.name()) {
                let from_lfc = udp.hits + udp.late_hits;
                let pct = |n: u64| 100.0 * n as f64 / udp.pages.max(1) as f64;
                part.push_str(&format!(
                    ", and {:.1} % of udp's reads found their page in the LFC",
                    pct(from_lfc)
                ));
                if udp.tcp_pipelined > 0 {
                    part.push_str(&format!(
                        " ({:.1} % came through its TCP pipeline after it moved off UDP)",
                        pct(udp.tcp_pipelined)
                    ));
                }
            }
            part
        })
        .collect();
    format!("In short: {}.", parts.join("; "))
}

/// Prints the daemon's datagram counters once they have settled.
fn print_daemon_counters(daemon: &DaemonProc) -> anyhow::Result<()> {
    // Give the daemon a moment's bounded chance to count the last datagrams before reading it.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut text = daemon.scrape()?;
    while Instant::now() < deadline {
        let received = DaemonProc::metric(&text, "udp_prefetch_datagrams_received_total");
        std::thread::sleep(Duration::from_millis(100));
        text = daemon.scrape()?;
        if DaemonProc::metric(&text, "udp_prefetch_datagrams_received_total") == received {
            break;
        }
    }
    println!();
    println!(
        "worker daemon: received {}, installed {}, dropped: stale {}, already present {}, bad MAC {}, no room {}; kernel drops {}",
        DaemonProc::metric(&text, "udp_prefetch_datagrams_received_total"),
        DaemonProc::metric(&text, "udp_prefetch_datagrams_installed_total"),
        DaemonProc::metric(&text, "udp_prefetch_datagrams_dropped_total{reason=\"stale\"}"),
        DaemonProc::metric(&text, "udp_prefetch_datagrams_dropped_total{reason=\"already_present\"}"),
        DaemonProc::metric(&text, "udp_prefetch_datagrams_dropped_total{reason=\"bad_mac\"}"),
        DaemonProc::metric(&text, "udp_prefetch_datagrams_dropped_total{reason=\"no_room\"}"),
        DaemonProc::metric(&text, "udp_prefetch_kernel_drops_total"),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(mode: ScanMode, pages_per_s: f64, hits: u64, late_hits: u64) -> ScanReport {
        ScanReport {
            mode: mode.name().to_string(),
            pages: 1000,
            pages_per_s,
            hits,
            late_hits,
            ..ScanReport::default()
        }
    }

    #[test]
    fn the_conclusion_is_computed_from_the_figures() {
        let mut rows = vec![
            (0.0, report(ScanMode::TcpSync, 500.0, 0, 0)),
            (0.0, report(ScanMode::TcpPipelined, 2500.0, 0, 0)),
            (0.0, report(ScanMode::Udp, 5000.0, 990, 5)),
            (0.05, report(ScanMode::TcpSync, 500.0, 0, 0)),
            (0.05, report(ScanMode::TcpPipelined, 4000.0, 0, 0)),
            (0.05, report(ScanMode::Udp, 3000.0, 700, 100)),
        ];
        // Under loss the udp scan moved to TCP pipelining for 150 of its pages.
        rows[5].1.tcp_pipelined = 150;
        assert_eq!(
            conclusion(&rows),
            "In short: without loss udp was the fastest, at 2.00x tcp-pipelined's and 10.00x \
             tcp-sync's pages/s, and 99.5 % of udp's reads found their page in the LFC; with 5 % \
             of prefetch datagrams dropped tcp-pipelined was the fastest, at 1.33x udp's and \
             8.00x tcp-sync's pages/s, and 80.0 % of udp's reads found their page in the LFC \
             (15.0 % came through its TCP pipeline after it moved off UDP)."
        );
    }
}
