//! The store API client every node uses to call the one above it (edge to regional tier,
//! regional tier to central store, follower to leader): it takes messages as large as the
//! contract allows and hands on the served call's trace and deadline (`call::outgoing`).

use crate::call;
use kv_proto::store::v1::central_store_client::CentralStoreClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Largest message between tiers: a bulk write of 100 MB plus framing.
pub const MAX_MESSAGE_BYTES: usize = 110 << 20;

/// A channel whose calls carry this node's credential and the served call's trace and
/// deadline: what every client a node makes runs on.
pub type NodeChannel = InterceptedService<Channel, call::Outgoing>;

/// `ch` with this node's credential, trace and deadline on every call (see `NodeChannel`).
pub fn node_channel(ch: Channel) -> NodeChannel {
    InterceptedService::new(ch, call::outgoing as call::Outgoing)
}

/// A store API client that hands on the trace and deadline of the call being served.
pub type StoreClient = CentralStoreClient<NodeChannel>;

/// A store API client on `ch`.
pub fn store_client(ch: Channel) -> StoreClient {
    CentralStoreClient::new(node_channel(ch))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Whether an error means "this endpoint cannot serve now; another may": unreachable,
/// overloaded, out of time, or not fresh enough. Errors of the contract (a bad key, an
/// unknown namespace, 429) are the same everywhere, so they are final.
pub fn is_unreachable(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown)
        && crate::error::http_status_of(s).is_none_or(|h| h == 503)
}
