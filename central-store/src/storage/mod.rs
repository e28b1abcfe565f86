//! Everything on disk: one RocksDB instance holding the Raft log, Raft metadata and the
//! state machine in separate column families (layout in `keys`).

pub mod keys;
pub mod log_store;
pub mod reader;
pub mod reseal;
pub mod seal;
pub mod snapshot;
pub mod state_machine;

use keys::{ALL_CFS, CF_VALUES, SEALED_CFS};
use rocksdb::{ColumnFamilyDescriptor, Options, DB};
use std::path::Path;
use std::sync::Arc;

/// Values at least this large go to RocksDB blob files, so compaction never rewrites them.
const MIN_BLOB_SIZE: u64 = 4096;

/// What this build writes to disk; data written by another format is refused, not misread.
pub const FORMAT: &str = "kv-central-store data format 4 (sealed records, tokens, traced changes)";

/// Checks that `data_dir` holds data this build can read (or is new, then marks it).
pub fn check_format(data_dir: &Path) -> anyhow::Result<()> {
    let marker = data_dir.join("FORMAT");
    match std::fs::read_to_string(&marker) {
        Ok(found) if found.trim() == FORMAT => Ok(()),
        Ok(found) => anyhow::bail!(
            "{} holds data of another format ({:?}); this build writes {FORMAT:?}: remove the directory",
            data_dir.display(),
            found.trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if data_dir.join("db").exists() {
                anyhow::bail!("{} holds data written by an older build: remove the directory", data_dir.display());
            }
            std::fs::create_dir_all(data_dir)?;
            std::fs::write(&marker, format!("{FORMAT}\n"))?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens (or creates) the node's database with every column family.
pub fn open_db(dir: &Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let cfs = ALL_CFS.iter().map(|name| {
        let mut cf_opts = Options::default();
        // Ciphertext does not compress: LZ4 spent 1.1% of a bulk load's CPU finding that out
        // on every flush and compaction of the sealed column families.
        cf_opts.set_compression_type(if SEALED_CFS.contains(name) {
            rocksdb::DBCompressionType::None
        } else {
            rocksdb::DBCompressionType::Lz4
        });
        if *name == CF_VALUES {
            cf_opts.set_enable_blob_files(true);
            cf_opts.set_min_blob_size(MIN_BLOB_SIZE);
            cf_opts.set_enable_blob_gc(true);
        }
        ColumnFamilyDescriptor::new(*name, cf_opts)
    });
    Ok(Arc::new(DB::open_cf_descriptors(&opts, dir, cfs)?))
}

/// Turns any error into openraft's error payload, keeping its full message chain.
pub fn any_error(e: impl std::fmt::Display) -> openraft::AnyError {
    openraft::AnyError::error(format!("{e:#}"))
}

/// The handle of a column family that `open_db` always creates.
pub fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).unwrap_or_else(|| panic!("column family {name} is created by open_db"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each column family's compression, as RocksDB wrote it to the database's OPTIONS file.
    fn compressions(dir: &Path) -> Vec<(String, String)> {
        let options = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("OPTIONS-")))
            .max()
            .expect("RocksDB writes an OPTIONS file");
        let text = std::fs::read_to_string(options).unwrap();
        let mut cf = None;
        let mut out = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix("[CFOptions \"").and_then(|l| l.strip_suffix("\"]")) {
                cf = Some(name.to_owned());
            } else if let (Some(name), Some(c)) = (&cf, line.strip_prefix("compression=")) {
                out.push((name.clone(), c.to_owned()));
            }
        }
        out
    }

    #[test]
    fn sealed_column_families_are_not_compressed_and_the_others_are() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("db");
        drop(open_db(&dir).unwrap());
        let found = compressions(&dir);
        for name in ALL_CFS {
            let want = if SEALED_CFS.contains(&name) { "kNoCompression" } else { "kLZ4Compression" };
            assert!(found.contains(&(name.to_owned(), want.to_owned())), "{name}: {found:?}");
        }
    }
}
