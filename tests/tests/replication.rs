//! Replication and durability of a 3-node central cluster of real processes.

use kv_proto::admin::v1::SnapshotRequest;
use kv_proto::store::v1 as pb;
use kv_tests::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Acknowledged writes: key -> (version, value).
type Acked = BTreeMap<String, (u64, Vec<u8>)>;

/// Asserts that node `i` holds every acknowledged write with its value.
async fn assert_has_all(c: &Cluster, i: usize, ns: &str, acked: &Acked) {
    let max_version = acked.values().map(|(v, _)| *v).max().unwrap_or(0);
    for (key, (version, value)) in acked {
        let e = read_at(c, i, ns, key, max_version).await.unwrap();
        let e = e.unwrap_or_else(|| panic!("node {} lost acknowledged key {key}", c.nodes[i].id));
        assert_eq!(&e.value, value, "node {} has a wrong value for {key}", c.nodes[i].id);
        assert_eq!(e.version, *version, "node {} has a wrong version for {key}", c.nodes[i].id);
    }
}

/// Puts `count` keys through node `i` and returns what was acknowledged.
async fn put_keys(c: &Cluster, i: usize, ns: &str, prefix: &str, count: usize) -> Acked {
    let mut acked = BTreeMap::new();
    for k in 0..count {
        let key = format!("{prefix}{k:05}");
        let value = format!("value of {key}").into_bytes();
        let r = write_one(c, i, ns, put_op(&key, &value)).await.unwrap();
        assert!(r.error.is_none(), "put {key} failed: {:?}", r.error);
        acked.insert(key, (r.version, value));
    }
    acked
}

/// A client that writes without pause through the nodes the cluster had when it started,
/// trying the next one whenever one fails, and keeps what was acknowledged.
struct Writer {
    acked: Arc<Mutex<Acked>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Writer {
    fn start(c: &Cluster, ns: &str) -> Writer {
        let acked: Arc<Mutex<Acked>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients: Vec<_> = (0..c.nodes.len()).map(|i| c.store(i)).collect();
        let (a, s, ns) = (acked.clone(), stop.clone(), ns.to_owned());
        let task = tokio::spawn(async move {
            let (n, target, errors) = (AtomicU64::new(0), AtomicUsize::new(0), AtomicU64::new(0));
            while !s.load(Ordering::SeqCst) {
                // Tried at one node after another until one takes a write; an attempt whose
                // outcome is unknown leaves its key unused (it may or may not be written).
                let written = eventually(Duration::from_secs(60), "a node to take a write", || async {
                    let i = n.fetch_add(1, Ordering::SeqCst);
                    let (key, value) = (format!("k{i:06}"), format!("v{i}").into_bytes());
                    let req = pb::WriteRequest {
                        namespace_id: ns.clone(),
                        ops: vec![put_op(&key, &value)],
                        ..Default::default()
                    };
                    let at = target.load(Ordering::SeqCst);
                    let mut client = clients[at].clone();
                    match tokio::time::timeout(Duration::from_secs(3), client.write(req)).await {
                        Ok(Ok(reply)) => {
                            let r = &reply.get_ref().results[0];
                            assert!(r.error.is_none(), "unexpected item error {:?}", r.error);
                            Some((key, r.version, value))
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::SeqCst);
                            target.store((at + 1) % clients.len(), Ordering::SeqCst);
                            None
                        }
                    }
                })
                .await;
                let (key, version, value) = written.unwrap_or_else(|e| panic!("{e}"));
                a.lock().unwrap().insert(key, (version, value));
            }
            errors.into_inner()
        });
        Writer { acked, stop, task }
    }

    /// Waits until `count` more writes are acknowledged than now.
    async fn more(&self, count: usize) {
        let at_least = self.acked.lock().unwrap().len() + count;
        let reached = || async { (self.acked.lock().unwrap().len() >= at_least).then_some(()) };
        eventually(Duration::from_secs(60), "acknowledged writes to go on", reached).await.unwrap();
    }

    /// Stops writing: what was acknowledged, and how many attempts failed.
    async fn stop(self) -> (Acked, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let errors = self.task.await.unwrap();
        let acked = self.acked.lock().unwrap().clone();
        (acked, errors)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_are_readable_from_every_node() {
    let c = Cluster::start(3, ClusterOptions::without_rate_limit()).await.unwrap();
    let ns = c.create_namespace(1, "any-node").await.unwrap();
    let mut acked = BTreeMap::new();
    for i in 0..3 {
        acked.extend(put_keys(&c, i, &ns, &format!("via-{i}-"), 5).await);
    }
    for i in 0..3 {
        assert_has_all(&c, i, &ns, &acked).await;
    }
    // A delete through a follower is seen everywhere too.
    let follower = (c.leader().await.unwrap() + 1) % 3;
    let del = write_one(&c, follower, &ns, delete_op("via-0-00000")).await.unwrap();
    assert!(del.version > 0);
    for i in 0..3 {
        assert_eq!(read_at(&c, i, &ns, "via-0-00000", del.version).await.unwrap(), None);
    }
}

/// The peer benchmarks link the voters directly (`direct`), as etcd's members are: no
/// launcher link sits between them, and they replicate as they do through links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voters_linked_directly_replicate_without_links() {
    let options = ClusterOptions { direct_peers: true, ..ClusterOptions::without_rate_limit() };
    let c = Cluster::start(3, options).await.unwrap();
    assert!(c.local.peer_links.iter().flatten().all(Option::is_none), "no link between voters");
    let ns = c.create_namespace(0, "direct").await.unwrap();
    let acked = put_keys(&c, c.leader().await.unwrap(), &ns, "direct-", 5).await;
    for i in 0..3 {
        assert_has_all(&c, i, &ns, &acked).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3, ClusterOptions::default()).await.unwrap();
    let ns = c.create_namespace(0, "failover").await.unwrap();
    let writer = Writer::start(&c, &ns);

    // Let writes flow, then kill -9 the leader while they do.
    writer.more(50).await;
    let old_leader = c.leader().await.unwrap();
    c.kill(old_leader);
    // Writes must resume under a new leader.
    writer.more(50).await;
    let (acked, errors) = writer.stop().await;
    let new_leader = c.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    assert_ne!(new_leader, old_leader);
    eprintln!("acknowledged {} writes, {errors} failed attempts around the failover", acked.len());

    for i in (0..3).filter(|i| *i != old_leader) {
        assert_has_all(&c, i, &ns, &acked).await;
    }
    // The killed node comes back and catches up by log.
    c.restart(old_leader).unwrap();
    assert_has_all(&c, old_leader, &ns, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_and_restarting_every_node_loses_nothing() {
    let mut c = Cluster::start(3, ClusterOptions::default()).await.unwrap();
    let ns = c.create_namespace(0, "restart-all").await.unwrap();
    let acked = put_keys(&c, 0, &ns, "r", 30).await;
    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.restart(i).unwrap();
    }
    c.wait_until_all_follow(Duration::from_secs(30)).await.unwrap();
    for i in 0..3 {
        assert_has_all(&c, i, &ns, &acked).await;
    }
    // And the cluster still takes writes.
    let more = put_keys(&c, 2, &ns, "after-", 3).await;
    assert_has_all(&c, 0, &ns, &more).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_catches_up_by_snapshot_after_the_log_was_purged() {
    let mut c = Cluster::start(3, ClusterOptions::default()).await.unwrap();
    let ns = c.create_namespace(0, "snapshot").await.unwrap();
    let mut acked = put_keys(&c, 0, &ns, "s", 40).await;
    // A large value travels through the snapshot as well.
    let big = vec![7u8; 3 << 20];
    let r = write_one(&c, 0, &ns, put_op("big", &big)).await.unwrap();
    acked.insert("big".into(), (r.version, big));

    let leader = c.leader().await.unwrap();
    let reply = c.admin(leader).snapshot(SnapshotRequest { purge: true }).await.unwrap();
    let m = reply.into_inner().metrics.unwrap();
    assert!(m.purged_index >= r.version, "log not purged: {m:?}");

    let fresh = c.start_new_node().unwrap();
    c.add_learner(fresh).await.unwrap();
    assert_has_all(&c, fresh, &ns, &acked).await;
    let metrics = c.scrape(fresh).await.unwrap();
    assert_eq!(metric_value(&metrics, "kv_central_snapshots_installed_total"), Some(1.0), "{metrics}");
    // Writes after the snapshot reach the learner by log.
    let later = put_keys(&c, 0, &ns, "late", 3).await;
    assert_has_all(&c, fresh, &ns, &later).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_can_be_transferred() {
    let c = Cluster::start(3, ClusterOptions::default()).await.unwrap();
    let leader = c.leader().await.unwrap();
    let target = (leader + 1) % 3;
    let to = c.nodes[target].id;
    let mut admin = c.admin(leader);
    admin.transfer_leader(kv_proto::admin::v1::TransferLeaderRequest { to }).await.unwrap();
    let took_over = || async { (c.metrics(target).await.ok()?.leader_id == Some(to)).then_some(()) };
    eventually(Duration::from_secs(10), "the target to lead", took_over).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_formed_through_the_admin_api() {
    use kv_proto::admin::v1::{ChangeMembershipRequest, InitializeRequest, Member};
    let c = Cluster::start_bare(3, ClusterOptions::default()).await.unwrap();
    let me = Member { node_id: c.nodes[0].id, addr: c.nodes[0].grpc.to_string() };
    let init = retry_unavailable(|| {
        let me = me.clone();
        let mut admin = c.admin(0);
        async move { admin.initialize(InitializeRequest { members: vec![me] }).await }
    })
    .await
    .unwrap();
    assert_eq!(init.metrics.unwrap().voters.len(), 1);
    c.wait_for_leader(Duration::from_secs(20)).await.unwrap();
    // Initializing twice is refused.
    let again = c.admin(0).initialize(InitializeRequest { members: vec![me.clone()] }).await;
    assert_eq!(again.unwrap_err().code(), tonic::Code::FailedPrecondition);

    c.add_learner(1).await.unwrap();
    c.add_learner(2).await.unwrap();
    let voters: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
    // Sent to a learner, the change is forwarded to the leader.
    let change = ChangeMembershipRequest { voters: voters.clone(), retain: false };
    let reply = retry_unavailable(|| {
        let (mut admin, change) = (c.admin(2), change.clone());
        async move { admin.change_membership(change).await }
    })
    .await
    .unwrap();
    let got: Vec<u64> = reply.metrics.unwrap().voters.iter().map(|m| m.node_id).collect();
    assert_eq!(got, voters);

    let ns = c.create_namespace(2, "formed").await.unwrap();
    let acked = put_keys(&c, 1, &ns, "f", 5).await;
    for i in 0..3 {
        assert_has_all(&c, i, &ns, &acked).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_of_the_maximum_size_replicates_over_a_150_ms_round_trip_between_voters() {
    // Heartbeats must outlast the round trip between voters: set for this link, as an
    // operator of voters in different regions would.
    let timing = "[raft]\nheartbeat_ms = 300\nelection_min_ms = 1000\nelection_max_ms = 2000\n";
    let c = Cluster::start(3, ClusterOptions { peer_delay_ms: 75, extra_toml: timing.into(), ..Default::default() })
        .await
        .unwrap();
    let ns = c.create_namespace(0, "far").await.unwrap();
    let value: Vec<u8> = (0..kv_common::Limits::default().max_value_bytes).map(|i| (i % 253) as u8).collect();
    let r = write_one(&c, 0, &ns, put_op("large", &value)).await.unwrap();
    assert!(r.error.is_none(), "{:?}", r.error);
    // Every voter holds it, and keeps up with what follows.
    let later = write_one(&c, 0, &ns, put_op("after", b"v")).await.unwrap();
    for i in 0..3 {
        let e = read_at(&c, i, &ns, "large", later.version).await.unwrap().expect("large value present");
        assert!(e.value == value, "node {i} returned a different value");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_of_the_maximum_size_round_trips_through_raft() {
    let c = Cluster::start(3, ClusterOptions::default()).await.unwrap();
    let ns = c.create_namespace(0, "large").await.unwrap();
    let value: Vec<u8> = (0..kv_common::Limits::default().max_value_bytes).map(|i| (i % 251) as u8).collect();
    let r = write_one(&c, 1, &ns, put_op("large", &value)).await.unwrap();
    assert!(r.error.is_none(), "{:?}", r.error);
    for i in 0..3 {
        let e = read_at(&c, i, &ns, "large", r.version).await.unwrap().expect("large value present");
        assert!(e.value == value, "node {i} returned a different value");
    }
    // The change feed announces it without carrying 25 MiB inline.
    let mut feed =
        c.store(2).watch(pb::WatchRequest { from_version: r.version - 1, from_now: false }).await.unwrap().into_inner();
    let event = feed.message().await.unwrap().unwrap().event.unwrap();
    match event {
        pb::watch_event::Event::Changes(set) => {
            assert_eq!(set.version, r.version);
            assert!(set.changes[0].value_omitted && set.changes[0].value.is_empty());
        }
        other => panic!("expected the change set, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_one_key_get_distinct_versions_and_the_last_wins() {
    const N: usize = 200;
    let c = Cluster::start(3, ClusterOptions::without_rate_limit()).await.unwrap();
    let ns = c.create_namespace(0, "same-key").await.unwrap();
    let leader = c.leader().await.unwrap();
    // One shared connection, many requests in flight: the leader batches them.
    let client = c.store(leader);
    let writes = (0..N).map(|i| {
        let mut s = client.clone();
        let req = pb::WriteRequest {
            namespace_id: ns.clone(),
            ops: vec![put_op("k", format!("v{i}").as_bytes())],
            ..Default::default()
        };
        tokio::spawn(async move { (i, s.write(req).await.expect("write").into_inner().results[0].version) })
    });
    let mut versions = Vec::new();
    for w in writes {
        versions.push(w.await.unwrap());
    }
    let mut seen: Vec<u64> = versions.iter().map(|(_, v)| *v).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), N, "two writes of one key shared a version: {versions:?}");
    let (winner, top) = versions.iter().max_by_key(|(_, v)| *v).copied().unwrap();
    for i in 0..3 {
        let e = read_at(&c, i, &ns, "k", top).await.unwrap().unwrap();
        assert_eq!(e.version, top);
        assert_eq!(e.value, format!("v{winner}").into_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_sweeps_expired_entries_and_old_tombstones_on_every_replica() {
    let opts = ClusterOptions {
        extra_toml:
            "sweep_interval_ms = 200\n[limits]\nmin_expiration_ttl_secs = 1\nkey_write_interval_ms = 0\n[feed]\nretention = 4\ntrim_every = 4\n"
                .into(),
        ..Default::default()
    };
    let c = Cluster::start(3, opts).await.unwrap();
    let ns = c.create_namespace(0, "sweep").await.unwrap();
    let short = pb::WriteOp {
        key: "short".into(),
        op: Some(pb::write_op::Op::Put(pb::Put {
            value: b"v".to_vec().into(),
            expiration_ttl: Some(1),
            ..Default::default()
        })),
        if_version: None,
    };
    assert!(write_one(&c, 0, &ns, short).await.unwrap().error.is_none());
    put_keys(&c, 0, &ns, "t", 1).await;
    assert!(write_one(&c, 0, &ns, delete_op("t00000")).await.unwrap().error.is_none());
    // Later writes move the applied index past the tombstone's retention window.
    let last = put_keys(&c, 0, &ns, "later", 6).await;
    let max_version = last.values().map(|(v, _)| *v).max().unwrap();
    for i in 0..3 {
        let swept = || async {
            let text = c.scrape(i).await.ok()?;
            (metric_value(&text, "kv_central_swept_total")? >= 2.0).then_some(())
        };
        eventually(Duration::from_secs(20), "the expired entry and the tombstone to be swept", swept).await.unwrap();
        assert_eq!(read_at(&c, i, &ns, "short", max_version).await.unwrap(), None);
    }
}

/// Runs `kv --output json admin --central <node> ...` with the cluster's admin token.
fn kv_admin(c: &Cluster, node: usize, args: &[&str]) -> serde_json::Value {
    let bin = kv_deploy::launch::bin_dir().expect("the binaries' directory").join("kv");
    let out = std::process::Command::new(bin)
        .args(["--output", "json", "admin", "--central", &c.nodes[node].grpc.to_string()])
        .args(args)
        .env("KV_TOKEN", &c.local.admin_token)
        .output()
        .expect("kv runs");
    assert!(out.status.success(), "kv admin {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("kv prints JSON")
}

fn voter_ids(members: &serde_json::Value) -> Vec<u64> {
    members["voters"].as_array().unwrap().iter().map(|v| v["id"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_grows_replaces_a_dead_voter_and_shrinks_through_the_cli_while_writes_run() {
    let mut c = Cluster::start(3, ClusterOptions::default()).await.unwrap();
    let ns = c.create_namespace(0, "membership").await.unwrap();
    let writer = Writer::start(&c, &ns);
    writer.more(30).await;

    // Grow 3 -> 5: two empty nodes join as learners, catch up, and become voters.
    let (four, five) = (c.start_new_node().unwrap(), c.start_new_node().unwrap());
    for i in [four, five] {
        let (id, addr) = (c.nodes[i].id.to_string(), c.nodes[i].grpc.to_string());
        kv_admin(&c, 0, &["add-learner", &id, &addr]);
    }
    let grown = kv_admin(&c, 1, &["promote", "4", "5"]);
    assert_eq!(voter_ids(&grown), vec![1, 2, 3, 4, 5]);
    writer.more(30).await;

    // A voter dies (kill -9); a new node takes its place.
    let leader = c.leader().await.unwrap();
    let dead = (leader + 1) % 3;
    c.kill(dead);
    let six = c.start_new_node().unwrap();
    let (id, addr) = (c.nodes[six].id.to_string(), c.nodes[six].grpc.to_string());
    kv_admin(&c, leader, &["add-learner", &id, &addr]);
    kv_admin(&c, leader, &["promote", &id]);
    let dead_id = c.nodes[dead].id.to_string();
    let replaced = kv_admin(&c, leader, &["remove", &dead_id]);
    assert!(!voter_ids(&replaced).contains(&c.nodes[dead].id) && voter_ids(&replaced).contains(&6));
    writer.more(30).await;

    // Shrink back to three voters.
    let shrunk = kv_admin(&c, leader, &["remove", "4", "5"]);
    let mut left = voter_ids(&shrunk);
    left.sort_unstable();
    assert_eq!(left.len(), 3, "{shrunk}");
    writer.more(30).await;
    let (acked, errors) = writer.stop().await;
    eprintln!("acknowledged {} writes, {errors} failed attempts", acked.len());

    // Every acknowledged write is on every remaining voter.
    for id in left {
        let i = c.nodes.iter().position(|n| n.id == id).unwrap();
        assert_has_all(&c, i, &ns, &acked).await;
    }
    let members = kv_admin(&c, six, &["members"]);
    assert!(members["leader_id"].as_u64().is_some(), "{members}");
}
