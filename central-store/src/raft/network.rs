//! The client side of the Raft transport.
//!
//! Payloads are openraft's types encoded with bincode inside a `RaftMessage`. An append
//! batch larger than `APPEND_CHUNK_BYTES` is sent as several consecutive AppendEntries
//! calls, each a valid Raft request on its own, so big values never make one huge message.

use super::MAX_RAFT_MESSAGE_BYTES;
use crate::peers::Peers;
use crate::types::{Node, NodeId, TypeConfig};
use kv_proto::raft::v1::{raft_transport_client::RaftTransportClient, RaftMessage};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{de::DeserializeOwned, Serialize};
use std::sync::Arc;
use tonic::transport::Channel;

/// Above this many encoded bytes an append batch is split.
const APPEND_CHUNK_BYTES: u64 = 8 << 20;

/// Reaches peers through this node's shared channels (`Peers`), which connect lazily and
/// reconnect by themselves.
#[derive(Clone)]
pub struct Network {
    pub peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Connection {
        let client = self.peers.channel(target, &node.addr).ok().map(|ch| {
            RaftTransportClient::new(ch)
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        });
        Connection { target, addr: node.addr.clone(), client }
    }
}

/// The link to one peer.
pub struct Connection {
    target: NodeId,
    addr: String,
    client: Option<RaftTransportClient<Channel>>,
}

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

impl Connection {
    /// Sends one message and decodes the peer's `Result<Resp, RaftError<E>>`.
    async fn call<Req, Resp, E>(&mut self, kind: Rpc, req: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            let e = std::io::Error::other(format!("bad peer address {:?}", self.addr));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        };
        let data = bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftMessage { data });
        request.set_timeout(option.hard_ttl());
        let reply = match kind {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let decoded: Result<Resp, RaftError<NodeId, E>> =
            bincode::deserialize(&reply.into_inner().data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

/// Splits an append batch into requests of bounded encoded size, chained by `prev_log_id`.
fn split_append(rpc: AppendEntriesRequest<TypeConfig>) -> Vec<AppendEntriesRequest<TypeConfig>> {
    let total: u64 = rpc.entries.iter().map(|e| bincode::serialized_size(e).unwrap_or(0)).sum();
    if total <= APPEND_CHUNK_BYTES || rpc.entries.len() <= 1 {
        return vec![rpc];
    }
    let AppendEntriesRequest { vote, prev_log_id, entries, leader_commit } = rpc;
    let mut out = Vec::new();
    let mut prev = prev_log_id;
    let mut chunk = Vec::new();
    let mut size = 0u64;
    for entry in entries {
        let s = bincode::serialized_size(&entry).unwrap_or(0);
        if !chunk.is_empty() && size + s > APPEND_CHUNK_BYTES {
            let next_prev = chunk.last().map(|e: &crate::types::Entry| e.log_id);
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

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let chunks = split_append(rpc);
        let n = chunks.len();
        let mut accepted = None;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let last = chunk.entries.last().map(|e| e.log_id);
            let reply = self.call(Rpc::Append, &chunk, &option).await;
            match reply {
                Ok(AppendEntriesResponse::Success) if i + 1 < n => accepted = last,
                // A later chunk failing still leaves the earlier ones accepted.
                Ok(AppendEntriesResponse::Conflict) | Err(_) if i > 0 => {
                    return Ok(AppendEntriesResponse::PartialSuccess(accepted));
                }
                other => return other,
            }
        }
        Ok(AppendEntriesResponse::Success)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
