//! The KV contract (SPEC.md section 2) shared by every tier: configurable limits, the
//! validation of keys, values, metadata and expirations, the one error type with its single
//! mapping to gRPC status and HTTP status, and the process set-up every binary repeats.

pub mod error;
pub mod limits;
pub mod namespace;
pub mod telemetry;
pub mod time;
pub mod validate;

pub use error::{KvError, KvResult, HTTP_STATUS_TRAILER};
pub use limits::Limits;
pub use namespace::NamespaceId;
