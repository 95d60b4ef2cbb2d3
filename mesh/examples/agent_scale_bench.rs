//! The agent with many peers: its memory per peer, and what one netmap
//! delta costs it at 1,000 and 10,000 peers, from the netmap reducer to the
//! data plane. Each delta takes the agent's own path: the reducer, an O(1)
//! copy of the map, the applier (reconciler, device, routes, services) and
//! the path engine's pass, with the engine's path choices applied to the
//! device as the traversal driver does. Beside it, in the same run, the
//! whole-map path every delta took before the agent went O(delta): the
//! applier over the whole map, the engine's whole-netmap pass, and the
//! netmap written to disk. The real reducer, applier, device (a TUN in a
//! network namespace of its own, gone when the process exits) and path
//! engine.
//!
//! A benchmark, not a test: run it on purpose, as root, in release:
//!
//! ```text
//! cargo run -p weft-mesh --release --example agent_scale_bench
//! ```

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "a benchmark tool")]

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use weft_mesh::agent::applier::Applier;
use weft_mesh::agent::host_net::MeshRoutes;
use weft_mesh::agent::services::Services;
use weft_mesh::agent::state::StateDir;
use weft_mesh::dataplane::hooks::relay_endpoint;
use weft_mesh::dataplane::settings::DeviceUpdate;
use weft_mesh::dataplane::{Device, DeviceHandle, DeviceOptions};
use weft_mesh::key::Key;
use weft_paths::{Dest, EngineConfig, Event, PathEngine, PeerInput};
use weft_proto::{HostSubnet, Netmap, NetmapChange, NetmapUpdate, NodeId, Peer, WgPublicKey};

/// Deltas of each kind timed (the median and the largest are reported).
const DELTAS: usize = 15;
/// Deltas taken the whole-map way (each costs O(peers)).
const WHOLE_DELTAS: usize = 5;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn peer(i: u32) -> Peer {
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(&i.to_be_bytes());
    key[31] = 1;
    Peer {
        id: NodeId(u64::from(i) + 2),
        name: format!("h{i}"),
        public_key: WgPublicKey(key),
        subnet: HostSubnet {
            addr: Ipv4Addr::from(0x6440_0000 + ((i + 1) << 8)),
            prefix_len: 24,
        },
        endpoints: vec![([192, 0, 2, 1], 10_000 + (i % 50_000) as u16).into()],
        tags: vec![],
        online: true,
        routes: Vec::new(),
    }
}

fn ip(args: &[&str]) {
    let ok = std::process::Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip {args:?} failed");
}

/// One simulated agent: the pieces its control loop and traversal driver
/// drive.
struct Agent {
    netmap: Netmap,
    applier: Applier,
    handle: DeviceHandle,
    services: Mutex<Services>,
    engine: PathEngine,
    state: StateDir,
}

impl Agent {
    /// What the traversal driver does with the engine's output.
    fn drain_engine(&mut self) {
        while self.engine.poll_transmit().is_some() {}
        while let Some(e) = self.engine.poll_event() {
            if let Event::SetPath {
                key,
                target,
                only_if_unset,
                ..
            } = e
            {
                let endpoint = match target {
                    Dest::Addr(a) => a,
                    Dest::Relay(n) => relay_endpoint(n.0),
                };
                if only_if_unset {
                    self.handle.set_endpoint_if_unset(&Key(key), endpoint);
                } else {
                    self.handle.set_endpoint(&Key(key), endpoint);
                }
            }
        }
    }

    /// Folds `update` in and applies it the agent's way now: O(delta).
    fn delta(&mut self, update: NetmapUpdate) -> Duration {
        let t = Instant::now();
        let change: NetmapChange = self.netmap.apply(update).unwrap().unwrap();
        let copy = self.netmap.clone();
        self.applier
            .apply_change(&copy, &change, &self.handle, &self.services);
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        for id in change.upserted.iter().chain(&change.removed) {
            match copy.peer(*id) {
                Some(p) => changed.push(PeerInput::from(p)),
                None => removed.push(*id),
            }
        }
        self.engine
            .handle_peers_changed(&changed, &removed, Instant::now());
        self.drain_engine();
        t.elapsed()
    }

    /// Folds `update` in and applies it the whole-map way (before).
    fn whole(&mut self, update: NetmapUpdate) -> Duration {
        let t = Instant::now();
        self.netmap.apply(update).unwrap().unwrap();
        let copy = self.netmap.clone();
        self.applier.apply(&copy, &self.handle, &self.services);
        let inputs: Vec<PeerInput> = copy.peers().map(PeerInput::from).collect();
        self.engine.handle_netmap(&inputs, Instant::now());
        self.drain_engine();
        self.state.save_netmap(&copy).unwrap();
        t.elapsed()
    }

    fn next(&self, upserts: Vec<Peer>, removed: Vec<NodeId>) -> NetmapUpdate {
        let v = self.netmap.version();
        NetmapUpdate {
            upserts,
            removed,
            ..NetmapUpdate::empty(1, v, v + 1, false)
        }
    }
}

fn median_max(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(v[v.len() / 2]), ms(v[v.len() - 1]))
}

struct Figures {
    per_peer: f64,
    full: Duration,
    kinds: Vec<(&'static str, (f64, f64))>,
    whole: (f64, f64),
    save: f64,
}

async fn run(peers: u32) -> Figures {
    let name = format!("wscale{peers}");
    let dev = Device::start(&DeviceOptions::new(name.clone())).unwrap();
    ip(&["addr", "add", "100.64.0.1/24", "dev", &name]);
    ip(&["link", "set", &name, "up"]);
    let handle = dev.handle();
    handle
        .apply(&DeviceUpdate {
            private_key: Some(Some(Key([7; 32]))),
            ..DeviceUpdate::default()
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Ipv4Addr::new(100, 64, 0, 1);
    let mut agent = Agent {
        netmap: Netmap::new(),
        applier: Applier::new(MeshRoutes::new(&name, gateway)),
        handle,
        services: Mutex::new(Services::start("bench.weft", gateway).await),
        engine: PathEngine::new(
            EngineConfig {
                secret: x25519_dalek::StaticSecret::from([7; 32]),
                coordinator: None,
                local_nets: Vec::new(),
                seed: 1,
                wall: std::time::SystemTime::now(),
                sources: Vec::new(),
                active_window: weft_paths::peer::ACTIVE_WINDOW,
            },
            Instant::now(),
        ),
        state: StateDir::open(dir.path()).unwrap(),
    };
    let rss0 = rss_kb();
    let t = Instant::now();
    agent
        .netmap
        .apply(NetmapUpdate {
            upserts: (0..peers).map(peer).collect(),
            ..NetmapUpdate::empty(1, 0, 1, true)
        })
        .unwrap();
    let copy = agent.netmap.clone();
    agent.applier.apply(&copy, &agent.handle, &agent.services);
    let inputs: Vec<PeerInput> = copy.peers().map(PeerInput::from).collect();
    agent.engine.handle_netmap(&inputs, Instant::now());
    agent.drain_engine();
    let full = t.elapsed();
    drop((copy, inputs));
    let rss = rss_kb().saturating_sub(rss0);

    let mut kinds = Vec::new();
    let mut times = Vec::new();
    for k in 0..DELTAS as u32 {
        let mut p = peer(k);
        p.endpoints = vec![([198, 51, 100, 7], 20_000 + k as u16).into()];
        let u = agent.next(vec![p], vec![]);
        times.push(agent.delta(u));
    }
    kinds.push(("endpoint moved", median_max(times)));
    let mut times = Vec::new();
    for k in 0..DELTAS as u32 {
        let u = agent.next(vec![peer(peers + k)], vec![]);
        times.push(agent.delta(u));
    }
    kinds.push(("new host", median_max(times)));
    let mut times = Vec::new();
    for k in 0..DELTAS as u32 {
        let mut p = peer(100 + k);
        p.routes = vec![format!("198.18.{k}.0/24").parse().unwrap()];
        let u = agent.next(vec![p], vec![]);
        times.push(agent.delta(u));
    }
    kinds.push(("route gained (one `ip route`)", median_max(times)));
    let mut times = Vec::new();
    for k in 0..DELTAS as u32 {
        let u = agent.next(vec![], vec![NodeId(u64::from(200 + k) + 2)]);
        times.push(agent.delta(u));
    }
    kinds.push(("host removed", median_max(times)));

    let mut times = Vec::new();
    for k in 0..WHOLE_DELTAS as u32 {
        let mut p = peer(300 + k);
        p.endpoints = vec![([198, 51, 100, 8], 20_000 + k as u16).into()];
        let u = agent.next(vec![p], vec![]);
        times.push(agent.whole(u));
    }
    let whole = median_max(times);
    let t = Instant::now();
    agent.state.save_netmap(&agent.netmap).unwrap();
    let save = t.elapsed().as_secs_f64() * 1000.0;
    drop(agent);
    drop(dev);
    Figures {
        per_peer: rss as f64 * 1024.0 / f64::from(peers),
        full,
        kinds,
        whole,
        save,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // SAFETY: unshare takes no pointers; the process gets a network
    // namespace of its own, so the TUN devices vanish with it.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!(
            "cannot enter a network namespace of its own ({}); run as root",
            std::io::Error::last_os_error()
        );
        std::process::exit(2);
    }
    for peers in [1_000u32, 10_000] {
        let f = run(peers).await;
        println!(
            "\n{peers} peers: agent RSS {:.0} bytes per peer (netmap, data plane, path engine); first full netmap applied in {:.1} ms",
            f.per_peer,
            f.full.as_secs_f64() * 1000.0
        );
        println!("| delta | median | max |\n|---|---|---|");
        for (kind, (median, max)) in &f.kinds {
            println!("| {kind} | {median:.3} ms | {max:.3} ms |");
        }
        let (median, max) = f.whole;
        let now = f.kinds[0].1 .0;
        println!(
            "| endpoint moved, the whole-map way (before; {WHOLE_DELTAS} runs) | {median:.2} ms | {max:.2} ms |"
        );
        println!(
            "whole-map / delta (endpoint moved, medians): {:.0}x; netmap.json written once per 2 s at most: {:.1} ms",
            median / now,
            f.save
        );
    }
}
