//! The read path: gets, lists, namespaces and the change feed, served from this replica.
//!
//! Reads never go through Raft. Each read takes a RocksDB snapshot and the applied version
//! recorded in it, so "absent" is stamped with exactly the version it is true as of.
//! Expired entries are hidden here at once; the replicated sweep removes them later.

use super::cf;
use super::keys::*;
use super::log_store::read_bincode;
use super::seal::Sealer;
use crate::error::{StoreError, StoreResult};
use crate::types::{NamespaceRecord, Recorded, TokenRecord};
use kv_common::{KvError, NamespaceId};
use rocksdb::{Direction, IteratorMode, ReadOptions, SnapshotWithThreadMode, DB};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A live entry as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub value: Vec<u8>,
    pub meta: EntryMeta,
}

/// The result of a single-key read.
#[derive(Debug, Clone)]
pub struct ReadResult {
    pub entry: Option<StoredEntry>,
    /// The entry's version, or for an absent key the version as of which it is absent.
    pub version: u64,
}

/// One page of a list.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub keys: Vec<(String, EntryMeta)>,
    /// Where the next page starts; `None` when the list is complete.
    pub cursor: Option<String>,
}

/// What the change feed holds after a version.
#[derive(Debug)]
pub enum FeedRead {
    /// Change sets in version order (possibly none yet).
    Changes(Vec<(u64, Vec<ChangeRecord>)>),
    /// The asked-for version is older than the retained history.
    Resync { floor: u64 },
}

/// Reads of the replicated state; cheap to clone.
#[derive(Clone)]
pub struct Reader {
    db: Arc<DB>,
    sealer: Arc<Sealer>,
    applied: watch::Receiver<u64>,
    installs: InstallCounter,
}

/// Counts snapshot installs like a sequence lock: odd while one is under way. A read that
/// sees it change (or odd) may have seen a half-replaced state machine, so it is refused.
#[derive(Clone, Default)]
pub struct InstallCounter(Arc<AtomicU64>);

impl InstallCounter {
    /// Marks an install as started; the state machine may be half wiped until `finish`.
    pub fn begin(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    pub fn finish(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn read(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The most entries one list page examines, so a page over many tombstones stays cheap.
fn list_scan_budget(limit: u32) -> usize {
    limit as usize * 4 + 1000
}

impl Reader {
    pub fn new(db: Arc<DB>, applied: watch::Receiver<u64>, installs: InstallCounter, sealer: Arc<Sealer>) -> Self {
        Reader { db, sealer, applied, installs }
    }

    /// Runs `read` and returns its result only if no snapshot install overlapped it.
    fn consistent<T>(&self, read: impl FnOnce() -> StoreResult<T>) -> StoreResult<T> {
        let before = self.installs.read();
        let unavailable =
            || KvError::Unavailable("this replica is installing a snapshot; retry or ask another node".into());
        if before % 2 == 1 {
            return Err(unavailable().into());
        }
        let out = read()?;
        if self.installs.read() != before {
            return Err(unavailable().into());
        }
        Ok(out)
    }

    /// A RocksDB snapshot to read namespace `ns` from, or NOT_FOUND if it does not exist in it.
    fn snapshot_of(&self, ns: &NamespaceId) -> StoreResult<SnapshotWithThreadMode<'_, DB>> {
        let snap = self.db.snapshot();
        if snap.get_cf(cf(&self.db, CF_NAMESPACES), ns.0)?.is_none() {
            return Err(KvError::NamespaceNotFound.into());
        }
        Ok(snap)
    }

    /// The highest log index applied on this replica.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// A receiver that changes whenever a new index is applied.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Waits until this replica has applied `min_version`, so a caller that wrote through
    /// another node still reads its own write here.
    pub async fn wait_applied(&self, min_version: u64, timeout: Duration) -> StoreResult<()> {
        let mut rx = self.applied.clone();
        let reached = tokio::time::timeout(timeout, async move { rx.wait_for(|v| *v >= min_version).await.is_ok() });
        match reached.await {
            Ok(true) => Ok(()),
            _ => Err(KvError::Unavailable(format!(
                "this replica has not yet applied version {min_version}; retry or ask another node"
            ))
            .into()),
        }
    }

    /// The namespace, or NOT_FOUND.
    pub fn namespace(&self, id: &NamespaceId) -> StoreResult<NamespaceRecord> {
        self.consistent(|| {
            read_bincode(&self.db, CF_NAMESPACES, &id.0)?.ok_or(StoreError::Kv(KvError::NamespaceNotFound))
        })
    }

    /// The first outcome of a request id, if that request was applied.
    pub fn request(&self, id: &str) -> StoreResult<Option<Recorded>> {
        self.consistent(|| Ok(read_bincode::<RequestRecord>(&self.db, CF_REQUESTS, id.as_bytes())?.map(|r| r.recorded)))
    }

    /// One token, if it exists.
    pub fn token(&self, id: &str) -> StoreResult<Option<TokenRecord>> {
        self.consistent(|| Ok(read_bincode(&self.db, CF_TOKENS, id.as_bytes())?))
    }

    /// Every token, ordered by id.
    pub fn tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        self.consistent(|| {
            let mut out = Vec::new();
            for item in self.db.iterator_cf(cf(&self.db, CF_TOKENS), IteratorMode::Start) {
                let (_, v) = item?;
                out.push(bincode::deserialize(&v).map_err(anyhow::Error::from)?);
            }
            Ok(out)
        })
    }

    /// Every namespace, ordered by title.
    pub fn namespaces(&self) -> StoreResult<Vec<NamespaceRecord>> {
        self.consistent(|| {
            let mut out = Vec::new();
            for item in self.db.iterator_cf(cf(&self.db, CF_NS_TITLES), IteratorMode::Start) {
                let (_, id) = item?;
                if let Some(rec) = read_bincode::<NamespaceRecord>(&self.db, CF_NAMESPACES, &id)? {
                    out.push(rec);
                }
            }
            Ok(out)
        })
    }

    /// One key of an existing namespace.
    pub fn get(&self, ns: &NamespaceId, key: &str, now_secs: i64) -> StoreResult<ReadResult> {
        let (mut results, read_version) = self.get_many(ns, std::slice::from_ref(&key), now_secs)?;
        let entry = results.pop().flatten();
        let version = entry.as_ref().map_or(read_version, |e| e.meta.version);
        Ok(ReadResult { entry, version })
    }

    /// Several keys of an existing namespace, read at one snapshot; also returns the
    /// version as of which the absent ones are absent.
    pub fn get_many<K: AsRef<str>>(
        &self,
        ns: &NamespaceId,
        keys: &[K],
        now_secs: i64,
    ) -> StoreResult<(Vec<Option<StoredEntry>>, u64)> {
        self.consistent(|| {
            fail::fail_point!("read::before_snapshot");
            let snap = self.snapshot_of(ns)?;
            let read_version = self.applied_in(&snap)?;
            let mut out = Vec::with_capacity(keys.len());
            let mut newest = read_version;
            for key in keys {
                let ek = entry_key(ns, key.as_ref().as_bytes());
                let entry = self.read_live(&snap, &ek, now_secs)?;
                if let Some(e) = &entry {
                    newest = newest.max(e.meta.version);
                }
                out.push(entry);
            }
            Ok((out, newest))
        })
    }

    /// One page of keys in byte order, after `cursor`, starting with `prefix`.
    pub fn list(
        &self,
        ns: &NamespaceId,
        prefix: &str,
        limit: u32,
        cursor: Option<&str>,
        now_secs: i64,
    ) -> StoreResult<ListPage> {
        self.consistent(|| {
            let snap = self.snapshot_of(ns)?;
            let after = cursor.map(decode_cursor).transpose()?;
            let scope = entry_key(ns, prefix.as_bytes());
            let start = match &after {
                // Strictly after the cursor's key: the smallest key greater than it.
                Some(last) if last.as_bytes() >= prefix.as_bytes() => {
                    let mut k = entry_key(ns, last.as_bytes());
                    k.push(0);
                    k
                }
                _ => scope.clone(),
            };
            let mut opts = ReadOptions::default();
            opts.set_snapshot(&snap);
            if let Some(end) = prefix_end(&scope) {
                opts.set_iterate_upper_bound(end);
            }
            let it =
                self.db.iterator_cf_opt(cf(&self.db, CF_ENTRIES), opts, IteratorMode::From(&start, Direction::Forward));
            let mut page = ListPage::default();
            let mut last_seen: Option<String> = None;
            for (examined, item) in it.enumerate() {
                let (k, v) = item?;
                let name = key_name(&k)?;
                if page.keys.len() == limit as usize || examined == list_scan_budget(limit) {
                    // More keys follow: the page ends after the last key looked at.
                    page.cursor = last_seen.map(|n| encode_cursor(&n));
                    return Ok(page);
                }
                let meta: EntryMeta = self.sealer.open_bincode(CF_ENTRIES, &k, &v)?;
                if !meta.tombstone && !kv_common::time::is_expired(meta.expiration, now_secs) {
                    page.keys.push((name.clone(), meta));
                }
                last_seen = Some(name);
            }
            Ok(page)
        })
    }

    /// The last log index applied in `snap`, written in the same batch as that entry's
    /// changes: a key absent from the snapshot is absent as of exactly this version. (The
    /// applied position noted before taking the snapshot could be older than a delete the
    /// snapshot already holds, and the absence would be dated before its cause.)
    fn applied_in(&self, snap: &SnapshotWithThreadMode<'_, DB>) -> StoreResult<u64> {
        let applied: Option<crate::types::LogId> = match snap.get_cf(cf(&self.db, CF_SM_META), META_APPLIED)? {
            Some(raw) => bincode::deserialize(&raw)?,
            None => None,
        };
        Ok(applied.map_or(0, |l| l.index))
    }

    /// The entry at `ek` if it exists, is not a tombstone and has not expired.
    fn read_live(
        &self,
        snap: &SnapshotWithThreadMode<'_, DB>,
        ek: &[u8],
        now_secs: i64,
    ) -> StoreResult<Option<StoredEntry>> {
        let Some(sealed) = snap.get_cf(cf(&self.db, CF_ENTRIES), ek)? else { return Ok(None) };
        let meta: EntryMeta = self.sealer.open_bincode(CF_ENTRIES, ek, &sealed)?;
        if meta.tombstone || kv_common::time::is_expired(meta.expiration, now_secs) {
            return Ok(None);
        }
        let value = match snap.get_cf(cf(&self.db, CF_VALUES), ek)? {
            Some(sealed) => self.sealer.open(CF_VALUES, ek, &sealed)?,
            None => Vec::new(),
        };
        Ok(Some(StoredEntry { value, meta }))
    }

    /// Change sets with versions greater than `from`, at most `max` of them. The floor and
    /// the changes are read from one RocksDB snapshot, so a trim in between cannot skip
    /// changes without a `Resync`.
    pub fn changes_after(&self, from: u64, max: usize) -> StoreResult<FeedRead> {
        self.consistent(|| {
            let snap = self.db.snapshot();
            let floor: u64 = match snap.get_cf(cf(&self.db, CF_SM_META), META_FLOOR)? {
                Some(raw) => bincode::deserialize(&raw)?,
                None => 0,
            };
            fail::fail_point!("feed::after_floor");
            if from < floor {
                return Ok(FeedRead::Resync { floor });
            }
            let start = index_key(from.saturating_add(1));
            let mut opts = ReadOptions::default();
            opts.set_snapshot(&snap);

            let it =
                self.db.iterator_cf_opt(cf(&self.db, CF_CHANGES), opts, IteratorMode::From(&start, Direction::Forward));
            let mut out = Vec::new();
            for item in it.take(max) {
                let (k, v) = item?;
                let version = decode_index(&k).ok_or_else(|| anyhow::anyhow!("bad change key"))?;
                out.push((version, self.sealer.open_bincode(CF_CHANGES, &k, &v)?));
            }
            Ok(FeedRead::Changes(out))
        })
    }

    /// The commit index this node last recorded (it may lag the leader's by a heartbeat).
    pub fn committed(&self) -> u64 {
        read_bincode::<Option<crate::types::LogId>>(&self.db, CF_RAFT_META, META_COMMITTED)
            .ok()
            .flatten()
            .flatten()
            .map_or(0, |l| l.index)
    }

    /// Whether a sweep would find work: an expiration at or before `now_secs`, or a
    /// tombstone older than `tombstones_before`.
    pub fn has_sweep_work(&self, now_secs: i64, tombstones_before: u64, requests_before_ms: u64) -> StoreResult<bool> {
        let first_below = |cf_name: &str, bound: u64| -> StoreResult<bool> {
            match self.db.iterator_cf(cf(&self.db, cf_name), IteratorMode::Start).next() {
                None => Ok(false),
                Some(item) => {
                    let key = item?.0;
                    Ok(key.get(..8).and_then(|b| b.try_into().ok()).is_some_and(|b| u64::from_be_bytes(b) < bound))
                }
            }
        };
        Ok(first_below(CF_EXPIRY, now_secs.max(0) as u64 + 1)?
            || first_below(CF_TOMBSTONES, tombstones_before)?
            || first_below(CF_REQUEST_TIMES, requests_before_ms)?)
    }
}

fn key_name(entry_key: &[u8]) -> StoreResult<String> {
    let raw = entry_key.get(16..).ok_or_else(|| anyhow::anyhow!("short entry key"))?;
    Ok(String::from_utf8(raw.to_vec()).map_err(|e| anyhow::anyhow!("stored key is not UTF-8: {e}"))?)
}

/// Cursors are the hex of the last key returned: opaque to clients, exact for us.
fn encode_cursor(last_key: &str) -> String {
    hex::encode(last_key.as_bytes())
}

fn decode_cursor(cursor: &str) -> StoreResult<String> {
    let bytes = hex::decode(cursor).map_err(|_| KvError::InvalidCursor)?;
    String::from_utf8(bytes).map_err(|_| KvError::InvalidCursor.into())
}
