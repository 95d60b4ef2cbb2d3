//! The configuration path: applies UAPI `set` requests and answers `get`.
//! Runs under one mutex; publishes a changed copy of its [`PeerTable`]
//! after each change. The table's maps are persistent, so an update costs
//! O(peers it names), not O(peers): a netmap delta at 10,000 peers touches
//! one.

use std::sync::Arc;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519;

use super::peer::{Peer, PeerTable, HANDSHAKE_RATE_LIMIT};
use super::settings::{DeviceSnapshot, DeviceUpdate, PeerSnapshot};
use super::udp::UdpEndpoint;
use super::Shared;
use crate::key::Key;
use crate::uapi::protocol::{errno, UapiError};

/// The device's configuration, owned by the configuration path.
pub struct DeviceState {
    pub private_key: Option<Key>,
    pub listen_port: u16,
    pub fwmark: u32,
    /// The peers and their networks; the packet threads read a copy.
    table: PeerTable,
    rate_limiter: Option<Arc<RateLimiter>>,
    next_index: u32,
    next_seq: u64,
}

impl DeviceState {
    pub fn new(listen_port: u16) -> Self {
        DeviceState {
            private_key: None,
            listen_port,
            fwmark: 0,
            table: PeerTable::default(),
            rate_limiter: None,
            // Random start so session indices differ across restarts.
            next_index: rand::random::<u32>() & 0x00ff_ffff,
            next_seq: 0,
        }
    }

    fn alloc_index(&mut self) -> u32 {
        loop {
            self.next_index = (self.next_index + 1) & 0x00ff_ffff;
            let idx = self.next_index;
            if !self.table.by_index.contains_key(&idx) {
                return idx;
            }
        }
    }

    /// A new peer, in the table.
    fn add_peer(&mut self, key: Key) -> Arc<Peer> {
        let idx = self.alloc_index();
        self.next_seq += 1;
        let p = Arc::new(Peer::new(key, idx, self.next_seq));
        self.table.insert(p.clone());
        p
    }
}

pub(super) fn apply(shared: &Shared, update: &DeviceUpdate) -> Result<(), UapiError> {
    let mut st = shared.config.lock().unwrap_or_else(|p| p.into_inner());

    if let Some(port) = update.listen_port {
        if port != st.listen_port {
            let udp = UdpEndpoint::bind(port).map_err(|e| UapiError {
                errno: if e.kind() == std::io::ErrorKind::AddrInUse {
                    errno::EADDRINUSE
                } else {
                    errno::EIO
                },
                reason: format!("cannot bind UDP port {port}: {e}"),
            })?;
            if st.fwmark != 0 {
                let _ = udp.set_fwmark(st.fwmark);
            }
            st.listen_port = udp.port();
            shared.udp.store(Arc::new(udp));
            shared.rebind.signal();
        }
    }
    if let Some(mark) = update.fwmark {
        shared.udp.load().set_fwmark(mark).map_err(|e| UapiError {
            errno: errno::EIO,
            reason: format!("cannot set fwmark {mark}: {e}"),
        })?;
        st.fwmark = mark;
    }

    if let Some(private) = update.private_key {
        if private != st.private_key {
            st.private_key = private;
            st.rate_limiter = private.map(|k| {
                let public = x25519::PublicKey::from(&x25519::StaticSecret::from(k.0));
                Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT))
            });
            let limiter = st.rate_limiter.clone();
            st.table.set_identity(private.as_ref(), limiter);
            // A peer with our own public key would be ourselves: drop it.
            if let Some(k) = private {
                st.table.remove(&k.public_from_private());
            }
            let (key, limiter) = (st.private_key, st.rate_limiter.clone());
            for p in st.table.peers.values() {
                p.reset_tunn(key.as_ref(), limiter.as_ref());
            }
        }
    }

    if update.replace_peers {
        st.table.clear();
    }
    let own = st.private_key.map(|k| k.public_from_private());
    for pu in &update.peers {
        if pu.remove {
            st.table.remove(&pu.public_key);
            continue;
        }
        let existing = st.table.by_key.get(&pu.public_key).cloned();
        if existing.is_none() && pu.update_only {
            continue;
        }
        if own == Some(pu.public_key) {
            continue;
        }
        let (peer, created) = match existing {
            Some(p) => (p, false),
            None => (st.add_peer(pu.public_key), true),
        };
        let mut session_params_changed = created;
        let dropped = {
            let mut cfg = peer.config();
            if let Some(psk) = pu.preshared_key {
                session_params_changed |= cfg.preshared_key != psk;
                cfg.preshared_key = psk;
            }
            if let Some(ka) = pu.persistent_keepalive {
                session_params_changed |= cfg.persistent_keepalive != ka;
                cfg.persistent_keepalive = ka;
            }
            if pu.replace_allowed_ips {
                std::mem::take(&mut cfg.allowed_ips)
            } else {
                Vec::new()
            }
        };
        for net in &dropped {
            st.table.disown(net, &peer);
        }
        // A network belongs to one peer: adding it here takes it from others.
        for net in &pu.allowed_ips {
            if let Some(prev) = st.table.routes.insert(*net, peer.clone()) {
                if !Arc::ptr_eq(&prev, &peer) {
                    prev.config().allowed_ips.retain(|n| n != net);
                }
            }
            let mut cfg = peer.config();
            if !cfg.allowed_ips.contains(net) {
                cfg.allowed_ips.push(*net);
            }
        }
        if session_params_changed {
            peer.reset_tunn(st.private_key.as_ref(), st.rate_limiter.as_ref());
        }
        if let Some(ep) = pu.endpoint {
            peer.state().endpoint = Some(super::udp::canonical(ep));
        }
    }
    shared.table.store(Arc::new(st.table.clone()));
    Ok(())
}

pub(super) fn snapshot(shared: &Shared) -> DeviceSnapshot {
    let st = shared.config.lock().unwrap_or_else(|p| p.into_inner());
    DeviceSnapshot {
        private_key: st.private_key,
        listen_port: st.listen_port,
        fwmark: st.fwmark,
        peers: st
            .table
            .peers
            .values()
            .map(|p| {
                let cfg = p.config().clone();
                PeerSnapshot {
                    public_key: p.public_key,
                    preshared_key: cfg.preshared_key,
                    endpoint: p.endpoint(),
                    last_handshake: p.last_handshake(),
                    rx_bytes: p.rx_bytes.load(std::sync::atomic::Ordering::Relaxed),
                    tx_bytes: p.tx_bytes.load(std::sync::atomic::Ordering::Relaxed),
                    persistent_keepalive: cfg.persistent_keepalive,
                    allowed_ips: cfg.allowed_ips,
                }
            })
            .collect(),
    }
}
