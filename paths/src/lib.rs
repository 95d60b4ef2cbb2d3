//! weft's path engine: finds and keeps the best path to every peer, with no
//! I/O, no clock and no randomness of its own.
//!
//! Candidates for a peer are the endpoints it reports through the netmap
//! plus any address an authenticated probe from it arrived from (see
//! [`candidates`]). The engine probes candidates with authenticated disco
//! pings, asks the peer through the coordinator to probe back at the same
//! moment (a punch, which opens both NATs), and points the data plane at the
//! best candidate that answers: on-link (LAN) first, then any other direct
//! path, then the relay.
//!
//! A host behind a NAT that maps per destination reaches peers behind
//! ones that do not with the [`birthday`] technique, from extra "side"
//! sockets the driver opens on request ([`Event::SideSockets`]).
//!
//! Hysteresis: a direct path is kept until it misses pongs for
//! [`DEAD_AFTER`]; the relay is left as soon as a direct candidate answers;
//! one direct path replaces another only for a better class (LAN over
//! public) or when the current one is dead.
//!
//! # Driving it
//!
//! ```text
//!        netmap ──► handle_netmap(peers, now)
//!  disco datagram ──► handle_disco(from, bytes, now)        ┌─► poll_transmit(): a probe to an address
//!  punch request  ──► handle_punch(node, now)      PathEngine│   or through the relay
//!  address change ──► handle_network_change(nets, now)       ├─► poll_event(): point a peer somewhere,
//!  `weft ping`    ──► ping(node, request, now)                │   punch, public mapping, ping reply
//!  the timer      ──► handle_timeout(now)                    └─► poll_timeout(): when to call again
//! ```
//!
//! After every `handle_*` call, drain [`PathEngine::poll_transmit`] and
//! [`PathEngine::poll_event`] until they return `None`, then sleep until
//! [`PathEngine::poll_timeout`] (or the next input) and call
//! [`PathEngine::handle_timeout`]. `now` must never go backwards. The
//! wall-clock time given at construction only seeds the clock probes carry
//! (the peer's replay guard needs it to increase across restarts).
//!
//! The tokio driver in `weft-mesh` (`agent/traversal`) does exactly this
//! with the data plane and the relay; the simulator in `tests/sim` does it
//! with an in-memory internet and a fake clock.

pub mod birthday;
pub mod candidates;
mod engine;
pub mod netcheck;
pub mod peer;
pub mod side;

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weft_proto::NodeId;

pub use engine::{EngineConfig, PathEngine};
pub use netcheck::NetcheckReport;

/// A direct path with no pong for this long is dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);
/// The engine's heartbeat: probes, punches and expiries are checked this
/// often.
pub const TICK: Duration = Duration::from_millis(250);

/// Where a datagram goes, or came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dest {
    /// An address on the WireGuard socket.
    Addr(SocketAddr),
    /// Through the coordinator's relay, to or from this node.
    Relay(NodeId),
}

/// A datagram for the driver to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub dest: Dest,
    pub payload: Vec<u8>,
}

/// Which way traffic to a peer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Directly to an address on one of this host's own networks.
    Lan,
    /// Directly to an address elsewhere (through NATs).
    Direct,
    /// Through the coordinator's relay.
    Relay,
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathKind::Lan => "lan",
            PathKind::Direct => "direct",
            PathKind::Relay => "relay",
        })
    }
}

/// One peer's current path, for `weft status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathInfo {
    pub kind: PathKind,
    pub endpoint: Option<SocketAddr>,
    pub rtt_ms: Option<f64>,
    /// Why the peer is relayed.
    pub reason: Option<String>,
    /// Seconds from the peer's first sighting to its first direct path.
    pub direct_after_secs: Option<f64>,
}

/// One answer to `weft ping`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PingReply {
    pub kind: PathKind,
    pub endpoint: Option<SocketAddr>,
    pub rtt_ms: f64,
}

/// A peer as the netmap describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInput {
    pub id: NodeId,
    /// Its WireGuard public key.
    pub key: [u8; 32],
    /// The endpoints it reports (interface addresses, public mapping).
    pub endpoints: Vec<SocketAddr>,
    pub online: bool,
}

impl From<&weft_proto::Peer> for PeerInput {
    fn from(p: &weft_proto::Peer) -> PeerInput {
        PeerInput {
            id: p.id,
            key: p.public_key.0,
            endpoints: p.endpoints.clone(),
            online: p.online,
        }
    }
}

/// What the engine asks of the driver.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Send the peer's WireGuard traffic to `target`, counted as `kind`.
    /// With `only_if_unset`, only if the data plane has no endpoint for it
    /// (a peer it dropped and added again); otherwise always. A driver that
    /// cannot (no such peer in the data plane yet) calls
    /// [`PathEngine::handle_path_refused`].
    SetPath {
        peer: NodeId,
        key: [u8; 32],
        target: Dest,
        kind: PathKind,
        only_if_unset: bool,
    },
    /// Ask `peer`, through the coordinator, to probe this host now.
    Punch(NodeId),
    /// This host's public mapping (the first reflector's answer) changed.
    PublicMapping(SocketAddr),
    /// The answer to [`PathEngine::ping`] number `request`.
    PingReply { request: u64, reply: PingReply },
    /// The netcheck findings changed.
    Netcheck(NetcheckReport),
    /// A peer's path (as [`PathEngine::path`] shows it) changed.
    PathChanged(NodeId),
    /// The side sockets (slot numbers, ascending) that must be open from
    /// now on: open the new ones before the next `handle_*` call, close the
    /// others. Transmits to a [`side`] marker go out from that slot's
    /// socket; what arrives on it is handed in with the marker as source.
    SideSockets(Vec<u16>),
}
