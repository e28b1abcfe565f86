//! Who a client call comes from: the bearer token it carries, checked against the cluster's
//! admin token or against the token's record in the central store.
//!
//! Records are looked up through the regional tier and kept here for a bounded time, so a
//! hot token costs one hash and one cache lookup per call. A kept record (or "no such
//! token") is dropped `token_cache_ms` after the instant it was current as of, counted the
//! way every answer's age is (from when the lookup was sent, less the age the store
//! reported). So a revocation acknowledged at time t is honored by no edge after
//! t + `token_cache_ms`; that is the documented bound (docs/security.md). An edge that cannot
//! look a token up answers UNAVAILABLE rather than trust what it no longer may.
//! Concurrent lookups of one token are one upstream call (moka's `try_get_with`); since a
//! call that joins a lookup gets its answer however late it comes, every answer is checked
//! against the bound again when used, and a token revoked through this edge is refused here
//! on any answer older than the revocation.

use kv_common::auth::{self, Presented, Principal, SecretDigest, StoredToken};
use kv_common::{KvError, KvResult};
use kv_proto::store::v1 as pb;
use kv_tier::upstream::Upstream;
use moka::future::Cache;
use std::time::{Duration, Instant};

/// A looked-up record ("none": no such token) and the instant it was current as of.
#[derive(Clone)]
struct Looked {
    record: Option<StoredToken>,
    as_of: Instant,
}

/// Ends each entry `ttl` after the instant it was current as of.
struct FromAsOf(Duration);

impl moka::Expiry<String, Looked> for FromAsOf {
    fn expire_after_create(&self, _: &String, v: &Looked, created_at: Instant) -> Option<Duration> {
        Some(v.as_of.checked_add(self.0).map_or(Duration::ZERO, |end| end.saturating_duration_since(created_at)))
    }
}

/// Bytes one kept lookup is counted as (the id, the digest, the rights and moka's own).
fn weight(id: &str, v: &Looked) -> u32 {
    let grants = v.record.as_ref().map_or(0, |r| r.rights.grants.len());
    u32::try_from(id.len() + 128 + grants * 40).unwrap_or(u32::MAX)
}

/// The token checks of one edge.
pub struct Tokens {
    admin: SecretDigest,
    kept: Cache<String, Looked>,
    /// Tokens revoked through this edge, and when (kept for `ttl`, past which nothing older
    /// is used anyway).
    revoked_here: moka::sync::Cache<String, Instant>,
    ttl: Duration,
}

impl Tokens {
    /// Checks against `admin_token`; keeps lookups for `ttl` in at most `bytes`.
    pub fn new(admin_token: &str, ttl: Duration, bytes: u64) -> Tokens {
        let kept = Cache::builder()
            .max_capacity(bytes)
            .weigher(|id: &String, v: &Looked| weight(id, v))
            .expire_after(FromAsOf(ttl))
            .build();
        let revoked_here = moka::sync::Cache::builder().max_capacity(10_000).time_to_live(ttl).build();
        Tokens { admin: SecretDigest::of(admin_token), kept, revoked_here, ttl }
    }

    /// The principal a call's bearer token names: 401 without a valid token, 503 when its
    /// record cannot be looked up now.
    pub async fn principal(&self, bearer: Option<&str>, upstream: &Upstream) -> KvResult<Principal> {
        let presented = Presented::of(bearer, &self.admin)?;
        let record = match &presented {
            Presented::Admin => None,
            Presented::Stored { id, .. } => self.lookup(id, upstream).await?,
        };
        presented.check(record.as_ref())
    }

    async fn lookup(&self, id: &str, upstream: &Upstream) -> KvResult<Option<StoredToken>> {
        // A second try covers an answer that was already too old when this call joined it.
        for _ in 0..2 {
            let looked =
                self.kept.try_get_with(id.to_owned(), self.fetch(id, upstream)).await.map_err(|e| (*e).clone())?;
            if self.revoked_here.get(id).is_some_and(|at| looked.as_of < at) {
                return Ok(None);
            }
            if looked.as_of.checked_add(self.ttl).is_some_and(|end| Instant::now() < end) {
                return Ok(looked.record);
            }
            self.kept.invalidate(id).await;
        }
        Err(KvError::Unavailable("the token cannot be checked now (lookups are too slow); retry".into()))
    }

    /// One lookup upstream, within half the bound (an older answer would be of little use).
    async fn fetch(&self, id: &str, upstream: &Upstream) -> KvResult<Looked> {
        // Ask for an answer young enough to be kept for most of the bound.
        let max_age_ms = u32::try_from((self.ttl / 4).as_millis()).unwrap_or(u32::MAX).max(1);
        let sent = Instant::now();
        let unavailable = |why: &str| KvError::Unavailable(format!("the token cannot be checked now ({why}); retry"));
        let asked = upstream.lookup_token(pb::LookupTokenRequest { token_id: id.to_owned(), max_age_ms });
        let r = tokio::time::timeout(self.ttl / 2, asked)
            .await
            .map_err(|_| unavailable("no answer in time"))?
            .map_err(|s| unavailable(s.message()))?;
        let as_of =
            sent.checked_sub(Duration::from_millis(u64::from(r.age_ms))).ok_or_else(|| unavailable("too old"))?;
        let record = r.token.map(|t| stored(t, &r.secret_sha256)).transpose()?;
        Ok(Looked { record, as_of })
    }

    /// Records that `id` was revoked through this edge: nothing looked up before now is used.
    pub async fn forget(&self, id: &str) {
        self.revoked_here.insert(id.to_owned(), Instant::now());
        self.kept.invalidate(id).await;
    }
}

/// A token record as the store API carries it.
fn stored(t: pb::TokenInfo, digest: &[u8]) -> KvResult<StoredToken> {
    let digest = SecretDigest::from_slice(digest)
        .ok_or_else(|| KvError::Internal(format!("token {} came without its digest", t.id)))?;
    Ok(StoredToken { rights: auth::rights_from_wire(t.admin, &t.grants)?, id: t.id, digest })
}
