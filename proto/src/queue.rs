//! A byte budget for a queue: entries are admitted while the bytes they
//! hold together stay under a limit, so a queue of datagrams is bounded in
//! memory, not only in entries. Shared by the sender and the receiver of a
//! channel (atomics only; no I/O, no async).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes queued and the most allowed. Cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct ByteBudget {
    queued: Arc<AtomicUsize>,
    max: usize,
}

impl ByteBudget {
    pub fn new(max: usize) -> ByteBudget {
        ByteBudget {
            queued: Arc::default(),
            max,
        }
    }

    /// Reserves `len` bytes if they fit; the caller then queues the entry
    /// (and calls [`release`](Self::release) if queueing fails after all).
    pub fn try_reserve(&self, len: usize) -> bool {
        let mut cur = self.queued.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(len).filter(|n| *n <= self.max) else {
                return false;
            };
            match self
                .queued
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Gives back `len` bytes (an entry left the queue).
    pub fn release(&self, len: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(len))
            });
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_until_full_and_again_after_release() {
        let b = ByteBudget::new(100);
        assert!(b.try_reserve(60));
        assert!(!b.try_reserve(41));
        assert!(b.try_reserve(40));
        assert!(!b.try_reserve(1));
        b.release(60);
        assert!(b.try_reserve(60));
        assert_eq!(b.queued(), 100);
        assert!(!b.try_reserve(usize::MAX));
    }
}
