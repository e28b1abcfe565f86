//! A running edge node: the push follower, the gRPC server, and the HTTP server (the REST
//! gateway, `/metrics`, `/health`), both under one `CallLayer`.

use crate::api::KvApi;
use crate::config::Config;
use crate::edge::Edge;
use crate::rest::{self, Account, Gateway};
use anyhow::Context;
use kv_common::call::CallLayer;
use kv_common::client::MAX_MESSAGE_BYTES;
use kv_common::serve;
use kv_proto::client::v1::kv_server::KvServer;
use std::future::Future;
use std::sync::Arc;

/// Runs the edge until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let grpc = tokio::net::TcpListener::bind(config.listen).await.context("binding gRPC listener")?;
    let http = tokio::net::TcpListener::bind(config.http_listen).await.context("binding HTTP listener")?;
    kv_common::auth::set_node_token(config.admin_token.require()?)?;
    let edge = Edge::new(config)?;
    tracing::info!(id = %edge.config.id, grpc = %edge.config.listen, http = %edge.config.http_listen,
        upstream = ?edge.config.upstream, mode = ?edge.config.mode, "edge node listening");

    let (mut health, health_service, reflection) = serve::health_and_reflection(kv_proto::FILE_DESCRIPTOR_SET)?;
    health.set_serving::<KvServer<KvApi>>().await;
    let (e, h) = (edge.clone(), edge.clone());
    let layer = CallLayer::new(edge.default_budget(), edge.config.max_in_flight);
    let account = Account { id: edge.config.account_id.clone(), name: edge.config.account_name.clone() };
    let rest = rest::router(Gateway::new(KvApi(edge.clone()), account, layer.clone()));
    tokio::spawn(serve::serve_http_with(
        http,
        Arc::new(move || e.render_metrics()),
        Arc::new(move || h.health()),
        rest,
    ));
    tokio::spawn(crate::pushes::follow(edge.clone()));
    tokio::spawn(edge.clone().learn_start_version());

    let server = kv_common::call::server(layer)
        .add_service(
            KvServer::new(KvApi(edge))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming(serve::grpc_incoming(grpc)?);
    serve::serve_until(server, shutdown).await.context("gRPC server")
}
