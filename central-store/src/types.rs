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
    /// Puts and deletes of one namespace, already validated and rate-limited by the leader.
    Write {
        now_ms: u64,
        namespace: NamespaceId,
        ops: Vec<Op>,
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
    /// (reads already hide them); the time comes from the log, so replicas agree.
    Sweep {
        now_ms: u64,
        budget: u32,
    },
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
    Written,
    Namespace(NamespaceRecord),
    NamespaceDeleted,
    Swept {
        removed: u64,
    },
    /// The command was valid when proposed but not at apply time (e.g. namespace gone).
    Rejected(KvError),
}
