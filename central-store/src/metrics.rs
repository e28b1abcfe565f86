//! Prometheus metrics of a central node.

use crate::types::Raft;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use std::sync::Arc;
use std::time::Duration;

/// Every metric a central node exports; one registry per node.
pub struct Metrics {
    registry: Registry,
    pub proposals: IntCounterVec,
    pub reads: IntCounterVec,
    pub write_latency: Histogram,
    pub write_batch_size: Histogram,
    pub rate_limited: IntCounter,
    pub forwarded: IntCounter,
    pub log_fsyncs: IntCounter,
    /// Appends with entries that openraft's streams made, by how they reached the follower.
    pub stream_appends: IntCounterVec,
    /// Where a write's time goes, stage by stage (see `Stage`).
    pub write_stages: prometheus::HistogramVec,
    pub log_fsync_batch: Histogram,
    pub swept: IntCounter,
    pub snapshots_installed: IntCounter,
    pub watch_subscribers: IntGauge,
    pub freshness_proofs: IntCounter,
    pub stale_refusals: IntCounter,
    pub duplicate_requests: IntCounter,
    pub shed_writes: IntCounter,
    freshness_age: prometheus::Gauge,
    raft_term: IntGauge,
    raft_is_leader: IntGauge,
    raft_last_log_index: IntGauge,
    raft_applied_index: IntGauge,
    raft_apply_lag: IntGauge,
    raft_snapshot_index: IntGauge,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone())).expect("metric names are unique");
            c
        }
        let gauge = |name: &str, help: &str| reg(&registry, IntGauge::new(name, help).expect("valid metric"));
        let counter = |name: &str, help: &str| reg(&registry, IntCounter::new(name, help).expect("valid metric"));
        let m = Metrics {
            proposals: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new("kv_central_proposals_total", "Commands proposed to Raft, by kind"),
                    &["kind"],
                )
                .expect("valid metric"),
            ),
            reads: reg(
                &registry,
                IntCounterVec::new(Opts::new("kv_central_reads_total", "Reads served, by call"), &["call"])
                    .expect("valid metric"),
            ),
            write_latency: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "kv_central_write_seconds",
                        "Time from a write's arrival at the leader to its commit",
                    )
                    .buckets(prometheus::exponential_buckets(0.0001, 2.0, 18).expect("valid buckets")),
                )
                .expect("valid metric"),
            ),
            write_batch_size: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "kv_central_write_batch_size",
                        "Client writes group-committed in one Raft entry",
                    )
                    .buckets(prometheus::exponential_buckets(1.0, 2.0, 11).expect("valid buckets")),
                )
                .expect("valid metric"),
            ),
            rate_limited: counter("kv_central_rate_limited_writes_total", "Writes refused by the per-key rate limit"),
            forwarded: counter("kv_central_forwarded_total", "Requests forwarded from a follower to the leader"),
            stream_appends: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "kv_central_stream_appends_total",
                        "Appends with entries from the replication streams: answered by an early send, or sent by the stream",
                    ),
                    &["path"],
                )
                .expect("valid metric"),
            ),
            write_stages: reg(
                &registry,
                prometheus::HistogramVec::new(
                    HistogramOpts::new("kv_central_write_stage_seconds", "Time spent in each stage of the write path")
                        .buckets(prometheus::exponential_buckets(0.00002, 2.0, 18).expect("valid buckets")),
                    &["stage"],
                )
                .expect("valid metric"),
            ),
            log_fsyncs: counter("kv_central_log_fsyncs_total", "WAL syncs of the Raft log"),
            log_fsync_batch: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("kv_central_log_fsync_batch", "Appends made durable by one WAL sync")
                        .buckets(prometheus::exponential_buckets(1.0, 2.0, 10).expect("valid buckets")),
                )
                .expect("valid metric"),
            ),
            swept: counter("kv_central_swept_total", "Expired entries and old tombstones removed by sweeps"),
            snapshots_installed: counter("kv_central_snapshots_installed_total", "Snapshots installed from the leader"),
            watch_subscribers: gauge("kv_central_watch_subscribers", "Open Watch streams"),
            freshness_proofs: counter("kv_central_freshness_proofs_total", "Read-index proofs this replica obtained"),
            stale_refusals: counter(
                "kv_central_stale_refusals_total",
                "Reads refused because this replica could not prove it was fresh enough",
            ),
            duplicate_requests: counter(
                "kv_central_duplicate_requests_total",
                "Retried writes answered from the record of their first outcome",
            ),
            shed_writes: counter("kv_central_shed_writes_total", "Writes refused because the write queue was full"),
            freshness_age: reg(
                &registry,
                prometheus::Gauge::new(
                    "kv_central_freshness_age_seconds",
                    "Age of this replica's newest freshness proof (-1: none yet)",
                )
                .expect("valid metric"),
            ),
            raft_term: gauge("kv_raft_term", "Current Raft term"),
            raft_is_leader: gauge("kv_raft_is_leader", "1 when this node is the leader"),
            raft_last_log_index: gauge("kv_raft_last_log_index", "Last log index"),
            raft_applied_index: gauge("kv_raft_applied_index", "Last applied log index"),
            raft_apply_lag: gauge("kv_raft_apply_lag", "Log entries not yet applied"),
            raft_snapshot_index: gauge("kv_raft_snapshot_index", "Log index of the current snapshot"),
            registry,
        };
        Arc::new(m)
    }

    /// The Prometheus text exposition, with Raft gauges read fresh from openraft.
    pub fn render(&self, raft: &Raft, freshness_age: Option<Duration>) -> String {
        self.freshness_age.set(freshness_age.map_or(-1.0, |a| a.as_secs_f64()));
        let rm = raft.metrics().borrow().clone();
        let last = rm.last_log_index.unwrap_or(0);
        let applied = rm.last_applied.map_or(0, |l| l.index);
        self.raft_term.set(rm.current_term as i64);
        self.raft_is_leader.set(i64::from(rm.current_leader == Some(rm.id)));
        self.raft_last_log_index.set(last as i64);
        self.raft_applied_index.set(applied as i64);
        self.raft_apply_lag.set(last.saturating_sub(applied) as i64);
        self.raft_snapshot_index.set(rm.snapshot.map_or(0, |l| l.index) as i64);
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// A stage of the write path, timed into `kv_central_write_stage_seconds`.
#[derive(Clone, Copy, Debug)]
pub enum Stage {
    /// A client write waiting in the batcher for its entry to be proposed.
    Queue,
    /// An entry from its proposal to its application (commit and apply), on the leader.
    Commit,
    /// Writing appended entries to RocksDB (unsynced).
    LogWrite,
    /// From an append to its entries being durable (waiting for the flusher, then its sync).
    LogDurable,
    /// One WAL sync.
    LogSync,
    /// An append carrying entries, from the leader sending it to the follower's answer.
    Replicate,
    /// An append without entries (a heartbeat, or news of the commit index), sent to answered.
    Heartbeat,
    /// An append carrying entries, as the follower serves it (written and durable).
    FollowerAppend,
    /// Applying committed entries to the state machine.
    Apply,
    /// A client's write call on the node, from its handler's start to its answer (what the
    /// stages above leave out is the call's way there and back).
    Handler,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::Commit => "commit",
            Stage::LogWrite => "log_write",
            Stage::LogDurable => "log_durable",
            Stage::LogSync => "log_sync",
            Stage::Replicate => "replicate",
            Stage::Heartbeat => "heartbeat",
            Stage::FollowerAppend => "follower_append",
            Stage::Apply => "apply",
            Stage::Handler => "handler",
        }
    }
}

impl Metrics {
    /// Records that `stage` took from `since` until now.
    pub fn stage(&self, stage: Stage, since: std::time::Instant) {
        self.write_stages.with_label_values(&[stage.label()]).observe(since.elapsed().as_secs_f64());
    }
}
