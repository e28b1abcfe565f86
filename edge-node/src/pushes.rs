//! The push stream from the regional tier (mode `push` only): each pushed change replaces
//! the held copy of its key in place when newer; a Reset marks every copy for revalidation.
//!
//! The stream is always on the endpoint the edge's reads use (`Upstream::preferred`): reads
//! register the edge's interest in keys at the regional tier they reach, so when reads fail
//! over to another endpoint, the stream moves there too (and its first event, a Reset,
//! revalidates what was tracked elsewhere).

use crate::config::Mode;
use crate::edge::Edge;
use kv_proto::tier::v1::{push_event::Event, pushes_client::PushesClient, SubscribeRequest};
use kv_tier::wire::{effect_of, trace_changes};
use kv_tier::Applied;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Pause before resubscribing after the stream broke.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// Keeps a subscription open for as long as the process runs.
pub async fn follow(edge: Arc<Edge>) {
    if edge.config.mode != Mode::Push {
        return;
    }
    let upstream = edge.tier.upstream();
    let mut preferred = upstream.watch_preferred();
    loop {
        let at = *preferred.borrow_and_update();
        let (addr, channel) = upstream.endpoint(at);
        let request = SubscribeRequest { subscriber_id: edge.config.id.clone() };
        // Opening is bounded: a connection left half-open by a partition must not hold the
        // subscription here for good.
        let mut client = PushesClient::new(kv_common::client::node_channel(channel));
        let opened = tokio::time::timeout(edge.default_budget(), client.subscribe(request))
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("the push stream did not open in time")));
        match opened {
            Ok(stream) => {
                tracing::info!(regional = addr, "subscribed to pushes");
                let mut stream = stream.into_inner();
                loop {
                    tokio::select! {
                        message = stream.message() => match message {
                            Ok(Some(event)) => apply(&edge, event.event),
                            Ok(None) => break,
                            Err(e) => {
                                tracing::info!(regional = addr, error = %e, "push stream broke");
                                break;
                            }
                        },
                        _ = preferred.changed() => {
                            tracing::info!(from = addr, "reads moved to another regional endpoint; following them");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(regional = addr, error = %e, "cannot subscribe to pushes");
                // Move on: reads will find the endpoint that answers, and the stream follows.
                if *preferred.borrow() == at && upstream.len() > 1 {
                    upstream.prefer(at + 1);
                }
            }
        }
        edge.subscribed.store(false, Ordering::Release);
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

fn apply(edge: &Edge, event: Option<Event>) {
    match event {
        Some(Event::Reset(r)) => {
            edge.tier.reset(r.version.max(edge.tier.applied()), false);
            edge.subscribed.store(true, Ordering::Release);
            edge.metrics.resets.inc();
            tracing::debug!(version = r.version, "reset: every copy will be revalidated");
        }
        Some(Event::Changes(mut set)) => {
            let version = set.version;
            let _spans = trace_changes(&mut set.changes, || tracing::info_span!("edge.push", version));
            edge.metrics.pushes_received.inc_by(set.changes.len() as u64);
            for applied in edge.tier.apply(set.version, set.changes.iter().map(effect_of)) {
                match applied {
                    Applied::Stored | Applied::Dropped => edge.metrics.pushes_applied.inc(),
                    Applied::Older | Applied::NotHeld => edge.metrics.pushes_ignored.inc(),
                }
            }
            edge.observe(set.version);
        }
        Some(Event::Untracked(u)) => {
            // Pushes for these keys stop: the copies cannot be trusted to stay current.
            for key in u.keys {
                edge.tier.forget((u.namespace_id.clone(), key), u64::MAX);
            }
        }
        None => {}
    }
}
