//! Receive-socket setup: `SO_REUSEPORT` groups with large buffers and kernel drop counting.

use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Creates a non-blocking UDP socket bound to `addr` with `SO_REUSEADDR` + `SO_REUSEPORT`,
/// `SO_RXQ_OVFL` on (so received datagrams carry the kernel's cumulative drop counter) and a
/// receive buffer of `recv_buffer_bytes` (0 keeps the system default).
///
/// The buffer is set with `SO_RCVBUFFORCE`, which ignores `net.core.rmem_max` but needs
/// `CAP_NET_ADMIN`; without it `SO_RCVBUF` is used and the kernel silently caps the size. The
/// effective size (as the kernel reports it, i.e. doubled for bookkeeping) is logged at debug
/// level, with a warning when it is below the request; [`recv_buffer_size`] reads it back.
///
/// Every thread of a worker group calls this with the same address; the kernel spreads
/// datagrams over the group by a hash of the 4-tuple.
pub fn bind_reuseport(addr: SocketAddr, recv_buffer_bytes: usize) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if recv_buffer_bytes > 0 {
        set_recv_buffer(&socket, recv_buffer_bytes)?;
    }
    set_int_opt(&socket, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let socket: UdpSocket = socket.into();
    let effective = recv_buffer_size(&socket)?;
    if recv_buffer_bytes > 0 && effective < recv_buffer_bytes {
        tracing::warn!(
            requested = recv_buffer_bytes,
            effective,
            "UDP receive buffer is smaller than requested: raise net.core.rmem_max or grant \
             CAP_NET_ADMIN"
        );
    }
    tracing::debug!(local = ?socket.local_addr().ok(), recv_buffer = effective, "bound UDP socket");
    Ok(socket)
}

/// Binds `count` sockets of one `SO_REUSEPORT` group with [`bind_reuseport`]: the first on
/// `addr` (whose port may be 0), the others on the port the first one got.
pub fn bind_reuseport_group(
    addr: SocketAddr,
    count: usize,
    recv_buffer_bytes: usize,
) -> io::Result<Vec<UdpSocket>> {
    let mut sockets = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let s = bind_reuseport(addr, recv_buffer_bytes)?;
        addr.set_port(s.local_addr()?.port());
        sockets.push(s);
    }
    Ok(sockets)
}

/// The socket's effective receive buffer in bytes (`SO_RCVBUF` as the kernel reports it).
pub fn recv_buffer_size(socket: &UdpSocket) -> io::Result<usize> {
    SockRef::from(socket).recv_buffer_size()
}

fn set_recv_buffer(socket: &Socket, bytes: usize) -> io::Result<()> {
    // The kernel doubles the value and caps it at INT_MAX; clamp so the int never overflows.
    let value = bytes.min(i32::MAX as usize / 2) as libc::c_int;
    match set_int_opt(socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, value) {
        Ok(()) => Ok(()),
        // EPERM without CAP_NET_ADMIN: fall back to the capped option.
        Err(_) => socket.set_recv_buffer_size(value as usize),
    }
}

pub(crate) fn set_int_opt(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size; the fd is owned by `socket`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(crate) fn get_int_opt(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value/len point to live locals of the sizes the kernel is told about.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}
