//! The central change feed, followed by one `Watch` stream, and the proof that it is live.
//!
//! The stream keeps the cache fresh and hands every change to the tracker, which pushes it
//! to the edges holding the key. It resumes after its last applied version when it breaks,
//! on the next central node. Only a `Resync` (history lost) or a fresh start breaks
//! continuity: the cache is dropped, edges are told to revalidate, and the feed starts again
//! from the central's present.
//!
//! A stream that delivers nothing proves nothing: a central follower cut off from its leader
//! keeps sending `Progress`. So every `probe_interval` the tier asks the node it follows for
//! its read index and records it (`freshness`); a feed that gets no new proof for
//! `switch_after` is abandoned for the next central node.

use crate::regional::Regional;
use kv_common::client::store_client;
use kv_proto::store::v1::{watch_event::Event, ReadIndexRequest, WatchRequest};
use kv_tier::wire::as_of;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Pause before reopening a broken feed.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

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
    let switch_after = Duration::from_millis(config.feed_switch_after_ms);
    // Opening is bounded too: a connection left half-open by a partition or a killed node
    // could otherwise hold the feed here for good (seed 22008 of the fault suite).
    let mut stream = match tokio::time::timeout(switch_after, store_client(channel.clone()).watch(request)).await {
        Ok(opened) => opened.map_err(|e| e.message().to_owned())?.into_inner(),
        Err(_) => return Err(format!("the feed did not open within {switch_after:?}")),
    };
    regional.metrics.feed_reconnects.inc();
    let opened = Instant::now();
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
                        *resume = Some(set.version);
                        regional.apply_changes(set);
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
    let (sent, sent_ms) = (Instant::now(), kv_common::time::now_ms());
    let mut req = tonic::Request::new(ReadIndexRequest {});
    req.set_timeout(Duration::from_millis(regional.config.feed_switch_after_ms));
    match store_client(channel).read_index(req).await {
        Ok(r) => {
            let r = r.into_inner();
            kv_common::time::learn_central_clock(sent_ms, r.central_time_ms);
            regional.feed.prove(r.version, as_of(sent, r.age_ms));
        }
        Err(e) => tracing::debug!(error = %e, "no freshness proof from the followed node"),
    }
}
