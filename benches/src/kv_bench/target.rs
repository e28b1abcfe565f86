//! Where the benchmark's edges are: named endpoints, a cluster `kv-local-cluster` started
//! (found through its data directory), or a local cluster the benchmark starts itself.

use anyhow::Context;
use clap::Args;
use kv_benches::{topology, BenchCluster};
use kv_client::Client;
use kv_deploy::reach::Reach;
use std::path::{Path, PathBuf};

/// Where the benchmark's edges are.
#[derive(Args)]
pub struct Target {
    /// An edge to drive, as NAME=HOST:PORT or HOST:PORT (repeat for several regions).
    #[arg(long = "endpoint", env = "KV_BENCH_ENDPOINTS", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Drive every edge of the cluster `kv-local-cluster` (`scripts/run-cluster`) runs with
    /// this data directory, on loopback or on namespace machines: its `cluster.toml` gives
    /// the edges, their modes, the CA and the admin token (--token and --ca still win).
    #[arg(long, conflicts_with = "endpoints")]
    cluster: Option<PathBuf>,
    /// Start the default local topology (from the binaries beside this one) and drive
    /// every edge of it, instead of --endpoint.
    #[arg(long, conflicts_with_all = ["endpoints", "cluster"])]
    local: bool,
    /// The cluster CA, for endpoints serving TLS.
    #[arg(long, env = "KV_CA")]
    ca: Option<PathBuf>,
    /// A token with read and write rights on the namespace.
    #[arg(long, env = "KV_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The namespace id; by default the namespace titled `kv-bench`, made if missing.
    #[arg(long)]
    namespace: Option<String>,
    /// Edges that run in mode `ttl` (KV's refresh: no pushes), by name. Only a label for
    /// --endpoint; with --local these edges are started in mode ttl; with --cluster, the
    /// cluster's own ttl edges are added.
    #[arg(long, value_delimiter = ',')]
    pub ttl_edges: Vec<String>,
}

/// The endpoints in use, and the local cluster when the benchmark started one.
pub struct Connected {
    /// (name, address) of each edge.
    pub endpoints: Vec<(String, String)>,
    /// Each edge's HTTP address (metrics), where the benchmark knows it (`--cluster`, `--local`).
    pub http: Vec<Option<std::net::SocketAddr>>,
    pub ca: Option<PathBuf>,
    pub token: Option<String>,
    pub namespace: String,
    /// Edges in mode `ttl`, by name.
    ttl_edges: Vec<String>,
    _local: Option<BenchCluster>,
}

impl Connected {
    /// How the edge `name` is refreshed, as the user or the cluster's description labelled it.
    pub fn mode_of(&self, name: &str) -> &'static str {
        if self.ttl_edges.iter().any(|e| e == name) {
            "ttl"
        } else {
            "push"
        }
    }

    /// A metric of edge `i`, when its HTTP address is known.
    pub async fn edge_metric(&self, i: usize, name: &str) -> Option<f64> {
        let addr = self.http.get(i).copied().flatten()?;
        let tls = match &self.ca {
            Some(ca) => Some(kv_common::tls::tool_config(ca).ok()?),
            None => None,
        };
        let (_, text) = kv_deploy::launch::http_get_with(tls.as_ref(), addr, "/metrics").await.ok()?;
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    }

    /// `n` connections to each endpoint, in the endpoints' order.
    pub async fn connections(&self, n: usize) -> anyhow::Result<Vec<Vec<kv_client::RawClient>>> {
        let mut all = Vec::new();
        for (_, addr) in &self.endpoints {
            let mut clients = Vec::new();
            for _ in 0..n.max(1) {
                clients.push(client(addr, self.ca.as_deref(), self.token.as_deref()).await?.raw());
            }
            all.push(clients);
        }
        Ok(all)
    }
}

impl Target {
    pub async fn connect(&self) -> anyhow::Result<Connected> {
        let mut ttl_edges = self.ttl_edges.clone();
        let mut http = Vec::new();
        let (endpoints, ca, token, local) = if let Some(dir) = &self.cluster {
            let reach = Reach::read(dir)?;
            anyhow::ensure!(!reach.edges.is_empty(), "the cluster under {} has no edges", dir.display());
            ttl_edges.extend(reach.edges.iter().filter(|e| e.mode == "ttl").map(|e| e.name.clone()));
            http = reach.edges.iter().map(|e| Some(e.http)).collect();
            let edges = reach.edges.iter().map(|e| (e.name.clone(), e.grpc.to_string())).collect();
            let token = match &self.token {
                Some(t) => t.clone(),
                None => reach.token()?,
            };
            (edges, self.ca.clone().or(reach.ca), Some(token), None)
        } else if self.local {
            let ttl: Vec<&str> = self.ttl_edges.iter().map(String::as_str).collect();
            let bench = BenchCluster::start(topology(None, &ttl)?).await?;
            let edges: Vec<(String, String)> =
                bench.cluster.edges().map(|e| (e.node.name.clone(), e.node.grpc.to_string())).collect();
            http = bench.cluster.edges().map(|e| Some(e.node.http)).collect();
            (edges, bench.cluster.ca_file(), Some(bench.cluster.admin_token.clone()), Some(bench))
        } else {
            anyhow::ensure!(!self.endpoints.is_empty(), "name at least one --endpoint (or use --local)");
            let edges = self
                .endpoints
                .iter()
                .map(|e| match e.split_once('=') {
                    Some((name, addr)) => (name.to_owned(), addr.to_owned()),
                    None => (e.clone(), e.clone()),
                })
                .collect();
            (edges, self.ca.clone(), self.token.clone(), None)
        };
        let first = client(&endpoints[0].1, ca.as_deref(), token.as_deref()).await?;
        let namespace = match &self.namespace {
            Some(id) => id.clone(),
            None => namespace_titled(&first, "kv-bench").await?,
        };
        http.resize(endpoints.len(), None);
        Ok(Connected { endpoints, http, ca, token, namespace, ttl_edges, _local: local })
    }
}

/// A client of the edge at `addr`.
pub async fn client(addr: &str, ca: Option<&Path>, token: Option<&str>) -> anyhow::Result<Client> {
    let c = Client::connect_with_ca(addr, ca).await.with_context(|| format!("connecting to {addr}"))?;
    match token {
        Some(t) => c.with_token(t),
        None => Ok(c),
    }
}

async fn namespace_titled(client: &Client, title: &str) -> anyhow::Result<String> {
    if let Some(ns) = client.list_namespaces().await?.into_iter().find(|n| n.title == title) {
        return Ok(ns.id);
    }
    Ok(client.create_namespace(title).await?.id)
}
