//! Tests of the inbound filter: parsing, verdicts, conntrack, and
//! damaged packets.

mod build;
mod parse;
mod verdicts;

use std::net::IpAddr;

use proptest::prelude::*;
use weft_proto::policy::{Cidr, FilterRule, PortRange, Proto};

use super::*;
use build::{icmp, ip, tcp, udp, ACK, SYN};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

pub fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn rule(action: Action, src: &str, proto: Proto, ports: PortRange, n: u32) -> FilterRule {
    let (a, len) = src.split_once('/').unwrap();
    FilterRule {
        action,
        src: vec![Cidr::new(addr(a), len.parse().unwrap()).unwrap()].into(),
        dst: vec![
            Cidr::new(addr("0.0.0.0"), 0).unwrap(),
            Cidr::new(addr("::"), 0).unwrap(),
        ],
        proto,
        ports,
        rule: n,
    }
}

/// Default deny; rule 1 allows tcp/22 from 10.0.0.0/24 and fd00::/64,
/// rule 2 denies everything from 10.0.0.66, rule 3 allows ICMP from anyone.
pub fn policy() -> InboundFilter {
    let ssh = PortRange::single(22);
    InboundFilter::new(PacketFilter {
        rules: vec![
            rule(Action::Allow, "10.0.0.0/24", Proto::Tcp, ssh, 1),
            rule(Action::Allow, "fd00::/64", Proto::Tcp, ssh, 1),
            rule(Action::Deny, "10.0.0.66/32", Proto::Any, PortRange::ALL, 2),
            rule(Action::Deny, "fd00::66/128", Proto::Any, PortRange::ALL, 2),
            rule(Action::Allow, "0.0.0.0/0", Proto::Icmp, PortRange::ALL, 3),
        ],
        default: Action::Deny,
    })
}

pub fn drops_of(f: &InboundFilter, n: u32) -> u64 {
    f.stats()
        .rules
        .iter()
        .find(|r| r.rule == n)
        .map_or(0, |r| r.drops)
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let (f, ct) = (policy(), Conntrack::with_bucket_bits(2));
        let _ = parse(&bytes);
        let _ = f.check(&ct, 5, &bytes);
        Recorder::new(&ct, 5).packet(&bytes);
    }

    #[test]
    fn damaged_packets_never_panic(
        which in 0usize..6,
        cut in 0usize..120,
        flips in proptest::collection::vec((0usize..120, any::<u8>()), 0..6),
    ) {
        let sent = ip("10.0.0.1", "10.0.0.9", UDP, &udp(4000, 53));
        let sent6 = ip("fd00::1", "fd00::9", TCP, &tcp(1, 2, SYN));
        let mut p = match which {
            0 => ip("10.0.0.5", "10.0.0.1", TCP, &tcp(5000, 22, ACK)),
            1 => ip("fd00::5", "fd00::1", UDP, &udp(5000, 22)),
            2 => ip("10.0.0.9", "10.0.0.1", ICMP, &icmp(3, 0, &sent)),
            3 => ip("fd00::9", "fd00::1", ICMPV6, &icmp(1, 0, &sent6)),
            4 => build::v4([10, 0, 0, 5], [10, 0, 0, 1], TCP, 1, 0x2000, &tcp(1, 22, 0)),
            _ => ip("fd00::9", "fd00::1", ICMPV6, &icmp(129, 1, &[])),
        };
        for (at, byte) in flips {
            if let Some(b) = p.get_mut(at) {
                *b ^= byte;
            }
        }
        p.truncate(cut);
        let (f, ct) = (policy(), Conntrack::with_bucket_bits(2));
        Recorder::new(&ct, 1).packet(&p);
        let _ = parse(&p);
        let _ = f.check(&ct, 1, &p);
    }
}
