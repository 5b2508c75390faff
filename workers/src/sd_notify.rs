//! The service manager's readiness protocol (systemd's `sd_notify(3)`): `READY=1` once a
//! process serves, `STOPPING=1` when it begins a clean stop, `STATUS=` lines for
//! `systemctl status`, and `WATCHDOG=1` pings while it is healthy.
//!
//! The protocol is one datagram of newline-separated `KEY=VALUE` lines sent to the Unix socket
//! named by `$NOTIFY_SOCKET`: an absolute path, or `@name` for a Linux abstract socket. It is
//! written here over `std::os::unix::net::UnixDatagram` rather than taken from the `sd-notify`
//! crate because that crate (0.5.0) connects to the variable's value as a path, so an abstract
//! `@` socket (as containers and some service managers hand out) fails with ENOENT, and the
//! whole protocol is these few lines. Both the page server and the worker daemon use it.
//!
//! Nothing here is needed to run: without `$NOTIFY_SOCKET` (not started by a service manager, or
//! not as `Type=notify`) [`Notifier::from_env`] returns `None`, and a send that fails is logged,
//! never fatal — a service manager that misses `READY=1` times the start out and says so.
//!
//! Owns: `Notifier` (the socket named by `$NOTIFY_SOCKET`, the watchdog interval) and its watch
//! loop. Part of the shared layer: it judges no health itself (each service passes its own `alive`
//! test), opens no socket but that Unix datagram one, and imports no other module of this crate.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often [`Notifier::watch`] looks at its stop flag (and retries a ping that found the
/// process unhealthy): short against a stop, long against the cost of an `alive` check.
const WATCH_POLL: Duration = Duration::from_millis(100);

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: UnixAddr,
    /// Half of `WATCHDOG_USEC` (systemd's advice: ping at twice the rate it checks), when the
    /// watchdog is on for this process.
    watchdog_ping: Option<Duration>,
    /// `STOPPING=1` is sent once, by whichever of the stop paths gets there first.
    stopping_sent: AtomicBool,
}

impl Notifier {
    /// The notifier the environment asks for: `None` when `NOTIFY_SOCKET` is unset or empty,
    /// or names something unusable (logged: a unit with `Type=notify` then times out starting,
    /// and the log says why).
    pub fn from_env() -> Option<Notifier> {
        let socket = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty())?;
        let watchdog_usec = std::env::var_os("WATCHDOG_USEC");
        let watchdog_pid = std::env::var_os("WATCHDOG_PID");
        match Notifier::new(
            &socket,
            watchdog_usec.as_deref(),
            watchdog_pid.as_deref(),
            std::process::id(),
        ) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(notify_socket = ?socket, error = %e,
                    "cannot use NOTIFY_SOCKET: no readiness notification will be sent");
                None
            }
        }
    }

    /// A notifier for `notify_socket` (`/path` or `@abstract`). The watchdog is on when
    /// `watchdog_usec` is a positive number and `watchdog_pid`, if set, is `pid` (a variable
    /// inherited from a parent service is not meant for us).
    pub fn new(
        notify_socket: &OsStr,
        watchdog_usec: Option<&OsStr>,
        watchdog_pid: Option<&OsStr>,
        pid: u32,
    ) -> io::Result<Notifier> {
        let bytes = notify_socket.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => UnixAddr::from_abstract_name(name)?,
            None if bytes.starts_with(b"/") => UnixAddr::from_pathname(notify_socket)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "NOTIFY_SOCKET must be an absolute path or an @abstract name",
                ))
            }
        };
        let number = |v: Option<&OsStr>| v.and_then(|v| v.to_str()?.trim().parse::<u64>().ok());
        let for_us = watchdog_pid.is_none_or(|_| number(watchdog_pid) == Some(u64::from(pid)));
        let watchdog_ping = number(watchdog_usec)
            .filter(|&usec| usec > 0 && for_us)
            .map(|usec| Duration::from_micros(usec) / 2);
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            addr,
            watchdog_ping,
            stopping_sent: AtomicBool::new(false),
        })
    }

    /// Sends `lines` (`KEY=VALUE`, one per line) as one datagram.
    pub fn send(&self, lines: &str) -> io::Result<()> {
        let sent = self.socket.send_to_addr(lines.as_bytes(), &self.addr)?;
        if sent != lines.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to NOTIFY_SOCKET",
            ));
        }
        Ok(())
    }

    /// Sends `lines`, logging a failure instead of returning it: the process serves either way.
    fn send_or_warn(&self, lines: &str) {
        if let Err(e) = self.send(lines) {
            tracing::warn!(error = %e, message = lines, "cannot notify the service manager");
        }
    }

    /// `READY=1` with a status line: call once the process serves (sockets bound and accepting).
    pub fn ready(&self, status: &str) {
        self.send_or_warn(&format!("READY=1\nSTATUS={}\n", one_line(status)));
    }

    /// A new status line for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send_or_warn(&format!("STATUS={}\n", one_line(status)));
    }

    /// `STOPPING=1` with a status line, once however often it is called: a clean stop began.
    pub fn stopping(&self, status: &str) {
        if !self.stopping_sent.swap(true, Ordering::SeqCst) {
            self.send_or_warn(&format!("STOPPING=1\nSTATUS={}\n", one_line(status)));
        }
    }

    /// How often to send `WATCHDOG=1`, if the service manager watches this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_ping
    }

    /// Until `stop` is set: sends `WATCHDOG=1` every [`Self::watchdog_interval`] while `alive()`
    /// says the process works. When it does not, no ping goes out (it is asked again every
    /// 100 ms), so a process that stopped working is restarted by the service manager once
    /// `WatchdogSec` passes without one. Without a watchdog it only waits for `stop`.
    pub fn watch(&self, stop: &AtomicBool, mut alive: impl FnMut() -> bool) {
        let mut next_ping = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if let Some(interval) = self.watchdog_ping {
                let now = Instant::now();
                if now >= next_ping && alive() {
                    self.send_or_warn("WATCHDOG=1\n");
                    next_ping = now + interval;
                }
            }
            std::thread::sleep(WATCH_POLL);
        }
    }
}

/// A status is one line of the protocol: a newline inside it would start a bogus assignment.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::Notifier;
    use std::ffi::OsStr;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    fn recv(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_ready_and_stopping_once_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.as_os_str(), None, None, 1).unwrap();
        n.ready("serving on 127.0.0.1:1\nsecond line");
        assert_eq!(
            recv(&listener),
            "READY=1\nSTATUS=serving on 127.0.0.1:1 second line\n"
        );
        n.stopping("stopping");
        n.stopping("again");
        n.status("done");
        assert_eq!(recv(&listener), "STOPPING=1\nSTATUS=stopping\n");
        assert_eq!(recv(&listener), "STATUS=done\n");
    }

    #[test]
    fn reaches_an_abstract_socket() {
        let name = format!("udpf-notify-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&UnixAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let n = Notifier::new(OsStr::new(&format!("@{name}")), None, None, 1).unwrap();
        n.status("hello");
        assert_eq!(recv(&listener), "STATUS=hello\n");
    }

    #[test]
    fn refuses_a_relative_path() {
        assert!(Notifier::new(OsStr::new("run/notify"), None, None, 1).is_err());
    }

    #[test]
    fn watchdog_is_on_only_for_its_own_pid() {
        let at = |usec: Option<&str>, pid: Option<&str>| {
            Notifier::new(
                OsStr::new("/nonexistent"),
                usec.map(OsStr::new),
                pid.map(OsStr::new),
                42,
            )
            .unwrap()
            .watchdog_interval()
        };
        assert_eq!(at(Some("2000000"), None), Some(Duration::from_secs(1)));
        assert_eq!(
            at(Some("2000000"), Some("42")),
            Some(Duration::from_secs(1))
        );
        assert_eq!(at(Some("2000000"), Some("7")), None);
        assert_eq!(at(Some("0"), None), None);
        assert_eq!(at(Some("x"), None), None);
        assert_eq!(at(None, None), None);
    }

    #[test]
    fn watch_pings_only_while_alive_and_returns_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let n = Notifier::new(path.as_os_str(), Some(OsStr::new("100")), None, 1).unwrap();
        let stop = AtomicBool::new(false);
        let mut checks = 0;
        // Alive for the first check only, then not: one ping, and `watch` ends on stop.
        n.watch(&stop, || {
            checks += 1;
            if checks >= 3 {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            checks == 1
        });
        let mut buf = [0u8; 64];
        let first = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..first], b"WATCHDOG=1\n");
        assert!(listener.recv(&mut buf).is_err(), "pinged while not alive");
    }
}
