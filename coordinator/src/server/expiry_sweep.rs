//! The task that enforces node expiry (see [`crate::expiry`]): every tick
//! it asks the store to refresh connected nodes' last-seen times and to
//! expire offline ones, then removes expired nodes past their grace period
//! the way an admin would (their services and routes go too).

use super::*;
use crate::expiry::ExpiryRules;

pub(super) async fn run(shared: Arc<Shared>, rules: ExpiryRules) {
    // The first sweep one tick after start, not during it.
    let every = rules.tick();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
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
            // Offline when it was decided; a host that connected since is
            // here: it comes straight back (its offline time from now).
            if shared.sessions().contains_key(id) {
                match shared.store.set_expiry(*id, None, now_unix()).await {
                    Ok(_) => debug!(node = %id, "a node expired as it reconnected; it is back"),
                    Err(e) => {
                        warn!(node = %id, error = %e.message, "a node expired as it reconnected and cannot be brought back; `weft node set` can")
                    }
                }
                continue;
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
            // Only while it is still expired: `weft node set` may have
            // brought it back since the sweep.
            match shared.store.remove_expired_node(id).await {
                Ok(rec) => {
                    let why = "expired and past its grace period";
                    admin_ops::forget_removed(&shared, id, &rec, why).await;
                }
                Err(e) => debug!(node = %id, error = %e.message, "expired node not removed"),
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
