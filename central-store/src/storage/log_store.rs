//! The Raft log on RocksDB.
//!
//! `append` writes entries to RocksDB (into the WAL, unsynced), tells its observer (the
//! leader's early replication, `raft::pipeline`) so the followers get them before the
//! leader's own sync, and hands the completion callback to one flusher thread. That thread
//! takes every callback queued so far, syncs the WAL once, then reports them all durable;
//! openraft counts an entry toward commit only after its callback fired. The sync runs
//! apart from the write because the state machine writes into the same database: a synced
//! write would hold RocksDB's write path, and every apply behind it, for the whole fsync
//! (single puts took 1.2 ms instead of 1.05). openraft 0.9 waits for each append's sync
//! before the next, so in practice one sync covers one append.

use super::keys::*;
use super::seal::Sealer;
use super::{any_error, cf};
use crate::metrics::{Metrics, Stage};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

/// The log store; cheap to clone (clones share the database and the flusher).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    flusher: Arc<Flusher>,
    /// Entries carry values: they are sealed at rest (`seal`).
    sealer: Arc<Sealer>,
    metrics: Arc<Metrics>,
    /// What this node last saved, for the observer.
    known: Arc<Mutex<Known>>,
    observer: Option<Arc<dyn LogObserver>>,
}

/// Told of the entries the log store writes, as it writes them: the leader's early
/// replication (`raft::pipeline`) listens.
pub trait LogObserver: Send + Sync {
    /// Whether this node leads under `vote`, so that `written` wants its entries.
    fn leads(&self, vote: &Vote) -> bool;
    /// Entries this node wrote as the leader under `vote` (not yet durable; all of its term),
    /// right after `prev` in the log, when the log was committed up to `committed`.
    fn written(&self, vote: Vote, prev: Option<LogId>, entries: Vec<Entry>, committed: Option<LogId>);
}

/// The vote and commit index this node last saved, and the log's last entry when known.
#[derive(Default, Clone, Copy)]
struct Known {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last: Option<LogId>,
}

/// An append waiting for the sync that makes it durable, and when it was made.
type Appended = (Instant, LogFlushed<TypeConfig>);

/// The flusher thread and the way to it; dropping the last handle stops the thread and
/// waits for it, so no thread outlives the database it syncs.
struct Flusher {
    tx: Option<mpsc::Sender<Appended>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl LogStore {
    /// Starts the flusher thread; it ends when the last clone of the store is dropped.
    pub fn new(db: Arc<DB>, metrics: Arc<Metrics>, sealer: Arc<Sealer>) -> Self {
        let flush_metrics = metrics.clone();
        let (flush_tx, flush_rx) = mpsc::channel::<Appended>();
        let flush_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("raft-log-flusher".into())
            .spawn(move || flush_loop(&flush_db, &flush_rx, &flush_metrics))
            .expect("spawning the log flusher thread");
        LogStore {
            db,
            flusher: Arc::new(Flusher { tx: Some(flush_tx), thread: Some(thread) }),
            sealer,
            metrics,
            known: Arc::default(),
            observer: None,
        }
    }

    /// Tells `observer` of every entry written from now on.
    pub fn observed_by(mut self, observer: Arc<dyn LogObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The log id of the entry at `index`, read from the log (or the purge mark).
    fn log_id_at(&self, index: u64) -> Result<Option<LogId>, StorageError> {
        let key = index_key(index);
        if let Some(v) =
            self.db.get_pinned_cf(cf(&self.db, CF_RAFT_LOG), key).map_err(|e| StorageIOError::read_logs(&e))?
        {
            return Ok(Some(self.open(&key, &v)?.log_id));
        }
        let purged: Option<LogId> = self.get_meta(META_PURGED)?;
        Ok(purged.filter(|p| p.index == index))
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        read_bincode(&self.db, CF_RAFT_META, key).map_err(|e| StorageIOError::read(any_error(e)).into())
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T, sync: bool) -> Result<(), StorageError> {
        let bytes = bincode::serialize(value).map_err(|e| StorageIOError::write(&e))?;
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.put_cf_opt(cf(&self.db, CF_RAFT_META), key, bytes, &opts).map_err(|e| StorageIOError::write(&e).into())
    }

    /// Opens one stored log entry.
    fn open(&self, key: &[u8], sealed: &[u8]) -> Result<Entry, StorageError> {
        self.sealer.open_bincode(CF_RAFT_LOG, key, sealed).map_err(|e| StorageIOError::read_logs(any_error(e)).into())
    }

    /// Hands entries just written to the observer when this node leads their term, with
    /// the entry before them. Early replication is an optimization: when the entry before
    /// cannot be read, the entries go the usual way only.
    fn tell_observer(&self, entries: Vec<Entry>) {
        let (Some(first), Some(last)) = (entries.first().map(|e| e.log_id), entries.last().map(|e| e.log_id)) else {
            return;
        };
        let known = self.known().last.replace(last);
        let Some(observer) = &self.observer else { return };
        let Known { vote: Some(vote), committed, .. } = *self.known() else { return };
        if !observer.leads(&vote) || entries.iter().any(|e| e.log_id.leader_id != vote.leader_id) {
            return;
        }
        let prev = match (first.index, known) {
            (0, _) => None,
            (i, Some(k)) if k.index + 1 == i => Some(k),
            (i, _) => match self.log_id_at(i - 1) {
                Ok(Some(p)) => Some(p),
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "early replication skipped: the entry before is unreadable");
                    return;
                }
            },
        };
        observer.written(vote, prev, entries, committed);
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let mut it = self.db.iterator_cf(cf(&self.db, CF_RAFT_LOG), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                let entry: Entry = self.open(&k, &v)?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

/// One fsync per batch of queued appends.
fn flush_loop(db: &DB, rx: &mpsc::Receiver<Appended>, metrics: &Metrics) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let syncing = Instant::now();
        let result = db.flush_wal(true);
        metrics.stage(Stage::LogSync, syncing);
        metrics.log_fsyncs.inc();
        metrics.log_fsync_batch.observe(batch.len() as f64);
        for (appended, cb) in batch {
            metrics.stage(Stage::LogDurable, appended);
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            cb.log_io_completed(r);
        }
    }
}

/// Reads and decodes one bincode value.
pub fn read_bincode<T: DeserializeOwned>(db: &DB, cf_name: &str, key: &[u8]) -> Result<Option<T>, anyhow::Error> {
    match db.get_pinned_cf(cf(db, cf_name), key)? {
        None => Ok(None),
        Some(v) => Ok(Some(bincode::deserialize(&v)?)),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let start_key = index_key(start);
        let it = self.db.iterator_cf(cf(&self.db, CF_RAFT_LOG), IteratorMode::From(&start_key, Direction::Forward));
        let mut out = Vec::new();
        for item in it {
            let (k, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let idx = decode_index(&k).ok_or_else(|| StorageIOError::read_logs(any_error("bad log key")))?;
            if !range.contains(&idx) {
                break;
            }
            out.push(self.open(&k, &v)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(META_PURGED)?;
        let last = self.last_entry_log_id()?.or(last_purged);
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(META_VOTE, vote, true)?;
        self.known().vote = Some(*vote);
        Ok(())
    }

    /// openraft reads the vote once, at start. A node whose saved vote says it led would
    /// lead that term again at once, giving out log ids from the end of its own log. With
    /// early replication a follower may hold an entry of that term the leader never synced
    /// (it lost power before its fsync), and one log id would then name two entries. So a
    /// leader that restarts comes back as a node that voted for itself, not as the leader:
    /// it leads again only after an election, in a new term. No one else's vote changes (in
    /// this Raft every leader id is its own term and node), and etcd's nodes restart the same way.
    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let mut vote: Option<Vote> = self.get_meta(META_VOTE)?;
        if let (Some(v), Some(observer)) = (vote, &self.observer) {
            if observer.leads(&v) {
                vote = Some(Vote::new(v.leader_id.term, v.leader_id.node_id));
            }
        }
        self.known().vote = vote;
        Ok(vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta(META_COMMITTED, &committed, false)?;
        self.known().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed = self.get_meta::<Option<LogId>>(META_COMMITTED)?.flatten();
        self.known().committed = committed;
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let appended = Instant::now();
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut batch = WriteBatch::default();
        let log_cf = cf(&self.db, CF_RAFT_LOG);
        // Held from sealing to writing, so a key rotation falls before or after, not between.
        let held = self.sealer.hold_writes();
        for entry in &entries {
            let key = index_key(entry.log_id.index);
            let sealed = self
                .sealer
                .seal_bincode(CF_RAFT_LOG, &key, entry)
                .map_err(|e| StorageIOError::write_logs(any_error(e)))?;
            batch.put_cf(log_cf, key, sealed);
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        self.db.write_opt(batch, &opts).map_err(|e| StorageIOError::write_logs(&e))?;
        drop(held);
        self.metrics.stage(Stage::LogWrite, appended);
        self.tell_observer(entries);
        let tx =
            self.flusher.tx.as_ref().ok_or_else(|| StorageIOError::write_logs(any_error("log flusher stopped")))?;
        tx.send((appended, callback)).map_err(|_| StorageIOError::write_logs(any_error("log flusher stopped")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let log_cf = cf(&self.db, CF_RAFT_LOG);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(log_cf, index_key(log_id.index), index_key(u64::MAX));
        batch.delete_cf(log_cf, index_key(u64::MAX));
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        let _held = self.sealer.hold_writes();
        self.known().last = None;
        self.db.write_opt(batch, &opts).map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let bytes = bincode::serialize(&log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        batch.put_cf(cf(&self.db, CF_RAFT_META), META_PURGED, bytes);
        batch.delete_range_cf(cf(&self.db, CF_RAFT_LOG), index_key(0), index_key(log_id.index + 1));
        let _held = self.sealer.hold_writes();
        let mut known = self.known();
        if known.last.is_some_and(|l| l.index <= log_id.index) {
            known.last = None;
        }
        drop(known);
        self.db.write(batch).map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::open_db;
    use openraft::entry::RaftEntry;
    use openraft::storage::RaftLogStorageExt;
    use openraft::CommittedLeaderId;

    /// Records what it is told, and leads under node 1's committed votes.
    #[derive(Default)]
    struct Told(Mutex<Vec<(Option<LogId>, Vec<u64>)>>);

    impl LogObserver for Told {
        fn leads(&self, vote: &Vote) -> bool {
            vote.is_committed() && vote.leader_id.node_id == 1
        }
        fn written(&self, _: Vote, prev: Option<LogId>, entries: Vec<Entry>, _: Option<LogId>) {
            self.0.lock().unwrap().push((prev, entries.iter().map(|e| e.log_id.index).collect()));
        }
    }

    fn entries(term: u64, node: u64, indexes: std::ops::Range<u64>) -> Vec<Entry> {
        indexes.map(|i| Entry::new_blank(LogId::new(CommittedLeaderId::new(term, node), i))).collect()
    }

    fn id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    #[tokio::test]
    async fn the_observer_gets_a_leader_s_own_entries_with_the_entry_before_them_from_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let db = open_db(&tmp.path().join("db")).unwrap();
        let told = Arc::new(Told::default());
        let mut store = LogStore::new(db, Metrics::new(), Arc::new(Sealer::for_tests())).observed_by(told.clone());
        let said = || std::mem::take(&mut *told.0.lock().unwrap());

        // As a follower (node 2 leads term 1): nothing is told.
        store.save_vote(&Vote::new_committed(1, 2)).await.unwrap();
        store.blocking_append(entries(1, 2, 0..3)).await.unwrap();
        assert!(said().is_empty());

        // Node 1 wins term 2: its entries go with the entry before, from the first one on.
        store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        store.blocking_append(entries(2, 1, 3..4)).await.unwrap();
        store.blocking_append(entries(2, 1, 4..6)).await.unwrap();
        assert_eq!(said(), vec![(Some(id(1, 2, 2)), vec![3]), (Some(id(2, 1, 3)), vec![4, 5])]);

        // After a truncation the entry before is read back from the log, not remembered.
        store.truncate(id(2, 1, 5)).await.unwrap();
        store.blocking_append(entries(2, 1, 5..6)).await.unwrap();
        assert_eq!(said(), vec![(Some(id(2, 1, 4)), vec![5])]);

        // An entry of another leader's term, or a vote not yet committed, is not this leader's.
        store.blocking_append(entries(1, 2, 6..7)).await.unwrap();
        store.save_vote(&Vote::new(3, 1)).await.unwrap();
        store.blocking_append(entries(3, 1, 7..8)).await.unwrap();
        assert!(said().is_empty());

        // When the entry before is gone (purged past it), the entries go the usual way only;
        // at the purge mark itself, the mark names it.
        store.save_vote(&Vote::new_committed(3, 1)).await.unwrap();
        store.purge(id(3, 1, 7)).await.unwrap();
        store.blocking_append(entries(3, 1, 8..9)).await.unwrap();
        assert_eq!(said(), vec![(Some(id(3, 1, 7)), vec![8])]);
        store.purge(id(3, 1, 8)).await.unwrap();
        store.truncate(id(3, 1, 9)).await.unwrap();
        store.blocking_append(entries(3, 1, 10..11)).await.unwrap();
        assert!(said().is_empty(), "the entry before index 10 is neither in the log nor the purge mark");
    }

    #[tokio::test]
    async fn a_leader_that_restarts_comes_back_having_voted_for_itself_not_leading() {
        let tmp = tempfile::tempdir().unwrap();
        let db = open_db(&tmp.path().join("db")).unwrap();
        let store = || LogStore::new(db.clone(), Metrics::new(), Arc::new(Sealer::for_tests()));
        store().observed_by(Arc::new(Told::default())).save_vote(&Vote::new_committed(4, 1)).await.unwrap();
        let mut restarted = store().observed_by(Arc::new(Told::default()));
        assert_eq!(restarted.read_vote().await.unwrap(), Some(Vote::new(4, 1)));
        // Another node's committed vote (this node followed it) is read as it was saved.
        restarted.save_vote(&Vote::new_committed(5, 2)).await.unwrap();
        assert_eq!(
            store().observed_by(Arc::new(Told::default())).read_vote().await.unwrap(),
            Some(Vote::new_committed(5, 2))
        );
        // Without early replication there is nothing to guard against.
        store().save_vote(&Vote::new_committed(6, 1)).await.unwrap();
        assert_eq!(store().read_vote().await.unwrap(), Some(Vote::new_committed(6, 1)));
    }
}
