//! Watch at the edge: every committed change of the keys watched, in version order, from
//! now or resumed from a version, served from one change feed per namespace at the edge
//! however many watch it; a version older than the edge's feed holds is answered Resync.

use kv_client::api::{self, watch_event::Event, WatchKind};
use kv_client::Client;
use kv_tests::eventually;
use kv_tests::tiers::{put, two_regions, Tiers, A_PUSH, B_PUSH};
use std::time::Duration;
use tonic::Streaming;

async fn tiers() -> Tiers {
    let mut topology = two_regions(5);
    // No per-key write limit, expirations of a second, and a sweep five times a second.
    topology.central.config =
        "sweep_interval_ms = 200\n[limits]\nkey_write_interval_ms = 0\nmin_expiration_ttl_secs = 1\n".into();
    Tiers::start_topology(&topology).await.unwrap()
}

fn watch(ns: &str, prefix: &str, from_version: Option<u64>) -> api::WatchRequest {
    api::WatchRequest { namespace_id: ns.into(), prefix: prefix.into(), from_version, ..Default::default() }
}

/// The next event, within a bound a healthy cluster never comes near.
async fn next(s: &mut Streaming<api::WatchEvent>) -> Event {
    let e = tokio::time::timeout(Duration::from_secs(20), s.message()).await.expect("an event in time");
    e.expect("the stream stays up").expect("the stream goes on").event.expect("an event")
}

/// The next `n` changes (skipping progress), as (key, put?, version).
async fn changes(s: &mut Streaming<api::WatchEvent>, n: usize) -> Vec<(String, bool, u64)> {
    let kinds = kinds(s, n).await;
    kinds.into_iter().map(|(k, kind, v)| (k, kind == WatchKind::Put, v)).collect()
}

/// The next `n` changes (skipping progress), as (key, kind, version).
async fn kinds(s: &mut Streaming<api::WatchEvent>, n: usize) -> Vec<(String, WatchKind, u64)> {
    let mut out = Vec::new();
    while out.len() < n {
        match next(s).await {
            Event::Change(c) => out.push((c.key.clone(), c.kind(), c.version)),
            Event::Progress(_) => {}
            Event::Resync(v) => panic!("resync at {v} after {out:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_in_another_region_sees_every_change_of_its_prefix_in_order() {
    let t = tiers().await;
    let ns = t.namespace().await.unwrap();
    let (a, b) = (t.edge(A_PUSH).await.unwrap(), t.edge(B_PUSH).await.unwrap());
    let mut w = b.watch(watch(&ns, "w/", None)).await.unwrap();
    let Event::Progress(now) = next(&mut w).await else { panic!("a watch from now starts with its position") };
    let v1 = a.put(put(&ns, "w/1", "a")).await.unwrap().version;
    let v2 = a.put(put(&ns, "w/2", "b")).await.unwrap().version;
    a.put(put(&ns, "other", "x")).await.unwrap();
    let v3 = a.delete(&ns, "w/1", None).await.unwrap().version;
    let v4 = a.put(put(&ns, "w/2", "c")).await.unwrap().version;
    assert!(now < v1);
    let want =
        vec![("w/1".into(), true, v1), ("w/2".into(), true, v2), ("w/1".into(), false, v3), ("w/2".into(), true, v4)];
    assert_eq!(changes(&mut w, 4).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_resume_from_a_version_and_share_one_feed_per_namespace() {
    let t = tiers().await;
    let ns = t.namespace().await.unwrap();
    let (a, b) = (t.edge(A_PUSH).await.unwrap(), t.edge(B_PUSH).await.unwrap());
    let v0 = a.put(put(&ns, "k0", "0")).await.unwrap().version;
    let v1 = a.put(put(&ns, "k1", "1")).await.unwrap().version;
    let v2 = a.put(put(&ns, "k2", "2")).await.unwrap().version;
    // Resumed after v0: the writes made before the watch began, then live ones.
    let mut resumed = b.watch(watch(&ns, "", Some(v0))).await.unwrap();
    assert_eq!(changes(&mut resumed, 2).await, vec![("k1".into(), true, v1), ("k2".into(), true, v2)]);
    // Many watchers of the namespace at this edge: one feed between them.
    let mut many = Vec::new();
    for i in 0..50 {
        let keys = vec![format!("k{}", i % 5)];
        many.push(b.watch(api::WatchRequest { keys, ..watch(&ns, "", Some(v2)) }).await.unwrap());
    }
    assert_eq!(t.edge_metric(B_PUSH, "kv_edge_watch_feeds").await, 1.0);
    let v3 = a.put(put(&ns, "k3", "3")).await.unwrap().version;
    assert_eq!(changes(&mut resumed, 1).await, vec![("k3".into(), true, v3)]);
    for w in many.iter_mut().skip(3).step_by(5) {
        assert_eq!(changes(w, 1).await, vec![("k3".into(), true, v3)], "a watcher of k3 only");
    }
    // Older than the edge's feed holds (it began after v0): Resync, naming where to restart.
    let mut old = b.watch(watch(&ns, "", Some(1))).await.unwrap();
    assert!(matches!(next(&mut old).await, Event::Resync(v) if v >= v0), "a version before the feed's window");
    // Once every watcher is gone, so is the feed.
    drop((many, resumed, old));
    eventually(Duration::from_secs(10), "the feed to close", || async {
        (t.edge_metric(B_PUSH, "kv_edge_watch_feeds").await == 0.0).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_before_a_feed_opened_from_now_is_told_to_resync() {
    let t = tiers().await;
    let ns = t.namespace().await.unwrap();
    let (a, b) = (t.edge(A_PUSH).await.unwrap(), t.edge(B_PUSH).await.unwrap());
    let v0 = a.put(put(&ns, "k0", "0")).await.unwrap().version;
    a.put(put(&ns, "k1", "1")).await.unwrap();
    // The edge's feed of the namespace opens "from now", after both writes.
    let mut live = b.watch(watch(&ns, "", None)).await.unwrap();
    let Event::Progress(now) = next(&mut live).await else { panic!("a watch from now starts with its position") };
    assert!(now > v0);
    // It holds nothing from before it opened, so the change after v0 is not something
    // it can replay: the resuming watcher must hear Resync, not silence.
    let mut resumed = b.watch(watch(&ns, "", Some(v0))).await.unwrap();
    assert!(matches!(next(&mut resumed).await, Event::Resync(v) if v >= now), "a version before the feed began");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiration_reaches_watchers_as_a_change_of_kind_expired() {
    let t = tiers().await;
    let ns = t.namespace().await.unwrap();
    let (a, b) = (t.edge(A_PUSH).await.unwrap(), t.edge(B_PUSH).await.unwrap());
    let mut w = b.watch(watch(&ns, "brief", None)).await.unwrap();
    let put = a.put(api::PutRequest { expiration_ttl: Some(1), ..put(&ns, "brief", "v") }).await.unwrap();
    let expires = put.expiration.expect("a put with expiration_ttl reports its expiration");
    let got = kinds(&mut w, 2).await;
    assert_eq!(got[0], ("brief".into(), WatchKind::Put, put.version));
    let (key, kind, version) = &got[1];
    assert_eq!((key.as_str(), *kind), ("brief", WatchKind::Expired));
    assert!(*version > put.version);
    assert!(kv_common::time::now_secs() >= expires, "reported only once the expiration has passed");
    // Every tier dropped its copy with the change: the key reads absent at that version.
    let r = b.get(&ns, "brief", Some(300)).await.unwrap();
    assert!(!r.found && r.version >= *version, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_of_an_unknown_namespace_or_a_bad_key_is_refused() {
    let t = tiers().await;
    let ns = t.namespace().await.unwrap();
    let a: Client = t.edge(A_PUSH).await.unwrap();
    let bad = api::WatchRequest { keys: vec![String::new()], ..watch(&ns, "", None) };
    assert_eq!(a.watch(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    let unknown = watch(&"0".repeat(32), "", None);
    assert_eq!(a.watch(unknown).await.unwrap_err().code(), tonic::Code::NotFound);
}
