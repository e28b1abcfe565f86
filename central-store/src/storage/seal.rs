//! Encryption at rest (SPEC.md section 8): every record that holds a value or metadata is
//! sealed with AES-256-GCM before it reaches RocksDB, and opened after it is read.
//!
//! Sealed are the Raft log's entries (a write carries its values), the entries (metadata),
//! the values, and the change feed (values and metadata). Snapshots copy those records as
//! they are stored, so they hold sealed bytes too, as do RocksDB's WAL and SST files. Keys,
//! namespace titles, versions and expirations stay readable: they order and find records.
//!
//! A sealed record is `[FORMAT][key id][nonce: 12][ciphertext + tag: 16]`. The nonce is
//! fresh and random for each write (96 bits: keep to well under 2^32 writes per key before
//! rotating). The associated data is the column family and the record's key, so a record
//! moved or copied to another key does not open. The key id says which key sealed it: a
//! node holds every key it may find (`encryption_keys`), seals with the last, and opens
//! with any, so keys rotate without rewriting old records first.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// The first byte of every sealed record (a format number, for a later change of layout).
const FORMAT: u8 = 1;
const NONCE: usize = 12;
const HEADER: usize = 2 + NONCE;

/// The keys a node seals and opens records with. They can be replaced while the node runs
/// (`replace_keys`: `kv admin rotate-key`), so every holder of the node's `Arc<Sealer>`
/// seals with the new key at once.
pub struct Sealer {
    keys: RwLock<Arc<KeySet>>,
    /// Held by every write of sealed records and by the re-sealing of old ones (`reseal`),
    /// which reads a record and writes it back: so no write falls in between and is undone.
    writes: Arc<Mutex<()>>,
}

struct KeySet {
    ciphers: BTreeMap<u8, Aes256Gcm>,
    current: u8,
}

impl Clone for Sealer {
    fn clone(&self) -> Self {
        Sealer { keys: RwLock::new(self.set()), writes: self.writes.clone() }
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer(keys {:?}, sealing with {})", self.key_ids(), self.sealing_key())
    }
}

impl Sealer {
    /// From `id:hex` entries, one per line or comma (a bare 64-hex key is id 1); the last
    /// one seals. Each key is 32 bytes as 64 hex characters.
    pub fn parse(text: &str) -> anyhow::Result<Sealer> {
        let mut ciphers = BTreeMap::new();
        let mut current = None;
        for part in text.split([',', '\n']).map(str::trim).filter(|p| !p.is_empty() && !p.starts_with('#')) {
            let (id, hex_key) = match part.split_once(':') {
                Some((id, k)) => (id.trim().parse::<u8>().context("a key id is a number from 0 to 255")?, k.trim()),
                None => (1, part),
            };
            let bytes = hex::decode(hex_key).ok().filter(|b| b.len() == 32);
            let Some(bytes) = bytes else { bail!("encryption key {id} is not 64 hex characters (32 bytes)") };
            let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| anyhow::anyhow!("encryption key {id}"))?;
            if ciphers.insert(id, cipher).is_some() {
                bail!("encryption key id {id} is given twice");
            }
            current = Some(id);
        }
        let Some(current) = current else { bail!("no encryption key given") };
        Ok(Sealer { keys: RwLock::new(Arc::new(KeySet { ciphers, current })), writes: Arc::default() })
    }

    fn set(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes `other`'s keys: records are sealed with its last key from now on. Waits for
    /// the writes in progress (they hold `hold_writes` from sealing to writing), so every
    /// record written after this returns is sealed with the new key.
    pub fn replace_keys(&self, other: &Sealer) {
        let _writes = self.hold_writes();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = other.set();
    }

    /// Holds off re-sealing while the caller writes sealed records (see `writes`).
    pub fn hold_writes(&self) -> MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id of the key new records are sealed with.
    pub fn sealing_key(&self) -> u8 {
        self.set().current
    }

    /// The ids of every key this node holds.
    pub fn key_ids(&self) -> Vec<u8> {
        self.set().ciphers.keys().copied().collect()
    }

    /// The id of the key that sealed `sealed`, as its header says.
    pub fn key_id_of(sealed: &[u8]) -> Option<u8> {
        match sealed {
            [FORMAT, id, ..] => Some(*id),
            _ => None,
        }
    }

    /// Seals `plain`, stored under `key` in column family `cf`.
    pub fn seal(&self, cf: &str, key: &[u8], plain: &[u8]) -> anyhow::Result<Vec<u8>> {
        let set = self.set();
        let cipher = &set.ciphers[&set.current];
        let nonce: [u8; NONCE] = rand::random();
        let aad = associated(cf, key);
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad: &aad })
            .map_err(|_| anyhow::anyhow!("sealing a record of {cf} failed"))?;
        let mut out = Vec::with_capacity(HEADER + sealed.len());
        out.extend_from_slice(&[FORMAT, set.current]);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a record `seal` made for the same `cf` and `key`; fails on any other bytes.
    pub fn open(&self, cf: &str, key: &[u8], sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
        let Some((&[format, id], rest)) = sealed.split_first_chunk::<2>() else {
            bail!("a record of {cf} is cut short")
        };
        if format != FORMAT {
            bail!("a record of {cf} is not sealed in a format this build reads ({format})");
        }
        let set = self.set();
        let cipher =
            set.ciphers.get(&id).with_context(|| format!("a record of {cf} was sealed with key {id}, not given"))?;
        let (nonce, body) = rest.split_at_checked(NONCE).with_context(|| format!("a record of {cf} is cut short"))?;
        let aad = associated(cf, key);
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad: &aad })
            .map_err(|_| anyhow::anyhow!("a record of {cf} does not open: wrong key, or changed on disk"))
    }

    /// Seals a value's bincode encoding.
    pub fn seal_bincode<T: serde::Serialize>(&self, cf: &str, key: &[u8], value: &T) -> anyhow::Result<Vec<u8>> {
        self.seal(cf, key, &bincode::serialize(value)?)
    }

    /// Opens and decodes what `seal_bincode` made.
    pub fn open_bincode<T: serde::de::DeserializeOwned>(
        &self,
        cf: &str,
        key: &[u8],
        sealed: &[u8],
    ) -> anyhow::Result<T> {
        Ok(bincode::deserialize(&self.open(cf, key, sealed)?)?)
    }

    /// A fixed key, for tests of the storage layer.
    pub fn for_tests() -> Sealer {
        Sealer::parse(&"ab".repeat(32)).expect("a valid test key")
    }
}

/// What binds a sealed record to its place: the column family, then the record's key.
fn associated(cf: &str, key: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(cf.len() + 1 + key.len());
    aad.extend_from_slice(cf.as_bytes());
    aad.push(0);
    aad.extend_from_slice(key);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_records_open_only_with_their_key_and_place() {
        let s = Sealer::parse(&format!("1:{}\n2:{}", "11".repeat(32), "22".repeat(32))).unwrap();
        let sealed = s.seal("values", b"k", b"a secret value").unwrap();
        assert_eq!(sealed[1], 2, "the last key seals");
        assert!(!sealed.windows(6).any(|w| w == b"secret"), "no plaintext in the record");
        assert_eq!(s.open("values", b"k", &sealed).unwrap(), b"a secret value");
        assert!(s.open("values", b"other", &sealed).is_err(), "moved to another key");
        assert!(s.open("entries", b"k", &sealed).is_err(), "moved to another column family");
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(s.open("values", b"k", &flipped).is_err(), "changed on disk");
        assert!(s.open("values", b"k", &sealed[..5]).is_err(), "cut short");
        assert_ne!(sealed, s.seal("values", b"k", b"a secret value").unwrap(), "a fresh nonce per write");

        // After a rotation the old key still opens old records; a node without it cannot.
        let old = Sealer::parse(&format!("1:{}", "11".repeat(32))).unwrap().seal("values", b"k", b"v").unwrap();
        assert_eq!(s.open("values", b"k", &old).unwrap(), b"v");
        assert!(Sealer::parse(&"22".repeat(32)).unwrap().open("values", b"k", &old).is_err());
    }

    #[test]
    fn bad_key_text_is_refused_with_a_clear_error() {
        for bad in [
            "",
            "# only a comment",
            "abcd",
            &format!("x:{}", "11".repeat(32)),
            &format!("1:{0},1:{0}", "11".repeat(32)),
        ] {
            assert!(Sealer::parse(bad).is_err(), "{bad:?}");
        }
    }
}
