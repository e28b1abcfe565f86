//! The client side of the Raft transport.
//!
//! Payloads are openraft's types encoded with bincode inside a `RaftMessage`.
//!
//! Appends are sized for real links. openraft 0.9 gives every AppendEntries the heartbeat
//! interval as its deadline, which a large value over a long link cannot meet; retried from
//! scratch each time, it would never arrive and the follower would never catch up. So an
//! append that carries entries runs as a *transfer*: a task of its own, with a deadline sized
//! by its bytes, that outlives openraft's attempt. openraft's retry of the same entries joins
//! the transfer under way instead of starting over. One transfer carries at most
//! `MAX_TRANSFER_BYTES` (the rest goes in the next, reported as a partial success), split
//! into messages of at most `APPEND_CHUNK_BYTES`, each a valid Raft request on its own.
//!
//! The entries the leader writes have usually reached the follower by the time openraft's
//! stream gets to them (`pipeline`): the stream then takes that answer instead of sending.
//! Heartbeats do not hold up the stream (`Connection::heartbeat`).

use super::pipeline::Pipeline;
use super::rpc::{call, AppendReply, Landed, Rpc, RpcResult};
use super::MAX_RAFT_MESSAGE_BYTES;
use crate::metrics::{Metrics, Stage};
use crate::peers::Peers;
use crate::types::{Entry, LogId, Node, NodeId, TypeConfig};
use futures::future::{BoxFuture, FutureExt, Shared};
use kv_common::client::{node_channel, NodeChannel};
use kv_proto::raft::v1::raft_transport_client::RaftTransportClient;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use std::sync::Arc;
use std::time::Duration;

/// Above this many encoded bytes an append is split into several messages.
const APPEND_CHUNK_BYTES: u64 = 8 << 20;
/// One transfer carries at most this many bytes (or a single larger entry).
const MAX_TRANSFER_BYTES: u64 = 32 << 20;
/// The slowest link a transfer's deadline allows for.
const MIN_BYTES_PER_SEC: u64 = 4 << 20;
/// A transfer's deadline on top of its bytes' time: round trips, the follower's fsync.
const TRANSFER_BASE: Duration = Duration::from_secs(2);

/// Reaches peers through this node's shared channels (`Peers`), which connect lazily and
/// reconnect by themselves.
#[derive(Clone)]
pub struct Network {
    pub peers: Arc<Peers>,
    pub pipeline: Arc<Pipeline>,
    pub metrics: Arc<Metrics>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Connection {
        let client = self.peers.channel(target, &node.addr).ok().map(|ch| {
            RaftTransportClient::new(node_channel(ch))
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        });
        Connection {
            target,
            addr: node.addr.clone(),
            client,
            transfer: None,
            matched: None,
            beat: None,
            pipeline: self.pipeline.clone(),
            registered: false,
            metrics: self.metrics.clone(),
        }
    }
}

/// An append under way: the entries after `prev` up to `last`.
struct Transfer {
    prev: Option<LogId>,
    last: Option<LogId>,
    reply: Shared<BoxFuture<'static, Landed>>,
}

/// The link to one peer.
pub struct Connection {
    target: NodeId,
    addr: String,
    client: Option<RaftTransportClient<NodeChannel>>,
    transfer: Option<Transfer>,
    /// The last log id the follower confirmed holding through this connection (`Some(None)`:
    /// an empty log); `None` until it has, and again after any answer but success.
    matched: Option<Option<LogId>>,
    /// The heartbeat under way in the background (see `heartbeat`).
    beat: Option<tokio::task::JoinHandle<AppendReply>>,
    pipeline: Arc<Pipeline>,
    /// Whether this connection registered its follower with the pipeline (only a
    /// replication stream's connection, which carries entries, does).
    registered: bool,
    metrics: Arc<Metrics>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.registered {
            self.pipeline.left(self.target);
        }
    }
}

fn size_of(e: &Entry) -> u64 {
    bincode::serialized_size(e).unwrap_or(0)
}

/// Keeps the first entries of `entries` that fit in one transfer (always at least one);
/// returns whether any were left out.
fn take_transfer(entries: &mut Vec<Entry>) -> bool {
    let mut bytes = 0;
    let mut keep = 0;
    for e in entries.iter() {
        let s = size_of(e);
        if keep > 0 && bytes + s > MAX_TRANSFER_BYTES {
            break;
        }
        bytes += s;
        keep += 1;
    }
    let cut = keep < entries.len();
    entries.truncate(keep.max(1));
    cut
}

/// Splits an append into requests of bounded encoded size, chained by `prev_log_id`.
fn split_append(rpc: AppendEntriesRequest<TypeConfig>) -> Vec<AppendEntriesRequest<TypeConfig>> {
    let total: u64 = rpc.entries.iter().map(size_of).sum();
    if total <= APPEND_CHUNK_BYTES || rpc.entries.len() <= 1 {
        return vec![rpc];
    }
    let AppendEntriesRequest { vote, prev_log_id, entries, leader_commit } = rpc;
    let mut out = Vec::new();
    let mut prev = prev_log_id;
    let mut chunk = Vec::new();
    let mut size = 0u64;
    for entry in entries {
        let s = size_of(&entry);
        if !chunk.is_empty() && size + s > APPEND_CHUNK_BYTES {
            let next_prev = chunk.last().map(|e: &Entry| e.log_id);
            out.push(AppendEntriesRequest {
                vote,
                prev_log_id: prev,
                entries: std::mem::take(&mut chunk),
                leader_commit,
            });
            prev = next_prev;
            size = 0;
        }
        size += s;
        chunk.push(entry);
    }
    out.push(AppendEntriesRequest { vote, prev_log_id: prev, entries: chunk, leader_commit });
    out
}

/// Sends the messages of one transfer in order; a later one failing leaves the earlier ones
/// accepted (a partial success).
async fn send_transfer(
    mut client: RaftTransportClient<NodeChannel>,
    target: NodeId,
    chunks: Vec<AppendEntriesRequest<TypeConfig>>,
    deadline: Duration,
) -> AppendReply {
    let n = chunks.len();
    let mut accepted = None;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let last = chunk.entries.last().map(|e| e.log_id);
        match call(&mut client, target, Rpc::Append, &chunk, deadline).await {
            Ok(AppendEntriesResponse::Success) if i + 1 < n => accepted = last,
            Ok(AppendEntriesResponse::Conflict) | Err(_) if i > 0 => {
                return Ok(AppendEntriesResponse::PartialSuccess(accepted));
            }
            other => return other,
        }
    }
    Ok(AppendEntriesResponse::Success)
}

impl Connection {
    fn client(&self) -> Result<RaftTransportClient<NodeChannel>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.client.clone().ok_or_else(|| {
            let e = std::io::Error::other(format!("bad peer address {:?}", self.addr));
            RPCError::Unreachable(Unreachable::new(&e))
        })
    }

    /// Sends a heartbeat without holding up the replication stream.
    ///
    /// openraft 0.9 keeps one request in flight per follower, and after every commit it
    /// sends a heartbeat (to carry the new commit index) when no entries are waiting. The
    /// entries proposed next would wait a whole round trip behind it. A heartbeat tells the
    /// leader nothing it acts on when it succeeds, so it is sent in the background and
    /// reported delivered; an answer but success (a higher vote, a conflict, an error) is
    /// reported on the next heartbeat, and that follower's heartbeats are waited for again
    /// until it confirms a match. Only an empty append at the point this follower confirmed
    /// is a heartbeat here: probes and leadership checks (openraft's `ensure_linearizable`
    /// makes each on a fresh connection, with nothing confirmed) are always waited for.
    async fn heartbeat(
        &mut self,
        mut client: RaftTransportClient<NodeChannel>,
        rpc: AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
    ) -> AppendReply {
        if let Some(previous) = &mut self.beat {
            // Awaited in place: if openraft gives up on this call meanwhile, the previous
            // heartbeat's answer is still there for the next one.
            let answer =
                previous.await.unwrap_or_else(|e| Err(RPCError::Network(NetworkError::new(&std::io::Error::other(e)))));
            self.beat = None;
            if !matches!(answer, Ok(AppendEntriesResponse::Success)) {
                self.matched = None;
                return answer;
            }
        }
        let target = self.target;
        let metrics = self.metrics.clone();
        self.beat = Some(tokio::spawn(async move {
            let sending = std::time::Instant::now();
            let answer = call(&mut client, target, Rpc::Append, &rpc, ttl).await;
            metrics.stage(Stage::Heartbeat, sending);
            answer
        }));
        Ok(AppendEntriesResponse::Success)
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let mut client = self.client()?;
        if rpc.entries.is_empty() {
            if self.matched == Some(rpc.prev_log_id) {
                return self.heartbeat(client, rpc, option.hard_ttl()).await;
            }
            // A probe of where the follower's log ends (or a leadership check): its answer is
            // what openraft acts on, so it is waited for.
            let prev = rpc.prev_log_id;
            let reply = call(&mut client, self.target, Rpc::Append, &rpc, option.hard_ttl()).await;
            self.matched = matches!(reply, Ok(AppendEntriesResponse::Success)).then_some(prev);
            return reply;
        }
        let sending = std::time::Instant::now();
        let wanted = rpc.entries.last().map(|e| e.log_id);
        if self.pipeline.answered(self.target, &rpc).await {
            self.metrics.stream_appends.with_label_values(&["early"]).inc();
            self.metrics.stage(Stage::Replicate, sending);
            self.matched = Some(wanted);
            return Ok(AppendEntriesResponse::Success);
        }
        self.metrics.stream_appends.with_label_values(&["sent"]).inc();
        let joins = self
            .transfer
            .as_ref()
            .is_some_and(|t| t.prev == rpc.prev_log_id && rpc.entries.iter().any(|e| Some(e.log_id) == t.last));
        if !joins {
            let cut = take_transfer(&mut rpc.entries);
            let (prev, last) = (rpc.prev_log_id, rpc.entries.last().map(|e| e.log_id));
            let bytes: u64 = rpc.entries.iter().map(size_of).sum();
            let deadline = TRANSFER_BASE + Duration::from_millis(bytes * 1000 / MIN_BYTES_PER_SEC);
            let task = tokio::spawn(send_transfer(client, self.target, split_append(rpc), deadline));
            let reply = async move {
                Landed::from_reply(
                    task.await.unwrap_or_else(|e| Err(RPCError::Network(NetworkError::new(&std::io::Error::other(e))))),
                )
            }
            .boxed()
            .shared();
            if cut {
                tracing::debug!(target = self.target, bytes, "append split over several transfers");
            }
            self.transfer = Some(Transfer { prev, last, reply });
        }
        let Some(t) = &self.transfer else { return Err(RPCError::Network(NetworkError::new(&no_transfer()))) };
        let (reply, last) = (t.reply.clone(), t.last);
        // openraft may give up on this attempt (its deadline); the transfer goes on, and its
        // next attempt for these entries joins it here.
        let out = reply.await.into_reply();
        self.metrics.stage(Stage::Replicate, sending);
        self.transfer = None;
        let out = match out {
            Ok(AppendEntriesResponse::Success) if last != wanted => Ok(AppendEntriesResponse::PartialSuccess(last)),
            other => other,
        };
        self.matched = match &out {
            Ok(AppendEntriesResponse::Success) => Some(wanted),
            Ok(AppendEntriesResponse::PartialSuccess(l)) => Some(*l),
            _ => None,
        };
        if let (Ok(AppendEntriesResponse::Success), Some(client), Some(held)) = (&out, &self.client, wanted) {
            self.pipeline.confirmed(self.target, client, &mut self.registered, held);
        }
        out
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let Some(client) = self.client.as_mut() else {
            let e = std::io::Error::other(format!("bad peer address {:?}", self.addr));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        };
        call(client, self.target, Rpc::Snapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        let mut client = self.client()?;
        call(&mut client, self.target, Rpc::Vote, &rpc, option.hard_ttl()).await
    }
}

fn no_transfer() -> std::io::Error {
    std::io::Error::other("the transfer vanished")
}
