use super::build::{self, icmp, ip, tcp, udp, ACK, SYN};
use super::*;

#[test]
fn parses_tcp_and_udp_v4() {
    let p = parse(&ip("10.0.0.1", "10.0.0.2", TCP, &tcp(40000, 22, SYN))).unwrap();
    let flow = Flow {
        src: addr("10.0.0.1"),
        dst: addr("10.0.0.2"),
        proto: TCP,
        src_port: 40000,
        dst_port: 22,
    };
    assert_eq!(
        (p.flow, p.kind, p.first_fragment),
        (flow, Kind::TcpSyn, None)
    );
    let p = parse(&ip("10.0.0.1", "10.0.0.2", TCP, &tcp(40000, 22, SYN | ACK))).unwrap();
    assert_eq!(p.kind, Kind::Transport);
    let p = parse(&ip("10.0.0.1", "10.0.0.2", UDP, &udp(5353, 53))).unwrap();
    assert_eq!(
        (p.flow.src_port, p.flow.dst_port, p.kind),
        (5353, 53, Kind::Transport)
    );
}

#[test]
fn parses_v6_through_extension_headers() {
    let (s, d) = (addr("fd00::1"), addr("fd00::2"));
    let (IpAddr::V6(s6), IpAddr::V6(d6)) = (s, d) else {
        unreachable!()
    };
    let ext = [
        (0u8, vec![0u8; 8]),
        (60, vec![0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let p = parse(&build::v6(
        s6.octets(),
        d6.octets(),
        UDP,
        &ext,
        &udp(1000, 53),
    ))
    .unwrap();
    assert_eq!((p.flow.src, p.flow.dst, p.flow.proto), (s, d, UDP));
    assert_eq!((p.flow.src_port, p.flow.dst_port), (1000, 53));
    // First fragment: ports, and the datagram id to admit the rest by.
    let first = [(44u8, vec![0, 0, 0, 1, 0, 0, 0x12, 0x34])];
    let p = parse(&build::v6(
        s6.octets(),
        d6.octets(),
        TCP,
        &first,
        &tcp(1, 22, ACK),
    ))
    .unwrap();
    assert_eq!((p.flow.dst_port, p.first_fragment), (22, Some(0x1234)));
    let later = [(44u8, vec![0, 0, 0x05, 0x00, 0, 0, 0x12, 0x34])];
    let p = parse(&build::v6(s6.octets(), d6.octets(), TCP, &later, &[0; 16])).unwrap();
    assert_eq!(
        (p.flow.proto, p.flow.dst_port, p.kind),
        (TCP, 0, Kind::Fragment(0x1234))
    );
    let many: Vec<_> = (0..9).map(|_| (60u8, vec![0u8; 8])).collect();
    assert_eq!(
        parse(&build::v6(s6.octets(), d6.octets(), UDP, &many, &udp(1, 2))),
        None
    );
}

#[test]
fn parses_icmp_echo_both_families() {
    let req = parse(&ip("10.0.0.1", "10.0.0.2", ICMP, &icmp(8, 77, &[]))).unwrap();
    assert_eq!(
        (req.kind, req.flow.src_port, req.flow.dst_port),
        (Kind::EchoRequest, 77, 0)
    );
    let rep = parse(&ip("10.0.0.2", "10.0.0.1", ICMP, &icmp(0, 77, &[]))).unwrap();
    assert_eq!(
        (rep.kind, rep.flow.src_port, rep.flow.dst_port),
        (Kind::EchoReply, 0, 77)
    );
    let req = parse(&ip("fd00::1", "fd00::2", ICMPV6, &icmp(128, 9, &[]))).unwrap();
    assert_eq!((req.kind, req.flow.src_port), (Kind::EchoRequest, 9));
    let rep = parse(&ip("fd00::2", "fd00::1", ICMPV6, &icmp(129, 9, &[]))).unwrap();
    assert_eq!((rep.kind, rep.flow.dst_port), (Kind::EchoReply, 9));
    // Router advertisement: neither echo nor error.
    let ra = parse(&ip("fd00::2", "fd00::1", ICMPV6, &icmp(134, 0, &[]))).unwrap();
    assert_eq!(ra.kind, Kind::IcmpOther);
}

#[test]
fn parses_icmp_errors_by_their_quoted_packet() {
    // Port unreachable about a UDP datagram, quoted down to 8 bytes.
    let sent = ip("10.0.0.1", "10.0.0.9", UDP, &udp(4000, 53));
    let err = parse(&ip("10.0.0.9", "10.0.0.1", ICMP, &icmp(3, 0, &sent[..28]))).unwrap();
    let quoted = Flow {
        src: addr("10.0.0.1"),
        dst: addr("10.0.0.9"),
        proto: UDP,
        src_port: 4000,
        dst_port: 53,
    };
    assert_eq!(err.kind, Kind::IcmpError(quoted));
    // Time exceeded about our ping.
    let ping = ip("10.0.0.1", "10.0.0.9", ICMP, &icmp(8, 5, &[]));
    let err = parse(&ip("10.0.0.3", "10.0.0.1", ICMP, &icmp(11, 0, &ping))).unwrap();
    assert!(matches!(err.kind, Kind::IcmpError(q) if q.src_port == 5 && q.proto == ICMP));
    // ICMPv6 destination unreachable about a TCP segment.
    let sent = ip("fd00::1", "fd00::9", TCP, &tcp(4000, 443, SYN));
    let err = parse(&ip("fd00::9", "fd00::1", ICMPV6, &icmp(1, 0, &sent))).unwrap();
    assert!(
        matches!(err.kind, Kind::IcmpError(q) if q.dst_port == 443 && q.src == addr("fd00::1"))
    );
    // Quoting an ICMP error or garbage: judged as plain ICMP.
    let nested = ip("10.0.0.9", "10.0.0.1", ICMP, &icmp(3, 0, &ping));
    let err = parse(&ip("10.0.0.3", "10.0.0.1", ICMP, &icmp(3, 0, &nested))).unwrap();
    assert_eq!(err.kind, Kind::IcmpOther);
    let err = parse(&ip("10.0.0.3", "10.0.0.1", ICMP, &icmp(3, 0, &[0x45, 1]))).unwrap();
    assert_eq!(err.kind, Kind::IcmpOther);
}

#[test]
fn refuses_truncated_and_odd_packets() {
    let good = ip("10.0.0.1", "10.0.0.2", TCP, &tcp(1, 22, ACK));
    assert!(parse(&good).is_some());
    assert_eq!(
        parse(&good[..good.len() - 1]),
        None,
        "shorter than its total length"
    );
    assert_eq!(parse(&good[..22]), None);
    let mut bad = good.clone();
    bad[0] = 0x44; // header length 16
    assert_eq!(parse(&bad), None);
    assert_eq!(parse(&[0x70; 40]), None);
    assert_eq!(parse(&[]), None);
    let tiny = ip("10.0.0.1", "10.0.0.2", UDP, &[0, 53]);
    assert_eq!(parse(&tiny), None, "no room for the ports");
}
