//! Admin commands for the policy, services and routes, and the routes hosts
//! advertise. Each change is written durably, then compiled into every
//! host's view and sent as netmap updates.

use weft_proto::msg::{AclVersion, RouteInfo, ServiceInfo};
use weft_proto::policy::{run_tests, Cidr, Policy, Proto, Selector};

use super::*;
use crate::cluster::{self, RouteRecord};
use crate::store::ConfigChange;

/// Most routes one host may advertise.
const MAX_ROUTES: usize = 64;

fn bad(message: impl Into<String>) -> ErrorReply {
    refuse(ErrorCode::BadRequest, message)
}

/// Parses a document and runs its tests against the live cluster.
fn check_policy(shared: &Shared, text: &str) -> Result<(Policy, usize), ErrorReply> {
    let policy = Policy::parse(text).map_err(|e| {
        let n = e.0.len();
        bad(format!(
            "the policy has {n} problem{}; nothing was changed:\n{e}",
            if n == 1 { "" } else { "s" }
        ))
    })?;
    // As the cluster will be once this document is in force: it pins every
    // name to the node that has it now, so no name is shadowed.
    let cluster = {
        let mut cfg = shared.cluster().clone();
        cfg.policy = None;
        let reg = shared.read();
        cluster::snapshot(&reg, &cfg)
    };
    let failures = run_tests(&policy, &cluster);
    if !failures.is_empty() {
        let list: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
        return Err(bad(format!(
            "{} of the policy's {} tests failed; the policy in force was kept:\n{}",
            failures.len(),
            policy.tests.len(),
            list.join("\n")
        )));
    }
    let tests = policy.tests.len();
    Ok((policy, tests))
}

pub(super) fn acl_get(shared: &Shared) -> AdminReply {
    AdminReply::Acl(shared.cluster().policy.as_ref().map(|(v, _)| v.clone()))
}

pub(super) fn acl_test(shared: &Shared, text: &str) -> Result<AdminReply, ErrorReply> {
    let (_, tests) = check_policy(shared, text)?;
    Ok(AdminReply::AclAccepted { version: 0, tests })
}

pub(super) async fn acl_set(shared: &Shared, text: String) -> Result<AdminReply, ErrorReply> {
    let _change = shared.config_change.lock().await;
    let (policy, tests) = check_policy(shared, &text)?;
    let version = shared
        .cluster()
        .policy
        .as_ref()
        .map_or(1, |(v, _)| v.version + 1);
    // Every host name in use now means the node that has it now.
    let hosts = shared
        .read()
        .peers()
        .map(|p| (p.name.clone(), p.id))
        .collect();
    let record = AclVersion {
        version,
        set_at: now_unix(),
        text,
        hosts,
    };
    // The store refuses the version if another change took it meanwhile.
    shared
        .store
        .write(vec![ConfigChange::PutPolicy(record.clone())])
        .await?;
    shared.cluster_mut().policy = Some((record, policy));
    // `routes:` may approve (or stop approving) advertised routes.
    {
        // Lock order: configuration, then registry.
        let cfg = shared.cluster();
        cluster::refresh_routes(&mut shared.write(), &cfg);
    }
    shared.reconfigure();
    info!(version, tests, "policy set");
    Ok(AdminReply::AclAccepted { version, tests })
}

pub(super) async fn acl_history(shared: &Shared) -> Result<AdminReply, ErrorReply> {
    Ok(AdminReply::AclHistory(shared.store.policy_history().await?))
}

/// A DNS label: what a service name must be to resolve.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A node by id or name, as its name.
fn node_name(shared: &Shared, node: &str) -> Result<String, ErrorReply> {
    let reg = shared.read();
    let id = node
        .parse::<u64>()
        .ok()
        .map(NodeId)
        .filter(|id| reg.get(*id).is_some())
        .or_else(|| reg.by_name(node));
    id.and_then(|id| reg.get(id).map(|p| p.name.clone()))
        .ok_or_else(|| {
            refuse(
                ErrorCode::NotFound,
                format!("no node with id or name `{node}`; see the nodes with `weft node list`"),
            )
        })
}

pub(super) async fn service_expose(
    shared: &Shared,
    mut s: ServiceInfo,
) -> Result<AdminReply, ErrorReply> {
    let _change = shared.config_change.lock().await;
    s.name = s.name.to_ascii_lowercase();
    if !valid_name(&s.name) {
        return Err(bad(format!(
            "`{}` cannot be a service name: use 1-63 lowercase letters, digits and `-` (it becomes the DNS name {}.{})",
            s.name, s.name, shared.domain
        )));
    }
    if s.port == 0 || !matches!(s.proto, Proto::Tcp | Proto::Udp) {
        return Err(bad(
            "a service needs a port and tcp or udp, as in `--port 8080/tcp`",
        ));
    }
    s.node = node_name(shared, &s.node)?;
    // Bound now: the service stays with this node, never the next holder
    // of its name.
    s.node_id = shared.read().by_name(&s.node);
    s.gateway_id = None;
    if let Some(addr) = s.addr {
        let reg = shared.read();
        if let Some(p) = reg.by_name(&s.node).and_then(|id| reg.get(id)) {
            // A container on the node, or a system on a network the node
            // routes for the mesh.
            let inside =
                Cidr::from(p.subnet).contains(addr) || p.routes.iter().any(|r| r.contains(addr));
            if !inside {
                return Err(bad(format!(
                    "{addr} is not in node {}'s subnet {} nor in a route in force through it; give a container address on that node, an address in one of its approved routes, or leave out --addr",
                    s.node, p.subnet
                )));
            }
        }
    }
    let groups: Vec<String> = shared
        .cluster()
        .policy
        .as_ref()
        .map(|(_, p)| p.groups.keys().cloned().collect())
        .unwrap_or_default();
    for a in &s.allow {
        match Selector::parse(a) {
            Err(e) => return Err(bad(format!("--allow {a}: {e}"))),
            Ok(Selector::Group(g)) if !groups.contains(&g) => {
                return Err(bad(format!(
                    "--allow {a}: the policy has no group `{g}`; groups are: {}",
                    groups.join(", ")
                )))
            }
            Ok(_) => {}
        }
    }
    if s.public.is_some() {
        if s.proto != Proto::Tcp {
            return Err(bad("--public forwards TCP; the service must be tcp"));
        }
        let gw = node_name(shared, s.gateway.as_deref().unwrap_or(&s.node))?;
        let clash = shared
            .cluster()
            .services
            .values()
            .find(|o| {
                o.name != s.name
                    && o.public == s.public
                    && o.gateway.as_deref().unwrap_or(&o.node) == gw
            })
            .map(|o| o.name.clone());
        if let Some(other) = clash {
            return Err(bad(format!(
                "{gw} already forwards public port {} to service {other}; pick another --public port",
                s.public.unwrap_or_default()
            )));
        }
        s.gateway = Some(gw);
        s.gateway_id = s.gateway.as_deref().and_then(|g| shared.read().by_name(g));
    } else if s.gateway.is_some() {
        return Err(bad(
            "--via names the host of a public port; add --public PORT",
        ));
    }
    shared
        .store
        .write(vec![ConfigChange::PutService(s.clone())])
        .await?;
    shared
        .cluster_mut()
        .services
        .insert(s.name.clone(), s.clone());
    shared.reconfigure();
    info!(service = %s.name, node = %s.node, port = s.port, "service exposed");
    Ok(AdminReply::ServiceExposed(s))
}

pub(super) fn service_list(shared: &Shared) -> AdminReply {
    AdminReply::Services(shared.cluster().services.values().cloned().collect())
}

pub(super) async fn service_remove(
    shared: &Shared,
    name: String,
) -> Result<AdminReply, ErrorReply> {
    let _change = shared.config_change.lock().await;
    let name = name.to_ascii_lowercase();
    if !shared.cluster().services.contains_key(&name) {
        return Err(refuse(
            ErrorCode::NotFound,
            format!("no service `{name}`; see them with `weft service list`"),
        ));
    }
    shared
        .store
        .write(vec![ConfigChange::RemoveService(name.clone())])
        .await?;
    shared.cluster_mut().services.remove(&name);
    shared.reconfigure();
    info!(service = %name, "service removed");
    Ok(AdminReply::ServiceRemoved { name })
}

pub(super) fn route_list(shared: &Shared) -> AdminReply {
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

pub(super) async fn route_approve(
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
pub(super) async fn advertise_routes(shared: &Shared, id: NodeId, routes: Vec<Cidr>) {
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
