//! The cluster across machines, with Linux network namespaces standing in for them: the
//! central group on one, each region on its own, joined by a bridge, every node bound to
//! its machine's own address, every link mutual TLS with certificates naming those
//! addresses, a software delay on each inter-region link, and partitions made with
//! iptables inside a namespace (the launcher's `--netns`). The test partitions a region
//! and heals it, kills the central leader, and kills a region's regional tier and brings
//! it back.
//!
//! It needs root (namespaces, iptables): without it, it says so and passes.

use kv_client::Client;
use kv_deploy::netns::Machines;
use kv_deploy::topology::Topology;
use kv_tests::eventually;
use kv_tests::tiers::{put, Tiers};
use std::time::Duration;

/// Regions a and b, 20 and 35 ms one way from the central machine, one edge each.
const TOPOLOGY: &str = r#"
tls = true
netns = true
[central]
voters = 3
[[regions]]
name = "a"
central_delay_ms = 20
edges = [{ name = "edge-a" }]
[[regions]]
name = "b"
central_delay_ms = 35
edges = [{ name = "edge-b" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_region_cluster_over_mutual_tls_survives_partitions_and_kills() {
    if let Some(why) = Machines::unsupported() {
        eprintln!("SKIPPED: the multi-host test needs root, ip and iptables: {why}");
        return;
    }
    let mut tiers = Tiers::start_topology(&Topology::parse(TOPOLOGY).unwrap()).await.unwrap();
    let machines = tiers.cluster.machines.as_ref().expect("the cluster runs on namespace machines");
    for n in tiers.cluster.central.iter().chain(tiers.cluster.edges().map(|e| &e.node)) {
        assert!(n.grpc.ip().to_string().starts_with("10.231."), "{} listens on {}", n.name, n.grpc);
    }
    // The test process is on the bridge, like a client elsewhere; it trusts the cluster CA.
    let (a, b) = (tiers.edge(0).await.unwrap(), tiers.edge(1).await.unwrap());
    let ns = a.create_namespace("multi-host").await.unwrap().id;
    let sees = |c: &Client, key: &'static str, value: &'static str| {
        let (c, ns) = (c.clone(), ns.clone());
        move || {
            let (c, ns) = (c.clone(), ns.clone());
            async move {
                let got = c.get(&ns, key, None).await.ok()?;
                (got.found && got.value == value.as_bytes()).then_some(())
            }
        }
    };

    // A write at region a is read at region b.
    a.put(put(&ns, "k1", "v1")).await.unwrap();
    eventually(Duration::from_secs(5), "region b to read k1", sees(&b, "k1", "v1")).await.unwrap();

    // Region b is cut off from the central machine: region a still writes; b has none of
    // it until the partition heals, then catches up.
    machines.partition("b", "central").unwrap();
    a.put(put(&ns, "k2", "v2")).await.unwrap();
    for _ in 0..3 {
        if let Ok(got) = b.get(&ns, "k2", None).await {
            assert!(!got.found, "region b read k2 through a partition");
        }
    }
    machines.heal("b").unwrap();
    eventually(Duration::from_secs(15), "region b to read k2 after healing", sees(&b, "k2", "v2")).await.unwrap();

    // The central leader is killed: the other two voters elect one and writes go on.
    let leader = tiers.cluster.central_leader().await.expect("a leader");
    tiers.cluster.central[leader].kill();
    eventually(Duration::from_secs(20), "a write after the leader died", || async {
        a.put(put(&ns, "k3", "v3")).await.ok()
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(10), "region b to read k3", sees(&b, "k3", "v3")).await.unwrap();

    // Region a's regional tier is killed: its edge cannot write; once it is back, it can.
    tiers.cluster.regions[0].regional.kill();
    let refused = a.put(put(&ns, "k4", "down")).await.expect_err("no regional tier, no write");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    tiers.cluster.regions[0].regional.start().unwrap();
    eventually(Duration::from_secs(30), "a write after region a's tier is back", || async {
        a.put(put(&ns, "k4", "v4")).await.ok()
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(10), "region b to read k4", sees(&b, "k4", "v4")).await.unwrap();
}
