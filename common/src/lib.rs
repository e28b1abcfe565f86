//! The KV contract (SPEC.md section 2) shared by every tier: configurable limits, the
//! validation of keys, values, metadata and expirations, the one error type with its single
//! mapping to gRPC status and HTTP status, the process set-up every binary repeats, and the
//! pieces both caching tiers share (versioned cache, request coalescing, upstream failover, trace context).

pub mod cache;
pub mod config;
pub mod error;
pub mod flight;
pub mod limits;
pub mod metrics;
pub mod namespace;
pub mod serve;
pub mod telemetry;
pub mod time;
pub mod trace;
pub mod upstream;
pub mod validate;
pub mod wire;

pub use error::{KvError, KvResult, HTTP_STATUS_TRAILER};
pub use limits::Limits;
pub use namespace::NamespaceId;
