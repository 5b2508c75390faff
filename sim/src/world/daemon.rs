//! The daemon's lifecycle: it registers in the LFC header as it starts listening and heartbeats
//! in virtual time; absent, killed or paused as `SimConfig::daemon` says. (What its workers do
//! while it is paused or gone is in `worker` and `net`.)
//!
//! Owns: the daemon's address and pid as registered, and its heartbeat. Touches nothing else of
//! the LFC header.

use super::{Ev, World};
use crate::config::{DaemonFault, SimConfig, START_NS};
use lfc::Lfc;
use std::net::SocketAddr;

/// The compute's prefetch port, as registered with PrefetchTarget.
pub(super) const COMPUTE_ADDR: ([u8; 4], u16) = ([10, 0, 0, 1], 6000);

/// The simulated daemon's pid in the LFC header (never signalled).
const DAEMON_PID: u32 = 1;

impl World<'_> {
    /// `workers::daemon`'s heartbeat: refreshed while the daemon runs, silent while it is
    /// paused, gone with it. Stops when the workload is done (so the run can end).
    pub(super) fn heartbeat(&mut self) {
        if self.cfg.daemon.gone_at(self.now) || self.actors_done() {
            return;
        }
        if self.cfg.daemon.running_at(self.now) {
            self.lfc.daemon_heartbeat(self.now);
        }
        self.schedule(self.now + lfc::DAEMON_HEARTBEAT_NS, Ev::Heartbeat);
    }

    /// The run's daemon fault, counted once in the report.
    pub(super) fn count_daemon_fault(&mut self) {
        match &self.cfg.daemon {
            DaemonFault::Healthy => {}
            DaemonFault::Absent => self.report.faults.daemon_absent += 1,
            DaemonFault::KilledAt(_) => self.report.faults.daemon_killed += 1,
            DaemonFault::Paused(_) => self.report.faults.daemon_paused += 1,
        }
    }
}

/// The daemon registers in the LFC header as it starts listening, before any backend (unless it
/// is absent).
pub(super) fn register(cfg: &SimConfig, lfc: &Lfc) {
    if cfg.daemon != DaemonFault::Absent {
        lfc.register_daemon(SocketAddr::from(COMPUTE_ADDR), DAEMON_PID, 0, START_NS);
    }
}
