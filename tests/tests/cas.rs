//! Compare-and-set through the edges: conditions decided at the central leader in commit
//! order, so of many writers racing on one key exactly one wins each round, whichever
//! edges and regions they write through; bulk writes decide each item's condition alone.

use kv_client::api;
use kv_client::Client;
use kv_common::error::current_version_of;
use kv_tests::tiers::{put, two_regions, Tiers};
use std::time::Duration;
use tonic::Code;

/// Two regions (edges in push and ttl mode in each) without the per-key write limit, so
/// writers can race on one key.
async fn racing_tiers() -> Tiers {
    let mut topology = two_regions(5);
    topology.central.config = "[limits]\nkey_write_interval_ms = 0\n".into();
    Tiers::start_topology(&topology).await.unwrap()
}

/// Every edge's client, in edge order.
async fn all_edges(t: &Tiers) -> Vec<Client> {
    let mut edges = Vec::new();
    for i in 0..t.cluster.edges().count() {
        edges.push(t.edge(i).await.unwrap());
    }
    edges
}

/// Each writer's put of `key` to its own value under `condition`: the versions of those
/// that succeeded, and the versions the failed ones were told were current.
async fn race(writers: &[Client], ns: &str, key: &str, condition: (Option<u64>, bool)) -> (Vec<u64>, Vec<u64>) {
    let calls = writers.iter().enumerate().map(|(i, c)| {
        let req =
            api::PutRequest { if_version: condition.0, if_absent: condition.1, ..put(ns, key, &format!("writer-{i}")) };
        async move { c.put(req).await }
    });
    let (mut won, mut told) = (Vec::new(), Vec::new());
    for r in futures::future::join_all(calls).await {
        match r {
            Ok(w) => won.push(w.version),
            Err(s) => {
                assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
                told.push(current_version_of(&s).expect("a failed condition names the current version"));
            }
        }
    }
    (won, told)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_writers_racing_on_one_key_exactly_one_wins_each_round() {
    let t = racing_tiers().await;
    let ns = t.namespace().await.unwrap();
    let edges = all_edges(&t).await;
    // Three writers per edge, so writers share edges and regions.
    let writers: Vec<Client> = edges.iter().cycle().take(3 * edges.len()).cloned().collect();
    let (won, told) = race(&writers, &ns, "lock", (None, true)).await;
    assert_eq!(won.len(), 1, "exactly one create wins: {won:?}, told {told:?}");
    // Decided in commit order: the first decided won, so every loser was decided after it
    // and was told the winner's version.
    let mut version = won[0];
    assert!(told.iter().all(|v| *v == version), "losers were told {told:?}, the winner wrote {version}");
    for round in 0..5 {
        let (won, told) = race(&writers, &ns, "lock", (Some(version), false)).await;
        assert_eq!(won.len(), 1, "round {round}: exactly one update at version {version} wins: {won:?}");
        assert!(won[0] > version && told.iter().all(|v| *v == won[0]), "round {round}: {won:?} {told:?}");
        version = won[0];
    }
    // The last winner's write reaches a push-mode edge of the other region.
    let b = &edges[kv_tests::tiers::B_PUSH];
    let seen = kv_tests::eventually(Duration::from_secs(10), "the last winner at region b", || async {
        b.get(&ns, "lock", Some(30)).await.ok().filter(|g| g.version == version)
    });
    seen.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_write_decides_each_items_condition_alone() {
    let t = racing_tiers().await;
    let ns = t.namespace().await.unwrap();
    let a = t.edge(0).await.unwrap();
    let item = |key: &str, value: &str, if_version: Option<u64>, if_absent: bool| api::BulkPutItem {
        key: key.into(),
        value: value.to_string().into(),
        if_version,
        if_absent,
        ..Default::default()
    };
    let seeded = a
        .put_bulk(api::PutBulkRequest {
            namespace_id: ns.clone(),
            items: vec![item("k1", "1", None, false), item("k2", "1", None, false)],
            ..Default::default()
        })
        .await
        .unwrap();
    let v = seeded.version;
    let items = vec![
        item("k1", "2", Some(v), false),
        item("k2", "2", Some(v + 100), false),
        item("k3", "2", None, true),
        item("k4", "2", None, false),
    ];
    let second =
        a.put_bulk(api::PutBulkRequest { namespace_id: ns.clone(), items, ..Default::default() }).await.unwrap();
    let r = &second;
    assert_eq!((r.successful_key_count, r.unsuccessful_keys.clone()), (3, vec!["k2".to_string()]), "{r:?}");
    assert_eq!((r.errors[0].http_status, r.errors[0].current_version), (412, v), "{r:?}");
    for (key, want) in [("k1", "2"), ("k2", "1"), ("k3", "2"), ("k4", "2")] {
        let got = a.get(&ns, key, None).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&got.value), want, "{key}");
    }
    // A conditional key named twice in one request: every item naming it fails, alone.
    let items =
        vec![item("k1", "3", Some(second.version), false), item("k1", "4", None, false), item("k5", "x", None, false)];
    let r = a.put_bulk(api::PutBulkRequest { namespace_id: ns.clone(), items, ..Default::default() }).await.unwrap();
    assert_eq!((r.successful_key_count, r.unsuccessful_keys.len()), (1, 2), "{r:?}");
    assert!(r.errors.iter().all(|e| e.http_status == 400 && e.message.contains("only once")), "{r:?}");
    // Conditional deletes in bulk: k1 at a version it never had, k3 at its own.
    let del = api::DeleteBulkRequest {
        namespace_id: ns.clone(),
        keys: vec!["k1".into(), "k3".into()],
        if_versions: [("k1".to_string(), 1), ("k3".to_string(), second.version)].into_iter().collect(),
        ..Default::default()
    };
    let d = a.delete_bulk(del).await.unwrap();
    assert_eq!((d.successful_key_count, d.unsuccessful_keys.clone()), (1, vec!["k1".to_string()]), "{d:?}");
    assert!(!a.get(&ns, "k3", None).await.unwrap().found, "k3 was deleted at its version");
    let stray = api::DeleteBulkRequest {
        namespace_id: ns.clone(),
        keys: vec!["k1".into()],
        if_versions: [("k9".to_string(), 1)].into_iter().collect(),
        ..Default::default()
    };
    let refused = a.delete_bulk(stray).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_conditional_write_is_answered_with_its_first_outcome_and_a_failure_refreshes_the_edge() {
    let t = racing_tiers().await;
    let ns = t.namespace().await.unwrap();
    let (a, b) = (t.edge(kv_tests::tiers::A_PUSH).await.unwrap(), t.edge(kv_tests::tiers::B_TTL).await.unwrap());
    // The same request (a client retrying after a lost answer), through two edges: one create.
    let create = api::PutRequest { if_absent: true, request_id: "create-once".into(), ..put(&ns, "k", "v1") };
    let first = a.raw().put(create.clone()).await.unwrap().into_inner();
    let again = b.raw().put(create).await.expect("a retry is answered as the first attempt was").into_inner();
    assert_eq!(again.version, first.version);
    // A request id longer than the contract's 64 bytes is refused.
    let long = api::PutRequest { request_id: "x".repeat(65), ..put(&ns, "other", "v") };
    assert_eq!(a.raw().put(long).await.unwrap_err().code(), Code::InvalidArgument);

    // b (mode ttl) holds v1; a writes v2; b's update at v1 fails naming v2, and b's next
    // read is at least v2 instead of its held copy.
    kv_tests::tiers::until_value(&b, &ns, "k", 300, Some("v1"), Duration::from_secs(20)).await.unwrap();
    let v2 = a.put(put(&ns, "k", "v2")).await.unwrap().version;
    let stale = b.put(api::PutRequest { if_version: Some(first.version), ..put(&ns, "k", "late") }).await;
    assert_eq!(current_version_of(&stale.unwrap_err()), Some(v2));
    let read = b.get(&ns, "k", Some(300)).await.unwrap();
    assert!(read.version >= v2, "b read {} after being told {v2}", read.version);
}
