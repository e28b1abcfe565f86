//! The Raft log on RocksDB, with group commit.
//!
//! `append` writes entries to RocksDB (into the WAL, unsynced) and hands the completion
//! callback to one flusher thread. That thread takes every callback queued so far, syncs
//! the WAL once, then reports them all durable: under load one fsync covers many appends,
//! and openraft counts an entry toward commit only after its callback fired.

use super::keys::*;
use super::seal::Sealer;
use super::{any_error, cf};
use crate::metrics::Metrics;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{mpsc, Arc};

/// The log store; cheap to clone (clones share the database and the flusher).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    flusher: Arc<Flusher>,
    /// Entries carry values: they are sealed at rest (`seal`).
    sealer: Arc<Sealer>,
}

/// The flusher thread and the way to it; dropping the last handle stops the thread and
/// waits for it, so no thread outlives the database it syncs.
struct Flusher {
    tx: Option<mpsc::Sender<LogFlushed<TypeConfig>>>,
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
        let (flush_tx, flush_rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let flush_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("raft-log-flusher".into())
            .spawn(move || flush_loop(&flush_db, &flush_rx, &metrics))
            .expect("spawning the log flusher thread");
        LogStore { db, flusher: Arc::new(Flusher { tx: Some(flush_tx), thread: Some(thread) }), sealer }
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
fn flush_loop(db: &DB, rx: &mpsc::Receiver<LogFlushed<TypeConfig>>, metrics: &Metrics) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let result = db.flush_wal(true);
        metrics.log_fsyncs.inc();
        metrics.log_fsync_batch.observe(batch.len() as f64);
        for cb in batch {
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
        self.put_meta(META_VOTE, vote, true)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(META_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta(META_COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(META_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::default();
        let log_cf = cf(&self.db, CF_RAFT_LOG);
        // Held from sealing to writing, so a key rotation falls before or after, not between.
        let held = self.sealer.hold_writes();
        for entry in entries {
            let key = index_key(entry.log_id.index);
            let sealed = self
                .sealer
                .seal_bincode(CF_RAFT_LOG, &key, &entry)
                .map_err(|e| StorageIOError::write_logs(any_error(e)))?;
            batch.put_cf(log_cf, key, sealed);
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        self.db.write_opt(batch, &opts).map_err(|e| StorageIOError::write_logs(&e))?;
        drop(held);
        let tx =
            self.flusher.tx.as_ref().ok_or_else(|| StorageIOError::write_logs(any_error("log flusher stopped")))?;
        tx.send(callback).map_err(|_| StorageIOError::write_logs(any_error("log flusher stopped")))?;
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
        self.db.write_opt(batch, &opts).map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let bytes = bincode::serialize(&log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        batch.put_cf(cf(&self.db, CF_RAFT_META), META_PURGED, bytes);
        batch.delete_range_cf(cf(&self.db, CF_RAFT_LOG), index_key(0), index_key(log_id.index + 1));
        let _held = self.sealer.hold_writes();
        self.db.write(batch).map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
