//! The network driver half: networks and endpoints Docker creates with
//! `-d weft`, and the veth each container joins with.

use ipnet::Ipv4Net;
use serde_json::json;

use super::ipam::ANY_POOL;
use super::state::{pool_id, EndpointRec, NetworkRec};
use super::wire::{
    check_id, parse_addr, parse_pool, CreateEndpoint, CreateNetwork, EndpointRef, PluginError,
    Reply,
};
use super::{ok, veth, Plugin};

/// The fix for a network made without weft's IPAM.
const CREATE_HINT: &str = "docker network create -d weft --ipam-driver weft weft";

impl Plugin {
    pub(super) fn create_network(&mut self, r: CreateNetwork) -> Reply {
        check_id("network", &r.network_id)?;
        if r.ipv6_data.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(PluginError::new(
                "weft networks are IPv4-only: create the network without --ipv6",
            ));
        }
        let v4 = r.ipv4_data.unwrap_or_default();
        let [data] = v4.as_slice() else {
            return Err(PluginError::new(format!(
                "a weft network has exactly one IPv4 pool (this host's weft subnet), got {}: \
                 {CREATE_HINT}",
                v4.len()
            )));
        };
        let pool = parse_pool(&data.pool)?
            .ok_or_else(|| PluginError::new(format!("the network has no pool: {CREATE_HINT}")))?;
        let gateway = parse_addr("gateway", &data.gateway)?;
        // Weft's IPAM names the pool 0.0.0.0/0 unless asked for the subnet
        // (see `request_pool`): then the gateway tells which pool it is.
        let rec = if pool.to_string() == ANY_POOL {
            self.state
                .pools
                .values()
                .find(|p| Some(p.gateway) == gateway)
        } else {
            self.state.pools.get(&pool_id(pool))
        };
        let Some(rec) = rec else {
            return Err(PluginError::new(format!(
                "the network's addresses ({pool}) do not come from weft's IPAM; remove it and \
                 create it with `{CREATE_HINT}`"
            )));
        };
        let (subnet, gateway) = (rec.subnet.clone(), gateway.unwrap_or(rec.gateway));
        let mut next = self.state.clone();
        next.networks.insert(
            r.network_id.clone(),
            NetworkRec {
                subnet: subnet.clone(),
                gateway,
            },
        );
        self.commit(next)?;
        tracing::info!(network = %r.network_id, %subnet, %gateway, "network created");
        ok()
    }

    pub(super) fn delete_network(&mut self, r: EndpointRef) -> Reply {
        check_id("network", &r.network_id)?;
        let mut next = self.state.clone();
        for (id, ep) in next.remove_network(&r.network_id) {
            let host = ep.host_if.unwrap_or_else(|| veth::names(&id).0);
            if let Err(e) = veth::remove(&host) {
                tracing::warn!(endpoint = %id, "cannot remove the endpoint's veth: {e}");
            }
        }
        self.commit(next)?;
        tracing::info!(network = %r.network_id, "network deleted");
        ok()
    }

    pub(super) fn create_endpoint(&mut self, r: CreateEndpoint) -> Reply {
        check_id("network", &r.network_id)?;
        check_id("endpoint", &r.endpoint_id)?;
        let net = self.network(&r.network_id)?;
        let iface = r.interface.unwrap_or_default();
        if !iface.address_ipv6.is_empty() {
            return Err(PluginError::new(
                "weft networks are IPv4-only: do not give the container an IPv6 address",
            ));
        }
        let address: Ipv4Net = iface.address.parse().map_err(|_| {
            PluginError::new(format!(
                "the endpoint has no IPv4 address from weft's IPAM ({:?}): {CREATE_HINT}",
                iface.address
            ))
        })?;
        let subnet: Ipv4Net = net.subnet.parse().map_err(|_| {
            PluginError::new("the plugin's state is damaged; remove and recreate the network")
        })?;
        if !subnet.contains(&address.addr()) {
            return Err(PluginError::new(format!(
                "address {address} is outside the network's subnet {subnet}"
            )));
        }
        let mut next = self.state.clone();
        next.endpoints.insert(
            r.endpoint_id.clone(),
            EndpointRec {
                network_id: r.network_id.clone(),
                address: address.to_string(),
                host_if: None,
            },
        );
        self.commit(next)?;
        tracing::info!(endpoint = %r.endpoint_id, %address, "endpoint created");
        // No Interface in the answer: Docker's address and MAC stand.
        ok()
    }

    pub(super) fn endpoint_info(&mut self, r: EndpointRef) -> Reply {
        check_id("endpoint", &r.endpoint_id)?;
        let ep = self.state.endpoints.get(&r.endpoint_id);
        Ok(json!({ "Value": {
            "address": ep.map(|e| e.address.clone()),
            "veth": ep.and_then(|e| e.host_if.clone()),
        }}))
    }

    pub(super) fn delete_endpoint(&mut self, r: EndpointRef) -> Reply {
        check_id("endpoint", &r.endpoint_id)?;
        let mut next = self.state.clone();
        let ep = next.endpoints.remove(&r.endpoint_id);
        let host = ep
            .and_then(|e| e.host_if)
            .unwrap_or_else(|| veth::names(&r.endpoint_id).0);
        veth::remove(&host)?;
        self.commit(next)?;
        tracing::info!(endpoint = %r.endpoint_id, "endpoint deleted");
        ok()
    }

    pub(super) fn join(&mut self, r: EndpointRef) -> Reply {
        check_id("network", &r.network_id)?;
        check_id("endpoint", &r.endpoint_id)?;
        let net = self.network(&r.network_id)?;
        let Some(ep) = self.state.endpoints.get(&r.endpoint_id).cloned() else {
            return Err(PluginError::new(format!(
                "unknown endpoint {}: recreate the container",
                r.endpoint_id
            )));
        };
        let (host_net, subnet, gateway) = self.agent_network()?;
        if subnet.to_string() != net.subnet || gateway != net.gateway {
            return Err(PluginError::new(format!(
                "this host's weft subnet is now {subnet} (gateway {gateway}) but the Docker \
                 network has {} (gateway {}): remove the network's containers and the network, \
                 then `{CREATE_HINT}`",
                net.subnet, net.gateway
            )));
        }
        let (host, peer) = veth::names(&r.endpoint_id);
        veth::create(&host, &peer, &host_net.bridge, host_net.mtu)?;
        let mut next = self.state.clone();
        if let Some(e) = next.endpoints.get_mut(&r.endpoint_id) {
            e.host_if = Some(host.clone());
        }
        if let Err(e) = self.commit(next) {
            let _ = veth::remove(&host);
            return Err(e);
        }
        tracing::info!(
            endpoint = %r.endpoint_id,
            address = %ep.address,
            veth = %host,
            bridge = %host_net.bridge,
            mtu = host_net.mtu,
            "container joined"
        );
        Ok(json!({
            "InterfaceName": { "SrcName": peer, "DstPrefix": "eth" },
            "Gateway": gateway.to_string(),
            "StaticRoutes": [],
            "DisableGatewayService": false,
        }))
    }

    pub(super) fn leave(&mut self, r: EndpointRef) -> Reply {
        check_id("endpoint", &r.endpoint_id)?;
        let mut next = self.state.clone();
        let host = match next.endpoints.get_mut(&r.endpoint_id) {
            Some(e) => e.host_if.take(),
            None => None,
        }
        .unwrap_or_else(|| veth::names(&r.endpoint_id).0);
        veth::remove(&host)?;
        self.commit(next)?;
        tracing::info!(endpoint = %r.endpoint_id, "container left");
        ok()
    }

    fn network(&self, id: &str) -> Result<NetworkRec, PluginError> {
        self.state.networks.get(id).cloned().ok_or_else(|| {
            PluginError::new(format!(
                "unknown network {id}: it was not created through this plugin (or its state in \
                 {} was lost); remove it and `{CREATE_HINT}`",
                self.store.path().display()
            ))
        })
    }
}
