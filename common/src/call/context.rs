//! The call a task is serving, kept in a task-local: what it hands on to the calls it makes
//! (its trace and deadline) and what names it in the node's log lines.
//!
//! A log line names its call from here, when it is written (`crate::log_line`), not from a
//! span's fields: the log layer formats a span's fields when the span is made, whether or
//! not a line is ever logged in it, and on a hot read that cost more than the cache did.

use crate::trace::TraceContext;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::futures::TaskLocalFuture;
use tracing::Instrument;

/// The target of a served call's span (made only when traces are exported), which log
/// lines leave out: they name the call from here.
pub const CALL_SPAN_TARGET: &str = "kv_common::call";

/// What a served call hands on to the calls it makes.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub trace: TraceContext,
    pub deadline: Instant,
}

/// A call being served: its context, and what its log lines call it.
#[derive(Debug, Clone)]
pub struct Serving {
    pub call: Call,
    /// `grpc` or `rest`.
    pub api: &'static str,
    /// The gRPC method's path, or the HTTP method and path.
    pub method: Arc<str>,
    /// The caller's span, when the caller named one.
    pub parent: Option<u64>,
}

tokio::task_local! {
    static CURRENT: Serving;
}

impl Call {
    /// The call this task is serving, if any.
    pub fn current() -> Option<Call> {
        CURRENT.try_with(|s| s.call).ok()
    }
}

impl Serving {
    /// The call this task is serving, if any, to carry on into work another task does for it.
    pub fn current() -> Option<Serving> {
        CURRENT.try_with(Serving::clone).ok()
    }

    /// Runs `f` as part of this call.
    pub fn scope<F: Future>(self, f: F) -> TaskLocalFuture<Serving, F> {
        CURRENT.scope(self, f)
    }

    /// Runs `f` (a log line, say) as part of this call.
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }

    /// Writes, for a log line, the call this task is serving; whether it serves one.
    pub fn write_current(w: &mut dyn fmt::Write) -> Result<bool, fmt::Error> {
        CURRENT.try_with(|s| write!(w, "{s}:").map(|()| true)).unwrap_or(Ok(false))
    }
}

/// The call as its log lines show it, as the span it stands for would have been shown.
impl fmt::Display for Serving {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let trace = &self.call.trace;
        write!(
            f,
            "call{{api={} method={} trace_id={:032x} span_id={:016x}",
            self.api, self.method, trace.trace_id, trace.span_id
        )?;
        if let Some(p) = self.parent {
            write!(f, " parent_id={p:016x}")?;
        }
        f.write_str("}")
    }
}

/// Spawns `fut` as a task that carries on the call being served (its trace, deadline and
/// span), for work that must finish even if the handler that started it goes away.
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    spawn_in(Serving::current(), fut.instrument(tracing::Span::current()))
}

/// Spawns `fut` as part of `serving`, a call another task is serving (or as a task of its
/// own when `None`): task-locals do not pass to spawned tasks by themselves.
pub fn spawn_in<F>(serving: Option<Serving>, fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match serving {
        Some(serving) => tokio::spawn(serving.scope(fut)),
        None => tokio::spawn(fut),
    }
}

/// When the call being served must be answered by; `fallback` from now when no call is.
pub fn deadline_or(fallback: Duration) -> Instant {
    Call::current().map_or_else(|| Instant::now() + fallback, |c| c.deadline)
}

/// What is left of the served call's budget (`fallback` when no call is being served).
pub fn remaining_or(fallback: Duration) -> Duration {
    deadline_or(fallback).saturating_duration_since(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_spawned_for_a_call_carries_it_on() {
        let call = Call { trace: TraceContext::child_of(None), deadline: Instant::now() + Duration::from_secs(1) };
        let serving = Serving { call, api: "grpc", method: "/kv.v1.Kv/Put".into(), parent: None };
        let seen = serving.scope(async { spawn(async { Call::current().map(|c| c.trace.span_id) }).await }).await;
        assert_eq!(seen.ok().flatten(), Some(call.trace.span_id), "spawned in a call: the call goes on");
        let plain = tokio::spawn(async { Call::current().is_some() }).await;
        assert_eq!(plain.ok(), Some(false), "a plain task knows no call");
        let later = spawn_in(None, async { Call::current().is_some() }).await;
        assert_eq!(later.ok(), Some(false));
    }
}
