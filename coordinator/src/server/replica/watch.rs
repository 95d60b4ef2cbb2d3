//! The watch on the prefix, and the reloads it triggers (see the parent
//! module).

use super::*;

pub(super) async fn watch_loop(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match watch_once(&shared, &mut backoff).await {
            Ok(why) => info!(%why, "etcd watch ended; loading the store again and watching anew"),
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "etcd watch failed; hosts keep their sessions, and this replica catches up when etcd answers again");
                tokio::time::sleep(backoff).await;
                backoff = backoff_next(backoff);
            }
        }
    }
}

/// Loads everything, then watches from the revision it was read at, until
/// the watch ends (`Ok`, with why) or fails.
pub(super) async fn watch_once(
    shared: &Arc<Shared>,
    backoff: &mut Duration,
) -> Result<String, String> {
    let Some(r) = replica(shared) else {
        return Ok("no replica".into());
    };
    let rev = resync(shared).await?;
    load_live(shared, r, rev).await.map_err(|e| e.to_string())?;
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(rev + 1)
        .with_prev_key();
    let mut wc = r.client.watch_client();
    let mut stream = r
        .call(wc.watch(r.prefix.clone().into_bytes(), Some(opts)))
        .await
        .map_err(|e| e.to_string())?;
    debug!(from = rev + 1, "watching etcd");
    let live_prefix = r.key("live/");
    loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Err("the watch stream ended".into()),
            Err(e) => return Err(r.err(&e).to_string()),
        };
        *backoff = Duration::from_millis(100);
        if msg.compact_revision() > 0 {
            return Ok(format!(
                "revision {} was compacted (now {})",
                rev + 1,
                msg.compact_revision()
            ));
        }
        if msg.canceled() {
            return Ok(format!("cancelled: {}", msg.cancel_reason()));
        }
        let mut log_changed = false;
        let mut live = Vec::new();
        for ev in msg.events() {
            let Some(kv) = ev.kv() else { continue };
            match kv.key().strip_prefix(live_prefix.as_slice()) {
                Some(rest) => {
                    let Some(id) = std::str::from_utf8(rest)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .map(NodeId)
                    else {
                        continue;
                    };
                    let rec = match ev.event_type() {
                        EventType::Put => decode_live(kv.value()),
                        EventType::Delete => None,
                    };
                    let prev = ev.prev_kv().and_then(|p| decode_live(p.value()));
                    live.push((id, rec, prev, kv.mod_revision()));
                }
                None => {
                    let own = lock(&r.commits).contains(&kv.mod_revision());
                    log_changed |= !own;
                }
            }
        }
        let last = msg
            .events()
            .iter()
            .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
            .max();
        if log_changed {
            resync(shared).await?;
        }
        for (id, rec, prev, rev) in live {
            apply_live(shared, r, id, rec, prev, rev);
        }
        // Every event up to `last` is applied: versions from now on say so
        // (see `crate::store::REVISION_SHIFT`).
        if let Some(last) = last {
            shared
                .write()
                .advance_to(crate::store::revision_version(last));
        }
    }
}

/// Loads the store again now, unless that was done less than
/// [`CATCH_UP_EVERY`] ago: for a host this replica does not know, which
/// may have joined on another replica a moment ago. Bounded, since any
/// stranger can ask for it with a fresh key.
pub(in crate::server) async fn catch_up(shared: &Arc<Shared>) {
    let Some(r) = replica(shared) else { return };
    let mut last = r.caught_up.lock().await;
    if last.is_some_and(|t| t.elapsed() < CATCH_UP_EVERY) {
        return;
    }
    if let Err(e) = resync(shared).await {
        debug!(error = %e, "cannot catch up with the store");
    }
    *last = Some(Instant::now());
}

/// Loads the store again and brings this replica's registry and
/// configuration up to it; the revision it was read at.
pub(super) async fn resync(shared: &Arc<Shared>) -> Result<i64, String> {
    // Admin commands change the configuration under this lock, store first:
    // a load either sees their change or comes after it.
    let _change = shared.config_change.lock().await;
    let rs = shared.store.resync().await.map_err(|e| e.message.clone())?;
    for id in &rs.removed {
        if let Some((_, link)) = shared.sessions().remove(id) {
            link.close(
                crate::server::CLOSE_REMOVED,
                b"node removed (on another replica)",
            );
        }
    }
    if let Some(r) = replica(shared) {
        let mut remote = lock(&r.remote);
        for id in &rs.removed {
            remote.remove(id);
        }
        // Hosts that came online on another replica before this one saw
        // them join.
        let mut woke = false;
        let mut reg = shared.write();
        for id in &rs.added {
            if let Some(rem) = remote.get(id) {
                let eps = rem.endpoints.clone();
                woke |= reg.at_revision(rem.rev, |reg| reg.set_online(*id, true, Some(eps)));
            }
        }
        drop(reg);
        if woke {
            shared.changed.notify_one();
        }
    }
    let differs = {
        let cfg = shared.cluster();
        cfg.policy.as_ref().map(|(v, _)| v) != rs.config.policy.as_ref()
            || cfg.services != rs.config.services
            || cfg.routes != rs.config.routes
            || cfg.admins != rs.config.admins
    };
    if differs {
        match ClusterConfig::from_stored(rs.config) {
            Ok(fresh) => {
                {
                    let mut cfg = shared.cluster_mut();
                    *cfg = fresh;
                }
                {
                    let cfg = shared.cluster();
                    refresh_routes(&mut shared.write(), &cfg);
                }
                debug!("configuration changed on another replica");
                shared.reconfigure();
            }
            Err(e) => {
                warn!(error = %e, "the configuration another replica stored does not parse; keeping the one in force")
            }
        }
    }
    Ok(rs.revision)
}
