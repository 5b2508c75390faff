//! `udp-prefetch sim`: runs the deterministic simulator, which lives in the `sim` crate's
//! `udp-prefetch-sim` binary (the simulator depends on this crate, so this crate cannot link
//! it; the subcommand hands over to the sibling binary with the same arguments).

use super::{BadInput, Outcome};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;

#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub struct SimArgs {
    /// Arguments for the simulator: --seeds N [--first-seed S] [--faults PROFILE] [--json]
    /// (run `udp-prefetch sim --help` for all).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<OsString>,
}

pub const SIM_BINARY: &str = "udp-prefetch-sim";

pub fn run(args: SimArgs) -> anyhow::Result<Outcome> {
    let exe = std::env::current_exe()?;
    let sim = exe.with_file_name(SIM_BINARY);
    if !sim.exists() {
        return Err(BadInput(format!(
            "{} not found next to {}: build it with `cargo build --release --workspace` (or run `cargo run --release -p sim -- …`)",
            SIM_BINARY,
            exe.display()
        ))
        .into());
    }
    // exec replaces this process: the simulator's exit status is the command's.
    let err = std::process::Command::new(&sim).args(&args.args).exec();
    Err(anyhow::anyhow!("cannot run {}: {err}", sim.display()))
}
