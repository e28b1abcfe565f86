//! A regional tier: one region's cache between its edge nodes and the central store.
//!
//! Read in this order: `service` (what edges call), `regional` (this tier's policy on the
//! shared engine, `kv_tier`, and its read and write paths), `feed` (how the cache stays fresh),
//! `freshness` (the proof that it is), `tracking` (who gets pushed what), then `node`.

// Errors carry a tonic::Status, as every gRPC handler returns one anyway.
#![allow(clippy::result_large_err)]

pub mod config;
pub mod feed;
pub mod freshness;
pub mod metrics;
pub mod node;
pub mod regional;
pub mod service;
pub mod tracking;
