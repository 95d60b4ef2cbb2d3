//! A host session: the welcome, then netmap updates whenever the coalescer
//! publishes a new version; endpoint reports from the host.

use super::conn::{not_registered, read_frame, refuse_and_close, write_msg, ConnError};
use super::*;

/// The wire form of a netmap update built from shared peer records, so a
/// snapshot is never copied per session. Field names match
/// [`weft_proto::NetmapUpdate`].
#[derive(Serialize)]
struct NetmapOut<'a> {
    epoch: u64,
    from_version: u64,
    version: u64,
    full: bool,
    upserts: Vec<&'a Peer>,
    removed: &'a [NodeId],
    more: bool,
}

#[derive(Serialize)]
enum ServerMsgOut<'a> {
    Netmap(NetmapOut<'a>),
}

/// Sends `changes` in chunks; returns the version the host now has.
pub(super) async fn send_changes(
    send: &mut quinn::SendStream,
    epoch: u64,
    changes: Changes,
    have: u64,
) -> Result<u64, ConnError> {
    let (from, to, full, upserts, removed) = match changes {
        Changes::None => (have, have, false, Vec::new(), Vec::new()),
        Changes::Full { version, peers } => (0, version, true, peers, Vec::new()),
        Changes::Delta {
            from,
            to,
            upserts,
            removed,
        } => (from, to, false, upserts, removed),
    };
    let mut chunks = upserts.chunks(PEERS_PER_CHUNK).peekable();
    let mut first = true;
    loop {
        let chunk = chunks.next();
        if chunk.is_none() && !first {
            break;
        }
        let more = chunks.peek().is_some();
        let msg = ServerMsgOut::Netmap(NetmapOut {
            epoch,
            from_version: from,
            version: to,
            full,
            upserts: chunk.unwrap_or(&[]).iter().map(|p| p.as_ref()).collect(),
            removed: if more { &[] } else { &removed },
            more,
        });
        let frame = codec::encode(&msg)?;
        send.write_all(&frame).await?;
        first = false;
        if !more {
            break;
        }
    }
    Ok(to)
}

#[allow(clippy::too_many_arguments)]
#[instrument(skip_all, fields(node = %id))]
pub(super) async fn session(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    id: NodeId,
    endpoints: Vec<SocketAddr>,
    have_epoch: u64,
    have_version: u64,
) -> Result<(), ConnError> {
    let Some(me) = shared.read().get(id).cloned() else {
        return Err(refuse_and_close(send, not_registered()).await);
    };
    let welcome = Welcome {
        node_id: id,
        name: me.name.clone(),
        subnet: me.subnet,
        tags: me.tags.clone(),
        pool: shared.pool,
    };
    write_msg(&mut send, &ServerMsg::Welcome(welcome)).await?;

    let sid = shared.next_session.fetch_add(1, Ordering::Relaxed);
    if let Some((_, old)) = shared.sessions().insert(id, (sid, conn.clone())) {
        old.close(
            CLOSE_REPLACED.into(),
            b"replaced by a newer session of this node",
        );
    }
    // The node may have been removed while this session was starting.
    if shared.read().get(id).is_none() {
        conn.close(CLOSE_REMOVED.into(), b"node removed by an admin");
        let mut sessions = shared.sessions();
        if sessions.get(&id).is_some_and(|(s, _)| *s == sid) {
            sessions.remove(&id);
        }
        return Ok(());
    }
    // Subscribe before going online so our own change is not missed.
    let mut published = shared.published.subscribe();
    if shared.write().set_online(id, true, Some(endpoints)) {
        shared.changed.notify_one();
    }
    debug!("session started");

    let reader = {
        let shared = shared.clone();
        async move {
            loop {
                let msg: ClientMsg = match read_frame(&mut recv).await {
                    Ok(m) => m,
                    Err(e) => return e,
                };
                if let ClientMsg::SetEndpoints { endpoints } = msg {
                    if shared.write().update(id, |p| p.endpoints = endpoints) {
                        shared.changed.notify_one();
                    }
                }
            }
        }
    };
    let writer = async {
        let mut epoch = have_epoch;
        let mut version = have_version;
        let mut first = true;
        loop {
            let changes = shared.read().changes_since(epoch, version, id);
            if first || changes != Changes::None {
                version = send_changes(&mut send, shared.epoch, changes, version).await?;
                epoch = shared.epoch;
                first = false;
            }
            if published.changed().await.is_err() {
                return Ok::<(), ConnError>(());
            }
        }
    };
    let result = tokio::select! {
        e = reader => Err(e),
        r = writer => r,
        e = relay(&shared, &conn, id) => Err(e),
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
    if current && shared.write().set_online(id, false, None) {
        shared.changed.notify_one();
    }
    debug!("session ended");
    result
}

/// Forwards this host's QUIC datagrams (relayed WireGuard ciphertext and
/// punch requests) to the destination host's session, with the node id
/// rewritten to the sender. Datagrams for hosts without a session are
/// dropped, like packets to an unreachable address.
async fn relay(shared: &Shared, conn: &quinn::Connection, id: NodeId) -> ConnError {
    loop {
        let bytes = match conn.read_datagram().await {
            Ok(b) => b,
            Err(e) => return ConnError::from(e),
        };
        let Some(dst) = weft_proto::relay::Datagram::node(&bytes) else {
            continue;
        };
        let Some(dst_conn) = shared.sessions().get(&dst).map(|(_, c)| c.clone()) else {
            continue;
        };
        let mut out = bytes.to_vec();
        if weft_proto::relay::Datagram::set_node(&mut out, id) {
            let _ = dst_conn.send_datagram(out.into());
        }
    }
}
