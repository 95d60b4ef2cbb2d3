//! Real Podman (Debian's, on its CNI backend, with runc) on two lab hosts in
//! two clouds: `weft cni install` puts the plugin and conflist where Podman
//! looks, `podman run --network weft` gives each container an address from
//! its host's weft subnet, and the containers talk across the mesh with
//! their own addresses. Removing a container releases its address.
//! Needs root; in CI (`CI=true`) a missing privilege fails instead of skipping.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use weft_tests::cluster::{seen_source, Cluster, ClusterSpec};
use weft_tests::podman::Podman;
use weft_tests::{require_root, wait_for, Lab};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

#[test]
fn podman_containers_on_two_hosts_talk_through_weft_cni() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("pod");
    let c = Cluster::build(&lab, &weft(), ClusterSpec::hosts_only(2)).expect("cluster");
    let pa = Podman::new(&c.hosts[0], &weft(), &lab.tempdir().join("podman-a")).expect("podman a");
    let pb = Podman::new(&c.hosts[1], &weft(), &lab.tempdir().join("podman-b")).expect("podman b");

    // A greeter in cloud 1, and a client in cloud 2 that fetches from it.
    pa.run(
        "srv",
        "while true; do echo hello-from-podman | nc -l -p 5000; done",
    )
    .expect("run srv");
    let srv = pa.addr("srv").expect("srv address");
    let subnet_a = c.status(0).expect("status")["host"]["subnet"]
        .as_str()
        .expect("subnet")
        .to_string();
    let prefix = subnet_a.rsplit_once('.').expect("subnet").0.to_string();
    assert!(
        srv.to_string().starts_with(&prefix),
        "{srv} is not from host a's subnet {subnet_a}"
    );
    pb.run("cli", "sleep 3600").expect("run cli");
    let cli = pb.addr("cli").expect("cli address");
    let got = wait_for(
        Duration::from_secs(15),
        "the greeting across the mesh",
        || {
            pb.cmd(&["exec", "cli", "nc", "-w", "2", &srv.to_string(), "5000"])
                .ok()
                .filter(|o| o.contains("hello-from-podman"))
        },
    )
    .expect("cli reaches srv");
    assert_eq!(got.trim(), "hello-from-podman");

    // The receiver sees the sender container's own address (measured in the
    // containers' own namespaces, which Podman made and weft-cni attached).
    let (ns_a, ns_b) = (pa.netns("srv").expect("ns"), pb.netns("cli").expect("ns"));
    let seen = seen_source(&ns_b, &ns_a, srv, 5001).expect("cli → srv");
    assert_eq!(seen, IpAddr::V4(cli), "not NATed inside the mesh");

    // Removing the container runs CNI DEL: its address goes back.
    let alloc = c.hosts[1]
        .state_dir
        .join("cni/networks/weft")
        .join(cli.to_string());
    assert!(alloc.exists(), "host-local holds {}", alloc.display());
    pb.cmd(&["rm", "--force", "--time", "0", "cli"])
        .expect("rm");
    assert!(!alloc.exists(), "address {cli} still allocated");
}
