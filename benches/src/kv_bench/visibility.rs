//! `kv-bench visibility`: how soon a write at one edge is seen at every edge.

use crate::output::{bar, Output};
use crate::target::Target;
use anyhow::Context;
use clap::Args;
use kv_benches::plots::{self, Line};
use kv_benches::print_table;
use kv_benches::visibility::{analyze, bin_end, Edge, Observed, Pair, Probe, Report, BINS_MS};
use std::time::Duration;

#[derive(Args)]
pub struct Visibility {
    #[command(flatten)]
    target: Target,
    /// Edges that write, by name (repeat or separate with commas); the first endpoint when absent.
    #[arg(long = "writer", value_delimiter = ',')]
    writers: Vec<String>,
    /// Keys each writer writes, each a counter.
    #[arg(long, default_value_t = 4)]
    keys_per_writer: usize,
    /// Milliseconds between two writes of one key (the cluster allows one write per key per
    /// second by default, and refuses faster ones).
    #[arg(long, default_value_t = 1100)]
    write_interval_ms: u64,
    /// Reads per second at each edge, spread over every key.
    #[arg(long, default_value_t = 200.0)]
    reads_per_sec: f64,
    /// Connections per edge.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Seconds the probe runs.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// cacheTtl of reads (seconds); the cluster's default (60) when absent.
    #[arg(long)]
    cache_ttl: Option<i64>,
    #[command(flatten)]
    output: Output,
}

pub async fn visibility(args: Visibility) -> anyhow::Result<()> {
    kv_benches::visibility::check(&args.writers, args.keys_per_writer, args.reads_per_sec)?;
    let at = args.target.connect().await?;
    let names: Vec<&str> = at.endpoints.iter().map(|(n, _)| n.as_str()).collect();
    let writers: Vec<usize> = if args.writers.is_empty() {
        vec![0]
    } else {
        let index = |w: &String| names.iter().position(|n| n == w).with_context(|| format!("no endpoint named {w}"));
        args.writers.iter().map(index).collect::<anyhow::Result<_>>()?
    };
    let edges: Vec<Edge> = at
        .endpoints
        .iter()
        .zip(at.connections(args.clients).await?)
        .map(|((name, _), clients)| Edge { name: name.clone(), mode: at.mode_of(name).into(), clients })
        .collect();
    let probe = Probe {
        namespace: at.namespace.clone(),
        writers,
        keys_per_writer: args.keys_per_writer,
        write_interval: Duration::from_millis(args.write_interval_ms),
        reads_per_sec: args.reads_per_sec,
        duration: Duration::from_secs(args.seconds.max(1)),
        cache_ttl: args.cache_ttl,
        run_id: format!("{:016x}", rand::random::<u64>()),
    };
    let bar = bar(args.seconds.max(1), "{wide_bar} {pos}/{len} s");
    let observed = kv_benches::visibility::run(&probe, &edges, |s| bar.set_position(s)).await?;
    bar.finish_and_clear();
    let report = analyze(&observed);

    let settings = serde_json::json!({
        "writers": probe.writers.iter().map(|&w| &edges[w].name).collect::<Vec<_>>(),
        "keys_per_writer": probe.keys_per_writer,
        "write_interval_ms": args.write_interval_ms,
        "reads_per_sec_per_edge": probe.reads_per_sec,
        "clients_per_edge": args.clients.max(1),
        "seconds": probe.duration.as_secs(),
        "cache_ttl": probe.cache_ttl,
    });
    args.output.json_lines(&json_lines(&report, &observed, &edges, settings))?;
    table(&report, &observed, &edges);
    if let Some(dir) = &args.output.plots {
        let lines: Vec<Line> = report.pairs.iter().map(|p| (pair_name(p, &edges), curve(p))).collect();
        println!("wrote {}", plots::visibility(&lines, "kv-bench visibility", dir)?.display());
    }
    Ok(())
}

/// "writer -> reader (mode)".
fn pair_name(p: &Pair, edges: &[Edge]) -> String {
    format!("{} -> {} ({})", edges[p.writer].name, edges[p.reader].name, edges[p.reader].mode)
}

/// The share of visible samples per bin with samples, at the bin's geometric middle
/// (0.5 ms for the first bin, which starts at 0).
fn curve(p: &Pair) -> Vec<(f64, f64)> {
    (0..BINS_MS.len())
        .filter_map(|i| {
            let middle = if i == 0 { 0.5 } else { ((BINS_MS[i] * bin_end(i)) as f64).sqrt() };
            p.visible(i).map(|share| (middle, share))
        })
        .collect()
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

/// One `visibility` record per pair, one `guarantees` record per edge, and a `summary`.
fn json_lines(r: &Report, o: &Observed, edges: &[Edge], settings: serde_json::Value) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    for p in &r.pairs {
        let curve: Vec<serde_json::Value> = (0..BINS_MS.len())
            .filter(|&i| p.bins[i].0 > 0)
            .map(|i| {
                let (samples, visible) = p.bins[i];
                serde_json::json!({ "from_ms": BINS_MS[i], "to_ms": bin_end(i), "samples": samples, "visible": visible })
            })
            .collect();
        lines.push(serde_json::json!({
            "type": "visibility",
            "writer": edges[p.writer].name,
            "reader": edges[p.reader].name,
            "reader_mode": edges[p.reader].mode,
            "reads": p.reads,
            "stale_reads": p.stale_reads,
            "visible_999_after_ms": p.visible_after_ms(0.999),
            "visible_99_after_ms": p.visible_after_ms(0.99),
            "visible_50_after_ms": p.visible_after_ms(0.5),
            "invisible_until_ms": p.invisible_until_ms(),
            "most_versions_behind": p.most_versions_behind,
            "mean_versions_behind": (p.stale_reads > 0)
                .then(|| round(p.versions_behind_total as f64 / p.stale_reads as f64, 3)),
            "staleness": p.staleness.json(serde_json::json!({})),
            "curve": curve,
        }));
    }
    for (e, edge) in edges.iter().enumerate() {
        lines.push(serde_json::json!({
            "type": "guarantees",
            "edge": edge.name,
            "mode": edge.mode,
            "reads": o.reads.iter().filter(|r| r.edge == e).count(),
            "reads_skipped": o.skipped.get(e),
            "read_errors": r.read_errors[e],
            "read_your_writes_violations": r.read_your_writes_violations[e],
            "monotonic_read_violations": r.monotonic_violations[e],
            "bounded_staleness_violations": r.bounded_staleness_violations[e],
        }));
    }
    lines.push(serde_json::json!({
        "type": "summary",
        "settings": settings,
        "writes_acked": r.writes_acked,
        "writes_unknown": r.writes_unknown,
        "writes_refused": o.refused,
        "bounded_staleness_violations": r.bounded_staleness_violations.iter().sum::<u64>(),
        "read_your_writes_violations": r.read_your_writes_violations.iter().sum::<u64>(),
        "monotonic_read_violations": r.monotonic_violations.iter().sum::<u64>(),
    }));
    lines
}

/// Bins shown in the table, by lower edge.
const SHOWN_MS: [u64; 6] = [0, 10, 100, 1_000, 10_000, 60_000];

fn table(r: &Report, o: &Observed, edges: &[Edge]) {
    let percent = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.1}", 100.0 * v));
    let ms = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    let rows: Vec<Vec<String>> = r
        .pairs
        .iter()
        .map(|p| {
            let mut row = vec![pair_name(p, edges), p.reads.to_string(), p.stale_reads.to_string()];
            for t in SHOWN_MS {
                row.push(percent(BINS_MS.iter().position(|&b| b == t).and_then(|i| p.visible(i))));
            }
            row.push(ms(p.visible_after_ms(0.99)));
            row.push(ms(p.invisible_until_ms()));
            row.push(if p.staleness.count() > 0 { format!("{:.1}", p.staleness.ms(0.99)) } else { "-".into() });
            row.push(p.most_versions_behind.to_string());
            row
        })
        .collect();
    print_table(
        &[
            "writer -> reader (mode)",
            "reads",
            "stale",
            "% seen at 0 ms",
            "10 ms",
            "100 ms",
            "1 s",
            "10 s",
            "60 s",
            "99% seen after ms",
            "all seen after ms",
            "stale p99 ms",
            "most behind",
        ],
        &rows,
    );
    println!();
    for (e, edge) in edges.iter().enumerate() {
        println!(
            "{}: {} read-your-writes, {} monotonic-read and {} bounded-staleness violations; read errors {:?}",
            edge.name,
            r.read_your_writes_violations[e],
            r.monotonic_violations[e],
            r.bounded_staleness_violations[e],
            r.read_errors[e]
        );
    }
    println!(
        "writes acknowledged {}, of unknown outcome {}, refused by the write limit (and sent again) {}",
        r.writes_acked, r.writes_unknown, o.refused
    );
}
