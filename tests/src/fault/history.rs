//! What the fault suite records: every client call with its start, end and result, and
//! every fault the nemesis caused, on one timeline.
//!
//! Times are microseconds since the run started, on the suite's monotonic clock; reads also
//! note the wall clock at their start, which expiration is checked against (the central
//! voters run on this machine's unskewed clock).

use serde::Serialize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// One key as a read returned it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyRead {
    pub key: String,
    /// `None`: absent.
    pub value: Option<String>,
    pub version: u64,
    /// The edge answered STALE (no upstream could answer fresh).
    pub stale: bool,
    pub age_ms: u64,
}

/// One key a write asked for: a put of `value`, or a delete.
#[derive(Debug, Clone, Serialize)]
pub struct KeyWrite {
    pub key: String,
    /// `None`: a delete.
    pub value: Option<String>,
    pub expiration_ttl: Option<i64>,
    /// Compare-and-set: only at this version (0: only while absent).
    pub if_version: Option<u64>,
}

/// How fresh a read asked to be.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub enum ReadMode {
    /// KV's: cached within cacheTtl.
    Eventual,
    /// Linearizable.
    Strong,
    /// At least as new as this version (the client's own last write), at another edge.
    Session(u64),
}

/// One item's outcome in an acknowledged write.
#[derive(Debug, Clone, Serialize)]
pub struct ItemDone {
    /// 0 when the item was refused.
    pub version: u64,
    pub expiration: Option<i64>,
    pub refused: Option<String>,
}

/// What a call asked, and what came of it.
#[derive(Debug, Clone, Serialize)]
pub enum Call {
    /// A get (one key) or a bulk get.
    Read {
        keys: Vec<String>,
        cache_ttl_secs: i64,
        mode: ReadMode,
        result: Result<Vec<KeyRead>, String>,
    },
    Write {
        writes: Vec<KeyWrite>,
        result: WriteResult,
    },
    /// Every page of a list, from the start.
    List {
        prefix: String,
        result: Result<Vec<String>, String>,
    },
}

/// How a write ended.
#[derive(Debug, Clone, Serialize)]
pub enum WriteResult {
    /// Acknowledged: one outcome per item.
    Done(Vec<ItemDone>),
    /// Refused as a whole by the contract (nothing was applied).
    Refused(String),
    /// Its condition did not hold: nothing was applied; the key was at `current`.
    ConditionFailed { current: u64 },
    /// No answer, or "unavailable": it may or may not have been applied.
    Unknown(String),
}

/// One client call.
#[derive(Debug, Clone, Serialize)]
pub struct Op {
    pub id: usize,
    pub client: usize,
    pub edge: usize,
    pub start: u64,
    pub end: u64,
    pub start_wall_ms: u64,
    pub call: Call,
}

/// One event a watcher received.
#[derive(Debug, Clone, Serialize)]
pub enum Watched {
    /// `kind` as the proto names it; `value` for puts whose value came inline.
    Change {
        key: String,
        kind: String,
        version: u64,
        value: Option<String>,
    },
    Progress(u64),
    Resync(u64),
}

/// One watch stream, from its opening to its end.
#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    /// The version it resumed from (`None`: from now).
    pub from: Option<u64>,
    pub opened: u64,
    /// Each event with when it arrived.
    pub events: Vec<(u64, Watched)>,
    /// How it ended.
    pub ended: String,
}

/// Every stream one watcher had, in order.
#[derive(Debug, Clone, Serialize)]
pub struct WatchLog {
    pub edge: usize,
    pub segments: Vec<Segment>,
}

/// Which edges a fault can keep from reaching the central store.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub enum Scope {
    All,
    Region(usize),
    Edge(usize),
}

/// One fault, from when it began to when it was healed.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    pub what: String,
    pub scope: Scope,
    pub start: u64,
    pub end: u64,
}

/// The shared record of one run.
#[derive(Clone)]
pub struct Recorder {
    started: Instant,
    inner: Arc<Mutex<Recorded>>,
}

/// Everything recorded in one run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Recorded {
    pub ops: Vec<Op>,
    pub faults: Vec<Fault>,
    pub watches: Vec<WatchLog>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder { started: Instant::now(), inner: Arc::default() }
    }

    /// Microseconds since the run started.
    pub fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub fn op(&self, op: Op) {
        let mut r = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let id = r.ops.len();
        r.ops.push(Op { id, ..op });
    }

    pub fn fault(&self, fault: Fault) {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).faults.push(fault);
    }

    pub fn take(&self) -> Recorded {
        std::mem::take(&mut *self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}
