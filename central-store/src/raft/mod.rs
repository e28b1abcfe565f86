//! Raft over gRPC: the client side openraft uses to reach peers, and the server side that
//! hands peers' messages to the local Raft node.

pub mod envelope;
pub mod network;
pub mod pipeline;
pub mod rpc;
pub mod service;

/// Largest gRPC message between central nodes: one log entry holds at most a 100 MB bulk write.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 128 << 20;
