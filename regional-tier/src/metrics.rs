//! Prometheus metrics of a regional tier.

use kv_common::metrics::Registrar;
use prometheus::{IntCounter, IntGauge};

/// Every metric a regional tier exports.
pub struct Metrics {
    registrar: Registrar,
    pub hits: IntCounter,
    pub negative_hits: IntCounter,
    pub misses: IntCounter,
    pub stale_serves: IntCounter,
    pub upstream_fetches: IntCounter,
    pub coalesced_waiters: IntCounter,
    pub feed_changes: IntCounter,
    pub feed_reconnects: IntCounter,
    pub resyncs: IntCounter,
    pub pushes_sent: IntCounter,
    pub subscribers_dropped: IntCounter,
    pub feed_version: IntGauge,
    pub subscribers: IntGauge,
    pub tracked_keys: IntGauge,
    pub cache_bytes: IntGauge,
    pub cache_entries: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registrar::default();
        Metrics {
            hits: r.counter("kv_regional_hits_total", "Reads answered from the cache"),
            negative_hits: r.counter("kv_regional_negative_hits_total", "Reads answered by a cached absence"),
            misses: r.counter("kv_regional_misses_total", "Reads that went to the central store"),
            stale_serves: r.counter("kv_regional_stale_serves_total", "Reads answered stale: no central node answered"),
            upstream_fetches: r.counter("kv_regional_upstream_fetches_total", "Reads sent to the central store"),
            coalesced_waiters: r.counter("kv_regional_coalesced_waiters_total", "Misses that joined a fetch under way"),
            feed_changes: r.counter("kv_regional_feed_changes_total", "Changes received from the central feed"),
            feed_reconnects: r.counter("kv_regional_feed_reconnects_total", "Times the central feed was reopened"),
            resyncs: r.counter("kv_regional_resyncs_total", "Feed history lost: the cache was dropped"),
            pushes_sent: r.counter("kv_regional_pushes_sent_total", "Change sets pushed to edges"),
            subscribers_dropped: r.counter("kv_regional_subscribers_dropped_total", "Edges cut off for falling behind"),
            feed_version: r.gauge("kv_regional_feed_version", "Last central version applied from the feed"),
            subscribers: r.gauge("kv_regional_subscribers", "Edges subscribed to pushes"),
            tracked_keys: r.gauge("kv_regional_tracked_keys", "Keys some edge holds"),
            cache_bytes: r.gauge("kv_regional_cache_bytes", "Bytes held by the cache"),
            cache_entries: r.gauge("kv_regional_cache_entries", "Entries held by the cache"),
            registrar: r,
        }
    }

    pub fn render(&self) -> String {
        self.registrar.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
