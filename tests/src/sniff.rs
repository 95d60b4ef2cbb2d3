//! Capturing packets on a lab interface (an AF_PACKET socket opened inside
//! the namespace), e.g. to replay a genuine WireGuard message later.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// A UDP datagram seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPacket {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

/// An IP packet seen on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Sent by this namespace (rather than received by it).
    pub outgoing: bool,
    /// The packet from its IP header on.
    pub data: Vec<u8>,
}

/// Every packet in and out of one interface, from the moment it is opened.
/// The socket queues what it sees, so drop it before bulk traffic.
pub struct Capture {
    fd: OwnedFd,
}

impl Capture {
    /// Starts capturing on `dev` in namespace `ns`.
    pub fn open(ns: &str, dev: &str) -> anyhow::Result<Capture> {
        let dev = std::ffi::CString::new(dev)?;
        let ns_path = format!("/run/netns/{ns}");
        let fd = std::thread::spawn(move || -> anyhow::Result<OwnedFd> {
            crate::cmd::enter_netns(&ns_path)?;
            // SAFETY: if_nametoindex reads a NUL-terminated string.
            let ifindex = unsafe { libc::if_nametoindex(dev.as_ptr()) };
            anyhow::ensure!(ifindex != 0, "no interface {dev:?} in {ns_path}");
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2); the fd is owned below.
            let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, proto.into()) };
            anyhow::ensure!(
                raw >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: raw is a fresh fd we own.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: an all-zero sockaddr_ll is valid; we set the fields bind needs.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex as i32;
            // SAFETY: sll is a valid sockaddr_ll of the given length.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            anyhow::ensure!(
                rc == 0,
                "bind AF_PACKET: {}",
                std::io::Error::last_os_error()
            );
            Ok(fd)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("capture thread panicked"))??;
        Ok(Capture { fd })
    }

    /// The next IP packet in either direction, or `None` if none arrives
    /// within `timeout`.
    pub fn next_packet(&self, timeout: Duration) -> anyhow::Result<Option<Packet>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).context("poll AF_PACKET");
            }
            if rc == 0 {
                return Ok(None);
            }
            // SAFETY: an all-zero sockaddr_ll is valid for recvfrom to fill.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and from are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) {
                    continue;
                }
                return Err(e).context("recv AF_PACKET");
            }
            return Ok(Some(Packet {
                outgoing: from.sll_pkttype == libc::PACKET_OUTGOING,
                data: buf[..n as usize].to_vec(),
            }));
        }
    }

    /// The next UDP datagram (IPv4 or IPv6, either direction), or `None`
    /// if none arrives within `timeout`.
    pub fn next_udp(&self, timeout: Duration) -> anyhow::Result<Option<UdpPacket>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(p) = self.next_packet(left)? else {
                return Ok(None);
            };
            if let Some(u) = parse_udp(&p.data) {
                return Ok(Some(u));
            }
        }
    }

    /// Reads packets until `want` accepts one or `timeout` passes.
    pub fn find_packet(
        &self,
        timeout: Duration,
        mut want: impl FnMut(&Packet) -> bool,
    ) -> anyhow::Result<Option<Packet>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_packet(left)? {
                Some(p) if want(&p) => return Ok(Some(p)),
                Some(_) => {}
                None => return Ok(None),
            }
        }
    }

    /// Reads datagrams until `want` accepts one or `timeout` passes.
    pub fn find_udp(
        &self,
        timeout: Duration,
        mut want: impl FnMut(&UdpPacket) -> bool,
    ) -> anyhow::Result<Option<UdpPacket>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_udp(left)? {
                Some(p) if want(&p) => return Ok(Some(p)),
                Some(_) => {}
                None => return Ok(None),
            }
        }
    }
}

/// Parses an IPv4 or IPv6 packet carrying UDP (no IPv6 extension headers).
fn parse_udp(pkt: &[u8]) -> Option<UdpPacket> {
    let (src, dst, udp) = match pkt.first()? >> 4 {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*pkt.get(2)?, *pkt.get(3)?]));
            if pkt.get(9)? != &17 || ihl < 20 || total < ihl || total > pkt.len() {
                return None;
            }
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(pkt.get(12..16)?).ok()?);
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(pkt.get(16..20)?).ok()?);
            (IpAddr::V4(src), IpAddr::V4(dst), pkt.get(ihl..total)?)
        }
        6 => {
            let plen = usize::from(u16::from_be_bytes([*pkt.get(4)?, *pkt.get(5)?]));
            if pkt.get(6)? != &17 {
                return None;
            }
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(pkt.get(8..24)?).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(pkt.get(24..40)?).ok()?);
            (IpAddr::V6(src), IpAddr::V6(dst), pkt.get(40..40 + plen)?)
        }
        _ => return None,
    };
    let sport = u16::from_be_bytes([*udp.first()?, *udp.get(1)?]);
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let ulen = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    // A GSO super-packet carries 0 or a single segment's length; take what is there.
    let end = if ulen >= 8 && ulen <= udp.len() {
        ulen
    } else {
        udp.len()
    };
    Some(UdpPacket {
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        payload: udp.get(8..end)?.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_udp_and_rejects_others() {
        let mut p = vec![
            0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2, 0xca, 0x6c, 0xca,
            0x6c, 0, 12, 0, 0, 4, 0, 0, 0,
        ];
        let u = parse_udp(&p).unwrap();
        assert_eq!(u.src, "192.0.2.1:51820".parse().unwrap());
        assert_eq!(u.dst, "192.0.2.2:51820".parse().unwrap());
        assert_eq!(u.payload, [4, 0, 0, 0]);
        p[9] = 6; // TCP
        assert_eq!(parse_udp(&p), None);
        assert_eq!(parse_udp(&p[..10]), None);
        assert_eq!(parse_udp(&[]), None);
    }
}
