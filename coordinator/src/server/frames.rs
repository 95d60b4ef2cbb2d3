//! Encode once: a netmap update that many sessions send identically (the
//! same versions, the same peers, the same removals, no view or the same
//! view) is serialized once, and every session writes the same bytes. Under
//! an allow-all policy one endpoint change is one update for every other
//! host: at 10,000 hosts, one encoding instead of 9,999.
//!
//! The key says everything the bytes depend on: `(from, to)` fixes every
//! upserted peer's state (a session reads the registry at version `to`),
//! and the view id fixes filter, services and routes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use weft_proto::NodeId;

/// Frames kept at most; the cache is emptied when it is full (updates of
/// one publication are used within milliseconds, then never again).
const MAX_FRAMES: usize = 256;
/// Updates with more peers than this are encoded per session (full
/// snapshots, chunked, differ per host anyway).
pub(super) const MAX_CACHED_PEERS: usize = 64;

/// What one encoded update frame depends on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct FrameKey {
    pub epoch: u64,
    pub from: u64,
    pub to: u64,
    pub full: bool,
    pub upserts: Vec<NodeId>,
    pub removed: Vec<NodeId>,
    pub view: Option<u64>,
}

#[derive(Default)]
pub(super) struct FrameCache {
    frames: Mutex<HashMap<FrameKey, Arc<[u8]>>>,
}

/// Whether a frame was encoded for this session or shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    Encoded,
    Shared,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Encoded => "encoded",
            Source::Shared => "shared",
        }
    }
}

impl FrameCache {
    /// The frame for `key`, encoding it with `encode` only if no session
    /// did yet.
    pub fn get_or_encode<E>(
        &self,
        key: FrameKey,
        encode: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<(Arc<[u8]>, Source), E> {
        if let Some(f) = self.lock().get(&key) {
            return Ok((f.clone(), Source::Shared));
        }
        // Encoded outside the lock: two sessions may both encode the same
        // frame once; neither waits for the other.
        let frame: Arc<[u8]> = encode()?.into();
        let mut frames = self.lock();
        if frames.len() >= MAX_FRAMES {
            frames.clear();
        }
        frames.insert(key, frame.clone());
        Ok((frame, Source::Encoded))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FrameKey, Arc<[u8]>>> {
        self.frames.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(to: u64, upserts: &[u64]) -> FrameKey {
        FrameKey {
            epoch: 1,
            from: 1,
            to,
            full: false,
            upserts: upserts.iter().copied().map(NodeId).collect(),
            removed: Vec::new(),
            view: None,
        }
    }

    #[test]
    fn the_same_update_is_encoded_once_and_others_apart() {
        let cache = FrameCache::default();
        let mut encodings = 0;
        let mut shared = 0;
        for _ in 0..1000 {
            let (f, source) = cache
                .get_or_encode(key(2, &[7]), || {
                    encodings += 1;
                    Ok::<_, ()>(vec![1, 2, 3])
                })
                .unwrap_or_else(|()| unreachable!());
            assert_eq!(&*f, &[1, 2, 3]);
            shared += usize::from(source == Source::Shared);
        }
        assert_eq!((encodings, shared), (1, 999));
        let (other, _) = cache
            .get_or_encode(key(2, &[8]), || Ok::<_, ()>(vec![9]))
            .unwrap_or_else(|()| unreachable!());
        assert_eq!(&*other, &[9]);
        // Bounded: old frames go when it is full.
        for to in 0..(MAX_FRAMES as u64 * 3) {
            let _ = cache.get_or_encode(key(to + 10, &[]), || Ok::<_, ()>(vec![0]));
        }
        assert!(cache.lock().len() <= MAX_FRAMES);
    }
}
