//! The prefetch datagram format, its sans-IO validation and ingest, the UDP socket layer, and
//! the worker daemon.

pub mod daemon;
pub mod datagram;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod pidfile;
pub mod prom;
pub mod pump;
pub mod sched;
pub mod udp;
