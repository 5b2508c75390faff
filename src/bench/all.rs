//! `udp-prefetch bench all`: every scenario of the suite in one run, each with modest settings
//! so the whole suite finishes in minutes on a small machine. Each scenario's ratios are
//! against baselines of that scenario, measured in this same run.
//!
//! Owns: nothing shared; it drives the other benches' `run` (and `twohost`, to probe for `net`) and
//! may not be imported by the library's other modules.

use super::plot::LatencySeries;
use super::{
    datagram, degrade, flood, getpage, hol, ingest, lfc, many_backends, net, prewarm, scan, shards,
    BenchRecord,
};
use clap::Parser;
use std::time::Instant;

#[derive(Debug, Clone, clap::Args)]
pub struct AllBenchArgs {
    /// Run every scenario with its own full defaults instead of the shortened settings.
    #[arg(long)]
    pub full: bool,
    /// Scenarios to run, in this order; every bench unless given.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "getpage,datagram,lfc,ingest,scan,hol,many-backends,prewarm,degrade,flood,shards,net"
    )]
    pub only: Vec<Scenario>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Getpage,
    Datagram,
    Lfc,
    Ingest,
    Scan,
    Hol,
    ManyBackends,
    Prewarm,
    Degrade,
    Flood,
    Shards,
    Net,
}

/// The shortened settings, as command-line flags of each scenario (so they read exactly as a
/// person would type them to reproduce one scenario alone).
fn short_flags(s: Scenario) -> &'static [&'static str] {
    match s {
        // A quarter of each one's defaults: a few seconds each, the ratios settle well before.
        Scenario::Getpage => &["--sync-requests", "5000", "--pages", "16384"],
        Scenario::Datagram => &["--pages", "50000"],
        Scenario::Lfc => &[
            "--cache-mib",
            "256",
            "--case-ms",
            "700",
            "--hit-ratio-accesses",
            "300000",
        ],
        Scenario::Ingest => &["--seconds", "1.5"],
        Scenario::Scan => &[],
        Scenario::Hol => &[],
        Scenario::ManyBackends => &[],
        // The beside-scans cases three times each: one run's scans alone moved from 167 k to
        // 230 k pages/s between two runs, and their ratio (the target) with them.
        Scenario::Prewarm => &[
            "--pages",
            "65536",
            "--ingest-seconds",
            "1.5",
            "--repeats",
            "3",
        ],
        Scenario::Degrade => &[],
        Scenario::Flood => &[],
        Scenario::Shards => &["--pages", "16384", "--pages-from-8", "4096"],
        // Its defaults (about a minute): scans of 8192 pages over veth moved by half between
        // repetitions.
        Scenario::Net => &[],
    }
}

/// `scan`'s second pass in `bench all`: the scans through an LFC a quarter of a scan's size, so
/// that every scan evicts (a compute whose data outgrows its cache), at 200 µs without loss.
/// Its records carry `lfc_mib`.
const SCAN_SMALL_LFC_FLAGS: &[&str] = &["--lfc-mib", "64", "--delays", "200", "--drops", "0"];

/// A scenario's arguments: its clap defaults with `flags` applied.
pub(super) fn args_of<A: clap::Args>(flags: &[&str]) -> anyhow::Result<A> {
    #[derive(clap::Parser)]
    struct Wrap<A: clap::Args> {
        #[command(flatten)]
        inner: A,
    }
    Ok(Wrap::<A>::try_parse_from(std::iter::once("bench").chain(flags.iter().copied()))?.inner)
}

/// What `bench all` measured, and the scenarios that failed (name, error): one scenario's failure
/// (a missing tool, a crashed process) does not throw away the minutes of results before it.
pub struct AllResults {
    pub records: Vec<BenchRecord>,
    pub latencies: Vec<LatencySeries>,
    pub failed: Vec<(String, anyhow::Error)>,
}

pub fn run(args: &AllBenchArgs) -> AllResults {
    run_with(args, run_one)
}

/// [`run`] with each scenario run by `one` (the benches, or a test's stand-in for them).
fn run_with(
    args: &AllBenchArgs,
    mut one: impl FnMut(Scenario, &[&str], &mut AllResults) -> anyhow::Result<()>,
) -> AllResults {
    let mut out = AllResults {
        records: Vec::new(),
        latencies: Vec::new(),
        failed: Vec::new(),
    };
    let started = Instant::now();
    for &s in &args.only {
        let flags = if args.full { &[][..] } else { short_flags(s) };
        let name = clap::ValueEnum::to_possible_value(&s)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        eprintln!("bench all: {name} {}", flags.join(" "));
        let t = Instant::now();
        if let Err(e) = one(s, flags, &mut out) {
            eprintln!("bench all: {name} failed: {e:#}");
            out.failed.push((name.clone(), e));
        }
        eprintln!("bench all: {name} took {:.1} s", t.elapsed().as_secs_f64());
    }
    eprintln!(
        "bench all: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    out
}

fn run_one(s: Scenario, flags: &[&str], out: &mut AllResults) -> anyhow::Result<()> {
    let records = &mut out.records;
    match s {
        Scenario::Getpage => records.extend(getpage::run(&args_of(flags)?)?),
        Scenario::Datagram => records.extend(datagram::run(&args_of(flags)?)?),
        Scenario::Lfc => records.extend(lfc::run(&args_of(flags)?)?),
        Scenario::Ingest => records.extend(ingest::run(&args_of(flags)?)?),
        Scenario::Scan => {
            records.extend(scan::run(&args_of(flags)?)?);
            eprintln!("bench all: scan {}", SCAN_SMALL_LFC_FLAGS.join(" "));
            records.extend(scan::run(&args_of(SCAN_SMALL_LFC_FLAGS)?)?);
        }
        Scenario::Hol => {
            let (r, l) = hol::run_with_latencies(&args_of(flags)?)?;
            records.extend(r);
            out.latencies.extend(l);
        }
        Scenario::ManyBackends => records.extend(many_backends::run(&args_of(flags)?)?),
        Scenario::Prewarm => records.extend(prewarm::run(&args_of(flags)?)?),
        Scenario::Degrade => records.extend(degrade::run(&args_of(flags)?)?),
        Scenario::Flood => records.extend(flood::run(&args_of(flags)?)?),
        Scenario::Shards => records.extend(shards::run(&args_of(flags)?)?),
        // Probed (and removed) first, with loss so that nftables is needed too: a machine that
        // cannot make namespaces skips this scenario with the reason; a failure of the bench
        // itself is still an error.
        Scenario::Net => match super::twohost::TwoHosts::create(1500, 1) {
            Ok(probe) => {
                drop(probe);
                records.extend(net::run(&args_of(flags)?)?);
            }
            Err(e) => eprintln!("bench all: net skipped, no two-host harness here: {e:#}"),
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_scenario_is_reported_and_the_ones_after_it_still_run() {
        let args = AllBenchArgs {
            full: false,
            only: vec![Scenario::Getpage, Scenario::Degrade, Scenario::Flood],
        };
        let all = run_with(&args, |s, _, out| {
            anyhow::ensure!(s != Scenario::Degrade, "nft is missing");
            out.records
                .push(BenchRecord::new("stand-in", &format!("{s:?}"), "x", 1.0));
            Ok(())
        });
        let cases: Vec<&str> = all.records.iter().map(|r| r.case.as_str()).collect();
        assert_eq!(
            cases,
            ["Getpage", "Flood"],
            "the records of the others are kept"
        );
        assert_eq!(all.failed.len(), 1);
        assert_eq!(all.failed[0].0, "degrade");
        assert!(format!("{:#}", all.failed[0].1).contains("nft is missing"));
    }

    #[test]
    fn every_scenario_accepts_its_short_flags() {
        let g: getpage::GetPageBenchArgs = args_of(short_flags(Scenario::Getpage)).unwrap();
        assert_eq!((g.sync_requests, g.pages), (5000, 16384));
        let d: datagram::DatagramBenchArgs = args_of(short_flags(Scenario::Datagram)).unwrap();
        assert_eq!(d.pages, 50000);
        args_of::<lfc::LfcBenchArgs>(short_flags(Scenario::Lfc)).unwrap();
        args_of::<ingest::IngestBenchArgs>(short_flags(Scenario::Ingest)).unwrap();
        let s: scan::ScanBenchArgs = args_of(short_flags(Scenario::Scan)).unwrap();
        assert_eq!(
            (s.pages, s.depth, s.distance, s.lfc_mib),
            (32768, 128, 512, None),
            "scan runs its defaults"
        );
        let small: scan::ScanBenchArgs = args_of(SCAN_SMALL_LFC_FLAGS).unwrap();
        assert_eq!(
            (small.lfc_mib, small.delays.clone(), small.drops.clone()),
            (Some(64), vec![200], vec![0.0]),
            "then through a quarter-size LFC"
        );
        assert!(
            small.lfc_mib.unwrap() << 20 < u64::from(small.pages) * 8192,
            "every scan evicts"
        );
        args_of::<hol::HolBenchArgs>(short_flags(Scenario::Hol)).unwrap();
        args_of::<flood::FloodBenchArgs>(short_flags(Scenario::Flood)).unwrap();
        args_of::<many_backends::ManyBackendsBenchArgs>(short_flags(Scenario::ManyBackends))
            .unwrap();
        let p: prewarm::PrewarmBenchArgs = args_of(short_flags(Scenario::Prewarm)).unwrap();
        assert_eq!((p.pages, p.ingest_seconds, p.repeats), (65536, 1.5, 3));
        let d: degrade::DegradeBenchArgs = args_of(short_flags(Scenario::Degrade)).unwrap();
        assert_eq!(
            (d.pages, d.path.delay_us, d.cases.len()),
            (131072, 200, 7),
            "degrade runs its defaults"
        );
        let sh: shards::ShardsBenchArgs = args_of(short_flags(Scenario::Shards)).unwrap();
        assert_eq!(
            (sh.pages, sh.shard_counts.clone(), sh.pages_from_8),
            (16384, vec![1, 2, 4, 8], Some(4096)),
            "eight shards on a small machine scan fewer pages"
        );
        let i: ingest::IngestBenchArgs = args_of(short_flags(Scenario::Ingest)).unwrap();
        assert_eq!(
            i.distinct_pages, 8192,
            "settings the flags do not name keep their defaults"
        );
    }
}
