//! The versioned, byte-bounded cache both caching tiers keep (moka underneath).
//!
//! An entry is a value or a negative lookup, tagged with the version that produced it.
//! Versions settle every race between pulls and pushes: a copy is only ever replaced by
//! one at least as new. Freshness (how long an entry may be served without asking
//! upstream) and holding (how long it stays for stale-if-error) are separate deadlines.

use bytes::Bytes;
use moka::ops::compute::Op;
use moka::sync::Cache;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A namespace id and a key.
pub type CacheKey = (String, String);

/// A stored value as the caches hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub bytes: Bytes,
    pub metadata_json: Option<String>,
    /// Absolute Unix seconds.
    pub expiration: Option<i64>,
}

/// One cached answer.
#[derive(Debug)]
pub struct Cached {
    /// `None` is a cached negative lookup.
    pub value: Option<Value>,
    pub version: u64,
    pub filled_at: Instant,
    /// Milliseconds after `filled_at` until which the entry may be served as fresh; reads
    /// with a lower cacheTtl shorten it.
    fresh_ms: AtomicU64,
    /// Until when the entry stays in memory (stale-if-error), capped by its expiration.
    pub hold_until: Instant,
    /// The cache generation it was filled in; older generations must be revalidated.
    pub generation: u64,
    /// A marker, never served: the key changed at `version` to a value the feed left out.
    /// It only turns away fetches answered with older versions.
    outdated: bool,
}

/// How long an outdated marker outlives any fetch that was under way when it was set.
const OUTDATED_MARKER_LIFE: Duration = Duration::from_secs(120);

impl Cached {
    /// The value (or absence) read at `version`, fresh for `fresh_for`, then kept `hold_extra` longer.
    pub fn new(value: Option<Value>, version: u64, fresh_for: Duration, hold_extra: Duration, generation: u64) -> Self {
        let filled_at = Instant::now();
        let hold_until = cap_by_expiration(filled_at, fresh_for + hold_extra, value.as_ref());
        Cached {
            value,
            version,
            filled_at,
            fresh_ms: AtomicU64::new(millis(fresh_for)),
            hold_until,
            generation,
            outdated: false,
        }
    }

    /// The marker of a change at `version` whose value is unknown here.
    fn outdated(version: u64) -> Self {
        let filled_at = Instant::now();
        Cached {
            value: None,
            version,
            filled_at,
            fresh_ms: AtomicU64::new(0),
            hold_until: filled_at + OUTDATED_MARKER_LIFE,
            generation: 0,
            outdated: true,
        }
    }

    /// A newer version replacing this copy in place (a push): same deadlines, new contents.
    pub fn replaced_by(&self, value: Option<Value>, version: u64) -> Self {
        let held = self.hold_until.saturating_duration_since(self.filled_at);
        Cached {
            hold_until: cap_by_expiration(self.filled_at, held, value.as_ref()),
            value,
            version,
            filled_at: self.filled_at,
            fresh_ms: AtomicU64::new(self.fresh_ms.load(Ordering::Relaxed)),
            generation: self.generation,
            outdated: self.outdated,
        }
    }

    /// When the entry stops being fresh.
    pub fn fresh_until(&self) -> Instant {
        self.filled_at + Duration::from_millis(self.fresh_ms.load(Ordering::Relaxed))
    }

    /// Whether a read with `cache_ttl` may use this entry without asking upstream; a lower
    /// cacheTtl than the filling read's shortens the entry's life for every later read.
    pub fn fresh_for_read(&self, now: Instant, cache_ttl: Duration, generation: u64) -> bool {
        self.fresh_ms.fetch_min(millis(cache_ttl), Ordering::Relaxed);
        self.generation == generation && now < self.fresh_until()
    }

    /// Whether the key's own expiration has passed: then the value no longer exists.
    pub fn is_expired(&self, now_secs: i64) -> bool {
        crate::time::is_expired(self.value.as_ref().and_then(|v| v.expiration), now_secs)
    }

    /// The entry's value as a reader may see it at `now_secs`: expired values are absent.
    pub fn visible(&self, now_secs: i64) -> Option<&Value> {
        self.value.as_ref().filter(|_| !self.is_expired(now_secs))
    }

    fn weight(key: &CacheKey, c: &Cached) -> u32 {
        let value = c.value.as_ref().map_or(0, |v| v.bytes.len() + v.metadata_json.as_ref().map_or(0, String::len));
        u32::try_from(key.0.len() + key.1.len() + value + 96).unwrap_or(u32::MAX)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `from + span`, but never past the value's expiration.
fn cap_by_expiration(from: Instant, span: Duration, value: Option<&Value>) -> Instant {
    let until = from.checked_add(span).unwrap_or(from + Duration::from_secs(86_400 * 365));
    match value.and_then(|v| v.expiration) {
        Some(exp) => {
            let left = Duration::from_secs(u64::try_from(exp - crate::time::now_secs()).unwrap_or(0));
            until.min(from + left)
        }
        None => until,
    }
}

/// What a change from the feed does to a cached copy of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The key now holds this (a put) or nothing (`None`, a delete).
    Set(CacheKey, Option<Value>),
    /// The key changed but the feed left the value out: drop the copy, read again on demand.
    /// A fetch of the key under way may return the older version; it is not kept.
    Drop(CacheKey),
    /// The whole namespace is gone.
    DropNamespace(String),
    /// A change kind this version does not know; ignore it.
    Unknown,
}

/// What applying a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A held copy was replaced, or the key was being fetched and now holds the change.
    Stored,
    /// The held copy was newer already.
    Older,
    /// No copy held and none being fetched: nothing to do.
    NotHeld,
    /// Copies were dropped.
    Dropped,
}

/// What `offer` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Stored: there was no copy, or an older (or equally old) one.
    Stored,
    /// Ignored: the cache already holds a newer version.
    Older,
}

/// The cache itself.
pub struct VersionedCache {
    inner: Cache<CacheKey, Arc<Cached>>,
    generation: AtomicU64,
}

struct HoldUntil;

impl moka::Expiry<CacheKey, Arc<Cached>> for HoldUntil {
    fn expire_after_create(&self, _: &CacheKey, c: &Arc<Cached>, now: Instant) -> Option<Duration> {
        Some(c.hold_until.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        c: &Arc<Cached>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(c.hold_until.saturating_duration_since(now))
    }
}

impl VersionedCache {
    /// A cache holding at most `max_bytes` of keys, values and metadata.
    pub fn new(max_bytes: u64) -> Self {
        let inner = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &CacheKey, v: &Arc<Cached>| Cached::weight(k, v))
            .expire_after(HoldUntil)
            .support_invalidation_closures()
            .build();
        VersionedCache { inner, generation: AtomicU64::new(0) }
    }

    /// The copy held for `key`; an outdated marker counts as none.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<Cached>> {
        self.inner.get(key).filter(|c| !c.outdated)
    }

    /// Stores `c` unless a newer version is already held.
    pub fn offer(&self, key: CacheKey, c: Arc<Cached>) -> Offer {
        let mut outcome = Offer::Stored;
        self.inner.entry(key).and_compute_with(|held| match held {
            Some(h) if h.value().version > c.version => {
                outcome = Offer::Older;
                Op::Nop
            }
            _ => Op::Put(c),
        });
        outcome
    }

    /// Stores `c` unless a newer version is held, and returns the newest copy held: a
    /// fetch that lost a race with a push answers with the push's newer copy.
    pub fn keep(&self, key: CacheKey, c: Arc<Cached>) -> Arc<Cached> {
        self.offer(key.clone(), c.clone());
        match self.get(&key) {
            Some(held) if held.version >= c.version => held,
            _ => c,
        }
    }

    /// Replaces a held copy with a newer version in place; `None` when no copy is held.
    pub fn replace_held(&self, key: CacheKey, value: Option<Value>, version: u64) -> Option<Offer> {
        let mut outcome = None;
        self.inner.entry(key).and_compute_with(|held| match held {
            None => Op::Nop,
            Some(h) if h.value().version >= version => {
                outcome = Some(Offer::Older);
                Op::Nop
            }
            Some(h) => {
                outcome = Some(Offer::Stored);
                Op::Put(Arc::new(h.value().replaced_by(value, version)))
            }
        });
        outcome
    }

    /// Applies a change at `version`. A key being fetched gets the change as a new entry
    /// (`fill` makes it), so a fetch answered with an older version cannot hide it.
    pub fn apply(
        &self,
        effect: Effect,
        version: u64,
        in_flight: impl Fn(&CacheKey) -> bool,
        fill: impl FnOnce(Option<Value>) -> Cached,
    ) -> Applied {
        match effect {
            Effect::Set(key, value) => match self.replace_held(key.clone(), value.clone(), version) {
                Some(Offer::Stored) => Applied::Stored,
                Some(Offer::Older) => Applied::Older,
                None if in_flight(&key) => match self.offer(key, Arc::new(fill(value))) {
                    Offer::Stored => Applied::Stored,
                    Offer::Older => Applied::Older,
                },
                None => Applied::NotHeld,
            },
            Effect::Drop(key) if in_flight(&key) => {
                self.offer(key, Arc::new(Cached::outdated(version)));
                Applied::Dropped
            }
            Effect::Drop(key) => {
                self.remove(&key);
                Applied::Dropped
            }
            Effect::DropNamespace(ns) => {
                self.remove_namespace(&ns);
                Applied::Dropped
            }
            Effect::Unknown => Applied::NotHeld,
        }
    }

    pub fn remove(&self, key: &CacheKey) {
        self.inner.invalidate(key);
    }

    /// Drops every entry of a namespace (it was deleted).
    pub fn remove_namespace(&self, namespace_id: &str) {
        let ns = namespace_id.to_string();
        if self.inner.invalidate_entries_if(move |k, _| k.0 == ns).is_err() {
            self.inner.invalidate_all();
        }
    }

    pub fn clear(&self) {
        self.inner.invalidate_all();
    }

    /// The generation new fills are tagged with.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Marks every held entry as needing revalidation; they stay for stale-if-error.
    pub fn bump_generation(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
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

    fn key(k: &str) -> CacheKey {
        ("ns".into(), k.into())
    }

    fn val(s: &str) -> Option<Value> {
        Some(Value { bytes: Bytes::from(s.to_string()), metadata_json: None, expiration: None })
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn a_change_without_its_value_turns_away_older_fetches_under_way() {
        let c = VersionedCache::new(1 << 20);
        let fill = |v: Option<Value>| Cached::new(v, 0, MIN, MIN, 0);
        c.offer(key("a"), Arc::new(Cached::new(val("v1"), 1, MIN, MIN, 0)));
        assert_eq!(c.apply(Effect::Drop(key("a")), 5, |_| true, fill), Applied::Dropped);
        assert!(c.get(&key("a")).is_none(), "the held copy is gone");
        let late = Arc::new(Cached::new(val("v3"), 3, MIN, MIN, 0));
        assert_eq!(c.offer(key("a"), late), Offer::Older, "a fetch answered before the change is not kept");
        assert!(c.get(&key("a")).is_none(), "and the marker is never served");
        assert_eq!(c.offer(key("a"), Arc::new(Cached::new(val("v5"), 5, MIN, MIN, 0))), Offer::Stored);
        assert_eq!(c.get(&key("a")).map(|h| h.version), Some(5));

        // Nothing under way: the copy just goes, and the next fetch (asked at >= 7) is kept.
        assert_eq!(c.apply(Effect::Drop(key("a")), 7, |_| false, fill), Applied::Dropped);
        assert!(c.get(&key("a")).is_none());
        assert_eq!(c.offer(key("a"), Arc::new(Cached::new(val("v7"), 7, MIN, MIN, 0))), Offer::Stored);
    }

    #[test]
    fn only_newer_versions_replace() {
        let c = VersionedCache::new(1 << 20);
        assert_eq!(c.offer(key("a"), Arc::new(Cached::new(val("v5"), 5, MIN, MIN, 0))), Offer::Stored);
        assert_eq!(c.offer(key("a"), Arc::new(Cached::new(val("v3"), 3, MIN, MIN, 0))), Offer::Older);
        assert_eq!(c.get(&key("a")).unwrap().version, 5);
        assert_eq!(c.replace_held(key("a"), None, 4), Some(Offer::Older));
        assert_eq!(c.replace_held(key("a"), None, 7), Some(Offer::Stored));
        let held = c.get(&key("a")).unwrap();
        assert_eq!((held.version, held.value.is_none()), (7, true));
        assert_eq!(c.replace_held(key("b"), val("x"), 9), None, "pushes do not fill keys nobody read");
        assert!(c.get(&key("b")).is_none());
    }

    #[test]
    fn lower_cache_ttl_shortens_and_generation_invalidates() {
        let c = Cached::new(val("v"), 1, Duration::from_secs(300), Duration::ZERO, 0);
        let now = Instant::now();
        assert!(c.fresh_for_read(now, Duration::from_secs(600), 0));
        assert!(c.fresh_until() > now + Duration::from_secs(299));
        assert!(c.fresh_for_read(now, Duration::from_secs(30), 0));
        assert!(c.fresh_until() <= now + Duration::from_secs(31), "a lower cacheTtl shortens the entry's life");
        assert!(c.fresh_for_read(now, Duration::from_secs(600), 0));
        assert!(c.fresh_until() <= now + Duration::from_secs(31), "a higher one does not lengthen it");
        assert!(!c.fresh_for_read(now, Duration::from_secs(600), 1), "a new generation needs revalidation");
    }

    #[test]
    fn expiration_caps_holding_and_hides_value() {
        let soon = crate::time::now_secs() + 2;
        let v = Some(Value { bytes: Bytes::from_static(b"x"), metadata_json: None, expiration: Some(soon) });
        let c = Cached::new(v, 1, Duration::from_secs(3600), Duration::from_secs(3600), 0);
        assert!(c.hold_until <= Instant::now() + Duration::from_secs(3));
        assert!(c.visible(soon - 1).is_some());
        assert!(c.visible(soon).is_none());
    }

    #[test]
    fn namespace_removal_and_generation() {
        let c = VersionedCache::new(1 << 20);
        c.offer(key("a"), Arc::new(Cached::new(val("1"), 1, MIN, MIN, c.generation())));
        c.offer(("other".into(), "a".into()), Arc::new(Cached::new(val("1"), 1, MIN, MIN, c.generation())));
        c.remove_namespace("ns");
        c.inner.run_pending_tasks();
        assert!(c.get(&key("a")).is_none());
        assert!(c.get(&("other".into(), "a".into())).is_some());
        c.bump_generation();
        assert_eq!(c.generation(), 1);
    }
}
