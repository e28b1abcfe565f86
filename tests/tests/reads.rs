//! Reads stronger than KV's, chosen per call: a STRONG read skips every cache and sees
//! every write acknowledged before it, wherever it was made; a session read (a version a
//! write returned) sees that write or newer at any edge. Neither lets a later eventual read
//! at the same edge go back behind it, and a token no write reached holds up no one else.

use kv_client::api::{self, CacheStatus, Consistency, ServedBy};
use kv_client::Client;
use kv_tests::tiers::{put, seen, two_regions, until_value, Tiers, A_PUSH, B_TTL};
use std::time::Duration;

const LONG_TTL: i64 = 300;

/// Two regions without the per-key write limit.
async fn tiers() -> Tiers {
    let mut topology = two_regions(5);
    topology.central.config = "[limits]\nkey_write_interval_ms = 0\n".into();
    Tiers::start_topology(&topology).await.unwrap()
}

fn read(ns: &str, key: &str, consistency: Consistency, min_version: u64) -> api::GetRequest {
    api::GetRequest {
        namespace_id: ns.into(),
        key: key.into(),
        cache_ttl: Some(LONG_TTL),
        consistency: consistency as i32,
        min_version,
        ..Default::default()
    }
}

/// A ttl-mode edge of region b holding `key` = `value`, cached for LONG_TTL.
async fn held_at_b(b: &Client, ns: &str, key: &str, value: &str) {
    until_value(b, ns, key, LONG_TTL, Some(value), Duration::from_secs(20)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strong_read_sees_the_last_write_from_any_region_and_later_reads_keep_it() {
    let t = tiers().await;
    let ns = t.namespace().await.unwrap();
    let (a, b) = (t.edge(A_PUSH).await.unwrap(), t.edge(B_TTL).await.unwrap());
    a.put(put(&ns, "k", "v1")).await.unwrap();
    held_at_b(&b, &ns, "k", "v1").await;
    let v2 = a.put(put(&ns, "k", "v2")).await.unwrap().version;
    // KV's read at a ttl-mode edge keeps its copy for its cacheTtl...
    assert_eq!(seen(&b.read(read(&ns, "k", Consistency::Eventual, 0)).await.unwrap()).0.as_deref(), Some("v1"));
    // ...a STRONG one reads centrally, now.
    let strong = b.read(read(&ns, "k", Consistency::Strong, 0)).await.unwrap();
    assert_eq!((seen(&strong), strong.version), ((Some("v2".into()), CacheStatus::Miss), v2));
    assert_eq!(strong.served_by, ServedBy::Central as i32);
    // Monotonic reads at b: the eventual read after it does not go back to v1.
    let after = b.read(read(&ns, "k", Consistency::Eventual, 0)).await.unwrap();
    assert_eq!((seen(&after).0.as_deref(), after.version), (Some("v2"), v2));
    // A key never written reads absent, strongly too.
    assert!(!b.read(read(&ns, "none", Consistency::Strong, 0)).await.unwrap().found);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_read_at_another_edge_sees_the_sessions_write_or_newer() {
    let t = tiers().await;
    let ns = t.namespace().await.unwrap();
    let (a, b) = (t.edge(A_PUSH).await.unwrap(), t.edge(B_TTL).await.unwrap());
    a.put(put(&ns, "k", "old")).await.unwrap();
    held_at_b(&b, &ns, "k", "old").await;
    let token = a.put(put(&ns, "k", "mine")).await.unwrap().version;
    let got = b.read(read(&ns, "k", Consistency::Eventual, token)).await.unwrap();
    assert!(got.version >= token && seen(&got).0.as_deref() == Some("mine"), "{got:?}");
    // Another key under the same token: whatever it holds, as of the token at least.
    let other = b.read(read(&ns, "untouched", Consistency::Eventual, token)).await.unwrap();
    assert!(!other.found);
    // Later eventual reads at b keep what the session read brought.
    assert_eq!(seen(&b.read(read(&ns, "k", Consistency::Eventual, 0)).await.unwrap()).0.as_deref(), Some("mine"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_no_write_reached_fails_alone() {
    let t = tiers().await;
    let ns = t.namespace().await.unwrap();
    let b = t.edge(B_TTL).await.unwrap();
    b.put(put(&ns, "k", "v")).await.unwrap();
    let raw = b.raw();
    let mut bogus = tonic::Request::new(read(&ns, "k", Consistency::Eventual, 1 << 50));
    bogus.set_timeout(Duration::from_secs(2));
    let stuck = tokio::spawn({
        let mut raw = raw.clone();
        async move { raw.get(bogus).await }
    });
    // Meanwhile reads of the same key at the same edge are answered as usual.
    for _ in 0..5 {
        let mut r = tonic::Request::new(read(&ns, "k", Consistency::Eventual, 0));
        r.set_timeout(Duration::from_millis(1500));
        assert_eq!(seen(&raw.clone().get(r).await.unwrap().into_inner()).0.as_deref(), Some("v"));
    }
    let refused = stuck.await.unwrap().expect_err("no node reaches that version");
    // The edge answers by the deadline, or the client's own timer ends the call first.
    use tonic::Code::*;
    assert!(matches!(refused.code(), Unavailable | DeadlineExceeded | Cancelled), "{refused:?}");
    // And the edge did not adopt it: reads still work.
    assert!(b.read(read(&ns, "k", Consistency::Eventual, 0)).await.unwrap().found);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strong_read_at_a_push_edge_leaves_a_copy_that_pushes_keep_fresh() {
    let t = tiers().await;
    let ns = t.namespace().await.unwrap();
    let (a, b) = (t.edge(A_PUSH).await.unwrap(), t.edge(kv_tests::tiers::B_PUSH).await.unwrap());
    // Never read at b before: the STRONG read's (absent) answer is kept with a long cacheTtl...
    assert!(!b.read(read(&ns, "fresh", Consistency::Strong, 0)).await.unwrap().found);
    a.put(put(&ns, "fresh", "v")).await.unwrap();
    // ...and the write is pushed over it, not left unseen for the cacheTtl.
    let got = until_value(&b, &ns, "fresh", LONG_TTL, Some("v"), Duration::from_secs(10)).await.unwrap();
    assert_eq!(seen(&got).1, CacheStatus::Hit, "pushed, not fetched");
}
