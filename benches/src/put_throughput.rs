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
}

struct Run {
    writers: usize,
    ops: u64,
    errors: u64,
    secs: f64,
    latency: Latency,
    fsyncs: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cluster = Cluster::start(3, ClusterOptions { tls: args.tls, ..Default::default() }).await?;
    let ns = cluster.create_namespace(0, "bench").await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let value = vec![b'x'; args.value_bytes];
    let mut runs = Vec::new();
    for (round, &writers) in args.writers.iter().enumerate() {
        // Warm-up, then the measured window.
        measure(&cluster, leader, &ns, &value, writers, Duration::from_secs(1), &format!("w{round}-")).await?;
        let fsyncs_before = fsyncs(&cluster, leader).await;
        let mut run =
            measure(&cluster, leader, &ns, &value, writers, Duration::from_secs(args.seconds), &format!("m{round}-"))
                .await?;
        run.fsyncs = fsyncs(&cluster, leader).await - fsyncs_before;
        println!("{}", to_json(&run, args.value_bytes));
        runs.push(run);
    }
    print_runs(&runs);
    Ok(())
}

async fn fsyncs(c: &Cluster, leader: usize) -> f64 {
    let text = c.scrape(leader).await.unwrap_or_default();
    metric_value(&text, "kv_central_log_fsyncs_total").unwrap_or(0.0)
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
    Ok(Run { writers, ops: r.ops, errors: r.errors, secs: r.seconds, latency: r.latency, fsyncs: 0.0 })
}

fn to_json(r: &Run, value_bytes: usize) -> serde_json::Value {
    r.latency.json(serde_json::json!({
        "bench": "put_throughput",
        "writers": r.writers,
        "value_bytes": value_bytes,
        "ops": r.ops,
        "errors": r.errors,
        "seconds": r.secs,
        "ops_per_sec": (r.ops as f64 / r.secs).round(),
        "leader_fsyncs": r.fsyncs,
        "puts_per_fsync": puts_per_fsync(r),
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
    headers.extend(["puts per fsync", "errors", "vs first row"]);
    let base = runs.first().map_or(1.0, |r| r.ops as f64 / r.secs);
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let tput = r.ops as f64 / r.secs;
            let mut row = vec![r.writers.to_string(), format!("{tput:.0}")];
            row.extend(r.latency.cells());
            row.extend([format!("{:.1}", puts_per_fsync(r)), r.errors.to_string(), format!("{:.1}x", tput / base)]);
            row
        })
        .collect();
    print_table(&headers, &rows);
}
