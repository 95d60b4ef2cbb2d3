//! Policy end to end, in namespaces: three clouds of one host with two
//! containers each. Allowed flows connect, denied ones do not, replies pass,
//! a deny beats a broader allow, `except:` subtracts, hosts learn only the
//! peers they may reach; a policy failing its own tests is refused; a change
//! takes effect on every host within a second (measured); a service
//! resolves by name across clouds and serves only allowed clients; a public
//! port forwards into the mesh; an advertised route reaches a namespace
//! outside the mesh. Needs root; in CI (`CI=true`) a missing privilege fails
//! instead of skipping.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_tests::cluster::{Cluster, ClusterSpec, Container};
use weft_tests::{
    greet, ping_with, require_root, resolve, try_run, udp_echo, wait_for, Lab, Server,
};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// How long a denied connection attempt is given before it counts as
/// blocked.
const DENIED_WAIT: Duration = Duration::from_millis(1500);

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

fn allowed(from: &Container, to: SocketAddr, greeting: &str) {
    let got = greet(&from.ns, to, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{} -> {to} should connect: {e:#}", from.name));
    assert_eq!(got, greeting, "{} -> {to}", from.name);
}

fn denied(from: &Container, to: SocketAddr) {
    if let Ok(got) = greet(&from.ns, to, DENIED_WAIT) {
        panic!("{} -> {to} should be blocked, but got `{got}`", from.name);
    }
}

fn peer_names(c: &Cluster, i: usize) -> Vec<String> {
    let mut v: Vec<String> = c.status(i).expect("status")["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

fn wait_peers(c: &Cluster, i: usize, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let r = wait_for(
        Duration::from_secs(5),
        "the peer sets of the policy",
        || (peer_names(c, i) == want).then_some(()),
    );
    if r.is_err() {
        panic!(
            "{} has peers {:?}, want {want:?}",
            c.hosts[i].name,
            peer_names(c, i)
        );
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write policy file");
    p.to_string_lossy().into_owned()
}

/// `weft acl set FILE`: Ok(stderr) or Err(the error message).
fn acl_set(c: &Cluster, file: &str) -> Result<String, String> {
    c.admin(&["acl", "set", file]).map_err(|e| format!("{e:#}"))
}

fn policy_v1(a2: Ipv4Addr) -> String {
    format!(
        r#"default: deny
groups:
  front: [host:c1-h1]
rules:
  - allow: {{ from: [group:front], to: [host:c2-h1], ports: [tcp/8080, icmp, udp/5353] }}
  - deny: {{ from: ["cidr:{a2}/32"], to: [host:c2-h1], ports: [tcp/8080] }}
  - allow: {{ from: [host:c2-h1], to: [host:c3-h1], ports: [tcp/7777] }}
  - allow: {{ from: ["tag:env:lab"], except: [host:c3-h1], to: [host:c2-h1], ports: [tcp/7777] }}
tests:
  - {{ from: host:c1-h1, to: "host:c2-h1:8080/tcp", expect: allow }}
  - {{ from: host:c2-h1, to: "host:c1-h1:8080/tcp", expect: deny }}
  - {{ from: "cidr:{a2}/32", to: "host:c2-h1:8080/tcp", expect: deny }}
"#
    )
}

/// v1 plus tcp/7778 into every host: from c2 to c1 and c3, from c1 to c2.
fn policy_v2(a2: Ipv4Addr) -> String {
    policy_v1(a2).replace(
        "tests:\n",
        "  - allow: { from: [host:c2-h1], to: [host:c1-h1, host:c3-h1], ports: [tcp/7778] }\n  \
         - allow: { from: [host:c1-h1], to: [host:c2-h1], ports: [tcp/7778] }\ntests:\n",
    )
}

#[test]
fn policy_services_and_routes() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("pl");
    let spec = ClusterSpec {
        clouds: 3,
        hosts_per_cloud: 1,
        containers_per_host: 2,
        tag: Some("env:lab"),
        ..ClusterSpec::default()
    };
    let mut c = Cluster::build(&lab, &weft(), spec).expect("cluster");
    let dir = lab.tempdir().to_path_buf();
    let a1 = c.hosts[0].containers[0].clone();
    let a2 = c.hosts[0].containers[1].clone();
    let b = c.hosts[1].containers[0].clone();
    let cc = c.hosts[2].containers[0].clone();
    let mut servers = Vec::new();
    for (ct, port) in [
        (&b, 8080),
        (&a1, 8080),
        (&b, 7777),
        (&cc, 7777),
        (&a1, 7778),
        (&b, 7778),
        (&cc, 7778),
        (&cc, 9000),
    ] {
        let name = format!("{}:{port}", ct.name);
        servers.push(Server::greeter(&ct.ns, sa(ct.addr, port), &name).expect("greeter"));
    }
    let name = |ct: &Container, port: u16| format!("{}:{port}", ct.name);
    let _echo_b = Server::udp_echo(&b.ns, sa(b.addr, 5353)).expect("udp echo");
    let _echo_a = Server::udp_echo(&a1.ns, sa(a1.addr, 5353)).expect("udp echo");

    // No policy yet: the whole mesh talks.
    assert_eq!(c.admin(&["acl", "get"]).expect("acl get").trim(), "");
    allowed(&a1, sa(cc.addr, 9000), &name(&cc, 9000));
    allowed(&cc, sa(a1.addr, 8080), &name(&a1, 8080));

    // Bad documents are refused with the line and what is wrong.
    let cases = [
        (
            "default: deny\nrules:\n  - allow: { from: [team:x], to: ['*'] }\n",
            "line 3",
            "unknown selector kind `team`",
        ),
        ("default: deny\nrules:\n  - allow: { from: [\n", "line ", ""),
        (
            "default: deny\nrules:\n  - allow: { from: [group:nope], to: ['*'] }\n",
            "line 3",
            "unknown group `nope`",
        ),
        ("default: maybe\n", "line 1", "write `allow` or `deny`"),
    ];
    for (i, (doc, line, what)) in cases.iter().enumerate() {
        let f = write(&dir, &format!("bad{i}.yaml"), doc);
        let e = acl_set(&c, &f).expect_err("a bad policy must be refused");
        assert!(e.contains(line) && e.contains(what), "case {i}: {e}");
    }

    // v1 in force: peers are cut down to what the policy allows.
    let v1 = write(&dir, "v1.yaml", &policy_v1(a2.addr));
    acl_set(&c, &v1).expect("v1");
    wait_peers(&c, 0, &["c2-h1"]);
    wait_peers(&c, 1, &["c1-h1", "c3-h1"]);
    wait_peers(&c, 2, &["c2-h1"]);

    // Allowed connects (its replies pass c1's filter); the reverse does not.
    allowed(&a1, sa(b.addr, 8080), &name(&b, 8080));
    denied(&b, sa(a1.addr, 8080));
    ping_with(
        &a1.ns,
        &["-c", "2", "-i", "0.2", "-W", "2", &b.addr.to_string()],
    )
    .expect("ICMP allowed c1 -> c2, replies pass");
    assert!(
        ping_with(
            &b.ns,
            &["-c", "2", "-i", "0.2", "-W", "1", &a1.addr.to_string()]
        )
        .is_err(),
        "ICMP c2 -> c1 must go unanswered"
    );
    // UDP: the echo of an allowed datagram comes back; the reverse is
    // dropped.
    udp_echo(&a1.ns, sa(b.addr, 5353), "hi", Duration::from_secs(1))
        .expect("UDP allowed c1 -> c2, its reply passes");
    assert!(
        udp_echo(&b.ns, sa(a1.addr, 5353), "hi", Duration::from_millis(500)).is_err(),
        "UDP c2 -> c1 must be dropped"
    );
    // A deny overrides the broader allow of the same host's subnet.
    denied(&a2, sa(b.addr, 8080));
    // `except:` takes c3 out of everyone with the tag.
    allowed(&a1, sa(b.addr, 7777), &name(&b, 7777));
    denied(&cc, sa(b.addr, 7777));
    allowed(&b, sa(cc.addr, 7777), &name(&cc, 7777));

    // Drops are counted per rule.
    let st = c.status(1).expect("status");
    let rule2 = st["policy"]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["rule"] == 2)
        .map_or(0, |r| r["drops"].as_u64().unwrap_or(0));
    assert!(rule2 > 0, "rule 2 drops on c2-h1: {st}");
    let text = c.status_text(1).expect("status");
    assert!(text.contains("rule 2 (deny)"), "{text}");
    assert!(
        c.status(0).expect("status")["policy"]["default_drops"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );

    // A change whose own tests fail is refused; v1 stays in force.
    let failing = policy_v2(a2.addr).replace(
        "tests:\n",
        "tests:\n  - { from: host:c3-h1, to: \"host:c1-h1:8080/tcp\", expect: allow }\n",
    );
    let f = write(&dir, "failing.yaml", &failing);
    let e = acl_set(&c, &f).expect_err("failing tests must refuse the change");
    assert!(e.contains("tests failed") && e.contains("kept"), "{e}");
    let got = c.admin(&["acl", "get"]).expect("acl get");
    assert_eq!(got, policy_v1(a2.addr), "the policy in force changed");
    denied(&a1, sa(b.addr, 7778));

    // v2 opens tcp/7778 into every host; measure until each host lets it in.
    let probes = [
        (b.clone(), sa(a1.addr, 7778), name(&a1, 7778)),
        (b.clone(), sa(cc.addr, 7778), name(&cc, 7778)),
        (a1.clone(), sa(b.addr, 7778), name(&b, 7778)),
    ];
    for (from, to, _) in &probes {
        assert!(greet(&from.ns, *to, Duration::from_millis(300)).is_err());
    }
    let v2 = write(&dir, "v2.yaml", &policy_v2(a2.addr));
    let t0 = Arc::new(Instant::now());
    let threads: Vec<_> = probes
        .iter()
        .cloned()
        .map(|(from, to, want)| {
            let t0 = t0.clone();
            std::thread::spawn(move || loop {
                if let Ok(got) = greet(&from.ns, to, Duration::from_millis(25)) {
                    assert_eq!(got, want);
                    return t0.elapsed();
                }
                if t0.elapsed() > Duration::from_secs(10) {
                    return Duration::MAX;
                }
            })
        })
        .collect();
    acl_set(&c, &v2).expect("v2");
    let took: Vec<Duration> = threads
        .into_iter()
        .map(|t| t.join().expect("probe thread"))
        .collect();
    let worst = took.iter().max().copied().unwrap_or(Duration::MAX);
    eprintln!(
        "policy change in force on every host after {:?} (per host: {:?})",
        worst, took
    );
    assert!(
        worst < Duration::from_secs(1),
        "policy change took {worst:?} to reach every host: {took:?}"
    );

    // A service on c3, allowed for c2 only, published through c1's
    // public port.
    let svc = c.admin(&[
        "service",
        "expose",
        "web",
        "--node",
        "c3-h1",
        "--addr",
        &cc.addr.to_string(),
        "--port",
        "9000/tcp",
        "--allow",
        "host:c2-h1",
        "--public",
        "18443",
        "--via",
        "c1-h1",
    ]);
    svc.expect("service expose");
    let listed = c.admin(&["service", "list"]).expect("service list");
    assert!(
        listed.contains("web") && listed.contains("public tcp/18443"),
        "{listed}"
    );
    let gw_b = c.host_addr(1).expect("address").to_string();
    lab.resolver(&b.ns, &gw_b).expect("resolver");
    let lookup = |ns: &str| resolve(ns, "web.weft.internal");
    let resolved = wait_for(
        Duration::from_secs(5),
        "web.weft.internal to resolve",
        || lookup(&b.ns).ok(),
    )
    .expect("DNS");
    assert!(resolved.contains(&cc.addr.to_string()), "{resolved}");
    let addr: Ipv4Addr = resolved
        .split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .expect("an address");
    allowed(&b, sa(addr, 9000), &name(&cc, 9000));
    denied(&a1, sa(cc.addr, 9000));
    // From the internet to c1's public port, through the mesh to c3.
    // The gateway needed a path to c3 first (they were not peers).
    wait_for(Duration::from_secs(10), "c1-h1 to reach c3-h1", || {
        c.path(0, "c3-h1").map(|_| ())
    })
    .expect("path to the service's host");
    let public = sa(c.hosts[0].underlay, 18443);
    let got = wait_for(Duration::from_secs(10), "the public port to answer", || {
        greet(&c.coordinator_ns, public, Duration::from_secs(2)).ok()
    })
    .unwrap_or_else(|e| {
        panic!(
            "public port {public}: {e:#}\n{}",
            c.status_text(0).unwrap_or_default()
        )
    });
    assert_eq!(got, name(&cc, 9000));
    c.admin(&["service", "remove", "web"])
        .expect("service remove");
    wait_for(
        Duration::from_secs(5),
        "web.weft.internal to go away",
        || lookup(&b.ns).is_err().then_some(()),
    )
    .expect("name removed");
    denied(&b, sa(cc.addr, 9000));

    // A legacy network behind c2-h1, advertised, approved, allowed for c1.
    let legacy = lab.netns("legacy");
    lab.veth(&legacy, "eth0", &c.hosts[1].ns, "leg0");
    lab.addr(&legacy, "eth0", "198.18.200.10/24");
    lab.addr(&c.hosts[1].ns, "leg0", "198.18.200.1/24");
    lab.route(&legacy, "100.64.0.0/10", "198.18.200.1");
    let legacy_ct = Container {
        name: "legacy".into(),
        ns: legacy.clone(),
        id: legacy.clone(),
        addr: Ipv4Addr::new(198, 18, 200, 10),
    };
    servers.push(Server::greeter(&legacy, sa(legacy_ct.addr, 5000), "legacy").expect("greeter"));
    try_run(&[
        &weft().to_string_lossy(),
        "route",
        "advertise",
        "198.18.200.0/24",
        "--state-dir",
        &c.hosts[1].state_dir.to_string_lossy(),
    ])
    .expect("route advertise");
    c.admin(&["route", "approve", "--node", "c2-h1", "198.18.200.0/24"])
        .expect("route approve");
    let v3 = policy_v2(a2.addr).replace(
        "tests:\n",
        "  - allow: { from: [host:c1-h1], to: [\"cidr:198.18.200.0/24\"], ports: [tcp/5000] }\ntests:\n",
    );
    acl_set(&c, &write(&dir, "v3.yaml", &v3)).expect("v3");
    wait_for(
        Duration::from_secs(5),
        "c1-h1 to route the legacy network",
        || {
            let s = c.status(0).ok()?;
            s["routes"]
                .as_array()?
                .iter()
                .any(|r| r.as_str() == Some("198.18.200.0/24 via c2-h1"))
                .then_some(())
        },
    )
    .expect("route");
    allowed(&a1, sa(legacy_ct.addr, 5000), "legacy");
    denied(&cc, sa(legacy_ct.addr, 5000));
    // The legacy system gets a name too.
    c.admin(&[
        "service",
        "expose",
        "legacy",
        "--node",
        "c2-h1",
        "--addr",
        "198.18.200.10",
        "--port",
        "5000",
    ])
    .expect("expose the legacy system");
    lab.resolver(&a1.ns, &c.host_addr(0).expect("address").to_string())
        .expect("resolver");
    let legacy_name = wait_for(Duration::from_secs(5), "legacy.weft.internal", || {
        resolve(&a1.ns, "legacy.weft.internal").ok()
    })
    .expect("legacy name");
    assert!(legacy_name.contains("198.18.200.10"), "{legacy_name}");
    let routes = c.admin(&["route", "list"]).expect("route list");
    assert!(
        routes.contains("c2-h1") && routes.contains("198.18.200.0/24"),
        "{routes}"
    );

    // History keeps every version; `acl test` changes nothing.
    let history = c.admin(&["acl", "history"]).expect("acl history");
    for v in 1..=3 {
        assert!(history.contains(&format!("version {v} ")), "{history}");
    }
    c.admin(&["acl", "test", &v1]).expect("acl test v1");
    let got = c.admin(&["acl", "get"]).expect("acl get");
    assert_eq!(got, v3, "acl test must not change the policy");

    // With the coordinator down, a restarted agent enforces the policy it
    // cached: allowed flows work again, denied ones stay denied.
    c.stop_coordinator();
    assert!(c.stop_agent(1), "c2-h1 did not stop cleanly");
    c.up(1).expect("weft up without the coordinator");
    wait_for(Duration::from_secs(15), "c1 to reach c2 again", || {
        greet(&a1.ns, sa(b.addr, 8080), Duration::from_secs(1)).ok()
    })
    .expect("allowed flow after the restart");
    denied(&a2, sa(b.addr, 8080));
    denied(&cc, sa(b.addr, 7777));
    assert!(
        c.status(1).expect("status")["policy"]["active"] == true,
        "the cached filter is in force"
    );
    drop(servers);
}
