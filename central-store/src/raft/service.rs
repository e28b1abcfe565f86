//! The server side of the Raft transport: decode, hand to openraft, encode its answer.

use super::envelope;
use crate::metrics::{Metrics, Stage};
use crate::types::{Raft, TypeConfig};
use kv_proto::raft::v1::{raft_transport_server::RaftTransport, RaftMessage, ReadIndexReply, ReadIndexRequest};
use openraft::raft::AppendEntriesRequest;
use serde::{de::DeserializeOwned, Serialize};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Serves peers' Raft messages to the local node.
pub struct RaftService {
    raft: Raft,
    metrics: Arc<Metrics>,
}

impl RaftService {
    pub fn new(raft: Raft, metrics: Arc<Metrics>) -> Self {
        RaftService { raft, metrics }
    }
}

fn decode<T: DeserializeOwned>(req: Request<RaftMessage>) -> Result<T, Status> {
    envelope::open(req.into_inner()).map_err(Status::failed_precondition)
}

fn encode<T: Serialize>(reply: &T) -> Result<Response<RaftMessage>, Status> {
    let sealed = envelope::seal(reply).map_err(|e| Status::internal(format!("encoding raft reply: {e}")))?;
    Ok(Response::new(sealed))
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn append_entries(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let serving = std::time::Instant::now();
        let req: AppendEntriesRequest<TypeConfig> = decode(req)?;
        let carries_entries = !req.entries.is_empty();
        let reply = self.raft.append_entries(req).await;
        if carries_entries {
            self.metrics.stage(Stage::FollowerAppend, serving);
        }
        encode(&reply)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        encode(&self.raft.vote(decode(req)?).await)
    }

    async fn install_snapshot(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        encode(&self.raft.install_snapshot(decode(req)?).await)
    }

    /// The leader's read index, after it confirmed its leadership with a quorum; only the
    /// leader answers.
    async fn read_index(&self, _: Request<ReadIndexRequest>) -> Result<Response<ReadIndexReply>, Status> {
        match self.raft.get_read_log_id().await {
            Ok((read, _)) => Ok(Response::new(ReadIndexReply { index: read.map_or(0, |l| l.index) })),
            Err(e) => Err(Status::unavailable(format!("not the leader, or it lost its quorum: {e}"))),
        }
    }
}
