//! The edge's errors and their one conversion to a gRPC status.

use kv_common::KvError;
use tonic::Status;

/// Everything an edge can answer with instead of a result.
#[derive(Debug, thiserror::Error)]

pub enum EdgeError {
    /// The request broke the contract; nothing went upstream.
    #[error(transparent)]
    Contract(#[from] KvError),
    /// An upstream tier answered with an error, or none answered.
    #[error("{}", .0.message())]
    Upstream(#[from] Status),
}

impl From<EdgeError> for Status {
    fn from(e: EdgeError) -> Status {
        match e {
            EdgeError::Contract(k) => k.to_status(),
            EdgeError::Upstream(s) => s,
        }
    }
}

/// Result of an edge operation.
pub type EdgeResult<T> = Result<T, EdgeError>;
