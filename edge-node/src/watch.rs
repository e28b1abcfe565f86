//! Watch streams: one upstream change feed per namespace watched at this edge, shared by
//! every watcher of it, and a window of its recent change sets for watchers that resume
//! from a version the feed has already passed.
//!
//! The feed comes from the central store's change feed, through the regional tier, and
//! resumes by version after any break, so what it passes on is every committed change of
//! the namespace in version order. A watcher subscribes to the live fan-out before it reads
//! the window, so nothing falls between them (repeats are dropped by version). A watcher
//! asking for a version older than the window, or falling behind the fan-out, is told to
//! resync rather than miss a change.

use futures::future::BoxFuture;
use kv_proto::client::v1 as api;
use kv_proto::store::v1 as pb;
use prometheus::IntGauge;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Bytes of recent change sets a namespace's window keeps.
const WINDOW_BYTES: usize = 4 << 20;
/// Items the live fan-out buffers for its slowest watcher before that one must resync.
const FAN_OUT: usize = 4096;
/// Events buffered toward one watcher's connection.
const TO_WATCHER: usize = 256;
/// Wait before opening a broken upstream feed again.
const REOPEN_AFTER: Duration = Duration::from_millis(200);

/// What a namespace's feed passes on.
#[derive(Debug)]
enum Item {
    /// The namespace's changes committed at this version.
    Set(u64, Arc<Vec<pb::Change>>),
    /// Nothing more of the namespace changed up to this version.
    Progress(u64),
    /// The feed lost its place (or the namespace is gone): resync at this version.
    Resync(u64),
}

/// Recent change sets, and what the feed covers.
struct Window {
    sets: VecDeque<(u64, Arc<Vec<pb::Change>>, usize)>,
    bytes: usize,
    /// Every change after this version is in `sets` (or was never made).
    floor: u64,
    /// The feed has passed on everything up to this version.
    position: u64,
    /// False only for a feed started "from now" before its first event names the version.
    known: bool,
}

/// One namespace's feed; its upstream task ends when the last watcher drops it.
struct Feed {
    window: Mutex<Window>,
    tx: broadcast::Sender<Arc<Item>>,
    task: tokio::task::AbortHandle,
    open: IntGauge,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
        self.open.dec();
    }
}

impl Feed {
    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Item {
    /// Where a feed opened "from now" starts, when this is its first item: the feed holds
    /// every change after it, and none before.
    fn start(&self) -> u64 {
        match self {
            Item::Set(v, _) => v.saturating_sub(1),
            Item::Progress(v) | Item::Resync(v) => *v,
        }
    }
}

/// Opens the change feed upstream from a position (the edge's regional tier, in turn).
pub type Opener =
    Arc<dyn Fn(pb::WatchRequest) -> BoxFuture<'static, Result<tonic::Streaming<pb::WatchEvent>, Status>> + Send + Sync>;

/// The feeds of one edge, by namespace.
pub struct Hub {
    feeds: Mutex<HashMap<String, Weak<Feed>>>,
    open: Opener,
    /// Feeds open, and watchers served.
    gauges: (IntGauge, IntGauge),
}

impl Hub {
    pub fn new(open: Opener, feeds: IntGauge, watchers: IntGauge) -> Hub {
        Hub { feeds: Mutex::default(), open, gauges: (feeds, watchers) }
    }

    /// The feed of `ns`, started at `from` (or now) when no watcher holds one.
    fn feed(&self, ns: &str, from: Option<u64>) -> Arc<Feed> {
        let mut feeds = self.feeds.lock().unwrap_or_else(PoisonError::into_inner);
        feeds.retain(|_, f| f.strong_count() > 0);
        if let Some(f) = feeds.get(ns).and_then(Weak::upgrade) {
            return f;
        }
        let (tx, _) = broadcast::channel(FAN_OUT);
        let start = from.unwrap_or(0);
        let window = Window { sets: VecDeque::new(), bytes: 0, floor: start, position: start, known: from.is_some() };
        let (feed_tx, opener, name) = (tx.clone(), self.open.clone(), ns.to_owned());
        let open = self.gauges.0.clone();
        open.inc();
        let feed = Arc::new_cyclic(|me: &Weak<Feed>| {
            let me = me.clone();
            let task = tokio::spawn(follow(opener, name, from, me, feed_tx)).abort_handle();
            Feed { window: Mutex::new(window), tx, task, open }
        });
        feeds.insert(ns.to_owned(), Arc::downgrade(&feed));
        feed
    }

    /// A watcher's stream of `req` (already authorized), in `ns`.
    pub fn watch(&self, req: api::WatchRequest) -> ReceiverStream<Result<api::WatchEvent, Status>> {
        let feed = self.feed(&req.namespace_id, req.from_version);
        let (out, rx) = mpsc::channel(TO_WATCHER);
        let watchers = self.gauges.1.clone();
        tokio::spawn(async move {
            watchers.inc();
            serve(feed, req, out).await;
            watchers.dec();
        });
        ReceiverStream::new(rx)
    }
}

/// Follows the namespace's changes upstream until the feed is dropped, reopening after a
/// break from the last version passed on.
async fn follow(open: Opener, ns: String, from: Option<u64>, feed: Weak<Feed>, tx: broadcast::Sender<Arc<Item>>) {
    let mut position = from;
    // Reopens at most once per tick, so a feed that keeps breaking does not spin.
    let mut reopen = tokio::time::interval(REOPEN_AFTER);
    reopen.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        reopen.tick().await;
        let req = pb::WatchRequest { from_version: position.unwrap_or(0), from_now: position.is_none() };
        match open(req).await {
            Ok(mut stream) => loop {
                let event = match stream.message().await {
                    Ok(Some(pb::WatchEvent { event: Some(e) })) => e,
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                };
                let Some(feed) = feed.upgrade() else { return };
                let item = match event {
                    pb::watch_event::Event::Changes(set) => {
                        position = Some(set.version);
                        let mine: Vec<pb::Change> = set.changes.into_iter().filter(|c| c.namespace_id == ns).collect();
                        if mine.iter().any(|c| c.kind == pb::ChangeKind::NamespaceDeleted as i32) {
                            Item::Resync(set.version)
                        } else if mine.is_empty() {
                            Item::Progress(set.version)
                        } else {
                            Item::Set(set.version, Arc::new(mine))
                        }
                    }
                    pb::watch_event::Event::Progress(p) => {
                        position = Some(p.applied_version);
                        Item::Progress(p.applied_version)
                    }
                    pb::watch_event::Event::Resync(r) => {
                        position = Some(r.current_version);
                        Item::Resync(r.current_version)
                    }
                };
                record(&feed, &item);
                let _ = tx.send(Arc::new(item));
            },
            Err(e) => tracing::debug!(error = %e, ns, "cannot open the change feed yet"),
        }
    }
}

/// Keeps `item` in the feed's window.
fn record(feed: &Feed, item: &Item) {
    let mut w = feed.window();
    if !w.known {
        // Until now the window only knew it started at "now"; a watcher resuming from an
        // older version must be told to resync, not given the changes from here on.
        w.floor = item.start();
        w.position = w.floor;
    }
    match item {
        Item::Set(v, changes) => {
            let bytes: usize = changes.iter().map(|c| c.key.len() + c.value.len() + 64).sum();
            w.sets.push_back((*v, changes.clone(), bytes));
            w.bytes += bytes;
            while w.bytes > WINDOW_BYTES {
                let Some((old, _, b)) = w.sets.pop_front() else { break };
                w.bytes -= b;
                w.floor = old;
            }
            w.position = *v;
            w.known = true;
        }
        Item::Progress(v) => {
            w.position = w.position.max(*v);
            w.known = true;
        }
        Item::Resync(v) => {
            w.sets.clear();
            w.bytes = 0;
            w.floor = *v;
            w.position = *v;
            w.known = true;
        }
    }
}

/// Which keys a watcher wants.
struct Filter {
    keys: HashSet<String>,
    prefix: String,
}

impl Filter {
    fn wants(&self, key: &str) -> bool {
        (self.keys.is_empty() || self.keys.contains(key)) && key.starts_with(&self.prefix)
    }
}

fn event(e: api::watch_event::Event) -> Result<api::WatchEvent, Status> {
    Ok(api::WatchEvent { event: Some(e) })
}

/// Sends one change set's changes a watcher wants; false once the watcher is gone.
async fn send_set(out: &mpsc::Sender<Result<api::WatchEvent, Status>>, f: &Filter, v: u64, set: &[pb::Change]) -> bool {
    for c in set.iter().filter(|c| f.wants(&c.key)) {
        let kind = match pb::ChangeKind::try_from(c.kind) {
            Ok(pb::ChangeKind::Put) => api::WatchKind::Put,
            Ok(pb::ChangeKind::Expired) => api::WatchKind::Expired,
            _ => api::WatchKind::Delete,
        };
        let change = api::WatchChange {
            key: c.key.clone(),
            kind: kind as i32,
            version: v,
            value: c.value.clone(),
            value_omitted: c.value_omitted,
            metadata_json: c.metadata_json.clone(),
            expiration: c.expiration,
        };
        if out.send(event(api::watch_event::Event::Change(change))).await.is_err() {
            return false;
        }
    }
    true
}

/// Serves one watcher: the window from its version, then the live fan-out.
async fn serve(feed: Arc<Feed>, req: api::WatchRequest, out: mpsc::Sender<Result<api::WatchEvent, Status>>) {
    let filter = Filter { keys: req.keys.into_iter().collect(), prefix: req.prefix };
    let mut live = feed.tx.subscribe();
    let (replay, mut floor, mut position, known) = {
        let w = feed.window();
        (w.sets.iter().map(|(v, s, _)| (*v, s.clone())).collect::<Vec<_>>(), w.floor, w.position, w.known)
    };
    let mut pending = None;
    if !known {
        // A feed just opened "from now": its first event names where now is, and where
        // the feed begins for a watcher resuming from a version.
        let first = tokio::select! {
            item = live.recv() => item,
            // Gone before the feed said anything (its upstream may be unreachable): let go
            // of the feed, so it closes with its last watcher.
            _ = out.closed() => return,
        };
        match first {
            Ok(item) => {
                (floor, position) = (item.start(), item.start());
                pending = Some(item);
            }
            Err(_) => return,
        }
    }
    let mut last = req.from_version.unwrap_or(position);
    if last < floor {
        let _ = out.send(event(api::watch_event::Event::Resync(position))).await;
        return;
    }
    let from = last;
    for (v, set) in replay.iter().filter(|(v, _)| *v > from) {
        if !send_set(&out, &filter, *v, set).await {
            return;
        }
        last = *v;
    }
    if req.from_version.is_none() && out.send(event(api::watch_event::Event::Progress(last))).await.is_err() {
        return;
    }
    loop {
        let item = match pending.take() {
            Some(item) => Ok(item),
            None => tokio::select! {
                item = live.recv() => item,
                _ = out.closed() => return,
            },
        };
        let item = match item {
            Ok(item) => item,
            Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => {
                let _ = out.send(event(api::watch_event::Event::Resync(last))).await;
                return;
            }
        };
        match &*item {
            Item::Set(v, set) if *v > last => {
                if !send_set(&out, &filter, *v, set).await {
                    return;
                }
                last = *v;
            }
            // Passed on when it names the position already reached too: it is the heartbeat
            // that tells a watcher its stream is live and the last set it got is complete.
            Item::Progress(v) if *v >= last => {
                last = *v;
                if out.send(event(api::watch_event::Event::Progress(last))).await.is_err() {
                    return;
                }
            }
            Item::Resync(v) => {
                let _ = out.send(event(api::watch_event::Event::Resync(*v))).await;
                return;
            }
            _ => {}
        }
    }
}
