//! `kv-bench`: YCSB-style latency benchmarks against any deployment's edges.
//!
//! ```text
//! kv-bench run --endpoint us-east=127.0.0.1:7505 --endpoint ap-south=127.0.0.1:7525 \
//!     --ca data/local-cluster/tls/ca.pem --workload b --keys 100000 --load --seconds 30
//! kv-bench run --local --workload c          # starts the default local topology itself
//! kv-bench visibility --local --ttl-edges eu-west-2,ap-south-2 --cache-ttl 30 --seconds 90
//! kv-bench modes --cluster data/local-cluster   # eventual, session and STRONG reads; CAS contention
//! kv-bench watch --cluster data/local-cluster --watchers 1,1000   # watch fan-out at one edge
//! ```
//!
//! `run` groups results by endpoint, operation and outcome (a read's cache status, `absent`,
//! or an error's gRPC code) and prints them as a table; `--json FILE` also writes them as
//! JSON lines (`group`, `timeline` and `summary` records), and `--plots DIR` draws them as
//! SVG. `visibility` measures how soon a write at one edge is seen at each edge (the
//! t-visibility curve of PBS) and counts broken read guarantees (`visibility`,
//! `guarantees` and `summary` records).

mod fanout;
mod load;
mod modes;
mod output;
mod run;
mod target;
mod visibility;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Latency benchmarks (YCSB workloads) against the edges of a KV cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes keys 0..KEYS so that runs read existing keys.
    Load(load::Load),
    /// Runs a workload and reports latency per endpoint, operation and outcome.
    Run(run::Run),
    /// Writes counters at some edges while every edge reads them, and reports how soon a
    /// write is seen at each edge (t-visibility), how stale stale reads are, and every
    /// read-your-writes or monotonic-read violation seen.
    Visibility(visibility::Visibility),
    /// What STRONG and session reads cost against eventual ones at each edge, and how
    /// compare-and-set writers contending on one key fare.
    Modes(modes::Modes),
    /// Watch fan-out at one edge: delivery delay after each write's acknowledgement to
    /// every watcher, and the edge's memory per watcher, for each watcher count.
    Watch(fanout::Fanout),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Load(args) => {
            let at = args.target.connect().await?;
            load::load(&at, &args.keyspace, args.parallel).await?;
            println!("loaded {} keys into namespace {}", args.keyspace.keys, at.namespace);
            Ok(())
        }
        Command::Run(args) => run::run(args).await,
        Command::Visibility(args) => visibility::visibility(args).await,
        Command::Modes(args) => modes::modes(args).await,
        Command::Watch(args) => fanout::fanout(args).await,
    }
}
