//! How a session reaches the coordinator: QUIC, or TLS over TCP where UDP is
//! blocked (same port, same pinned TLS, same frames). Datagrams (the relay
//! and punches) are QUIC datagrams on QUIC, and frames on TCP.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{mpsc, Mutex};
use weft_proto::codec;
use weft_proto::msg::ClientMsg;
use weft_proto::queue::ByteBudget;

/// The send half of a session's frame stream, shared with endpoint reports
/// and (on TCP) datagram frames.
pub(crate) type FrameWriter = Arc<Mutex<Box<dyn AsyncWrite + Send + Sync + Unpin>>>;
/// The receive half of a session's frame stream.
pub(crate) type FrameReader = Box<dyn AsyncRead + Send + Sync + Unpin>;

/// Biggest relayed datagram frame on TCP (a whole WireGuard datagram fits).
const TCP_MAX_DATAGRAM: usize = 65_535;
/// Datagrams queued for the TCP writer before new ones are dropped.
const TCP_DATAGRAM_QUEUE: usize = 1024;
/// Bytes of datagrams queued either way on a TCP session, at most.
pub(crate) const TCP_DATAGRAM_BYTES: usize = 1 << 20;

/// Sends datagrams to the coordinator on a session; cheap to clone, usable
/// from any thread (the data plane's relay sink calls it).
#[derive(Clone)]
pub enum DatagramLink {
    Quic(quinn::Connection),
    Tcp(mpsc::Sender<Vec<u8>>, ByteBudget),
}

impl DatagramLink {
    /// Queues a datagram; dropped when congested, like a lost packet.
    pub fn send(&self, bytes: Vec<u8>) {
        match self {
            DatagramLink::Quic(c) => {
                let _ = c.send_datagram(bytes.into());
            }
            DatagramLink::Tcp(tx, budget) => {
                let len = bytes.len();
                if budget.try_reserve(len) && tx.try_send(bytes).is_err() {
                    budget.release(len);
                }
            }
        }
    }

    /// The largest datagram that can be sent now.
    pub fn max_size(&self) -> Option<usize> {
        match self {
            DatagramLink::Quic(c) => c.max_datagram_size(),
            DatagramLink::Tcp(..) => Some(TCP_MAX_DATAGRAM),
        }
    }

    /// The control connection's round-trip time, where the transport knows it.
    pub fn rtt(&self) -> Option<Duration> {
        match self {
            DatagramLink::Quic(c) => Some(c.rtt()),
            DatagramLink::Tcp(..) => None,
        }
    }

    /// "quic" or "tcp".
    pub fn transport(&self) -> &'static str {
        match self {
            DatagramLink::Quic(_) => "quic",
            DatagramLink::Tcp(..) => "tcp",
        }
    }
}

/// Datagrams from the coordinator on a session.
pub enum DatagramSource {
    Quic(quinn::Connection),
    Tcp(mpsc::Receiver<Vec<u8>>, ByteBudget),
}

impl DatagramSource {
    /// The next datagram; `None` once the session is over.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        match self {
            DatagramSource::Quic(c) => c.read_datagram().await.ok().map(|b| b.to_vec()),
            DatagramSource::Tcp(rx, budget) => {
                let d = rx.recv().await?;
                budget.release(d.len());
                Some(d)
            }
        }
    }
}

/// Starts the task that writes queued datagrams as frames on a TCP session;
/// it ends when the link is dropped or a write fails.
pub(crate) fn tcp_datagram_writer(writer: FrameWriter) -> DatagramLink {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(TCP_DATAGRAM_QUEUE);
    let budget = ByteBudget::new(TCP_DATAGRAM_BYTES);
    let release = budget.clone();
    tokio::spawn(async move {
        while let Some(d) = rx.recv().await {
            release.release(d.len());
            let Ok(frame) = codec::encode(&ClientMsg::Datagram(serde_bytes::ByteBuf::from(d)))
            else {
                continue;
            };
            if writer.lock().await.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    DatagramLink::Tcp(tx, budget)
}
