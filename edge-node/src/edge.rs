//! An edge node's state and its read and write paths.
//!
//! A read is a HIT when this edge holds a copy that is fresh for the read's cacheTtl; a hot
//! copy near the end of its life is refreshed in the background. Otherwise the read is a
//! MISS that asks the regional tier, coalesced per key. When no upstream answers, a held
//! copy is served STALE up to `max_stale_secs` past its cacheTtl, never past its expiration.
//!
//! Every upstream read carries `min_version` = the newest version this edge has seen, so an
//! answer is never older than anything the edge already returned or wrote: read-your-writes
//! and monotonic reads survive evictions and resets.

use crate::config::{Config, Mode};
use crate::error::EdgeResult;
use crate::metrics::Metrics;
use kv_common::cache::{CacheKey, Cached, Value, VersionedCache};
use kv_common::flight::{Flights, Role};
use kv_common::store_call;
use kv_common::upstream::{is_unreachable, Upstream};
use kv_common::wire::value_of;
use kv_common::{time, NamespaceId};
use kv_proto::store::v1 as pb;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Status;

/// A fetch's answer: the copy, the `min_version` it was asked at, and whether upstream served it stale.
type Fetched = Result<(Arc<Cached>, u64, bool), Status>;

/// Where an answer came from, as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Hit,
    Miss,
    Stale,
}

/// Everything the handlers of one edge share.
pub struct Edge {
    pub config: Config,
    pub cache: VersionedCache,
    /// Mode `ttl` only: copies refreshed ahead of time, served once the held copy runs out.
    refreshed: VersionedCache,
    pub flights: Flights<CacheKey, Fetched>,
    pub upstream: Upstream,
    pub metrics: Metrics,
    /// The newest version this edge has seen (read, written or pushed).
    observed: AtomicU64,
    /// Whether the push stream is open (mode `push`); copies filled while it is down are
    /// revalidated when it comes back.
    pub subscribed: AtomicBool,
}

impl Edge {
    pub fn new(config: Config) -> anyhow::Result<Arc<Edge>> {
        let upstream = Upstream::new(&config.upstream, Duration::from_millis(config.upstream_timeout_ms))?;
        Ok(Arc::new(Edge {
            cache: VersionedCache::new(config.cache_bytes),
            refreshed: VersionedCache::new(config.cache_bytes / 8),
            flights: Flights::default(),
            upstream,
            metrics: Metrics::new(),
            observed: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            config,
        }))
    }

    /// Raises the version every later upstream read must reach.
    pub fn observe(&self, version: u64) {
        self.observed.fetch_max(version, Ordering::AcqRel);
    }

    fn max_stale(&self) -> Duration {
        Duration::from_secs(self.config.max_stale_secs)
    }

    /// A copy filled now, fresh for `cache_ttl`.
    pub fn fill(&self, value: Option<Value>, version: u64, cache_ttl: Duration, generation: u64) -> Cached {
        Cached::new(value, version, cache_ttl, self.max_stale(), generation)
    }

    fn default_cache_ttl(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.config.limits.default_cache_ttl_secs).unwrap_or(60))
    }

    /// What pushes fill when they race a fetch of the key.
    pub fn push_fill(&self, value: Option<Value>, version: u64) -> Cached {
        self.fill(value, version, self.default_cache_ttl(), self.cache.generation())
    }

    fn tracking(&self, cache_ttl: Duration) -> Option<pb::Tracking> {
        (self.config.mode == Mode::Push).then(|| pb::Tracking {
            subscriber_id: self.config.id.clone(),
            ttl_secs: u32::try_from(cache_ttl.as_secs()).unwrap_or(u32::MAX),
        })
    }

    /// One key, as a client reads it.
    pub async fn get(
        self: &Arc<Self>,
        ns: &NamespaceId,
        key: &str,
        cache_ttl: Duration,
    ) -> EdgeResult<(Arc<Cached>, Source)> {
        let ck: CacheKey = (ns.to_string(), key.to_string());
        let now = Instant::now();
        let held = self.cache.get(&ck).or_else(|| self.promote_refreshed(&ck));
        if let Some(c) = &held {
            if self.is_fresh(c, now, cache_ttl) {
                self.metrics.reads.hit(c);
                if self.refresh_due(c, now) && !self.flights.in_flight(&ck) {
                    self.refresh(ck, cache_ttl);
                }
                return Ok((c.clone(), Source::Hit));
            }
            if let Some(next) = self.promote_refreshed(&ck).filter(|n| self.is_fresh(n, now, cache_ttl)) {
                self.metrics.reads.hit(&next);
                return Ok((next, Source::Hit));
            }
        }
        self.metrics.reads.misses.inc();
        match self.fetch(ck.clone(), cache_ttl).await {
            Ok((c, false)) => Ok((self.cache.keep(ck, c), Source::Miss)),
            Ok((c, true)) => {
                // Upstream could not reach the store either: answer, but do not keep it as fresh.
                self.metrics.reads.stale_serves.inc();
                let newest = self.cache.get(&ck).filter(|h| h.version > c.version).unwrap_or(c);
                Ok((newest, Source::Stale))
            }
            Err(e) if is_unreachable(&e) => match self.stale_copy(&ck, held) {
                Some(c) => Ok((c, Source::Stale)),
                None => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    fn is_fresh(&self, c: &Cached, now: Instant, cache_ttl: Duration) -> bool {
        c.fresh_for_read(now, cache_ttl, self.cache.generation()) && !c.is_expired(time::now_secs())
    }

    /// Refetches a hot key in the background. In mode `push` the new copy replaces the held
    /// one at once, as a push would; in mode `ttl` it waits aside until the held copy's
    /// cacheTtl ends, so a copy still lives exactly its cacheTtl, as in KV.
    fn refresh(self: &Arc<Self>, ck: CacheKey, cache_ttl: Duration) {
        self.metrics.refreshes.inc();
        let me = self.clone();
        tokio::spawn(async move {
            match me.fetch(ck.clone(), cache_ttl).await {
                Ok((c, false)) if me.config.mode == Mode::Ttl => {
                    me.refreshed.offer(ck, c);
                }
                Ok((c, false)) => {
                    me.cache.keep(ck, c);
                }
                Ok((_, true)) => {}
                Err(e) => tracing::debug!(error = %e, "background refresh failed"),
            }
        });
    }

    /// Moves a copy refreshed ahead of time into the cache, once the held one has run out.
    fn promote_refreshed(&self, ck: &CacheKey) -> Option<Arc<Cached>> {
        let next = self.refreshed.get(ck)?;
        self.refreshed.remove(ck);
        Some(self.cache.keep(ck.clone(), next))
    }

    /// A held copy still within its stale-if-error window, for when no upstream answers.
    fn stale_copy(&self, ck: &CacheKey, held: Option<Arc<Cached>>) -> Option<Arc<Cached>> {
        let c = self.cache.get(ck).or(held)?;
        (Instant::now() < c.hold_until).then(|| {
            self.metrics.reads.stale_serves.inc();
            c
        })
    }

    /// Whether a hit is late enough in its copy's life to refresh the key ahead of time.
    fn refresh_due(&self, c: &Cached, now: Instant) -> bool {
        let life = c.fresh_until().saturating_duration_since(c.filled_at);
        now.saturating_duration_since(c.filled_at) >= life.mul_f64(self.config.refresh_ahead)
    }

    /// Reads a key upstream, sharing the fetch with concurrent misses and refreshes of it;
    /// the caller decides where the copy goes.
    async fn fetch(self: &Arc<Self>, ck: CacheKey, cache_ttl: Duration) -> Result<(Arc<Cached>, bool), Status> {
        loop {
            let min_version = self.observed.load(Ordering::Acquire);
            let me = self.clone();
            let key = ck.clone();
            let (out, role) = self
                .flights
                .run(ck.clone(), move || async move { me.fetch_upstream(key, cache_ttl, min_version).await })
                .await;
            match role {
                Role::Leader => self.metrics.reads.upstream_fetches.inc(),
                Role::Waiter => self.metrics.reads.coalesced_waiters.inc(),
            }
            let (c, asked, stale) = out?;
            if asked >= min_version {
                return Ok((c, stale));
            }
        }
    }

    async fn fetch_upstream(self: Arc<Self>, ck: CacheKey, cache_ttl: Duration, min_version: u64) -> Fetched {
        let generation = self.cache.generation();
        let req = pb::GetRequest {
            namespace_id: ck.0.clone(),
            key: ck.1.clone(),
            min_version,
            track: self.tracking(cache_ttl),
        };
        let r = store_call!(self.upstream, get, req.clone()).await?.into_inner();
        let version = r.entry.as_ref().map_or(r.version, |e| e.version);
        let fetched = Arc::new(self.fill(r.entry.as_ref().map(value_of), version, cache_ttl, generation));
        if !r.stale {
            self.observe(version);
        }
        Ok((fetched, min_version, r.stale))
    }

    /// Several keys of one namespace: held fresh copies, the rest in one upstream call.
    pub async fn get_many(
        &self,
        ns: &NamespaceId,
        keys: &[String],
        cache_ttl: Duration,
    ) -> EdgeResult<Vec<Arc<Cached>>> {
        let now = Instant::now();
        let generation = self.cache.generation();
        let mut out: Vec<Option<Arc<Cached>>> = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match self.cache.get(&(ns.to_string(), k.clone())) {
                Some(c) if c.fresh_for_read(now, cache_ttl, generation) && !c.is_expired(time::now_secs()) => {
                    self.metrics.reads.hit(&c);
                    out.push(Some(c));
                }
                _ => {
                    self.metrics.reads.misses.inc();
                    missing.push(i);
                    out.push(None);
                }
            }
        }
        if !missing.is_empty() {
            let req = pb::BatchGetRequest {
                namespace_id: ns.to_string(),
                keys: missing.iter().map(|&i| keys[i].clone()).collect(),
                min_version: self.observed.load(Ordering::Acquire),
                track: self.tracking(cache_ttl),
            };
            self.metrics.reads.upstream_fetches.inc();
            match store_call!(self.upstream, batch_get, req.clone()).await {
                Ok(r) => {
                    let r = r.into_inner();
                    for (&i, ke) in missing.iter().zip(r.results) {
                        let version = ke.entry.as_ref().map_or(r.read_version, |e| e.version);
                        let c = Arc::new(self.fill(ke.entry.as_ref().map(value_of), version, cache_ttl, generation));
                        out[i] = Some(if r.stale { c } else { self.cache.keep((ns.to_string(), keys[i].clone()), c) });
                    }
                    if !r.stale {
                        self.observe(r.read_version);
                    }
                }
                Err(e) if is_unreachable(&e) => {
                    for &i in &missing {
                        let ck = (ns.to_string(), keys[i].clone());
                        out[i] = Some(self.stale_copy(&ck, None).ok_or_else(|| e.clone())?);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Sends a write batch upstream; acknowledged items go into this edge's cache at once,
    /// so every later read here sees them (read-your-writes).
    pub async fn write(&self, req: pb::WriteRequest) -> EdgeResult<pb::WriteResponse> {
        let resp = store_call!(self.upstream, write, req.clone()).await?.into_inner();
        let generation = self.cache.generation();
        for (op, result) in req.ops.into_iter().zip(&resp.results) {
            if result.error.is_some() || result.version == 0 {
                continue;
            }
            self.metrics.writes.inc();
            self.observe(result.version);
            let value = match op.op {
                Some(pb::write_op::Op::Put(p)) => {
                    Some(Value { bytes: p.value, metadata_json: p.metadata_json, expiration: result.expiration })
                }
                _ => None,
            };
            let c = self.fill(value, result.version, self.default_cache_ttl(), generation);
            self.cache.offer((req.namespace_id.clone(), op.key), Arc::new(c));
        }
        Ok(resp)
    }

    /// What `/health` says: always serving (from cache at worst), and whether pushes flow.
    pub fn health(&self) -> (bool, String) {
        let text = match self.config.mode {
            Mode::Ttl => "ready (mode ttl)",
            Mode::Push if self.subscribed.load(Ordering::Acquire) => "ready (push stream up)",
            Mode::Push => "serving from cache (push stream down)",
        };
        (true, text.into())
    }

    /// Refreshes the gauges before a scrape.
    pub fn render_metrics(&self) -> String {
        self.metrics.reads.measure(&self.cache);
        self.metrics.render()
    }
}
