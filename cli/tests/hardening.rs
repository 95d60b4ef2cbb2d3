//! Hardening, in namespaces: what a joined host must not be able to do to
//! another. Needs root; in CI (`CI=true`) a missing privilege fails instead
//! of skipping.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use weft_tests::cluster::{Cluster, ClusterSpec};
use weft_tests::{
    greet, in_netns, ping_with, require_root, snmp_counter, vm_rss_kib, Capture, Lab, Server,
};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// One of host `i`'s data-plane drop counters, from `weft status --json`.
fn drops(c: &Cluster, i: usize, reason: &str) -> u64 {
    let s = c.status(i).expect("status");
    s["drops"]
        .as_array()
        .and_then(|d| {
            d.iter()
                .find(|e| e[0].as_str() == Some(reason))
                .and_then(|e| e[1].as_u64())
        })
        .unwrap_or_else(|| panic!("no {reason} counter in {s}"))
}

/// Two hosts and no policy (everything allowed). The attacker adds a
/// network outside the mesh to its own WireGuard peer entry for the victim
/// and routes it into its tunnel: the victim must not forward or deliver
/// such packets, only packets to its own subnet.
#[test]
fn a_peer_cannot_use_a_host_as_a_router_out_of_the_mesh() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("rt");
    let c = Cluster::build(&lab, &weft(), ClusterSpec::hosts_only(2)).expect("cluster");
    let (attacker, victim) = (&c.hosts[0], &c.hosts[1]);
    let status = c.status(1).expect("status");
    let victim_key = status["host"]["public_key"]
        .as_str()
        .expect("key")
        .to_string();
    let victim_subnet = status["host"]["subnet"]
        .as_str()
        .expect("subnet")
        .to_string();
    let victim_addr = c.host_addr(1).expect("address");
    let attacker_addr = c.host_addr(0).expect("address");

    // A listener on the victim's overlay address (the mesh may reach it)
    // and one on an address outside the mesh (it may not).
    let inside = SocketAddr::from((victim_addr, 7070));
    let outside: SocketAddr = "198.51.100.7:7070".parse().expect("address");
    lab.ok(
        &victim.ns,
        &["ip", "addr", "add", "198.51.100.7/32", "dev", "lo"],
    );
    let _a = Server::greeter(&victim.ns, inside, "mesh").expect("listener");
    let _b = Server::greeter(&victim.ns, outside, "private").expect("listener");
    assert_eq!(
        greet(&attacker.ns, inside, Duration::from_secs(5)).expect("the mesh works"),
        "mesh"
    );

    lab.ok(
        &attacker.ns,
        &[
            "wg",
            "set",
            &attacker.interface,
            "peer",
            &victim_key,
            "allowed-ips",
            &format!("{victim_subnet},198.51.100.7/32"),
        ],
    );
    lab.ok(
        &attacker.ns,
        &[
            "ip",
            "route",
            "add",
            "198.51.100.7/32",
            "dev",
            &attacker.interface,
            "src",
            &attacker_addr.to_string(),
        ],
    );
    let before = drops(&c, 1, "rx_dst_not_local");
    let got = greet(&attacker.ns, outside, Duration::from_secs(3));
    assert!(
        got.is_err(),
        "the attacker reached a non-mesh address through the victim: {got:?}"
    );
    let after = drops(&c, 1, "rx_dst_not_local");
    eprintln!("router attempt: rx_dst_not_local {before} -> {after}");
    assert!(after > before, "the drop was not counted");
    // The mesh itself still works for the same peer.
    assert_eq!(
        greet(&attacker.ns, inside, Duration::from_secs(5)).expect("the mesh still works"),
        "mesh"
    );

    // Advertised but not approved, the network is still closed.
    weft_tests::try_run(&[
        &weft().to_string_lossy(),
        "route",
        "advertise",
        "198.51.100.0/24",
        "--state-dir",
        &victim.state_dir.to_string_lossy(),
    ])
    .expect("route advertise");
    std::thread::sleep(Duration::from_millis(1500));
    let before = drops(&c, 1, "rx_dst_not_local");
    let got = greet(&attacker.ns, outside, Duration::from_secs(3));
    assert!(
        got.is_err(),
        "an unapproved route let the attacker in: {got:?}"
    );
    assert!(
        drops(&c, 1, "rx_dst_not_local") > before,
        "the drop was not counted"
    );

    // Approved, it is the victim's to route: the peer reaches it.
    c.admin(&[
        "route",
        "approve",
        "--node",
        &victim.name,
        "198.51.100.0/24",
    ])
    .expect("route approve");
    let got = weft_tests::wait_for(
        Duration::from_secs(10),
        "the approved route to open",
        || greet(&attacker.ns, outside, Duration::from_secs(1)).ok(),
    )
    .expect("an approved route stays closed");
    assert_eq!(got, "private");
}

/// A genuine disco ping, captured on the wire and replayed from 10,000
/// source addresses, counts once: the victim neither answers the copies
/// nor starts probing the addresses they claim to come from.
#[test]
fn a_replayed_disco_ping_is_answered_once() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("rp");
    let c = Cluster::build(&lab, &weft(), ClusterSpec::hosts_only(2)).expect("cluster");
    let victim = &c.hosts[1];
    let cap = Capture::open(&victim.ns, "eth0").expect("capture");
    let ping = cap
        .find_udp(Duration::from_secs(10), |u| {
            u.dst.ip() == std::net::IpAddr::V4(victim.underlay)
                && u.payload.len() > 5
                && u.payload[..4] == weft_proto::disco::MAGIC
                && u.payload[4] == 3
        })
        .expect("capture")
        .expect("no disco ping seen");
    drop(cap);
    let pid = victim.agent.as_ref().expect("agent").pid();
    let rss_before = vm_rss_kib(pid).expect("rss");
    let out_before = snmp_counter(&victim.ns, "Udp", "OutDatagrams").expect("snmp");
    let (to, payload) = (ping.dst, ping.payload.clone());
    in_netns(&c.hosts[0].ns, move || {
        for _ in 0..10_000 {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.send_to(&payload, to).expect("send");
        }
    })
    .join()
    .expect("replay");
    std::thread::sleep(Duration::from_secs(1));
    let sent = snmp_counter(&victim.ns, "Udp", "OutDatagrams").expect("snmp") - out_before;
    let rss_after = vm_rss_kib(pid).expect("rss");
    eprintln!(
        "replayed ping x10000: the victim sent {sent} datagrams meanwhile; agent RSS {rss_before} -> {rss_after} KiB"
    );
    assert!(sent < 300, "the victim answered replays: {sent} datagrams");
    assert!(
        rss_after < rss_before + 4096,
        "RSS grew {rss_before} -> {rss_after} KiB"
    );
    let peer = c.host_addr(0).expect("address").to_string();
    ping_with(&victim.ns, &["-c", "2", "-W", "2", &peer]).expect("the hosts still talk");
}
