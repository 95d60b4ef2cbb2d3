//! The tunnel MTU against narrow underlays: on hosts whose links are 1280
//! or 1460 bytes, and on 1500-byte hosts behind a 1280-byte hop in the
//! middle of the internet, a 16 MiB TCP transfer between containers in two
//! clouds arrives intact, and the largest packet the tunnel takes passes.
//! Also: the MTU follows an uplink that changes, and TCP from containers
//! whose own MTU is larger than the tunnel's is clamped to it.
//! Needs root; in CI (`CI=true`) a missing privilege fails instead of skipping.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use weft_tests::cluster::{Cluster, ClusterSpec};
use weft_tests::{in_netns, ping_with, require_root, tcp_transfer, wait_for, Lab};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn link_mtu(lab: &Lab, ns: &str, dev: &str) -> u64 {
    let out = lab.ip(ns, &["-j", "link", "show", dev]);
    let v: Value = serde_json::from_str(&out).expect("ip -j link");
    v[0]["mtu"].as_u64().expect("mtu")
}

fn two_clouds(host_mtu: Option<u16>, internet_mtu: Option<u16>) -> ClusterSpec {
    ClusterSpec {
        clouds: 2,
        hosts_per_cloud: 1,
        containers_per_host: 1,
        host_mtu,
        internet_mtu,
        ..ClusterSpec::default()
    }
}

/// Builds the cluster, checks the tunnel MTU the agents picked, pings
/// with the largest inner packet (DF set) and transfers 16 MiB from a
/// container in cloud 1 to one in cloud 2, and back.
fn transfer_through(lab: &Lab, spec: ClusterSpec, tunnel_mtu: u64) -> Cluster<'_> {
    let c = Cluster::build(lab, &weft(), spec).expect("cluster");
    for (i, h) in c.hosts.iter().enumerate() {
        assert_eq!(link_mtu(lab, &h.ns, &h.interface), tunnel_mtu, "{}", h.name);
        assert_eq!(
            c.status(i).expect("status")["host"]["mtu"],
            tunnel_mtu,
            "weft status shows it"
        );
    }
    let a = c.hosts[0].containers[0].clone();
    let b = c.hosts[1].containers[0].clone();
    let payload = (tunnel_mtu - 28).to_string();
    ping_with(
        &a.ns,
        &[
            "-c",
            "2",
            "-W",
            "3",
            "-M",
            "do",
            "-s",
            &payload,
            &b.addr.to_string(),
        ],
    )
    .expect("a full-sized packet through the tunnel");
    tcp_transfer(&a.ns, &b.ns, IpAddr::V4(b.addr), 9000, 16 << 20).expect("a → b");
    tcp_transfer(&b.ns, &a.ns, IpAddr::V4(a.addr), 9001, 16 << 20).expect("b → a");
    c
}

#[test]
fn underlay_mtu_1280() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("m128");
    transfer_through(&lab, two_clouds(Some(1280), None), 1220);
}

/// GCP's default VPC MTU; and then the uplink shrinks under a running
/// agent, which follows it.
#[test]
fn underlay_mtu_1460_and_following_a_change() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("m146");
    let c = transfer_through(&lab, two_clouds(Some(1460), None), 1400);
    let h = &c.hosts[0];
    lab.mtu(&h.ns, "eth0", 1400);
    wait_for(
        Duration::from_secs(15),
        "the tunnel MTU to follow the uplink",
        || (link_mtu(&lab, &h.ns, &h.interface) == 1340).then_some(()),
    )
    .expect("followed");
    // network.json is written just after the link changes.
    let net_mtu = || -> Option<Value> {
        let net: Value =
            serde_json::from_slice(&std::fs::read(h.state_dir.join("network.json")).ok()?).ok()?;
        Some(net["mtu"].clone())
    };
    let _ = wait_for(Duration::from_secs(5), "network.json to follow", || {
        (net_mtu() == Some(Value::from(1340))).then_some(())
    });
    assert_eq!(
        net_mtu(),
        Some(Value::from(1340)),
        "new containers get the new MTU"
    );
}

/// 1500-byte hosts, but a 1280-byte hop between the clouds: the tunnel's
/// 1500-byte packets must be fragmented on the way, not dropped.
#[test]
fn a_narrow_hop_in_the_middle_fragments_instead_of_dropping() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("mhop");
    transfer_through(&lab, two_clouds(None, Some(1280)), 1440);
}

/// The MSS the sender of a TCP connection to `to` in namespace `to_ns`
/// (from `from_ns`) is allowed, as the receiver's socket sees it.
fn accepted_mss(from_ns: &str, to_ns: &str, to: SocketAddr) -> i32 {
    let (tx, rx) = std::sync::mpsc::channel();
    let server = in_netns(to_ns, move || {
        let l = TcpListener::bind(to).expect("bind");
        let _ = tx.send(());
        let (s, _) = l.accept().expect("accept");
        let mut mss: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: mss and len are live and len is mss's size.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_MAXSEG,
                (&mut mss as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        mss
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("listening");
    in_netns(from_ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
    })
    .join()
    .expect("client");
    server.join().expect("server")
}

/// Two containers whose interfaces say 1500 on hosts whose tunnel is
/// 1220: without the clamp they would agree on an MSS of 1460 and rely on
/// ICMP to learn better; with it, the SYN and SYN-ACK that enter the
/// tunnel carry at most 1180 (1220 less 40 bytes of headers).
#[test]
fn tcp_from_containers_with_a_larger_mtu_is_clamped_to_the_tunnel() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("mss");
    let c = Cluster::build(&lab, &weft(), two_clouds(Some(1280), None)).expect("cluster");
    let a = c.hosts[0].containers[0].clone();
    let b = c.hosts[1].containers[0].clone();
    for (host, ct) in [(&c.hosts[0], &a), (&c.hosts[1], &b)] {
        lab.mtu(&ct.ns, "eth0", 1500);
        // The host end of the container's veth: the bridge's other port.
        let ports = lab.ip(&host.ns, &["-j", "link", "show", "master", "weftbr0"]);
        let ports: Value = serde_json::from_str(&ports).expect("ports");
        for p in ports.as_array().expect("ports") {
            let name = p["ifname"].as_str().expect("ifname");
            lab.mtu(&host.ns, name, 1500);
        }
    }
    let mss = accepted_mss(&a.ns, &b.ns, SocketAddr::new(IpAddr::V4(b.addr), 9100));
    assert!(
        (1000..=1180).contains(&mss),
        "MSS {mss}: not clamped to the 1220-byte tunnel"
    );
    tcp_transfer(&a.ns, &b.ns, IpAddr::V4(b.addr), 9101, 4 << 20).expect("a → b");
}
