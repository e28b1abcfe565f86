//! Writes as every tier sees them: the last item naming a key wins everywhere, a retried
//! write is applied once, the writing edge is pushed later changes of what it wrote, a read
//! right after a namespace create or a put at the same edge sees it, and an edge with two
//! regional endpoints keeps its pushes on the one its reads use.

use kv_client::api::{self, CacheStatus};
use kv_deploy::topology::Topology;
use kv_proto::store::v1 as pb;
use kv_tests::tiers::{put, seen, test_topology, until_value, Tiers, A_PUSH, B_PUSH};
use kv_tests::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
const LONG_TTL: i64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_item_naming_a_key_in_a_bulk_write_wins_at_every_tier() {
    let t = Tiers::start(5).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let (a, b) = (t.edge(A_PUSH).await.unwrap(), t.edge(B_PUSH).await.unwrap());
    // Edge b holds k (absent), so the bulk write's change is pushed to it.
    assert_eq!(seen(&b.get(&ns, "k", Some(LONG_TTL)).await.unwrap()).0, None);
    let items = ["first", "second"]
        .iter()
        .map(|v| api::BulkPutItem { key: "k".into(), value: v.to_string().into(), ..Default::default() })
        .collect();
    let r = a.put_bulk(api::PutBulkRequest { namespace_id: ns.clone(), items, ..Default::default() }).await.unwrap();
    assert_eq!((r.successful_key_count, r.unsuccessful_keys.len()), (2, 0));
    assert_eq!(seen(&a.get(&ns, "k", Some(LONG_TTL)).await.unwrap()).0.as_deref(), Some("second"));
    let pushed = until_value(&b, &ns, "k", LONG_TTL, Some("second"), WAIT).await.unwrap();
    assert_eq!(seen(&pushed).1, CacheStatus::Hit, "the push carried the last item");
    let req = pb::GetRequest { namespace_id: ns, key: "k".into(), ..Default::default() };
    let got = t.central_store(0).get(req).await.unwrap().into_inner();
    assert_eq!(&got.entry.unwrap().value[..], b"second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_is_applied_once_through_any_node() {
    let c = Cluster::start(3, ClusterOptions::default()).await.unwrap();
    let ns = c.create_namespace(0, "retries").await.unwrap();
    let req = pb::WriteRequest {
        namespace_id: ns.clone(),
        ops: vec![put_op("k", b"once")],
        request_id: "the-one-request".into(),
        track: None,
    };
    let first = store_call!(c, 0, write, req.clone()).unwrap();
    let log = c.metrics(0).await.unwrap().last_log_index;
    // The same request again, through every node (a client retrying after a lost answer):
    // the same outcome, no new entry, and no 429 although the key was just written.
    for i in 0..3 {
        let again = store_call!(c, i, write, req.clone()).unwrap();
        assert_eq!(again, first, "through node {i}");
    }
    assert_eq!(c.metrics(0).await.unwrap().last_log_index, log, "nothing was applied again");
    let scraped = c.scrape(c.leader().await.unwrap()).await.unwrap();
    assert!(metric_value(&scraped, "kv_central_duplicate_requests_total").unwrap_or(0.0) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writing_edge_is_pushed_later_changes_of_what_it_wrote() {
    let t = Tiers::start(20).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let (a, b) = (t.edge(A_PUSH).await.unwrap(), t.edge(B_PUSH).await.unwrap());
    b.put(put(&ns, "k", "from-b")).await.unwrap();
    assert_eq!(seen(&b.get(&ns, "k", Some(LONG_TTL)).await.unwrap()), (Some("from-b".into()), CacheStatus::Hit));
    a.put(put(&ns, "k", "from-a")).await.unwrap();
    let r = until_value(&b, &ns, "k", LONG_TTL, Some("from-a"), WAIT).await.unwrap();
    assert_eq!(seen(&r).1, CacheStatus::Hit, "the writer's own copy was replaced by a push");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_right_after_a_create_or_a_put_at_the_same_edge_see_them() {
    let t = Tiers::start(20).await.unwrap();
    let b = t.edge(B_PUSH).await.unwrap();
    for round in 0..10 {
        let ns = b.create_namespace(&format!("round-{round}")).await.unwrap().id;
        let r = b.get(&ns, "k", Some(LONG_TTL)).await.expect("the namespace exists right after its create");
        assert!(!r.found);
        b.put(put(&ns, &format!("key-{round}"), "v")).await.unwrap();
        let list = b.list(api::ListRequest { namespace_id: ns.clone(), ..Default::default() }).await.unwrap();
        let names: Vec<&str> = list.keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, vec![format!("key-{round}")], "a list right after a put at the same edge");
    }
}

/// Region a has a standby regional tier; edge 0 (a-push) may use either, edge 1 (b-push) writes.
fn with_standby() -> Topology {
    test_topology(
        r#"
[[regions]]
name = "a"
central_delay_ms = 5
standbys = 1
edges = [{ name = "a-push", delay_ms = 1 }]

[[regions]]
name = "b"
central_delay_ms = 5
edges = [{ name = "b-push", delay_ms = 1 }]
"#,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edges_pushes_follow_its_reads_to_another_regional_endpoint() {
    let t = Tiers::start_topology(&with_standby()).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let (a, writer) = (t.edge(0).await.unwrap(), t.edge(1).await.unwrap());
    // The primary regional tier hangs: a read fails over to the standby within its budget.
    t.cluster.regions[0].regional.pause();
    let mut req = tonic::Request::new(api::GetRequest {
        namespace_id: ns.clone(),
        key: "k".into(),
        cache_ttl: Some(LONG_TTL),
        with_metadata: false,
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(4));
    let r = a.raw().get(req).await.expect("answered by the standby").into_inner();
    assert!(!r.found);
    t.cluster.regions[0].regional.resume();
    // The read registered the edge's interest at the standby; the push stream must be there too.
    let standby = t.cluster.regions[0].standbys[0].node.http;
    eventually(WAIT, "the edge to subscribe to the standby", || async {
        let text = http_get(standby, "/metrics").await.ok()?;
        (metric_value(&text, "kv_regional_subscribers")? >= 1.0).then_some(())
    })
    .await
    .unwrap();
    // A new subscription revalidates what was held before it: read k once more.
    eventually(WAIT, "k to be held again", || async {
        let r = a.get(&ns, "k", Some(LONG_TTL)).await.ok()?;
        (seen(&r).1 == CacheStatus::Hit).then_some(())
    })
    .await
    .unwrap();
    writer.put(put(&ns, "k", "new")).await.unwrap();
    let r = until_value(&a, &ns, "k", LONG_TTL, Some("new"), WAIT).await.unwrap();
    assert_eq!(seen(&r).1, CacheStatus::Hit, "pushed through the endpoint the reads use");
}
