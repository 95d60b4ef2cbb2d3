//! The task that enforces node expiry (see [`crate::expiry`]): every tick
//! it asks the store to refresh connected nodes' last-seen times and to
//! expire offline ones, then removes expired nodes past their grace period
//! the way an admin would (their services and routes go too).

use super::*;
use crate::expiry::ExpiryRules;

pub(super) async fn run(shared: Arc<Shared>, rules: ExpiryRules) {
    let mut tick = tokio::time::interval(rules.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let swept = match shared.store.sweep(rules, now_unix()).await {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e.message, "expiry sweep failed; trying again at the next tick");
                continue;
            }
        };
        for id in &swept.expired {
            // Offline when it was decided; a session that came up since
            // is closed with the reason, so the host learns it at once.
            if let Some((_, link)) = shared.sessions().remove(id) {
                link.close(CLOSE_REMOVED, b"node expired");
            }
            info!(node = %id, "node expired: offline longer than its expiry; it is in no netmap now, and is removed after the grace period unless `weft node set` brings it back");
        }
        for id in &swept.revived {
            info!(node = %id, "expired node is back (the expiry became never)");
        }
        if !swept.expired.is_empty() || !swept.revived.is_empty() {
            shared.changed.notify_one();
        }
        for id in swept.due {
            match admin_ops::remove_node_id(&shared, id, "expired and past its grace period").await
            {
                Ok(_) => {}
                Err(e) => {
                    debug!(node = %id, error = %e.message, "cannot remove an expired node yet")
                }
            }
        }
    }
}

/// What a host whose node expired is told when it reconnects.
pub(super) fn expired_reply(name: &str, id: NodeId) -> ErrorReply {
    refuse(
        ErrorCode::NotRegistered,
        format!("this host's node {name} ({id}) expired: it was offline longer than the cluster's node expiry; an admin can bring it back with `weft node set {name} --expiry never` (then restart this agent), or join again with a new token from `weft token create`"),
    )
}
