//! How fresh the regional cache is, proved rather than assumed.
//!
//! The feed keeps the cache up to date to its applied version, but applying changes is not
//! being current: a replaying feed, or one served by a central follower cut off from its
//! leader, applies old changes. So the tier asks the central node it follows for its read
//! index (`ReadIndex`: a version every write acknowledged before some instant is at or
//! below). Once the feed has applied that version, the cache is fresh as of that instant.
//! The cache's age is how long ago that was.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How far the cache is known to be applied, and how fresh that is proved to be.
pub struct FeedState {
    applied: watch::Sender<u64>,
    proof: Mutex<Proofs>,
}

#[derive(Default)]
struct Proofs {
    /// The cache reflects every write acknowledged before this instant.
    as_of: Option<Instant>,
    /// Proofs whose version the feed has not reached yet, oldest first.
    waiting: VecDeque<(u64, Instant)>,
}

impl Default for FeedState {
    fn default() -> Self {
        FeedState { applied: watch::Sender::new(0), proof: Mutex::default() }
    }
}

impl FeedState {
    fn lock(&self) -> MutexGuard<'_, Proofs> {
        self.proof.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last central version whose changes are in the cache.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// The instant the cache is fresh as of, if it was ever proved.
    pub fn as_of(&self) -> Option<Instant> {
        self.lock().as_of
    }

    /// How old the cache may be.
    pub fn age(&self) -> Option<Duration> {
        self.as_of().map(|a| a.elapsed())
    }

    /// Waits up to `max` for the feed to reach `version`.
    pub async fn reaches(&self, version: u64, max: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        let reached = matches!(tokio::time::timeout(max, rx.wait_for(|v| *v >= version)).await, Ok(Ok(_)));
        reached
    }

    /// A central node proved that every write acknowledged before `at` is at or below `index`.
    pub fn prove(&self, index: u64, at: Instant) {
        let applied = self.applied();
        let mut p = self.lock();
        if index <= applied {
            p.as_of = p.as_of.max(Some(at));
        } else {
            p.waiting.push_back((index, at));
        }
    }

    /// The feed applied everything up to `version`.
    pub fn advance(&self, version: u64) {
        self.applied.send_if_modified(|v| {
            let newer = version > *v;
            *v = (*v).max(version);
            newer
        });
        let mut p = self.lock();
        while let Some(&(index, at)) = p.waiting.front() {
            if index > version {
                break;
            }
            p.as_of = p.as_of.max(Some(at));
            p.waiting.pop_front();
        }
    }

    /// A fresh start at `version`: nothing from before is proved any more.
    pub fn restart(&self, version: u64) {
        *self.lock() = Proofs::default();
        self.applied.send_replace(version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_counts_only_once_the_feed_has_reached_its_version() {
        let f = FeedState::default();
        f.advance(5);
        let t0 = Instant::now();
        f.prove(8, t0);
        assert_eq!(f.as_of(), None, "the feed is behind the proof: replaying is not being current");
        f.advance(7);
        assert_eq!(f.as_of(), None);
        f.advance(8);
        assert_eq!(f.as_of(), Some(t0));
        let t1 = t0 + Duration::from_millis(10);
        f.prove(3, t1);
        assert_eq!(f.as_of(), Some(t1), "an older version proved later moves the instant on");
        f.restart(100);
        assert_eq!((f.as_of(), f.applied()), (None, 100));
    }
}
