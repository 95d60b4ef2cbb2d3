//! The engine driven by hand.

use super::*;
use crate::netcheck::relay_reason;

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
