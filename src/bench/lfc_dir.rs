//! Where a bench run's LFC files go: as deployed (README, "Huge pages"), on a tmpfs mounted
//! with `huge=within_size`, so every figure includes what 2 MiB pages save every backend.
//!
//! `--lfc-dir DIR` (env `UDPF_BENCH_LFC_DIR`) names the place. Without it, a bench run as root
//! mounts a private tmpfs (`/run/udpf-bench-<pid>-<random>`) and unmounts it when the run ends
//! ([`BenchLfcDir`] drops: on return, error or panic); not as root, or when the mount fails, it
//! falls back to `/dev/shm` and says so. A run killed by a signal leaves its mount behind; the
//! next run as root removes it. Every record then carries `params.lfc_huge_pages`:
//! whether the caches the run used were mapped with 2 MiB pages (`record`).
//!
//! Owns: a run's private tmpfs mount (`BenchLfcDir`); it drives only `cmd::daemon_proc` (the
//! scratch base, the huge-page record) and may not be imported by the library's other modules.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The private tmpfs of a run, unmounted and removed on drop.
pub struct BenchLfcDir {
    mounted: Option<PathBuf>,
}

/// Size limit of the private tmpfs: half the memory, as the default `/dev/shm` has (tmpfs
/// takes memory only for what the files hold).
const TMPFS_SIZE: &str = "size=50%";

const PREFIX: &str = "udpf-bench-";

/// Unmounts and removes the private tmpfs of runs that were killed (a signal skips the guard's
/// drop): `<base>/udpf-bench-<pid>-*` whose process is gone.
fn remove_abandoned(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = pid > 0
            && (unsafe { libc::kill(pid, 0) } == 0
                || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM));
        if !alive {
            drop(BenchLfcDir {
                mounted: Some(entry.path()),
            });
        }
    }
}

/// Sets the scratch base for this run's LFC files (`cmd::daemon_proc::set_scratch_base`): `dir`
/// when given, else a private huge-page tmpfs when this process may mount one, else the
/// default (`/dev/shm`) with a note on stderr.
pub fn setup(dir: Option<&Path>) -> anyhow::Result<BenchLfcDir> {
    if let Some(dir) = dir {
        crate::cmd::daemon_proc::set_scratch_base(dir.to_path_buf())?;
        return Ok(BenchLfcDir { mounted: None });
    }
    // SAFETY: plain syscall without arguments.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "note: LFC files on /dev/shm (4 KiB pages): a bench run as root mounts a tmpfs with \
             huge=within_size as deployed; --lfc-dir DIR names another place"
        );
        return Ok(BenchLfcDir { mounted: None });
    }
    let base = ["/run", "/tmp"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_dir())
        .unwrap_or(Path::new("/tmp"));
    remove_abandoned(base);
    let dir = base.join(format!(
        "{PREFIX}{}-{:08x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    std::fs::create_dir(&dir)?;
    let out = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("huge=within_size,{TMPFS_SIZE},mode=0700"),
        ])
        .arg("tmpfs")
        .arg(&dir)
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let guard = BenchLfcDir {
                mounted: Some(dir.clone()),
            };
            crate::cmd::daemon_proc::set_scratch_base(dir)?;
            Ok(guard)
        }
        failed => {
            let _ = std::fs::remove_dir(&dir);
            let why = match failed {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            };
            eprintln!(
                "note: LFC files on /dev/shm (4 KiB pages): mounting a huge-page tmpfs on {} \
                 failed: {why}",
                dir.display()
            );
            Ok(BenchLfcDir { mounted: None })
        }
    }
}

impl Drop for BenchLfcDir {
    fn drop(&mut self) {
        let Some(dir) = self.mounted.take() else {
            return;
        };
        let unmounted = Command::new("umount")
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // A child still has a file open there: detach the mount now; the kernel frees the
            // memory when the last file closes.
            let _ = Command::new("umount").arg("-l").arg(&dir).status();
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

/// Adds `params.lfc_huge_pages` to every record: whether the caches this run attached were all
/// on 2 MiB pages, or, when it attached none, whether a cache in the scratch directory is.
pub fn record(records: &mut [super::BenchRecord]) {
    let huge = crate::cmd::daemon_proc::lfc_huge_pages();
    for r in records.iter_mut() {
        r.params.insert("lfc_huge_pages".into(), huge.into());
    }
}
