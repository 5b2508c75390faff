//! Subcommands of the `udp-prefetch` binary; each module holds its flags and its `run`.
//!
//! Owns: the exit-status convention (`EXIT_*`, `BadInput`, `Outcome`, `exit_status_for`) and
//! `daemon_proc` (the worker daemon as a child process, shared with the benchmarks). Commands
//! may use every module except `bench`; outside `cmd` only `main.rs` and `bench` import it.

pub mod daemon_proc;
pub mod demo;
pub mod getpage;
pub mod lfc_stat;
pub mod pageserver;
pub mod prewarm;
pub mod scan;
pub mod sim;
pub mod workers;

use std::fmt;

/// Exit status conventions (ARCHITECTURE §9).
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_BAD_INPUT: u8 = 2;

/// An error caused by the caller's input (bad flag value, unreadable or malformed file):
/// the binary exits with status 2 instead of 1 when an error chain contains one.
#[derive(Debug)]
pub struct BadInput(pub String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// What a finished command reports: success, or work that ran but failed (exit 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failed,
}

/// Exit status for an error: 2 when any cause in the chain is bad input, else 1.
pub fn exit_status_for(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.is::<BadInput>()) {
        EXIT_BAD_INPUT
    } else {
        EXIT_FAILED
    }
}
