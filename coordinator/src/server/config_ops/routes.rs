//! Routes: what may be routed through a host (nothing of the pool, of
//! loopback, link-local or multicast; one host per network), admin
//! approvals, and the advertisements hosts send.

use super::*;

/// Most routes one host may advertise.
const MAX_ROUTES: usize = 64;

pub(in crate::server) fn route_list(shared: &Shared) -> AdminReply {
    let cfg = shared.cluster();
    let reg = shared.read();
    AdminReply::Routes(
        cfg.routes
            .iter()
            .map(|(id, r)| RouteInfo {
                node: reg
                    .get(*id)
                    .map_or_else(|| id.to_string(), |p| p.name.clone()),
                advertised: r.advertised.clone(),
                approved: r.approved.clone(),
                active: reg.get(*id).map(|p| p.routes.clone()).unwrap_or_default(),
            })
            .collect(),
    )
}

/// Why a route cannot be routed through the mesh, if it cannot.
fn route_problem(shared: &Shared, cidr: &Cidr) -> Option<String> {
    let pool = Cidr::from(shared.pool);
    if cidr.overlaps(&pool) {
        return Some(format!(
            "{cidr} overlaps the mesh's own address pool {pool}; advertise a network outside it"
        ));
    }
    if cidr.prefix_len() == 0 {
        return Some(format!(
            "{cidr} is every address; weft does not route default routes through a host"
        ));
    }
    // Networks every host has for itself: routing them into the mesh would
    // take them away from every host.
    const LOCAL: [(&str, &str); 6] = [
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("::1/128", "loopback"),
        ("fe80::/10", "link-local"),
        ("ff00::/8", "multicast"),
    ];
    for (net, what) in LOCAL {
        if net.parse::<Cidr>().is_ok_and(|n| n.overlaps(cidr)) {
            return Some(format!(
                "{cidr} overlaps {what} addresses ({net}); every host needs those for itself"
            ));
        }
    }
    None
}

/// The node (other than `id`) a route overlapping `cidr` already goes
/// through, if any.
fn routed_elsewhere(shared: &Shared, id: NodeId, cidr: &Cidr) -> Option<String> {
    let cfg = shared.cluster();
    let reg = shared.read();
    cfg.routes
        .iter()
        .filter(|(other, _)| **other != id)
        .find(|(other, r)| {
            r.approved.iter().any(|c| c.overlaps(cidr))
                || reg
                    .get(**other)
                    .is_some_and(|p| p.routes.iter().any(|c| c.overlaps(cidr)))
        })
        .map(|(other, _)| {
            reg.get(*other)
                .map_or_else(|| other.to_string(), |p| p.name.clone())
        })
}

/// A node's route record (empty if it has none).
fn routes_of(shared: &Shared, id: NodeId) -> RouteRecord {
    shared
        .cluster()
        .routes
        .get(&id)
        .cloned()
        .unwrap_or_default()
}

/// Writes a node's route record and puts its routes in force.
async fn save_routes(shared: &Shared, id: NodeId, rec: RouteRecord) -> Result<(), ErrorReply> {
    shared
        .store
        .write(vec![ConfigChange::PutRoutes(id, rec.clone())])
        .await?;
    shared.cluster_mut().routes.insert(id, rec);
    {
        // Lock order: configuration, then registry.
        let cfg = shared.cluster();
        cluster::refresh_routes(&mut shared.write(), &cfg);
    }
    shared.reconfigure();
    Ok(())
}

pub(in crate::server) async fn route_approve(
    shared: &Shared,
    node: &str,
    cidr: Cidr,
    approve: bool,
) -> Result<AdminReply, ErrorReply> {
    let _change = shared.config_change.lock().await;
    let name = node_name(shared, node)?;
    let Some(id) = shared.read().by_name(&name) else {
        return Err(refuse(
            ErrorCode::NotFound,
            format!("node `{name}` is gone"),
        ));
    };
    if let Some(problem) = route_problem(shared, &cidr) {
        return Err(bad(problem));
    }
    if approve {
        if let Some(other) = routed_elsewhere(shared, id, &cidr) {
            return Err(bad(format!(
                "{cidr} overlaps a route through {other}; a network goes through one host (revoke it there first with `weft route revoke --node {other} CIDR`)"
            )));
        }
    }
    let mut rec = routes_of(shared, id);
    rec.approved.retain(|c| *c != cidr);
    if approve {
        rec.approved.push(cidr);
        rec.approved.sort();
    }
    save_routes(shared, id, rec).await?;
    info!(node = %name, %cidr, approve, "route approval changed");
    Ok(AdminReply::RouteApproved {
        node: name,
        cidr,
        approve,
    })
}

/// How long a host's next message waits after its advertisement changed:
/// each change costs a write and a compilation of every view, so a host
/// that flaps its routes slows only itself.
const ADVERTISE_PAUSE: Duration = Duration::from_secs(1);

/// A host's advertisement: stored; in force for the routes approved by an
/// admin or by the policy. Called from the host's session reader, which it
/// holds back for [`ADVERTISE_PAUSE`] after a change.
pub(in crate::server) async fn advertise_routes(shared: &Shared, id: NodeId, routes: Vec<Cidr>) {
    if store_advertisement(shared, id, routes).await {
        tokio::time::sleep(ADVERTISE_PAUSE).await;
    }
}

/// Stores an advertisement; whether it changed anything.
async fn store_advertisement(shared: &Shared, id: NodeId, mut routes: Vec<Cidr>) -> bool {
    let _change = shared.config_change.lock().await;
    routes.retain(|c| match route_problem(shared, c) {
        Some(p) => {
            warn!(node = %id, "advertised route ignored: {p}");
            false
        }
        None => true,
    });
    routes.sort();
    routes.dedup();
    if routes.len() > MAX_ROUTES {
        warn!(node = %id, advertised = routes.len(), "too many advertised routes; keeping the first {MAX_ROUTES}");
        routes.truncate(MAX_ROUTES);
    }
    let mut rec = routes_of(shared, id);
    if rec.advertised == routes {
        return false;
    }
    rec.advertised = routes;
    if let Err(e) = save_routes(shared, id, rec).await {
        warn!(node = %id, error = %e.message, "could not save advertised routes");
    }
    true
}
