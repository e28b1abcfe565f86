//! SPEC section 4, one guarantee per test, on real clusters: a central group, a regional
//! tier per region and push-mode and ttl-mode edges, all separate processes.

use kv_client::api::{self, CacheStatus};
use kv_tests::eventually;
use kv_tests::tiers::{put, seen, until_value, Tiers, A_PUSH, A_TTL, B_PUSH, B_TTL};
use std::time::{Duration, Instant};

const LONG_TTL: i64 = 300;

/// Asserts that a call failed with exactly this code, HTTP-equivalent status and message.
fn expect_error<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: tonic::Code, http: u16, msg: &str) {
    let s = r.expect_err(msg);
    assert_eq!((s.code(), s.message()), (code, msg));
    assert_eq!(kv_common::error::http_status_of(&s), Some(http), "{msg}");
}
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn read_your_writes_at_the_writing_edge() {
    let t = Tiers::start(5).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let a = t.edge(A_TTL).await.unwrap();
    // The edge cached the old value for a long cacheTtl; the write must still show at once.
    a.put(put(&ns, "k", "v1")).await.unwrap();
    assert_eq!(seen(&a.get(&ns, "k", Some(LONG_TTL)).await.unwrap()).0.as_deref(), Some("v1"));
    for i in 2..20 {
        let v = format!("v{i}");
        let w = a.put(put(&ns, "k", &v)).await.unwrap();
        let r = a.get(&ns, "k", Some(LONG_TTL)).await.unwrap();
        assert_eq!(seen(&r).0, Some(v), "read right after an acknowledged put");
        assert!(r.version >= w.version);
    }
    a.delete(&ns, "k", None).await.unwrap();
    assert_eq!(seen(&a.get(&ns, "k", Some(LONG_TTL)).await.unwrap()).0, None, "read right after a delete");
}

#[tokio::test]
async fn push_mode_replaces_a_cached_copy_in_another_region() {
    let t = Tiers::start(5).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let (a, b) = (t.edge(A_PUSH).await.unwrap(), t.edge(B_PUSH).await.unwrap());
    a.put(put(&ns, "k", "old")).await.unwrap();
    assert_eq!(seen(&b.get(&ns, "k", Some(LONG_TTL)).await.unwrap()), (Some("old".into()), CacheStatus::Miss));
    assert_eq!(seen(&b.get(&ns, "k", Some(LONG_TTL)).await.unwrap()), (Some("old".into()), CacheStatus::Hit));
    let started = Instant::now();
    a.put(put(&ns, "k", "new")).await.unwrap();
    let r = until_value(&b, &ns, "k", LONG_TTL, Some("new"), WAIT).await.unwrap();
    assert_eq!(seen(&r).1, CacheStatus::Hit, "the new value arrived by push, not by a refetch");
    assert!(started.elapsed() < Duration::from_secs(LONG_TTL as u64));
    assert!(t.edge_metric(B_PUSH, "kv_edge_pushes_applied_total").await >= 1.0);
}

#[tokio::test]
async fn ttl_mode_keeps_a_copy_until_its_cache_ttl_ends() {
    let t = Tiers::start(5).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let (a, b) = (t.edge(A_PUSH).await.unwrap(), t.edge(B_TTL).await.unwrap());
    a.put(put(&ns, "k", "old")).await.unwrap();
    let cache_ttl = 8;
    let filled = Instant::now();
    assert_eq!(seen(&b.get(&ns, "k", Some(cache_ttl)).await.unwrap()).0.as_deref(), Some("old"));
    a.put(put(&ns, "k", "new")).await.unwrap();
    let acked = Instant::now();
    // Give a push every chance to arrive: a ttl-mode edge must ignore it.
    let push_edge = t.edge(B_PUSH).await.unwrap();
    b.get(&ns, "other", Some(cache_ttl)).await.unwrap();
    until_value(&push_edge, &ns, "k", cache_ttl, Some("new"), WAIT).await.unwrap();
    let r = b.get(&ns, "k", Some(cache_ttl)).await.unwrap();
    assert!(filled.elapsed() < Duration::from_secs(cache_ttl as u64), "the check ran within the cacheTtl");
    assert_eq!(seen(&r), (Some("old".into()), CacheStatus::Hit), "KV semantics: the copy lives out its cacheTtl");
    // Read continuously: the key is refreshed in the background, yet the new copy is served
    // only once the old one's cacheTtl has run out: no sooner than the copy's age allows (the
    // edge accepts answers up to half the cacheTtl, at most 1 s, old), and, bounded
    // staleness, no later than cacheTtl after the write was acknowledged.
    let last_old_read = std::cell::Cell::new(None);
    let (last, b, ns) = (&last_old_read, &b, &ns);
    let became_new = eventually(WAIT, "the new value at the ttl-mode edge", || async move {
        let started = Instant::now();
        let r = b.get(ns, "k", Some(cache_ttl)).await.unwrap();
        if seen(&r).0.as_deref() == Some("new") {
            return Some(started);
        }
        last.set(Some(started));
        None
    })
    .await
    .unwrap();
    let ttl = Duration::from_secs(cache_ttl as u64);
    assert!(became_new >= filled + ttl - Duration::from_secs(1), "the new value came before the copy's cacheTtl ended");
    let last_old = last_old_read.get().expect("the old value was read while its copy lived");
    assert!(
        last_old <= acked + ttl,
        "a read {:?} after the ack, past the cacheTtl, still saw the old value",
        last_old - acked
    );
}

#[tokio::test]
async fn answers_name_the_tier_whose_copy_served_them() {
    let t = Tiers::start(5).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let (a, b, b_ttl) = (t.edge(A_PUSH).await.unwrap(), t.edge(B_PUSH).await.unwrap(), t.edge(B_TTL).await.unwrap());
    a.put(put(&ns, "k", "v")).await.unwrap();
    let tier = |r: &api::GetResponse| (seen(r), api::ServedBy::try_from(r.served_by).unwrap());
    let v = || (Some("v".to_string()), CacheStatus::Miss);
    // Region b never held the key: its regional tier fetches it from the central store.
    assert_eq!(tier(&b.get(&ns, "k", Some(LONG_TTL)).await.unwrap()), (v(), api::ServedBy::Central));
    // Its other edge misses too, and the regional tier's copy answers.
    assert_eq!(tier(&b_ttl.get(&ns, "k", Some(LONG_TTL)).await.unwrap()), (v(), api::ServedBy::Regional));
    // Then the edge's own copy.
    let hit = tier(&b.get(&ns, "k", Some(LONG_TTL)).await.unwrap());
    assert_eq!(hit, ((Some("v".into()), CacheStatus::Hit), api::ServedBy::Edge));
    // A batch says it per key: one this edge holds (its own write), one nobody does.
    let req =
        api::GetBulkRequest { namespace_id: ns.clone(), keys: vec!["k".into(), "none".into()], ..Default::default() };
    let bulk = a.raw().get_bulk(req).await.unwrap().into_inner();
    let by: Vec<api::ServedBy> = bulk.values.iter().map(|v| api::ServedBy::try_from(v.served_by).unwrap()).collect();
    assert_eq!(by, vec![api::ServedBy::Edge, api::ServedBy::Central]);
}

#[tokio::test]
async fn negative_lookups_are_cached_then_replaced_by_a_push() {
    let t = Tiers::start(5).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let (a, b) = (t.edge(A_PUSH).await.unwrap(), t.edge(B_PUSH).await.unwrap());
    assert_eq!(seen(&b.get(&ns, "later", Some(LONG_TTL)).await.unwrap()), (None, CacheStatus::Miss));
    let fetches = t.edge_metric(B_PUSH, "kv_edge_upstream_fetches_total").await;
    assert_eq!(seen(&b.get(&ns, "later", Some(LONG_TTL)).await.unwrap()), (None, CacheStatus::Hit));
    assert_eq!(t.edge_metric(B_PUSH, "kv_edge_negative_hits_total").await, 1.0);
    a.put(put(&ns, "later", "here")).await.unwrap();
    let r = until_value(&b, &ns, "later", LONG_TTL, Some("here"), WAIT).await.unwrap();
    assert_eq!(seen(&r).1, CacheStatus::Hit, "the push replaced the negative entry");
    assert_eq!(t.edge_metric(B_PUSH, "kv_edge_upstream_fetches_total").await, fetches, "no refetch was needed");
}

#[tokio::test]
async fn expiration_wins_over_a_long_cache_ttl_at_every_tier() {
    let t = Tiers::start(5).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let (a, b) = (t.edge(A_PUSH).await.unwrap(), t.edge(B_TTL).await.unwrap());
    let req = api::PutRequest { expiration_ttl: Some(2), ..put(&ns, "brief", "v") };
    let w = a.put(req).await.unwrap();
    let expires = w.expiration.expect("a put with expiration_ttl reports its expiration");
    for c in [&a, &b] {
        assert_eq!(seen(&c.get(&ns, "brief", Some(LONG_TTL)).await.unwrap()).0.as_deref(), Some("v"));
    }
    eventually(WAIT, "the key to expire everywhere", || async {
        let mut gone = true;
        for c in [&a, &b] {
            let r = c.get(&ns, "brief", Some(LONG_TTL)).await.ok()?;
            if r.found {
                assert!(kv_common::time::now_secs() < expires, "a value was served at or after its expiration");
                gone = false;
            }
        }
        gone.then_some(())
    })
    .await
    .unwrap();
    // The regional tier's own copy is hidden too.
    let regional = &t.cluster.regions[1].regional;
    let mut store = kv_proto::store::v1::central_store_client::CentralStoreClient::new(t.authorized(regional.grpc));
    let req = kv_proto::store::v1::GetRequest { namespace_id: ns.clone(), key: "brief".into(), ..Default::default() };
    assert!(store.get(req).await.unwrap().into_inner().entry.is_none());
}

#[tokio::test]
async fn expiration_follows_the_central_clock_at_tiers_whose_clocks_are_wrong() {
    let mut t = Tiers::start(5).await.unwrap();
    // Region b runs 30 s (edge) and 20 s (regional tier) behind the central clock.
    let region = &mut t.cluster.regions[1];
    for (node, skew) in [(&mut region.regional, "-20000"), (&mut region.edges[0].node, "-30000")] {
        node.stop(Duration::from_secs(10));
        node.env = vec![(kv_common::time::SKEW_VAR.into(), skew.into())];
        node.start().unwrap();
    }
    let ns = t.namespace().await.unwrap();
    let (a, b) = (t.edge(A_PUSH).await.unwrap(), t.edge(B_PUSH).await.unwrap());
    let w = a.put(api::PutRequest { expiration_ttl: Some(2), ..put(&ns, "brief", "v") }).await.unwrap();
    let expires = w.expiration.expect("a put with expiration_ttl reports its expiration");
    until_value(&b, &ns, "brief", LONG_TTL, Some("v"), WAIT).await.unwrap();
    eventually(WAIT, "the key to expire at the skewed edge", || async {
        let started = kv_common::time::now_secs();
        let r = b.get(&ns, "brief", Some(LONG_TTL)).await.ok()?;
        if r.found {
            assert!(started < expires, "the value was served {} s past its expiration", started - expires);
            return None;
        }
        Some(())
    })
    .await
    .unwrap();
    // Its expiration checks of new writes use the central clock too: 90 s ahead is valid there.
    let at = kv_common::time::now_secs() + 90;
    b.put(api::PutRequest { expiration: Some(at), ..put(&ns, "later", "v") }).await.expect("90 s ahead is valid");
}

#[tokio::test]
async fn a_thousand_concurrent_misses_make_one_fetch_per_tier() {
    let t = Tiers::start(20).await.unwrap();
    let ns = t.namespace().await.unwrap();
    t.edge(A_PUSH).await.unwrap().put(put(&ns, "hot", "v")).await.unwrap();
    let reads = "kv_central_reads_total{call=\"get\"}";
    let before = t.central_metric(reads).await;
    // Ten clients, each on its own connection, with a hundred reads at once.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let b = t.edge(B_PUSH).await.unwrap();
        for _ in 0..100 {
            let (b, ns) = (b.clone(), ns.clone());
            tasks.push(tokio::spawn(async move { b.get(&ns, "hot", Some(LONG_TTL)).await }));
        }
    }
    for task in tasks {
        assert_eq!(seen(&task.await.unwrap().unwrap()).0.as_deref(), Some("v"));
    }
    assert_eq!(t.central_metric(reads).await - before, 1.0, "exactly one central read");
    assert_eq!(t.edge_metric(B_PUSH, "kv_edge_upstream_fetches_total").await, 1.0);
    assert_eq!(t.regional_metric(1, "kv_regional_upstream_fetches_total").await, 1.0);
}

#[tokio::test]
async fn an_edge_serves_stale_while_its_regional_tier_is_down_and_pushes_resume_after() {
    let mut t = Tiers::start(5).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let (a, b) = (t.edge(A_PUSH).await.unwrap(), t.edge(B_PUSH).await.unwrap());
    a.put(put(&ns, "k", "v1")).await.unwrap();
    assert_eq!(seen(&b.get(&ns, "k", Some(1)).await.unwrap()).0.as_deref(), Some("v1"));

    t.cluster.regions[1].regional.kill();
    // Every read keeps succeeding; once the 1 s cacheTtl has passed they are STALE.
    eventually(WAIT, "a STALE answer", || async {
        let r = b.get(&ns, "k", Some(1)).await.expect("the edge keeps answering from its cache");
        assert_eq!(seen(&r).0.as_deref(), Some("v1"));
        (seen(&r).1 == CacheStatus::Stale).then_some(())
    })
    .await
    .unwrap();
    assert!(t.edge_metric(B_PUSH, "kv_edge_stale_serves_total").await >= 1.0);

    let resets = t.edge_metric(B_PUSH, "kv_edge_resets_total").await;
    t.cluster.regions[1].regional.start().unwrap();
    // The edge resubscribes and, told it may have missed changes, will revalidate its copies.
    eventually(WAIT, "the push stream to be back", || async {
        (t.edge_metric(B_PUSH, "kv_edge_resets_total").await > resets).then_some(())
    })
    .await
    .unwrap();
    eventually(WAIT, "a fresh answer after the restart", || async {
        let r = b.get(&ns, "k", Some(LONG_TTL)).await.ok()?;
        (seen(&r).1 != CacheStatus::Stale).then_some(())
    })
    .await
    .unwrap();
    // That refetch registered the key again: a new write reaches this edge by push.
    let applied = t.edge_metric(B_PUSH, "kv_edge_pushes_applied_total").await;
    a.put(put(&ns, "k", "v2")).await.unwrap();
    let r = until_value(&b, &ns, "k", LONG_TTL, Some("v2"), WAIT).await.unwrap();
    assert_eq!(seen(&r).1, CacheStatus::Hit);
    assert!(t.edge_metric(B_PUSH, "kv_edge_pushes_applied_total").await > applied);
}

#[tokio::test]
async fn reads_are_monotonic_under_racing_pushes_and_pulls() {
    let t = Tiers::start(2).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let a = t.edge(A_PUSH).await.unwrap();
    a.put(put(&ns, "k", "0")).await.unwrap();
    let writer = {
        let (a, ns) = (a.clone(), ns.clone());
        tokio::spawn(async move {
            for i in 1..=60 {
                a.put(put(&ns, "k", &i.to_string())).await.unwrap();
            }
        })
    };
    let mut readers = Vec::new();
    for edge in [B_PUSH, B_TTL, A_TTL] {
        for _ in 0..3 {
            let (c, ns) = (t.edge(edge).await.unwrap(), ns.clone());
            readers.push(tokio::spawn(async move {
                let mut last = (0u64, -1i64);
                let mut reads = 0;
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(3) || reads < 20 {
                    // cacheTtl 1 s: copies expire while pushes arrive, so pulls and pushes race.
                    let r = c.get(&ns, "k", Some(1)).await.unwrap();
                    let value: i64 = String::from_utf8_lossy(&r.value).parse().unwrap();
                    assert!(r.version >= last.0, "version went back from {} to {}", last.0, r.version);
                    assert!(value >= last.1, "value went back from {} to {value}", last.1);
                    last = (r.version, value);
                    reads += 1;
                }
                // Shared edge state is what must be monotonic: the last read is the newest seen.
                last
            }));
        }
    }
    writer.await.unwrap();
    for r in readers {
        r.await.unwrap();
    }
    let r = until_value(&t.edge(B_PUSH).await.unwrap(), &ns, "k", 1, Some("60"), WAIT).await.unwrap();
    assert!(r.found);
}

#[tokio::test]
async fn bad_input_at_the_edge_gets_its_exact_error_and_nothing_goes_upstream() {
    use tonic::Code::{InvalidArgument, NotFound};
    let t = Tiers::start(1).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let mut raw = t.edge(B_PUSH).await.unwrap().raw();
    let central_log = "kv_raft_last_log_index";
    let log_before = t.central_max(central_log).await;
    let p = |key: &str, value: Vec<u8>| api::PutRequest {
        namespace_id: ns.clone(),
        key: key.into(),
        value: value.into(),
        ..Default::default()
    };
    expect_error(raw.put(p("", vec![])).await, InvalidArgument, 400, "Key names must not be empty");
    expect_error(
        raw.put(p(".", vec![])).await,
        InvalidArgument,
        400,
        "Illegal key name \".\". Please use a different name.",
    );
    expect_error(
        raw.put(p("..", vec![])).await,
        InvalidArgument,
        400,
        "Illegal key name \"..\". Please use a different name.",
    );
    expect_error(
        raw.put(p(&"k".repeat(513), vec![])).await,
        InvalidArgument,
        414,
        "UTF-8 encoded length of 513 exceeds key length limit of 512.",
    );
    expect_error(
        raw.put(p("k", vec![0; 26_214_401])).await,
        InvalidArgument,
        413,
        "Value length of 26214401 exceeds limit of 26214400.",
    );
    let meta = api::PutRequest { metadata_json: Some(format!("\"{}\"", "m".repeat(1100))), ..p("k", vec![]) };
    expect_error(raw.put(meta).await, InvalidArgument, 413, "Metadata length of 1102 exceeds limit of 1024.");
    let ttl = api::PutRequest { expiration_ttl: Some(0), ..p("k", vec![]) };
    expect_error(
        raw.put(ttl).await,
        InvalidArgument,
        400,
        "Invalid expiration_ttl of 0. Please specify integer greater than 0.",
    );
    let past = api::PutRequest { expiration: Some(5), ..p("k", vec![]) };
    expect_error(raw.put(past).await, InvalidArgument, 400, "Invalid expiration of 5. Please specify integer greater than the current number of seconds since the UNIX epoch.");
    let get = |key: &str, cache_ttl| api::GetRequest {
        namespace_id: ns.clone(),
        key: key.into(),
        cache_ttl,
        ..Default::default()
    };
    expect_error(
        raw.get(get("k", Some(0))).await,
        InvalidArgument,
        400,
        "Invalid cache_ttl of 0. Cache TTL must be at least 1.",
    );
    expect_error(raw.get(get("", None)).await, InvalidArgument, 400, "Key names must not be empty");
    let bulk = |n: usize| api::GetBulkRequest {
        namespace_id: ns.clone(),
        keys: (0..n).map(|i| format!("k{i}")).collect(),
        ..Default::default()
    };
    expect_error(raw.get_bulk(bulk(0)).await, InvalidArgument, 400, "You must request a minimum of 1 key");
    expect_error(raw.get_bulk(bulk(101)).await, InvalidArgument, 400, "You can request a maximum of 100 keys");
    let list = api::ListRequest { namespace_id: ns.clone(), limit: Some(1001), ..Default::default() };
    expect_error(
        raw.list(list).await,
        InvalidArgument,
        400,
        "Invalid key_count_limit of 1001. Please specify an integer less than 1000.",
    );
    let garbage = api::GetRequest { namespace_id: "not-a-namespace".into(), ..get("k", None) };
    assert_eq!(raw.get(garbage).await.unwrap_err().code(), NotFound, "a malformed namespace id names no namespace");
    let unknown = api::GetRequest { namespace_id: "0".repeat(32), ..get("k", None) };
    assert_eq!(raw.get(unknown).await.unwrap_err().code(), NotFound, "an unknown namespace is NOT_FOUND");
    // A bulk write validates each item alone.
    let items = vec![
        api::BulkPutItem { key: "ok".into(), value: "v".into(), ..Default::default() },
        api::BulkPutItem { key: "".into(), ..Default::default() },
    ];
    let r = raw
        .put_bulk(api::PutBulkRequest { namespace_id: ns.clone(), items, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.successful_key_count, r.unsuccessful_keys), (1, vec![String::new()]));
    assert_eq!(r.errors[0].message, "Key names must not be empty");

    // Only the unknown-namespace read and the valid bulk item went upstream.
    assert_eq!(t.edge_metric(B_PUSH, "kv_edge_upstream_fetches_total").await, 1.0);
    assert_eq!(t.central_max(central_log).await, log_before + 1.0, "one log entry: the valid bulk item");
    assert!(t.edge_metric(B_PUSH, "kv_edge_rejected_total").await >= 14.0);
}

/// A request in the caller's trace `trace`, sent from its span `parent`.
fn traced<T>(trace: &str, parent: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("traceparent", format!("00-{trace}-{parent}-01").parse().unwrap());
    r
}

/// The span fields a node logged for the call it served in `trace`, from `node`'s log.
fn span_of(logs: &[(String, String)], node: &str, trace: &str) -> Option<(String, String)> {
    let log = &logs.iter().find(|(n, _)| n == node)?.1;
    let line = log.lines().find(|l| l.contains(&format!("trace_id={trace}")))?;
    let field = |name: &str| line.split(&format!("{name}=")).nth(1).map(|r| r.chars().take(16).collect::<String>());
    Some((field("span_id")?, field("parent_id")?))
}

#[tokio::test]
async fn trace_context_goes_from_the_edge_to_the_central_store() {
    let mut topology = kv_tests::tiers::two_regions(5);
    topology.log = Some("info,openraft=warn,kv_common::call=debug".into());
    let t = Tiers::start_topology(&topology).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let mut edge = t.edge(A_PUSH).await.unwrap().raw();
    let (read_trace, write_trace) = ("4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c");
    let get = api::GetRequest { namespace_id: ns.clone(), key: "absent".into(), ..Default::default() };
    let r = edge.get(traced(read_trace, "00f067aa0ba902b7", get)).await.unwrap().into_inner();
    assert_eq!(seen(&r), (None, CacheStatus::Miss), "a miss goes up to the central store");
    edge.put(traced(write_trace, "b7ad6b7169203331", put(&ns, "k", "v"))).await.unwrap();

    // Each tier's span is the child of the one below it, all in the caller's trace.
    let regional = &t.cluster.regions[0].regional.name;
    for (trace, caller) in [(read_trace, "00f067aa0ba902b7"), (write_trace, "b7ad6b7169203331")] {
        let logs = t.logs();
        let (edge_span, edge_parent) = span_of(&logs, "a-push", trace).expect("the edge logged the trace");
        assert_eq!(edge_parent, caller, "the edge's span is the caller's child");
        let (regional_span, regional_parent) = span_of(&logs, regional, trace).expect("the regional tier logged it");
        assert_eq!(regional_parent, edge_span, "the regional tier's span is the edge's child");
        let (_, central_parent) = span_of(&logs, "central-1", trace).expect("the central store logged it");
        assert_eq!(central_parent, regional_span, "the central store's span is the regional tier's child");
    }
}

/// A PutStream of `value` in `chunk`-byte pieces after its header.
fn put_stream(ns: &str, key: &str, value: &[u8], chunk: usize) -> impl futures::Stream<Item = api::PutStreamChunk> {
    use api::put_stream_chunk::Part;
    let header = api::PutStreamHeader {
        namespace_id: ns.into(),
        key: key.into(),
        metadata_json: Some(r#"{"kind":"blob"}"#.into()),
        ..Default::default()
    };
    let mut parts = vec![api::PutStreamChunk { part: Some(Part::Header(header)) }];
    parts.extend(value.chunks(chunk).map(|c| api::PutStreamChunk { part: Some(Part::Chunk(c.to_vec().into())) }));
    futures::stream::iter(parts)
}

#[tokio::test]
async fn large_values_stream_in_at_one_edge_and_out_at_another() {
    use api::get_stream_chunk::Part;
    use futures::StreamExt;
    let t = Tiers::start(5).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let (mut a, mut b) = (t.edge(A_PUSH).await.unwrap().raw(), t.edge(B_PUSH).await.unwrap().raw());
    let value: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8).collect();
    let w = a.put_stream(put_stream(&ns, "blob", &value, 1 << 20)).await.unwrap().into_inner();
    assert!(w.version > 0);

    let read =
        api::GetRequest { namespace_id: ns.clone(), key: "blob".into(), with_metadata: true, ..Default::default() };
    let mut parts = b.get_stream(read).await.unwrap().into_inner();
    let Some(Ok(api::GetStreamChunk { part: Some(Part::Header(h)) })) = parts.next().await else {
        panic!("a GetStream starts with its header");
    };
    assert!(h.found);
    assert_eq!((h.value_length, h.version), (value.len() as u64, w.version));
    assert_eq!(h.metadata_json.as_deref(), Some(r#"{"kind":"blob"}"#));
    let (mut got, mut chunks) = (Vec::new(), 0);
    while let Some(part) = parts.next().await {
        match part.unwrap().part {
            Some(Part::Chunk(c)) => got.extend_from_slice(&c),
            other => panic!("only chunks follow the header, got {other:?}"),
        }
        chunks += 1;
    }
    assert!(chunks > 1, "a 5 MiB value comes in several chunks");
    assert!(got == value, "the value read in another region is the one written");

    // One byte over 25 MiB: the contract's error, and nothing is stored.
    let big = vec![7u8; (25 << 20) + 1];
    expect_error(
        a.put_stream(put_stream(&ns, "too-big", &big, 1 << 20)).await,
        tonic::Code::InvalidArgument,
        413,
        "Value length of 26214401 exceeds limit of 26214400.",
    );
    let r = t.edge(A_PUSH).await.unwrap().get(&ns, "too-big", None).await.unwrap();
    assert_eq!(seen(&r).0, None);
}

#[tokio::test]
async fn four_hundred_calls_at_once_on_one_connection_are_all_served() {
    let t = Tiers::start(20).await.unwrap();
    let ns = t.namespace().await.unwrap();
    t.edge(A_PUSH).await.unwrap().put(put(&ns, "hot", "v")).await.unwrap();
    let b = t.edge(B_PUSH).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..400 {
        let (b, ns) = (b.clone(), ns.clone());
        tasks.push(tokio::spawn(async move { b.get(&ns, "hot", Some(LONG_TTL)).await }));
    }
    for task in tasks {
        assert_eq!(seen(&task.await.unwrap().unwrap()).0.as_deref(), Some("v"));
    }
}
