//! The worker daemon as a child process of a benchmark or the demo: started from this same
//! executable, stopped with SIGTERM on drop, observed through its metrics endpoint.
//!
//! Owns: the child (its start, nice values, pause, kill and stop), the scraping of its metrics, the
//! scratch directories (`ScratchDir`, under the base `set_scratch_base` fixes once) and whether
//! this run's LFCs were on 2 MiB pages. Runs none of the daemon's code in this process: the child
//! is this executable's `workers` command, reached only by signals and its metrics endpoint; it
//! imports nothing of this crate.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct DaemonProc {
    child: Child,
    lfc: std::path::PathBuf,
    pub udp_port: u16,
    pub metrics: String,
    pub io: String,
}

impl DaemonProc {
    pub fn start(lfc: &Path, size_bytes: u64, extra: &[&str]) -> anyhow::Result<DaemonProc> {
        Self::start_on(lfc, size_bytes, "127.0.0.1:0", extra)
    }

    /// Like `start`, receiving datagrams on `listen` (e.g. the compute's address of a
    /// `bench::twohost` pair) rather than loopback.
    pub fn start_on(
        lfc: &Path,
        size_bytes: u64,
        listen: &str,
        extra: &[&str],
    ) -> anyhow::Result<DaemonProc> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("workers")
            .arg("--lfc")
            .arg(lfc)
            .args([
                "--size",
                &size_bytes.to_string(),
                "--listen",
                listen,
                "--metrics",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let rest = line
            .trim()
            .strip_prefix("udp-prefetch workers listening on ")
            .ok_or_else(|| anyhow::anyhow!("worker daemon did not start: {line:?}"))?;
        let mut words = rest.split_whitespace();
        let udp: std::net::SocketAddr = words.next().unwrap_or_default().parse()?;
        let (mut io, mut metrics) = (String::new(), String::new());
        for w in words {
            if let Some(v) = w.strip_prefix("io=") {
                io = v.to_string();
            } else if let Some(v) = w.strip_prefix("metrics=") {
                metrics = v.to_string();
            }
        }
        let daemon = DaemonProc {
            child,
            lfc: lfc.to_path_buf(),
            udp_port: udp.port(),
            metrics,
            io,
        };
        daemon.wait_prefaulted()?;
        note_lfc_huge_pages(Self::metric(&daemon.scrape()?, HUGE_PAGES_GAUGE) == 1);
        Ok(daemon)
    }

    /// Waits until the daemon's background prefault is done, so that a measurement sees the
    /// steady state of a long-running daemon (every frame mapped) and does not share the CPU
    /// with the prefault.
    fn wait_prefaulted(&self) -> anyhow::Result<()> {
        const GAUGE: &str = "udp_prefetch_lfc_prefault_remaining_pages";
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        loop {
            let text = self.scrape()?;
            anyhow::ensure!(
                text.contains(GAUGE),
                "the worker daemon's metrics lack {GAUGE}"
            );
            if Self::metric(&text, GAUGE) == 0 {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the worker daemon did not finish prefaulting its LFC within 10 minutes"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The LFC this daemon serves.
    pub fn lfc_path(&self) -> &Path {
        &self.lfc
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sets the nice value of every thread of the daemon (setpriority on a pid changes one
    /// thread only).
    pub fn renice(&self, nice: i32) -> anyhow::Result<()> {
        for task in std::fs::read_dir(format!("/proc/{}/task", self.pid()))? {
            let Some(tid) = task?
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            workers::sched::set_thread_nice(tid, nice)?;
        }
        Ok(())
    }

    pub fn scrape(&self) -> anyhow::Result<String> {
        let mut s = std::net::TcpStream::connect(&self.metrics)?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default())
    }

    /// One sample of the metrics text (0 when absent).
    pub fn metric(text: &str, name: &str) -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    }

    /// CPU time the daemon's threads have used, in seconds (`schedstat`).
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        Ok(self.cpu_and_switches()?.0)
    }

    /// CPU time the daemon's threads have used, in seconds, and the times they were switched
    /// onto a CPU (how often the daemon had to be scheduled to receive what came), from one
    /// read of `/proc/PID/task/*/schedstat` (`/proc/PID/stat` counts 10 ms ticks, too coarse
    /// for a scan of a fraction of a second). The daemon's threads live as long as it.
    pub fn cpu_and_switches(&self) -> anyhow::Result<(f64, u64)> {
        let (mut ns, mut slices) = (0u64, 0u64);
        for task in std::fs::read_dir(format!("/proc/{}/task", self.child.id()))? {
            let Ok(text) = std::fs::read_to_string(task?.path().join("schedstat")) else {
                continue; // a thread that just exited
            };
            let mut fields = text.split_whitespace().map(|v| v.parse::<u64>().ok());
            let (Some(Some(run)), Some(Some(_waited)), Some(Some(ran))) =
                (fields.next(), fields.next(), fields.next())
            else {
                anyhow::bail!("unreadable schedstat: {text:?}");
            };
            ns += run;
            slices += ran;
        }
        Ok((ns as f64 / 1e9, slices))
    }

    /// Sends `signal` to the daemon, unless it has already exited and been reaped.
    fn signal(&mut self, signal: i32) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.child.try_wait()?.is_none(),
            "the worker daemon (pid {}) has exited",
            self.pid()
        );
        // SAFETY: signalling our own child, not yet reaped, so its pid is not reused.
        if unsafe { libc::kill(self.child.id() as i32, signal) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// SIGKILL, as a crash: no clean stop, nothing cleared in the LFC. Reaped at once, so that
    /// nobody mistakes the zombie for a live daemon.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGKILL)?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGSTOP: the daemon stops receiving (and refreshing its heartbeat) until [`resume`].
    ///
    /// [`resume`]: DaemonProc::resume
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// SIGCONT after [`pause`](DaemonProc::pause).
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGCONT)
    }

    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: signalling our own child by its pid. SIGCONT after SIGTERM, so that a
            // paused daemon wakes up to handle it.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
                libc::kill(self.child.id() as i32, libc::SIGCONT);
            }
            let _ = self.child.wait();
        }
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where scratch directories go (`bench::lfc_dir`); `/dev/shm` when unset.
static SCRATCH_BASE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Makes every later [`ScratchDir`] a subdirectory of `dir` (`bench --lfc-dir`, or the
/// private huge-page tmpfs of `bench::lfc_dir`) so LFC files are mapped with 2 MiB pages.
pub fn set_scratch_base(dir: std::path::PathBuf) -> anyhow::Result<()> {
    anyhow::ensure!(
        dir.is_dir(),
        "--lfc-dir {} is not a directory",
        dir.display()
    );
    SCRATCH_BASE
        .set(dir)
        .map_err(|_| anyhow::anyhow!("the scratch base is set once, before any bench runs"))
}

fn scratch_base() -> std::path::PathBuf {
    match SCRATCH_BASE.get() {
        Some(dir) => dir.clone(),
        None if Path::new("/dev/shm").is_dir() => std::path::PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    }
}

const HUGE_PAGES_GAUGE: &str = "udp_prefetch_lfc_huge_pages";

/// Whether every LFC this process's benches attached (directly, or through a daemon they
/// started) was on 2 MiB pages; `None` until one is noted.
static LFC_HUGE_PAGES: std::sync::Mutex<Option<bool>> = std::sync::Mutex::new(None);

/// Notes how one LFC of this run was mapped (`lfc::Lfc::huge_pages`), for `lfc_huge_pages`.
pub fn note_lfc_huge_pages(huge: bool) {
    let mut all = LFC_HUGE_PAGES.lock().unwrap_or_else(|e| e.into_inner());
    *all = Some(all.unwrap_or(true) && huge);
}

/// Whether this run's LFCs were on 2 MiB pages: those noted, or when none was, a 4 MiB probe
/// cache created in the scratch base (what the base gives a new cache now).
pub fn lfc_huge_pages() -> bool {
    if let Some(noted) = *LFC_HUGE_PAGES.lock().unwrap_or_else(|e| e.into_inner()) {
        return noted;
    }
    let Ok(dir) = ScratchDir::new("udpf-huge-probe") else {
        return false;
    };
    lfc::Lfc::create(dir.0.join("lfc"), 512).is_ok_and(|l| l.huge_pages().backed())
}

/// The scratch base and whether a cache there gets 2 MiB pages, for the header of bench
/// output.
pub fn scratch_base_description() -> String {
    format!(
        "LFC files in {} (2 MiB pages: {})",
        scratch_base().display(),
        if lfc_huge_pages() { "yes" } else { "no" }
    )
}

/// A scratch directory for LFC files: tmpfs when there is one (an LFC is memory in spirit,
/// and disk writeback would only add noise), removed on drop.
pub struct ScratchDir(pub std::path::PathBuf);

impl ScratchDir {
    pub fn new(prefix: &str) -> anyhow::Result<ScratchDir> {
        let base = scratch_base();
        let dir = base.join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
