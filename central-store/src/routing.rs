//! Where a request is served: writes must reach the leader, so a follower forwards them.

use crate::error::{StoreError, StoreResult};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::raft::lazy_channel;
use crate::types::{Command, CommandResult, Raft};
use openraft::error::{ClientWriteError, RaftError};
use std::collections::HashMap;
use std::sync::Mutex;
use tonic::transport::Channel;

/// Metadata set on a forwarded request, so it is never forwarded twice.
pub const FORWARDED_HEADER: &str = "kv-forwarded";

/// Lazily connected channels to the other central nodes.
#[derive(Default)]
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
}

impl Peers {
    /// A channel to the node at `addr`, made on first use.
    pub fn channel(&self, addr: &str) -> StoreResult<Channel> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let ch = lazy_channel(addr).map_err(|e| StoreError::Peer { addr: addr.to_owned(), reason: e.to_string() })?;
        map.insert(addr.to_owned(), ch.clone());
        Ok(ch)
    }
}

/// Where to serve a write.
pub enum Route {
    Local,
    /// A channel to the leader.
    Leader(Channel),
}

/// Whether this node currently leads.
pub fn is_leader(node: &Node) -> bool {
    node.raft.metrics().borrow().current_leader == Some(node.id)
}

/// Serve here when leading; otherwise forward to the known leader (once only).
pub fn route<T>(node: &Node, req: &tonic::Request<T>) -> StoreResult<Route> {
    let metrics = node.raft.metrics().borrow().clone();
    match metrics.current_leader {
        Some(l) if l == node.id => Ok(Route::Local),
        _ if req.metadata().contains_key(FORWARDED_HEADER) => Err(StoreError::NoLeader),
        Some(l) => {
            let addr = metrics
                .membership_config
                .membership()
                .get_node(&l)
                .map(|n| n.addr.clone())
                .ok_or(StoreError::NoLeader)?;
            node.metrics.forwarded.inc();
            Ok(Route::Leader(node.peers.channel(&addr)?))
        }
        None => Err(StoreError::NoLeader),
    }
}

/// Wraps a message for forwarding to the leader.
pub fn forwarded<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
    req
}

/// Proposes a command on this (leader) node and waits for it to be applied; returns its
/// log index (the version) and what applying it produced.
pub async fn propose(raft: &Raft, metrics: &Metrics, cmd: Command) -> StoreResult<(u64, CommandResult)> {
    let kind = match &cmd {
        Command::Write { .. } => "write",
        Command::CreateNamespace { .. } | Command::RenameNamespace { .. } | Command::DeleteNamespace { .. } => {
            "namespace"
        }
        Command::Sweep { .. } => "sweep",
    };
    metrics.proposals.with_label_values(&[kind]).inc();
    let reply = raft.client_write(cmd).await.map_err(|e| match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            StoreError::Raft("leadership moved while the write was in flight; retry".into())
        }
        other => StoreError::Raft(other.to_string()),
    })?;
    match reply.data {
        CommandResult::Rejected(e) => Err(e.into()),
        data => Ok((reply.log_id.index, data)),
    }
}
