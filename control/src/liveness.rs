//! Session liveness: when the coordinator was last heard from, and the
//! keep-alives that bound how long a dead coordinator goes unnoticed.
//!
//! The coordinator asks for a keep-alive interval
//! ([`weft_proto::keepalive_for`]; it grows with the cluster), and the
//! session's reader gives up after [`weft_proto::liveness_deadline`] of it
//! with nothing heard.
//! - On TCP the host pings ([`ClientMsg::Ping`], answered with a pong) at
//!   the interval asked for now ([`Interval`]: updates move it).
//! - On QUIC the coordinator sends QUIC keep-alives at the interval it
//!   asked for when it accepted the connection, and the host's QUIC stack
//!   answers them: no application wakes for them on either side. A watcher
//!   reads the connection's receive counter to record when something last
//!   arrived, and when a keep-alive is overdue sends an empty datagram,
//!   which a restarted coordinator answers with a stateless reset (see
//!   [`KeptBy`]). To an older coordinator that keeps nothing alive, the host
//!   sends an empty datagram at the interval asked for instead.

use std::sync::atomic::{AtomicU64, Ordering};
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

/// The keep-alive interval the coordinator asks for now, shared by a
/// session (which sets it from every update) and its pinger.
#[derive(Clone, Debug)]
pub(crate) struct Interval(Arc<AtomicU64>);

impl Interval {
    pub fn new(every: Duration) -> Interval {
        let i = Interval(Arc::default());
        i.set(every);
        i
    }

    pub fn set(&self, every: Duration) {
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        self.0.store(ms, Ordering::Relaxed);
    }

    pub fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

/// Who keeps a QUIC connection alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeptBy {
    /// The coordinator, with a QUIC keep-alive every interval: the host
    /// sends an empty datagram only once one is overdue, so a coordinator
    /// that restarted (and lost the connection) answers it with a stateless
    /// reset, and the host notices within about 1.25 intervals.
    Coordinator,
    /// The host: an empty datagram every interval (an older coordinator).
    Host,
}

/// The silence, in intervals, after which a host probes a coordinator that
/// keeps the connection alive.
const OVERDUE: f64 = 1.25;

/// On QUIC: marks `heard` whenever the connection received something since
/// the last look (the coordinator's keep-alives, or the acknowledgements of
/// ours), looking four times an interval `every` (as it is now), and sends
/// empty datagrams as `by` says.
pub(crate) fn keep_quic(
    conn: quinn::Connection,
    heard: Heard,
    every: Interval,
    by: KeptBy,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut seen = conn.stats().udp_rx.datagrams;
        let mut sent = Instant::now();
        loop {
            let k = every.get();
            tokio::time::sleep((k / 4).max(WATCH_EVERY)).await;
            if conn.close_reason().is_some() {
                return;
            }
            let now = conn.stats().udp_rx.datagrams;
            if now != seen {
                seen = now;
                heard.mark();
            }
            let k = every.get();
            let due = match by {
                KeptBy::Host => sent.elapsed() >= k,
                KeptBy::Coordinator => heard.ago() >= k.mul_f64(OVERDUE) && sent.elapsed() >= k / 2,
            };
            if due {
                // Refused only once the connection is closing (or by a
                // peer without datagrams, which no coordinator is).
                let _ = conn.send_datagram(Default::default());
                sent = Instant::now();
            }
        }
    }))
}

/// On TCP: sends a ping every `every` (as it is now) until the write fails.
pub(crate) fn ping(send: FrameWriter, every: Interval) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let Ok(frame) = codec::encode(&ClientMsg::Ping) else {
            return;
        };
        loop {
            tokio::time::sleep(every.get()).await;
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

    #[test]
    fn an_interval_is_read_as_it_was_last_set() {
        let i = Interval::new(Duration::from_secs(1));
        let pinger = i.clone();
        i.set(Duration::from_millis(3_500));
        assert_eq!(pinger.get(), Duration::from_millis(3_500));
        i.set(Duration::ZERO);
        assert_eq!(pinger.get(), Duration::from_millis(1), "never a busy loop");
    }
}
