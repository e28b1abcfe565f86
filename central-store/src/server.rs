//! A running central node: storage, Raft, the gRPC and HTTP servers, and background work
//! (freshness proofs, sweeps), all wired together.

use crate::api::{admin::AdminService, store::StoreService};
use crate::batcher::Batcher;
use crate::config::Config;
use crate::freshness::{Freshness, Prober};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::peers::Peers;
use crate::propose::propose;
use crate::raft::{network::Network, pipeline::Pipeline, service::RaftService, MAX_RAFT_MESSAGE_BYTES};
use crate::rate_limit::RateLimiter;
use crate::storage::{log_store::LogStore, open_db, reseal::Resealer, snapshot::SnapshotDir, state_machine};
use crate::types::{Command, Node as RaftNode, NodeId, Raft};
use anyhow::Context;
use kv_common::auth::{self, AdminOnly};
use kv_common::call::CallLayer;
use kv_common::serve::{self, Drain};
use kv_common::tls::{self, Role};
use kv_common::KvError;
use kv_proto::admin::v1::cluster_admin_server::ClusterAdminServer;
use kv_proto::raft::v1::raft_transport_server::RaftTransportServer;
use kv_proto::store::v1::central_store_server::CentralStoreServer;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;

/// Largest store API message: a bulk write of 100 MB plus framing.
pub const MAX_STORE_MESSAGE_BYTES: usize = kv_common::client::MAX_MESSAGE_BYTES;

/// Runs a node until `shutdown` resolves, then stops Raft and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let admin_token = config.admin_token.require()?.to_owned();
    auth::set_node_token(&admin_token)?;
    let tls = tls::start_node_tls(&config.tls, Role::Central)?;
    crate::storage::check_format(&config.data_dir)?;
    let sealer =
        Arc::new(config.sealer.clone().context(
            "no encryption key: set KV_ENCRYPTION_KEY or encryption_key_file (scripts/run-cluster makes one)",
        )?);
    let db = open_db(&config.data_dir.join("db")).context("opening RocksDB")?;
    let metrics = Metrics::new();
    // The leader's early replication: the log store tells it what it writes, the network
    // sends it on (`raft::pipeline`).
    let pipeline = Arc::new(Pipeline::new(config.node_id));
    let log_store = LogStore::new(db.clone(), metrics.clone(), sealer.clone()).observed_by(pipeline.clone());
    let snapshots = SnapshotDir::open(config.data_dir.join("snapshots"))?;
    let feed = state_machine::FeedConfig {
        retention: config.feed.retention,
        trim_every: config.feed.trim_every.max(1),
        inline_value_limit: config.feed.inline_value_limit,
    };
    let resealer = Resealer::new(db.clone(), sealer.clone(), snapshots.clone());
    let (sm, reader) = state_machine::StateMachine::new(db.clone(), snapshots, feed, metrics.clone(), sealer.clone())?;
    let peers = Arc::new(Peers::new(config.peer_routes()?));
    let network = Network { peers: peers.clone(), pipeline, metrics: metrics.clone() };
    let raft = Raft::new(config.node_id, Arc::new(raft_config(&config)?), network, log_store, sm)
        .await
        .context("starting Raft")?;

    let freshness = Prober {
        id: config.node_id,
        raft: raft.clone(),
        reader: reader.clone(),
        peers: peers.clone(),
        metrics: metrics.clone(),
        interval: Duration::from_millis(config.freshness.probe_interval_ms.max(10)),
        timeout: Duration::from_millis(config.freshness.probe_timeout_ms.max(10)),
    }
    .start();
    let node = Arc::new(Node {
        id: config.node_id,
        raft: raft.clone(),
        reader,
        limiter: RateLimiter::new(config.limits.key_write_interval_ms),
        metrics: metrics.clone(),
        peers,
        batcher: Batcher::start(raft.clone(), metrics.clone(), config.write_queue_bytes),
        freshness: freshness.clone(),
        in_flight: Default::default(),
        config: config.clone(),
        sealer,
        resealer: resealer.clone(),
    });

    let grpc = tokio::net::TcpListener::bind(config.listen).await.context("binding gRPC listener")?;
    let http = tokio::net::TcpListener::bind(config.http_listen).await.context("binding HTTP listener")?;
    tracing::info!(node = config.node_id, grpc = %config.listen, http = %config.http_listen, tls, "central node listening");

    let (health, health_service, reflection) = serve::health_and_reflection(kv_proto::FILE_DESCRIPTOR_SET)?;
    let healthy =
        Healthy { raft: raft.clone(), freshness: freshness.clone(), max_age: config.freshness.health_max_age() };
    let (start_drain, drain) = Drain::new();
    let check: serve::CheckHealth = drain.health(Arc::new(move || healthy.check()));
    tokio::spawn(report_health(health, check.clone()));
    let layer = CallLayer::new(config.request_budget(), config.max_in_flight);
    let render = {
        let (raft, freshness, layer, metrics) = (raft.clone(), freshness.clone(), layer.clone(), metrics.clone());
        Arc::new(move || metrics.render(&raft, freshness.age()) + &layer.render_metrics() + &resealer.render())
    };
    let http = serve::serve_http(http, render, check, drain.clone());
    tokio::spawn(bootstrap(node.clone()));
    tokio::spawn(sweep_loop(node.clone()));

    // Every API but health and reflection is for admin tokens only (see `kv_common::auth`):
    // the nodes' own APIs for the configured one, cluster administration for stored ones too.
    let nodes_only = AdminOnly::new(&admin_token, None);
    let voters_only = nodes_only.clone().from_roles(&[Role::Central]);
    let tiers_only = nodes_only.from_roles(&[Role::Central, Role::Regional]);
    // Tools and central nodes (forwarding to the leader): an edge or a regional tier holds the
    // configured token too, but must not change the membership.
    let admin = AdminOnly::new(&admin_token, Some(stored_tokens(node.clone()))).from_tools_and(&[Role::Central]);
    let grpc = kv_common::call::server(layer)
        .add_service(InterceptedService::new(
            RaftTransportServer::new(RaftService::new(raft.clone(), metrics.clone()))
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
            voters_only,
        ))
        .add_service(InterceptedService::new(
            CentralStoreServer::new(StoreService::new(node.clone(), drain.clone()))
                .max_decoding_message_size(MAX_STORE_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_STORE_MESSAGE_BYTES),
            tiers_only,
        ))
        .add_service(InterceptedService::new(ClusterAdminServer::new(AdminService::new(node.clone())), admin))
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming_shutdown(serve::incoming(grpc, drain.clone()), drain.wait());
    // Drain (the watch streams end, the calls in flight are answered), then stop Raft cleanly.
    let servers = async { tokio::try_join!(async { grpc.await.context("gRPC server") }, http).map(drop) };
    let grace = config.request_budget() + Duration::from_secs(1);
    let served = serve::serve_draining(servers, shutdown, step_down(node.clone()), start_drain, grace).await;
    let _ = raft.shutdown().await;
    served
}

/// Before a node drains (its listener closes, so its peers cannot reach it): it stops
/// campaigning, so it cannot unsettle the group with elections while it is going, and a
/// leader hands its leadership to the voter with the most of its log, so writes move on at
/// once instead of after an election timeout.
async fn step_down(node: Arc<Node>) {
    node.raft.runtime_config().elect(false);
    if !node.is_leader() {
        return;
    }
    let successor = {
        let m = node.raft.metrics().borrow().clone();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().filter(|id| *id != node.id).collect();
        let matched = |id: &NodeId| m.replication.as_ref().and_then(|r| r.get(id).cloned().flatten()).map(|l| l.index);
        voters.into_iter().max_by_key(matched)
    };
    let Some(to) = successor else { return };
    tracing::info!(to, "handing leadership over before draining");
    match tokio::time::timeout(Duration::from_secs(5), AdminService::new(node.clone()).hand_over(to)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "leadership hand-over failed; the group will elect"),
        Err(_) => tracing::warn!("leadership hand-over timed out; the group will elect"),
    }
    node.raft.runtime_config().elect(false);
}

/// Stored tokens as this replica holds them, for `AdminOnly`. A replica that cannot prove it
/// is current might not know of a revocation, so it refuses to judge (UNAVAILABLE: ask
/// another node) rather than admit a token the cluster revoked.
fn stored_tokens(node: Arc<Node>) -> auth::SyncLookup {
    Arc::new(move |id: &str| {
        let bound = Duration::from_millis(node.config.freshness.default_max_age_ms);
        if node.freshness.age().is_none_or(|age| age > bound) {
            return Err(KvError::Unavailable(
                "this replica cannot prove it is current enough to check a token; ask another node".into(),
            ));
        }
        let record = node.reader.token(id).map_err(|e| e.to_kv())?;
        Ok(record.map(|r| auth::StoredToken { id: r.id, digest: r.digest, rights: r.rights }))
    })
}

/// A node is healthy while Raft runs and it can prove it is fresh: a follower cut off from
/// the leader, or a leader without its quorum, reports unhealthy once its proof ages.
#[derive(Clone)]
struct Healthy {
    raft: Raft,
    freshness: Freshness,
    max_age: Duration,
}

impl Healthy {
    /// Whether to serve, and why, in words.
    fn check(&self) -> (bool, String) {
        let state = self.raft.metrics().borrow().state;
        let age = self.freshness.age();
        let ok = state != openraft::ServerState::Shutdown && age.is_some_and(|a| a <= self.max_age);
        let age_text = age.map_or_else(|| "never proved".to_string(), |a| format!("{} ms old", a.as_millis()));
        (ok, format!("{state:?}, freshness proof {age_text}"))
    }
}

/// Keeps gRPC health in step with `check` (`Healthy::check`, or draining).
async fn report_health(mut reporter: tonic_health::server::HealthReporter, check: serve::CheckHealth) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut serving = None;
    loop {
        tick.tick().await;
        let (ok, _) = check();
        if serving != Some(ok) {
            if ok {
                reporter.set_serving::<CentralStoreServer<StoreService>>().await;
            } else {
                reporter.set_not_serving::<CentralStoreServer<StoreService>>().await;
            }
            serving = Some(ok);
        }
    }
}

fn raft_config(c: &Config) -> anyhow::Result<openraft::Config> {
    let cfg = openraft::Config {
        cluster_name: "kv-central".into(),
        heartbeat_interval: c.raft.heartbeat_ms,
        election_timeout_min: c.raft.election_min_ms,
        election_timeout_max: c.raft.election_max_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(c.raft.snapshot_every),
        max_in_snapshot_log_to_keep: c.raft.keep_logs,
        snapshot_max_chunk_size: 1 << 20,
        max_payload_entries: 256,
        ..Default::default()
    };
    Ok(cfg.validate()?)
}

/// Initializes a fresh cluster from `initial_members`, on the member with the smallest id only.
async fn bootstrap(node: Arc<Node>) {
    let members = &node.config.initial_members;
    let Some(first) = members.iter().map(|m| m.id).min() else { return };
    if first != node.id {
        return;
    }
    match node.raft.is_initialized().await {
        Ok(false) => {}
        Ok(true) => return,
        Err(e) => {
            tracing::error!(error = %e, "cannot tell whether the cluster is initialized");
            return;
        }
    }
    let map: BTreeMap<NodeId, RaftNode> = members.iter().map(|m| (m.id, RaftNode::new(m.addr.clone()))).collect();
    match node.raft.initialize(map).await {
        Ok(()) => tracing::info!(members = members.len(), "cluster initialized"),
        Err(e) => tracing::warn!(error = %e, "cluster initialization skipped"),
    }
}

/// On the leader, periodically proposes the removal of expired entries and old tombstones.
async fn sweep_loop(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_millis(node.config.sweep_interval_ms.max(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !node.is_leader() {
            continue;
        }
        let now_ms = kv_common::time::now_ms();
        // Tombstones outlive the change feed's window, then go; request records outlive any retry.
        let tombstones_before = node.reader.applied().saturating_sub(node.config.feed.retention);
        let requests_before_ms = now_ms.saturating_sub(node.config.request_retention_ms);
        match node.reader.has_sweep_work((now_ms / 1000) as i64, tombstones_before, requests_before_ms) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "reading the sweep indexes");
                continue;
            }
        }
        let cmd = Command::Sweep { now_ms, budget: node.config.sweep_budget, tombstones_before, requests_before_ms };
        if let Err(e) = propose(&node.raft, &node.metrics, cmd).await {
            tracing::debug!(error = %e, "sweep proposal failed");
        }
    }
}
