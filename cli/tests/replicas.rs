//! Coordinator replicas with real agents, in namespaces: a running
//! cluster's coordinator moved onto a three-member etcd (`weft coordinator
//! migrate`) and served by three replicas; the agents come back without
//! joining again; then, with a token that carries every replica's address,
//! the replica the agents use is killed with SIGKILL and they fail over to
//! another while pings between them keep flowing. Needs root and
//! /usr/bin/etcd; in CI (`CI=true`) a missing privilege fails instead of
//! skipping.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use weft_tests::cluster::{Cluster, ClusterSpec};
use weft_tests::replicas::{rejoin, replicate, ETCD, REPLICA_ADDRS};
use weft_tests::{require_root, unix_now, wait_for, Lab, Pinger};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn coordinator_state(c: &Cluster, i: usize) -> (bool, u64) {
    c.status(i).map_or((false, 0), |s| {
        (
            s["coordinator"]["connected"] == true,
            s["coordinator"]["since_secs"].as_u64().unwrap_or(0),
        )
    })
}

#[test]
fn agents_fail_over_between_replicas_while_traffic_flows() {
    if !require_root() {
        return;
    }
    if !std::path::Path::new(ETCD).exists() {
        assert!(std::env::var_os("CI").is_none(), "{ETCD} is missing");
        eprintln!("skipped: {ETCD} is missing (apt-get install etcd-server)");
        return;
    }
    let lab = Lab::new("ha");
    let mut c = Cluster::build(&lab, &weft(), ClusterSpec::hosts_only(2)).expect("cluster");
    let ids: Vec<u64> = (0..2)
        .map(|i| {
            c.status(i).expect("status")["host"]["node_id"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect();
    for i in 0..2 {
        c.stop_agent(i);
    }

    // Migrated, not re-joined: the agents come back with their node ids.
    let mut r = replicate(&mut c).expect("replicas");
    for i in 0..2 {
        c.up(i).expect("agent up");
    }
    c.wait_for_mesh(Duration::from_secs(20))
        .expect("mesh on the replicas");
    for (i, id) in ids.iter().enumerate() {
        let s = c.status(i).expect("status");
        assert_eq!(s["host"]["node_id"].as_u64().unwrap_or(0), *id, "{s}");
    }

    // A token from replica 0 carries every replica's address.
    let token = c
        .admin(&["token", "create", "--uses", "2"])
        .expect("token")
        .trim()
        .to_string();
    for i in 0..2 {
        rejoin(&mut c, i, &token).expect("join");
    }
    let s = c.status(0).expect("status");
    let addrs: Vec<&str> = s["coordinator"]["addrs"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(addrs, REPLICA_ADDRS, "{s}");
    let names: Vec<String> = c.hosts.iter().map(|h| format!("{}-r", h.name)).collect();
    wait_for(Duration::from_secs(20), "a direct path", || {
        let (path, _) = c.path(0, &names[1])?;
        (path != "relay").then_some(())
    })
    .expect("direct path");
    let target = c.host_addr(1).expect("address").to_string();
    let pinger = Pinger::start(&lab, &c.hosts[0].ns, &target, Duration::from_millis(100));
    pinger
        .wait_reply_after(unix_now(), Duration::from_secs(10))
        .expect("pings answer");

    // Replica 0 dies; both agents connect to another within 10 s, and the
    // pings go on.
    let killed = unix_now();
    let t = Instant::now();
    r.kill(0).expect("kill -9");
    // Each agent is seen disconnected, then connected again.
    let mut down = [false; 2];
    wait_for(Duration::from_secs(20), "the agents to fail over", || {
        let mut back = true;
        for (i, d) in down.iter_mut().enumerate() {
            let connected = coordinator_state(&c, i).0;
            *d |= !connected;
            back &= *d && connected;
        }
        back.then_some(())
    })
    .expect("failover");
    let took = t.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let (got, sent) = pinger.delivery(killed, unix_now());
    eprintln!("replica killed: agents reconnected after {took:?}; pings meanwhile {got}/{sent}");
    assert!(took < Duration::from_secs(10), "failover took {took:?}");
    assert!(
        got * 10 >= sent * 9,
        "pings lost during failover: {got}/{sent}"
    );
    drop(r);
}
