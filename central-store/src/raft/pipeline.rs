//! Replication that starts when the leader writes entries, not when its own fsync ends.
//!
//! openraft 0.9's core waits for the leader's log flush before it runs its next command, and
//! replicating the entries is that next command: every write paid the leader's fsync, then
//! a follower's round trip and fsync, one after the other. Raft lets a leader write its log
//! in parallel with replicating it (Ongaro's thesis, 10.2.1), and etcd does. So the log store
//! hands every entry this leader writes in its own term to the pipeline, which sends it at
//! once to each follower a replication stream is open to: the AppendEntries openraft itself
//! would send (the leader's vote, the entry before as `prev_log_id`, read from the leader's
//! log, and the commit index), encoded once.
//!
//! When openraft's stream later sends those entries, it takes the early send's answer
//! instead if that answer is a success, and sends them itself otherwise. An early success is
//! a fact about the follower's durable log: the follower holds the leader's log up to the
//! send's last entry. Whenever the leader counts it, it is true, because an entry of the
//! current term that a majority stored is in every later leader's log (the commit rule
//! needs no more). The early sends are hints, never the only path: a follower that fell
//! behind, or an early send that reached the follower before its predecessor did, only costs
//! the stream the send it would have made anyway. Early sends go to a follower only when
//! they continue what it is known to hold, so one that is behind is left to its stream.
//!
//! One thing changes for good: a follower may now hold an entry the leader never synced
//! (the leader lost power before its fsync). A leader that restarted and resumed its term
//! would give that entry's log id to another entry, so it never resumes it: it comes back
//! having voted for itself, and leads again only after an election (`LogStore::read_vote`).

use super::envelope;
use super::rpc::{call_sealed, Landed, Rpc};
use crate::storage::log_store::LogObserver;
use crate::types::{Entry, LogId, NodeId, TypeConfig, Vote};
use futures::future::{BoxFuture, FutureExt, Shared};
use kv_common::client::NodeChannel;
use kv_proto::raft::v1::raft_transport_client::RaftTransportClient;
use openraft::raft::AppendEntriesRequest;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// Early sends waiting for their stream, per follower, at most.
const MAX_WAITING: usize = 8;
/// An append larger than this goes the usual way only (an early send that is not taken
/// would send its bytes twice).
const MAX_EARLY_BYTES: u64 = 1 << 20;
/// The deadline of an early send: small, so a round trip and the follower's fsync.
const EARLY_DEADLINE: Duration = Duration::from_secs(2);

/// The leader's early sends, by follower.
pub struct Pipeline {
    me: NodeId,
    followers: Mutex<BTreeMap<NodeId, Follower>>,
}

struct Follower {
    client: RaftTransportClient<NodeChannel>,
    /// Replication streams that registered this follower (see `Pipeline::confirmed`).
    streams: usize,
    /// Early sends not yet taken by the stream, in log order.
    waiting: VecDeque<Early>,
    /// The end of what the follower holds or was sent early: an early send goes only when it
    /// continues this chain, so a follower that is behind gets none (each would fail, and
    /// hold up its stream) until its stream has brought it up to the leader's last entry.
    /// `None` after an early send failed, until the stream confirms again.
    tail: Option<LogId>,
}

struct Early {
    vote: Vote,
    last: LogId,
    answer: Shared<BoxFuture<'static, Landed>>,
}

impl Pipeline {
    pub fn new(me: NodeId) -> Self {
        Pipeline { me, followers: Mutex::new(BTreeMap::new()) }
    }

    fn followers(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Follower>> {
        self.followers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A replication stream's connection to `target` saw the follower hold the leader's log
    /// up to `held`: it registers the follower once (`registered` remembers it), and early
    /// sends resume from there.
    pub fn confirmed(
        &self,
        target: NodeId,
        client: &RaftTransportClient<NodeChannel>,
        registered: &mut bool,
        held: LogId,
    ) {
        let mut followers = self.followers();
        let f = followers.entry(target).or_insert_with(|| Follower {
            client: client.clone(),
            streams: 0,
            waiting: VecDeque::new(),
            tail: None,
        });
        if !*registered {
            *registered = true;
            f.streams += 1;
        }
        // The stream's newest connection knows the follower's current address.
        f.client = client.clone();
        // A tail of another term (this node led before) says nothing about this one.
        if f.tail.is_none_or(|t| t.index < held.index || t.leader_id != held.leader_id) {
            f.tail = Some(held);
        }
    }

    /// A registered connection is gone (its stream ended): its follower gets no more early
    /// sends once no stream uses it.
    pub fn left(&self, target: NodeId) {
        let mut followers = self.followers();
        if let Some(f) = followers.get_mut(&target) {
            f.streams = f.streams.saturating_sub(1);
            if f.streams == 0 {
                followers.remove(&target);
            }
        }
    }

    /// Whether an early send already holds a successful answer to `rpc` (entries for
    /// `target`), waiting for it if it is still under way.
    pub async fn answered(&self, target: NodeId, rpc: &AppendEntriesRequest<TypeConfig>) -> bool {
        let Some(want) = rpc.entries.last().map(|e| e.log_id) else { return false };
        let answer = {
            let mut followers = self.followers();
            let Some(f) = followers.get_mut(&target) else { return false };
            // Sends that end before `want` are of no more use (the stream asks for more now),
            // nor are those of another vote (this node led before, or leads again).
            while f.waiting.front().is_some_and(|e| e.last.index < want.index || e.vote != rpc.vote) {
                f.waiting.pop_front();
            }
            match f.waiting.front() {
                Some(e) if e.last.leader_id == want.leader_id => e.answer.clone(),
                _ => return false,
            }
        };
        let success = matches!(answer.await, Landed::Success);
        if !success {
            if let Some(f) = self.followers().get_mut(&target) {
                f.tail = None;
                f.waiting.clear();
            }
        }
        success
    }
}

impl LogObserver for Pipeline {
    fn leads(&self, vote: &Vote) -> bool {
        vote.is_committed() && vote.leader_id.node_id == self.me
    }

    fn written(&self, vote: Vote, prev: Option<LogId>, entries: Vec<Entry>, committed: Option<LogId>) {
        let Some(last) = entries.last().map(|e| e.log_id) else { return };
        let mut followers = self.followers();
        let continues = |f: &Follower| f.tail.is_some() && f.tail == prev && f.waiting.len() < MAX_WAITING;
        if !followers.values().any(continues) {
            return;
        }
        let bytes =
            entries.iter().map(|e| bincode::serialized_size(e).unwrap_or(u64::MAX)).fold(0u64, u64::saturating_add);
        if bytes > MAX_EARLY_BYTES {
            return;
        }
        let rpc: AppendEntriesRequest<TypeConfig> =
            AppendEntriesRequest { vote, prev_log_id: prev, entries, leader_commit: committed };
        let Ok(sealed) = envelope::seal(&rpc) else { return };
        for (&target, f) in followers.iter_mut() {
            if !continues(f) {
                continue;
            }
            let (mut client, sealed) = (f.client.clone(), sealed.clone());
            let task =
                tokio::spawn(
                    async move { call_sealed(&mut client, target, Rpc::Append, sealed, EARLY_DEADLINE).await },
                );
            let answer = async move {
                Landed::from_reply(task.await.unwrap_or_else(|e| {
                    Err(openraft::error::RPCError::Network(openraft::error::NetworkError::new(&std::io::Error::other(
                        e,
                    ))))
                }))
            }
            .boxed()
            .shared();
            f.waiting.push_back(Early { vote, last, answer });
            f.tail = Some(last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_proto::raft::v1::raft_transport_server::{RaftTransport, RaftTransportServer};
    use kv_proto::raft::v1::{RaftMessage, ReadIndexReply, ReadIndexRequest};
    use openraft::entry::RaftEntry;
    use openraft::raft::AppendEntriesResponse;
    use openraft::CommittedLeaderId;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use tonic::{Request, Response, Status};

    /// A follower that counts the appends it gets and answers each with success, or with
    /// a conflict once told to.
    #[derive(Clone, Default)]
    struct Follower {
        appends: Arc<AtomicUsize>,
        conflicts: Arc<AtomicBool>,
    }

    #[tonic::async_trait]
    impl RaftTransport for Follower {
        async fn append_entries(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
            self.appends.fetch_add(1, Ordering::SeqCst);
            let answer: Result<AppendEntriesResponse<NodeId>, openraft::error::RaftError<NodeId>> =
                Ok(if self.conflicts.load(Ordering::SeqCst) {
                    AppendEntriesResponse::Conflict
                } else {
                    AppendEntriesResponse::Success
                });
            envelope::seal(&answer).map(Response::new).map_err(|e| Status::internal(e.to_string()))
        }
        async fn vote(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
            Err(Status::unimplemented("vote"))
        }
        async fn install_snapshot(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
            Err(Status::unimplemented("install_snapshot"))
        }
        async fn read_index(&self, _: Request<ReadIndexRequest>) -> Result<Response<ReadIndexReply>, Status> {
            Err(Status::unimplemented("read_index"))
        }
    }

    async fn follower() -> (Follower, RaftTransportClient<NodeChannel>) {
        let f = Follower::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tonic::transport::Server::builder().add_service(RaftTransportServer::new(f.clone()));
        tokio::spawn(server.serve_with_incoming(incoming));
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
        (f, RaftTransportClient::new(kv_common::client::node_channel(ch)))
    }

    fn id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn entry(index: u64) -> Entry {
        Entry::new_blank(id(index))
    }

    fn ask(vote: Vote, last: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest { vote, prev_log_id: Some(id(last - 1)), entries: vec![entry(last)], leader_commit: None }
    }

    /// Waits until the follower got `n` appends (an early send not taken still lands).
    async fn delivered(f: &Follower, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while f.appends.load(Ordering::SeqCst) < n {
            assert!(std::time::Instant::now() < deadline, "the follower got no early send");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn early_sends_continue_what_the_follower_holds_and_answer_the_stream_only_when_they_succeeded() {
        let leader = Vote::new_committed(1, 1);
        let pipeline = Pipeline::new(1);
        let (f, client) = follower().await;
        let mut registered = false;

        // Nothing goes to a follower no stream has confirmed.
        pipeline.written(leader, Some(id(5)), vec![entry(6)], None);
        assert!(!pipeline.answered(2, &ask(leader, 6)).await);
        assert_eq!(f.appends.load(Ordering::SeqCst), 0);

        // Confirmed up to 5: entry 6 goes at once, and its success answers the stream.
        pipeline.confirmed(2, &client, &mut registered, id(5));
        pipeline.written(leader, Some(id(5)), vec![entry(6)], None);
        assert!(pipeline.answered(2, &ask(leader, 6)).await);
        assert_eq!(f.appends.load(Ordering::SeqCst), 1);
        // Not under another vote.
        pipeline.written(leader, Some(id(6)), vec![entry(7)], None);
        assert!(!pipeline.answered(2, &ask(Vote::new_committed(2, 1), 7)).await);
        delivered(&f, 2).await;

        // Entries that do not continue the chain are left to the stream.
        pipeline.written(leader, Some(id(9)), vec![entry(10)], None);
        assert!(!pipeline.answered(2, &ask(leader, 10)).await);
        assert_eq!(f.appends.load(Ordering::SeqCst), 2);

        // A refused early send is not taken, and breaks the chain until the stream confirms.
        pipeline.confirmed(2, &client, &mut registered, id(10));
        f.conflicts.store(true, Ordering::SeqCst);
        pipeline.written(leader, Some(id(10)), vec![entry(11)], None);
        assert!(!pipeline.answered(2, &ask(leader, 11)).await);
        pipeline.written(leader, Some(id(11)), vec![entry(12)], None);
        assert_eq!(f.appends.load(Ordering::SeqCst), 3);

        // Once no stream uses the follower, it gets nothing.
        f.conflicts.store(false, Ordering::SeqCst);
        pipeline.confirmed(2, &client, &mut registered, id(12));
        pipeline.left(2);
        pipeline.written(leader, Some(id(12)), vec![entry(13)], None);
        assert!(!pipeline.answered(2, &ask(leader, 13)).await);
        assert_eq!(f.appends.load(Ordering::SeqCst), 3);
    }
}
