//! The one harness of every cluster test: real processes started by the same launcher as
//! `scripts/run-cluster` (`kv_deploy::launch::LocalCluster`), on free loopback ports in a
//! temporary directory, with a cuttable delay link on every link, voters included. Every
//! process is killed when the harness is dropped (also on panic, when the last lines of each
//! node's log are printed) and, through `PR_SET_PDEATHSIG`, if the test process itself dies.
//!
//! `Cluster` is a central group alone; `tiers::Tiers` adds regional tiers and edges.

pub mod fault;
pub mod rest;
pub mod tiers;

use anyhow::{bail, Context};
use kv_common::auth::{authorized, Authorized};
use kv_deploy::launch::LocalCluster;
use kv_deploy::topology::Topology;
use kv_proto::admin::v1::{cluster_admin_client::ClusterAdminClient, AddLearnerRequest, Member, MetricsRequest};
use kv_proto::store::v1::{self as pb, central_store_client::CentralStoreClient};
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Largest message the test clients send or accept.
const MAX_MESSAGE: usize = 256 << 20;

/// Settings written into every node's config file.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Extra TOML appended to each node's config (e.g. `[limits]` or `[feed]` sections).
    pub extra_toml: String,
    /// One-way delay on the link between every two voters.
    pub peer_delay_ms: u64,
    /// Mutual TLS on every link; the test's clients then present a central node's
    /// certificate (the store, Raft and admin APIs all take it).
    pub tls: bool,
    /// Voters reach each other directly, not through links (so `isolate` cannot cut them
    /// apart): for benchmarks that compare with peers linked directly.
    pub direct_peers: bool,
}

impl ClusterOptions {
    /// No per-key write limit, for the few tests whose subject is many writes to one key at
    /// once (the limit has its own tests; every other test runs with it on).
    pub fn without_rate_limit() -> Self {
        ClusterOptions { extra_toml: "[limits]\nkey_write_interval_ms = 0\n".into(), ..Default::default() }
    }
}

/// Where one central node listens.
#[derive(Debug, Clone, Copy)]
pub struct CentralNode {
    pub id: u64,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

/// A central group of real `central-store` processes; index `i` in every method is the
/// position in `nodes`.
pub struct Cluster {
    pub nodes: Vec<CentralNode>,
    pub local: LocalCluster,
    /// What the test's clients connect with when the cluster runs TLS.
    identity: Option<kv_common::tls::ClientSource>,
    root: tempfile::TempDir,
}

pub use kv_deploy::launch::free_port;

/// A central-only topology of `n` voters.
fn central_topology(n: usize, options: &ClusterOptions, initialize: bool) -> anyhow::Result<Topology> {
    let mut t = Topology::parse(&format!(
        "regions = []\n[central]\nvoters = {n}\ninitialize = {initialize}\npeer_delay_ms = {}\ndirect = {}\n",
        options.peer_delay_ms, options.direct_peers
    ))?;
    t.central.config = options.extra_toml.clone();
    t.tls = options.tls;
    Ok(t)
}

impl Cluster {
    /// Starts `n` voters that form one cluster by themselves, and waits until all follow one leader.
    pub async fn start(n: usize, options: ClusterOptions) -> anyhow::Result<Cluster> {
        let c = Cluster::launch(central_topology(n, &options, true)?).await?;
        c.wait_until_all_follow(Duration::from_secs(30)).await?;
        Ok(c)
    }

    /// Starts `n` nodes that know of no cluster yet (to be formed through the admin API).
    pub async fn start_bare(n: usize, options: ClusterOptions) -> anyhow::Result<Cluster> {
        Cluster::launch(central_topology(n, &options, false)?).await
    }

    async fn launch(topology: Topology) -> anyhow::Result<Cluster> {
        let root = tempfile::tempdir()?;
        let local = LocalCluster::start(&topology, root.path()).await?;
        let identity = match topology.tls {
            false => None,
            true => {
                let ca = kv_deploy::pki::Ca::open_or_create(&kv_deploy::launch::tls_dir(root.path()))?;
                let files = ca.issue(kv_common::tls::Role::Central, "test-client", &["127.0.0.1".into()])?;
                let tls = kv_common::tls::Tls::load(&files, kv_common::tls::Role::Central)?.context("TLS files")?;
                Some(kv_common::tls::ClientSource::Node(tls))
            }
        };
        let mut c = Cluster { nodes: Vec::new(), local, identity, root };
        c.refresh_nodes();
        Ok(c)
    }

    fn refresh_nodes(&mut self) {
        self.nodes = self
            .local
            .central
            .iter()
            .enumerate()
            .map(|(i, n)| CentralNode { id: i as u64 + 1, grpc: n.grpc, http: n.http })
            .collect();
    }

    /// Waits until every running node names the same leader (so no node answers
    /// "no leader known" any more) and returns that leader's index.
    pub async fn wait_until_all_follow(&self, timeout: Duration) -> anyhow::Result<usize> {
        eventually(timeout, "every node to name the same leader", || async {
            let mut leaders = Vec::new();
            for i in 0..self.nodes.len() {
                if self.is_running(i) {
                    leaders.push(self.metrics(i).await.ok().and_then(|m| m.leader_id));
                }
            }
            let first = (*leaders.first()?)?;
            if leaders.iter().any(|l| *l != Some(first)) {
                return None;
            }
            self.nodes.iter().position(|n| n.id == first)
        })
        .await
    }

    /// Whether node `i`'s process runs (it has not been killed or stopped).
    pub fn is_running(&self, i: usize) -> bool {
        self.local.central[i].has_child()
    }

    /// `kill -9` node `i`.
    pub fn kill(&mut self, i: usize) {
        self.local.central[i].kill();
    }

    /// Stops node `i` with SIGTERM (a clean shutdown) and waits for it to exit.
    pub fn stop(&mut self, i: usize) {
        self.local.central[i].stop(Duration::from_secs(30));
    }

    /// Starts a stopped or killed node again on its old ports and data.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.is_running(i) {
            bail!("node {i} is still running");
        }
        self.local.central[i].start()
    }

    /// Cuts node `i` off from the other voters (tiers can still reach it).
    pub fn isolate(&self, i: usize) {
        self.local.isolate_central(i);
    }

    /// Undoes `isolate`.
    pub fn heal(&self, i: usize) {
        self.local.heal_central(i);
    }

    /// Starts a fresh, empty node (not yet a member) and returns its index.
    pub fn start_new_node(&mut self) -> anyhow::Result<usize> {
        let i = self.local.add_central(self.root.path())?;
        self.refresh_nodes();
        Ok(i)
    }

    /// Adds node `i` as a learner through the leader and waits until it caught up.
    pub async fn add_learner(&self, i: usize) -> anyhow::Result<()> {
        let leader = self.leader().await?;
        let member = Member { node_id: self.nodes[i].id, addr: self.nodes[i].grpc.to_string() };
        let req = AddLearnerRequest { member: Some(member), blocking: true };
        eventually(Duration::from_secs(30), "the learner to be added", || async {
            self.admin(leader).add_learner(req.clone()).await.ok().map(|_| ())
        })
        .await
    }

    /// A store client for node `i` (connects lazily), with the admin token.
    pub fn store(&self, i: usize) -> CentralStoreClient<Authorized> {
        CentralStoreClient::new(self.authorized(i))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// An admin client for node `i`, with the admin token.
    pub fn admin(&self, i: usize) -> ClusterAdminClient<Authorized> {
        ClusterAdminClient::new(self.authorized(i))
    }

    fn authorized(&self, i: usize) -> Authorized {
        let addr = self.nodes[i].grpc;
        let ch = match &self.identity {
            None => channel(addr),
            Some(me) => tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("loopback address is a valid URI")
                .connect_timeout(Duration::from_secs(2))
                .connect_with_connector_lazy(kv_common::tls::Connector(me.clone(), &[])),
        };
        authorized(ch, &self.local.admin_token).expect("the admin token is ASCII")
    }

    /// Node `i`'s own view of the Raft group.
    pub async fn metrics(&self, i: usize) -> anyhow::Result<kv_proto::admin::v1::ClusterMetrics> {
        Ok(self.admin(i).metrics(MetricsRequest {}).await?.into_inner())
    }

    /// The index of the node that a running node reports as leader (and that agrees).
    pub async fn leader(&self) -> anyhow::Result<usize> {
        for i in 0..self.nodes.len() {
            if !self.is_running(i) {
                continue;
            }
            if let Ok(m) = self.metrics(i).await {
                if m.leader_id == Some(m.node_id) {
                    return Ok(i);
                }
            }
        }
        bail!("no running node reports itself leader")
    }

    /// Waits until some running node leads.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        eventually(timeout, "a leader", || async { self.leader().await.ok() }).await
    }

    /// The Prometheus text of node `i`.
    pub async fn scrape(&self, i: usize) -> anyhow::Result<String> {
        let tls = self.local.client_tls.as_ref();
        Ok(kv_deploy::launch::http_get_with(tls, self.nodes[i].http, "/metrics").await?.1)
    }

    /// Creates a namespace through node `i`, retrying while no leader is known.
    pub async fn create_namespace(&self, i: usize, title: &str) -> anyhow::Result<String> {
        let req = pb::CreateNamespaceRequest { title: title.into(), request_id: format!("create-{title}") };
        let ns = store_call!(self, i, create_namespace, req)?;
        Ok(ns.id)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.local.central {
                dump_log(&n.name, &n.log_path());
            }
        }
    }
}

/// Prints the last lines of a node's log (for a failing test).
pub fn dump_log(name: &str, path: &std::path::Path) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(40).collect();
    eprintln!("---- {name} (last lines) ----");
    for l in tail.iter().rev() {
        eprintln!("{l}");
    }
}

fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("loopback address is a valid URI")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// Calls a `CentralStore` method on node `i` of a cluster, retrying while it answers
/// UNAVAILABLE (see `retry_unavailable`).
#[macro_export]
macro_rules! store_call {
    ($cluster:expr, $i:expr, $method:ident, $req:expr) => {{
        let req = $req;
        $crate::retry_unavailable(|| {
            let mut client = $cluster.store($i);
            let req = req.clone();
            async move { client.$method(req).await }
        })
        .await
    }};
}

/// Retries a call while it fails with UNAVAILABLE (no leader yet, node down), for up to 30 s.
pub async fn retry_unavailable<T, F, Fut>(mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let outcome = eventually(Duration::from_secs(30), "an answer other than UNAVAILABLE", || {
        let reply = call();
        async move {
            match reply.await {
                Ok(r) => Some(Ok(r.into_inner())),
                Err(s) if s.code() == tonic::Code::Unavailable => None,
                Err(s) => Some(Err(anyhow::anyhow!("{:?}: {}", s.code(), s.message()))),
            }
        }
    })
    .await?;
    outcome
}

/// Polls `check` until it yields a value; fails after `timeout`, naming `what` it waited for.
/// Tests wait on conditions through this one function, never on fixed delays.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("gave up after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A plain HTTP/1.0 GET, enough for `/metrics` and `/health`.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    Ok(kv_deploy::launch::http_get(addr, path).await?.1)
}

/// The value of a Prometheus sample without labels, from exposition text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// One metric of a node's `/metrics`; 0 when it cannot be read.
pub async fn scrape(addr: SocketAddr, name: &str) -> f64 {
    let text = http_get(addr, "/metrics").await.unwrap_or_default();
    metric_value(&text, name).unwrap_or(0.0)
}

/// A put of one key, as a one-item write.
pub fn put_op(key: &str, value: &[u8]) -> pb::WriteOp {
    pb::WriteOp {
        key: key.into(),
        op: Some(pb::write_op::Op::Put(pb::Put { value: value.to_vec().into(), ..Default::default() })),
        if_version: None,
    }
}

/// A delete of one key.
pub fn delete_op(key: &str) -> pb::WriteOp {
    pb::WriteOp { key: key.into(), op: Some(pb::write_op::Op::Delete(pb::Delete {})), if_version: None }
}

/// Writes one item through node `i` and returns its result (errors of the item included).
pub async fn write_one(cluster: &Cluster, i: usize, ns: &str, op: pb::WriteOp) -> anyhow::Result<pb::OpResult> {
    let reply = store_call!(
        cluster,
        i,
        write,
        pb::WriteRequest { namespace_id: ns.into(), ops: vec![op], ..Default::default() }
    )?;
    reply.results.into_iter().next().context("write returned no result")
}

/// Reads a key at node `i` once that node has applied `min_version` (retrying while unavailable).
pub async fn read_at(
    cluster: &Cluster,
    i: usize,
    ns: &str,
    key: &str,
    min_version: u64,
) -> anyhow::Result<Option<pb::Entry>> {
    let reply = store_call!(
        cluster,
        i,
        get,
        pb::GetRequest { namespace_id: ns.into(), key: key.into(), min_version, ..Default::default() }
    )?;
    Ok(reply.entry)
}

/// The next event of a Watch stream; fails if none comes within 10 s or the stream ends.
pub async fn next_event(s: &mut tonic::Streaming<pb::WatchEvent>) -> anyhow::Result<pb::watch_event::Event> {
    let msg =
        tokio::time::timeout(Duration::from_secs(10), s.message()).await.context("watch stream went silent")??;
    msg.context("watch stream ended")?.event.context("watch event without content")
}
