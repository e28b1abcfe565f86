//! `kv-bench modes`: what reads stronger than KV's cost at each edge (eventual, session and
//! STRONG reads, each in a closed loop), and how compare-and-set behaves when writers
//! contend on one key (each reads the key STRONG, then writes it at that version).

use crate::output::Output;
use crate::target::Target;
use clap::Args;
use kv_benches::closed_loop::{self, Looped};
use kv_benches::{print_table, LATENCY_HEADERS};
use kv_client::{api, RawClient};
use std::time::Duration;
use tonic::Code;

#[derive(Args)]
pub struct Modes {
    #[command(flatten)]
    target: Target,
    /// Connections per edge in each read loop.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Seconds each loop measures (after a one-second warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Compare-and-set writers, spread over the edges in turn (0: no contention loop).
    #[arg(long, default_value_t = 8)]
    writers: usize,
    #[command(flatten)]
    output: Output,
}

/// How one read loop reads.
#[derive(Clone, Copy)]
enum Mode {
    Eventual,
    /// A session token newer than the copy: the key the session wrote.
    SessionSameKey,
    /// A session token newer than the copy of a key the session did not write.
    SessionOtherKey,
    Strong,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Eventual, Mode::SessionSameKey, Mode::SessionOtherKey, Mode::Strong];

    fn name(self) -> &'static str {
        match self {
            Mode::Eventual => "eventual",
            Mode::SessionSameKey => "session (key written)",
            Mode::SessionOtherKey => "session (other key)",
            Mode::Strong => "strong",
        }
    }

    fn request(self, ns: &str, token: u64) -> api::GetRequest {
        let (key, consistency, min_version) = match self {
            Mode::Eventual => ("modes-written", api::Consistency::Eventual, 0),
            Mode::SessionSameKey => ("modes-written", api::Consistency::Eventual, token),
            Mode::SessionOtherKey => ("modes-other", api::Consistency::Eventual, token),
            Mode::Strong => ("modes-written", api::Consistency::Strong, 0),
        };
        api::GetRequest {
            namespace_id: ns.into(),
            key: key.into(),
            cache_ttl: Some(300),
            consistency: consistency as i32,
            min_version,
            ..Default::default()
        }
    }
}

/// What a read answered, as a loop outcome.
fn outcome(r: &api::GetResponse) -> &'static str {
    match api::CacheStatus::try_from(r.cache_status) {
        Ok(api::CacheStatus::Hit) => "hit",
        Ok(api::CacheStatus::Stale) => "stale",
        _ => match api::ServedBy::try_from(r.served_by) {
            Ok(api::ServedBy::Regional) => "miss:regional",
            _ => "miss:central",
        },
    }
}

pub async fn modes(args: Modes) -> anyhow::Result<()> {
    let at = args.target.connect().await?;
    let ns = at.namespace.clone();
    let conns = at.connections(args.clients.max(1)).await?;
    let writer = crate::target::client(&at.endpoints[0].1, at.ca.as_deref(), at.token.as_deref()).await?;
    writer.put(api::PutRequest { namespace_id: ns.clone(), key: "modes-other".into(), ..Default::default() }).await?;
    let warmup = Duration::from_secs(1);
    let window = Duration::from_secs(args.seconds);
    let (mut rows, mut lines) = (Vec::new(), Vec::new());
    for ((edge, _), clients) in at.endpoints.iter().zip(&conns) {
        // A fresh write per edge, so each edge's copy starts older than the token.
        let put = api::PutRequest {
            namespace_id: ns.clone(),
            key: "modes-written".into(),
            value: edge.clone().into_bytes().into(),
            ..Default::default()
        };
        let token = writer.put(put).await?.version;
        for mode in Mode::ALL {
            let loops = clients.iter().cloned().map(|c: RawClient| {
                let req = mode.request(&ns, token);
                move |_| {
                    let (mut c, req) = (c.clone(), req.clone());
                    async move {
                        c.get(req).await.map(|r| outcome(&r.into_inner())).map_err(|s| s.message().to_owned())
                    }
                }
            });
            let looped = closed_loop::run(loops.collect(), warmup, window).await?;
            rows.push(row(edge, mode.name(), &looped));
            lines.push(line(edge, mode.name(), &looped));
        }
    }
    print_table(&headers(), &rows);
    if args.writers > 0 {
        let (looped, per_sec) = contend(&conns, &ns, args.writers, warmup, window).await?;
        let label = format!("{} writers", args.writers);
        println!();
        print_table(&headers(), &[row(&label, "compare-and-set", &looped)]);
        println!("decided compare-and-sets per second, by outcome: {per_sec:?}");
        lines.push(serde_json::json!({"record": "cas", "writers": args.writers, "per_sec": per_sec, "latency": looped.latency.json(serde_json::json!({}))}));
    }
    args.output.json_lines(&lines)
}

fn headers() -> Vec<&'static str> {
    let mut h = vec!["edge", "read", "ops/s", "outcomes"];
    h.extend(LATENCY_HEADERS);
    h
}

fn row(edge: &str, what: &str, l: &Looped) -> Vec<String> {
    let outcomes: Vec<String> = l.outcomes.iter().map(|(k, n)| format!("{k}:{n}")).collect();
    let mut r = vec![edge.to_owned(), what.to_owned(), format!("{:.0}", l.ops_per_sec()), outcomes.join(" ")];
    r.extend(l.latency.cells());
    r
}

fn line(edge: &str, what: &str, l: &Looped) -> serde_json::Value {
    let fields = serde_json::json!({
        "record": "read", "edge": edge, "mode": what, "ops_per_sec": l.ops_per_sec(),
        "outcomes": l.outcomes, "errors": l.errors,
    });
    l.latency.json(fields)
}

/// `writers` clients (over the edges in turn) racing on one key: each reads it STRONG and
/// writes it at the version read. Outcomes: `won`, `lost` (412, another writer came first)
/// and `limited` (429: the key's one write per second was taken); all three are decided.
async fn contend(
    conns: &[Vec<RawClient>],
    ns: &str,
    writers: usize,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<(Looped, Vec<(&'static str, f64)>)> {
    // Writer i at edge i mod E, on that edge's connections in turn.
    let (e, c) = (conns.len(), conns[0].len());
    let clients: Vec<RawClient> = (0..writers).map(|i| conns[i % e][(i / e) % c].clone()).collect();
    let loops = clients.into_iter().map(|c| {
        let ns = ns.to_owned();
        move |n: u64| {
            let (mut c, ns) = (c.clone(), ns.clone());
            async move {
                let read = api::GetRequest {
                    namespace_id: ns.clone(),
                    key: "modes-cas".into(),
                    consistency: api::Consistency::Strong as i32,
                    ..Default::default()
                };
                let got = c.get(read).await.map_err(|s| s.message().to_owned())?.into_inner();
                let put = api::PutRequest {
                    namespace_id: ns,
                    key: "modes-cas".into(),
                    value: n.to_string().into_bytes().into(),
                    if_version: Some(if got.found { got.version } else { 0 }),
                    ..Default::default()
                };
                match c.put(put).await {
                    Ok(_) => Ok("won"),
                    Err(s) if s.code() == Code::FailedPrecondition => Ok("lost"),
                    Err(s) if s.code() == Code::ResourceExhausted => Ok("limited"),
                    Err(s) => Err(s.message().to_owned()),
                }
            }
        }
    });
    let looped = closed_loop::run(loops.collect(), warmup, window).await?;
    let per_sec = looped.outcomes.iter().map(|(k, n)| (*k, *n as f64 / looped.seconds.max(1e-9))).collect();
    Ok((looped, per_sec))
}
