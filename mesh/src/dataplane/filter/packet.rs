//! Reading the headers the filter needs from a raw IP packet, in place.
//! Every accessor is bounds-checked: bytes from the network never panic,
//! truncated or odd packets give `None`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use weft_proto::policy::ip_proto::{ICMP, ICMPV6, TCP, UDP};

/// IPv6 extension headers skipped on the way to the transport header.
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST_OPTS: u8 = 60;
/// At most this many extension headers are skipped; more is malformed.
const MAX_EXTENSIONS: usize = 8;

/// The addresses, protocol and ports of one packet.
///
/// Ports are 0 for protocols without them. ICMP echo carries its identifier
/// as the requester's port: a request has `src_port = id, dst_port = 0`, a
/// reply `src_port = 0, dst_port = id`, so a reply is the reverse of its
/// request like any TCP or UDP reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

/// What kind of packet, as far as connection tracking cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// TCP (other than an opening SYN), UDP, or another IP protocol: opens
    /// a flow when sent, may be a reply when received.
    Transport,
    /// A TCP SYN without ACK: always the start of a new connection.
    TcpSyn,
    /// ICMP echo request: opens a flow when sent, never a reply.
    EchoRequest,
    /// ICMP echo reply: opens nothing, may be a reply.
    EchoReply,
    /// An ICMP error about `quoted`, the flow of the packet it quotes, as
    /// that packet was sent.
    IcmpError(Flow),
    /// Any other ICMP message: opens nothing, never a reply.
    IcmpOther,
    /// A fragment after the first of IP datagram `id`: no transport header,
    /// so both ports are 0.
    Fragment(u32),
}

/// One parsed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub flow: Flow,
    pub kind: Kind,
    /// The first fragment of IP datagram `id` (more fragments follow).
    pub first_fragment: Option<u32>,
}

/// Reads an IPv4 or IPv6 packet; `None` if it is truncated or malformed.
pub fn parse(packet: &[u8]) -> Option<Packet> {
    parse_ip(packet, false)
}

/// `quoted`: the packet is the copy inside an ICMP error, which may be cut
/// short after the first bytes of its transport header, and may not itself
/// be an ICMP error or a later fragment.
fn parse_ip(data: &[u8], quoted: bool) -> Option<Packet> {
    match data.first()? >> 4 {
        4 => parse_v4(data, quoted),
        6 => parse_v6(data, quoted),
        _ => None,
    }
}

fn be16(data: &[u8], at: usize) -> Option<u16> {
    let b = data.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

fn be32(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn addr4(data: &[u8], at: usize) -> Option<IpAddr> {
    let b: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(b)))
}

fn addr6(data: &[u8], at: usize) -> Option<IpAddr> {
    let b: [u8; 16] = data.get(at..at + 16)?.try_into().ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(b)))
}

/// The payload after a header of `header` bytes, given the packet's stated
/// total length: all of it for a packet, what is there for a quoted one.
fn payload(data: &[u8], header: usize, total: usize, quoted: bool) -> Option<&[u8]> {
    if total < header {
        return None;
    }
    let end = if quoted { total.min(data.len()) } else { total };
    data.get(header..end)
}

fn parse_v4(data: &[u8], quoted: bool) -> Option<Packet> {
    let header = usize::from(data.first()? & 0x0f) * 4;
    if header < 20 {
        return None;
    }
    let total = usize::from(be16(data, 2)?);
    let id = u32::from(be16(data, 4)?);
    let frag = be16(data, 6)?;
    let proto = *data.get(9)?;
    let flow = Flow {
        src: addr4(data, 12)?,
        dst: addr4(data, 16)?,
        proto,
        src_port: 0,
        dst_port: 0,
    };
    let body = payload(data, header, total, quoted)?;
    let offset = frag & 0x1fff;
    let more = frag & 0x2000 != 0;
    if offset != 0 {
        return (!quoted).then_some(Packet {
            flow,
            kind: Kind::Fragment(id),
            first_fragment: None,
        });
    }
    let first_fragment = more.then_some(id);
    transport(flow, body, false, quoted, first_fragment)
}

fn parse_v6(data: &[u8], quoted: bool) -> Option<Packet> {
    let total = 40 + usize::from(be16(data, 4)?);
    let mut next = *data.get(6)?;
    let mut flow = Flow {
        src: addr6(data, 8)?,
        dst: addr6(data, 24)?,
        proto: next,
        src_port: 0,
        dst_port: 0,
    };
    let mut body = payload(data, 40, total, quoted)?;
    let mut first_fragment = None;
    for _ in 0..MAX_EXTENSIONS {
        let len = match next {
            HOP_BY_HOP | ROUTING | DEST_OPTS => (usize::from(*body.get(1)?) + 1) * 8,
            FRAGMENT => {
                let frag = be16(body, 2)?;
                let id = be32(body, 4)?;
                if frag >> 3 != 0 {
                    flow.proto = *body.first()?;
                    return (!quoted).then_some(Packet {
                        flow,
                        kind: Kind::Fragment(id),
                        first_fragment: None,
                    });
                }
                // An atomic fragment (no more fragments) is a whole packet.
                first_fragment = (frag & 1 != 0).then_some(id);
                8
            }
            _ => {
                flow.proto = next;
                return transport(flow, body, true, quoted, first_fragment);
            }
        };
        next = *body.first()?;
        body = body.get(len..)?;
    }
    None
}

/// Reads the transport header of a packet whose IP header gave `flow`.
fn transport(
    mut flow: Flow,
    body: &[u8],
    v6: bool,
    quoted: bool,
    first_fragment: Option<u32>,
) -> Option<Packet> {
    let icmp = if v6 { ICMPV6 } else { ICMP };
    let kind = match flow.proto {
        TCP | UDP => {
            flow.src_port = be16(body, 0)?;
            flow.dst_port = be16(body, 2)?;
            // Flags, when the header is all there (a quoted one may not be).
            let syn = flow.proto == TCP && body.get(13).is_some_and(|f| f & 0x12 == 0x02);
            if syn {
                Kind::TcpSyn
            } else {
                Kind::Transport
            }
        }
        p if p == icmp => {
            let ty = *body.first()?;
            match (v6, ty) {
                (false, 8) | (true, 128) => {
                    flow.src_port = be16(body, 4)?;
                    Kind::EchoRequest
                }
                (false, 0) | (true, 129) => {
                    flow.dst_port = be16(body, 4)?;
                    Kind::EchoReply
                }
                (false, 3 | 11 | 12) | (true, 1..=4) if quoted => return None,
                (false, 3 | 11 | 12) | (true, 1..=4) => {
                    let inner = body.get(8..).and_then(|q| parse_ip(q, true));
                    match inner {
                        Some(q) if q.flow.src.is_ipv6() == v6 => Kind::IcmpError(q.flow),
                        // Quotes nothing we can read: judged as plain ICMP.
                        _ => Kind::IcmpOther,
                    }
                }
                _ => Kind::IcmpOther,
            }
        }
        _ => Kind::Transport,
    };
    Some(Packet {
        flow,
        kind,
        first_fragment,
    })
}
