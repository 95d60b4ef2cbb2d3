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

use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;

struct Round {
    version: u64,
    changed_at: Instant,
    waiting: usize,
    last_write: Option<Instant>,
}

pub(super) struct Fanout {
    round: Mutex<Option<Round>>,
    histogram: Histogram,
}

impl Fanout {
    pub(super) fn new(histogram: Histogram) -> Self {
        Fanout {
            round: Mutex::new(None),
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
        if r.waiting == 0 {
            if let Some(done) = round.take() {
                self.observe(&done);
            }
        }
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
