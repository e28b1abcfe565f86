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
    /// Other keys stored first (16-byte values, in bulk writes through the edge), so that
    /// the hot keys are read out of a large store.
    #[arg(long, default_value_t = 0)]
    store_keys: u64,
    /// How many of those other keys the edge reads once before the run (64 at a time), so
    /// that its cache is full and evicting rather than nearly empty.
    #[arg(long, default_value_t = 0)]
    fill: u64,
    /// Seconds to wait before the run, for the work a large load leaves behind (RocksDB
    /// compactions on every voter) to finish on a machine the whole cluster shares.
    #[arg(long, default_value_t = 0)]
    settle: u64,
}

/// Loaders storing `--store-keys` at once.
const STORE_LOADERS: u64 = 4;

/// Stores `n` keys `s{i}` through `client`'s edge, 10,000 per bulk write.
async fn store_keys(client: &kv_client::Client, ns: &str, n: u64) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let per = n.div_ceil(STORE_LOADERS);
    let loaders = (0..STORE_LOADERS).map(|l| {
        let (client, ns) = (client.clone(), ns.to_string());
        async move {
            let keys = (l * per..((l + 1) * per).min(n)).map(|i| (format!("s{i}"), vec![b's'; 16])).collect();
            load(&client, &ns, keys).await
        }
    });
    futures::future::try_join_all(loaders).await?;
    eprintln!("stored {n} keys in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Reads `n` of the stored keys once each at the edge, 64 at a time.
async fn fill(client: &kv_client::Client, ns: &str, n: u64) -> anyhow::Result<()> {
    use futures::StreamExt;
    let started = std::time::Instant::now();
    let reads = futures::stream::iter(0..n).map(|i| {
        let (client, ns) = (client.clone(), ns.to_string());
        async move { client.get(&ns, &format!("s{i}"), None).await.map(|_| ()) }
    });
    let failed = reads.buffer_unordered(64).filter(|r| futures::future::ready(r.is_err())).count().await;
    anyhow::ensure!(failed == 0, "{failed} of the filling reads failed");
    eprintln!("read {n} other keys at the edge in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bench = BenchCluster::start(topology(args.topology.as_deref(), &[])?).await?;
    let client = bench.client(&args.edge).await?;
    let ns = client.create_namespace("hot-read").await?.id;
    if args.store_keys > 0 {
        store_keys(&client, &ns, args.store_keys).await?;
    }
    let keys: Vec<String> = (0..args.keys).map(|i| format!("hot-{i}")).collect();
    load(&client, &ns, keys.iter().map(|k| (k.clone(), vec![b'v'; args.value_bytes])).collect()).await?;
    fill(&client, &ns, args.fill.min(args.store_keys)).await?;
    for k in &keys {
        client.get(&ns, k, None).await?;
    }
    tokio::time::sleep(Duration::from_secs(args.settle)).await;

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
        "store_keys": args.store_keys,
        "fill": args.fill.min(args.store_keys),
        "settle_s": args.settle,
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
