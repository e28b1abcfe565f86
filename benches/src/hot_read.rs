//! Hot-read throughput and latency at one edge of the default cluster: concurrent gRPC
//! clients, each on its own connection, read random keys (1 KiB values) that the edge
//! already holds. Prints one JSON object, then a table.
//!
//! `cargo build --release --bins && target/release/hot-read --clients 64 --seconds 10`

use clap::Parser;
use kv_benches::closed_loop;
use kv_benches::{load, print_table, scrape, status, topology, BenchCluster, LATENCY_HEADERS};
use kv_client::api;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;

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

    let http = bench.edge(&args.edge)?.node.http;
    let fetches_before = scrape(http, "kv_edge_upstream_fetches_total").await;
    let keys = Arc::new(keys);
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        let (raw, ns, keys, value_bytes) =
            (bench.client(&args.edge).await?.raw(), ns.clone(), keys.clone(), args.value_bytes);
        clients.push(move |_: u64| {
            let mut raw = raw.clone();
            let key = keys[rand::thread_rng().gen_range(0..keys.len())].clone();
            let req = api::GetRequest {
                namespace_id: ns.clone(),
                key,
                cache_ttl: None,
                with_metadata: false,
                ..Default::default()
            };
            async move {
                let r = raw.get(req).await.map_err(|s| s.to_string())?.into_inner();
                if r.value.len() != value_bytes {
                    return Err(format!("a value of {} bytes", r.value.len()));
                }
                Ok(if status(&r) == api::CacheStatus::Hit { "hit" } else { "not_hit" })
            }
        });
    }
    let w = closed_loop::run(clients, Duration::from_secs(2), Duration::from_secs(args.seconds)).await?;
    // Counted over the warm-up too: every key was read once before, so both are hits.
    let fetches = scrape(http, "kv_edge_upstream_fetches_total").await - fetches_before;
    let hits = w.outcomes.get("hit").copied().unwrap_or(0);

    let reads = w.latency.count();
    let per_sec = w.ops_per_sec();
    let json = w.latency.json(serde_json::json!({
        "bench": "hot_read",
        "edge": args.edge,
        "clients": args.clients,
        "keys": args.keys,
        "value_bytes": args.value_bytes,
        "seconds": w.seconds,
        "reads_per_sec": per_sec.round(),
        "hits": hits,
        "not_hits": w.ops - hits,
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
        format!("{:.2}", 100.0 * hits as f64 / reads.max(1) as f64),
        fetches.to_string(),
        w.errors.to_string(),
    ]);
    print_table(&headers, &[row]);
    Ok(())
}
