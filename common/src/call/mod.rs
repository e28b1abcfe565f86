//! The context of the gRPC call a node is serving: its trace and its deadline.
//!
//! A server layer (`CallLayer`) runs every call in the caller's trace, as its `traceparent`
//! names it (or a new trace when none came), and in a span of it when traces are exported;
//! it notes the caller's deadline from `grpc-timeout`, or a default budget when the caller
//! set none. It also bounds the calls a node serves at once: past `max_in_flight`, a call is
//! shed at once with UNAVAILABLE ("retry elsewhere or later"), and a call whose request would
//! take the request bytes held by all calls in flight past their bound fails the same way,
//! so overload never turns into unbounded memory or latency. Every call the node makes
//! upstream while serving it goes through `outgoing`, which carries both on: the trace with
//! this node's call as the parent, and the deadline as what is left of it. A request is so
//! followed from the edge's log to the central store's, and one budget bounds all the work
//! done for it, however many tiers and retries it crosses.

pub mod context;

use context::CALL_SPAN_TARGET;
pub use context::{deadline_or, remaining_or, spawn, spawn_in, Call, Serving};

use crate::trace::TraceContext;
use futures::future::{Either, Ready};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::task::futures::TaskLocalFuture;
use tonic::body::BoxBody;
use tonic::codegen::http;
use tracing::instrument::Instrumented;
use tracing::Instrument;

/// What a call shed for overload is told.
pub const OVERLOADED: &str = "this node is overloaded; retry elsewhere or later";
/// What a call that outlived its deadline is told.
pub const LATE: &str = "the call's deadline passed before it was answered";

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// gRPC's deadline header.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` value (milliseconds, rounded down; seconds when long).
pub fn format_grpc_timeout(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", d.as_secs().min(99_999_999))
    }
}

/// The signature of `outgoing`, for naming intercepted clients.
pub type Outgoing = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

/// A client interceptor: hands the served call's trace and what is left of its deadline on
/// to the next tier, with this node's credential (`auth::set_node_token`). (Its shape is
/// tonic's interceptor signature, `Status` and all.)
#[allow(clippy::result_large_err)]
pub fn outgoing(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    if let Some(token) = crate::auth::node_token() {
        req.metadata_mut().insert(crate::auth::AUTHORIZATION, token.clone());
    }
    if let Some(call) = Call::current() {
        if let Ok(v) = call.trace.header().parse() {
            req.metadata_mut().insert(TRACEPARENT, v);
        }
        let left = call.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(tonic::Status::deadline_exceeded("the call's deadline has passed"));
        }
        if req.metadata().get(GRPC_TIMEOUT).is_none() {
            if let Ok(v) = format_grpc_timeout(left).parse() {
                req.metadata_mut().insert(GRPC_TIMEOUT, v);
            }
        }
    }
    Ok(req)
}

/// A server layer: each call runs in the caller's trace (in a span of it when traces are
/// exported), with the caller's deadline, or `default_budget` when the caller gave none; at
/// most `max_in_flight` calls are served at once (see the module docs).
#[derive(Debug, Clone)]
pub struct CallLayer {
    default_budget: Duration,
    max_in_flight: usize,
    in_flight: Arc<AtomicUsize>,
    max_request_bytes: usize,
    request_bytes: Arc<AtomicUsize>,
}

/// Request bytes the gRPC calls in flight may hold at once, unless set otherwise: well above
/// one largest message (110 MB), far below the memory of the smallest machine we run on.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1 << 30;

impl CallLayer {
    pub fn new(default_budget: Duration, max_in_flight: usize) -> Self {
        CallLayer {
            default_budget,
            max_in_flight,
            in_flight: Arc::default(),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            request_bytes: Arc::default(),
        }
    }

    /// Bounds the request bytes that gRPC calls in flight hold together: a call whose
    /// request would pass the bound fails with UNAVAILABLE, so many large requests at once
    /// cannot exhaust memory (the count bound alone allows `max_in_flight` of the largest).
    pub fn with_max_request_bytes(mut self, bytes: usize) -> Self {
        self.max_request_bytes = bytes;
        self
    }

    /// The calls being served now, as Prometheus text for the node's `/metrics`.
    pub fn render_metrics(&self) -> String {
        let n = self.in_flight.load(Ordering::Acquire);
        format!(
            "# HELP kv_calls_in_flight Calls being served now (gRPC and REST).\n# TYPE kv_calls_in_flight gauge\nkv_calls_in_flight {n}\n"
        )
    }

    /// Admits one call to be served, or `None` when `max_in_flight` calls already are. The
    /// gRPC server and the REST gateway admit through one layer, so one bound covers both.
    /// `api` and `method` name the call in its log lines (and its exported span);
    /// `traceparent` and `budget` are what the caller sent (the default budget when it sent
    /// none).
    pub fn admit(
        &self,
        api: &'static str,
        method: &str,
        traceparent: Option<&str>,
        budget: Option<Duration>,
    ) -> Option<Admitted> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let held = Arc::new(Held {
            total: self.request_bytes.clone(),
            max: self.max_request_bytes,
            mine: AtomicUsize::new(0),
        });
        let slot = Slot { in_flight: self.in_flight.clone(), held };
        let parent = traceparent.and_then(TraceContext::parse);
        let budget = budget.unwrap_or(self.default_budget);
        // A span only when traces are exported (the log names the call from its context,
        // see `context`); the calls this one makes then name the exported span as their
        // parent.
        let (span, trace) = if crate::telemetry::exporting() {
            let span = tracing::info_span!(target: CALL_SPAN_TARGET, "call", api, method = %method);
            let trace = crate::telemetry::link(&span, parent.as_ref())
                .unwrap_or_else(|| TraceContext::child_of(parent.as_ref()));
            (span, trace)
        } else {
            (tracing::Span::none(), TraceContext::child_of(parent.as_ref()))
        };
        let serving = Serving {
            call: Call { trace, deadline: Instant::now() + budget },
            api,
            method: method.into(),
            parent: parent.map(|p| p.span_id),
        };
        if tracing::enabled!(tracing::Level::DEBUG) {
            let budget_ms = budget.as_millis() as u64;
            serving.clone().sync_scope(|| span.in_scope(|| tracing::debug!(budget_ms, "call received")));
        }
        Some(Admitted { serving, span, slot })
    }
}

/// A call admitted by `CallLayer::admit`: its context, its span (when traces are exported),
/// and its place among the calls in flight, held until it is dropped.
pub struct Admitted {
    serving: Serving,
    span: tracing::Span,
    slot: Slot,
}

impl Admitted {
    /// Runs `f` as this call: in its context and span, until its deadline (`None` past it).
    pub async fn serve<F: Future>(self, f: F) -> Option<F::Output> {
        let Admitted { serving, span, slot } = self;
        let deadline = serving.call.deadline;
        let out = tokio::time::timeout_at(deadline.into(), serving.scope(f.instrument(span))).await;
        drop(slot);
        out.ok()
    }
}

impl<S> tower_layer::Layer<S> for CallLayer {
    type Service = Served<S>;

    fn layer(&self, inner: S) -> Served<S> {
        Served { inner, layer: self.clone() }
    }
}

/// A service whose calls run under `CallLayer`.
#[derive(Debug, Clone)]
pub struct Served<S> {
    inner: S,
    layer: CallLayer,
}

/// One call's place among those in flight, and the request bytes it holds; given back when
/// the call is answered (and its request body is gone).
struct Slot {
    in_flight: Arc<AtomicUsize>,
    held: Arc<Held>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The request bytes one call holds, out of all calls' `total`.
#[derive(Debug)]
struct Held {
    total: Arc<AtomicUsize>,
    max: usize,
    mine: AtomicUsize,
}

impl Held {
    /// Takes `n` more bytes, unless that would pass the bound.
    fn take(&self, n: usize) -> bool {
        let before = self.total.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > self.max {
            self.total.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        self.mine.fetch_add(n, Ordering::AcqRel);
        true
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.total.fetch_sub(*self.mine.get_mut(), Ordering::AcqRel);
    }
}

/// A request body whose bytes count against the node's bound as they arrive.
struct Budgeted {
    inner: BoxBody,
    held: Arc<Held>,
}

impl http_body::Body for Budgeted {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            let n = frame.data_ref().map_or(0, bytes::Bytes::len);
            if !self.held.take(n) {
                return Poll::Ready(Some(Err(tonic::Status::unavailable(OVERLOADED))));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A served call's future: answered by its deadline (DEADLINE_EXCEEDED then), and holding
/// its slot until it is.
pub struct Counted<F> {
    inner: Pin<Box<tokio::time::Timeout<F>>>,
    _slot: Slot,
}

impl<F, E> Future for Counted<F>
where
    F: Future<Output = Result<http::Response<BoxBody>, E>>,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.inner.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(answer)) => Poll::Ready(answer),
            Poll::Ready(Err(_)) => {
                let late = tonic::Status::deadline_exceeded(LATE);
                Poll::Ready(Ok(late.into_http()))
            }
        }
    }
}

type Answered<S> =
    Counted<TaskLocalFuture<Serving, Instrumented<<S as tower_service::Service<http::Request<BoxBody>>>::Future>>>;

impl<S> tower_service::Service<http::Request<BoxBody>> for Served<S>
where
    S: tower_service::Service<http::Request<BoxBody>, Response = http::Response<BoxBody>>,
    S::Future: Future<Output = Result<http::Response<BoxBody>, S::Error>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, Answered<S>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<BoxBody>) -> Self::Future {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let budget = header(GRPC_TIMEOUT).and_then(parse_grpc_timeout);
        let Some(admitted) = self.layer.admit("grpc", req.uri().path(), header(TRACEPARENT), budget) else {
            let shed = tonic::Status::unavailable(OVERLOADED);
            return Either::Left(futures::future::ready(Ok(shed.into_http())));
        };
        let Admitted { serving, span, slot } = admitted;
        let held = slot.held.clone();
        let req = req.map(|inner| http_body_util::BodyExt::boxed_unsync(Budgeted { inner, held }));
        let deadline = serving.call.deadline;
        let served = serving.scope(self.inner.call(req).instrument(span));
        Either::Right(Counted { inner: Box::pin(tokio::time::timeout_at(deadline.into(), served)), _slot: slot })
    }
}

/// The gRPC server every node runs: calls under `CallLayer`, HTTP/2 flow-control windows
/// wide enough for large values over long links, and Nagle off (see `serve::incoming`).
///
/// The windows are fixed. With hyper's adaptive window (sized from the measured
/// bandwidth-delay product) a client with a few hundred calls at once on one connection
/// lost most of them to "stream closed because of a broken pipe"
/// (`tiers::four_hundred_calls_at_once_on_one_connection_are_all_served`).
pub fn server(layer: CallLayer) -> tonic::transport::Server<tower_layer::Stack<CallLayer, tower_layer::Identity>> {
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .layer(layer)
}

/// Bytes a client may send on one call before the server reads them: a 1 Gbit/s link's
/// worth over a 64 ms round trip.
const STREAM_WINDOW: u32 = 8 << 20;
/// Bytes a client may send on one connection, all calls together, before the server reads.
const CONNECTION_WINDOW: u32 = 32 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_and_format() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "123456789m", "12x", "-1m", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
        let d = Duration::from_millis(1234);
        assert_eq!(parse_grpc_timeout(&format_grpc_timeout(d)), Some(d));
        assert_eq!(format_grpc_timeout(Duration::from_secs(200_000)), "200000S");
    }

    #[tokio::test]
    async fn outgoing_calls_carry_the_trace_and_what_is_left_of_the_deadline() {
        let bare = outgoing(tonic::Request::new(())).unwrap();
        assert!(bare.metadata().get(TRACEPARENT).is_none(), "no call being served, no context");
        assert!(bare.metadata().get(GRPC_TIMEOUT).is_none());
        let call = Call { trace: TraceContext::child_of(None), deadline: Instant::now() + Duration::from_secs(2) };
        let serving = |call| Serving { call, api: "grpc", method: "/kv.v1.Kv/Get".into(), parent: None };
        let req = serving(call).scope(async { outgoing(tonic::Request::new(())).unwrap() }).await;
        let md = req.metadata();
        assert_eq!(md.get(TRACEPARENT).and_then(|v| v.to_str().ok()), Some(call.trace.header().as_str()));
        let left = md.get(GRPC_TIMEOUT).and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout).unwrap();
        assert!(left <= Duration::from_secs(2) && left > Duration::from_millis(1500), "{left:?}");

        let spent = Call { trace: call.trace, deadline: Instant::now() };
        let refused = serving(spent).scope(async { outgoing(tonic::Request::new(())) }).await;
        assert_eq!(refused.unwrap_err().code(), tonic::Code::DeadlineExceeded, "no budget, no call");
    }

    /// A service that never answers.
    #[derive(Clone)]
    struct Hangs;

    impl tower_service::Service<http::Request<BoxBody>> for Hangs {
        type Response = http::Response<BoxBody>;
        type Error = std::convert::Infallible;
        type Future = futures::future::Pending<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<BoxBody>) -> Self::Future {
            futures::future::pending()
        }
    }

    /// A service that reads its whole request, answers with the status reading ended in
    /// (OK when it read all), and holds what it read until `release` fires.
    #[derive(Clone)]
    struct Reads(tokio::sync::watch::Receiver<bool>);

    impl tower_service::Service<http::Request<BoxBody>> for Reads {
        type Response = http::Response<BoxBody>;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<BoxBody>) -> Self::Future {
            let mut release = self.0.clone();
            Box::pin(async move {
                let read = http_body_util::BodyExt::collect(req.into_body()).await;
                let status = match &read {
                    Ok(_) => tonic::Status::ok(""),
                    Err(s) => s.clone(),
                };
                let _ = release.wait_for(|r| *r).await;
                drop(read);
                Ok(status.into_http())
            })
        }
    }

    fn grpc_status(r: &http::Response<BoxBody>) -> Option<&str> {
        r.headers().get("grpc-status").and_then(|v| v.to_str().ok())
    }

    fn request(body: &'static [u8]) -> http::Request<BoxBody> {
        let body = http_body_util::Full::new(bytes::Bytes::from_static(body));
        http::Request::new(http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(
            body,
            |e| match e {},
        )))
    }

    #[tokio::test]
    async fn calls_past_the_bound_are_shed_and_every_call_ends_by_its_deadline() {
        use tower_layer::Layer;
        use tower_service::Service;
        let mut svc = CallLayer::new(Duration::from_secs(3600), 1).layer(Hangs);
        let first = svc.call(request(b""));
        let shed = svc.call(request(b"")).await.unwrap();
        assert_eq!(grpc_status(&shed), Some("14"), "the second call is shed with UNAVAILABLE");
        drop(first);
        let mut req = request(b"");
        req.headers_mut().insert(GRPC_TIMEOUT, "20m".parse().unwrap());
        let late = svc.call(req).await.unwrap();
        assert_eq!(grpc_status(&late), Some("4"), "answered DEADLINE_EXCEEDED at its deadline");
    }

    #[tokio::test]
    async fn request_bytes_in_flight_are_bounded_and_given_back_when_calls_end() {
        use tower_layer::Layer;
        use tower_service::Service;
        let (release, held) = tokio::sync::watch::channel(false);
        let layer = CallLayer::new(Duration::from_secs(3600), 100).with_max_request_bytes(10);
        let mut svc = layer.layer(Reads(held));
        let first = tokio::spawn(svc.call(request(b"123456")));
        tokio::task::yield_now().await;
        let over = svc.call(request(b"123456"));
        release.send(true).unwrap();
        assert_eq!(grpc_status(&over.await.unwrap()), Some("14"), "6 + 6 bytes pass the bound of 10");
        assert_eq!(grpc_status(&first.await.unwrap().unwrap()), Some("0"));
        let again = svc.call(request(b"1234567890")).await.unwrap();
        assert_eq!(grpc_status(&again), Some("0"), "the bytes of ended calls were given back");
    }
}
