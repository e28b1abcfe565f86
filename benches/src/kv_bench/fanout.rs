//! `kv-bench watch`: watch fan-out at one edge. For each watcher count, that many watchers
//! of one prefix at the first edge, and writes to the prefix through the same edge: the
//! delay from each write's send to its arrival at each watcher (the write's own round trip
//! to the central group, which the table gives apart, plus the feed back down), and the
//! edge's resident memory per watcher (when its metrics can be read).

use crate::output::Output;
use crate::target::{Connected, Target};
use clap::Args;
use kv_benches::{print_table, Latency, LATENCY_HEADERS};
use kv_client::api::{self, watch_event::Event};
use kv_client::RawClient;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct Fanout {
    #[command(flatten)]
    target: Target,
    /// Watcher counts to measure, one step each.
    #[arg(long, value_delimiter = ',', default_value = "1,1000")]
    watchers: Vec<usize>,
    /// Writes per step.
    #[arg(long, default_value_t = 100)]
    writes: usize,
    /// Milliseconds between two writes (each to another of 8 keys, so the per-key limit holds).
    #[arg(long, default_value_t = 150)]
    interval_ms: u64,
    /// Watch streams per connection.
    #[arg(long, default_value_t = 100)]
    per_connection: usize,
    #[command(flatten)]
    output: Output,
}

/// How long a watcher waits for its next event before it counts as idle and ends.
const IDLE: Duration = Duration::from_secs(30);

/// What one watcher saw: each version's arrival, and how its stream ended early, if it did.
type Arrivals = (Vec<(u64, Instant)>, Option<&'static str>);

pub async fn fanout(args: Fanout) -> anyhow::Result<()> {
    let at = args.target.connect().await?;
    let writer = crate::target::client(&at.endpoints[0].1, at.ca.as_deref(), at.token.as_deref()).await?;
    let (mut rows, mut lines) = (Vec::new(), Vec::new());
    for (step, &n) in args.watchers.iter().enumerate() {
        let prefix = format!("fanout-{}-{step}/", std::process::id());
        let before = at.edge_metric(0, "process_resident_memory_bytes").await;
        let (watchers, last_seen) = start_watchers(&at, &at.namespace, &prefix, n, args.per_connection).await?;
        let after = at.edge_metric(0, "process_resident_memory_bytes").await;
        let (mut acked, mut writes) = (HashMap::new(), Latency::default());
        // One write per tick: the pace the per-key limit allows over 8 keys.
        let mut pace = tokio::time::interval(Duration::from_millis(args.interval_ms.max(1)));
        for i in 0..args.writes {
            pace.tick().await;
            let key = format!("{prefix}k{}", i % 8);
            let value = i.to_string().into_bytes().into();
            let put = api::PutRequest { namespace_id: at.namespace.clone(), key, value, ..Default::default() };
            let sent = Instant::now();
            let v = writer.put(put).await?.version;
            writes.record(sent.elapsed());
            acked.insert(v, sent);
        }
        let newest = acked.keys().copied().max().unwrap_or(0);
        last_seen.send_replace(newest);
        let mut latency = Latency::default();
        let (mut delivered, mut missing) = (0u64, 0u64);
        let mut ended: HashMap<&'static str, u64> = HashMap::new();
        for w in watchers {
            let (arrivals, end) = w.await.unwrap_or_default();
            if let Some(why) = end {
                *ended.entry(why).or_default() += 1;
            }
            delivered += arrivals.len() as u64;
            missing += acked.len().saturating_sub(arrivals.len()) as u64;
            for (v, arrived) in arrivals {
                if let Some(sent) = acked.get(&v) {
                    latency.record(arrived.saturating_duration_since(*sent));
                }
            }
        }
        let per_watcher = match (before, after) {
            (Some(b), Some(a)) if n > 0 => Some(((a - b) / n as f64).max(0.0)),
            _ => None,
        };
        let mut row = vec![n.to_string(), delivered.to_string(), missing.to_string(), format!("{:.2}", writes.ms(0.5))];
        row.extend(latency.cells());
        row.push(per_watcher.map_or("-".into(), |b| format!("{b:.0}")));
        rows.push(row);
        if !ended.is_empty() {
            println!("{n} watchers: streams that ended early, by why: {ended:?}");
        }
        lines.push(latency.json(serde_json::json!({
            "record": "watch_fanout", "watchers": n, "delivered": delivered, "missing": missing,
            "rss_bytes_per_watcher": per_watcher, "write_p50_ms": writes.ms(0.5), "ended_early": ended,
        })));
    }
    let mut headers = vec!["watchers", "delivered", "missing", "write p50 ms"];
    headers.extend(LATENCY_HEADERS);
    headers.push("RSS B/watcher");
    print_table(&headers, &rows);
    args.output.json_lines(&lines)
}

/// `n` watchers of `prefix` at the first edge, each live (past its first progress) when
/// this returns; each ends once it has seen the version sent on the returned channel.
async fn start_watchers(
    at: &Connected,
    ns: &str,
    prefix: &str,
    n: usize,
    per_connection: usize,
) -> anyhow::Result<(Vec<tokio::task::JoinHandle<Arrivals>>, tokio::sync::watch::Sender<u64>)> {
    let connections = n.div_ceil(per_connection.max(1)).max(1);
    let mut clients: Vec<RawClient> = Vec::new();
    for _ in 0..connections {
        clients.push(crate::target::client(&at.endpoints[0].1, at.ca.as_deref(), at.token.as_deref()).await?.raw());
    }
    let (last_tx, last_rx) = tokio::sync::watch::channel(u64::MAX);
    let mut tasks = Vec::with_capacity(n);
    let mut live = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = clients[i % connections].clone();
        let req = api::WatchRequest { namespace_id: ns.into(), prefix: prefix.into(), ..Default::default() };
        let mut stream = c.watch(req).await?.into_inner();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        live.push(ready_rx);
        let mut last = last_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut ready = Some(ready_tx);
            loop {
                let until = *last.borrow();
                if seen.last().is_some_and(|(v, _)| *v >= until) {
                    return (seen, None);
                }
                tokio::select! {
                    m = tokio::time::timeout(IDLE, stream.message()) => match m {
                        Err(_) => return (seen, Some("idle 30 s")),
                        Ok(m) => match m {
                        Ok(Some(api::WatchEvent { event: Some(Event::Change(c)) })) => seen.push((c.version, Instant::now())),
                        Ok(Some(api::WatchEvent { event: Some(Event::Progress(_)) })) => {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                        Ok(Some(api::WatchEvent { event: Some(Event::Resync(_)) })) => return (seen, Some("resync")),
                        Ok(Some(_)) => {}
                        Ok(None) => return (seen, Some("closed")),
                        Err(_) => return (seen, Some("error")),
                        },
                    },
                    _ = last.changed() => {}
                }
            }
        }));
    }
    for r in live {
        let _ = tokio::time::timeout(Duration::from_secs(30), r).await;
    }
    Ok((tasks, last_tx))
}
