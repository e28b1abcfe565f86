//! `bench-peers`: the cluster side by side with its peers, on this machine, in one run.
//!
//! One closed loop (`kv_benches::closed_loop`) drives, one system at a time so they do not
//! share the cores: a bare tonic echo server (the floor of one gRPC call), the cluster's
//! edge (hot reads) and central group (puts, 3 voters, fsync), a 3-member etcd cluster
//! (serializable range reads, puts to the leader) and Redis (GET, and SET with
//! `appendfsync always`, over its own protocol). Every client has a connection of its own.
//! The machine is shared and noisy, so what counts are the ratios of one run, printed
//! against the targets of issue 12; `--json` and `--plots` keep the rest.
//!
//! `scripts/bench-peers` installs etcd and Redis when missing, builds and runs this.

use clap::Parser;
use kv_benches::closed_loop::{self, Looped};
use kv_benches::peers::{echo::EchoServer, etcd::Etcd, redis::Redis};
use kv_benches::{central_puts, load, plots, print_table, topology, BenchCluster};
use kv_client::api;
use kv_tests::{Cluster, ClusterOptions};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "The cluster beside a bare gRPC echo, etcd and Redis on this machine, as ratios")]
struct Args {
    /// Measured seconds per loop (after the warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Warm-up seconds per loop.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Concurrent readers of the many-connection read loops.
    #[arg(long, default_value_t = 64)]
    readers: usize,
    /// Concurrent writers, one write loop each.
    #[arg(long, value_delimiter = ',', default_values_t = vec![16, 128])]
    writers: Vec<usize>,
    /// Keys read (all held by the edge), each of `--value-bytes`.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Bytes of each written value.
    #[arg(long, default_value_t = 100)]
    put_bytes: usize,
    /// Systems left out (echo, etcd, redis).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Also write every measurement and ratio as JSON lines to this file (`-`: standard output).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also draw latency distributions per loop as SVG into this directory.
    #[arg(long)]
    plots: Option<PathBuf>,
}

/// One loop's result: which system, which operation, how many clients.
struct Measured {
    system: &'static str,
    op: &'static str,
    clients: usize,
    result: Looped,
}

/// The loops run, in order.
struct Bench {
    args: Args,
    measured: Vec<Measured>,
}

impl Bench {
    /// Runs one loop of `clients` made by `make(i)` and records it.
    async fn measure<F, Fut, M, MFut>(
        &mut self,
        system: &'static str,
        op: &'static str,
        n: usize,
        mut make: M,
    ) -> anyhow::Result<()>
    where
        M: FnMut(usize) -> MFut,
        MFut: Future<Output = anyhow::Result<F>>,
        F: FnMut(u64) -> Fut + Send + 'static,
        Fut: Future<Output = Result<&'static str, String>> + Send,
    {
        let mut clients = Vec::with_capacity(n);
        for i in 0..n {
            clients.push(make(i).await?);
        }
        eprintln!("{system}: {op} with {n} clients ...");
        let window = Duration::from_secs(self.args.seconds.max(1));
        let result = closed_loop::run(clients, Duration::from_secs(self.args.warmup), window).await?;
        if let Some(e) = &result.first_error {
            eprintln!("{system}: {op}: {} calls failed, the first with: {e}", result.errors);
        }
        self.measured.push(Measured { system, op, clients: n, result });
        Ok(())
    }

    fn skips(&self, system: &str) -> bool {
        self.args.skip.iter().any(|s| s == system)
    }

    fn find(&self, system: &str, op: &str, clients: usize) -> Option<&Looped> {
        self.measured.iter().find(|m| (m.system, m.op, m.clients) == (system, op, clients)).map(|m| &m.result)
    }
}

/// Key number `k` of the loaded ones.
fn key(k: usize) -> String {
    format!("k{k:06}")
}

/// The key of a read loop's call `n` by client `i`, spread over the `keys` loaded.
fn key_of(i: usize, n: u64, keys: usize) -> String {
    key((n as usize).wrapping_mul(7919).wrapping_add(i.wrapping_mul(131)) % keys.max(1))
}

fn failed(e: impl std::fmt::Display) -> String {
    e.to_string()
}

async fn echo(b: &mut Bench, dir: &std::path::Path) -> anyhow::Result<()> {
    use kv_benches::peers::echo::{self, pb};
    let server = EchoServer::start(dir).await?;
    let url = format!("http://{}", server.addr);
    let reply_bytes = u32::try_from(b.args.value_bytes)?;
    for n in [b.args.readers, 1] {
        b.measure("echo", "read", n, |i| {
            let url = url.clone();
            async move {
                let c = pb::echo_client::EchoClient::connect(url).await?;
                Ok(move |call: u64| {
                    echo::call(c.clone(), format!("namespace-id/{}", key_of(i, call, 1000)), reply_bytes)
                })
            }
        })
        .await?;
    }
    Ok(())
}

async fn cluster_reads(b: &mut Bench) -> anyhow::Result<()> {
    let mut t = topology(None, &[])?;
    // The voters linked directly, as etcd's members are here; the tiers keep their links.
    t.central.direct = true;
    let bench = BenchCluster::start(t).await?;
    let edge = "us-east-1";
    let first = bench.client(edge).await?;
    let ns = first.create_namespace("bench-peers").await?.id;
    let keys = b.args.keys;
    let items = (0..keys).map(|k| (key(k), vec![b'v'; b.args.value_bytes])).collect();
    load(&first, &ns, items).await?;
    // Every key read once: the loops read what the edge holds.
    for k in 0..keys {
        first.get(&ns, &key(k), Some(300)).await?;
    }
    for n in [b.args.readers, 1] {
        b.measure("cluster", "read", n, |i| {
            let (bench, ns) = (&bench, ns.clone());
            async move {
                let c = bench.client(edge).await?.raw();
                Ok(move |call: u64| {
                    let mut c = c.clone();
                    let key = key_of(i, call, keys);
                    let req = api::GetRequest {
                        namespace_id: ns.clone(),
                        key,
                        cache_ttl: Some(300),
                        with_metadata: false,
                        ..Default::default()
                    };
                    async move {
                        let r = c.get(req).await.map_err(failed)?.into_inner();
                        if !r.found {
                            return Err("key not found".into());
                        }
                        // Every key is held; a reset of the edge's copies (its push stream
                        // reconnected) would make misses, counted apart.
                        Ok(if r.cache_status == api::CacheStatus::Hit as i32 { "hit" } else { "not_hit" })
                    }
                })
            }
        })
        .await?;
    }
    Ok(())
}

async fn cluster_writes(b: &mut Bench) -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOptions::default()).await?;
    let ns = cluster.create_namespace(0, "bench-peers").await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let value = vec![b'x'; b.args.put_bytes];
    for n in b.args.writers.clone() {
        let mut clients = central_puts(&cluster, leader, &ns, &value, n, &format!("w{n}-")).into_iter();
        b.measure("cluster", "put", n, |_| {
            let client = clients.next().ok_or_else(|| anyhow::anyhow!("one client per writer"));
            async move { client }
        })
        .await?;
    }
    Ok(())
}

async fn etcd(b: &mut Bench, dir: &std::path::Path) -> anyhow::Result<()> {
    use kv_benches::peers::etcd::pb::{self, kv_client::KvClient};
    let etcd = Etcd::start(dir, 3).await?;
    let leader = etcd.leader().await?;
    let mut loader = KvClient::new(etcd.channel(leader).await?);
    for k in 0..b.args.keys {
        let req = pb::PutRequest { key: key(k).into(), value: vec![b'v'; b.args.value_bytes].into(), lease: 0 };
        loader.put(req).await?;
    }
    let keys = b.args.keys;
    for n in [b.args.readers, 1] {
        // Serializable reads are served by the member asked: clients spread over all three.
        b.measure("etcd", "read", n, |i| {
            let etcd = &etcd;
            async move {
                let c = KvClient::new(etcd.channel(i).await?);
                Ok(move |call: u64| {
                    let mut c = c.clone();
                    let req = pb::RangeRequest {
                        key: key_of(i, call, keys).into(),
                        serializable: true,
                        ..Default::default()
                    };
                    async move {
                        let r = c.range(req).await.map_err(failed)?.into_inner();
                        if r.kvs.is_empty() {
                            return Err("key not found".into());
                        }
                        Ok("found")
                    }
                })
            }
        })
        .await?;
    }
    let value: bytes::Bytes = vec![b'x'; b.args.put_bytes].into();
    for n in b.args.writers.clone() {
        // Puts go to the leader, as the cluster's do.
        b.measure("etcd", "put", n, |i| {
            let (etcd, value) = (&etcd, value.clone());
            async move {
                let c = KvClient::new(etcd.channel(leader).await?);
                Ok(move |call: u64| {
                    let mut c = c.clone();
                    let req = pb::PutRequest { key: format!("w{n}-{i}-{call}").into(), value: value.clone(), lease: 0 };
                    async move { c.put(req).await.map(|_| "ok").map_err(failed) }
                })
            }
        })
        .await?;
    }
    Ok(())
}

async fn redis(b: &mut Bench, dir: &std::path::Path) -> anyhow::Result<()> {
    use redis::AsyncCommands;
    let server = Redis::start(dir).await?;
    let mut loader = server.connection().await?;
    for k in 0..b.args.keys {
        let () = loader.set(key(k), vec![b'v'; b.args.value_bytes]).await?;
    }
    let keys = b.args.keys;
    for n in [b.args.readers, 1] {
        b.measure("redis", "read", n, |i| {
            let server = &server;
            async move {
                let c = server.connection().await?;
                Ok(move |call: u64| {
                    let mut c = c.clone();
                    let key = key_of(i, call, keys);
                    async move {
                        let v: Option<Vec<u8>> = c.get(key).await.map_err(failed)?;
                        v.map(|_| "found").ok_or_else(|| "key not found".to_string())
                    }
                })
            }
        })
        .await?;
    }
    let value = vec![b'x'; b.args.put_bytes];
    for n in b.args.writers.clone() {
        b.measure("redis", "put", n, |i| {
            let (server, value) = (&server, value.clone());
            async move {
                let c = server.connection().await?;
                Ok(move |call: u64| {
                    let (mut c, value) = (c.clone(), value.clone());
                    async move { c.set::<_, _, ()>(format!("w{n}-{i}-{call}"), value).await.map(|_| "ok").map_err(failed) }
                })
            }
        })
        .await?;
    }
    Ok(())
}

/// A ratio of the run, and the target it is held to.
struct Ratio {
    what: String,
    value: f64,
    /// (at least?, bound); `None` for a ratio shown for reference.
    target: Option<(bool, f64)>,
}

impl Ratio {
    fn met(&self) -> Option<bool> {
        self.target.map(|(at_least, bound)| if at_least { self.value >= bound } else { self.value <= bound })
    }
}

fn ratios(b: &Bench) -> Vec<Ratio> {
    let mut out = Vec::new();
    let r = b.args.readers;
    // A loop none of whose calls succeeded gives no ratio (not a ratio of 0).
    let tput = |s: &str, op: &str, n: usize| b.find(s, op, n).filter(|l| l.ops > 0).map(Looped::ops_per_sec);
    let mut add = |what: String, ours: Option<f64>, theirs: Option<f64>, target: Option<(bool, f64)>| {
        if let (Some(a), Some(t)) = (ours, theirs) {
            out.push(Ratio { what, value: a / t.max(1e-9), target });
        }
    };
    add(
        format!("hot read throughput, {r} connections: edge / echo"),
        tput("cluster", "read", r),
        tput("echo", "read", r),
        Some((true, 0.95)),
    );
    let p50 = |s: &str| b.find(s, "read", 1).filter(|l| l.ops > 0).map(|l| l.latency.ms(0.5));
    add("hot read p50, 1 connection: edge / echo".into(), p50("cluster"), p50("echo"), Some((false, 1.05)));
    add(
        format!("hot read throughput, {r} connections: edge / etcd serializable range"),
        tput("cluster", "read", r),
        tput("etcd", "read", r),
        Some((true, 2.2)),
    );
    add(
        format!("(ceiling) echo / etcd serializable range, {r} connections"),
        tput("echo", "read", r),
        tput("etcd", "read", r),
        None,
    );
    add(
        format!("hot read throughput, {r} connections: edge / Redis GET"),
        tput("cluster", "read", r),
        tput("redis", "read", r),
        None,
    );
    for &w in &b.args.writers {
        add(
            format!("put throughput, {w} writers: central / etcd"),
            tput("cluster", "put", w),
            tput("etcd", "put", w),
            Some((true, 1.5)),
        );
        add(
            format!("put throughput, {w} writers: central / Redis SET (fsync always)"),
            tput("cluster", "put", w),
            tput("redis", "put", w),
            None,
        );
    }
    out
}

fn report(b: &Bench) -> anyhow::Result<()> {
    let rows: Vec<Vec<String>> = b
        .measured
        .iter()
        .map(|m| {
            let l = &m.result;
            vec![
                m.system.to_owned(),
                m.op.to_owned(),
                m.clients.to_string(),
                format!("{:.0}", l.ops_per_sec()),
                format!("{:.3}", l.latency.ms(0.5)),
                format!("{:.3}", l.latency.ms(0.99)),
                format!("{:.3}", l.latency.max_ms()),
                l.errors.to_string(),
            ]
        })
        .collect();
    print_table(&["system", "op", "clients", "ops/s", "p50 ms", "p99 ms", "max ms", "errors"], &rows);
    let ratios = ratios(b);
    let rows: Vec<Vec<String>> = ratios
        .iter()
        .map(|r| {
            let target =
                r.target.map_or("-".into(), |(at_least, v)| format!("{} {v}", if at_least { ">=" } else { "<=" }));
            let met = r.met().map_or("-", |m| if m { "met" } else { "missed" });
            vec![r.what.clone(), format!("{:.2}", r.value), target, met.to_owned()]
        })
        .collect();
    print_table(&["ratio", "value", "target", ""], &rows);

    let mut lines: Vec<serde_json::Value> = b
        .measured
        .iter()
        .map(|m| {
            m.result.latency.json(serde_json::json!({
                "type": "measurement",
                "system": m.system,
                "op": m.op,
                "clients": m.clients,
                "ops_per_sec": m.result.ops_per_sec().round(),
                "errors": m.result.errors,
            }))
        })
        .collect();
    for r in &ratios {
        lines.push(serde_json::json!({
            "type": "ratio", "what": r.what, "value": (r.value * 1000.0).round() / 1000.0,
            "target": r.target.map(|(at_least, v)| serde_json::json!({"at_least": at_least, "bound": v})),
            "met": r.met(),
        }));
    }
    kv_benches::write_json_lines(b.args.json.as_deref(), &lines)?;
    if let Some(dir) = &b.args.plots {
        std::fs::create_dir_all(dir)?;
        let mut by_loop: BTreeMap<(&str, usize), Vec<plots::Line>> = BTreeMap::new();
        for m in &b.measured {
            by_loop.entry((m.op, m.clients)).or_default().push((m.system.to_owned(), m.result.latency.cdf()));
        }
        for ((op, clients), lines) in by_loop {
            let name = format!("peers-{op}-{clients}.svg");
            let caption = format!("{op} latency, {clients} clients");
            println!("wrote {}", plots::latency(&dir.join(name), &caption, &lines)?.display());
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.value_bytes <= kv_benches::peers::echo::MAX_REPLY, "--value-bytes is at most 1 MiB");
    let dir = tempfile::tempdir()?;
    let mut b = Bench { args, measured: Vec::new() };
    if !b.skips("echo") {
        echo(&mut b, dir.path()).await?;
    }
    cluster_reads(&mut b).await?;
    cluster_writes(&mut b).await?;
    if !b.skips("etcd") {
        etcd(&mut b, dir.path()).await?;
    }
    if !b.skips("redis") {
        redis(&mut b, dir.path()).await?;
    }
    report(&b)
}
