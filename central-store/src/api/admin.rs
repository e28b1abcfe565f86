//! Cluster administration: membership, leadership, snapshots and Raft metrics.

use crate::error::{StoreError, StoreResult};
use crate::node::Node;
use crate::routing::{forwarded, route, Route};
use crate::types::{Node as RaftNode, NodeId};
use kv_common::auth::{Principal, ADMIN_TOKEN_ID};
use kv_common::client::node_channel;
use kv_common::KvError;
use kv_proto::admin::v1::{self as pb, cluster_admin_client::ClusterAdminClient, cluster_admin_server::ClusterAdmin};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// How long an admin call waits for the cluster to reach the state it asked for.
const ADMIN_WAIT: Duration = Duration::from_secs(10);

/// The ClusterAdmin gRPC service.
pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    pub fn new(node: Arc<Node>) -> Self {
        AdminService { node }
    }

    fn reply(&self) -> Response<pb::AdminReply> {
        Response::new(pb::AdminReply { metrics: Some(cluster_metrics(&self.node)) })
    }

    /// Waits until the Raft metrics satisfy `cond`.
    async fn wait_for(
        &self,
        what: &str,
        cond: impl Fn(&openraft::RaftMetrics<NodeId, RaftNode>) -> bool + Send,
    ) -> StoreResult<()> {
        self.node
            .raft
            .wait(Some(ADMIN_WAIT))
            .metrics(cond, what)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Raft(format!("waiting for {what}: {e}")))
    }

    /// Leader side of a transfer. openraft 0.9 has no transfer message and a voter refuses
    /// to vote while its leader lease holds, so: pause the election timers of every other
    /// voter, stop heartbeats until the leases lapse, then let the target (which holds the
    /// whole log) campaign. Everything is switched back on whatever the outcome.
    pub(crate) async fn hand_over(&self, to: NodeId) -> StoreResult<()> {
        let node = &self.node;
        let members: Vec<(NodeId, String)> = {
            let m = node.raft.metrics().borrow().membership_config.clone();
            m.membership().voter_ids().filter_map(|id| Some((id, m.membership().get_node(&id)?.addr.clone()))).collect()
        };
        if !members.iter().any(|(id, _)| *id == to) {
            return Err(StoreError::Precondition(format!("node {to} is not a voter")));
        }
        let last = node.raft.metrics().borrow().last_log_index;
        self.wait_for("the target to hold the leader's whole log", |m| {
            m.replication.as_ref().and_then(|r| r.get(&to)).and_then(|l| l.as_ref()).map(|l| l.index) >= last
        })
        .await?;

        let others: Vec<&(NodeId, String)> = members.iter().filter(|(id, _)| *id != to && *id != node.id).collect();
        self.set_elections(&others, false).await;
        node.raft.runtime_config().elect(false);
        node.raft.runtime_config().heartbeat(false);
        let lease = Duration::from_millis(node.config.raft.election_max_ms + node.config.raft.heartbeat_ms);
        tokio::time::sleep(lease).await;
        let campaign = async {
            let target_addr = members.iter().find(|(id, _)| *id == to).map_or("", |(_, a)| a.as_str());
            let mut target = ClusterAdminClient::new(node_channel(node.peers.channel(to, target_addr)?));
            target
                .transfer_leader(forwarded(pb::TransferLeaderRequest { to }))
                .await
                .map_err(|s| StoreError::Raft(s.message().to_owned()))
        }
        .await;
        node.raft.runtime_config().heartbeat(true);
        node.raft.runtime_config().elect(true);
        self.set_elections(&others, true).await;
        campaign.map(|_| ())
    }

    /// Switches the election timers of `nodes`; best effort (a node that cannot be reached
    /// keeps its timer, which only makes the transfer less certain).
    async fn set_elections(&self, nodes: &[&(NodeId, String)], enabled: bool) {
        for (id, addr) in nodes {
            let Ok(ch) = self.node.peers.channel(*id, addr) else { continue };
            if let Err(e) =
                ClusterAdminClient::new(node_channel(ch)).set_election(pb::SetElectionRequest { enabled }).await
            {
                tracing::warn!(%addr, error = %e, "could not switch the election timer");
            }
        }
    }
}

/// This node's view of the Raft group.
pub fn cluster_metrics(node: &Node) -> pb::ClusterMetrics {
    let m = node.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let member = |id: &NodeId| pb::Member {
        node_id: *id,
        addr: membership.get_node(id).map(|n| n.addr.clone()).unwrap_or_default(),
    };
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    pb::ClusterMetrics {
        node_id: m.id,
        state: format!("{:?}", m.state),
        current_term: m.current_term,
        leader_id: m.current_leader,
        last_log_index: m.last_log_index.unwrap_or(0),
        committed_index: node.reader.committed(),
        applied_index: m.last_applied.map_or(0, |l| l.index),
        snapshot_index: m.snapshot.map_or(0, |l| l.index),
        purged_index: m.purged.map_or(0, |l| l.index),
        voters: voters.iter().map(member).collect(),
        learners: membership.learner_ids().map(|id| member(&id)).collect(),
        sealing_key: node.sealer.sealing_key().into(),
        sealed: node
            .resealer
            .counts()
            .unwrap_or_default()
            .into_iter()
            .map(|(id, records)| pb::SealedCount { key_id: id.into(), records })
            .collect(),
        resealing: node.resealer.running(),
    }
}

macro_rules! on_leader {
    ($self:ident, $req:ident, $method:ident) => {
        if let Route::Leader(ch) = route(&$self.node, &$req)? {
            return ClusterAdminClient::new(node_channel(ch)).$method(forwarded($req.into_inner())).await;
        }
    };
}

/// Calls that name addresses this cluster will then call with its own credential (the
/// configured admin token) take that token itself, not a stored admin token: otherwise a
/// stored token, revocable, could have the nodes hand over the one that is not.
fn configured_token_only<T>(req: &Request<T>) -> Result<(), Status> {
    let configured = req.extensions().get::<Principal>().is_some_and(|p| p.token_id == ADMIN_TOKEN_ID);
    if configured {
        return Ok(());
    }
    Err(KvError::PermissionDenied("membership changes take the cluster's configured admin token".into()).to_status())
}

#[tonic::async_trait]
impl ClusterAdmin for AdminService {
    async fn initialize(&self, req: Request<pb::InitializeRequest>) -> Result<Response<pb::AdminReply>, Status> {
        configured_token_only(&req)?;
        let members: BTreeMap<NodeId, RaftNode> =
            req.into_inner().members.into_iter().map(|m| (m.node_id, RaftNode::new(m.addr))).collect();
        if members.is_empty() {
            return Err(StoreError::Precondition("initialize needs at least one member".into()).into());
        }
        self.node.raft.initialize(members).await.map_err(|e| StoreError::Precondition(e.to_string()))?;
        self.wait_for("the initial membership", |m| m.membership_config.membership().voter_ids().next().is_some())
            .await?;
        Ok(self.reply())
    }

    async fn add_learner(&self, req: Request<pb::AddLearnerRequest>) -> Result<Response<pb::AdminReply>, Status> {
        configured_token_only(&req)?;
        on_leader!(self, req, add_learner);
        let r = req.into_inner();
        let m = r.member.ok_or_else(|| StoreError::Precondition("member is required".into()))?;
        self.node
            .raft
            .add_learner(m.node_id, RaftNode::new(m.addr), r.blocking)
            .await
            .map_err(|e| StoreError::Raft(e.to_string()))?;
        Ok(self.reply())
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        configured_token_only(&req)?;
        on_leader!(self, req, change_membership);
        let r = req.into_inner();
        let voters: BTreeSet<NodeId> = r.voters.into_iter().collect();
        self.node.raft.change_membership(voters, r.retain).await.map_err(|e| StoreError::Raft(e.to_string()))?;
        Ok(self.reply())
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let to = req.get_ref().to;
        if to == self.node.id {
            if !self.node.is_leader() {
                self.node.raft.trigger().elect().await.map_err(|e| StoreError::Raft(e.to_string()))?;
                self.wait_for("this node to lead", |m| m.current_leader == Some(m.id)).await?;
            }
            return Ok(self.reply());
        }
        on_leader!(self, req, transfer_leader);
        self.hand_over(to).await?;
        Ok(self.reply())
    }

    async fn snapshot(&self, req: Request<pb::SnapshotRequest>) -> Result<Response<pb::AdminReply>, Status> {
        let purge = req.into_inner().purge;
        let raft = &self.node.raft;
        let applied = raft.metrics().borrow().last_applied.map(|l| l.index);
        raft.trigger().snapshot().await.map_err(|e| StoreError::Raft(e.to_string()))?;
        self.wait_for("the snapshot", |m| m.snapshot.map(|l| l.index) >= applied).await?;
        if purge {
            let snapshot = raft.metrics().borrow().snapshot.map(|l| l.index);
            if let Some(upto) = snapshot {
                raft.trigger().purge_log(upto).await.map_err(|e| StoreError::Raft(e.to_string()))?;
                self.wait_for("the log purge", |m| m.purged.map(|l| l.index) >= Some(upto)).await?;
            }
        }
        Ok(self.reply())
    }

    async fn set_election(&self, req: Request<pb::SetElectionRequest>) -> Result<Response<pb::AdminReply>, Status> {
        self.node.raft.runtime_config().elect(req.into_inner().enabled);
        Ok(self.reply())
    }

    async fn metrics(&self, _req: Request<pb::MetricsRequest>) -> Result<Response<pb::ClusterMetrics>, Status> {
        Ok(Response::new(cluster_metrics(&self.node)))
    }

    async fn rotate_key(&self, _req: Request<pb::RotateKeyRequest>) -> Result<Response<pb::RotateKeyReply>, Status> {
        let members: Vec<(NodeId, String)> = {
            let m = self.node.raft.metrics().borrow().clone();
            m.membership_config.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect()
        };
        let mut nodes = Vec::new();
        for (id, addr) in members {
            let reply = if id == self.node.id {
                reload_keys(&self.node)?
            } else {
                let ch = self.node.peers.channel(id, &addr)?;
                let mut admin = ClusterAdminClient::new(node_channel(ch));
                let reply = admin.reload_keys(pb::ReloadKeysRequest {}).await;
                reply.map_err(|s| Status::new(s.code(), format!("node {id}: {}", s.message())))?.into_inner()
            };
            nodes.push(reply);
        }
        let sealing: BTreeSet<u32> = nodes.iter().map(|n| n.sealing_key).collect();
        if sealing.len() > 1 {
            let each: Vec<String> = nodes.iter().map(|n| format!("node {} key {}", n.node_id, n.sealing_key)).collect();
            return Err(KvError::InvalidRequest(format!(
                "the nodes now seal with different keys ({}): give every central node the same key file and rotate again",
                each.join(", ")
            ))
            .to_status());
        }
        Ok(Response::new(pb::RotateKeyReply { nodes }))
    }

    async fn reload_keys(&self, _req: Request<pb::ReloadKeysRequest>) -> Result<Response<pb::KeysReply>, Status> {
        Ok(Response::new(reload_keys(&self.node)?))
    }
}

/// Reads this node's key file again and seals with its last key from now on, then re-seals
/// older records and rebuilds its snapshot from them in the background. Refused, changing
/// nothing, when the file lacks a key that may still seal records here.
fn reload_keys(node: &Arc<Node>) -> StoreResult<pb::KeysReply> {
    let fresh = node.config.read_keys().map_err(|e| KvError::InvalidRequest(format!("{e:#}")))?;
    let kept: BTreeSet<u8> = fresh.key_ids().into_iter().collect();
    let in_use: Vec<u8> = match node.resealer.counts() {
        Some(counts) => counts.into_iter().filter(|(_, n)| *n > 0).map(|(id, _)| id).collect(),
        None => node.sealer.key_ids(),
    };
    if let Some(id) = in_use.iter().find(|id| !kept.contains(id)) {
        return Err(KvError::InvalidRequest(format!(
            "node {}: key {id} may still seal records here; keep it in the key file until a rotation has \
             re-sealed them (kv admin members shows what each key seals)",
            node.id
        ))
        .into());
    }
    node.sealer.replace_keys(&fresh);
    tracing::info!(sealing_key = fresh.sealing_key(), keys = ?fresh.key_ids(), "encryption keys reloaded");
    let n = node.clone();
    tokio::spawn(async move {
        if let Err(e) = n.resealer.clone().run(&n.raft).await {
            tracing::error!(error = format!("{e:#}"), "re-sealing failed");
        }
    });
    Ok(pb::KeysReply {
        node_id: node.id,
        sealing_key: fresh.sealing_key().into(),
        key_ids: fresh.key_ids().into_iter().map(u32::from).collect(),
    })
}
