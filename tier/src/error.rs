//! The one error type of both caching tiers, and its one conversion to a gRPC status.

use kv_common::KvError;
use tonic::Status;

/// Everything an edge or a regional tier can answer with instead of a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TierError {
    /// The request broke the contract; it never went upstream.
    #[error(transparent)]
    Contract(#[from] KvError),
    /// The tier above answered with an error, or none answered.
    #[error("{}", .0.message())]
    Upstream(#[from] Status),
}

impl TierError {
    /// Whether the tier above could not be reached (so a held copy may answer instead).
    pub fn is_unreachable(&self) -> bool {
        match self {
            TierError::Contract(_) => false,
            TierError::Upstream(s) => kv_common::client::is_unreachable(s),
        }
    }
}

impl From<TierError> for Status {
    fn from(e: TierError) -> Status {
        match e {
            TierError::Contract(k) => k.to_status(),
            TierError::Upstream(s) => s,
        }
    }
}

/// Result of a tier operation.
pub type TierResult<T> = Result<T, TierError>;
