//! `kv admin members|add-learner|promote|remove|transfer-leader|snapshot`: the central Raft
//! group's membership, through any central node (it forwards what must run on the leader).
//! Membership changes take the cluster's configured admin token (docs/security.md).

use crate::{say, Done, Fail, Output};
use clap::Subcommand;
use kv_common::auth::Bearer;
use kv_proto::admin::v1::{self as pb, cluster_admin_client::ClusterAdminClient};
use serde_json::json;
use std::collections::BTreeSet;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Debug, clap::Args)]
pub struct Admin {
    /// A central node's gRPC address.
    #[arg(long, env = "KV_CENTRAL", default_value = "127.0.0.1:7101")]
    central: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// The group as the node sees it: leader, voters, learners, log positions.
    Members,
    /// Adds a node (started empty, at `addr`) that receives the log; waits until it has caught up.
    AddLearner {
        id: u64,
        addr: String,
        /// Return once it is added, before it has caught up.
        #[arg(long)]
        no_wait: bool,
    },
    /// Makes learners voters.
    #[command(arg_required_else_help = true)]
    Promote { ids: Vec<u64> },
    /// Takes voters out of the group (a dead one too, as long as a majority remains).
    #[command(arg_required_else_help = true)]
    Remove { ids: Vec<u64> },
    /// Hands leadership to a voter once it has the leader's whole log.
    TransferLeader { id: u64 },
    /// Builds a snapshot on that node now and purges the log it covers.
    Snapshot,
    /// After a new key was added last to every central node's key file: every node seals
    /// with it from now on and re-seals its older records; waits until they are all re-sealed
    /// (then the old key may leave the key files).
    RotateKey {
        /// Return once every node seals with the new key, before the re-sealing is done.
        #[arg(long)]
        no_wait: bool,
    },
}

/// How long `rotate-key` waits for the re-sealing.
const RESEAL_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

type AdminClient = ClusterAdminClient<InterceptedService<Channel, Bearer>>;

fn shown(m: &pb::ClusterMetrics) -> serde_json::Value {
    let members = |ms: &[pb::Member]| ms.iter().map(|m| json!({"id": m.node_id, "addr": m.addr})).collect::<Vec<_>>();
    json!({
        "node_id": m.node_id, "state": m.state, "term": m.current_term, "leader_id": m.leader_id,
        "last_log_index": m.last_log_index, "committed_index": m.committed_index, "applied_index": m.applied_index,
        "snapshot_index": m.snapshot_index, "voters": members(&m.voters), "learners": members(&m.learners),
        "sealing_key": m.sealing_key, "resealing": m.resealing,
        "sealed_records": m.sealed.iter().map(|s| (s.key_id.to_string(), json!(s.records))).collect::<serde_json::Map<_, _>>(),
    })
}

fn text(m: &pb::ClusterMetrics) -> String {
    let mut lines = vec![format!(
        "node {} is {} in term {}; leader {}; log {} committed {} applied {}",
        m.node_id,
        m.state,
        m.current_term,
        m.leader_id.map_or("unknown".into(), |l| l.to_string()),
        m.last_log_index,
        m.committed_index,
        m.applied_index
    )];
    lines.extend(m.voters.iter().map(|v| format!("  voter   {}  {}", v.node_id, v.addr)));
    lines.extend(m.learners.iter().map(|l| format!("  learner {}  {}", l.node_id, l.addr)));
    let sealed: Vec<String> = m.sealed.iter().map(|s| format!("key {}: {}", s.key_id, s.records)).collect();
    lines.push(format!(
        "  sealing with key {}; records per key: {}{}",
        m.sealing_key,
        if sealed.is_empty() { "not counted since the node started".into() } else { sealed.join(", ") },
        if m.resealing { " (re-sealing)" } else { "" }
    ));
    lines.join("\n")
}

fn voters(m: &pb::ClusterMetrics) -> BTreeSet<u64> {
    m.voters.iter().map(|v| v.node_id).collect()
}

/// Waits until every node at `members` has re-sealed all its records with `key`.
async fn resealed(members: &[String], key: u32, token: Option<&str>, ca: Option<&std::path::Path>) -> Done {
    let deadline = std::time::Instant::now() + RESEAL_WAIT;
    for addr in members {
        let channel =
            kv_common::client::tool_channel(addr, ca).await.map_err(|e| Fail::Unreachable(format!("{addr}: {e:#}")))?;
        let mut c: AdminClient = ClusterAdminClient::with_interceptor(channel, Bearer::new(token)?);
        loop {
            let m = c.metrics(pb::MetricsRequest {}).await?.into_inner();
            let done =
                !m.resealing && !m.sealed.is_empty() && m.sealed.iter().all(|s| s.key_id == key || s.records == 0);
            if done {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(Fail::Unreachable(format!(
                    "node {} has not re-sealed its records within {RESEAL_WAIT:?}",
                    m.node_id
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

pub async fn run(admin: Admin, token: Option<&str>, ca: Option<&std::path::Path>, output: Output) -> Done {
    let channel = kv_common::client::tool_channel(&admin.central, ca)
        .await
        .map_err(|e| Fail::Unreachable(format!("{}: {e:#}", admin.central)))?;
    let mut c: AdminClient = ClusterAdminClient::with_interceptor(channel, Bearer::new(token)?);
    let now = c.metrics(pb::MetricsRequest {}).await?.into_inner();
    let after = match admin.cmd {
        Cmd::Members => now,
        Cmd::AddLearner { id, addr, no_wait } => {
            let member = pb::Member { node_id: id, addr };
            let r = c.add_learner(pb::AddLearnerRequest { member: Some(member), blocking: !no_wait }).await?;
            r.into_inner().metrics.unwrap_or_default()
        }
        Cmd::Promote { ids } => {
            let learners: BTreeSet<u64> = now.learners.iter().map(|l| l.node_id).collect();
            if let Some(id) = ids.iter().find(|id| !learners.contains(id)) {
                return Err(Fail::Input(anyhow::anyhow!("node {id} is not a learner: add it with add-learner first")));
            }
            let mut set = voters(&now);
            set.extend(ids);
            let req = pb::ChangeMembershipRequest { voters: set.into_iter().collect(), retain: true };
            c.change_membership(req).await?.into_inner().metrics.unwrap_or_default()
        }
        Cmd::Remove { ids } => {
            let mut set = voters(&now);
            if let Some(id) = ids.iter().find(|id| !set.contains(id)) {
                return Err(Fail::Input(anyhow::anyhow!("node {id} is not a voter")));
            }
            set.retain(|v| !ids.contains(v));
            if set.is_empty() {
                return Err(Fail::Input(anyhow::anyhow!("that would leave no voter")));
            }
            let req = pb::ChangeMembershipRequest { voters: set.into_iter().collect(), retain: false };
            c.change_membership(req).await?.into_inner().metrics.unwrap_or_default()
        }
        Cmd::TransferLeader { id } => {
            c.transfer_leader(pb::TransferLeaderRequest { to: id }).await?.into_inner().metrics.unwrap_or_default()
        }
        Cmd::Snapshot => {
            c.snapshot(pb::SnapshotRequest { purge: true }).await?.into_inner().metrics.unwrap_or_default()
        }
        Cmd::RotateKey { no_wait } => {
            let rotated = c.rotate_key(pb::RotateKeyRequest {}).await?.into_inner();
            let key = rotated.nodes.first().map_or(0, |n| n.sealing_key);
            if !no_wait {
                let members: Vec<String> = now.voters.iter().chain(&now.learners).map(|m| m.addr.clone()).collect();
                resealed(&members, key, token, ca).await?;
            }
            let nodes: Vec<_> = rotated
                .nodes
                .iter()
                .map(|n| json!({"node_id": n.node_id, "sealing_key": n.sealing_key, "key_ids": n.key_ids}))
                .collect();
            let done = if no_wait { "re-sealing older records in the background" } else { "every record re-sealed" };
            say(output, json!({"sealing_key": key, "nodes": nodes, "resealed": !no_wait}), || {
                format!("{} central nodes seal with key {key}; {done}", rotated.nodes.len())
            });
            return Ok(());
        }
    };
    say(output, shown(&after), || text(&after));
    Ok(())
}
