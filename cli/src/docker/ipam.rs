//! The IPAM driver half: the pool is this host's weft subnet, the gateway
//! is the agent's bridge address, and every other address is a host-local
//! lease held under a `docker-<random>` id.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::json;

use super::wire::{
    parse_addr, parse_pool, PluginError, PoolRef, ReleaseAddress, Reply, RequestAddress,
    RequestPool,
};
use super::{ok, Plugin};

/// The pool Docker is told it has when it asked for none.
pub const ANY_POOL: &str = "0.0.0.0/0";

/// A fresh host-local holder id for one address.
fn holder_id() -> String {
    format!("docker-{:016x}", rand::random::<u64>())
}

impl Plugin {
    pub(super) fn request_pool(&mut self, r: RequestPool) -> Reply {
        if r.v6 {
            return Err(PluginError::new(
                "weft networks are IPv4-only: create the network without --ipv6",
            ));
        }
        let (_, subnet, gateway) = self.agent_network()?;
        // After a restart Docker asks again for the pool it was given.
        let any = r.pool.is_empty() || r.pool == ANY_POOL;
        if let Some(asked) = parse_pool(&r.pool)?.filter(|_| !any) {
            if asked != subnet {
                return Err(PluginError::new(format!(
                    "this host's weft subnet is {subnet}: create the network without --subnet, \
                     or with --subnet {subnet}"
                )));
            }
        }
        if let Some(sub) = parse_pool(&r.sub_pool)? {
            if sub != subnet {
                return Err(PluginError::new(
                    "--ip-range is not supported: weft leases addresses from the whole host \
                     subnet; leave it out",
                ));
            }
        }
        let mut next = self.state.clone();
        let id = next.add_pool(subnet, gateway);
        self.commit(next)?;
        tracing::info!(pool = %id, "address pool requested");
        // Docker asks for another pool, forever, while the one it got
        // overlaps a route of the host, as this subnet always does (the
        // bridge). It skips that check for a pool it asked for by name and
        // for 0.0.0.0/0, so that is the pool it gets when it asked for
        // none; the addresses it leases carry the real prefix.
        let shown = if any {
            ANY_POOL.to_string()
        } else {
            subnet.to_string()
        };
        Ok(json!({ "PoolID": id, "Pool": shown, "Data": {} }))
    }

    pub(super) fn release_pool(&mut self, r: PoolRef) -> Reply {
        let mut next = self.state.clone();
        let Some(pool) = next.release_pool(&r.pool_id) else {
            // Still used by another network, or released before.
            self.commit(next)?;
            return ok();
        };
        let subnet = pool.net()?;
        // Docker releases addresses first; whatever is left goes now.
        for (addr, holder) in &pool.allocations {
            if let Err(e) = self.host_local.del(holder, subnet, pool.gateway) {
                tracing::warn!(%addr, holder, "cannot release a leftover lease: {e}");
            }
        }
        self.commit(next)?;
        tracing::info!(pool = %r.pool_id, "address pool released");
        ok()
    }

    pub(super) fn request_address(&mut self, r: RequestAddress) -> Reply {
        let pool = self.state.pool(&r.pool_id)?.clone();
        let subnet = pool.net()?;
        let with_prefix = |a: Ipv4Addr| Ipv4Net::new(a, subnet.prefix_len()).map(|n| n.to_string());
        let asked = parse_addr("address", &r.address)?;
        if let Some(a) = asked {
            if !subnet.contains(&a) {
                return Err(PluginError::new(format!(
                    "{a} is outside this host's weft subnet {subnet}: pick an address in it"
                )));
            }
        }
        if r.is_gateway() {
            if asked.is_some_and(|a| a != pool.gateway) {
                return Err(PluginError::new(format!(
                    "the gateway is the weft agent's bridge address {}: create the network \
                     without --gateway",
                    pool.gateway
                )));
            }
            // The agent holds the gateway address: nothing to lease.
            let gw = with_prefix(pool.gateway).map_err(|e| PluginError::new(e.to_string()))?;
            return Ok(json!({ "Address": gw, "Data": {} }));
        }
        if asked == Some(pool.gateway) {
            return Err(PluginError::new(format!(
                "{} is the host's weft gateway; pick another address",
                pool.gateway
            )));
        }
        if let Some(a) = asked {
            // Docker asks again for the addresses it holds when it restarts.
            if self.state.allocation(&r.pool_id, a).is_some() {
                tracing::info!(address = %a, "address requested again; already leased");
                let addr = with_prefix(a).map_err(|e| PluginError::new(e.to_string()))?;
                return Ok(json!({ "Address": addr, "Data": {} }));
            }
        }
        let holder = holder_id();
        let leased = self.host_local.add(&holder, subnet, pool.gateway, asked)?;
        if !subnet.contains(&leased.addr()) || asked.is_some_and(|a| a != leased.addr()) {
            let _ = self.host_local.del(&holder, subnet, pool.gateway);
            return Err(PluginError::new(format!(
                "host-local leased {leased}, not what was asked; check the ranges in \
                 {}",
                self.host_local.lease_dir().display()
            )));
        }
        let mut next = self.state.clone();
        next.record_allocation(&r.pool_id, leased.addr(), holder.clone());
        if let Err(e) = self.commit(next) {
            let _ = self.host_local.del(&holder, subnet, pool.gateway);
            return Err(e);
        }
        tracing::info!(address = %leased, holder, "address leased");
        Ok(json!({ "Address": leased.to_string(), "Data": {} }))
    }

    pub(super) fn release_address(&mut self, r: ReleaseAddress) -> Reply {
        let Some(addr) = parse_addr("address", &r.address)? else {
            return Err(PluginError::new("ReleaseAddress without an address"));
        };
        let Ok(pool) = self.state.pool(&r.pool_id).cloned() else {
            // Already gone with its pool.
            return ok();
        };
        let mut next = self.state.clone();
        let Some(holder) = next.take_allocation(&r.pool_id, addr) else {
            // The gateway, or an address released before.
            return ok();
        };
        self.host_local.del(&holder, pool.net()?, pool.gateway)?;
        self.commit(next)?;
        tracing::info!(address = %addr, holder, "address released");
        ok()
    }
}
