//! udp-prefetch: the root crate — TCP page protocol, reference page server, backend client,
//! tools and benchmarks. See `ARCHITECTURE.md` at the repository root for the architecture.
//!
//! Owns no code: only the module tree and the re-export of `workers::sched`. It also exports
//! `cmd` and `bench` (ARCHITECTURE §10), which none of the cores (`pageserver`, `compute`,
//! `protocol`) imports.

pub mod bench;
pub mod cmd;
pub mod compute;
pub mod pageserver;
pub mod protocol;
pub use workers::sched;
