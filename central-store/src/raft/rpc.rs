//! One Raft call to a peer, and an append's answer in a form that can be shared.

use super::envelope;
use crate::types::{LogId, Node, NodeId, Vote};
use kv_common::client::NodeChannel;
use kv_proto::raft::v1::raft_transport_client::RaftTransportClient;
use kv_proto::raft::v1::RaftMessage;
use openraft::error::{NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::raft::AppendEntriesResponse;
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;

pub type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;
pub type AppendReply = RpcResult<AppendEntriesResponse<NodeId>>;

/// An append's answer, kept for every attempt that waits on it (openraft's reply type is
/// not `Clone`).
#[derive(Clone)]
pub enum Landed {
    Success,
    Partial(Option<LogId>),
    Conflict,
    HigherVote(Vote),
    Failed(Box<RPCError<NodeId, Node, RaftError<NodeId>>>),
}

impl Landed {
    pub fn from_reply(r: AppendReply) -> Landed {
        match r {
            Ok(AppendEntriesResponse::Success) => Landed::Success,
            Ok(AppendEntriesResponse::PartialSuccess(l)) => Landed::Partial(l),
            Ok(AppendEntriesResponse::Conflict) => Landed::Conflict,
            Ok(AppendEntriesResponse::HigherVote(v)) => Landed::HigherVote(v),
            Err(e) => Landed::Failed(Box::new(e)),
        }
    }

    pub fn into_reply(self) -> AppendReply {
        match self {
            Landed::Success => Ok(AppendEntriesResponse::Success),
            Landed::Partial(l) => Ok(AppendEntriesResponse::PartialSuccess(l)),
            Landed::Conflict => Ok(AppendEntriesResponse::Conflict),
            Landed::HigherVote(v) => Ok(AppendEntriesResponse::HigherVote(v)),
            Landed::Failed(e) => Err(*e),
        }
    }
}

#[derive(Clone, Copy)]
pub enum Rpc {
    Append,
    Vote,
    Snapshot,
}

/// Sends one message to `target` within `timeout` and decodes its `Result<Resp, RaftError<E>>`.
pub async fn call<Req, Resp, E>(
    client: &mut RaftTransportClient<NodeChannel>,
    target: NodeId,
    kind: Rpc,
    req: &Req,
    timeout: Duration,
) -> RpcResult<Resp, E>
where
    Req: Serialize,
    Resp: DeserializeOwned,
    E: std::error::Error + DeserializeOwned,
{
    let sealed = envelope::seal(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
    call_sealed(client, target, kind, sealed, timeout).await
}

/// `call` with the request already encoded (one encoding sent to several peers).
pub async fn call_sealed<Resp, E>(
    client: &mut RaftTransportClient<NodeChannel>,
    target: NodeId,
    kind: Rpc,
    sealed: RaftMessage,
    timeout: Duration,
) -> RpcResult<Resp, E>
where
    Resp: DeserializeOwned,
    E: std::error::Error + DeserializeOwned,
{
    let mut request = tonic::Request::new(sealed);
    request.set_timeout(timeout);
    let reply = match kind {
        Rpc::Append => client.append_entries(request).await,
        Rpc::Vote => client.vote(request).await,
        Rpc::Snapshot => client.install_snapshot(request).await,
    };
    let reply = reply.map_err(|status| match status.code() {
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
        _ => RPCError::Network(NetworkError::new(&status)),
    })?;
    let decoded: Result<Resp, RaftError<NodeId, E>> = envelope::open(reply.into_inner())
        .map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
    decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
}
