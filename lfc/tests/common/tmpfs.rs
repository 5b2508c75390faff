//! A tmpfs mounted for one test (needs root), unmounted when dropped, also when the test fails.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` with the extra mount `options` (e.g. `huge=within_size`).
    pub fn mount(bytes: u64, options: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("udpf-tmpfs-")
            .tempdir()
            .unwrap();
        let mut opts = format!("size={bytes}");
        if !options.is_empty() {
            opts = format!("{opts},{options}");
        }
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts])
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still has a file open there: detach it now, freed when it closes.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Whether a test that mounts may run: skips (false) only when `UDPF_REQUIRE_ROOT` is unset;
/// when it is set, not being root is a failure.
pub fn root_required() -> bool {
    if std::env::var_os("UDPF_REQUIRE_ROOT").is_none() {
        eprintln!("skipping: mounting a tmpfs needs root and UDPF_REQUIRE_ROOT is unset");
        return false;
    }
    // SAFETY: plain syscall without arguments.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "UDPF_REQUIRE_ROOT is set but the test does not run as root"
    );
    true
}
