//! The push stream from the regional tier (mode `push` only): each pushed change replaces
//! the held copy of its key in place when newer; a Reset marks every copy for revalidation.

use crate::config::Mode;
use crate::edge::Edge;
use kv_common::cache::Applied;
use kv_common::wire::effect_of;
use kv_proto::tier::v1::{push_event::Event, pushes_client::PushesClient, SubscribeRequest};
use std::sync::Arc;
use std::time::Duration;

/// Pause before resubscribing after the stream broke.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);

/// Keeps a subscription open for as long as the process runs.
pub async fn follow(edge: Arc<Edge>) {
    if edge.config.mode != Mode::Push {
        return;
    }
    let mut failures = 0usize;
    loop {
        let (addr, channel) = edge.upstream.stream_channel(failures);
        let request = SubscribeRequest { subscriber_id: edge.config.id.clone() };
        match PushesClient::new(channel).subscribe(request).await {
            Ok(stream) => {
                tracing::info!(regional = addr, "subscribed to pushes");
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(event)) => {
                            failures = 0;
                            apply(&edge, event.event);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::info!(regional = addr, error = %e, "push stream broke");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(regional = addr, error = %e, "cannot subscribe to pushes"),
        }
        edge.subscribed.store(false, std::sync::atomic::Ordering::Release);
        failures += 1;
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

fn apply(edge: &Edge, event: Option<Event>) {
    match event {
        Some(Event::Reset(r)) => {
            edge.cache.bump_generation();
            edge.subscribed.store(true, std::sync::atomic::Ordering::Release);
            edge.metrics.resets.inc();
            tracing::debug!(version = r.version, "reset: every copy will be revalidated");
        }
        Some(Event::Changes(set)) => {
            for change in &set.changes {
                edge.metrics.pushes_received.inc();
                let applied = edge.cache.apply(
                    effect_of(change),
                    set.version,
                    |k| edge.flights.in_flight(k),
                    |v| edge.push_fill(v, set.version),
                );
                match applied {
                    Applied::Stored | Applied::Dropped => edge.metrics.pushes_applied.inc(),
                    Applied::Older | Applied::NotHeld => edge.metrics.pushes_ignored.inc(),
                }
            }
            edge.observe(set.version);
        }
        None => {}
    }
}
