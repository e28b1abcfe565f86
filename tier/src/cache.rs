//! The versioned, byte-bounded store of copies (moka underneath).
//!
//! Versions settle every race between pulls and pushes: a copy is only ever replaced by one
//! at least as new. Entries leave memory when their holding time ends (stale-if-error
//! included) or when the byte bound needs room. The most read copies are also answered from
//! a small front (`front`), which every change below keeps in step.

use crate::copy::{Copy, Value};
use crate::front::{Front, KeyHasher};
use moka::ops::compute::Op;
use moka::sync::Cache;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A namespace id and a key.
pub type CacheKey = (String, String);

/// What `offer` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Stored: there was no copy, or an older (or equally old) one.
    Stored,
    /// Ignored: the cache already holds a newer version.
    Older,
}

/// The copies one tier holds.
pub struct VersionedCache {
    inner: Cache<CacheKey, Arc<Copy>, KeyHasher>,
    front: Front<CacheKey>,
}

/// The front's share of the cache's bytes: its copies are mostly the cache's own, but one the
/// cache evicted stays in front until it is pushed out.
const FRONT_SHARE: u64 = 64;

struct HoldUntil;

impl moka::Expiry<CacheKey, Arc<Copy>> for HoldUntil {
    fn expire_after_create(&self, _: &CacheKey, c: &Arc<Copy>, now: Instant) -> Option<Duration> {
        Some(c.hold_until.saturating_duration_since(now))
    }

    fn expire_after_update(&self, _: &CacheKey, c: &Arc<Copy>, now: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(c.hold_until.saturating_duration_since(now))
    }
}

/// Bytes a copy costs, with its key.
fn weight(key: &CacheKey, c: &Arc<Copy>) -> u32 {
    c.weight(key.0.len() + key.1.len())
}

impl VersionedCache {
    /// A cache holding at most `max_bytes` of keys, values and metadata.
    pub fn new(max_bytes: u64) -> Self {
        let inner = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(weight)
            .expire_after(HoldUntil)
            .support_invalidation_closures()
            .build_with_hasher(KeyHasher::default());
        VersionedCache { inner, front: Front::new(max_bytes / FRONT_SHARE) }
    }

    /// The copy held for `key`.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<Copy>> {
        match self.front.get(key) {
            Ok((c, touch)) => {
                // The cache dropped it (evicted, expired): so does the front.
                if touch && self.inner.get(key).is_none_or(|held| !Arc::ptr_eq(&held, &c)) {
                    self.front.forget(key);
                }
                Some(c)
            }
            Err(ticket) => {
                let c = self.inner.get(key)?;
                self.front.offer(key, ticket, &c, u64::from(weight(key, &c)));
                Some(c)
            }
        }
    }

    /// Every change to one key goes through here: the cache first, then the front, so that
    /// once a change returns, no read answers what it replaced (see `front`).
    fn change(&self, key: CacheKey, f: impl FnOnce(Option<&Arc<Copy>>) -> Op<Arc<Copy>>) {
        self.inner.entry(key.clone()).and_compute_with(|held| f(held.as_ref().map(|h| h.value())));
        self.front.forget(&key);
    }

    /// Stores `c` unless a newer version is already held.
    pub fn offer(&self, key: CacheKey, c: Arc<Copy>) -> Offer {
        let mut outcome = Offer::Stored;
        self.change(key, |held| match held {
            Some(h) if h.version > c.version => {
                outcome = Offer::Older;
                Op::Nop
            }
            _ => Op::Put(c),
        });
        outcome
    }

    /// Stores `c` unless a newer version is held, and returns the newest copy held: a
    /// fetch that lost a race with a push answers with the push's newer copy.
    pub fn keep(&self, key: CacheKey, c: Arc<Copy>) -> Arc<Copy> {
        let mut newest = c.clone();
        self.change(key, |held| match held {
            Some(h) if h.version > c.version => {
                newest = h.clone();
                Op::Nop
            }
            _ => Op::Put(c),
        });
        newest
    }

    /// Replaces a held copy with a newer version in place; `None` when no copy is held.
    pub fn replace_held(&self, key: CacheKey, value: Option<Value>, version: u64) -> Option<Offer> {
        let mut outcome = None;
        // Held in front but no longer in the cache, the copy must still not outlive the
        // change: `change` drops it from the front either way.
        self.change(key, |held| match held {
            None => Op::Nop,
            Some(h) if h.version >= version => {
                outcome = Some(Offer::Older);
                Op::Nop
            }
            Some(h) => {
                outcome = Some(Offer::Stored);
                Op::Put(Arc::new(h.replaced_by(value, version)))
            }
        });
        outcome
    }

    /// Drops a held copy older than `version` (the key changed to a value not known here).
    pub fn remove_older(&self, key: CacheKey, version: u64) -> bool {
        let mut removed = false;
        self.change(key, |held| match held {
            Some(h) if h.version < version => {
                removed = true;
                Op::Remove
            }
            _ => Op::Nop,
        });
        removed
    }

    /// Drops every entry of a namespace (it was deleted).
    pub fn remove_namespace(&self, namespace_id: &str) {
        let ns = namespace_id.to_string();
        if self.inner.invalidate_entries_if(move |k, _| k.0 == ns).is_err() {
            self.inner.invalidate_all();
        }
        self.front.clear();
    }

    pub fn clear(&self) {
        self.inner.invalidate_all();
        self.front.clear();
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.run_pending_tasks();
        self.inner.entry_count()
    }

    /// Bytes held, as the weigher counts them.
    pub fn weighted_size(&self) -> u64 {
        self.inner.run_pending_tasks();
        self.inner.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn key(k: &str) -> CacheKey {
        ("ns".into(), k.into())
    }

    fn copy(s: &str, version: u64) -> Arc<Copy> {
        let v = Some(Value { bytes: Bytes::from(s.to_string()), metadata_json: None, expiration: None });
        let min = Duration::from_secs(60);
        Arc::new(Copy::new(v, version, Instant::now(), min, min, 0))
    }

    #[test]
    fn only_newer_versions_replace() {
        let c = VersionedCache::new(1 << 20);
        assert_eq!(c.offer(key("a"), copy("v5", 5)), Offer::Stored);
        assert_eq!(c.offer(key("a"), copy("v3", 3)), Offer::Older);
        assert_eq!(c.keep(key("a"), copy("v4", 4)).version, 5, "keep answers with the newer held copy");
        assert_eq!(c.get(&key("a")).unwrap().version, 5);
        assert_eq!(c.replace_held(key("a"), None, 4), Some(Offer::Older));
        assert_eq!(c.replace_held(key("a"), None, 7), Some(Offer::Stored));
        let held = c.get(&key("a")).unwrap();
        assert_eq!((held.version, held.value.is_none()), (7, true));
        assert_eq!(c.replace_held(key("b"), None, 9), None, "pushes do not fill keys nobody read");
        assert!(c.get(&key("b")).is_none());
        assert!(!c.remove_older(key("a"), 7), "a copy as new as the change stays");
        assert!(c.remove_older(key("a"), 8));
        assert!(c.get(&key("a")).is_none());
    }

    #[test]
    fn the_front_never_answers_a_copy_older_than_the_cache_would() {
        let c = VersionedCache::new(64 << 20);
        c.offer(key("a"), copy("v1", 1));
        // Read often enough to enter the front.
        for _ in 0..64 {
            assert_eq!(c.get(&key("a")).map(|x| x.version), Some(1));
        }
        assert!(!c.front.is_empty());
        c.offer(key("a"), copy("v2", 2));
        assert_eq!(c.get(&key("a")).map(|x| x.version), Some(2), "a newer copy replaces the one in front");
        for _ in 0..64 {
            c.get(&key("a"));
        }
        // The cache evicts it; a change then comes for a key it no longer holds.
        c.inner.invalidate(&key("a"));
        assert_eq!(c.replace_held(key("a"), None, 3), None);
        assert!(c.get(&key("a")).is_none(), "the front dropped it with the change");
        // A key the cache evicts leaves the front within a few reads.
        c.offer(key("c"), copy("v1", 1));
        for _ in 0..64 {
            c.get(&key("c"));
        }
        c.inner.invalidate(&key("c"));
        assert!((0..=16).any(|_| c.get(&key("c")).is_none()), "the front followed the eviction");
        c.offer(key("b"), copy("v1", 1));
        for _ in 0..64 {
            c.get(&key("b"));
        }
        c.remove_namespace("ns");
        c.inner.run_pending_tasks();
        assert!(c.get(&key("b")).is_none(), "a deleted namespace leaves the front too");
    }

    #[test]
    fn namespace_removal() {
        let c = VersionedCache::new(1 << 20);
        c.offer(key("a"), copy("1", 1));
        c.offer(("other".into(), "a".into()), copy("1", 1));
        c.remove_namespace("ns");
        c.inner.run_pending_tasks();
        assert!(c.get(&key("a")).is_none());
        assert!(c.get(&("other".into(), "a".into())).is_some());
    }
}
