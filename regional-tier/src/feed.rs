//! The central change feed, followed by one `Watch` stream: it keeps the cache fresh and
//! hands every change to the tracker, which pushes it to the edges holding the key.
//!
//! The stream resumes after its last applied version when it breaks, on whichever central
//! node answers. Only a `Resync` (history lost) breaks continuity: the cache is dropped,
//! edges are told to revalidate, and the feed starts again from the central's present.

use crate::regional::Regional;
use kv_common::upstream::store_client;
use kv_proto::store::v1::{watch_event::Event, WatchRequest};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Pause before reopening a broken feed.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);

/// How far the cache is known to be fresh.
pub struct FeedState {
    applied: watch::Sender<u64>,
    /// Starts of a continuous feed; 0 = the feed has never started, so nothing may be cached.
    epoch: AtomicU64,
    live: AtomicBool,
}

impl Default for FeedState {
    fn default() -> Self {
        FeedState { applied: watch::Sender::new(0), epoch: AtomicU64::new(0), live: AtomicBool::new(false) }
    }
}

impl FeedState {
    /// The last central version whose changes are in the cache.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Identifies the current stretch of continuous feed.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether a read issued in `epoch` may be cached: the feed has been continuous since.
    pub fn can_cache(&self, epoch: u64) -> bool {
        epoch != 0 && epoch == self.epoch()
    }

    /// Whether the stream is open, so cached entries are being kept fresh.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Waits up to `max` for the feed to reach `version`.
    pub async fn reaches(&self, version: u64, max: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        let reached = matches!(tokio::time::timeout(max, rx.wait_for(|v| *v >= version)).await, Ok(Ok(_)));
        reached
    }

    fn advance(&self, version: u64) {
        self.applied.send_if_modified(|v| {
            let newer = version > *v;
            *v = (*v).max(version);
            newer
        });
    }
}

/// Follows the feed for as long as the process runs.
pub async fn follow(regional: Arc<Regional>) {
    let mut failures = 0usize;
    let mut resume: Option<u64> = None;
    loop {
        let (addr, channel) = regional.upstream.stream_channel(failures);
        let request = match resume {
            Some(v) => WatchRequest { from_version: v, from_now: false },
            None => WatchRequest { from_version: 0, from_now: true },
        };
        let mut stream = match store_client(channel).watch(request).await {
            Ok(s) => s.into_inner(),
            Err(e) => {
                tracing::debug!(central = addr, error = %e, "cannot open the change feed");
                failures += 1;
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        regional.metrics.feed_reconnects.inc();
        loop {
            let event = match stream.message().await {
                Ok(Some(e)) => e.event,
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(central = addr, error = %e, "change feed broke; resuming");
                    break;
                }
            };
            match event {
                Some(Event::Progress(p)) => {
                    if resume.is_none() {
                        // A fresh start: nothing cached before this point can be trusted.
                        regional.cache.clear();
                        regional.feed.epoch.fetch_add(1, Ordering::AcqRel);
                        regional.feed.applied.send_replace(p.applied_version);
                        regional.tracker.reset_all(p.applied_version);
                        resume = Some(p.applied_version);
                        tracing::info!(central = addr, version = p.applied_version, "following the change feed");
                    }
                    regional.feed.live.store(true, Ordering::Release);
                    failures = 0;
                }
                Some(Event::Changes(set)) => {
                    regional.feed.live.store(true, Ordering::Release);
                    regional.apply_changes(&set);
                    regional.feed.advance(set.version);
                    resume = Some(set.version);
                    failures = 0;
                }
                Some(Event::Resync(r)) => {
                    tracing::warn!(oldest = r.oldest_retained, "feed history lost; dropping the cache");
                    regional.metrics.resyncs.inc();
                    resume = None;
                    break;
                }
                None => {}
            }
        }
        regional.feed.live.store(false, Ordering::Release);
        failures += 1;
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}
