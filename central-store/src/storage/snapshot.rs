//! Snapshots as files, written and read as a stream of records, never held whole in memory.
//!
//! File format: a sequence of records `[cf: u8][key len: u32 LE][key][value len: u32 LE][value]`
//! over the state-machine column families (`SNAPSHOT_CFS`, by position), closed by
//! `[0xFF][record count: u64 LE][CRC-32 of every record byte: u32 LE]`, so a truncated or
//! corrupted file is detected before it replaces anything. The snapshot's Raft metadata
//! (last log id, membership) is kept beside it in `current.meta`.
//!
//! Building and installing never overlap (`SnapshotDir::exclusive`): a build reading the
//! state machine while an install wipes it would capture half a state, and a build that
//! started before an install must not publish its older snapshot over the installed one.

use super::cf;
use super::keys::*;
use super::seal::Sealer;
use crate::types::{LogId, Snapshot, SnapshotMeta, StoredMembership};
use anyhow::{bail, Context};
use rocksdb::{IteratorMode, ReadOptions, WriteBatch, DB};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

const END_MARKER: u8 = 0xFF;
const CURRENT_META: &str = "current.meta";
const RECEIVING: &str = "receiving.bin";
/// Install writes RocksDB batches of about this many bytes.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

/// The directory that holds this node's snapshot files.
#[derive(Clone, Debug)]
pub struct SnapshotDir {
    path: PathBuf,
    /// Held by a build or an install for the whole of its work.
    busy: Arc<Mutex<()>>,
}

impl SnapshotDir {
    pub fn open(path: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&path)?;
        Ok(SnapshotDir { path, busy: Arc::default() })
    }

    /// The id of the current snapshot, if any.
    pub fn current_id(&self) -> anyhow::Result<Option<String>> {
        Ok(self.current_meta()?.map(|m| m.snapshot_id))
    }

    /// How many sealed records of the current snapshot file each key sealed (after any build
    /// or install in progress).
    pub fn sealed_counts(&self) -> anyhow::Result<BTreeMap<u8, u64>> {
        let _busy = self.exclusive();
        let mut counts = BTreeMap::new();
        let Some(meta) = self.current_meta()? else { return Ok(counts) };
        let mut input = BufReader::with_capacity(1 << 20, File::open(self.data_path(&meta.snapshot_id))?);
        for_each_record(&mut input, |name, _, value| {
            if let Some(id) = Sealer::key_id_of(&value).filter(|_| SEALED_CFS.contains(&name)) {
                *counts.entry(id).or_default() += 1;
            }
            Ok(())
        })?;
        Ok(counts)
    }

    /// Excludes every other build and install while the guard lives.
    fn exclusive(&self) -> MutexGuard<'_, ()> {
        self.busy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The metadata of the current snapshot, if any.
    fn current_meta(&self) -> anyhow::Result<Option<SnapshotMeta>> {
        match std::fs::read(self.path.join(CURRENT_META)) {
            Ok(b) => Ok(Some(bincode::deserialize(&b)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn data_path(&self, snapshot_id: &str) -> PathBuf {
        self.path.join(format!("snapshot-{snapshot_id}.bin"))
    }

    /// A fresh file for a snapshot arriving from the leader.
    pub async fn begin_receiving(&self) -> std::io::Result<tokio::fs::File> {
        tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.path.join(RECEIVING))
            .await
    }

    /// The receiving file holding the snapshot in `file`: `file` itself when it is the
    /// receiving file (as `begin_receiving` made it), else a copy of it there, so what is
    /// installed is always what becomes the current snapshot.
    fn adopt(&self, mut file: File) -> anyhow::Result<File> {
        use std::os::unix::fs::MetadataExt;
        let receiving = self.path.join(RECEIVING);
        let same = match std::fs::metadata(&receiving) {
            Ok(m) => {
                let f = file.metadata()?;
                (m.dev(), m.ino()) == (f.dev(), f.ino())
            }
            Err(_) => false,
        };
        if same {
            return Ok(file);
        }
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))?;
        let mut copy =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&receiving)?;
        std::io::copy(&mut file, &mut copy)?;
        Ok(copy)
    }

    /// The newest complete snapshot, opened for reading.
    pub async fn current(&self) -> anyhow::Result<Option<Snapshot>> {
        let meta_path = self.path.join(CURRENT_META);
        let bytes = match tokio::fs::read(&meta_path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let meta: SnapshotMeta = bincode::deserialize(&bytes)?;
        let file = tokio::fs::File::open(self.data_path(&meta.snapshot_id)).await?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(file) }))
    }

    /// Makes `data_file` the current snapshot (atomically, by rename) and drops older ones;
    /// a snapshot older than the current one is dropped instead.
    fn publish(&self, meta: &SnapshotMeta, data_file: &Path) -> anyhow::Result<()> {
        if let Some(current) = self.current_meta()? {
            if current.last_log_id > meta.last_log_id {
                tracing::info!(older = %meta.snapshot_id, current = %current.snapshot_id, "dropping an older snapshot");
                let _ = std::fs::remove_file(data_file);
                return Ok(());
            }
        }
        let final_path = self.data_path(&meta.snapshot_id);
        std::fs::rename(data_file, &final_path)?;
        let tmp_meta = self.path.join("current.meta.tmp");
        let mut f = File::create(&tmp_meta)?;
        f.write_all(&bincode::serialize(meta)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp_meta, self.path.join(CURRENT_META))?;
        File::open(&self.path)?.sync_all()?;
        for entry in std::fs::read_dir(&self.path)? {
            let p = entry?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.starts_with("snapshot-") && p != final_path {
                let _ = std::fs::remove_file(&p);
            }
        }
        Ok(())
    }
}

/// Builds snapshots from a consistent RocksDB view while applies go on.
pub struct Builder {
    db: Arc<DB>,
    dir: SnapshotDir,
}

impl Builder {
    pub fn new(db: Arc<DB>, dir: SnapshotDir) -> Self {
        Builder { db, dir }
    }

    pub async fn build(&self) -> anyhow::Result<Snapshot> {
        let db = self.db.clone();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_snapshot(&db, &dir)).await??;
        self.dir.current().await?.context("snapshot vanished after it was written")
    }
}

fn write_snapshot(db: &DB, dir: &SnapshotDir) -> anyhow::Result<()> {
    let _busy = dir.exclusive();
    let snap = db.snapshot();
    fail::fail_point!("snapshot::build_after_read_view");
    let read_meta = |key: &[u8]| snap.get_cf(cf(db, CF_SM_META), key);
    let last_log_id: Option<LogId> = match read_meta(META_APPLIED)? {
        Some(b) => bincode::deserialize(&b)?,
        None => None,
    };
    let membership: StoredMembership = match read_meta(META_MEMBERSHIP)? {
        Some(b) => bincode::deserialize(&b)?,
        None => StoredMembership::default(),
    };
    let snapshot_id = format!(
        "{}-{}-{:016x}",
        last_log_id.map_or(0, |l| l.leader_id.term),
        last_log_id.map_or(0, |l| l.index),
        rand::random::<u64>()
    );
    let tmp = dir.path.join(format!("building-{snapshot_id}.bin"));
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    let mut count: u64 = 0;
    let mut crc = crc32fast::Hasher::new();
    for (tag, name) in SNAPSHOT_CFS.iter().enumerate() {
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&snap);
        for item in db.iterator_cf_opt(cf(db, name), opts, IteratorMode::Start) {
            let (k, v) = item?;
            let (klen, vlen) = (len_u32(&k)?.to_le_bytes(), len_u32(&v)?.to_le_bytes());
            for part in [&[tag as u8][..], &klen, &k, &vlen, &v] {
                out.write_all(part)?;
                crc.update(part);
            }
            count += 1;
        }
    }
    out.write_all(&[END_MARKER])?;
    out.write_all(&count.to_le_bytes())?;
    out.write_all(&crc.finalize().to_le_bytes())?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let meta = SnapshotMeta { last_log_id, last_membership: membership, snapshot_id };
    dir.publish(&meta, &tmp)?;
    tracing::info!(snapshot = %meta.snapshot_id, records = count, "snapshot built");
    Ok(())
}

/// Replaces the whole state machine with the snapshot in `file`, then keeps the file as the
/// current snapshot. The change feed restarts at the snapshot's index.
///
/// The wipe is written together with an `installing` marker, and the marker is removed in
/// the batch that completes the install; the verified file stays in place until then. A
/// crash in between is finished at the next start by `resume_interrupted_install`.
pub fn install(db: &DB, dir: &SnapshotDir, meta: &SnapshotMeta, file: File, sealer: &Sealer) -> anyhow::Result<()> {
    let _busy = dir.exclusive();
    let file = dir.adopt(file)?;
    file.sync_all()?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    // First make sure the file is whole, then that every sealed record opens with this
    // node's keys, so a bad transfer, or a key this node lacks, never wipes the current state.
    for_each_record(&mut input, |_, _, _| Ok(()))?;
    for_each_record(&mut input, |name, key, value| {
        if SEALED_CFS.contains(&name) {
            sealer
                .open(name, &key, &value)
                .with_context(|| format!("snapshot {} does not open here", meta.snapshot_id))?;
        }
        Ok(())
    })?;
    let _held = sealer.hold_writes();
    let mut wb = WriteBatch::default();
    for name in SNAPSHOT_CFS.iter().chain([CF_CHANGES].iter()) {
        wb.delete_range_cf(cf(db, name), &[][..], &beyond_all_keys()[..]);
    }
    wb.put_cf(cf(db, CF_SM_META), META_INSTALLING, bincode::serialize(meta)?);
    db.write(wb)?;
    db.flush_wal(true)?;
    fail::fail_point!("snapshot::install_after_wipe");

    let mut wb = WriteBatch::default();
    let sealing = sealer.sealing_key();
    let count = for_each_record(&mut input, |name, key, value| {
        // Records another key sealed (the sender had not rotated yet) are sealed again with
        // this node's key, so what it stores is always under its own sealing key.
        let value = match Sealer::key_id_of(&value) {
            Some(id) if id != sealing && SEALED_CFS.contains(&name) => {
                sealer.seal(name, &key, &sealer.open(name, &key, &value)?)?
            }
            _ => value,
        };
        wb.put_cf(cf(db, name), key, value);
        if wb.size_in_bytes() >= INSTALL_BATCH_BYTES {
            db.write(std::mem::take(&mut wb))?;
        }
        Ok(())
    })?;
    let index = meta.last_log_id.map_or(0, |l| l.index);
    wb.put_cf(cf(db, CF_SM_META), META_APPLIED, bincode::serialize(&meta.last_log_id)?);
    wb.put_cf(cf(db, CF_SM_META), META_MEMBERSHIP, bincode::serialize(&meta.last_membership)?);
    wb.put_cf(cf(db, CF_SM_META), META_FLOOR, bincode::serialize(&index)?);
    wb.delete_cf(cf(db, CF_SM_META), META_INSTALLING);
    db.write(wb)?;
    db.flush_wal(true)?;
    drop(input);
    dir.publish(meta, &dir.path.join(RECEIVING))?;
    tracing::info!(snapshot = %meta.snapshot_id, records = count, "snapshot installed");
    Ok(())
}

/// Finishes a snapshot install that a crash interrupted (see `install`); returns whether
/// there was one.
pub fn resume_interrupted_install(db: &DB, dir: &SnapshotDir, sealer: &Sealer) -> anyhow::Result<bool> {
    let Some(raw) = db.get_cf(cf(db, CF_SM_META), META_INSTALLING)? else { return Ok(false) };
    let meta: SnapshotMeta = bincode::deserialize(&raw)?;
    tracing::warn!(snapshot = %meta.snapshot_id, "finishing a snapshot install interrupted by a crash");
    let file = File::open(dir.path.join(RECEIVING)).context("the snapshot being installed is gone")?;
    install(db, dir, &meta, file, sealer)?;
    Ok(true)
}

fn len_u32(b: &[u8]) -> anyhow::Result<u32> {
    u32::try_from(b.len()).context("a snapshot record field is over 4 GiB")
}

/// Reads every record of a snapshot stream from its start, checking the trailer's count and
/// checksum; returns the record count.
fn for_each_record(
    input: &mut BufReader<File>,
    mut each: impl FnMut(&str, Vec<u8>, Vec<u8>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    std::io::Seek::seek(input, std::io::SeekFrom::Start(0))?;
    let mut count: u64 = 0;
    let mut crc = crc32fast::Hasher::new();
    loop {
        let mut tag = [0u8; 1];
        input.read_exact(&mut tag).context("snapshot ends without its end marker")?;
        if tag[0] == END_MARKER {
            let mut n = [0u8; 8];
            input.read_exact(&mut n).context("snapshot trailer is cut short")?;
            let expected = u64::from_le_bytes(n);
            if expected != count {
                bail!("snapshot holds {count} records but its trailer says {expected}");
            }
            let mut sum = [0u8; 4];
            input.read_exact(&mut sum).context("snapshot trailer is cut short")?;
            if u32::from_le_bytes(sum) != crc.finalize() {
                bail!("snapshot checksum mismatch: the file is corrupt");
            }
            return Ok(count);
        }
        crc.update(&tag);
        let name = SNAPSHOT_CFS.get(tag[0] as usize).context("unknown column family in snapshot")?;
        let key = read_chunk(input, &mut crc)?;
        let value = read_chunk(input, &mut crc)?;
        each(name, key, value)?;
        count += 1;
    }
}

/// Largest key or value a snapshot record may hold (values are at most 25 MiB).
const MAX_RECORD_FIELD: usize = 64 << 20;

fn read_chunk(input: &mut impl Read, crc: &mut crc32fast::Hasher) -> anyhow::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    crc.update(&len);
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_RECORD_FIELD {
        bail!("snapshot record field of {len} bytes is larger than any the store writes");
    }
    let mut buf = vec![0u8; len];
    input.read_exact(&mut buf)?;
    crc.update(&buf);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::open_db;

    fn contents(db: &DB) -> Vec<(usize, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for (tag, name) in SNAPSHOT_CFS.iter().enumerate() {
            for item in db.iterator_cf(cf(db, name), IteratorMode::Start) {
                let (k, v) = item.unwrap();
                out.push((tag, k.to_vec(), v.to_vec()));
            }
        }
        out
    }

    #[test]
    fn an_install_cut_short_by_a_crash_is_finished_at_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let source = open_db(&tmp.path().join("a")).unwrap();
        let source_dir = SnapshotDir::open(tmp.path().join("a-snap")).unwrap();
        let sealer = Sealer::for_tests();
        for i in 0..100u32 {
            let k = i.to_be_bytes();
            source.put_cf(cf(&source, CF_ENTRIES), k, sealer.seal(CF_ENTRIES, &k, b"meta").unwrap()).unwrap();
            source.put_cf(cf(&source, CF_VALUES), k, sealer.seal(CF_VALUES, &k, &[i as u8; 100]).unwrap()).unwrap();
        }
        write_snapshot(&source, &source_dir).unwrap();
        let meta: SnapshotMeta =
            bincode::deserialize(&std::fs::read(source_dir.path.join(CURRENT_META)).unwrap()).unwrap();

        // The receiver crashed after the wipe and a part of the records: marker set, state partial.
        let db = open_db(&tmp.path().join("b")).unwrap();
        let dir = SnapshotDir::open(tmp.path().join("b-snap")).unwrap();
        std::fs::copy(source_dir.data_path(&meta.snapshot_id), dir.path.join(RECEIVING)).unwrap();
        db.put_cf(cf(&db, CF_SM_META), META_INSTALLING, bincode::serialize(&meta).unwrap()).unwrap();
        db.put_cf(cf(&db, CF_ENTRIES), 7u32.to_be_bytes(), b"meta").unwrap();
        db.put_cf(cf(&db, CF_ENTRIES), b"stale key", b"from before").unwrap();

        assert!(resume_interrupted_install(&db, &dir, &Sealer::for_tests()).unwrap());
        assert_eq!(contents(&db), contents(&source));
        assert!(db.get_cf(cf(&db, CF_SM_META), META_INSTALLING).unwrap().is_none());
        assert!(!resume_interrupted_install(&db, &dir, &Sealer::for_tests()).unwrap(), "nothing left to finish");
    }
}
