//! Which edge holds which key, and the push streams to those edges: each change goes only
//! to the edges that hold a copy (Redis-style client tracking, applied to a cache tier).

use kv_common::cache::CacheKey;
use kv_proto::store::v1::{ChangeKind, ChangeSet};
use kv_proto::tier::v1::{push_event::Event, PushEvent, Reset};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Change sets buffered per edge; an edge that falls further behind is cut off and, on
/// reconnecting, told to revalidate (a Reset), so nothing is silently lost.
const PUSH_BUFFER: usize = 4096;

type Subscriber = Arc<str>;

/// Interest of edges in keys, and their open push streams.
#[derive(Default)]
pub struct Tracker {
    keys: Mutex<HashMap<CacheKey, HashMap<Subscriber, Instant>>>,
    subscribers: Mutex<HashMap<Subscriber, mpsc::Sender<PushEvent>>>,
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

impl Tracker {
    /// Records that `subscriber` will hold `key` for `ttl`. Called before the read that
    /// fills the edge, so a change applied after that read is pushed.
    pub fn track(&self, key: CacheKey, subscriber: &str, ttl: Duration) {
        let until = Instant::now() + ttl;
        let mut keys = lock(&self.keys);
        let holders = keys.entry(key).or_default();
        let slot = holders.entry(Arc::from(subscriber)).or_insert(until);
        *slot = (*slot).max(until);
    }

    /// Opens the push stream of `subscriber` (replacing an older one); it starts with a Reset.
    pub fn subscribe(&self, subscriber: &str, version: u64) -> mpsc::Receiver<PushEvent> {
        let (tx, rx) = mpsc::channel(PUSH_BUFFER);
        let _ = tx.try_send(reset(version));
        lock(&self.subscribers).insert(Arc::from(subscriber), tx);
        rx
    }

    /// Pushes the changes of one set to the edges that hold the keys it touches.
    pub fn fan_out(&self, set: &ChangeSet) -> FanOut {
        let now = Instant::now();
        let mut per_edge: HashMap<Subscriber, Vec<usize>> = HashMap::new();
        {
            let mut keys = lock(&self.keys);
            for (i, change) in set.changes.iter().enumerate() {
                if change.kind == ChangeKind::NamespaceDeleted as i32 {
                    keys.retain(|k, _| k.0 != change.namespace_id);
                    for s in lock(&self.subscribers).keys() {
                        per_edge.entry(s.clone()).or_default().push(i);
                    }
                    continue;
                }
                let key = (change.namespace_id.clone(), change.key.clone());
                if let Some(holders) = keys.get(&key) {
                    for (s, until) in holders {
                        if *until > now {
                            per_edge.entry(s.clone()).or_default().push(i);
                        }
                    }
                }
            }
        }
        let mut out = FanOut::default();
        let mut subs = lock(&self.subscribers);
        for (edge, idx) in per_edge {
            let Some(tx) = subs.get(&edge) else { continue };
            let changes = idx.into_iter().map(|i| set.changes[i].clone()).collect();
            let event = PushEvent { event: Some(Event::Changes(ChangeSet { version: set.version, changes })) };
            if tx.try_send(event).is_ok() {
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
    pub fn reset_all(&self, version: u64) {
        lock(&self.keys).clear();
        lock(&self.subscribers).retain(|_, tx| tx.try_send(reset(version)).is_ok());
    }

    /// Forgets interest that has lapsed and streams whose edge went away.
    pub fn sweep(&self) {
        let now = Instant::now();
        lock(&self.keys).retain(|_, holders| {
            holders.retain(|_, until| *until > now);
            !holders.is_empty()
        });
        lock(&self.subscribers).retain(|_, tx| !tx.is_closed());
    }

    pub fn tracked_keys(&self) -> usize {
        lock(&self.keys).len()
    }

    pub fn subscriber_count(&self) -> usize {
        lock(&self.subscribers).len()
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

    #[test]
    fn pushes_only_to_edges_that_hold_the_key() {
        let t = Tracker::default();
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
        assert_eq!(t.tracked_keys(), 0);
    }
}
