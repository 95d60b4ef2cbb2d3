//! The configuration path: applies UAPI `set` requests and answers `get`.
//! Runs under one mutex; publishes a fresh [`PeerTable`] after each change.

use std::collections::HashMap;
use std::sync::Arc;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519;

use super::peer::{Peer, PeerTable, HANDSHAKE_RATE_LIMIT};
use super::settings::{DeviceSnapshot, DeviceUpdate, PeerSnapshot};
use super::udp::UdpEndpoint;
use super::Shared;
use crate::allowed_ips::Cidr;
use crate::key::Key;
use crate::uapi::protocol::{errno, UapiError};

/// The device's configuration, owned by the configuration path.
pub struct DeviceState {
    pub private_key: Option<Key>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: Vec<Arc<Peer>>,
    rate_limiter: Option<Arc<RateLimiter>>,
    next_index: u32,
}

impl DeviceState {
    pub fn new(listen_port: u16) -> Self {
        DeviceState {
            private_key: None,
            listen_port,
            fwmark: 0,
            peers: Vec::new(),
            rate_limiter: None,
            // Random start so session indices differ across restarts.
            next_index: rand::random::<u32>() & 0x00ff_ffff,
        }
    }

    fn alloc_index(&mut self) -> u32 {
        loop {
            self.next_index = (self.next_index + 1) & 0x00ff_ffff;
            let idx = self.next_index;
            if !self.peers.iter().any(|p| p.index == idx) {
                return idx;
            }
        }
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

    let mut key_changed = false;
    if let Some(private) = update.private_key {
        if private != st.private_key {
            st.private_key = private;
            st.rate_limiter = private.map(|k| {
                let public = x25519::PublicKey::from(&x25519::StaticSecret::from(k.0));
                Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT))
            });
            // A peer with our own public key would be ourselves: drop it.
            if let Some(k) = private {
                let own = k.public_from_private();
                st.peers.retain(|p| p.public_key != own);
            }
            key_changed = true;
        }
    }
    if key_changed {
        let (key, limiter) = (st.private_key, st.rate_limiter.clone());
        for p in &st.peers {
            p.reset_tunn(key.as_ref(), limiter.as_ref());
        }
    }

    if update.replace_peers {
        st.peers.clear();
    }

    // Indexes built once per update (O(peers)), so each peer of the update
    // costs O(1) and a network changes owner without a scan of every peer.
    let mut index: HashMap<Key, Arc<Peer>> =
        st.peers.iter().map(|p| (p.public_key, p.clone())).collect();
    let mut owner: HashMap<Cidr, Key> = HashMap::new();
    for p in &st.peers {
        for net in &p.config().allowed_ips {
            owner.insert(*net, p.public_key);
        }
    }
    for pu in &update.peers {
        let existing = index.get(&pu.public_key).cloned();
        if pu.remove {
            if let Some(p) = index.remove(&pu.public_key) {
                for net in &p.config().allowed_ips {
                    if owner.get(net) == Some(&p.public_key) {
                        owner.remove(net);
                    }
                }
            }
            continue;
        }
        if existing.is_none() && pu.update_only {
            continue;
        }
        if let Some(k) = st.private_key {
            if k.public_from_private() == pu.public_key {
                continue;
            }
        }
        let (peer, created) = match existing {
            Some(p) => (p, false),
            None => {
                let idx = st.alloc_index();
                let p = Arc::new(Peer::new(pu.public_key, idx));
                st.peers.push(p.clone());
                index.insert(pu.public_key, p.clone());
                (p, true)
            }
        };
        let mut session_params_changed = created;
        {
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
                for net in cfg.allowed_ips.drain(..) {
                    if owner.get(&net) == Some(&pu.public_key) {
                        owner.remove(&net);
                    }
                }
            }
        }
        // A network belongs to one peer: adding it here takes it from others.
        for net in &pu.allowed_ips {
            if let Some(prev) = owner.insert(*net, pu.public_key) {
                if prev != pu.public_key {
                    if let Some(other) = index.get(&prev) {
                        other.config().allowed_ips.retain(|n| n != net);
                    }
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
    // Removed peers, and a peer removed and added again in one update (its
    // old record), leave the list.
    st.peers
        .retain(|p| index.get(&p.public_key).is_some_and(|q| Arc::ptr_eq(p, q)));

    let table = PeerTable::build(st.private_key.as_ref(), st.rate_limiter.clone(), &st.peers);
    shared.table.store(Arc::new(table));
    Ok(())
}

pub(super) fn snapshot(shared: &Shared) -> DeviceSnapshot {
    let st = shared.config.lock().unwrap_or_else(|p| p.into_inner());
    DeviceSnapshot {
        private_key: st.private_key,
        listen_port: st.listen_port,
        fwmark: st.fwmark,
        peers: st
            .peers
            .iter()
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
