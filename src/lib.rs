//! udp-prefetch: the root crate — the pagestream protocol, the reference page server, the
//! compute side (backend read path, prewarm, scan), and the CLI's commands and benchmarks. See
//! `ARCHITECTURE.md` at the repository root for the architecture.
//!
//! Dependency rule: `protocol` depends on nothing here; `pageserver` and `compute` depend on
//! `protocol` (and `lfc`, `workers`), never on each other, not even in tests; `bench` may use
//! everything, `cmd` everything but `bench`; nothing below them uses `bench` or `cmd`. Of the
//! `workers` crate, `pageserver` uses only the layer shared by both sides of the UDP path
//! (`workers::datagram`, `udp`, `http`, `sched`), never the compute's daemon code
//! (`workers::daemon`, `pump`, `ingest`, `metrics`, `pidfile`). `tests/layering.rs` holds both
//! rules by scanning the sources.
//!
//! Owns no code: only the module tree.

pub mod compute;
pub mod pageserver;
pub mod protocol;

// The CLI's internals, not the library's API: `main.rs` is their user (the integration tests
// run the binary). They stay in the library so that `main.rs` can reach them.
#[doc(hidden)]
pub mod bench;
#[doc(hidden)]
pub mod cmd;
