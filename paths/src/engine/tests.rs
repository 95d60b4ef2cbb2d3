//! The engine driven by hand.

use super::*;
use crate::netcheck::relay_reason;
use weft_proto::disco::DiscoMsg;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|_| unreachable!())
}

#[test]
fn relay_reasons_name_the_cause() {
    let mut nc = NetcheckReport::default();
    assert!(relay_reason(false, false, &nc).contains("offline"));
    assert!(relay_reason(true, false, &nc).contains("UDP"));
    nc.udp = true;
    nc.public = Some(addr("203.0.113.11:1"));
    nc.public_second = Some(addr("203.0.113.11:2"));
    assert!(relay_reason(true, false, &nc).contains("symmetric"));
    assert!(relay_reason(true, true, &nc).contains("stopped answering"));
}

fn engine(seed: u64, now: Instant) -> PathEngine {
    PathEngine::new(
        EngineConfig {
            secret: StaticSecret::from([seed as u8; 32]),
            coordinator: Some(addr("192.0.2.1:7443")),
            local_nets: vec![Cidr::new_truncating(IpAddr::from([198, 18, 0, 1]), 24)],
            seed,
            wall: SystemTime::UNIX_EPOCH,
            sources: Vec::new(),
            active_window: crate::peer::ACTIVE_WINDOW,
        },
        now,
    )
}

#[test]
fn asks_the_reflector_at_start_and_again_when_it_does_not_answer() {
    let t0 = Instant::now();
    let mut e = engine(1, t0);
    let first = e.poll_transmit().map(|t| t.dest);
    assert_eq!(first, Some(Dest::Addr(addr("192.0.2.1:7444"))));
    assert_eq!(e.poll_transmit(), None);
    e.handle_timeout(t0 + Duration::from_millis(1100));
    let again = e.poll_transmit().map(|t| t.dest);
    assert_eq!(
        again,
        Some(Dest::Addr(addr("192.0.2.1:7444"))),
        "a lost request is retried"
    );
    assert!(e.poll_timeout().is_some_and(|t| t > t0));
}

#[test]
fn a_new_peer_starts_on_the_relay_and_is_probed_and_punched() {
    let t0 = Instant::now();
    let mut e = engine(1, t0);
    while e.poll_transmit().is_some() {}
    let peer_secret = StaticSecret::from([9u8; 32]);
    let peer = PeerInput {
        id: NodeId(2),
        key: PublicKey::from(&peer_secret).to_bytes(),
        endpoints: vec![addr("203.0.113.9:51820")],
        online: true,
    };
    e.handle_netmap([&peer], t0);
    assert!(matches!(
        e.poll_event(),
        Some(Event::SetPath {
            target: Dest::Relay(NodeId(2)),
            kind: PathKind::Relay,
            ..
        })
    ));
    assert_eq!(e.path(NodeId(2)).map(|p| p.kind), Some(PathKind::Relay));
    e.handle_timeout(t0 + TICK);
    let sent: Vec<Dest> = std::iter::from_fn(|| e.poll_transmit())
        .map(|t| t.dest)
        .collect();
    assert!(
        sent.contains(&Dest::Addr(addr("203.0.113.9:51820"))),
        "{sent:?}"
    );
    let events: Vec<Event> = std::iter::from_fn(|| e.poll_event()).collect();
    assert!(events.contains(&Event::Punch(NodeId(2))), "{events:?}");
    // Garbage and oversized datagrams change nothing.
    e.handle_disco(Dest::Addr(addr("203.0.113.9:51820")), &[0xff; 40], t0);
    e.handle_disco(Dest::Addr(addr("203.0.113.9:51820")), &[0; 4000], t0);
    assert_eq!(e.poll_transmit(), None);
}

/// Feeds the reflector's answers: this host's mapping is `observed` for
/// both reflector ports (endpoint-independent).
fn answer_reflectors(e: &mut PathEngine, observed: SocketAddr, now: Instant) {
    for _ in 0..2 {
        let reqs: Vec<Transmit> = std::iter::from_fn(|| e.poll_transmit()).collect();
        for t in reqs {
            if let Ok(u) = DiscoMsg::decode(&t.payload) {
                if let Some(DiscoMsg::ReflectRequest { txid }) = u.unauthenticated() {
                    let reply = DiscoMsg::ReflectReply { txid, observed }.encode(None);
                    e.handle_disco(t.dest, &reply, now);
                }
            }
        }
    }
}

/// A `ScanMe` starts a scan only when it is authentic, fresh, and names an
/// address the netmap lists for its sender; the scan sends 64 probes a tick
/// to that address and stops at its budget.
#[test]
fn a_scan_needs_an_authentic_request_for_a_listed_address_and_is_bounded() {
    use crate::birthday::{SCAN_MAX, SCAN_PER_TICK};
    let t0 = Instant::now();
    let mut e = engine(1, t0);
    answer_reflectors(&mut e, addr("203.0.113.5:51820"), t0);
    assert_eq!(
        e.netcheck().mapping(),
        crate::netcheck::Mapping::EndpointIndependent
    );
    let hard_secret = StaticSecret::from([9u8; 32]);
    let hard = PeerInput {
        id: NodeId(2),
        key: PublicKey::from(&hard_secret).to_bytes(),
        endpoints: vec![addr("203.0.113.9:40000")],
        online: true,
    };
    e.handle_netmap([&hard], t0);
    while e.poll_transmit().is_some() {}
    let key = probe_key(
        hard_secret
            .diffie_hellman(&PublicKey::from(&StaticSecret::from([1u8; 32])))
            .as_bytes(),
    );
    let scan_me = |sent_at: u64, txid: u8, public: &str, key: &[u8; 32]| {
        DiscoMsg::ScanMe {
            txid: [txid; 12],
            sender: hard.key,
            sent_at,
            sockets: 256,
            public: addr(public),
        }
        .encode(Some(key))
    };
    let probes_to = |e: &mut PathEngine, ip: &str| {
        std::iter::from_fn(|| e.poll_transmit())
            .filter(|t| matches!(t.dest, Dest::Addr(a) if a.ip().to_string() == ip))
            .count()
    };
    let from = Dest::Relay(NodeId(2));
    e.handle_disco(from, &scan_me(1, 1, "203.0.113.9:1", &[0x42; 32]), t0);
    assert_eq!(probes_to(&mut e, "203.0.113.9"), 0, "a forged request");
    e.handle_disco(from, &scan_me(2, 2, "203.0.113.66:1", &key), t0);
    assert_eq!(
        probes_to(&mut e, "203.0.113.66"),
        0,
        "an address not listed"
    );
    e.handle_disco(from, &scan_me(3, 3, "203.0.113.9:1", &key), t0);
    assert_eq!(
        probes_to(&mut e, "203.0.113.9"),
        SCAN_PER_TICK as usize,
        "a scan starts at once"
    );
    e.handle_disco(from, &scan_me(3, 3, "203.0.113.9:1", &key), t0);
    e.handle_disco(from, &scan_me(4, 4, "203.0.113.9:1", &key), t0);
    assert_eq!(probes_to(&mut e, "203.0.113.9"), 0, "a replay or a repeat");
    let mut sent = SCAN_PER_TICK as usize;
    let mut now = t0;
    for _ in 0..200 {
        now += TICK;
        e.handle_timeout(now);
        sent += probes_to(&mut e, "203.0.113.9");
    }
    // The scan's probes, and the ordinary probes of the listed endpoint
    // (every second while relayed) besides.
    assert!(
        sent >= SCAN_MAX as usize && sent <= SCAN_MAX as usize + 60,
        "{sent} probes"
    );
}

fn input(id: u64, port: u16) -> PeerInput {
    PeerInput {
        id: NodeId(id),
        key: PublicKey::from(&StaticSecret::from([id as u8; 32])).to_bytes(),
        endpoints: vec![addr(&format!("203.0.113.{id}:{port}"))],
        online: true,
    }
}

/// What the engine asked of the driver since the last look.
fn drain(e: &mut PathEngine) -> (Vec<Dest>, Vec<NodeId>) {
    let sent = std::iter::from_fn(|| e.poll_transmit())
        .map(|t| t.dest)
        .collect();
    let set = std::iter::from_fn(|| e.poll_event())
        .filter_map(|ev| match ev {
            Event::SetPath { peer, .. } => Some(peer),
            _ => None,
        })
        .collect();
    (sent, set)
}

#[test]
fn a_delta_touches_only_the_peers_it_names_and_matches_a_whole_netmap() {
    let t0 = Instant::now();
    let mut whole = engine(1, t0);
    let mut delta = engine(1, t0);
    let mut peers: Vec<PeerInput> = (2..40).map(|i| input(i, 51820)).collect();
    whole.handle_netmap(&peers, t0);
    delta.handle_netmap(&peers, t0);
    drain(&mut whole);
    drain(&mut delta);
    // Peer 5 moves, peer 7 leaves, peer 90 joins.
    let t1 = t0 + Duration::from_millis(10);
    peers[3] = input(5, 4000);
    peers.retain(|p| p.id != NodeId(7));
    peers.push(input(90, 51820));
    whole.handle_netmap(&peers, t1);
    let changed = [input(5, 4000), input(90, 51820)];
    delta.handle_peers_changed(&changed, &[NodeId(7)], t1);
    let (w_sent, w_set) = drain(&mut whole);
    let (d_sent, d_set) = drain(&mut delta);
    assert_eq!(d_set, vec![NodeId(5), NodeId(90)], "only the named peers");
    assert_eq!(w_set.len(), peers.len(), "a whole netmap sets every peer");
    assert_eq!(w_sent, d_sent, "the same probes either way");
    assert!(d_sent.contains(&Dest::Addr(addr("203.0.113.5:4000"))));
    assert!(delta.path(NodeId(7)).is_none());
    let mut w: Vec<_> = whole.paths().map(|(id, p)| (id, p.kind)).collect();
    let mut d: Vec<_> = delta.paths().map(|(id, p)| (id, p.kind)).collect();
    w.sort_by_key(|(id, _)| *id);
    d.sort_by_key(|(id, _)| *id);
    assert_eq!(w, d);
}

#[test]
fn a_node_with_a_new_key_starts_afresh() {
    let t0 = Instant::now();
    let mut e = engine(1, t0);
    e.handle_netmap([&input(2, 51820)], t0);
    drain(&mut e);
    let mut rekeyed = input(2, 51820);
    rekeyed.key = PublicKey::from(&StaticSecret::from([77u8; 32])).to_bytes();
    e.handle_peers_changed([&rekeyed], &[], t0);
    let (_, set) = drain(&mut e);
    assert_eq!(set, vec![NodeId(2)]);
    assert_eq!(e.peers.get(&NodeId(2)).map(|p| p.key), Some(rekeyed.key));
}
