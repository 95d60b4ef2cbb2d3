//! The WireGuard UDP socket: dual-stack, non-blocking, batched through
//! quinn-udp (recvmmsg with UDP GRO on receive, UDP GSO on send).

use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

use super::wake::{self, Ready, WakeFd};

/// Send buffer size we ask for; a large one absorbs bursts at line rate.
const SOCKET_BUFFER: usize = 8 << 20;
/// Receive buffer size we ask for (the kernel doubles it for overhead):
/// enough for a few milliseconds of bursts while the receive thread is off
/// the CPU, small enough that a TCP stream cannot park a long queue in front
/// of everything else (a larger one only adds delay under load).
const RECV_BUFFER: usize = 1 << 20;

/// A bound WireGuard UDP socket.
#[derive(Debug)]
pub struct UdpEndpoint {
    socket: UdpSocket,
    state: UdpSocketState,
    dual_stack: bool,
    port: u16,
}

impl UdpEndpoint {
    /// Binds `[::]:port` (dual-stack), or `0.0.0.0:port` where IPv6 is off.
    /// Port 0 picks a free port.
    pub fn bind(port: u16) -> io::Result<UdpEndpoint> {
        let (socket, dual_stack) = match bind_socket(Domain::IPV6, port) {
            Ok(s) => (s, true),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(e),
            Err(_) => (bind_socket(Domain::IPV4, port)?, false),
        };
        let socket: UdpSocket = socket.into();
        let state = UdpSocketState::new((&socket).into())?;
        allow_fragments(&socket, dual_stack)?;
        let port = socket.local_addr()?.port();
        Ok(UdpEndpoint {
            socket,
            state,
            dual_stack,
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn raw_fd(&self) -> i32 {
        self.socket.as_raw_fd()
    }

    /// How many datagrams one GSO send may carry (1 without GSO).
    pub fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Sets SO_MARK so policy routing can keep tunnel traffic off the tunnel.
    pub fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        socket2::SockRef::from(&self.socket).set_mark(mark)
    }

    /// Receives a batch without blocking; `WouldBlock` when nothing is queued.
    /// Source addresses come back in canonical form (IPv4 not IPv4-mapped).
    pub fn recv(
        &self,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        let n = self.state.recv((&self.socket).into(), bufs, meta)?;
        for m in &mut meta[..n] {
            m.addr = canonical(m.addr);
        }
        Ok(n)
    }

    /// Sends `contents` (one datagram, or several of `segment` bytes each
    /// when `segment` is set), waiting for buffer space rather than dropping.
    /// Returns early with `Ok` if `stop` fires while waiting.
    pub fn send(
        &self,
        dest: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
        stop: &WakeFd,
    ) -> io::Result<()> {
        let transmit = Transmit {
            destination: self.map_dest(dest),
            ecn: None,
            contents,
            segment_size: segment,
            src_ip: None,
        };
        loop {
            match self.state.try_send((&self.socket).into(), &transmit) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if wake::wait(Some(self.raw_fd()), libc::POLLOUT, &[stop], 1000)?
                        == Ready::Woken(0)
                    {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn map_dest(&self, dest: SocketAddr) -> SocketAddr {
        match dest {
            SocketAddr::V4(v4) if self.dual_stack => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            other => other,
        }
    }
}

fn bind_socket(domain: Domain, port: u16) -> io::Result<Socket> {
    let socket = Socket::new(
        domain,
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    let addr: SocketAddr = if domain == Domain::IPV6 {
        socket.set_only_v6(false)?;
        (Ipv6Addr::UNSPECIFIED, port).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, port).into()
    };
    // Root may exceed net.core.{r,w}mem_max; fall back to the capped size.
    if set_buffer_force(&socket, libc::SO_RCVBUFFORCE, RECV_BUFFER).is_err() {
        let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    }
    if set_buffer_force(&socket, libc::SO_SNDBUFFORCE, SOCKET_BUFFER).is_err() {
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Lets routers fragment the tunnel's packets (the DF bit clear), where
/// quinn-udp set up the socket for QUIC (`IP_PMTUDISC_PROBE`: DF set).
///
/// A tunnel cannot do what QUIC does with DF: QUIC probes the path and
/// shrinks its own packets, but the tunnel carries other hosts' packets at
/// the size they come, and the TCP inside learns nothing from an ICMP
/// "fragmentation needed" addressed to the tunnel's socket. With DF set, a
/// full-sized packet on a path narrower than this host's uplink (a GRE or
/// PPPoE hop, a cloud VPC at 1460, a peer on a 1280-byte link) is dropped,
/// and the flow stalls for good. So, like kernel WireGuard, weft sends
/// without DF and a narrow hop fragments. The tunnel MTU is picked from
/// this host's uplinks (the agent's `mtu` module) and TCP MSS is clamped
/// to it, so fragmenting is the exception, not the rule.
///
/// `OMIT` rather than `DONT`: sizes follow the interface MTU and ignore
/// ICMP path-MTU reports, which anyone on the path can forge to shrink
/// them (and which would make UDP GSO sends fail once a cached path MTU
/// fell below the segment size).
fn allow_fragments(socket: &UdpSocket, dual_stack: bool) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    // On a dual-stack socket the IPv4 option governs IPv4-mapped traffic.
    set_int(
        fd,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_OMIT,
    )?;
    if dual_stack {
        set_int(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_OMIT,
        )?;
    }
    Ok(())
}

fn set_buffer_force(socket: &Socket, opt: libc::c_int, size: usize) -> io::Result<()> {
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    set_int(socket.as_raw_fd(), libc::SOL_SOCKET, opt, size)
}

fn set_int(fd: i32, level: libc::c_int, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// IPv4-mapped IPv6 addresses as plain IPv4, so endpoints read naturally.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get_int(fd: i32, level: libc::c_int, opt: libc::c_int) -> libc::c_int {
        let mut v: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: v and len are live and len is v's size.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                level,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        v
    }

    #[test]
    fn tunnel_packets_leave_without_df() {
        let ep = UdpEndpoint::bind(0).unwrap();
        let fd = ep.raw_fd();
        assert_eq!(
            get_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
            libc::IP_PMTUDISC_OMIT
        );
        if ep.dual_stack {
            assert_eq!(
                get_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER),
                libc::IPV6_PMTUDISC_OMIT
            );
        }
    }
}
