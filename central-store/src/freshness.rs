//! How fresh this replica is, proved rather than assumed.
//!
//! A replica answers reads and serves the change feed from its own state machine, so an
//! answer is only as good as the proof that the replica is current. A `Proof` says: every
//! write acknowledged before the instant `as_of` has a version at or below `index`, and this
//! replica has applied `index`. The leader gets one by confirming its leadership with a
//! quorum (Raft's read index, openraft's `get_read_log_id`); a follower asks the leader for
//! its read index and waits until it has applied it. In both cases `as_of` is when the node
//! *started* asking, which is what makes the proof hold whatever the network delays.
//!
//! A prober renews the proof every `probe_interval`. A follower cut off from the leader, or a
//! leader that lost its quorum, gets no new proof: its proof ages, its reads stop counting as
//! fresh (`age` grows past what callers accept), and its health says so.

use crate::metrics::Metrics;
use crate::peers::{Leader, Peers};
use crate::storage::reader::Reader;
use crate::types::{NodeId, Raft};
use kv_common::client::node_channel;
use kv_proto::raft::v1::{raft_transport_client::RaftTransportClient, ReadIndexRequest};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A replica's proof of freshness (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proof {
    pub index: u64,
    pub as_of: Instant,
}

impl Proof {
    /// How old the proof is now.
    pub fn age(&self) -> Duration {
        self.as_of.elapsed()
    }
}

/// The newest proof this replica holds; `None` until the first one.
#[derive(Clone)]
pub struct Freshness {
    rx: watch::Receiver<Option<Proof>>,
}

impl Freshness {
    /// The newest proof, if any.
    pub fn current(&self) -> Option<Proof> {
        *self.rx.borrow()
    }

    /// How old this replica's state may be; `None` when it has never proved itself.
    pub fn age(&self) -> Option<Duration> {
        self.current().map(|p| p.age())
    }

    /// Waits until a proof at most `max_age` old is held, or `wait` has passed.
    pub async fn within(&self, max_age: Duration, wait: Duration) -> Option<Proof> {
        self.first(|p| p.age() <= max_age, wait).await
    }

    /// Waits until a proof begun at or after `start` is held, or `wait` has passed: a read
    /// under it reflects every write acknowledged before `start` (a linearizable read).
    pub async fn since(&self, start: Instant, wait: Duration) -> Option<Proof> {
        self.first(|p| p.as_of >= start, wait).await
    }

    async fn first(&self, good: impl Fn(&Proof) -> bool, wait: Duration) -> Option<Proof> {
        let deadline = Instant::now() + wait;
        let mut rx = self.rx.clone();
        loop {
            if let Some(p) = *rx.borrow_and_update() {
                if good(&p) {
                    return Some(p);
                }
            }
            match tokio::time::timeout_at(deadline.into(), rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }
}

/// What the prober needs.
pub struct Prober {
    pub id: NodeId,
    pub raft: Raft,
    pub reader: Reader,
    pub peers: Arc<Peers>,
    pub metrics: Arc<Metrics>,
    pub interval: Duration,
    /// How long one probe may take before it counts as failed.
    pub timeout: Duration,
}

impl Prober {
    /// Starts probing in the background; returns the proofs it produces.
    pub fn start(self) -> Freshness {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(self.run(tx));
        Freshness { rx }
    }

    async fn run(self, tx: watch::Sender<Option<Proof>>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let as_of = Instant::now();
            match tokio::time::timeout(self.timeout, self.probe()).await {
                Ok(Ok(index)) => {
                    tx.send_replace(Some(Proof { index, as_of }));
                    self.metrics.freshness_proofs.inc();
                }
                Ok(Err(why)) => tracing::debug!(%why, "no freshness proof this round"),
                Err(_) => tracing::debug!("freshness probe timed out"),
            }
            if tx.is_closed() {
                return;
            }
        }
    }

    async fn probe(&self) -> Result<u64, String> {
        read_index(self.id, &self.raft, &self.peers, &self.reader, self.timeout).await
    }
}

/// One read index, applied locally: the index every write acknowledged before this call
/// began is at or below.
pub async fn read_index(
    id: NodeId,
    raft: &Raft,
    peers: &Peers,
    reader: &Reader,
    timeout: Duration,
) -> Result<u64, String> {
    let index = match crate::peers::leader(raft, id) {
        Leader::Me => {
            let (read, _) = raft.get_read_log_id().await.map_err(|e| e.to_string())?;
            read.map_or(0, |l| l.index)
        }
        Leader::Other { id, addr } => {
            let ch = peers.channel(id, &addr).map_err(|e| e.to_string())?;
            let mut req = tonic::Request::new(ReadIndexRequest {});
            req.set_timeout(timeout);
            let reply = RaftTransportClient::new(node_channel(ch))
                .read_index(req)
                .await
                .map_err(|s| format!("leader {id}: {}", s.message()))?;
            reply.into_inner().index
        }
        Leader::Unknown => return Err("no leader known".into()),
    };
    reader.wait_applied(index, timeout).await.map_err(|e| e.to_string())?;
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn within_waits_for_a_young_enough_proof() {
        let (tx, rx) = watch::channel(None);
        let f = Freshness { rx };
        assert_eq!(f.within(Duration::from_secs(1), Duration::from_millis(10)).await, None, "never proved");
        let old = Proof { index: 3, as_of: Instant::now() - Duration::from_secs(5) };
        tx.send_replace(Some(old));
        assert_eq!(f.within(Duration::from_secs(1), Duration::from_millis(10)).await, None, "too old");
        let renew = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send_replace(Some(Proof { index: 4, as_of: Instant::now() }));
            tx
        });
        let p = f.within(Duration::from_secs(1), Duration::from_secs(5)).await.expect("the renewed proof");
        assert_eq!(p.index, 4);
        drop(renew.await);
    }
}
