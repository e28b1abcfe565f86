//! The contract's errors and their one mapping to the wire.
//!
//! Every tier returns these; the text of each variant is the user-visible message of
//! SPEC.md section 2, and `to_status` is the only place that turns one into a gRPC status.

use serde::{Deserialize, Serialize};
use tonic::{metadata::MetadataValue, Code, Status};

pub use kv_proto::{CURRENT_VERSION_TRAILER, HTTP_STATUS_TRAILER};
/// Metadata key that carries the Cloudflare-style error code, where the contract names one.
pub const ERROR_CODE_TRAILER: &str = "kv-error-code";

/// Result of any contract-checked operation.
pub type KvResult<T> = Result<T, KvError>;

/// Everything a user of the cluster can be told went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum KvError {
    #[error("Key names must not be empty")]
    KeyEmpty,
    #[error("{}", kv_proto::KEY_NOT_UTF8)]
    KeyNotUtf8,
    #[error("Illegal key name \"{key}\". Please use a different name.")]
    KeyIllegal { key: String },
    #[error("UTF-8 encoded length of {len} exceeds key length limit of {limit}.")]
    KeyTooLong { len: usize, limit: usize },
    #[error("Value length of {len} exceeds limit of {limit}.")]
    ValueTooLarge { len: usize, limit: usize },
    #[error("Metadata length of {len} exceeds limit of {limit}.")]
    MetadataTooLarge { len: usize, limit: usize },
    #[error("Metadata must be valid JSON.")]
    MetadataNotJson,
    #[error("Invalid expiration of {value}. Please specify integer greater than the current number of seconds since the UNIX epoch.")]
    ExpirationNotFuture { value: i64 },
    #[error("Invalid expiration of {value}. Expiration times must be at least {min} seconds in the future.")]
    ExpirationTooSoon { value: i64, min: i64 },
    #[error("Invalid expiration_ttl of {value}. Please specify integer greater than 0.")]
    ExpirationTtlNotPositive { value: i64 },
    #[error("Invalid expiration_ttl of {value}. Expiration TTL must be at least {min}.")]
    ExpirationTtlTooSmall { value: i64, min: i64 },
    #[error("Invalid cache_ttl of {value}. Cache TTL must be at least {min}.")]
    CacheTtlTooSmall { value: i64, min: i64 },
    #[error("Invalid cache_ttl of {value}. Cache TTL must be at most {max}.")]
    CacheTtlTooLarge { value: i64, max: i64 },
    #[error("Invalid key_count_limit of {value}. Please specify an integer greater than 0.")]
    ListLimitTooSmall { value: i64 },
    #[error("Invalid key_count_limit of {value}. Please specify an integer less than {max}.")]
    ListLimitTooLarge { value: i64, max: u32 },
    #[error("Invalid list cursor.")]
    InvalidCursor,
    #[error("You can request a maximum of {max} keys")]
    BulkGetTooMany { max: usize },
    #[error("You must request a minimum of 1 key")]
    BulkGetTooFew,
    #[error("Total size of request exceeds the limit of 25MB")]
    BulkGetTooLarge,
    #[error("At least one of the requested keys corresponds to a non-json value")]
    BulkGetNotJson,
    #[error("Bulk request holds {count} items, more than the limit of {max}.")]
    BulkWriteTooMany { count: usize, max: usize },
    #[error("Bulk request size of {bytes} bytes exceeds the limit of {max}.")]
    BulkWriteTooLarge { bytes: usize, max: usize },
    #[error("Too Many Requests")]
    TooManyRequests,
    /// Only the REST API, whose value and metadata reads answer 404 for a missing key.
    #[error("key not found")]
    KeyNotFound,
    #[error("namespace not found")]
    NamespaceNotFound,
    #[error("a namespace with this account ID and title already exists")]
    NamespaceTitleExists,
    #[error("Namespace titles must be 1 to {max} bytes.")]
    NamespaceTitleInvalid { max: usize },
    /// A request that is malformed in a way the contract names no message for.
    #[error("Invalid request: {0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    // New variants go last: request records store these with bincode, by position.
    #[error("Authentication error: {0}")]
    Unauthenticated(String),
    #[error("Permission denied: {0}")]
    PermissionDenied(String),
    #[error("token not found")]
    TokenNotFound,
    /// A compare-and-set write whose condition did not hold; `current` is the key's version
    /// then (0: absent).
    #[error("Precondition failed: the key's current version is {current}.")]
    PreconditionFailed { current: u64 },
}

impl KvError {
    /// The HTTP status a REST client would see for this error.
    pub fn http_status(&self) -> u16 {
        use KvError::*;
        match self {
            KeyTooLong { .. } => 414,
            ValueTooLarge { .. }
            | MetadataTooLarge { .. }
            | BulkGetTooLarge
            | BulkWriteTooMany { .. }
            | BulkWriteTooLarge { .. } => 413,
            TooManyRequests => 429,
            PreconditionFailed { .. } => 412,
            NamespaceNotFound | KeyNotFound | TokenNotFound => 404,
            Unauthenticated(_) => 401,
            PermissionDenied(_) => 403,
            Unavailable(_) => 503,
            Internal(_) => 500,
            _ => 400,
        }
    }

    /// The gRPC code; stable for clients that branch on it (SPEC.md section 2).
    pub fn grpc_code(&self) -> Code {
        match self.http_status() {
            429 => Code::ResourceExhausted,
            412 => Code::FailedPrecondition,
            404 => Code::NotFound,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            503 => Code::Unavailable,
            500 => Code::Internal,
            _ => Code::InvalidArgument,
        }
    }

    /// The Cloudflare API error code, for the errors whose code clients know.
    pub fn api_code(&self) -> Option<u32> {
        match self {
            KvError::NamespaceTitleExists => Some(10014),
            KvError::NamespaceNotFound => Some(10013),
            KvError::KeyNotFound => Some(10009),
            KvError::TooManyRequests => Some(10049),
            KvError::Unauthenticated(_) | KvError::PermissionDenied(_) => Some(10000),
            _ => None,
        }
    }

    /// The one conversion of a contract error into a gRPC status with its trailers.
    pub fn to_status(&self) -> Status {
        let mut status = Status::new(self.grpc_code(), self.to_string());
        let md = status.metadata_mut();
        md.insert(HTTP_STATUS_TRAILER, MetadataValue::from(self.http_status()));
        if let Some(code) = self.api_code() {
            md.insert(ERROR_CODE_TRAILER, MetadataValue::from(code));
        }
        if let Some(current) = self.current_version() {
            md.insert(CURRENT_VERSION_TRAILER, MetadataValue::from(current));
        }
        status
    }

    /// The key's version a failed compare-and-set reports.
    pub fn current_version(&self) -> Option<u64> {
        match self {
            KvError::PreconditionFailed { current } => Some(*current),
            _ => None,
        }
    }
}

impl From<KvError> for Status {
    fn from(e: KvError) -> Self {
        e.to_status()
    }
}

/// The key's version a failed compare-and-set status carries.
pub fn current_version_of(status: &Status) -> Option<u64> {
    status.metadata().get(CURRENT_VERSION_TRAILER)?.to_str().ok()?.parse().ok()
}

/// The HTTP-equivalent status a gRPC status carries, if it came from a KV node.
pub fn http_status_of(status: &Status) -> Option<u16> {
    status.metadata().get(HTTP_STATUS_TRAILER)?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_code_message_and_http_trailer() {
        let s = KvError::KeyTooLong { len: 513, limit: 512 }.to_status();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "UTF-8 encoded length of 513 exceeds key length limit of 512.");
        assert_eq!(http_status_of(&s), Some(414));

        let s = KvError::TooManyRequests.to_status();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(http_status_of(&s), Some(429));

        let s = KvError::NamespaceNotFound.to_status();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(http_status_of(&s), Some(404));

        let s = KvError::NamespaceTitleExists.to_status();
        assert_eq!(s.metadata().get(ERROR_CODE_TRAILER).unwrap(), "10014");

        let s = KvError::PreconditionFailed { current: 42 }.to_status();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!((http_status_of(&s), current_version_of(&s)), (Some(412), Some(42)));
    }
}
