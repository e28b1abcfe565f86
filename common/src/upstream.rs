//! The next tier up, as a list of endpoints tried in turn: a call that finds one endpoint
//! unreachable moves on to the next, and the one that answered is tried first next time.

use crate::trace;
use kv_proto::store::v1::central_store_client::CentralStoreClient;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Largest message between tiers: a bulk write of 100 MB plus framing.
pub const MAX_MESSAGE_BYTES: usize = 110 << 20;

/// A store API client of the tier above that hands on the trace of the call being served.
pub type StoreClient = CentralStoreClient<InterceptedService<Channel, trace::Outgoing>>;

/// A store API client on `ch`, taking messages as large as the contract allows.
pub fn store_client(ch: Channel) -> StoreClient {
    CentralStoreClient::with_interceptor(ch, trace::outgoing as trace::Outgoing)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Calls store API `method` with the request `make` builds (again for each attempt) on the
/// first endpoint of `upstream` that answers.
#[macro_export]
macro_rules! store_call {
    ($upstream:expr, $method:ident, $make:expr) => {
        $upstream.call(|ch| {
            let request = $make;
            async move { $crate::upstream::store_client(ch).$method(request).await }
        })
    };
}

/// Endpoints of one upstream tier.
pub struct Upstream {
    channels: Vec<(String, Channel)>,
    preferred: AtomicUsize,
    timeout: Duration,
}

/// Whether an error means "this endpoint cannot serve; another may".
pub fn is_unreachable(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown)
        && crate::error::http_status_of(s).is_none_or(|h| h == 503)
}

impl Upstream {
    /// Lazily connecting channels to `addrs` (`host:port`); each unary call gets `timeout`.
    pub fn new(addrs: &[String], timeout: Duration) -> anyhow::Result<Upstream> {
        anyhow::ensure!(!addrs.is_empty(), "at least one upstream endpoint is needed");
        let channels = addrs
            .iter()
            .map(|a| {
                let ep = Endpoint::from_shared(format!("http://{a}"))?
                    .connect_timeout(timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .keep_alive_while_idle(true);
                Ok((a.clone(), ep.connect_lazy()))
            })
            .collect::<Result<_, tonic::transport::Error>>()?;
        Ok(Upstream { channels, preferred: AtomicUsize::new(0), timeout })
    }

    /// Runs `call` against each endpoint in turn, from the preferred one, until one answers.
    /// Errors that come from the contract (a bad key, an unknown namespace) are final.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let n = self.channels.len();
        if n == 0 {
            return Err(Status::unavailable("no upstream endpoint configured"));
        }
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last = Status::unavailable("no upstream endpoint answered");
        for i in 0..n {
            let idx = (start + i) % n;
            let (addr, ch) = &self.channels[idx];
            let outcome = match tokio::time::timeout(self.timeout, call(ch.clone())).await {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded(format!("{addr} did not answer in time"))),
            };
            match outcome {
                Err(s) if is_unreachable(&s) => {
                    tracing::debug!(upstream = %addr, error = %s, "upstream unreachable, trying the next");
                    last = Status::unavailable(format!("upstream unavailable: {}", s.message()));
                }
                other => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return other;
                }
            }
        }
        Err(last)
    }

    /// The endpoint to open a long-lived stream on after `failures` failed attempts.
    pub fn stream_channel(&self, failures: usize) -> (&str, Channel) {
        let idx = (self.preferred.load(Ordering::Relaxed) + failures) % self.channels.len().max(1);
        let (addr, ch) = &self.channels[idx];
        (addr, ch.clone())
    }
}
