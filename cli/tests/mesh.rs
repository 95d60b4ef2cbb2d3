//! The mesh end to end, in namespaces: hosts joined by tokens, containers on
//! each attached through `weft cni`, traffic across clouds; the coordinator
//! going away for a minute, agents restarted without it, and node removal.
//! Needs root; in CI (`CI=true`) a missing privilege fails instead of skipping.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use weft_tests::cluster::{Cluster, ClusterSpec};
use weft_tests::demo::{self, DemoOptions};
use weft_tests::{ping_with, require_root, wait_for, Lab, SteadyStream};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// The README's main job in its short mode: three clouds of two hosts with
/// two containers each; ping, a SHA-256-checked transfer across clouds, the
/// receiver sees the sender container's address, every pair talks.
#[test]
fn cluster_example_short_mode() {
    if !require_root() {
        return;
    }
    let mut opts = DemoOptions::new(weft());
    opts.transfer_bytes = 16 << 20;
    demo::run(&opts).expect("the cluster example failed");
}

fn peer_names(c: &Cluster, i: usize) -> Vec<String> {
    c.status(i).expect("status")["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Coordinator down for 60 s while a stream flows; an agent restarted with
/// `weft up` while it is down still reaches its peers; the agents resync
/// when it returns; a removed node is cut off within a second.
#[test]
fn resilience_without_the_coordinator_and_node_removal() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("rs");
    let spec = ClusterSpec {
        clouds: 3,
        hosts_per_cloud: 1,
        containers_per_host: 1,
        ..ClusterSpec::default()
    };
    let mut c = Cluster::build(&lab, &weft(), spec).expect("cluster");
    let a = c.hosts[0].containers[0].clone();
    let b = c.hosts[1].containers[0].clone();
    let host_a = c.host_addr(0).expect("address").to_string();
    ping_with(&a.ns, &["-c", "2", "-W", "2", &b.addr.to_string()]).expect("a reaches b");

    let stream =
        SteadyStream::start(&a.ns, &b.ns, SocketAddr::from((b.addr, 5301))).expect("stream");
    wait_for(Duration::from_secs(10), "the stream to start", || {
        (stream.received() > 0).then_some(())
    })
    .expect("stream");

    c.stop_coordinator();
    let outage = Instant::now();
    // Host 3 restarts while the coordinator is down: it comes back from its
    // cached netmap and reaches its peers.
    assert!(c.stop_agent(2), "agent 3 did not stop cleanly");
    c.up(2).expect("weft up without the coordinator");
    let st = c.status(2).expect("status");
    assert_eq!(st["coordinator"]["connected"], false);
    assert_eq!(peer_names(&c, 2).len(), 2, "cached netmap lost peers: {st}");
    ping_with(&c.hosts[2].ns, &["-c", "2", "-W", "2", &host_a]).expect("restarted host reaches a");
    let third = c.hosts[2].containers[0].addr.to_string();
    ping_with(&a.ns, &["-c", "2", "-W", "2", &third])
        .expect("a reaches the restarted host's container");

    // The stream keeps flowing through the whole minute.
    let mut last = stream.received();
    while outage.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(10));
        let now = stream.received();
        assert!(
            now > last,
            "the stream stalled {:?} into the outage ({last} bytes)",
            outage.elapsed()
        );
        last = now;
    }
    c.start_coordinator().expect("coordinator back");
    for i in 0..3 {
        wait_for(Duration::from_secs(20), "agents to reconnect", || {
            let s = c.status(i).ok()?;
            (s["coordinator"]["connected"] == true).then_some(())
        })
        .expect("resync");
    }
    let before = stream.received();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        stream.received() > before,
        "the stream stopped after the coordinator returned"
    );
    stream.finish().expect("stream failed");

    // Node removal: host 3's peers stop accepting its packets within 1 s.
    let removed = c.hosts[2].name.clone();
    let t = Instant::now();
    c.admin(&["node", "remove", &removed]).expect("node remove");
    for i in 0..2 {
        wait_for(
            Duration::from_secs(1),
            "removal to reach every peer",
            || (!peer_names(&c, i).contains(&removed)).then_some(()),
        )
        .expect("removed within a second");
    }
    let took = t.elapsed();
    eprintln!("node removal reached every peer in {took:?}");
    assert!(took < Duration::from_secs(1), "removal took {took:?}");
    assert!(
        ping_with(&c.hosts[2].ns, &["-c", "1", "-W", "1", &host_a]).is_err(),
        "a removed node still reaches its former peers"
    );
    wait_for(Duration::from_secs(10), "the removed agent to exit", || {
        (!c.hosts[2].agent.as_ref()?.is_running()).then_some(())
    })
    .expect("removed agent exits");
}
