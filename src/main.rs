//! The `udp-prefetch` binary: owns the command line and log set-up; `cmd` and `bench` do the work.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use udp_prefetch::bench;
use udp_prefetch::cmd::{self, Outcome};

/// UDP prefetch for disaggregated PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "udp-prefetch", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines on stderr: `text` (coloured only on a terminal, never with NO_COLOR set) or
    /// `json` (one object per line, for log collectors).
    #[arg(long, global = true, value_enum, env = "UDPF_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr, filtered by RUST_LOG (default `info`). Colour codes only where a person
/// reads them: written into a file or a journal they are noise, and https://no-color.org asks
/// that a non-empty NO_COLOR turn them off.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder
            .with_ansi(use_colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR"),
            ))
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the reference page server (pagestream v3 over the PostgreSQL protocol).
    Pageserver(cmd::pageserver::PageServerArgs),
    /// Fetch one page over TCP and verify it (its checksum; its header when the cluster has no
    /// data checksums).
    Getpage(cmd::getpage::GetPageArgs),
    /// Run the deterministic network simulator over many seeds (the sim crate's binary).
    Sim(cmd::sim::SimArgs),
    /// Save the LFC's cached pages, or refill a cold LFC through the UDP prefetch path.
    Prewarm(cmd::prewarm::PrewarmArgs),
    /// Run the prefetch worker daemon: receive UDP prefetched pages into the LFC.
    Workers(cmd::workers::WorkersArgs),
    /// Sequentially scan a relation, verifying every page, in one prefetch design.
    Scan(cmd::scan::ScanArgs),
    /// Run everything on this machine with no set-up and print what happened.
    Demo(cmd::demo::DemoArgs),
    /// Inspect a local file cache.
    Lfc(cmd::lfc_stat::LfcArgs),
    /// Print a systemd unit running `pageserver` or `workers` with the flags after `--`
    /// (checked by their own parser).
    ServiceUnit(cmd::service_unit::ServiceUnitArgs),
    /// Run benchmarks; every figure is a ratio against a baseline measured in the same run.
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    #[command(subcommand)]
    which: BenchCommand,
    /// One JSON object per measured case, one per line.
    #[arg(long, global = true)]
    json: bool,
    /// Also draw the results: FILE.svg and FILE.png (one of them if FILE ends in .svg or .png;
    /// FILE-<bench>.* per bench when several ran).
    #[arg(long, global = true, value_name = "FILE")]
    plot: Option<std::path::PathBuf>,
    /// Directory for the benches' LFC files. Default: as root, a private tmpfs mounted with
    /// `huge=within_size` for the run (2 MiB pages, as the operator guide deploys the LFC),
    /// unmounted afterwards; otherwise /dev/shm. Records say `params.lfc_huge_pages`.
    #[arg(long, global = true, value_name = "DIR", env = "UDPF_BENCH_LFC_DIR")]
    lfc_dir: Option<std::path::PathBuf>,
    /// Where the page server and the compute run: `split` (the deployment: page server threads
    /// on the last half of the CPUs, scans, worker daemon and the bench on the others; on 2
    /// CPUs one each) or `colocated` (anything anywhere, as on one shared host). Recorded as
    /// `params.topology` by the benches that start a page server.
    #[arg(long, global = true, value_enum, default_value_t = bench::topology::Topology::Split)]
    topology: bench::topology::Topology,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Sequential scans: tcp-sync, tcp-pipelined, tcp-lfc and udp across delays, loss and CPU work.
    Scan(bench::scan::ScanBenchArgs),
    /// Worker daemon ingest rate (io_uring, epoll; 1 and 2 threads) against a raw ceiling.
    Ingest(bench::ingest::IngestBenchArgs),
    /// Refill a cold LFC by UDP (0 % and 5 % loss) vs TCP-only, and the daemon's ingest ceiling.
    Prewarm(bench::prewarm::PrewarmBenchArgs),
    /// Cost of the datagram MAC per page against a memcpy of the same bytes.
    Datagram(bench::datagram::DatagramBenchArgs),
    /// Synchronous GetPage round trip and pipelined throughput over loopback.
    Getpage(bench::getpage::GetPageBenchArgs),
    /// LFC lookup and install throughput against a plain memcpy loop.
    Lfc(bench::lfc::LfcBenchArgs),
    /// Foreground GetPage latency while the same connection streams prefetches: udp vs tcp.
    Hol(bench::hol::HolBenchArgs),
    /// Many backends scanning at once: total pages/s, fairness and TCP connections used.
    ManyBackends(bench::many_backends::ManyBackendsBenchArgs),
    /// UDP failures (no daemon, daemon killed or paused, 50 %/100 % datagram loss) against
    /// tcp-pipelined.
    Degrade(bench::degrade::DegradeBenchArgs),
    /// udp against tcp-pipelined across a veth link between two network namespaces, per MTU
    /// and UDP packet loss (needs root, iproute2 and nftables).
    Net(bench::net::NetBenchArgs),
    /// A udp scan beside a flood of forged datagrams at the daemon, against the same flood at a
    /// closed port; the daemon's CPU per forged and per valid datagram.
    Flood(bench::flood::FloodBenchArgs),
    /// One compute over 1, 2, 4 and 8 page-server shards: udp against tcp-pipelined scans and
    /// prewarms, and the daemon's per-thread spread.
    Shards(bench::shards::ShardsBenchArgs),
    /// Every scenario in one run, with modest settings (`--full` for each one's defaults).
    All(bench::all::AllBenchArgs),
}

/// A unit's flags through this binary's own parser, as `udp-prefetch <service> FLAGS…` would
/// see them at start, so that `service-unit` catches every typo the service would refuse.
fn parse_service_flags(argv: Vec<String>) -> Result<cmd::service_unit::ServiceFlags, clap::Error> {
    use cmd::service_unit::ServiceFlags;
    match Cli::try_parse_from(argv)?.command {
        Command::Pageserver(a) => Ok(ServiceFlags::Pageserver(Box::new(a))),
        Command::Workers(a) => Ok(ServiceFlags::Workers(Box::new(a))),
        // service-unit only asks about those two (its argument is a ValueEnum of them).
        _ => Err(clap::Error::new(clap::error::ErrorKind::InvalidSubcommand)),
    }
}

/// Colour only on a terminal, and not when NO_COLOR is set to anything but the empty string.
fn use_colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Pageserver(args) => cmd::pageserver::run(args),
        Command::Getpage(args) => cmd::getpage::run(args),
        Command::Demo(args) => {
            // Placed as the benches are (README, `udp-prefetch demo`): as root the LFC on a
            // private tmpfs with 2 MiB pages, and the page server on CPUs of its own.
            let _lfc_dir = bench::lfc_dir::setup(None)?;
            bench::topology::enter(args.topology)?;
            cmd::demo::run(args)
        }
        Command::Scan(args) => cmd::scan::run(args),
        Command::Workers(args) => cmd::workers::run(args),
        Command::Sim(args) => cmd::sim::run(args),
        Command::Prewarm(args) => cmd::prewarm::run(args),
        Command::Lfc(args) => cmd::lfc_stat::run(args),
        Command::ServiceUnit(args) => cmd::service_unit::run(args, parse_service_flags),
        Command::Bench(args) => {
            // Unmounts the run's private tmpfs when dropped, on error and panic too.
            let _lfc_dir = bench::lfc_dir::setup(args.lfc_dir.as_deref())?;
            bench::topology::enter(args.topology)?;
            let mut latencies = Vec::new();
            let mut failed = Vec::new();
            let mut records = match &args.which {
                BenchCommand::Getpage(a) => bench::getpage::run(a)?,
                BenchCommand::Scan(a) => bench::scan::run(a)?,
                BenchCommand::Ingest(a) => bench::ingest::run(a)?,
                BenchCommand::Datagram(a) => bench::datagram::run(a)?,
                BenchCommand::Prewarm(a) => bench::prewarm::run(a)?,
                BenchCommand::Lfc(a) => bench::lfc::run(a)?,
                BenchCommand::Hol(a) => {
                    let (records, l) = bench::hol::run_with_latencies(a)?;
                    latencies = l;
                    records
                }
                BenchCommand::ManyBackends(a) => bench::many_backends::run(a)?,
                BenchCommand::Degrade(a) => bench::degrade::run(a)?,
                BenchCommand::Net(a) => bench::net::run(a)?,
                BenchCommand::Flood(a) => bench::flood::run(a)?,
                BenchCommand::Shards(a) => bench::shards::run(a)?,
                BenchCommand::All(a) => {
                    let all = bench::all::run(a);
                    latencies = all.latencies;
                    failed = all.failed;
                    all.records
                }
            };
            bench::topology::record(&mut records);
            bench::lfc_dir::record(&mut records);
            bench::print_records(&records, args.json);
            if let Some(path) = &args.plot {
                for file in bench::plot::write(path, &records, &latencies)? {
                    eprintln!("plot: wrote {}", file.display());
                }
            }
            // Each failure's error was printed when it happened, between the others' progress.
            let names: Vec<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
            anyhow::ensure!(
                names.is_empty(),
                "bench all: {} failed (errors above)",
                names.join(", ")
            );
            Ok(Outcome::Success)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(cmd::EXIT_FAILED),
        Err(err) => {
            eprintln!("error: {}", cmd::error_report(&err));
            ExitCode::from(cmd::exit_status_for(&err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::use_colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("".into())));
        assert!(!use_colour(true, Some("1".into())));
        assert!(!use_colour(false, None));
    }
}
