//! The daemon's pid file: refuses to start over a live daemon, never signals a nonsense pid.
//!
//! Owns: the file at its path while the daemon runs: written under a temporary name and renamed,
//! removed on drop only while it still names this process. Advisory only: it holds no lock and
//! touches no LFC; the rule that one daemon serves a cache is the LFC's daemon lock
//! (`Lfc::lock_for_daemon`).

use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("{path}: another daemon is running as pid {pid}")]
    AlreadyRunning { path: PathBuf, pid: i32 },
    #[error("{path}: holds {content:?}, not a process id >= 1; remove it if no daemon is running")]
    Invalid { path: PathBuf, content: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Removes the file when dropped, if it still names this process.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission; `pid` is >= 1 here,
    // so it never addresses a process group or every process.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl PidFile {
    pub fn acquire(path: &Path) -> Result<PidFile, PidFileError> {
        let io = |source| PidFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(content) => {
                let pid: i32 = match content.trim().parse() {
                    Ok(p) if p >= 1 => p,
                    _ => {
                        return Err(PidFileError::Invalid {
                            path: path.to_path_buf(),
                            content: content.chars().take(40).collect(),
                        })
                    }
                };
                if alive(pid) && pid as u32 != std::process::id() {
                    return Err(PidFileError::AlreadyRunning {
                        path: path.to_path_buf(),
                        pid,
                    });
                }
                // A stale file from a daemon that died without cleaning up: replace it.
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        // Write to a temporary name and rename, so a reader never sees a half-written pid.
        let tmp = path.with_extension("pid.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        writeln!(f, "{}", std::process::id()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(PidFile {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|c| c.trim().parse::<u32>().ok())
            == Some(std::process::id());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_live_and_invalid_pids_and_replaces_stale_ones() {
        let dir = std::env::temp_dir().join(format!("udpf-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.pid");
        // pid 1 (init) is alive.
        std::fs::write(&path, "1\n").unwrap();
        assert!(matches!(
            PidFile::acquire(&path),
            Err(PidFileError::AlreadyRunning { pid: 1, .. })
        ));
        for bad in ["0", "-1", "abc", ""] {
            std::fs::write(&path, bad).unwrap();
            assert!(
                matches!(PidFile::acquire(&path), Err(PidFileError::Invalid { .. })),
                "{bad:?}"
            );
        }
        // A pid that cannot exist (above pid_max) is stale.
        std::fs::write(&path, "2147483646").unwrap();
        let held = PidFile::acquire(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim(),
            std::process::id().to_string()
        );
        drop(held);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
