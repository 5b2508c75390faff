//! The prefetch datagram format, its sans-IO validation and ingest, the UDP socket layer, and
//! the worker daemon; the service manager's readiness protocol (`sd_notify`), shared with the page
//! server.

pub mod daemon;
pub mod datagram;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod pidfile;
pub mod prom;
pub mod pump;
pub mod sched;
pub mod sd_notify;
pub mod udp;
