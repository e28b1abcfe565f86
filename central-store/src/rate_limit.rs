//! The per-key write limit (KV: one write per second per key), held by the leader.

use kv_common::NamespaceId;
use moka::sync::Cache;
use std::time::Duration;

/// Remembers each key written within the last interval; bounded, so a flood of distinct
/// keys cannot exhaust memory.
pub struct RateLimiter {
    recent: Option<Cache<(NamespaceId, String), ()>>,
}

const MAX_TRACKED_KEYS: u64 = 4_000_000;

impl RateLimiter {
    /// `interval_ms == 0` turns the limit off.
    pub fn new(interval_ms: u64) -> Self {
        let recent = (interval_ms > 0).then(|| {
            Cache::builder().max_capacity(MAX_TRACKED_KEYS).time_to_live(Duration::from_millis(interval_ms)).build()
        });
        RateLimiter { recent }
    }

    /// Records a write to the key and says whether it is allowed (atomic per key).
    pub fn allow(&self, ns: &NamespaceId, key: &str) -> bool {
        match &self.recent {
            None => true,
            Some(cache) => cache.entry((*ns, key.to_owned())).or_insert(()).is_fresh(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_write_within_interval_is_refused() {
        let rl = RateLimiter::new(60_000);
        let ns = NamespaceId([1; 16]);
        assert!(rl.allow(&ns, "a"));
        assert!(!rl.allow(&ns, "a"));
        assert!(rl.allow(&ns, "b"));
        assert!(rl.allow(&NamespaceId([2; 16]), "a"));
        let off = RateLimiter::new(0);
        assert!(off.allow(&ns, "a") && off.allow(&ns, "a"));
    }
}
