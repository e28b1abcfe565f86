//! Prometheus metrics of an edge node.

use kv_common::metrics::Registrar;
use prometheus::{IntCounter, IntGauge};

/// Every metric an edge node exports.
pub struct Metrics {
    registrar: Registrar,
    pub hits: IntCounter,
    pub negative_hits: IntCounter,
    pub misses: IntCounter,
    pub stale_serves: IntCounter,
    pub upstream_fetches: IntCounter,
    pub coalesced_waiters: IntCounter,
    pub refreshes: IntCounter,
    pub pushes_received: IntCounter,
    pub pushes_applied: IntCounter,
    pub pushes_ignored: IntCounter,
    pub resets: IntCounter,
    pub writes: IntCounter,
    pub rejected: IntCounter,
    pub cache_bytes: IntGauge,
    pub cache_entries: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registrar::default();
        Metrics {
            hits: r.counter("kv_edge_hits_total", "Reads answered from the cache within cacheTtl"),
            negative_hits: r.counter("kv_edge_negative_hits_total", "Hits on a cached absence"),
            misses: r.counter("kv_edge_misses_total", "Reads that needed the regional tier"),
            stale_serves: r.counter("kv_edge_stale_serves_total", "Reads answered STALE: no upstream answered"),
            upstream_fetches: r.counter("kv_edge_upstream_fetches_total", "Reads sent upstream"),
            coalesced_waiters: r.counter("kv_edge_coalesced_waiters_total", "Misses that joined a fetch under way"),
            refreshes: r.counter("kv_edge_refreshes_total", "Background refreshes of hot keys"),
            pushes_received: r.counter("kv_edge_pushes_received_total", "Changes pushed by the regional tier"),
            pushes_applied: r.counter("kv_edge_pushes_applied_total", "Pushed changes that replaced a copy"),
            pushes_ignored: r
                .counter("kv_edge_pushes_ignored_total", "Pushed changes older than the copy, or for keys not held"),
            resets: r.counter("kv_edge_resets_total", "Times every copy was marked for revalidation"),
            writes: r.counter("kv_edge_writes_total", "Writes acknowledged by the central store"),
            rejected: r.counter("kv_edge_rejected_total", "Requests refused by validation before going upstream"),
            cache_bytes: r.gauge("kv_edge_cache_bytes", "Bytes held by the cache"),
            cache_entries: r.gauge("kv_edge_cache_entries", "Entries held by the cache"),
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
