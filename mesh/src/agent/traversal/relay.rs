//! The host end of the relay: WireGuard datagrams for peers without a direct
//! path go to the coordinator as QUIC datagrams on the session connection
//! (fragmented to fit), and relayed datagrams coming back are reassembled and
//! fed to the data plane. Punch requests travel the same way.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use tokio::sync::mpsc;
use weft_proto::relay::{fragment, Datagram, Reassembler};
use weft_proto::NodeId;

use crate::control::{DatagramLink, DatagramSource};
use crate::dataplane::DeviceHandle;

/// The current session's datagram link, shared with the data plane's relay
/// sink.
#[derive(Clone, Default)]
pub struct RelayLink {
    conn: Arc<ArcSwapOption<DatagramLink>>,
    next_id: Arc<AtomicU16>,
}

impl RelayLink {
    pub fn set(&self, conn: Option<DatagramLink>) {
        self.conn.store(conn.map(Arc::new));
    }

    pub fn connection(&self) -> Option<Arc<DatagramLink>> {
        self.conn.load_full()
    }

    /// Sends one datagram (WireGuard or disco) to node `node` through the
    /// coordinator; dropped when there is no connection, like a lost packet.
    pub fn send(&self, node: u64, packet: &[u8]) {
        let Some(conn) = self.conn.load_full() else {
            return;
        };
        let Some(max) = conn.max_size() else {
            return;
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        for frag in fragment(NodeId(node), id, packet, max) {
            conn.send(frag);
        }
    }

    /// Asks node `node` to probe us now.
    pub fn punch(&self, node: NodeId) {
        if let Some(conn) = self.conn.load_full() {
            conn.send(Datagram::Punch { node }.encode());
        }
    }
}

/// Reads the session connection's datagrams until it closes: relayed
/// datagrams go to the data plane (reassembled within the bounds of
/// [`Reassembler`]), punch requests to `punches`.
pub async fn receive(
    mut source: DatagramSource,
    handle: DeviceHandle,
    punches: mpsc::Sender<NodeId>,
) {
    let mut reassembly = Reassembler::default();
    while let Some(bytes) = source.next().await {
        match Datagram::parse(&bytes) {
            // Unfragmented: no copy.
            Some(Datagram::Relay {
                node,
                count: 1,
                payload,
                ..
            }) => handle.inject_relayed(node.0, payload),
            Some(Datagram::Relay {
                node,
                id,
                index,
                count,
                payload,
            }) => {
                if let Some(packet) =
                    reassembly.push(node, id, index, count, payload, Instant::now())
                {
                    handle.inject_relayed(node.0, &packet);
                }
            }
            Some(Datagram::Punch { node }) => {
                let _ = punches.try_send(node);
            }
            None => {}
        }
    }
}
