//! A rolling upgrade in namespaces: a cluster of three hosts whose agents
//! speak the previous protocol (version 3) is taken to the current one, one
//! host at a time, while a TCP stream runs across the cluster; the stream
//! never breaks. The "previous binary" is this binary's test-only
//! `--speak-protocol 3` mode (the real control client limited to version 3,
//! which the recorded v3 transcripts in `proto/tests/golden/v3` pin down).
//! Needs root; in CI (`CI=true`) a missing privilege fails instead of
//! skipping.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use weft_tests::cluster::{Cluster, ClusterSpec};
use weft_tests::{require_root, wait_for, Lab, SteadyStream};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn protocol(c: &Cluster, i: usize) -> Option<u64> {
    let s = c.status(i).ok()?;
    if s["coordinator"]["connected"] != true {
        return None;
    }
    s["coordinator"]["protocol_version"].as_u64()
}

/// Waits until the stream has moved `bytes` past `from`, or panics after
/// `within`.
fn flowing(stream: &SteadyStream, from: u64, bytes: u64, within: Duration) -> Instant {
    let start = Instant::now();
    while stream.received() < from + bytes {
        assert!(
            start.elapsed() < within,
            "the stream stalled: {} bytes in {within:?}",
            stream.received().saturating_sub(from)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Instant::now()
}

#[test]
fn a_rolling_upgrade_keeps_a_tcp_stream_across_the_cluster() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("ru");
    let spec = ClusterSpec {
        agent_args: &["--speak-protocol", "3"],
        ..ClusterSpec::hosts_only(3)
    };
    let mut c = Cluster::build(&lab, &weft(), spec).expect("cluster");
    for i in 0..3 {
        wait_for(Duration::from_secs(10), "a version-3 session", || {
            (protocol(&c, i) == Some(3)).then_some(())
        })
        .expect("the old agents speak version 3");
    }
    let to = SocketAddr::from((c.host_addr(2).expect("address"), 5501));
    let stream = SteadyStream::start(&c.hosts[0].ns, &c.hosts[2].ns, to).expect("stream");
    flowing(&stream, 0, 1 << 20, Duration::from_secs(20));
    let mut outages = Vec::new();
    // The receiving end, a bystander, then the sending end.
    for i in [2, 1, 0] {
        let (stopped, at_stop) = (Instant::now(), stream.received());
        assert!(c.stop_agent(i), "the old agent did not stop cleanly");
        c.up_without_spec_args(i, &[])
            .expect("the new agent starts");
        wait_for(Duration::from_secs(10), "a version-4 session", || {
            (protocol(&c, i) == Some(4)).then_some(())
        })
        .expect("the upgraded agent speaks version 4");
        let resumed = flowing(&stream, at_stop, 256 << 10, Duration::from_secs(30));
        let outage = resumed - stopped;
        eprintln!(
            "upgraded {}: 256 KiB more arrived {outage:?} after the old agent was stopped",
            c.hosts[i].name
        );
        outages.push(outage);
    }
    c.wait_for_mesh(Duration::from_secs(20))
        .expect("every host sees every other after the upgrade");
    stream.finish().expect("the TCP stream never broke");
    let worst = outages.iter().max().copied().unwrap_or_default();
    assert!(
        worst < Duration::from_secs(20),
        "the stream stood still for {worst:?}"
    );
}
