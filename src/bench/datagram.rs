//! `udp-prefetch bench datagram`: the cost of sealing and opening a datagram per page under
//! each protection (`token`: the page in the clear, the stream token and an XXH3-64 checksum;
//! `aead`: AES-128-GCM), against copying the same bytes, in one run. The CPU decides: AWS-LC
//! takes its VAES/AVX-512 path where the CPU has one and a much slower one where it does not,
//! so the table's machine line names the CPU and its instruction sets.
//!
//! Owns: nothing shared; it drives the public APIs of `workers::datagram` and `protocol::page` and
//! may not be imported by the library's other modules.

use super::BenchRecord;
use std::time::Instant;
use workers::datagram::{checksum_path, DatagramHeader, DatagramKey, Protection, DATAGRAM_LEN};

#[derive(Debug, Clone, clap::Args)]
pub struct DatagramBenchArgs {
    /// Pages per case.
    #[arg(long, default_value_t = 200_000)]
    pub pages: u32,
}

pub fn run(args: &DatagramBenchArgs) -> anyhow::Result<Vec<BenchRecord>> {
    anyhow::ensure!(args.pages > 0, "--pages must be positive");
    let n = args.pages;
    let page =
        crate::protocol::page::synthetic_page(lfc::RelTag::new(1663, 5, 16384, 0).block(1), 16);
    let rate = |f: &mut dyn FnMut(u32)| {
        let t = Instant::now();
        for i in 0..n {
            f(i);
        }
        f64::from(n) / t.elapsed().as_secs_f64()
    };
    let mut copy = Box::new([0u8; DATAGRAM_LEN]);
    let memcpy = rate(&mut |i| {
        copy[..8192].copy_from_slice(&page[..]);
        copy[0] = i as u8;
        std::hint::black_box(&copy);
    });
    let base = BenchRecord::new("datagram", "memcpy", "pages/s", memcpy).param("pages", n);
    let us = |r: f64| (1e8 / r).round() / 100.0;
    let mut records = vec![base.clone()];
    for protection in [Protection::Token, Protection::Aead] {
        let key = DatagramKey::new(1, [7; 32]);
        let stream = key.stream_with(workers::datagram::random_stream_id()?, protection);
        let mut opener = key.opener();
        let mut opened = Box::new([0u8; 8192]);
        let mut out = Box::new([0u8; DATAGRAM_LEN]);
        let seal = rate(&mut |i| {
            let hdr = DatagramHeader {
                key_id: 1,
                reqid: u64::from(i),
                ..DatagramHeader::default()
            };
            stream
                .seal(&hdr, &page, &mut out)
                .expect("a fresh stream seals");
            std::hint::black_box(&out);
        });
        let open = rate(&mut |_| {
            std::hint::black_box(opener.open_bytes(&out[..], &mut opened).is_ok());
        });
        anyhow::ensure!(
            opener.open_bytes(&out[..], &mut opened).is_ok() && opened[..] == page[..],
            "a sealed {} datagram did not open to its page",
            protection.as_str()
        );
        let name = protection.as_str();
        // The token's cost is the checksum's, whose code path the CPU decides.
        let path = |r: BenchRecord| match protection {
            Protection::Token => r.param("checksum_path", checksum_path()),
            Protection::Aead => r,
        };
        records.push(path(
            BenchRecord::new("datagram", &format!("{name}-seal"), "pages/s", seal)
                .param("us_per_page", us(seal))
                .against(&base),
        ));
        records.push(path(
            BenchRecord::new("datagram", &format!("{name}-open"), "pages/s", open)
                .param("us_per_page", us(open))
                .param(
                    "seal_plus_open_us",
                    ((us(seal) + us(open)) * 100.0).round() / 100.0,
                )
                .against(&base),
        ));
    }
    Ok(records)
}
