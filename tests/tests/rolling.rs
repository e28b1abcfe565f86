//! A rolling restart under load: every node of a two-region cluster in turn (each central
//! voter, each regional tier, each edge) gets SIGTERM, drains, and starts again, while a
//! client keeps writing through the edges. No acknowledged write is lost, and no write
//! goes unanswered for good: a draining node answers what it took, and the client finds
//! another edge for what it could not send.

use kv_client::{api, Client};
use kv_tests::eventually;
use kv_tests::tiers::{put, Tiers, A_PUSH, B_PUSH};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Key -> (version, value) of every acknowledged write.
type Acked = Arc<Mutex<BTreeMap<String, (u64, String)>>>;

/// How long one write may keep trying edges before the test counts it as failed.
const PATIENCE: Duration = Duration::from_secs(30);

async fn wait_for(acked: &Acked, at_least: usize) {
    let through = || async { (acked.lock().unwrap().len() >= at_least).then_some(()) };
    eventually(Duration::from_secs(60), "writes to go through", through).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_under_load_loses_nothing() {
    let mut t = Tiers::start(2).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let edges: Vec<Client> = t
        .cluster
        .edges()
        .map(|e| {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", e.node.grpc)).unwrap().connect_lazy();
            Client::from_channel(ch, Some(&t.cluster.admin_token)).unwrap()
        })
        .collect();

    let acked: Acked = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (acked, stop, ns) = (acked.clone(), stop.clone(), ns.clone());
        tokio::spawn(async move {
            let (mut n, edge, retries) = (0u64, AtomicUsize::new(0), AtomicU64::new(0));
            while !stop.load(Ordering::SeqCst) {
                let (key, value) = (format!("k{n:06}"), format!("v{n}"));
                n += 1;
                // Tried at one edge after another until one takes it.
                let taken = eventually(PATIENCE, "an edge to take a write", || async {
                    let at = edge.load(Ordering::SeqCst);
                    let mut client = edges[at].raw();
                    match tokio::time::timeout(Duration::from_secs(5), client.put(put(&ns, &key, &value))).await {
                        Ok(Ok(done)) => return Some(done.into_inner().version),
                        Ok(Err(s)) if s.code() == tonic::Code::ResourceExhausted => {}
                        _ => edge.store((at + 1) % edges.len(), Ordering::SeqCst),
                    }
                    retries.fetch_add(1, Ordering::SeqCst);
                    None
                })
                .await;
                let version = taken.unwrap_or_else(|e| panic!("{e}"));
                acked.lock().unwrap().insert(key, (version, value));
            }
            retries.into_inner()
        })
    };
    wait_for(&acked, 20).await;

    let grace = Duration::from_secs(15);
    let per_step = |acked: &Acked| acked.lock().unwrap().len() + 10;
    for i in 0..t.cluster.central.len() {
        assert!(t.cluster.central[i].stop(grace), "central {i} drained and exited by itself");
        t.cluster.central[i].start().unwrap();
        t.cluster.wait_for_leader().await.unwrap();
        wait_for(&acked, per_step(&acked)).await;
    }
    for r in 0..t.cluster.regions.len() {
        assert!(t.cluster.regions[r].regional.stop(grace), "regional {r} drained and exited by itself");
        t.cluster.regions[r].regional.start().unwrap();
        t.cluster.wait_until_serving().await.unwrap();
        wait_for(&acked, per_step(&acked)).await;
    }
    for r in 0..t.cluster.regions.len() {
        for e in 0..t.cluster.regions[r].edges.len() {
            assert!(t.cluster.regions[r].edges[e].node.stop(grace), "edge {r}/{e} drained and exited by itself");
            t.cluster.regions[r].edges[e].node.start().unwrap();
            t.cluster.wait_until_serving().await.unwrap();
            wait_for(&acked, per_step(&acked)).await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let retries = writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    eprintln!("{} writes acknowledged, {retries} retries", acked.len());

    // Every acknowledged write is there, read at a central node at least as new as all of them.
    let newest = acked.values().map(|(v, _)| *v).max().unwrap();
    let mut store = t.central_store(0);
    for (key, (version, value)) in &acked {
        let req = kv_proto::store::v1::GetRequest {
            namespace_id: ns.clone(),
            key: key.clone(),
            min_version: newest,
            max_age_ms: 500,
            ..Default::default()
        };
        let got = store.get(req).await.unwrap().into_inner();
        let entry = got.entry.unwrap_or_else(|| panic!("acknowledged {key} was lost"));
        // A retried write may land twice (same value); the newest is at least the acknowledged one.
        assert!(entry.version >= *version && entry.value.as_ref() == value.as_bytes(), "{key}");
    }
    // And the edges serve them.
    let edge = t.edge(0).await.unwrap();
    let last = acked.keys().next_back().unwrap();
    let r = edge.get(&ns, last, None).await.unwrap();
    assert_eq!(r.value, acked[last].1.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_edge_answers_the_calls_it_took_and_takes_no_new_ones() {
    let mut t = Tiers::start(2).await.unwrap();
    let ns = t.namespace().await.unwrap();
    let edge = t.edge(A_PUSH).await.unwrap();
    // A streamed put whose value the client has not finished sending: a call in flight for
    // as long as the test wants.
    let (parts, rx) = tokio::sync::mpsc::channel(4);
    let header = api::PutStreamHeader { namespace_id: ns.clone(), key: "in-flight".into(), ..Default::default() };
    parts.send(api::PutStreamChunk { part: Some(api::put_stream_chunk::Part::Header(header)) }).await.unwrap();
    let mut raw = edge.raw();
    let call = tokio::spawn(async move { raw.put_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    let taken = || async { (t.edge_metric(A_PUSH, "kv_calls_in_flight").await >= 1.0).then_some(()) };
    eventually(Duration::from_secs(10), "the edge to take the put", taken).await.unwrap();

    // SIGTERM: the edge takes no new call (other edges serve on)...
    let node = &t.cluster.regions[0].edges[0].node;
    node.terminate();
    let (grpc, token) = (node.grpc.to_string(), t.cluster.admin_token.clone());
    let refuses = || async {
        match Client::connect(&grpc).await {
            Err(_) => Some(()),
            Ok(c) => c.with_token(&token).unwrap().raw().get(get(&ns)).await.err().map(drop),
        }
    };
    eventually(Duration::from_secs(10), "the draining edge to refuse new calls", refuses).await.unwrap();
    let other = t.edge(B_PUSH).await.unwrap();
    other.get(&ns, "in-flight", None).await.expect("another edge still serves");
    assert!(!call.is_finished(), "the put is still being sent");

    // ...and answers the put it took once its value has arrived, then exits.
    parts
        .send(api::PutStreamChunk { part: Some(api::put_stream_chunk::Part::Chunk("answered".into())) })
        .await
        .unwrap();
    drop(parts);
    let done = call.await.unwrap().expect("the put in flight is answered");
    assert!(done.into_inner().version > 0);
    assert!(t.cluster.regions[0].edges[0].node.stop(Duration::from_secs(15)), "the edge exits once drained");
    let value = other.get(&ns, "in-flight", None).await.unwrap().value;
    assert_eq!(value, "answered".as_bytes());
}

fn get(ns: &str) -> api::GetRequest {
    api::GetRequest {
        namespace_id: ns.into(),
        key: "in-flight".into(),
        cache_ttl: None,
        with_metadata: false,
        ..Default::default()
    }
}
