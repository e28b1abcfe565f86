//! The central store's one error enum, and its one mapping to a gRPC status.

use kv_common::KvError;
use tonic::Status;

/// Everything that can go wrong inside a central node.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A contract error, shown to the user as is.
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("storage: {0}")]
    Storage(#[from] rocksdb::Error),
    #[error("encoding: {0}")]
    Codec(#[from] bincode::Error),
    #[error("raft: {0}")]
    Raft(String),
    /// This node cannot serve the write and knows no leader to forward it to.
    #[error("no leader is known yet; retry shortly")]
    NoLeader,
    /// Another central node cannot be reached at the address the membership gives.
    #[error("cannot reach peer {addr}: {reason}")]
    Peer { addr: String, reason: String },
    /// An admin request that the cluster's current state does not allow.
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Other(#[from] anyhow::Error),
}

/// Result of the central store's internal operations.
pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// The contract error a user sees; internal failures become UNAVAILABLE ("retry
    /// elsewhere or later") or INTERNAL, never a panic or a leak of internals.
    pub fn to_kv(&self) -> KvError {
        match self {
            StoreError::Kv(e) => e.clone(),
            StoreError::NoLeader | StoreError::Peer { .. } | StoreError::Raft(_) => {
                KvError::Unavailable(self.to_string())
            }
            StoreError::Storage(_) | StoreError::Codec(_) | StoreError::Precondition(_) | StoreError::Other(_) => {
                KvError::Internal(self.to_string())
            }
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Kv(_) => {}
            StoreError::Precondition(msg) => return Status::failed_precondition(msg.clone()),
            _ => tracing::warn!(error = %e, "request failed"),
        }
        e.to_kv().to_status()
    }
}
