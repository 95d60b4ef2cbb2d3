//! Brings the host in line with its netmap: peers, packet filter, routes
//! through other hosts, services. A whole map (a new session) is
//! reconciled against the device; a delta costs O(peers it names), so a
//! host with 10,000 peers applies a one-peer change without a pass over
//! all of them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use weft_proto::policy::Cidr;
use weft_proto::{Netmap, NetmapChange, NodeId};

use super::host_net::MeshRoutes;
use super::peers::PeerReconciler;
use super::services::Services;
use crate::dataplane::settings::DeviceUpdate;
use crate::dataplane::DeviceHandle;

/// Remembers what it applied, so the next change touches only the rest.
pub struct Applier {
    pub reconciler: PeerReconciler,
    pub routes: MeshRoutes,
    /// The routes each peer carries, for the peers that carry any.
    routed: BTreeMap<NodeId, Vec<Cidr>>,
}

impl Applier {
    pub fn new(routes: MeshRoutes) -> Applier {
        Applier {
            reconciler: PeerReconciler::new(),
            routes,
            routed: BTreeMap::new(),
        }
    }

    /// Applies the whole map, checking the device's peers against it.
    pub fn apply(&mut self, netmap: &Netmap, handle: &DeviceHandle, services: &Mutex<Services>) {
        // The filter first: a peer the policy now allows must not reach the
        // TUN before its rules are in force.
        set_filter(netmap, handle);
        let update = self.reconciler.plan(netmap, &handle.peer_keys());
        apply_peers(update, netmap, handle);
        self.routed = netmap
            .peers()
            .filter(|p| !p.routes.is_empty())
            .map(|p| (p.id, p.routes.clone()))
            .collect();
        self.sync_routes();
        super::lock(services).apply(netmap.services());
    }

    /// Applies one delta (`change`, already folded into `netmap`).
    pub fn apply_change(
        &mut self,
        netmap: &Netmap,
        change: &NetmapChange,
        handle: &DeviceHandle,
        services: &Mutex<Services>,
    ) {
        if change.full {
            return self.apply(netmap, handle, services);
        }
        if change.filter {
            set_filter(netmap, handle);
        }
        let update = self.reconciler.plan_change(netmap, change);
        apply_peers(update, netmap, handle);
        let mut routes_moved = false;
        for id in &change.removed {
            if !netmap.contains(*id) {
                routes_moved |= self.routed.remove(id).is_some();
            }
        }
        for id in &change.upserted {
            let routes = netmap.peer(*id).map_or(&[][..], |p| &p.routes);
            if routes.is_empty() {
                routes_moved |= self.routed.remove(id).is_some();
            } else if self.routed.get(id).map(Vec::as_slice) != Some(routes) {
                self.routed.insert(*id, routes.to_vec());
                routes_moved = true;
            }
        }
        // Failed routes are retried with the next delta, as before.
        if routes_moved || self.routes.pending() {
            self.sync_routes();
        }
        if change.services {
            super::lock(services).apply(netmap.services());
        }
    }

    fn sync_routes(&mut self) {
        self.routes
            .sync(self.routed.values().flatten().copied().collect());
    }
}

fn set_filter(netmap: &Netmap, handle: &DeviceHandle) {
    let filter = netmap.filter();
    if handle.set_filter(filter) {
        let rules = filter.map_or(0, |f| f.rules.len());
        tracing::info!(rules, "packet filter applied");
    }
}

/// Applies a planned update of the device's peers, if it has any.
fn apply_peers(update: DeviceUpdate, netmap: &Netmap, handle: &DeviceHandle) {
    if update.peers.is_empty() {
        return;
    }
    let (added, removed) =
        update.peers.iter().fold(
            (0, 0),
            |(a, r), p| if p.remove { (a, r + 1) } else { (a + 1, r) },
        );
    match handle.apply(&update) {
        Ok(()) => tracing::info!(
            version = netmap.version(),
            peers = netmap.len(),
            added_or_changed = added,
            removed,
            "netmap applied"
        ),
        Err(e) => tracing::error!(error = %e.reason, "cannot apply the netmap to the data plane"),
    }
}
