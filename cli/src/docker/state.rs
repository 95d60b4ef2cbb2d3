//! What the plugin remembers across its own restarts and Docker's: the
//! networks, endpoints and address pools Docker asked for, and which
//! host-local allocation holds each address. Kept in
//! `<state-dir>/docker/state.json`, replaced atomically on every change.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::wire::PluginError;

/// The state file under `<state-dir>/docker/`.
pub const STATE_FILE: &str = "state.json";

/// One Docker network using the weft driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRec {
    /// The pool Docker created it with (this host's weft subnet).
    pub subnet: String,
    pub gateway: Ipv4Addr,
}

/// One container's attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRec {
    pub network_id: String,
    /// The address IPAM gave it, with prefix (`100.64.1.5/24`).
    pub address: String,
    /// The host end of its veth, once joined.
    pub host_if: Option<String>,
}

/// One address pool handed to Docker: always this host's weft subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRec {
    pub subnet: String,
    pub gateway: Ipv4Addr,
    /// Address to the host-local container id that holds it.
    #[serde(default)]
    pub allocations: BTreeMap<Ipv4Addr, String>,
    /// Pool requests not yet released: Docker networks sharing the subnet.
    #[serde(default = "one")]
    pub users: u32,
}

fn one() -> u32 {
    1
}

impl PoolRec {
    pub fn net(&self) -> Result<Ipv4Net, PluginError> {
        self.subnet.parse().map_err(|_| {
            PluginError::new(format!(
                "the plugin's state holds an invalid pool {:?}; remove the Docker network and \
                 create it again",
                self.subnet
            ))
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkRec>,
    #[serde(default)]
    pub endpoints: BTreeMap<String, EndpointRec>,
    #[serde(default)]
    pub pools: BTreeMap<String, PoolRec>,
}

/// The pool id Docker gets for `subnet`. One per subnet, so the pool
/// requests Docker repeats when it restarts find the same pool and the
/// addresses in it.
pub fn pool_id(subnet: Ipv4Net) -> String {
    format!("weft-{subnet}")
}

impl State {
    /// Records a request for the pool of `subnet`; its id.
    pub fn add_pool(&mut self, subnet: Ipv4Net, gateway: Ipv4Addr) -> String {
        let id = pool_id(subnet);
        self.pools
            .entry(id.clone())
            .and_modify(|p| p.users = p.users.saturating_add(1))
            .or_insert_with(|| PoolRec {
                subnet: subnet.to_string(),
                gateway,
                allocations: BTreeMap::new(),
                users: 1,
            });
        id
    }

    /// Releases one request for pool `id`; the pool if that was the last
    /// (its leftover allocations are the caller's to free).
    pub fn release_pool(&mut self, id: &str) -> Option<PoolRec> {
        let pool = self.pools.get_mut(id)?;
        pool.users = pool.users.saturating_sub(1);
        if pool.users > 0 {
            return None;
        }
        self.pools.remove(id)
    }

    pub fn pool(&self, id: &str) -> Result<&PoolRec, PluginError> {
        self.pools.get(id).ok_or_else(|| {
            PluginError::new(format!(
                "unknown address pool {id:?}: the network was not created with this plugin's \
                 IPAM; remove it and run `docker network create -d weft --ipam-driver weft weft`"
            ))
        })
    }

    /// The host-local id holding `addr` in pool `id`.
    pub fn allocation(&self, id: &str, addr: Ipv4Addr) -> Option<&str> {
        self.pools
            .get(id)?
            .allocations
            .get(&addr)
            .map(String::as_str)
    }

    pub fn record_allocation(&mut self, id: &str, addr: Ipv4Addr, holder: String) {
        if let Some(p) = self.pools.get_mut(id) {
            p.allocations.insert(addr, holder);
        }
    }

    pub fn take_allocation(&mut self, id: &str, addr: Ipv4Addr) -> Option<String> {
        self.pools.get_mut(id)?.allocations.remove(&addr)
    }

    /// Removes the network and returns its endpoints (to clean up).
    pub fn remove_network(&mut self, id: &str) -> Vec<(String, EndpointRec)> {
        self.networks.remove(id);
        let gone: Vec<String> = self
            .endpoints
            .iter()
            .filter(|(_, e)| e.network_id == id)
            .map(|(k, _)| k.clone())
            .collect();
        gone.into_iter()
            .filter_map(|k| self.endpoints.remove(&k).map(|e| (k, e)))
            .collect()
    }
}

/// Reads and writes [`State`] in one directory.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("docker"),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The saved state; empty if there is none yet.
    pub fn load(&self) -> anyhow::Result<State> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        let state: State = serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is unreadable ({e}); move it away to start over (then remove and recreate \
                 the Docker networks that use weft)",
                path.display()
            )
        })?;
        Ok(state)
    }

    /// Replaces the saved state: write a temporary file, flush, rename, so
    /// a crash leaves the old state or the new one.
    pub fn save(&self, state: &State) -> Result<(), PluginError> {
        let path = self.path();
        let io = |e: std::io::Error| {
            PluginError::new(format!(
                "cannot save the plugin's state to {}: {e}; check the disk and the \
                 permissions of --state-dir",
                path.display()
            ))
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| io(e.into()))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Ipv4Net {
        "100.64.1.0/24".parse().unwrap()
    }

    #[test]
    fn pools_are_one_per_subnet_and_keep_allocations() {
        let mut s = State::default();
        let gw = Ipv4Addr::new(100, 64, 1, 1);
        let id = s.add_pool(net(), gw);
        assert_eq!(id, "weft-100.64.1.0/24");
        let a = Ipv4Addr::new(100, 64, 1, 5);
        s.record_allocation(&id, a, "docker-1".into());
        // A second network on the subnet shares the pool and its allocations.
        assert_eq!(s.add_pool(net(), gw), id);
        assert_eq!(s.allocation(&id, a), Some("docker-1"));
        assert_eq!(s.release_pool(&id), None);
        assert_eq!(s.allocation(&id, a), Some("docker-1"));
        assert_eq!(s.take_allocation(&id, a).as_deref(), Some("docker-1"));
        assert_eq!(s.take_allocation(&id, a), None);
        assert!(s
            .pool("weft-other")
            .unwrap_err()
            .msg
            .contains("--ipam-driver weft"));
        // Unknown pools record nothing.
        s.record_allocation("nope", a, "docker-2".into());
        assert_eq!(s.pools.len(), 1);
        s.record_allocation(&id, a, "docker-3".into());
        let last = s
            .release_pool(&id)
            .expect("the last release frees the pool");
        assert_eq!(last.allocations.len(), 1);
        assert!(s.pools.is_empty());
        assert_eq!(s.release_pool(&id), None);
    }

    #[test]
    fn removing_a_network_returns_its_endpoints_only() {
        let mut s = State::default();
        for n in ["n1", "n2"] {
            s.networks.insert(
                n.into(),
                NetworkRec {
                    subnet: net().to_string(),
                    gateway: [100, 64, 1, 1].into(),
                },
            );
        }
        let ep = |n: &str| EndpointRec {
            network_id: n.into(),
            address: "100.64.1.5/24".into(),
            host_if: None,
        };
        s.endpoints.insert("e1".into(), ep("n1"));
        s.endpoints.insert("e2".into(), ep("n2"));
        let gone = s.remove_network("n1");
        assert_eq!(gone, vec![("e1".to_string(), ep("n1"))]);
        assert_eq!(s.networks.keys().collect::<Vec<_>>(), ["n2"]);
        assert_eq!(s.endpoints.keys().collect::<Vec<_>>(), ["e2"]);
    }

    #[test]
    fn the_store_round_trips_atomically() {
        let dir = std::env::temp_dir().join(format!("weft-docker-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::new(&dir);
        assert_eq!(store.load().unwrap(), State::default());
        let mut s = State::default();
        let id = s.add_pool(net(), [100, 64, 1, 1].into());
        s.record_allocation(&id, [100, 64, 1, 7].into(), "docker-7".into());
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), s);
        assert!(!dir.join("docker/state.json.tmp").exists());
        std::fs::write(store.path(), b"{not json").unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("move it away"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
