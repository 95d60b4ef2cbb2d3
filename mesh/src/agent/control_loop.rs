//! Keeps the host in sync with its coordinator: applies netmap changes to the
//! data plane, caches the netmap, reports endpoint changes, and reconnects
//! with capped exponential backoff and jitter when the connection drops.
//! Tunnels never depend on this loop: while it retries, the data plane keeps
//! the last configuration.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng as _;
use tokio::sync::watch;
use weft_proto::msg::{ErrorCode, PathClassReport, PathReport};
use weft_proto::{Netmap, NetmapChange};
use x25519_dalek::StaticSecret;

pub use super::applier::Applier;
use super::netmap_cache::NetmapCache;
use super::{AgentError, Shared};
use crate::control::{ControlClient, ControlError, Session};
use crate::dataplane::DeviceHandle;

/// How `weft down` hears whether the node left.
pub type LeaveReply = tokio::sync::oneshot::Sender<Result<(), String>>;

/// How long leaving waits for the coordinator to confirm.
const LEAVE_WAIT: Duration = Duration::from_secs(5);

const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(8);
const ENDPOINT_SCAN: Duration = Duration::from_secs(10);

/// The delay before reconnect attempt `attempt` (0-based): doubling from
/// 250 ms, capped at 8 s, with ±25 % jitter so a restarted coordinator is
/// not hit by every host in the same instant.
pub fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_FIRST
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    let jitter = rand::thread_rng().gen_range(0.75..1.25);
    base.mul_f64(jitter)
}

/// Longest wait before the first reconnect after a session ends.
const FIRST_RETRY_SPREAD: Duration = Duration::from_millis(100);

/// The wait before the first reconnect after a session ended: uniform in
/// [0, 100 ms).
pub fn first_retry() -> Duration {
    FIRST_RETRY_SPREAD.mul_f64(rand::thread_rng().gen_range(0.0..1.0))
}

/// Errors after which retrying cannot help.
fn is_fatal(e: &ControlError) -> bool {
    matches!(
        e,
        ControlError::Removed
            | ControlError::Refused {
                code: ErrorCode::NotRegistered
                    | ErrorCode::ProofFailed
                    | ErrorCode::VersionMismatch,
                ..
            }
    )
}

/// Aborts a task when dropped (the relay reader of a session).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct ControlLoop {
    pub client: ControlClient,
    pub key: StaticSecret,
    pub shared: std::sync::Arc<Shared>,
    pub handle: DeviceHandle,
    pub applier: Applier,
    /// Writes the netmap to disk behind the one in force.
    pub cache: NetmapCache,
    /// Requests to leave the cluster (`weft down`).
    pub leave: tokio::sync::mpsc::Receiver<LeaveReply>,
}

/// How often the path report is checked for changes (and sent if it
/// changed): a path change reaches the coordinator's page within this.
const PATH_REPORT_EVERY: Duration = Duration::from_secs(1);

/// This host's path to each peer, as the traversal engine sees it.
fn path_report(traversal: &super::traversal::TraversalView) -> Vec<PathReport> {
    use super::traversal::PathKind;
    let paths = traversal.paths.lock().unwrap_or_else(|p| p.into_inner());
    let mut out: Vec<PathReport> = paths
        .iter()
        .take(weft_proto::msg::MAX_PATH_REPORTS)
        .map(|(id, info)| PathReport {
            peer: *id,
            path: match info.kind {
                PathKind::Lan => PathClassReport::Lan,
                PathKind::Direct => PathClassReport::Direct,
                PathKind::Relay => PathClassReport::Relay,
            },
            reason: info.reason.clone(),
        })
        .collect();
    out.sort_by_key(|p| p.peer);
    out
}

/// Tells the coordinator this node leaves, and waits for it to close the
/// session as removed.
async fn leave(s: &mut Session) -> Result<(), String> {
    if !s.welcome().accepts_leave {
        return Err(
            "the coordinator is older than `weft down`; remove this node there with \
                    `weft node remove NAME`, then stop the agent"
                .into(),
        );
    }
    s.updater()
        .leave()
        .await
        .map_err(|e| format!("cannot tell the coordinator: {e}"))?;
    let ended = tokio::time::timeout(LEAVE_WAIT, async {
        loop {
            if let Err(e) = s.next_change().await {
                return e;
            }
        }
    })
    .await;
    match ended {
        Ok(ControlError::Removed) => Ok(()),
        Ok(e) => Err(format!(
            "the session ended before the coordinator confirmed ({e}); check `weft node list` there"
        )),
        Err(_) => Err(format!(
            "the coordinator did not confirm within {LEAVE_WAIT:?}; check `weft node list` there"
        )),
    }
}

impl ControlLoop {
    /// Runs until `stop` flips to true (Ok) or the coordinator refuses this
    /// node for good (Err). `session` is an already open session, if any.
    /// The cached netmap is brought up to date before it returns (unless
    /// the node left).
    pub async fn run(
        mut self,
        session: Option<Session>,
        stop: watch::Receiver<bool>,
    ) -> Result<(), AgentError> {
        let r = self.sessions(session, stop).await;
        let left = self.shared.left.load(std::sync::atomic::Ordering::SeqCst);
        self.cache.flush(self.shared.netmap(), !left).await;
        if left {
            // After any write under way: none can bring the netmap back.
            self.shared.state.forget_identity();
        }
        r
    }

    async fn sessions(
        &mut self,
        mut session: Option<Session>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), AgentError> {
        let mut attempt = 0u32;
        'session: loop {
            let mut s = match session.take() {
                Some(s) => s,
                None => {
                    let endpoints = self.shared.scan_endpoints();
                    let info = self.shared.identity().coordinator;
                    let cached = self.shared.netmap();
                    let connect = self
                        .client
                        .connect(&info, &self.key, endpoints, Some(cached));
                    tokio::select! {
                        r = connect => match r {
                            Ok(s) => s,
                            Err(e) if is_fatal(&e) => return Err(AgentError::Control(e)),
                            Err(e) => {
                                self.shared.set_disconnected(e.to_string());
                                let wait = backoff(attempt);
                                attempt = attempt.saturating_add(1);
                                tracing::warn!(error = %e, retry_in = ?wait, "coordinator unreachable; tunnels keep running");
                                tokio::select! {
                                    _ = tokio::time::sleep(wait) => continue,
                                    _ = stop.changed() => return Ok(()),
                                }
                            }
                        },
                        _ = stop.changed() => return Ok(()),
                    }
                }
            };
            attempt = 0;
            self.on_netmap(s.netmap().clone(), None);
            self.shared
                .set_connected(s.heard(), s.transport(), s.welcome().protocol_version);
            // Relay and punches ride this connection.
            self.shared.traversal.link.set(Some(s.datagram_link()));
            let _abort_relay = s.take_datagrams().map(|source| {
                AbortOnDrop(tokio::spawn(super::traversal::relay::receive(
                    source,
                    self.handle.clone(),
                    self.shared.traversal.punches.clone(),
                )))
            });
            tracing::info!(
                resumed = s.resumed(),
                version = s.netmap().version(),
                "connected to the coordinator"
            );
            if let Err(e) = self.advertise(&s).await {
                tracing::warn!(error = %e, "cannot advertise routes");
            }
            let mut reported: Vec<SocketAddr> = self.shared.endpoints();
            // Paths go to a coordinator that reads them, when they change.
            let mut paths_sent: Option<Vec<PathReport>> = None;
            let mut paths_tick = tokio::time::interval(PATH_REPORT_EVERY);
            paths_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut scan = tokio::time::interval(ENDPOINT_SCAN);
            scan.tick().await;
            let changed = self.shared.endpoints_changed.clone();
            let lost = loop {
                let renew_at = s.renew_at();
                let save_at = self.cache.due();
                tokio::select! {
                    // The map in force: the session's own is emptied when
                    // an update cannot be applied.
                    _ = sleep_until(save_at), if save_at.is_some() => {
                        self.cache.write(self.shared.netmap());
                    }
                    _ = changed.notified() => scan.reset_immediately(),
                    _ = self.shared.routes_changed.notified() => {
                        if let Err(e) = self.advertise(&s).await {
                            break e;
                        }
                    }
                    // The coordinator asks for a keep-alive interval this
                    // connection cannot change to: a new session at it,
                    // opened before this one closes (peers see nothing).
                    _ = weft_control::renewal_due(renew_at) => {
                        let info = self.shared.identity().coordinator;
                        match self.client.renew(&s, &info, &self.key, reported.clone()).await {
                            Ok(new) => {
                                tracing::debug!(keepalive_ms = new.welcome().keepalive_ms, "renewed the session at the keep-alive interval asked for");
                                session = Some(new);
                                continue 'session;
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "could not renew the session; keeping this one");
                                s.renewal_failed();
                            }
                        }
                    }
                    change = s.next_change() => match change {
                        Ok(change) => self.on_netmap(s.netmap().clone(), Some(&change)),
                        Err(e) if is_fatal(&e) => return Err(AgentError::Control(e)),
                        Err(e) => break e,
                    },
                    _ = scan.tick() => {
                        let now = self.shared.scan_endpoints();
                        if now != reported {
                            tracing::info!(endpoints = ?now, "local endpoints changed");
                            if let Err(e) = s.set_endpoints(now.clone()).await {
                                break e;
                            }
                            reported = now;
                        }
                    }
                    _ = paths_tick.tick(), if s.welcome().accepts_paths => {
                        let now = path_report(&self.shared.traversal);
                        if paths_sent.as_ref() != Some(&now) {
                            if let Err(e) = s.updater().report_paths(now.clone()).await {
                                break e;
                            }
                            paths_sent = Some(now);
                        }
                    }
                    Some(reply) = self.leave.recv() => match leave(&mut s).await {
                        Ok(()) => {
                            self.shared.left.store(true, std::sync::atomic::Ordering::SeqCst);
                            tracing::info!("this node left the cluster; stopping");
                            let _ = reply.send(Ok(()));
                            return Ok(());
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not leave the cluster");
                            let _ = reply.send(Err(e));
                        }
                    },
                    _ = stop.changed() => {
                        s.close();
                        return Ok(());
                    }
                }
            };
            tracing::warn!(error = %lost, "lost the coordinator; tunnels keep running, reconnecting");
            if self.cache.due().is_some() {
                self.cache.write(self.shared.netmap());
            }
            self.shared.traversal.link.set(None);
            self.shared.set_disconnected(lost.to_string());
            let since = Instant::now();
            // The first attempt after losing a session is at once (the
            // coordinator restarted, say), spread over a short window so
            // thousands of hosts do not arrive in the same millisecond;
            // only failures after it back off.
            let wait = first_retry();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return Ok(()),
            }
            tracing::debug!(after = ?since.elapsed(), "reconnecting");
        }
    }

    /// Sends the routes this host advertises (stored by `weft route
    /// advertise`), if any, or an empty list to withdraw them.
    async fn advertise(&self, s: &Session) -> Result<(), ControlError> {
        let routes = self.shared.state.advertised_routes().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the advertised routes");
            Vec::new()
        });
        s.updater().advertise_routes(routes).await
    }

    /// Puts `netmap` in force: all of it (`change` is `None`, a new
    /// session) or what one delta changed.
    fn on_netmap(&mut self, netmap: Netmap, change: Option<&NetmapChange>) {
        self.handle
            .set_local_networks(Some(self.shared.accepted_networks(&netmap)));
        let services = &self.shared.services;
        match change {
            Some(c) => self
                .applier
                .apply_change(&netmap, c, &self.handle, services),
            None => self.applier.apply(&netmap, &self.handle, services),
        }
        self.cache.changed(change.is_none_or(|c| c.full));
        self.shared.set_netmap(netmap, change);
    }
}

/// Sleeps until `at` (forever if `None`; the caller guards the branch).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped_with_jitter() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            let base = BACKOFF_FIRST
                .saturating_mul(1 << attempt.min(16))
                .min(BACKOFF_CAP);
            assert!(
                d >= base.mul_f64(0.75) && d <= base.mul_f64(1.25),
                "{attempt}: {d:?}"
            );
        }
        assert!(backoff(30) <= BACKOFF_CAP.mul_f64(1.25));
    }

    #[test]
    fn first_retry_is_prompt_and_spread() {
        let waits: Vec<Duration> = (0..200).map(|_| first_retry()).collect();
        assert!(waits.iter().all(|w| *w < FIRST_RETRY_SPREAD));
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 100, "not spread: {distinct:?}");
        assert!(first_retry() < backoff(0).mul_f64(0.75).max(FIRST_RETRY_SPREAD));
    }

    #[test]
    fn removal_is_fatal_and_a_lost_connection_is_not() {
        assert!(is_fatal(&ControlError::Removed));
        assert!(!is_fatal(&ControlError::Connection("x".into())));
        assert!(!is_fatal(&ControlError::Unreachable {
            addrs: "a".into(),
            reason: "b".into()
        }));
    }
}
