//! Group commit of client writes on the leader.
//!
//! openraft 0.9 gives every client write its own log entry and waits for each entry's fsync
//! before appending the next, so durability would cost one fsync per write. Instead,
//! concurrent writes are queued here and proposed together as one entry: one append, one
//! fsync on each node and one replication round serve the whole batch. While an entry is in
//! flight, new writes wait in the queue and join the next batch, so
//! batches grow exactly when the load does.
//!
//! The queue is bounded in bytes: a write that finds it full waits for room until its
//! call's deadline, then is shed with UNAVAILABLE, so a flood of large writes never runs the
//! leader out of memory.

use crate::error::{StoreError, StoreResult};
use crate::metrics::{Metrics, Stage};
use crate::propose::propose;
use crate::types::{Command, CommandResult, NamespaceWrite, Raft, WriteOutcome};
use kv_common::{call, telemetry, KvError, NamespaceId};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

/// Most client writes in one entry.
const MAX_BATCH_WRITES: usize = 1024;
/// A batch stops growing past this many value bytes (a single larger write goes alone).
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Entries proposed but not yet applied, at most. One: openraft 0.9's core waits for each
/// entry's fsync on the leader before it handles anything else (the answers that commit the
/// entry before it included), so a second entry in flight only delays the first; writes
/// that arrive meanwhile join the next entry instead. Measured with `put-throughput`
/// (docs/central-store.md): 1 gave 6,070 and 17,768 puts/s at 16 and 128 writers, 2 gave
/// 5,084 and 14,746, 4 gave 4,011 and 11,844.
const MAX_IN_FLIGHT: usize = 1;
/// Writes waiting for a batch, at most.
const QUEUE: usize = 16 * 1024;
/// The queue's bound in bytes is counted in units of this many bytes.
const UNIT: usize = 1024;
/// How long a write waits for queue room when its caller set no deadline.
const DEFAULT_WAIT: Duration = Duration::from_secs(5);

struct Pending {
    write: NamespaceWrite,
    bytes: usize,
    /// The write's span in its call's trace: the batch it joins is proposed under it.
    span: tracing::Span,
    /// The call the write came in, which names the batch's log lines when the write is the
    /// batch's first.
    serving: Option<call::Serving>,
    done: oneshot::Sender<StoreResult<WriteOutcome>>,
    queued: Instant,
    /// Its share of the queue's byte bound, given back once it is applied.
    _room: OwnedSemaphorePermit,
}

/// The handle writers submit to.
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
    room: Arc<Semaphore>,
    /// The queue's bound, in units.
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl Batcher {
    /// Starts the batching task for this node's Raft handle; at most `queue_bytes` of
    /// writes wait or are in flight at once.
    pub fn start(raft: Raft, metrics: Arc<Metrics>, queue_bytes: usize) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(rx, raft, metrics.clone()));
        let capacity = (queue_bytes / UNIT).clamp(1, u32::MAX as usize);
        Batcher { tx, room: Arc::new(Semaphore::new(capacity)), capacity, metrics }
    }

    /// Commits one client write (with others) and returns its outcome.
    pub async fn submit(&self, mut write: NamespaceWrite) -> StoreResult<WriteOutcome> {
        let bytes: usize = write.ops.iter().map(|op| op.key.len() + op.kind.value_len()).sum();
        // A write larger than the whole bound waits for an empty queue.
        let units = u32::try_from((bytes / UNIT + 1).min(self.capacity)).unwrap_or(u32::MAX);
        let wait = call::remaining_or(DEFAULT_WAIT);
        let room = match tokio::time::timeout(wait, self.room.clone().acquire_many_owned(units)).await {
            Ok(Ok(permit)) => permit,
            _ => {
                self.metrics.shed_writes.inc();
                return Err(KvError::Unavailable("the write queue is full; retry later".into()).into());
            }
        };
        let (done, rx) = oneshot::channel();
        let span = tracing::info_span!("central.write", bytes);
        write.trace = telemetry::sampled_identity(&span);
        let queued = async {
            self.tx
                .send(Pending {
                    write,
                    bytes,
                    span: tracing::Span::current(),
                    serving: call::Serving::current(),
                    done,
                    queued: Instant::now(),
                    _room: room,
                })
                .await
                .map_err(|_| StoreError::Raft("the write batcher has stopped".into()))?;
            rx.await.map_err(|_| StoreError::Raft("the write batcher dropped a write".into()))?
        };
        queued.instrument(span).await
    }
}

async fn run(mut rx: mpsc::Receiver<Pending>, raft: Raft, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // Waiting for a slot first lets the queue fill, so the batch taken next is larger.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (batch, next) = take_batch(first, &mut rx);
        carried = next;
        metrics.write_batch_size.observe(batch.len() as f64);
        for p in &batch {
            metrics.stage(Stage::Queue, p.queued);
        }
        let (raft, metrics) = (raft.clone(), metrics.clone());
        // Proposing, committing and applying the batch: a span in its first write's trace.
        let span = tracing::info_span!(parent: &batch[0].span, "raft.commit_apply", writes = batch.len(), log_index = tracing::field::Empty);
        for p in &batch[1..] {
            span.follows_from(&p.span);
        }
        let serving = batch[0].serving.clone();
        let proposed = async move {
            let _slot = slot;
            let (writes, dones): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.write, p.done)).unzip();
            let cmd = Command::Write { now_ms: kv_common::time::now_ms(), writes };
            let proposed_at = Instant::now();
            let applied = propose(&raft, &metrics, cmd).await;
            metrics.stage(Stage::Commit, proposed_at);
            match applied {
                Ok((_, CommandResult::Writes(outcomes))) => {
                    for (done, outcome) in dones.into_iter().zip(outcomes) {
                        let _ = done.send(Ok(outcome));
                    }
                }
                Ok((_, other)) => {
                    for done in dones {
                        let _ = done.send(Err(anyhow::anyhow!("unexpected apply result {other:?}").into()));
                    }
                }
                Err(e) => {
                    let e = e.to_kv();
                    for done in dones {
                        let _ = done.send(Err(e.clone().into()));
                    }
                }
            }
        };
        call::spawn_in(serving, proposed.instrument(span));
    }
}

/// Takes `first` and as many queued writes as fit in one entry. A write that repeats a key
/// already in the batch ends it and is returned, to start the next batch.
fn take_batch(first: Pending, rx: &mut mpsc::Receiver<Pending>) -> (Vec<Pending>, Option<Pending>) {
    let mut keys: HashSet<(NamespaceId, String)> = HashSet::new();
    let mut bytes = first.bytes;
    note_keys(&mut keys, &first.write);
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH_WRITES && bytes < MAX_BATCH_BYTES {
        let Ok(p) = rx.try_recv() else { break };
        // A key written twice goes to the next entry, so its versions stay increasing.
        if p.write.ops.iter().any(|op| keys.contains(&(p.write.namespace, op.key.clone()))) {
            return (batch, Some(p));
        }
        note_keys(&mut keys, &p.write);
        bytes += p.bytes;
        batch.push(p);
    }
    (batch, None)
}

fn note_keys(keys: &mut HashSet<(NamespaceId, String)>, w: &NamespaceWrite) {
    keys.extend(w.ops.iter().map(|op| (w.namespace, op.key.clone())));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Op, OpKind};

    fn pending(ns: u8, key: &str, value_len: usize) -> Pending {
        let op =
            Op { key: key.into(), kind: OpKind::Put { value: vec![0; value_len], metadata: None, expiration: None } };
        let (done, _) = oneshot::channel();
        let write = NamespaceWrite {
            namespace: NamespaceId([ns; 16]),
            ops: vec![op],
            request: None,
            decided: Default::default(),
            trace: None,
        };
        let room = Arc::new(Semaphore::new(1)).try_acquire_owned().expect("a fresh permit");
        Pending {
            write,
            bytes: value_len,
            span: tracing::Span::none(),
            serving: None,
            done,
            queued: Instant::now(),
            _room: room,
        }
    }

    fn keys(batch: &[Pending]) -> Vec<String> {
        batch.iter().map(|p| p.write.ops[0].key.clone()).collect()
    }

    #[tokio::test]
    async fn a_batch_takes_what_is_queued_and_stops_at_a_repeated_key() {
        let (tx, mut rx) = mpsc::channel(16);
        for p in [pending(1, "b", 1), pending(2, "a", 1), pending(1, "a", 1), pending(1, "c", 1)] {
            tx.send(p).await.unwrap();
        }
        let (batch, next) = take_batch(pending(1, "a", 1), &mut rx);
        // The same key in another namespace is a different key.
        assert_eq!(keys(&batch), vec!["a", "b", "a"]);
        let next = next.expect("the repeated key starts the next batch");
        assert_eq!(next.write.ops[0].key, "a");
        let (batch, none) = take_batch(next, &mut rx);
        assert_eq!(keys(&batch), vec!["a", "c"]);
        assert!(none.is_none());
    }

    #[tokio::test]
    async fn a_batch_stops_growing_past_its_byte_budget() {
        let (tx, mut rx) = mpsc::channel(16);
        tx.send(pending(1, "b", MAX_BATCH_BYTES)).await.unwrap();
        tx.send(pending(1, "c", 1)).await.unwrap();
        let (batch, next) = take_batch(pending(1, "a", 1), &mut rx);
        assert_eq!(keys(&batch), vec!["a", "b"]);
        assert!(next.is_none());
        assert_eq!(rx.try_recv().unwrap().write.ops[0].key, "c");
    }
}
