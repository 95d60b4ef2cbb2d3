use super::build::{self, icmp, ip, tcp, udp, ACK, SYN};
use super::*;

#[test]
fn allows_denies_and_counts_by_rule() {
    let (f, ct) = (policy(), Conntrack::with_bucket_bits(4));
    assert!(f.check(
        &ct,
        0,
        &ip("10.0.0.5", "10.0.0.1", TCP, &tcp(5000, 22, SYN))
    ));
    assert!(f.check(&ct, 0, &ip("fd00::5", "fd00::1", TCP, &tcp(5000, 22, SYN))));
    assert!(!f.check(
        &ct,
        0,
        &ip("10.0.0.5", "10.0.0.1", TCP, &tcp(5000, 80, SYN))
    ));
    assert!(!f.check(&ct, 0, &ip("10.0.1.5", "10.0.0.1", UDP, &udp(5000, 22))));
    // The deny rule wins over the allow rule that also matches.
    assert!(!f.check(
        &ct,
        0,
        &ip("10.0.0.66", "10.0.0.1", TCP, &tcp(5000, 22, SYN))
    ));
    assert!(!f.check(&ct, 0, &ip("fd00::66", "fd00::1", TCP, &tcp(5000, 22, SYN))));
    assert!(!f.check(&ct, 0, &[0x45, 0, 0]));
    let stats = f.stats();
    assert!(stats.active);
    assert_eq!(stats.default_drops, 2);
    assert_eq!(stats.malformed, 1);
    // Rule 2 compiled into two filter rules: one entry, both counted.
    assert_eq!(
        stats.rules,
        vec![RuleDrops {
            rule: 2,
            action: Action::Deny,
            drops: 2
        }]
    );
}

#[test]
fn replies_of_outbound_flows_pass_and_expire() {
    let (f, ct) = (policy(), Conntrack::with_bucket_bits(4));
    let reply = ip("10.0.1.7", "10.0.0.1", UDP, &udp(53, 40000));
    assert!(!f.check(&ct, 0, &reply), "unsolicited");
    let mut out = Recorder::new(&ct, 10);
    out.packet(&ip("10.0.0.1", "10.0.1.7", UDP, &udp(40000, 53)));
    assert!(f.check(&ct, 10, &reply));
    assert!(f.check(&ct, 129, &reply), "the reply at 10 kept it alive");
    assert!(
        !f.check(&ct, 129 + 120, &reply),
        "idle past the UDP timeout"
    );
    assert!(!f.check(&ct, 10, &ip("10.0.1.7", "10.0.0.1", UDP, &udp(53, 40001))));
    assert!(!f.check(&ct, 10, &ip("10.0.1.8", "10.0.0.1", UDP, &udp(53, 40000))));

    // TCP: the SYN-ACK and later segments pass, a SYN on the same ports never.
    Recorder::new(&ct, 20).packet(&ip("10.0.0.1", "10.0.0.66", TCP, &tcp(41000, 443, SYN)));
    assert!(f.check(
        &ct,
        20,
        &ip("10.0.0.66", "10.0.0.1", TCP, &tcp(443, 41000, SYN | ACK))
    ));
    assert!(f.check(
        &ct,
        7000,
        &ip("10.0.0.66", "10.0.0.1", TCP, &tcp(443, 41000, ACK))
    ));
    assert!(!f.check(
        &ct,
        7000,
        &ip("10.0.0.66", "10.0.0.1", TCP, &tcp(443, 41000, SYN))
    ));
    assert_eq!(drops_of(&f, 2), 1);
}

#[test]
fn echo_replies_and_icmp_errors_of_outbound_flows_pass() {
    let f = InboundFilter::new(PacketFilter {
        rules: vec![],
        default: Action::Deny,
    });
    let ct = Conntrack::with_bucket_bits(4);
    let ping = ip("fd00::1", "fd00::9", ICMPV6, &icmp(128, 3, &[]));
    let pong = ip("fd00::9", "fd00::1", ICMPV6, &icmp(129, 3, &[]));
    assert!(!f.check(&ct, 0, &pong));
    Recorder::new(&ct, 0).packet(&ping);
    assert!(f.check(&ct, 0, &pong));
    assert!(!f.check(
        &ct,
        0,
        &ip("fd00::9", "fd00::1", ICMPV6, &icmp(129, 4, &[]))
    ));
    assert!(
        !f.check(
            &ct,
            0,
            &ip("fd00::9", "fd00::1", ICMPV6, &icmp(128, 3, &[]))
        ),
        "a request is never a reply"
    );
    assert!(!f.check(&ct, 31, &pong), "idle past the ICMP timeout");

    let sent = ip("10.0.0.1", "10.0.0.9", UDP, &udp(4000, 53));
    let unreachable = ip("10.0.0.9", "10.0.0.1", ICMP, &icmp(3, 3, &sent[..28]));
    assert!(!f.check(&ct, 0, &unreachable));
    Recorder::new(&ct, 0).packet(&sent);
    assert!(f.check(&ct, 0, &unreachable));
    // From a peer that is not where the flow went: a forgery.
    let from_10_0_0_9 = |a: std::net::IpAddr| a == "10.0.0.9".parse::<std::net::IpAddr>().unwrap();
    assert!(f.check_from(&ct, 0, &unreachable, from_10_0_0_9));
    assert!(!f.check_from(&ct, 0, &unreachable, |_| false));
    // The same error delivered to another host of ours is not about our packet.
    assert!(!f.check(
        &ct,
        0,
        &ip("10.0.0.9", "10.0.0.2", ICMP, &icmp(3, 3, &sent[..28]))
    ));
    assert_eq!(f.stats().default_drops, 7);
}

#[test]
fn later_fragments_follow_their_first() {
    let (f, ct) = (policy(), Conntrack::with_bucket_bits(4));
    let (src, dst) = ([10, 0, 0, 5], [10, 0, 0, 1]);
    let first = build::v4(src, dst, TCP, 7, 0x2000, &tcp(5000, 22, ACK));
    let later = build::v4(src, dst, TCP, 7, 0x2000 | 3, &[0; 24]);
    let other = build::v4(src, dst, TCP, 8, 3, &[0; 24]);
    assert!(
        !f.check(&ct, 0, &later),
        "before its first fragment: port 0"
    );
    assert!(f.check(&ct, 0, &first));
    assert!(f.check(&ct, 0, &later));
    assert!(!f.check(&ct, 0, &other));
    assert!(!f.check(&ct, 31, &later));
}

#[test]
fn slot_installs_views_and_keeps_counters() {
    let (slot, ct) = (FilterSlot::default(), Conntrack::with_bucket_bits(4));
    let mut view = FilterView::default();
    assert!(view.refresh(&slot).is_none());
    assert!(
        !slot.set(Some(&PacketFilter::allow_all())),
        "allow-all is no change"
    );
    assert!(view.refresh(&slot).is_none(), "allow-all is no filter");
    assert!(!slot.stats().active);
    assert!(slot.set(Some(policy().filter())));
    let denied = ip("10.0.1.5", "10.0.0.1", UDP, &udp(1, 2));
    assert!(!view.refresh(&slot).unwrap().check(&ct, 0, &denied));
    assert!(!slot.set(Some(policy().filter())), "the same filter again");
    assert!(!view.refresh(&slot).unwrap().check(&ct, 0, &denied));
    assert_eq!((slot.stats().default_drops, slot.stats().active), (2, true));
    assert!(slot.set(None));
    assert!(view.refresh(&slot).is_none());
    assert_eq!(slot.stats(), FilterStats::default());
    let pass = InboundFilter::new(PacketFilter::allow_all());
    assert!(
        pass.passes_all() && pass.check(&ct, 0, &[]),
        "passes without parsing"
    );
}

#[test]
fn full_buckets_forget_the_least_recently_seen() {
    let ct = Conntrack::with_bucket_bits(1); // 8 slots
    let key = |port: u16| {
        outbound_key(&Flow {
            src: addr("10.0.0.1"),
            dst: addr("10.0.0.2"),
            proto: TCP,
            src_port: port,
            dst_port: 80,
        })
    };
    for port in 0..40 {
        ct.record(&key(port), u32::from(port));
    }
    let known: Vec<u16> = (0..40).filter(|&p| ct.touch(&key(p), 40)).collect();
    assert!(known.len() <= 8 && known.contains(&39), "{known:?}");
    assert!(
        !known.contains(&0),
        "the oldest of 40 went first: {known:?}"
    );
}
