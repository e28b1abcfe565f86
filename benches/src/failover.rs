//! `failover`: how long writes stop when the central leader is killed -9 under load.
//!
//! Starts the topology (default: 3 voters and three regions), has `--writers` clients put
//! distinct keys continuously through one edge, and `--rounds` times kills the leader with
//! SIGKILL, waits for writes to be acknowledged again, restarts the killed voter and lets the
//! group settle. For each round it reports the gap between the last acknowledged write
//! before the kill and the first acknowledged write sent after it (what a client sees), and
//! the time from the kill to that acknowledgement. Prints one JSON line per round and a table.

use clap::Parser;
use kv_benches::{print_table, topology, BenchCluster};
use kv_client::api;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Args {
    /// A topology file; default: the embedded one.
    #[arg(long)]
    topology: Option<std::path::PathBuf>,
    /// The edge the writers use.
    #[arg(long, default_value = "us-east-1")]
    edge: String,
    #[arg(long, default_value_t = 8)]
    writers: usize,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// Acknowledgements, in milliseconds since `t0`: the newest one, and the first one of a
/// write *sent* after the kill (an answer sent by the old leader just before it died can
/// still arrive after the kill over a delayed link: it does not show that writes resumed).
struct Acks {
    t0: Instant,
    last_ms: AtomicU64,
    killed_ms: AtomicU64,
    resumed_ms: AtomicU64,
}

impl Acks {
    fn now(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    fn acked(&self, sent_ms: u64) {
        let at = self.now();
        self.last_ms.fetch_max(at, Ordering::Relaxed);
        if sent_ms > self.killed_ms.load(Ordering::Relaxed) {
            self.resumed_ms.fetch_min(at, Ordering::Relaxed);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut bench = BenchCluster::start(topology(args.topology.as_deref(), &[])?).await?;
    let client = bench.client(&args.edge).await?;
    let ns = client.create_namespace("failover").await?.id;
    let acks = Arc::new(Acks {
        t0: Instant::now(),
        last_ms: AtomicU64::new(0),
        killed_ms: AtomicU64::new(u64::MAX),
        resumed_ms: AtomicU64::new(u64::MAX),
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..args.writers {
        let (client, ns, acks, stop) = (bench.client(&args.edge).await?, ns.clone(), acks.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut raw = client.raw();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let mut req = tonic::Request::new(api::PutRequest {
                    namespace_id: ns.clone(),
                    key: format!("w{w}-{n}"),
                    value: "v".into(),
                    ..Default::default()
                });
                req.set_timeout(Duration::from_secs(2));
                let sent = acks.now();
                if raw.put(req).await.is_ok() {
                    acks.acked(sent);
                }
            }
        }));
    }
    let mut rows = Vec::new();
    for round in 1..=args.rounds {
        let leader = wait_leader(&bench).await?;
        // Writes are flowing: note the last ack, then kill the leader.
        let before = acks.last_ms.load(Ordering::Relaxed);
        let killed_at = acks.now();
        acks.resumed_ms.store(u64::MAX, Ordering::Relaxed);
        acks.killed_ms.store(killed_at, Ordering::Relaxed);
        bench.cluster.central[leader].kill();
        let resumed = loop {
            let first = acks.resumed_ms.load(Ordering::Relaxed);
            if first != u64::MAX {
                break first;
            }
            anyhow::ensure!(
                acks.t0.elapsed().as_millis() as u64 - killed_at < 60_000,
                "writes did not resume within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let gap = resumed - before.min(killed_at);
        let line = serde_json::json!({
            "bench": "failover", "round": round, "writers": args.writers, "killed": format!("central-{}", leader + 1),
            "write_gap_ms": gap, "first_ack_after_kill_ms": resumed - killed_at,
        });
        println!("{line}");
        rows.push(vec![
            round.to_string(),
            format!("central-{}", leader + 1),
            gap.to_string(),
            (resumed - killed_at).to_string(),
        ]);
        acks.killed_ms.store(u64::MAX, Ordering::Relaxed);
        bench.cluster.central[leader].start()?;
        bench.cluster.wait_for_leader().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    print_table(&["round", "killed", "write gap ms", "first ack after kill ms"], &rows);
    Ok(())
}

/// The index of the central leader, once the voters agree on one.
async fn wait_leader(bench: &BenchCluster) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(l) = bench.cluster.central_leader().await {
            return Ok(l);
        }
        anyhow::ensure!(Instant::now() < deadline, "no leader within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
