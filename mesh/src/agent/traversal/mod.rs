//! NAT traversal: the path engine ([`weft_paths`], a sans-IO state
//! machine that finds and keeps the best path to every peer) and its tokio
//! [`driver`], plus the host end of the relay ([`relay`]).
//!
//! This module wires the engine's inputs: the data plane's disco hook, the
//! relay's punch requests, `weft ping` and address changes, and the
//! netmap the control loop applied (it notifies; the driver reads).

pub mod driver;
pub mod relay;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};
use weft_proto::policy::Cidr;
use weft_proto::{Netmap, NetmapChange, NodeId};

pub use weft_paths::netcheck;
pub use weft_paths::{PathInfo, PathKind, PingReply, DEAD_AFTER};

use crate::dataplane::DeviceHandle;
use netcheck::NetcheckReport;
use relay::RelayLink;

/// The largest datagram handed to the engine as disco.
const MAX_DISCO_LEN: usize = 256;

/// The netmap in force, and which of its peers changed since the driver
/// last read it: the control loop writes, the driver reads and takes the
/// changes, so a delta costs the engine O(peers it names).
#[derive(Debug, Default)]
pub struct NetmapCell {
    pub map: Netmap,
    pub changed: PeersChanged,
}

/// Peers that changed (upserted or removed), or all of them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PeersChanged {
    /// The whole map is new (a session started, or a full update).
    pub all: bool,
    pub ids: BTreeSet<NodeId>,
}

impl PeersChanged {
    /// Adds one applied change; `None` means the whole map changed.
    pub fn note(&mut self, change: Option<&NetmapChange>) {
        match change {
            Some(c) if !c.full => {
                if !self.all {
                    self.ids
                        .extend(c.upserted.iter().chain(&c.removed).copied());
                }
            }
            _ => {
                self.all = true;
                self.ids.clear();
            }
        }
    }
}

/// What the API can ask of the engine.
pub enum Request {
    Ping {
        node: NodeId,
        reply: oneshot::Sender<PingReply>,
    },
    /// This host's addresses changed (its interface networks are now
    /// `local_nets`): ask the reflector again and probe every candidate of
    /// every peer from the new address at once.
    NetworkChanged { local_nets: Vec<Cidr> },
}

/// The shared, read-only side of the engine.
#[derive(Clone)]
pub struct TraversalView {
    pub link: RelayLink,
    pub paths: Arc<Mutex<HashMap<NodeId, PathInfo>>>,
    pub netcheck: watch::Receiver<NetcheckReport>,
    pub requests: mpsc::Sender<Request>,
    pub punches: mpsc::Sender<NodeId>,
}

impl TraversalView {
    pub fn path(&self, node: NodeId) -> Option<PathInfo> {
        self.paths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .cloned()
    }
}

/// The engine's inputs, built before the agent joins.
pub struct Inputs {
    pub disco: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    pub punches: mpsc::Receiver<NodeId>,
    pub requests: mpsc::Receiver<Request>,
}

/// Builds the engine's channels and plugs the data plane's hooks into them.
pub fn attach(handle: &DeviceHandle) -> (TraversalView, Inputs, watch::Sender<NetcheckReport>) {
    let (disco_tx, disco_rx) = mpsc::channel::<(SocketAddr, Vec<u8>)>(1024);
    handle.set_disco_sink(Box::new(move |src, bytes| {
        // Disco messages are under 128 bytes: anything larger is not one,
        // and the queue stays under 1024 x 256 bytes. Full: drop, like a
        // lost probe.
        if bytes.len() <= MAX_DISCO_LEN {
            let _ = disco_tx.try_send((src, bytes.to_vec()));
        }
    }));
    let link = RelayLink::default();
    let sink_link = link.clone();
    handle.set_relay_sink(Box::new(move |node, bytes| sink_link.send(node, bytes)));
    let (punch_tx, punch_rx) = mpsc::channel(256);
    let (req_tx, req_rx) = mpsc::channel(64);
    let (nc_tx, nc_rx) = watch::channel(NetcheckReport::default());
    (
        TraversalView {
            link,
            paths: Arc::default(),
            netcheck: nc_rx,
            requests: req_tx,
            punches: punch_tx,
        },
        Inputs {
            disco: disco_rx,
            punches: punch_rx,
            requests: req_rx,
        },
        nc_tx,
    )
}

/// This host's interface networks, to tell LAN candidates from others.
pub fn local_networks(skip: &[&str]) -> Vec<Cidr> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !i.is_loopback() && !skip.contains(&i.name.as_str()))
        .map(|i| match i.addr {
            if_addrs::IfAddr::V4(v4) => Cidr::new_truncating(
                std::net::IpAddr::V4(v4.ip),
                u32::from(v4.netmask).count_ones() as u8,
            ),
            if_addrs::IfAddr::V6(v6) => Cidr::new_truncating(
                std::net::IpAddr::V6(v6.ip),
                u128::from(v6.netmask).count_ones() as u8,
            ),
        })
        .collect()
}
