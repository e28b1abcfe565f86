//! The read path every caching tier shares: the regional tier and the edge node are thin
//! policies on this engine (what is upstream, how long copies live, push or ttl).
//!
//! Read in this order: `copy` (one cached answer and how fresh it is), `cache` (the
//! versioned store of copies, with its `front` of the most read ones), `engine` (reads,
//! coalesced fetches ordered against applied changes, stale answers, write-through),
//! `upstream` (the tier above, with failover and one deadline budget), then `wire`, `error`
//! and `metrics`.

// Errors carry a tonic::Status, as every gRPC handler returns one anyway.
#![allow(clippy::result_large_err)]

pub mod cache;
pub mod change;
pub mod copy;
pub mod engine;
pub mod error;
pub mod front;
pub mod metrics;
pub mod upstream;
pub mod wire;

pub use cache::CacheKey;
pub use copy::{Copy, Value};
pub use engine::{Answer, Applied, Effect, Fetch, Policy, ReadSpec, Served, Source, Tier};
pub use error::{TierError, TierResult};
pub use front::KeyHasher;
