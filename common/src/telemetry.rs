//! Logs and traces, set up the same way by every binary.
//!
//! Logs go to standard output (`RUST_LOG`), each line naming the call it was logged for
//! (`log_line`). Traces go out over OTLP (gRPC) when `[telemetry] otlp_endpoint` is set:
//! every served call is a span (`call::CallLayer`), a child of the caller's span as the W3C
//! `traceparent` names it, so one client call is one trace across the edge, the regional
//! tier and the central store. Without an endpoint no exporter exists and a served call
//! makes no span at all (`link` returns at once).

use crate::trace::TraceContext;
use anyhow::Context as _;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::{BatchConfigBuilder, Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The `[telemetry]` section of a node's config.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// An OTLP/gRPC collector (`http://host:4317`, e.g. an OpenTelemetry Collector, Jaeger
    /// or Tempo) that spans are exported to. Unset: no traces are exported.
    pub otlp_endpoint: Option<String>,
    /// The fraction of traces kept, decided where a trace starts; a call whose caller's
    /// trace was kept is kept too.
    pub sample_ratio: f64,
    /// How often finished spans are sent, in batches.
    pub export_interval_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { otlp_endpoint: None, sample_ratio: 1.0, export_interval_ms: 1000 }
    }
}

impl TelemetryConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!((0.0..=1.0).contains(&self.sample_ratio), "telemetry.sample_ratio must be within 0..=1");
        if let Some(e) = &self.otlp_endpoint {
            let uri: http::Uri = e.parse().with_context(|| format!("telemetry.otlp_endpoint {e:?} is not a URL"))?;
            anyhow::ensure!(uri.scheme_str() == Some("http"), "telemetry.otlp_endpoint must be an http:// URL");
        }
        Ok(())
    }
}

/// Whether spans are exported (set once, at start-up).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The exporter, flushed by `shutdown`.
pub struct Telemetry(Option<SdkTracerProvider>);

impl Telemetry {
    /// Sends the spans not sent yet.
    pub async fn shutdown(self) {
        if let Some(provider) = self.0 {
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// Installs the `tracing` subscriber: logs that honour `RUST_LOG` (default `info`), coloured
/// only on a terminal, and, when `config` names a collector, spans exported to it as
/// `service` (`service.instance.id` = `instance`). Runs inside the Tokio runtime.
pub fn init_tracing(service: &'static str, instance: &str, config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let logs = tracing_subscriber::fmt::layer().with_ansi(ansi).event_format(crate::log_line::LogLine);
    let (traces, provider) = match &config.otlp_endpoint {
        None => (None, None),
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(Duration::from_secs(5))
                .build()
                .context("building the OTLP exporter")?;
            let batches = BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_millis(config.export_interval_ms.max(10)))
                .build();
            let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                exporter,
                opentelemetry_sdk::runtime::Tokio,
            )
            .with_batch_config(batches)
            .build();
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .with_attribute(opentelemetry::KeyValue::new("service.instance.id", instance.to_owned()))
                .build();
            let provider = SdkTracerProvider::builder()
                .with_span_processor(processor)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))))
                .with_resource(resource)
                .build();
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("kv"));
            EXPORTING.store(true, Ordering::Release);
            (Some(layer), Some(provider))
        }
    };
    tracing_subscriber::registry().with(filter).with(logs).with(traces).try_init().context("installing the logger")?;
    tracing::info!(service, instance, traces = ?config.otlp_endpoint, "tracing initialised");
    Ok(Telemetry(provider))
}

/// Whether spans are exported (an OTLP endpoint is configured).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Acquire)
}

/// Makes `span` (a served call's) a child of `parent` in the exported trace, and returns its
/// identity there, for the calls it makes to carry; `None` when no spans are exported.
pub fn link(span: &tracing::Span, parent: Option<&TraceContext>) -> Option<TraceContext> {
    if !exporting() {
        return None;
    }
    if let Some(p) = parent {
        let remote = SpanContext::new(
            TraceId::from_bytes(p.trace_id.to_be_bytes()),
            SpanId::from_bytes(p.span_id.to_be_bytes()),
            TraceFlags::new(p.flags),
            true,
            TraceState::default(),
        );
        span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    identity(span)
}

/// `span`'s identity in the exported trace; `None` when no spans are exported.
pub fn identity(span: &tracing::Span) -> Option<TraceContext> {
    if !exporting() {
        return None;
    }
    let cx = span.context();
    let me = cx.span().span_context().clone();
    me.is_valid().then(|| TraceContext {
        trace_id: u128::from_be_bytes(me.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(me.span_id().to_bytes()),
        flags: me.trace_flags().to_u8(),
    })
}

/// The identity of `span` for work done later on its behalf, elsewhere (a write's changes
/// pushed down the tiers after it commits): only for a trace that is kept, so that an
/// unsampled or unexported write carries nothing.
pub fn sampled_identity(span: &tracing::Span) -> Option<TraceContext> {
    identity(span).filter(|cx| cx.flags & 1 == 1)
}

/// A span `make` creates, continuing the trace named by `traceparent` (a W3C header a
/// replicated change carried); `None` when no spans are exported here or the header is
/// not well formed.
pub fn continue_trace(traceparent: &str, make: impl FnOnce() -> tracing::Span) -> Option<tracing::Span> {
    if traceparent.is_empty() || !exporting() {
        return None;
    }
    let parent = TraceContext::parse(traceparent)?;
    let span = make();
    link(&span, Some(&parent));
    Some(span)
}
