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
