//! Column families and the byte encodings of their keys and values.
//!
//! | cf           | key                               | value                      |
//! |--------------|-----------------------------------|----------------------------|
//! | `raft_log`   | index (u64 BE)                    | bincode `Entry`            |
//! | `raft_meta`  | `vote`, `committed`, `purged`     | bincode                    |
//! | `sm_meta`    | `applied`, `membership`, `floor`, `installing` | bincode       |
//! | `namespaces` | namespace id (16 bytes)           | bincode `NamespaceRecord`  |
//! | `ns_titles`  | title bytes                       | namespace id               |
//! | `entries`    | namespace id ++ key bytes         | bincode `EntryMeta`        |
//! | `values`     | namespace id ++ key bytes         | raw value (blob files)     |
//! | `expiry`     | expiration (u64 BE) ++ ns ++ key  | empty                      |
//! | `changes`    | version (u64 BE)                  | bincode `Vec<ChangeRecord>`|
//! | `tombstones` | version (u64 BE) ++ ns ++ key     | empty                      |
//! | `requests`   | request id                        | bincode `RequestRecord`    |
//! | `request_times` | time (ms, u64 BE) ++ request id | empty                     |
//! | `tokens`     | token id (hex text)               | bincode `TokenRecord`      |
//!
//! Keys of one namespace sort by their UTF-8 bytes, which is the list order of the contract.

use kv_common::trace::TraceContext;
use kv_common::NamespaceId;
use serde::{Deserialize, Serialize};

pub const CF_RAFT_LOG: &str = "raft_log";
pub const CF_RAFT_META: &str = "raft_meta";
pub const CF_SM_META: &str = "sm_meta";
pub const CF_NAMESPACES: &str = "namespaces";
pub const CF_NS_TITLES: &str = "ns_titles";
pub const CF_ENTRIES: &str = "entries";
pub const CF_VALUES: &str = "values";
pub const CF_EXPIRY: &str = "expiry";
pub const CF_CHANGES: &str = "changes";
pub const CF_TOMBSTONES: &str = "tombstones";
pub const CF_REQUESTS: &str = "requests";
pub const CF_REQUEST_TIMES: &str = "request_times";
pub const CF_TOKENS: &str = "tokens";

/// Every column family, in creation order.
pub const ALL_CFS: [&str; 13] = [
    CF_RAFT_LOG,
    CF_RAFT_META,
    CF_SM_META,
    CF_NAMESPACES,
    CF_NS_TITLES,
    CF_ENTRIES,
    CF_VALUES,
    CF_EXPIRY,
    CF_CHANGES,
    CF_TOMBSTONES,
    CF_REQUESTS,
    CF_REQUEST_TIMES,
    CF_TOKENS,
];

/// The column families that make up the state machine (and so a snapshot).
/// Positions are the tags of the snapshot format: append only.
pub const SNAPSHOT_CFS: [&str; 9] = [
    CF_NAMESPACES,
    CF_NS_TITLES,
    CF_ENTRIES,
    CF_VALUES,
    CF_EXPIRY,
    CF_TOMBSTONES,
    CF_REQUESTS,
    CF_REQUEST_TIMES,
    CF_TOKENS,
];

/// The column families whose records are sealed (`seal`): values and metadata live there.
pub const SEALED_CFS: [&str; 4] = [CF_RAFT_LOG, CF_ENTRIES, CF_VALUES, CF_CHANGES];

pub const META_VOTE: &[u8] = b"vote";
pub const META_COMMITTED: &[u8] = b"committed";
pub const META_PURGED: &[u8] = b"purged";
pub const META_APPLIED: &[u8] = b"applied";
pub const META_MEMBERSHIP: &[u8] = b"membership";
/// Versions at or below the floor are no longer in the change feed.
pub const META_FLOOR: &[u8] = b"floor";
/// Present (holding the snapshot's metadata) while a snapshot install is under way.
pub const META_INSTALLING: &[u8] = b"installing";

/// Per-key metadata, kept apart from the value so listing never reads values.
#[derive(Clone, Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct EntryMeta {
    pub version: u64,
    pub expiration: Option<i64>,
    pub metadata: Option<String>,
    /// A delete: the key is absent as of `version`.
    pub tombstone: bool,
}

/// One change of the feed as stored (the wire form is built from it when served).
#[derive(Clone, Serialize, Deserialize, Debug)]
pub struct ChangeRecord {
    pub namespace: NamespaceId,
    pub key: String,
    pub kind: ChangeKind,
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    pub metadata: Option<String>,
    pub expiration: Option<i64>,
    /// The span of the write that made the change, in a kept trace (`NamespaceWrite::trace`).
    pub trace: Option<TraceContext>,
}

/// A request id's first outcome, kept so that a retry is answered, not applied again.
#[derive(Clone, Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// When it was applied (the leader's proposal time), for the sweep.
    pub now_ms: u64,
    pub recorded: crate::types::Recorded,
}

/// The `request_times` key of a record made at `now_ms`.
pub fn request_time_key(now_ms: u64, request: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + request.len());
    k.extend_from_slice(&now_ms.to_be_bytes());
    k.extend_from_slice(request.as_bytes());
    k
}

/// What happened to a key.
#[derive(Clone, Copy, Serialize, Deserialize, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// `value` is `None` when it was larger than the feed's inline limit.
    Put,
    Delete,
    NamespaceDeleted,
    /// The sweep removed the key because its expiration had passed (added last, so records
    /// written before it still decode).
    Expired,
}

pub fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn decode_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

pub fn entry_key(ns: &NamespaceId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + key.len());
    k.extend_from_slice(&ns.0);
    k.extend_from_slice(key);
    k
}

/// A key of a sweep index (`expiry`, `tombstones`): a number (expiration or version) then
/// the entry key, so a sweep reads only what is due, in order.
pub fn sweep_index_key(at: u64, ns: &NamespaceId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + 16 + key.len());
    k.extend_from_slice(&at.to_be_bytes());
    k.extend_from_slice(&ns.0);
    k.extend_from_slice(key);
    k
}

/// The expiry index position of an entry.
pub fn expiry_key(expiration: i64, ns: &NamespaceId, key: &[u8]) -> Vec<u8> {
    sweep_index_key(expiration.max(0) as u64, ns, key)
}

/// Splits an entry key back into its namespace and key.
pub fn split_entry_key(ek: &[u8]) -> Option<(NamespaceId, String)> {
    let ns = NamespaceId(ek.get(..16)?.try_into().ok()?);
    Some((ns, String::from_utf8(ek.get(16..)?.to_vec()).ok()?))
}

/// Splits a sweep index key back into (number, entry key).
pub fn split_sweep_index_key(k: &[u8]) -> Option<(u64, &[u8])> {
    if k.len() < 24 {
        return None;
    }
    Some((u64::from_be_bytes(k[..8].try_into().ok()?), &k[8..]))
}

/// The smallest key greater than every key starting with `prefix` (None: no upper bound).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A key greater than every key of any column family (keys are at most 16 + 512 + 8 bytes).
pub fn beyond_all_keys() -> Vec<u8> {
    vec![0xFF; 1024]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_handles_carry() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), None);
    }

    #[test]
    fn expiry_keys_sort_by_time() {
        let ns = NamespaceId([7; 16]);
        assert!(expiry_key(100, &ns, b"z") < expiry_key(101, &ns, b"a"));
        let k = expiry_key(12345, &ns, b"key");
        let (exp, rest) = split_sweep_index_key(&k).unwrap();
        assert_eq!(exp, 12345);
        assert_eq!(rest, entry_key(&ns, b"key"));
    }
}
