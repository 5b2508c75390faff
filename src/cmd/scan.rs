//! `udp-prefetch scan`: a verified sequential scan in one prefetch design.
//!
//! Owns: its flags (turned into a `ScanConfig`), the `--start-gate` handshake on standard input and
//! output, and the printed report. Every read is `run_scan`'s: it opens the LFC only to hand it
//! over (and to map it whole under `--map-lfc`), and uses nothing of the page server.

use super::{BadInput, Outcome};
use crate::compute::backend::read_path::ReadPathConfig;
use crate::compute::scan::{
    run_scan_with_progress, ScanConfig, ScanMode, ScanProgress, ScanReport, READY_LINE,
};
use lfc::{Lfc, RelTag};
use std::ops::Range;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    /// Page server address: HOST:PORT. Of a sharded tenant, once per shard in shard order
    /// (shard 0 first); each page is read from the shard Neon's routing gives it.
    #[arg(long, default_value = "127.0.0.1:6400")]
    pub server: Vec<String>,
    /// Stripe size of a sharded tenant, in 8 KiB pages: as the page servers' --stripe-pages.
    #[arg(long, default_value_t = crate::protocol::shard::DEFAULT_STRIPE_PAGES)]
    pub stripe_pages: u32,
    /// LFC file shared with the worker daemon (required for --mode udp and tcp-lfc).
    #[arg(long)]
    pub lfc: Option<PathBuf>,
    /// Relation as SPC/DB/REL/FORK.
    #[arg(long)]
    pub rel: RelTag,
    /// Block range A..B (B exclusive); default: the whole relation.
    #[arg(long, value_parser = parse_blocks)]
    pub blocks: Option<Range<u32>>,
    /// Prefetch design: tcp-sync, tcp-pipelined (Neon-style), tcp-lfc (Neon's compute with
    /// its LFC: TCP pipelining, every page looked up in and stored into the LFC) or udp.
    #[arg(long, value_enum)]
    pub mode: ScanMode,
    /// Prefetch distance: blocks requested ahead (udp; default 512) or GetPages in flight
    /// (tcp-pipelined, tcp-lfc; default 128, Neon's).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub distance: Option<u32>,
    /// Emulated backend work per page, microseconds of CPU.
    #[arg(long, default_value_t = 0)]
    pub cpu_per_page_us: u64,
    /// UDP port of the worker daemon on this host; default: the port the daemon serving the
    /// LFC recorded in its header.
    #[arg(long)]
    pub prefetch_port: Option<u16>,
    /// Who receives the udp mode's prefetches: the worker daemon serving the LFC, or the
    /// backend itself on a socket of its own, installing into the LFC as the daemon does,
    /// when a read misses and while it waits (no daemon needed for its UDP path).
    #[arg(long, value_enum, default_value_t = ReceiveBy::Daemon)]
    pub receive: ReceiveBy,
    /// Path MTU stated to the page server for UDP prefetches, bytes (it splits pages into
    /// datagrams that fit, with IP fragmentation off); 0 asks for whole 8304-byte datagrams.
    /// Default: the MTU of this host's route to the page server.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=65_536))]
    pub path_mtu: Option<u32>,
    /// Cap of the adaptive wait for a prefetch in flight, microseconds.
    #[arg(long, default_value_t = ReadPathConfig::default().max_wait_us)]
    pub max_wait_us: u64,
    #[command(flatten)]
    pub session: super::SessionArgs,
    /// One JSON object instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// For benchmarks that start many scans at once: once attached, print the line
    /// `udp-prefetch scan ready` and start scanning when standard input reaches its end.
    #[arg(long, hide = true)]
    pub start_gate: bool,
    /// For benchmarks of long-running backends: map the whole LFC before starting
    /// (`Lfc::map_all`), as a backend that has served queries for a while has it mapped, so
    /// that first-touch page faults of a fresh process are not measured as read cost.
    #[arg(long, hide = true)]
    pub map_lfc: bool,
    /// Without a terminal on stderr, log the scan's progress this often (milliseconds); a
    /// terminal gets a progress bar instead. Hidden: for tests, which cannot wait 5 s.
    #[arg(long, hide = true, default_value_t = 5000)]
    pub progress_interval_ms: u64,
}

fn parse_blocks(s: &str) -> Result<Range<u32>, String> {
    let bad = || format!("invalid block range {s:?}: expected A..B with A < B");
    let (a, b) = s.split_once("..").ok_or_else(bad)?;
    let (a, b): (u32, u32) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a >= b {
        return Err(bad());
    }
    Ok(a..b)
}

pub fn print_report(r: &ScanReport) {
    println!(
        "{} scan: {} pages in {:.2} s = {:.0} pages/s; verified {}, FAILED {}",
        r.mode, r.pages, r.elapsed_s, r.pages_per_s, r.verified, r.failed
    );
    println!(
        "  hits {}, late hits {}, fallbacks {} ({} after a wait ran out), prefetched {}, retried {}, wasted prefetches {}, duplicates avoided {}, window cuts {}",
        r.hits, r.late_hits, r.fallbacks, r.wait_timeouts, r.prefetched, r.retries, r.wasted_prefetches, r.duplicates_avoided, r.window_cuts
    );
    if r.mode == "udp" {
        println!(
            "  read through the TCP pipeline {} pages (its depth cut {} times for reads behind it); path changes {}",
            r.tcp_pipelined, r.tcp_depth_cuts, r.udp_state_changes
        );
        if let Some(n) = r.installed_by_backend {
            println!("  installed by the backend's own receiver: {n} pages");
        }
        for c in &r.udp_state_log {
            let to = match c.to {
                crate::compute::backend::PrefetchPath::Udp => "UDP prefetch",
                crate::compute::backend::PrefetchPath::TcpPipelined => "TCP pipelining",
            };
            println!("    at {:.1} ms: {to}: {}", c.at_ms, c.reason);
        }
    }
    println!(
        "  backend CPU {:.2} us/page; wait p50 {:.1} us, p99 {:.1} us, max {:.1} us; digest {}",
        r.cpu_us_per_page,
        r.wait_p50_us,
        r.wait_p99_us,
        r.wait_max_us,
        &r.digest[..16]
    );
}

pub fn run(args: ScanArgs) -> anyhow::Result<Outcome> {
    if let (ReceiveBy::Backend, Some(port)) = (args.receive, args.prefetch_port) {
        return Err(BadInput(format!(
            "--prefetch-port {port} names the worker daemon's port, and --receive backend \
             receives on a port of the backend's own: give one of them"
        ))
        .into());
    }
    if args.receive == ReceiveBy::Backend && args.mode != ScanMode::Udp {
        return Err(BadInput(format!(
            "--receive backend is for --mode udp: --mode {} receives no prefetch datagrams",
            args.mode.name()
        ))
        .into());
    }
    let lfc = match (&args.lfc, args.mode) {
        (Some(path), _) => {
            // The cache's errors already start with its path.
            Some(Lfc::open(path).map_err(|e| BadInput(e.to_string()))?)
        }
        (None, ScanMode::Udp | ScanMode::TcpLfc) => {
            return Err(BadInput(format!(
                "--mode {} needs --lfc PATH (the worker daemon's cache)",
                args.mode.name()
            ))
            .into())
        }
        (None, _) => None,
    };
    let shards = super::shard_map(&args.server, args.stripe_pages)?;
    let cfg = ScanConfig {
        connect: args
            .session
            .connect_options(&args.server[0])?
            .path_mtu(args.path_mtu),
        shards,
        rel: args.rel,
        blocks: args.blocks.clone(),
        mode: args.mode,
        distance: args.distance.unwrap_or(args.mode.default_ahead()),
        cpu_per_page_us: args.cpu_per_page_us,
        receive: args.receive.with_port(args.prefetch_port),
        read_path: ReadPathConfig {
            max_wait_us: args.max_wait_us.max(ReadPathConfig::default().min_wait_us),
            ..ReadPathConfig::default()
        },
    };
    if let (true, Some(lfc)) = (args.map_lfc, &lfc) {
        lfc.map_all()?;
    }
    // The start gate is for benchmarks, whose scans must not print anything of their own.
    let progress = (!args.json && !args.start_gate).then(|| ScanProgress {
        log_every: std::time::Duration::from_millis(args.progress_interval_ms.max(1)),
    });
    // The gate opens once the scan is attached (connected, its backend registered), so that
    // backends started together leave their start-up out of their scans.
    let mut gate = || -> std::io::Result<()> {
        if args.start_gate {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{READY_LINE}")?;
            out.flush()?;
            // Whatever the starter writes, the scan starts when it closes our input.
            std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())?;
        }
        Ok(())
    };
    let report = run_scan_with_progress(&cfg, lfc.as_ref(), progress, &mut gate)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.failed == 0 {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}

/// `--receive`: who receives a udp scan's prefetches (`compute::backend::Receive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiveBy {
    Daemon,
    Backend,
}

impl ReceiveBy {
    /// The receiver, the daemon's port overridden by `port` (`--prefetch-port`).
    pub fn with_port(self, port: Option<u16>) -> crate::compute::backend::Receive {
        match self {
            ReceiveBy::Daemon => crate::compute::backend::Receive::Daemon { port },
            ReceiveBy::Backend => crate::compute::backend::Receive::Backend,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ReceiveBy::Daemon => "daemon",
            ReceiveBy::Backend => "backend",
        }
    }
}
