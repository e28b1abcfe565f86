//! A regional tier: the engine's policy for this tier, and its read and write paths.
//!
//! Copies live long (`entry_ttl`) and are kept fresh by the change feed, so a held copy
//! answers a read while the feed is proved fresh enough for it (`FeedState`); otherwise the
//! read goes to the central store. When no central node answers, a held copy answers
//! marked stale, with its true age, as long as the feed had reached the version the reader
//! needs. Writes go to the central store and update the cache from the acknowledged result
//! ("revalidated on write", as in KV).

use crate::config::Config;
use crate::freshness::FeedState;
use crate::metrics::Metrics;
use crate::tracking::Tracker;
use kv_common::{validate, NamespaceId};
use kv_proto::store::v1 as pb;
use kv_tier::upstream::Upstream;
use kv_tier::wire::{age_ms, effect_of, entry_of, trace_changes};
use kv_tier::{Copy, Policy, ReadSpec, Served, Source, Tier, TierResult};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When a regional copy is fresh, and how long it lives.
pub struct RegionalPolicy {
    feed: Arc<FeedState>,
    entry_ttl: Duration,
    max_feed_age: Duration,
}

impl RegionalPolicy {
    /// The age a read accepts from this tier's cache.
    fn acceptable(&self, spec: &ReadSpec) -> Duration {
        spec.max_age.min(self.max_feed_age)
    }

    /// Whether the copy reflects `min_version` itself (its version, or the position its fetch
    /// asked for), or the feed has reached it and the copy is one the feed keeps up to date:
    /// of this `epoch`. A copy of an older epoch (a flight that landed after the feed
    /// restarted) may have missed changes the feed passed by while it was being fetched.
    fn reaches(&self, copy: &Copy, min_version: u64, epoch: u64) -> bool {
        copy.reflects >= min_version || (copy.epoch == epoch && self.feed.applied() >= min_version)
    }
}

impl Policy for RegionalPolicy {
    fn fresh(&self, copy: &Copy, spec: &ReadSpec, epoch: u64) -> bool {
        copy.epoch == epoch
            && self.as_of(copy, epoch).elapsed() <= self.acceptable(spec)
            && self.reaches(copy, spec.min_version, epoch)
    }

    fn young(&self, copy: &Copy, spec: &ReadSpec) -> bool {
        copy.as_of.elapsed() <= spec.max_age
    }

    fn stale_ok(&self, copy: &Copy, spec: &ReadSpec, epoch: u64) -> bool {
        self.reaches(copy, spec.min_version, epoch)
    }

    fn lifetimes(&self, _: &ReadSpec) -> (Duration, Duration) {
        (self.entry_ttl, Duration::ZERO)
    }

    /// Every copy of this epoch is kept up to date by the feed, so it is as fresh as the
    /// feed is; one of an older epoch is only as fresh as its own fetch made it (the feed's
    /// proof, after a restart, says nothing of the changes it missed).
    fn as_of(&self, copy: &Copy, epoch: u64) -> Instant {
        match self.feed.as_of() {
            Some(f) if copy.epoch == epoch => f.max(copy.as_of),
            _ => copy.as_of,
        }
    }
}

/// Everything the handlers of one regional tier share.
pub struct Regional {
    pub config: Config,
    pub tier: Arc<Tier<Upstream, RegionalPolicy>>,
    pub feed: Arc<FeedState>,
    pub tracker: Tracker,
    pub metrics: Metrics,
}

/// The answers to one read, as the store API carries them.
pub struct Answers {
    pub served: Vec<Served>,
    /// The oldest of them, in milliseconds.
    pub age_ms: u32,
    /// Some answer is older than the reader asked for: no central node could do better.
    pub stale: bool,
}

impl Regional {
    pub fn new(config: Config) -> anyhow::Result<Arc<Regional>> {
        let upstream = Upstream::new(
            &config.central,
            &[kv_common::tls::Role::Central],
            Duration::from_millis(config.connect_timeout_ms),
            Duration::from_millis(config.request_timeout_ms),
        )?;
        let feed = Arc::new(FeedState::default());
        let policy = RegionalPolicy {
            feed: feed.clone(),
            entry_ttl: Duration::from_secs(config.entry_ttl_secs),
            max_feed_age: Duration::from_millis(config.max_feed_age_ms),
        };
        let metrics = Metrics::new();
        let tier = Tier::new(config.cache_bytes, upstream, policy, metrics.reads.clone());
        Ok(Arc::new(Regional {
            tracker: Tracker::new(config.tracking_bytes, Duration::from_secs(config.max_tracking_secs)),
            tier,
            feed,
            metrics,
            config,
        }))
    }

    /// What a read asks of this tier, from the request's fields.
    pub fn spec(&self, min_version: u64, max_age_ms: u32) -> ReadSpec {
        let max_age = match max_age_ms {
            0 => Duration::from_millis(self.config.max_feed_age_ms),
            n => Duration::from_millis(u64::from(n)),
        };
        ReadSpec { min_version, max_age, ..ReadSpec::default() }
    }

    /// Registers an edge's interest in keys it is about to read or write.
    pub fn track(&self, namespace_id: &str, keys: &[String], track: Option<&pb::Tracking>) {
        let Some(t) = track.filter(|t| !t.subscriber_id.is_empty()) else { return };
        let ttl = Duration::from_secs(u64::from(t.ttl_secs) + self.config.tracking_slack_secs);
        for k in keys {
            self.tracker.track((namespace_id.to_string(), k.clone()), &t.subscriber_id, ttl);
        }
    }

    /// Reads keys of one namespace through the engine; the first failure fails the read.
    pub async fn read(self: &Arc<Self>, ns: &NamespaceId, keys: &[String], spec: &ReadSpec) -> TierResult<Answers> {
        if spec.min_version > self.feed.applied() {
            // The edge has seen a newer version than the feed has applied: give the feed a moment.
            self.feed.reaches(spec.min_version, Duration::from_millis(self.config.catch_up_wait_ms)).await;
        }
        // A session token still ahead of the feed: read centrally without a flight, which
        // would hold up every reader of the keys if no write ever reached that version (see
        // `Tier::read_through`). An edge's own floor is committed, and coalesces as usual.
        let results = if spec.ahead && spec.min_version > self.feed.applied() {
            self.tier.read_through(&ns.to_string(), keys, spec).await
        } else {
            self.tier.read(&ns.to_string(), keys, spec).await
        };
        let mut served = Vec::with_capacity(keys.len());
        for r in results {
            served.push(r?);
        }
        let oldest = served.iter().map(|s| s.as_of).min().unwrap_or_else(Instant::now);
        let stale = served.iter().any(|s| s.source == Source::Stale);
        Ok(Answers { served, age_ms: age_ms(oldest.elapsed()), stale })
    }

    /// Forwards a write batch and updates the cache from what was acknowledged.
    pub async fn write(&self, req: pb::WriteRequest) -> TierResult<pb::WriteResponse> {
        NamespaceId::parse(&req.namespace_id)?;
        let keys: Vec<String> = req.ops.iter().map(|o| o.key.clone()).collect();
        self.track(&req.namespace_id, &keys, req.track.as_ref());
        let sent = Instant::now();
        let resp = self.tier.upstream().write(req.clone()).await?;
        self.tier.write_through_response(&req, &resp, sent, &self.spec(0, 0));
        Ok(resp)
    }

    /// The feed reached `version` (a change set, or progress without changes).
    pub fn advance(&self, version: u64) {
        self.tier.apply(version, []);
        self.feed.advance(version);
        self.metrics.feed_version.set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    /// Applies one change set of the feed and pushes it to the edges holding its keys.
    pub fn apply_changes(&self, mut set: pb::ChangeSet) {
        let version = set.version;
        let _spans = trace_changes(&mut set.changes, || tracing::info_span!("regional.push", version));
        self.metrics.feed_changes.inc_by(set.changes.len() as u64);
        let applied = self.tier.apply(set.version, set.changes.iter().map(effect_of));
        tracing::trace!(version = set.version, ?applied, "feed change set");
        self.feed.advance(set.version);
        let out = self.tracker.fan_out(&set);
        self.metrics.pushes_sent.inc_by(out.sent as u64);
        self.metrics.subscribers_dropped.inc_by(out.dropped as u64);
    }

    /// This tier's proof of freshness: the feed's position and how old the proof is.
    pub fn proof(&self) -> Option<(u64, Duration)> {
        let age = self.feed.age()?;
        (age <= Duration::from_millis(self.config.max_feed_age_ms)).then(|| (self.feed.applied(), age))
    }

    /// Validates what a read names before anything goes upstream.
    pub fn check_read(&self, namespace_id: &str, keys: &[String]) -> TierResult<NamespaceId> {
        let ns = NamespaceId::parse(namespace_id)?;
        for k in keys {
            validate::key(k, &self.config.limits)?;
        }
        Ok(ns)
    }

    /// Refreshes the gauges before a scrape.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        m.feed_age.set(self.feed.age().map_or(-1.0, |a| a.as_secs_f64()));
        m.subscribers.set(self.tracker.subscriber_count() as i64);
        m.tracked_keys.set(i64::try_from(self.tracker.tracked_keys()).unwrap_or(i64::MAX));
        m.reads.measure(&self.tier.cache);
        m.render()
    }
}

impl Answers {
    /// The wire form of one answer visible now.
    pub fn entry(s: &Served) -> Option<pb::Entry> {
        entry_of(&s.copy, kv_common::time::central_now_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(feed: &Arc<FeedState>) -> RegionalPolicy {
        let (entry_ttl, max_feed_age) = (Duration::from_secs(3600), Duration::from_secs(1));
        RegionalPolicy { feed: feed.clone(), entry_ttl, max_feed_age }
    }

    fn copy(version: u64, as_of: Instant) -> Copy {
        Copy::new(None, version, as_of, Duration::from_secs(3600), Duration::ZERO, 0)
    }

    #[test]
    fn a_held_copy_is_fresh_only_while_the_feed_is_proved_and_has_reached_the_reader() {
        let feed = Arc::new(FeedState::default());
        let p = policy(&feed);
        let old = Instant::now() - Duration::from_secs(10);
        let c = copy(5, old);
        let spec = |min_version| ReadSpec { min_version, max_age: Duration::from_secs(1), ..Default::default() };
        assert!(!p.fresh(&c, &spec(0), 0), "never proved: an hour-old copy is not fresh");
        feed.advance(20);
        feed.prove(20, Instant::now());
        assert!(p.fresh(&c, &spec(0), 0), "the feed keeps it current");
        assert!(p.fresh(&c, &spec(20), 0));
        assert!(!p.fresh(&c, &spec(21), 0), "the reader has seen a version the feed has not reached");
        assert!(!p.fresh(&c, &spec(0), 1), "a copy of an older epoch");
        // Stale answers too must reach what the reader has seen.
        assert!(p.stale_ok(&c, &spec(20), 0));
        assert!(!p.stale_ok(&c, &spec(21), 0), "older than the reader's own write: no stale answer");
        assert!(p.stale_ok(&copy(30, old), &spec(21), 0), "unless the copy itself is that new");
        // A copy of an older epoch missed what the feed passed by before it restarted: only
        // its own version and its own fetch's instant count.
        assert!(!p.stale_ok(&c, &spec(20), 1), "the feed has reached 20, but not for this copy");
        assert!(p.stale_ok(&c, &spec(5), 1));
        assert_eq!(p.as_of(&c, 1), old, "not lifted by the feed's proof");
        assert!(p.as_of(&c, 0) > old, "a copy of this epoch is as fresh as the feed");
    }
}
