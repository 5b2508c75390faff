//! `workers --size` larger than the LFC's tmpfs (a container's 64 MiB `/dev/shm`) refuses to
//! start with the sizes, instead of starting with a prefault warning and dying of SIGBUS on the
//! next scan. Mounts a tmpfs, so it needs root: skips only when `UDPF_REQUIRE_ROOT` is unset.

mod common;

use common::{run_with_limit, BIN};
use std::process::Command;
use std::time::Duration;

/// The lfc crate's test tmpfs (mounted for one test, unmounted when dropped), written once.
#[path = "../lfc/tests/common/tmpfs.rs"]
mod tmpfs;

#[test]
fn workers_refuse_an_lfc_larger_than_its_tmpfs() {
    if !tmpfs::root_required() {
        return;
    }
    // A container's 64 MiB /dev/shm.
    let fs = tmpfs::Tmpfs::mount(64 << 20, "");
    let lfc = fs.path().join("w.lfc");

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
    assert_eq!(std::fs::read_dir(fs.path()).unwrap().count(), 0);
}
