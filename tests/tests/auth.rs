//! Tokens on every API (SPEC.md section 8), as users meet them: calls without a valid token
//! are refused with 401 and change nothing, tokens do what their grants say and no more
//! (403), a new token works at once at every edge, and a revoked one stops working at every
//! edge within the documented bound. The tier APIs and the central admin API take admin
//! tokens only.

use kv_client::{api, Client};
use kv_common::error::http_status_of;
use kv_proto::admin::v1::{self as pb_admin, cluster_admin_client::ClusterAdminClient, MetricsRequest};
use kv_proto::store::v1::{self as pb, central_store_client::CentralStoreClient};
use kv_tests::eventually;
use kv_tests::rest::{error_code, Rest};
use kv_tests::tiers::{put, two_regions, Tiers, A_PUSH, B_PUSH};
use std::time::{Duration, Instant};
use tonic::Code;

/// The revocation bound the test cluster's edges keep (`token_cache_ms`).
const BOUND: Duration = Duration::from_millis(1_000);

async fn cluster() -> Tiers {
    let mut topology = two_regions(2);
    topology.edge_config = format!("token_cache_ms = {}\n{}", BOUND.as_millis(), topology.edge_config);
    Tiers::start_topology(&topology).await.expect("the cluster starts")
}

/// Edge `i` with `token` (none: no token at all).
async fn edge_as(t: &Tiers, i: usize, token: Option<&str>) -> Client {
    let e = t.cluster.edges().nth(i).expect("edge index");
    let c = Client::connect(&e.node.grpc.to_string()).await.expect("the edge is up");
    match token {
        Some(tok) => c.with_token(tok).expect("an ASCII token"),
        None => c,
    }
}

fn grant(ns: &str, read: bool, write: bool) -> api::Grant {
    api::Grant { namespace_id: ns.into(), read, write }
}

/// Makes a token through edge A; its secret.
async fn token(admin: &Client, grants: Vec<api::Grant>) -> (String, String) {
    let made = admin.create_token(api::CreateTokenRequest { name: "test".into(), admin: false, grants }).await.unwrap();
    (made.token.unwrap().id, made.secret)
}

fn refused(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, http: u16, what: &str) {
    let s = r.expect_err(what);
    assert_eq!((s.code(), http_status_of(&s)), (code, Some(http)), "{what}: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_valid_token_are_refused_and_change_nothing() {
    let t = cluster().await;
    let admin = t.edge(A_PUSH).await.unwrap();
    let ns = t.namespace().await.unwrap();
    admin.put(put(&ns, "k", "v1")).await.unwrap();

    let forged = kv_common::auth::mint().token;
    for token in [None, Some("not a token"), Some(forged.as_str())] {
        let c = edge_as(&t, A_PUSH, token).await;
        refused(c.get(&ns, "k", None).await, Code::Unauthenticated, 401, "a read");
        refused(c.put(put(&ns, "k", "v2")).await, Code::Unauthenticated, 401, "a write");
        refused(c.create_namespace("nope").await, Code::Unauthenticated, 401, "a namespace");
        refused(c.verify_token().await, Code::Unauthenticated, 401, "who am I");
    }
    let r = admin.get(&ns, "k", None).await.unwrap();
    assert_eq!(r.value, &b"v1"[..], "nothing was written");
    assert!(admin.list_namespaces().await.unwrap().iter().all(|n| n.title != "nope"));

    // The same over REST: 401 with Cloudflare's authentication code, before the body is read.
    let http = t.cluster.edges().next().unwrap().node.http;
    for rest in [Rest::new(http, None), Rest::new(http, Some(&forged))] {
        let s = rest.send(rest.http.put(rest.key_url(&ns, "values", b"k")).body("v3")).await.unwrap_err();
        assert_eq!((http_status_of(&s), error_code(&s)), (Some(401), Some(10000)), "{s:?}");
        let s = rest.send(rest.http.get(format!("{}/user/tokens/verify", rest.root))).await.unwrap_err();
        assert_eq!(http_status_of(&s), Some(401));
    }
    assert_eq!(admin.get(&ns, "k", None).await.unwrap().value, &b"v1"[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_does_what_its_grants_say_and_no_more() {
    let t = cluster().await;
    let admin = t.edge(A_PUSH).await.unwrap();
    let a = admin.create_namespace("a").await.unwrap().id;
    let b = admin.create_namespace("b").await.unwrap().id;
    admin.put(put(&a, "k", "in a")).await.unwrap();
    admin.put(put(&b, "k", "in b")).await.unwrap();

    let (_, reader) = token(&admin, vec![grant(&a, true, false)]).await;
    let (_, writer) = token(&admin, vec![grant(&a, false, true)]).await;
    let (_, everything) = token(&admin, vec![grant("*", true, true)]).await;

    // Made at edge A, each works at once at edge B (a missing token is looked up linearizably).
    let r = edge_as(&t, B_PUSH, Some(&reader)).await;
    assert_eq!(r.get(&a, "k", None).await.unwrap().value, &b"in a"[..]);
    refused(r.get(&b, "k", None).await, Code::PermissionDenied, 403, "another namespace");
    refused(r.put(put(&a, "k", "x")).await, Code::PermissionDenied, 403, "a reader writing");
    let listed: Vec<String> = r.list_namespaces().await.unwrap().into_iter().map(|n| n.id).collect();
    assert_eq!(listed, vec![a.clone()], "a scoped token lists its own namespaces only");
    refused(r.create_namespace("mine").await, Code::PermissionDenied, 403, "making a namespace");
    refused(r.list_tokens().await, Code::PermissionDenied, 403, "listing tokens");
    assert_eq!(r.get_namespace(&a).await.unwrap().id, a);

    let w = edge_as(&t, B_PUSH, Some(&writer)).await;
    w.put(put(&a, "k", "written")).await.unwrap();
    refused(w.get(&a, "k", None).await, Code::PermissionDenied, 403, "a writer reading");
    assert_eq!(w.list_namespaces().await.unwrap().len(), 1, "a writer lists the namespace it writes");
    refused(w.delete(&b, "k", None).await, Code::PermissionDenied, 403, "a writer elsewhere");
    assert_eq!(admin.get(&b, "k", None).await.unwrap().value, &b"in b"[..], "nothing was changed");

    let e = edge_as(&t, B_PUSH, Some(&everything)).await;
    assert_eq!(e.get(&b, "k", None).await.unwrap().value, &b"in b"[..]);
    assert!(e.list_namespaces().await.unwrap().len() >= 2, "read on \"*\" lists namespaces");
    refused(e.delete_namespace(&b).await, Code::PermissionDenied, 403, "namespaces need admin");

    // REST: the same rights, the envelope's code 10000 for 403 as Cloudflare has it.
    let rest = Rest::new(t.cluster.edges().nth(B_PUSH).unwrap().node.http, Some(&reader));
    let got = rest.send(rest.http.get(rest.key_url(&a, "values", b"k"))).await.unwrap();
    assert_eq!(got.text().await.unwrap(), "written");
    let s = rest.send(rest.http.put(rest.key_url(&a, "values", b"k")).body("x")).await.unwrap_err();
    assert_eq!((http_status_of(&s), error_code(&s)), (Some(403), Some(10000)), "{s:?}");

    // Bad grants are refused with a clear message and make no token.
    let before = admin.list_tokens().await.unwrap().len();
    for bad in [vec![grant("nope", true, false)], vec![grant(&a, false, false)], vec![]] {
        let r = admin.create_token(api::CreateTokenRequest { name: String::new(), admin: false, grants: bad }).await;
        refused(r, Code::InvalidArgument, 400, "bad grants");
    }
    assert_eq!(admin.list_tokens().await.unwrap().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stops_working_at_every_edge_within_the_bound() {
    let t = cluster().await;
    let admin = t.edge(A_PUSH).await.unwrap();
    let ns = t.namespace().await.unwrap();
    admin.put(put(&ns, "k", "v")).await.unwrap();
    let (id, secret) = token(&admin, vec![grant(&ns, true, false)]).await;
    // Edge B has checked the token, and keeps its record.
    let b = edge_as(&t, B_PUSH, Some(&secret)).await;
    b.get(&ns, "k", None).await.expect("a valid token");

    admin.revoke_token(&id).await.unwrap();
    let acknowledged = Instant::now();
    refused(edge_as(&t, A_PUSH, Some(&secret)).await.get(&ns, "k", None).await, Code::Unauthenticated, 401, "at A");
    // At B, the token may work until the bound has passed since the revocation was
    // acknowledged, and never after.
    let refused_at_b = || async {
        let sent = Instant::now();
        match b.get(&ns, "k", None).await {
            Ok(_) => {
                assert!(sent < acknowledged + BOUND, "honored {:?} after revocation", sent - acknowledged);
                None
            }
            Err(s) => Some(s),
        }
    };
    let s = eventually(BOUND * 5, "edge B to refuse the revoked token", refused_at_b).await.unwrap();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    for i in 0..t.cluster.edges().count() {
        refused(edge_as(&t, i, Some(&secret)).await.get(&ns, "k", None).await, Code::Unauthenticated, 401, "revoked");
    }
    refused(admin.revoke_token(&id).await, Code::NotFound, 404, "revoking twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_apis_and_cluster_admin_take_admin_tokens_only() {
    let t = cluster().await;
    let admin = t.edge(A_PUSH).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let (_, scoped) = token(&admin, vec![grant("*", true, true)]).await;
    let made = admin.create_token(api::CreateTokenRequest { name: "ops".into(), admin: true, grants: vec![] }).await;
    let operator = made.unwrap().secret;

    let lazy = |addr: std::net::SocketAddr| {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("address").connect_lazy()
    };
    let central = t.cluster.central[0].grpc;
    let regional = t.cluster.regions[0].regional.grpc;
    let get = pb::GetRequest { namespace_id: ns.clone(), key: "k".into(), ..Default::default() };

    // No token: nothing is served but health.
    let r = ClusterAdminClient::new(lazy(central)).metrics(MetricsRequest {}).await;
    refused(r, Code::Unauthenticated, 401, "central admin without a token");
    for addr in [central, regional] {
        refused(CentralStoreClient::new(lazy(addr)).get(get.clone()).await, Code::Unauthenticated, 401, "a tier");
    }
    // A scoped token is a client's, not a node's.
    let with = |addr, token: &str| kv_common::auth::authorized(lazy(addr), token).unwrap();
    let r = ClusterAdminClient::new(with(central, &scoped)).metrics(MetricsRequest {}).await;
    refused(r, Code::PermissionDenied, 403, "central admin with a scoped token");
    refused(
        CentralStoreClient::new(with(central, &scoped)).get(get.clone()).await,
        Code::PermissionDenied,
        403,
        "store",
    );
    // A stored admin token administers the cluster, but it cannot speak for a node, nor name
    // the addresses the nodes then call with the configured token.
    let m = ClusterAdminClient::new(with(central, &operator)).metrics(MetricsRequest {}).await.unwrap();
    assert!(m.into_inner().leader_id.is_some());
    let store = CentralStoreClient::new(with(central, &operator)).get(get.clone()).await;
    refused(store, Code::PermissionDenied, 403, "the store API with a stored admin token");
    let learner = pb_admin::AddLearnerRequest {
        member: Some(pb_admin::Member { node_id: 9, addr: "127.0.0.1:9".into() }),
        blocking: false,
    };
    let r = ClusterAdminClient::new(with(central, &operator)).add_learner(learner).await;
    refused(r, Code::PermissionDenied, 403, "a membership change with a stored admin token");
    t.central_admin(0).metrics(MetricsRequest {}).await.unwrap();
}
