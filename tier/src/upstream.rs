//! The tier above, as a list of endpoints tried in turn, and the typed store API calls a
//! caching tier makes on it.
//!
//! Every call runs within the deadline of the call being served (or a default budget): what
//! is left of it is split evenly over the endpoints not yet tried, so a hung endpoint leaves
//! time to fail over to the next, and each attempt says its share upstream in
//! `grpc-timeout`, so the tier above splits it again among its own endpoints and nobody works
//! for an answer nobody waits for. An endpoint that cannot serve (unreachable, overloaded,
//! not fresh enough) is skipped, and the one that answered is preferred from then on; the edge's push stream follows the
//! preferred endpoint (`watch_preferred`), so its reads, its tracking and its pushes are
//! always on the same regional tier.

use crate::engine::{Answer, Fetch, ReadSpec};
use crate::wire::{as_of, value_of};
use kv_common::client::{is_unreachable, store_client, StoreClient};
use kv_common::{call, time};
use kv_proto::store::v1 as pb;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// Endpoints of the tier above.
pub struct Upstream {
    endpoints: Vec<(String, Channel)>,
    preferred: watch::Sender<usize>,
    default_budget: Duration,
}

/// `msg` as a request that may take at most `timeout` upstream.
fn within<T>(msg: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(timeout);
    r
}

impl Upstream {
    /// Lazily connecting channels to `addrs` (`host:port`) of nodes of a role in `above`
    /// (checked over TLS), each connecting within `connect_timeout`; a call made outside any
    /// served call gets `default_budget`.
    pub fn new(
        addrs: &[String],
        above: &'static [kv_common::tls::Role],
        connect_timeout: Duration,
        default_budget: Duration,
    ) -> anyhow::Result<Upstream> {
        anyhow::ensure!(!addrs.is_empty(), "at least one upstream endpoint is needed");
        let endpoints = addrs
            .iter()
            .map(|a| {
                let ep = Endpoint::from_shared(format!("http://{a}"))?
                    .connect_timeout(connect_timeout)
                    .tcp_nodelay(true)
                    .http2_adaptive_window(true)
                    .http2_keep_alive_interval(Duration::from_secs(2))
                    .keep_alive_timeout(Duration::from_secs(4))
                    .keep_alive_while_idle(true);
                Ok((a.clone(), kv_common::client::lazy_channel(ep, above)))
            })
            .collect::<Result<_, tonic::transport::Error>>()?;
        Ok(Upstream { endpoints, preferred: watch::Sender::new(0), default_budget })
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Endpoint `i` (modulo their number): its address and channel.
    pub fn endpoint(&self, i: usize) -> (&str, Channel) {
        let (addr, ch) = &self.endpoints[i % self.endpoints.len()];
        (addr, ch.clone())
    }

    /// The endpoint calls start with.
    pub fn preferred(&self) -> usize {
        *self.preferred.borrow()
    }

    /// Makes endpoint `i` the one calls start with.
    pub fn prefer(&self, i: usize) {
        self.preferred.send_if_modified(|p| std::mem::replace(p, i % self.endpoints.len()) != *p);
    }

    /// Changes of the preferred endpoint.
    pub fn watch_preferred(&self) -> watch::Receiver<usize> {
        self.preferred.subscribe()
    }

    /// Runs `call` on each endpoint in turn, from the preferred one, until one answers or
    /// the budget is spent. Errors of the contract are final.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(StoreClient, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = call::deadline_or(self.default_budget);
        let start = self.preferred();
        let mut last = Status::unavailable("no upstream endpoint answered in time");
        let n = self.endpoints.len();
        for i in 0..n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let idx = (start + i) % n;
            let (addr, ch) = &self.endpoints[idx];
            let attempt = left / u32::try_from(n - i).unwrap_or(1);
            let outcome = match tokio::time::timeout(attempt, call(store_client(ch.clone()), attempt)).await {
                Ok(r) => r.map(tonic::Response::into_inner),
                Err(_) => Err(Status::deadline_exceeded(format!("{addr} did not answer within {attempt:?}"))),
            };
            match outcome {
                Err(s) if is_unreachable(&s) => {
                    tracing::debug!(upstream = %addr, error = %s, "upstream cannot serve; trying the next");
                    last = Status::unavailable(format!("upstream unavailable: {}", s.message()));
                }
                other => {
                    self.prefer(idx);
                    return other;
                }
            }
        }
        Err(last)
    }

    /// The change feed from `req`'s position, from the first endpoint (from the preferred
    /// one) that opens it. The stream has no deadline: it lives until either side ends it.
    pub async fn watch(&self, req: pb::WatchRequest) -> Result<tonic::Streaming<pb::WatchEvent>, Status> {
        let n = self.endpoints.len();
        let mut last = Status::unavailable("no upstream endpoint opened the feed");
        for i in 0..n {
            let idx = (self.preferred() + i) % n;
            let (addr, ch) = &self.endpoints[idx];
            let opened = tokio::time::timeout(self.default_budget, store_client(ch.clone()).watch(req)).await;
            match opened {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) if !is_unreachable(&s) => return Err(s),
                Ok(Err(s)) => last = Status::unavailable(format!("{addr}: {}", s.message())),
                Err(_) => last = Status::unavailable(format!("{addr} did not open the feed in time")),
            }
        }
        Err(last)
    }

    /// A version every write acknowledged before the returned instant is at or below.
    pub async fn read_index(&self) -> Result<(u64, Instant), Status> {
        let (sent, sent_ms) = (Instant::now(), time::now_ms());
        let r = self
            .call(|mut c, t| {
                let r = within(pb::ReadIndexRequest {}, t);
                async move { c.read_index(r).await }
            })
            .await?;
        time::learn_central_clock(sent_ms, r.central_time_ms);
        Ok((r.version, as_of(sent, r.age_ms)))
    }
}

/// Store API calls passed up as they are, each within the share of the budget `call` gives it.
macro_rules! pass_up {
    ($(fn $name:ident($req:ty) -> $resp:ty;)*) => {
        impl Upstream {
            $(pub async fn $name(&self, req: $req) -> Result<$resp, Status> {
                self.call(|mut c, t| {
                    let r = within(req.clone(), t);
                    async move { c.$name(r).await }
                })
                .await
            })*
        }
    };
}

pass_up! {
    fn get(pb::GetRequest) -> pb::GetResponse;
    fn batch_get(pb::BatchGetRequest) -> pb::BatchGetResponse;
    fn write(pb::WriteRequest) -> pb::WriteResponse;
    fn list(pb::ListRequest) -> pb::ListResponse;
    fn create_namespace(pb::CreateNamespaceRequest) -> pb::Namespace;
    fn list_namespaces(pb::ListNamespacesRequest) -> pb::ListNamespacesResponse;
    fn get_namespace(pb::NamespaceRef) -> pb::Namespace;
    fn rename_namespace(pb::RenameNamespaceRequest) -> pb::Namespace;
    fn delete_namespace(pb::NamespaceRef) -> pb::DeleteNamespaceResponse;
    fn create_token(pb::CreateTokenRequest) -> pb::TokenInfo;
    fn list_tokens(pb::ListTokensRequest) -> pb::ListTokensResponse;
    fn revoke_token(pb::RevokeTokenRequest) -> pb::RevokeTokenResponse;
    fn lookup_token(pb::LookupTokenRequest) -> pb::LookupTokenResponse;
}

fn max_age_ms(spec: &ReadSpec) -> u32 {
    u32::try_from(spec.max_age.as_millis()).unwrap_or(u32::MAX).max(1)
}

impl Fetch for Upstream {
    async fn read(&self, ns: &str, keys: Vec<String>, spec: &ReadSpec) -> Result<Vec<Answer>, Status> {
        let (sent, sent_ms) = (Instant::now(), time::now_ms());
        if let [key] = keys.as_slice() {
            let req = pb::GetRequest {
                namespace_id: ns.to_owned(),
                key: key.clone(),
                min_version: spec.min_version,
                track: spec.track.clone(),
                max_age_ms: max_age_ms(spec),
                linearizable: spec.linearizable,
                ahead: spec.ahead,
            };
            let r = self
                .call(|mut c, t| {
                    let r = within(req.clone(), t);
                    async move { c.get(r).await }
                })
                .await?;
            time::learn_central_clock(sent_ms, r.central_time_ms);
            let version = r.entry.as_ref().map_or(r.version, |e| e.version);
            let answer = Answer {
                value: r.entry.as_ref().map(value_of),
                version,
                as_of: as_of(sent, r.age_ms),
                stale: r.stale,
                served_by: r.served_by(),
            };
            return Ok(vec![answer]);
        }
        let req = pb::BatchGetRequest {
            namespace_id: ns.to_owned(),
            keys,
            min_version: spec.min_version,
            track: spec.track.clone(),
            max_age_ms: max_age_ms(spec),
            linearizable: spec.linearizable,
            ahead: spec.ahead,
        };
        let n = req.keys.len();
        let r = self
            .call(|mut c, t| {
                let r = within(req.clone(), t);
                async move { c.batch_get(r).await }
            })
            .await?;
        time::learn_central_clock(sent_ms, r.central_time_ms);
        if r.results.len() != n {
            return Err(Status::internal(format!("upstream answered {} keys of {n}", r.results.len())));
        }
        let at = as_of(sent, r.age_ms);
        Ok(r.results
            .into_iter()
            .map(|ke| Answer {
                value: ke.entry.as_ref().map(value_of),
                version: ke.entry.as_ref().map_or(ke.version, |e| e.version),
                as_of: at,
                stale: r.stale,
                served_by: ke.served_by(),
            })
            .collect())
    }
}
