//! Hot-read throughput and latency at one edge of the default cluster: concurrent gRPC
//! clients, each on its own connection, read random keys (1 KiB values) that the edge
//! already holds. Prints one JSON object per measured window, then a table.
//!
//! `cargo build --release --bins && target/release/hot-read --clients 64 --seconds 10`

use clap::Parser;
use kv_benches::closed_loop;
use kv_benches::peers::echo::{self, pb::echo_client::EchoClient, EchoServer};
use kv_benches::{load, print_table, scrape, status, topology, BenchCluster, LATENCY_HEADERS};
use kv_client::{api, RawClient};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

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
    /// the hot keys are read out of a large store. Above 10,000, the same readers measure
    /// twice, first with 10,000 stored, then with all of them, and the ratio is printed.
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
    /// After each window, measure a bare gRPC echo (`echo-server`) with as many connections
    /// and answers of the same size: a control for how fast the machine itself is then.
    #[arg(long)]
    echo: bool,
}

/// Loaders storing `--store-keys` at once.
const STORE_LOADERS: u64 = 4;
/// Keys stored before the run that `--store-keys` is compared with.
const BASE_KEYS: u64 = 10_000;

/// Stores the keys `s{from}` to `s{to - 1}` through `client`'s edge, 10,000 per bulk write.
async fn store_keys(client: &kv_client::Client, ns: &str, from: u64, to: u64) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let per = (to - from).div_ceil(STORE_LOADERS);
    let loaders = (0..STORE_LOADERS).map(|l| {
        let (client, ns) = (client.clone(), ns.to_string());
        async move {
            let range = (from + l * per)..(from + (l + 1) * per).min(to);
            let keys = range.map(|i| (format!("s{i}"), vec![b's'; 16])).collect();
            load(&client, &ns, keys).await
        }
    });
    futures::future::try_join_all(loaders).await?;
    eprintln!("stored keys up to {to} in {:.0} s", started.elapsed().as_secs_f64());
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

/// One measured window: each reader, on its own connection, reads random hot keys back to
/// back. The same connections serve every window of a run.
async fn measure(
    readers: &[RawClient],
    ns: &str,
    keys: &Arc<Vec<String>>,
    value_bytes: usize,
    seconds: u64,
) -> anyhow::Result<closed_loop::Looped> {
    let clients: Vec<_> = readers
        .iter()
        .map(|raw| {
            let (raw, ns, keys) = (raw.clone(), ns.to_string(), keys.clone());
            move |_: u64| {
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
            }
        })
        .collect();
    eprintln!("reading for {seconds} s after a 2 s warm-up");
    closed_loop::run(clients, Duration::from_secs(2), Duration::from_secs(seconds)).await
}

/// The edge's upstream fetches, background refreshes and pushes received, so far.
async fn edge_counters(http: std::net::SocketAddr) -> [f64; 3] {
    let mut out = [0.0; 3];
    let names = ["kv_edge_upstream_fetches_total", "kv_edge_refreshes_total", "kv_edge_pushes_received_total"];
    for (v, name) in out.iter_mut().zip(names) {
        *v = scrape(http, name).await;
    }
    out
}

/// The control window: the same closed loop against a bare gRPC echo.
async fn measure_echo(echoes: &[EchoClient<Channel>], value_bytes: usize, seconds: u64) -> anyhow::Result<f64> {
    let reply_bytes = u32::try_from(value_bytes)?;
    let clients: Vec<_> = echoes
        .iter()
        .map(|c| {
            let c = c.clone();
            move |call: u64| echo::call(c.clone(), format!("namespace-id/hot-{}", call % 1000), reply_bytes)
        })
        .collect();
    eprintln!("echoing for {seconds} s after a 2 s warm-up");
    Ok(closed_loop::run(clients, Duration::from_secs(2), Duration::from_secs(seconds)).await?.ops_per_sec())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        !args.echo || args.value_bytes <= echo::MAX_REPLY,
        "--echo answers at most {} bytes; --value-bytes is {}",
        echo::MAX_REPLY,
        args.value_bytes
    );
    let bench = BenchCluster::start(topology(args.topology.as_deref(), &[])?).await?;
    let client = bench.client(&args.edge).await?;
    let ns = client.create_namespace("hot-read").await?.id;
    let keys: Vec<String> = (0..args.keys).map(|i| format!("hot-{i}")).collect();
    load(&client, &ns, keys.iter().map(|k| (k.clone(), vec![b'v'; args.value_bytes])).collect()).await?;
    let keys = Arc::new(keys);
    let mut readers = Vec::new();
    for _ in 0..args.clients {
        readers.push(bench.client(&args.edge).await?.raw());
    }
    let http = bench.edge(&args.edge)?.node.http;
    let echo_dir = tempfile::tempdir()?;
    let mut echoes = Vec::new();
    let _echo_server = match args.echo {
        true => {
            let server = EchoServer::start(echo_dir.path()).await?;
            for _ in 0..args.clients {
                echoes.push(EchoClient::connect(format!("http://{}", server.addr)).await?);
            }
            Some(server)
        }
        false => None,
    };

    // With `--store-keys`, the same readers first measure a store of `BASE_KEYS`, so the
    // ratio between the two windows compares stores, not processes or connections.
    let mut stores = vec![(args.store_keys.min(BASE_KEYS), args.fill.min(BASE_KEYS))];
    if args.store_keys > BASE_KEYS {
        stores.push((args.store_keys, args.fill.min(args.store_keys)));
    }
    let mut stored = 0;
    let mut rows = Vec::new();
    let mut rates = Vec::new();
    for (store, filled) in stores {
        if store > stored {
            store_keys(&client, &ns, stored, store).await?;
            stored = store;
        }
        fill(&client, &ns, filled).await?;
        for k in keys.iter() {
            client.get(&ns, k, None).await?;
        }
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
        let before = edge_counters(http).await;
        let w = measure(&readers, &ns, &keys, args.value_bytes, args.seconds).await?;
        // Counted over the warm-up too, where a hot key the full cache evicted is fetched again.
        let after = edge_counters(http).await;
        let [fetches, refreshes, pushes] = [0, 1, 2].map(|i| after[i] - before[i]);
        let hits = w.outcomes.get("hit").copied().unwrap_or(0);
        let per_sec = w.ops_per_sec();
        let echo_per_sec = match args.echo {
            true => Some(measure_echo(&echoes, args.value_bytes, args.seconds).await?),
            false => None,
        };
        let line = w.latency.json(serde_json::json!({
            "bench": "hot_read",
            "edge": args.edge,
            "clients": args.clients,
            "keys": args.keys,
            "store_keys": store,
            "fill": filled,
            "settle_s": args.settle,
            "value_bytes": args.value_bytes,
            "seconds": w.seconds,
            "reads_per_sec": per_sec.round(),
            "hits": hits,
            "not_hits": w.ops - hits,
            "errors": w.errors,
            "upstream_fetches": fetches,
            "refreshes": refreshes,
            "pushes_received": pushes,
            "echo_reads_per_sec": echo_per_sec.map(f64::round),
        }));
        println!("{line}");
        let mut row = vec![store.to_string(), args.clients.to_string(), format!("{per_sec:.0}")];
        row.extend(w.latency.cells());
        row.extend([
            format!("{:.2}", 100.0 * hits as f64 / w.latency.count().max(1) as f64),
            fetches.to_string(),
            refreshes.to_string(),
            pushes.to_string(),
            w.errors.to_string(),
            echo_per_sec.map_or("-".into(), |e| format!("{e:.0}")),
        ]);
        rows.push(row);
        rates.push((per_sec, echo_per_sec));
    }
    let ratio = match rates[..] {
        [(base, base_echo), (large, large_echo)] => {
            let echo = base_echo.zip(large_echo).map(|(b, l)| l / b.max(1e-9));
            Some((large / base.max(1e-9), echo))
        }
        _ => None,
    };
    if let Some((ratio, echo_ratio)) = ratio {
        println!(
            "{}",
            serde_json::json!({"bench": "hot_read_ratio", "store_keys": args.store_keys, "base_keys": BASE_KEYS,
                "ratio": ratio, "echo_ratio": echo_ratio})
        );
    }
    let mut headers = vec!["store keys", "clients", "reads/s"];
    headers.extend(LATENCY_HEADERS);
    headers.extend(["hit %", "upstream fetches", "refreshes", "pushes", "errors", "echo reads/s"]);
    print_table(&headers, &rows);
    if let Some((ratio, echo_ratio)) = ratio {
        println!("\n{} keys stored / {BASE_KEYS}, same readers: {ratio:.3}", args.store_keys);
        if let Some(e) = echo_ratio {
            println!("the echo, measured after each window: {e:.3}");
        }
    }
    Ok(())
}
