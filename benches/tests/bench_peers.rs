//! `bench-peers` as a user runs it (briefly): every system answers every call, and the
//! ratios come out with their targets.

use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_peer_answers_and_the_ratios_are_reported() {
    let plots = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_bench-peers"))
        .args(["--seconds", "1", "--warmup", "1", "--readers", "4", "--writers", "4", "--keys", "50", "--json", "-"])
        .arg("--plots")
        .arg(plots.path())
        .kill_on_drop(true)
        .output()
        .await
        .expect("bench-peers runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench-peers failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    let records: Vec<Value> =
        text.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let measured: Vec<&Value> = records.iter().filter(|r| r["type"] == "measurement").collect();
    // Reads at 4 connections and at 1, and writes at 4, for each system; no call failed.
    for system in ["echo", "cluster", "etcd", "redis"] {
        for (op, clients) in [("read", 4), ("read", 1), ("put", 4)] {
            if (system, op) == ("echo", "put") {
                continue;
            }
            let m = measured
                .iter()
                .find(|m| m["system"] == system && m["op"] == op && m["clients"] == clients)
                .unwrap_or_else(|| panic!("no {system} {op} x{clients}: {measured:?}"));
            assert!(m["count"].as_u64().unwrap() > 0 && m["errors"] == 0, "{m}");
        }
    }
    let ratios: Vec<&Value> = records.iter().filter(|r| r["type"] == "ratio").collect();
    assert_eq!(ratios.len(), 7, "{ratios:?}");
    assert_eq!(ratios.iter().filter(|r| r["met"].is_boolean()).count(), 4, "{ratios:?}");
    assert!(text.contains("| ratio"), "the table for people: {text}");
    let svg = std::fs::read_to_string(plots.path().join("peers-read-4.svg")).unwrap();
    assert!(["echo", "cluster", "etcd", "redis"].iter().all(|s| svg.contains(s)), "{svg}");
}
