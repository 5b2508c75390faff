//! Receive-socket setup: `SO_REUSEPORT` groups with large buffers and kernel drop counting.
//!
//! Owns: the socket options it sets (receive buffer, `SO_RXQ_OVFL`, `SO_REUSEPORT` and its BPF
//! steering, `UDP_GRO`, the sender's don't-fragment) and the route-MTU query. The steering program
//! reads one field of a datagram at a fixed offset (`BLKNO_OFFSET`) and nothing else; the module
//! receives and sends no payload and touches no LFC.

use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

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
///
/// Port 0 gets a port no other socket holds: asked to pick one for a socket with
/// `SO_REUSEPORT` set, the kernel may pick a port that another socket of the same user holds
/// with it, and the new socket silently joins that group (two test receivers bound this way
/// got each other's datagrams). So a plain bind picks the port, and the group binds it.
pub fn bind_reuseport(addr: SocketAddr, recv_buffer_bytes: usize) -> io::Result<UdpSocket> {
    if addr.port() != 0 {
        return bind_reuseport_at(addr, recv_buffer_bytes);
    }
    let mut attempts = 0;
    loop {
        attempts += 1;
        let free = UdpSocket::bind(addr)?.local_addr()?;
        match bind_reuseport_at(free, recv_buffer_bytes) {
            // Taken by someone else between the two binds: pick again.
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempts < PORT0_ATTEMPTS => {}
            r => return r,
        }
    }
}

/// Picks of a free port `bind_reuseport` makes for port 0 before it gives up.
const PORT0_ATTEMPTS: u32 = 8;

fn bind_reuseport_at(addr: SocketAddr, recv_buffer_bytes: usize) -> io::Result<UdpSocket> {
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
/// `addr` (whose port may be 0), the others on the port the first one got. With more than one
/// socket the group gets [`attach_spread_by_block`] (a refusal is logged, not fatal).
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
    if count > 1 {
        if let Err(e) = attach_spread_by_block(&sockets[0], count) {
            // The group still works: the kernel then hashes the 4-tuple, which gives each
            // sender's stream to one thread.
            tracing::warn!(error = %e, "cannot spread datagrams over the worker threads by block");
        }
    }
    Ok(sockets)
}

/// `SO_ATTACH_REUSEPORT_CBPF` in asm-generic's numbering, which x86-64, arm64 and most others
/// use (the libc crate names it for Android only; sparc, parisc and alpha number it otherwise,
/// and there the attach fails and the group falls back to the 4-tuple hash).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
/// Offset of the block number in a prefetch datagram (ARCHITECTURE §4 step 4).
const BLKNO_OFFSET: u32 = 52;

/// Spreads the datagrams of every sender over the `count` sockets of the group by block number
/// (a classic BPF program: `blkno % count`). The kernel's default picks a socket by a hash of
/// the 4-tuple, which sends all of one page server's datagrams to one socket and so to one
/// worker thread, however many there are. A GSO message is steered as one (by its first block),
/// so consecutive messages alternate; the reordering between threads that this allows is what
/// the backends' reorder grace absorbs. A datagram too short to hold a block number goes to
/// the first socket (the program's out-of-bounds load returns 0).
pub fn attach_spread_by_block(group_member: &UdpSocket, count: usize) -> io::Result<()> {
    let count = u32::try_from(count).map_err(|_| io::Error::other("too many sockets"))?;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let mut program = [
        // A = the big-endian u32 at the block number's offset of the UDP payload.
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, BLKNO_OFFSET),
        stmt(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, count),
        stmt(libc::BPF_RET | libc::BPF_A, 0),
    ];
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: passes a pointer to a live sock_fprog whose filter points at `program`, which
    // outlives the call (the kernel copies the program).
    let rc = unsafe {
        libc::setsockopt(
            group_member.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Turns UDP GRO on (or off again) for a receive socket (`UDP_GRO`, Linux 5.0+): the kernel may then hand one
/// receive a train of equal-size datagrams of one sender (a GSO send kept whole on loopback or
/// a veth, or packets the NIC's GRO coalesced), named by a `UDP_GRO` control message, instead
/// of one receive per datagram. The receives must then post room for a whole train
/// ([`Receiver::post_train`](super::Receiver::post_train)): what does not fit is lost.
///
/// The `SO_REUSEPORT` steering runs on a coalesced train as one, by its first datagram.
pub fn set_gro(socket: &UdpSocket, on: bool) -> io::Result<()> {
    set_int_opt(socket, libc::SOL_UDP, libc::UDP_GRO, libc::c_int::from(on))
}

/// The socket's effective receive buffer in bytes (`SO_RCVBUF` as the kernel reports it).
pub fn recv_buffer_size(socket: &impl AsFd) -> io::Result<usize> {
    SockRef::from(socket).recv_buffer_size()
}

/// Sets the receive buffer of the socket behind `fd` as [`bind_reuseport`] does (`bytes` asked
/// for, `SO_RCVBUFFORCE` where allowed), for a socket in use: what is queued stays, arrivals
/// that do not fit are dropped. Returns the size the kernel took (it accounts twice the value
/// asked for).
pub fn resize_recv_buffer(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    let socket = SockRef::from(&fd);
    set_recv_buffer(&socket, bytes)?;
    socket.recv_buffer_size()
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

/// Sets "don't fragment" on a sending socket (`IP_MTU_DISCOVER = IP_PMTUDISC_PROBE`, and the
/// IPv6 twin on an IPv6 socket): a datagram larger than the route's MTU fails to send
/// (`EMSGSIZE`) instead of leaving as IP fragments. PROBE rather than DO: the size is the
/// compute's stated MTU (`PrefetchTarget`), so an ICMP "fragmentation needed" (which anyone can
/// forge) must not shrink what the kernel lets out.
pub fn set_dont_fragment(socket: &UdpSocket) -> io::Result<()> {
    let v6 = socket.local_addr()?.is_ipv6();
    let (level, name, value) = if v6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )
    };
    set_int_opt(socket, level, name, value)
}

/// The MTU of the route to `peer` as this host sees it (`IP_MTU` of a UDP socket connected to
/// it; nothing is sent): what a compute states in its PrefetchTarget by default. 65536 on
/// loopback, the interface MTU (or a route's `mtu`) elsewhere.
pub fn route_mtu(peer: SocketAddr) -> io::Result<u32> {
    let unspecified: SocketAddr = if peer.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(unspecified)?;
    socket.connect(peer)?;
    let (level, name) = if peer.is_ipv6() {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU)
    };
    let mtu = get_int_opt(&socket, level, name)?;
    u32::try_from(mtu).map_err(|_| io::Error::other(format!("the kernel reported MTU {mtu}")))
}

#[cfg(test)]
mod mtu_tests {
    use super::*;

    #[test]
    fn loopback_reports_its_large_mtu_and_dont_fragment_refuses_oversize_sends() {
        let mtu = route_mtu("127.0.0.1:9".parse().unwrap()).unwrap();
        assert!(mtu >= 16384, "loopback MTU {mtu}");
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        set_dont_fragment(&tx).unwrap();
        let dest = rx.local_addr().unwrap();
        assert_eq!(tx.send_to(&[7u8; 8304], dest).unwrap(), 8304);
        if mtu < 65_507 {
            let e = tx.send_to(&vec![0u8; mtu as usize], dest).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE));
        }
    }
}
