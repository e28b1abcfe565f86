//! The regional tier's errors and their one conversion to a gRPC status.

use kv_common::KvError;
use tonic::Status;

/// Everything a regional tier can answer with instead of a result.
#[derive(Debug, thiserror::Error)]

pub enum RegionalError {
    /// The request broke the contract; it never went upstream.
    #[error(transparent)]
    Contract(#[from] KvError),
    /// The central store answered with an error, or no central node answered.
    #[error("{}", .0.message())]
    Upstream(#[from] Status),
}

impl From<RegionalError> for Status {
    fn from(e: RegionalError) -> Status {
        match e {
            RegionalError::Contract(k) => k.to_status(),
            RegionalError::Upstream(s) => s,
        }
    }
}

/// Result of a regional operation.
pub type RegionalResult<T> = Result<T, RegionalError>;
