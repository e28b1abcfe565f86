//! The central store: the authoritative KV data, replicated by Raft (openraft) and kept in
//! RocksDB. Read in this order: `types` (what the log carries), `storage` (how it is kept),
//! `raft` (how nodes talk), `freshness` (how a replica proves it is current), `writes` and
//! `batcher` (the leader's write path and group commit), `api` (what tiers call), then
//! `server` (how it is all started).

// tonic::Status and openraft's StorageError are the error types those traits demand.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod batcher;
pub mod config;
pub mod error;
pub mod freshness;
pub mod in_flight;
pub mod metrics;
pub mod node;
pub mod peers;
pub mod propose;
pub mod raft;
pub mod rate_limit;
pub mod routing;
pub mod server;
pub mod storage;
pub mod types;
pub mod writes;
