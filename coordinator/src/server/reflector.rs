//! The reflector: tells a host which address its WireGuard socket appears
//! to come from (its public mapping), so peers behind other NATs can try it.
//! It listens on the two UDP ports after the coordinator's QUIC port; asking
//! both from one socket shows whether the host's NAT keeps one mapping for
//! every destination (endpoint-independent) or not.

use std::net::SocketAddr;

use prometheus_client::metrics::counter::Counter;
use tokio::net::UdpSocket;
use tracing::{debug, warn};
use weft_proto::disco::{DiscoMsg, REFLECT_REQUEST_LEN};

/// How many reflector ports follow the QUIC port.
pub const PORTS: u16 = 2;

/// Binds the reflector ports after `quic` (skipped when `quic` has port 0:
/// an ephemeral test coordinator has no well-known reflector).
pub fn spawn(quic: SocketAddr, answered: Counter) -> Vec<tokio::task::JoinHandle<()>> {
    if quic.port() == 0 {
        return Vec::new();
    }
    (1..=PORTS)
        .filter_map(|i| {
            let addr = SocketAddr::new(quic.ip(), quic.port().checked_add(i)?);
            let std = match std::net::UdpSocket::bind(addr)
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
            {
                Ok(s) => s,
                Err(e) => {
                    warn!(%addr, error = %e, "reflector port unavailable; hosts behind NAT will rely on the relay");
                    return None;
                }
            };
            let sock = UdpSocket::from_std(std).ok()?;
            Some(tokio::spawn(serve(sock, answered.clone())))
        })
        .collect()
}

async fn serve(sock: UdpSocket, answered: Counter) {
    let mut buf = [0u8; 64];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "reflector receive failed");
                continue;
            }
        };
        // No amplification: only a request padded to at least the reply's
        // size is answered.
        if n < REFLECT_REQUEST_LEN {
            continue;
        }
        let Ok(msg) = DiscoMsg::decode(&buf[..n]) else {
            continue;
        };
        if let Some(DiscoMsg::ReflectRequest { txid }) = msg.unauthenticated() {
            let reply = DiscoMsg::ReflectReply {
                txid,
                observed: from,
            }
            .encode(None);
            if sock.send_to(&reply, from).await.is_ok() {
                answered.inc();
            }
        }
    }
}
