//! Prometheus metrics of an edge node.

use kv_tier::metrics::{CacheMetrics, Registrar};
use prometheus::{IntCounter, IntGauge};

/// Every metric an edge node exports.
pub struct Metrics {
    registrar: Registrar,
    pub reads: CacheMetrics,
    pub refreshes: IntCounter,
    pub pushes_received: IntCounter,
    pub pushes_applied: IntCounter,
    pub pushes_ignored: IntCounter,
    pub resets: IntCounter,
    pub writes: IntCounter,
    pub rejected: IntCounter,
    pub unauthorized: IntCounter,
    pub watch_feeds: IntGauge,
    pub watchers: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registrar::default();
        Metrics {
            reads: CacheMetrics::register(&r, "kv_edge", "the regional tier"),
            refreshes: r.counter("kv_edge_refreshes_total", "Background refreshes of hot keys"),
            pushes_received: r.counter("kv_edge_pushes_received_total", "Changes pushed by the regional tier"),
            pushes_applied: r.counter("kv_edge_pushes_applied_total", "Pushed changes that replaced a copy"),
            pushes_ignored: r
                .counter("kv_edge_pushes_ignored_total", "Pushed changes older than the copy, or for keys not held"),
            resets: r.counter("kv_edge_resets_total", "Times every copy was marked for revalidation"),
            writes: r.counter("kv_edge_writes_total", "Writes acknowledged by the central store"),
            rejected: r.counter("kv_edge_rejected_total", "Requests refused by validation before going upstream"),
            unauthorized: r.counter(
                "kv_edge_unauthorized_total",
                "Calls refused for their token: missing, invalid, revoked (401) or short of rights (403)",
            ),
            watch_feeds: r.gauge("kv_edge_watch_feeds", "Upstream change feeds open, one per namespace watched"),
            watchers: r.gauge("kv_edge_watchers", "Watch streams being served"),
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
