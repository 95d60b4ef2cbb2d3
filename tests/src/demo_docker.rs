//! The demo's Docker step: a dockerd on the first host with
//! `weft docker-plugin`, a network made with `docker network create -d weft
//! --ipam-driver weft weft`, and a Docker container that talks to a CNI
//! container (attached by `weft cni`) on a host in another cloud, which
//! sees the Docker container's own address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::cluster::{seen_source, Cluster, Container};
use crate::docker::{run_container, with_weft_network, NamedNetns, DOCKERD};
use crate::Server;

/// Runs the step; `to` is the CNI container to talk to.
#[expect(clippy::print_stdout, reason = "the demo's output")]
pub fn run(cluster: &Cluster, to: &Container) -> anyhow::Result<()> {
    let lab = cluster.lab;
    let host = &cluster.hosts[0];
    println!(
        "\n== a Docker container on {} talks to {} ({}), a CNI container in another cloud",
        host.name, to.name, to.addr
    );
    anyhow::ensure!(
        std::path::Path::new(DOCKERD).exists(),
        "dockerd is not installed (apt-get install docker.io; scripts/cluster.sh does)"
    );
    let (d, _plugin) = with_weft_network(lab, &cluster.weft, host, &lab.tempdir().join("docker"))?;
    println!("   dockerd + `weft docker-plugin` on {}; docker network create -d weft --ipam-driver weft weft", host.name);
    let gw = cluster.host_addr(0)?;
    let addr = run_container(&d, "demo", gw);
    println!(
        "   docker run --network weft … -> the container is {addr} (from {}'s subnet)",
        host.name
    );
    let _server = Server::greeter(
        &to.ns,
        SocketAddr::new(IpAddr::V4(to.addr), 8090),
        "hello from a CNI container",
    )?;
    let got = crate::wait_for(Duration::from_secs(15), "docker -> CNI container", || {
        d.docker(&[
            "exec",
            "demo",
            "nc",
            "-w",
            "2",
            &to.addr.to_string(),
            "8090",
        ])
        .ok()
        .filter(|o| !o.trim().is_empty())
    })
    .context("the Docker container cannot reach the CNI container")?;
    println!(
        "   docker exec demo nc {} 8090: \"{}\"",
        to.addr,
        got.trim()
    );
    let ns = NamedNetns::attach(
        &format!("wdemo{}", std::process::id()),
        d.container_pid("demo")?,
    )?;
    let seen = seen_source(&ns.name, &to.ns, to.addr, 8091)?;
    if seen != IpAddr::V4(addr) {
        bail!("{} saw {seen}, not the Docker container's {addr}", to.name);
    }
    println!(
        "   {} sees the Docker container as {seen} (routed, not NATed)",
        to.name
    );
    Ok(())
}
