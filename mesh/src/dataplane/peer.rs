//! One WireGuard peer: its boringtun session state, endpoint and counters,
//! and the lookup tables the packet threads read without taking locks.

use std::collections::HashMap;
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
    pub fn new(public_key: Key, index: u32) -> Peer {
        Peer {
            public_key,
            index,
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
#[derive(Default)]
pub struct PeerTable {
    pub identity: Option<Identity>,
    pub rate_limiter: Option<Arc<RateLimiter>>,
    pub peers: Vec<Arc<Peer>>,
    pub by_key: HashMap<Key, Arc<Peer>>,
    pub by_index: HashMap<u32, Arc<Peer>>,
    pub routes: AllowedIps<Arc<Peer>>,
}

impl PeerTable {
    pub fn build(
        private: Option<&Key>,
        rate_limiter: Option<Arc<RateLimiter>>,
        peers: &[Arc<Peer>],
    ) -> PeerTable {
        let identity = private.map(|k| {
            let secret = x25519::StaticSecret::from(k.0);
            let public = x25519::PublicKey::from(&secret);
            Identity { secret, public }
        });
        let mut routes = AllowedIps::new();
        for p in peers {
            for net in &p.config().allowed_ips {
                routes.insert(*net, p.clone());
            }
        }
        PeerTable {
            identity,
            rate_limiter,
            by_key: peers.iter().map(|p| (p.public_key, p.clone())).collect(),
            by_index: peers.iter().map(|p| (p.index, p.clone())).collect(),
            peers: peers.to_vec(),
            routes,
        }
    }
}
