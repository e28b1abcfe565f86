//! A regional tier's state and its read and write paths.
//!
//! Reads are answered from the cache while the change feed keeps it fresh; otherwise they go
//! to the central store, coalesced per key, and fill the cache. When no central node
//! answers, a held copy is served marked stale. Writes go to the central store and update
//! the cache from the acknowledged result ("revalidated on write", as in KV).

use crate::config::Config;
use crate::error::RegionalResult;
use crate::feed::FeedState;
use crate::metrics::Metrics;
use crate::tracking::Tracker;
use kv_common::cache::{Applied, CacheKey, Cached, Value, VersionedCache};
use kv_common::flight::{Flights, Role};
use kv_common::store_call;
use kv_common::upstream::{is_unreachable, Upstream};
use kv_common::wire::{effect_of, entry_of, value_of};
use kv_common::{time, validate, NamespaceId};
use kv_proto::store::v1 as pb;
use std::sync::Arc;
use std::time::Duration;
use tonic::Status;

/// A fetch's answer, with the feed position it was asked to be at least as new as.
type Fetched = Result<(Arc<Cached>, u64), Status>;

/// Everything the handlers of one regional tier share.
pub struct Regional {
    pub config: Config,
    pub cache: VersionedCache,
    pub flights: Flights<CacheKey, Fetched>,
    pub upstream: Upstream,
    pub feed: FeedState,
    pub tracker: Tracker,
    pub metrics: Metrics,
}

/// One key's answer at this tier.
pub struct Answer {
    pub cached: Arc<Cached>,
    pub stale: bool,
}

impl Regional {
    pub fn new(config: Config) -> anyhow::Result<Arc<Regional>> {
        let upstream = Upstream::new(&config.central, Duration::from_millis(config.upstream_timeout_ms))?;
        Ok(Arc::new(Regional {
            cache: VersionedCache::new(config.cache_bytes),
            flights: Flights::default(),
            upstream,
            feed: FeedState::default(),
            tracker: Tracker::default(),
            metrics: Metrics::new(),
            config,
        }))
    }

    fn entry_ttl(&self) -> Duration {
        Duration::from_secs(self.config.entry_ttl_secs)
    }

    fn fill(&self, value: Option<Value>, version: u64) -> Cached {
        Cached::new(value, version, self.entry_ttl(), Duration::ZERO, 0)
    }

    /// Registers an edge's interest in keys it is about to read.
    pub fn track(&self, namespace_id: &str, keys: &[String], track: Option<&pb::Tracking>) {
        let Some(t) = track.filter(|t| !t.subscriber_id.is_empty()) else { return };
        let ttl = Duration::from_secs(u64::from(t.ttl_secs) + self.config.tracking_slack_secs);
        for k in keys {
            self.tracker.track((namespace_id.to_string(), k.clone()), &t.subscriber_id, ttl);
        }
    }

    /// Whether a held copy answers a read that must reflect at least `min_version`.
    async fn usable(&self, c: &Cached, min_version: u64) -> bool {
        self.feed.is_live()
            && (c.version >= min_version
                || self.feed.reaches(min_version, Duration::from_millis(self.config.catch_up_wait_ms)).await)
    }

    /// One key: from the cache, from the central store, or stale.
    pub async fn get(self: &Arc<Self>, ns: &NamespaceId, key: &str, min_version: u64) -> RegionalResult<Answer> {
        let ck: CacheKey = (ns.to_string(), key.to_string());
        let held = self.cache.get(&ck);
        if let Some(c) = &held {
            if self.usable(c, min_version).await {
                self.metrics.reads.hit(c);
                return Ok(Answer { cached: c.clone(), stale: false });
            }
        }
        self.metrics.reads.misses.inc();
        match self.fetch(ck.clone(), min_version).await {
            Ok(cached) => Ok(Answer { cached, stale: false }),
            Err(e) if is_unreachable(&e) => match self.cache.get(&ck).or(held) {
                Some(c) => {
                    self.metrics.reads.stale_serves.inc();
                    Ok(Answer { cached: c, stale: true })
                }
                None => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Reads one key centrally, sharing the fetch with concurrent misses of that key.
    async fn fetch(self: &Arc<Self>, ck: CacheKey, min_version: u64) -> Result<Arc<Cached>, Status> {
        loop {
            let want = min_version.max(self.feed.applied());
            let epoch = self.feed.epoch();
            let me = self.clone();
            let key = ck.clone();
            let (out, role) =
                self.flights.run(ck.clone(), move || async move { me.fetch_central(key, want, epoch).await }).await;
            match role {
                Role::Leader => self.metrics.reads.upstream_fetches.inc(),
                Role::Waiter => self.metrics.reads.coalesced_waiters.inc(),
            }
            let (cached, asked) = out?;
            // A fetch started for an older read may not be new enough for this one.
            if asked >= min_version {
                return Ok(cached);
            }
        }
    }

    async fn fetch_central(self: Arc<Self>, ck: CacheKey, want: u64, epoch: u64) -> Fetched {
        let req = pb::GetRequest { namespace_id: ck.0.clone(), key: ck.1.clone(), min_version: want, track: None };
        let r = store_call!(self.upstream, get, req.clone()).await?.into_inner();
        let fetched = self.fill(r.entry.as_ref().map(value_of), r.entry.as_ref().map_or(r.version, |e| e.version));
        Ok((self.keep(ck, fetched, epoch), want))
    }

    /// Caches a central answer if the feed has been continuous since it was asked for, and
    /// returns the newest copy known (a change may have arrived meanwhile).
    fn keep(&self, ck: CacheKey, fetched: Cached, epoch: u64) -> Arc<Cached> {
        let fetched = Arc::new(fetched);
        if !self.feed.can_cache(epoch) {
            return fetched;
        }
        self.cache.keep(ck, fetched)
    }

    /// Several keys of one namespace; misses are read centrally in one call.
    pub async fn batch_get(
        &self,
        ns: &NamespaceId,
        keys: &[String],
        min_version: u64,
    ) -> RegionalResult<pb::BatchGetResponse> {
        let now = time::now_secs();
        let mut results: Vec<Option<Arc<Cached>>> = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let held = self.cache.get(&(ns.to_string(), k.clone()));
            match held {
                Some(c) if self.usable(&c, min_version).await => {
                    self.metrics.reads.hit(&c);
                    results.push(Some(c));
                }
                _ => {
                    self.metrics.reads.misses.inc();
                    missing.push(i);
                    results.push(None);
                }
            }
        }
        let mut stale = false;
        if !missing.is_empty() {
            let want = min_version.max(self.feed.applied());
            let epoch = self.feed.epoch();
            let req = pb::BatchGetRequest {
                namespace_id: ns.to_string(),
                keys: missing.iter().map(|&i| keys[i].clone()).collect(),
                min_version: want,
                track: None,
            };
            self.metrics.reads.upstream_fetches.inc();
            match store_call!(self.upstream, batch_get, req.clone()).await {
                Ok(r) => {
                    let r = r.into_inner();
                    for (&i, ke) in missing.iter().zip(r.results) {
                        let version = ke.entry.as_ref().map_or(r.read_version, |e| e.version);
                        let fetched = self.fill(ke.entry.as_ref().map(value_of), version);
                        results[i] = Some(self.keep((ns.to_string(), keys[i].clone()), fetched, epoch));
                    }
                }
                Err(e) if is_unreachable(&e) => {
                    for &i in &missing {
                        let c = self.cache.get(&(ns.to_string(), keys[i].clone())).ok_or_else(|| e.clone())?;
                        self.metrics.reads.stale_serves.inc();
                        results[i] = Some(c);
                    }
                    stale = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut read_version = u64::MAX;
        let results = keys
            .iter()
            .zip(results)
            .map(|(k, c)| {
                let entry = c.as_ref().and_then(|c| entry_of(c, now));
                if entry.is_none() {
                    read_version = read_version.min(c.map_or(0, |c| c.version));
                }
                pb::KeyEntry { key: k.clone(), entry }
            })
            .collect();
        let read_version = if read_version == u64::MAX { self.feed.applied() } else { read_version };
        Ok(pb::BatchGetResponse { results, read_version, stale })
    }

    /// Forwards a write batch and updates the cache from what was acknowledged.
    pub async fn write(&self, req: pb::WriteRequest) -> RegionalResult<pb::WriteResponse> {
        NamespaceId::parse(&req.namespace_id)?;
        let epoch = self.feed.epoch();
        let resp = store_call!(self.upstream, write, req.clone()).await?.into_inner();
        for (op, result) in req.ops.into_iter().zip(&resp.results) {
            if result.error.is_some() || result.version == 0 {
                continue;
            }
            let value = match op.op {
                Some(pb::write_op::Op::Put(p)) => {
                    Some(Value { bytes: p.value, metadata_json: p.metadata_json, expiration: result.expiration })
                }
                _ => None,
            };
            self.keep((req.namespace_id.clone(), op.key), self.fill(value, result.version), epoch);
        }
        Ok(resp)
    }

    /// Applies one change set of the feed to the cache and pushes it to the edges holding its keys.
    pub fn apply_changes(&self, set: &pb::ChangeSet) {
        for change in &set.changes {
            self.metrics.feed_changes.inc();
            let applied: Applied = self.cache.apply(
                effect_of(change),
                set.version,
                |k| self.flights.in_flight(k),
                |v| self.fill(v, set.version),
            );
            tracing::trace!(version = set.version, key = %change.key, ?applied, "feed change");
        }
        let out = self.tracker.fan_out(set);
        self.metrics.pushes_sent.inc_by(out.sent as u64);
        self.metrics.subscribers_dropped.inc_by(out.dropped as u64);
    }

    /// Validates what a read names before anything goes upstream.
    pub fn check_read(&self, namespace_id: &str, keys: &[String]) -> RegionalResult<NamespaceId> {
        let ns = NamespaceId::parse(namespace_id)?;
        for k in keys {
            validate::key(k, &self.config.limits)?;
        }
        Ok(ns)
    }

    /// Refreshes the gauges before a scrape.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        m.feed_version.set(self.feed.applied() as i64);
        m.subscribers.set(self.tracker.subscriber_count() as i64);
        m.tracked_keys.set(self.tracker.tracked_keys() as i64);
        m.reads.measure(&self.cache);
        m.render()
    }
}
