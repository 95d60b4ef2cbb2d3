//! The main job: a whole cluster on one machine, shown working. Run by the
//! `weft-lab` example and, in its short mode, by the tests.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::cluster::{seen_source, Cluster, ClusterSpec};
use crate::{Lab, NatKind, Server, INTERNET_HOST};

/// The NAT in front of each cloud of the demo: two easy NATs that filter
/// differently and a symmetric one, so it shows LAN paths, direct paths
/// by probing and punching, and (between the port-restricted cloud and the
/// symmetric one) direct paths by the birthday technique, relayed for
/// their first few seconds.
pub const DEFAULT_NAT: [NatKind; 3] = [NatKind::EimAdf, NatKind::EimApdf, NatKind::Symmetric];

/// How to run the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The `weft` binary.
    pub weft: PathBuf,
    pub spec: ClusterSpec,
    /// Bytes sent across clouds by the TCP transfer.
    pub transfer_bytes: usize,
    /// Leave everything up until Ctrl-C.
    pub keep: bool,
}

impl DemoOptions {
    /// Three clouds of two hosts with two containers each.
    pub fn new(weft: PathBuf) -> Self {
        Self {
            weft,
            spec: ClusterSpec::default().with_nat(&DEFAULT_NAT),
            transfer_bytes: 64 << 20,
            keep: false,
        }
    }
}

/// Builds the cluster, prints one host's status, shows container-to-
/// container ping and a TCP transfer across clouds, a container reaching
/// the simulated internet, a Docker container talking to a CNI container
/// in another cloud, checks that every
/// container pair can talk, and tears everything down (or waits for Ctrl-C
/// with `keep`). Fails if any container pair cannot talk.
#[expect(clippy::print_stdout, reason = "the demo's output")]
pub fn run(opts: &DemoOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.weft.exists(),
        "weft binary not found at {}; build it with `cargo build --release -p weft`",
        opts.weft.display()
    );
    let t0 = Instant::now();
    let lab = Lab::new("cl");
    let s = opts.spec;
    println!(
        "== building {} clouds x {} hosts x {} containers (lab {})",
        s.clouds,
        s.hosts_per_cloud,
        s.containers_per_host,
        lab.tag()
    );
    let cluster = Cluster::build(&lab, &opts.weft, s)?;
    println!(
        "   coordinator on {}, {} hosts joined with one token, {} containers attached by `weft cni` ({:.1} s)",
        crate::cluster::COORDINATOR_ADDR,
        cluster.hosts.len(),
        cluster.containers().len(),
        t0.elapsed().as_secs_f64()
    );
    for c in 1..=s.clouds {
        let nat = s.nat(c);
        println!(
            "   cloud {c}: 198.18.{c}.0/24 behind {} ({})",
            nat.label(),
            nat.name()
        );
    }
    for h in &cluster.hosts {
        let addrs: Vec<String> = h.containers.iter().map(|c| c.addr.to_string()).collect();
        println!(
            "   {:<6} underlay {:<13} containers {}",
            h.name,
            h.underlay,
            addrs.join(", ")
        );
    }

    let all = cluster.containers();
    let (_, first) = all.first().context("no containers")?.clone();
    let (_, last) = all.last().context("no containers")?.clone();
    println!(
        "\n== ping {} ({}) -> {} ({}), across clouds",
        first.name, first.addr, last.name, last.addr
    );
    let out = lab.try_ok(
        &first.ns,
        &[
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            &last.addr.to_string(),
        ],
    )?;
    for l in out
        .lines()
        .filter(|l| l.contains("bytes from") || l.contains("rtt"))
    {
        println!("   {l}");
    }

    println!(
        "\n== TCP {} MiB {} -> {}, SHA-256 checked on arrival",
        opts.transfer_bytes >> 20,
        first.name,
        last.name
    );
    let t = Instant::now();
    crate::tcp_transfer(
        &first.ns,
        &last.ns,
        IpAddr::V4(last.addr),
        5201,
        opts.transfer_bytes,
    )?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "   arrived intact in {secs:.2} s ({:.0} Mbit/s{})",
        opts.transfer_bytes as f64 * 8.0 / secs / 1e6,
        if cfg!(debug_assertions) {
            "; a debug build, release is faster"
        } else {
            ""
        }
    );
    let seen = seen_source(&first.ns, &last.ns, last.addr, 5202)?;
    println!("   the receiver sees the sender as {seen} (routed, not NATed)");
    if seen != IpAddr::V4(first.addr) {
        bail!(
            "the receiver saw {seen}, not the sender container's address {}",
            first.addr
        );
    }

    internet(&cluster, &first)?;
    crate::demo_docker::run(&cluster, &last)?;

    let pairs = all.len() * (all.len() - 1);
    println!("\n== every container pings every other container ({pairs} pairs)");
    let bad = cluster.unreachable_pairs();
    if !bad.is_empty() {
        bail!(
            "{} of {pairs} container pairs cannot talk: {bad:?}",
            bad.len()
        );
    }
    println!("   {pairs}/{pairs} pairs answered");

    println!("\n== paths between hosts (as each host sees its peers)");
    for (i, h) in cluster.hosts.iter().enumerate() {
        let mut row = Vec::new();
        for other in &cluster.hosts {
            if other.name != h.name {
                let (kind, _) = cluster.path(i, &other.name).unwrap_or(("?".into(), None));
                // Hosts behind the same NAT talk over their LAN, never
                // hairpinning through the router.
                if other.cloud == h.cloud && kind != "lan" {
                    bail!(
                        "{} reaches {} in its own cloud via {kind}, not the LAN",
                        h.name,
                        other.name
                    );
                }
                row.push(format!("{}:{kind}", other.name));
            }
        }
        println!("   {:<6} {}", h.name, row.join("  "));
    }

    policy(&lab, &cluster)?;

    println!("\n== weft status on {}", cluster.hosts[0].name);
    for l in cluster.status_text(0)?.lines() {
        println!("   {l}");
    }

    if opts.keep {
        let h = &cluster.hosts[0];
        println!("\n== the cluster stays up; explore it, then press Ctrl-C to tear it down:");
        println!("   weft status --state-dir {}", h.state_dir.display());
        println!("   wg show {}", h.interface);
        println!("   ip netns exec {} ping {}", first.ns, last.addr);
        println!(
            "   ip netns exec {} bash    # a shell inside a container",
            first.ns
        );
        println!("   ip netns list | grep {}", lab.tag());
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    println!(
        "\n== done in {:.1} s; tearing down",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A container reaches a server on the simulated internet, outside the
/// mesh: its host masquerades it, so the server sees the host's address
/// (or, for a cloud behind NAT, the NAT's).
#[expect(clippy::print_stdout, reason = "the demo's output")]
fn internet(cluster: &Cluster, from: &crate::cluster::Container) -> anyhow::Result<()> {
    let host = cluster
        .hosts
        .iter()
        .find(|h| h.containers.iter().any(|c| c.ns == from.ns))
        .context("the container's host")?;
    println!(
        "\n== {} reaches a server on the internet ({INTERNET_HOST}), outside the mesh",
        from.name
    );
    let www = cluster.internet_host();
    let seen = seen_source(&from.ns, &www, INTERNET_HOST, 8088)?;
    let nat = cluster.spec.nat(host.cloud);
    let expected: IpAddr = if nat.translates() {
        std::net::Ipv4Addr::new(203, 0, 113, 10 + host.cloud as u8).into()
    } else {
        host.underlay.into()
    };
    if seen != expected {
        bail!("the server saw {seen}, not {expected}");
    }
    println!(
        "   the server sees {seen}: {} masqueraded it to its own address {}{}",
        host.name,
        host.underlay,
        if nat.translates() {
            ", and the cloud's NAT to its public one"
        } else {
            ""
        }
    );
    Ok(())
}

/// The demo's policy step: a service published by name in the last
/// container, reachable from cloud 1 only; everyone may still ping.
#[expect(clippy::print_stdout, reason = "the demo's output")]
fn policy(lab: &Lab, cluster: &Cluster) -> anyhow::Result<()> {
    let all = cluster.containers();
    let (wi, web) = all.last().context("no containers")?.clone();
    let web_host = &cluster.hosts[wi];
    let (_, client) = all.first().context("no containers")?.clone();
    let other = all
        .iter()
        .find(|(i, _)| cluster.hosts[*i].cloud == 2)
        .map(|(_, c)| c.clone())
        .context("no container in cloud 2")?;
    println!(
        "\n== policy: service `web` in {} ({}:8080), reachable from cloud 1 only",
        web.name, web.addr
    );
    let _server = Server::greeter(
        &web.ns,
        SocketAddr::new(IpAddr::V4(web.addr), 8080),
        "hello from web",
    )?;
    let doc = "default: deny\n\
               groups:\n  cloud1: [host:c1-h1, host:c1-h2]\n\
               rules:\n  - allow: { from: [\"*\"], to: [\"*\"], ports: [icmp] }\n\
               \x20 - allow: { from: [group:cloud1], to: [service:web] }\n\
               tests:\n  - { from: host:c1-h1, to: service:web, expect: allow }\n\
               \x20 - { from: host:c2-h1, to: service:web, expect: deny }\n";
    let file = lab.tempdir().join("policy.yaml");
    std::fs::write(&file, doc).context("write the policy file")?;
    for l in doc.lines() {
        println!("   | {l}");
    }
    let port = "8080/tcp";
    cluster.admin(&[
        "service",
        "expose",
        "web",
        "--node",
        &web_host.name,
        "--addr",
        &web.addr.to_string(),
        "--port",
        port,
    ])?;
    let t = Instant::now();
    cluster.admin(&["acl", "set", &file.to_string_lossy()])?;
    println!(
        "   weft acl set: validated, its 2 tests passed, in force ({:.0} ms)",
        t.elapsed().as_secs_f64() * 1000.0
    );
    for (ct, expect) in [(&client, true), (&other, false)] {
        let host = all
            .iter()
            .find(|(_, c)| c.ns == ct.ns)
            .map_or(0, |(i, _)| *i);
        lab.resolver(&ct.ns, &cluster.host_addr(host)?.to_string())?;
        let name = "web.weft.internal";
        let resolved = crate::wait_for(
            Duration::from_secs(5),
            "the service name to resolve",
            || crate::resolve(&ct.ns, name).ok(),
        );
        let addr = match (&resolved, expect) {
            (Ok(out), _) => out
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
            (Err(_), false) => {
                println!(
                    "   {} cannot resolve {name}: its host may not reach the service's host",
                    ct.name
                );
                continue;
            }
            (Err(e), true) => bail!("{name} does not resolve in {}: {e:#}", ct.name),
        };
        let to = SocketAddr::new(addr.parse().context("resolved address")?, 8080);
        let got = crate::greet(&ct.ns, to, Duration::from_millis(1500));
        match (got, expect) {
            (Ok(g), true) => println!("   {} -> {name} ({addr}): \"{g}\"", ct.name),
            (Err(_), false) => println!("   {} -> {name} ({addr}): blocked by the policy", ct.name),
            (Ok(g), false) => bail!(
                "{} reached {name} (\"{g}\") though the policy denies it",
                ct.name
            ),
            (Err(e), true) => bail!("{} cannot reach {name}: {e:#}", ct.name),
        }
    }
    crate::ping(&other.ns, &web.addr.to_string()).context("ICMP is allowed to everyone")?;
    println!("   {} -> {}: ping allowed by rule 1", other.name, web.name);
    Ok(())
}
