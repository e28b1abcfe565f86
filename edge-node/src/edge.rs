//! An edge node: the engine's policy for this tier, and its read and write paths.
//!
//! A read is a HIT when this edge holds a copy that is fresh for the read's cacheTtl,
//! counted from the instant the copy is fresh *as of*; a hot copy near the end of its life
//! is refreshed in the background. Otherwise the read is a MISS that asks the regional tier
//! through the engine (coalesced, ordered against pushes). When upstream cannot give a fresh
//! answer, a copy is served STALE up to `max_stale_secs` past its cacheTtl, never past its
//! expiration.
//!
//! Every upstream read carries `min_version` = the newest version this edge has seen, so an
//! answer is never older than anything the edge already returned or wrote: read-your-writes
//! and monotonic reads survive evictions and resets. At start, before its first read, the
//! edge learns the central store's read index, so they survive a restart of the edge too.

use crate::config::{Config, Mode};
use crate::metrics::Metrics;
use crate::tokens::Tokens;
use crate::watch::{Hub, Opener};
use kv_common::{validate, NamespaceId};
use kv_proto::store::v1 as pb;
use kv_tier::cache::VersionedCache;
use kv_tier::upstream::Upstream;
use kv_tier::{CacheKey, Copy, Policy, ReadSpec, Served, Source, Tier, TierResult};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How fresh a client asked a read to be, beyond its cacheTtl.
#[derive(Debug, Clone, Copy, Default)]
pub struct Want {
    /// Linearizable: read at the central store under a read index taken after the read began.
    pub strong: bool,
    /// A session token: the answer reflects at least this version.
    pub min_version: u64,
}

/// When an edge copy is fresh, and how long it lives.
pub struct EdgePolicy {
    max_stale: Duration,
    max_copy: Duration,
    default_cache_ttl: Duration,
}

impl EdgePolicy {
    fn cache_ttl(&self, spec: &ReadSpec) -> Duration {
        spec.cache_ttl.unwrap_or(self.default_cache_ttl).min(self.max_copy)
    }
}

impl Policy for EdgePolicy {
    fn fresh(&self, copy: &Copy, spec: &ReadSpec, epoch: u64) -> bool {
        copy.epoch == epoch && copy.fresh_for_read(Instant::now(), self.cache_ttl(spec))
    }

    fn young(&self, copy: &Copy, spec: &ReadSpec) -> bool {
        copy.fresh_for_read(Instant::now(), self.cache_ttl(spec))
    }

    /// Stale-if-error (SPEC 4.8): at most `max_stale` past the end of *this reader's*
    /// cacheTtl. The copy may have been filled by a read with a longer one and be held for
    /// it; a reader with a short cacheTtl must still not get an answer older than its own
    /// bound allows.
    fn stale_ok(&self, copy: &Copy, spec: &ReadSpec, _: u64) -> bool {
        let now = Instant::now();
        now < copy.hold_until && now < copy.as_of + self.cache_ttl(spec) + self.max_stale
    }

    fn lifetimes(&self, spec: &ReadSpec) -> (Duration, Duration) {
        (self.cache_ttl(spec), self.max_stale)
    }
}

/// Everything the handlers of one edge share.
pub struct Edge {
    pub config: Config,
    pub tier: Arc<Tier<Upstream, EdgePolicy>>,
    /// Mode `ttl` only: copies refreshed ahead of time, served once the held copy runs out.
    refreshed: VersionedCache,
    pub metrics: Metrics,
    /// The newest version this edge has seen (read, written or pushed).
    observed: AtomicU64,
    /// Whether the push stream is open (mode `push`).
    pub subscribed: AtomicBool,
    /// Set once the edge has learned the central read index it started at.
    ready: watch::Sender<bool>,
    /// Who calls come from (see `tokens`).
    pub tokens: Tokens,
    /// The watch streams' namespace feeds.
    pub watches: Hub,
}

impl Edge {
    pub fn new(config: Config) -> anyhow::Result<Arc<Edge>> {
        let upstream = Upstream::new(
            &config.upstream,
            &[kv_common::tls::Role::Regional],
            Duration::from_millis(config.connect_timeout_ms),
            Duration::from_millis(config.request_timeout_ms),
        )?;
        let policy = EdgePolicy {
            max_stale: Duration::from_secs(config.max_stale_secs),
            max_copy: Duration::from_secs(config.max_copy_secs),
            default_cache_ttl: secs(config.limits.default_cache_ttl_secs),
        };
        let metrics = Metrics::new();
        let tier = Tier::new(config.cache_bytes, upstream, policy, metrics.reads.clone());
        let feeds_from = tier.clone();
        let opener: Opener = Arc::new(move |req| {
            let tier = feeds_from.clone();
            Box::pin(async move { tier.upstream().watch(req).await })
        });
        let watches = Hub::new(opener, metrics.watch_feeds.clone(), metrics.watchers.clone());
        let tokens = Tokens::new(
            config.admin_token.require()?,
            Duration::from_millis(config.token_cache_ms),
            config.token_cache_bytes,
        );
        Ok(Arc::new(Edge {
            tokens,
            tier,
            // An eighth of the cache, but room for a few copies however small the cache.
            refreshed: VersionedCache::aside((config.cache_bytes / 8).max(16 << 10)),
            metrics,
            observed: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            ready: watch::Sender::new(false),
            watches,
            config,
        }))
    }

    /// Raises the version every later upstream read must reach.
    pub fn observe(&self, version: u64) {
        self.observed.fetch_max(version, Ordering::AcqRel);
    }

    /// The budget of a call that set no deadline.
    pub fn default_budget(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    /// Learns, once at start, a central version that every write acknowledged before this
    /// edge started is at or below; reads wait for it.
    pub async fn learn_start_version(self: Arc<Self>) {
        let started = Instant::now();
        loop {
            match self.tier.upstream().read_index().await {
                Ok((version, as_of)) if as_of >= started => {
                    self.observe(version);
                    self.ready.send_replace(true);
                    tracing::info!(version, "learned the version this edge started at");
                    return;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "cannot learn the start version yet"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits (within the call's deadline) until the edge knows its start version.
    async fn until_ready(&self) -> TierResult<()> {
        if self.is_ready() {
            return Ok(());
        }
        let mut rx = self.ready.subscribe();
        let wait = kv_common::call::remaining_or(self.default_budget());
        let ready = matches!(tokio::time::timeout(wait, rx.wait_for(|r| *r)).await, Ok(Ok(_)));
        if ready {
            Ok(())
        } else {
            Err(kv_common::KvError::Unavailable("the edge cannot reach its regional tier yet".into()).into())
        }
    }

    /// What a read with `cache_ttl` asks of the regional tier.
    fn spec(&self, cache_ttl: Duration) -> ReadSpec {
        let fresh_within = Duration::from_millis(self.config.fresh_within_ms);
        ReadSpec {
            min_version: self.observed.load(Ordering::Acquire),
            max_age: fresh_within.min(cache_ttl / 2).max(Duration::from_millis(1)),
            cache_ttl: Some(cache_ttl),
            track: self.tracking(cache_ttl),
            ..ReadSpec::default()
        }
    }

    fn tracking(&self, cache_ttl: Duration) -> Option<pb::Tracking> {
        let ttl = cache_ttl.min(Duration::from_secs(self.config.max_copy_secs));
        (self.config.mode == Mode::Push).then(|| pb::Tracking {
            subscriber_id: self.config.id.clone(),
            ttl_secs: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
        })
    }

    /// Keys of one namespace, as a client reads them; one answer per key, in order.
    pub async fn read(
        self: &Arc<Self>,
        ns: &NamespaceId,
        keys: &[String],
        cache_ttl: Duration,
        want: Want,
    ) -> Vec<TierResult<Served>> {
        if let Err(e) = self.until_ready().await {
            return keys.iter().map(|_| Err(e.clone())).collect();
        }
        let ns = ns.to_string();
        let mut spec = self.spec(cache_ttl);
        if want.strong || want.min_version > spec.min_version {
            // Linearizable, or a session token newer than anything seen here: no held copy
            // or flight can answer it (see `Tier::read_through`).
            spec.linearizable = want.strong;
            spec.ahead = want.min_version > spec.min_version;
            spec.min_version = spec.min_version.max(want.min_version);
            let out = self.tier.read_through(&ns, keys, &spec).await;
            if out.iter().any(Result::is_ok) {
                // Some node had applied the token, so it is a committed version.
                self.observe(want.min_version);
            }
            for (k, s) in keys.iter().zip(&out) {
                let Ok(s) = s else { continue };
                self.observe(s.copy.version);
                // A copy refreshed ahead of time, older than this answer, must never be promoted.
                self.refreshed.remove_older((ns.clone(), k.clone()), s.copy.version + 1);
            }
            return out;
        }
        spec.at_least = want.min_version;
        if self.config.mode == Mode::Ttl {
            for k in keys {
                self.promote_refreshed(&(ns.clone(), k.clone()), &spec);
            }
        }
        let out = self.tier.read(&ns, keys, &spec).await;
        let now = Instant::now();
        for (k, r) in keys.iter().zip(&out) {
            let Ok(s) = r else { continue };
            self.observe(s.copy.version);
            let key = (ns.clone(), k.clone());
            if s.source == Source::Hit && self.refresh_due(&s.copy, now) && !self.tier.in_flight(&key) {
                self.refresh(key, spec.clone());
            }
        }
        out
    }

    /// Refetches a hot key in the background. In mode `push` the new copy replaces the held
    /// one at once, as a push would; in mode `ttl` it waits aside until the held copy's
    /// cacheTtl ends, so a copy still lives exactly its cacheTtl, as in KV.
    fn refresh(self: &Arc<Self>, key: CacheKey, spec: ReadSpec) {
        self.metrics.refreshes.inc();
        let me = self.clone();
        tokio::spawn(async move {
            let push = me.config.mode == Mode::Push;
            let got = me.tier.fetch(&key.0, std::slice::from_ref(&key.1), &spec, push).await;
            match got.into_iter().next() {
                Some(Ok(c)) => {
                    me.observe(c.version);
                    if !push {
                        me.refreshed.offer(key, c);
                    }
                }
                Some(Err(e)) => tracing::debug!(error = %e, "background refresh failed"),
                None => {}
            }
        });
    }

    /// Moves a copy refreshed ahead of time into the cache, once the held one has run out.
    /// A miss may have raced the refresh and been answered a newer version: the copy
    /// replaces only an older one, and fills an empty place only if it reflects what left
    /// it (`VersionedCache::succeed`).
    fn promote_refreshed(&self, key: &CacheKey, spec: &ReadSpec) {
        let Some(next) = self.refreshed.get(key) else { return };
        let held_fresh = self.tier.cache.get(key).is_some_and(|c| self.tier.policy.fresh(&c, spec, self.tier.epoch()));
        if !held_fresh {
            self.refreshed.remove_older(key.clone(), u64::MAX);
            self.tier.succeed(key.clone(), next);
        }
    }

    /// Whether a hit is late enough in its copy's life to refresh the key ahead of time.
    fn refresh_due(&self, c: &Copy, now: Instant) -> bool {
        let life = c.fresh_until().saturating_duration_since(c.as_of);
        now.saturating_duration_since(c.as_of) >= life.mul_f64(self.config.refresh_ahead)
    }

    /// Sends a write batch upstream (with a request id, so retries apply it once, and, in
    /// mode `push`, asking to be pushed the written keys' later changes). Acknowledged items
    /// go into this edge's cache at once, so every later read here sees them.
    pub async fn write(&self, mut req: pb::WriteRequest) -> TierResult<pb::WriteResponse> {
        if req.request_id.is_empty() {
            req.request_id = new_request_id();
        }
        req.track = self.tracking(secs(self.config.limits.default_cache_ttl_secs));
        let sent = Instant::now();
        let resp = self.tier.upstream().write(req.clone()).await?;
        let written = resp.results.iter().filter(|r| r.error.is_none() && r.version > 0).count();
        self.metrics.writes.inc_by(written as u64);
        let spec = self.spec(secs(self.config.limits.default_cache_ttl_secs));
        self.observe(self.tier.write_through_response(&req, &resp, sent, &spec));
        for (op, r) in req.ops.iter().zip(&resp.results) {
            let key = (req.namespace_id.clone(), op.key.clone());
            match &r.error {
                // A copy refreshed ahead of time before this write must never be promoted over it.
                None if r.version > 0 => {
                    self.refreshed.remove_older(key, r.version + 1);
                }
                // A failed condition told the key's current version: a copy held here is no
                // newer, so it goes (the next read fetches), and no later read goes behind it.
                Some(e) if e.http_status == 412 => {
                    self.observe(e.current_version);
                    self.refreshed.remove_older(key.clone(), u64::MAX);
                    self.tier.forget(key, u64::MAX);
                }
                _ => {}
            }
        }
        Ok(resp)
    }

    /// One page of keys, at least as new as anything this edge has seen.
    pub async fn list(&self, mut req: pb::ListRequest) -> TierResult<pb::ListResponse> {
        self.until_ready().await?;
        let spec = self.spec(secs(self.config.limits.default_cache_ttl_secs));
        req.min_version = spec.min_version;
        req.max_age_ms = u32::try_from(spec.max_age.as_millis()).unwrap_or(u32::MAX);
        Ok(self.tier.upstream().list(req).await?)
    }

    /// A namespace change was committed at `version`: later reads here must reflect it.
    pub fn namespace_changed(&self, version: u64, deleted: Option<&NamespaceId>) {
        self.observe(version);
        if let Some(ns) = deleted {
            self.tier.apply(version, [kv_tier::Effect::DropNamespace(ns.to_string())]);
            self.refreshed.remove_namespace(&ns.to_string());
        }
    }

    /// Checks a read's keys and cacheTtl.
    pub fn cache_ttl(&self, asked: Option<i64>) -> Result<Duration, kv_common::KvError> {
        Ok(secs(validate::cache_ttl(asked, &self.config.limits)?))
    }

    /// What `/health` says: always serving (from cache at worst), and whether pushes flow.
    pub fn health(&self) -> (bool, String) {
        let text = match self.config.mode {
            _ if !self.is_ready() => "starting: learning the central version",
            Mode::Ttl => "ready (mode ttl)",
            Mode::Push if self.subscribed.load(Ordering::Acquire) => "ready (push stream up)",
            Mode::Push => "serving from cache (push stream down)",
        };
        (true, text.into())
    }

    /// Refreshes the gauges before a scrape.
    pub fn render_metrics(&self) -> String {
        self.metrics.reads.measure(&self.tier.cache);
        self.metrics.render()
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

/// A fresh request id: 128 random bits in hex.
pub fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_answer_ends_at_the_readers_own_cache_ttl_plus_the_stale_maximum() {
        let policy = EdgePolicy {
            max_stale: Duration::from_secs(5),
            max_copy: Duration::from_secs(86_400),
            default_cache_ttl: Duration::from_secs(60),
        };
        // Filled 10 s ago by a read with a cacheTtl of 300 s: held for 305 s.
        let as_of = Instant::now() - Duration::from_secs(10);
        let copy = Copy::new(None, 7, as_of, Duration::from_secs(300), Duration::from_secs(5), 0);
        let reading = |secs| ReadSpec { cache_ttl: Some(Duration::from_secs(secs)), ..ReadSpec::default() };
        assert!(policy.stale_ok(&copy, &reading(30), 0), "10 s old: within 30 + 5 s");
        assert!(!policy.stale_ok(&copy, &reading(1), 0), "10 s old: past 1 + 5 s, whatever the copy is held for");
    }
}
