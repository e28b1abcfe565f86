//! One cached answer, and how fresh it is.
//!
//! A copy is a value or a negative lookup, tagged with the version that produced it and
//! with the instant it is fresh *as of*: it reflects every write acknowledged before
//! `as_of`. That instant is counted on this node's clock from the moment the read that
//! filled it was sent, minus the age the tier above gave for its answer, so it never
//! overstates freshness whatever the delays on the way. A copy is fresh for a read with
//! cacheTtl T until `as_of + T`, which is exactly the promise of bounded staleness.

use bytes::Bytes;
use kv_proto::store::v1 as pb;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Heap bytes one cached entry takes beyond its key and value bytes: moka's entry, its
/// copy of the key, its deque and timer nodes and its share of the hash table, the
/// `Arc<Copy>`, and the allocator's headers and rounding. `tests/entry_cost.rs` measures it
/// with a counting allocator (668 bytes with moka 0.12.16, as glibc lays blocks out; the
/// nodes run on jemalloc, whose size classes round differently, by up to a quarter); a
/// cache's byte bound is a bound on its memory only if this is right. It was 128 until
/// measured, and an edge's memory came to 2.1 times its cache bytes.
pub const ENTRY_OVERHEAD: usize = 672;

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
pub struct Copy {
    /// `None` is a negative lookup.
    pub value: Option<Value>,
    pub version: u64,
    /// The change position the copy is known current at: its version, or a later one when
    /// it answered a fetch asked at that position (the key did not change in between).
    pub reflects: u64,
    /// The copy reflects every write acknowledged before this instant.
    pub as_of: Instant,
    /// Milliseconds after `as_of` until which the copy may be served as fresh; reads with a
    /// lower cacheTtl shorten it.
    fresh_ms: AtomicU64,
    /// Until when the copy stays in memory (for stale-if-error), capped by its expiration.
    pub hold_until: Instant,
    /// How long after `as_of` the copy is held, before its value's expiration caps it.
    hold_for: Duration,
    /// The tier's epoch it was filled in; copies of an older epoch must be revalidated.
    pub epoch: u64,
    /// Where the contents came from: the tier above whose copy a fetch returned, or the
    /// central store for changes (pushes, the feed) and this tier's own writes.
    pub filled_from: pb::Tier,
}

impl Copy {
    /// The value (or absence) at `version`, fresh as of `as_of`, fresh for `fresh_for` from
    /// then, and held `hold_extra` longer.
    pub fn new(
        value: Option<Value>,
        version: u64,
        as_of: Instant,
        fresh_for: Duration,
        hold_extra: Duration,
        epoch: u64,
    ) -> Self {
        let hold_for = fresh_for.saturating_add(hold_extra);
        let hold_until = cap_by_expiration(as_of, hold_for, value.as_ref());
        let fresh_ms = AtomicU64::new(millis(fresh_for));
        Copy {
            value,
            version,
            reflects: version,
            as_of,
            fresh_ms,
            hold_until,
            hold_for,
            epoch,
            filled_from: pb::Tier::Central,
        }
    }

    /// The copy, known current at change position `position` too (its fetch asked for it).
    pub fn reflecting(self, position: u64) -> Self {
        Copy { reflects: self.reflects.max(position), ..self }
    }

    /// The copy, saying its contents came from `tier`.
    pub fn filled_from(self, tier: pb::Tier) -> Self {
        Copy { filled_from: tier, ..self }
    }

    /// A newer version replacing this copy in place (a push): same deadlines, new contents;
    /// holding is capped by the new value's expiration, not the old one's.
    pub fn replaced_by(&self, value: Option<Value>, version: u64) -> Self {
        Copy {
            hold_until: cap_by_expiration(self.as_of, self.hold_for, value.as_ref()),
            value,
            version,
            reflects: self.reflects.max(version),
            as_of: self.as_of,
            fresh_ms: AtomicU64::new(self.fresh_ms.load(Ordering::Relaxed)),
            hold_for: self.hold_for,
            epoch: self.epoch,
            filled_from: pb::Tier::Central,
        }
    }

    /// When the copy stops being fresh.
    pub fn fresh_until(&self) -> Instant {
        self.as_of + Duration::from_millis(self.fresh_ms.load(Ordering::Relaxed))
    }

    /// Whether a read with `cache_ttl` may use this copy without asking upstream; a lower
    /// cacheTtl than the filling read's shortens the copy's life for every later read.
    pub fn fresh_for_read(&self, now: Instant, cache_ttl: Duration) -> bool {
        self.fresh_ms.fetch_min(millis(cache_ttl), Ordering::Relaxed);
        now < self.fresh_until()
    }

    /// Whether the key's own expiration has passed: then the value no longer exists.
    pub fn is_expired(&self, now_secs: i64) -> bool {
        kv_common::time::is_expired(self.value.as_ref().and_then(|v| v.expiration), now_secs)
    }

    /// The value as a reader may see it at `now_secs`: expired values are absent.
    pub fn visible(&self, now_secs: i64) -> Option<&Value> {
        self.value.as_ref().filter(|_| !self.is_expired(now_secs))
    }

    /// Bytes the copy costs in a cache, with its key.
    pub fn weight(&self, key_bytes: usize) -> u32 {
        let value = self.value.as_ref().map_or(0, |v| v.bytes.len() + v.metadata_json.as_ref().map_or(0, String::len));
        u32::try_from(key_bytes + value + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
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
            let left = Duration::from_secs(u64::try_from(exp - kv_common::time::central_now_secs()).unwrap_or(0));
            until.min(Instant::now() + left)
        }
        None => until,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(s: &str) -> Option<Value> {
        Some(Value { bytes: Bytes::from(s.to_string()), metadata_json: None, expiration: None })
    }

    #[test]
    fn freshness_counts_from_as_of_and_a_lower_cache_ttl_shortens_it() {
        let now = Instant::now();
        let c = Copy::new(val("v"), 1, now - Duration::from_secs(10), Duration::from_secs(300), Duration::ZERO, 0);
        assert!(c.fresh_until() <= now + Duration::from_secs(290), "fresh from as_of, not from the fill");
        assert!(c.fresh_for_read(now, Duration::from_secs(600)));
        assert!(!c.fresh_for_read(now, Duration::from_secs(5)), "10 s old is stale for a 5 s cacheTtl");
        assert!(!c.fresh_for_read(now, Duration::from_secs(600)), "and the shorter life stays");
    }

    #[test]
    fn a_replacement_is_held_as_long_as_its_own_value_allows() {
        let soon = kv_common::time::now_secs() + 2;
        let v = Some(Value { bytes: Bytes::from_static(b"x"), metadata_json: None, expiration: Some(soon) });
        let c = Copy::new(v, 1, Instant::now(), Duration::from_secs(60), Duration::from_secs(60), 0);
        assert!(c.hold_until <= Instant::now() + Duration::from_secs(3));
        let r = c.replaced_by(val("lasting"), 2);
        assert!(r.hold_until >= Instant::now() + Duration::from_secs(100), "the old expiration no longer caps it");
    }

    #[test]
    fn expiration_caps_holding_and_hides_value() {
        let soon = kv_common::time::now_secs() + 2;
        let v = Some(Value { bytes: Bytes::from_static(b"x"), metadata_json: None, expiration: Some(soon) });
        let c = Copy::new(v, 1, Instant::now(), Duration::from_secs(3600), Duration::from_secs(3600), 0);
        assert!(c.hold_until <= Instant::now() + Duration::from_secs(3));
        assert!(c.visible(soon - 1).is_some());
        assert!(c.visible(soon).is_none());
    }
}
