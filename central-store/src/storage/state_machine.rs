//! The state machine: applies committed commands to RocksDB, deterministically.
//!
//! Each log entry is applied in one atomic RocksDB batch together with the new applied
//! index, so a crash leaves the state at an entry boundary and openraft re-applies the rest
//! from the (durable) log. Nothing here reads the clock: time comes from the command.

use super::keys::*;
use super::log_store::read_bincode;
use super::reader::{InstallCounter, Reader};
use super::seal::Sealer;
use super::snapshot::{self, SnapshotDir};
use super::{any_error, cf};
use crate::metrics::Metrics;
use crate::types::*;
use kv_common::trace::TraceContext;
use kv_common::{KvError, NamespaceId};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use rocksdb::{IteratorMode, WriteBatch, DB};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

/// How the change feed is kept.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// How many log indexes of history the feed keeps for resuming subscribers.
    pub retention: u64,
    /// History is trimmed at indexes divisible by this, so every replica trims alike.
    pub trim_every: u64,
    /// Put values up to this size travel in the feed; larger ones are fetched on demand.
    pub inline_value_limit: usize,
}

/// The RocksDB state machine.
pub struct StateMachine {
    db: Arc<DB>,
    /// Entries, values and the feed hold values and metadata: sealed at rest (`seal`).
    sealer: Arc<Sealer>,
    applied_tx: Arc<watch::Sender<u64>>,
    installs: InstallCounter,
    snapshots: SnapshotDir,
    feed: FeedConfig,
    metrics: Arc<Metrics>,
}

impl StateMachine {
    /// Opens the state machine, and the reader that serves reads of it.
    pub fn new(
        db: Arc<DB>,
        snapshots: SnapshotDir,
        feed: FeedConfig,
        metrics: Arc<Metrics>,
        sealer: Arc<Sealer>,
    ) -> anyhow::Result<(Self, Reader)> {
        snapshot::resume_interrupted_install(&db, &snapshots, &sealer)?;
        let applied: Option<LogId> = read_bincode::<Option<LogId>>(&db, CF_SM_META, META_APPLIED)?.flatten();
        let (tx, rx) = watch::channel(applied.map_or(0, |l| l.index));
        let installs = InstallCounter::default();
        let reader = Reader::new(db.clone(), rx, installs.clone(), sealer.clone());
        Ok((StateMachine { db, sealer, applied_tx: Arc::new(tx), installs, snapshots, feed, metrics }, reader))
    }

    fn apply_entry(&self, entry: Entry) -> Result<CommandResult, anyhow::Error> {
        // Held from sealing to writing, so a key rotation falls before or after, not between.
        let _held = self.sealer.hold_writes();
        let index = entry.log_id.index;
        let mut wb = WriteBatch::default();
        let result = match entry.payload {
            EntryPayload::Blank => CommandResult::Written,
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(entry.log_id), m);
                wb.put_cf(self.cf(CF_SM_META), META_MEMBERSHIP, bincode::serialize(&stored)?);
                CommandResult::Written
            }
            EntryPayload::Normal(cmd) => self.apply_command(&mut wb, index, cmd)?,
        };
        wb.put_cf(self.cf(CF_SM_META), META_APPLIED, bincode::serialize(&Some(entry.log_id))?);
        if index.is_multiple_of(self.feed.trim_every) && index > self.feed.retention {
            let floor = index - self.feed.retention;
            wb.delete_range_cf(self.cf(CF_CHANGES), index_key(0), index_key(floor + 1));
            wb.put_cf(self.cf(CF_SM_META), META_FLOOR, bincode::serialize(&floor)?);
        }
        self.db.write(wb)?;
        Ok(result)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        cf(&self.db, name)
    }

    fn put_changes(&self, wb: &mut WriteBatch, index: u64, changes: &[ChangeRecord]) -> anyhow::Result<()> {
        let key = index_key(index);
        wb.put_cf(self.cf(CF_CHANGES), key, self.sealer.seal_bincode(CF_CHANGES, &key, &changes)?);
        Ok(())
    }

    /// An entry's metadata as stored (sealed).
    fn entry(&self, ek: &[u8]) -> anyhow::Result<Option<EntryMeta>> {
        let Some(sealed) = self.db.get_pinned_cf(self.cf(CF_ENTRIES), ek)? else { return Ok(None) };
        Ok(Some(self.sealer.open_bincode(CF_ENTRIES, ek, &sealed)?))
    }

    fn put_entry(&self, wb: &mut WriteBatch, ek: &[u8], meta: &EntryMeta) -> anyhow::Result<()> {
        wb.put_cf(self.cf(CF_ENTRIES), ek, self.sealer.seal_bincode(CF_ENTRIES, ek, meta)?);
        Ok(())
    }

    fn namespace(&self, id: &NamespaceId) -> anyhow::Result<Option<NamespaceRecord>> {
        read_bincode(&self.db, CF_NAMESPACES, &id.0)
    }

    /// The first outcome of `request`, if it was applied before.
    fn recorded(&self, request: Option<&RequestId>) -> anyhow::Result<Option<Recorded>> {
        let Some(id) = request else { return Ok(None) };
        Ok(read_bincode::<RequestRecord>(&self.db, CF_REQUESTS, id.as_bytes())?.map(|r| r.recorded))
    }

    /// Remembers `request`'s outcome so a retry is answered with it.
    fn record(
        &self,
        wb: &mut WriteBatch,
        request: Option<&RequestId>,
        now_ms: u64,
        recorded: &Recorded,
    ) -> anyhow::Result<()> {
        if let Some(id) = request {
            let rec = RequestRecord { now_ms, recorded: recorded.clone() };
            wb.put_cf(self.cf(CF_REQUESTS), id.as_bytes(), bincode::serialize(&rec)?);
            wb.put_cf(self.cf(CF_REQUEST_TIMES), request_time_key(now_ms, id), []);
        }
        Ok(())
    }

    fn apply_command(&self, wb: &mut WriteBatch, index: u64, cmd: Command) -> anyhow::Result<CommandResult> {
        Ok(match cmd {
            Command::Write { writes, now_ms } => {
                let mut outcomes = Vec::with_capacity(writes.len());
                let mut changes = Vec::new();
                // Entries as this log entry has written them so far: a later op of the same
                // entry decides its condition against them, not against the state before.
                let mut written = HashMap::new();
                for w in writes {
                    if let Some(Recorded::Write(first)) = self.recorded(w.request.as_ref())? {
                        outcomes.push(first);
                        continue;
                    }
                    let outcome = if self.namespace(&w.namespace)?.is_none() {
                        WriteOutcome::Failed(KvError::NamespaceNotFound)
                    } else {
                        let mut decided = w.decided;
                        for op in w.ops {
                            let now_secs = (now_ms / 1000) as i64;
                            changes.extend(self.apply_op(
                                wb,
                                (index, now_secs),
                                &w.namespace,
                                op,
                                w.trace,
                                (&mut decided, &mut written),
                            )?);
                        }
                        WriteOutcome::Applied { version: index, decided }
                    };
                    self.record(wb, w.request.as_ref(), now_ms, &Recorded::Write(outcome.clone()))?;
                    outcomes.push(outcome);
                }
                if !changes.is_empty() {
                    self.put_changes(wb, index, &changes)?;
                }
                CommandResult::Writes(outcomes)
            }
            Command::CreateNamespace { ref request, now_ms, .. }
            | Command::RenameNamespace { ref request, now_ms, .. }
            | Command::DeleteNamespace { ref request, now_ms, .. } => {
                let request = request.clone();
                if let Some(Recorded::Namespace(first)) = self.recorded(request.as_ref())? {
                    return Ok(CommandResult::Namespace(first));
                }
                let done = self.apply_namespace(wb, index, cmd)?;
                self.record(wb, request.as_ref(), now_ms, &Recorded::Namespace(done.clone()))?;
                CommandResult::Namespace(done)
            }
            Command::CreateToken { ref request, now_ms, .. } | Command::RevokeToken { ref request, now_ms, .. } => {
                let request = request.clone();
                if let Some(Recorded::Token(first)) = self.recorded(request.as_ref())? {
                    return Ok(CommandResult::Token(first));
                }
                let done = self.apply_token(wb, index, cmd)?;
                self.record(wb, request.as_ref(), now_ms, &Recorded::Token(done.clone()))?;
                CommandResult::Token(done)
            }
            Command::Sweep { now_ms, budget, tombstones_before, requests_before_ms } => {
                let due = (now_ms / 1000).saturating_add(1);
                let expired = self
                    .sweep_index(wb, CF_EXPIRY, due, budget, |m, t| !m.tombstone && m.expiration == Some(t as i64))?;
                let tombs = self
                    .sweep_index(wb, CF_TOMBSTONES, tombstones_before, budget, |m, t| m.tombstone && m.version == t)?;
                self.sweep_requests(wb, requests_before_ms, budget)?;
                // An expiry is a change like any other: the feed carries it to the tiers and
                // to watchers (a change of kind `expired`, at the sweep's version).
                let changes: Vec<ChangeRecord> = expired
                    .iter()
                    .filter_map(|ek| split_entry_key(ek))
                    .map(|(namespace, key)| ChangeRecord {
                        namespace,
                        key,
                        kind: ChangeKind::Expired,
                        value: None,
                        metadata: None,
                        expiration: None,
                        trace: None,
                    })
                    .collect();
                if !changes.is_empty() {
                    self.put_changes(wb, index, &changes)?;
                }
                let removed = (expired.len() + tombs.len()) as u64;
                self.metrics.swept.inc_by(removed);
                CommandResult::Swept { removed }
            }
        })
    }

    fn apply_namespace(
        &self,
        wb: &mut WriteBatch,
        index: u64,
        cmd: Command,
    ) -> anyhow::Result<Result<NamespaceDone, KvError>> {
        use kv_common::KvError::*;
        let done = |record| Ok(Ok(NamespaceDone { version: index, record }));
        match cmd {
            Command::CreateNamespace { id, title, .. } => {
                if self.db.get_pinned_cf(self.cf(CF_NS_TITLES), title.as_bytes())?.is_some() {
                    return Ok(Err(NamespaceTitleExists));
                }
                if self.namespace(&id)?.is_some() {
                    return Ok(Err(Internal("namespace id collision; retry".into())));
                }
                let rec = NamespaceRecord { id, title };
                wb.put_cf(self.cf(CF_NS_TITLES), rec.title.as_bytes(), id.0);
                wb.put_cf(self.cf(CF_NAMESPACES), id.0, bincode::serialize(&rec)?);
                done(Some(rec))
            }
            Command::RenameNamespace { id, title, .. } => {
                let Some(mut rec) = self.namespace(&id)? else {
                    return Ok(Err(NamespaceNotFound));
                };
                if rec.title != title {
                    if self.db.get_pinned_cf(self.cf(CF_NS_TITLES), title.as_bytes())?.is_some() {
                        return Ok(Err(NamespaceTitleExists));
                    }
                    wb.delete_cf(self.cf(CF_NS_TITLES), rec.title.as_bytes());
                    wb.put_cf(self.cf(CF_NS_TITLES), title.as_bytes(), id.0);
                    rec.title = title;
                    wb.put_cf(self.cf(CF_NAMESPACES), id.0, bincode::serialize(&rec)?);
                }
                done(Some(rec))
            }
            Command::DeleteNamespace { id, .. } => {
                let Some(rec) = self.namespace(&id)? else {
                    return Ok(Err(NamespaceNotFound));
                };
                wb.delete_cf(self.cf(CF_NS_TITLES), rec.title.as_bytes());
                wb.delete_cf(self.cf(CF_NAMESPACES), id.0);
                let end = prefix_end(&id.0).unwrap_or_else(beyond_all_keys);
                wb.delete_range_cf(self.cf(CF_ENTRIES), &id.0[..], &end[..]);
                wb.delete_range_cf(self.cf(CF_VALUES), &id.0[..], &end[..]);
                // Expiry index entries of the namespace become orphans; the sweep drops them.
                let change = ChangeRecord {
                    namespace: id,
                    key: String::new(),
                    kind: ChangeKind::NamespaceDeleted,
                    value: None,
                    metadata: None,
                    expiration: None,
                    trace: None,
                };
                self.put_changes(wb, index, &[change])?;
                done(None)
            }
            _ => Err(anyhow::anyhow!("not a namespace command")),
        }
    }

    fn apply_token(&self, wb: &mut WriteBatch, index: u64, cmd: Command) -> anyhow::Result<Result<u64, KvError>> {
        let tokens = self.cf(CF_TOKENS);
        match cmd {
            Command::CreateToken { record, .. } => {
                if self.db.get_pinned_cf(tokens, record.id.as_bytes())?.is_some() {
                    return Ok(Err(KvError::Internal("token id collision; retry".into())));
                }
                wb.put_cf(tokens, record.id.as_bytes(), bincode::serialize(&record)?);
            }
            Command::RevokeToken { id, .. } => {
                if self.db.get_pinned_cf(tokens, id.as_bytes())?.is_none() {
                    return Ok(Err(KvError::TokenNotFound));
                }
                wb.delete_cf(tokens, id.as_bytes());
            }
            _ => anyhow::bail!("not a token command"),
        }
        Ok(Ok(index))
    }

    /// Forgets up to `budget` request records made before `before_ms`.
    fn sweep_requests(&self, wb: &mut WriteBatch, before_ms: u64, budget: u32) -> anyhow::Result<()> {
        for item in self.db.iterator_cf(self.cf(CF_REQUEST_TIMES), IteratorMode::Start).take(budget as usize) {
            let (k, _) = item?;
            let Some((at, id)) = k.split_at_checked(8) else { continue };
            if u64::from_be_bytes(at.try_into()?) >= before_ms {
                break;
            }
            wb.delete_cf(self.cf(CF_REQUEST_TIMES), &k);
            wb.delete_cf(self.cf(CF_REQUESTS), id);
        }
        Ok(())
    }

    /// Applies one op at `index`, its change for the feed; none when its condition failed
    /// (recorded in `decided`, by the item's position).
    fn apply_op(
        &self,
        wb: &mut WriteBatch,
        (index, now_secs): (u64, i64),
        ns: &NamespaceId,
        op: Op,
        trace: Option<TraceContext>,
        (decided, written): (&mut Decided, &mut HashMap<Vec<u8>, EntryMeta>),
    ) -> anyhow::Result<Option<ChangeRecord>> {
        let ek = entry_key(ns, op.key.as_bytes());
        let old = match written.get(&ek) {
            Some(m) => Some(m.clone()),
            None => self.entry(&ek)?,
        };
        let (kind, item) = match op.kind {
            OpKind::Conditional { if_version, item, then } => {
                let live =
                    old.as_ref().filter(|m| !m.tombstone && !kv_common::time::is_expired(m.expiration, now_secs));
                let current = live.map_or(0, |m| m.version);
                if current != if_version {
                    decided.fail(item, KvError::PreconditionFailed { current });
                    return Ok(None);
                }
                (*then, Some(item))
            }
            kind => (kind, None),
        };
        if let (OpKind::Conditional { .. }, Some(item)) = (&kind, item) {
            // The leader never nests conditions; refused alike on every replica all the same.
            decided.fail(item, KvError::InvalidRequest("a condition inside a condition".into()));
            return Ok(None);
        }
        if let Some(exp) = old.and_then(|m| m.expiration) {
            wb.delete_cf(self.cf(CF_EXPIRY), expiry_key(exp, ns, op.key.as_bytes()));
        }
        let mut change = ChangeRecord {
            namespace: *ns,
            key: op.key.clone(),
            kind: ChangeKind::Delete,
            value: None,
            metadata: None,
            expiration: None,
            trace,
        };
        match kind {
            OpKind::Put { value, metadata, expiration } => {
                let meta = EntryMeta { version: index, expiration, metadata: metadata.clone(), tombstone: false };
                self.put_entry(wb, &ek, &meta)?;
                written.insert(ek.clone(), meta);
                if let Some(exp) = expiration {
                    wb.put_cf(self.cf(CF_EXPIRY), expiry_key(exp, ns, op.key.as_bytes()), []);
                }
                change.kind = ChangeKind::Put;
                change.metadata = metadata;
                change.expiration = expiration;
                wb.put_cf(self.cf(CF_VALUES), &ek, self.sealer.seal(CF_VALUES, &ek, &value)?);
                if value.len() <= self.feed.inline_value_limit {
                    change.value = Some(value);
                }
            }
            // A nested condition was refused above.
            OpKind::Delete | OpKind::Conditional { .. } => {
                let meta = EntryMeta { version: index, expiration: None, metadata: None, tombstone: true };
                self.put_entry(wb, &ek, &meta)?;
                written.insert(ek.clone(), meta);
                wb.put_cf(self.cf(CF_TOMBSTONES), sweep_index_key(index, ns, op.key.as_bytes()), []);
                wb.delete_cf(self.cf(CF_VALUES), &ek);
            }
        }
        Ok(Some(change))
    }

    /// Walks a sweep index (`expiry` or `tombstones`) in order while its numbers are below
    /// `before`, at most `budget` index entries, dropping each index entry and removing the
    /// entry it names if `still_due` (the entry may have been rewritten since it was indexed).
    /// Returns the entry keys removed.
    fn sweep_index(
        &self,
        wb: &mut WriteBatch,
        index_cf: &str,
        before: u64,
        budget: u32,
        still_due: impl Fn(&EntryMeta, u64) -> bool,
    ) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut removed = Vec::new();
        for item in self.db.iterator_cf(self.cf(index_cf), IteratorMode::Start).take(budget as usize) {
            let (k, _) = item?;
            let Some((at, ek)) = split_sweep_index_key(&k) else { continue };
            if at >= before {
                break;
            }
            wb.delete_cf(self.cf(index_cf), &k);
            if let Some(meta) = self.entry(ek)? {
                if still_due(&meta, at) {
                    wb.delete_cf(self.cf(CF_ENTRIES), ek);
                    wb.delete_cf(self.cf(CF_VALUES), ek);
                    removed.push(ek.to_vec());
                }
            }
        }
        Ok(removed)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = snapshot::Builder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let read = || -> anyhow::Result<_> {
            let applied = read_bincode::<Option<LogId>>(&self.db, CF_SM_META, META_APPLIED)?.flatten();
            let membership = read_bincode(&self.db, CF_SM_META, META_MEMBERSHIP)?.unwrap_or_default();
            Ok((applied, membership))
        };
        read().map_err(|e| StorageIOError::read_state_machine(any_error(e)).into())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let applying = std::time::Instant::now();
        let mut out = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            let r = self.apply_entry(entry).map_err(|e| StorageIOError::apply(log_id, any_error(e)))?;
            self.applied_tx.send_replace(log_id.index);
            out.push(r);
        }
        self.metrics.stage(crate::metrics::Stage::Apply, applying);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        snapshot::Builder::new(self.db.clone(), self.snapshots.clone())
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let file =
            self.snapshots.begin_receiving().await.map_err(|e| StorageIOError::write_snapshot(None, any_error(e)))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, data: Box<tokio::fs::File>) -> Result<(), StorageError> {
        let file = data.into_std().await;
        let db = self.db.clone();
        let dir = self.snapshots.clone();
        let meta_owned = meta.clone();
        let sealer = self.sealer.clone();
        let err = |e: String| StorageIOError::write_snapshot(Some(meta.signature()), any_error(e));
        // Reads that overlap the install are refused (see `InstallCounter`).
        self.installs.begin();
        let installed =
            tokio::task::spawn_blocking(move || snapshot::install(&db, &dir, &meta_owned, file, &sealer)).await;
        if let Ok(Ok(())) = &installed {
            self.applied_tx.send_replace(meta.last_log_id.map_or(0, |l| l.index));
        }
        self.installs.finish();
        installed.map_err(|e| err(e.to_string()))?.map_err(|e| err(format!("{e:#}")))?;
        self.metrics.snapshots_installed.inc();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.snapshots.current().await.map_err(|e| StorageIOError::read_snapshot(None, any_error(e)).into())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for snapshot::Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        self.build().await.map_err(|e| StorageIOError::write_snapshot(None, any_error(e)).into())
    }
}
