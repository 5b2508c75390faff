//! io_uring refused for real: a child process runs under a seccomp filter that makes
//! `io_uring_setup` fail; `auto` must fall back to epoll (which still works) and `uring` must
//! fail with a clear error.

mod udp_common;

use std::env;
use std::process::Command;
use std::time::Duration;

use udp_common::*;
use workers::udp::{
    bind_reuseport, probe_uring, seccomp, Completion, IoBackend, IoChoice, Receiver, UdpError,
};

const CHILD_ENV: &str = "WORKERS_UDP_SECCOMP_CHILD";
const MARK: &str = "seccomp-child-checks-passed";

/// What the child checks once the filter is in place.
fn child_checks() {
    let err = probe_uring().unwrap_err();
    assert!(
        matches!(&err, UdpError::UringUnavailable { step: "io_uring_setup", source }
            if source.raw_os_error() == Some(libc::EPERM)),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with("io_uring is not available: io_uring_setup failed"),
        "{msg}"
    );
    assert!(msg.contains("seccomp"), "{msg}");
    assert_eq!(IoChoice::Auto.resolve().unwrap(), IoBackend::Epoll);
    assert!(IoChoice::Uring.resolve().is_err());
    let s = bind_reuseport(localhost0(), 1 << 20).unwrap();
    assert!(matches!(
        Receiver::new(s, IoBackend::Uring, 4),
        Err(UdpError::UringUnavailable { .. })
    ));
    // The fallback receives.
    let s = bind_reuseport(localhost0(), 1 << 20).unwrap();
    let addr = s.local_addr().unwrap();
    let mut rx = Receiver::new(s, IoChoice::Auto.resolve().unwrap(), 4).unwrap();
    sender().send_to(&pattern(9, 1000), addr).unwrap();
    let mem = SlotMem::new(4);
    let seqs = receive_n(&mut rx, &mem, 1, |c, _| assert_eq!(c.len, 1000));
    assert_eq!(seqs, vec![9]);
    let mut out = [Completion::default(); 1];
    assert_eq!(rx.wait(Duration::ZERO, &mut out).unwrap(), 0);
    println!("{MARK}");
}

/// Re-runs this very test in a child (`mode` tells it how the filter gets installed) and
/// checks that the child ran the checks and passed.
fn run_child(test_name: &str, mode: &str, filter_on_spawn: bool) {
    let mut cmd = Command::new(env::current_exe().unwrap());
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode);
    if filter_on_spawn {
        seccomp::deny_io_uring_on_spawn(&mut cmd);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains(MARK),
        "child did not run the checks:\n{stdout}\n{stderr}"
    );
}

/// The filter is installed between fork and exec, as the daemon end-to-end test will do.
#[test]
fn filter_installed_on_spawn() {
    match env::var(CHILD_ENV).as_deref() {
        Ok("spawn") => child_checks(),
        _ => run_child("filter_installed_on_spawn", "spawn", true),
    }
}

/// The child installs the filter in itself (all threads) after start-up.
#[test]
fn filter_installed_in_process() {
    match env::var(CHILD_ENV).as_deref() {
        Ok("self") => {
            probe_uring().unwrap();
            seccomp::deny_io_uring_setup().unwrap();
            child_checks();
        }
        _ => run_child("filter_installed_in_process", "self", false),
    }
}

/// The parent itself is unaffected by the filter it gave its children.
#[test]
fn parent_unaffected() {
    if env::var_os(CHILD_ENV).is_none() {
        let mut cmd = Command::new("true");
        seccomp::deny_io_uring_on_spawn(&mut cmd);
        assert!(cmd.status().unwrap().success());
        probe_uring().unwrap();
    }
}
