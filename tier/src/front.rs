//! A few small maps of the most read copies, in front of the cache.
//!
//! A lookup in a large moka cache that has churned through many keys costs several times a
//! lookup in a fresh one: in a microbenchmark with the edge's settings, a hot key inserted
//! after a million others had passed through took 517 ns instead of 193. The edge's hot
//! reads lost 17 to 24% of their throughput once its cache was full (docs/benchmarks.md,
//! "At 10M keys"). The front answers the keys read most from compact maps instead.
//!
//! The front holds only what the cache held, never anything newer or older:
//! - every change to a key through `VersionedCache` drops the key from the front, after
//!   the cache itself changed;
//! - a copy read from the cache enters the front only if no change went through its shard
//!   since the front missed it (`Ticket`, a count of changes per shard). A copy read
//!   before a change can therefore never come back after it.
//!
//! So an answer from the front is one the cache could have given at that moment. Copies
//! leave the front when their holding time ends, as they leave the cache.
//!
//! Admission is cheap and crude: one miss in `ADMIT_EVERY` may enter, and a full shard
//! makes room by dropping any one entry. A key read thousands of times a second gets in at
//! once; a key read once rarely does.

use crate::copy::Copy;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Shards, each its own lock, so readers on different keys seldom meet.
const SHARDS: usize = 16;
/// Copies per shard, at most.
const ENTRIES_PER_SHARD: usize = 64;
/// One cache hit in this many may enter the front.
const ADMIT_EVERY: u64 = 8;
/// One front hit in this many is also read from the cache (`Front::get`).
const TOUCH_EVERY: u64 = 16;

/// How the front and the cache behind it (and the regional tier's tracker) hash their keys:
/// foldhash, seeded per process. With SipHash, the standard map's, hashing in the edge and
/// the regional tier took 7.7% of the machine's CPU in a bulk load (moka hashes every key
/// again each time its table grows), and each hot read hashed its key twice (front and
/// cache). The per-process random seed keeps keys, which callers choose, from being aimed
/// at one bucket.
pub type KeyHasher = foldhash::fast::RandomState;

/// The front of a cache whose keys are `K`.
pub struct Front<K> {
    shards: Vec<Mutex<Shard<K>>>,
    /// Bytes (as the cache's weigher counts them) per shard, at most.
    shard_bytes: u64,
    hasher: KeyHasher,
    misses: AtomicU64,
}

/// The key's hash, already computed once (`Front::hash`), is the map's key: one hash per
/// lookup, not one for the shard and another for the map.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, h: u64) {
        self.0 = h;
    }
}

struct Slot<K> {
    key: K,
    copy: Arc<Copy>,
    weight: u64,
}

struct Shard<K> {
    /// Copies by their key's hash; two keys with one hash share a slot, the later one winning.
    copies: HashMap<u64, Slot<K>, BuildHasherDefault<Prehashed>>,
    bytes: u64,
    /// Changes to any key of this shard so far.
    changes: u64,
    hits: u64,
}

impl<K> Default for Shard<K> {
    fn default() -> Self {
        Shard { copies: HashMap::default(), bytes: 0, changes: 0, hits: 0 }
    }
}

impl<K> Shard<K> {
    fn remove(&mut self, hash: u64) {
        if let Some(slot) = self.copies.remove(&hash) {
            self.bytes = self.bytes.saturating_sub(slot.weight);
        }
    }
}

/// A miss in the front: the key's hash, and how many changes its shard had seen then.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    hash: u64,
    changes: u64,
}

impl<K: Hash + Eq + Clone> Front<K> {
    /// A front holding at most `max_bytes` of copies.
    pub fn new(max_bytes: u64) -> Front<K> {
        Front {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_bytes: max_bytes / SHARDS as u64,
            hasher: KeyHasher::default(),
            misses: AtomicU64::new(0),
        }
    }

    fn hash(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    fn lock(&self, hash: u64) -> MutexGuard<'_, Shard<K>> {
        self.shards[(hash % SHARDS as u64) as usize].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The copy held in front for `key`, and whether to read it from the cache too; or the
    /// ticket to offer the cache's copy with.
    ///
    /// One hit in `TOUCH_EVERY` is also read from the cache, so that the cache still sees the
    /// key as read: without it, its eviction policy would take the hottest keys for unread
    /// ones and drop them, and a change pushed for a key the cache no longer holds is not
    /// applied in place (the next read fetches instead).
    pub fn get(&self, key: &K) -> Result<(Arc<Copy>, bool), Ticket> {
        let hash = self.hash(key);
        let mut s = self.lock(hash);
        s.hits = s.hits.wrapping_add(1);
        let touch = s.hits.is_multiple_of(TOUCH_EVERY);
        match s.copies.get(&hash) {
            Some(slot) if slot.key == *key && slot.copy.hold_until > Instant::now() => Ok((slot.copy.clone(), touch)),
            Some(slot) if slot.key == *key => {
                s.remove(hash);
                Err(Ticket { hash, changes: s.changes })
            }
            _ => Err(Ticket { hash, changes: s.changes }),
        }
    }

    /// Offers the copy the cache held for `key` (weighing `w` bytes) after the front missed
    /// it with `ticket`. It enters only if no change went through the shard since, and only
    /// now and then.
    pub fn offer(&self, key: &K, ticket: Ticket, copy: &Arc<Copy>, w: u64) {
        if !self.misses.fetch_add(1, Ordering::Relaxed).is_multiple_of(ADMIT_EVERY) {
            return;
        }
        if w > self.shard_bytes / 4 {
            return;
        }
        let mut s = self.lock(ticket.hash);
        if s.changes != ticket.changes {
            return;
        }
        s.remove(ticket.hash);
        while s.copies.len() >= ENTRIES_PER_SHARD || s.bytes + w > self.shard_bytes {
            let Some(&h) = s.copies.keys().next() else { break };
            s.remove(h);
        }
        s.bytes += w;
        s.copies.insert(ticket.hash, Slot { key: key.clone(), copy: copy.clone(), weight: w });
    }

    /// `key` changed in the cache (or may have): its copy leaves the front, and no copy read
    /// before now may enter.
    pub fn forget(&self, key: &K) {
        let hash = self.hash(key);
        let mut s = self.lock(hash);
        s.changes += 1;
        s.remove(hash);
    }

    /// Many keys changed: the front empties, and no copy read before now may enter.
    pub fn clear(&self) {
        for shard in &self.shards {
            let mut s = shard.lock().unwrap_or_else(PoisonError::into_inner);
            s.changes += 1;
            s.copies.clear();
            s.bytes = 0;
        }
    }

    /// Copies held in front.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).copies.len()).sum()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::Value;
    use bytes::Bytes;
    use std::time::Duration;

    fn key(k: &str) -> String {
        k.to_string()
    }

    const W: u64 = 700;

    fn copy(version: u64, hold: Duration) -> Arc<Copy> {
        let v = Some(Value { bytes: Bytes::from_static(b"value"), metadata_json: None, expiration: None });
        Arc::new(Copy::new(v, version, Instant::now(), hold, Duration::ZERO, 0))
    }

    /// Offers `c` until it is admitted (one offer in `ADMIT_EVERY` is).
    fn admit(f: &Front<String>, k: &String, c: &Arc<Copy>) {
        for _ in 0..ADMIT_EVERY {
            let Err(t) = f.get(k) else { return };
            f.offer(k, t, c, W);
        }
        assert!(f.get(k).is_ok(), "admitted within {ADMIT_EVERY} offers");
    }

    #[test]
    fn a_copy_read_before_a_change_never_enters_after_it() {
        let f: Front<String> = Front::new(1 << 20);
        let k = key("a");
        let old = copy(1, Duration::from_secs(60));
        for _ in 0..ADMIT_EVERY {
            let t = f.get(&k).expect_err("nothing held yet");
            f.forget(&k);
            f.offer(&k, t, &old, W);
        }
        assert!(f.get(&k).is_err(), "a change came between the miss and the offer every time");
        admit(&f, &k, &old);
        assert_eq!(f.get(&k).map(|(c, _)| c.version).ok(), Some(1));
        f.forget(&k);
        assert!(f.get(&k).is_err(), "a change drops the key");
        admit(&f, &k, &old);
        f.clear();
        assert!(f.get(&k).is_err() && f.is_empty(), "clearing drops everything");
    }

    #[test]
    fn copies_leave_when_their_holding_time_ends_and_the_front_stays_bounded() {
        let f: Front<String> = Front::new(1 << 20);
        let brief = copy(1, Duration::ZERO);
        let k = key("brief");
        for _ in 0..ADMIT_EVERY {
            if let Err(t) = f.get(&k) {
                f.offer(&k, t, &brief, W);
            }
        }
        assert!(f.get(&k).is_err(), "a copy past its holding time is not answered");

        let lasting = copy(1, Duration::from_secs(60));
        for i in 0..10_000 {
            let k = key(&format!("k{i}"));
            if let Err(t) = f.get(&k) {
                f.offer(&k, t, &lasting, W);
            }
        }
        assert!(f.len() <= SHARDS * ENTRIES_PER_SHARD, "{} copies held", f.len());
        let small: Front<String> = Front::new(16 * 1024);
        for i in 0..10_000 {
            let k = key(&format!("k{i}"));
            if let Err(t) = small.get(&k) {
                small.offer(&k, t, &lasting, W);
            }
        }
        let bytes: u64 = small.shards.iter().map(|s| s.lock().unwrap().bytes).sum();
        assert!(bytes <= 16 * 1024, "{bytes} bytes held");
    }
}
