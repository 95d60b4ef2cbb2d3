//! What a host session runs on: a QUIC connection, or (where a host's UDP is
//! blocked) TLS over TCP. The session code sees one [`Link`] to close the
//! session and to push datagrams (relayed WireGuard packets, punches), and a
//! byte stream pair for its frames.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};
use weft_proto::queue::ByteBudget;

/// Datagrams queued for a TCP session before new ones are dropped (a slow
/// host must not make the coordinator buffer without bound).
pub(super) const TCP_DATAGRAM_QUEUE: usize = 1024;
/// Bytes of datagrams queued for a TCP session, at most.
pub(super) const TCP_DATAGRAM_BYTES: usize = 1 << 20;
/// The QUIC datagram send buffer of a session (see `server_config`).
pub(super) const DATAGRAM_SEND_BUFFER: usize = 1 << 20;

/// One host's connection, as other sessions and admin commands see it.
#[derive(Clone)]
pub(super) enum Link {
    /// And the interval the coordinator keeps it alive at.
    Quic(quinn::Connection, Duration),
    Tcp(TcpLink),
}

/// The handles into a TCP session's writer.
#[derive(Clone)]
pub(super) struct TcpLink {
    pub datagrams: mpsc::Sender<Vec<u8>>,
    /// What the queued datagrams hold, shared with the inbox.
    pub budget: ByteBudget,
    pub close: std::sync::Arc<watch::Sender<Option<u32>>>,
}

/// The receiving ends a TCP session's writer listens on.
pub(super) struct TcpInbox {
    pub datagrams: mpsc::Receiver<Vec<u8>>,
    /// Release each datagram's bytes here once taken.
    pub budget: ByteBudget,
    pub close: watch::Receiver<Option<u32>>,
}

/// A new TCP link and the inbox its session reads.
pub(super) fn tcp_link() -> (Link, TcpInbox) {
    let (dtx, drx) = mpsc::channel(TCP_DATAGRAM_QUEUE);
    let (ctx, crx) = watch::channel(None);
    let budget = ByteBudget::new(TCP_DATAGRAM_BYTES);
    (
        Link::Tcp(TcpLink {
            datagrams: dtx,
            budget: budget.clone(),
            close: std::sync::Arc::new(ctx),
        }),
        TcpInbox {
            datagrams: drx,
            budget,
            close: crx,
        },
    )
}

impl Link {
    /// Ends the session with `code` (see `CLOSE_REMOVED`, `CLOSE_REPLACED`).
    pub(super) fn close(&self, code: u32, reason: &[u8]) {
        match self {
            Link::Quic(c, _) => c.close(code.into(), reason),
            Link::Tcp(t) => {
                let _ = t.close.send(Some(code));
            }
        }
    }

    /// Bytes of datagrams queued for the host and not yet sent.
    pub(super) fn queued_bytes(&self) -> usize {
        match self {
            Link::Quic(c, _) => DATAGRAM_SEND_BUFFER.saturating_sub(c.datagram_send_buffer_space()),
            Link::Tcp(t) => t.budget.queued(),
        }
    }

    /// Queues a datagram to the host; dropped when the link is congested.
    pub(super) fn send_datagram(&self, bytes: Vec<u8>) {
        match self {
            Link::Quic(c, _) => {
                let _ = c.send_datagram(bytes.into());
            }
            Link::Tcp(t) => {
                let len = bytes.len();
                if t.budget.try_reserve(len) && t.datagrams.try_send(bytes).is_err() {
                    t.budget.release(len);
                }
            }
        }
    }
}

/// The send half of a session's frame stream.
pub(super) trait FrameSink: AsyncWrite + Unpin + Send {
    /// Ends the stream and waits (briefly) until the peer has read it.
    fn finish(self) -> impl Future<Output = ()> + Send;
}

impl FrameSink for quinn::SendStream {
    async fn finish(mut self) {
        let _ = quinn::SendStream::finish(&mut self);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.stopped()).await;
    }
}

impl<S: AsyncWrite + Unpin + Send> FrameSink for tokio::io::WriteHalf<S> {
    async fn finish(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.shutdown()).await;
    }
}
