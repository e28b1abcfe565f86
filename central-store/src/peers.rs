//! Channels to the other central nodes (Raft, forwarding, read index), and who leads.
//!
//! A peer is reached at its address in the Raft membership, unless this node's config
//! routes it elsewhere (`peer_routes`): a proxy, or another network path to it. The local
//! cluster uses that to put a delay link, which can be cut, between every pair of voters.

use crate::error::{StoreError, StoreResult};
use crate::types::{NodeId, Raft};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tonic::transport::Channel;

/// A channel to the central node at `addr` (`host:port`); it connects on first use and
/// reconnects by itself, so a peer that is down costs nothing until it is called.
pub fn lazy_channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(kv_common::client::lazy_channel(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .http2_adaptive_window(true)
            .connect_timeout(Duration::from_millis(500))
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true),
        &[kv_common::tls::Role::Central],
    ))
}

/// Channels to the other central nodes, made on first use and kept.
#[derive(Default)]
pub struct Peers {
    routes: HashMap<NodeId, String>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Peers {
    /// Peers reached at their membership addresses, except those `routes` names.
    pub fn new(routes: HashMap<NodeId, String>) -> Peers {
        Peers { routes, channels: Mutex::default() }
    }

    /// A channel to node `id`, whose membership address is `addr`.
    pub fn channel(&self, id: NodeId, addr: &str) -> StoreResult<Channel> {
        let addr = self.routes.get(&id).map_or(addr, String::as_str);
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let ch = lazy_channel(addr).map_err(|e| StoreError::Peer { addr: addr.to_owned(), reason: e.to_string() })?;
        map.insert(addr.to_owned(), ch.clone());
        Ok(ch)
    }
}

/// Who leads, as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leader {
    Me,
    Other { id: NodeId, addr: String },
    Unknown,
}

/// The leader as node `me` currently knows it.
pub fn leader(raft: &Raft, me: NodeId) -> Leader {
    let m = raft.metrics().borrow().clone();
    match m.current_leader {
        Some(l) if l == me => Leader::Me,
        Some(l) => match m.membership_config.membership().get_node(&l) {
            Some(n) => Leader::Other { id: l, addr: n.addr.clone() },
            None => Leader::Unknown,
        },
        None => Leader::Unknown,
    }
}
