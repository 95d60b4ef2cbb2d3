//! A whole weft cluster in namespaces: a coordinator on the simulated
//! internet, clouds (each a LAN behind a router) with hosts, and containers
//! on every host attached through the CNI plugin. Shared by the cluster
//! example and the mesh tests.
//!
//! Topology and addresses (DESIGN.md, "The lab"):
//! - `inet`: the simulated internet, a bridge on `203.0.113.0/24`; the
//!   coordinator is `203.0.113.1`, the router of cloud `c` is
//!   `203.0.113.(10+c)`.
//! - cloud `c`: router `r{c}` with LAN `198.18.c.0/24` (gateway `.1`); host
//!   `h` of that cloud is `198.18.c.(10+h)`. Each cloud's router is the
//!   kind of NAT [`ClusterSpec::nat`] gives it ([`crate::nat`]). A routed
//!   cloud ([`NatKind::None`], the default) is reachable from the coordinator
//!   and every other router by a route to its LAN; a cloud behind NAT is
//!   not: the internet knows only `203.0.113.0/24` and the routed LANs.
//! - containers: one namespace each, addressed from their host's overlay
//!   subnet by `weft cni`.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::nat::{self, NatKind, NatRouter};
use crate::{wait_for, Lab, Proc};

/// The coordinator's address and port on the simulated internet.
pub const COORDINATOR_ADDR: &str = "203.0.113.1:7443";
/// Where the reference CNI plugins live (Debian `containernetworking-plugins`).
pub const CNI_PATH: &str = "/usr/lib/cni";

/// Most clouds (and most hosts per cloud) a cluster can have.
pub const MAX_CLOUDS: usize = 9;

/// How big a cluster to build, and what stands between each cloud and the
/// internet.
#[derive(Clone, Copy, Debug)]
pub struct ClusterSpec {
    pub clouds: usize,
    pub hosts_per_cloud: usize,
    pub containers_per_host: usize,
    /// The router of cloud `c` (1-based) is `nat[c - 1]`.
    pub nat: [NatKind; MAX_CLOUDS],
    /// A tag every host gets through its join token.
    pub tag: Option<&'static str>,
    /// The MTU of every underlay link (hosts, LANs, routers, internet);
    /// `None`: 1500.
    pub host_mtu: Option<u16>,
    /// The MTU of the internet links only (routers' WAN side and the
    /// coordinator): a narrow hop in the middle of the path.
    pub internet_mtu: Option<u16>,
    /// Extra arguments for every agent (`weft join` and `weft up`).
    pub agent_args: &'static [&'static str],
    /// Extra arguments for the coordinator (`weft coordinator`).
    pub coordinator_args: &'static [&'static str],
}

impl Default for ClusterSpec {
    /// Three routed clouds of two hosts with two containers each.
    fn default() -> Self {
        Self {
            clouds: 3,
            hosts_per_cloud: 2,
            containers_per_host: 2,
            nat: [NatKind::None; MAX_CLOUDS],
            tag: None,
            host_mtu: None,
            internet_mtu: None,
            agent_args: &[],
            coordinator_args: &[],
        }
    }
}

impl ClusterSpec {
    /// `clouds` routed clouds of one host each, with no containers.
    pub fn hosts_only(clouds: usize) -> Self {
        Self {
            clouds,
            hosts_per_cloud: 1,
            containers_per_host: 0,
            ..Self::default()
        }
    }

    /// Puts cloud 1 behind `kinds[0]`, cloud 2 behind `kinds[1]`, and so on;
    /// clouds past the end of `kinds` are routed.
    pub fn with_nat(mut self, kinds: &[NatKind]) -> Self {
        self.nat = [NatKind::None; MAX_CLOUDS];
        for (slot, k) in self.nat.iter_mut().zip(kinds) {
            *slot = *k;
        }
        self
    }

    /// What stands between cloud `cloud` (1-based) and the internet.
    pub fn nat(&self, cloud: usize) -> NatKind {
        cloud
            .checked_sub(1)
            .and_then(|i| self.nat.get(i))
            .copied()
            .unwrap_or_default()
    }
}

/// One host: a namespace running `weft join` / `weft up`.
#[derive(Debug)]
pub struct Host {
    /// The node name, e.g. `c1-h2`.
    pub name: String,
    pub ns: String,
    pub cloud: usize,
    pub underlay: Ipv4Addr,
    pub state_dir: PathBuf,
    /// The WireGuard interface (machine-wide unique in the lab).
    pub interface: String,
    pub agent: Option<Proc>,
    pub containers: Vec<Container>,
}

/// One container: a namespace with an `eth0` on its host's bridge.
#[derive(Debug, Clone)]
pub struct Container {
    pub name: String,
    pub ns: String,
    pub id: String,
    pub addr: Ipv4Addr,
}

/// A running cluster; torn down with its [`Lab`].
pub struct Cluster<'a> {
    pub lab: &'a Lab,
    pub spec: ClusterSpec,
    pub weft: PathBuf,
    pub coordinator_ns: String,
    pub coordinator_dir: PathBuf,
    pub coordinator: Option<Proc>,
    pub hosts: Vec<Host>,
    token: String,
}

impl<'a> Cluster<'a> {
    /// Builds the whole cluster: namespaces, coordinator, a token, every
    /// host joined, and containers attached. Returns when every host has
    /// every other host in its netmap.
    pub fn build(lab: &'a Lab, weft: &Path, spec: ClusterSpec) -> anyhow::Result<Cluster<'a>> {
        anyhow::ensure!(
            (1..=MAX_CLOUDS).contains(&spec.clouds)
                && (1..=MAX_CLOUDS).contains(&spec.hosts_per_cloud),
            "1-{MAX_CLOUDS} clouds of 1-{MAX_CLOUDS} hosts"
        );
        let wan_mtu = spec.internet_mtu.or(spec.host_mtu);
        let coordinator: SocketAddr = COORDINATOR_ADDR
            .parse()
            .context("COORDINATOR_ADDR is not an address")?;
        let inet = lab.netns("inet");
        lab.bridge(&inet, "sw0");
        let coord = lab.netns("coord");
        lab.veth(&coord, "eth0", &inet, "coord");
        lab.attach(&inet, "coord", "sw0");
        lab.addr(&coord, "eth0", "203.0.113.1/24");
        if let Some(m) = wan_mtu {
            lab.mtu(&coord, "eth0", m);
            lab.mtu(&inet, "coord", m);
        }
        for c in 1..=spec.clouds {
            let r = lab.netns(&format!("r{c}"));
            lab.veth(&r, "wan", &inet, &format!("r{c}"));
            lab.attach(&inet, &format!("r{c}"), "sw0");
            lab.addr(&r, "wan", &format!("203.0.113.{}/24", 10 + c));
            if let Some(m) = wan_mtu {
                lab.mtu(&r, "wan", m);
                lab.mtu(&inet, &format!("r{c}"), m);
            }
            lab.bridge(&r, "lan");
            lab.addr(&r, "lan", &format!("198.18.{c}.1/24"));
            lab.forwarding(&r);
            let kind = spec.nat(c);
            if !kind.translates() {
                continue;
            }
            let router = NatRouter {
                ns: r,
                wan_if: "wan".into(),
                wan_ip: Ipv4Addr::new(203, 0, 113, 10 + c as u8),
                lan_if: "lan".into(),
                hosts: (1..=spec.hosts_per_cloud)
                    .map(|h| Ipv4Addr::new(198, 18, c as u8, 10 + h as u8))
                    .collect(),
            };
            nat::install(lab, &router, kind, coordinator)?;
        }
        // Routes to the routed LANs from the coordinator and every other
        // router; LANs behind NAT stay unreachable from outside.
        for c in (1..=spec.clouds).filter(|c| !spec.nat(*c).translates()) {
            let lan = format!("198.18.{c}.0/24");
            let via = format!("203.0.113.{}", 10 + c);
            lab.route(&coord, &lan, &via);
            for other in (1..=spec.clouds).filter(|o| *o != c) {
                lab.route(&format!("{}-r{other}", lab.tag()), &lan, &via);
            }
        }
        let coordinator_dir = lab.tempdir().join("coordinator");
        let mut cluster = Cluster {
            lab,
            spec,
            weft: weft.to_path_buf(),
            coordinator_ns: coord,
            coordinator_dir,
            coordinator: None,
            hosts: Vec::new(),
            token: String::new(),
        };
        cluster.start_coordinator()?;
        let total = (spec.clouds * spec.hosts_per_cloud).to_string();
        let mut args = vec!["token", "create", "--uses", &total, "--expires", "1h"];
        if let Some(tag) = spec.tag {
            args.extend(["--tag", tag]);
        }
        cluster.token = cluster.admin(&args)?.trim().to_string();
        for c in 1..=spec.clouds {
            let r = format!("{}-r{c}", lab.tag());
            for h in 1..=spec.hosts_per_cloud {
                let ns = lab.netns(&format!("c{c}h{h}"));
                let port = format!("h{h}");
                lab.veth(&ns, "eth0", &r, &port);
                lab.attach(&r, &port, "lan");
                if let Some(m) = spec.host_mtu {
                    lab.mtu(&ns, "eth0", m);
                    lab.mtu(&r, &port, m);
                }
                let underlay = Ipv4Addr::new(198, 18, c as u8, 10 + h as u8);
                lab.addr(&ns, "eth0", &format!("{underlay}/24"));
                lab.route(&ns, "default", &format!("198.18.{c}.1"));
                let state_dir = lab.tempdir().join(format!("c{c}h{h}"));
                let interface = lab.name(&format!("w{c}{h}"));
                lab.register_path(format!("/var/run/wireguard/{interface}.sock"));
                cluster.hosts.push(Host {
                    name: format!("c{c}-h{h}"),
                    ns,
                    cloud: c,
                    underlay,
                    state_dir,
                    interface,
                    agent: None,
                    containers: Vec::new(),
                });
            }
        }
        for i in 0..cluster.hosts.len() {
            cluster.join(i)?;
        }
        cluster.wait_for_mesh(Duration::from_secs(20))?;
        for i in 0..cluster.hosts.len() {
            for k in 1..=spec.containers_per_host {
                cluster.add_container(i, k)?;
            }
        }
        Ok(cluster)
    }

    /// The namespace of cloud `cloud`'s router (for [`nat::flush_conntrack`],
    /// say).
    pub fn nat_router_ns(&self, cloud: usize) -> String {
        format!("{}-r{cloud}", self.lab.tag())
    }

    /// Starts (or restarts) the coordinator.
    pub fn start_coordinator(&mut self) -> anyhow::Result<()> {
        let dir = self.coordinator_dir.to_string_lossy().into_owned();
        let mut args = vec![
            "coordinator",
            "--state-dir",
            &dir,
            "--listen",
            COORDINATOR_ADDR,
            "--advertise",
            COORDINATOR_ADDR,
        ];
        args.extend(self.spec.coordinator_args);
        let p = self.lab.spawn(
            &self.coordinator_ns,
            &self.weft.to_string_lossy(),
            &args,
            &[],
        );
        let admin = self.coordinator_dir.join("admin.json");
        // An admin command sent before the coordinator listens loses its
        // first QUIC packet and waits a whole second to resend it: wait for
        // the coordinator to say it listens first.
        wait_for(Duration::from_secs(10), "the coordinator to listen", || {
            p.stderr().contains("coordinator started").then_some(())
        })?;
        wait_for(Duration::from_secs(10), "the coordinator to start", || {
            (admin.exists() && self.admin(&["node", "list"]).is_ok()).then_some(())
        })?;
        self.coordinator = Some(p);
        Ok(())
    }

    /// Stops the coordinator (SIGTERM).
    pub fn stop_coordinator(&mut self) {
        if let Some(p) = self.coordinator.take() {
            p.stop();
        }
    }

    /// Runs an admin command (`weft token …`, `weft node …`) against the
    /// coordinator; its stdout.
    pub fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        let admin = self.coordinator_dir.join("admin.json");
        let weft = self.weft.to_string_lossy();
        let mut v = vec![weft.as_ref()];
        v.extend_from_slice(args);
        let admin = admin.to_string_lossy();
        v.extend_from_slice(&["--admin", &admin]);
        self.lab.try_ok(&self.coordinator_ns, &v)
    }

    fn agent_args(&self, i: usize) -> Vec<String> {
        let h = &self.hosts[i];
        let mut v: Vec<String> = vec![
            "--state-dir".into(),
            h.state_dir.to_string_lossy().into_owned(),
            "--interface".into(),
            h.interface.clone(),
        ];
        v.extend(self.spec.agent_args.iter().map(|a| a.to_string()));
        v
    }

    fn join(&mut self, i: usize) -> anyhow::Result<()> {
        let h = &self.hosts[i];
        // The safe form: the token stays out of the process list.
        let token_file = self.lab.tempdir().join(format!("{}.token", h.name));
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&token_file)
                .context("write the token file")?;
            writeln!(f, "{}", self.token).context("write the token file")?;
        }
        let mut args: Vec<String> = vec![
            "join".into(),
            "--token-file".into(),
            token_file.to_string_lossy().into_owned(),
            "--name".into(),
            h.name.clone(),
        ];
        args.extend(self.agent_args(i));
        self.start_agent(i, &args)
    }

    /// Starts host `i` again from its stored identity (`weft up`).
    pub fn up(&mut self, i: usize) -> anyhow::Result<()> {
        self.up_with(i, &[])
    }

    /// [`Cluster::up`] with `extra` agent arguments.
    pub fn up_with(&mut self, i: usize, extra: &[&str]) -> anyhow::Result<()> {
        let mut args: Vec<String> = vec!["up".into()];
        args.extend(self.agent_args(i));
        args.extend(extra.iter().map(|a| a.to_string()));
        self.start_agent(i, &args)
    }

    /// [`Cluster::up`] without the spec's agent arguments (an agent
    /// started differently from the rest: the upgraded binary, say), with
    /// `extra`.
    pub fn up_without_spec_args(&mut self, i: usize, extra: &[&str]) -> anyhow::Result<()> {
        let h = &self.hosts[i];
        let mut args: Vec<String> = vec![
            "up".into(),
            "--state-dir".into(),
            h.state_dir.to_string_lossy().into_owned(),
            "--interface".into(),
            h.interface.clone(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        self.start_agent(i, &args)
    }

    fn start_agent(&mut self, i: usize, args: &[String]) -> anyhow::Result<()> {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let h = &self.hosts[i];
        let p = self.lab.spawn(
            &h.ns,
            &self.weft.to_string_lossy(),
            &argv,
            &[("WEFT_LOG", "info")],
        );
        let name = h.name.clone();
        wait_for(
            Duration::from_secs(15),
            &format!("agent {name} to come up"),
            || {
                if !p.is_running() {
                    return Some(Err(anyhow::anyhow!("agent {name} exited: {}", p.stderr())));
                }
                self.status(i).ok().map(|_| Ok(()))
            },
        )??;
        self.hosts[i].agent = Some(p);
        Ok(())
    }

    /// Stops host `i`'s agent (SIGTERM) and returns whether it exited cleanly.
    pub fn stop_agent(&mut self, i: usize) -> bool {
        self.hosts[i]
            .agent
            .take()
            .and_then(|p| p.stop())
            .is_some_and(|s| s.success())
    }

    /// `weft status --json` of host `i`.
    pub fn status(&self, i: usize) -> anyhow::Result<Value> {
        let h = &self.hosts[i];
        let out = crate::try_run(&[
            &self.weft.to_string_lossy(),
            "status",
            "--json",
            "--state-dir",
            &h.state_dir.to_string_lossy(),
        ])?;
        serde_json::from_str(&out).context("weft status --json printed something unreadable")
    }

    /// `weft status` (the table) of host `i`.
    pub fn status_text(&self, i: usize) -> anyhow::Result<String> {
        crate::try_run(&[
            &self.weft.to_string_lossy(),
            "status",
            "--state-dir",
            &self.hosts[i].state_dir.to_string_lossy(),
        ])
    }

    /// How host `i` reaches the peer named `peer` (`lan`, `direct`,
    /// `relay`), and why when relayed.
    pub fn path(&self, i: usize, peer: &str) -> Option<(String, Option<String>)> {
        let s = self.status(i).ok()?;
        let p = s["peers"]
            .as_array()?
            .iter()
            .find(|p| p["name"].as_str() == Some(peer))?
            .clone();
        Some((
            p["path"].as_str()?.to_string(),
            p["relay_reason"].as_str().map(str::to_string),
        ))
    }

    /// The overlay address of host `i` (its bridge gateway).
    pub fn host_addr(&self, i: usize) -> anyhow::Result<Ipv4Addr> {
        let s = self.status(i)?;
        s["host"]["address"]
            .as_str()
            .context("status has no host address")?
            .parse()
            .context("bad host address in status")
    }

    /// Waits until every running host lists every other host as a peer.
    pub fn wait_for_mesh(&self, timeout: Duration) -> anyhow::Result<()> {
        let want = self.hosts.len() - 1;
        let t0 = Instant::now();
        for i in 0..self.hosts.len() {
            if self.hosts[i].agent.is_none() {
                continue;
            }
            let left = timeout.saturating_sub(t0.elapsed());
            wait_for(
                left,
                &format!("{} to see {want} peers", self.hosts[i].name),
                || {
                    let s = self.status(i).ok()?;
                    (s["peers"].as_array()?.len() == want).then_some(())
                },
            )?;
        }
        Ok(())
    }

    /// Runs the CNI plugin on host `i` with `command` for container `c`;
    /// the plugin's JSON result (or error).
    pub fn cni(
        &self,
        i: usize,
        command: &str,
        c: &Container,
        prev: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let h = &self.hosts[i];
        let mut conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "weft",
            "type": "weft-cni",
            "stateDir": h.state_dir,
        });
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let mut child = Command::new("ip")
            .args(["netns", "exec", &h.ns])
            .arg(&self.weft)
            .arg("cni")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &c.id)
            .env("CNI_NETNS", format!("/run/netns/{}", c.ns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run weft cni")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(conf.to_string().as_bytes())?;
        }
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "weft cni {command} for {} failed: {} {}",
                c.name,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&stdout)
            .with_context(|| format!("weft cni {command} printed {stdout}"))
    }

    /// Creates container `k` on host `i` and attaches it with `weft cni ADD`.
    pub fn add_container(&mut self, i: usize, k: usize) -> anyhow::Result<Container> {
        let ns = self.lab.netns(&format!("{}-k{k}", self.hosts[i].name));
        let mut c = Container {
            name: format!("{}-ct{k}", self.hosts[i].name),
            id: ns.clone(),
            ns,
            addr: Ipv4Addr::UNSPECIFIED,
        };
        let res = self.cni(i, "ADD", &c, None)?;
        let ip = res["ips"][0]["address"]
            .as_str()
            .context("CNI result has no address")?;
        c.addr = ip
            .split('/')
            .next()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("bad address {ip} in CNI result"))?;
        self.hosts[i].containers.push(c.clone());
        Ok(c)
    }

    /// Every container, with the index of its host.
    pub fn containers(&self) -> Vec<(usize, Container)> {
        self.hosts
            .iter()
            .enumerate()
            .flat_map(|(i, h)| h.containers.iter().map(move |c| (i, c.clone())))
            .collect()
    }

    /// Pings every container from every other container; the pairs that
    /// got no reply.
    pub fn unreachable_pairs(&self) -> Vec<(String, String)> {
        let all = self.containers();
        let mut bad = Vec::new();
        for (_, a) in &all {
            for (_, b) in &all {
                if a.ns == b.ns {
                    continue;
                }
                let target = b.addr.to_string();
                let ok = crate::ping_with(&a.ns, &["-c", "1", "-W", "2", &target]).is_ok()
                    || crate::ping_with(&a.ns, &["-c", "2", "-W", "2", &target]).is_ok();
                if !ok {
                    bad.push((a.name.clone(), b.name.clone()));
                }
            }
        }
        bad
    }
}

/// Opens a TCP connection from namespace `from` to `to_ip:port` (a listener
/// in namespace `to`) and returns the source address the listener saw: the
/// mesh routes, it does not NAT, so this is the sender's own address.
pub fn seen_source(
    from: &str,
    to: &str,
    to_ip: Ipv4Addr,
    port: u16,
) -> anyhow::Result<std::net::IpAddr> {
    use std::net::{SocketAddr, TcpListener, TcpStream};
    let addr = SocketAddr::from((to_ip, port));
    let (tx, rx) = std::sync::mpsc::channel();
    let server = crate::in_netns(to, move || -> anyhow::Result<std::net::IpAddr> {
        let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        let _ = tx.send(());
        let (_, peer) = l.accept().context("accept")?;
        Ok(peer.ip())
    });
    rx.recv_timeout(Duration::from_secs(5))
        .context("listener did not start")?;
    let client = crate::in_netns(from, move || -> anyhow::Result<()> {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connect {addr}"))?;
        Ok(())
    });
    client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))?
}
