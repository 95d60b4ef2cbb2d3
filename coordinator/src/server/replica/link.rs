//! Relay between replicas: the authenticated QUIC link and forwarding
//! over it (see the parent module).

use super::*;

/// Forwards a datagram host `from` sent for `dst` (already checked: peers,
/// within `from`'s budget) to the replica holding `dst`'s session. Dropped
/// when there is none or its link is not up yet, like a packet to an
/// unreachable address. Whether it was sent.
pub(in crate::server) fn forward(
    shared: &Arc<Shared>,
    from: NodeId,
    dst: NodeId,
    bytes: &[u8],
) -> bool {
    let Some(r) = replica(shared) else {
        return false;
    };
    let Some(addr) = r.holder(dst) else {
        return false;
    };
    if addr == r.relay_addr {
        return false;
    }
    let conn = {
        let mut links = lock(&r.links);
        match links.get(&addr) {
            Some(LinkSlot { conn: Some(c), .. }) if c.close_reason().is_none() => Some(c.clone()),
            Some(slot) if slot.tried.elapsed() < REDIAL_AFTER => None,
            _ => {
                if links.len() >= MAX_LINKS && !links.contains_key(&addr) {
                    links
                        .retain(|_, s| s.conn.as_ref().is_some_and(|c| c.close_reason().is_none()));
                    if links.len() >= MAX_LINKS {
                        return false;
                    }
                }
                links.insert(
                    addr.clone(),
                    LinkSlot {
                        conn: None,
                        tried: Instant::now(),
                    },
                );
                tokio::spawn(dial(shared.clone(), addr.clone()));
                None
            }
        }
    };
    let Some(conn) = conn else {
        return false;
    };
    let mut out = Vec::with_capacity(8 + bytes.len());
    out.extend_from_slice(&from.0.to_be_bytes());
    out.extend_from_slice(bytes);
    conn.send_datagram(out.into()).is_ok()
}

pub(super) async fn dial(shared: Arc<Shared>, addr: String) {
    let Some(r) = replica(&shared) else { return };
    match tokio::time::timeout(Duration::from_secs(5), dial_link(r, &addr)).await {
        Ok(Ok(conn)) => {
            debug!(%addr, "replica link up");
            if let Some(slot) = lock(&r.links).get_mut(&addr) {
                slot.conn = Some(conn);
            }
        }
        Ok(Err(e)) => debug!(%addr, error = %e, "cannot open a replica link"),
        Err(_) => debug!(%addr, "replica link: no answer"),
    }
}

pub(super) fn link_proof(
    key: &ring::hmac::Key,
    conn: &quinn::Connection,
) -> Option<ring::hmac::Tag> {
    let mut exported = [0u8; 32];
    conn.export_keying_material(&mut exported, EXPORTER_LABEL, b"")
        .ok()?;
    Some(ring::hmac::sign(key, &exported))
}

pub(super) async fn dial_link(r: &Replica, addr: &str) -> Result<quinn::Connection, String> {
    let endpoint = lock(&r.endpoint).clone().ok_or("no endpoint yet")?;
    let sa = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let (mut tls, _) = weft_proto::tls::pinned_client_config(r.pin).map_err(|e| e.to_string())?;
    tls.alpn_protocols = vec![REPLICA_ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            5_000,
        ))))
        // Room for a host's largest relayed datagram plus the sender's id.
        .initial_mtu(1452)
        .datagram_send_buffer_size(1 << 20);
    cfg.transport_config(Arc::new(transport));
    let conn = endpoint
        .connect_with(cfg, sa, weft_proto::SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let proof = link_proof(&r.link_key, &conn).ok_or("no TLS exporter")?;
    let (mut send, _recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(proof.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    Ok(conn)
}

/// Serves a link another replica opened: checks its proof, then delivers
/// the datagrams it forwards to this replica's hosts.
pub(in crate::server) async fn serve_link(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    pass: crate::server::admission::Pass,
) -> Result<(), crate::server::conn::ConnError> {
    use crate::server::conn::ConnError;
    let Some(r) = replica(&shared) else {
        conn.close(1u32.into(), b"not a replica");
        return Ok(());
    };
    let (_send, mut recv) = tokio::time::timeout(crate::server::HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| ConnError::Timeout)??;
    let mut proof = [0u8; 32];
    tokio::time::timeout(crate::server::HELLO_TIMEOUT, recv.read_exact(&mut proof))
        .await
        .map_err(|_| ConnError::Timeout)??;
    drop(pass);
    let mut exported = [0u8; 32];
    let ok = conn
        .export_keying_material(&mut exported, EXPORTER_LABEL, b"")
        .is_ok()
        && ring::hmac::verify(&r.link_key, &exported, &proof).is_ok();
    if !ok {
        warn!(remote = %conn.remote_address(), "replica link refused: it does not hold this coordinator's identity");
        conn.close(1u32.into(), b"not a replica of this coordinator");
        return Ok(());
    }
    debug!(remote = %conn.remote_address(), "replica link accepted");
    // The senders' budgets as their own replica applies them, again here:
    // one per sending host (only hosts that are peers of the destination,
    // so at most one per node).
    let mut budgets: HashMap<NodeId, RelayBudget> = HashMap::new();
    loop {
        let d = conn.read_datagram().await?;
        let Some((from, bytes)) = d.split_first_chunk::<8>() else {
            continue;
        };
        let from = NodeId(u64::from_be_bytes(*from));
        deliver(&shared, &mut budgets, from, bytes.to_vec());
    }
}

/// A datagram from host `from` on another replica, for a host here.
pub(super) fn deliver(
    shared: &Shared,
    budgets: &mut HashMap<NodeId, RelayBudget>,
    from: NodeId,
    mut bytes: Vec<u8>,
) {
    use weft_proto::relay::Datagram;
    let Some(dst) = Datagram::node(&bytes) else {
        return;
    };
    let peers = shared
        .compiled()
        .nodes
        .get(&from)
        .is_some_and(|v| v.sees(dst));
    if !peers {
        return;
    }
    let now = Instant::now();
    let budget = budgets.entry(from).or_insert_with(|| RelayBudget::new(now));
    let allowed = match Datagram::parse(&bytes) {
        Some(Datagram::Punch { .. }) => budget.punch(dst, now),
        Some(Datagram::Relay { .. }) => budget.relay(bytes.len(), now),
        None => false,
    };
    if !allowed {
        return;
    }
    let Some(link) = shared.sessions().get(&dst).map(|(_, l)| l.clone()) else {
        return;
    };
    if Datagram::set_node(&mut bytes, from) {
        link.send_datagram(bytes);
    }
}
