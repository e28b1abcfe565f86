//! Put throughput and latency of a 3-node central cluster on loopback (fsync on), for
//! several numbers of concurrent writers. Prints one JSON object per run, then a table.
//!
//! `cargo run --release -p kv-benches --bin put-throughput -- --seconds 10`

use clap::Parser;
use hdrhistogram::Histogram;
use kv_proto::store::v1::WriteRequest;
use kv_tests::{metric_value, put_op, Cluster, ClusterOptions};
use std::time::{Duration, Instant};

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
}

struct Run {
    writers: usize,
    ops: u64,
    errors: u64,
    secs: f64,
    hist: Histogram<u64>,
    fsyncs: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cluster = Cluster::start(3, ClusterOptions::default()).await?;
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
    print_table(&runs);
    Ok(())
}

async fn fsyncs(c: &Cluster, leader: usize) -> f64 {
    let text = c.scrape(leader).await.unwrap_or_default();
    metric_value(&text, "kv_central_log_fsyncs_total").unwrap_or(0.0)
}

async fn measure(
    c: &Cluster,
    leader: usize,
    ns: &str,
    value: &[u8],
    writers: usize,
    window: Duration,
    tag: &str,
) -> anyhow::Result<Run> {
    let started = Instant::now();
    let end = started + window;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = c.store(leader);
        let ns = ns.to_string();
        let value = value.to_vec();
        let tag = format!("{tag}{w}-");
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let (mut ops, mut errors) = (0u64, 0u64);
            let mut n = 0u64;
            while Instant::now() < end {
                let req = WriteRequest { namespace_id: ns.clone(), ops: vec![put_op(&format!("{tag}{n}"), &value)] };
                n += 1;
                let t = Instant::now();
                match client.write(req).await {
                    Ok(r) if r.get_ref().results.iter().all(|x| x.error.is_none()) => {
                        hist.record(t.elapsed().as_micros() as u64).ok();
                        ops += 1;
                    }
                    _ => errors += 1,
                }
            }
            (hist, ops, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ops, mut errors) = (0, 0);
    for t in tasks {
        let (h, o, e) = t.await?;
        hist.add(h)?;
        ops += o;
        errors += e;
    }
    Ok(Run { writers, ops, errors, secs: started.elapsed().as_secs_f64(), hist, fsyncs: 0.0 })
}

fn to_json(r: &Run, value_bytes: usize) -> serde_json::Value {
    serde_json::json!({
        "bench": "put_throughput",
        "writers": r.writers,
        "value_bytes": value_bytes,
        "ops": r.ops,
        "errors": r.errors,
        "seconds": r.secs,
        "ops_per_sec": r.ops as f64 / r.secs,
        "p50_us": r.hist.value_at_quantile(0.50),
        "p99_us": r.hist.value_at_quantile(0.99),
        "max_us": r.hist.max(),
        "leader_fsyncs": r.fsyncs,
        "puts_per_fsync": if r.fsyncs > 0.0 { r.ops as f64 / r.fsyncs } else { 0.0 },
    })
}

fn print_table(runs: &[Run]) {
    println!();
    println!(
        "{:>8} {:>12} {:>10} {:>10} {:>10} {:>14} {:>8}",
        "writers", "puts/s", "p50 ms", "p99 ms", "max ms", "puts/fsync", "errors"
    );
    let base = runs.first().map_or(1.0, |r| r.ops as f64 / r.secs);
    for r in runs {
        let tput = r.ops as f64 / r.secs;
        println!(
            "{:>8} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>14.1} {:>8}   ({:.1}x the first row)",
            r.writers,
            tput,
            r.hist.value_at_quantile(0.5) as f64 / 1000.0,
            r.hist.value_at_quantile(0.99) as f64 / 1000.0,
            r.hist.max() as f64 / 1000.0,
            if r.fsyncs > 0.0 { r.ops as f64 / r.fsyncs } else { 0.0 },
            r.errors,
            tput / base,
        );
    }
}
