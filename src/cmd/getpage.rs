//! `udp-prefetch getpage`: fetch one page over TCP and verify it.
//!
//! Owns: its flags, the verdict's printed and JSON names (`check_name`) and the `--out` file. Uses
//! only `protocol` (one `PageClient`, one GetPage, `verify_page_as`): no LFC, no UDP, no prefetch.

use super::{BadInput, Outcome};
use crate::protocol::client::PageClient;
use crate::protocol::page::{
    format_lsn, page_lsn, parse_lsn, verify_page_as, PageCheck, PageVerify,
};
use lfc::RelTag;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct GetPageArgs {
    /// Page server address.
    #[arg(long, default_value = "127.0.0.1:6400")]
    pub server: String,
    /// Relation as SPC/DB/REL/FORK, e.g. 1663/5/16384/0.
    #[arg(long)]
    pub rel: RelTag,
    /// Block number.
    #[arg(long)]
    pub blk: u32,
    /// Request LSN: X/Y, a decimal number, or `latest`.
    #[arg(long, default_value = "latest", value_parser = parse_lsn_arg)]
    pub lsn: u64,
    /// The LSN since which the caller knows the page is unmodified (the server first waits for
    /// WAL to reach it).
    #[arg(long, default_value = "0", value_parser = parse_lsn_arg)]
    pub not_modified_since: u64,
    /// Write the 8192-byte page to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub session: super::SessionArgs,
    /// One JSON object instead of the human line.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_lsn_arg(s: &str) -> Result<u64, String> {
    parse_lsn(s).ok_or_else(|| {
        format!("invalid LSN {s:?}: expected X/Y (hex halves), a decimal number or 'latest'")
    })
}

/// The verdict's name in JSON: snake_case like every other key and value this tool prints
/// (`valid`, `new`, `bad_checksum`, `bad_header`). Derived from the variant's name, so a verdict
/// added later is named the same way without a change here.
pub fn check_name(check: &PageCheck) -> String {
    let debug = format!("{check:?}");
    let variant = debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or_default();
    let mut name = String::with_capacity(variant.len() + 4);
    for (i, c) in variant.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_lowercase());
    }
    name
}

pub fn run(args: GetPageArgs) -> anyhow::Result<Outcome> {
    let opts = args.session.connect_options(&args.server)?;
    let mut client = PageClient::connect(&opts)?;
    let tag = args.rel.block(args.blk);
    let page = client
        .get_page(tag, args.lsn, args.not_modified_since)
        .map_err(|e| match e {
            crate::protocol::client::ClientError::Request(m) => anyhow::Error::new(BadInput(m)),
            other => anyhow::Error::new(other),
        })?;
    if let Some(path) = &args.out {
        std::fs::write(path, &page[..])
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    let check = verify_page_as(&page, args.blk, client.page_verify(args.lsn));
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "rel": args.rel.to_string(),
                "blkno": args.blk,
                "lsn": format_lsn(page_lsn(&page)),
                "check": check_name(&check),
                "verified": check.is_ok(),
            })
        );
    } else {
        let verdict = match check {
            PageCheck::Valid if client.page_verify(args.lsn) == PageVerify::Checksums => {
                "checksum ok".to_string()
            }
            PageCheck::Valid => "header ok (the cluster has no data checksums)".to_string(),
            PageCheck::New => "new (all-zero) page".to_string(),
            PageCheck::BadChecksum { stored, computed } => {
                format!("CHECKSUM MISMATCH (stored {stored:#06x}, computed {computed:#06x})")
            }
            PageCheck::BadHeader => "INVALID PAGE HEADER".to_string(),
        };
        println!("{tag}: LSN {}, {verdict}", format_lsn(page_lsn(&page)));
    }
    Ok(if check.is_ok() {
        Outcome::Success
    } else {
        Outcome::Failed
    })
}

#[cfg(test)]
mod tests {
    use super::check_name;
    use crate::protocol::page::PageCheck;

    #[test]
    fn verdicts_are_snake_case() {
        assert_eq!(check_name(&PageCheck::Valid), "valid");
        assert_eq!(check_name(&PageCheck::New), "new");
        assert_eq!(check_name(&PageCheck::BadHeader), "bad_header");
        let bad = PageCheck::BadChecksum {
            stored: 1,
            computed: 2,
        };
        assert_eq!(check_name(&bad), "bad_checksum");
    }
}
