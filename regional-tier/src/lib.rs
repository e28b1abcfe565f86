//! A regional tier: one region's cache between its edge nodes and the central store.
//!
//! Read in this order: `service` (what edges call), `regional` (the read and write paths),
//! `feed` (how the cache stays fresh), `tracking` (who gets pushed what), then `node`.

// Errors carry a tonic::Status, as every gRPC handler returns one anyway.
#![allow(clippy::result_large_err)]

pub mod config;
pub mod error;
pub mod feed;
pub mod metrics;
pub mod node;
pub mod regional;
pub mod service;
pub mod tracking;
