//! TLS on the pagestream's TCP connections (PostgreSQL's `SSLRequest` negotiation, rustls with
//! the aws-lc-rs provider): the server's and the client's configuration from PEM files, the
//! negotiation of either side, and `Stream`, a connection that is plain TCP or TLS.
//!
//! Owns: the rustls connection of a TCP connection and its locking. Parses no PostgreSQL message
//! beyond the SSLRequest's one-byte answer, and imports no `pageserver` or `compute` code.
//!
//! **Why a `Stream` clones, and how.** A connection is read and written by two parties: the
//! page server's reader thread and its responder thread (`pageserver::conn`), the client's
//! `FramedReader` and `BufWriter`. A plain `TcpStream` is simply cloned. A TLS connection has one
//! state for both directions (a rustls `Connection`), which is not `Sync`, so the clones share it
//! behind a mutex, and the mutex is never held across a blocking socket call: the reader reads
//! ciphertext from the socket unlocked and then decrypts it under the lock; the writer encrypts
//! under the lock and writes the ciphertext unlocked. Holding it across a read would stall the
//! responder for as long as the client is silent; across a write, a client that writes requests
//! before it reads responses would stall the reader too, which plain TCP never does (the reader
//! keeps reading while the responder waits to write, up to its queue). Records must still reach
//! the socket in the order they were sealed (their sequence numbers), so sealing and writing
//! happen under a second lock, `write`, taken before the connection's (always in that order).
//! The alternatives were a thread owning the connection with both sides passing frames to it
//! over channels (a thread and two hand-offs per response, on the GetPage path), or rustls'
//! unbuffered API (the same split, done by hand).

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;

/// The server's answer to an SSLRequest that starts a TLS handshake (`N` refuses).
pub const TLS_ACCEPTED: u8 = b'S';
/// The server's answer refusing encryption.
pub const TLS_REFUSED: u8 = b'N';

/// Ciphertext read from the socket per read: a little more than one full TLS record.
const CIPHERTEXT_READ: usize = 18 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no {what} (expected PEM)")]
    Empty { what: &'static str, path: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            what,
            path: path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// The page server's TLS: its certificate chain and key.
#[derive(Clone)]
pub struct ServerTls(Arc<rustls::ServerConfig>);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// From PEM files: `cert` the certificate chain (the server's first), `key` its private key
    /// (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let chain = certificates(cert, "certificate")?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Read {
            what: "private key",
            path: key.display().to_string(),
            source,
        })?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        // No session resumption: a backend keeps its connection, and tickets would be queued
        // behind the handshake for nothing.
        config.send_tls13_tickets = 0;
        Ok(ServerTls(Arc::new(config)))
    }
}

/// The client's TLS: the certificate authorities the server's certificate must chain to.
#[derive(Clone)]
pub struct ClientTls(Arc<rustls::ClientConfig>);

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// Trusts the certificates in the PEM file `ca` (and nothing else).
    pub fn from_ca_file(ca: &Path) -> Result<ClientTls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(ca, "CA certificate")? {
            roots.add(cert)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls(Arc::new(config)))
    }
}

/// The name the server's certificate must carry for a connection to `addr` (as given: a host
/// name, `host:port`, an IP address or `[v6]:port`), or the address connected to when `addr`
/// names none that a certificate can.
pub fn server_name(addr: &str, connected: SocketAddr) -> ServerName<'static> {
    let addr = addr.trim();
    let host = if let Some(rest) = addr.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if addr.parse::<std::net::IpAddr>().is_ok() {
        addr
    } else {
        addr.rsplit_once(':').map_or(addr, |(h, _)| h)
    };
    ServerName::try_from(host.to_string()).unwrap_or_else(|_| ServerName::from(connected.ip()))
}

/// The shared state of a TLS connection's clones (module docs).
pub struct Tls {
    sock: TcpStream,
    /// Serialises sealing and writing, so records reach the socket in their sequence order.
    /// Taken before `state`.
    write: Mutex<()>,
    state: Mutex<TlsState>,
}

struct TlsState {
    conn: rustls::Connection,
    /// Ciphertext read from the socket that rustls has not taken yet: it takes what fits
    /// its buffers, and refuses more while decrypted data waits to be read.
    cipher: Vec<u8>,
    /// The socket reached its end.
    eof: bool,
}

/// A connection, plain or TLS; clones share it (module docs).
pub enum Stream {
    Plain(TcpStream),
    Tls(Arc<Tls>),
}

impl Stream {
    /// Another handle on the same connection, for a second reader or writer.
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Plain(s) => Stream::Plain(s.try_clone()?),
            Stream::Tls(t) => Stream::Tls(t.clone()),
        })
    }

    /// The TCP socket under it (addresses, timeouts, `TCP_NODELAY`).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.sock,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Closes both directions (after TLS' close_notify), unblocking any reader.
    pub fn shutdown(&self) -> io::Result<()> {
        if let Stream::Tls(t) = self {
            let _w = t.write.lock();
            let out = {
                let mut st = t.state.lock();
                st.conn.send_close_notify();
                sealed(&mut st.conn)
            };
            let _ = (&t.sock).write_all(&out);
        }
        self.tcp().shutdown(Shutdown::Both)
    }

    /// The server's side: after it answered `TLS_ACCEPTED` to an SSLRequest, the handshake on
    /// `sock` (bounded by the socket's read timeout).
    pub fn accept(sock: TcpStream, tls: &ServerTls) -> io::Result<Stream> {
        let conn = rustls::ServerConnection::new(tls.0.clone()).map_err(io::Error::other)?;
        Stream::handshake(sock, conn.into())
    }

    /// The client's side: sends an SSLRequest on `sock`, and on `TLS_ACCEPTED` runs the
    /// handshake, verifying the server's certificate for `name`.
    pub fn connect(
        mut sock: TcpStream,
        tls: &ClientTls,
        name: ServerName<'static>,
    ) -> Result<Stream, ConnectTlsError> {
        let mut request = Vec::with_capacity(8);
        crate::protocol::pgwire::FrontendMessage::SslRequest.encode(&mut request);
        sock.write_all(&request)?;
        // One byte, read unbuffered: nothing after it may be taken before the handshake.
        let mut answer = [0u8; 1];
        sock.read_exact(&mut answer)?;
        match answer[0] {
            TLS_ACCEPTED => {}
            TLS_REFUSED => return Err(ConnectTlsError::Refused),
            other => return Err(ConnectTlsError::Answer(other)),
        }
        let conn = rustls::ClientConnection::new(tls.0.clone(), name).map_err(io::Error::other)?;
        Ok(Stream::handshake(sock, conn.into())?)
    }

    fn handshake(mut sock: TcpStream, mut conn: rustls::Connection) -> io::Result<Stream> {
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        while conn.wants_write() {
            conn.write_tls(&mut sock)?;
        }
        Ok(Stream::Tls(Arc::new(Tls {
            sock,
            write: Mutex::new(()),
            state: Mutex::new(TlsState {
                conn,
                cipher: Vec::new(),
                eof: false,
            }),
        })))
    }
}

/// Why the client's TLS negotiation failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectTlsError {
    #[error("the server does not accept TLS (it answered the SSLRequest with 'N')")]
    Refused,
    #[error("the server answered the SSLRequest with {0:#04x}, not 'S' or 'N'")]
    Answer(u8),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Everything rustls has sealed and not yet handed out.
fn sealed(conn: &mut rustls::Connection) -> Vec<u8> {
    let mut out = Vec::new();
    while conn.wants_write() {
        if conn.write_tls(&mut out).is_err() {
            break; // Writing into a Vec does not fail.
        }
    }
    out
}

impl Tls {
    /// Writes what rustls has sealed (an alert, a key update's answer) in record order.
    fn flush_sealed(&self) -> io::Result<()> {
        let _w = self.write.lock();
        let out = sealed(&mut self.state.lock().conn);
        (&self.sock).write_all(&out)
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut chunk = [0u8; CIPHERTEXT_READ];
        loop {
            {
                let mut st = self.state.lock();
                match st.conn.reader().read(buf) {
                    Ok(n) => return Ok(n), // 0: the peer's close_notify.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // The peer closed TCP without close_notify. Every message on these
                    // connections says its own length, so a cut inside one is still reported
                    // (`FramedError::UnexpectedEof`); one between messages is an ordinary close.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
                if !st.cipher.is_empty() || st.eof {
                    let state = &mut *st;
                    let mut rest = &state.cipher[..];
                    let taken = state.conn.read_tls(&mut rest);
                    let used = state.cipher.len() - rest.len();
                    state.cipher.drain(..used);
                    taken?;
                    let processed = state.conn.process_new_packets();
                    let wants_write = state.conn.wants_write();
                    // `flush_sealed` takes `write` and then this lock, in that order.
                    drop(st);
                    if wants_write {
                        self.flush_sealed()?;
                    }
                    if let Err(e) = processed {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    continue;
                }
            }
            // Unlocked while it blocks: the writer seals and writes meanwhile.
            let n = (&self.sock).read(&mut chunk)?;
            let mut st = self.state.lock();
            if n == 0 {
                st.eof = true;
            } else {
                st.cipher.extend_from_slice(&chunk[..n]);
            }
        }
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let _w = self.write.lock();
        let (n, out) = {
            let mut st = self.state.lock();
            let n = st.conn.writer().write(buf)?;
            (n, sealed(&mut st.conn))
        };
        // Unlocked while it blocks: the reader decrypts meanwhile.
        (&self.sock).write_all(&out)?;
        Ok(n)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    /// A TLS write is on the socket when `write` returns.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    /// A server's TLS for 127.0.0.1 and a client's trusting it (rcgen, made per test).
    fn configs(dir: &Path) -> (ServerTls, ClientTls) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let file = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let server = ServerTls::from_pem_files(
            &file("cert.pem", cert.pem()),
            &file("key.pem", key.serialize_pem()),
        )
        .unwrap();
        (
            server,
            ClientTls::from_ca_file(&file("ca.pem", ca.pem())).unwrap(),
        )
    }

    fn pattern(i: usize) -> u8 {
        (i * 7 % 251) as u8
    }

    /// The reason for the locking design: a peer that writes everything before it reads. The
    /// server echoes with a reader and a writer thread on clones of one TLS stream; once the
    /// echo fills the socket buffers the writer blocks in its write, and the reader must go on
    /// reading (and decrypting) or both ends wait for each other forever.
    #[test]
    fn a_stream_reads_while_its_clone_is_blocked_writing() {
        const LEN: usize = 16 << 20;
        let dir = tempfile::tempdir().unwrap();
        let (server_tls, client_tls) = configs(dir.path());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            let mut request = [0u8; 8];
            sock.read_exact(&mut request).unwrap();
            sock.write_all(&[TLS_ACCEPTED]).unwrap();
            let mut reader = Stream::accept(sock, &server_tls).unwrap();
            let mut writer = reader.try_clone().unwrap();
            let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
            let echo = std::thread::spawn(move || {
                for chunk in rx {
                    writer.write_all(&chunk).unwrap();
                }
                writer.shutdown().unwrap();
            });
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = reader.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                tx.send(buf[..n].to_vec()).unwrap();
            }
            drop(tx);
            echo.join().unwrap();
        });
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let sock = TcpStream::connect(addr).unwrap();
            let name = server_name("127.0.0.1", addr);
            let mut client = Stream::connect(sock, &client_tls, name).unwrap();
            let data: Vec<u8> = (0..LEN).map(pattern).collect();
            client.write_all(&data).unwrap();
            // Half-close after close_notify: the server's reader sees the end of input.
            if let Stream::Tls(t) = &client {
                let _w = t.write.lock();
                let out = {
                    let mut st = t.state.lock();
                    st.conn.send_close_notify();
                    sealed(&mut st.conn)
                };
                (&t.sock).write_all(&out).unwrap();
            }
            let mut back = Vec::with_capacity(LEN);
            client.read_to_end(&mut back).unwrap();
            done_tx.send(back == data).unwrap();
        });
        let echoed = done_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the echo deadlocked");
        assert!(echoed, "the echo differs from what was sent");
        server.join().unwrap();
    }

    #[test]
    fn server_names_come_from_the_address_as_given() {
        let at: SocketAddr = "10.0.0.1:6400".parse().unwrap();
        let name = |a| server_name(a, at);
        let expect = |n: &str| ServerName::try_from(n.to_string()).unwrap();
        assert_eq!(name("db.example:6400"), expect("db.example"));
        assert_eq!(name("db.example"), expect("db.example"));
        assert_eq!(name("127.0.0.1:6400"), expect("127.0.0.1"));
        assert_eq!(name("127.0.0.1"), expect("127.0.0.1"));
        assert_eq!(name("[::1]:6400"), expect("::1"));
        assert_eq!(name("::1"), expect("::1"));
        // Nothing a certificate can name: the address connected to.
        assert_eq!(name("bad name:1"), expect("10.0.0.1"));
    }
}
