//! Docker and CNI containers on one network: a Docker container (through
//! `weft docker-plugin`) and a Podman container (through `weft cni`) on one
//! host get distinct addresses from that host's subnet, and each talks to
//! a Podman container on another host, which sees its own address. Needs
//! root, docker.io, podman, runc and busybox; in CI (`CI` set) a missing
//! one fails instead of skipping.

use std::net::IpAddr;
use std::path::PathBuf;

use weft_tests::cluster::{seen_source, Cluster, ClusterSpec};
use weft_tests::docker::{run_container, with_weft_network, NamedNetns, DOCKERD};
use weft_tests::podman::Podman;
use weft_tests::{require_root, wait_for, Lab};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn require_tools() -> bool {
    weft_tests::require_tools(
        &[DOCKERD, "/usr/bin/podman", "/bin/busybox", "/usr/sbin/runc"],
        "docker.io podman runc busybox-static",
    )
}

#[test]
fn docker_and_podman_containers_share_the_mesh() {
    if !require_root() || !require_tools() {
        return;
    }
    let lab = Lab::new("mix");
    let c = Cluster::build(&lab, &weft(), ClusterSpec::hosts_only(2)).expect("cluster");
    let gw = c.host_addr(0).expect("address");

    // Host a: Docker and Podman side by side.
    let (d, _plugin) =
        with_weft_network(&lab, &weft(), &c.hosts[0], &lab.tempdir().join("docker-a"))
            .expect("dockerd with the weft network");
    let dk = run_container(&d, "dk", gw);
    let pa = Podman::new(&c.hosts[0], &weft(), &lab.tempdir().join("podman-a")).expect("podman a");
    pa.run("pa", "sleep 3600").expect("podman run on a");
    let pa_addr = pa.addr("pa").expect("pa address");
    assert_ne!(dk, pa_addr, "Docker and Podman leased the same address");
    for a in [dk, pa_addr] {
        assert_eq!(
            a.octets()[..3],
            gw.octets()[..3],
            "{a} is not in host a's subnet"
        );
    }

    // Host b: a Podman server.
    let pb = Podman::new(&c.hosts[1], &weft(), &lab.tempdir().join("podman-b")).expect("podman b");
    pb.run(
        "pb",
        "while true; do echo hello-from-podman-b | nc -l -p 5000; done",
    )
    .expect("podman run on b");
    let pb_addr = pb.addr("pb").expect("pb address");

    // The Docker container fetches from it across the mesh...
    let got = wait_for(
        std::time::Duration::from_secs(15),
        "docker → podman",
        || {
            d.docker(&["exec", "dk", "nc", "-w", "2", &pb_addr.to_string(), "5000"])
                .ok()
                .filter(|o| o.contains("hello-from-podman-b"))
        },
    )
    .expect("the Docker container reaches the Podman container");
    assert_eq!(got.trim(), "hello-from-podman-b");

    // ...and each receiver sees the sender's own address, both ways.
    let dk_ns = NamedNetns::attach(
        &format!("wmix{}-dk", std::process::id()),
        d.container_pid("dk").expect("pid"),
    )
    .expect("attach");
    let pb_ns = pb.netns("pb").expect("pb netns");
    let pa_ns = pa.netns("pa").expect("pa netns");
    assert_eq!(
        seen_source(&dk_ns.name, &pb_ns, pb_addr, 5001).expect("dk → pb"),
        IpAddr::V4(dk)
    );
    assert_eq!(
        seen_source(&pb_ns, &dk_ns.name, dk, 5002).expect("pb → dk"),
        IpAddr::V4(pb_addr)
    );
    assert_eq!(
        seen_source(&pa_ns, &pb_ns, pb_addr, 5003).expect("pa → pb"),
        IpAddr::V4(pa_addr)
    );
}
