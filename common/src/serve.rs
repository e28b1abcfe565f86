//! What every server process repeats: the `/metrics` + `/health` HTTP endpoint, one span
//! per gRPC call tied to the caller's trace, and waiting for SIGINT/SIGTERM.

use axum::{http::StatusCode, routing::get, Router};
use std::sync::Arc;

/// Renders the Prometheus text exposition.
pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;
/// Reports whether the node can serve, with a short reason.
pub type CheckHealth = Arc<dyn Fn() -> (bool, String) + Send + Sync>;

/// Serves `/metrics` and `/health` (200 when healthy, 503 otherwise) until the process ends.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    render: RenderMetrics,
    health: CheckHealth,
) -> std::io::Result<()> {
    let app = Router::new().route("/metrics", get(move || async move { render() })).route(
        "/health",
        get(move || async move {
            let (ok, text) = health();
            (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, text)
        }),
    );
    axum::serve(listener, app).await
}

/// The W3C trace context header, carried from tier to tier.
pub const TRACEPARENT: &str = "traceparent";

/// One span per gRPC call, named by its method and tied to the caller's W3C trace, if any.
pub fn request_span(req: &axum::http::Request<()>) -> tracing::Span {
    let parent = req.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    tracing::info_span!("grpc", method = %req.uri().path(), traceparent = parent)
}

/// Copies the caller's trace context onto a request sent to the next tier.
pub fn carry_trace<T>(from: &tonic::metadata::MetadataMap, mut to: tonic::Request<T>) -> tonic::Request<T> {
    if let Some(v) = from.get(TRACEPARENT) {
        to.metadata_mut().insert(TRACEPARENT, v.clone());
    }
    to
}

/// Runs a gRPC server until it fails or `shutdown` resolves. There is no graceful drain:
/// Watch and push streams never end on their own, so a drain would wait for ever, and
/// every node loses nothing by stopping at once.
pub async fn serve_until<E>(
    server: impl std::future::Future<Output = Result<(), E>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), E> {
    tokio::select! {
        served = server => served,
        () = shutdown => Ok(()),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// gRPC health and reflection services for a server exposing `descriptors`.
pub fn health_and_reflection(
    descriptors: &'static [u8],
) -> Result<
    (
        tonic_health::server::HealthReporter,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
        tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    ),
    tonic_reflection::server::Error,
> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(descriptors)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    Ok((reporter, health, reflection))
}
