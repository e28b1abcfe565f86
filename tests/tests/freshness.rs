//! Freshness is proved, not assumed: a central node cut off from its leader stops answering
//! as fresh and says so in its health; a regional tier following such a node does not serve
//! its cache as fresh and moves its feed elsewhere; stale answers carry their age and end at
//! the edge's bound; one deadline budget covers every tier and leaves room for failover.

use kv_client::api::CacheStatus;
use kv_proto::store::v1 as pb;
use kv_tests::tiers::{put, seen, two_regions, until_value, Tiers, A_PUSH, A_TTL, B_PUSH};
use kv_tests::*;
use std::time::{Duration, Instant};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};

const WAIT: Duration = Duration::from_secs(20);

/// A read of `key` at central node `i` that accepts answers at most `max_age_ms` old.
async fn fresh_read(
    c: &Cluster,
    i: usize,
    ns: &str,
    key: &str,
    max_age_ms: u32,
) -> Result<pb::GetResponse, tonic::Status> {
    let req = pb::GetRequest { namespace_id: ns.into(), key: key.into(), max_age_ms, ..Default::default() };
    c.store(i).get(req).await.map(tonic::Response::into_inner)
}

async fn grpc_health(c: &Cluster, i: usize) -> Option<i32> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes[i].grpc)).ok()?;
    let mut h = HealthClient::new(channel.connect().await.ok()?);
    let req = HealthCheckRequest { service: "kv.store.v1.CentralStore".into() };
    Some(h.check(req).await.ok()?.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_from_its_leader_stops_answering_as_fresh_and_says_so() {
    let c = Cluster::start(3, ClusterOptions::default()).await.unwrap();
    let ns = c.create_namespace(0, "fresh").await.unwrap();
    let leader = c.leader().await.unwrap();
    let f = (leader + 1) % 3;
    write_one(&c, leader, &ns, put_op("k", b"before")).await.unwrap();
    eventually(WAIT, "the follower to answer fresh reads", || async {
        fresh_read(&c, f, &ns, "k", 500).await.ok().filter(|r| r.entry.is_some())
    })
    .await
    .unwrap();

    c.isolate(f);
    // The majority goes on writing (once the key's rate limit allows).
    let written = eventually(WAIT, "a write at the majority", || async {
        write_one(&c, leader, &ns, put_op("k", b"after")).await.ok().filter(|r| r.error.is_none())
    })
    .await
    .unwrap();
    // The follower still holds "before", but can no longer prove it is current: it refuses.
    let refused = eventually(WAIT, "the cut-off follower to refuse fresh reads", || async {
        match fresh_read(&c, f, &ns, "k", 500).await {
            Err(s) if s.code() == tonic::Code::Unavailable => Some(s),
            Ok(r) => {
                let value = r.entry.map(|e| e.value.to_vec());
                assert_ne!(
                    value.as_deref(),
                    Some(&b"before"[..]),
                    "a stale answer was given as fresh, age {}",
                    r.age_ms
                );
                None
            }
            Err(_) => None,
        }
    })
    .await
    .unwrap();
    assert!(refused.message().contains("cannot prove"), "{}", refused.message());
    eventually(WAIT, "the cut-off follower's health to say so", || async {
        let (code, _) = kv_deploy::launch::http_get(c.nodes[f].http, "/health").await.ok()?;
        (code == 503 && grpc_health(&c, f).await == Some(ServingStatus::NotServing as i32)).then_some(())
    })
    .await
    .unwrap();
    assert!(fresh_read(&c, leader, &ns, "k", 500).await.unwrap().entry.is_some(), "the leader answers fresh");

    c.heal(f);
    eventually(WAIT, "the healed follower to answer fresh again, with the new value", || async {
        let r = fresh_read(&c, f, &ns, "k", 500).await.ok()?;
        (r.entry?.version == written.version).then_some(())
    })
    .await
    .unwrap();
    eventually(WAIT, "its health to recover", || async {
        (grpc_health(&c, f).await == Some(ServingStatus::Serving as i32)).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regional_tier_following_a_cut_off_follower_keeps_its_bound_and_moves_its_feed() {
    let t = Tiers::start(5).await.unwrap();
    // Both regional tiers follow central node 0 (their first endpoint): make it a follower,
    // then cut it off from the other voters.
    t.lead_elsewhere_than(0).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let (writer, reader, pushed) =
        (t.edge(B_PUSH).await.unwrap(), t.edge(A_TTL).await.unwrap(), t.edge(A_PUSH).await.unwrap());
    writer.put(put(&ns, "k", "before")).await.unwrap();
    until_value(&reader, &ns, "k", 1, Some("before"), WAIT).await.unwrap();
    until_value(&pushed, &ns, "k", 300, Some("before"), WAIT).await.unwrap();
    let reconnects = t.regional_metric(0, "kv_regional_feed_reconnects_total").await;

    t.cluster.isolate_central(0);
    writer.put(put(&ns, "k", "after")).await.unwrap();
    let acked = Instant::now();
    // Bounded staleness with cacheTtl 1 s: every read that starts more than 1 s after the
    // ack sees the write, although region a's feed comes from the cut-off node.
    let until = acked + Duration::from_secs(6);
    while Instant::now() < until {
        let started = Instant::now();
        let r = reader.get(&ns, "k", Some(1)).await.unwrap();
        if started >= acked + Duration::from_secs(1) {
            assert_eq!(seen(&r).0.as_deref(), Some("after"), "read {:?} after the ack", started - acked);
            assert_ne!(seen(&r).1, CacheStatus::Stale, "central was reachable");
        }
    }
    // The regional tier left the cut-off node's feed, so pushes flow again.
    let r = until_value(&pushed, &ns, "k", 300, Some("after"), WAIT).await.unwrap();
    assert_eq!(seen(&r).1, CacheStatus::Hit, "the new value came by push");
    assert!(t.regional_metric(0, "kv_regional_feed_reconnects_total").await > reconnects);
    t.cluster.heal_central(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_regional_read_after_an_entry_without_data_does_not_go_central() {
    let t = Tiers::start(5).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let (a, other) = (t.edge(A_PUSH).await.unwrap(), t.edge(A_TTL).await.unwrap());
    t.edge(B_PUSH).await.unwrap().put(put(&ns, "k", "v")).await.unwrap();
    // The regional tier of region a holds k (read through the other edge of the region).
    until_value(&other, &ns, "k", 300, Some("v"), WAIT).await.unwrap();
    let reads = "kv_central_reads_total{call=\"get\"}";
    let before = t.central_metric(reads).await;
    // A namespace create is a log entry without data changes; edge a has seen its version.
    a.create_namespace("another").await.unwrap();
    let r = a.get(&ns, "k", Some(300)).await.unwrap();
    assert_eq!(seen(&r), (Some("v".into()), CacheStatus::Miss));
    assert_eq!(t.central_metric(reads).await, before, "the regional tier answered from its cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_answers_carry_their_age_and_end_at_the_edges_bound() {
    let mut topology = two_regions(5);
    topology.edge_config = topology.edge_config.replace("max_stale_secs = 120", "max_stale_secs = 2");
    let t = Tiers::start_topology(&topology).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let b = t.edge(B_PUSH).await.unwrap();
    t.edge(A_PUSH).await.unwrap().put(put(&ns, "k", "v")).await.unwrap();
    until_value(&b, &ns, "k", 1, Some("v"), WAIT).await.unwrap();
    // Region b loses the central store: its regional tier can only answer from its cache.
    for l in &t.cluster.regions[1].central_links {
        l.cut();
    }
    let cut = Instant::now();
    let stale = std::cell::Cell::new(0);
    let (stale_count, b, ns) = (&stale, &b, &ns);
    let refused = eventually(WAIT, "the edge to stop answering once past cacheTtl + max_stale", || async move {
        match b.get(ns, "k", Some(1)).await {
            Ok(r) => {
                if seen(&r).1 == CacheStatus::Stale {
                    assert!(r.age_ms <= 3_000 + 200, "a STALE answer {} ms old, past 1 s + 2 s", r.age_ms);
                    stale_count.set(stale_count.get() + 1);
                } else {
                    assert!(r.age_ms < 1_000, "a fresh answer must be younger than its cacheTtl: {} ms", r.age_ms);
                }
                None
            }
            Err(s) => Some(s),
        }
    })
    .await
    .unwrap();
    assert!(stale.get() > 0, "answers turned STALE before they stopped");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(cut.elapsed() >= Duration::from_secs(2), "the copy was served stale for its allowed time");
    for l in &t.cluster.regions[1].central_links {
        l.restore();
    }
    until_value(b, ns, "k", 1, Some("v"), WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deadline_covers_every_tier_and_leaves_room_to_fail_over() {
    let t = Tiers::start(5).await.unwrap();
    t.lead_elsewhere_than(0).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let a = t.edge(A_PUSH).await.unwrap();
    a.put(put(&ns, "k", "v")).await.unwrap();
    // The first central endpoint of both regional tiers hangs (SIGSTOP).
    t.cluster.central[0].pause();
    let mut raw = t.edge(B_PUSH).await.unwrap().raw();
    let mut req = tonic::Request::new(kv_client::api::GetRequest {
        namespace_id: ns.clone(),
        key: "k".into(),
        cache_ttl: Some(300),
        with_metadata: false,
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(6));
    let started = Instant::now();
    let r = raw.get(req).await;
    t.cluster.central[0].resume();
    let r = r.expect("the regional tier failed over to the next central node within the caller's budget");
    assert_eq!(seen(&r.into_inner()).0.as_deref(), Some("v"));
    assert!(started.elapsed() < Duration::from_secs(6));
}
