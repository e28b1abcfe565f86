//! Propagation time on the default cluster: a put at an edge in one region, until the new
//! value is what an edge in another region, which had the old value cached, answers.
//!
//! - Mode `push` (the default mode): for each key in turn, the readers cache the old
//!   value, then the put is sent and each reader is polled every `--poll-ms` until it
//!   answers the new value.
//! - Mode `ttl` (KV's own behaviour): every key is cached by the readers with `--cache-ttl`
//!   and read every `--ttl-poll-ms` from then on (a hot key); its put comes at a random
//!   moment of the copy's life, and the time until the readers answer the new value is
//!   what a KV user waits. All keys run at once, so the run lasts about two cacheTtls.
//!
//! Times run from sending the put. Prints one JSON object per mode and reader, then a table.
//!
//! `cargo build --release --bins && target/release/propagation --writes 1000`

use clap::{Parser, ValueEnum};
use kv_benches::{load, print_table, status, topology, BenchCluster, Latency, LATENCY_HEADERS};
use kv_client::api::{self, CacheStatus};
use kv_client::Client;
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Push,
    Ttl,
    Both,
}

#[derive(Debug, Parser)]
struct Args {
    /// Topology file (as `kv-local-cluster` takes); the default topology when absent.
    #[arg(long)]
    topology: Option<std::path::PathBuf>,
    /// Writes measured in each mode (one key each: the per-key write limit is 1/s).
    #[arg(long, default_value_t = 1000)]
    writes: usize,
    /// Which modes to measure.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    mode: Which,
    /// The edge that takes the puts.
    #[arg(long, default_value = "us-east-1")]
    writer: String,
    /// Push-mode edges in other regions that had the key cached.
    #[arg(long, value_delimiter = ',', default_values_t = vec!["eu-west-1".to_string(), "ap-south-1".to_string()])]
    push_readers: Vec<String>,
    /// Ttl-mode edges in other regions that had the key cached.
    #[arg(long, value_delimiter = ',', default_values_t = vec!["eu-west-2".to_string(), "ap-south-2".to_string()])]
    ttl_readers: Vec<String>,
    /// How often a push-mode reader is polled after the put.
    #[arg(long, default_value_t = 1)]
    poll_ms: u64,
    /// How often each ttl-mode reader reads each key.
    #[arg(long, default_value_t = 500)]
    ttl_poll_ms: u64,
    /// cacheTtl of the ttl-mode readers' reads (KV's default is 60, its minimum 30).
    #[arg(long, default_value_t = 60)]
    cache_ttl: i64,
}

/// One reader's view of one mode.
struct ReaderResult {
    name: String,
    latency: Latency,
    /// Answers with the new value that were HITs (a copy replaced in place, not refetched).
    hits_at_visibility: u64,
    timeouts: u64,
}

impl ReaderResult {
    fn new(name: &str) -> ReaderResult {
        ReaderResult { name: name.into(), latency: Latency::default(), hits_at_visibility: 0, timeouts: 0 }
    }

    fn add(&mut self, seen: Option<(Duration, CacheStatus)>) {
        match seen {
            Some((d, s)) => {
                self.latency.record(d);
                self.hits_at_visibility += u64::from(s == CacheStatus::Hit);
            }
            None => self.timeouts += 1,
        }
    }
}

/// What one mode measured: per reader, and the writer's put acknowledgements.
struct ModeResult {
    mode: &'static str,
    readers: Vec<ReaderResult>,
    put_ack: Latency,
    poll_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ttl_names: Vec<&str> = args.ttl_readers.iter().map(String::as_str).collect();
    let bench = BenchCluster::start(topology(args.topology.as_deref(), &ttl_names)?).await?;
    let writer = bench.client(&args.writer).await?;
    let ns = writer.create_namespace("propagation").await?.id;

    let mut results = Vec::new();
    if args.mode != Which::Ttl {
        results.push(push_mode(&bench, &args, &writer, &ns).await?);
    }
    if args.mode != Which::Push {
        results.push(ttl_mode(&bench, &args, &writer, &ns).await?);
    }

    let mut rows = Vec::new();
    for m in &results {
        println!(
            "{}",
            m.put_ack.json(serde_json::json!({"bench": "propagation", "mode": m.mode, "put_ack": args.writer}))
        );
        for r in &m.readers {
            // The target holds for push mode; ttl mode waits out cacheTtl by design.
            let target =
                if m.mode == "push" { Some(bench.largest_round_trip_ms(&args.writer, &r.name)? * 2) } else { None };
            let within = target.map(|t| r.latency.ms(0.99) <= t as f64);
            println!(
                "{}",
                r.latency.json(serde_json::json!({
                    "bench": "propagation",
                    "mode": m.mode,
                    "writer": args.writer,
                    "reader": r.name,
                    "poll_ms": m.poll_ms,
                    "cache_ttl_secs": (m.mode == "ttl").then_some(args.cache_ttl),
                    "target_p99_ms": target,
                    "p99_within_target": within,
                    "hits_at_visibility": r.hits_at_visibility,
                    "timeouts": r.timeouts,
                }))
            );
            let mut row = vec![m.mode.to_string(), format!("{} -> {}", args.writer, r.name)];
            row.extend(r.latency.cells());
            row.extend([
                target.map_or("-".into(), |t| t.to_string()),
                within.map_or("-", |w| if w { "yes" } else { "no" }).into(),
                r.hits_at_visibility.to_string(),
                r.timeouts.to_string(),
            ]);
            rows.push(row);
        }
        let mut row = vec![m.mode.to_string(), format!("put ack at {}", args.writer)];
        row.extend(m.put_ack.cells());
        row.extend(["".into(), "".into(), "".into(), "".into()]);
        rows.push(row);
    }
    let mut headers = vec!["mode", "path"];
    headers.extend(LATENCY_HEADERS);
    headers.extend(["target p99 ms", "within", "HIT when seen", "timeouts"]);
    print_table(&headers, &rows);
    Ok(())
}

/// The value of write `generation` of key `i`.
fn value(i: usize, generation: u32) -> Vec<u8> {
    format!("{i}:{generation}").into_bytes()
}

/// Loads `n` keys with their first value and connects to each reader.
async fn prepare(
    bench: &BenchCluster,
    writer: &Client,
    ns: &str,
    prefix: &str,
    n: usize,
    readers: &[String],
) -> anyhow::Result<(Vec<String>, Vec<Client>)> {
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    load(writer, ns, keys.iter().enumerate().map(|(i, k)| (k.clone(), value(i, 0))).collect()).await?;
    let loaded = Instant::now();
    let mut clients = Vec::new();
    for r in readers {
        clients.push(bench.client(r).await?);
    }
    // A key takes one write per second: the measured puts must not be refused (and retried).
    tokio::time::sleep_until((loaded + Duration::from_secs(1)).into()).await;
    Ok((keys, clients))
}

/// What a reader is polled for: `key` answering `want`.
struct Awaited<'a> {
    ns: &'a str,
    key: &'a str,
    want: &'a [u8],
    cache_ttl: Option<i64>,
    poll: Duration,
}

impl Awaited<'_> {
    /// Polls `reader` until it answers the awaited value: how long after `since`, and how it was served.
    async fn on(&self, reader: &Client, since: Instant, give_up: Duration) -> Option<(Duration, CacheStatus)> {
        while since.elapsed() < give_up {
            if let Ok(r) = reader.get(self.ns, self.key, self.cache_ttl).await {
                if r.found && r.value == self.want {
                    return Some((since.elapsed(), status(&r)));
                }
            }
            tokio::time::sleep(self.poll).await;
        }
        None
    }
}

/// Sends the put of `value` to `key`, returning when it was sent and how long its acknowledgement took.
async fn put(writer: &Client, ns: &str, key: &str, value: Vec<u8>) -> anyhow::Result<(Instant, Duration)> {
    let req = api::PutRequest { namespace_id: ns.into(), key: key.into(), value: value.into(), ..Default::default() };
    let sent = Instant::now();
    writer.put(req).await?;
    Ok((sent, sent.elapsed()))
}

async fn push_mode(bench: &BenchCluster, args: &Args, writer: &Client, ns: &str) -> anyhow::Result<ModeResult> {
    let (keys, readers) = prepare(bench, writer, ns, "push", args.writes, &args.push_readers).await?;
    let mut results: Vec<ReaderResult> = args.push_readers.iter().map(|r| ReaderResult::new(r)).collect();
    let mut put_ack = Latency::default();
    let poll = Duration::from_millis(args.poll_ms);
    eprintln!("push mode: {} writes, one at a time", keys.len());
    for (i, key) in keys.iter().enumerate() {
        for r in &readers {
            let got = r.get(ns, key, None).await?;
            anyhow::ensure!(got.value == value(i, 0), "{key}: the reader did not cache the first value");
        }
        let new = value(i, 1);
        let awaited = Awaited { ns, key, want: &new, cache_ttl: None, poll };
        let since = Instant::now();
        let watchers = readers.iter().map(|r| awaited.on(r, since, Duration::from_secs(30)));
        let (ack, seen) = tokio::join!(put(writer, ns, key, new.clone()), futures::future::join_all(watchers));
        put_ack.record(ack?.1);
        for (res, s) in results.iter_mut().zip(seen) {
            res.add(s);
        }
    }
    Ok(ModeResult { mode: "push", readers: results, put_ack, poll_ms: args.poll_ms })
}

async fn ttl_mode(bench: &BenchCluster, args: &Args, writer: &Client, ns: &str) -> anyhow::Result<ModeResult> {
    let (keys, readers) = prepare(bench, writer, ns, "ttl", args.writes, &args.ttl_readers).await?;
    let cache_ttl = Duration::from_secs(u64::try_from(args.cache_ttl)?);
    let poll = Duration::from_millis(args.ttl_poll_ms);
    let give_up = 2 * cache_ttl + Duration::from_secs(30);
    eprintln!("ttl mode: {} writes at once, each at a random moment of a {cache_ttl:?} copy's life", keys.len());
    let (ns, writer, readers) = (Arc::new(ns.to_string()), writer.clone(), Arc::new(readers));
    let mut tasks = Vec::new();
    for (i, key) in keys.into_iter().enumerate() {
        let (ns, writer, readers) = (ns.clone(), writer.clone(), readers.clone());
        let cache_ttl_secs = Some(args.cache_ttl);
        tasks.push(tokio::spawn(async move {
            for r in readers.iter() {
                let got = r.get(&ns, &key, cache_ttl_secs).await?;
                anyhow::ensure!(got.value == value(i, 0), "{key}: the reader did not cache the first value");
            }
            let write_at = Instant::now() + cache_ttl.mul_f64(rand::thread_rng().gen_range(0.0..1.0));
            while Instant::now() < write_at {
                for r in readers.iter() {
                    r.get(&ns, &key, cache_ttl_secs).await?;
                }
                tokio::time::sleep(poll.min(write_at.saturating_duration_since(Instant::now()))).await;
            }
            let new = value(i, 1);
            let (since, ack) = put(&writer, &ns, &key, new.clone()).await?;
            let awaited = Awaited { ns: &ns, key: &key, want: &new, cache_ttl: cache_ttl_secs, poll };
            let watchers = readers.iter().map(|r| awaited.on(r, since, give_up));
            Ok((ack, futures::future::join_all(watchers).await))
        }));
    }
    let mut results: Vec<ReaderResult> = args.ttl_readers.iter().map(|r| ReaderResult::new(r)).collect();
    let mut put_ack = Latency::default();
    for t in tasks {
        let (ack, seen) = t.await??;
        put_ack.record(ack);
        for (res, s) in results.iter_mut().zip(seen) {
            res.add(s);
        }
    }
    Ok(ModeResult { mode: "ttl", readers: results, put_ack, poll_ms: args.ttl_poll_ms })
}
