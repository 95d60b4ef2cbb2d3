//! NAT traversal in namespaces: a matrix of RFC 4787 NAT kinds, each pair of
//! hosts in different clouds, with the path theory allows asserted (direct
//! wherever one side maps endpoint-independently: by probing and punching,
//! or, between a port-restricted cone and a symmetric NAT, by the birthday
//! technique from the symmetric side's side sockets; relay between two
//! symmetric NATs and for a firewall without UDP); time from join to a
//! direct path per pair; failover when a NAT forgets its mappings
//! mid-transfer. Needs root; in CI a missing privilege fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use weft_tests::cluster::{Cluster, ClusterSpec};
use weft_tests::nat::flush_conntrack;
use weft_tests::{in_netns, ping_with, require_root, wait_for, Lab, NatKind, SteadyStream};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// Whether two hosts behind NATs `a` and `b` (in different clouds) can have
/// a direct path.
fn direct_possible(a: NatKind, b: NatKind) -> bool {
    use NatKind::*;
    !matches!(
        (a, b),
        (UdpBlocked, _) | (_, UdpBlocked) | (Symmetric, Symmetric)
    )
}

/// Whether only the birthday technique gives the pair a direct path.
fn needs_birthday(a: NatKind, b: NatKind) -> bool {
    use NatKind::*;
    matches!((a, b), (Symmetric, EimApdf) | (EimApdf, Symmetric))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn nat_matrix_paths_traffic_and_time_to_direct() {
    if !require_root() {
        return;
    }
    let kinds = [
        NatKind::EimEif,
        NatKind::EimAdf,
        NatKind::EimApdf,
        NatKind::Symmetric,
        NatKind::Symmetric,
        NatKind::UdpBlocked,
    ];
    let lab = Lab::new("nm");
    let spec = ClusterSpec {
        clouds: kinds.len(),
        hosts_per_cloud: 1,
        containers_per_host: 0,
        ..ClusterSpec::default()
    }
    .with_nat(&kinds);
    let c = Cluster::build(&lab, &weft(), spec).expect("cluster");
    let n = c.hosts.len();
    let expected = |i: usize, j: usize| {
        if direct_possible(kinds[i], kinds[j]) {
            "direct"
        } else {
            "relay"
        }
    };
    // Converge: every pair on the path theory allows (a birthday pair
    // starts spraying 3 s after it joined, then takes up to 12 s).
    let converged = wait_for(
        Duration::from_secs(30),
        "every pair on its expected path",
        || {
            let mut wrong = Vec::new();
            for i in 0..n {
                for j in (0..n).filter(|j| *j != i) {
                    let got = c.path(i, &c.hosts[j].name).map(|p| p.0).unwrap_or_default();
                    if got != expected(i, j) {
                        wrong.push((i, j, got));
                    }
                }
            }
            wrong.is_empty().then_some(())
        },
    );
    if converged.is_err() {
        let mut report = String::new();
        for i in 0..n {
            for j in (0..n).filter(|j| *j != i) {
                let (got, why) = c.path(i, &c.hosts[j].name).unwrap_or_default();
                if got != expected(i, j) {
                    report.push_str(&format!(
                        "\n  {} ({}) -> {} ({}): {got}, expected {} {}",
                        c.hosts[i].name,
                        kinds[i],
                        c.hosts[j].name,
                        kinds[j],
                        expected(i, j),
                        why.unwrap_or_default()
                    ));
                }
            }
        }
        panic!("pairs on the wrong path:{report}");
    }
    // Every pair exchanges traffic, relayed or not.
    for i in 0..n {
        for j in (0..n).filter(|j| *j != i) {
            let to = c.host_addr(j).expect("address").to_string();
            ping_with(&c.hosts[i].ns, &["-c", "2", "-W", "2", &to]).unwrap_or_else(|e| {
                panic!(
                    "{} ({}) cannot reach {} ({}): {e:#}",
                    c.hosts[i].name, kinds[i], c.hosts[j].name, kinds[j]
                )
            });
        }
    }
    // `weft netcheck` names each NAT's mapping; `weft ping` names the path.
    let weft_bin = weft();
    let weft_s = weft_bin.to_string_lossy();
    for (i, kind) in kinds.iter().enumerate() {
        let dir = c.hosts[i].state_dir.to_string_lossy().into_owned();
        let nc =
            weft_tests::try_run(&[&weft_s, "netcheck", "--state-dir", &dir]).expect("netcheck");
        let want = match kind {
            NatKind::Symmetric => "mapping: endpoint-dependent",
            NatKind::UdpBlocked => "UDP: no answer",
            _ => "mapping: endpoint-independent",
        };
        assert!(
            nc.contains(want),
            "{} ({}): netcheck says\n{nc}",
            c.hosts[i].name,
            kinds[i]
        );
        let j = (i + 1) % n;
        let out = weft_tests::try_run(&[
            &weft_s,
            "ping",
            &c.hosts[j].name,
            "-c",
            "2",
            "--state-dir",
            &dir,
        ])
        .expect("weft ping");
        let via = format!("via {}", expected(i, j));
        assert!(
            out.contains(&via),
            "{} -> {}: weft ping says\n{out}",
            c.hosts[i].name,
            c.hosts[j].name
        );
    }
    // Time from first sight of a peer to a direct path, per direct pair;
    // the birthday pairs apart. The symmetric side of a birthday pair
    // sends from a side socket.
    let (mut times, mut birthday) = (Vec::new(), Vec::new());
    eprintln!("time from join to a direct path:");
    for i in 0..n {
        let st = c.status(i).expect("status");
        for p in st["peers"].as_array().expect("peers") {
            let name = p["name"].as_str().unwrap_or("?");
            let Some(j) = c.hosts.iter().position(|h| h.name == name) else {
                continue;
            };
            let Some(t) = p["direct_after_secs"].as_f64() else {
                continue;
            };
            let endpoint = p["endpoint"].as_str().unwrap_or_default();
            eprintln!("  {} -> {name}: {t:.2} s via {endpoint}", c.hosts[i].name);
            if needs_birthday(kinds[i], kinds[j]) {
                birthday.push(t);
                if kinds[i] == NatKind::Symmetric {
                    assert!(
                        endpoint.contains("side socket"),
                        "{} -> {name}: endpoint {endpoint}",
                        c.hosts[i].name
                    );
                }
            } else {
                times.push(t);
            }
        }
    }
    let m = median(times.clone());
    let max = times.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "median {m:.2} s, max {max:.2} s over {} directed pairs by probing",
        times.len()
    );
    let (bm, bmax) = (
        median(birthday.clone()),
        birthday.iter().copied().fold(0.0, f64::max),
    );
    eprintln!(
        "easy <-> symmetric by the birthday technique: median {bm:.2} s, max {bmax:.2} s over {} directed pairs",
        birthday.len()
    );
    assert!(
        m < 2.0,
        "median time to a direct path {m:.2} s (target < 2 s)"
    );
    assert_eq!(birthday.len(), 4, "two birthday pairs, both ways");
    assert!(bmax < 25.0, "a birthday pair took {bmax:.2} s");
}

/// The NATs forget every mapping mid-transfer: the stream survives (through
/// the relay or a re-punched path) and the path returns to direct.
#[test]
fn failover_when_the_nat_forgets_its_mappings() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("fo");
    let spec = ClusterSpec {
        clouds: 2,
        hosts_per_cloud: 1,
        containers_per_host: 1,
        ..ClusterSpec::default()
    }
    .with_nat(&[NatKind::EimAdf, NatKind::EimApdf]);
    let c = Cluster::build(&lab, &weft(), spec).expect("cluster");
    let peer = c.hosts[1].name.clone();
    let direct = |c: &Cluster| c.path(0, &peer).is_some_and(|p| p.0 == "direct");
    wait_for(Duration::from_secs(15), "a direct path", || {
        direct(&c).then_some(())
    })
    .expect("direct before the flush");
    let a = c.hosts[0].containers[0].clone();
    let b = c.hosts[1].containers[0].clone();
    let stream =
        SteadyStream::start(&a.ns, &b.ns, SocketAddr::from((b.addr, 5401))).expect("stream");
    wait_for(Duration::from_secs(10), "the stream to start", || {
        (stream.received() > 0).then_some(())
    })
    .expect("stream");

    // Where host 0 sends the peer's traffic: its path and endpoint.
    let where_to = |c: &Cluster| -> (String, String) {
        let st = c.status(0).unwrap_or_default();
        let p = st["peers"]
            .as_array()
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p["name"].as_str() == Some(peer.as_str()))
            })
            .cloned()
            .unwrap_or_default();
        (
            p["path"].as_str().unwrap_or_default().to_string(),
            p["endpoint"].as_str().unwrap_or_default().to_string(),
        )
    };
    let (_, old_endpoint) = where_to(&c);
    let flushed = Instant::now();
    for cloud in 1..=2 {
        flush_conntrack(&lab, &c.nat_router_ns(cloud)).expect("flush conntrack");
    }
    // The NATs pick new ports: the old mapping is dead, so the path must
    // leave it (to the relay, or straight to the new mapping) and settle on
    // a direct path again.
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut left = None;
    let last = stream.received();
    let back = wait_for(
        Duration::from_secs(40),
        "the path to leave the dead mapping and return to direct",
        || {
            std::thread::sleep(Duration::from_millis(200));
            let now = where_to(&c);
            if seen.last() != Some(&now) {
                seen.push(now.clone());
            }
            if left.is_none() && (now.0 != "direct" || now.1 != old_endpoint) {
                left = Some(flushed.elapsed());
            }
            (left.is_some() && now.0 == "direct").then(|| flushed.elapsed())
        },
    );
    eprintln!("paths after the flush: {seen:?}; left the old mapping after {left:?}, back to direct after {back:?}");
    let back = back.expect("path left the dead mapping and came back to direct");
    assert!(back < Duration::from_secs(30), "{back:?}");
    // TCP retransmits on its backed-off timer once the path is back.
    let last = wait_for(Duration::from_secs(15), "the stream to resume", || {
        let now = stream.received();
        (now > last).then_some(now)
    })
    .expect("the stream made no progress across the flush");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        stream.received() > last,
        "the stream stalled after recovery"
    );
    stream.finish().expect("stream failed");
    ping_with(&a.ns, &["-c", "2", "-W", "2", &b.addr.to_string()]).expect("ping after recovery");

    // Spoofed probes: from the internet, pings and pongs that claim to be
    // the peer but carry a wrong MAC, sent to this host's public mapping.
    // They must not move its traffic.
    let st = c.status(0).expect("status");
    let before = c.path(0, &peer).expect("path");
    let peer_key = st["peers"][0]["public_key"]
        .as_str()
        .expect("key")
        .to_string();
    let sender: [u8; 32] = base64_decode(&peer_key);
    let public: SocketAddr = st["host"]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|e| e.as_str()?.parse().ok())
        .find(|e: &SocketAddr| e.ip().to_string().starts_with("203.0.113."))
        .expect("a public mapping");
    let attacker = c.coordinator_ns.clone();
    in_netns(&attacker, move || {
        use weft_proto::disco::DiscoMsg;
        let s = std::net::UdpSocket::bind("203.0.113.1:0").expect("bind");
        let wrong_key = [0x42u8; 32];
        for i in 0..200u8 {
            let forged = if i % 2 == 0 {
                DiscoMsg::Ping {
                    txid: [i; 12],
                    sender,
                    sent_at: u64::MAX - u64::from(i),
                }
            } else {
                DiscoMsg::Pong {
                    txid: [i; 12],
                    sender,
                    observed: "203.0.113.1:9".parse().expect("addr"),
                }
            };
            let _ = s.send_to(&forged.encode(Some(&wrong_key)), public);
        }
    })
    .join()
    .expect("attacker");
    std::thread::sleep(Duration::from_secs(3));
    let after = c.path(0, &peer).expect("path");
    assert_eq!(
        after.0, "direct",
        "spoofed probes moved the path: {after:?}"
    );
    let st = c.status(0).expect("status");
    let endpoint = st["peers"][0]["endpoint"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        !endpoint.starts_with("203.0.113.1:"),
        "traffic was redirected to the spoofer: {endpoint} (was {before:?})"
    );
    ping_with(&a.ns, &["-c", "2", "-W", "2", &b.addr.to_string()]).expect("ping after spoofing");
}

fn base64_decode(s: &str) -> [u8; 32] {
    let key: weft_proto::WgPublicKey = s.parse().expect("a base64 key");
    key.0
}
