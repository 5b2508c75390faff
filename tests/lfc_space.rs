//! `workers --size` larger than the LFC's tmpfs (a container's 64 MiB `/dev/shm`) refuses to
//! start with the sizes, instead of starting with a prefault warning and dying of SIGBUS on the
//! next scan. Mounts a tmpfs, so it needs root: skips only when `UDPF_REQUIRE_ROOT` is unset.

mod common;

use common::{run_with_limit, BIN};
use std::process::Command;
use std::time::Duration;

/// A 64 MiB tmpfs on a fresh directory, unmounted when dropped (also when the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

#[test]
fn workers_refuse_an_lfc_larger_than_its_tmpfs() {
    if std::env::var_os("UDPF_REQUIRE_ROOT").is_none() {
        eprintln!("skipping: mounting a tmpfs needs root and UDPF_REQUIRE_ROOT is unset");
        return;
    }
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "UDPF_REQUIRE_ROOT needs root"
    );
    let dir = tempfile::Builder::new()
        .prefix("udpf-tmpfs-")
        .tempdir()
        .unwrap();
    common::output_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
            .arg(dir.path()),
        "mount",
    );
    let fs = Tmpfs { dir };
    let lfc = fs.dir.path().join("w.lfc");

    let done = run_with_limit(
        Command::new(BIN)
            .arg("workers")
            .arg("--lfc")
            .arg(&lfc)
            .args(["--size", "1GiB", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn"),
        Duration::from_secs(30),
    );
    assert_eq!(done.code(), Some(2), "stderr: {}", done.stderr);
    assert_eq!(
        done.stderr.trim_end(),
        format!(
            "error: LFC {}: not enough space for a cache file of 1083658240 bytes (1.0 GiB): \
             1083658240 bytes (1.0 GiB) more must be allocated but the filesystem has 67108864 \
             bytes (64.0 MiB) free",
            lfc.display()
        )
    );
    assert!(!lfc.exists());
    assert_eq!(std::fs::read_dir(fs.dir.path()).unwrap().count(), 0);
}
