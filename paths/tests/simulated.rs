//! The path engine on a simulated internet (see `sim/`): generated
//! topologies of NATs, LANs, firewalls, loss and delay, each run for
//! simulated seconds on a fake clock, without root or sockets.

mod sim;

use std::time::Duration;

use proptest::prelude::*;
use sim::{direct_possible, Dependence, NatKind, Place, Sim, Topology};
use weft_paths::{Dest, PathKind};

const KINDS: [NatKind; 5] = [
    NatKind::FULL_CONE,
    NatKind::RESTRICTED,
    NatKind::PORT_RESTRICTED,
    NatKind::SYMMETRIC,
    NatKind::new(Dependence::AddressDependent, Dependence::AddressDependent),
];

fn place(nats: usize) -> impl Strategy<Value = Place> {
    prop_oneof![
        2 => Just(Place::Public),
        1 => Just(Place::UdpBlocked),
        6 => (0..nats).prop_map(Place::Behind),
    ]
}

fn topology() -> impl Strategy<Value = Topology> {
    (1usize..=3)
        .prop_flat_map(|n| {
            (
                proptest::collection::vec(proptest::sample::select(KINDS.to_vec()), n),
                proptest::collection::vec(place(n), 2..=6),
                0.0f64..0.03,
                1u64..40,
                any::<u64>(),
            )
        })
        .prop_map(|(nats, hosts, loss, delay_ms, seed)| Topology {
            nats,
            hosts,
            loss,
            delay: (
                Duration::from_millis(delay_ms / 2),
                Duration::from_millis(delay_ms),
            ),
            seed,
            star: false,
        })
}

/// Checks every ordered pair: direct (or LAN) exactly where theory allows,
/// the relay elsewhere, and the data plane pointed the same way.
fn check_pairs(s: &Sim, topo: &Topology) -> Result<(), TestCaseError> {
    for i in 0..s.host_count() {
        for j in 0..s.host_count() {
            if i == j {
                continue;
            }
            let (a, b) = (s.place(i), s.place(j));
            let path = s.path(i, j);
            let target = s.target(i, j);
            prop_assert!(path.is_some() && target.is_some(), "{i}->{j}: no path");
            let direct = path != Some(PathKind::Relay);
            prop_assert_eq!(
                direct,
                direct_possible(a, b, &topo.nats),
                "{}->{} ({:?} to {:?}, NATs {:?}): {:?}",
                i,
                j,
                a,
                b,
                topo.nats,
                path
            );
            prop_assert_eq!(matches!(target, Some(Dest::Addr(_))), direct);
            if let (Place::Behind(x), Place::Behind(y)) = (a, b) {
                if x == y {
                    prop_assert_eq!(path, Some(PathKind::Lan));
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Every pair is connected, and direct wherever theory allows, within
    /// 20 simulated seconds of everyone joining.
    #[test]
    fn every_pair_finds_the_path_theory_allows(topo in topology()) {
        let mut s = Sim::new(&topo);
        s.run_for(Duration::from_secs(20));
        check_pairs(&s, &topo)?;
    }
}

/// Two hosts behind NATs that map endpoint-independently to random ports:
/// when one NAT forgets its mappings, the pair leaves the direct path (to
/// the relay) and comes back to direct within 15 simulated seconds.
#[test]
fn a_lost_mapping_goes_back_to_direct() {
    let rand_cone = NatKind {
        random_ports: true,
        ..NatKind::PORT_RESTRICTED
    };
    let topo = Topology {
        nats: vec![rand_cone, NatKind::PORT_RESTRICTED],
        hosts: vec![Place::Behind(0), Place::Behind(1)],
        loss: 0.0,
        delay: (Duration::from_millis(10), Duration::from_millis(20)),
        seed: 7,
        star: false,
    };
    let mut s = Sim::new(&topo);
    s.run_for(Duration::from_secs(10));
    assert_eq!(s.path(0, 1), Some(PathKind::Direct));
    s.nats[0].flush();
    let flushed = s.elapsed();
    let mut left = None;
    let mut back = None;
    for _ in 0..(30 * 4) {
        s.run_for(Duration::from_millis(250));
        match (s.path(0, 1), left) {
            (Some(PathKind::Relay), None) => left = Some(s.elapsed()),
            (Some(PathKind::Direct), Some(_)) if back.is_none() => back = Some(s.elapsed()),
            _ => {}
        }
    }
    let left = left.expect("the path left direct after the flush");
    let back = back.expect("and came back to direct");
    assert!(
        back - flushed <= Duration::from_secs(15),
        "direct again {:?} after the flush",
        back - flushed
    );
    assert!(
        left - flushed <= Duration::from_secs(8),
        "{:?}",
        left - flushed
    );
}

/// Direct paths do not depend on the coordinator: a 20 s outage leaves
/// them direct.
#[test]
fn direct_paths_survive_a_coordinator_outage() {
    let topo = Topology {
        nats: vec![NatKind::RESTRICTED, NatKind::FULL_CONE],
        hosts: vec![Place::Behind(0), Place::Behind(1), Place::Public],
        loss: 0.01,
        delay: (Duration::from_millis(5), Duration::from_millis(30)),
        seed: 11,
        star: false,
    };
    let mut s = Sim::new(&topo);
    s.run_for(Duration::from_secs(10));
    s.coordinator_up = false;
    s.run_for(Duration::from_secs(20));
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                assert_ne!(s.path(i, j), Some(PathKind::Relay), "{i}->{j}");
            }
        }
    }
}

/// A hundred hosts in four NATs of every easy kind and on public
/// addresses all connect directly, and once settled each sends at most two
/// probes a second per peer.
#[test]
fn a_hundred_hosts_settle_direct_within_a_probe_budget() {
    let hosts = (0..100)
        .map(|i| {
            if i % 5 == 4 {
                Place::Public
            } else {
                Place::Behind(i % 4)
            }
        })
        .collect();
    let topo = Topology {
        nats: vec![
            NatKind::FULL_CONE,
            NatKind::RESTRICTED,
            NatKind::PORT_RESTRICTED,
            NatKind::PORT_RESTRICTED,
        ],
        hosts,
        loss: 0.005,
        delay: (Duration::from_millis(5), Duration::from_millis(40)),
        seed: 3,
        star: false,
    };
    let mut s = Sim::new(&topo);
    s.run_for(Duration::from_secs(15));
    let before: Vec<u64> = (0..s.host_count()).map(|i| s.sent(i)).collect();
    let window = Duration::from_secs(30);
    s.run_for(window);
    for (i, sent_before) in before.iter().enumerate() {
        for j in 0..s.host_count() {
            if i != j {
                assert_ne!(s.path(i, j), Some(PathKind::Relay), "{i}->{j}");
            }
        }
        let rate = (s.sent(i) - sent_before) as f64 / window.as_secs_f64();
        let peers = (s.host_count() - 1) as f64;
        assert!(
            rate <= 2.0 * peers,
            "host {i} sends {rate:.0} datagrams/s to {peers} peers"
        );
    }
}

/// Peers go idle after this long without data in the lazy-probing tests
/// (60 s in the agent; shorter here so the setup takes less simulated time).
const IDLE_AFTER: Duration = Duration::from_secs(20);

/// The hub's pings (probes it starts) and datagrams (with the answers to
/// its peers' probes) per second, once every spoke has been idle for a
/// while except the first `busy`, which have data every 5 s.
fn hub_rates(spokes: usize, busy: usize) -> (f64, f64) {
    let hosts = std::iter::once(Place::Public)
        .chain((0..spokes).map(|_| Place::Behind(0)))
        .collect();
    let topo = Topology {
        nats: vec![NatKind::FULL_CONE],
        hosts,
        loss: 0.0,
        delay: (Duration::from_millis(5), Duration::from_millis(20)),
        seed: 5,
        star: true,
    };
    let mut s = Sim::with_window(&topo, IDLE_AFTER);
    let tick = |s: &mut Sim, secs: u64| {
        for _ in 0..(secs / 5) {
            for j in 1..=busy {
                s.traffic(0, j);
            }
            s.run_for(Duration::from_secs(5));
        }
    };
    tick(&mut s, 30);
    for j in 1..=spokes {
        assert_ne!(s.path(0, j), Some(PathKind::Relay), "spoke {j}");
    }
    let (pings, sent) = (s.pings(0), s.sent(0));
    let window = 60;
    tick(&mut s, window);
    let w = window as f64;
    (
        (s.pings(0) - pings) as f64 / w,
        (s.sent(0) - sent) as f64 / w,
    )
}

/// Lazy probing: a host with 5,000 peers, ten of them with data, starts
/// about as many probes as one with 500: the active ten on the full
/// schedule, the idle rest in a sweep of at most 16 a second.
#[test]
fn idle_peers_cost_a_flat_probe_rate() {
    let (small, small_all) = hub_rates(500, 10);
    let (large, large_all) = hub_rates(5000, 10);
    eprintln!(
        "hub pings/s: {small:.1} with 500 peers, {large:.1} with 5000 \
         (all datagrams, with answers to the peers' own sweeps: {small_all:.1}, {large_all:.1})"
    );
    assert!(
        large <= 10.0 * 1.0 + 16.0 + 2.0,
        "{large:.1} pings/s with 5000 peers"
    );
    assert!(large <= small * 1.5 + 2.0, "{large:.1}/s vs {small:.1}/s");
}

/// An idle pair whose NATs forgot their mappings finds a direct path
/// again once data flows: woken, its current path does not answer, it
/// goes through the relay and punches to the new mappings.
#[test]
fn an_idle_peer_wakes_on_traffic_and_recovers() {
    let rand_cone = NatKind {
        random_ports: true,
        ..NatKind::PORT_RESTRICTED
    };
    let topo = Topology {
        nats: vec![rand_cone, rand_cone],
        hosts: vec![Place::Behind(0), Place::Behind(1)],
        loss: 0.0,
        delay: (Duration::from_millis(10), Duration::from_millis(20)),
        seed: 9,
        star: false,
    };
    let mut s = Sim::with_window(&topo, IDLE_AFTER);
    s.run_for(Duration::from_secs(30));
    assert_eq!(s.path(0, 1), Some(PathKind::Direct));
    let old = s.target(0, 1);
    s.nats[0].flush();
    s.nats[1].flush();
    s.run_for(Duration::from_secs(20));
    // Idle: nothing noticed yet (nothing is sent to notice with).
    assert_eq!(s.target(0, 1), old);
    s.traffic(0, 1);
    let woke = s.elapsed();
    let mut back = None;
    for _ in 0..60 {
        s.run_for(Duration::from_millis(250));
        if s.path(0, 1) == Some(PathKind::Direct) && s.target(0, 1) != old {
            back = Some(s.elapsed() - woke);
            break;
        }
    }
    let back = back.expect("direct again on the new mappings");
    assert!(back <= Duration::from_secs(10), "{back:?}");
}

/// A port-restricted cone and a symmetric NAT: no direct path by probing
/// and punching alone (each side's filter wants the exact port the other
/// NAT picks), but the birthday technique finds one. Over 50 seeds with
/// loss, every pair goes direct, and the time from joining to direct is
/// reported.
#[test]
fn easy_and_symmetric_nats_go_direct_by_birthday() {
    let mut times = Vec::new();
    for seed in 0..50 {
        let topo = Topology {
            nats: vec![NatKind::PORT_RESTRICTED, NatKind::SYMMETRIC],
            hosts: vec![Place::Behind(0), Place::Behind(1)],
            loss: 0.01,
            delay: (Duration::from_millis(5), Duration::from_millis(40)),
            seed,
            star: false,
        };
        let mut s = Sim::new(&topo);
        let mut at = None;
        for _ in 0..(30 * 4) {
            s.run_for(Duration::from_millis(250));
            if s.path(0, 1) == Some(PathKind::Direct) && s.path(1, 0) == Some(PathKind::Direct) {
                at = Some(s.elapsed());
                break;
            }
        }
        let at = at.unwrap_or_else(|| {
            panic!("seed {seed}: still {:?} / {:?}", s.path(0, 1), s.path(1, 0))
        });
        times.push(at.as_secs_f64());
        // The hard side sends from the side socket that got through, and
        // keeps only that one once the spray is over.
        let hard = s.target(1, 0);
        assert!(
            matches!(hard, Some(Dest::Addr(a)) if weft_paths::side::parse_side(&a).is_some()),
            "seed {seed}: {hard:?}"
        );
        s.run_for(Duration::from_secs(1));
        assert_eq!(s.side_sockets(1), (1, 1), "seed {seed}");
        assert_eq!(
            s.side_sockets(0),
            (0, 0),
            "seed {seed}: the easy side sprays nothing"
        );
    }
    times.sort_by(f64::total_cmp);
    eprintln!(
        "easy <-> symmetric, joined to direct: median {:.2} s, max {:.2} s over {} seeds",
        times[times.len() / 2],
        times[times.len() - 1],
        times.len()
    );
}

/// Two symmetric NATs: the birthday technique cannot help (neither side's
/// mapping is the same for every destination), so the pair stays relayed,
/// each side sprays less and less often (at most 4 times in 5 minutes),
/// and no side socket stays open.
#[test]
fn two_symmetric_nats_stay_relayed_and_spray_ever_less() {
    let topo = Topology {
        nats: vec![NatKind::SYMMETRIC, NatKind::SYMMETRIC],
        hosts: vec![Place::Behind(0), Place::Behind(1)],
        loss: 0.0,
        delay: (Duration::from_millis(5), Duration::from_millis(20)),
        seed: 4,
        star: false,
    };
    // Idle only after the whole run: the peers stay on the full schedule.
    let mut s = Sim::with_window(&topo, Duration::from_secs(3600));
    s.run_for(Duration::from_secs(300));
    for (i, j) in [(0, 1), (1, 0)] {
        assert_eq!(s.path(i, j), Some(PathKind::Relay));
        let (open, sprays) = s.side_sockets(i);
        assert!((1..=4).contains(&sprays), "host {i}: {sprays} sprays");
        // Sprays start near 3 s, 83 s and 223 s: none is open at 300 s.
        assert_eq!(open, 0, "host {i}: side sockets open");
    }
}
