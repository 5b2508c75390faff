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
pub mod service_unit;
pub mod sim;
pub mod workers;

use crate::protocol::client::ConnectOptions;
use crate::protocol::identity::NeonId;
use std::fmt;

/// The Neon tenant and timeline a command's pagestream session is for (`pagestream_v3 <tenant>
/// <timeline>`). A backend binds its LFC to them and to the server's system identifier, and
/// refuses an LFC bound to others (`lfc::Binding`).
#[derive(Debug, Clone, clap::Args)]
pub struct TimelineArgs {
    /// Neon tenant id of the session, 32 hex digits; the LFC is bound to it.
    #[arg(long, default_value_t = NeonId::ZERO)]
    pub tenant: NeonId,
    /// Neon timeline id of the session, 32 hex digits; the LFC is bound to it.
    #[arg(long, default_value_t = NeonId::ZERO)]
    pub timeline: NeonId,
}

impl TimelineArgs {
    /// `opts` for this tenant and timeline.
    pub fn apply(&self, opts: ConnectOptions) -> ConnectOptions {
        opts.timeline(self.tenant, self.timeline)
    }
}

/// The shard map of `--server` given once per shard (in shard order) and `--stripe-pages`, or
/// why not.
pub fn shard_map(
    servers: &[String],
    stripe_pages: u32,
) -> Result<crate::protocol::shard::ShardMap, BadInput> {
    let map = crate::protocol::shard::ShardMap::new(servers.to_vec(), stripe_pages);
    map.layout()
        .map_err(|e| BadInput(format!("--server given {} times: {e}", servers.len())))?;
    Ok(map)
}

/// TLS to the page server, for the commands that connect to one.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// Connect over TLS (PostgreSQL's SSLRequest) and verify the page server's certificate
    /// against the CA certificates in this PEM file and the host name or IP address of
    /// --server (libpq's sslmode=verify-full). The server then encrypts prefetch datagrams too.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// `opts` with TLS when asked for; an unreadable CA file is bad input.
    pub fn apply(&self, opts: ConnectOptions) -> Result<ConnectOptions, BadInput> {
        let Some(ca) = &self.tls_ca else {
            return Ok(opts);
        };
        let tls = crate::protocol::tls::ClientTls::from_ca_file(ca)
            .map_err(|e| BadInput(format!("--tls-ca: {e}")))?;
        Ok(opts.tls(Some(tls)))
    }
}

/// How a command reaches and authenticates with its page server, beside `--server`: the
/// tenant and timeline, TLS, and a password. One group for every command that opens a
/// pagestream session (`getpage`, `scan`, `prewarm run`), so they take the same flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SessionArgs {
    #[command(flatten)]
    pub timeline: TimelineArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Cleartext password, when the page server requires one.
    #[arg(long, env = "UDPF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl SessionArgs {
    /// The connection options for `server` (`HOST:PORT`); an unreadable CA file is bad input.
    pub fn connect_options(&self, server: &str) -> Result<ConnectOptions, BadInput> {
        self.tls.apply(
            self.timeline
                .apply(ConnectOptions::new(server.to_string()).token(self.token.clone())),
        )
    }
}

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

/// The address of an HTTP metrics endpoint (`--metrics`): metrics have no customary port, so a
/// port is required (0 for any).
pub fn parse_metrics(s: &str) -> Result<std::net::SocketAddr, String> {
    let probe = listen_addr(s, 0)?;
    if probe.port() == 0 && !s.trim().ends_with(":0") {
        return Err(format!(
            "{s:?} names no port: pass HOST:PORT, e.g. 127.0.0.1:9187"
        ));
    }
    Ok(probe)
}

/// A server's listen address from the command line: `host:port`, `host` alone (then
/// `default_port`), or a name such as `localhost:6400`, resolved once at start; the first
/// address the resolver returns is the one listened on.
pub fn listen_addr(s: &str, default_port: u16) -> Result<std::net::SocketAddr, String> {
    crate::protocol::client::resolve(s, default_port)
        .map(|addrs| addrs[0])
        .map_err(|e| format!("cannot resolve {s:?}: {e}"))
}

/// The error and its causes on one line, each cause once. Many errors here (and in `lfc` and
/// `workers`) put their cause's text in their own message *and* expose it as `source()`, so
/// anyhow's `{:#}` printed it twice (`Connection refused (os error 111): Connection refused (os
/// error 111)`); a cause whose text the line already holds adds nothing and is skipped.
pub fn error_report(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Exit status for an error: 2 when any cause in the chain is bad input, else 1. An LFC that
/// belongs to another timeline is bad input too: the operator pointed a backend at the wrong
/// cache (or must re-create it), and nothing was done.
pub fn exit_status_for(err: &anyhow::Error) -> u8 {
    let bad_input = |e: &(dyn std::error::Error + 'static)| {
        e.is::<BadInput>()
            || matches!(
                e.downcast_ref::<lfc::BindError>(),
                Some(lfc::BindError::OtherTimeline { .. })
            )
    };
    if err.chain().any(bad_input) {
        EXIT_BAD_INPUT
    } else {
        EXIT_FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::error_report;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect to 127.0.0.1:1: {source}")]
    struct Wrapped {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn error_report_prints_each_cause_once() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let text = refused.to_string();
        let err = anyhow::Error::new(Wrapped { source: refused });
        assert_eq!(
            error_report(&err),
            format!("cannot connect to 127.0.0.1:1: {text}")
        );
        // Context that does not repeat its cause still shows both.
        let err = anyhow::Error::new(std::io::Error::other("disk full")).context("writing x");
        assert_eq!(error_report(&err), "writing x: disk full");
    }
}
