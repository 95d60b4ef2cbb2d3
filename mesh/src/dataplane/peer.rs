//! One WireGuard peer: its boringtun session state, endpoint and counters,
//! and the lookup tables the packet threads read without taking locks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use boringtun::x25519;

use crate::allowed_ips::{AllowedIps, Cidr};
use crate::key::Key;

/// Handshake initiations per second the device accepts before it answers
/// with cookies (WireGuard's under-load mechanism).
pub const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// The part of a peer the packet threads change: one lock per packet.
pub struct PeerState {
    /// `None` until the device has a private key.
    pub tunn: Option<Tunn>,
    /// Where to send; follows the source of the latest authenticated packet.
    pub endpoint: Option<SocketAddr>,
}

/// Settings that only the configuration path reads and writes.
#[derive(Clone, Debug, Default)]
pub struct PeerConfig {
    pub preshared_key: Option<Key>,
    pub persistent_keepalive: u16,
    pub allowed_ips: Vec<Cidr>,
}

/// One WireGuard peer of the device.
pub struct Peer {
    pub public_key: Key,
    /// Our local session index for this peer (24 bits; boringtun adds 8).
    pub index: u32,
    /// Orders the device's peers as they were added (`wg show` lists them
    /// so).
    pub seq: u64,
    state: Mutex<PeerState>,
    pub config: Mutex<PeerConfig>,
    /// Bytes received from this peer on the wire (authenticated only).
    pub rx_bytes: AtomicU64,
    /// Bytes sent to this peer on the wire.
    pub tx_bytes: AtomicU64,
    /// Data packets through the tunnel either way (not handshakes or
    /// keep-alives): the path engine probes peers that have them.
    pub data_packets: AtomicU64,
    /// Handshakes and keep-alives queued or sent on the device's initiative.
    pub kicks: super::kick::KickState,
    /// The [`super::traffic::PathClass`] of the path this peer's traffic
    /// takes, as the agent set it.
    pub path: std::sync::atomic::AtomicU8,
}

/// Our own identity, needed to recognise handshake initiations.
pub struct Identity {
    pub secret: x25519::StaticSecret,
    pub public: x25519::PublicKey,
}

impl Peer {
    pub fn new(public_key: Key, index: u32, seq: u64) -> Peer {
        Peer {
            public_key,
            index,
            seq,
            state: Mutex::new(PeerState {
                tunn: None,
                endpoint: None,
            }),
            config: Mutex::new(PeerConfig::default()),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            data_packets: AtomicU64::new(0),
            kicks: super::kick::KickState::default(),
            path: std::sync::atomic::AtomicU8::new(super::traffic::PathClass::Direct as u8),
        }
    }

    /// Locks the session state. A panic in another thread while holding the
    /// lock leaves consistent-enough state (boringtun keeps no invariants
    /// across our calls), so poisoning is ignored rather than spreading.
    pub fn state(&self) -> MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> MutexGuard<'_, PeerConfig> {
        self.config.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (Re)creates the boringtun session from the device key and our config.
    /// Existing sessions are dropped; the next packet handshakes again.
    pub fn reset_tunn(&self, private: Option<&Key>, limiter: Option<&Arc<RateLimiter>>) {
        let cfg = self.config().clone();
        let tunn = private.map(|k| {
            Tunn::new(
                x25519::StaticSecret::from(k.0),
                x25519::PublicKey::from(self.public_key.0),
                cfg.preshared_key.map(|k| k.0),
                (cfg.persistent_keepalive > 0).then_some(cfg.persistent_keepalive),
                self.index,
                limiter.cloned(),
            )
        });
        self.state().tunn = tunn;
    }

    /// When the current session was established, if there is one.
    pub fn last_handshake(&self) -> Option<SystemTime> {
        let st = self.state();
        let since = st.tunn.as_ref()?.time_since_last_handshake()?;
        SystemTime::now().checked_sub(since)
    }

    /// Whether a session is established (not merely being handshaken).
    pub fn has_session(&self) -> bool {
        self.state()
            .tunn
            .as_ref()
            .is_some_and(|t| t.time_since_last_handshake().is_some())
    }

    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.state().endpoint
    }

    fn path_class(&self) -> super::traffic::PathClass {
        super::traffic::PathClass::from_u8(self.path.load(Ordering::Relaxed))
    }

    /// Counts `n` bytes received from this peer, here and by path.
    pub fn add_rx(&self, n: usize, traffic: &super::traffic::PathTraffic) {
        self.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        if traffic.counting() {
            traffic.add_rx(self.path_class(), n);
        }
    }

    /// Counts `n` bytes sent to this peer, here and by path.
    pub fn add_tx(&self, n: usize, traffic: &super::traffic::PathTraffic) {
        self.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        if traffic.counting() {
            traffic.add_tx(self.path_class(), n);
        }
    }
}

/// An immutable snapshot of who the peers are and what they route, swapped
/// whole on every configuration change so packet threads never lock it.
/// Its maps are persistent (`imbl`): the configuration path copies the
/// table in O(1) and changes only the peers an update names, so a
/// one-peer change costs O(log n) at any number of peers. A lookup is a
/// hash probe through a few trie levels, with no allocation.
#[derive(Clone, Default)]
pub struct PeerTable {
    pub identity: Option<Arc<Identity>>,
    pub rate_limiter: Option<Arc<RateLimiter>>,
    /// Every peer, in the order added (by [`Peer::seq`]).
    pub peers: imbl::OrdMap<u64, Arc<Peer>>,
    pub by_key: imbl::HashMap<Key, Arc<Peer>>,
    pub by_index: imbl::HashMap<u32, Arc<Peer>>,
    /// Each network to the one peer it belongs to.
    pub routes: AllowedIps<Arc<Peer>>,
}

impl PeerTable {
    /// Sets this device's own key (and the handshake rate limiter).
    pub fn set_identity(&mut self, private: Option<&Key>, rate_limiter: Option<Arc<RateLimiter>>) {
        self.identity = private.map(|k| {
            let secret = x25519::StaticSecret::from(k.0);
            let public = x25519::PublicKey::from(&secret);
            Arc::new(Identity { secret, public })
        });
        self.rate_limiter = rate_limiter;
    }

    pub fn insert(&mut self, peer: Arc<Peer>) {
        self.peers.insert(peer.seq, peer.clone());
        self.by_index.insert(peer.index, peer.clone());
        self.by_key.insert(peer.public_key, peer);
    }

    /// Removes peer `key` and the networks it owns; returns it.
    pub fn remove(&mut self, key: &Key) -> Option<Arc<Peer>> {
        let peer = self.by_key.remove(key)?;
        self.peers.remove(&peer.seq);
        self.by_index.remove(&peer.index);
        for net in &peer.config().allowed_ips {
            self.disown(net, &peer);
        }
        Some(peer)
    }

    /// Drops `net` from the routes if `peer` owns it.
    pub fn disown(&mut self, net: &Cidr, peer: &Arc<Peer>) {
        if self.routes.get(net).is_some_and(|p| Arc::ptr_eq(p, peer)) {
            self.routes.remove(net);
        }
    }

    pub fn clear(&mut self) {
        self.peers.clear();
        self.by_key.clear();
        self.by_index.clear();
        self.routes = AllowedIps::new();
    }
}
