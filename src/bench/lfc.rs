//! `udp-prefetch bench lfc`: cache lookup/install throughput against a memcpy loop.

use super::BenchRecord;

#[derive(Debug, Clone, clap::Args)]
pub struct LfcBenchArgs {}

pub fn run(_args: &LfcBenchArgs) -> anyhow::Result<Vec<BenchRecord>> {
    anyhow::bail!("bench lfc: the LFC is not implemented yet")
}
