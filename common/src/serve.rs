//! What every server process repeats: the `/metrics` + `/health` HTTP endpoint, gRPC
//! listeners, health and reflection, and waiting for SIGINT/SIGTERM.

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
    serve_http_with(listener, render, health, Router::new()).await
}

/// `serve_http`, with `routes` served beside `/metrics` and `/health` (an edge's REST API).
pub async fn serve_http_with(
    listener: tokio::net::TcpListener,
    render: RenderMetrics,
    health: CheckHealth,
    routes: Router,
) -> std::io::Result<()> {
    let app = routes.route("/metrics", get(move || async move { render() })).route(
        "/health",
        get(move || async move {
            let (ok, text) = health();
            (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, text)
        }),
    );
    axum::serve(listener, app).await
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

/// The connections a gRPC server accepts on `listener`, with Nagle's algorithm off.
///
/// `Server::tcp_nodelay` applies only to listeners tonic binds itself; without this, a
/// small answer can wait for the client's delayed ACK (about 40 ms on Linux).
pub fn grpc_incoming(listener: tokio::net::TcpListener) -> anyhow::Result<tonic::transport::server::TcpIncoming> {
    tonic::transport::server::TcpIncoming::from_listener(listener, true, None)
        .map_err(|e| anyhow::anyhow!("gRPC listener: {e}"))
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
