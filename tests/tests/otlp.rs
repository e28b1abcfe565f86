//! Traces over OTLP (`kv_common::telemetry`): a small in-process collector (the OTLP trace
//! service over gRPC) receives what every node exports, and one put from a client yields
//! one trace with spans at the edge, the regional tier and the central store, down to the
//! Raft commit, and then back down as the change is pushed to the regional tier and to an
//! edge holding the key, each span a child of the one that called (or pushed to) it.

use kv_client::Client;
use kv_deploy::launch::{free_port, LocalCluster};
use kv_tests::eventually;
use kv_tests::tiers::{put, two_regions};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One received span: its service, name, ids.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_id: Vec<u8>,
}

#[derive(Default, Clone)]
struct Collector(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                got.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_id: span.parent_span_id,
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_put_is_one_trace_across_every_tier() {
    let collector = Collector::default();
    let port = free_port().unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);

    let telemetry = format!("\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:{port}\"\nexport_interval_ms = 100\n");
    let mut topology = two_regions(2);
    topology.regions.truncate(1);
    topology.central.config.push_str(&telemetry);
    topology.regional_config.push_str(&telemetry);
    topology.edge_config.push_str(&telemetry);
    let root = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(&topology, root.path()).await.unwrap();
    let edge = cluster.edges().next().unwrap().node.grpc;
    let client = Client::connect(&edge.to_string()).await.unwrap().with_token(&cluster.admin_token).unwrap();
    let ns = client.create_namespace("traced").await.unwrap().id;
    // The edge now holds the key (as absent), so the put's change is pushed to it.
    client.get(&ns, "k", None).await.unwrap();

    // The client starts the trace, as an instrumented application would.
    let trace_id = rand::random::<u128>().max(1);
    let traceparent = format!("00-{trace_id:032x}-{:016x}-01", rand::random::<u64>().max(1));
    let mut req = tonic::Request::new(put(&ns, "k", "v"));
    req.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    client.raw().put(req).await.unwrap();

    let trace = trace_id.to_be_bytes().to_vec();
    let spans = eventually(Duration::from_secs(20), "the put's spans from every tier", || async {
        let spans: Vec<Received> = collector
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| s.trace_id == trace)
            .cloned()
            .collect();
        let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
        let named = |service: &str, name: &str| spans.iter().any(|s| s.service == service && s.name == name);
        let whole = named("central-store", "raft.commit_apply")
            && named("regional-tier", "regional.push")
            && named("edge-node", "edge.push");
        (services == BTreeSet::from(["central-store", "edge-node", "regional-tier"]) && whole).then_some(spans)
    })
    .await
    .unwrap_or_else(|e| {
        let got = collector.0.lock().unwrap_or_else(|p| p.into_inner());
        let mine: Vec<_> = got.iter().filter(|s| s.trace_id == trace).map(|s| (&s.service, &s.name)).collect();
        panic!("{e}: {} spans received, of the put's trace: {mine:?}", got.len())
    });

    // One tree: every span but the edge's call names a parent that is in the trace, and the
    // edge's call is the child of the client's span.
    let ids: HashMap<&[u8], &Received> = spans.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    let roots: Vec<&Received> = spans.iter().filter(|s| !ids.contains_key(s.parent_id.as_slice())).collect();
    assert_eq!(roots.len(), 1, "one root: {spans:#?}");
    assert_eq!((roots[0].service.as_str(), roots[0].name.as_str()), ("edge-node", "call"), "{spans:#?}");
    assert_eq!(
        format!("{:016x}", u64::from_be_bytes(roots[0].parent_id.clone().try_into().unwrap())),
        traceparent[36..52]
    );
    // The central store's commit is below the regional tier's call, which is below the edge's.
    let chain = |name: &str| {
        let mut chain = Vec::new();
        let mut at = spans.iter().find(|s| s.name == name).unwrap();
        loop {
            chain.push(at.service.as_str());
            match ids.get(at.parent_id.as_slice()) {
                Some(parent) => at = parent,
                None => break,
            }
        }
        chain.dedup();
        chain
    };
    assert_eq!(chain("raft.commit_apply"), ["central-store", "regional-tier", "edge-node"], "{spans:#?}");
    // The push came back down: the edge's push under the regional tier's, under the write.
    assert_eq!(
        chain("edge.push"),
        ["edge-node", "regional-tier", "central-store", "regional-tier", "edge-node"],
        "{spans:#?}"
    );
    let pushed = spans.iter().find(|s| s.name == "regional.push").unwrap();
    assert_eq!(ids[pushed.parent_id.as_slice()].name, "central.write", "{spans:#?}");
}
