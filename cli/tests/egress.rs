//! Containers reaching beyond the mesh: traffic to the simulated internet
//! leaves with the host's address (masquerade, in the agent's own nftables
//! table), traffic inside the mesh keeps the container's own address, the
//! table goes when the agent stops, and `--no-masquerade` turns it off.
//! Needs root; in CI (`CI=true`) a missing privilege fails instead of skipping.

use std::net::IpAddr;
use std::path::PathBuf;

use weft_tests::cluster::{seen_source, Cluster, ClusterSpec};
use weft_tests::{require_root, Lab, INTERNET_HOST};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn tables(lab: &Lab, ns: &str) -> String {
    lab.ok(ns, &["nft", "list", "tables"])
}

#[test]
fn containers_reach_the_internet_as_their_host_and_the_mesh_as_themselves() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("eg");
    let spec = ClusterSpec {
        clouds: 2,
        hosts_per_cloud: 1,
        containers_per_host: 1,
        ..ClusterSpec::default()
    };
    let mut c = Cluster::build(&lab, &weft(), spec).expect("cluster");
    let www = c.internet_host();
    let a = c.hosts[0].containers[0].clone();
    let b = c.hosts[1].containers[0].clone();
    let host_ns = c.hosts[0].ns.clone();
    let table = format!("weft-{}", c.hosts[0].interface);

    let seen = seen_source(&a.ns, &www, INTERNET_HOST, 8080).expect("container → internet");
    assert_eq!(
        seen,
        IpAddr::V4(c.hosts[0].underlay),
        "the internet sees the host's address"
    );
    let seen = seen_source(&a.ns, &b.ns, b.addr, 8081).expect("container → container");
    assert_eq!(
        seen,
        IpAddr::V4(a.addr),
        "inside the mesh nothing is translated"
    );
    assert!(tables(&lab, &host_ns).contains(&table), "the agent's table");

    // The table goes with the agent.
    assert!(c.stop_agent(0), "agent stopped cleanly");
    assert!(
        !tables(&lab, &host_ns).contains(&table),
        "table left behind: {}",
        tables(&lab, &host_ns)
    );

    // Without masquerade the container's packets leave with its overlay
    // address, which the internet has no way back to.
    c.up_with(0, &["--no-masquerade"])
        .expect("up --no-masquerade");
    c.wait_for_mesh(std::time::Duration::from_secs(20))
        .expect("mesh");
    let listed = lab.ok(&host_ns, &["nft", "list", "table", "inet", &table]);
    assert!(!listed.contains("masquerade"), "{listed}");
    assert!(listed.contains("maxseg"), "the MSS clamp stays: {listed}");
    let e = seen_source(&a.ns, &www, INTERNET_HOST, 8082)
        .expect_err("no way back to an overlay address");
    assert!(format!("{e:#}").contains("connect"), "{e:#}");
    let seen = seen_source(&a.ns, &b.ns, b.addr, 8083).expect("mesh still works");
    assert_eq!(seen, IpAddr::V4(a.addr));
}
