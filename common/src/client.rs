//! The store API client every node uses to call the one above it (edge to regional tier,
//! regional tier to central store, follower to leader): it takes messages as large as the
//! contract allows and hands on the served call's trace and deadline (`call::outgoing`).

use crate::call;
use crate::tls::{self, ClientSource, Connector};
use kv_proto::store::v1::central_store_client::CentralStoreClient;
use std::path::Path;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
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

/// A channel to another node on `ep` (`http://host:port`, with the caller's settings) that
/// connects on first use and reconnects by itself: over mutual TLS, with this node's
/// current certificate, to a server whose certificate names one of `expect`, when the node
/// runs with TLS.
pub fn lazy_channel(ep: Endpoint, expect: &'static [tls::Role]) -> Channel {
    match tls::node_tls() {
        Some(t) => ep.connect_with_connector_lazy(Connector(ClientSource::Node(t.clone()), expect)),
        None => ep.connect_lazy(),
    }
}

/// A tool's connection to a node at `endpoint` (`host:port` or a URL): TLS trusting the CA
/// certificates in `ca` when given (or when the URL says `https`), plaintext otherwise.
pub async fn tool_channel(endpoint: &str, ca: Option<&Path>) -> anyhow::Result<Channel> {
    let secure = ca.is_some() || endpoint.starts_with("https://");
    let bare = endpoint.trim_start_matches("http://").trim_start_matches("https://");
    let ep = Endpoint::from_shared(format!("http://{bare}"))?
        .tcp_nodelay(true)
        .connect_timeout(std::time::Duration::from_secs(5));
    if !secure {
        return Ok(ep.connect().await?);
    }
    let ca = ca.ok_or_else(|| anyhow::anyhow!("an https endpoint needs the cluster CA: --ca FILE (or KV_CA)"))?;
    Ok(ep.connect_with_connector(Connector(ClientSource::Fixed(tls::tool_config(ca)?), &[])).await?)
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
