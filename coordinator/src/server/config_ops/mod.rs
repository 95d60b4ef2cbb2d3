//! Admin commands for the policy, services and routes, and the routes hosts
//! advertise. Each change is validated here (the rules), written durably
//! through the store as a [`ConfigChange`], then compiled into every
//! host's view and sent as netmap updates.

use weft_proto::msg::{AclVersion, RouteInfo, ServiceInfo};
use weft_proto::policy::{run_tests, Cidr, Policy, Proto, Selector};

use super::*;
use crate::cluster::{self, RouteRecord};
use crate::store::ConfigChange;

mod policy;
mod routes;
mod services;

pub(super) use policy::{acl_get, acl_history, acl_set, acl_test};
pub(super) use routes::{advertise_routes, route_approve, route_list};
pub(super) use services::{service_expose, service_list, service_remove};

fn bad(message: impl Into<String>) -> ErrorReply {
    refuse(ErrorCode::BadRequest, message)
}

/// A node in the netmaps (not an expired one) by id or name, as its name.
fn node_name(shared: &Shared, node: &str) -> Result<String, ErrorReply> {
    let id = super::admin_ops::find_node(shared, node)?;
    let name = shared.read().get(id).map(|p| p.name.clone());
    name.ok_or_else(|| {
        refuse(
            ErrorCode::NotFound,
            format!("node `{node}` is expired; bring it back with `weft node set {node} --expiry ...` first"),
        )
    })
}

/// Drops what belonged to a removed node: the services it ran or forwarded
/// a public port for, and its routes. A new host that takes the same name
/// must not inherit them.
pub(super) async fn forget_node(shared: &Shared, id: NodeId, name: &str) {
    let _change = shared.config_change.lock().await;
    let services = shared.cluster().services_of(id, name);
    let had_routes = shared.cluster().routes.contains_key(&id);
    if services.is_empty() && !had_routes {
        return;
    }
    let mut changes: Vec<ConfigChange> = services
        .iter()
        .cloned()
        .map(ConfigChange::RemoveService)
        .collect();
    changes.push(ConfigChange::RemoveRoutes(id));
    let saved = shared.store.write(changes).await;
    if let Err(e) = saved {
        warn!(node = %id, error = %e.message, "could not drop the removed node's services and routes");
        return;
    }
    {
        let mut cfg = shared.cluster_mut();
        for k in &services {
            cfg.services.remove(k);
        }
        cfg.routes.remove(&id);
    }
    shared.reconfigure();
    if !services.is_empty() {
        info!(node = %name, services = %services.join(","), "services of a removed node removed");
    }
}
