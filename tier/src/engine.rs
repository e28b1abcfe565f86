//! The one read path of every caching tier.
//!
//! A read of any number of keys goes through `Tier::read`: a held copy that the tier's
//! `Policy` calls fresh answers at once (HIT); the other keys are fetched from the tier
//! above (MISS); when that cannot answer, a held copy the policy allows answers instead
//! (STALE). Single gets, bulk gets and background refreshes all take this path.
//!
//! Fetches are coalesced inside the tier, and ordered against the changes it applies
//! (pushes, the feed, its own acknowledged writes). The rules, each kept under one lock:
//! - a fetch is registered as a *flight* before it asks upstream, and asks with
//!   `min_version` at least the tier's applied change position at that moment, so its
//!   answer is never older than any change applied before it was registered;
//! - a change applied while a flight is up is noted in the flight, and when the flight
//!   lands, the newer of its answer and the noted change is what is kept and served; a
//!   change whose value is not known here (too large for the feed, a namespace deletion)
//!   makes the flight ask again, at that change's version;
//! - a flight whose tier was reset meanwhile (`reset`) answers its readers and is kept only
//!   as a copy of the old epoch: never fresh, but never older than what it replaces (the
//!   fault suite, seed 2038: leaving the older copy let a later STALE answer go back behind
//!   the flight's answer);
//! - this tier's own acknowledged write becomes a copy only if no change after it has been
//!   applied yet (the changes applied since may have passed the key by while no copy was held).
//!   The fault suite found this one: a write answered after its regional tier was resumed
//!   from SIGSTOP installed a copy older than two changes its feed had already applied.
//!
//! Each flight runs as its own task and always lands: a reader that goes away abandons
//! nothing, and no later reader can join a flight that is long over.

use crate::cache::{CacheKey, VersionedCache};
pub use crate::change::{Applied, Effect};
use crate::copy::{Copy, Value};
use crate::error::TierResult;
use crate::metrics::CacheMetrics;
use crate::wire::written_value;
use kv_common::KvError;
use kv_proto::store::v1 as pb;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::Status;

/// What a read asks of the tier above.
#[derive(Debug, Clone, Default)]
pub struct ReadSpec {
    /// The answer must reflect at least this version (read-your-writes, monotonic reads).
    pub min_version: u64,
    /// The oldest answer accepted as fresh.
    pub max_age: Duration,
    /// The reader's cacheTtl, at an edge.
    pub cache_ttl: Option<Duration>,
    /// Asks the regional tier to push the keys' changes to this edge.
    pub track: Option<pb::Tracking>,
    /// A held copy answers only if it reflects at least this position (a session read's
    /// token; 0 = any). A fetch reflects it through `min_version`.
    pub at_least: u64,
    /// Ask for a linearizable answer (see `read_through`).
    pub linearizable: bool,
    /// `min_version` may be ahead of every committed write (a session token).
    pub ahead: bool,
}

/// One key's answer from the tier above.
#[derive(Debug, Clone)]
pub struct Answer {
    pub value: Option<Value>,
    pub version: u64,
    /// Fresh as of this instant on this node's clock (the send time minus the answer's age).
    pub as_of: Instant,
    /// The tier above could not meet `max_age` and answered from what it held.
    pub stale: bool,
    /// Whose copy answered: the tier above's own, or one it fetched from further up.
    pub served_by: pb::Tier,
}

impl Answer {
    /// The answer to a fetch asked at `floor`: it reflects every change up to `floor`, so an
    /// absent key is absent as of `floor` too, whatever older version the tier above stamped
    /// it with (the version its negative copy was read at). Without this, a negative copy
    /// held here at a newer version (a STRONG read's, stamped by the central read position)
    /// outranked every later answer, and once its short life ran out the key could only be
    /// served STALE (the fault suite, seeds 1, 23004, 26030).
    fn reflecting(self, floor: u64) -> Answer {
        match self.value {
            None => Answer { version: self.version.max(floor), ..self },
            Some(_) => self,
        }
    }
}

/// The tier above, as the engine sees it.
pub trait Fetch: Send + Sync + 'static {
    /// Reads `keys` of namespace `ns` in one call; one answer per key, in order.
    fn read(
        &self,
        ns: &str,
        keys: Vec<String>,
        spec: &ReadSpec,
    ) -> impl Future<Output = Result<Vec<Answer>, Status>> + Send;
}

/// What a tier decides about its copies.
pub trait Policy: Send + Sync + 'static {
    /// Whether `copy`, held in the tier's current `epoch`, answers `spec` without asking upstream.
    fn fresh(&self, copy: &Copy, spec: &ReadSpec, epoch: u64) -> bool;
    /// Whether a copy just fetched for `spec` is young enough to answer it as fresh.
    fn young(&self, copy: &Copy, spec: &ReadSpec) -> bool;
    /// Whether `copy` may answer `spec` when upstream cannot give a fresh answer, in the
    /// tier's current `epoch`.
    fn stale_ok(&self, copy: &Copy, spec: &ReadSpec, epoch: u64) -> bool;
    /// How long a copy filled for `spec` stays fresh, and then how much longer it is held.
    fn lifetimes(&self, spec: &ReadSpec) -> (Duration, Duration);
    /// The instant an answer served from `copy` is fresh as of, in the tier's current `epoch`.
    fn as_of(&self, copy: &Copy, _epoch: u64) -> Instant {
        copy.as_of
    }
}

/// Where an answer came from, as the reader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Hit,
    Miss,
    Stale,
}

/// One key's answer at this tier.
#[derive(Debug, Clone)]
pub struct Served {
    pub copy: Arc<Copy>,
    pub source: Source,
    /// The answer reflects every write acknowledged before this instant.
    pub as_of: Instant,
    /// The copy came from this read's fetch (a MISS, or a STALE answer of the tier above),
    /// not from what this tier held.
    pub fetched: bool,
}

impl Served {
    /// Whose copy answered, for a tier that is `here`: the tier the read's fetch reached,
    /// or this one when it answered from what it held (a HIT, a STALE answer of its own).
    pub fn served_by(&self, here: pb::Tier) -> pb::Tier {
        if self.fetched {
            self.copy.filled_from
        } else {
            here
        }
    }
}

/// A change noted in a flight while it was up.
#[derive(Debug, Clone)]
enum Noted {
    Set(u64, Option<Value>),
    Unknown(u64),
}

impl Noted {
    fn version(&self) -> u64 {
        match self {
            Noted::Set(v, _) | Noted::Unknown(v) => *v,
        }
    }
}

type Landed = Option<TierResult<Arc<Copy>>>;

/// A fetch of one key under way.
struct Flight {
    /// The version the fetch was asked to reflect at least.
    min_version: u64,
    epoch: u64,
    noted: Option<Noted>,
    /// Whether what lands is kept. Set by any reader that joins: a copy served to a reader
    /// must be held from then on, or a later read here could answer the older copy it
    /// replaced (a mode-`ttl` refresh alone keeps its copy aside; see the edge).
    keep: bool,
    done: watch::Sender<Landed>,
}

/// What is guarded by the tier's one lock.
#[derive(Default)]
struct State {
    flights: HashMap<CacheKey, Flight>,
    /// The newest change position applied (feed or push stream).
    applied: u64,
    /// Bumped by `reset`: copies and flights of older epochs are not trusted.
    epoch: u64,
}

/// One tier's cache and read path.
pub struct Tier<U, P> {
    pub cache: VersionedCache,
    state: Mutex<State>,
    /// `State::epoch`, readable without the lock (hot reads check it), set with it.
    epoch: AtomicU64,
    upstream: U,
    pub policy: P,
    pub metrics: CacheMetrics,
}

impl<U: Fetch, P: Policy> Tier<U, P> {
    pub fn new(cache_bytes: u64, upstream: U, policy: P, metrics: CacheMetrics) -> Arc<Self> {
        Arc::new(Tier {
            cache: VersionedCache::new(cache_bytes),
            state: Mutex::default(),
            epoch: AtomicU64::new(0),
            upstream,
            policy,
            metrics,
        })
    }

    pub fn upstream(&self) -> &U {
        &self.upstream
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest change position applied.
    pub fn applied(&self) -> u64 {
        self.lock().applied
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether a fetch of `key` is under way.
    pub fn in_flight(&self, key: &CacheKey) -> bool {
        self.lock().flights.contains_key(key)
    }

    /// Puts `copy`, made earlier and kept aside, in place of an older held copy of `key`, or
    /// in its empty place if `copy` reflects the place's floor (`VersionedCache::succeed`).
    /// Returns whether it did.
    pub fn succeed(&self, key: CacheKey, copy: Arc<Copy>) -> bool {
        let _st = self.lock();
        self.cache.succeed(key, copy)
    }

    /// Drops the held copy of `key`, if older than `version` (`u64::MAX`: whatever it is).
    pub fn forget(&self, key: CacheKey, version: u64) {
        let _st = self.lock();
        self.cache.remove_older(key, version);
    }

    /// Reads `keys` of `ns`: held fresh copies, the rest fetched in one call, held copies
    /// again (stale) where upstream cannot answer. One result per key, in order.
    pub async fn read(self: &Arc<Self>, ns: &str, keys: &[String], spec: &ReadSpec) -> Vec<TierResult<Served>> {
        let epoch = self.epoch();
        let now_secs = kv_common::time::central_now_secs();
        let mut out: Vec<Option<TierResult<Served>>> = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match self.cache.get(&(ns.to_owned(), k.clone())) {
                Some(c)
                    if !c.is_expired(now_secs) && c.reflects >= spec.at_least && self.policy.fresh(&c, spec, epoch) =>
                {
                    self.metrics.hit(&c);
                    out.push(Some(Ok(self.served(c, Source::Hit, false))));
                }
                _ => {
                    self.metrics.misses.inc();
                    missing.push(i);
                    out.push(None);
                }
            }
        }
        if !missing.is_empty() {
            let wanted: Vec<String> = missing.iter().map(|&i| keys[i].clone()).collect();
            let fetched = self.fetch(ns, &wanted, spec, true).await;
            for (&i, got) in missing.iter().zip(fetched) {
                out[i] = Some(self.classify(ns, &keys[i], got, spec));
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Status::internal("a key was left unanswered").into())))
            .collect()
    }

    /// Reads `keys` straight from upstream, for reads no held copy or earlier flight can
    /// answer: linearizable ones (every flight began before the read) and session reads
    /// ahead of anything this tier has seen (a flight at a version no write reached yet would
    /// hold up every reader of the key until its deadline). It joins and blocks no flight;
    /// what lands is kept as this tier's own write is (replacing older copies, noted by
    /// flights under way), so later reads here never go back behind it. Upstream failures
    /// are the answer: no held copy stands in.
    pub async fn read_through(&self, ns: &str, keys: &[String], spec: &ReadSpec) -> Vec<TierResult<Served>> {
        self.metrics.misses.inc_by(keys.len() as u64);
        self.metrics.upstream_fetches.inc();
        let answers = match self.upstream.read(ns, keys.to_vec(), spec).await {
            Ok(a) => a,
            Err(e) => return keys.iter().map(|_| Err(e.clone().into())).collect(),
        };
        let epoch = self.epoch();
        let (fresh_for, hold_extra) = self.policy.lifetimes(spec);
        keys.iter()
            .enumerate()
            .map(|(i, key)| {
                let a = answers.get(i).ok_or_else(|| Status::internal("upstream left a key unanswered"))?;
                if spec.linearizable && (a.stale || a.served_by != pb::Tier::Central) {
                    // Only a central node proves an answer current after the read began (a
                    // tier of an older build would answer from its cache).
                    return Err(KvError::Unavailable("upstream gave no linearizable answer".into()).into());
                }
                self.write_through((ns.to_owned(), key.clone()), a.value.clone(), a.version, a.as_of, spec);
                let copy = Copy::new(a.value.clone(), a.version, a.as_of, fresh_for, hold_extra, epoch);
                let copy = Arc::new(copy.filled_from(a.served_by));
                if spec.linearizable {
                    // Proved current after the read began, however long the proof took: fresh
                    // by the only measure a linearizable read has.
                    return Ok(self.served(copy, Source::Miss, true));
                }
                self.classify(ns, key, Ok(copy), spec)
            })
            .collect()
    }

    /// A fetched copy is as fresh as its fetch made it. Only a held copy may be as fresh as
    /// the policy says (a regional copy, as the feed that keeps it current): an answer that
    /// `read_through` got from upstream is not in the cache, and no change applied during
    /// its round trip reached it.
    fn served(&self, copy: Arc<Copy>, source: Source, fetched: bool) -> Served {
        let as_of = if fetched { copy.as_of } else { self.policy.as_of(&copy, self.epoch()) };
        Served { copy, source, as_of, fetched }
    }

    /// Turns a fetch's outcome into an answer: fresh (MISS), too old but allowed (STALE),
    /// or, when upstream could not answer, a held copy the policy allows (STALE).
    fn classify(&self, ns: &str, key: &str, got: TierResult<Arc<Copy>>, spec: &ReadSpec) -> TierResult<Served> {
        match got {
            Ok(c) if self.policy.young(&c, spec) => Ok(self.served(c, Source::Miss, true)),
            Ok(c) if self.policy.stale_ok(&c, spec, self.epoch()) => {
                self.metrics.stale_serves.inc();
                Ok(self.served(c, Source::Stale, true))
            }
            Ok(_) => Err(KvError::Unavailable("no upstream could give an answer fresh enough; retry".into()).into()),
            Err(e) if e.is_unreachable() => match self.cache.get(&(ns.to_owned(), key.to_owned())) {
                Some(c) if c.reflects >= spec.at_least && self.policy.stale_ok(&c, spec, self.epoch()) => {
                    self.metrics.stale_serves.inc();
                    Ok(self.served(c, Source::Stale, false))
                }
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Fetches `keys` of `ns` from upstream through the flights (see the module docs), and
    /// keeps what lands when `keep` is set or another reader joined. One outcome per key, in
    /// order.
    pub async fn fetch(
        self: &Arc<Self>,
        ns: &str,
        keys: &[String],
        spec: &ReadSpec,
        keep: bool,
    ) -> Vec<TierResult<Arc<Copy>>> {
        let mut out: Vec<Option<TierResult<Arc<Copy>>>> = vec![None; keys.len()];
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        while !pending.is_empty() {
            let mut waits = Vec::with_capacity(pending.len());
            let mut mine = Vec::new();
            let floor;
            {
                let mut st = self.lock();
                let wanted: Vec<CacheKey> = pending.iter().map(|&i| (ns.to_owned(), keys[i].clone())).collect();
                // Never behind what this tier held or answered of the keys (`cache::Floors`):
                // their copies may be gone, and this read may have been asked long ago.
                floor = wanted.iter().map(|k| self.cache.floor(k)).fold(spec.min_version.max(st.applied), u64::max);
                let epoch = st.epoch;
                for (&i, key) in pending.iter().zip(wanted) {
                    match st.flights.get_mut(&key) {
                        Some(f) => {
                            let good_enough = f.min_version >= spec.min_version && f.epoch == epoch;
                            if good_enough {
                                self.metrics.coalesced_waiters.inc();
                                f.keep |= keep;
                            }
                            waits.push((i, f.done.subscribe(), good_enough));
                        }
                        None => {
                            let (done, rx) = watch::channel(None);
                            st.flights.insert(key, Flight { min_version: floor, epoch, noted: None, keep, done });
                            waits.push((i, rx, true));
                            mine.push(keys[i].clone());
                        }
                    }
                }
            }
            if !mine.is_empty() {
                self.metrics.upstream_fetches.inc();
                let me = self.clone();
                let (ns, spec) = (ns.to_owned(), ReadSpec { min_version: floor, ..spec.clone() });
                kv_common::call::spawn(async move { me.fly(ns, mine, spec).await });
            }
            let mut again = Vec::new();
            for (i, mut rx, good_enough) in waits {
                let landed = match rx.wait_for(Option::is_some).await {
                    Ok(v) => v.clone(),
                    Err(_) => Some(Err(Status::internal("a fetch ended without an answer").into())),
                };
                match landed {
                    Some(result) if good_enough => out[i] = Some(result),
                    // A flight asked at an older version than this read needs: ask again.
                    _ => again.push(i),
                }
            }
            pending = again;
        }
        out.into_iter().map(|o| o.unwrap_or_else(|| Err(Status::internal("a fetch was lost").into()))).collect()
    }

    /// One flight: asks upstream, then lands every key under the lock, asking again for
    /// keys whose noted change is newer than the answer and of unknown value.
    async fn fly(self: Arc<Self>, ns: String, mut keys: Vec<String>, mut spec: ReadSpec) {
        while !keys.is_empty() {
            let answers = self.upstream.read(&ns, keys.clone(), &spec).await;
            let mut st = self.lock();
            let mut again = Vec::new();
            let mut again_at = spec.min_version;
            for (i, key) in keys.into_iter().enumerate() {
                let ck = (ns.clone(), key);
                let Some(flight) = st.flights.get_mut(&ck) else { continue };
                let answer = match &answers {
                    Ok(a) => match a.get(i) {
                        Some(a) => a.clone().reflecting(spec.min_version),
                        None => {
                            let f = st.flights.remove(&ck);
                            land(f, Err(Status::internal("upstream left a key unanswered").into()));
                            continue;
                        }
                    },
                    Err(e) => {
                        let f = st.flights.remove(&ck);
                        land(f, Err(e.clone().into()));
                        continue;
                    }
                };
                let (value, version) = match flight.noted.take() {
                    Some(Noted::Unknown(v)) if v > answer.version => {
                        // Changed meanwhile to a value not known here: ask again at that version.
                        flight.min_version = flight.min_version.max(v);
                        again_at = again_at.max(v);
                        again.push(ck.1);
                        continue;
                    }
                    Some(Noted::Set(v, value)) if v > answer.version => (value, v),
                    _ => (answer.value, answer.version),
                };
                let (fresh_for, hold_extra) = self.policy.lifetimes(&spec);
                let copy = Copy::new(value, version, answer.as_of, fresh_for, hold_extra, flight.epoch)
                    .reflecting(spec.min_version);
                // Labelled by where the fetch ended, even when a change noted meanwhile
                // gave it newer contents: that is the tier the read waited for.
                let copy = Arc::new(copy.filled_from(answer.served_by));
                let keep = flight.keep;
                let f = st.flights.remove(&ck);
                // A flight from before a reset is kept too, as a copy of its own epoch: never
                // fresh, but no older than what it replaces, so a STALE answer served from
                // the cache later never goes back behind what this flight answered.
                let copy = if keep { self.cache.keep(ck, copy) } else { copy };
                land(f, Ok(copy));
            }
            drop(st);
            keys = again;
            spec.min_version = again_at;
        }
    }

    /// Applies the changes of one change set at `version` (a push, a feed entry).
    pub fn apply(&self, version: u64, effects: impl IntoIterator<Item = Effect>) -> Vec<Applied> {
        let mut st = self.lock();
        let out = effects.into_iter().map(|e| self.apply_one(&mut st, version, e, None)).collect();
        st.applied = st.applied.max(version);
        out
    }

    /// Stores what this tier's own write made of a key, as of `as_of` (when the write was
    /// sent): a held copy is replaced, a flight notes it, and otherwise it is filled. Kept or
    /// not, the write was answered: nothing this tier keeps or fetches later goes behind it.
    pub fn write_through(&self, key: CacheKey, value: Option<Value>, version: u64, as_of: Instant, spec: &ReadSpec) {
        let mut st = self.lock();
        self.cache.raise(&key, version);
        self.apply_one(&mut st, version, Effect::Set(key, value), Some((as_of, spec)));
    }

    fn apply_one(&self, st: &mut State, version: u64, effect: Effect, fill: Option<(Instant, &ReadSpec)>) -> Applied {
        let note = |st: &mut State, key: &CacheKey, n: Noted| match st.flights.get_mut(key) {
            Some(f) if f.noted.as_ref().is_none_or(|o| o.version() < n.version()) => {
                f.noted = Some(n);
                true
            }
            Some(_) => true,
            None => false,
        };
        match effect {
            Effect::Set(key, value) => {
                let noted = note(st, &key, Noted::Set(version, value.clone()));
                if let Some((as_of, spec)) = fill {
                    if version < st.applied {
                        // The changes applied since may hold newer versions of this key that
                        // found no copy here to replace: a copy made of this write could be
                        // older than the key is, with nothing left to replace it. Only older
                        // copies go; the next read asks upstream for at least `applied`.
                        self.cache.remove_older(key, version);
                        return Applied::Older;
                    }
                    // This tier's own write: a new copy, fresh as of when it was sent.
                    let (fresh_for, hold_extra) = self.policy.lifetimes(spec);
                    let c = Copy::new(value, version, as_of, fresh_for, hold_extra, st.epoch);
                    return match self.cache.offer(key, Arc::new(c)) {
                        crate::cache::Offer::Stored => Applied::Stored,
                        crate::cache::Offer::Older => Applied::Older,
                    };
                }
                match self.cache.replace_held(key, value, version) {
                    Some(crate::cache::Offer::Stored) => Applied::Stored,
                    Some(crate::cache::Offer::Older) => Applied::Older,
                    None if noted => Applied::Stored,
                    None => Applied::NotHeld,
                }
            }
            Effect::Unknown(key) => {
                note(st, &key, Noted::Unknown(version));
                self.cache.remove_older(key, version);
                Applied::Dropped
            }
            Effect::DropNamespace(ns) => {
                let keys: Vec<CacheKey> = st.flights.keys().filter(|k| k.0 == ns).cloned().collect();
                for k in keys {
                    note(st, &k, Noted::Unknown(version));
                }
                self.cache.remove_namespace(&ns);
                Applied::Dropped
            }
            Effect::Ignore => Applied::NotHeld,
        }
    }

    /// Stores what an acknowledged write made of its keys: per key, the item that decided it
    /// (the last one naming it, as at every tier), as of `sent`, when the write was sent.
    /// Returns the newest version written.
    pub fn write_through_response(
        &self,
        req: &pb::WriteRequest,
        resp: &pb::WriteResponse,
        sent: Instant,
        spec: &ReadSpec,
    ) -> u64 {
        let deciding = kv_common::validate::last_wins(req.ops.iter().map(|o| o.key.as_str()));
        let mut newest = 0;
        for (i, (op, result)) in req.ops.iter().zip(&resp.results).enumerate() {
            if deciding[i] != i || result.error.is_some() || result.version == 0 {
                continue;
            }
            let key = (req.namespace_id.clone(), op.key.clone());
            self.write_through(key, written_value(op, result), result.version, sent, spec);
            newest = newest.max(result.version);
        }
        newest
    }

    /// Starts a new epoch at change position `applied`: copies held so far are no longer
    /// trusted as fresh (or are dropped, with `clear`), and flights under way are not kept.
    pub fn reset(&self, applied: u64, clear: bool) {
        let mut st = self.lock();
        st.epoch += 1;
        self.epoch.store(st.epoch, Ordering::Release);
        st.applied = applied;
        if clear {
            self.cache.clear();
        }
    }
}

/// Hands a landed flight's outcome to its readers.
fn land(flight: Option<Flight>, outcome: TierResult<Arc<Copy>>) {
    if let Some(f) = flight {
        f.done.send_replace(Some(outcome));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Registrar;
    use bytes::Bytes;
    use tokio::sync::{mpsc, oneshot};

    /// One upstream call the test answers by hand.
    struct Call {
        keys: Vec<String>,
        spec: ReadSpec,
        reply: oneshot::Sender<Result<Vec<Answer>, Status>>,
    }

    /// An upstream whose every call waits for the test: a fetch can be held at any point.
    struct Gate(mpsc::UnboundedSender<Call>);

    impl Fetch for Gate {
        async fn read(&self, _ns: &str, keys: Vec<String>, spec: &ReadSpec) -> Result<Vec<Answer>, Status> {
            let (reply, rx) = oneshot::channel();
            let _ = self.0.send(Call { keys, spec: spec.clone(), reply });
            rx.await.unwrap_or_else(|_| Err(Status::unavailable("the test dropped the call")))
        }
    }

    /// Fresh for a minute, held a minute more; held copies are as fresh as `proof` when set
    /// (as a regional tier's are as fresh as its feed).
    struct Minute {
        proof: Option<Instant>,
    }

    impl Policy for Minute {
        fn fresh(&self, c: &Copy, _: &ReadSpec, epoch: u64) -> bool {
            c.epoch == epoch && c.fresh_for_read(Instant::now(), Duration::from_secs(60))
        }
        fn young(&self, c: &Copy, _: &ReadSpec) -> bool {
            c.fresh_for_read(Instant::now(), Duration::from_secs(60))
        }
        fn stale_ok(&self, _: &Copy, _: &ReadSpec, _: u64) -> bool {
            true
        }
        fn lifetimes(&self, _: &ReadSpec) -> (Duration, Duration) {
            (Duration::from_secs(60), Duration::from_secs(60))
        }
        fn as_of(&self, c: &Copy, _: u64) -> Instant {
            self.proof.map_or(c.as_of, |p| p.max(c.as_of))
        }
    }

    fn tier_with(policy: Minute) -> (Arc<Tier<Gate, Minute>>, mpsc::UnboundedReceiver<Call>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let metrics = CacheMetrics::register(&Registrar::default(), "kv_test", "upstream");
        (Tier::new(1 << 20, Gate(tx), policy, metrics), rx)
    }

    fn tier() -> (Arc<Tier<Gate, Minute>>, mpsc::UnboundedReceiver<Call>) {
        tier_with(Minute { proof: None })
    }

    fn val(s: &str) -> Option<Value> {
        Some(Value { bytes: Bytes::from(s.to_string()), metadata_json: None, expiration: None })
    }

    fn answer(value: Option<Value>, version: u64) -> Answer {
        Answer { value, version, as_of: Instant::now(), stale: false, served_by: pb::Tier::Central }
    }

    fn key(k: &str) -> CacheKey {
        ("ns".into(), k.into())
    }

    fn text(s: &Served) -> Option<String> {
        s.copy.value.as_ref().map(|v| String::from_utf8_lossy(&v.bytes).into_owned())
    }

    async fn read(t: &Arc<Tier<Gate, Minute>>, keys: &[&str]) -> Vec<Served> {
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        t.read("ns", &keys, &ReadSpec::default()).await.into_iter().map(|r| r.expect("an answer")).collect()
    }

    /// `read` in a task of its own, so the test can answer its fetch.
    fn reading(t: &Arc<Tier<Gate, Minute>>, keys: &'static [&'static str]) -> tokio::task::JoinHandle<Vec<Served>> {
        let t = t.clone();
        tokio::spawn(async move { read(&t, keys).await })
    }

    #[tokio::test]
    async fn a_change_that_lands_during_a_fetch_wins_over_its_older_answer() {
        let (t, mut calls) = tier();
        let reader = reading(&t, &["k"]);
        let call = calls.recv().await.unwrap();
        // The key is not held, but its fetch is under way: the change must not be lost.
        assert_eq!(t.apply(10, [Effect::Set(key("k"), val("new"))]), vec![Applied::Stored]);
        call.reply.send(Ok(vec![answer(val("old"), 5)])).unwrap();
        let got = reader.await.unwrap();
        assert_eq!((text(&got[0]).as_deref(), got[0].copy.version), (Some("new"), 10));
        assert_eq!(t.cache.get(&key("k")).unwrap().version, 10, "the change is what is kept");
    }

    #[tokio::test]
    async fn a_reader_that_joins_a_fetch_which_keeps_nothing_makes_it_keep_its_answer() {
        let (t, mut calls) = tier();
        let long_ago = Instant::now().checked_sub(Duration::from_secs(90)).unwrap();
        t.write_through(key("k"), val("old"), 3, long_ago, &ReadSpec::default());
        // A fetch that keeps its copy aside (an edge's mode-ttl refresh) is under way...
        let refresh = tokio::spawn({
            let t = t.clone();
            async move { t.fetch("ns", &["k".to_string()], &ReadSpec::default(), false).await }
        });
        let call = calls.recv().await.unwrap();
        // ...and a reader whose held copy is no longer fresh joins it.
        let reader = reading(&t, &["k"]);
        while t.metrics.coalesced_waiters.get() == 0 {
            tokio::task::yield_now().await;
        }
        call.reply.send(Ok(vec![answer(val("new"), 8)])).unwrap();
        assert_eq!(reader.await.unwrap()[0].copy.version, 8);
        assert_eq!(refresh.await.unwrap()[0].as_ref().unwrap().version, 8);
        // The reader was answered 8: the tier must not go back to 3 for the next one.
        assert_eq!(t.cache.get(&key("k")).unwrap().version, 8);
    }

    #[tokio::test]
    async fn an_evicted_copy_is_never_followed_by_an_older_one() {
        let (t, mut calls) = tier();
        // A read is answered 7 (another edge's write), and its copy is then evicted.
        let reader = reading(&t, &["k"]);
        calls.recv().await.unwrap().reply.send(Ok(vec![answer(val("seven"), 7)])).unwrap();
        assert_eq!(reader.await.unwrap()[0].copy.version, 7);
        t.cache.evict(&key("k"));
        // This tier's own write of 5, answered only now, must not become the key's copy...
        t.write_through(key("k"), val("five"), 5, Instant::now(), &ReadSpec::default());
        assert!(t.cache.get(&key("k")).is_none(), "a copy older than an answer already given");
        // ...and a read asked as if nothing had been seen fetches at 7 at least.
        let reader = reading(&t, &["k"]);
        let call = calls.recv().await.unwrap();
        assert!(call.spec.min_version >= 7, "asked at {}", call.spec.min_version);
        call.reply.send(Ok(vec![answer(val("seven"), 7)])).unwrap();
        assert_eq!(reader.await.unwrap()[0].copy.version, 7);
    }

    #[tokio::test]
    async fn a_held_copy_answers_a_session_token_its_fetch_reflected() {
        let (t, mut calls) = tier();
        let read_at = |at_least: u64, min_version: u64| {
            let t = t.clone();
            let spec = ReadSpec { at_least, min_version, ..Default::default() };
            tokio::spawn(async move { t.read("ns", &["k".to_string()], &spec).await.pop().unwrap().unwrap() })
        };
        // Fetched at position 9, the key was still at version 5.
        let reader = read_at(0, 9);
        calls.recv().await.unwrap().reply.send(Ok(vec![answer(val("v"), 5)])).unwrap();
        assert_eq!(reader.await.unwrap().copy.version, 5);
        // A token of 8 (another key's write) is reflected: a HIT.
        assert_eq!(read_at(8, 9).await.unwrap().source, Source::Hit);
        // A token of 10 is not: the read fetches.
        let reader = read_at(10, 10);
        calls.recv().await.unwrap().reply.send(Ok(vec![answer(val("v"), 5)])).unwrap();
        assert_eq!(reader.await.unwrap().source, Source::Miss);
    }

    #[tokio::test]
    async fn a_fetch_which_keeps_nothing_and_answers_no_reader_leaves_the_held_copy() {
        let (t, mut calls) = tier();
        t.write_through(key("k"), val("old"), 3, Instant::now(), &ReadSpec::default());
        let refresh = tokio::spawn({
            let t = t.clone();
            async move { t.fetch("ns", &["k".to_string()], &ReadSpec::default(), false).await }
        });
        calls.recv().await.unwrap().reply.send(Ok(vec![answer(val("new"), 8)])).unwrap();
        assert_eq!(refresh.await.unwrap()[0].as_ref().unwrap().version, 8);
        assert_eq!(t.cache.get(&key("k")).unwrap().version, 3, "held until its cacheTtl ends, as in KV");
    }

    #[tokio::test]
    async fn a_read_through_joins_no_flight_and_keeps_what_it_read() {
        let (t, mut calls) = tier();
        // A fetch of k is under way; a linearizable read neither joins nor waits for it.
        let reader = reading(&t, &["k"]);
        let held = calls.recv().await.unwrap();
        let spec = ReadSpec { linearizable: true, ..Default::default() };
        let strong = tokio::spawn({
            let t = t.clone();
            async move { t.read_through("ns", &["k".to_string()], &spec).await }
        });
        let call = calls.recv().await.unwrap();
        assert!(call.spec.linearizable, "asked upstream as linearizable");
        // Its proof took long (a leader was away): still fresh, as of after the read began.
        let slow = Instant::now().checked_sub(Duration::from_secs(600)).unwrap();
        call.reply.send(Ok(vec![Answer { as_of: slow, ..answer(val("now"), 9) }])).unwrap();
        let got = strong.await.unwrap().pop().unwrap().unwrap();
        assert_eq!((got.source, got.copy.version), (Source::Miss, 9));
        // The held fetch lands older: the read-through's copy wins, as a write's would.
        held.reply.send(Ok(vec![answer(val("old"), 5)])).unwrap();
        assert_eq!(reader.await.unwrap()[0].copy.version, 9);
        assert_eq!(t.cache.get(&key("k")).unwrap().version, 9);
    }

    #[tokio::test]
    async fn a_fetched_answer_is_as_fresh_as_its_fetch_and_only_a_held_copy_as_the_policy_says() {
        // The policy vouches for held copies up to now (a regional tier's feed proof).
        let (t, mut calls) = tier_with(Minute { proof: Some(Instant::now()) });
        let spec = ReadSpec { min_version: 7, ahead: true, ..Default::default() };
        let through = tokio::spawn({
            let t = t.clone();
            async move { t.read_through("ns", &["k".to_string()], &spec).await }
        });
        // Read ten seconds ago: no change applied during the round trip reached this answer.
        let sent = Instant::now().checked_sub(Duration::from_secs(10)).unwrap();
        let call = calls.recv().await.unwrap();
        call.reply.send(Ok(vec![Answer { as_of: sent, ..answer(val("v"), 7) }])).unwrap();
        let got = through.await.unwrap().pop().unwrap().unwrap();
        assert_eq!((got.source, got.as_of), (Source::Miss, sent), "as fresh as its own fetch");
        // Kept, it is the policy's to vouch for.
        let held = read(&t, &["k"]).await.pop().unwrap();
        assert_eq!(held.source, Source::Hit);
        assert!(held.as_of > sent);
    }

    #[tokio::test]
    async fn an_absent_answer_is_absent_as_of_the_version_its_fetch_asked_for() {
        let (t, mut calls) = tier();
        // A negative copy stamped at a newer version than the tier above will ever name
        // (a STRONG read's), whose life has run out.
        let long_ago = Instant::now().checked_sub(Duration::from_secs(600)).unwrap();
        t.write_through(key("k"), None, 10, long_ago, &ReadSpec::default());
        let spec = ReadSpec { min_version: 10, ..Default::default() };
        let reader = tokio::spawn({
            let t = t.clone();
            async move { t.read("ns", &["k".to_string()], &spec).await }
        });
        let call = calls.recv().await.unwrap();
        assert_eq!(call.spec.min_version, 10);
        // The tier above is current past 10 but names the version its own copy was read at.
        call.reply.send(Ok(vec![answer(None, 4)])).unwrap();
        let got = reader.await.unwrap().pop().unwrap().unwrap();
        assert_eq!((got.source, got.copy.version), (Source::Miss, 10), "fresh, not the old copy served STALE");
        assert!(t.cache.get(&key("k")).unwrap().as_of > long_ago, "the fresh answer is what is kept");
    }

    #[tokio::test]
    async fn answers_name_the_tier_their_fetch_reached_or_this_one() {
        let (t, mut calls) = tier();
        let edge = pb::Tier::Edge;
        let reader = reading(&t, &["k", "old"]);
        let call = calls.recv().await.unwrap();
        // A change overtakes the fetch of k: the read still waited for the regional tier.
        t.apply(10, [Effect::Set(key("k"), val("new"))]);
        let regional = |a: Answer| Answer { served_by: pb::Tier::Regional, ..a };
        // The tier above answers `old` from a copy older than any cacheTtl (stale-if-error).
        let long_ago = Instant::now().checked_sub(Duration::from_secs(600)).unwrap();
        let stale = Answer { as_of: long_ago, stale: true, ..regional(answer(val("o"), 3)) };
        call.reply.send(Ok(vec![regional(answer(val("k5"), 5)), stale])).unwrap();
        let got = reader.await.unwrap();
        assert_eq!(
            (got[0].source, got[0].copy.version, got[0].served_by(edge)),
            (Source::Miss, 10, pb::Tier::Regional)
        );
        assert_eq!((got[1].source, got[1].served_by(edge)), (Source::Stale, pb::Tier::Regional));
        // Then this tier's own copy answers.
        let again = read(&t, &["k"]).await;
        assert_eq!((again[0].source, again[0].served_by(edge)), (Source::Hit, edge));
    }

    #[tokio::test]
    async fn a_batch_fetch_is_ordered_against_changes_key_by_key() {
        let (t, mut calls) = tier();
        let reader = reading(&t, &["a", "b"]);
        let call = calls.recv().await.unwrap();
        assert_eq!(call.keys, vec!["a", "b"], "one upstream call for the batch");
        t.apply(10, [Effect::Set(key("b"), None)]);
        call.reply.send(Ok(vec![answer(val("a5"), 5), answer(val("b5"), 5)])).unwrap();
        let got = reader.await.unwrap();
        assert_eq!((text(&got[0]).as_deref(), got[0].copy.version), (Some("a5"), 5));
        assert_eq!((text(&got[1]), got[1].copy.version), (None, 10), "the delete won over the older answer");
    }

    #[tokio::test]
    async fn absent_keys_keep_their_own_versions() {
        let (t, mut calls) = tier();
        t.write_through(key("b"), val("x"), 5, Instant::now(), &ReadSpec::default());
        t.reset(0, false); // the held copy must be revalidated
        let reader = reading(&t, &["a", "b"]);
        let call = calls.recv().await.unwrap();
        call.reply.send(Ok(vec![answer(None, 3), answer(None, 8)])).unwrap();
        let got = reader.await.unwrap();
        assert_eq!((text(&got[1]), got[1].copy.version), (None, 8), "b was deleted at 8, after the held copy");
    }

    #[tokio::test]
    async fn a_change_of_unknown_value_during_a_fetch_makes_it_ask_again() {
        let (t, mut calls) = tier();
        let reader = reading(&t, &["k"]);
        let first = calls.recv().await.unwrap();
        t.apply(10, [Effect::Unknown(key("k"))]);
        first.reply.send(Ok(vec![answer(val("old"), 5)])).unwrap();
        let second = calls.recv().await.unwrap();
        assert!(second.spec.min_version >= 10, "asked again at the change's version");
        second.reply.send(Ok(vec![answer(val("big"), 10)])).unwrap();
        assert_eq!(text(&reader.await.unwrap()[0]).as_deref(), Some("big"));
    }

    #[tokio::test]
    async fn a_namespace_deletion_during_a_fetch_is_not_undone_by_it() {
        let (t, mut calls) = tier();
        let reader = tokio::spawn({
            let t = t.clone();
            async move { t.read("ns", &["k".to_string()], &ReadSpec::default()).await }
        });
        let first = calls.recv().await.unwrap();
        t.apply(10, [Effect::DropNamespace("ns".into())]);
        first.reply.send(Ok(vec![answer(val("old"), 5)])).unwrap();
        let second = calls.recv().await.unwrap();
        second.reply.send(Err(KvError::NamespaceNotFound.to_status())).unwrap();
        let got = reader.await.unwrap();
        assert_eq!(got[0].as_ref().unwrap_err().to_string(), "namespace not found");
        assert!(t.cache.get(&key("k")).is_none(), "nothing from before the deletion is kept");
    }

    #[tokio::test]
    async fn a_reader_that_goes_away_abandons_nothing() {
        let (t, mut calls) = tier();
        let reader = reading(&t, &["k"]);
        let call = calls.recv().await.unwrap();
        reader.abort();
        let _ = reader.await;
        call.reply.send(Ok(vec![answer(val("v1"), 1)])).unwrap();
        // The flight still lands and is kept; a later reader does not join a finished flight.
        tokio::time::timeout(Duration::from_secs(5), async {
            while t.cache.get(&key("k")).is_none() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the abandoned fetch landed");
        assert!(t.lock().flights.is_empty(), "no flight is left behind");
        t.apply(20, [Effect::Set(key("k"), val("v20"))]);
        assert_eq!(text(&read(&t, &["k"]).await[0]).as_deref(), Some("v20"));
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch_and_a_later_floor_asks_again() {
        let (t, mut calls) = tier();
        let mut readers = Vec::new();
        for _ in 0..20 {
            let t = t.clone();
            readers.push(tokio::spawn(async move { read(&t, &["k"]).await }));
        }
        let call = calls.recv().await.unwrap();
        // A reader that needs a newer version than the flight was asked at does not join it.
        let needs_newer = tokio::spawn({
            let t = t.clone();
            async move { t.read("ns", &["k".to_string()], &ReadSpec { min_version: 50, ..Default::default() }).await }
        });
        tokio::task::yield_now().await;
        call.reply.send(Ok(vec![answer(val("v1"), 1)])).unwrap();
        for r in readers {
            assert_eq!(text(&r.await.unwrap()[0]).as_deref(), Some("v1"));
        }
        let second = calls.recv().await.unwrap();
        assert_eq!(second.spec.min_version, 50);
        second.reply.send(Ok(vec![answer(val("v1"), 1)])).unwrap();
        assert!(needs_newer.await.unwrap()[0].is_ok());
        assert!(calls.try_recv().is_err(), "exactly two upstream calls");
    }

    #[tokio::test]
    async fn a_fetch_under_way_at_a_reset_answers_and_is_kept_but_never_fresh() {
        let (t, mut calls) = tier();
        let reader = reading(&t, &["k"]);
        let call = calls.recv().await.unwrap();
        t.reset(7, true);
        call.reply.send(Ok(vec![answer(val("v1"), 1)])).unwrap();
        assert_eq!(text(&reader.await.unwrap()[0]).as_deref(), Some("v1"));
        let kept = t.cache.get(&key("k")).expect("kept, for later stale answers");
        assert_ne!(kept.epoch, t.epoch(), "but as a copy of the old epoch, never fresh");
        // And a fetch registered after the reset asks at the new position at least.
        let again = reading(&t, &["k"]);
        let call = calls.recv().await.unwrap();
        assert_eq!(call.spec.min_version, 7);
        call.reply.send(Ok(vec![answer(val("v1"), 1)])).unwrap();
        again.await.unwrap();
    }

    #[tokio::test]
    async fn a_stale_answer_never_goes_back_behind_a_flight_answered_across_a_reset() {
        let (t, mut calls) = tier();
        t.write_through(key("k"), val("old"), 3, Instant::now(), &ReadSpec::default());
        t.reset(3, false);
        let reader = reading(&t, &["k"]);
        let call = calls.recv().await.unwrap();
        t.reset(4, false);
        call.reply.send(Ok(vec![answer(val("new"), 9)])).unwrap();
        assert_eq!(reader.await.unwrap()[0].copy.version, 9);
        // Upstream goes away: the stale answer is the newer copy, not the one before it.
        let stale = reading(&t, &["k"]);
        calls.recv().await.unwrap().reply.send(Err(Status::unavailable("down"))).unwrap();
        let got = stale.await.unwrap();
        assert_eq!((got[0].copy.version, got[0].source), (9, Source::Stale));
    }

    #[tokio::test]
    async fn a_write_answered_after_newer_changes_were_applied_leaves_no_copy_behind_them() {
        let (t, mut calls) = tier();
        // The feed passes the key by at 449 while no copy is held, then the write at 431 is answered.
        assert_eq!(t.apply(449, [Effect::Set(key("k"), val("newest"))]), vec![Applied::NotHeld]);
        t.write_through(key("k"), None, 431, Instant::now(), &ReadSpec::default());
        assert!(t.cache.get(&key("k")).is_none(), "no copy older than the key is");
        let reader = reading(&t, &["k"]);
        let call = calls.recv().await.unwrap();
        assert_eq!(call.spec.min_version, 449, "the read asks for what the feed has applied");
        call.reply.send(Ok(vec![answer(val("newest"), 449)])).unwrap();
        assert_eq!(reader.await.unwrap()[0].copy.version, 449);
        // A write at or past the applied position is a copy at once.
        t.write_through(key("j"), val("mine"), 449, Instant::now(), &ReadSpec::default());
        assert_eq!(t.cache.get(&key("j")).unwrap().version, 449);
    }

    #[tokio::test]
    async fn unreachable_upstream_serves_the_held_copy_stale() {
        let (t, mut calls) = tier();
        t.write_through(key("k"), val("held"), 3, Instant::now(), &ReadSpec::default());
        t.reset(3, false);
        let reader = reading(&t, &["k"]);
        let call = calls.recv().await.unwrap();
        call.reply.send(Err(Status::unavailable("down"))).unwrap();
        let got = reader.await.unwrap();
        assert_eq!((text(&got[0]).as_deref(), got[0].source), (Some("held"), Source::Stale));
    }
}
