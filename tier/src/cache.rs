//! The versioned, byte-bounded store of copies (moka underneath).
//!
//! Versions settle every race between pulls and pushes: a copy is only ever replaced by one
//! at least as new. Entries leave memory when their holding time ends (stale-if-error
//! included) or when the byte bound needs room; the place a copy leaves is refilled only by
//! one reflecting at least what it did (`Floors`), so a key held here never goes back in
//! version, evictions included. The most read copies are also answered from a small front
//! (`front`), which every change below keeps in step.

use crate::copy::{Copy, Value};
use crate::front::{Front, KeyHasher};
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::sync::Cache;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
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
    floors: Floors,
    /// Copies dropped to make room (not those whose holding time ended).
    evicted: Arc<AtomicU64>,
}

/// The front's share of the cache's bytes: its copies are mostly the cache's own, but one the
/// cache evicted stays in front until it is pushed out.
const FRONT_SHARE: u64 = 64;

/// Cache bytes per floor slot: the floors take 8 bytes per KiB of cache, beyond its bound.
const BYTES_PER_FLOOR: u64 = 1024;

/// Per slot of keys (spread by hash), the newest change position any copy put there
/// reflected, or any answer this tier gave there without a copy (`raise`). A place that
/// empties (an eviction, the end of a holding time, a drop) may have answered what left
/// it, so it is refilled only by a copy reflecting at least its slot's floor; a fetch asks
/// for at least that floor. Keys sharing a slot only make this stricter: now and then a
/// fill is not kept, or a fetch asks for a later position than its key needed.
struct Floors {
    slots: Box<[AtomicU64]>,
    hasher: KeyHasher,
}

impl Floors {
    fn new(max_bytes: u64) -> Self {
        let n = usize::try_from(max_bytes / BYTES_PER_FLOOR).unwrap_or(usize::MAX).clamp(64, 1 << 20);
        let slots = (0..n.next_power_of_two()).map(|_| AtomicU64::new(0)).collect();
        Floors { slots, hasher: KeyHasher::default() }
    }

    /// No floors: every floor is 0.
    fn none() -> Self {
        Floors { slots: Box::new([]), hasher: KeyHasher::default() }
    }

    fn slot(&self, key: &CacheKey) -> Option<&AtomicU64> {
        // The slot count is a power of two; the low bits of the hash pick one.
        let mask = self.slots.len().checked_sub(1)?;
        self.slots.get(self.hasher.hash_one(key) as usize & mask)
    }

    fn get(&self, key: &CacheKey) -> u64 {
        self.slot(key).map_or(0, |s| s.load(Ordering::Acquire))
    }

    fn raise(&self, key: &CacheKey, position: u64) {
        if let Some(s) = self.slot(key) {
            s.fetch_max(position, Ordering::AcqRel);
        }
    }
}

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
        Self::with_floors(max_bytes, Floors::new(max_bytes))
    }

    /// A store of copies kept aside, answered only once they enter a cache with floors (the
    /// edge's refreshed copies): floors here would only drop some of them for nothing.
    pub fn aside(max_bytes: u64) -> Self {
        Self::with_floors(max_bytes, Floors::none())
    }

    fn with_floors(max_bytes: u64, floors: Floors) -> Self {
        let evicted = Arc::new(AtomicU64::new(0));
        let counter = evicted.clone();
        let inner = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(weight)
            .expire_after(HoldUntil)
            .support_invalidation_closures()
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build_with_hasher(KeyHasher::default());
        VersionedCache { inner, front: Front::new(max_bytes / FRONT_SHARE), floors, evicted }
    }

    /// The change position a copy must reflect to fill `key`'s place when it is empty, and
    /// a fetch of `key` must ask for at least.
    pub fn floor(&self, key: &CacheKey) -> u64 {
        self.floors.get(key)
    }

    /// Records an answer about `key` at change position `position` that no copy here holds
    /// (an acknowledged write that was not kept, say): no later copy or fetch goes behind it.
    pub fn raise(&self, key: &CacheKey, position: u64) {
        self.floors.raise(key, position);
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
    /// `f` sees the held copy and the place's floor; every copy put raises the floor.
    fn change(&self, key: CacheKey, f: impl FnOnce(Option<&Arc<Copy>>, u64) -> Op<Arc<Copy>>) {
        self.inner.entry(key.clone()).and_compute_with(|held| {
            let op = f(held.as_ref().map(|h| h.value()), self.floor(&key));
            if let Op::Put(c) = &op {
                self.raise(&key, c.reflects);
            }
            op
        });
        self.front.forget(&key);
    }

    /// Stores `c` unless a newer version is held, or, when none is, unless the place's
    /// floor is past what `c` reflects.
    pub fn offer(&self, key: CacheKey, c: Arc<Copy>) -> Offer {
        let mut outcome = Offer::Older;
        self.change(key, |held, floor| match held {
            Some(h) if h.version > c.version => Op::Nop,
            None if c.reflects < floor => Op::Nop,
            _ => {
                outcome = Offer::Stored;
                Op::Put(c)
            }
        });
        outcome
    }

    /// Stores `c` as `offer` does, and returns the newest copy held: a fetch that lost a
    /// race with a push answers with the push's newer copy. (A fetch whose place is past
    /// its floor answers `c`, which reflects what it asked for, without keeping it.)
    pub fn keep(&self, key: CacheKey, c: Arc<Copy>) -> Arc<Copy> {
        let mut newest = c.clone();
        self.change(key, |held, floor| match held {
            Some(h) if h.version > c.version => {
                newest = h.clone();
                Op::Nop
            }
            None if c.reflects < floor => Op::Nop,
            _ => Op::Put(c),
        });
        newest
    }

    /// Puts `c`, a copy made earlier and kept aside, in place of a held copy older than it
    /// (or as new, and fresher), or in an empty place whose floor it reflects. Returns
    /// whether it did.
    pub fn succeed(&self, key: CacheKey, c: Arc<Copy>) -> bool {
        let mut stored = false;
        self.change(key, |held, floor| {
            let newer = match held {
                Some(h) => h.version < c.version || (h.version == c.version && h.as_of < c.as_of),
                None => c.reflects >= floor,
            };
            if newer {
                stored = true;
                Op::Put(c)
            } else {
                Op::Nop
            }
        });
        stored
    }

    /// Replaces a held copy with a newer version in place; `None` when no copy is held.
    pub fn replace_held(&self, key: CacheKey, value: Option<Value>, version: u64) -> Option<Offer> {
        let mut outcome = None;
        // Held in front but no longer in the cache, the copy must still not outlive the
        // change: `change` drops it from the front either way.
        self.change(key, |held, _| match held {
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
        self.change(key, |held, _| match held {
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

    /// Drops `key`'s copy as an eviction would, floor and all.
    #[cfg(test)]
    pub(crate) fn evict(&self, key: &CacheKey) {
        self.inner.invalidate(key);
        self.front.forget(key);
    }

    /// Copies dropped so far to make room for others.
    pub fn evictions(&self) -> u64 {
        self.inner.run_pending_tasks();
        self.evicted.load(Ordering::Relaxed)
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

    const MIN: Duration = Duration::from_secs(60);

    fn copy_of(s: &str, version: u64) -> Copy {
        let v = Some(Value { bytes: Bytes::from(s.to_string()), metadata_json: None, expiration: None });
        Copy::new(v, version, Instant::now(), MIN, MIN, 0)
    }

    fn copy(s: &str, version: u64) -> Arc<Copy> {
        Arc::new(copy_of(s, version))
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
    fn a_successor_replaces_only_an_older_copy_and_fills_only_a_place_it_reflects() {
        let c = VersionedCache::new(1 << 20);
        c.offer(key("a"), copy("v5", 5));
        assert!(!c.succeed(key("a"), copy("v4", 4)), "an older successor never goes behind the held copy");
        assert!(c.succeed(key("a"), copy("v6", 6)));
        assert_eq!(c.get(&key("a")).map(|x| x.version), Some(6));
        let older_as_of = Arc::new(Copy::new(None, 6, Instant::now() - Duration::from_secs(5), MIN, MIN, 0));
        assert!(!c.succeed(key("a"), older_as_of), "as new, but less fresh");
        // Evicted: a refresh made before the held copy must not come back in its place.
        c.evict(&key("a"));
        assert!(!c.succeed(key("a"), copy("v5", 5)));
        assert!(c.get(&key("a")).is_none());
        assert!(c.succeed(key("a"), copy("v6", 6)), "one as new as what left may fill it");
    }

    #[test]
    fn a_place_that_empties_is_refilled_only_by_a_copy_reflecting_what_left_it() {
        let c = VersionedCache::new(1 << 20);
        assert_eq!(c.offer(key("a"), copy("v7", 7)), Offer::Stored);
        c.evict(&key("a"));
        // A late fill of an older version (a write answered late, a fetch asked long ago).
        assert_eq!(c.offer(key("a"), copy("v5", 5)), Offer::Older);
        assert_eq!(c.keep(key("a"), copy("v5", 5)).version, 5, "answered, not kept");
        assert!(c.get(&key("a")).is_none());
        // A fetch asked at position 9 saw version 5 as current: it fills the place.
        assert_eq!(c.offer(key("a"), Arc::new(copy_of("v5", 5).reflecting(9))), Offer::Stored);
        assert_eq!(c.floor(&key("a")), 9);
        // An answer given without a copy raises the floor too.
        c.raise(&key("b"), 12);
        assert!(c.floor(&key("b")) >= 12);
        assert_eq!(c.offer(key("b"), copy("v11", 11)), Offer::Older);
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
    fn a_store_kept_aside_has_no_floors() {
        let c = VersionedCache::aside(1 << 20);
        c.offer(key("a"), copy("v7", 7));
        c.evict(&key("a"));
        assert_eq!(c.floor(&key("a")), 0);
        assert_eq!(c.offer(key("a"), copy("v5", 5)), Offer::Stored, "a refresh is never dropped for a floor");
    }

    #[test]
    fn copies_dropped_for_room_are_counted_and_expired_ones_are_not() {
        let c = VersionedCache::new(16 << 10);
        for i in 0..200 {
            c.offer(key(&format!("k{i}")), copy("v", 1));
        }
        let evicted = c.evictions();
        assert!(evicted > 0 && c.weighted_size() <= 16 << 10, "{evicted} evicted, {} bytes", c.weighted_size());
        let roomy = VersionedCache::new(16 << 10);
        let min = Duration::from_millis(1);
        roomy.offer(key("short"), Arc::new(Copy::new(None, 1, Instant::now(), min, min, 0)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(roomy.get(&key("short")).is_none());
        assert_eq!(roomy.evictions(), 0, "a copy whose holding time ended was not evicted");
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
