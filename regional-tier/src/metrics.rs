//! Prometheus metrics of a regional tier.

use kv_tier::metrics::{CacheMetrics, Registrar};
use prometheus::{IntCounter, IntGauge};

/// Every metric a regional tier exports.
pub struct Metrics {
    registrar: Registrar,
    pub reads: CacheMetrics,
    pub feed_changes: IntCounter,
    pub feed_reconnects: IntCounter,
    pub resyncs: IntCounter,
    pub pushes_sent: IntCounter,
    pub subscribers_dropped: IntCounter,
    pub feed_version: IntGauge,
    pub feed_age: prometheus::Gauge,
    pub subscribers: IntGauge,
    pub tracked_keys: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registrar::default();
        Metrics {
            reads: CacheMetrics::register(&r, "kv_regional", "the central store"),
            feed_changes: r.counter("kv_regional_feed_changes_total", "Changes received from the central feed"),
            feed_reconnects: r.counter("kv_regional_feed_reconnects_total", "Times the central feed was reopened"),
            resyncs: r.counter("kv_regional_resyncs_total", "Feed history lost: the cache was dropped"),
            pushes_sent: r.counter("kv_regional_pushes_sent_total", "Change sets pushed to edges"),
            subscribers_dropped: r.counter("kv_regional_subscribers_dropped_total", "Edges cut off for falling behind"),
            feed_version: r.gauge("kv_regional_feed_version", "Last central version applied from the feed"),
            feed_age: r.seconds_gauge(
                "kv_regional_feed_age_seconds",
                "How old the cache is proved to be at most (-1: never proved)",
            ),
            subscribers: r.gauge("kv_regional_subscribers", "Edges subscribed to pushes"),
            tracked_keys: r.gauge("kv_regional_tracked_keys", "Keys some edge holds"),
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
