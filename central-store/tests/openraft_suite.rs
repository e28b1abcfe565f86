//! openraft's own storage test suite, run against the RocksDB log store and state machine:
//! the log's append, truncate, purge and vote, the applied state and membership, and a
//! snapshot built on one store and installed on another.

use central_store::metrics::Metrics;
use central_store::storage::log_store::LogStore;
use central_store::storage::open_db;
use central_store::storage::seal::Sealer;
use central_store::storage::snapshot::SnapshotDir;
use central_store::storage::state_machine::{FeedConfig, StateMachine};
use central_store::types::{StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageIOError;
use std::sync::Arc;

/// A fresh database in a temporary directory per store (the guard keeps it until the test ends).
struct RocksBuilder;

fn storage_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write(openraft::AnyError::error(e.to_string())).into()
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().map_err(storage_err)?;
        let db = open_db(&dir.path().join("db")).map_err(storage_err)?;
        let metrics = Metrics::new();
        let snaps = SnapshotDir::open(dir.path().join("snap")).map_err(storage_err)?;
        let feed = FeedConfig { retention: 1000, trim_every: 100, inline_value_limit: 1024 };
        let (sm, _reader) = StateMachine::new(db.clone(), snaps, feed, metrics.clone(), Arc::new(Sealer::for_tests()))
            .map_err(storage_err)?;
        Ok((dir, LogStore::new(db, metrics, Arc::new(Sealer::for_tests())), sm))
    }
}

#[test]
fn the_log_store_and_state_machine_pass_openraft_s_storage_suite() {
    Suite::test_all(RocksBuilder).expect("openraft's storage suite");
}
