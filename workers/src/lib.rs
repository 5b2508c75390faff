//! The prefetch datagram format, its sans-IO validation and ingest, the UDP socket layer, and
//! the worker daemon (ARCHITECTURE §3).
//!
//! The crate has two layers, and the page server may use only the lower one:
//!
//! - **Shared by both sides of the UDP path** (the page server's sender and the compute's
//!   daemon): [`datagram`] (the format, sealing and opening), [`udp`] (the platform socket
//!   layer, including the `GsoSender` the page server sends with), [`http`] (the `/metrics`
//!   and `/healthz` endpoint both servers serve), [`prom`] (the Prometheus text helpers and the
//!   process metrics both render), [`sd_notify`] (the service manager's readiness protocol both
//!   services speak) and [`sched`] (thread scheduling and default pool sizes). These know
//!   nothing of the LFC's ingest or of the daemon.
//! - **The compute's**: [`daemon`] (the worker daemon's shell), [`pump`] (each receive
//!   thread's slots), [`ingest`] (what a worker does with one datagram), [`junk`] (each
//!   receive thread's bound on the work a flood of forged datagrams makes), [`metrics`] (the
//!   workers' counters) and [`pidfile`]. They may use the shared layer, never the reverse.
//!
//! The rule keeps the page server from linking the compute's daemon code: nothing under the
//! root crate's `src/pageserver/` names `workers::daemon`, `workers::pump`, `workers::ingest`,
//! `workers::junk`, `workers::metrics` or `workers::pidfile` (the root crate's `tests/layering.rs` checks it).
//!
//! Owns: no code, only the module tree and its two layers. Of this workspace it depends on `lfc`
//! alone: it never imports the root crate, the simulator or the C library.

// The layer shared with the page server.
pub mod datagram;
pub mod http;
pub mod prom;
pub mod sched;
pub mod sd_notify;
pub mod udp;

// The compute's: the worker daemon and what only it runs.
pub mod daemon;
pub mod ingest;
pub mod junk;
pub mod metrics;
pub mod pidfile;
pub mod pump;
