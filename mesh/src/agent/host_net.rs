//! The host side of container networking: the bridge that holds the host
//! subnet's gateway, the route that sends the cluster pool into the TUN, and
//! IPv4 forwarding.
//!
//! This drives iproute2 (`ip`) rather than speaking rtnetlink itself: the
//! handful of idempotent commands below (`replace`, not `add`) are what every
//! operator already reads and debugs, and they run once per agent start, far
//! from any hot path.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use weft_proto::policy::Cidr;
use weft_proto::HostSubnet;

#[derive(Debug, thiserror::Error)]
#[error("`ip {args}` failed: {reason}")]
pub struct HostNetError {
    args: String,
    reason: String,
}

/// What the agent set up on the host; undone by [`HostNetwork::teardown`].
#[derive(Debug)]
pub struct HostNetwork {
    bridge: String,
    created_bridge: bool,
}

impl HostNetwork {
    /// Brings up `bridge` with the subnet's gateway address, the TUN
    /// `interface` with a route for the whole `pool`, and forwarding.
    pub fn setup(
        interface: &str,
        bridge: &str,
        subnet: HostSubnet,
        pool: HostSubnet,
        mtu: u16,
    ) -> Result<HostNetwork, HostNetError> {
        let gateway = subnet.host_addr();
        let created_bridge = !Path::new("/sys/class/net").join(bridge).exists();
        if created_bridge {
            ip(&["link", "add", bridge, "type", "bridge"])?;
        }
        let net = HostNetwork {
            bridge: bridge.to_string(),
            created_bridge,
        };
        let gw_cidr = format!("{gateway}/{}", subnet.prefix_len);
        ip(&["addr", "replace", &gw_cidr, "dev", bridge])?;
        ip(&["link", "set", bridge, "mtu", &mtu.to_string(), "up"])?;
        ip(&["link", "set", interface, "mtu", &mtu.to_string(), "up"])?;
        // The host's own address on the TUN as well, so the host is
        // reachable on it even with no bridge port up.
        ip(&[
            "addr",
            "replace",
            &format!("{gateway}/32"),
            "dev",
            interface,
        ])?;
        let pool_cidr = format!("{}/{}", pool.addr, pool.prefix_len);
        ip(&[
            "route",
            "replace",
            &pool_cidr,
            "dev",
            interface,
            "src",
            &gateway.to_string(),
        ])?;
        if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
            tracing::warn!(error = %e, "cannot enable IPv4 forwarding; containers will not reach other hosts");
        }
        Ok(net)
    }

    /// The gateway address containers use.
    pub fn gateway(subnet: HostSubnet) -> Ipv4Addr {
        subnet.host_addr()
    }

    /// Removes the bridge, unless containers are still attached to it: they
    /// keep their addresses and reconnect when the agent comes back. The
    /// pool route goes away with the TUN.
    pub fn teardown(self) {
        let ports = std::fs::read_dir(Path::new("/sys/class/net").join(&self.bridge).join("brif"))
            .map(|d| d.count())
            .unwrap_or(0);
        if ports > 0 {
            tracing::info!(
                bridge = %self.bridge,
                containers = ports,
                "bridge kept: containers are still attached (remove them, then `ip link del {}`)",
                self.bridge
            );
            return;
        }
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            tracing::warn!(error = %e, "cannot remove the bridge");
        } else if !self.created_bridge {
            tracing::debug!(bridge = %self.bridge, "removed a bridge that existed before start");
        }
    }
}

/// Sets the tunnel's and the bridge's MTU (the tunnel first: it is what
/// matters for the underlay).
pub fn set_mtu(interface: &str, bridge: &str, mtu: u16) -> Result<(), HostNetError> {
    let m = mtu.to_string();
    ip(&["link", "set", interface, "mtu", &m])?;
    ip(&["link", "set", bridge, "mtu", &m])
}

/// The metric of routes through the mesh: a host's own routes to the same
/// network (connected, DHCP, static: usually metric 0-600) win, so a route
/// another host advertises never takes a network away from this one.
const MESH_ROUTE_METRIC: &str = "5000";

/// Kernel routes for the networks other hosts advertise (approved routes):
/// each goes into the TUN, like the pool. They go away with the TUN.
#[derive(Debug)]
pub struct MeshRoutes {
    interface: String,
    gateway: Ipv4Addr,
    applied: BTreeSet<Cidr>,
    /// What the last [`MeshRoutes::sync`] asked for.
    wanted: BTreeSet<Cidr>,
}

impl MeshRoutes {
    pub fn new(interface: &str, gateway: Ipv4Addr) -> MeshRoutes {
        MeshRoutes {
            interface: interface.to_string(),
            gateway,
            applied: BTreeSet::new(),
            wanted: BTreeSet::new(),
        }
    }

    /// Routes exactly `wanted` into the TUN, adding and removing the
    /// difference only (one `ip` run per route that changed, not per route
    /// wanted). Failures are logged; a later call retries them.
    pub fn sync(&mut self, wanted: BTreeSet<Cidr>) {
        if wanted == self.applied {
            self.wanted = wanted;
            return;
        }
        for gone in self.applied.difference(&wanted) {
            let _ = ip(&[
                "route",
                "del",
                &gone.to_string(),
                "dev",
                &self.interface,
                "metric",
                MESH_ROUTE_METRIC,
            ]);
            tracing::info!(route = %gone, "route through the mesh removed");
        }
        self.applied.retain(|r| wanted.contains(r));
        for r in &wanted {
            if self.applied.contains(r) {
                continue;
            }
            let mut args = vec!["route", "replace"];
            let dst = r.to_string();
            let src = self.gateway.to_string();
            args.extend([
                dst.as_str(),
                "dev",
                self.interface.as_str(),
                "metric",
                MESH_ROUTE_METRIC,
            ]);
            if r.addr().is_ipv4() {
                args.extend(["src", src.as_str()]);
            }
            match ip(&args) {
                Ok(()) => {
                    tracing::info!(route = %r, "route through the mesh added");
                    self.applied.insert(*r);
                }
                Err(e) => tracing::warn!(error = %e, "cannot add a route through the mesh"),
            }
        }
        self.wanted = wanted;
    }

    /// Whether a route asked for is not in place (its `ip` run failed): the
    /// next [`MeshRoutes::sync`] retries it.
    pub fn pending(&self) -> bool {
        self.wanted != self.applied
    }
}

fn ip(args: &[&str]) -> Result<(), HostNetError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| HostNetError {
            args: args.join(" "),
            reason: format!("cannot run `ip` ({e}); install iproute2"),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HostNetError {
            args: args.join(" "),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
