//! The lab's NAT routers behave as RFC 4787 names them, judged from what
//! servers on the internet and hosts on the LAN observe: one router, two
//! LAN hosts, two servers with two ports each.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use weft_tests::nat::{self, NatKind, NatRouter};
use weft_tests::{in_netns, require_root, Lab};

const WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const SERVERS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(203, 0, 113, 21),
    Ipv4Addr::new(203, 0, 113, 22),
];
const HOSTS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 11), Ipv4Addr::new(198, 18, 0, 12)];
const SERVER_PORTS: [u16; 2] = [3478, 3479];
/// The coordinator, for the firewall: on the first server.
const COORDINATOR_PORT: u16 = 7443;
/// How long a packet that must arrive may take.
const ARRIVES: Duration = Duration::from_secs(2);
/// How long to wait for a packet that must not arrive.
const STAYS_OUT: Duration = Duration::from_millis(300);

/// One NAT router with its LAN hosts and internet servers.
struct Net {
    lab: Lab,
    router: NatRouter,
    hosts: [String; 2],
    servers: [String; 2],
}

fn net(kind: NatKind) -> Net {
    let lab = Lab::new("nat");
    let inet = lab.netns("inet");
    lab.bridge(&inet, "sw0");
    let r = lab.netns("r");
    lab.veth(&r, "wan", &inet, "r");
    lab.attach(&inet, "r", "sw0");
    lab.addr(&r, "wan", &format!("{WAN}/24"));
    lab.bridge(&r, "lan");
    lab.addr(&r, "lan", "198.18.0.1/24");
    lab.forwarding(&r);
    let servers = [0, 1].map(|i| {
        let ns = lab.netns(&format!("s{i}"));
        let port = format!("s{i}");
        lab.veth(&ns, "eth0", &inet, &port);
        lab.attach(&inet, &port, "sw0");
        lab.addr(&ns, "eth0", &format!("{}/24", SERVERS[i]));
        if !kind.translates() {
            lab.route(&ns, "198.18.0.0/24", &WAN.to_string());
        }
        ns
    });
    let hosts = [0, 1].map(|i| {
        let ns = lab.netns(&format!("h{i}"));
        let port = format!("h{i}");
        lab.veth(&ns, "eth0", &r, &port);
        lab.attach(&r, &port, "lan");
        lab.addr(&ns, "eth0", &format!("{}/24", HOSTS[i]));
        lab.route(&ns, "default", "198.18.0.1");
        ns
    });
    let router = NatRouter {
        ns: r,
        wan_if: "wan".into(),
        wan_ip: WAN,
        lan_if: "lan".into(),
        hosts: HOSTS.to_vec(),
    };
    let coordinator = SocketAddr::from((SERVERS[0], COORDINATOR_PORT));
    nat::install(&lab, &router, kind, coordinator).expect("install the NAT");
    Net {
        lab,
        router,
        hosts,
        servers,
    }
}

/// A UDP socket bound to `ip:port` inside `ns`.
fn udp(ns: &str, ip: Ipv4Addr, port: u16) -> UdpSocket {
    in_netns(ns, move || UdpSocket::bind(SocketAddrV4::new(ip, port)))
        .join()
        .expect("bind thread")
        .unwrap_or_else(|e| panic!("bind {ip}:{port}: {e}"))
}

/// The four server sockets: server 0 port 0, server 0 port 1, server 1 ...
fn server_sockets(n: &Net) -> Vec<UdpSocket> {
    (0..2)
        .flat_map(|s| SERVER_PORTS.map(|p| udp(&n.servers[s], SERVERS[s], p)))
        .collect()
}

/// Waits up to `within` for a datagram holding `payload` on `sock`; its
/// source. Other datagrams are skipped.
fn arrives(sock: &UdpSocket, payload: &[u8], within: Duration) -> Option<SocketAddr> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("set timeout");
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if &buf[..n] == payload => return Some(from),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// Sends `payload` from `from` to `to`'s address and returns the source
/// `to` saw: the public mapping.
fn mapping(from: &UdpSocket, to: &UdpSocket, payload: &[u8]) -> SocketAddr {
    let dst = to.local_addr().expect("server address");
    from.send_to(payload, dst).expect("send");
    arrives(to, payload, ARRIVES).unwrap_or_else(|| panic!("{dst} got nothing"))
}

fn check_udp_nat(kind: NatKind) {
    let n = net(kind);
    let servers = server_sockets(&n);
    let block = |i: usize| n.router.ports(HOSTS[i]).expect("host block");

    // Mapping: what every server address and port sees of one LAN endpoint.
    let h0 = udp(&n.hosts[0], HOSTS[0], 4000);
    let seen: Vec<SocketAddr> = servers.iter().map(|s| mapping(&h0, s, b"map")).collect();
    assert!(seen.iter().all(|m| m.ip() == WAN), "{kind}: {seen:?}");
    if kind.endpoint_independent_mapping() {
        assert!(
            seen.iter().all(|m| *m == seen[0]),
            "{kind}: one endpoint, several mappings: {seen:?}"
        );
        assert!(block(0).contains(&seen[0].port()), "{kind}: {seen:?}");
    } else {
        let ports: HashSet<u16> = seen.iter().map(SocketAddr::port).collect();
        assert_eq!(ports.len(), seen.len(), "{kind}: ports reused: {seen:?}");
    }
    // The other host, same source port: a mapping of its own.
    let h1 = udp(&n.hosts[1], HOSTS[1], 4000);
    let other = mapping(&h1, &servers[0], b"map-h1");
    assert_ne!(other, seen[0], "{kind}: two hosts share a mapping");
    if kind.endpoint_independent_mapping() {
        assert!(block(1).contains(&other.port()), "{kind}: {other}");
    }

    // Filtering: a fresh endpoint that has sent only to server 0 port 0.
    let h = udp(&n.hosts[0], HOSTS[0], 4001);
    let m = mapping(&h, &servers[0], b"hello");
    servers[0].send_to(b"reply", m).expect("send");
    assert!(
        arrives(&h, b"reply", ARRIVES).is_some(),
        "{kind}: the reply from the contacted endpoint was dropped"
    );
    let (same_addr, other_addr) = match kind {
        NatKind::EimEif => (true, true),
        NatKind::EimAdf => (true, false),
        _ => (false, false),
    };
    servers[1].send_to(b"other-port", m).expect("send");
    let got = arrives(
        &h,
        b"other-port",
        if same_addr { ARRIVES } else { STAYS_OUT },
    );
    assert_eq!(
        got.is_some(),
        same_addr,
        "{kind}: from the contacted address, another port: arrived {got:?}"
    );
    servers[2].send_to(b"other-addr", m).expect("send");
    let got = arrives(
        &h,
        b"other-addr",
        if other_addr { ARRIVES } else { STAYS_OUT },
    );
    assert_eq!(
        got.is_some(),
        other_addr,
        "{kind}: from an address never contacted: arrived {got:?}"
    );

    // No hairpin: the other LAN host sending to the public mapping reaches
    // the router, not the host.
    h1.send_to(b"hairpin", m).expect("send");
    assert!(
        arrives(&h, b"hairpin", STAYS_OUT).is_none(),
        "{kind}: hairpinned"
    );

    if kind.endpoint_independent_mapping() {
        // A NAT that forgets its mappings makes a new one on the next send,
        // endpoint-independent again.
        nat::flush_conntrack(&n.lab, &n.router.ns).expect("flush");
        let again: Vec<SocketAddr> = [&servers[0], &servers[3]]
            .iter()
            .map(|s| mapping(&h0, s, b"again"))
            .collect();
        assert_eq!(again[0], again[1], "{kind}: after a flush: {again:?}");
        assert!(block(0).contains(&again[0].port()) && again[0].ip() == WAN);
    }
}

#[test]
fn endpoint_independent_mapping_and_filtering() {
    if !require_root() {
        return;
    }
    check_udp_nat(NatKind::EimEif);
}

#[test]
fn endpoint_independent_mapping_address_dependent_filtering() {
    if !require_root() {
        return;
    }
    check_udp_nat(NatKind::EimAdf);
}

#[test]
fn endpoint_independent_mapping_address_and_port_dependent_filtering() {
    if !require_root() {
        return;
    }
    check_udp_nat(NatKind::EimApdf);
}

#[test]
fn symmetric_nat_maps_each_destination_to_a_random_port() {
    if !require_root() {
        return;
    }
    check_udp_nat(NatKind::Symmetric);
}

/// A TCP listener on `ip:port` inside `ns`.
fn tcp_listener(ns: &str, ip: Ipv4Addr, port: u16) -> TcpListener {
    in_netns(ns, move || TcpListener::bind(SocketAddrV4::new(ip, port)))
        .join()
        .expect("bind thread")
        .unwrap_or_else(|e| panic!("listen {ip}:{port}: {e}"))
}

/// Whether a TCP connection from `ns` to `to` is set up within `within`.
fn tcp_connects(ns: &str, to: SocketAddr, within: Duration) -> bool {
    in_netns(ns, move || TcpStream::connect_timeout(&to, within))
        .join()
        .expect("connect thread")
        .is_ok()
}

#[test]
fn firewall_lets_no_udp_out_and_only_tcp_to_the_coordinator() {
    if !require_root() {
        return;
    }
    let n = net(NatKind::UdpBlocked);
    let servers = server_sockets(&n);
    let h = udp(&n.hosts[0], HOSTS[0], 4000);
    for s in &servers {
        h.send_to(b"udp", s.local_addr().expect("address"))
            .expect("send");
    }
    for s in &servers {
        assert!(arrives(s, b"udp", STAYS_OUT).is_none(), "UDP got out");
    }

    let coordinator = SocketAddr::from((SERVERS[0], COORDINATOR_PORT));
    let l = tcp_listener(&n.servers[0], SERVERS[0], COORDINATOR_PORT);
    assert!(tcp_connects(&n.hosts[0], coordinator, ARRIVES));
    let (_, peer) = l.accept().expect("accept");
    assert_eq!(peer.ip(), WAN, "TCP to the coordinator is masqueraded");

    let _other_port = tcp_listener(&n.servers[0], SERVERS[0], COORDINATOR_PORT + 1);
    let _other_addr = tcp_listener(&n.servers[1], SERVERS[1], COORDINATOR_PORT);
    let to = SocketAddr::from((SERVERS[0], COORDINATOR_PORT + 1));
    assert!(!tcp_connects(&n.hosts[0], to, STAYS_OUT), "TCP to {to}");
    let to = SocketAddr::from((SERVERS[1], COORDINATOR_PORT));
    assert!(!tcp_connects(&n.hosts[0], to, STAYS_OUT), "TCP to {to}");
}

#[test]
fn routed_router_shows_lan_addresses() {
    if !require_root() {
        return;
    }
    let n = net(NatKind::None);
    let servers = server_sockets(&n);
    let h = udp(&n.hosts[0], HOSTS[0], 4000);
    let seen = mapping(&h, &servers[2], b"routed");
    assert_eq!(seen, SocketAddr::from((HOSTS[0], 4000)));
    servers[1].send_to(b"in", seen).expect("send");
    assert!(arrives(&h, b"in", ARRIVES).is_some());
}
