//! `udp-prefetch lfc stat`: geometry and counters of a local file cache.

use super::{BadInput, Outcome};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct LfcArgs {
    #[command(subcommand)]
    pub command: LfcCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum LfcCommand {
    /// Print the cache's geometry and statistics.
    Stat {
        /// Path of the LFC file.
        #[arg(long)]
        lfc: PathBuf,
        /// One JSON object instead of the human summary.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: LfcArgs) -> anyhow::Result<Outcome> {
    match args.command {
        LfcCommand::Stat { lfc, .. } => Err(BadInput(format!(
            "cannot read {}: the LFC is not implemented yet",
            lfc.display()
        ))
        .into()),
    }
}
