//! W3C trace context across the tiers. Every gRPC call a node serves runs in a span tied to
//! the caller's `traceparent` (or to a new trace when the caller sent none), and every call
//! the node makes upstream while serving it carries the trace on, with this node's span as
//! the parent. A request can so be followed from the edge's log to the central store's.

use std::future::Future;
use std::task::{Context, Poll};
use tokio::task::futures::TaskLocalFuture;
use tonic::codegen::http;
use tracing::instrument::Instrumented;
use tracing::Instrument;

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

tokio::task_local! {
    /// The span of the call being served on this task.
    static CURRENT: TraceContext;
}

/// One span of a trace, as `traceparent` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub flags: u8,
}

impl TraceContext {
    /// Parses a version-00 `traceparent`; anything malformed is no context at all, as the
    /// W3C recommendation asks.
    pub fn parse(header: &str) -> Option<TraceContext> {
        let mut parts = header.trim().split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if version != "00" || parts.next().is_some() || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return None;
        }
        let ctx = TraceContext {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (ctx.trace_id != 0 && ctx.span_id != 0).then_some(ctx)
    }

    /// A new span under `parent`, or the root of a new sampled trace.
    pub fn child_of(parent: Option<&TraceContext>) -> TraceContext {
        let span_id = rand::random::<u64>().max(1);
        match parent {
            Some(p) => TraceContext { trace_id: p.trace_id, span_id, flags: p.flags },
            None => TraceContext { trace_id: rand::random::<u128>().max(1), span_id, flags: 1 },
        }
    }

    /// This span as the `traceparent` of a call it makes.
    pub fn header(&self) -> String {
        format!("00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }

    /// The span of the call this task is serving, if any.
    pub fn current() -> Option<TraceContext> {
        CURRENT.try_with(|c| *c).ok()
    }
}

/// The signature of `outgoing`, for naming intercepted clients.
pub type Outgoing = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

/// A client interceptor: hands the trace of the call being served on to the next tier.
/// (Its shape is tonic's interceptor signature, `Status` and all.)
#[allow(clippy::result_large_err)]
pub fn outgoing(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    if let Some(ctx) = TraceContext::current() {
        if let Ok(v) = ctx.header().parse() {
            req.metadata_mut().insert(TRACEPARENT, v);
        }
    }
    Ok(req)
}

/// A server layer: runs each call in its own span of the caller's trace (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> tower_layer::Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced { inner }
    }
}

/// A service whose calls run under `TraceLayer`.
#[derive(Debug, Clone)]
pub struct Traced<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for Traced<S>
where
    S: tower_service::Service<http::Request<B>>,
    S::Future: Future,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TaskLocalFuture<TraceContext, Instrumented<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let parent = req.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(TraceContext::parse);
        let ctx = TraceContext::child_of(parent.as_ref());
        let span = tracing::info_span!(
            "grpc",
            method = %req.uri().path(),
            trace_id = %format_args!("{:032x}", ctx.trace_id),
            span_id = %format_args!("{:016x}", ctx.span_id),
            parent_id = %parent.map(|p| format!("{:016x}", p.span_id)).unwrap_or_default(),
        );
        span.in_scope(|| tracing::debug!("call received"));
        CURRENT.scope(ctx, self.inner.call(req).instrument(span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_well_formed_headers() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::parse(h).unwrap();
        assert_eq!(ctx.header(), h);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_its_own_span() {
        let parent = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        let child = TraceContext::child_of(Some(&parent));
        assert_eq!((child.trace_id, child.flags), (parent.trace_id, 0));
        assert_ne!(child.span_id, parent.span_id);
        let root = TraceContext::child_of(None);
        assert_ne!(root.trace_id, parent.trace_id);
        assert_eq!(TraceContext::parse(&root.header()), Some(root));
    }

    #[tokio::test]
    async fn outgoing_calls_carry_the_served_call_span() {
        let bare = outgoing(tonic::Request::new(())).unwrap();
        assert!(bare.metadata().get(TRACEPARENT).is_none(), "no call being served, no context");
        let ctx = TraceContext::child_of(None);
        let req = CURRENT.scope(ctx, async { outgoing(tonic::Request::new(())).unwrap() }).await;
        assert_eq!(req.metadata().get(TRACEPARENT).and_then(|v| v.to_str().ok()), Some(ctx.header().as_str()));
    }
}
