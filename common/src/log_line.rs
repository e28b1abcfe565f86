//! How a node's log line reads: its time, its level, the call it was logged for, the spans
//! it was logged in, and its fields:
//!
//! ```text
//! 2026-12-03T14:26:53.123456Z  WARN call{api=grpc method=/kv.v1.Kv/Get trace_id=… span_id=…}: upstream failed …
//! ```
//!
//! The call comes from the task's context (`call::context`) when the line is written, so a
//! call costs the log nothing until it logs; an exported call's span is left out where the
//! context already names it.

use crate::call::context::{Serving, CALL_SPAN_TARGET};
use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The event format every node logs with (`telemetry::init_tracing`).
#[derive(Debug, Default, Clone, Copy)]
pub struct LogLine;

impl<S, N> FormatEvent<S, N> for LogLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let ansi = w.has_ansi_escapes();
        let level = *event.metadata().level();
        styled(&mut w, ansi, DIM, |w| SystemTime.format_time(w))?;
        w.write_char(' ')?;
        styled(&mut w, ansi, colour(level), |w| write!(w, "{level:>5}"))?;
        w.write_char(' ')?;
        let named = Serving::write_current(&mut w)?;
        let mut scoped = named;
        for span in ctx.event_scope().into_iter().flat_map(|s| s.from_root()) {
            if named && span.name() == "call" && span.metadata().target() == CALL_SPAN_TARGET {
                continue;
            }
            styled(&mut w, ansi, BOLD, |w| w.write_str(span.name()))?;
            if let Some(fields) = span.extensions().get::<FormattedFields<N>>().filter(|f| !f.is_empty()) {
                write!(w, "{{{fields}}}")?;
            }
            w.write_char(':')?;
            scoped = true;
        }
        if scoped {
            w.write_char(' ')?;
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";

/// The colour a level is shown in on a terminal, as the default log format shows it.
fn colour(level: Level) -> &'static str {
    match level {
        Level::TRACE => "\x1b[35m",
        Level::DEBUG => "\x1b[34m",
        Level::INFO => "\x1b[32m",
        Level::WARN => "\x1b[33m",
        Level::ERROR => "\x1b[31m",
    }
}

/// Writes `write`'s output in `style` when the writer takes escapes, plainly otherwise.
fn styled(
    w: &mut Writer<'_>,
    ansi: bool,
    style: &str,
    write: impl FnOnce(&mut Writer<'_>) -> fmt::Result,
) -> fmt::Result {
    if !ansi {
        return write(w);
    }
    w.write_str(style)?;
    write(w)?;
    w.write_str("\x1b[0m")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::context::Call;
    use crate::trace::TraceContext;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    use tracing_subscriber::layer::SubscriberExt;

    /// The lines logged while `f` runs.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let layer =
            tracing_subscriber::fmt::layer().with_ansi(false).event_format(LogLine).with_writer(move || writer.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), f);
        let bytes = sink.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_line_names_the_call_it_was_logged_for_then_its_spans_then_its_fields() {
        let parent = TraceContext { trace_id: 0xabc, span_id: 0x12, flags: 1 };
        let trace = TraceContext::child_of(Some(&parent));
        let serving = Serving {
            call: Call { trace, deadline: Instant::now() },
            api: "grpc",
            method: "/kv.v1.Kv/Get".into(),
            parent: Some(parent.span_id),
        };
        let out = logged(|| {
            tracing::info!(n = 1, "outside any call");
            // An exported call's span: left out where the context names the call, shown
            // where it does not.
            let exported = tracing::info_span!(target: CALL_SPAN_TARGET, "call", api = "grpc");
            serving.sync_scope(|| {
                let span = tracing::info_span!(parent: &exported, "fetch", key = "k");
                span.in_scope(|| tracing::warn!("upstream failed"));
            });
            exported.in_scope(|| tracing::info!("elsewhere"));
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[2].ends_with("  INFO call{api=\"grpc\"}: elsewhere"), "{}", lines[2]);
        assert!(lines[0].ends_with("  INFO outside any call n=1"), "{}", lines[0]);
        let call = format!(
            "call{{api=grpc method=/kv.v1.Kv/Get trace_id={:032x} span_id={:016x} parent_id=0000000000000012}}",
            0xabc, trace.span_id
        );
        assert!(lines[1].ends_with(&format!("  WARN {call}:fetch{{key=\"k\"}}: upstream failed")), "{}", lines[1]);
    }
}
