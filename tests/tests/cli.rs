//! The `kv` command line against a real cluster, as a script would use it: wrangler's bulk
//! file formats (a 25,000-item file, split into requests the contract allows), JSON output,
//! exit codes a script can test, compare-and-set and watch, over gRPC and over the REST API.

use kv_tests::tiers::{test_topology, Tiers};
use serde_json::{json, Value};
use std::process::Output;

/// Runs `kv` with `args` against `endpoint`, sending `token` (from `KV_TOKEN`, as a script would).
fn kv_as(endpoint: &str, token: &str, args: &[&str]) -> Output {
    let bin = kv_deploy::launch::bin_dir().expect("the binaries' directory").join("kv");
    std::process::Command::new(bin)
        .args(["--endpoint", endpoint, "--output", "json"])
        .args(args)
        .env_remove("KV_NAMESPACE_ID")
        .env("KV_TOKEN", token)
        .output()
        .expect("kv runs")
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "kv failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("kv prints JSON")
}

/// A cluster of one region with one edge: what a script talks to.
async fn one_edge() -> Tiers {
    let topology = "[[regions]]\nname = \"a\"\ncentral_delay_ms = 2\nedges = [{ name = \"a-1\", delay_ms = 1 }]\n";
    Tiers::start_topology(&test_topology(topology)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_25000_item_bulk_file_round_trips_and_exit_codes_tell_what_happened() {
    let t = one_edge().await;
    let kv = |endpoint: &str, args: &[&str]| kv_as(endpoint, &t.cluster.admin_token, args);
    let endpoint = t.cluster.edges().next().unwrap().node.grpc.to_string();
    let e = endpoint.as_str();
    let dir = tempfile::tempdir().unwrap();
    let ns = json_of(&kv(e, &["namespace", "create", "cli"]))["id"].as_str().unwrap().to_owned();
    assert_eq!(json_of(&kv(e, &["namespace", "get", &ns]))["title"], "cli");

    // wrangler's put file: plain, base64 and metadata items; 25,000 of them.
    let items: Vec<Value> = (0..25_000)
        .map(|i| match i % 3 {
            0 => json!({ "key": format!("k{i:05}"), "value": format!("v{i}") }),
            1 => json!({ "key": format!("k{i:05}"), "value": "AAEC/w==", "base64": true }),
            _ => json!({ "key": format!("k{i:05}"), "value": "m", "metadata": { "i": i }, "expiration_ttl": 3600 }),
        })
        .collect();
    let put_file = dir.path().join("put.json");
    std::fs::write(&put_file, serde_json::to_vec(&items).unwrap()).unwrap();
    let put = json_of(&kv(e, &["bulk", "put", put_file.to_str().unwrap(), "-n", &ns]));
    assert_eq!(put, json!({ "successful_key_count": 25_000, "unsuccessful_keys": [] }));
    let listed = json_of(&kv(e, &["key", "list", "-n", &ns]));
    assert_eq!(listed.as_array().unwrap().len(), 25_000);

    // Reads in runs of 100 keys; keys given as strings or as objects.
    let mut keys: Vec<Value> = (0..150).map(|i| json!(format!("k{i:05}"))).collect();
    keys.push(json!({ "name": "k00002" }));
    keys.push(json!("missing"));
    let keys_file = dir.path().join("keys.json");
    std::fs::write(&keys_file, serde_json::to_vec(&keys).unwrap()).unwrap();
    let got = json_of(&kv(e, &["bulk", "get", keys_file.to_str().unwrap(), "-n", &ns, "--with-metadata"]));
    assert_eq!(got.as_object().unwrap().len(), 151);
    assert_eq!(got["k00000"]["value"], "v0");
    assert_eq!(got["k00002"]["metadata"], json!({ "i": 2 }));
    assert_eq!(got["missing"], Value::Null);
    let got = json_of(&kv(e, &["key", "get", "k00001", "-n", &ns]));
    assert_eq!(got["value"], String::from_utf8_lossy(&[0, 1, 2, 255]).as_ref(), "base64 decoded");

    // Deletes, in runs of 10,000, with wrangler's --force accepted.
    let all: Vec<String> = (0..25_000).map(|i| format!("k{i:05}")).collect();
    let del_file = dir.path().join("del.json");
    std::fs::write(&del_file, serde_json::to_vec(&all).unwrap()).unwrap();
    // Within the per-key write interval of the puts, some deletes may be refused: retry
    // until every key has been deleted once.
    let deleted = kv_tests::eventually(std::time::Duration::from_secs(10), "every delete", || async {
        let out = kv(e, &["bulk", "delete", del_file.to_str().unwrap(), "-n", &ns, "--force"]);
        out.status.success().then_some(())
    });
    deleted.await.unwrap();
    assert_eq!(json_of(&kv(e, &["key", "list", "-n", &ns])), json!([]));

    // Exit codes: 1 refused (the contract's message on stderr), 2 bad input, 3 no answer,
    // 4 some bulk items failed.
    let missing = kv(e, &["key", "get", "nope", "-n", &ns]);
    assert_eq!(missing.status.code(), Some(1));
    let long = "k".repeat(513);
    let refused = kv(e, &["key", "put", &long, "v", "-n", &ns]);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr).trim(),
        "error: UTF-8 encoded length of 513 exceeds key length limit of 512."
    );
    let bad_file = dir.path().join("bad.json");
    std::fs::write(&bad_file, b"{\"not\": \"a list\"}").unwrap();
    assert_eq!(kv(e, &["bulk", "put", bad_file.to_str().unwrap(), "-n", &ns]).status.code(), Some(2));
    let port = kv_deploy::launch::free_port().unwrap();
    assert_eq!(kv(&format!("127.0.0.1:{port}"), &["namespace", "list"]).status.code(), Some(3));
    let partial_file = dir.path().join("partial.json");
    let partial = json!([{ "key": "fine", "value": "v" }, { "key": "", "value": "v" }, { "key": "b", "value": "!!", "base64": true }]);
    std::fs::write(&partial_file, serde_json::to_vec(&partial).unwrap()).unwrap();
    let out = kv(e, &["bulk", "put", partial_file.to_str().unwrap(), "-n", &ns]);
    assert_eq!(out.status.code(), Some(4));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report, json!({ "successful_key_count": 1, "unsuccessful_keys": ["b", ""] }));

    // The same commands over the REST API, given its base URL.
    let base = format!("http://{}/client/v4", t.cluster.edges().next().unwrap().node.http);
    let r = base.as_str();
    let ns = json_of(&kv(r, &["namespace", "create", "cli-rest"]))["id"].as_str().unwrap().to_owned();
    let listed = json_of(&kv(r, &["namespace", "list"]));
    assert!(listed.as_array().unwrap().iter().any(|n| n["id"] == ns.as_str()));
    let few: Vec<Value> = (0..250)
        .map(|i| json!({ "key": format!("r{i:03}"), "value": format!("v{i}"), "metadata": { "i": i } }))
        .collect();
    let few_file = dir.path().join("few.json");
    std::fs::write(&few_file, serde_json::to_vec(&few).unwrap()).unwrap();
    let put = json_of(&kv(r, &["bulk", "put", few_file.to_str().unwrap(), "-n", &ns]));
    assert_eq!(put["successful_key_count"], 250);
    assert_eq!(json_of(&kv(r, &["key", "list", "-n", &ns, "--prefix", "r1"])).as_array().unwrap().len(), 100);
    let got = json_of(&kv(r, &["key", "get", "r007", "-n", &ns]));
    assert_eq!((&got["value"], &got["metadata"]), (&json!("v7"), &json!({ "i": 7 })));
    let put = json_of(&kv(r, &["key", "put", "bin", "--path", few_file.to_str().unwrap(), "-n", &ns]));
    assert!(put["version"].as_u64().unwrap() > 0);
    let got = json_of(&kv(r, &["bulk", "get", keys_file.to_str().unwrap(), "-n", &ns]));
    assert_eq!(got["missing"], Value::Null);
    assert_eq!(kv(r, &["key", "get", "nope", "-n", &ns]).status.code(), Some(1));
    let refused = kv(r, &["key", "put", &long, "v", "-n", &ns]);
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr).trim(),
        "error: UTF-8 encoded length of 513 exceeds key length limit of 512."
    );
    assert_eq!(kv(&format!("http://127.0.0.1:{port}/client/v4"), &["namespace", "list"]).status.code(), Some(3));

    // Compare-and-set over both APIs: a failed condition exits 1 naming the current version.
    // (A write within the per-key interval of the last is 429, also exit 1: sent again.)
    for (endpoint, key) in [(e, "cas-grpc"), (r, "cas-rest")] {
        let first = json_of(&kv(endpoint, &["key", "put", key, "v1", "--if-absent", "-n", &ns]));
        let v1 = first["version"].as_u64().unwrap().to_string();
        let said = kv_tests::eventually(std::time::Duration::from_secs(5), "a decided condition", || async {
            let out = kv(endpoint, &["key", "put", key, "v2", "--if-absent", "-n", &ns]);
            let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            (!said.contains("Too Many Requests")).then_some((out.status.code(), said))
        });
        let want = format!("error: Precondition failed: the key's current version is {v1}.");
        assert_eq!(said.await.unwrap(), (Some(1), want), "{endpoint}");
        let updated = kv_tests::eventually(std::time::Duration::from_secs(5), "the conditional update", || async {
            let out = kv(endpoint, &["key", "put", key, "v2", "--if-version", &v1, "-n", &ns]);
            out.status.success().then(|| json_of(&out))
        });
        let v2 = updated.await.unwrap()["version"].as_u64().unwrap().to_string();
        let deleted = kv_tests::eventually(std::time::Duration::from_secs(5), "the conditional delete", || async {
            let out = kv(endpoint, &["key", "delete", key, "--if-version", &v2, "-n", &ns]);
            out.status.success().then_some(())
        });
        deleted.await.unwrap();
    }

    // Tokens: a scoped one reads over both APIs but may not write; once revoked it is refused.
    let made = json_of(&kv(e, &["token", "create", "--ns", &ns, "--read", "--name", "reader"]));
    let (id, secret) = (made["id"].as_str().unwrap().to_owned(), made["secret"].as_str().unwrap().to_owned());
    assert_eq!(made["grants"], json!([{ "namespace_id": ns, "read": true, "write": false }]));
    let listed = json_of(&kv(e, &["token", "list"]));
    assert!(listed.as_array().unwrap().iter().any(|t| t["id"] == id.as_str() && t["name"] == "reader"));
    assert!(listed.to_string().find(&secret).is_none(), "a listing never shows a secret");
    for endpoint in [e, r] {
        let got = json_of(&kv_as(endpoint, &secret, &["key", "get", "r007", "-n", &ns]));
        assert_eq!(got["value"], "v7");
        let refused = kv_as(endpoint, &secret, &["key", "put", "r007", "w", "-n", &ns]);
        assert_eq!(refused.status.code(), Some(1), "{endpoint}: a reader may not write");
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(said.contains("may not write namespace"), "{endpoint}: {said}");
    }
    assert_eq!(json_of(&kv_as(e, &secret, &["token", "verify"]))["id"], id.as_str());
    assert_eq!(kv_as(e, &secret, &["token", "list"]).status.code(), Some(1), "listing tokens needs admin");
    assert_eq!(kv(e, &["token", "create", "--ns", &ns]).status.code(), Some(2), "a grant needs --read or --write");
    json_of(&kv(e, &["token", "revoke", &id]));
    let revoked = kv_as(e, &secret, &["key", "get", "r007", "-n", &ns]);
    assert_eq!(revoked.status.code(), Some(1), "revoked at the edge that revoked it at once");
    assert!(String::from_utf8_lossy(&revoked.stderr).contains("Authentication error"));
    assert_eq!(kv(e, &["token", "revoke", &id]).status.code(), Some(1), "revoking twice: no such token");
}

/// The next JSON line a running `kv` printed, within a bound a healthy cluster never nears.
async fn next_line(lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>) -> Value {
    let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line()).await;
    let line = line.expect("a line in time").expect("stdout readable").expect("the watch goes on");
    serde_json::from_str(&line).expect("a JSON line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_key_watch_prints_each_change_as_a_line_and_exits_1_when_told_to_resync() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let t = one_edge().await;
    let (e, token) = (t.cluster.edges().next().unwrap().node.grpc.to_string(), t.cluster.admin_token.clone());
    let kv = |args: &[&str]| kv_as(&e, &token, args);
    let ns = json_of(&kv(&["namespace", "create", "cli-watch"]))["id"].as_str().unwrap().to_owned();
    let bin = kv_deploy::launch::bin_dir().expect("the binaries' directory").join("kv");
    let mut watcher = tokio::process::Command::new(bin)
        .args(["--endpoint", &e, "--output", "json", "key", "watch", "--prefix", "w/", "-n", &ns])
        .env("KV_TOKEN", &token)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kv runs");
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    let start = next_line(&mut lines).await["progress"].as_u64().expect("a watch from now first says where it is");
    let put = json_of(&kv(&["key", "put", "w/a", "1", "-n", &ns]))["version"].as_u64().unwrap();
    json_of(&kv(&["key", "put", "other", "x", "-n", &ns]));
    let deleted = json_of(&kv(&["key", "delete", "w/a", "-n", &ns]))["version"].as_u64().unwrap();
    let (mut changes, mut progress) = (Vec::new(), vec![start]);
    while changes.len() < 2 {
        let line = next_line(&mut lines).await;
        match line["progress"].as_u64() {
            Some(p) => progress.push(p),
            None => changes.push((line["key"].clone(), line["kind"].clone(), line["version"].as_u64().unwrap())),
        }
    }
    assert_eq!(changes, vec![(json!("w/a"), json!("put"), put), (json!("w/a"), json!("delete"), deleted)]);
    assert!(progress.windows(2).all(|p| p[0] < p[1]), "a heartbeat at the same position is no news: {progress:?}");
    // Resuming from before the edge's feed began (it opened from now, after version 1):
    // exit 1, saying to re-read and watch again.
    let resync = kv(&["key", "watch", "-n", &ns, "--from-version", "1"]);
    assert_eq!(resync.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&resync.stderr).contains("resync"), "{resync:?}");
}
