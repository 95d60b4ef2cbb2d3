//! Garbage at every port weft listens on, all at once, for FLOOD_SECS
//! (default 60): the WireGuard port, the coordinator's QUIC and TCP port,
//! its reflectors, a host's DNS and a public service port. Traffic between
//! the hosts keeps flowing, nothing crashes, and the agents' and the
//! coordinator's memory stays flat (the figures are printed). Needs root;
//! runs alone (`.config/nextest.toml`), as it loads both cores.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_tests::cluster::{Cluster, ClusterSpec, COORDINATOR_ADDR};
use weft_tests::{in_netns, require_root, unix_now, vm_rss_kib, Lab, Pinger, Server};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// Datagrams (or connections) a second per flooded port.
const RATE: u64 = 2000;

/// xorshift64*: garbage that is the same on every run.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Fills `buf` with garbage shaped like what the port expects now and
/// then: a WireGuard type byte, the disco magic, a QUIC long header.
fn garbage(state: &mut u64, buf: &mut Vec<u8>) {
    let len = (next(state) % 1400) as usize + 1;
    buf.clear();
    buf.extend((0..len).map(|_| next(state) as u8));
    match next(state) % 5 {
        0 => buf[0] = (next(state) % 4 + 1) as u8,
        1 if len > 5 => buf[..4].copy_from_slice(&weft_proto::disco::MAGIC),
        2 => buf[0] = 0xc0 | (buf[0] & 0x0f),
        _ => {}
    }
}

/// Sends garbage datagrams to `to` from namespace `ns` at [`RATE`] until
/// `stop`; counts them in `sent`.
fn udp_flood(ns: &str, to: SocketAddr, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let seed = u64::from(to.port()) * 7919 + 1;
    in_netns(ns, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        let (mut st, mut buf) = (seed, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..RATE / 100 {
                garbage(&mut st, &mut buf);
                let _ = s.send_to(&buf, to);
                sent.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

/// Opens TCP connections to `to` from `ns`, writes garbage and closes,
/// at most [`RATE`] / 10 a second, until `stop`.
fn tcp_flood(ns: &str, to: SocketAddr, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    in_netns(ns, move || {
        let (mut st, mut buf) = (u64::from(to.port()) + 3, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..RATE / 1000 {
                if let Ok(mut c) =
                    std::net::TcpStream::connect_timeout(&to, Duration::from_millis(200))
                {
                    garbage(&mut st, &mut buf);
                    let _ = std::io::Write::write_all(&mut c, &buf);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

#[test]
fn garbage_at_every_port_changes_nothing() {
    if !require_root() {
        return;
    }
    let secs: u64 = std::env::var("FLOOD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let lab = Lab::new("fl");
    let c = Cluster::build(&lab, &weft(), ClusterSpec::hosts_only(2)).expect("cluster");
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    let b_addr = c.host_addr(1).expect("address");
    // A service on b, published on b's public address.
    let _svc = Server::greeter(&b.ns, SocketAddr::from((b_addr, 9000)), "svc").expect("svc");
    c.admin(&[
        "service", "expose", "svc", "--node", &b.name, "--port", "9000/tcp", "--public", "18444",
    ])
    .expect("expose");
    let coordinator: SocketAddr = COORDINATOR_ADDR.parse().expect("address");
    let targets_udp = [
        (a.ns.clone(), SocketAddr::from((b.underlay, 51820))),
        (a.ns.clone(), coordinator),
        (
            a.ns.clone(),
            SocketAddr::new(coordinator.ip(), coordinator.port() + 1),
        ),
        (
            a.ns.clone(),
            SocketAddr::new(coordinator.ip(), coordinator.port() + 2),
        ),
        (b.ns.clone(), SocketAddr::from((b_addr, 53))),
    ];
    let targets_tcp = [
        (a.ns.clone(), coordinator),
        (a.ns.clone(), SocketAddr::from((b.underlay, 18444))),
    ];
    let pids = [
        (
            "coordinator",
            c.coordinator.as_ref().expect("coordinator").pid(),
        ),
        ("agent a", a.agent.as_ref().expect("agent").pid()),
        ("agent b", b.agent.as_ref().expect("agent").pid()),
    ];
    let rss = || pids.map(|(_, p)| vm_rss_kib(p).unwrap_or(0));
    let pinger = Pinger::start(&lab, &a.ns, &b_addr.to_string(), Duration::from_millis(200));
    pinger
        .wait_reply_after(unix_now(), Duration::from_secs(5))
        .expect("pings answer");

    let stop = Arc::new(AtomicBool::new(false));
    let counts: Vec<Arc<AtomicU64>> = (0..targets_udp.len() + targets_tcp.len())
        .map(|_| Arc::default())
        .collect();
    for (i, (ns, to)) in targets_udp.iter().enumerate() {
        udp_flood(ns, *to, stop.clone(), counts[i].clone());
    }
    for (i, (ns, to)) in targets_tcp.iter().enumerate() {
        tcp_flood(ns, *to, stop.clone(), counts[targets_udp.len() + i].clone());
    }
    let from = unix_now();
    let t = Instant::now();
    // Warm-up: allocators and caches grow in the first seconds.
    std::thread::sleep(Duration::from_secs(secs.min(10)));
    let early = rss();
    std::thread::sleep(Duration::from_secs(secs.saturating_sub(10)));
    let late = rss();
    stop.store(true, Ordering::Relaxed);
    let to = unix_now();
    std::thread::sleep(Duration::from_millis(300));

    let (got, sent) = pinger.delivery(from + 1.0, to - 1.0);
    let volume: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    eprintln!(
        "flood for {:?}: sent {volume:?} (WireGuard, QUIC, reflector 1, reflector 2, DNS; TCP port, public port); {got} of {sent} pings answered",
        t.elapsed()
    );
    for (i, (name, _)) in pids.iter().enumerate() {
        eprintln!(
            "  {name}: RSS {} KiB after the first 10 s, {} KiB at the end",
            early[i], late[i]
        );
    }
    for (name, pid) in pids {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{name} died under the flood"
        );
    }
    for (i, (name, _)) in pids.iter().enumerate() {
        assert!(
            late[i] < early[i] + 16 * 1024,
            "{name} grew from {} to {} KiB under the flood",
            early[i],
            late[i]
        );
    }
    assert!(
        volume.iter().all(|v| *v > 0),
        "a flood sent nothing: {volume:?}"
    );
    assert!(
        got * 100 >= sent * 90,
        "{got} of {sent} pings answered under the flood"
    );
    // Still a working mesh and coordinator afterwards.
    let greeting = weft_tests::greet(
        &a.ns,
        SocketAddr::from((b_addr, 9000)),
        Duration::from_secs(5),
    )
    .expect("the service after the flood");
    assert_eq!(greeting, "svc");
    c.admin(&["node", "list"])
        .expect("the coordinator answers after the flood");
}
