//! `kv-bench` as a user runs it: the binary, pointed at a running two-region cluster's
//! edges, loading its key space and running YCSB workloads; what it prints is what is
//! checked.

use kv_tests::tiers::{Tiers, A_PUSH, A_TTL, B_PUSH, B_TTL};
use serde_json::Value;
use std::process::Output;

/// Runs `kv-bench` with `args` against edges `edges` of `tiers`.
async fn kv_bench(tiers: &Tiers, edges: &[usize], args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kv-bench"));
    cmd.args(args).env("KV_TOKEN", &tiers.cluster.admin_token).kill_on_drop(true);
    for &i in edges {
        let e = tiers.cluster.edges().nth(i).expect("edge index");
        cmd.arg("--endpoint").arg(format!("{}={}", e.node.name, e.node.grpc));
    }
    cmd.output().await.expect("kv-bench runs")
}

/// The JSON lines a run wrote to standard output (the table follows them).
fn records(out: &Output) -> Vec<Value> {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "kv-bench failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    text.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

fn of_type<'a>(records: &'a [Value], t: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == t).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_run_after_loading_reads_every_key_it_asks_for() {
    let tiers = Tiers::start(2).await.unwrap();
    let args =
        ["run", "--load", "--keys", "500", "--workload", "c", "--clients", "4", "--seconds", "2", "--warmup", "1"];
    let plots = tempfile::tempdir().unwrap();
    let dir = plots.path().to_str().unwrap();
    let out = kv_bench(&tiers, &[A_PUSH, B_PUSH], &[&args[..], &["--json", "-", "--plots", dir]].concat()).await;
    let records = records(&out);
    let groups = of_type(&records, "group");
    // Every read found its key, at both endpoints; none failed.
    for g in &groups {
        assert_eq!(g["op"], "read", "{g}");
        assert!(["hit", "miss:regional", "miss:central"].contains(&g["outcome"].as_str().unwrap()), "{g}");
    }
    for edge in ["a-push", "b-push"] {
        assert!(groups.iter().any(|g| g["endpoint"] == edge && g["count"].as_u64() > Some(0)), "{edge}: {groups:?}");
    }
    let summary = of_type(&records, "summary");
    assert_eq!(summary.len(), 1);
    assert!(summary[0]["errors"].as_object().unwrap().is_empty(), "{}", summary[0]);
    // After the warm-up most reads are hits of the edges' caches.
    assert!(summary[0]["read_hit_ratio"].as_f64().unwrap() > 0.5, "{}", summary[0]);
    // The timelines account for every operation measured.
    let timelines = of_type(&records, "timeline");
    assert_eq!(timelines.len(), 2);
    let timed: u64 =
        timelines.iter().flat_map(|t| t["ops_per_second"].as_array().unwrap()).filter_map(Value::as_u64).sum();
    assert_eq!(timed, summary[0]["ops"].as_u64().unwrap());
    // The table for people follows, and the plots: one line per endpoint and outcome.
    assert!(String::from_utf8_lossy(&out.stdout).contains("| endpoint"));
    let svg = std::fs::read_to_string(plots.path().join("latency-read.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("a-push hit") && svg.contains("b-push hit"), "{svg}");
    let svg = std::fs::read_to_string(plots.path().join("throughput.svg")).unwrap();
    assert!(svg.contains("a-push") && svg.contains("b-push"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_runs_the_operations_its_schedule_makes_due() {
    let tiers = Tiers::start(2).await.unwrap();
    // Workload A on a zipfian key space: hot keys are written more than once a second,
    // which the cluster refuses (KV's per-key write limit); they are reported by code.
    let args = [
        "run",
        "--load",
        "--keys",
        "50",
        "--workload",
        "a",
        "--clients",
        "2",
        "--rate",
        "100",
        "--seconds",
        "3",
        "--warmup",
        "1",
        "--json",
        "-",
    ];
    let records = records(&kv_bench(&tiers, &[A_PUSH], &args).await);
    let summary = of_type(&records, "summary")[0];
    // 100 operations a second for 3 seconds, whatever the latency: the schedule decides.
    let ops = summary["ops"].as_u64().unwrap();
    assert!((295..=305).contains(&ops), "{summary}");
    // The rate is what was achieved: over at least the 3 s the schedule spans.
    assert!(summary["ops_per_sec"].as_f64().unwrap() <= 102.0, "{summary}");
    assert_eq!(summary["settings"]["loop"], "open");
    let groups = of_type(&records, "group");
    let count = |op: &str, outcome: &str| -> u64 {
        groups.iter().filter(|g| g["op"] == op && g["outcome"] == outcome).map(|g| g["count"].as_u64().unwrap()).sum()
    };
    assert!(count("update", "ok") > 0, "{groups:?}");
    assert!(count("update", "error:resource_exhausted") > 0, "50 hot keys, 50 updates/s: {groups:?}");
    assert_eq!(summary["errors"]["resource_exhausted"].as_u64(), Some(count("update", "error:resource_exhausted")));
}

#[tokio::test]
async fn bad_settings_are_refused_before_anything_runs() {
    for (args, says) in [
        (&["run", "--endpoint", "127.0.0.1:1", "--value-size", "26MiB"][..], "at most 25 MiB"),
        (&["run", "--endpoint", "127.0.0.1:1", "--workload", "z"][..], "invalid value 'z'"),
        (&["run", "--endpoint", "127.0.0.1:1", "--rate", "NaN"][..], "the rate must be"),
        (&["run", "--endpoint", "127.0.0.1:1", "--rate=-5"][..], "the rate must be"),
        (&["run"][..], "at least one --endpoint"),
        (&["visibility", "--endpoint", "127.0.0.1:1", "--writer", "a,a"][..], "each writer may be named once"),
        (&["visibility", "--endpoint", "127.0.0.1:1", "--keys-per-writer", "0"][..], "at least one key"),
        (&["visibility", "--endpoint", "127.0.0.1:1", "--reads-per-sec", "0"][..], "a positive number"),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kv-bench"))
            .args(args)
            .env_remove("KV_BENCH_ENDPOINTS")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visibility_shows_pushes_within_the_second_and_ttl_edges_within_their_cache_ttl() {
    let tiers = Tiers::start(20).await.unwrap();
    let args = [
        "visibility",
        "--ttl-edges",
        "a-ttl,b-ttl",
        "--writer",
        "a-push",
        "--keys-per-writer",
        "2",
        "--write-interval-ms",
        "300",
        "--reads-per-sec",
        "100",
        "--seconds",
        "6",
        "--cache-ttl",
        "2",
        "--json",
        "-",
    ];
    let plots = tempfile::tempdir().unwrap();
    let dir = plots.path().to_str().unwrap();
    let out = kv_bench(&tiers, &[A_PUSH, A_TTL, B_PUSH, B_TTL], &[&args[..], &["--plots", dir]].concat()).await;
    let records = records(&out);
    let summary = of_type(&records, "summary");
    // Writes went on all along (one per key per 300 ms), and no read broke a guarantee.
    assert!(summary[0]["writes_acked"].as_u64().unwrap() >= 30, "{}", summary[0]);
    assert_eq!(summary[0]["read_your_writes_violations"], 0, "{}", summary[0]);
    assert_eq!(summary[0]["monotonic_read_violations"], 0, "{}", summary[0]);
    assert_eq!(summary[0]["bounded_staleness_violations"], 0, "{}", summary[0]);
    for g in of_type(&records, "guarantees") {
        assert!(g["reads"].as_u64().unwrap() > 300, "{g}");
        assert!(g["read_errors"].as_object().unwrap().is_empty(), "{g}");
    }
    let pairs = of_type(&records, "visibility");
    assert_eq!(pairs.len(), 4, "{pairs:?}");
    for p in &pairs {
        assert_eq!(p["writer"], "a-push");
        // SPEC 4.3, in every mode: a read that begins more than cacheTtl (2 s) after a write
        // was acknowledged sees it.
        assert!(p["invisible_until_ms"].as_u64().unwrap_or(0) <= 2_000, "{p}");
        let mode = if p["reader"].as_str().unwrap().ends_with("ttl") { "ttl" } else { "push" };
        assert_eq!(p["reader_mode"], mode);
        if mode == "push" {
            // Pushes arrive in a few link round trips (20 ms one way), not in seconds.
            assert!(p["visible_99_after_ms"].as_u64().unwrap() <= 1_000, "{p}");
        } else {
            // A ttl edge keeps its copy for its cacheTtl: written every 300 ms, it lags.
            assert!(p["invisible_until_ms"].as_u64().unwrap() >= 1_000, "{p}");
            assert!(p["most_versions_behind"].as_u64().unwrap() >= 2, "{p}");
        }
    }
    let svg = std::fs::read_to_string(plots.path().join("visibility.svg")).unwrap();
    assert!(svg.contains("a-push -&gt; b-ttl (ttl)") || svg.contains("a-push -> b-ttl (ttl)"), "{svg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_run_starts_the_default_topology_and_drives_every_edge_of_it() {
    let args = ["run", "--local", "--load", "--keys", "200", "--workload", "c", "--clients", "1", "--seconds", "2"];
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kv-bench"))
        .args(args)
        .args(["--warmup", "1", "--json", "-"])
        .env_remove("KV_TOKEN")
        .env_remove("KV_CA")
        .env_remove("KV_BENCH_ENDPOINTS")
        .kill_on_drop(true)
        .output()
        .await
        .expect("kv-bench runs");
    let records = records(&out);
    let groups = of_type(&records, "group");
    for edge in ["us-east-1", "us-east-2", "eu-west-1", "eu-west-2", "ap-south-1", "ap-south-2"] {
        assert!(groups.iter().any(|g| g["endpoint"] == edge && g["count"].as_u64() > Some(0)), "{edge}: {groups:?}");
    }
    let summary = of_type(&records, "summary");
    assert!(summary[0]["errors"].as_object().unwrap().is_empty(), "{}", summary[0]);
}
