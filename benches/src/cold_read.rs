//! Cold-read latency per tier in each region of the default cluster. For every key, read
//! one after another: at the region's first edge (neither tier holds it: a central read),
//! at its second edge (the regional tier holds it), and at the first edge again (a hit).
//! Keys are written through another region, so neither tier of the measured region holds
//! them beforehand. Prints one JSON object per region and path, then a table.
//!
//! `cargo build --release --bins && target/release/cold-read --keys 200`

use clap::Parser;
use kv_benches::{load, print_table, scrape, status, topology, BenchCluster, Latency, LATENCY_HEADERS};
use kv_client::api::CacheStatus;
use kv_client::Client;
use std::time::Instant;

#[derive(Debug, Parser)]
struct Args {
    /// Topology file (as `kv-local-cluster` takes); the default topology when absent.
    #[arg(long)]
    topology: Option<std::path::PathBuf>,
    /// Keys read per region (each is read three times).
    #[arg(long, default_value_t = 200)]
    keys: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
}

/// The three paths a read can take, in the order each key is read.
const PATHS: [(&str, CacheStatus); 3] = [
    ("edge miss, regional miss (central read)", CacheStatus::Miss),
    ("edge miss, regional hit", CacheStatus::Miss),
    ("edge hit", CacheStatus::Hit),
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bench = BenchCluster::start(topology(args.topology.as_deref(), &[])?).await?;
    let regions = bench.topology.regions.clone();
    let ns = bench.client(&regions[0].edges[0].name).await?.create_namespace("cold-read").await?.id;

    let mut rows = Vec::new();
    for (r, region) in regions.iter().enumerate() {
        let writer = bench.client(&regions[(r + 1) % regions.len()].edges[0].name).await?;
        let keys: Vec<String> = (0..args.keys).map(|i| format!("cold-{}-{i}", region.name)).collect();
        load(&writer, &ns, keys.iter().map(|k| (k.clone(), vec![b'c'; args.value_bytes])).collect()).await?;

        let (first, second) = (&region.edges[0].name, &region.edges[1].name);
        let readers: [Client; 3] =
            [bench.client(first).await?, bench.client(second).await?, bench.client(first).await?];
        let regional_http = bench.cluster.regions[r].regional.http;
        let fetches_before = scrape(regional_http, "kv_regional_upstream_fetches_total").await;
        let mut latencies: [Latency; 3] = Default::default();
        let mut unexpected = [0u64; 3];
        for k in &keys {
            for (p, reader) in readers.iter().enumerate() {
                let t = Instant::now();
                let got = reader.get(&ns, k, None).await?;
                latencies[p].record(t.elapsed());
                if status(&got) != PATHS[p].1 || got.value.len() != args.value_bytes {
                    unexpected[p] += 1;
                }
            }
        }
        let central_reads = scrape(regional_http, "kv_regional_upstream_fetches_total").await - fetches_before;
        for (p, (path, _)) in PATHS.iter().enumerate() {
            let json = latencies[p].json(serde_json::json!({
                "bench": "cold_read",
                "region": region.name,
                "central_delay_ms": region.central_delay_ms,
                "path": path,
                "value_bytes": args.value_bytes,
                "unexpected_status": unexpected[p],
                "regional_central_reads": central_reads,
            }));
            println!("{json}");
            let mut row = vec![region.name.clone(), format!("{} ms", region.central_delay_ms), path.to_string()];
            row.extend(latencies[p].cells());
            row.push(unexpected[p].to_string());
            rows.push(row);
        }
    }
    let mut headers = vec!["region", "one way to central", "path"];
    headers.extend(LATENCY_HEADERS);
    headers.push("unexpected status");
    print_table(&headers, &rows);
    Ok(())
}
