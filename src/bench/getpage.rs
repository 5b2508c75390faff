//! `udp-prefetch bench getpage`: synchronous GetPage round-trip latency and pipelined
//! throughput over loopback, against an embedded page server.
//!
//! Owns: nothing shared; it drives the public APIs of `PageServer` and `protocol::client` and may
//! not be imported by the library's other modules.

use super::BenchRecord;
use crate::compute::scan::percentile;
use crate::pageserver::source::{SourceSpec, Synthetic};
use crate::pageserver::ServerConfig;
use crate::protocol::client::{ConnectOptions, PageClient};
use crate::protocol::pagestream::LATEST_LSN;
use std::time::Instant;

#[derive(Debug, Clone, clap::Args)]
pub struct GetPageBenchArgs {
    /// Synchronous round trips to time.
    #[arg(long, default_value_t = 20_000)]
    pub sync_requests: u32,
    /// Pages read per pipelined case.
    #[arg(long, default_value_t = 65_536)]
    pub pages: u32,
    /// Pipeline depths to measure; the first is the baseline.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    pub depths: Vec<usize>,
    /// Emulated server latency per response, in microseconds.
    #[arg(long, default_value_t = 0)]
    pub service_delay_us: u64,
}

pub fn run(args: &GetPageBenchArgs) -> anyhow::Result<Vec<BenchRecord>> {
    anyhow::ensure!(
        args.sync_requests > 0 && args.pages > 0,
        "counts must be positive"
    );
    anyhow::ensure!(!args.depths.is_empty(), "at least one depth");
    let pages = args.pages;
    let server = super::start_server(ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        source: SourceSpec::Synthetic { rels: 1, pages },
        service_delay_us: args.service_delay_us,
        ..ServerConfig::default()
    })?;
    let opts = ConnectOptions::new(server.local_addr().to_string());
    let mut client = PageClient::connect(&opts)?;
    let rel = Synthetic::rel(0);
    let delay = args.service_delay_us;

    let mut rtts = Vec::with_capacity(args.sync_requests as usize);
    for i in 0..args.sync_requests {
        let t = Instant::now();
        client.get_page(rel.block(i % pages), LATEST_LSN, 0)?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    rtts.sort_by(f64::total_cmp);
    let mut records = vec![
        BenchRecord::new("getpage", "sync-rtt-p50", "us", percentile(&rtts, 0.5)).lower_is_better(),
        BenchRecord::new("getpage", "sync-rtt-p99", "us", percentile(&rtts, 0.99))
            .lower_is_better(),
    ];
    for r in records.iter_mut() {
        *r = r
            .clone()
            .param("delay_us", delay)
            .param("requests", args.sync_requests);
    }

    let mut baseline: Option<BenchRecord> = None;
    for &depth in &args.depths {
        let flush_every = depth.min(8);
        let t = Instant::now();
        client.get_pages_pipelined(rel, 0..pages, LATEST_LSN, depth, flush_every, |_, _| Ok(()))?;
        let rate = f64::from(pages) / t.elapsed().as_secs_f64();
        let mut rec = BenchRecord::new("getpage", &format!("pipelined-d{depth}"), "pages/s", rate)
            .param("depth", depth)
            .param("flush_every", flush_every)
            .param("delay_us", delay)
            .param("pages", pages);
        match &baseline {
            Some(b) => rec = rec.against(b),
            None => baseline = Some(rec.clone()),
        }
        records.push(rec);
    }
    Ok(records)
}
