//! Which edge holds which key, and the push streams to those edges: each change goes only
//! to the edges that hold a copy (Redis-style client tracking, applied to a cache tier).
//!
//! Tracking memory is bounded in bytes. When it is full, the least useful interest is
//! evicted, and the edges that held it are told (`Untracked`), so none keeps serving a copy
//! as if pushes still reached it. Interest lasts at most `max_ttl`, whatever the edge asks.

use kv_proto::store::v1::{ChangeKind, ChangeSet};
use kv_proto::tier::v1::{push_event::Event, PushEvent, Reset, Untracked};
use kv_tier::{CacheKey, KeyHasher};
use moka::notification::RemovalCause;
use moka::sync::Cache;
use prost::Message;
use smallvec::SmallVec;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

/// Change sets buffered per edge, and their bytes; an edge that falls further behind is cut
/// off and, on reconnecting, told to revalidate (a Reset), so nothing is silently lost. The
/// bytes bound the memory a slow edge can hold here: a bulk load's change sets are megabytes
/// each, and the count alone let a stalled edge pin gigabytes.
const PUSH_BUFFER: usize = 4096;
pub const PUSH_BYTES: usize = 32 << 20;

/// Heap bytes a tracked key takes beyond its names and its holders' names: moka's entry (with
/// the holders of up to two edges inline in it) and its copy of the key. Measured by
/// `tests/tracker_cost.rs`: 563 bytes with one holder tracked once, 722 once moka updated
/// the entry (its first update costs about 160 bytes for good), 770 with two holders. A map
/// of holders per key cost 175 bytes more (738, 948 with two).
pub const TRACKED_KEY_OVERHEAD: usize = 630;
/// Heap bytes each holder of a key adds beyond its name: its place in the entry and its copy
/// of the edge's name (an `Arc<str>`).
pub const HOLDER_OVERHEAD: usize = 40;

type Subscriber = Arc<str>;
/// The edges holding one key, each until when. Inline up to two: a key is mostly held by
/// one or two edges of a region, and a map per key was a quarter of a tracked key's cost.
type Holders = SmallVec<[Holder; 2]>;

#[derive(Clone)]
struct Holder {
    edge: Subscriber,
    until: Instant,
}

type Streams = Arc<Mutex<HashMap<Subscriber, Outbox>>>;

/// The sending end of one edge's push stream, and the bytes queued in it.
struct Outbox {
    tx: mpsc::Sender<PushEvent>,
    queued: Arc<AtomicUsize>,
}

impl Outbox {
    /// Queues `event` unless the stream is full (in events or in bytes); false then. An
    /// event larger than the whole bound still goes into an empty stream.
    fn offer(&self, event: PushEvent) -> bool {
        let size = event.encoded_len();
        // Counted before it is sent, so the receiver never takes off what was not added.
        let before = self.queued.fetch_add(size, Ordering::AcqRel);
        if (before > 0 && before + size > PUSH_BYTES) || self.tx.try_send(event).is_err() {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            return false;
        }
        true
    }
}

/// The receiving end of one edge's push stream.
pub struct Inbox {
    rx: mpsc::Receiver<PushEvent>,
    queued: Arc<AtomicUsize>,
}

impl Inbox {
    /// The next event if one is queued.
    #[cfg(test)]
    fn try_recv(&mut self) -> Result<PushEvent, mpsc::error::TryRecvError> {
        let event = self.rx.try_recv()?;
        self.queued.fetch_sub(event.encoded_len(), Ordering::AcqRel);
        Ok(event)
    }

    /// The events as they come, each leaving the byte count as it is taken.
    pub fn into_stream(self) -> impl Stream<Item = PushEvent> + Send + 'static {
        let queued = self.queued;
        ReceiverStream::new(self.rx).map(move |event| {
            queued.fetch_sub(event.encoded_len(), Ordering::AcqRel);
            event
        })
    }
}

/// Interest of edges in keys, and their open push streams.
pub struct Tracker {
    keys: Cache<CacheKey, Holders, KeyHasher>,
    subscribers: Streams,
    max_ttl: Duration,
}

/// What one fan-out did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FanOut {
    pub sent: usize,
    pub dropped: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct UntilLastHolder;

impl moka::Expiry<CacheKey, Holders> for UntilLastHolder {
    fn expire_after_create(&self, _: &CacheKey, h: &Holders, now: Instant) -> Option<Duration> {
        Some(last(h).saturating_duration_since(now))
    }

    fn expire_after_update(&self, _: &CacheKey, h: &Holders, now: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(last(h).saturating_duration_since(now))
    }
}

fn last(h: &Holders) -> Instant {
    h.iter().map(|h| h.until).max().unwrap_or_else(Instant::now)
}

impl Tracker {
    /// A tracker keeping at most about `max_bytes` of interest, each for at most `max_ttl`.
    pub fn new(max_bytes: u64, max_ttl: Duration) -> Tracker {
        let subscribers: Streams = Arc::default();
        let streams = subscribers.clone();
        let keys = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &CacheKey, h: &Holders| {
                let holders = h.iter().map(|h| h.edge.len() + HOLDER_OVERHEAD).sum::<usize>();
                u32::try_from(k.0.len() + k.1.len() + TRACKED_KEY_OVERHEAD + holders).unwrap_or(u32::MAX)
            })
            .expire_after(UntilLastHolder)
            .eviction_listener(move |key: Arc<CacheKey>, holders: Holders, cause| {
                if cause == RemovalCause::Size {
                    untrack(&streams, &key, &holders);
                }
            })
            .build_with_hasher(KeyHasher::default());
        Tracker { keys, subscribers, max_ttl }
    }

    /// Records that `subscriber` will hold `key` for `ttl` (at most `max_ttl`). Called
    /// before the read or write that fills the edge, so a change applied after it is pushed.
    pub fn track(&self, key: CacheKey, subscriber: &str, ttl: Duration) {
        let until = Instant::now() + ttl.min(self.max_ttl);
        self.keys.entry(key).and_upsert_with(|held| {
            let mut holders = held.map(|e| e.into_value()).unwrap_or_default();
            match holders.iter_mut().find(|h| &*h.edge == subscriber) {
                Some(h) => h.until = h.until.max(until),
                None => holders.push(Holder { edge: Arc::from(subscriber), until }),
            }
            holders
        });
    }

    /// Opens the push stream of `subscriber` (replacing an older one); it starts with a Reset.
    pub fn subscribe(&self, subscriber: &str, version: u64) -> Inbox {
        let (tx, rx) = mpsc::channel(PUSH_BUFFER);
        let queued = Arc::new(AtomicUsize::new(0));
        let outbox = Outbox { tx, queued: queued.clone() };
        outbox.offer(reset(version));
        lock(&self.subscribers).insert(Arc::from(subscriber), outbox);
        Inbox { rx, queued }
    }

    /// Pushes the changes of one set to the edges that hold the keys it touches.
    pub fn fan_out(&self, set: &ChangeSet) -> FanOut {
        let now = Instant::now();
        let mut per_edge: HashMap<Subscriber, Vec<usize>> = HashMap::new();
        for (i, change) in set.changes.iter().enumerate() {
            if change.kind == ChangeKind::NamespaceDeleted as i32 {
                let ns = change.namespace_id.clone();
                if self.keys.invalidate_entries_if(move |k, _| k.0 == ns).is_err() {
                    self.keys.invalidate_all();
                }
                self.keys.run_pending_tasks();
                for s in lock(&self.subscribers).keys() {
                    per_edge.entry(s.clone()).or_default().push(i);
                }
                continue;
            }
            if let Some(holders) = self.keys.get(&(change.namespace_id.clone(), change.key.clone())) {
                for h in holders.iter().filter(|h| h.until > now) {
                    per_edge.entry(h.edge.clone()).or_default().push(i);
                }
            }
        }
        let mut out = FanOut::default();
        let mut subs = lock(&self.subscribers);
        for (edge, idx) in per_edge {
            let Some(outbox) = subs.get(&edge) else { continue };
            let changes = idx.into_iter().map(|i| set.changes[i].clone()).collect();
            let event = PushEvent { event: Some(Event::Changes(ChangeSet { version: set.version, changes })) };
            if outbox.offer(event) {
                out.sent += 1;
            } else {
                tracing::warn!(edge = %edge, "edge fell behind on pushes; cutting it off");
                subs.remove(&edge);
                out.dropped += 1;
            }
        }
        out
    }

    /// Tells every edge to revalidate what it holds (the feed's history was lost).
    ///
    /// Interest is kept: an edge whose read or write was registered just before this reset
    /// and answered just after it holds a copy of the new epoch, and must be pushed its
    /// key's later changes (the fault suite, seed 2038: wiping interest here left such a
    /// copy unrefreshed for its whole cacheTtl). Interest still lapses on its own.
    pub fn reset_all(&self, version: u64) {
        lock(&self.subscribers).retain(|_, outbox| outbox.offer(reset(version)));
    }

    /// Forgets streams whose edge went away, and lets lapsed interest go.
    pub fn sweep(&self) {
        self.keys.run_pending_tasks();
        lock(&self.subscribers).retain(|_, outbox| !outbox.tx.is_closed());
    }

    pub fn tracked_keys(&self) -> u64 {
        self.keys.run_pending_tasks();
        self.keys.entry_count()
    }

    pub fn subscriber_count(&self) -> usize {
        lock(&self.subscribers).len()
    }
}

/// Tells the edges still holding `key` that its changes will no longer reach them.
fn untrack(streams: &Streams, key: &CacheKey, holders: &Holders) {
    let now = Instant::now();
    let mut subs = lock(streams);
    for h in holders.iter().filter(|h| h.until > now) {
        let Some(outbox) = subs.get(&h.edge) else { continue };
        let event = PushEvent {
            event: Some(Event::Untracked(Untracked { namespace_id: key.0.clone(), keys: vec![key.1.clone()] })),
        };
        if !outbox.offer(event) {
            // It cannot be told: cut it off, so it revalidates everything when it returns.
            subs.remove(&h.edge);
        }
    }
}

fn reset(version: u64) -> PushEvent {
    PushEvent { event: Some(Event::Reset(Reset { version })) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_proto::store::v1::Change;

    fn change(ns: &str, key: &str, kind: ChangeKind) -> Change {
        Change { namespace_id: ns.into(), key: key.into(), kind: kind as i32, ..Default::default() }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn pushes_only_to_edges_that_hold_the_key() {
        let t = Tracker::new(1 << 20, DAY);
        let mut a = t.subscribe("a", 0);
        let mut b = t.subscribe("b", 0);
        assert!(matches!(a.try_recv().unwrap().event, Some(Event::Reset(_))));
        assert!(matches!(b.try_recv().unwrap().event, Some(Event::Reset(_))));
        t.track(("ns".into(), "k".into()), "a", Duration::from_secs(60));
        t.track(("ns".into(), "old".into()), "b", Duration::ZERO);
        let set = ChangeSet {
            version: 9,
            changes: vec![change("ns", "k", ChangeKind::Put), change("ns", "old", ChangeKind::Put)],
        };
        assert_eq!(t.fan_out(&set), FanOut { sent: 1, dropped: 0 });
        let Some(Event::Changes(got)) = a.try_recv().unwrap().event else { panic!("expected changes") };
        assert_eq!((got.version, got.changes.len(), got.changes[0].key.as_str()), (9, 1, "k"));
        assert!(b.try_recv().is_err(), "b's interest had lapsed");

        let gone = ChangeSet { version: 10, changes: vec![change("ns", "", ChangeKind::NamespaceDeleted)] };
        assert_eq!(t.fan_out(&gone).sent, 2, "a namespace deletion reaches every edge");
        a.try_recv().unwrap();
        let again = ChangeSet { version: 11, changes: vec![change("ns", "k", ChangeKind::Put)] };
        assert_eq!(t.fan_out(&again).sent, 0, "and forgets who held the namespace's keys");
    }

    #[test]
    fn a_reset_keeps_interest_so_copies_made_across_it_are_still_pushed() {
        let t = Tracker::new(1 << 20, DAY);
        let mut a = t.subscribe("a", 0);
        a.try_recv().unwrap();
        // An edge's write registers interest, then the feed starts over before the answer.
        t.track(("ns".into(), "k".into()), "a", Duration::from_secs(60));
        t.reset_all(424);
        assert!(matches!(a.try_recv().unwrap().event, Some(Event::Reset(_))), "edges revalidate");
        let later = ChangeSet { version: 431, changes: vec![change("ns", "k", ChangeKind::Put)] };
        assert_eq!(t.fan_out(&later).sent, 1, "and are still pushed the keys they hold");
    }

    #[test]
    fn interest_evicted_for_room_is_announced_to_its_holders() {
        // Room for a handful of keys only.
        let t = Tracker::new(2_000, DAY);
        let mut a = t.subscribe("a", 0);
        a.try_recv().unwrap();
        for i in 0..200 {
            t.track(("ns".into(), format!("key-{i}")), "a", Duration::from_secs(600));
        }
        t.sweep();
        assert!(t.tracked_keys() < 200, "tracking is bounded");
        let mut untracked = 0;
        while let Ok(e) = a.try_recv() {
            if let Some(Event::Untracked(u)) = e.event {
                untracked += u.keys.len();
            }
        }
        assert!(untracked > 0, "the edge was told which keys are no longer pushed");
        assert_eq!(untracked as u64 + t.tracked_keys(), 200, "every key is either tracked or announced");
    }

    #[test]
    fn an_edge_that_stops_taking_pushes_is_cut_off_by_the_bytes_it_leaves_queued() {
        let t = Tracker::new(1 << 20, DAY);
        let mut a = t.subscribe("a", 0);
        a.try_recv().unwrap();
        t.track(("ns".into(), "k".into()), "a", Duration::from_secs(600));
        let value = bytes::Bytes::from(vec![0u8; 1 << 20]);
        let set = |version| ChangeSet {
            version,
            changes: vec![Change { value: value.clone(), ..change("ns", "k", ChangeKind::Put) }],
        };
        // Taken as they come: never behind, however much passes.
        for v in 1..=64 {
            assert_eq!(t.fan_out(&set(v)), FanOut { sent: 1, dropped: 0 });
            a.try_recv().unwrap();
        }
        // Not taken: far fewer sets than the count bound, but the bytes run out.
        let mut sent = 0;
        for v in 65..=200 {
            let out = t.fan_out(&set(v));
            sent += out.sent;
            if out.dropped == 1 {
                break;
            }
        }
        let size = PushEvent { event: Some(Event::Changes(set(1))) }.encoded_len();
        assert_eq!(sent, PUSH_BYTES / size, "cut off once {PUSH_BYTES} bytes were queued");
        assert_eq!(t.subscriber_count(), 0);
    }

    #[test]
    fn interest_lasts_at_most_the_cap() {
        let t = Tracker::new(1 << 20, Duration::ZERO);
        let mut a = t.subscribe("a", 0);
        a.try_recv().unwrap();
        t.track(("ns".into(), "k".into()), "a", Duration::from_secs(u64::from(u32::MAX)));
        let set = ChangeSet { version: 3, changes: vec![change("ns", "k", ChangeKind::Put)] };
        assert_eq!(t.fan_out(&set).sent, 0, "a huge ttl was capped");
    }
}
