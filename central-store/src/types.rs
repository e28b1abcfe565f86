//! The Raft type configuration and the commands the replicated log carries.
//!
//! A command is fully resolved by the leader before it is proposed (time stamped, TTLs made
//! absolute, ids drawn), so applying it is a pure function of the log and every replica ends
//! up byte-for-byte identical.

use kv_common::auth::{Rights, SecretDigest};
use kv_common::trace::TraceContext;
use kv_common::{KvError, NamespaceId};
use serde::{Deserialize, Serialize};
use std::fmt;

openraft::declare_raft_types!(
    /// The central store's Raft types; snapshots are files, so they stream in bounded memory.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        SnapshotData = tokio::fs::File,
);

pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;

/// A client's name for one request, the same across its retries (at most 128 bytes).
pub type RequestId = String;

/// One replicated state change.
#[derive(Clone, Serialize, Deserialize, Debug)]
pub enum Command {
    /// Client writes gathered by the leader into one entry (group commit), each already
    /// validated and rate-limited; no key appears in two of them.
    Write {
        now_ms: u64,
        writes: Vec<NamespaceWrite>,
    },
    CreateNamespace {
        id: NamespaceId,
        title: String,
        now_ms: u64,
        request: Option<RequestId>,
    },
    RenameNamespace {
        id: NamespaceId,
        title: String,
        now_ms: u64,
        request: Option<RequestId>,
    },
    /// Removes the namespace and every key in it.
    DeleteNamespace {
        id: NamespaceId,
        now_ms: u64,
        request: Option<RequestId>,
    },
    /// Physically removes up to `budget` entries whose expiration is at or before `now_ms`
    /// (reads already hide them), up to `budget` tombstones older than `tombstones_before`,
    /// and up to `budget` request records made before `requests_before_ms`; every bound
    /// comes from the log, so replicas agree.
    Sweep {
        now_ms: u64,
        budget: u32,
        tombstones_before: u64,
        requests_before_ms: u64,
    },
    // New commands go last: the log stores them with bincode, by position.
    /// Stores a new token (its id was drawn at random by the edge that took the request).
    CreateToken {
        record: TokenRecord,
        now_ms: u64,
        request: Option<RequestId>,
    },
    /// Forgets a token: it stops working where it is next looked up.
    RevokeToken {
        id: String,
        now_ms: u64,
        request: Option<RequestId>,
    },
}

/// The puts and deletes of one client request, all in one namespace.
#[derive(Clone, Serialize, Deserialize, Debug)]
pub struct NamespaceWrite {
    pub namespace: NamespaceId,
    /// The items to apply: valid, allowed by the rate limit, one per key (the last one a
    /// request names, see `kv_common::validate::last_wins`).
    pub ops: Vec<Op>,
    /// The client's request id, when it gave one: applied once, whatever the retries.
    pub request: Option<RequestId>,
    /// What the leader decided for the request's other items, by their position in it.
    pub decided: Decided,
    /// The write's span, when its trace is exported and kept: its changes carry it down
    /// the tiers, so the pushes they cause appear in the write's trace.
    pub trace: Option<TraceContext>,
}

/// Per-item outcomes of a write request beyond "applied at the entry's version", by the
/// item's position in the client's request: enough to answer a retry exactly.
#[derive(Clone, Serialize, Deserialize, Debug, Default, PartialEq, Eq)]
pub struct Decided {
    /// Items refused (invalid, rate-limited), with why.
    pub errors: Vec<(u32, KvError)>,
    /// The absolute expiration stored for each put that has one.
    pub expirations: Vec<(u32, i64)>,
}

impl Decided {
    /// Item `item` failed (a condition that did not hold when applied): it stores nothing.
    pub fn fail(&mut self, item: u32, e: KvError) {
        self.expirations.retain(|(i, _)| *i != item);
        self.errors.push((item, e));
    }
}

/// One item of a write.
#[derive(Clone, Serialize, Deserialize)]
pub struct Op {
    pub key: String,
    pub kind: OpKind,
}

/// What a write does to its key.
#[derive(Clone, Serialize, Deserialize)]
pub enum OpKind {
    Put {
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        metadata: Option<String>,
        expiration: Option<i64>,
    },
    Delete,
    // New variants go last: the log stores them with bincode, by position.
    /// Compare-and-set: `then` takes effect only if, when the entry is applied, the key's
    /// version is `if_version` (0: absent); otherwise item `item` of the client's request
    /// fails with the version found. Decided in commit order, so every replica agrees.
    Conditional {
        if_version: u64,
        item: u32,
        then: Box<OpKind>,
    },
}

impl OpKind {
    /// Bytes of value this item carries.
    pub fn value_len(&self) -> usize {
        match self {
            OpKind::Put { value, .. } => value.len(),
            OpKind::Delete => 0,
            OpKind::Conditional { then, .. } => then.value_len(),
        }
    }

    /// The absolute expiration a put stores.
    pub fn expiration(&self) -> Option<i64> {
        match self {
            OpKind::Put { expiration, .. } => *expiration,
            OpKind::Delete => None,
            OpKind::Conditional { then, .. } => then.expiration(),
        }
    }
}

impl fmt::Debug for Op {
    // Values can be 25 MiB: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kind = &self.kind;
        while let OpKind::Conditional { if_version, then, .. } = kind {
            write!(f, "if version {if_version}: ")?;
            kind = then;
        }
        match kind {
            OpKind::Put { value, expiration, .. } => {
                write!(f, "put({:?}, {} bytes, exp {:?})", self.key, value.len(), expiration)
            }
            _ => write!(f, "delete({:?})", self.key),
        }
    }
}

/// A namespace as the state machine stores it.
#[derive(Clone, Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct NamespaceRecord {
    pub id: NamespaceId,
    pub title: String,
}

/// A token as the state machine stores it: never its secret, only the secret's digest.
#[derive(Clone, Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub digest: SecretDigest,
    pub rights: Rights,
    /// Unix seconds.
    pub created_at: i64,
}

/// What applying a command produced; the version of a write is its log index.
#[derive(Clone, Serialize, Deserialize, Debug)]
pub enum CommandResult {
    /// For `Write`: one outcome per `NamespaceWrite`, in order.
    Writes(Vec<WriteOutcome>),
    /// Blank and membership entries.
    Written,
    /// For the namespace commands.
    Namespace(Result<NamespaceDone, KvError>),
    Swept {
        removed: u64,
    },
    /// For the token commands: the version that committed the change.
    Token(Result<u64, KvError>),
}

/// The outcome of one client write request.
#[derive(Clone, Serialize, Deserialize, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Applied at `version` (for a retried request: the first application's).
    Applied { version: u64, decided: Decided },
    /// Valid when proposed but not when applied (the namespace was gone).
    Failed(KvError),
}

/// A namespace command that took effect.
#[derive(Clone, Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct NamespaceDone {
    pub version: u64,
    /// The namespace as it now is; `None` after a delete.
    pub record: Option<NamespaceRecord>,
}

/// What the state machine remembers of a request that named a `RequestId`.
#[derive(Clone, Serialize, Deserialize, Debug, PartialEq, Eq)]
pub enum Recorded {
    Write(WriteOutcome),
    Namespace(Result<NamespaceDone, KvError>),
    Token(Result<u64, KvError>),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The variant a bincode encoding names.
    fn tag<T: Serialize>(v: &T) -> u32 {
        let bytes = bincode::serialize(v).expect("serializable");
        u32::from_le_bytes(bytes[..4].try_into().expect("a variant tag"))
    }

    /// The Raft log and request records hold these with bincode, which names a variant by
    /// its position: data written by an earlier build must still decode to the same thing.
    #[test]
    fn stored_variants_keep_their_positions() {
        assert_eq!(tag(&KvError::NamespaceTitleInvalid { max: 1 }), 26);
        assert_eq!(tag(&KvError::Internal(String::new())), 29);
        let sweep = Command::Sweep { now_ms: 0, budget: 0, tombstones_before: 0, requests_before_ms: 0 };
        assert_eq!(tag(&sweep), 4);
        assert_eq!(tag(&Recorded::Namespace(Err(KvError::KeyEmpty))), 1);
        assert_eq!(tag(&CommandResult::Swept { removed: 0 }), 3);
        assert_eq!(tag(&OpKind::Conditional { if_version: 0, item: 0, then: Box::new(OpKind::Delete) }), 2);
        assert_eq!(tag(&KvError::PreconditionFailed { current: 0 }), 33);
    }
}
