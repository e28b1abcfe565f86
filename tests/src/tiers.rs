//! Whole clusters for tier tests: central voters, regional tiers and edges as real
//! processes, started through the launcher with free ports in a temporary directory.

use crate::{dump_log, eventually, scrape};
use kv_client::{api, Client};
use kv_common::auth::{authorized, Authorized};
use kv_deploy::launch::LocalCluster;
use kv_deploy::topology::Topology;
use kv_proto::admin::v1::{cluster_admin_client::ClusterAdminClient, TransferLeaderRequest};
use kv_proto::store::v1::central_store_client::CentralStoreClient;
use std::time::Duration;

/// Limits scaled down for tests: cacheTtl and expirations of a second or two, and the
/// per-key write limit on, at one write per 200 ms.
pub const TEST_LIMITS: &str =
    "[limits]\nkey_write_interval_ms = 200\nmin_expiration_ttl_secs = 1\nmin_cache_ttl_secs = 1\n";

/// The real shape with test limits: 3 voters (a cuttable 1 ms link between every two), the
/// limits of `TEST_LIMITS` everywhere, and the `[[regions]]` of `regions`.
pub fn test_topology(regions: &str) -> Topology {
    let text = format!("[central]\nvoters = 3\npeer_delay_ms = 1\nconfig = \"\"\"{TEST_LIMITS}\"\"\"\n{regions}");
    let mut t = Topology::parse(&text).expect("the test topology parses");
    t.edge_config = format!("max_stale_secs = 120\n{TEST_LIMITS}");
    t
}

/// Two regions, each with a push-mode edge and a ttl-mode edge:
/// edge 0 = a-push, 1 = a-ttl (region a), 2 = b-push, 3 = b-ttl (region b).
pub fn two_regions(delay_ms: u64) -> Topology {
    let text = format!(
        r#"
[[regions]]
name = "a"
central_delay_ms = {delay_ms}
edges = [{{ name = "a-push", delay_ms = 1 }}, {{ name = "a-ttl", delay_ms = 1, mode = "ttl" }}]

[[regions]]
name = "b"
central_delay_ms = {delay_ms}
edges = [{{ name = "b-push", delay_ms = 1 }}, {{ name = "b-ttl", delay_ms = 1, mode = "ttl" }}]
"#
    );
    let mut t = test_topology(&text);
    t.regional_config = "catch_up_wait_ms = 50\n".into();
    t
}

/// Edge indexes of `two_regions`.
pub const A_PUSH: usize = 0;
pub const A_TTL: usize = 1;
pub const B_PUSH: usize = 2;
pub const B_TTL: usize = 3;

/// A running cluster and its data directory, both gone when dropped.
pub struct Tiers {
    pub cluster: LocalCluster,
    _root: tempfile::TempDir,
}

impl Tiers {
    /// The two-region cluster with `delay_ms` one-way between each regional tier and the central group.
    pub async fn start(delay_ms: u64) -> anyhow::Result<Tiers> {
        Tiers::start_topology(&two_regions(delay_ms)).await
    }

    /// A cluster of `topology` (a variant of `two_regions`, so the edge indexes hold).
    pub async fn start_topology(topology: &Topology) -> anyhow::Result<Tiers> {
        let root = tempfile::tempdir()?;
        let cluster = LocalCluster::start(topology, root.path()).await?;
        Ok(Tiers { cluster, _root: root })
    }

    /// The directory the cluster keeps its data, secrets and certificates under.
    pub fn root(&self) -> &std::path::Path {
        self._root.path()
    }

    /// The log of every node so far, by node name: central nodes, regional tiers, edges.
    pub fn logs(&self) -> Vec<(String, String)> {
        let c = &self.cluster;
        let nodes = c.central.iter().chain(c.regions.iter().map(|r| &r.regional)).chain(c.edges().map(|e| &e.node));
        nodes.map(|n| (n.name.clone(), std::fs::read_to_string(n.log_path()).unwrap_or_default())).collect()
    }

    /// A client of edge `i` (trusting the cluster CA when it runs TLS).
    pub async fn edge(&self, i: usize) -> anyhow::Result<Client> {
        let e = self.cluster.edges().nth(i).ok_or_else(|| anyhow::anyhow!("no edge {i}"))?;
        Client::connect_with_ca(&e.node.grpc.to_string(), self.cluster.ca_file().as_deref())
            .await?
            .with_token(&self.cluster.admin_token)
    }

    /// A metric of edge `i`.
    pub async fn edge_metric(&self, i: usize, name: &str) -> f64 {
        let e = self.cluster.edges().nth(i).expect("edge index");
        scrape(e.node.http, name).await
    }

    /// A metric of regional tier `r`.
    pub async fn regional_metric(&self, r: usize, name: &str) -> f64 {
        scrape(self.cluster.regions[r].regional.http, name).await
    }

    /// The largest value of a metric over the central nodes (`name` may carry labels).
    pub async fn central_max(&self, name: &str) -> f64 {
        let mut max = 0.0f64;
        for c in &self.cluster.central {
            max = max.max(scrape(c.http, name).await);
        }
        max
    }

    /// A metric summed over the central nodes (`name` may carry labels).
    pub async fn central_metric(&self, name: &str) -> f64 {
        let mut sum = 0.0;
        for c in &self.cluster.central {
            sum += scrape(c.http, name).await;
        }
        sum
    }

    /// A store client of central node `i` (no link in between), with the admin token.
    pub fn central_store(&self, i: usize) -> CentralStoreClient<Authorized> {
        CentralStoreClient::new(self.authorized(self.cluster.central[i].grpc))
    }

    /// An admin client of central node `i`, with the admin token.
    pub fn central_admin(&self, i: usize) -> ClusterAdminClient<Authorized> {
        ClusterAdminClient::new(self.authorized(self.cluster.central[i].grpc))
    }

    /// A lazily connecting channel to `addr` that sends the admin token.
    pub fn authorized(&self, addr: std::net::SocketAddr) -> Authorized {
        let ch =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("a valid address").connect_lazy();
        authorized(ch, &self.cluster.admin_token).expect("the admin token is ASCII")
    }

    /// The REST API of edge `i`, with the admin token.
    pub fn rest(&self, i: usize) -> crate::rest::Rest {
        let e = self.cluster.edges().nth(i).expect("edge index");
        crate::rest::Rest::new(e.node.http, Some(&self.cluster.admin_token))
    }

    /// Makes sure central node `i` does not lead (moving the leadership elsewhere if it does),
    /// and returns the index of the leader.
    pub async fn lead_elsewhere_than(&self, i: usize) -> anyhow::Result<usize> {
        let leader = self.cluster.central_leader().await.ok_or_else(|| anyhow::anyhow!("no leader"))?;
        if leader != i {
            return Ok(leader);
        }
        let to = (i + 1) % self.cluster.central.len();
        self.central_admin(leader).transfer_leader(TransferLeaderRequest { to: to as u64 + 1 }).await?;
        eventually(Duration::from_secs(20), "the leadership to move", || async {
            (self.cluster.central_leader().await == Some(to)).then_some(())
        })
        .await?;
        Ok(to)
    }

    /// Creates a namespace through edge 0.
    pub async fn namespace(&self) -> anyhow::Result<String> {
        Ok(self.edge(A_PUSH).await?.create_namespace("test").await?.id)
    }
}

impl Drop for Tiers {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in self.cluster.central.iter().chain(self.cluster.regions.iter().map(|r| &r.regional)) {
                dump_log(&n.name, &n.log_path());
            }
            for e in self.cluster.edges() {
                dump_log(&e.node.name, &e.node.log_path());
            }
        }
    }
}

/// A put of `value` to `key` with no options.
pub fn put(ns: &str, key: &str, value: &str) -> api::PutRequest {
    api::PutRequest { namespace_id: ns.into(), key: key.into(), value: value.to_string().into(), ..Default::default() }
}

/// The value text and cache status of a get.
pub fn seen(r: &api::GetResponse) -> (Option<String>, api::CacheStatus) {
    let status = api::CacheStatus::try_from(r.cache_status).unwrap_or(api::CacheStatus::Unspecified);
    (r.found.then(|| String::from_utf8_lossy(&r.value).into_owned()), status)
}

/// Waits until edge `client` answers `key` with `want`, returning that answer.
pub async fn until_value(
    client: &Client,
    ns: &str,
    key: &str,
    cache_ttl: i64,
    want: Option<&str>,
    within: Duration,
) -> anyhow::Result<api::GetResponse> {
    eventually(within, &format!("{key} to read {want:?}"), || async {
        let r = client.get(ns, key, Some(cache_ttl)).await.ok()?;
        (seen(&r).0.as_deref() == want).then_some(r)
    })
    .await
}
