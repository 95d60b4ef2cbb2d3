//! The birthday technique: a direct path between a host behind a NAT that
//! maps per destination ("hard": symmetric, or address-dependent mapping)
//! and a peer behind one that maps endpoint-independently ("easy").
//!
//! The hard side cannot tell the easy side its mapping: a reflector sees
//! another one. So it makes many. It opens [`SPRAY_SOCKETS`] side sockets
//! (see [`crate::side`]) and pings the peer's public endpoint from each:
//! its NAT opens that many mappings toward exactly that endpoint, at ports
//! nobody knows. The peer's NAT drops those pings (it filters by address
//! and port, or they would not be needed). Then the hard side asks the
//! peer, through the relay (`ScanMe`), to probe the hard side's public
//! address at random ports: [`SCAN_PER_TICK`] pings every tick from its
//! one WireGuard socket, whose mapping is the same for every destination.
//! Each probe hits one of the open mappings with a chance of
//! [`SPRAY_SOCKETS`] in [`SCAN_PORTS`] (1 in 252); half the time within
//! 175 probes, and all but 5 in a million within [`SCAN_MAX`]
//! (12 s). The probe that hits reaches a
//! side socket; its pong and the hard side's own ping back go out through
//! that socket's mapping, which the peer's NAT now lets in (the peer just
//! sent there). Both ends then have a direct path: the easy side to the
//! hard side's mapped port, the hard side from that side socket. The hard
//! side keeps that one socket ([`MAX_KEPT`] at most, one per such peer)
//! and closes the rest.
//!
//! One spray's sockets serve up to [`MAX_SPRAY_PEERS`] peers at once (each
//! socket's NAT mapping is per destination, so one socket opens a mapping
//! toward every peer it pings); a peer due while a spray runs joins it.
//!
//! Costs are bounded on both ends: a hard host sprays toward at most
//! [`MAX_SPRAY_PEERS`] peers at a time, each for [`SPRAY_FOR`] and at most
//! once per [`SPRAY_BACKOFF`]
//! (doubling up to [`SPRAY_BACKOFF_MAX`] when it fails, as it does against
//! another hard NAT); an easy host runs at most [`MAX_SCANS`] scans, each
//! at most [`SCAN_MAX`] probes at [`SCAN_PER_TICK`] a tick, and scans for
//! a peer at most once per [`SCAN_AGAIN`]. A scan probes only the public
//! address the coordinator's netmap gives for that peer, so a joined host
//! cannot aim one at an address of its choosing.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use weft_proto::NodeId;

/// Side sockets a hard host opens for one spray.
pub const SPRAY_SOCKETS: u16 = 256;
/// Side sockets kept for paths found, at most.
pub const MAX_KEPT: usize = 16;
/// Peers one spray serves at once, at most.
pub const MAX_SPRAY_PEERS: usize = 4;
/// Slot numbers of side sockets are below this.
pub const SLOTS: u16 = SPRAY_SOCKETS + MAX_KEPT as u16;
/// A relayed active peer is sprayed at after this long without a direct
/// path (ordinary probing and punching find the others well within it).
pub const SPRAY_AFTER: Duration = Duration::from_secs(3);
/// How long one spray's sockets stay open.
pub const SPRAY_FOR: Duration = Duration::from_secs(20);
/// The spray's pings are sent again this often while it lasts (a NAT's
/// mapping for a flow with no answer may live only 30 s).
pub const SPRAY_REFRESH: Duration = Duration::from_secs(10);
/// The least time between two sprays toward one peer.
pub const SPRAY_BACKOFF: Duration = Duration::from_secs(60);
/// The backoff doubles after each spray that found nothing, up to this.
pub const SPRAY_BACKOFF_MAX: Duration = Duration::from_secs(30 * 60);
/// Ports a hard NAT maps to, as far as a scan is concerned.
pub const SCAN_PORTS: RangeInclusive<u16> = 1024..=65535;
/// Probes a scan sends per engine tick (256 a second at the 250 ms tick).
pub const SCAN_PER_TICK: u32 = 64;
/// Probes one scan sends at most.
pub const SCAN_MAX: u32 = 3072;
/// Scans an easy host runs at once, at most (1,024 probes a second in
/// all, about 110 KB/s, for at most 12 s).
pub const MAX_SCANS: usize = 4;
/// A spray asks each of its peers to scan this often while it lasts (the
/// request goes through the relay once, unacknowledged; a peer already
/// scanning, or that scanned lately, ignores the repeats).
pub const SCAN_ME_EVERY: Duration = Duration::from_secs(2);
/// The least time between two scans for one peer.
pub const SCAN_AGAIN: Duration = Duration::from_secs(30);

/// A spray in progress on the hard side: its sockets, and the peers it
/// opens mappings toward.
pub(crate) struct Spray {
    pub slots: Vec<u16>,
    pub peers: Vec<SprayPeer>,
}

/// One peer of a spray.
pub(crate) struct SprayPeer {
    pub node: NodeId,
    /// The peer's public endpoints it pings.
    pub targets: Vec<SocketAddrV4>,
    pub started: Instant,
    /// When its pings last went out (`None`: not yet; they go out on the
    /// tick after the sockets were asked for).
    pub pinged: Option<Instant>,
    /// When it was last asked to scan.
    pub asked: Option<Instant>,
}

/// A scan in progress on the easy side.
pub(crate) struct Scan {
    pub peer: NodeId,
    pub ip: Ipv4Addr,
    pub sent: u32,
}

/// Both sides' state.
#[derive(Default)]
pub(crate) struct Birthday {
    pub spray: Option<Spray>,
    /// Side sockets kept: those some peer's current path goes through.
    pub kept: BTreeSet<u16>,
    pub scans: Vec<Scan>,
    /// When a peer may be sprayed at again, and the backoff after that.
    pub next_spray: HashMap<NodeId, (Instant, Duration)>,
    /// When a scan for a peer last started.
    pub last_scan: HashMap<NodeId, Instant>,
}

impl Birthday {
    /// The side sockets that should be open: the kept ones and the
    /// spray's, in order.
    pub fn open_slots(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self.kept.iter().copied().collect();
        if let Some(s) = &self.spray {
            v.extend_from_slice(&s.slots);
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Slots not kept, for a new spray.
    pub fn free_slots(&self) -> Vec<u16> {
        (0..SLOTS)
            .filter(|s| !self.kept.contains(s))
            .take(usize::from(SPRAY_SOCKETS))
            .collect()
    }

    /// Whether `node` is in the spray.
    pub fn spraying(&self, node: NodeId) -> bool {
        self.spray
            .as_ref()
            .is_some_and(|s| s.peers.iter().any(|p| p.node == node))
    }

    /// Forgets peers no longer in the netmap.
    pub fn retain_peers(&mut self, keep: impl Fn(NodeId) -> bool) {
        self.next_spray.retain(|id, _| keep(*id));
        self.last_scan.retain(|id, _| keep(*id));
        self.scans.retain(|s| keep(s.peer));
    }
}
