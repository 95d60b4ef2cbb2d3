//! `weft docker-plugin` with real dockerd daemons, in namespaces: two lab
//! hosts, each with its agent, its plugin and its own dockerd. Docker
//! containers on the two hosts talk by their own addresses (no NAT),
//! resolve a service through the host's DNS, survive restarts of the
//! agent, dockerd and the plugin, and `docker network rm` leaves no state
//! or lease behind. Needs root, docker.io, busybox and the CNI reference
//! plugins; in CI (`CI` set) anything missing fails the test instead of
//! skipping it.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use weft_tests::cluster::{Cluster, ClusterSpec};
use weft_tests::docker::{
    container_addr, exchange, leases, run_container, source_seen, with_weft_network, Dockerd,
    BUSYBOX_IMAGE, DOCKERD,
};
use weft_tests::{require_root, wait_for, Lab, Proc};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn require_tools() -> bool {
    weft_tests::require_tools(
        &[DOCKERD, "/bin/busybox", "/usr/lib/cni/host-local"],
        "docker.io busybox-static containernetworking-plugins",
    )
}

fn start_plugin(lab: &Lab, c: &Cluster, i: usize, d: &Dockerd) -> Proc {
    weft_tests::docker::start_plugin(lab, &weft(), &c.hosts[i], d)
}

#[test]
fn docker_containers_join_the_mesh_and_survive_restarts() {
    if !require_root() || !require_tools() {
        return;
    }
    let t0 = Instant::now();
    let lab = Lab::new("dk");
    let mut c = Cluster::build(&lab, &weft(), ClusterSpec::hosts_only(2)).expect("cluster");
    let gw: Vec<Ipv4Addr> = (0..2).map(|i| c.host_addr(i).expect("address")).collect();
    let mut daemons = Vec::new();
    let mut plugins = Vec::new();
    for i in 0..2 {
        let (d, p) = with_weft_network(
            &lab,
            &weft(),
            &c.hosts[i],
            &lab.tempdir().join(format!("docker{i}")),
        )
        .expect("dockerd with the weft network");
        plugins.push(p);
        daemons.push(d);
    }
    // A network made without weft's IPAM is refused with the fix.
    let e = daemons[0]
        .docker(&["network", "create", "-d", "weft", "other"])
        .expect_err("a weft network with Docker's own IPAM");
    assert!(e.to_string().contains("--ipam-driver weft"), "{e}");

    let tx = run_container(&daemons[0], "tx", gw[0]);
    let rx = run_container(&daemons[1], "rx", gw[1]);
    let subnet = |i: usize| {
        let s = c.status(i).expect("status");
        s["host"]["subnet"].as_str().map(str::to_string)
    };
    eprintln!("tx {tx} on {:?}, rx {rx} on {:?}", subnet(0), subnet(1));
    let sub1 = subnet(1).expect("host 1's subnet");
    for (addr, g) in [(tx, gw[0]), (rx, gw[1])] {
        assert_eq!(
            addr.octets()[..3],
            g.octets()[..3],
            "{addr} is not in {g}'s subnet"
        );
    }
    // Podman/CNI and Docker share the lease files: the address is in host-local's.
    let lease_dirs: Vec<PathBuf> = (0..2)
        .map(|i| c.hosts[i].state_dir.join("cni/networks/weft"))
        .collect();
    assert!(
        leases(&lease_dirs[0]).contains(&tx.to_string()),
        "{:?}",
        leases(&lease_dirs[0])
    );

    exchange(
        &daemons[0],
        "tx",
        &daemons[1],
        "rx",
        &rx.to_string(),
        "hello1",
    );
    let seen = source_seen(&daemons[0], "tx", &daemons[1], "rx", rx, "1");
    assert_eq!(
        seen,
        std::net::IpAddr::V4(tx),
        "rx saw {seen}, not tx's own {tx}"
    );

    // A service name resolves in a Docker container through the host's DNS.
    let domain = std::fs::read_to_string(c.hosts[0].state_dir.join("network.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["domain"].as_str().map(str::to_string))
        .expect("network.json has the cluster domain");
    c.admin(&[
        "service",
        "expose",
        "rx",
        "--node",
        &c.hosts[1].name,
        "--addr",
        &rx.to_string(),
        "--port",
        "7001/tcp",
    ])
    .expect("service expose");
    let name = format!("rx.{domain}");
    let answer = wait_for(
        Duration::from_secs(15),
        "the service name to resolve",
        || {
            let out = daemons[0].docker(&["exec", "tx", "nslookup", &name]).ok()?;
            out.contains(&rx.to_string()).then_some(out)
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{name}: {answer}");
    exchange(&daemons[0], "tx", &daemons[1], "rx", &name, "byname");

    // The agent restarts: network.json goes and comes back, the bridge stays.
    assert!(c.stop_agent(0), "agent 0 did not stop cleanly");
    assert!(!c.hosts[0].state_dir.join("network.json").exists());
    c.up(0).expect("agent 0 back");
    c.wait_for_mesh(Duration::from_secs(20)).expect("mesh");
    exchange(
        &daemons[0],
        "tx",
        &daemons[1],
        "rx",
        &rx.to_string(),
        "afteragent",
    );

    // dockerd restarts: tx is stopped and started again, joined anew.
    daemons[0].restart().expect("dockerd 0 restart");
    wait_for(Duration::from_secs(30), "tx to run again", || {
        daemons[0].container_pid("tx").ok()
    })
    .expect("tx restarted");
    let tx2 = container_addr(&daemons[0], "tx");
    exchange(
        &daemons[0],
        "tx",
        &daemons[1],
        "rx",
        &rx.to_string(),
        "afterdockerd",
    );
    let seen = source_seen(&daemons[0], "tx", &daemons[1], "rx", rx, "2");
    assert_eq!(seen, std::net::IpAddr::V4(tx2));

    // The plugin restarts: what it knew is on disk.
    plugins[1].stop();
    plugins[1] = start_plugin(&lab, &c, 1, &daemons[1]);
    let rx2 = run_container(&daemons[1], "rx2", gw[1]);
    assert_ne!(rx2, rx, "a second container got rx's address");
    exchange(
        &daemons[0],
        "tx",
        &daemons[1],
        "rx2",
        &rx2.to_string(),
        "afterplugin",
    );
    exchange(
        &daemons[0],
        "tx",
        &daemons[1],
        "rx",
        &rx.to_string(),
        "stillrx",
    );

    // `--ip` needs a network with a named subnet: this host's, on a second
    // network sharing the pool.
    daemons[1]
        .docker(&[
            "network",
            "create",
            "-d",
            "weft",
            "--ipam-driver",
            "weft",
            "--subnet",
            &sub1,
            "weftfixed",
        ])
        .unwrap_or_else(|e| panic!("{e}\n{}", plugins[1].stderr()));
    let [a, b, c3, _] = gw[1].octets();
    let fixed = Ipv4Addr::new(a, b, c3, 200).to_string();
    daemons[1]
        .docker(&[
            "run",
            "-d",
            "--name",
            "fixed",
            "--network",
            "weftfixed",
            "--ip",
            &fixed,
            BUSYBOX_IMAGE,
            "sleep",
            "600",
        ])
        .unwrap_or_else(|e| panic!("{e}\n{}", plugins[1].stderr()));
    assert_eq!(
        daemons[1]
            .docker(&[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                "fixed"
            ])
            .expect("inspect"),
        fixed
    );
    assert!(leases(&lease_dirs[1]).contains(&fixed));
    exchange(
        &daemons[0],
        "tx",
        &daemons[1],
        "rx",
        &rx.to_string(),
        "withfixed",
    );
    daemons[1].docker(&["rm", "-f", "fixed"]).expect("rm fixed");
    daemons[1]
        .docker(&["network", "rm", "weftfixed"])
        .expect("rm weftfixed");
    // The first network still works on the shared pool.
    exchange(
        &daemons[0],
        "tx",
        &daemons[1],
        "rx2",
        &rx2.to_string(),
        "shared",
    );

    // Removing the containers and the network leaves nothing behind.
    for (d, names) in [
        (&daemons[0], &["tx"][..]),
        (&daemons[1], &["rx", "rx2"][..]),
    ] {
        for n in names {
            d.docker(&["rm", "-f", n]).expect("rm");
        }
        d.docker(&["network", "rm", "weft"]).expect("network rm");
    }
    for (i, (h, lease_dir)) in c.hosts.iter().zip(&lease_dirs).enumerate() {
        let state =
            std::fs::read_to_string(h.state_dir.join("docker/state.json")).expect("plugin state");
        let v: serde_json::Value = serde_json::from_str(&state).expect("state JSON");
        for key in ["networks", "endpoints", "pools"] {
            assert_eq!(
                v[key],
                serde_json::json!({}),
                "host {i} {key} left: {state}"
            );
        }
        assert_eq!(
            leases(lease_dir),
            Vec::<String>::new(),
            "host {i} leases left"
        );
        let links = lab.ip(&h.ns, &["-o", "link", "show"]);
        assert!(!links.contains(" wd"), "host {i} veths left: {links}");
    }
    eprintln!("docker test took {:?}", t0.elapsed());
}
