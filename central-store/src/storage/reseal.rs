//! Re-sealing after a key rotation (`kv admin rotate-key`): every record of the sealed column
//! families (`SEALED_CFS`) that an older key sealed is opened and sealed again with the
//! sealing key, a chunk at a time, while holding the sealer's write lock, so no newer write
//! of the same record can fall between the read and the write and be undone. The pass also
//! counts the records each key seals: when an old key seals none, it may leave the key file.
//!
//! Each node re-seals its own replica: the plaintext does not change, so neither does the
//! replicated state, and nothing goes through Raft.

use super::cf;
use super::keys::SEALED_CFS;
use super::seal::Sealer;
use super::snapshot::SnapshotDir;
use crate::types::Raft;
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Records read and written back per hold of the write lock, at most.
const CHUNK: usize = 256;
/// Bytes re-sealed per hold of the write lock, at most (values and log entries are large).
const CHUNK_BYTES: usize = 4 << 20;
/// The pause between two chunks, in which Raft's writes take the lock (the lock is not fair).
const BREATHE: std::time::Duration = std::time::Duration::from_millis(1);
/// Snapshot rebuilds tried after a pass, until the kept snapshot is sealed with the new key.
const REBUILDS: usize = 5;

/// Records per key id.
pub type SealedCounts = BTreeMap<u8, u64>;

/// This node's re-sealer and what its last pass counted.
pub struct Resealer {
    db: Arc<DB>,
    sealer: Arc<Sealer>,
    snapshots: SnapshotDir,
    counts: Mutex<Option<SealedCounts>>,
    running: AtomicBool,
    /// One pass at a time.
    pass: tokio::sync::Mutex<()>,
}

impl Resealer {
    pub fn new(db: Arc<DB>, sealer: Arc<Sealer>, snapshots: SnapshotDir) -> Arc<Resealer> {
        Arc::new(Resealer {
            db,
            sealer,
            snapshots,
            counts: Mutex::new(None),
            running: AtomicBool::new(false),
            pass: Default::default(),
        })
    }

    /// What the last finished run counted; `None` before the first, and while one runs.
    pub fn counts(&self) -> Option<SealedCounts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Re-seals every record an older key sealed, has the kept snapshot rebuilt from them
    /// (`raft`), and counts the records each key seals, in the store and in that snapshot
    /// (after any pass that is running finishes). Until it is done the counts are unknown.
    pub async fn run(self: Arc<Self>, raft: &Raft) -> anyhow::Result<SealedCounts> {
        let _one = self.pass.lock().await;
        *self.counts.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.running.store(true, Ordering::Release);
        let done = self.clone().pass_and_rebuild(raft).await;
        if let Ok(counts) = &done {
            *self.counts.lock().unwrap_or_else(|p| p.into_inner()) = Some(counts.clone());
        }
        self.running.store(false, Ordering::Release);
        done
    }

    async fn pass_and_rebuild(self: Arc<Self>, raft: &Raft) -> anyhow::Result<SealedCounts> {
        let me = self.clone();
        let mut counts = tokio::task::spawn_blocking(move || me.pass()).await??;
        let sealing = self.sealer.sealing_key();
        let mut kept = SealedCounts::new();
        for _ in 0..REBUILDS {
            let before = self.snapshots.current_id()?;
            raft.trigger().snapshot().await?;
            // A build already under way when the pass ended is not enough: wait for a new one.
            for _ in 0..300 {
                if self.snapshots.current_id()? != before {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            let me = self.clone();
            kept = tokio::task::spawn_blocking(move || me.snapshots.sealed_counts()).await??;
            if kept.keys().all(|id| *id == sealing) {
                break;
            }
        }
        for (id, n) in kept {
            *counts.entry(id).or_default() += n;
        }
        Ok(counts)
    }

    fn pass(&self) -> anyhow::Result<SealedCounts> {
        let mut counts = SealedCounts::new();
        let mut resealed = 0u64;
        for name in SEALED_CFS {
            let mut from: Vec<u8> = Vec::new();
            loop {
                let held = self.sealer.hold_writes();
                let current = self.sealer.sealing_key();
                let mut wb = WriteBatch::default();
                let mut seen = 0;
                let mut bytes = 0;
                let mut last = None;
                for item in self.db.iterator_cf(cf(&self.db, name), IteratorMode::From(&from, Direction::Forward)) {
                    let (key, sealed) = item?;
                    seen += 1;
                    let id = Sealer::key_id_of(&sealed);
                    match id {
                        Some(id) if id != current => match self.sealer.open(name, &key, &sealed) {
                            Ok(plain) => {
                                bytes += plain.len();
                                wb.put_cf(cf(&self.db, name), &key, self.sealer.seal(name, &key, &plain)?);
                                *counts.entry(current).or_default() += 1;
                                resealed += 1;
                            }
                            // A key this node lacks: the record stays as it is, and counted.
                            Err(_) => *counts.entry(id).or_default() += 1,
                        },
                        Some(id) => *counts.entry(id).or_default() += 1,
                        None => {}
                    }
                    last = Some(key);
                    if seen == CHUNK || bytes >= CHUNK_BYTES {
                        break;
                    }
                }
                self.db.write(wb)?;
                drop(held);
                match last {
                    Some(key) if seen == CHUNK || bytes >= CHUNK_BYTES => {
                        from = key.into_vec();
                        from.push(0);
                        std::thread::sleep(BREATHE);
                    }
                    _ => break,
                }
            }
        }
        tracing::info!(resealed, ?counts, "re-seal pass done");
        Ok(counts)
    }

    /// The counts as Prometheus text.
    pub fn render(&self) -> String {
        let Some(counts) = self.counts() else { return String::new() };
        let mut out = String::from(
            "# HELP kv_central_sealed_records Records each encryption key seals, as the last re-seal pass counted.\n\
             # TYPE kv_central_sealed_records gauge\n",
        );
        for (id, n) in counts {
            out.push_str(&format!("kv_central_sealed_records{{key_id=\"{id}\"}} {n}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::keys::{CF_ENTRIES, CF_VALUES};
    use crate::storage::open_db;

    #[test]
    fn a_pass_reseals_every_old_record_with_the_sealing_key_and_counts_them() {
        let tmp = tempfile::tempdir().unwrap();
        let db = open_db(&tmp.path().join("db")).unwrap();
        let (one, two) = ("11".repeat(32), "22".repeat(32));
        let sealer = Arc::new(Sealer::parse(&format!("1:{one}")).unwrap());
        // More records than a chunk, so the pass resumes after each hold of the lock.
        let n = CHUNK as u32 * 2 + 7;
        for i in 0..n {
            let k = i.to_be_bytes();
            db.put_cf(cf(&db, CF_VALUES), k, sealer.seal(CF_VALUES, &k, &i.to_le_bytes()).unwrap()).unwrap();
            db.put_cf(cf(&db, CF_ENTRIES), k, sealer.seal(CF_ENTRIES, &k, b"meta").unwrap()).unwrap();
        }
        let snapshots = SnapshotDir::open(tmp.path().join("snapshots")).unwrap();
        let resealer = Resealer::new(db.clone(), sealer.clone(), snapshots);
        assert_eq!(resealer.pass().unwrap(), SealedCounts::from([(1, 2 * n as u64)]));

        sealer.replace_keys(&Sealer::parse(&format!("1:{one}\n2:{two}")).unwrap());
        let counts = resealer.pass().unwrap();
        assert_eq!(counts, SealedCounts::from([(2, 2 * n as u64)]));
        // Every record now opens with key 2 alone, and holds what it held.
        let only_two = Sealer::parse(&format!("2:{two}")).unwrap();
        for i in 0..n {
            let k = i.to_be_bytes();
            let v = db.get_cf(cf(&db, CF_VALUES), k).unwrap().unwrap();
            assert_eq!(Sealer::key_id_of(&v), Some(2));
            assert_eq!(only_two.open(CF_VALUES, &k, &v).unwrap(), i.to_le_bytes());
        }
        assert_eq!(resealer.render(), "", "nothing to show before a whole run");
        *resealer.counts.lock().unwrap() = Some(counts);
        assert!(resealer.render().contains("kv_central_sealed_records{key_id=\"2\"} "));
    }
}
