//! Session liveness: when the coordinator was last heard from, and the
//! keep-alives that bound how long a dead coordinator goes unnoticed.
//!
//! On both transports a pinger sends [`ClientMsg::Ping`] at the interval
//! the coordinator's welcome asks for (see [`weft_proto::keepalive_for`]),
//! and the session's reader gives up after
//! [`weft_proto::liveness_deadline`] of silence. On TCP the coordinator
//! answers with a pong; on QUIC its acknowledgement is the answer, and a
//! watcher reads the connection's receive counter to record when
//! something last arrived.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use weft_proto::codec;
use weft_proto::msg::ClientMsg;

use super::transport::FrameWriter;

/// How often the QUIC watcher looks at the receive counter, at the least.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// When the coordinator was last heard from; shared with `weft status`.
#[derive(Clone, Debug)]
pub struct Heard(Arc<Mutex<Instant>>);

impl Heard {
    pub fn now() -> Heard {
        Heard(Arc::new(Mutex::new(Instant::now())))
    }

    pub fn mark(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub fn at(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long ago the coordinator was last heard from.
    pub fn ago(&self) -> Duration {
        self.at().elapsed()
    }
}

/// Aborts a task when dropped: the session's helpers end with it.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Marks `heard` whenever the QUIC connection received a datagram since the
/// last look (keep-alive acknowledgements included), looking four times a
/// keep-alive interval.
pub(crate) fn watch_quic(
    conn: quinn::Connection,
    heard: Heard,
    keepalive: Duration,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut seen = conn.stats().udp_rx.datagrams;
        let mut tick = tokio::time::interval((keepalive / 4).max(WATCH_EVERY));
        loop {
            tick.tick().await;
            if conn.close_reason().is_some() {
                return;
            }
            let now = conn.stats().udp_rx.datagrams;
            if now != seen {
                seen = now;
                heard.mark();
            }
        }
    }))
}

/// Sends a ping every `every` on the session until the write fails.
pub(crate) fn ping(send: FrameWriter, every: Duration) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let Ok(frame) = codec::encode(&ClientMsg::Ping) else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if send.lock().await.write_all(&frame).await.is_err() {
                return;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heard_moves_forward_when_marked() {
        let h = Heard::now();
        let first = h.at();
        std::thread::sleep(Duration::from_millis(5));
        assert!(h.ago() >= Duration::from_millis(5));
        h.mark();
        assert!(h.at() > first);
        assert!(h.ago() < Duration::from_millis(5));
    }
}
