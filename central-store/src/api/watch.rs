//! The change feed: every change set after a version, in order, then live ones as they
//! are applied. Any replica can serve it, since each keeps the feed from its own log.

use crate::node::Node;
use crate::storage::keys::{ChangeKind, ChangeRecord};
use crate::storage::reader::FeedRead;
use kv_proto::store::v1 as pb;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Change sets read from RocksDB per step.
const READ_BATCH: usize = 256;
/// Buffered events per subscriber; a slow subscriber holds back only its own stream.
const STREAM_BUFFER: usize = 64;
/// An idle stream reports its progress this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Where a feed begins.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// After this version.
    After(u64),
    /// At the replica's applied version, announced by a first `Progress`.
    Now,
}

/// Starts a feed for one subscriber.
pub fn stream(node: Arc<Node>, start: Start) -> ReceiverStream<Result<pb::WatchEvent, Status>> {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        node.metrics.watch_subscribers.inc();
        let from = match start {
            Start::After(v) => v,
            Start::Now => {
                let applied = node.reader.applied();
                let p = pb::Progress { applied_version: applied };
                if tx.send(Ok(event(pb::watch_event::Event::Progress(p)))).await.is_err() {
                    node.metrics.watch_subscribers.dec();
                    return;
                }
                applied
            }
        };
        if let Err(e) = feed(&node, from, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
        node.metrics.watch_subscribers.dec();
    });
    ReceiverStream::new(rx)
}

type Sender = mpsc::Sender<Result<pb::WatchEvent, Status>>;

/// Runs until the subscriber goes away, or after telling it to resync.
async fn feed(node: &Node, from: u64, tx: &Sender) -> Result<(), Status> {
    let mut applied_rx = node.reader.subscribe();
    let mut last = from;
    // The newest version the subscriber has been told of, by a change set or a progress.
    let mut told = from;
    loop {
        // Mark the applied index seen before reading, so no apply slips between the read
        // and the wait below.
        let applied = *applied_rx.borrow_and_update();
        match node.reader.changes_after(last, READ_BATCH)? {
            FeedRead::Resync { floor } => {
                let resync = pb::Resync { oldest_retained: floor, current_version: applied };
                let _ = tx.send(Ok(event(pb::watch_event::Event::Resync(resync)))).await;
                return Ok(());
            }
            FeedRead::Changes(sets) if !sets.is_empty() => {
                for (version, changes) in sets {
                    let set = pb::ChangeSet { version, changes: changes.into_iter().map(to_change).collect() };
                    if tx.send(Ok(event(pb::watch_event::Event::Changes(set)))).await.is_err() {
                        return Ok(());
                    }
                    last = version;
                    told = version;
                }
            }
            FeedRead::Changes(_) => {
                // Everything up to `applied` has been sent. Entries without data changes
                // (namespace creates, sweeps, elections) still move the feed on: say so at
                // once, so a subscriber waiting for that version need not.
                last = last.max(applied);
                if last > told {
                    let p = pb::Progress { applied_version: last };
                    if tx.send(Ok(event(pb::watch_event::Event::Progress(p)))).await.is_err() {
                        return Ok(());
                    }
                    told = last;
                }
                tokio::select! {
                    changed = applied_rx.changed() => if changed.is_err() { return Ok(()) },
                    _ = tokio::time::sleep(PROGRESS_EVERY) => {
                        let p = pb::Progress { applied_version: last };
                        if tx.send(Ok(event(pb::watch_event::Event::Progress(p)))).await.is_err() {
                            return Ok(());
                        }
                    }
                    _ = tx.closed() => return Ok(()),
                }
            }
        }
    }
}

fn event(e: pb::watch_event::Event) -> pb::WatchEvent {
    pb::WatchEvent { event: Some(e) }
}

fn to_change(c: ChangeRecord) -> pb::Change {
    let kind = match c.kind {
        ChangeKind::Put => pb::ChangeKind::Put,
        ChangeKind::Delete => pb::ChangeKind::Delete,
        ChangeKind::NamespaceDeleted => pb::ChangeKind::NamespaceDeleted,
        ChangeKind::Expired => pb::ChangeKind::Expired,
    };
    pb::Change {
        namespace_id: c.namespace.to_string(),
        key: c.key,
        kind: kind as i32,
        value_omitted: c.kind == ChangeKind::Put && c.value.is_none(),
        value: c.value.unwrap_or_default().into(),
        metadata_json: c.metadata,
        expiration: c.expiration,
        traceparent: c.trace.map(|t| t.header()).unwrap_or_default(),
    }
}
