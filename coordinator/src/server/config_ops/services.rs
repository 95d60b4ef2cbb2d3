//! Published services: what a service may be (a DNS name, a port, an
//! address on its node, `allow` selectors the policy knows, one public
//! port per gateway), and their removal.

use super::*;

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

pub(in crate::server) async fn service_expose(
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

pub(in crate::server) fn service_list(shared: &Shared) -> AdminReply {
    AdminReply::Services(shared.cluster().services.values().cloned().collect())
}

pub(in crate::server) async fn service_remove(
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
