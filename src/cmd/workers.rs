//! `udp-prefetch workers`: the prefetch worker daemon.
//!
//! Owns: its flags (`WorkersArgs`, turned into a `DaemonConfig`), the signal flag, the readiness
//! line, the service manager's watchdog (pinged only while the daemon's heartbeat in the LFC is
//! fresh) and the exit status of each `DaemonError`. The daemon itself is `workers::daemon::run`;
//! the command uses nothing of the page server or the compute.

use super::{BadInput, Outcome};
use lfc::DaemonLockError;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use workers::daemon::{self, DaemonConfig, DaemonError};
use workers::sd_notify::Notifier;
use workers::udp::IoChoice;

#[derive(Debug, clap::Args)]
pub struct WorkersArgs {
    /// The LFC file shared with backends; re-attached if it exists (pages, key and timeline
    /// binding kept).
    #[arg(long)]
    pub lfc: PathBuf,
    /// Create the LFC with this much page data if it does not exist (bytes; K/M/G/T or
    /// KiB/MiB/GiB/TiB suffixes accepted); an existing LFC of another size is refused unless --recreate.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Replace an existing LFC with a new, empty one bound to no timeline (of --size, else of
    /// the old size), e.g. to serve another timeline; refused while backends have it mapped.
    #[arg(long)]
    pub recreate: bool,
    /// UDP address the page servers send prefetched pages to: HOST:PORT, or HOST alone for
    /// port 6401; names are resolved.
    #[arg(long, default_value = "127.0.0.1:6401", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Worker threads, each with its own SO_REUSEPORT socket (default: one per two CPUs, at
    /// least one).
    // The default depends on the machine: the text above states it once, and help shows no
    // second, this machine's, number.
    #[arg(long, default_value_t = workers::daemon::default_threads(), hide_default_value = true)]
    pub threads: usize,
    /// Receive backend: epoll, uring, or auto (io_uring when the kernel allows it, else
    /// epoll). epoll is the default because it measured faster: in `bench ingest` it installed
    /// 3-10 % more pages per second with one thread and 20-35 % more with two (io_uring pays a
    /// poll arming and a task-work pass per posted receive; one recvmmsg drains a burst).
    #[arg(long, default_value = "epoll", value_parser = parse_io)]
    pub io: IoChoice,
    /// Serve Prometheus metrics (GET /metrics) and a health check (GET /healthz) over HTTP on
    /// this address: HOST:PORT, names resolved.
    #[arg(long, value_parser = super::parse_metrics)]
    pub metrics: Option<SocketAddr>,
    /// Write the daemon's pid here; refuse to start if it names a live process.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Socket receive buffer per thread (bytes, suffixes accepted).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub recv_buffer: u64,
    /// LFC slots (frames) each thread keeps posted for receives; with GRO they are posted 8
    /// to a receive, room for a whole train.
    #[arg(long, default_value_t = 64)]
    pub slots: usize,
    /// Do not map the whole LFC into the daemon's page tables in the background after start
    /// (MADV_POPULATE_WRITE). Prefaulting saves a page fault per frame on first receive (about
    /// half the daemon's CPU on a fresh cache) and, on tmpfs, allocates the cache's memory up
    /// front (about 3 s of one core per GiB); metric
    /// `udp_prefetch_lfc_prefault_remaining_pages` shows its progress.
    #[arg(long)]
    pub no_prefault: bool,
    /// Receive one datagram per receive, without UDP GRO. By default each receive may take a
    /// train of datagrams the kernel coalesced (a page server's GSO send, or what the NIC's
    /// GRO joined), into up to 8 of the thread's --slots frames: fewer receives per page.
    #[arg(long)]
    pub no_gro: bool,
    /// Scheduling class of the worker threads: `bulk` (SCHED_BATCH: the CPU share of one
    /// ordinary thread, and a datagram's arrival never preempts a backend), `realtime`
    /// (SCHED_FIFO at priority 1, needs root or CAP_SYS_NICE, which the service unit grants;
    /// a thread that takes more than 90 % of a CPU over 10 ms is demoted to bulk for 100 ms;
    /// refused, it falls back to bulk with a warning) or `normal` (the kernel's default).
    #[arg(long, value_enum, default_value_t = WorkerClass::Bulk)]
    pub thread_class: WorkerClass,
    /// Leave every thread in the scheduling class it started in (overrides --thread-class).
    #[arg(long)]
    pub no_thread_classes: bool,
}

/// `--thread-class`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkerClass {
    Bulk,
    Realtime,
    Normal,
}

impl WorkerClass {
    /// The flag's value for this class.
    pub fn name(self) -> &'static str {
        match self {
            WorkerClass::Bulk => "bulk",
            WorkerClass::Realtime => "realtime",
            WorkerClass::Normal => "normal",
        }
    }
}

impl From<WorkerClass> for workers::sched::ThreadClass {
    fn from(c: WorkerClass) -> Self {
        match c {
            WorkerClass::Bulk => workers::sched::ThreadClass::Bulk,
            WorkerClass::Realtime => workers::sched::ThreadClass::Realtime,
            WorkerClass::Normal => workers::sched::ThreadClass::Normal,
        }
    }
}

/// The daemon's UDP port when `--listen` names only a host.
const DEFAULT_UDP_PORT: u16 = 6401;

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    super::listen_addr(s, DEFAULT_UDP_PORT)
}

fn parse_io(s: &str) -> Result<IoChoice, String> {
    s.parse().map_err(|e: workers::udp::UdpError| e.to_string())
}

/// Parses a size in bytes: `1048576`, `64MiB`, `1G`, `512K`, `1.5GiB`. K, M, G and T are
/// binary (KiB...), as in the rest of this tool's output; a fraction is rounded down to whole
/// bytes. Zero, negative and unparsable sizes are refused: no flag here means anything by them.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let example = "e.g. 268435456, 256MiB or 1.5GiB";
    if t.starts_with('-') {
        return Err(format!("invalid size {s:?}: a size cannot be negative"));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(format!(
            "invalid size {s:?}: expected a number of bytes, {example}"
        ));
    }
    let shift: u32 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "invalid size unit {:?} in {s:?}: use K, M, G or T (KiB, MiB, GiB, TiB), {example}",
                unit.trim()
            ))
        }
    };
    let too_large = || format!("size {s:?} is too large");
    // Integer arithmetic on the digits, so `1.1GiB` is exactly floor(1.1 * 2^30) bytes.
    let int: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| too_large())?
    };
    let frac_digits = frac.len().min(30) as u32;
    let frac_value: u128 = if frac_digits == 0 {
        0
    } else {
        frac[..frac_digits as usize]
            .parse()
            .map_err(|_| too_large())?
    };
    let bytes = int
        .checked_shl(shift)
        .filter(|b| b >> shift == int)
        .ok_or_else(too_large)?
        + ((frac_value << shift) / 10u128.pow(frac_digits));
    let bytes = u64::try_from(bytes).map_err(|_| too_large())?;
    if bytes == 0 {
        return Err(format!("invalid size {s:?}: must be at least one byte"));
    }
    Ok(bytes)
}

pub fn run(args: WorkersArgs) -> anyhow::Result<Outcome> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let config = DaemonConfig {
        lfc: args.lfc.clone(),
        create_size_bytes: args.size,
        recreate: args.recreate,
        listen: args.listen,
        threads: args.threads,
        io: args.io,
        metrics: args.metrics,
        pid_file: args.pid_file.clone(),
        recv_buffer_bytes: usize::try_from(args.recv_buffer).unwrap_or(usize::MAX),
        slots_per_thread: args.slots,
        gro: !args.no_gro,
        prefault: !args.no_prefault,
        thread_class: (!args.no_thread_classes).then_some(args.thread_class.into()),
    };
    let notifier = Notifier::from_env().map(Arc::new);
    let result = daemon::run(&config, &stop, |s| {
        tracing::info!(
            listen = %s.listen, io = %s.backend, gro = s.gro, threads = s.threads, recv_buffer = s.recv_buffer_bytes,
            capacity_pages = s.capacity_pages, metrics = %s.metrics.map_or_else(|| "none".to_string(), |m| m.to_string()), lfc = %args.lfc.display(), "workers started"
        );
        // One stable line on stdout for scripts and tests.
        let metrics = s.metrics.map_or_else(|| "-".to_string(), |m| m.to_string());
        println!(
            "udp-prefetch workers listening on {} io={} threads={} metrics={metrics}",
            s.listen, s.backend, s.threads
        );
        let _ = std::io::stdout().flush();
        if let Some(n) = &notifier {
            n.ready(&format!(
                "receiving on {} into {} ({} threads)",
                s.listen,
                args.lfc.display(),
                s.threads
            ));
            supervise(n.clone(), stop.clone(), args.lfc.clone());
        }
    });
    match result {
        Ok(()) => {
            // Also here: the stop may finish before the supervisor's next look at the flag.
            if let Some(n) = &notifier {
                n.stopping("stopped");
            }
            Ok(Outcome::Success)
        }
        Err(e) => Err(classify(e)),
    }
}

/// For a service manager: `STOPPING=1` as soon as a stop begins (the daemon then drains its
/// threads), and, when a watchdog is set, `WATCHDOG=1` while the daemon's heartbeat in the LFC
/// is fresh — the same test backends use to decide whether anyone receives, so a daemon they
/// have given up on is restarted.
fn supervise(notifier: Arc<Notifier>, stop: Arc<AtomicBool>, lfc_path: PathBuf) {
    // The daemon has the file open: a second attach failing is next to impossible, and then the
    // watchdog only says the process runs (rather than have it killed for nothing).
    let watched = notifier
        .watchdog_interval()
        .and_then(|_| match lfc::Lfc::open(&lfc_path) {
            Ok(lfc) => Some(lfc),
            Err(e) => {
                tracing::warn!(error = %e, "the watchdog cannot read the LFC heartbeat");
                None
            }
        });
    let spawned = std::thread::Builder::new()
        .name("sd-notify".into())
        .spawn(move || {
            notifier.watch(&stop, || {
                watched.as_ref().is_none_or(|lfc| {
                    let beat = lfc.daemon_heartbeat_ns();
                    beat != 0 && lfc::monotonic_ns().saturating_sub(beat) < lfc::DAEMON_STALE_NS
                })
            });
            notifier.stopping("draining worker threads");
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the service-manager notification thread");
    }
}

/// Refusals the operator fixes by changing the command line or stopping something (bad flags,
/// unusable LFC, a live daemon already serving it, a UDP address in use) exit with status 2;
/// the rest with 1.
fn classify(e: DaemonError) -> anyhow::Error {
    match e {
        e @ (DaemonError::Config(_)
        | DaemonError::NoLfc(_)
        | DaemonError::PidFile(_)
        | DaemonError::Lfc { .. }
        | DaemonError::UnusableLfc { .. }
        | DaemonError::SizeMismatch { .. }
        | DaemonError::RecreateNeedsSize { .. }
        | DaemonError::DaemonLock(DaemonLockError::Held { .. })
        | DaemonError::PortInUse { .. }) => BadInput(e.to_string()).into(),
        e => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::{classify, parse_size};
    use crate::cmd::{exit_status_for, EXIT_BAD_INPUT, EXIT_FAILED};
    use lfc::{DaemonLockError, DaemonRecord};
    use workers::daemon::DaemonError;

    #[test]
    fn refusals_to_start_exit_with_status_2_and_name_their_cause() {
        let holder = DaemonRecord {
            addr: "127.0.0.1:6401".parse().unwrap(),
            pid: 4242,
            started_unix_ms: 1,
            heartbeat_ns: 1,
            generation: 1,
        };
        let served = classify(DaemonError::DaemonLock(DaemonLockError::Held {
            path: "/dev/shm/lfc".into(),
            holder: Some(holder),
        }));
        assert_eq!(exit_status_for(&served), EXIT_BAD_INPUT);
        assert_eq!(
            served.to_string(),
            "LFC /dev/shm/lfc is served by daemon pid 4242 on 127.0.0.1:6401"
        );
        let port = classify(DaemonError::PortInUse {
            addr: "127.0.0.1:6401".parse().unwrap(),
        });
        assert_eq!(exit_status_for(&port), EXIT_BAD_INPUT);
        assert!(port
            .to_string()
            .contains("127.0.0.1:6401 is already in use"));
        let size = classify(DaemonError::SizeMismatch {
            path: "/dev/shm/lfc".into(),
            have_pages: 1024,
            want_bytes: 16 << 20,
        });
        assert_eq!(exit_status_for(&size), EXIT_BAD_INPUT);
        assert!(size.to_string().contains("--recreate"), "{size}");
        let io = classify(DaemonError::DaemonLock(DaemonLockError::Io {
            path: "x".into(),
            op: "fcntl",
            source: std::io::Error::other("boom"),
        }));
        assert_eq!(exit_status_for(&io), EXIT_FAILED);
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert_eq!(parse_size("1.1GiB"), Ok(1_181_116_006)); // floor(1.1 * 2^30)
        assert_eq!(parse_size("2.9"), Ok(2)); // whole bytes, rounded down
        assert_eq!(parse_size(" 256 MiB "), Ok(256 << 20));
        assert_eq!(
            parse_size("12X"),
            Err("invalid size unit \"X\" in \"12X\": use K, M, G or T (KiB, MiB, GiB, TiB), e.g. 268435456, 256MiB or 1.5GiB".into())
        );
        assert_eq!(
            parse_size("-1GiB"),
            Err("invalid size \"-1GiB\": a size cannot be negative".into())
        );
        assert_eq!(
            parse_size("0"),
            Err("invalid size \"0\": must be at least one byte".into())
        );
        assert!(parse_size("0.1").is_err()); // rounds down to zero bytes
        assert!(parse_size("").is_err());
        assert!(parse_size(".").is_err());
        assert!(parse_size("1.2.3M").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert!(parse_size("99999999999999999999999999999999999999999").is_err());
    }
}
