//! The agent with many peers: the data plane's memory per peer, and how
//! long one netmap delta takes from the netmap to the data plane (the
//! agent's reconciler plus the device's update) at 1,000 and 10,000 peers.
//! The real netmap reducer, reconciler and device (a TUN in a network
//! namespace of its own, gone when the process exits). A benchmark, not a
//! test: run it on purpose, as root, in release:
//!
//! ```text
//! cargo run -p weft-mesh --release --example agent_scale_bench
//! ```

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "a benchmark tool")]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use weft_mesh::agent::peers::PeerReconciler;
use weft_mesh::dataplane::settings::DeviceUpdate;
use weft_mesh::dataplane::{Device, DeviceHandle, DeviceOptions};
use weft_mesh::key::Key;
use weft_proto::{HostSubnet, Netmap, NetmapUpdate, NodeId, Peer, WgPublicKey};

const DELTAS: usize = 21;

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

/// Plans and applies what changed, as the agent's control loop does.
fn sync(r: &mut PeerReconciler, netmap: &Netmap, handle: &DeviceHandle) -> usize {
    let update = r.plan(netmap, &handle.peer_keys());
    let n = update.peers.len();
    if n > 0 {
        handle.apply(&update).unwrap();
    }
    n
}

fn run(peers: u32) -> (f64, Duration, Duration, Duration) {
    let dev = Device::start(&DeviceOptions::new(format!("wscale{peers}"))).unwrap();
    let handle = dev.handle();
    handle
        .apply(&DeviceUpdate {
            private_key: Some(Some(Key([7; 32]))),
            ..DeviceUpdate::default()
        })
        .unwrap();
    let rss0 = rss_kb();
    let mut netmap = Netmap::new();
    netmap
        .apply(NetmapUpdate {
            upserts: (0..peers).map(peer).collect(),
            ..NetmapUpdate::empty(1, 0, 1, true)
        })
        .unwrap();
    let mut r = PeerReconciler::new();
    let t = Instant::now();
    assert_eq!(sync(&mut r, &netmap, &handle), peers as usize);
    let full = t.elapsed();
    let rss = rss_kb().saturating_sub(rss0);
    // Deltas: one peer gains a route (a changed peer), or one joins.
    let mut times = Vec::new();
    for k in 0..DELTAS as u32 {
        let version = netmap.version();
        let upsert = if k % 2 == 0 {
            let mut p = peer(k);
            p.routes = vec![format!("198.18.{k}.0/24").parse().unwrap()];
            p
        } else {
            peer(peers + k)
        };
        let t = Instant::now();
        netmap
            .apply(NetmapUpdate {
                upserts: vec![upsert],
                ..NetmapUpdate::empty(1, version, version + 1, false)
            })
            .unwrap();
        assert_eq!(sync(&mut r, &netmap, &handle), 1);
        times.push(t.elapsed());
    }
    times.sort();
    drop(dev);
    (
        rss as f64 * 1024.0 / f64::from(peers),
        full,
        times[DELTAS / 2],
        times[DELTAS - 1],
    )
}

fn main() {
    // SAFETY: unshare takes no pointers; the process gets a network
    // namespace of its own, so the TUN devices vanish with it.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!(
            "cannot enter a network namespace of its own ({}); run as root",
            std::io::Error::last_os_error()
        );
        std::process::exit(2);
    }
    println!("| peers | agent RSS per peer (bytes, netmap and data plane) | first full netmap applied | one-peer delta, median of {DELTAS} | max |");
    println!("|---|---|---|---|---|");
    for peers in [1_000u32, 10_000] {
        let (per_peer, full, median, max) = run(peers);
        println!(
            "| {peers} | {per_peer:.0} | {:.1} ms | {:.2} ms | {:.2} ms |",
            full.as_secs_f64() * 1000.0,
            median.as_secs_f64() * 1000.0,
            max.as_secs_f64() * 1000.0
        );
    }
}
