//! `udp-prefetch prewarm save|run`: save the LFC's cached pages, refill a cold LFC.
//!
//! Owns: its flags, the state file on disk (never replaced without `--force`; written under a
//! temporary name, then renamed) and the printed report. The format is `state`'s, the hotness order
//! the cache's (`snapshot_hottest`) and every refill decision `run_prewarm`'s; it uses nothing of
//! the page server.

use super::{BadInput, Outcome};
use crate::compute::prewarm::schedule::ScheduleConfig;
use crate::compute::prewarm::state::{decode, encode, ranges_from_hottest, PageRange};
use crate::compute::prewarm::{plan, run_prewarm, PrewarmConfig, PrewarmReport};
use crate::protocol::pagestream::{PrefetchPriority, LATEST_LSN};
use lfc::{Lfc, RelTag};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct PrewarmArgs {
    #[command(subcommand)]
    pub command: PrewarmCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum PrewarmCommand {
    /// Write the LFC's cached pages, hottest first, to a state file.
    Save {
        /// The LFC whose cached pages are saved.
        #[arg(long)]
        lfc: PathBuf,
        /// State file to write; an existing file is refused unless --force is given.
        #[arg(long)]
        out: PathBuf,
        /// Save at most this many pages (the hottest); at least 1.
        #[arg(long)]
        max_pages: Option<usize>,
        /// Overwrite --out if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Refill the LFC from a state file (or a whole relation) through the UDP prefetch path.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The LFC to refill, shared with the worker daemon (its header names the daemon's port).
    #[arg(long)]
    pub lfc: PathBuf,
    /// State file written by `prewarm save`.
    #[arg(
        long,
        required_unless_present = "relation",
        conflicts_with = "relation"
    )]
    pub state: Option<PathBuf>,
    /// Prewarm every block of this relation instead (like pg_prewarm).
    #[arg(long)]
    pub relation: Option<RelTag>,
    /// Page server to request the pages from (Prefetch by UDP, GetPage for the rest): HOST:PORT,
    /// or HOST alone for port 6400; names are resolved. Of a sharded tenant, once per shard in
    /// shard order (shard 0 first): each page comes from the shard that owns it.
    #[arg(long, default_value = "127.0.0.1:6400")]
    pub server: Vec<String>,
    /// Stripe size of a sharded tenant, in 8 KiB pages: as the page servers' --stripe-pages.
    #[arg(long, default_value_t = crate::protocol::shard::DEFAULT_STRIPE_PAGES)]
    pub stripe_pages: u32,
    /// UDP port of the worker daemon on this host; default: the port the daemon serving the
    /// LFC recorded in its header.
    #[arg(long)]
    pub prefetch_port: Option<u16>,
    /// Pace requests to this many bytes of pages per second (0 = unpaced).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Give up after this many seconds (exit 1 if not complete).
    #[arg(long)]
    pub deadline: Option<f64>,
    /// UDP attempts per page before it is fetched over TCP, when TCP's batch was full each time
    /// it timed out (a page that times out while the batch has room is fetched over TCP at once).
    #[arg(long, default_value_t = 3)]
    pub attempts: u32,
    /// How the page server's senders rank this prewarm's prefetches: background (sent when no
    /// backend's prefetch is due, and a small share otherwise) or foreground (as a backend's).
    #[arg(long, value_enum, default_value_t = Priority::Background)]
    pub priority: Priority,
    /// While backends read pages from this LFC, a background prewarm keeps at most this many
    /// pages in flight (the worker daemon installs them on the backends' CPU); 0 never yields.
    /// Lifted gradually once no backend has read for 20 ms.
    #[arg(long, default_value_t = crate::compute::prewarm::driver::DEFAULT_YIELD_PAGES)]
    pub yield_pages: usize,
    /// Path MTU stated to the page server for UDP prefetches, bytes (it splits pages into
    /// datagrams that fit, with IP fragmentation off); 0 asks for whole 8304-byte datagrams.
    /// Default: the MTU of this host's route to the page server.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=65_536))]
    pub path_mtu: Option<u32>,
    #[command(flatten)]
    pub session: super::SessionArgs,
    /// One JSON object instead of the human report.
    #[arg(long)]
    pub json: bool,
}

/// `--priority`, as the `PrefetchPriority` request carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Priority {
    Background,
    Foreground,
}

impl From<Priority> for PrefetchPriority {
    fn from(p: Priority) -> PrefetchPriority {
        match p {
            Priority::Background => PrefetchPriority::Background,
            Priority::Foreground => PrefetchPriority::Foreground,
        }
    }
}

pub fn run(args: PrewarmArgs) -> anyhow::Result<Outcome> {
    match args.command {
        PrewarmCommand::Save {
            lfc,
            out,
            max_pages,
            force,
        } => save(&lfc, &out, max_pages, force),
        PrewarmCommand::Run(a) => run_cmd(a),
    }
}

fn open_lfc(path: &std::path::Path) -> anyhow::Result<Lfc> {
    // The cache's errors already start with its path.
    Lfc::open(path).map_err(|e| BadInput(e.to_string()).into())
}

fn save(
    lfc: &std::path::Path,
    out: &std::path::Path,
    max_pages: Option<usize>,
    force: bool,
) -> anyhow::Result<Outcome> {
    // Both refusals come before the cache is opened: they are about the command line alone.
    if max_pages == Some(0) {
        return Err(BadInput(
            "--max-pages 0 would save an empty state: pass at least 1, or omit it to save every cached page".into(),
        )
        .into());
    }
    // A state file is the only record of what a cache held: never replace one by accident.
    if !force && out.symlink_metadata().is_ok() {
        return Err(BadInput(format!(
            "{} already exists: pass --force to overwrite it",
            out.display()
        ))
        .into());
    }
    let cache = open_lfc(lfc)?;
    let tags = cache.snapshot_hottest(
        max_pages
            .unwrap_or(usize::MAX)
            .min(cache.capacity_pages() as usize),
    );
    let ranges = ranges_from_hottest(&tags);
    let bytes = encode(&ranges);
    // Write then rename: a crash never leaves a half-written state file under the real name.
    let tmp = out.with_extension("tmp");
    std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, out))
        .map_err(|e| BadInput(format!("writing {}: {e}", out.display())))?;
    println!(
        "saved {} pages in {} ranges ({} bytes) to {}",
        tags.len(),
        ranges.len(),
        bytes.len(),
        out.display()
    );
    Ok(Outcome::Success)
}

fn run_cmd(a: RunArgs) -> anyhow::Result<Outcome> {
    let cache = open_lfc(&a.lfc)?;
    let connect = a
        .session
        .connect_options(&a.server[0])?
        .path_mtu(a.path_mtu);
    let shards = super::shard_map(&a.server, a.stripe_pages)?;
    let ranges = match (&a.state, a.relation) {
        (Some(path), _) => {
            let bytes =
                std::fs::read(path).map_err(|e| BadInput(format!("{}: {e}", path.display())))?;
            decode(&bytes).map_err(|e| BadInput(format!("{}: {e}", path.display())))?
        }
        (None, Some(rel)) => {
            let mut client = crate::protocol::client::PageClient::connect(&connect)?;
            let n = client.nblocks(rel, LATEST_LSN)?;
            if n == 0 {
                Vec::new()
            } else {
                vec![PageRange {
                    rel,
                    first: 0,
                    len: n,
                }]
            }
        }
        (None, None) => {
            return Err(BadInput("pass --state FILE or --relation SPC/DB/REL/FORK".into()).into())
        }
    };
    if a.attempts == 0 {
        return Err(BadInput("--attempts must be at least 1".into()).into());
    }
    if a.deadline.is_some_and(|d| !(d > 0.0 && d.is_finite())) {
        return Err(BadInput("--deadline must be a positive number of seconds".into()).into());
    }
    let pages = plan(&ranges);
    let cfg = PrewarmConfig {
        connect,
        prefetch_port: a.prefetch_port,
        rate_bytes_per_s: a.rate,
        deadline: a.deadline.map(Duration::from_secs_f64),
        schedule: ScheduleConfig {
            max_udp_attempts: a.attempts,
            ..ScheduleConfig::default()
        },
        progress: !a.json,
        udp: true,
        priority: a.priority.into(),
        yield_pages: a.yield_pages,
        shards,
    };
    let report = run_prewarm(&cfg, &cache, &pages)?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    // A full cache is a deliberate stop, not a failure; a deadline or a bad page is.
    let finished = report.complete || (report.cache_full && !report.deadline_hit);
    Ok(if finished && report.failed_verification == 0 {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}

pub fn print_report(r: &PrewarmReport) {
    println!(
        "prewarm {}: {} of {} pages present and verified in {:.2} s ({:.0} MB/s)",
        if r.complete {
            "complete"
        } else if r.cache_full {
            "stopped: cache full"
        } else if r.deadline_hit {
            "INCOMPLETE: deadline"
        } else {
            "INCOMPLETE"
        },
        r.present,
        r.pages,
        r.elapsed_s,
        r.mb_per_s
    );
    println!(
        "  requested {}, arrived first try {}, after retry {}, over TCP {}, skipped present {}, skipped gone {}, retries {}{}",
        r.requested,
        r.via_udp_first,
        r.via_udp_retry,
        r.via_tcp,
        r.skipped_present,
        r.skipped_gone,
        r.retries,
        if r.udp_fell_back_to_tcp { " (no datagram arrived: finished over TCP)" } else { "" }
    );
    if r.yielded_rounds > 0 {
        println!(
            "  yielded to backends reading beside it for {} rounds",
            r.yielded_rounds
        );
    }
    if r.failed_verification > 0 {
        println!("  {} pages FAILED verification", r.failed_verification);
    }
}
