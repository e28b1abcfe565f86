//! The store API of a real 3-node cluster: the rate limit, the change feed, and bad input.

use kv_common::error::http_status_of;
use kv_proto::store::v1::{self as pb, watch_event::Event};
use kv_tests::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_write_to_one_key_within_a_second_is_rate_limited() {
    let c = Cluster::start(3, ClusterOptions::default()).await.unwrap();
    let ns = c.create_namespace(0, "rate").await.unwrap();
    let follower = (c.leader().await.unwrap() + 1) % 3;
    // Both through a follower: the leader enforces the limit for forwarded writes too.
    let req = pb::WriteRequest {
        namespace_id: ns.clone(),
        ops: vec![put_op("hot", b"1"), put_op("cold", b"1")],
        ..Default::default()
    };
    let first = store_call!(c, follower, write, req).unwrap();
    assert!(first.results.iter().all(|r| r.error.is_none() && r.version > 0), "{first:?}");

    let second = write_one(&c, follower, &ns, put_op("hot", b"2")).await.unwrap();
    let err = second.error.expect("second write within a second must be refused");
    assert_eq!(err.grpc_code, tonic::Code::ResourceExhausted as i32);
    assert_eq!(err.http_status, 429);
    assert_eq!(err.message, "Too Many Requests");
    assert_eq!(second.version, 0);
    // Other keys are not limited.
    assert!(write_one(&c, follower, &ns, put_op("other", b"1")).await.unwrap().error.is_none());
    // The refused write changed nothing.
    let got = c
        .store(0)
        .get(pb::GetRequest {
            namespace_id: ns.clone(),
            key: "hot".into(),
            min_version: first.results[0].version,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.entry.unwrap().value, &b"1"[..]);
    let text = c.scrape(c.leader().await.unwrap()).await.unwrap();
    assert!(metric_value(&text, "kv_central_rate_limited_writes_total").unwrap_or(0.0) >= 1.0, "{text}");
}

/// Collects change sets from a stream until one reaches `version`.
async fn collect_until(s: &mut tonic::Streaming<pb::WatchEvent>, version: u64) -> Vec<pb::ChangeSet> {
    let mut out = Vec::new();
    loop {
        match next_event(s).await.unwrap() {
            Event::Changes(set) => {
                let v = set.version;
                out.push(set);
                if v >= version {
                    return out;
                }
            }
            Event::Progress(_) => {}
            Event::Resync(r) => panic!("unexpected resync {r:?}"),
        }
    }
}

fn flatten(sets: &[pb::ChangeSet]) -> Vec<(u64, String, i32)> {
    sets.iter().flat_map(|s| s.changes.iter().map(move |c| (s.version, c.key.clone(), c.kind))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_every_change_in_order_and_resumes_exactly() {
    let c = Cluster::start(3, ClusterOptions::without_rate_limit()).await.unwrap();
    let ns = c.create_namespace(0, "watch").await.unwrap();
    let follower = (c.leader().await.unwrap() + 1) % 3;
    let mut feed =
        c.store(follower).watch(pb::WatchRequest { from_version: 0, from_now: false }).await.unwrap().into_inner();

    let mut expected = Vec::new();
    for i in 0..40 {
        let key = format!("w{:02}", i % 25);
        let op = if i % 5 == 4 { delete_op(&key) } else { put_op(&key, format!("v{i}").as_bytes()) };
        let kind = if i % 5 == 4 { pb::ChangeKind::Delete } else { pb::ChangeKind::Put } as i32;
        let r = write_one(&c, 0, &ns, op).await.unwrap();
        assert!(r.error.is_none(), "{r:?}");
        expected.push((r.version, key, kind));
    }
    let last = expected.last().unwrap().0;

    // The first subscriber reads half, disconnects, and resumes from the last version it saw.
    let mut seen = Vec::new();
    loop {
        if let Event::Changes(set) = next_event(&mut feed).await.unwrap() {
            seen.push(set);
            if seen.len() == 17 {
                break;
            }
        }
    }
    drop(feed);
    let resume_from = seen.last().unwrap().version;
    let mut resumed =
        c.store(2).watch(pb::WatchRequest { from_version: resume_from, from_now: false }).await.unwrap().into_inner();
    seen.extend(collect_until(&mut resumed, last).await);

    let got = flatten(&seen);
    // The namespace creation carries no key change; everything else is there once, in order.
    assert_eq!(got, expected, "feed differs from the writes made");
    let versions: Vec<u64> = seen.iter().map(|s| s.version).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "versions not strictly increasing: {versions:?}");
    // Once caught up, an idle feed reports how far it is.
    let progress = loop {
        if let Event::Progress(p) = next_event(&mut resumed).await.unwrap() {
            break p.applied_version;
        }
    };
    assert!(progress >= last, "progress {progress} is behind the last change {last}");
    // Values of puts travel inline.
    let put = seen.iter().flat_map(|s| &s.changes).find(|c| c.kind == pb::ChangeKind::Put as i32).unwrap();
    assert!(!put.value.is_empty() && !put.value_omitted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_says_resync_when_history_was_dropped() {
    let opts = ClusterOptions { extra_toml: "[feed]\nretention = 8\ntrim_every = 8\n".into(), ..Default::default() };
    let c = Cluster::start(3, opts).await.unwrap();
    let ns = c.create_namespace(0, "resync").await.unwrap();
    let mut last = 0;
    for i in 0..30 {
        last = write_one(&c, 0, &ns, put_op(&format!("r{i}"), b"x")).await.unwrap().version;
    }
    // Wait until node 1 has applied everything (a read with min_version does that).
    c.store(1)
        .get(pb::GetRequest { namespace_id: ns.clone(), key: "r0".into(), min_version: last, ..Default::default() })
        .await
        .unwrap();
    let mut feed = c.store(1).watch(pb::WatchRequest { from_version: 1, from_now: false }).await.unwrap().into_inner();
    match next_event(&mut feed).await.unwrap() {
        Event::Resync(r) => {
            assert!(r.oldest_retained > 1, "{r:?}");
            assert!(r.current_version >= last, "{r:?}");
            // Watching again from the version it names works.
            let mut again = c
                .store(1)
                .watch(pb::WatchRequest { from_version: r.current_version, from_now: false })
                .await
                .unwrap()
                .into_inner();
            let v = write_one(&c, 0, &ns, put_op("after", b"y")).await.unwrap().version;
            let sets = collect_until(&mut again, v).await;
            assert_eq!(flatten(&sets).last().unwrap().1, "after");
        }
        other => panic!("expected resync, got {other:?}"),
    }
}

fn assert_status(r: Result<impl std::fmt::Debug, tonic::Status>, code: tonic::Code, http: u16, message: &str) {
    let s = r.expect_err("expected an error");
    assert_eq!(s.code(), code, "{s:?}");
    assert_eq!(http_status_of(&s), Some(http), "{s:?}");
    assert_eq!(s.message(), message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let c = Cluster::start(3, ClusterOptions::default()).await.unwrap();
    let ns = c.create_namespace(0, "bad-input").await.unwrap();
    let ok = write_one(&c, 0, &ns, put_op("keep", b"v")).await.unwrap();
    let leader = c.leader().await.unwrap();
    let before = c.metrics(leader).await.unwrap().last_log_index;
    let mut s = c.store(1);
    let get = |key: &str| pb::GetRequest {
        namespace_id: ns.clone(),
        key: key.into(),
        min_version: ok.version,
        ..Default::default()
    };
    use tonic::Code::*;

    // Keys.
    assert_status(s.get(get("")).await, InvalidArgument, 400, "Key names must not be empty");
    assert_status(s.get(get(".")).await, InvalidArgument, 400, "Illegal key name \".\". Please use a different name.");
    let long = "k".repeat(513);
    assert_status(
        s.get(get(&long)).await,
        InvalidArgument,
        414,
        "UTF-8 encoded length of 513 exceeds key length limit of 512.",
    );

    // Unknown and malformed namespaces.
    let unknown =
        pb::GetRequest { namespace_id: "0".repeat(32), key: "k".into(), min_version: 0, ..Default::default() };
    assert_status(s.get(unknown).await, NotFound, 404, "namespace not found");
    let garbage = pb::ListRequest { namespace_id: "not-an-id".into(), ..Default::default() };
    assert_status(s.list(garbage).await, NotFound, 404, "namespace not found");
    let write_unknown =
        pb::WriteRequest { namespace_id: "f".repeat(32), ops: vec![put_op("k", b"v")], ..Default::default() };
    assert_status(s.write(write_unknown).await, NotFound, 404, "namespace not found");

    // List arguments.
    let list = |cursor: &str, limit: u32| pb::ListRequest {
        namespace_id: ns.clone(),
        cursor: cursor.into(),
        limit,
        ..Default::default()
    };
    assert_status(s.list(list("zz-not-hex", 0)).await, InvalidArgument, 400, "Invalid list cursor.");
    assert_status(
        s.list(list("", 1001)).await,
        InvalidArgument,
        400,
        "Invalid key_count_limit of 1001. Please specify an integer less than 1000.",
    );

    // Bulk get sizes.
    let bulk = |n: usize| pb::BatchGetRequest {
        namespace_id: ns.clone(),
        keys: (0..n).map(|i| format!("k{i}")).collect(),
        ..Default::default()
    };
    assert_status(s.batch_get(bulk(0)).await, InvalidArgument, 400, "You must request a minimum of 1 key");
    assert_status(s.batch_get(bulk(101)).await, InvalidArgument, 400, "You can request a maximum of 100 keys");

    // Write items fail one by one, with their own messages, in the contract's check order.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let put = |key: &str, value: Vec<u8>, meta: Option<String>, exp: Option<i64>, ttl: Option<i64>| pb::WriteOp {
        key: key.into(),
        op: Some(pb::write_op::Op::Put(pb::Put {
            value: value.into(),
            metadata_json: meta,
            expiration: exp,
            expiration_ttl: ttl,
        })),
        if_version: None,
    };
    let ops = vec![
        put("..", vec![], None, None, None),
        put("a", vec![], None, Some(now - 10), None),
        put("b", vec![], None, None, Some(30)),
        put("c", vec![], Some(format!("\"{}\"", "m".repeat(1100))), None, None),
        put("d", vec![0; 25 * 1024 * 1024 + 1], None, None, None),
        put("e", vec![], Some("{not json".into()), None, None),
        pb::WriteOp { key: "f".into(), op: None, if_version: None },
    ];
    let reply =
        s.write(pb::WriteRequest { namespace_id: ns.clone(), ops, ..Default::default() }).await.unwrap().into_inner();
    let errors: Vec<(u32, String)> = reply
        .results
        .iter()
        .map(|r| {
            let e = r.error.as_ref().expect("every item is invalid");
            (e.http_status, e.message.clone())
        })
        .collect();
    assert_eq!(errors[0], (400, "Illegal key name \"..\". Please use a different name.".into()));
    assert_eq!(
        errors[1],
        (400, format!("Invalid expiration of {}. Please specify integer greater than the current number of seconds since the UNIX epoch.", now - 10))
    );
    assert_eq!(errors[2], (400, "Invalid expiration_ttl of 30. Expiration TTL must be at least 60.".into()));
    assert_eq!(errors[3], (413, "Metadata length of 1102 exceeds limit of 1024.".into()));
    assert_eq!(errors[4], (413, "Value length of 26214401 exceeds limit of 26214400.".into()));
    assert_eq!(errors[5], (400, "Metadata must be valid JSON.".into()));
    assert_eq!(errors[6], (400, "Invalid request: a write item must be a put or a delete".into()));

    // A message beyond the server's size limit is refused as a whole.
    let huge = pb::WriteRequest {
        namespace_id: ns.clone(),
        ops: vec![put_op("huge", &vec![1u8; 120 << 20])],
        ..Default::default()
    };
    let err = s.write(huge).await.expect_err("oversized message must be refused");
    assert!(
        matches!(err.code(), OutOfRange | ResourceExhausted | InvalidArgument | Internal | Cancelled | Unknown),
        "{err:?}"
    );

    // Nothing changed: no entry was proposed, and the node still serves.
    assert_eq!(c.metrics(leader).await.unwrap().last_log_index, before, "bad input reached the log");
    let listed = s.list(list("", 0)).await.unwrap().into_inner();
    let names: Vec<_> = listed.keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, vec!["keep"]);
    assert!(listed.list_complete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_created_renamed_listed_and_deleted_with_their_keys() {
    let c = Cluster::start(3, ClusterOptions::default()).await.unwrap();
    let ns = c.create_namespace(1, "first").await.unwrap();
    let mut s = c.store(2);
    let dup = s.create_namespace(pb::CreateNamespaceRequest { title: "first".into(), ..Default::default() }).await;
    let e = dup.expect_err("duplicate title");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(e.message(), "a namespace with this account ID and title already exists");
    assert_eq!(e.metadata().get("kv-error-code").unwrap(), "10014");

    let w = write_one(&c, 2, &ns, put_op("k", b"v")).await.unwrap();
    let renamed = s
        .rename_namespace(pb::RenameNamespaceRequest {
            namespace_id: ns.clone(),
            title: "second".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renamed.title, "second");
    let leader = c.leader().await.unwrap();
    let listed = c.store(leader).list_namespaces(pb::ListNamespacesRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.namespaces, vec![pb::Namespace { id: ns.clone(), title: "second".into(), version: 0 }]);
    // Paging: namespaces come ordered by title; a page past the end is empty.
    c.create_namespace(leader, "a-third").await.unwrap();
    let page = |page, per_page| pb::ListNamespacesRequest { page, per_page, ..Default::default() };
    let mut l = c.store(leader);
    let first = l.list_namespaces(page(1, 1)).await.unwrap().into_inner();
    assert_eq!((first.namespaces[0].title.as_str(), first.total_count), ("a-third", 2));
    let second = l.list_namespaces(page(2, 1)).await.unwrap().into_inner();
    assert_eq!(second.namespaces[0].title, "second");
    assert!(l.list_namespaces(page(3, 1)).await.unwrap().into_inner().namespaces.is_empty());
    let desc = pb::ListNamespacesRequest { direction: "desc".into(), ..Default::default() };
    let titles: Vec<String> =
        l.list_namespaces(desc).await.unwrap().into_inner().namespaces.into_iter().map(|n| n.title).collect();
    assert_eq!(titles, ["second", "a-third"]);
    let bad = pb::ListNamespacesRequest { order: "size".into(), ..Default::default() };
    assert_eq!(l.list_namespaces(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    s.delete_namespace(pb::NamespaceRef { namespace_id: ns.clone(), ..Default::default() }).await.unwrap();
    for i in 0..3 {
        let gone = || async {
            let get = pb::GetRequest {
                namespace_id: ns.clone(),
                key: "k".into(),
                min_version: w.version,
                ..Default::default()
            };
            let r = c.store(i).get(get).await;
            matches!(r, Err(e) if e.code() == tonic::Code::NotFound).then_some(())
        };
        eventually(Duration::from_secs(10), "the namespace to be gone", gone).await.unwrap();
    }
    // The title is free again, and the old keys do not come back with it.
    let again = c.create_namespace(0, "second").await.unwrap();
    assert_ne!(again, ns);
    let keys = c
        .store(c.leader().await.unwrap())
        .list(pb::ListRequest { namespace_id: again.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(keys.keys.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_metrics_and_health() {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    let c = Cluster::start(3, ClusterOptions::default()).await.unwrap();
    let ns = c.create_namespace(1, "observed").await.unwrap();
    write_one(&c, 2, &ns, put_op("k", b"v")).await.unwrap();
    let mut leaders = 0.0;
    for i in 0..3 {
        let text = c.scrape(i).await.unwrap();
        for name in
            ["kv_raft_term", "kv_raft_apply_lag", "kv_raft_applied_index", "kv_central_rate_limited_writes_total"]
        {
            assert!(metric_value(&text, name).is_some(), "node {i} lacks {name}:\n{text}");
        }
        leaders += metric_value(&text, "kv_raft_is_leader").unwrap();
        let state = http_get(c.nodes[i].http, "/health").await.unwrap();
        assert!(state.starts_with("Leader,") || state.starts_with("Follower,"), "node {i} health: {state:?}");
        assert!(state.contains("freshness proof") && state.contains("ms old"), "node {i} health: {state:?}");
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes[i].grpc)).unwrap();
        let health = HealthClient::new(channel.connect().await.unwrap());
        let service = "kv.store.v1.CentralStore".to_string();
        // gRPC health follows the node's freshness proof within a tick.
        eventually(Duration::from_secs(5), "gRPC health to say SERVING", || async {
            let req = HealthCheckRequest { service: service.clone() };
            let status = health.clone().check(req).await.ok()?.into_inner().status;
            (status == ServingStatus::Serving as i32).then_some(())
        })
        .await
        .unwrap();
    }
    assert_eq!(leaders, 1.0, "exactly one node reports itself leader");

    // Reflection lists the services, so generic gRPC tools can call them.
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse, ServerReflectionRequest,
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes[0].grpc)).unwrap();
    let mut reflection = ServerReflectionClient::new(channel.connect().await.unwrap());
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection.server_reflection_info(futures::stream::iter([ask])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a list of services");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for svc in ["kv.store.v1.CentralStore", "kv.admin.v1.ClusterAdmin", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == svc), "{svc} missing from {names:?}");
    }
    let leader = c.scrape(c.leader().await.unwrap()).await.unwrap();
    assert!(leader.contains("kv_central_proposals_total{kind=\"write\"} "), "{leader}");
    assert!(metric_value(&leader, "kv_central_write_seconds_count").unwrap() >= 1.0);
    assert!(metric_value(&leader, "kv_central_log_fsyncs_total").unwrap() >= 1.0);
}
