//! Raft over gRPC: the client side openraft uses to reach peers, and the server side that
//! hands peers' messages to the local Raft node.

pub mod network;
pub mod service;

/// A channel to the central node at `addr` (`host:port`); it connects on first use and
/// reconnects by itself, so a peer that is down costs nothing until it is called.
pub fn lazy_channel(addr: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect_lazy())
}

/// Largest gRPC message between central nodes: one log entry holds at most a 100 MB bulk write.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 128 << 20;
