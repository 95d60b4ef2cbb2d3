//! `weft docker-plugin`: a Docker network driver and IPAM driver (the
//! libnetwork "remote" plugin API: JSON over HTTP on a unix socket). Docker
//! containers get addresses from this host's weft subnet, leased through
//! the reference `host-local` plugin exactly as `weft cni` leases them (so
//! Docker and Podman containers on one host never collide), and a veth on
//! the agent's bridge.

mod hostlocal;
mod ipam;
mod network;
mod server;
mod state;
#[cfg(test)]
mod tests;
mod veth;
mod wire;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::Args;
use ipnet::{IpNet, Ipv4Net};
use serde_json::{json, Value};

use crate::cni::config::{HostNetwork, DEFAULT_STATE_DIR, NETWORK_FILE};
use hostlocal::{HostLocal, DEFAULT_CNI_PATH};
use state::{State, Store};
use wire::{PluginError, Reply};

/// Where Docker looks for plugin sockets: the socket's name is the driver's.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/weft.sock";

pub const LONG_ABOUT: &str = "\
Serve Docker's network driver and IPAM driver APIs, so Docker containers join the weft mesh
with addresses from this host's weft subnet, next to Podman/CNI containers.

Run it as root on every host that runs the weft agent, with the agent's --state-dir:

    weft docker-plugin --state-dir /var/lib/weft

Docker finds it by its socket, /run/docker/plugins/weft.sock (driver name `weft`). Then, once
per host:

    docker network create -d weft --ipam-driver weft weft

and run containers on it, with the host's weft gateway as their DNS server so cluster names
(NAME.<cluster domain>) resolve:

    docker run --network weft --dns \"$(jq -r .gateway /var/lib/weft/network.json)\" IMAGE

(the gateway is the host's weft address, as `weft status` shows it).

Containers reach containers on every other host by their own addresses (no NAT). Networks
are IPv4-only and local to the host; `--subnet`, if given, must be this host's weft subnet
(`weft status`). Docker allows `docker run --ip ADDR` only on a network created with
`--subnet`.

The plugin keeps its state in <state-dir>/docker/ and the address leases where `weft cni`
keeps them (<state-dir>/cni/networks/weft/), so the plugin and the agent can be restarted at
any time without disturbing running containers, and dockerd too (the containers it restarts
join again). Start the agent (`weft up`) before creating containers. `docker network rm weft`
releases everything.

Logs go to stderr (level from WEFT_LOG, default info).";

#[derive(Args, Debug)]
pub struct DockerPluginArgs {
    /// The weft agent's state directory (the agent's --state-dir): the plugin reads its
    /// network.json and keeps its own state in <state-dir>/docker/.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The unix socket to serve; Docker looks in /run/docker/plugins/ and names the driver
    /// after the file (weft.sock: driver `weft`).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Directories to look for the reference `host-local` plugin in, colon-separated.
    #[arg(long, env = "CNI_PATH", default_value = DEFAULT_CNI_PATH)]
    pub cni_path: String,
}

pub fn run(args: DockerPluginArgs) -> anyhow::Result<()> {
    // host-local's configuration needs an absolute data dir.
    let state_dir = std::path::absolute(&args.state_dir)?;
    let plugin = Plugin::open(state_dir, &args.cni_path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(server::serve(args.socket, plugin))
}

/// The plugin's state and the means to act on it; requests are handled one
/// at a time.
pub struct Plugin {
    state_dir: PathBuf,
    store: Store,
    state: State,
    host_local: HostLocal,
}

impl Plugin {
    pub fn open(state_dir: PathBuf, cni_path: &str) -> anyhow::Result<Self> {
        let store = Store::new(&state_dir);
        let state = store.load()?;
        tracing::info!(
            state = %store.path().display(),
            networks = state.networks.len(),
            endpoints = state.endpoints.len(),
            pools = state.pools.len(),
            "docker plugin state loaded"
        );
        Ok(Self {
            host_local: HostLocal::new(cni_path, &state_dir),
            state_dir,
            store,
            state,
        })
    }

    /// Handles `/<method>`; `None` for a method this plugin does not have.
    pub fn dispatch(&mut self, method: &str, body: &[u8]) -> Option<Reply> {
        use wire::decode;
        let reply = match method {
            "Plugin.Activate" => Ok(json!({ "Implements": ["NetworkDriver", "IpamDriver"] })),
            "NetworkDriver.GetCapabilities" => {
                Ok(json!({ "Scope": "local", "ConnectivityScope": "local" }))
            }
            "NetworkDriver.CreateNetwork" => {
                decode(method, body).and_then(|r| self.create_network(r))
            }
            "NetworkDriver.DeleteNetwork" => {
                decode(method, body).and_then(|r| self.delete_network(r))
            }
            "NetworkDriver.CreateEndpoint" => {
                decode(method, body).and_then(|r| self.create_endpoint(r))
            }
            "NetworkDriver.EndpointOperInfo" => {
                decode(method, body).and_then(|r| self.endpoint_info(r))
            }
            "NetworkDriver.DeleteEndpoint" => {
                decode(method, body).and_then(|r| self.delete_endpoint(r))
            }
            "NetworkDriver.Join" => decode(method, body).and_then(|r| self.join(r)),
            "NetworkDriver.Leave" => decode(method, body).and_then(|r| self.leave(r)),
            // Nothing to discover, program or allocate: the mesh routes
            // every container address, and networks are local.
            "NetworkDriver.DiscoverNew"
            | "NetworkDriver.DiscoverDelete"
            | "NetworkDriver.ProgramExternalConnectivity"
            | "NetworkDriver.RevokeExternalConnectivity"
            | "NetworkDriver.FreeNetwork" => Ok(json!({})),
            "NetworkDriver.AllocateNetwork" => Ok(json!({ "Options": {} })),
            "IpamDriver.GetCapabilities" => {
                Ok(json!({ "RequiresMACAddress": false, "RequiresRequestReplay": false }))
            }
            "IpamDriver.GetDefaultAddressSpaces" => Ok(json!({
                "LocalDefaultAddressSpace": "weft",
                "GlobalDefaultAddressSpace": "weft-global",
            })),
            "IpamDriver.RequestPool" => decode(method, body).and_then(|r| self.request_pool(r)),
            "IpamDriver.ReleasePool" => decode(method, body).and_then(|r| self.release_pool(r)),
            "IpamDriver.RequestAddress" => {
                decode(method, body).and_then(|r| self.request_address(r))
            }
            "IpamDriver.ReleaseAddress" => {
                decode(method, body).and_then(|r| self.release_address(r))
            }
            _ => return None,
        };
        Some(reply)
    }

    /// Saves `next` and makes it the state; on failure nothing changes.
    fn commit(&mut self, next: State) -> Result<(), PluginError> {
        if next != self.state {
            self.store.save(&next)?;
            self.state = next;
        }
        Ok(())
    }

    /// This host's network as the running agent wrote it.
    fn agent_network(&self) -> Result<(HostNetwork, Ipv4Net, Ipv4Addr), PluginError> {
        let path = self.state_dir.join(NETWORK_FILE);
        let net = HostNetwork::load(&self.state_dir)
            .map_err(|e| PluginError::new(format!("{}: {}", e.msg, e.details)))?
            .ok_or_else(|| {
                PluginError::new(format!(
                    "the weft agent is not running: run `weft up` (or `weft join`) on this host \
                     with --state-dir {} (no {} yet)",
                    self.state_dir.display(),
                    path.display()
                ))
            })?;
        match (net.subnet, net.gateway) {
            (IpNet::V4(subnet), std::net::IpAddr::V4(gw)) => Ok((net, subnet, gw)),
            _ => Err(PluginError::new(format!(
                "this host's weft subnet {} is not IPv4; Docker networks need an IPv4 subnet",
                net.subnet
            ))),
        }
    }
}

/// An empty success.
fn ok() -> Reply {
    Ok(Value::Object(serde_json::Map::new()))
}
