//! How long a change takes to reach every host: from the coalescer waking
//! on it to the last session that had to write an update having written
//! it, observed into `weft_coordinator_netmap_fanout_seconds`.
//!
//! A round starts when the coalescer publishes a version, waiting on every
//! session open then. Each session reports once it has handled the version
//! (written its update, or found nothing in it for its host). The round
//! ends when the last one reports, or when the next round starts (a
//! session that ended meanwhile never reports): then the latest write seen
//! is observed. A round in which no session wrote anything is not
//! observed.
//!
//! The coalescer also waits for a round to have (nearly) ended before it
//! publishes the next version ([`Fanout::settled`]): with many hosts, a
//! burst of changes (a join storm) is then sent at the pace the sessions
//! can take it, in fewer and larger updates, instead of every session
//! working through every version.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use prometheus_client::metrics::histogram::Histogram;

struct Round {
    version: u64,
    changed_at: Instant,
    waiting: usize,
    /// Sessions that may still be waited on when the round counts as
    /// settled: a few slow or vanished hosts do not hold up the rest.
    stragglers: usize,
    last_write: Option<Instant>,
}

pub(super) struct Fanout {
    round: Mutex<Option<Round>>,
    settled: Notify,
    histogram: Histogram,
}

/// A round counts as settled once all but this share of its sessions
/// (1 in 64) handled it.
const STRAGGLER_SHARE: usize = 64;

impl Fanout {
    pub(super) fn new(histogram: Histogram) -> Self {
        Fanout {
            round: Mutex::new(None),
            settled: Notify::new(),
            histogram,
        }
    }

    fn observe(&self, r: &Round) {
        if let Some(w) = r.last_write {
            self.histogram
                .observe(w.duration_since(r.changed_at).as_secs_f64());
        }
    }

    /// Version `version`, caused by a change at `changed_at`, is published
    /// to `sessions` sessions.
    pub(super) fn start(&self, version: u64, changed_at: Instant, sessions: usize) {
        let mut round = self.round.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = round.take() {
            self.observe(&old);
        }
        if sessions > 0 {
            *round = Some(Round {
                version,
                changed_at,
                waiting: sessions,
                stragglers: sessions / STRAGGLER_SHARE,
                last_write: None,
            });
        }
    }

    /// A session handled published `version`; `wrote`: it sent an update.
    pub(super) fn handled(&self, version: u64, wrote: bool) {
        let mut round = self.round.lock().unwrap_or_else(|p| p.into_inner());
        let Some(r) = round.as_mut().filter(|r| r.version == version) else {
            return;
        };
        if wrote {
            r.last_write = Some(Instant::now());
        }
        r.waiting = r.waiting.saturating_sub(1);
        if r.waiting == r.stragglers {
            self.settled.notify_waiters();
        }
        if r.waiting == 0 {
            if let Some(done) = round.take() {
                self.observe(&done);
            }
        }
    }
}

impl Fanout {
    fn is_settled(&self) -> bool {
        let round = self.round.lock().unwrap_or_else(|p| p.into_inner());
        round.as_ref().is_none_or(|r| r.waiting <= r.stragglers)
    }

    /// Returns once the current round is settled (all but a few sessions
    /// handled it), or after `at_most`.
    pub(super) async fn settled(&self, at_most: Duration) {
        let wait = async {
            loop {
                let notified = self.settled.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.is_settled() {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(at_most, wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::histogram::exponential_buckets;

    fn count(h: &Histogram) -> u64 {
        let mut text = String::new();
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register("f", "f", h.clone());
        prometheus_client::encoding::text::encode(&mut text, &reg).expect("encode");
        text.lines()
            .find_map(|l| l.strip_prefix("f_count "))
            .and_then(|n| n.parse().ok())
            .expect("count line")
    }

    #[test]
    fn observes_once_the_last_session_handled_it() {
        let h = Histogram::new(exponential_buckets(0.001, 2.0, 10));
        let f = Fanout::new(h.clone());
        f.start(7, Instant::now(), 2);
        f.handled(7, true);
        assert_eq!(count(&h), 0);
        f.handled(6, true); // an older version: not this round
        assert_eq!(count(&h), 0);
        f.handled(7, false);
        assert_eq!(count(&h), 1);
        f.handled(7, true); // after the round: ignored
        assert_eq!(count(&h), 1);
    }

    #[tokio::test]
    async fn a_round_settles_when_all_but_a_few_sessions_handled_it() {
        let h = Histogram::new(exponential_buckets(0.001, 2.0, 10));
        let f = std::sync::Arc::new(Fanout::new(h));
        f.settled(Duration::from_secs(5)).await; // no round: at once
        f.start(4, Instant::now(), 128);
        let t = Instant::now();
        f.settled(Duration::from_millis(50)).await;
        assert!(
            t.elapsed() >= Duration::from_millis(50),
            "settled with nobody done"
        );
        let waiter = {
            let f = f.clone();
            tokio::spawn(async move { f.settled(Duration::from_secs(30)).await })
        };
        for _ in 0..125 {
            f.handled(4, true);
        }
        assert!(!f.is_settled());
        f.handled(4, false); // 126 of 128: the last two are stragglers
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("settled once 126 of 128 handled it")
            .unwrap();
    }

    #[test]
    fn a_round_cut_short_is_observed_and_a_silent_one_is_not() {
        let h = Histogram::new(exponential_buckets(0.001, 2.0, 10));
        let f = Fanout::new(h.clone());
        f.start(1, Instant::now(), 3);
        f.handled(1, true);
        f.start(2, Instant::now(), 3); // two sessions never reported
        assert_eq!(count(&h), 1);
        f.handled(2, false);
        f.start(3, Instant::now(), 1);
        assert_eq!(count(&h), 1, "nobody wrote version 2");
    }
}
