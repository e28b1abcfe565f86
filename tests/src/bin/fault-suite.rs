//! `fault-suite`: the randomized fault suite (see `kv_tests::fault`). Runs `--runs` runs from
//! `--seed` on (run i uses seed + i, so a seed replays its run's calls and faults), prints
//! each violation with the history excerpt that shows it, then one JSON summary line, and
//! exits non-zero on any violation.

use clap::Parser;
use kv_tests::fault::run::{excerpt, run, Plan};
use std::collections::BTreeMap;
use std::time::Instant;

/// The cache of every edge and regional tier in a run with an odd seed: room for about five
/// of the eight keys' small copies and none of the large ones, so copies are evicted all the
/// time and the guarantees are checked across evictions too.
const SMALL_CACHE: u64 = 4096;

#[derive(Debug, Parser)]
#[command(name = "fault-suite", about = "Randomized faults against a real cluster, checked against SPEC section 4")]
struct Args {
    /// How many runs.
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// The first run's seed (default: from the clock, printed so it can be replayed).
    #[arg(long)]
    seed: Option<u64>,
    /// How long the clients and the nemesis run, per run.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Keys the clients share.
    #[arg(long, default_value_t = 8)]
    keys: usize,
    /// Clients per edge.
    #[arg(long, default_value_t = 2)]
    clients_per_edge: usize,
    /// Bytes of cache at every edge and regional tier, in every run. By default, runs with
    /// an odd seed give them `SMALL_CACHE` and the others the nodes' own default.
    #[arg(long)]
    cache_bytes: Option<u64>,
    /// Where each run's history is written (`<dir>/seed-<seed>.json`).
    #[arg(long, default_value = "target/fault-suite")]
    out: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let first = args.seed.unwrap_or_else(|| kv_common::time::now_ms() % 1_000_000);
    std::fs::create_dir_all(&args.out)?;
    let started = Instant::now();
    let (mut operations, mut faults, mut evictions) = (0usize, 0usize, 0u64);
    let mut violations: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut failed_seeds = Vec::new();
    for i in 0..args.runs {
        let seed = first + i;
        let plan = Plan {
            seed,
            seconds: args.seconds,
            keys: args.keys,
            clients_per_edge: args.clients_per_edge,
            cache_bytes: args.cache_bytes.or((seed % 2 == 1).then_some(SMALL_CACHE)),
        };
        let root = tempfile::tempdir_in(&args.out)?;
        let outcome = run(plan, root.path()).await?;
        let record =
            serde_json::json!({ "seed": seed, "history": outcome.history, "final_reads": outcome.final_reads });
        std::fs::write(args.out.join(format!("seed-{seed}.json")), serde_json::to_vec(&record)?)?;
        operations += outcome.history.ops.len() + outcome.final_reads.len();
        faults += outcome.history.faults.len();
        evictions += outcome.evictions;
        eprintln!(
            "run {} of {} (seed {seed}): {} calls, {} faults, {} evictions, {} violations",
            i + 1,
            args.runs,
            outcome.history.ops.len(),
            outcome.history.faults.len(),
            outcome.evictions,
            outcome.violations.len()
        );
        if !outcome.violations.is_empty() {
            failed_seeds.push(seed);
            // Keep the nodes' data and logs of a failed run for whoever looks into it.
            let kept = args.out.join(format!("seed-{seed}-nodes"));
            let _ = std::fs::remove_dir_all(&kept);
            // With its own copy of the history: a replay of the seed rewrites `seed-S.json`.
            let kept_history = std::fs::rename(root.path(), &kept)
                .and_then(|()| std::fs::copy(args.out.join(format!("seed-{seed}.json")), kept.join("history.json")));
            match kept_history {
                Ok(_) => eprintln!("seed {seed}: node logs and history kept in {}", kept.display()),
                Err(e) => eprintln!("seed {seed}: node logs not kept: {e}"),
            }
        }
        let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
        for v in &outcome.violations {
            *violations.entry(v.kind).or_default() += 1;
            let n = shown.entry(v.kind).or_default();
            *n += 1;
            if *n <= 3 {
                eprintln!("seed {seed}: {}", excerpt(v, &outcome.history, &outcome.final_reads));
            }
        }
    }
    let summary = serde_json::json!({
        "runs": args.runs,
        "first_seed": first,
        "seconds_per_run": args.seconds,
        "operations_checked": operations,
        "faults": faults,
        "evictions": evictions,
        "violations": violations,
        "failed_seeds": failed_seeds,
        "elapsed_s": started.elapsed().as_secs(),
    });
    println!("{summary}");
    if violations.is_empty() {
        Ok(())
    } else {
        std::process::exit(1)
    }
}
