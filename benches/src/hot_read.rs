//! Hot-read throughput and latency at one edge of the default cluster: concurrent gRPC
//! clients, each on its own connection, read random keys (1 KiB values) that the edge
//! already holds. Prints one JSON object, then a table.
//!
//! `cargo build --release --bins && target/release/hot-read --clients 64 --seconds 10`

use clap::Parser;
use kv_benches::{load, print_table, scrape, status, topology, BenchCluster, Latency, LATENCY_HEADERS};
use kv_client::{api, Client};
use rand::Rng;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Args {
    /// Topology file (as `kv-local-cluster` takes); the default topology when absent.
    #[arg(long)]
    topology: Option<std::path::PathBuf>,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Measured seconds (after a two-second warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Distinct keys read.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// The edge that serves the reads.
    #[arg(long, default_value = "us-east-1")]
    edge: String,
}

/// What the clients saw in one window.
#[derive(Default)]
struct Window {
    latency: Latency,
    hits: u64,
    other: u64,
    errors: u64,
    secs: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bench = BenchCluster::start(topology(args.topology.as_deref(), &[])?).await?;
    let client = bench.client(&args.edge).await?;
    let ns = client.create_namespace("hot-read").await?.id;
    let keys: Vec<String> = (0..args.keys).map(|i| format!("hot-{i}")).collect();
    load(&client, &ns, keys.iter().map(|k| (k.clone(), vec![b'v'; args.value_bytes])).collect()).await?;
    for k in &keys {
        client.get(&ns, k, None).await?;
    }

    let mut clients = Vec::new();
    for _ in 0..args.clients {
        clients.push(bench.client(&args.edge).await?);
    }
    read_for(&clients, &ns, &keys, args.value_bytes, Duration::from_secs(2)).await?;
    let http = bench.edge(&args.edge)?.node.http;
    let fetches_before = scrape(http, "kv_edge_upstream_fetches_total").await;
    let w = read_for(&clients, &ns, &keys, args.value_bytes, Duration::from_secs(args.seconds)).await?;
    let fetches = scrape(http, "kv_edge_upstream_fetches_total").await - fetches_before;

    let reads = w.latency.count();
    let per_sec = reads as f64 / w.secs;
    let json = w.latency.json(serde_json::json!({
        "bench": "hot_read",
        "edge": args.edge,
        "clients": args.clients,
        "keys": args.keys,
        "value_bytes": args.value_bytes,
        "seconds": w.secs,
        "reads_per_sec": per_sec.round(),
        "hits": w.hits,
        "not_hits": w.other,
        "errors": w.errors,
        "upstream_fetches": fetches,
    }));
    println!("{json}");
    let mut headers = vec!["clients", "reads/s"];
    headers.extend(LATENCY_HEADERS);
    headers.extend(["hit %", "upstream fetches", "errors"]);
    let mut row = vec![args.clients.to_string(), format!("{per_sec:.0}")];
    row.extend(w.latency.cells());
    row.extend([
        format!("{:.2}", 100.0 * w.hits as f64 / reads.max(1) as f64),
        fetches.to_string(),
        w.errors.to_string(),
    ]);
    print_table(&headers, &[row]);
    Ok(())
}

/// Every client reads random keys back to back for `window`.
async fn read_for(
    clients: &[Client],
    ns: &str,
    keys: &[String],
    value_bytes: usize,
    window: Duration,
) -> anyhow::Result<Window> {
    let started = Instant::now();
    let end = started + window;
    let mut tasks = Vec::new();
    for c in clients {
        let (mut raw, ns, keys) = (c.raw(), ns.to_string(), keys.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut w = Window::default();
            while Instant::now() < end {
                let key = keys[rand::thread_rng().gen_range(0..keys.len())].clone();
                let req = api::GetRequest { namespace_id: ns.clone(), key, cache_ttl: None, with_metadata: false };
                let t = Instant::now();
                match raw.get(req).await {
                    Ok(r) if r.get_ref().value.len() == value_bytes => {
                        w.latency.record(t.elapsed());
                        match status(r.get_ref()) {
                            api::CacheStatus::Hit => w.hits += 1,
                            _ => w.other += 1,
                        }
                    }
                    _ => w.errors += 1,
                }
            }
            w
        }));
    }
    let mut total = Window::default();
    for t in tasks {
        let w = t.await?;
        total.latency.merge(&w.latency);
        total.hits += w.hits;
        total.other += w.other;
        total.errors += w.errors;
    }
    total.secs = started.elapsed().as_secs_f64();
    Ok(total)
}
