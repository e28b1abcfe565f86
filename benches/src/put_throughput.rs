//! Put throughput and latency of a 3-node central cluster on loopback (fsync on), for
//! several numbers of concurrent writers. Prints one JSON object per run, then a table.
//!
//! `cargo run --release -p kv-benches --bin put-throughput -- --seconds 10`

use clap::Parser;
use kv_benches::closed_loop;
use kv_benches::{central_puts, print_table, Latency, LATENCY_HEADERS};
use kv_tests::{metric_value, Cluster, ClusterOptions};
use std::time::Duration;

#[derive(Debug, Parser)]
struct Args {
    /// Concurrent writers, one run each.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 16, 128])]
    writers: Vec<usize>,
    /// Measured seconds per run (after a one-second warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Run every link with mutual TLS (the writers call the leader over TLS too).
    #[arg(long)]
    tls: bool,
    /// Keys stored before the runs (in bulk writes of 10,000), to measure puts into a large
    /// store rather than an empty one.
    #[arg(long, default_value_t = 0)]
    preload: u64,
    /// Value size of the preloaded keys, in bytes.
    #[arg(long, default_value_t = 16)]
    preload_value_bytes: usize,
}

/// Keys per preload write: the most one bulk write may carry.
const PRELOAD_BATCH: u64 = 10_000;
/// Preload writes in flight at once.
const PRELOADERS: u64 = 4;

/// Stores `n` keys (`p{i}`) of `value_bytes` each through the leader, in bulk writes.
async fn preload(c: &Cluster, leader: usize, ns: &str, n: u64, value_bytes: usize) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let value = vec![b'p'; value_bytes];
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut loaders = tokio::task::JoinSet::new();
    for _ in 0..PRELOADERS {
        let (client, ns, value, next) = (c.store(leader), ns.to_string(), value.clone(), next.clone());
        loaders.spawn(async move {
            loop {
                let first = next.fetch_add(PRELOAD_BATCH, std::sync::atomic::Ordering::Relaxed);
                if first >= n {
                    return anyhow::Ok(());
                }
                let ops = (first..(first + PRELOAD_BATCH).min(n))
                    .map(|i| kv_tests::put_op(&format!("p{i}"), &value))
                    .collect();
                let req = kv_proto::store::v1::WriteRequest { namespace_id: ns.clone(), ops, ..Default::default() };
                let reply = kv_tests::retry_unavailable(|| {
                    let (mut client, req) = (client.clone(), req.clone());
                    async move { client.write(req).await }
                })
                .await?;
                if let Some(e) = reply.results.iter().find_map(|r| r.error.as_ref()) {
                    anyhow::bail!("preload write refused: {}", e.message);
                }
                let done = first + PRELOAD_BATCH;
                if done % 1_000_000 < PRELOAD_BATCH {
                    eprintln!("preloaded {done} keys in {:.0} s", started.elapsed().as_secs_f64());
                }
            }
        });
    }
    while let Some(r) = loaders.join_next().await {
        r??;
    }
    eprintln!("preloaded {n} keys in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

struct Run {
    writers: usize,
    ops: u64,
    errors: u64,
    secs: f64,
    latency: Latency,
    fsyncs: f64,
    /// The share of the leader's appends a follower already had from an early send.
    early_share: f64,
    /// Mean time per stage of the write path, on the leader and on the followers.
    stages: Vec<StageMean>,
}

/// The write path's stages, as `kv_central_write_stage_seconds` labels them, in path order.
const STAGES: [&str; 10] = [
    "handler",
    "queue",
    "commit",
    "log_write",
    "log_durable",
    "log_sync",
    "replicate",
    "heartbeat",
    "follower_append",
    "apply",
];

/// A stage's mean time (ms) and how often it ran (per second), on the leader or the followers.
struct StageMean {
    role: &'static str,
    stage: &'static str,
    mean_ms: f64,
    per_sec: f64,
}

/// Every node's `(sum, count)` per stage.
type StageTotals = Vec<Vec<(f64, f64)>>;

async fn stage_totals(c: &Cluster) -> StageTotals {
    let mut out = Vec::new();
    for i in 0..3 {
        let text = c.scrape(i).await.unwrap_or_default();
        let read = |part: &str, stage: &str| {
            metric_value(&text, &format!("kv_central_write_stage_seconds_{part}{{stage=\"{stage}\"}}")).unwrap_or(0.0)
        };
        out.push(STAGES.iter().map(|s| (read("sum", s), read("count", s))).collect());
    }
    out
}

/// Mean milliseconds per stage between two scrapes, for the leader and for its followers.
fn stage_means(before: &StageTotals, after: &StageTotals, leader: usize, secs: f64) -> Vec<StageMean> {
    let mut out = Vec::new();
    for (role, nodes) in [("leader", vec![leader]), ("followers", (0..3).filter(|&i| i != leader).collect())] {
        for (k, stage) in STAGES.iter().enumerate() {
            let (sum, count) = nodes.iter().fold((0.0, 0.0), |(s, n), &i| {
                (s + after[i][k].0 - before[i][k].0, n + after[i][k].1 - before[i][k].1)
            });
            if count > 0.0 {
                out.push(StageMean { role, stage, mean_ms: sum / count * 1000.0, per_sec: count / secs });
            }
        }
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Voters linked directly, as etcd's members are in `bench-peers`.
    let cluster = Cluster::start(3, ClusterOptions { tls: args.tls, direct_peers: true, ..Default::default() }).await?;
    let ns = cluster.create_namespace(0, "bench").await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    if args.preload > 0 {
        preload(&cluster, leader, &ns, args.preload, args.preload_value_bytes).await?;
    }
    let value = vec![b'x'; args.value_bytes];
    let mut runs = Vec::new();
    for (round, &writers) in args.writers.iter().enumerate() {
        // Warm-up, then the measured window.
        measure(&cluster, leader, &ns, &value, writers, Duration::from_secs(1), &format!("w{round}-")).await?;
        let fsyncs_before = counter(&cluster, leader, FSYNCS).await;
        let appends_before = (counter(&cluster, leader, EARLY).await, counter(&cluster, leader, SENT).await);
        let stages_before = stage_totals(&cluster).await;
        let mut run =
            measure(&cluster, leader, &ns, &value, writers, Duration::from_secs(args.seconds), &format!("m{round}-"))
                .await?;
        run.fsyncs = counter(&cluster, leader, FSYNCS).await - fsyncs_before;
        let early = counter(&cluster, leader, EARLY).await - appends_before.0;
        let sent = counter(&cluster, leader, SENT).await - appends_before.1;
        run.early_share = if early + sent > 0.0 { early / (early + sent) } else { 0.0 };
        run.stages = stage_means(&stages_before, &stage_totals(&cluster).await, leader, run.secs);
        println!("{}", to_json(&run, &args));
        runs.push(run);
    }
    print_runs(&runs);
    Ok(())
}

const FSYNCS: &str = "kv_central_log_fsyncs_total";
const EARLY: &str = "kv_central_stream_appends_total{path=\"early\"}";
const SENT: &str = "kv_central_stream_appends_total{path=\"sent\"}";

async fn counter(c: &Cluster, leader: usize, name: &str) -> f64 {
    let text = c.scrape(leader).await.unwrap_or_default();
    metric_value(&text, name).unwrap_or(0.0)
}

/// Puts distinct keys through the leader from `writers` clients for `window`.
async fn measure(
    c: &Cluster,
    leader: usize,
    ns: &str,
    value: &[u8],
    writers: usize,
    window: Duration,
    tag: &str,
) -> anyhow::Result<Run> {
    let r = closed_loop::run(central_puts(c, leader, ns, value, writers, tag), Duration::ZERO, window).await?;
    Ok(Run {
        writers,
        ops: r.ops,
        errors: r.errors,
        secs: r.seconds,
        latency: r.latency,
        fsyncs: 0.0,
        early_share: 0.0,
        stages: Vec::new(),
    })
}

fn to_json(r: &Run, args: &Args) -> serde_json::Value {
    r.latency.json(serde_json::json!({
        "bench": "put_throughput",
        "writers": r.writers,
        "value_bytes": args.value_bytes,
        "preloaded_keys": args.preload,
        "ops": r.ops,
        "errors": r.errors,
        "seconds": r.secs,
        "ops_per_sec": (r.ops as f64 / r.secs).round(),
        "leader_fsyncs": r.fsyncs,
        "puts_per_fsync": puts_per_fsync(r),
        "early_append_share": r.early_share,
        "stages": r.stages.iter().map(|s| serde_json::json!({"role": s.role, "stage": s.stage, "mean_ms": s.mean_ms, "per_sec": s.per_sec})).collect::<Vec<_>>(),
    }))
}

fn puts_per_fsync(r: &Run) -> f64 {
    if r.fsyncs > 0.0 {
        r.ops as f64 / r.fsyncs
    } else {
        0.0
    }
}

fn print_runs(runs: &[Run]) {
    let mut headers = vec!["writers", "puts/s"];
    headers.extend(LATENCY_HEADERS);
    headers.extend(["puts per fsync", "appends early", "errors", "vs first row"]);
    let base = runs.first().map_or(1.0, |r| r.ops as f64 / r.secs);
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let tput = r.ops as f64 / r.secs;
            let mut row = vec![r.writers.to_string(), format!("{tput:.0}")];
            row.extend(r.latency.cells());
            row.extend([
                format!("{:.1}", puts_per_fsync(r)),
                format!("{:.0}%", r.early_share * 100.0),
                r.errors.to_string(),
                format!("{:.1}x", tput / base),
            ]);
            row
        })
        .collect();
    print_table(&headers, &rows);
    println!();
    println!("Mean time per stage of the write path, ms (kv_central_write_stage_seconds):");
    let mut headers = vec!["writers"];
    let columns: Vec<(&str, &str)> =
        runs.iter().flat_map(|r| r.stages.iter().map(|s| (s.role, s.stage))).fold(Vec::new(), |mut v, c| {
            if !v.contains(&c) {
                v.push(c);
            }
            v
        });
    let names: Vec<String> = columns.iter().map(|(role, stage)| format!("{} {stage}", &role[..1])).collect();
    headers.extend(names.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let mut row = vec![r.writers.to_string()];
            row.extend(columns.iter().map(|c| {
                r.stages
                    .iter()
                    .find(|s| (s.role, s.stage) == *c)
                    .map_or("-".into(), |s| format!("{:.3} ({:.0}/s)", s.mean_ms, s.per_sec))
            }));
            row
        })
        .collect();
    print_table(&headers, &rows);
}
