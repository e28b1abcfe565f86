//! The Raft type configuration and the commands the replicated log carries.
//!
//! A command is fully resolved by the leader before it is proposed (time stamped, TTLs made
//! absolute, ids drawn), so applying it is a pure function of the log and every replica ends
//! up byte-for-byte identical.

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
    },
    RenameNamespace {
        id: NamespaceId,
        title: String,
    },
    /// Removes the namespace and every key in it.
    DeleteNamespace {
        id: NamespaceId,
    },
    /// Physically removes up to `budget` entries whose expiration is at or before `now_ms`
    /// (reads already hide them) and up to `budget` tombstones older than `tombstones_before`;
    /// both bounds come from the log, so replicas agree.
    Sweep {
        now_ms: u64,
        budget: u32,
        tombstones_before: u64,
    },
}

/// The puts and deletes of one client request, all in one namespace.
#[derive(Clone, Serialize, Deserialize, Debug)]
pub struct NamespaceWrite {
    pub namespace: NamespaceId,
    pub ops: Vec<Op>,
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
}

impl OpKind {
    /// Bytes of value this item carries.
    pub fn value_len(&self) -> usize {
        match self {
            OpKind::Put { value, .. } => value.len(),
            OpKind::Delete => 0,
        }
    }
}

impl fmt::Debug for Op {
    // Values can be 25 MiB: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            OpKind::Put { value, expiration, .. } => {
                write!(f, "put({:?}, {} bytes, exp {:?})", self.key, value.len(), expiration)
            }
            OpKind::Delete => write!(f, "delete({:?})", self.key),
        }
    }
}

/// A namespace as the state machine stores it.
#[derive(Clone, Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct NamespaceRecord {
    pub id: NamespaceId,
    pub title: String,
}

/// What applying a command produced; the version of a write is its log index.
#[derive(Clone, Serialize, Deserialize, Debug)]
pub enum CommandResult {
    /// For `Write`: one outcome per `NamespaceWrite`, in order (`None` = applied).
    Writes(Vec<Option<KvError>>),
    Written,
    Namespace(NamespaceRecord),
    NamespaceDeleted,
    Swept {
        removed: u64,
    },
    /// The command was valid when proposed but not at apply time (e.g. namespace gone).
    Rejected(KvError),
}
