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
