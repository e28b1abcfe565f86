//! TLS on every link (SPEC.md section 8, `kv_common::tls`), as users and operators meet it:
//! clients reach the edges over TLS (gRPC and REST) trusting the cluster CA, plaintext is
//! refused on every listener, the nodes' own APIs take only node certificates of the roles
//! they serve, a certificate from another CA is refused in the handshake, and a node that
//! reloads its certificate on SIGHUP stays in the cluster.

use kv_client::rest::RestClient;
use kv_client::Client;
use kv_common::auth::{authorized, Authorized};
use kv_common::error::http_status_of;
use kv_common::tls::{ClientSource, Connector, Role, Tls};
use kv_deploy::launch::{http_get, http_get_with, tls_dir, LocalCluster};
use kv_deploy::pki::Ca;
use kv_proto::admin::v1::{cluster_admin_client::ClusterAdminClient, MetricsRequest, TransferLeaderRequest};
use kv_proto::raft::v1::{raft_transport_client::RaftTransportClient, ReadIndexRequest};
use kv_proto::store::v1::{central_store_client::CentralStoreClient, GetRequest};
use kv_tests::eventually;
use kv_tests::tiers::{put, two_regions};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

async fn start(topology: &mut kv_deploy::topology::Topology, root: &Path) -> LocalCluster {
    topology.tls = true;
    LocalCluster::start(topology, root).await.expect("the cluster starts with TLS")
}

/// A channel to `addr` presenting `source`'s certificate (if any), with the admin token.
fn channel(addr: SocketAddr, source: ClientSource, token: &str) -> Authorized {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid address")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(Connector(source, &[]));
    authorized(ch, token).expect("an ASCII token")
}

/// A node identity of `role` signed by the cluster's CA (as a stolen or misissued one would be).
fn identity(root: &Path, role: Role, name: &str) -> ClientSource {
    let files = Ca::open_or_create(&tls_dir(root)).unwrap().issue(role, name, &["127.0.0.1".into()]).unwrap();
    ClientSource::Node(Tls::load(&files, role).unwrap().unwrap())
}

fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, what: &str) {
    let s = r.expect_err(what);
    assert_eq!(s.code(), code, "{what}: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_nodes_speak_tls_and_each_api_takes_only_the_roles_it_serves() {
    let root = tempfile::tempdir().unwrap();
    let cluster = start(&mut two_regions(2), root.path()).await;
    let ca = cluster.ca_file().expect("a TLS cluster has a CA");
    let token = cluster.admin_token.clone();
    let edges: Vec<_> = cluster.edges().map(|e| (e.node.grpc, e.node.http)).collect();

    // A user: gRPC over TLS at an edge of region a, read back at region b and over REST.
    let a = Client::connect_with_ca(&edges[0].0.to_string(), Some(&ca)).await.unwrap().with_token(&token).unwrap();
    let ns = a.create_namespace("over-tls").await.unwrap().id;
    a.put(put(&ns, "k", "sealed in transit")).await.unwrap();
    let b = Client::connect_with_ca(&edges[2].0.to_string(), Some(&ca)).await.unwrap().with_token(&token).unwrap();
    eventually(Duration::from_secs(10), "region b to read the put", || async {
        let got = b.get(&ns, "k", None).await.ok()?;
        (got.found && got.value == "sealed in transit".as_bytes()).then_some(())
    })
    .await
    .unwrap();
    let rest = RestClient::connect_with_ca(&format!("https://{}/client/v4", edges[2].1), None, Some(&token), Some(&ca))
        .await
        .expect("REST over https, trusting the cluster CA");
    let got = rest.get(&ns, "k", None).await.unwrap();
    assert_eq!(got.value, "sealed in transit".as_bytes());

    // Plaintext is refused on every listener, gRPC and HTTP.
    let nodes = cluster
        .central
        .iter()
        .chain(cluster.regions.iter().map(|r| &r.regional))
        .chain(cluster.edges().map(|e| &e.node));
    for n in nodes {
        if let Ok(plain) = Client::connect(&n.grpc.to_string()).await {
            let plain = plain.with_token(&token).unwrap();
            assert!(plain.list_namespaces().await.is_err(), "{} answered plaintext gRPC", n.name);
        }
        assert!(!matches!(http_get(n.http, "/health").await, Ok((200, _))), "{} answered plaintext HTTP", n.name);
        let (status, _) = http_get_with(cluster.client_tls.as_ref(), n.http, "/health").await.unwrap();
        assert_eq!(status, 200, "{} serves /health over TLS", n.name);
    }

    // The nodes' own APIs: a caller without a certificate is refused even with the admin token...
    let central = cluster.central[0].grpc;
    let regional = cluster.regions[0].regional.grpc;
    let tool = ClientSource::Fixed(cluster.client_tls.clone().unwrap());
    let get = GetRequest { namespace_id: ns.clone(), key: "k".into(), ..Default::default() };
    let mut store = CentralStoreClient::new(channel(central, tool.clone(), &token));
    let s = store.get(get.clone()).await.expect_err("no certificate, no store API");
    assert_eq!((s.code(), http_status_of(&s)), (Code::Unauthenticated, Some(401)), "{s:?}");
    // ...while the admin API is for operators' tools, and takes their tokens.
    let mut admin = ClusterAdminClient::new(channel(central, tool, &token));
    admin.metrics(MetricsRequest {}).await.expect("an operator's tool needs no certificate");

    // An edge's certificate may call its regional tier, but neither central API.
    let edge = identity(root.path(), Role::Edge, "intruder-edge");
    CentralStoreClient::new(channel(regional, edge.clone(), &token)).get(get.clone()).await.unwrap();
    let mut store = CentralStoreClient::new(channel(central, edge.clone(), &token));
    refused(store.get(get.clone()).await, Code::PermissionDenied, "an edge calling the central store API");
    let mut raft = RaftTransportClient::new(channel(central, edge.clone(), &token));
    refused(raft.read_index(ReadIndexRequest {}).await, Code::PermissionDenied, "an edge calling Raft");
    // Nor may it change the membership, although it holds the configured admin token.
    let mut admin_as_edge = ClusterAdminClient::new(channel(central, edge.clone(), &token));
    refused(admin_as_edge.metrics(MetricsRequest {}).await, Code::PermissionDenied, "an edge calling ClusterAdmin");
    // And a node dialling the tier above checks the role its certificate names: a central
    // node is not a regional tier.
    let dial = |addr: SocketAddr| {
        let edge = edge.clone();
        async move {
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_with_connector(Connector(edge, &[Role::Regional]))
                .await
        }
    };
    assert!(dial(regional).await.is_ok(), "a regional tier is what an edge dials");
    assert!(dial(central).await.is_err(), "a central node's certificate is not a regional tier's");

    // A regional tier's certificate may call the central store API, but not Raft.
    let reg = identity(root.path(), Role::Regional, "intruder-regional");
    CentralStoreClient::new(channel(central, reg.clone(), &token)).get(get.clone()).await.unwrap();
    let mut raft = RaftTransportClient::new(channel(central, reg, &token));
    refused(raft.read_index(ReadIndexRequest {}).await, Code::PermissionDenied, "a regional tier calling Raft");

    // A certificate of another CA fails the handshake: nothing is served.
    let other = tempfile::tempdir().unwrap();
    let files = Ca::open_or_create(other.path()).unwrap().issue(Role::Central, "rogue", &["127.0.0.1".into()]).unwrap();
    let rogue = ClientSource::Node(Tls::load(&files, Role::Central).unwrap().unwrap());
    let mut store = CentralStoreClient::new(channel(central, rogue, &token));
    refused(store.get(get).await, Code::Unavailable, "a node certificate of another CA");
}

/// The certificate the server at `addr` presents to a new connection (DER).
async fn presented(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>) -> Option<Vec<u8>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::from(addr.ip());
    let conn = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.ok()?;
    Some(conn.get_ref().1.peer_certificates()?.first()?.to_vec())
}

fn leaf_of(pem_file: &Path) -> Vec<u8> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::pem_file_iter(pem_file).unwrap().next().unwrap().unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reloads_its_certificate_on_sighup_and_stays_in_the_cluster() {
    let root = tempfile::tempdir().unwrap();
    let mut topology = two_regions(2);
    topology.regions.truncate(1);
    let mut cluster = start(&mut topology, root.path()).await;
    let tls = cluster.client_tls.clone().unwrap();
    let token = cluster.admin_token.clone();
    let addr = cluster.central[0].grpc;
    let old = presented(addr, &tls).await.unwrap();

    // A new certificate for central-1 (same name and role, new key), then SIGHUP.
    let files = Ca::open_or_create(&tls_dir(root.path()))
        .unwrap()
        .issue(Role::Central, &cluster.central[0].name, &["127.0.0.1".into(), "localhost".into()])
        .unwrap();
    let new = leaf_of(files.cert_file.as_deref().unwrap());
    assert_ne!(old, new);
    cluster.central[0].reload_certificates();
    eventually(Duration::from_secs(10), "central-1 to present its new certificate", || async {
        (presented(addr, &tls).await? == new).then_some(())
    })
    .await
    .unwrap();

    // Its peers reconnect to it (it serves the new certificate, and presents it when it
    // calls them), and it leads and commits writes.
    for i in 1..cluster.central.len() {
        cluster.central[i].stop(Duration::from_secs(30));
        cluster.central[i].start().unwrap();
        cluster.wait_for_leader().await.unwrap();
    }
    let admin = ClusterAdminClient::new(channel(addr, ClientSource::Fixed(tls.clone()), &token));
    eventually(Duration::from_secs(20), "central-1 to lead", || {
        let mut admin = admin.clone();
        let cluster = &cluster;
        async move {
            if cluster.central_leader().await == Some(0) {
                return Some(());
            }
            let _ = admin.transfer_leader(TransferLeaderRequest { to: 1 }).await;
            None
        }
    })
    .await
    .unwrap();
    let edge = cluster.edges().next().unwrap().node.grpc;
    let c = Client::connect_with_ca(&edge.to_string(), cluster.ca_file().as_deref())
        .await
        .unwrap()
        .with_token(&token)
        .unwrap();
    let ns = c.create_namespace("after-reload").await.unwrap().id;
    c.put(put(&ns, "k", "v")).await.expect("the reloaded leader commits writes");
    let m = admin.clone().metrics(MetricsRequest {}).await.unwrap().into_inner();
    assert_eq!(m.voters.len(), 3, "{m:?}");
}
