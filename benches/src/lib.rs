//! What the tier benchmarks share: the default topology started as real processes in a
//! temporary directory, bulk loading, metric scrapes, and latency summaries that print as
//! one JSON object per result and as a human table.

pub mod closed_loop;
pub mod driver;
pub mod peers;
pub mod plots;
pub mod visibility;
pub mod ycsb;

use anyhow::Context;
use hdrhistogram::Histogram;
use kv_client::{api, Client};
use kv_deploy::launch::{Edge, LocalCluster};
use kv_deploy::topology::{Topology, DEFAULT};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The topology in `file`, or else the default one (3 voters; us-east 5 ms, eu-west 40 ms,
/// ap-south 75 ms one way to the central group), on free ports, with the edges named in
/// `ttl_edges` in mode `ttl`.
pub fn topology(file: Option<&Path>, ttl_edges: &[&str]) -> anyhow::Result<Topology> {
    let text = match file {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        None => DEFAULT.to_string(),
    };
    let mut t = Topology::parse(&text)?;
    t.base_port = 0;
    for e in t.regions.iter_mut().flat_map(|r| r.edges.iter_mut()) {
        if ttl_edges.contains(&e.name.as_str()) {
            e.mode = Some("ttl".into());
        }
    }
    Ok(t)
}

/// A running cluster and its data directory, both gone when dropped.
pub struct BenchCluster {
    pub topology: Topology,
    pub cluster: LocalCluster,
    _root: tempfile::TempDir,
}

impl BenchCluster {
    /// Starts `topology` from the binaries beside this one (build them with `cargo build --release --bins`).
    pub async fn start(topology: Topology) -> anyhow::Result<BenchCluster> {
        let root = tempfile::tempdir()?;
        let cluster = LocalCluster::start(&topology, root.path()).await?;
        Ok(BenchCluster { topology, cluster, _root: root })
    }

    /// The edge called `name` in the topology.
    pub fn edge(&self, name: &str) -> anyhow::Result<&Edge> {
        self.cluster.edges().find(|e| e.node.name == name).with_context(|| format!("no edge named {name}"))
    }

    /// A new connection to edge `name`.
    pub async fn client(&self, name: &str) -> anyhow::Result<Client> {
        Client::connect_with_ca(&self.edge(name)?.node.grpc.to_string(), self.cluster.ca_file().as_deref())
            .await?
            .with_token(&self.cluster.admin_token)
    }

    /// The region an edge belongs to.
    pub fn region_of(&self, edge: &str) -> anyhow::Result<&kv_deploy::topology::RegionSpec> {
        self.topology
            .regions
            .iter()
            .find(|r| r.edges.iter().any(|e| e.name == edge))
            .with_context(|| format!("no edge named {edge}"))
    }

    /// Twice the largest one-way delay of any link a change crosses from edge `from` up to
    /// the central group and down to edge `to`: the propagation target's yardstick.
    pub fn largest_round_trip_ms(&self, from: &str, to: &str) -> anyhow::Result<u64> {
        let mut largest = 0;
        for name in [from, to] {
            let region = self.region_of(name)?;
            let edge = region.edges.iter().find(|e| e.name == name).map_or(0, |e| e.delay_ms);
            largest = largest.max(region.central_delay_ms).max(edge);
        }
        Ok(2 * largest)
    }

    /// A metric summed over every central node (`name` may carry labels).
    pub async fn central_metric(&self, name: &str) -> f64 {
        let mut sum = 0.0;
        for c in &self.cluster.central {
            sum += scrape(c.http, name).await;
        }
        sum
    }
}

/// One sample of a Prometheus endpoint, 0 when it cannot be read.
pub async fn scrape(addr: SocketAddr, name: &str) -> f64 {
    let text = kv_tests::http_get(addr, "/metrics").await.unwrap_or_default();
    kv_tests::metric_value(&text, name).unwrap_or(0.0)
}

/// Puts every `(key, value)` through `client`, in bulk writes of at most 10,000 items.
pub async fn load(client: &Client, ns: &str, items: Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let batch: Vec<api::BulkPutItem> = items
            .by_ref()
            .take(10_000)
            .map(|(key, value)| api::BulkPutItem { key, value: value.into(), ..Default::default() })
            .collect();
        let req = api::PutBulkRequest { namespace_id: ns.into(), items: batch, ..Default::default() };
        let r = client.put_bulk(req).await?;
        anyhow::ensure!(r.unsuccessful_keys.is_empty(), "bulk load failed for {:?}", r.unsuccessful_keys);
    }
    Ok(())
}

/// Writes `lines` to `to`: a file, or standard output for `-`; nowhere for `None`.
pub fn write_json_lines(to: Option<&Path>, lines: &[serde_json::Value]) -> anyhow::Result<()> {
    use std::io::Write as _;
    match to {
        Some(p) if p.as_os_str() == "-" => lines.iter().for_each(|l| println!("{l}")),
        Some(p) => {
            let mut f = std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
            for l in lines {
                writeln!(f, "{l}")?;
            }
        }
        None => {}
    }
    Ok(())
}

/// Clients of `closed_loop::run` that each put distinct keys (`{tag}{client}-{call}`) of
/// `value` through the central store's node `leader`; a write refused by the store fails.
pub fn central_puts(
    c: &kv_tests::Cluster,
    leader: usize,
    ns: &str,
    value: &[u8],
    n: usize,
    tag: &str,
) -> Vec<closed_loop::Call> {
    (0..n)
        .map(|w| {
            let (client, ns, value, tag) = (c.store(leader), ns.to_string(), value.to_vec(), format!("{tag}{w}-"));
            let call: closed_loop::Call = Box::new(move |n: u64| {
                let mut client = client.clone();
                let ops = vec![kv_tests::put_op(&format!("{tag}{n}"), &value)];
                let req = kv_proto::store::v1::WriteRequest { namespace_id: ns.clone(), ops, ..Default::default() };
                Box::pin(async move {
                    let r = client.write(req).await.map_err(|s| s.to_string())?.into_inner();
                    match r.results.iter().find_map(|x| x.error.as_ref()) {
                        None => Ok("ok"),
                        Some(e) => Err(e.message.clone()),
                    }
                })
            });
            call
        })
        .collect()
}

/// The cache status of an answer.
pub fn status(r: &api::GetResponse) -> api::CacheStatus {
    api::CacheStatus::try_from(r.cache_status).unwrap_or(api::CacheStatus::Unspecified)
}

/// A latency distribution in microseconds, from 1 µs to 10 minutes.
#[derive(Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid"))
    }
}

impl Latency {
    pub fn record(&mut self, d: Duration) {
        self.0.saturating_record(d.as_micros().max(1) as u64);
    }

    pub fn merge(&mut self, other: &Latency) {
        self.0.add(&other.0).ok();
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The `q` quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    /// The distribution as (latency in ms, share of samples at or under it) points, from
    /// the fastest sample to the slowest.
    pub fn cdf(&self) -> Vec<(f64, f64)> {
        let total = self.0.len().max(1) as f64;
        let mut seen = 0u64;
        let mut points = Vec::new();
        for v in self.0.iter_recorded() {
            seen += v.count_at_value();
            points.push((self.0.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0, seen as f64 / total));
        }
        points
    }

    pub fn max_ms(&self) -> f64 {
        self.0.max() as f64 / 1000.0
    }

    pub fn mean_ms(&self) -> f64 {
        self.0.mean() / 1000.0
    }

    /// `count`, `min_ms`, `p50_ms`, `p90_ms`, `p99_ms`, `p999_ms`, `max_ms` and `mean_ms`, merged into `fields`.
    pub fn json(&self, mut fields: serde_json::Value) -> serde_json::Value {
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        if let Some(o) = fields.as_object_mut() {
            o.insert("count".into(), self.count().into());
            o.insert("min_ms".into(), round(self.0.min() as f64 / 1000.0).into());
            o.insert("p50_ms".into(), round(self.ms(0.50)).into());
            o.insert("p90_ms".into(), round(self.ms(0.90)).into());
            o.insert("p99_ms".into(), round(self.ms(0.99)).into());
            o.insert("p999_ms".into(), round(self.ms(0.999)).into());
            o.insert("max_ms".into(), round(self.max_ms()).into());
            o.insert("mean_ms".into(), round(self.mean_ms()).into());
        }
        fields
    }

    /// The usual table cells: count, p50, p90, p99 and max in milliseconds.
    pub fn cells(&self) -> Vec<String> {
        vec![
            self.count().to_string(),
            format!("{:.2}", self.ms(0.50)),
            format!("{:.2}", self.ms(0.90)),
            format!("{:.2}", self.ms(0.99)),
            format!("{:.2}", self.max_ms()),
        ]
    }
}

/// The headers matching `Latency::cells`.
pub const LATENCY_HEADERS: [&str; 5] = ["n", "p50 ms", "p90 ms", "p99 ms", "max ms"];

/// Prints rows under headers as a Markdown table (numeric columns right-aligned), so it pastes into docs.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(String::len).chain([headers[i].len()]).max().unwrap_or(0))
        .collect();
    let numeric: Vec<bool> = (0..headers.len())
        .map(|i| rows.first().and_then(|r| r.get(i)).is_some_and(|c| c.trim_end_matches('x').parse::<f64>().is_ok()))
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths.iter().zip(&numeric))
            .map(|(c, (&w, &right))| if right { format!("{c:>w$}") } else { format!("{c:<w$}") })
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    println!();
    line(headers.iter().map(|h| h.to_string()).collect());
    let rule: Vec<String> = widths
        .iter()
        .zip(&numeric)
        .map(|(w, &right)| if right { format!("{}:", "-".repeat(w + 1)) } else { "-".repeat(w + 2) })
        .collect();
    println!("|{}|", rule.join("|"));
    for r in rows {
        line(r.clone());
    }
}
