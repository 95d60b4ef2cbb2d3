//! The agent's state directory: host key, identity, cached netmap, and the
//! network description the CNI plugin reads.
//!
//! Every file is written whole to a temporary name, fsynced and renamed, so a
//! crash leaves either the old or the new version, never half of one.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use weft_proto::netmap::NetmapUpdate;
use weft_proto::{HostSubnet, Netmap, NodeId};

use crate::control::CoordinatorInfo;
use crate::key::Key;

/// Where a host keeps its state when no `--state-dir` is given.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weft";
/// The agent's local API socket, inside the state directory.
pub const API_SOCKET: &str = "weft.sock";
/// What the CNI plugin reads to address containers, inside the state directory.
pub const NETWORK_FILE: &str = "network.json";

const KEY_FILE: &str = "host.key";
const IDENTITY_FILE: &str = "node.json";
const NETMAP_FILE: &str = "netmap.json";
const ROUTES_FILE: &str = "routes.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt ({reason}); remove it and join again with a new token")]
    Corrupt { path: PathBuf, reason: String },
    #[error("no identity in {0}: this host has not joined yet; run `weft join TOKEN --state-dir {0}` first")]
    NotJoined(PathBuf),
}

/// Who this host is in the cluster: kept so `weft up` needs no token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: NodeId,
    pub name: String,
    pub subnet: HostSubnet,
    pub pool: HostSubnet,
    #[serde(default)]
    pub tags: Vec<String>,
    pub coordinator: CoordinatorInfo,
    /// Interface and UDP port this host was started with.
    pub interface: String,
    pub listen_port: u16,
    /// The cluster's DNS domain (from the coordinator's welcome).
    #[serde(default = "default_domain")]
    pub domain: String,
}

fn default_domain() -> String {
    weft_proto::msg::DEFAULT_DOMAIN.to_string()
}

/// The host network as the CNI plugin needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkFile {
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub pool: String,
    pub bridge: String,
    pub mtu: u16,
    /// The cluster's DNS domain; the gateway answers for it.
    #[serde(default)]
    pub domain: String,
    /// The host's own resolvers (not loopback ones, which containers cannot
    /// reach), for names outside the domain: containers list them after the
    /// gateway, which refuses such names.
    #[serde(default)]
    pub upstream_dns: Vec<std::net::IpAddr>,
}

/// The non-loopback `nameserver` entries of a resolv.conf.
pub fn upstream_resolvers(resolv_conf: &str) -> Vec<std::net::IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .filter(|a| !a.is_loopback())
        .collect()
}

/// One agent's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating, mode 0700) the directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StateError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| StateError::Io {
            path: root.clone(),
            source,
        })?;
        let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700));
        Ok(Self { root })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn api_socket(&self) -> PathBuf {
        self.root.join(API_SOCKET)
    }

    /// The host's WireGuard private key, created (mode 0600) on first use.
    pub fn host_key(&self) -> Result<Key, StateError> {
        let path = self.root.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(s) => Key::from_base64(s.trim()).map_err(|_| StateError::Corrupt {
                path,
                reason: "not a base64 WireGuard key".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Key::generate_private();
                write_atomic(&path, key.to_base64().as_bytes(), 0o600)?;
                Ok(key)
            }
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    pub fn identity(&self) -> Result<Identity, StateError> {
        self.read_json(IDENTITY_FILE)?
            .ok_or_else(|| StateError::NotJoined(self.root.clone()))
    }

    pub fn has_identity(&self) -> bool {
        self.root.join(IDENTITY_FILE).exists()
    }

    pub fn save_identity(&self, id: &Identity) -> Result<(), StateError> {
        self.write_json(IDENTITY_FILE, id, 0o600)
    }

    /// The last netmap received, to come back up while the coordinator is
    /// unreachable.
    pub fn cached_netmap(&self) -> Result<Option<Netmap>, StateError> {
        let Some(update) = self.read_json::<NetmapUpdate>(NETMAP_FILE)? else {
            return Ok(None);
        };
        let mut map = Netmap::new();
        match map.apply(update) {
            Ok(_) => Ok(Some(map)),
            Err(e) => Err(StateError::Corrupt {
                path: self.root.join(NETMAP_FILE),
                reason: e.to_string(),
            }),
        }
    }

    pub fn save_netmap(&self, map: &Netmap) -> Result<(), StateError> {
        self.write_json(NETMAP_FILE, &map.to_snapshot(), 0o600)
    }

    /// The routes this host advertises (`weft route advertise`).
    pub fn advertised_routes(&self) -> Result<Vec<weft_proto::policy::Cidr>, StateError> {
        Ok(self.read_json(ROUTES_FILE)?.unwrap_or_default())
    }

    pub fn save_advertised_routes(
        &self,
        routes: &[weft_proto::policy::Cidr],
    ) -> Result<(), StateError> {
        self.write_json(ROUTES_FILE, &routes, 0o644)
    }

    pub fn save_network(&self, net: &NetworkFile) -> Result<(), StateError> {
        self.write_json(NETWORK_FILE, net, 0o644)
    }

    /// The network description the agent wrote, if it is up.
    pub fn network(&self) -> Result<Option<NetworkFile>, StateError> {
        self.read_json(NETWORK_FILE)
    }

    /// Forgets the node this directory held (after leaving the cluster):
    /// its identity, cached netmap and advertised routes. The host key
    /// stays; a later `weft join` registers it as a new node.
    pub fn forget_identity(&self) {
        for f in [IDENTITY_FILE, NETMAP_FILE, ROUTES_FILE] {
            let _ = std::fs::remove_file(self.root.join(f));
        }
        // A write cut short leaves its temporary file.
        let _ = std::fs::remove_file(self.root.join(NETMAP_FILE).with_extension("tmp"));
    }

    /// Removes the network description (the agent is going down).
    pub fn clear_network(&self) {
        let _ = std::fs::remove_file(self.root.join(NETWORK_FILE));
    }

    fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StateError> {
        let path = self.root.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StateError::Corrupt {
                        path,
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    fn write_json<T: Serialize>(&self, name: &str, v: &T, mode: u32) -> Result<(), StateError> {
        let path = self.root.join(name);
        let bytes = serde_json::to_vec_pretty(v).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &bytes, mode)
    }
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::{Peer, WgPublicKey};

    #[test]
    fn upstream_resolvers_skip_loopback() {
        let conf = "# generated\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver ::1\nsearch x\nnameserver 2001:db8::53\n";
        assert_eq!(
            upstream_resolvers(conf),
            vec![
                "192.0.2.53".parse::<std::net::IpAddr>().unwrap(),
                "2001:db8::53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn key_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateDir::open(dir.path()).unwrap();
        let k1 = st.host_key().unwrap();
        let k2 = st.host_key().unwrap();
        assert_eq!(k1, k2);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn netmap_round_trips_with_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateDir::open(dir.path()).unwrap();
        assert!(st.cached_netmap().unwrap().is_none());
        let mut map = Netmap::new();
        map.apply(NetmapUpdate {
            upserts: vec![Peer {
                id: NodeId(3),
                name: "b".into(),
                public_key: WgPublicKey([9; 32]),
                subnet: HostSubnet {
                    addr: "100.64.3.0".parse().unwrap(),
                    prefix_len: 24,
                },
                endpoints: vec!["198.18.1.2:51820".parse().unwrap()],
                tags: vec![],
                online: true,
                routes: Vec::new(),
            }],
            filter: Some(weft_proto::policy::PacketFilter {
                rules: vec![],
                default: weft_proto::policy::Action::Deny,
            }),
            services: Some(vec![weft_proto::ServiceEntry {
                name: "db".into(),
                addr: "100.64.3.9".parse().unwrap(),
                port: 5432,
                proto: weft_proto::policy::Proto::Tcp,
                public: None,
            }]),
            ..NetmapUpdate::empty(7, 0, 42, true)
        })
        .unwrap();
        st.save_netmap(&map).unwrap();
        assert!(map.filter().is_some() && map.services().len() == 1);
        let back = st.cached_netmap().unwrap().unwrap();
        assert_eq!(back, map);
    }

    #[test]
    fn missing_identity_says_how_to_join() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateDir::open(dir.path()).unwrap();
        let e = st.identity().unwrap_err().to_string();
        assert!(e.contains("weft join"), "{e}");
    }
}
