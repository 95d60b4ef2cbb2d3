//! The cached netmap (`netmap.json`), written behind the netmap in force:
//! soon after a whole new map, and at most once per [`SAVE_EVERY`] while
//! deltas arrive, off the control loop. One write is the whole map as
//! JSON plus an fsync (megabytes at 10,000 peers): far too much for every
//! delta. The cache need only be recent enough to come back up without
//! the coordinator; a host that resumes from an older version gets the
//! missing deltas from the coordinator.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use weft_proto::Netmap;

use super::state::StateDir;

/// The longest the file lags behind the netmap in force.
pub const SAVE_EVERY: Duration = Duration::from_secs(2);
/// How soon a whole new map is written.
const SAVE_WHOLE: Duration = Duration::from_millis(50);
/// Wait before trying again while the previous write is still running.
const BUSY_RETRY: Duration = Duration::from_millis(100);

/// Schedules and runs the writes, one at a time.
pub struct NetmapCache {
    state: StateDir,
    /// When the netmap in force, newer than the file, is to be written.
    due: Option<Instant>,
    writing: Option<JoinHandle<()>>,
}

impl NetmapCache {
    pub fn new(state: StateDir) -> NetmapCache {
        NetmapCache {
            state,
            due: None,
            writing: None,
        }
    }

    /// The netmap in force changed: `whole` for a new map, written soon,
    /// else a delta, written within [`SAVE_EVERY`].
    pub fn changed(&mut self, whole: bool) {
        let now = Instant::now();
        let by = now + if whole { SAVE_WHOLE } else { SAVE_EVERY };
        self.due = Some(self.due.map_or(by, |d| d.min(by)));
    }

    /// When [`NetmapCache::write`] is to be called next.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Writes `map` (the netmap in force) in the background, unless the
    /// previous write is still running: then it tries again shortly.
    pub fn write(&mut self, map: Netmap) {
        if self.writing.as_ref().is_some_and(|w| !w.is_finished()) {
            self.due = Some(Instant::now() + BUSY_RETRY);
            return;
        }
        self.due = None;
        let state = self.state.clone();
        self.writing = Some(tokio::task::spawn_blocking(move || save(&state, &map)));
    }

    /// Waits for a write under way, then writes `map` if it is newer than
    /// the file and `save` (the agent stops; a node that left saves
    /// nothing).
    pub async fn flush(&mut self, map: Netmap, save: bool) {
        if let Some(w) = self.writing.take() {
            let _ = w.await;
        }
        if save && self.due.take().is_some() {
            let state = self.state.clone();
            let _ = tokio::task::spawn_blocking(move || self::save(&state, &map)).await;
        }
    }
}

fn save(state: &StateDir, map: &Netmap) {
    if let Err(e) = state.save_netmap(map) {
        tracing::warn!(error = %e, "cannot cache the netmap; a restart without the coordinator will start with an older one");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::NetmapUpdate;

    fn map(version: u64) -> Netmap {
        let mut m = Netmap::new();
        m.apply(NetmapUpdate::empty(1, 0, version, true)).unwrap();
        m
    }

    #[tokio::test]
    async fn deltas_are_written_together_and_a_stop_writes_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut cache = NetmapCache::new(state.clone());
        assert_eq!(cache.due(), None);
        let t0 = Instant::now();
        cache.changed(false);
        let first = cache.due().unwrap();
        cache.changed(false);
        assert_eq!(cache.due(), Some(first), "deltas wait together");
        assert!(first >= t0 + SAVE_EVERY && first <= Instant::now() + SAVE_EVERY);
        cache.changed(true);
        let whole = cache.due().unwrap();
        assert!(
            whole <= Instant::now() + SAVE_WHOLE,
            "a whole map does not wait"
        );
        cache.write(map(3));
        assert_eq!(cache.due(), None);
        cache.flush(map(4), true).await;
        let cached = state.cached_netmap().unwrap().unwrap();
        assert_eq!(cached.version(), 3, "nothing newer was due");
        cache.changed(false);
        cache.flush(map(5), true).await;
        assert_eq!(state.cached_netmap().unwrap().unwrap().version(), 5);
        cache.changed(false);
        cache.flush(map(6), false).await;
        assert_eq!(
            state.cached_netmap().unwrap().unwrap().version(),
            5,
            "a node that left writes nothing"
        );
    }
}
