//! Where a request is served: writes and admin changes must reach the leader, so a follower
//! forwards them there, once.

use crate::error::{StoreError, StoreResult};
use crate::node::Node;
use crate::peers::Leader;
use tonic::transport::Channel;

/// Metadata set on a forwarded request, so it is never forwarded twice.
pub const FORWARDED_HEADER: &str = "kv-forwarded";

/// Where to serve a leader-only request.
pub enum Route {
    Local,
    /// A channel to the leader.
    Leader(Channel),
}

/// Serve here when leading; otherwise forward to the known leader (once only).
pub fn route<T>(node: &Node, req: &tonic::Request<T>) -> StoreResult<Route> {
    match node.leader() {
        Leader::Me => Ok(Route::Local),
        _ if req.metadata().contains_key(FORWARDED_HEADER) => Err(StoreError::NoLeader),
        Leader::Other { id, addr } => {
            node.metrics.forwarded.inc();
            Ok(Route::Leader(node.peers.channel(id, &addr)?))
        }
        Leader::Unknown => Err(StoreError::NoLeader),
    }
}

/// Wraps a message for forwarding to the leader.
pub fn forwarded<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
    req
}
