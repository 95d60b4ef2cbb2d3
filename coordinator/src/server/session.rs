//! A host session: the welcome, then netmap updates whenever the coalescer
//! publishes a new version; endpoint reports from the host.

use std::future::pending;

use tokio::io::{AsyncRead, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::conn::{not_registered, read_frame, refuse_and_close, write_msg, ConnError};
use super::link::{FrameSink, Link, TcpInbox};
use super::relay_budget::RelayBudget;
use super::view::{send_update, HostView};
use super::*;
use crate::endpoints::checked_endpoints;
use crate::metrics::RelayResult;

#[instrument(skip_all, fields(node = %id))]
#[expect(
    clippy::too_many_arguments,
    reason = "one call site each for QUIC and TCP"
)]
pub(super) async fn session<S: FrameSink, R: AsyncRead + Unpin + Send>(
    shared: Arc<Shared>,
    link: Link,
    inbox: Option<TcpInbox>,
    mut send: S,
    mut recv: R,
    id: NodeId,
    endpoints: Vec<SocketAddr>,
    have: super::view::Have,
    // The version the host speaks, already checked (`check_version`).
    protocol: u32,
) -> Result<(), ConnError> {
    let Some(me) = shared.read().get(id).cloned() else {
        return Err(refuse_and_close(send, not_registered()).await);
    };
    // Fewer keep-alives the more hosts there are (see `keepalive_for`): on
    // QUIC the interval this connection was accepted with, kept for its
    // life.
    let keepalive = match &link {
        Link::Quic(_, k) => *k,
        Link::Tcp(_) => shared.keepalive_now(),
    };
    let welcome = Welcome {
        node_id: id,
        name: me.name.clone(),
        subnet: me.subnet,
        tags: me.tags.clone(),
        pool: shared.pool,
        domain: shared.domain.clone(),
        keepalive_ms: u32::try_from(keepalive.as_millis()).unwrap_or(u32::MAX),
        accepts_leave: true,
        accepts_paths: true,
        keeps_quic_alive: true,
        protocol_version: protocol,
    };
    write_msg(&mut send, &ServerMsg::Welcome(welcome)).await?;

    let sid = shared.next_session.fetch_add(1, Ordering::Relaxed);
    if let Some((_, old)) = shared.sessions().insert(id, (sid, link.clone())) {
        old.close(CLOSE_REPLACED, b"replaced by a newer session of this node");
    }
    // For the web page: which hosts still speak an older version.
    shared.paths.started(id, sid, protocol);
    // The node may have been removed while this session was starting.
    if shared.read().get(id).is_none() {
        link.close(CLOSE_REMOVED, b"node removed by an admin");
        let mut sessions = shared.sessions();
        if sessions.get(&id).is_some_and(|(s, _)| *s == sid) {
            sessions.remove(&id);
        }
        shared.paths.ended(id, sid);
        return Ok(());
    }
    // Subscribe before going online so our own change is not missed.
    let mut published = shared.published.subscribe();
    let endpoints = checked_endpoints(&endpoints, shared.pool, shared.allow_loopback_endpoints);
    if shared.write().set_online(id, true, Some(endpoints)) {
        shared.changed.notify_one();
    }
    if let Some(r) = &shared.replica {
        r.live(id, true);
    }
    debug!("session started");

    // What this host may push through the relay (both transports).
    let budget = Arc::new(Mutex::new(RelayBudget::new(std::time::Instant::now())));
    // Set by the reader when a ping arrives; the writer answers it.
    let pong = Arc::new(Notify::new());
    // Endpoint reports, applied at most every ENDPOINT_PAUSE, latest wins.
    let reported = Arc::new(LatestEndpoints::default());
    let applier = {
        let (shared, reported) = (shared.clone(), reported.clone());
        async move {
            loop {
                reported.ready.notified().await;
                let Some(eps) = reported.take() else {
                    continue;
                };
                if set_endpoints(&shared, id, eps) {
                    tokio::time::sleep(ENDPOINT_PAUSE).await;
                }
            }
        }
    };
    let reader = {
        let shared = shared.clone();
        let pong = pong.clone();
        let reported = reported.clone();
        let budget = budget.clone();
        async move {
            // A host that pings must keep pinging: silence past the
            // deadline ends its session (one that never pings has QUIC's
            // idle timeout).
            let mut pinged = false;
            loop {
                // A TCP session's pings come at the interval asked for,
                // which the updates move as the cluster grows (QUIC
                // sessions keep alive with datagrams and QUIC's idle
                // timeout).
                let now = std::time::Duration::from_millis(u64::from(
                    shared.keepalive_ms.load(Ordering::Relaxed),
                ));
                let deadline = weft_proto::liveness_deadline(keepalive.max(now));
                let read = read_frame(&mut recv);
                let msg: ClientMsg = if pinged {
                    match tokio::time::timeout(deadline, read).await {
                        Ok(Ok(m)) => m,
                        Ok(Err(e)) => return e,
                        Err(_) => return ConnError::Timeout,
                    }
                } else {
                    match read.await {
                        Ok(m) => m,
                        Err(e) => return e,
                    }
                };
                match msg {
                    ClientMsg::Ping => {
                        pinged = true;
                        pong.notify_one();
                    }
                    ClientMsg::SetEndpoints { endpoints } => reported.offer(&shared, endpoints),
                    ClientMsg::AdvertiseRoutes { routes } => {
                        super::config_ops::advertise_routes(&shared, id, routes).await
                    }
                    ClientMsg::Datagram(bytes) => forward(&shared, &budget, id, bytes.into_vec()),
                    ClientMsg::ReportPaths { paths } => {
                        let view = shared.compiled().nodes.get(&id).cloned();
                        shared.paths.report(id, sid, paths, |peer| {
                            view.as_ref().is_some_and(|v| v.sees(peer))
                        });
                    }
                    ClientMsg::Leave => {
                        // Closes this session with the removed code.
                        let _ =
                            super::admin_ops::remove_node_id(&shared, id, "left the cluster").await;
                    }
                    _ => {}
                }
            }
        }
    };
    let (mut datagrams, mut closing) = match inbox {
        Some(i) => (Some((i.datagrams, i.budget)), Some(i.close)),
        None => (None, None),
    };
    let writer = async {
        let mut host = HostView::new(&shared, id, have);
        let mut first = true;
        loop {
            let version = *published.borrow_and_update();
            let wrote = match host.next(&shared) {
                Some(update) => {
                    send_update(&mut send, &shared, &update).await?;
                    first = false;
                    true
                }
                // The host waits for one update to finish connecting: a
                // resume that is current gets an empty one.
                None if first && host.ready(&shared) => {
                    send_update(&mut send, &shared, &host.nothing()).await?;
                    first = false;
                    true
                }
                None => false,
            };
            if wrote {
                shared.metrics.netmap_updates.inc();
            }
            shared.fanout.handled(version, wrote);
            loop {
                tokio::select! {
                    r = published.changed() => {
                        if r.is_err() {
                            return Ok::<(), ConnError>(());
                        }
                        break;
                    }
                    _ = pong.notified() => write_msg(&mut send, &ServerMsg::Pong).await?,
                    Some(d) = next_datagram(&mut datagrams) => {
                        let msg = ServerMsg::Datagram(serde_bytes::ByteBuf::from(d));
                        write_msg(&mut send, &msg).await?;
                    }
                    code = closed(&mut closing) => {
                        if code == CLOSE_REMOVED {
                            let msg = ServerMsg::Error(not_registered());
                            write_msg(&mut send, &msg).await?;
                        }
                        send.flush().await?;
                        return Ok(());
                    }
                }
            }
        }
    };
    let quic = match &link {
        Link::Quic(c, _) => Some(c.clone()),
        Link::Tcp(_) => None,
    };
    let result = tokio::select! {
        e = reader => Err(e),
        r = writer => r,
        () = applier => Ok(()),
        e = relay(&shared, &budget, quic, id) => Err(e),
    };

    let current = {
        let mut sessions = shared.sessions();
        match sessions.get(&id) {
            Some((s, _)) if *s == sid => {
                sessions.remove(&id);
                true
            }
            _ => false,
        }
    };
    shared.paths.ended(id, sid);
    if current && shared.write().set_online(id, false, None) {
        shared.changed.notify_one();
    }
    if let (true, Some(r)) = (current, &shared.replica) {
        r.live(id, false);
    }
    debug!("session ended");
    result
}

/// The least time between two endpoint changes of one host: a host that
/// floods them costs its peers at most four netmap changes a second.
const ENDPOINT_PAUSE: Duration = Duration::from_millis(250);

/// The latest endpoint report of a host not yet applied.
#[derive(Default)]
struct LatestEndpoints {
    latest: Mutex<Option<Vec<SocketAddr>>>,
    ready: Notify,
}

impl LatestEndpoints {
    /// Replaces any report not yet applied. Only the first
    /// [`crate::endpoints::MAX_ENDPOINTS`] plausible ones are kept, so what
    /// waits here is small whatever the host sent.
    fn offer(&self, shared: &Shared, endpoints: Vec<SocketAddr>) {
        let kept = checked_endpoints(&endpoints, shared.pool, shared.allow_loopback_endpoints);
        drop(endpoints);
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(kept);
        self.ready.notify_one();
    }

    fn take(&self) -> Option<Vec<SocketAddr>> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Records a host's new endpoints, already checked by
/// [`LatestEndpoints::offer`]; peers hear of them with the next netmap.
/// Whether anything changed.
fn set_endpoints(shared: &Shared, id: NodeId, endpoints: Vec<SocketAddr>) -> bool {
    let changed = shared.write().update(id, |p| p.endpoints = endpoints);
    if changed {
        shared.changed.notify_one();
        if let Some(r) = &shared.replica {
            r.live(id, true);
        }
    }
    changed
}

/// The next datagram queued for a TCP session (never, for QUIC); its bytes
/// leave the session's budget.
async fn next_datagram(
    rx: &mut Option<(mpsc::Receiver<Vec<u8>>, weft_proto::queue::ByteBudget)>,
) -> Option<Vec<u8>> {
    match rx {
        Some((r, budget)) => {
            let d = r.recv().await?;
            budget.release(d.len());
            Some(d)
        }
        None => pending().await,
    }
}

/// Completes with the close code when a TCP session is told to end.
async fn closed(rx: &mut Option<watch::Receiver<Option<u32>>>) -> u32 {
    let Some(r) = rx else {
        return pending().await;
    };
    loop {
        if let Some(code) = *r.borrow_and_update() {
            return code;
        }
        if r.changed().await.is_err() {
            return pending().await;
        }
    }
}

/// Forwards a datagram from host `from` (relayed WireGuard ciphertext or a
/// punch) to the host it names if the two are peers, with the node id
/// rewritten to the sender.
/// Datagrams for hosts without a session are dropped, like packets to an
/// unreachable address.
fn forward(shared: &Arc<Shared>, budget: &Mutex<RelayBudget>, from: NodeId, bytes: Vec<u8>) {
    let len = bytes.len();
    let result = forward_one(shared, budget, from, bytes);
    shared.metrics.relayed(result, len);
}

fn forward_one(
    shared: &Arc<Shared>,
    budget: &Mutex<RelayBudget>,
    from: NodeId,
    mut bytes: Vec<u8>,
) -> RelayResult {
    let Some(dst) = weft_proto::relay::Datagram::node(&bytes) else {
        return RelayResult::Malformed;
    };
    let now = std::time::Instant::now();
    let allowed = {
        let mut b = budget.lock().unwrap_or_else(|p| p.into_inner());
        match weft_proto::relay::Datagram::parse(&bytes) {
            Some(weft_proto::relay::Datagram::Punch { .. }) => b.punch(dst, now),
            Some(weft_proto::relay::Datagram::Relay { .. }) => b.relay(bytes.len(), now),
            None => false,
        }
    };
    if !allowed {
        return RelayResult::OverBudget;
    }
    // The relay carries nothing between hosts the policy keeps apart (they
    // are not each other's peers).
    let peers = shared
        .compiled()
        .nodes
        .get(&from)
        .is_some_and(|v| v.sees(dst));
    if !peers {
        return RelayResult::NotPeers;
    }
    let Some(link) = shared.sessions().get(&dst).map(|(_, l)| l.clone()) else {
        // Its session may be on another replica.
        return if super::replica::forward(shared, from, dst, &bytes) {
            RelayResult::Forwarded
        } else {
            RelayResult::NoSession
        };
    };
    if weft_proto::relay::Datagram::set_node(&mut bytes, from) {
        link.send_datagram(bytes);
        RelayResult::Forwarded
    } else {
        RelayResult::Malformed
    }
}

/// Reads a QUIC session's datagrams and forwards them (TCP sessions carry
/// theirs as frames, handled by the reader).
async fn relay(
    shared: &Arc<Shared>,
    budget: &Mutex<RelayBudget>,
    conn: Option<quinn::Connection>,
    id: NodeId,
) -> ConnError {
    let Some(conn) = conn else {
        return pending().await;
    };
    loop {
        match conn.read_datagram().await {
            // A keep-alive (see `weft_control`'s liveness).
            Ok(b) if b.is_empty() => {}
            Ok(b) => forward(shared, budget, id, b.to_vec()),
            Err(e) => return ConnError::from(e),
        }
    }
}
