//! `kv-bench run`: a YCSB workload, reported per endpoint, operation and outcome.

use crate::load::{load, Keyspace};
use crate::output::bar;
use crate::output::Output;
use crate::target::Target;
use clap::Args;
use kv_benches::driver::{self, Endpoint, Measured, Outcome, Plan};
use kv_benches::print_table;
use kv_benches::ycsb::{Keys, Op, Popularity, Workload};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
pub struct Run {
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
    /// JSON lines and plots (latency distributions, throughput over time).
    #[command(flatten)]
    output: Output,
    /// Seed of the operation and key choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub async fn run(args: Run) -> anyhow::Result<()> {
    driver::interval(args.rate, 1, Duration::MAX)?;
    let at = args.target.connect().await?;
    if args.load {
        load(&at, &args.keyspace, 4).await?;
    }
    let popularity = args.popularity.unwrap_or(args.workload.default_popularity());
    let keys = Arc::new(Keys::new(&args.keyspace.key_prefix, args.keyspace.keys, popularity, args.theta)?);
    let connections = at.connections(args.clients).await?;
    let endpoints: Vec<Endpoint> = at
        .endpoints
        .iter()
        .zip(connections)
        .map(|((name, _), clients)| Endpoint { name: name.clone(), clients })
        .collect();
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
    args.output.json_lines(&json_lines(&measured, &settings))?;
    table(&measured);
    if let Some(dir) = &args.output.plots {
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
        "read_hit_ratio": ratio(s.hits, s.reads_found),
        "regional_hit_ratio": ratio(s.regional_hits, s.regional_hits + s.central_reads),
        "errors": s.errors,
    }));
    lines
}

/// Totals over every group.
struct Summary {
    ops: u64,
    reads_found: u64,
    /// Reads the edge's copy answered.
    hits: u64,
    /// Edge misses that the regional tier's copy answered, and those that reached central.
    regional_hits: u64,
    central_reads: u64,
    errors: std::collections::BTreeMap<String, u64>,
}

impl Summary {
    fn of(m: &Measured) -> Summary {
        let mut s =
            Summary { ops: 0, reads_found: 0, hits: 0, regional_hits: 0, central_reads: 0, errors: Default::default() };
        for ((_, op, outcome), l) in &m.groups {
            s.ops += l.count();
            match outcome {
                Outcome::Error(code) => *s.errors.entry(code.clone()).or_default() += l.count(),
                Outcome::Ok(status) if matches!(op, Op::Read | Op::ReadModifyWrite) => {
                    s.reads_found += l.count();
                    match *status {
                        "hit" => s.hits += l.count(),
                        "miss:regional" => s.regional_hits += l.count(),
                        "miss:central" => s.central_reads += l.count(),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        s
    }
}

/// `part / whole` to four places; `None` for an empty whole. Hit ratios count reads that
/// found a value (read-modify-write ones too): at the edge over all of them, at the
/// regional tier over the edge's misses.
fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| (part as f64 / whole as f64 * 10_000.0).round() / 10_000.0)
}

fn percent(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{:.2}%", 100.0 * r))
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
        "{} operations, {:.0}/s; hit ratio at the edges {}, of their misses at the regional tiers {}; errors {:?}",
        s.ops,
        s.ops as f64 / m.seconds,
        percent(ratio(s.hits, s.reads_found)),
        percent(ratio(s.regional_hits, s.regional_hits + s.central_reads)),
        s.errors
    );
}
