//! The plain-text HTTP endpoint of both servers (`/metrics`, `/healthz`): one thread, one
//! request per connection, HTTP/1.0 answers. Enough for Prometheus and a health probe; a slow
//! or silent client holds the thread for at most `READ_TIMEOUT`.
//!
//! Owns only the socket handling: what each path answers is the caller's `route`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Bytes read of a request (the request line and headers; bodies are not expected).
const MAX_REQUEST: usize = 4096;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the accept loop re-checks `stop`.
const POLL: Duration = Duration::from_millis(50);

/// The content type of Prometheus' text exposition format.
pub const PROMETHEUS: &str = "text/plain; version=0.0.4";

/// A path's answer: content type and body (200), or `None` (404).
pub type Answer = Option<(&'static str, String)>;

/// The answer to `GET /healthz` of a running server.
pub fn healthy() -> Answer {
    Some(("text/plain", "ok\n".to_string()))
}

/// One `GET path` to an endpoint like this one; the whole response, status line first (for
/// health probes and tests).
pub fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, READ_TIMEOUT)?;
    s.set_read_timeout(Some(5 * READ_TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Serves `GET` requests on `listener` until `stop`, answering each path with `route`.
pub fn serve(listener: TcpListener, stop: &AtomicBool, route: impl Fn(&str) -> Answer) {
    if listener.set_nonblocking(true).is_err() {
        tracing::warn!("HTTP endpoint disabled: cannot make its socket non-blocking");
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        let mut stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(POLL);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                std::thread::sleep(POLL);
                continue;
            }
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
        let mut buf = [0u8; MAX_REQUEST];
        let mut len = 0;
        while len < buf.len() {
            match stream.read(&mut buf[len..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n")
                || buf[..len].windows(2).any(|w| w == b"\n\n")
            {
                break;
            }
        }
        let request = String::from_utf8_lossy(&buf[..len]);
        let path = request.split_whitespace().nth(1).unwrap_or("");
        let answer = if request.starts_with("GET ") {
            route(path)
        } else {
            None
        };
        let response = match answer {
            Some((content_type, body)) => format!(
                "HTTP/1.0 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
            None => "HTTP/1.0 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n".to_string(),
        };
        let _ = stream.write_all(response.as_bytes());
    }
}
