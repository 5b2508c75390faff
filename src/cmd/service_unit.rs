//! `udp-prefetch service-unit pageserver|workers [--binary PATH] [--user NAME] -- FLAGS…`: prints
//! a systemd unit that runs this binary with the operator's flags.
//!
//! The unit is generated rather than shipped as a file because the right unit depends on the
//! flags: the LFC's directory must be writable under `ProtectSystem=strict` and mounted before
//! start, a pgdata source mounted, the page server's file limit follows `--max-connections`, and
//! a negative `--prefetch-sender-nice` needs `CAP_SYS_NICE`. The flags are parsed by the real
//! command-line parser (handed in by `main.rs`), so a typo fails here and not at 3 a.m. when the
//! unit first starts; and settings that only break under a service manager are refused here
//! too: relative paths (a service starts in `/`), a workers unit without `--size` (a tmpfs LFC
//! is gone after a reboot, and the daemon could not re-create it), a `--token` (a unit file is
//! readable by every user).
//!
//! Owns: the text of the units it prints (the service, and for the workers a `.mount` unit for the
//! LFC's tmpfs) and the refusals above. It only prints: it installs no file, starts no service and
//! runs neither server; of this crate it uses only the two commands' flags and `SourceSpec`.

use super::pageserver::PageServerArgs;
use super::workers::WorkersArgs;
use super::{BadInput, Outcome};
use crate::pageserver::source::SourceSpec;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct ServiceUnitArgs {
    /// The service: `pageserver` or `workers`.
    #[arg(value_enum)]
    pub service: Service,
    /// The udp-prefetch executable the unit runs: an absolute path (default: this executable).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// User the service runs as. The worker daemon must run as PostgreSQL's user: it creates the
    /// LFC with mode 0600, and the backends open it read-write. The page server needs read
    /// access to a pgdata source.
    #[arg(long, value_name = "NAME", default_value = "postgres")]
    pub user: String,
    /// For `workers`: print instead the systemd `.mount` unit that mounts the LFC's directory
    /// as a tmpfs with 2 MiB pages (`huge=within_size`), owned by `--user`; save it under the
    /// name its first line gives. The service's `RequiresMountsFor=` then mounts it first.
    #[arg(long)]
    pub mount_unit: bool,
    /// The service's own flags, after `--`, exactly as `udp-prefetch pageserver|workers` takes
    /// them.
    #[arg(last = true, value_name = "FLAGS")]
    pub flags: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    Pageserver,
    Workers,
}

impl Service {
    fn subcommand(self) -> &'static str {
        match self {
            Service::Pageserver => "pageserver",
            Service::Workers => "workers",
        }
    }
}

/// The service's flags as the real parser understood them.
#[derive(Debug)]
pub enum ServiceFlags {
    Pageserver(Box<PageServerArgs>),
    Workers(Box<WorkersArgs>),
}

/// The nice value of the worker daemon, and of the page server's prefetch senders unless the
/// flags set one: the README's advice (the operator guide's "Thread classes"): on a busy machine
/// these few threads serve every backend and otherwise get the CPU share of one ordinary thread.
pub const RECOMMENDED_NICE: i32 = -10;

/// Where each unit reads optional environment (`UDPF_TOKEN`, `RUST_LOG`, `UDPF_LOG_FORMAT`).
pub fn environment_file(service: Service) -> String {
    format!("/etc/udp-prefetch/{}.env", service.subcommand())
}

/// Prints the unit. `parse` is the binary's own parser applied to `udp-prefetch <service>
/// FLAGS…`.
pub fn run(
    args: ServiceUnitArgs,
    parse: impl FnOnce(Vec<String>) -> Result<ServiceFlags, clap::Error>,
) -> anyhow::Result<Outcome> {
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .and_then(|p| p.canonicalize())
            .map_err(|e| BadInput(format!("cannot find this executable ({e}): pass --binary")))?,
    };
    if binary.is_absolute() && !binary.is_file() {
        tracing::warn!(binary = %binary.display(),
            "the binary does not exist here: the unit fails to start until it is installed there");
    }
    print!("{}", render(&args, &binary, parse)?);
    Ok(Outcome::Success)
}

/// The unit's text for `args`, running `binary`.
pub fn render(
    args: &ServiceUnitArgs,
    binary: &Path,
    parse: impl FnOnce(Vec<String>) -> Result<ServiceFlags, clap::Error>,
) -> Result<String, BadInput> {
    let name = args.service.subcommand();
    if !binary.is_absolute() {
        return Err(BadInput(format!(
            "--binary {} is not an absolute path (systemd runs ExecStart from /)",
            binary.display()
        )));
    }
    if args.user.is_empty() || args.user.chars().any(|c| c.is_whitespace() || c == '%') {
        return Err(BadInput(format!(
            "--user {:?} is not a user name",
            args.user
        )));
    }
    if args
        .flags
        .iter()
        .any(|f| f == "--token" || f.starts_with("--token="))
    {
        return Err(BadInput(format!(
            "--token in a unit file is readable by every user: put UDPF_TOKEN=... in {} \
             (mode 0600), which the unit reads",
            environment_file(args.service)
        )));
    }
    let mut argv = vec!["udp-prefetch".to_string(), name.to_string()];
    argv.extend(args.flags.iter().cloned());
    let parsed = parse(argv).map_err(|e| {
        let text = e.render().to_string();
        BadInput(format!(
            "flags for `udp-prefetch {name}`: {}",
            text.trim().trim_start_matches("error: ")
        ))
    })?;
    if args.mount_unit {
        return match parsed {
            ServiceFlags::Workers(w) => mount_unit_text(args, &w),
            ServiceFlags::Pageserver(_) => Err(BadInput(
                "--mount-unit is for `workers`: the page server has no LFC".into(),
            )),
        };
    }
    let mut flags = args.flags.clone();
    let spec = match parsed {
        ServiceFlags::Pageserver(ps) => pageserver_spec(&ps, &mut flags)?,
        ServiceFlags::Workers(w) => workers_spec(&w)?,
    };
    Ok(unit_text(args, binary, &flags, &spec))
}

/// What differs between the two units.
struct Spec {
    description: String,
    /// Directories the service writes (an LFC, a pid file).
    writable: Vec<PathBuf>,
    /// Paths whose file systems must be mounted first.
    mounts: Vec<PathBuf>,
    /// `Nice=` of the whole process.
    nice: Option<i32>,
    /// Capabilities the service needs as its (non-root) user.
    capabilities: Vec<&'static str>,
    limit_nofile: Option<u64>,
}

fn absolute(flag: &str, path: &Path) -> Result<(), BadInput> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(BadInput(format!(
            "{flag} {} is not an absolute path (a service starts in /)",
            path.display()
        )))
    }
}

fn parent(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

fn workers_spec(w: &WorkersArgs) -> Result<Spec, BadInput> {
    absolute("--lfc", &w.lfc)?;
    if w.size.is_none() {
        return Err(BadInput(
            "a workers unit needs --size: an LFC on tmpfs is gone after a reboot, and the daemon \
             re-creates it only with a size"
                .into(),
        ));
    }
    let mut writable = vec![parent(&w.lfc)];
    if let Some(pid) = &w.pid_file {
        absolute("--pid-file", pid)?;
        writable.push(parent(pid));
    }
    warn_if_rmem_max_below(w.recv_buffer);
    if shared_directory(&parent(&w.lfc)) {
        tracing::warn!(lfc = %w.lfc.display(),
            "the LFC's directory is shared with other users, and /dev/shm gives it 4 KiB pages: \
             put it in a directory of its own (e.g. /run/udp-prefetch-lfc/lfc) and mount a tmpfs \
             with 2 MiB pages there with the unit of `service-unit workers --mount-unit`");
    }
    if w.listen.ip().is_loopback() {
        tracing::warn!(listen = %w.listen,
            "the daemon listens on a loopback address: page servers on other hosts cannot reach it \
             (pass --listen with this host's address)");
    }
    Ok(Spec {
        description: format!(
            "udp-prefetch worker daemon (UDP prefetched pages into the LFC {})",
            w.lfc.display()
        ),
        mounts: writable.clone(),
        writable,
        nice: Some(RECOMMENDED_NICE),
        // SCHED_FIFO needs it as the service's user; the class falls back to bulk without.
        capabilities: if w.thread_class == super::workers::WorkerClass::Realtime
            && !w.no_thread_classes
        {
            vec!["CAP_SYS_NICE"]
        } else {
            Vec::new()
        },
        limit_nofile: None,
    })
}

/// Directories other programs use, never to be mounted over for the LFC.
fn shared_directory(dir: &Path) -> bool {
    [
        "/", "/dev", "/dev/shm", "/tmp", "/run", "/var", "/var/tmp", "/mnt", "/home",
    ]
    .iter()
    .any(|d| dir == Path::new(d))
}

/// Room on the LFC's tmpfs: the file (pages plus at most 2 % of metadata) twice, since
/// `--recreate` builds the new file beside the old one before the rename, plus 64 MiB. A tmpfs
/// takes memory only for what its files hold, so the limit costs nothing.
fn lfc_tmpfs_bytes(size: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let file = size.saturating_add(size / 50);
    file.saturating_mul(2)
        .saturating_add(64 * MIB)
        .div_ceil(2 * MIB)
        * (2 * MIB)
}

/// A path as systemd names the unit for it (`systemd-escape --path`): `/run/udp-prefetch-lfc`
/// is `run-udp\x2dprefetch\x2dlfc`.
fn systemd_escape_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    let trimmed = text.trim_matches('/');
    let mut out = String::new();
    for (i, b) in trimmed.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.' => {
                out.push(b as char)
            }
            b => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    if out.is_empty() {
        out.push('-');
    }
    out
}

/// The uid and gid of `user` on this host (the tmpfs root belongs to them, so the daemon may
/// create the LFC there).
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let name = std::ffi::CString::new(user).ok()?;
    // SAFETY: getpwnam reads a NUL-terminated name and returns a pointer into static storage
    // (or null), read at once; service-unit is single-threaded at this point.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: non-null result of getpwnam.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// The `.mount` unit for the LFC's directory: a tmpfs with 2 MiB pages (README, "Huge pages").
/// `huge=within_size` rather than `always`: the LFC's size is fixed at create, so every 2 MiB
/// of it gets a huge page either way, and other small files there would not.
fn mount_unit_text(args: &ServiceUnitArgs, w: &WorkersArgs) -> Result<String, BadInput> {
    absolute("--lfc", &w.lfc)?;
    let dir = parent(&w.lfc);
    if shared_directory(&dir) {
        return Err(BadInput(format!(
            "--mount-unit would mount a tmpfs over {}, which other programs use: put the LFC in \
             a directory of its own (e.g. --lfc /run/udp-prefetch-lfc/lfc)",
            dir.display()
        )));
    }
    let Some(size) = w.size else {
        return Err(BadInput(
            "--mount-unit needs --size: the tmpfs is sized for the LFC".into(),
        ));
    };
    let (uid, gid) = user_ids(&args.user).ok_or_else(|| {
        BadInput(format!(
            "--user {} does not exist on this host: generate the mount unit on the compute \
             host, where the worker daemon runs as that user",
            args.user
        ))
    })?;
    let name = format!("{}.mount", systemd_escape_path(&dir));
    let mut u = String::new();
    let mut line = |s: &str| {
        u.push_str(s);
        u.push('\n');
    };
    line(&format!(
        "# Save as /etc/systemd/system/{name} (generated by `udp-prefetch service-unit workers --mount-unit`, udp-prefetch {}).",
        env!("CARGO_PKG_VERSION")
    ));
    line("# The LFC on 2 MiB pages: every backend maps it with a page-table entry per 2 MiB instead of");
    line("# per 4 KiB (fewer page faults and TLB misses). Mounted at boot, while memory is unfragmented;");
    line("# the worker daemon's RequiresMountsFor= mounts it before the daemon starts.");
    line("[Unit]");
    line(&format!(
        "Description=udp-prefetch LFC directory on 2 MiB pages ({})",
        dir.display().to_string().replace('%', "%%")
    ));
    line("");
    line("[Mount]");
    line("What=tmpfs");
    line(&format!("Where={}", path_word("", &dir)));
    line("Type=tmpfs");
    line(&format!(
        "Options=huge=within_size,size={},mode=0700,uid={uid},gid={gid},nosuid,nodev",
        lfc_tmpfs_bytes(size)
    ));
    line("");
    line("[Install]");
    line("WantedBy=local-fs.target");
    Ok(u)
}

/// Without `CAP_NET_ADMIN`, which the unit does not grant (it would also let the daemon
/// reconfigure the host's network), the kernel caps `--recv-buffer` at `net.core.rmem_max`
/// (often 208 KiB): say so now, with the fix, rather than as a warning in the journal later.
fn warn_if_rmem_max_below(recv_buffer: u64) {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/core/rmem_max") else {
        return;
    };
    if text
        .trim()
        .parse::<u64>()
        .is_ok_and(|max| max < recv_buffer)
    {
        tracing::warn!(rmem_max = text.trim(), recv_buffer,
            "net.core.rmem_max is below --recv-buffer, and the unit runs without CAP_NET_ADMIN: \
             the kernel will cap the receive buffer. Raise it: echo net.core.rmem_max={recv_buffer} \
             > /etc/sysctl.d/90-udp-prefetch.conf && sysctl --system");
    }
}

/// Descriptors per page-server connection: the socket, its entry in the live table, and the
/// reader's and responder's clones.
const FDS_PER_CONNECTION: u64 = 4;
/// Descriptors besides connections (listeners, UDP senders, the source's files), with room.
const FDS_BASE: u64 = 1024;

fn pageserver_spec(ps: &PageServerArgs, flags: &mut Vec<String>) -> Result<Spec, BadInput> {
    ps.shard_identity()?;
    let mut mounts = Vec::new();
    if let SourceSpec::PgData(dir) = &ps.source {
        absolute("--source pgdata:", dir)?;
        mounts.push(dir.clone());
    }
    let explicit_nice = flags
        .iter()
        .any(|f| f == "--prefetch-sender-nice" || f.starts_with("--prefetch-sender-nice="));
    let sender_nice = if explicit_nice {
        ps.prefetch_sender_nice
    } else {
        flags.push(format!("--prefetch-sender-nice={RECOMMENDED_NICE}"));
        RECOMMENDED_NICE
    };
    if ps.listen.ip().is_loopback() {
        tracing::warn!(listen = %ps.listen,
            "the page server listens on a loopback address: computes on other hosts cannot \
             connect (pass --listen with this host's address)");
    }
    let connections = u64::try_from(ps.max_connections).unwrap_or(u64::MAX);
    Ok(Spec {
        description: format!("udp-prefetch page server on {}", ps.listen),
        writable: Vec::new(),
        mounts,
        // Not for the whole process: the connection threads must keep their weight against the
        // senders; the senders' nice is the flag above, applied by the server to them alone.
        nice: None,
        capabilities: if sender_nice < 0 {
            vec!["CAP_SYS_NICE"]
        } else {
            Vec::new()
        },
        limit_nofile: Some(
            connections
                .saturating_mul(FDS_PER_CONNECTION)
                .saturating_add(FDS_BASE)
                .max(65_536),
        ),
    })
}

/// One word of `ExecStart=`: quoted when it holds anything but plain characters, with systemd's
/// `%` specifiers and `$` variable references escaped so the word reaches the process as given.
fn exec_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-+=.,/:@".contains(c));
    let escaped = word.replace('%', "%%").replace('$', "$$");
    if plain {
        return escaped;
    }
    let mut quoted = String::from("\"");
    for c in escaped.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(quoted, "\\x{:02x}", c as u32);
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// An entry of a path-list setting (`ReadWritePaths=`, `RequiresMountsFor=`), `prefix` (`-`:
/// ignore a missing path) included: quoted when it holds anything but plain characters, with `%`
/// escaped (those settings expand specifiers but not variables).
fn path_word(prefix: &str, path: &Path) -> String {
    let text = format!("{prefix}{}", path.display()).replace('%', "%%");
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-+=.,/:@%".contains(c))
    {
        return text;
    }
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn unit_text(args: &ServiceUnitArgs, binary: &Path, flags: &[String], spec: &Spec) -> String {
    let mut u = String::new();
    unit_section(&mut u, args, spec);
    service_section(&mut u, args, binary, flags, spec);
    hardening(&mut u, spec);
    line(&mut u, "");
    line(&mut u, "[Install]");
    line(&mut u, "WantedBy=multi-user.target");
    u
}

/// Appends `s` and a newline to the unit being written.
fn line(u: &mut String, s: &str) {
    u.push_str(s);
    u.push('\n');
}

/// The header comment (how the file was generated) and the `[Unit]` section.
fn unit_section(u: &mut String, args: &ServiceUnitArgs, spec: &Spec) {
    let name = args.service.subcommand();
    let mut given = vec![format!("--user {}", args.user)];
    given.extend(
        args.binary
            .iter()
            .map(|b| format!("--binary {}", exec_word(&b.display().to_string()))),
    );
    line(
        u,
        &format!(
            "# Generated by `udp-prefetch service-unit {name} {} -- {}` (udp-prefetch {}).",
            given.join(" "),
            args.flags
                .iter()
                .map(|f| exec_word(f))
                .collect::<Vec<_>>()
                .join(" "),
            env!("CARGO_PKG_VERSION")
        ),
    );
    line(
        u,
        "# Regenerate it to change flags: the generator checks them with the daemon's own parser.",
    );
    line(u, "[Unit]");
    line(
        u,
        &format!(
            "Description={}",
            spec.description.replace('%', "%%").replace('\n', " ")
        ),
    );
    line(u, "Wants=network-online.target");
    line(u, "After=network-online.target");
    if !spec.mounts.is_empty() {
        let mounts: Vec<String> = spec.mounts.iter().map(|p| path_word("", p)).collect();
        line(u, &format!("RequiresMountsFor={}", mounts.join(" ")));
    }
    line(
        u,
        "# A crash loop stops after 5 failed starts in a minute (`systemctl reset-failed` re-arms it).",
    );
    line(u, "StartLimitIntervalSec=60");
    line(u, "StartLimitBurst=5");
}

/// The `[Service]` section up to its sandboxing: how the service starts, restarts, is watched
/// and scheduled.
fn service_section(
    u: &mut String,
    args: &ServiceUnitArgs,
    binary: &Path,
    flags: &[String],
    spec: &Spec,
) {
    let name = args.service.subcommand();
    let mut exec = vec![exec_word(&binary.display().to_string()), name.to_string()];
    exec.extend(flags.iter().map(|f| exec_word(f)));
    line(u, "");
    line(u, "[Service]");
    line(
        u,
        "# READY=1 comes once the sockets are bound and serving; only the main process may send it.",
    );
    line(u, "Type=notify");
    line(u, "NotifyAccess=main");
    line(u, &format!("ExecStart={}", exec.join(" ")));
    line(u, &format!("User={}", args.user));
    line(
        u,
        &format!(
            "# Optional: UDPF_TOKEN (never on the command line: this file is world-readable), RUST_LOG,\n\
             # UDPF_LOG_FORMAT. Keep it mode 0600.\n\
             EnvironmentFile=-{}",
            environment_file(args.service)
        ),
    );
    line(u, &format!("SyslogIdentifier=udp-prefetch-{name}"));
    line(
        u,
        "# Exit status 2 is a refusal to fix, not a fault to retry: a bad flag, an LFC served by",
    );
    line(
        u,
        "# another daemon, an address in use. Other failures restart after a second.",
    );
    line(u, "Restart=on-failure");
    line(u, "RestartSec=1s");
    line(u, "RestartPreventExitStatus=2");
    line(
        u,
        "# Creating a large LFC allocates all of its memory first; the default 90 s can be short.",
    );
    line(u, "TimeoutStartSec=300");
    line(u, "TimeoutStopSec=30");
    line(
        u,
        "# WATCHDOG=1 every 10 s while it works (the daemon: its LFC heartbeat is fresh; the page",
    );
    line(
        u,
        "# server: its accept loop runs); none for 20 s means hung, and it is restarted.",
    );
    line(u, "WatchdogSec=20s");
    match spec.nice {
        Some(n) => {
            line(u, "# The operator guide's advice: the worker threads serve every backend; a negative nice");
            line(u, "# keeps their CPU share on a busy compute. They set SCHED_BATCH themselves (thread");
            line(
                u,
                "# classes): no CPUSchedulingPolicy= here, which would apply to every thread.",
            );
            line(u, &format!("Nice={n}"));
        }
        None => {
            line(u, "# No Nice= or CPUSchedulingPolicy= for the whole process: the server gives its threads");
            line(u, "# their own classes, and --prefetch-sender-nice applies to the sender threads alone.");
        }
    }
    if let Some(n) = spec.limit_nofile {
        line(
            u,
            "# Four descriptors per connection (--max-connections), and room for the rest.",
        );
        line(u, &format!("LimitNOFILE={n}"));
    }
}

/// The rest of `[Service]`: the sandbox, which leaves each service what it needs.
fn hardening(u: &mut String, spec: &Spec) {
    line(
        u,
        "# No LimitMEMLOCK=: nothing is mlocked (io_uring rings are charged to the memory cgroup).",
    );
    line(
        u,
        "# Hardening that leaves what it needs: UDP and TCP sockets, SO_REUSEPORT, and the LFC in",
    );
    line(
        u,
        "# the host's /dev/shm (or its directory), shared with the backends. Hence no PrivateDevices=",
    );
    line(
        u,
        "# (a private /dev has its own /dev/shm) and no PrivateTmp= (an LFC or pgdata under /tmp).",
    );
    line(u, "NoNewPrivileges=yes");
    line(u, "ProtectSystem=strict");
    if !spec.writable.is_empty() {
        let list: Vec<String> = spec.writable.iter().map(|p| path_word("-", p)).collect();
        line(u, &format!("ReadWritePaths={}", list.join(" ")));
    }
    for setting in [
        "ProtectHome=read-only",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "SystemCallArchitectures=native",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    ] {
        line(u, setting);
    }
    line(
        u,
        "# Every call the services make is in this set (io_uring, sched_setattr, recvmmsg, fallocate",
    );
    line(
        u,
        "# included); anything else fails with EPERM, which they report, instead of a kill.",
    );
    line(u, "SystemCallFilter=@system-service");
    line(u, "SystemCallErrorNumber=EPERM");
    line(u, "UMask=0077");
    if spec.capabilities.is_empty() {
        line(u, "CapabilityBoundingSet=");
    } else {
        line(
            u,
            "# A negative --prefetch-sender-nice needs it as a non-root user.",
        );
        let caps = spec.capabilities.join(" ");
        line(u, &format!("CapabilityBoundingSet={caps}"));
        line(u, &format!("AmbientCapabilities={caps}"));
    }
}

#[cfg(test)]
mod tests {
    use super::exec_word;

    #[test]
    fn mount_unit_names_and_sizes() {
        use super::{lfc_tmpfs_bytes, systemd_escape_path};
        use std::path::Path;
        // As `systemd-escape --path` prints them.
        assert_eq!(
            systemd_escape_path(Path::new("/run/udp-prefetch-lfc")),
            "run-udp\\x2dprefetch\\x2dlfc"
        );
        assert_eq!(systemd_escape_path(Path::new("/mnt/lfc/")), "mnt-lfc");
        assert_eq!(systemd_escape_path(Path::new("/a b/.x")), "a\\x20b-.x");
        assert_eq!(systemd_escape_path(Path::new("/.x")), "\\x2ex");
        // Twice the file with its metadata, plus 64 MiB, in 2 MiB.
        assert_eq!(lfc_tmpfs_bytes(1 << 30), 2_258_632_704);
    }

    #[test]
    fn exec_words_reach_the_process_as_given() {
        assert_eq!(exec_word("--lfc"), "--lfc");
        assert_eq!(exec_word("/dev/shm/lfc"), "/dev/shm/lfc");
        assert_eq!(exec_word("pgdata:/var/lib/pg"), "pgdata:/var/lib/pg");
        assert_eq!(exec_word("a b"), "\"a b\"");
        assert_eq!(exec_word(""), "\"\"");
        assert_eq!(exec_word("100%"), "\"100%%\"");
        assert_eq!(exec_word("$HOME"), "\"$$HOME\"");
        assert_eq!(exec_word("say \"x\"\\"), "\"say \\\"x\\\"\\\\\"");
        assert_eq!(exec_word(";"), "\";\"");
    }

    #[test]
    fn path_words_are_quoted_only_when_needed() {
        use super::path_word;
        use std::path::Path;
        assert_eq!(path_word("-", Path::new("/dev/shm")), "-/dev/shm");
        assert_eq!(path_word("", Path::new("/mnt/a b")), "\"/mnt/a b\"");
        assert_eq!(path_word("-", Path::new("/mnt/100%")), "-/mnt/100%%");
    }
}
