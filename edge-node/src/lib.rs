//! An edge node: the server clients talk to.
//!
//! Read in this order: `api` (the client API and its validation; `tokens` says who a call
//! comes from; `rest` maps Workers KV's REST API onto it), `edge` (this tier's policy
//! on the shared engine, `kv_tier`, and its read and write paths), `pushes` (how copies stay
//! fresh), then `node`.

// Errors carry a tonic::Status, as every gRPC handler returns one anyway.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod config;
pub mod edge;
pub mod metrics;
pub mod node;
pub mod pushes;
pub mod rest;
pub mod tokens;
pub mod watch;
