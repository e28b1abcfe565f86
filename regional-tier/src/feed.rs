//! The central change feed, followed by one `Watch` stream, and the proof that it is live.
//!
//! The stream keeps the cache fresh and hands every change to the tracker, which pushes it
//! to the edges holding the key. It resumes after its last applied version when it breaks,
//! on the next central node. Only a `Resync` (history lost) or a fresh start breaks
//! continuity: the cache is dropped, edges are told to revalidate, and the feed starts again
//! from the central's present.
//!
//! A stream that delivers nothing proves nothing: a central follower cut off from its leader
//! keeps sending `Progress`. So liveness rests on proofs. Every `probe_interval` the tier
//! asks the node it follows for its read index (`ReadIndex`: a version every write
//! acknowledged before some instant is at or below). Once the feed has applied that
//! version, the cache is fresh as of that instant. The cache's age is how long ago that
//! was; a feed whose age passes `switch_after` is abandoned for the next central node.

use crate::regional::Regional;
use kv_common::client::store_client;
use kv_proto::store::v1::{watch_event::Event, ReadIndexRequest, WatchRequest};
use kv_tier::wire::as_of;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::transport::Channel;

/// Pause before reopening a broken feed.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// How far the cache is known to be applied, and how fresh that is proved to be.
pub struct FeedState {
    applied: watch::Sender<u64>,
    proof: Mutex<Proofs>,
}

#[derive(Default)]
struct Proofs {
    /// The cache reflects every write acknowledged before this instant.
    as_of: Option<Instant>,
    /// Proofs whose version the feed has not reached yet, oldest first.
    waiting: VecDeque<(u64, Instant)>,
}

impl Default for FeedState {
    fn default() -> Self {
        FeedState { applied: watch::Sender::new(0), proof: Mutex::default() }
    }
}

impl FeedState {
    fn lock(&self) -> MutexGuard<'_, Proofs> {
        self.proof.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last central version whose changes are in the cache.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// The instant the cache is fresh as of, if it was ever proved.
    pub fn as_of(&self) -> Option<Instant> {
        self.lock().as_of
    }

    /// How old the cache may be.
    pub fn age(&self) -> Option<Duration> {
        self.as_of().map(|a| a.elapsed())
    }

    /// Waits up to `max` for the feed to reach `version`.
    pub async fn reaches(&self, version: u64, max: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        let reached = matches!(tokio::time::timeout(max, rx.wait_for(|v| *v >= version)).await, Ok(Ok(_)));
        reached
    }

    /// A central node proved that every write acknowledged before `at` is at or below `index`.
    pub fn prove(&self, index: u64, at: Instant) {
        let applied = self.applied();
        let mut p = self.lock();
        if index <= applied {
            p.as_of = p.as_of.max(Some(at));
        } else {
            p.waiting.push_back((index, at));
        }
    }

    /// The feed applied everything up to `version`.
    pub fn advance(&self, version: u64) {
        self.applied.send_if_modified(|v| {
            let newer = version > *v;
            *v = (*v).max(version);
            newer
        });
        let mut p = self.lock();
        while let Some(&(index, at)) = p.waiting.front() {
            if index > version {
                break;
            }
            p.as_of = p.as_of.max(Some(at));
            p.waiting.pop_front();
        }
    }

    /// A fresh start at `version`: nothing from before is proved any more.
    fn restart(&self, version: u64) {
        *self.lock() = Proofs::default();
        self.applied.send_replace(version);
    }
}

/// Follows the feed for as long as the process runs.
pub async fn follow(regional: Arc<Regional>) {
    let mut endpoint = regional.tier.upstream().preferred();
    let mut resume: Option<u64> = None;
    loop {
        let (addr, channel) = regional.tier.upstream().endpoint(endpoint);
        let addr = addr.to_owned();
        match follow_one(&regional, &addr, channel, &mut resume).await {
            Ok(()) => tracing::info!(central = %addr, "change feed ended; resuming"),
            Err(why) => tracing::info!(central = %addr, %why, "leaving this central node's feed"),
        }
        endpoint += 1;
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// Follows one central node's feed until it breaks or stops proving itself fresh.
async fn follow_one(
    regional: &Arc<Regional>,
    addr: &str,
    channel: Channel,
    resume: &mut Option<u64>,
) -> Result<(), String> {
    let config = &regional.config;
    let request = match *resume {
        Some(v) => WatchRequest { from_version: v, from_now: false },
        None => WatchRequest { from_version: 0, from_now: true },
    };
    let mut stream =
        store_client(channel.clone()).watch(request).await.map_err(|e| e.message().to_owned())?.into_inner();
    regional.metrics.feed_reconnects.inc();
    let opened = Instant::now();
    let switch_after = Duration::from_millis(config.feed_switch_after_ms);
    let mut probe = tokio::time::interval(Duration::from_millis(config.probe_interval_ms.max(10)));
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = stream.message() => {
                let event = match message {
                    Ok(Some(e)) => e.event,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(format!("the feed broke: {}", e.message())),
                };
                match event {
                    Some(Event::Progress(p)) => {
                        if resume.is_none() {
                            // A fresh start: nothing cached before this point can be trusted.
                            regional.tier.reset(p.applied_version, true);
                            regional.feed.restart(p.applied_version);
                            regional.tracker.reset_all(p.applied_version);
                            tracing::info!(central = addr, version = p.applied_version, "following the change feed");
                        }
                        regional.advance(p.applied_version);
                        *resume = Some(resume.unwrap_or(0).max(p.applied_version));
                    }
                    Some(Event::Changes(set)) => {
                        regional.apply_changes(&set);
                        *resume = Some(set.version);
                    }
                    Some(Event::Resync(r)) => {
                        tracing::warn!(oldest = r.oldest_retained, "feed history lost; dropping the cache");
                        regional.metrics.resyncs.inc();
                        *resume = None;
                        return Ok(());
                    }
                    None => {}
                }
            }
            _ = probe.tick() => {
                let since = regional.feed.as_of().map_or(opened, |a| a.max(opened));
                if since.elapsed() > switch_after {
                    return Err(format!("no proof of freshness for {:?}", since.elapsed()));
                }
                tokio::spawn(prove(regional.clone(), channel.clone()));
            }
        }
    }
}

/// Asks the followed node for its read index, and records the proof it gives.
async fn prove(regional: Arc<Regional>, channel: Channel) {
    let sent = Instant::now();
    let mut req = tonic::Request::new(ReadIndexRequest {});
    req.set_timeout(Duration::from_millis(regional.config.upstream_timeout_ms));
    match store_client(channel).read_index(req).await {
        Ok(r) => {
            let r = r.into_inner();
            regional.feed.prove(r.version, as_of(sent, r.age_ms));
        }
        Err(e) => tracing::debug!(error = %e, "no freshness proof from the followed node"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_counts_only_once_the_feed_has_reached_its_version() {
        let f = FeedState::default();
        f.advance(5);
        let t0 = Instant::now();
        f.prove(8, t0);
        assert_eq!(f.as_of(), None, "the feed is behind the proof: replaying is not being current");
        f.advance(7);
        assert_eq!(f.as_of(), None);
        f.advance(8);
        assert_eq!(f.as_of(), Some(t0));
        let t1 = t0 + Duration::from_millis(10);
        f.prove(3, t1);
        assert_eq!(f.as_of(), Some(t1), "an older version proved later moves the instant on");
        f.restart(100);
        assert_eq!((f.as_of(), f.applied()), (None, 100));
    }
}
