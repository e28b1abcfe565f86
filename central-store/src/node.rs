//! What every request handler of a central node shares.

use crate::batcher::Batcher;
use crate::config::Config;
use crate::freshness::{Freshness, Proof};
use crate::in_flight::InFlight;
use crate::metrics::Metrics;
use crate::peers::{self, Leader, Peers};
use crate::rate_limit::RateLimiter;
use crate::storage::reader::Reader;
use crate::storage::{reseal::Resealer, seal::Sealer};
use crate::types::{NodeId, Raft};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The handles of one running central node.
pub struct Node {
    pub id: NodeId,
    pub raft: Raft,
    pub reader: Reader,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub limiter: RateLimiter,
    pub peers: Arc<Peers>,
    pub batcher: Batcher,
    pub freshness: Freshness,
    /// Requests with an id that are being proposed, so a retry joins the first attempt.
    pub in_flight: InFlight,
    /// The encryption keys every record on disk is sealed with, and the pass that re-seals
    /// records after they rotate.
    pub sealer: Arc<Sealer>,
    pub resealer: Arc<Resealer>,
}

impl Node {
    /// Who leads, as this node knows it.
    pub fn leader(&self) -> Leader {
        peers::leader(&self.raft, self.id)
    }

    pub fn is_leader(&self) -> bool {
        self.leader() == Leader::Me
    }

    /// A proof begun now, for a linearizable read: obtained on demand rather than waiting
    /// for the prober's next round.
    pub async fn prove_now(&self, budget: Duration) -> Result<Proof, String> {
        let as_of = Instant::now();
        let index = crate::freshness::read_index(self.id, &self.raft, &self.peers, &self.reader, budget).await?;
        Ok(Proof { index, as_of })
    }
}
