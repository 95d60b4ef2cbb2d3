//! Tests across the whole policy pipeline: document, compiler, filter, checks.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;
use crate::types::{HostSubnet, NodeId};

fn node(id: u64, name: &str, tags: &[&str]) -> ClusterNode {
    ClusterNode {
        id: NodeId(id),
        name: name.to_string(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        subnet: HostSubnet {
            addr: Ipv4Addr::new(100, 64, id as u8, 0),
            prefix_len: 24,
        },
        routes: vec![],
    }
}

/// Six hosts, 100.64.N.0/24 for node N; billing is tcp/8080 on node 5.
fn cluster() -> Cluster {
    Cluster {
        nodes: vec![
            node(1, "web1", &["web"]),
            node(2, "web2", &["web"]),
            node(3, "db1", &["db"]),
            node(4, "dev1", &["dev", "cloud:aws"]),
            node(5, "bill1", &[]),
            node(6, "lonely", &[]),
        ],
        services: vec![Service {
            name: "billing".into(),
            node: NodeId(5),
            port: 8080,
            proto: Proto::Tcp,
            addr: None,
            allow: vec![],
            gateway: None,
        }],
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The host address of node N.
fn host(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(100, 64, n, 1))
}

fn parse(text: &str) -> Policy {
    Policy::parse(text).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(text: &str) -> Vec<String> {
    Policy::parse(text)
        .unwrap_err()
        .0
        .iter()
        .map(|e| e.to_string())
        .collect()
}

fn one_error(text: &str) -> String {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:?}");
    e[0].clone()
}

/// Decides a packet from `src` to `dst` on the node owning `dst`.
fn verdict(p: &Policy, src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> Action {
    let c = cluster();
    let compiled = compile(p, &c);
    let owner = c
        .nodes
        .iter()
        .find(|n| Cidr::from(n.subnet).contains(dst))
        .unwrap();
    decide(
        &compiled.node(owner.id).unwrap().filter,
        src,
        dst,
        proto,
        port,
    )
}

fn tcp(p: &Policy, from: u8, to: u8, port: u16) -> Action {
    verdict(p, host(from), host(to), ip_proto::TCP, port)
}

fn peers(p: &Policy, id: u64) -> Vec<u64> {
    compile(p, &cluster())
        .node(NodeId(id))
        .unwrap()
        .peers_of(NodeId(id))
        .map(|n| n.0)
        .collect()
}

const EXAMPLE: &str = r#"default: deny
groups:
  web: [tag:web, host:c1-h1]
  admins: [group:web, cidr:100.64.9.0/24]
rules:
  - allow: { from: [group:web], to: [tag:db], ports: ["tcp/5432"] }
  - deny:  { from: [tag:dev], to: [service:billing] }
  - allow: { from: ["*"], to: ["*"], ports: ["icmp"] }
tests:
  - from: tag:web
    to: tag:db:5432/tcp
    expect: allow
"#;

// ---- the document ----

#[test]
fn the_example_parses() {
    let p = parse(EXAMPLE);
    assert_eq!(p.default, Action::Deny);
    assert_eq!(p.rules.len(), 3);
    assert_eq!(p.rules[0].line, 6);
    assert_eq!(p.rules[2].line, 8);
    assert_eq!(
        p.rules[0].from,
        vec![Selector::Tag("web".into()), Selector::Host("c1-h1".into())]
    );
    assert_eq!(p.groups["admins"].len(), 3);
    assert_eq!(p.tests.len(), 1);
    assert_eq!(p.tests[0].line, 10);
}

#[test]
fn syntax_error_names_its_line() {
    let e = one_error("default: deny\nrules:\n  - allow: { from: [a], to: [b]\n");
    assert!(e.starts_with("line 3: "), "{e}");
}

#[test]
fn unknown_field_names_its_line() {
    let e =
        one_error("default: deny\nrules:\n  - allow: { from: ['*'], to: ['*'], port: [tcp] }\n");
    assert!(e.starts_with("line 3: unknown field `port`"), "{e}");
    let e = one_error("default: deny\nrulez: []\n");
    assert!(e.starts_with("line 2: unknown field `rulez`"), "{e}");
}

#[test]
fn unknown_rule_kind_names_its_line() {
    let e = one_error("default: deny\nrules:\n  - permit: { from: ['*'], to: ['*'] }\n");
    assert!(e.starts_with("line 3: "), "{e}");
    assert!(e.contains("permit"), "{e}");
}

#[test]
fn unknown_group_names_line_rule_and_known_groups() {
    let text = "default: deny\ngroups:\n  web: [tag:web]\n  db: [tag:db]\nrules:\n  - allow: { from: ['*'], to: ['*'] }\n  - allow:\n      from: [group:webb]\n      to: [group:db]\n";
    assert_eq!(
        one_error(text),
        "line 8: unknown group `webb` in rule 2; groups are: db, web"
    );
}

#[test]
fn unknown_selector_names_its_line() {
    let e = one_error("rules:\n  - allow: { from: [team:ops], to: ['*'] }\n");
    assert!(e.starts_with("line 2: unknown selector kind `team`"), "{e}");
    assert!(e.contains("rule 1"), "{e}");
    let e = one_error("rules:\n  - allow:\n      from: ['*']\n      to: [web]\n");
    assert!(
        e.starts_with("line 4: unknown selector `web`; did you mean"),
        "{e}"
    );
}

#[test]
fn bad_cidr_and_port_name_their_lines() {
    let e = one_error("rules:\n  - allow: { from: ['cidr:10.0.0.1/8'], to: ['*'] }\n");
    assert!(e.starts_with("line 2: bad address range"), "{e}");
    assert!(e.contains("did you mean `10.0.0.0/8`"), "{e}");
    let e =
        one_error("rules:\n  - allow:\n      from: ['*']\n      to: ['*']\n      ports: [5432]\n");
    assert!(e.starts_with("line 5: port `5432` needs a protocol"), "{e}");
}

#[test]
fn group_cycle_is_an_error() {
    let e = one_error("groups:\n  a: [group:b]\n  b: [group:c]\n  c: [group:a]\n");
    assert!(e.contains("includes itself"), "{e}");
    assert!(e.contains("a -> b -> c -> a"), "{e}");
    let e = one_error("groups:\n  a: [group:a]\n");
    assert_eq!(e, "line 2: group `a` includes itself: a -> a");
}

#[test]
fn unknown_group_inside_a_group() {
    let e = one_error("groups:\n  a: [tag:x, group:nope]\n");
    assert_eq!(
        e,
        "line 2: unknown group `nope` in group `a`; groups are: a"
    );
}

#[test]
fn nested_groups_expand() {
    let p = parse("groups:\n  a: [tag:x]\n  b: [group:a, tag:y, tag:x]\n  c: [group:b]\n");
    assert_eq!(
        p.groups["c"],
        vec![Selector::Tag("x".into()), Selector::Tag("y".into())]
    );
}

#[test]
fn bad_default_and_expect() {
    let e = one_error("default: maybe\n");
    assert_eq!(e, "line 1: `default` is `maybe`; write `allow` or `deny`");
    let e = one_error("tests:\n  - from: tag:web\n    to: tag:db:5432/tcp\n    expect: yes\n");
    assert!(e.starts_with("line 4: `expect` of test 1 is `yes`"), "{e}");
}

#[test]
fn test_target_needs_a_port() {
    let e = one_error("tests:\n  - from: tag:web\n    to: tag:db\n    expect: allow\n");
    assert!(
        e.starts_with("line 3: test 1: `to: tag:db` needs a port"),
        "{e}"
    );
    // A service brings its own port.
    parse("tests:\n  - from: tag:web\n    to: service:billing\n    expect: deny\n");
}

#[test]
fn every_error_is_reported_in_line_order() {
    let e = errors("default: nah\nrules:\n  - allow: { from: [x:y], to: ['*'], ports: [tcp/99999] }\n  - deny: { from: [group:g], to: ['*'] }\n");
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(e[0].starts_with("line 1:"));
    assert!(e[1].starts_with("line 3:"));
    assert!(e[2].starts_with("line 3:"));
    assert!(e[3].starts_with("line 4: unknown group `g` in rule 2; none are defined"));
}

#[test]
fn empty_document_and_empty_lists() {
    let e = one_error("");
    assert!(e.contains("the policy is empty"), "{e}");
    let e = one_error("rules:\n  - allow: { from: [], to: ['*'] }\n");
    assert!(e.starts_with("line 2: rule 1 has an empty"), "{e}");
}

#[test]
fn default_is_deny_when_omitted() {
    assert_eq!(parse("rules: []\n").default, Action::Deny);
    assert_eq!(parse("default: allow\n").default, Action::Allow);
}

// ---- compiling and deciding ----

#[test]
fn allow_all_allows_everything_and_everyone_is_a_peer() {
    let p = Policy::allow_all();
    assert_eq!(tcp(&p, 1, 3, 22), Action::Allow);
    assert_eq!(verdict(&p, host(4), host(6), 132, 0), Action::Allow);
    assert_eq!(peers(&p, 6), vec![1, 2, 3, 4, 5]);
}

#[test]
fn default_deny_denies_what_no_rule_allows() {
    let p = parse(
        "default: deny\nrules:\n  - allow: { from: [tag:web], to: [tag:db], ports: [tcp/5432] }\n",
    );
    assert_eq!(tcp(&p, 1, 3, 5432), Action::Allow);
    assert_eq!(tcp(&p, 1, 3, 5433), Action::Deny);
    assert_eq!(tcp(&p, 3, 1, 5432), Action::Deny);
    assert_eq!(tcp(&p, 4, 3, 5432), Action::Deny);
}

#[test]
fn default_allow_allows_what_no_rule_denies() {
    let p = parse("default: allow\nrules:\n  - deny: { from: [tag:dev], to: [tag:db] }\n");
    assert_eq!(tcp(&p, 1, 3, 5432), Action::Allow);
    assert_eq!(tcp(&p, 4, 3, 5432), Action::Deny);
    assert_eq!(tcp(&p, 3, 4, 5432), Action::Allow);
    // db may still open flows to dev, so they stay peers.
    assert_eq!(peers(&p, 3), vec![1, 2, 4, 5, 6]);
    // Denied both ways, they are not.
    let p = parse("default: allow\nrules:\n  - deny: { from: [tag:dev], to: [tag:db] }\n  - deny: { from: [tag:db], to: [tag:dev] }\n");
    assert_eq!(peers(&p, 3), vec![1, 2, 5, 6]);
    assert_eq!(peers(&p, 4), vec![1, 2, 5, 6]);
}

#[test]
fn deny_overrides_a_broader_allow_whatever_the_order() {
    for text in [
        "rules:\n  - allow: { from: ['*'], to: ['*'] }\n  - deny: { from: [tag:dev], to: [tag:db], ports: [tcp/5432] }\n",
        "rules:\n  - deny: { from: [tag:dev], to: [tag:db], ports: [tcp/5432] }\n  - allow: { from: ['*'], to: ['*'] }\n",
    ] {
        let p = parse(text);
        assert_eq!(tcp(&p, 4, 3, 5432), Action::Deny);
        assert_eq!(tcp(&p, 4, 3, 22), Action::Allow);
        assert_eq!(tcp(&p, 1, 3, 5432), Action::Allow);
        // Some traffic still flows, so dev and db stay peers.
        assert!(peers(&p, 3).contains(&4));
    }
}

#[test]
fn a_deny_covering_an_allow_removes_the_peer() {
    let p = parse("rules:\n  - allow: { from: [tag:web, tag:dev], to: [tag:db], ports: [tcp/5432] }\n  - deny: { from: [tag:dev], to: [tag:db], ports: [tcp] }\n");
    assert_eq!(peers(&p, 3), vec![1, 2]);
    assert_eq!(peers(&p, 4), Vec::<u64>::new());
}

#[test]
fn ports_and_ranges() {
    let p = parse("rules:\n  - allow: { from: ['*'], to: [tag:web], ports: [tcp/80, tcp/8000-8100, udp/53] }\n");
    assert_eq!(tcp(&p, 3, 1, 80), Action::Allow);
    assert_eq!(tcp(&p, 3, 1, 81), Action::Deny);
    assert_eq!(tcp(&p, 3, 1, 8000), Action::Allow);
    assert_eq!(tcp(&p, 3, 1, 8100), Action::Allow);
    assert_eq!(tcp(&p, 3, 1, 8101), Action::Deny);
    assert_eq!(
        verdict(&p, host(3), host(1), ip_proto::UDP, 53),
        Action::Allow
    );
    assert_eq!(
        verdict(&p, host(3), host(1), ip_proto::UDP, 80),
        Action::Deny
    );
    assert_eq!(
        verdict(&p, host(3), host(1), ip_proto::ICMP, 0),
        Action::Deny
    );
}

#[test]
fn a_protocol_without_ports_means_every_port() {
    let p = parse("rules:\n  - allow: { from: ['*'], to: [tag:web], ports: [udp] }\n");
    assert_eq!(
        verdict(&p, host(3), host(1), ip_proto::UDP, 1),
        Action::Allow
    );
    assert_eq!(
        verdict(&p, host(3), host(1), ip_proto::UDP, 65535),
        Action::Allow
    );
    assert_eq!(tcp(&p, 3, 1, 1), Action::Deny);
}

#[test]
fn icmp() {
    let p = parse("rules:\n  - allow: { from: ['*'], to: ['*'], ports: [icmp] }\n");
    assert_eq!(
        verdict(&p, host(1), host(3), ip_proto::ICMP, 0),
        Action::Allow
    );
    assert_eq!(tcp(&p, 1, 3, 0), Action::Deny);
    assert_eq!(peers(&p, 6), vec![1, 2, 3, 4, 5]);
}

#[test]
fn containers_are_covered_by_their_hosts_subnet() {
    let p = parse("rules:\n  - allow: { from: [tag:web], to: [tag:db], ports: [tcp/5432] }\n");
    assert_eq!(
        verdict(&p, ip("100.64.1.77"), ip("100.64.3.9"), ip_proto::TCP, 5432),
        Action::Allow
    );
}

#[test]
fn cidr_destinations_are_cut_to_the_receiving_subnet() {
    let p =
        parse("rules:\n  - allow: { from: ['*'], to: ['cidr:100.64.3.128/25'], ports: [tcp] }\n");
    assert_eq!(
        verdict(&p, host(1), ip("100.64.3.200"), ip_proto::TCP, 1),
        Action::Allow
    );
    assert_eq!(tcp(&p, 1, 3, 1), Action::Deny);
    let compiled = compile(&p, &cluster());
    let db = &compiled.node(NodeId(3)).unwrap().filter;
    assert_eq!(db.rules.len(), 1);
    assert_eq!(db.rules[0].dst, vec!["100.64.3.128/25".parse().unwrap()]);
    assert!(compiled.node(NodeId(1)).unwrap().filter.rules.is_empty());
}

#[test]
fn ipv6_cidrs() {
    let p = parse(
        "rules:\n  - allow: { from: ['cidr:fd00:1::/64'], to: [tag:db], ports: [tcp/443] }\n",
    );
    let compiled = compile(&p, &cluster());
    let db = &compiled.node(NodeId(3)).unwrap().filter;
    assert_eq!(*db.rules[0].src, ["fd00:1::/64".parse().unwrap()]);
    // No host has an IPv6 subnet yet, so nobody is a peer through it.
    assert_eq!(
        compiled
            .node(NodeId(3))
            .unwrap()
            .peers_of(NodeId(3))
            .count(),
        0
    );

    let filter = PacketFilter {
        rules: vec![FilterRule {
            action: Action::Allow,
            src: vec!["fd00:1::/64".parse().unwrap()].into(),
            dst: vec!["fd00:2::/64".parse().unwrap()],
            proto: Proto::Icmp,
            ports: PortRange::ALL,
            rule: 1,
        }],
        default: Action::Deny,
    };
    let (a, b) = (ip("fd00:1::5"), ip("fd00:2::7"));
    assert_eq!(decide(&filter, a, b, ip_proto::ICMPV6, 0), Action::Allow);
    assert_eq!(decide(&filter, b, a, ip_proto::ICMPV6, 0), Action::Deny);
    assert_eq!(
        decide(&filter, ip("fd00:3::1"), b, ip_proto::ICMPV6, 0),
        Action::Deny
    );
}

#[test]
fn a_service_opens_only_its_port() {
    let p = parse("rules:\n  - allow: { from: [tag:web], to: [service:billing] }\n");
    assert_eq!(tcp(&p, 1, 5, 8080), Action::Allow);
    assert_eq!(tcp(&p, 1, 5, 22), Action::Deny);
    // Rule ports that miss the service's port open nothing.
    let p =
        parse("rules:\n  - allow: { from: [tag:web], to: [service:billing], ports: [tcp/22] }\n");
    assert_eq!(tcp(&p, 1, 5, 22), Action::Deny);
    assert_eq!(tcp(&p, 1, 5, 8080), Action::Deny);
    assert!(peers(&p, 5).is_empty());
}

#[test]
fn tags_with_colons() {
    let p = parse("rules:\n  - allow: { from: ['tag:cloud:aws'], to: [tag:db] }\n");
    assert_eq!(tcp(&p, 4, 3, 1), Action::Allow);
    assert_eq!(tcp(&p, 1, 3, 1), Action::Deny);
}

// ---- peers ----

#[test]
fn a_node_allowed_nothing_sees_no_peers() {
    let p = parse(EXAMPLE);
    assert!(peers(&p, 6).len() == 5, "icmp from anyone reaches lonely");
    let p = parse("rules:\n  - allow: { from: [tag:web], to: [tag:db], ports: [tcp/5432] }\n");
    assert!(peers(&p, 6).is_empty());
    assert!(peers(&p, 4).is_empty());
}

#[test]
fn an_allow_one_way_makes_both_ends_peers() {
    let p = parse("rules:\n  - allow: { from: [host:web1], to: [host:db1], ports: [tcp/5432] }\n");
    assert_eq!(peers(&p, 1), vec![3]);
    assert_eq!(peers(&p, 3), vec![1]);
    assert!(peers(&p, 2).is_empty());
}

#[test]
fn a_node_is_never_its_own_peer() {
    assert!(!peers(&Policy::allow_all(), 1).contains(&1));
    let p = parse("rules:\n  - allow: { from: ['*'], to: ['*'] }\n");
    assert!(!peers(&p, 1).contains(&1));
}

#[test]
fn node_policy_travels_compactly() {
    let compiled = compile(&parse(EXAMPLE), &cluster());
    let share = compiled.node(NodeId(3)).unwrap();
    let bytes = rmp_serde::to_vec_named(share).unwrap();
    let back: NodePolicy = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(&back, share);
    // One-letter field names: "f", "p", "r", "a", "s", "d", ...
    let has = |name: &[u8]| bytes.windows(name.len()).any(|w| w == name);
    assert!(has(&[0xa1, b'f']) && has(&[0xa1, b'p']) && !has(b"filter"));
}

// ---- the tests section ----

#[test]
fn passing_tests_report_nothing() {
    let p = parse(
        r#"rules:
  - allow: { from: [tag:web], to: [tag:db], ports: [tcp/5432] }
  - allow: { from: [tag:web], to: [service:billing] }
  - allow: { from: ['*'], to: ['*'], ports: [icmp] }
tests:
  - { from: tag:web, to: "tag:db:5432/tcp", expect: allow }
  - { from: tag:web, to: "tag:db:22/tcp", expect: deny }
  - { from: tag:dev, to: "tag:db:5432/tcp", expect: deny }
  - { from: host:web2, to: service:billing, expect: allow }
  - { from: tag:dev, to: service:billing, expect: deny }
  - { from: tag:dev, to: "host:lonely:icmp", expect: allow }
  - { from: "cidr:100.64.1.0/24", to: "cidr:100.64.3.0/24:5432/tcp", expect: allow }
"#,
    );
    assert_eq!(run_tests(&p, &cluster()), vec![]);
}

#[test]
fn failing_tests_name_their_line_and_the_deciding_rule() {
    let p = parse(
        r#"rules:
  - allow: { from: ['*'], to: [tag:db] }
  - deny: { from: [tag:dev], to: [tag:db], ports: [tcp/5432] }
tests:
  - from: tag:web
    to: tag:db:5432/tcp
    expect: allow
  - from: tag:dev
    to: tag:db:5432/tcp
    expect: allow
  - from: tag:web
    to: tag:web:80/tcp
    expect: allow
"#,
    );
    let f = run_tests(&p, &cluster());
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(f[0].line, 8);
    assert_eq!(f[0].test, 2);
    assert_eq!(
        f[0].to_string(),
        "line 8: test 2: tag:dev -> tag:db:5432/tcp: expected allow, but 100.64.4.1 -> \
         100.64.3.1 5432/tcp is denied by rule 2 (line 3)"
    );
    assert_eq!(f[1].line, 11);
    assert!(
        f[1].message.contains("denied by the default (deny)"),
        "{}",
        f[1]
    );
    assert!(
        f[1].message.contains("and 3 more of 4 address pairs"),
        "{}",
        f[1]
    );
}

#[test]
fn tests_that_select_nothing_fail() {
    let p = parse("tests:\n  - { from: tag:nobody, to: 'tag:db:1/tcp', expect: deny }\n  - { from: tag:web, to: service:nothing, expect: deny }\n");
    let f = run_tests(&p, &cluster());
    assert_eq!(f.len(), 2);
    assert!(f[0].message.contains("`from` selects nothing"), "{}", f[0]);
    assert!(f[1].message.contains("`to` selects nothing"), "{}", f[1]);
}

#[test]
fn tests_with_group_sources() {
    let p = parse("groups:\n  front: [host:web1, host:web2]\nrules:\n  - allow: { from: [host:web1], to: [tag:db] }\ntests:\n  - { from: 'group:front', to: 'tag:db:1/tcp', expect: allow }\n");
    let f = run_tests(&p, &cluster());
    assert_eq!(f.len(), 1);
    assert!(
        f[0].message.contains("100.64.2.1 -> 100.64.3.1"),
        "{}",
        f[0]
    );
}

// ---- properties ----

fn arb_cidr() -> impl Strategy<Value = Cidr> {
    prop_oneof![
        (any::<u32>(), 0u8..=32)
            .prop_map(|(a, l)| Cidr::new_truncating(IpAddr::V4(Ipv4Addr::from(a)), l)),
        (any::<u128>(), 0u8..=128).prop_map(|(a, l)| Cidr::new_truncating(IpAddr::V6(a.into()), l)),
        // Small IPv4 space so rules and packets meet often.
        (0u32..16, 28u8..=32).prop_map(|(a, l)| Cidr::new_truncating(
            IpAddr::V4(Ipv4Addr::from(0x6440_0000 + a)),
            l
        )),
    ]
}

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u32..16).prop_map(|a| IpAddr::V4(Ipv4Addr::from(0x6440_0000 + a))),
        any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
        any::<u128>().prop_map(|a| IpAddr::V6(a.into())),
    ]
}

fn arb_rule() -> impl Strategy<Value = FilterRule> {
    (
        prop_oneof![Just(Action::Allow), Just(Action::Deny)],
        prop::collection::vec(arb_cidr(), 0..3),
        prop::collection::vec(arb_cidr(), 0..3),
        prop_oneof![
            Just(Proto::Any),
            Just(Proto::Tcp),
            Just(Proto::Udp),
            Just(Proto::Icmp)
        ],
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(|(action, src, dst, proto, a, b)| FilterRule {
            action,
            src: src.into(),
            dst,
            proto,
            // Ranges may come backwards from the wire: they match nothing.
            ports: PortRange { first: a, last: b },
            rule: 1,
        })
}

fn arb_filter() -> impl Strategy<Value = PacketFilter> {
    (
        prop::collection::vec(arb_rule(), 0..6),
        prop_oneof![Just(Action::Allow), Just(Action::Deny)],
    )
        .prop_map(|(rules, default)| PacketFilter { rules, default })
}

proptest! {
    #[test]
    fn decide_never_panics(f in arb_filter(), s in arb_ip(), d in arb_ip(), p in any::<u8>(), port in any::<u16>()) {
        let v = evaluate(&f, s, d, p, port);
        prop_assert_eq!(v.action, decide(&f, s, d, p, port));
        if let Some(i) = v.rule {
            prop_assert!(f.rules[i].matches(s, d, p, port));
        }
    }

    #[test]
    fn adding_a_deny_never_turns_a_deny_into_an_allow(
        f in arb_filter(),
        extra in arb_rule(),
        at in any::<prop::sample::Index>(),
        s in arb_ip(), d in arb_ip(), p in any::<u8>(), port in any::<u16>(),
    ) {
        let before = decide(&f, s, d, p, port);
        let mut g = f.clone();
        let deny = FilterRule { action: Action::Deny, ..extra };
        g.rules.insert(at.index(g.rules.len() + 1), deny);
        let after = decide(&g, s, d, p, port);
        if before == Action::Deny {
            prop_assert_eq!(after, Action::Deny);
        }
    }

    #[test]
    fn the_filter_survives_the_wire(f in arb_filter()) {
        let bytes = rmp_serde::to_vec_named(&f).unwrap();
        let back: PacketFilter = rmp_serde::from_slice(&bytes).unwrap();
        prop_assert_eq!(back, f);
    }

    #[test]
    fn parse_never_panics(text in "[ -~\n]{0,200}") {
        let _ = Policy::parse(&text);
    }
}

#[test]
fn except_takes_sources_out_of_from() {
    let p = parse(
        "rules:\n  - allow: { from: ['*'], except: [tag:dev, host:web2], to: [tag:db], ports: [tcp/5432] }\n",
    );
    let c = cluster();
    let compiled = compile(&p, &c);
    let db = &compiled.node(NodeId(3)).unwrap().filter;
    assert_eq!(decide(db, host(1), host(3), 6, 5432), Action::Allow);
    assert_eq!(decide(db, host(4), host(3), 6, 5432), Action::Deny);
    assert_eq!(decide(db, host(2), host(3), 6, 5432), Action::Deny);
    let peers = &compiled.node(NodeId(3)).unwrap().peers;
    assert!(peers.contains(&NodeId(1)) && !peers.contains(&NodeId(4)));
    assert!(!peers.contains(&NodeId(2)));
}

#[test]
fn approved_routes_compile_into_the_advertising_host() {
    let mut c = cluster();
    c.nodes[5].routes = vec!["198.18.50.0/24".parse().unwrap()];
    let p = parse(
        "rules:\n  - allow: { from: [tag:web], to: ['cidr:198.18.50.0/24'], ports: [tcp/22] }\n",
    );
    let compiled = compile(&p, &c);
    let gw = compiled.node(NodeId(6)).unwrap();
    assert_eq!(
        decide(&gw.filter, host(1), ip("198.18.50.7"), 6, 22),
        Action::Allow
    );
    assert_eq!(
        decide(&gw.filter, host(3), ip("198.18.50.7"), 6, 22),
        Action::Deny
    );
    assert!(gw.peers.contains(&NodeId(1)) && !gw.peers.contains(&NodeId(3)));
    let t = parse(
        "rules:\n  - allow: { from: [tag:web], to: ['cidr:198.18.50.0/24'], ports: [tcp/22] }\ntests:\n  - { from: tag:web, to: 'cidr:198.18.50.0/24:22/tcp', expect: allow }\n  - { from: tag:db, to: 'cidr:198.18.50.0/24:22/tcp', expect: deny }\n",
    );
    assert_eq!(run_tests(&t, &c), vec![]);
}

#[test]
fn a_service_allow_list_restricts_even_an_allow_all_cluster() {
    let mut c = cluster();
    c.services[0].allow = vec![Selector::Tag("web".into())];
    c.services[0].addr = Some(ip("100.64.5.9"));
    c.services[0].gateway = Some(host(3));
    let compiled = compile(&Policy::allow_all(), &c);
    let bill = &compiled.node(NodeId(5)).unwrap().filter;
    let svc = ip("100.64.5.9");
    assert_eq!(decide(bill, host(1), svc, 6, 8080), Action::Allow);
    assert_eq!(
        decide(bill, host(3), svc, 6, 8080),
        Action::Allow,
        "the gateway"
    );
    assert_eq!(
        decide(bill, ip("100.64.3.7"), svc, 6, 8080),
        Action::Deny,
        "the gateway's containers are not the gateway"
    );
    assert_eq!(decide(bill, host(4), svc, 6, 8080), Action::Deny);
    // Other ports and addresses of the node keep the cluster's default.
    assert_eq!(decide(bill, host(4), svc, 6, 22), Action::Allow);
    assert_eq!(decide(bill, host(4), host(5), 6, 8080), Action::Allow);
    // A policy deny still wins over the service's allow list.
    let p =
        parse("default: allow\nrules:\n  - deny: { from: [host:web1], to: [service:billing] }\n");
    let compiled = compile(&p, &c);
    let bill = &compiled.node(NodeId(5)).unwrap().filter;
    assert_eq!(decide(bill, host(1), svc, 6, 8080), Action::Deny);
    assert_eq!(decide(bill, host(2), svc, 6, 8080), Action::Allow);
}

#[test]
fn routes_section_approves_by_host_and_tag() {
    let p = parse(
        "routes:\n  \"198.18.0.0/16\": [tag:dev, host:web1]\n  \"10.0.0.0/8\": [group:g]\ngroups:\n  g: [host:db1]\n",
    );
    let c = cluster();
    let route = |s: &str| s.parse::<Cidr>().unwrap();
    assert!(
        p.approves_route(&route("198.18.50.0/24"), &c.nodes[3]),
        "tag:dev"
    );
    assert!(
        p.approves_route(&route("198.18.50.0/24"), &c.nodes[0]),
        "host:web1"
    );
    assert!(!p.approves_route(&route("198.18.50.0/24"), &c.nodes[1]));
    assert!(
        !p.approves_route(&route("198.0.0.0/8"), &c.nodes[0]),
        "wider than the prefix"
    );
    assert!(
        p.approves_route(&route("10.1.0.0/16"), &c.nodes[2]),
        "through a group"
    );
    let e = errors("routes:\n  \"10.0.0.1/8\": [tag:x]\n");
    assert!(
        e[0].starts_with("line 2:") && e[0].contains("host bits"),
        "{e:?}"
    );
    let e = errors("routes:\n  \"10.0.0.0/8\": [team:x]\n");
    assert!(
        e[0].starts_with("line 2:") && e[0].contains("unknown selector kind"),
        "{e:?}"
    );
}

#[test]
fn two_services_on_one_port_of_one_node_stay_apart() {
    let mut c = cluster();
    let svc = |name: &str, addr: Option<IpAddr>, allow: &str| Service {
        name: name.into(),
        node: NodeId(5),
        port: 5432,
        proto: Proto::Tcp,
        addr,
        allow: vec![Selector::parse(allow).unwrap()],
        gateway: None,
    };
    c.services = vec![
        svc("db", None, "tag:web"),
        svc("db2", Some(ip("100.64.5.9")), "tag:db"),
    ];
    let compiled = compile(&Policy::allow_all(), &c);
    let f = &compiled.node(NodeId(5)).unwrap().filter;
    assert_eq!(
        decide(f, host(1), host(5), 6, 5432),
        Action::Allow,
        "web -> db"
    );
    assert_eq!(
        decide(f, host(1), ip("100.64.5.9"), 6, 5432),
        Action::Deny,
        "web -> db2"
    );
    assert_eq!(
        decide(f, host(3), ip("100.64.5.9"), 6, 5432),
        Action::Allow,
        "db1 -> db2"
    );
    assert_eq!(
        decide(f, host(3), host(5), 6, 5432),
        Action::Deny,
        "db1 -> db"
    );
    assert_eq!(
        decide(f, host(3), ip("100.64.5.7"), 6, 5432),
        Action::Allow,
        "other containers"
    );
}

#[test]
fn a_routed_network_as_source_makes_its_gateway_a_peer() {
    let mut c = cluster();
    c.nodes[5].routes = vec!["198.18.50.0/24".parse().unwrap()];
    let p = parse(
        "rules:\n  - deny: { from: [tag:dev], to: [tag:db] }\n  - allow: { from: ['cidr:198.18.50.0/24'], to: [tag:db], ports: [tcp/5432] }\n",
    );
    let compiled = compile(&p, &c);
    let db = compiled.node(NodeId(3)).unwrap();
    assert!(db.peers.contains(&NodeId(6)), "{:?}", db.peers);
    assert_eq!(
        decide(&db.filter, ip("198.18.50.7"), host(3), 6, 5432),
        Action::Allow
    );
    let t = parse(
        "rules:\n  - allow: { from: ['cidr:198.18.50.0/24'], except: [host:lonely], to: [tag:db], ports: [tcp/5432] }\n",
    );
    let compiled = compile(&t, &c);
    assert!(
        compiled.node(NodeId(3)).unwrap().peers.contains(&NodeId(6)),
        "`except: host:` takes the host's subnet out, not its routes"
    );
}
