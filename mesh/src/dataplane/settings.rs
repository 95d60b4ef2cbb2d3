//! The device's configuration, as the data plane takes it
//! ([`super::DeviceHandle::apply`]) and reports it
//! ([`super::DeviceHandle::snapshot`]): what to change, and what is. The
//! UAPI text protocol (`uapi::protocol`) parses into and formats from these;
//! the agent builds them directly.

use std::net::SocketAddr;
use std::time::SystemTime;

use crate::allowed_ips::Cidr;
use crate::key::Key;

/// A parsed `set=1` request: device fields, then one entry per peer section.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeviceUpdate {
    /// `Some(None)` removes the private key (all-zero key on the wire).
    pub private_key: Option<Option<Key>>,
    pub listen_port: Option<u16>,
    /// `Some(0)` clears the mark.
    pub fwmark: Option<u32>,
    pub replace_peers: bool,
    pub peers: Vec<PeerUpdate>,
}

/// One `public_key=` section of a `set=1` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUpdate {
    pub public_key: Key,
    pub remove: bool,
    pub update_only: bool,
    /// `Some(None)` removes the preshared key.
    pub preshared_key: Option<Option<Key>>,
    pub endpoint: Option<SocketAddr>,
    /// Seconds; `Some(0)` turns persistent keepalive off.
    pub persistent_keepalive: Option<u16>,
    pub replace_allowed_ips: bool,
    pub allowed_ips: Vec<Cidr>,
}

impl PeerUpdate {
    pub fn new(public_key: Key) -> Self {
        PeerUpdate {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
}

/// What `get=1` reports about the device.
#[derive(Debug, Default, Clone)]
pub struct DeviceSnapshot {
    pub private_key: Option<Key>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: Vec<PeerSnapshot>,
}

/// What `get=1` reports about one peer.
#[derive(Debug, Clone)]
pub struct PeerSnapshot {
    pub public_key: Key,
    pub preshared_key: Option<Key>,
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: u16,
    pub allowed_ips: Vec<Cidr>,
}
