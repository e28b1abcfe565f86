//! A Prometheus registry with terse constructors, for the tiers' metric structs, and the
//! read metrics both caching tiers export under their own prefix.

use crate::cache::VersionedCache;
use crate::copy::Copy;
use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};
use std::sync::{Arc, Mutex, PoisonError};

/// Registers metrics under one registry and renders them as Prometheus text, with the
/// process's resident memory (what a benchmark divides by cache bytes or watchers).
#[derive(Clone)]
pub struct Registrar {
    registry: Registry,
    resident: IntGauge,
}

impl Default for Registrar {
    fn default() -> Self {
        let registry = Registry::new();
        let resident = IntGauge::new("process_resident_memory_bytes", "Resident memory of this process")
            .expect("valid metric name");
        registry.register(Box::new(resident.clone())).expect("metric names are unique");
        Registrar { registry, resident }
    }
}

/// Resident bytes of this process, from `/proc/self/statm` (Linux; 0 elsewhere).
fn resident_bytes() -> i64 {
    const PAGE: i64 = 4096;
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1).and_then(|p| p.parse::<i64>().ok()));
    pages.unwrap_or(0).saturating_mul(PAGE)
}

impl Registrar {
    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        let c = IntCounter::new(name, help).expect("valid metric name");
        self.registry.register(Box::new(c.clone())).expect("metric names are unique");
        c
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        let g = IntGauge::new(name, help).expect("valid metric name");
        self.registry.register(Box::new(g.clone())).expect("metric names are unique");
        g
    }

    /// A gauge of seconds (fractional), as Prometheus names units.
    pub fn seconds_gauge(&self, name: &str, help: &str) -> prometheus::Gauge {
        let g = prometheus::Gauge::new(name, help).expect("valid metric name");
        self.registry.register(Box::new(g.clone())).expect("metric names are unique");
        g
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        self.resident.set(resident_bytes());
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// How a caching tier answers reads, and how much its cache holds: the same figures at the
/// edge (`kv_edge_*`) and at the regional tier (`kv_regional_*`), so dashboards line up.
#[derive(Clone)]
pub struct CacheMetrics {
    pub hits: IntCounter,
    pub negative_hits: IntCounter,
    pub misses: IntCounter,
    pub stale_serves: IntCounter,
    pub upstream_fetches: IntCounter,
    pub coalesced_waiters: IntCounter,
    /// Follows the cache's own count; the lock keeps two scrapes at once from adding the
    /// same evictions twice.
    evictions: Arc<Mutex<IntCounter>>,
    cache_bytes: IntGauge,
    cache_entries: IntGauge,
}

impl CacheMetrics {
    /// Registers the set as `<prefix>_hits_total` and so on; `upstream` names the tier above in the help texts.
    pub fn register(r: &Registrar, prefix: &str, upstream: &str) -> CacheMetrics {
        let counter = |name: &str, help: &str| r.counter(&format!("{prefix}_{name}_total"), help);
        let gauge = |name: &str, help: &str| r.gauge(&format!("{prefix}_{name}"), help);
        CacheMetrics {
            hits: counter("hits", "Reads answered from the cache"),
            negative_hits: counter("negative_hits", "Reads answered by a cached absence"),
            misses: counter("misses", &format!("Reads that needed {upstream}")),
            stale_serves: counter("stale_serves", &format!("Reads answered stale: {upstream} did not answer")),
            upstream_fetches: counter("upstream_fetches", &format!("Reads sent to {upstream}")),
            coalesced_waiters: counter("coalesced_waiters", "Misses that joined a fetch under way"),
            evictions: Arc::new(Mutex::new(counter(
                "evictions",
                "Copies dropped from the cache to make room for others",
            ))),
            cache_bytes: gauge("cache_bytes", "Bytes held by the cache"),
            cache_entries: gauge("cache_entries", "Entries held by the cache"),
        }
    }

    /// Counts a read answered by `c`: a hit, or a negative hit when it holds no live value.
    pub fn hit(&self, c: &Copy) {
        if c.visible(kv_common::time::central_now_secs()).is_some() {
            self.hits.inc();
        } else {
            self.negative_hits.inc();
        }
    }

    /// Sets the size gauges from `cache`, before a scrape.
    pub fn measure(&self, cache: &VersionedCache) {
        let evictions = self.evictions.lock().unwrap_or_else(PoisonError::into_inner);
        evictions.inc_by(cache.evictions().saturating_sub(evictions.get()));
        self.cache_bytes.set(i64::try_from(cache.weighted_size()).unwrap_or(i64::MAX));
        self.cache_entries.set(i64::try_from(cache.entry_count()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::Value;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn cache_metrics_count_under_the_tier_prefix() {
        let r = Registrar::default();
        let m = CacheMetrics::register(&r, "kv_test", "the tier above");
        let ttl = Duration::from_secs(60);
        let value = Value { bytes: "v".into(), metadata_json: None, expiration: None };
        m.hit(&Copy::new(Some(value), 1, Instant::now(), ttl, ttl, 0));
        m.hit(&Copy::new(None, 2, Instant::now(), ttl, ttl, 0));
        let cache = VersionedCache::new(1 << 20);
        cache.offer(("ns".into(), "k".into()), Arc::new(Copy::new(None, 3, Instant::now(), ttl, ttl, 0)));
        m.measure(&cache);
        let text = r.render();
        for line in [
            "kv_test_hits_total 1",
            "kv_test_negative_hits_total 1",
            "kv_test_cache_entries 1",
            "kv_test_evictions_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert!(text.contains("# HELP kv_test_upstream_fetches_total Reads sent to the tier above"));
    }
}
