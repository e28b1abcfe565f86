//! One fault-suite run: start the real shape (3 central voters, two regions at different
//! distances, a push-mode and a ttl-mode edge in each, the per-key rate limit on, delays on
//! every link), let the clients and the nemesis loose for a while, heal everything, let it
//! settle, read the final state, and check the history.

use super::checker::{check, Final, Settings, Violation};
use super::history::{Call, KeyRead, Op, ReadMode, Recorded, Recorder};
use super::nemesis::Nemesis;
use super::watcher::Watcher;
use super::workload::{key_name, recorded, Client};
use crate::tiers::{test_topology, TEST_LIMITS};
use anyhow::Context;
use kv_client::api;
use kv_deploy::launch::LocalCluster;
use kv_deploy::topology::Topology;
use kv_proto::store::v1::{self as pb, central_store_client::CentralStoreClient};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The edges' stale-if-error bound in a run.
const MAX_STALE_SECS: u64 = 5;
/// How long the healed cluster settles before the final reads: pushes and feed switches
/// after a heal take a few seconds at most.
const SETTLE: Duration = Duration::from_secs(5);

/// What one run is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub seed: u64,
    /// How long the clients and the nemesis run.
    pub seconds: u64,
    pub keys: usize,
    pub clients_per_edge: usize,
    /// Bytes of cache at every edge and regional tier, when not the nodes' default.
    pub cache_bytes: Option<u64>,
}

/// What one run found.
pub struct Outcome {
    pub history: Recorded,
    pub final_reads: Vec<Op>,
    pub violations: Vec<Violation>,
    /// Copies the edges and regional tiers dropped to make room: whether the run checked
    /// the guarantees across evictions at all.
    pub evictions: u64,
}

/// The topology of a run: region 0 near the central store, region 1 far; edges in order
/// near-push, near-ttl, far-push, far-ttl.
pub fn topology(cache_bytes: Option<u64>) -> Topology {
    let mut t = test_topology(
        r#"
[[regions]]
name = "near"
central_delay_ms = 5
edges = [{ name = "near-push", delay_ms = 1 }, { name = "near-ttl", delay_ms = 1, mode = "ttl" }]

[[regions]]
name = "far"
central_delay_ms = 30
edges = [{ name = "far-push", delay_ms = 1 }, { name = "far-ttl", delay_ms = 1, mode = "ttl" }]
"#,
    );
    t.edge_config = format!("max_stale_secs = {MAX_STALE_SECS}\n{TEST_LIMITS}");
    if let Some(bytes) = cache_bytes {
        let line = format!("cache_bytes = {bytes}\n");
        t.edge_config.insert_str(0, &line);
        t.regional_config.insert_str(0, &line);
    }
    t
}

/// Runs `plan` with the cluster's data under `root`.
pub async fn run(plan: Plan, root: &Path) -> anyhow::Result<Outcome> {
    let topology = topology(plan.cache_bytes);
    let cluster = LocalCluster::start(&topology, root).await.context("starting the cluster")?;
    let edges: Vec<(std::net::SocketAddr, bool)> =
        cluster.edges().map(|e| (e.node.grpc, !e.node.name.ends_with("-ttl"))).collect();
    let edge_region: Vec<usize> =
        cluster.regions.iter().enumerate().flat_map(|(r, region)| region.edges.iter().map(move |_| r)).collect();
    let first = kv_client::Client::connect(&edges[0].0.to_string()).await?.with_token(&cluster.admin_token)?;
    let namespace = first.create_namespace(&format!("fault-{}", plan.seed)).await?.id;

    let rec = Recorder::new();
    // A watcher of the whole namespace at every edge, from before the first write to the end.
    let (stop_watching, watching) = tokio::sync::watch::channel(false);
    let watchers: Vec<_> = edges
        .iter()
        .enumerate()
        .map(|(edge, (endpoint, _))| {
            let w =
                Watcher { edge, endpoint: *endpoint, namespace: namespace.clone(), token: cluster.admin_token.clone() };
            tokio::spawn(w.run(rec.clone(), watching.clone()))
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(plan.seconds);
    let mut clients = Vec::new();
    for (e, (addr, _)) in edges.iter().enumerate() {
        for c in 0..plan.clients_per_edge {
            let id = e * plan.clients_per_edge + c;
            let client = Client {
                id,
                edge: e,
                endpoint: *addr,
                namespace: namespace.clone(),
                keys: plan.keys,
                seed: plan.seed.wrapping_mul(1_000_003).wrapping_add(id as u64),
                token: cluster.admin_token.clone(),
                // Session reads go to an edge of the other region.
                far: edges
                    .iter()
                    .enumerate()
                    .find(|(f, _)| edge_region[*f] != edge_region[e])
                    .map_or((e, *addr), |(f, (a, _))| (f, *a)),
            };
            clients.push(tokio::spawn(client.run(rec.clone(), until)));
        }
    }
    let mut nemesis = Nemesis::new(cluster, plan.seed ^ 0x5eed);
    nemesis.run(&rec, until).await;
    for c in clients {
        c.await.context("a client task failed")?;
    }

    nemesis.heal_all();
    let mut cluster = nemesis.cluster;
    cluster.wait_for_leader().await.context("the healed central group")?;
    cluster.wait_until_serving().await.context("the healed tiers")?;
    tokio::time::sleep_until((Instant::now() + SETTLE).into()).await;

    let _ = stop_watching.send(true);
    let mut history = rec.take();
    for w in watchers {
        history.watches.push(w.await.context("a watcher task failed")?);
    }
    let finals = final_state(&cluster, &namespace, plan.keys, &history).await?;
    let final_rec = Recorder::new();
    for (e, (addr, push)) in edges.iter().enumerate() {
        if *push {
            final_reads(&final_rec, e, *addr, &namespace, plan.keys, &cluster.admin_token).await?;
        }
    }
    let mut final_reads = final_rec.take().ops;
    for (i, op) in final_reads.iter_mut().enumerate() {
        op.id = history.ops.len() + i;
    }
    let settings = Settings { max_stale_ms: MAX_STALE_SECS * 1000, stale_grace_ms: 8_000, edge_region };
    let violations = check(&history, &finals, &final_reads, &settings);
    let mut evictions = 0.0;
    for e in cluster.edges() {
        evictions += crate::scrape(e.node.http, "kv_edge_evictions_total").await;
    }
    for r in &cluster.regions {
        evictions += crate::scrape(r.regional.http, "kv_regional_evictions_total").await;
    }
    Ok(Outcome { history, final_reads, violations, evictions: evictions as u64 })
}

/// Each key as the central store holds it once everything is healed: read at a central
/// node that proves itself fresh, at least as new as every acknowledged write.
async fn final_state(
    cluster: &LocalCluster,
    ns: &str,
    keys: usize,
    history: &Recorded,
) -> anyhow::Result<HashMap<String, Final>> {
    let newest = history
        .ops
        .iter()
        .filter_map(|op| match &op.call {
            Call::Write { result: super::history::WriteResult::Done(items), .. } => {
                items.iter().map(|i| i.version).max()
            }
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let addr = cluster.central[0].grpc;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
    let mut store = CentralStoreClient::new(kv_common::auth::authorized(ch, &cluster.admin_token)?);
    let mut out = HashMap::new();
    for k in 0..keys {
        let key = key_name(k);
        let req = pb::GetRequest {
            namespace_id: ns.into(),
            key: key.clone(),
            min_version: newest,
            max_age_ms: 200,
            ..Default::default()
        };
        let r = crate::retry_unavailable(|| {
            let req = req.clone();
            let mut s = store.clone();
            async move { s.get(req).await }
        })
        .await?;
        let value = r.entry.as_ref().map(|e| recorded(&String::from_utf8_lossy(&e.value)));
        let version = r.entry.as_ref().map_or(r.version, |e| e.version);
        out.insert(key, (version, value));
        store = store.clone();
    }
    Ok(out)
}

/// Reads every key at a push-mode edge with a long cacheTtl: what it serves from its copies.
async fn final_reads(
    rec: &Recorder,
    edge: usize,
    addr: std::net::SocketAddr,
    ns: &str,
    keys: usize,
    token: &str,
) -> anyhow::Result<()> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
    let mut kv = kv_client::raw_client(ch, Some(token))?;
    for k in 0..keys {
        let key = key_name(k);
        let start = rec.now();
        let start_wall_ms = kv_common::time::now_ms();
        let req = api::GetRequest {
            namespace_id: ns.into(),
            key: key.clone(),
            cache_ttl: Some(300),
            with_metadata: false,
            ..Default::default()
        };
        let result = kv
            .get(req)
            .await
            .map(|r| {
                let r = r.into_inner();
                vec![KeyRead {
                    key: key.clone(),
                    value: r.found.then(|| recorded(&String::from_utf8_lossy(&r.value))),
                    version: r.version,
                    stale: r.cache_status == api::CacheStatus::Stale as i32,
                    age_ms: r.age_ms,
                }]
            })
            .map_err(|s| s.message().to_owned());
        let call = Call::Read { keys: vec![key], cache_ttl_secs: 300, mode: ReadMode::Eventual, result };
        rec.op(Op { id: 0, client: usize::MAX, edge, start, end: rec.now(), start_wall_ms, call });
    }
    Ok(())
}

/// The shortest excerpt that shows a violation: the calls it names, and the faults around them.
pub fn excerpt(v: &Violation, history: &Recorded, final_reads: &[Op]) -> String {
    let ops: Vec<&Op> = v
        .ops
        .iter()
        .filter_map(|id| history.ops.get(*id).or_else(|| final_reads.get(id - history.ops.len())))
        .collect();
    let from = ops.iter().map(|o| o.start).min().unwrap_or(0).saturating_sub(2_000_000);
    let to = ops.iter().map(|o| o.end).max().unwrap_or(0) + 2_000_000;
    let mut lines = vec![format!("{}: {}", v.kind, v.detail)];
    for o in ops {
        lines.push(format!("  call {}", serde_json::to_string(o).unwrap_or_default()));
    }
    for f in history.faults.iter().filter(|f| f.start <= to && f.end >= from) {
        lines.push(format!("  fault {}", serde_json::to_string(f).unwrap_or_default()));
    }
    lines.join("\n")
}
