//! A state machine on a fresh RocksDB, driven entry by entry as Raft would: shared by the
//! contract suite and the failpoint tests.

#![allow(dead_code)]

use central_store::metrics::Metrics;
use central_store::storage::open_db;
use central_store::storage::reader::Reader;
use central_store::storage::seal::Sealer;
use central_store::storage::snapshot::SnapshotDir;
pub use central_store::storage::state_machine::{FeedConfig, StateMachine};
pub use central_store::types::*;
use kv_common::NamespaceId;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};

pub const NS: NamespaceId = NamespaceId([0xAA; 16]);
pub const NOW_MS: u64 = 1_700_000_000_000;
pub const NOW: i64 = 1_700_000_000;

pub fn create(id: NamespaceId, title: &str) -> Command {
    Command::CreateNamespace { id, title: title.into(), now_ms: NOW_MS, request: None }
}

/// A write of `ops` in `namespace` that names no request id.
pub fn write(namespace: NamespaceId, ops: Vec<Op>) -> NamespaceWrite {
    NamespaceWrite { namespace, ops, request: None, decided: Decided::default(), trace: None }
}

pub fn sweep(now_ms: u64, budget: u32, tombstones_before: u64) -> Command {
    Command::Sweep { now_ms, budget, tombstones_before, requests_before_ms: 0 }
}

pub struct Sm {
    pub sm: StateMachine,
    pub reader: Reader,
    pub next: u64,
    _dir: tempfile::TempDir,
}

pub fn feed() -> FeedConfig {
    FeedConfig { retention: 1000, trim_every: 100, inline_value_limit: 16 }
}

pub async fn new_sm() -> Sm {
    new_sm_with(feed()).await
}

pub async fn new_sm_with(feed: FeedConfig) -> Sm {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(&dir.path().join("db")).unwrap();
    let snaps = SnapshotDir::open(dir.path().join("snap")).unwrap();
    let (sm, reader) =
        StateMachine::new(db, snaps, feed, Metrics::new(), std::sync::Arc::new(Sealer::for_tests())).unwrap();
    let mut s = Sm { sm, reader, next: 1, _dir: dir };
    s.apply(create(NS, "ns")).await;
    s
}

impl Sm {
    pub async fn apply(&mut self, cmd: Command) -> (u64, CommandResult) {
        let index = self.next;
        self.next += 1;
        let entry =
            Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Normal(cmd) };
        let mut r = self.sm.apply([entry]).await.unwrap();
        (index, r.pop().unwrap())
    }

    pub async fn put(&mut self, key: &str, value: &[u8], expiration: Option<i64>) -> u64 {
        let op = Op {
            key: key.into(),
            kind: OpKind::Put { value: value.to_vec(), metadata: Some(format!("{{\"k\":\"{key}\"}}")), expiration },
        };
        self.apply(Command::Write { now_ms: NOW_MS, writes: vec![write(NS, vec![op])] }).await.0
    }

    pub async fn delete(&mut self, key: &str) -> u64 {
        let op = Op { key: key.into(), kind: OpKind::Delete };
        self.apply(Command::Write { now_ms: NOW_MS, writes: vec![write(NS, vec![op])] }).await.0
    }

    pub fn names(&self, prefix: &str, limit: u32, cursor: Option<&str>) -> (Vec<String>, Option<String>) {
        let page = self.reader.list(&NS, prefix, limit, cursor, NOW).unwrap();
        (page.keys.into_iter().map(|(k, _)| k).collect(), page.cursor)
    }

    /// Every key of a list, following cursors to the end.
    pub fn all_names(&self, prefix: &str, limit: u32) -> Vec<String> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let (names, next) = self.names(prefix, limit, cursor.as_deref());
            out.extend(names);
            match next {
                None => return out,
                Some(c) => cursor = Some(c),
            }
        }
    }
}

/// A snapshot of a state machine holding `keys` keys (after its namespace): its metadata and bytes.
pub async fn snapshot_of(keys: usize) -> (SnapshotMeta, Vec<u8>) {
    let mut s = new_sm().await;
    for i in 0..keys {
        s.put(&format!("k{i:03}"), &[i as u8; 100], None).await;
    }
    let mut snap = s.sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut *snap.snapshot, &mut bytes).await.unwrap();
    (snap.meta, bytes)
}

/// Installs the snapshot `bytes` described by `meta` into `into`.
pub async fn install(into: &mut StateMachine, meta: &SnapshotMeta, bytes: &[u8]) -> Result<(), StorageError> {
    let mut incoming = into.begin_receiving_snapshot().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut *incoming, bytes).await.unwrap();
    into.install_snapshot(meta, incoming).await
}
