//! Encryption at rest (SPEC.md section 8), as an attacker with the disks would check it: known
//! values and metadata are written through an edge, every central node takes a snapshot and
//! stops, and no file under any central data directory holds them in the clear.

use kv_client::api;
use kv_proto::admin::v1::SnapshotRequest;
use kv_tests::tiers::{test_topology, Tiers};
use std::path::Path;

/// Every file under `dir`, read whole.
fn files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).expect("a readable directory").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
}

fn holds(bytes: &[u8], needle: &str) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_value_or_metadata_can_be_read_from_the_central_stores_files() {
    let mut t = Tiers::start_topology(&test_topology(
        "[[regions]]\nname = \"a\"\ncentral_delay_ms = 2\nedges = [{ name = \"a-1\", delay_ms = 1 }]\n",
    ))
    .await
    .unwrap();
    let edge = t.edge(0).await.unwrap();
    let ns = edge.create_namespace("at rest").await.unwrap().id;
    let marker = |what: &str| format!("{what}-{:032x}", rand::random::<u128>());
    let (key, value, metadata) = (marker("key"), marker("value"), marker("metadata"));
    // A small value (it also travels in the change feed) and a large one (RocksDB keeps it in
    // a blob file), each with metadata.
    let large = format!("{value}{}", "x".repeat(200_000));
    for (k, v) in [(format!("{key}-small"), value.clone()), (format!("{key}-large"), large)] {
        let req = api::PutRequest {
            namespace_id: ns.clone(),
            key: k,
            value: v.into_bytes().into(),
            metadata_json: Some(format!("{{\"m\":\"{metadata}\"}}")),
            ..Default::default()
        };
        edge.put(req).await.unwrap();
    }
    let got = edge.get(&ns, &format!("{key}-small"), None).await.unwrap();
    assert_eq!(got.value, value.as_bytes(), "what is sealed on disk reads back as written");
    for i in 0..t.cluster.central.len() {
        t.central_admin(i).snapshot(SnapshotRequest { purge: false }).await.unwrap();
    }
    t.cluster.stop();

    let mut all = Vec::new();
    for node in &t.cluster.central {
        files(&node.dir.join("data"), &mut all);
    }
    assert!(all.iter().any(|(_, bytes)| holds(bytes, &key)), "key names stay readable: the search sees the data");
    let readable: Vec<&str> = all
        .iter()
        .filter(|(_, bytes)| holds(bytes, &value) || holds(bytes, &metadata))
        .map(|(path, _)| path.as_str())
        .collect();
    assert!(readable.is_empty(), "values or metadata readable in {readable:?}");
}

/// The key file's text for `keys` (id, 32 key bytes as hex).
fn key_text(keys: &[(u8, &str)]) -> String {
    keys.iter().map(|(id, hex)| format!("{id}:{hex}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_reseals_every_record_so_the_old_key_can_leave() {
    use kv_proto::admin::v1::{MetricsRequest, RotateKeyRequest};
    use kv_proto::store::v1::GetRequest;
    let mut t = Tiers::start_topology(&test_topology(
        "[[regions]]\nname = \"a\"\ncentral_delay_ms = 2\nedges = [{ name = \"a-1\", delay_ms = 1 }]\n",
    ))
    .await
    .unwrap();
    let edge = t.edge(0).await.unwrap();
    let ns = edge.create_namespace("rotated").await.unwrap().id;
    let put = |k: String, v: String| api::PutRequest {
        namespace_id: ns.clone(),
        key: k,
        value: v.into_bytes().into(),
        metadata_json: Some("{\"m\":1}".into()),
        ..Default::default()
    };
    for i in 0..40 {
        edge.put(put(format!("k{i}"), format!("v{i}"))).await.unwrap();
    }
    let key_file = kv_deploy::launch::key_file(t.root());
    let old = std::fs::read_to_string(&key_file).unwrap();
    let old = old.trim().strip_prefix("1:").expect("the launcher's key has id 1").to_owned();
    let new = hex::encode(rand::random::<[u8; 32]>());

    // A key file without the key that seals the records is refused, and changes nothing.
    std::fs::write(&key_file, key_text(&[(2, &new)])).unwrap();
    let refused = t.central_admin(0).rotate_key(RotateKeyRequest {}).await.expect_err("key 1 still seals records");
    assert!(refused.message().contains("key 1 may still seal"), "{refused:?}");
    let m = t.central_admin(0).metrics(MetricsRequest {}).await.unwrap().into_inner();
    assert_eq!(m.sealing_key, 1);

    // The new key added last: `kv admin rotate-key` waits until every node has re-sealed.
    std::fs::write(&key_file, key_text(&[(1, &old), (2, &new)])).unwrap();
    let kv = kv_deploy::launch::bin_dir().unwrap().join("kv");
    let out = std::process::Command::new(kv)
        .args(["--output", "json", "admin", "--central", &t.cluster.central[0].grpc.to_string(), "rotate-key"])
        .env("KV_TOKEN", &t.cluster.admin_token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((said["sealing_key"].as_u64(), said["nodes"].as_array().map(Vec::len)), (Some(2), Some(3)), "{said}");
    for i in 0..t.cluster.central.len() {
        let m = t.central_admin(i).metrics(MetricsRequest {}).await.unwrap().into_inner();
        assert!(!m.resealing && m.sealed.iter().all(|s| s.key_id == 2), "node {}: {:?}", m.node_id, m.sealed);
    }
    edge.put(put("after".into(), "written with key 2".into())).await.unwrap();

    // The old key leaves the file and every node restarts: each replica reads every record.
    std::fs::write(&key_file, key_text(&[(2, &new)])).unwrap();
    for i in 0..t.cluster.central.len() {
        t.cluster.central[i].stop(std::time::Duration::from_secs(30));
        t.cluster.central[i].start().unwrap();
    }
    t.cluster.wait_for_leader().await.unwrap();
    for i in 0..t.cluster.central.len() {
        for (k, v) in
            (0..40).map(|i| (format!("k{i}"), format!("v{i}"))).chain([("after".into(), "written with key 2".into())])
        {
            let req = GetRequest { namespace_id: ns.clone(), key: k.clone(), ..Default::default() };
            let got = kv_tests::retry_unavailable(|| {
                let mut store = t.central_store(i);
                let req = req.clone();
                async move { store.get(req).await }
            })
            .await
            .unwrap();
            assert_eq!(got.entry.map(|e| e.value), Some(v.into_bytes().into()), "node {i}, {k}");
        }
    }
}
