//! Raw packets for the tests (checksums left zero: nothing here reads them).

use std::net::IpAddr;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

pub fn ip(src: &str, dst: &str, proto: u8, body: &[u8]) -> Vec<u8> {
    let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => v4(s.octets(), d.octets(), proto, 0, 0, body),
        (IpAddr::V6(s), IpAddr::V6(d)) => v6(s.octets(), d.octets(), proto, &[], body),
        _ => panic!("mixed families"),
    }
}

pub fn v4(src: [u8; 4], dst: [u8; 4], proto: u8, id: u16, frag: u16, body: &[u8]) -> Vec<u8> {
    let total = (20 + body.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend(total.to_be_bytes());
    p.extend(id.to_be_bytes());
    p.extend(frag.to_be_bytes());
    p.extend([64, proto, 0, 0]);
    p.extend(src);
    p.extend(dst);
    p.extend(body);
    p
}

/// `ext`: extension headers as (type, bytes), each bytes[0] set to the next.
pub fn v6(src: [u8; 16], dst: [u8; 16], proto: u8, ext: &[(u8, Vec<u8>)], body: &[u8]) -> Vec<u8> {
    let mut rest = Vec::new();
    for (i, (_, bytes)) in ext.iter().enumerate() {
        let mut b = bytes.clone();
        b[0] = ext.get(i + 1).map_or(proto, |e| e.0);
        rest.extend(b);
    }
    rest.extend(body);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend((rest.len() as u16).to_be_bytes());
    p.push(ext.first().map_or(proto, |e| e.0));
    p.push(64);
    p.extend(src);
    p.extend(dst);
    p.extend(rest);
    p
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t
}

pub fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut u = vec![0u8; 12];
    u[..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&12u16.to_be_bytes());
    u
}

/// An ICMP message: echo (`rest` = id) or error (`quoted` follows).
pub fn icmp(ty: u8, id: u16, quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0];
    m.extend(id.to_be_bytes());
    m.extend([0, 1]);
    m.extend(quoted);
    m
}
