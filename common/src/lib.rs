//! The KV contract (SPEC.md section 2) shared by every node: configurable limits, the
//! validation of keys, values, metadata and expirations, the one error type with its single
//! mapping to gRPC status and HTTP status; and what every process repeats: the context of a
//! served call (trace, deadline) and the client that hands it on, config loading, serving.
//! The read path both caching tiers share is the `tier` crate.

pub mod alloc;
pub mod auth;
pub mod base64;
pub mod bulk;
pub mod call;
pub mod client;
pub mod config;
pub mod error;
pub mod limits;
pub mod log_line;
pub mod namespace;
pub mod serve;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod trace;
pub mod validate;

pub use error::{KvError, KvResult, CURRENT_VERSION_TRAILER, HTTP_STATUS_TRAILER};
pub use limits::Limits;
pub use namespace::NamespaceId;
