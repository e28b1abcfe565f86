//! `kv-bench`: YCSB-style latency benchmarks against any deployment's edges.
//!
//! ```text
//! kv-bench run --endpoint us-east=127.0.0.1:7505 --endpoint ap-south=127.0.0.1:7525 \
//!     --ca data/local-cluster/tls/ca.pem --workload b --keys 100000 --load --seconds 30
//! kv-bench run --local --workload c          # starts the default local topology itself
//! ```
//!
//! Results are grouped by endpoint, operation and outcome (a read's cache status, `absent`,
//! or an error's gRPC code) and printed as a table; `--json FILE` also writes them as JSON
//! lines (`group`, `timeline` and `summary` records), and `--plots DIR` draws them as SVG.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use kv_benches::driver::{self, Endpoint, Measured, Outcome, Plan};
use kv_benches::ycsb::{Keys, Op, Popularity, ValueSize, Workload};
use kv_benches::{print_table, topology, BenchCluster};
use kv_client::{api, Client};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Latency benchmarks (YCSB workloads) against the edges of a KV cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes keys 0..KEYS so that runs read existing keys.
    Load(Load),
    /// Runs a workload and reports latency per endpoint, operation and outcome.
    Run(Run),
}

/// Where the benchmark's edges are.
#[derive(Args)]
struct Target {
    /// An edge to drive, as NAME=HOST:PORT or HOST:PORT (repeat for several regions).
    #[arg(long = "endpoint", env = "KV_BENCH_ENDPOINTS", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Start the default local topology (from the binaries beside this one) and drive
    /// every edge of it, instead of --endpoint.
    #[arg(long, conflicts_with = "endpoints")]
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
}

#[derive(Args)]
struct Keyspace {
    /// Keys in the key space (loaded ones; inserts add more).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Value size: bytes (1024, 4KiB) or a uniform range (100..64KiB), at most 25 MiB.
    #[arg(long, default_value = "1KiB")]
    value_size: ValueSize,
    /// Key names are this prefix and a 12-digit number.
    #[arg(long, default_value = "user")]
    key_prefix: String,
}

#[derive(Args)]
struct Load {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    keyspace: Keyspace,
    /// Bulk writes in flight at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
}

#[derive(Args)]
struct Run {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    keyspace: Keyspace,
    /// The YCSB core workload.
    #[arg(long, value_enum, default_value = "b")]
    workload: Workload,
    /// Key popularity; the workload's own (zipfian, or latest for D) by default.
    #[arg(long, value_enum)]
    popularity: Option<Popularity>,
    /// The zipfian constant.
    #[arg(long, default_value_t = 0.99)]
    theta: f64,
    /// Connections per endpoint, each driven by its own client.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Target operations per second over all clients (open loop, latency measured from
    /// when each operation was due); 0 runs a closed loop.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds run before measuring.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// cacheTtl of reads (seconds, at least 30); the cluster's default when absent.
    #[arg(long)]
    cache_ttl: Option<i64>,
    /// Load the key space before running (as `kv-bench load`).
    #[arg(long)]
    load: bool,
    /// Also write the results as JSON lines to this file (`-` for standard output).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also draw the results as SVG plots (latency distributions, throughput over time)
    /// into this directory.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Seed of the operation and key choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// The endpoints in use, and the local cluster when the benchmark started one.
struct Connected {
    endpoints: Vec<(String, String)>,
    ca: Option<PathBuf>,
    token: Option<String>,
    namespace: String,
    _local: Option<BenchCluster>,
}

impl Target {
    async fn connect(&self) -> anyhow::Result<Connected> {
        let (endpoints, ca, token, local) = if self.local {
            let bench = BenchCluster::start(topology(None, &[])?).await?;
            let edges: Vec<(String, String)> =
                bench.cluster.edges().map(|e| (e.node.name.clone(), e.node.grpc.to_string())).collect();
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
        Ok(Connected { endpoints, ca, token, namespace, _local: local })
    }
}

async fn client(addr: &str, ca: Option<&std::path::Path>, token: Option<&str>) -> anyhow::Result<Client> {
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

/// Writes keys `0..keys` through the first endpoint in bulk writes of 10,000.
async fn load(at: &Connected, keyspace: &Keyspace, parallel: usize) -> anyhow::Result<()> {
    const BULK: u64 = 10_000;
    let client = client(&at.endpoints[0].1, at.ca.as_deref(), at.token.as_deref()).await?;
    let keys = Keys::new(&keyspace.key_prefix, keyspace.keys, Popularity::Uniform, 1.0)?;
    let bar = bar(keyspace.keys, "{wide_bar} {pos}/{len} keys loaded ({per_sec}, {eta} left)");
    let per_bulk = BULK.min((100 << 20) / keyspace.value_size.max().max(1)).max(1);
    let starts: Vec<u64> = (0..keyspace.keys).step_by(per_bulk as usize).collect();
    let mut rng = rand::thread_rng();
    for chunk in starts.chunks(parallel.max(1)) {
        let mut calls = Vec::new();
        for &from in chunk {
            let to = (from + per_bulk).min(keyspace.keys);
            let items = (from..to)
                .map(|n| api::BulkPutItem {
                    key: keys.name(n),
                    value: driver::value(keyspace.value_size.draw(&mut rng), n as u8).into(),
                    ..Default::default()
                })
                .collect();
            let req = api::PutBulkRequest { namespace_id: at.namespace.clone(), items };
            let client = &client;
            calls.push(async move { (to - from, client.put_bulk(req).await) });
        }
        for (n, r) in futures::future::join_all(calls).await {
            let r = r?;
            anyhow::ensure!(r.unsuccessful_keys.is_empty(), "{} keys were not loaded", r.unsuccessful_keys.len());
            bar.inc(n);
        }
    }
    bar.finish_and_clear();
    Ok(())
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

async fn run(args: Run) -> anyhow::Result<()> {
    driver::interval(args.rate, 1, Duration::MAX)?;
    let at = args.target.connect().await?;
    if args.load {
        load(&at, &args.keyspace, 4).await?;
    }
    let popularity = args.popularity.unwrap_or(args.workload.default_popularity());
    let keys = Arc::new(Keys::new(&args.keyspace.key_prefix, args.keyspace.keys, popularity, args.theta)?);
    let mut endpoints = Vec::new();
    for (name, addr) in &at.endpoints {
        let mut clients = Vec::new();
        for _ in 0..args.clients.max(1) {
            clients.push(client(addr, at.ca.as_deref(), at.token.as_deref()).await?.raw());
        }
        endpoints.push(Endpoint { name: name.clone(), clients });
    }
    let plan = Plan {
        namespace: at.namespace.clone(),
        workload: args.workload,
        value_size: args.keyspace.value_size,
        rate: args.rate,
        warmup: Duration::from_secs(args.warmup),
        duration: Duration::from_secs(args.seconds.max(1)),
        cache_ttl: args.cache_ttl,
        seed: args.seed,
    };
    let bar = bar(args.warmup + args.seconds.max(1), "{wide_bar} {pos}/{len} s");
    let measured = driver::run(&plan, &endpoints, keys.clone(), |s| bar.set_position(s)).await?;
    bar.finish_and_clear();

    let settings = serde_json::json!({
        "workload": args.workload,
        "popularity": popularity,
        "theta": args.theta,
        "keys": args.keyspace.keys,
        "keys_at_end": keys.count(),
        "value_size": args.keyspace.value_size.to_string(),
        "clients_per_endpoint": args.clients.max(1),
        "loop": if args.rate > 0.0 { "open" } else { "closed" },
        "target_rate": args.rate,
        "seconds": args.seconds.max(1),
        "measured_s": (measured.seconds * 1000.0).round() / 1000.0,
        "warmup_s": args.warmup,
    });
    let lines = json_lines(&measured, &settings);
    match args.json.as_deref() {
        Some(p) if p.as_os_str() == "-" => {
            for l in &lines {
                println!("{l}");
            }
        }
        Some(p) => {
            let mut f = std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
            for l in &lines {
                writeln!(f, "{l}")?;
            }
        }
        None => {}
    }
    table(&measured);
    if let Some(dir) = &args.plots {
        let title = format!("workload {:?}, {popularity:?}", args.workload).to_lowercase();
        for f in kv_benches::plots::write(&measured, &title, dir)? {
            println!("wrote {}", f.display());
        }
    }
    Ok(())
}

/// One `group` record per endpoint, operation and outcome, one `timeline` per endpoint,
/// and a `summary`.
fn json_lines(m: &Measured, settings: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    for ((endpoint, op, outcome), latency) in &m.groups {
        lines.push(latency.json(serde_json::json!({
            "type": "group",
            "endpoint": endpoint,
            "op": op,
            "outcome": outcome.label(),
            "ops_per_sec": (latency.count() as f64 / m.seconds).round(),
        })));
    }
    for (endpoint, per_second) in &m.timeline {
        lines.push(serde_json::json!({ "type": "timeline", "endpoint": endpoint, "ops_per_second": per_second }));
    }
    let s = Summary::of(m);
    lines.push(serde_json::json!({
        "type": "summary",
        "settings": settings,
        "ops": s.ops,
        "ops_per_sec": (s.ops as f64 / m.seconds).round(),
        "read_hit_ratio": s.hit_ratio(),
        "errors": s.errors,
    }));
    lines
}

/// Totals over every group.
struct Summary {
    ops: u64,
    reads_found: u64,
    hits: u64,
    errors: std::collections::BTreeMap<String, u64>,
}

impl Summary {
    fn of(m: &Measured) -> Summary {
        let mut s = Summary { ops: 0, reads_found: 0, hits: 0, errors: Default::default() };
        for ((_, op, outcome), l) in &m.groups {
            s.ops += l.count();
            match outcome {
                Outcome::Error(code) => *s.errors.entry(code.clone()).or_default() += l.count(),
                Outcome::Ok(status) if matches!(op, Op::Read | Op::ReadModifyWrite) => {
                    s.reads_found += l.count();
                    if *status == "hit" {
                        s.hits += l.count();
                    }
                }
                _ => {}
            }
        }
        s
    }

    /// Edge hits among reads (read-modify-write ones too) that found a value.
    fn hit_ratio(&self) -> Option<f64> {
        (self.reads_found > 0).then(|| (self.hits as f64 / self.reads_found as f64 * 10_000.0).round() / 10_000.0)
    }
}

fn table(m: &Measured) {
    let rows: Vec<Vec<String>> = m
        .groups
        .iter()
        .map(|((endpoint, op, outcome), l)| {
            vec![
                endpoint.clone(),
                op.name().to_owned(),
                outcome.label(),
                l.count().to_string(),
                format!("{:.0}", l.count() as f64 / m.seconds),
                format!("{:.2}", l.ms(0.50)),
                format!("{:.2}", l.ms(0.90)),
                format!("{:.2}", l.ms(0.99)),
                format!("{:.2}", l.ms(0.999)),
                format!("{:.2}", l.max_ms()),
            ]
        })
        .collect();
    print_table(
        &["endpoint", "op", "outcome", "n", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"],
        &rows,
    );
    let s = Summary::of(m);
    println!();
    println!(
        "{} operations, {:.0}/s; edge hit ratio {}; errors {:?}",
        s.ops,
        s.ops as f64 / m.seconds,
        s.hit_ratio().map_or("-".into(), |r| format!("{:.2}%", 100.0 * r)),
        s.errors
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Load(args) => {
            let at = args.target.connect().await?;
            load(&at, &args.keyspace, args.parallel).await?;
            println!("loaded {} keys into namespace {}", args.keyspace.keys, at.namespace);
            Ok(())
        }
        Command::Run(args) => run(args).await,
    }
}
