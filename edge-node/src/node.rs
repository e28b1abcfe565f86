//! A running edge node: the push follower, the gRPC server, and the HTTP server (the REST
//! gateway, `/metrics`, `/health`), both under one `CallLayer`. On SIGTERM it drains
//! (`kv_common::serve`): it reports itself draining, takes no new calls, closes its push
//! stream (so its regional tier stops tracking it) and answers the calls in flight.

use crate::api::KvApi;
use crate::config::Config;
use crate::edge::Edge;
use crate::rest::{self, Account, Gateway};
use anyhow::Context;
use kv_common::call::CallLayer;
use kv_common::client::MAX_MESSAGE_BYTES;
use kv_common::serve::{self, Drain};
use kv_proto::client::v1::kv_server::KvServer;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Runs the edge until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let grpc = tokio::net::TcpListener::bind(config.listen).await.context("binding gRPC listener")?;
    let http = tokio::net::TcpListener::bind(config.http_listen).await.context("binding HTTP listener")?;
    kv_common::auth::set_node_token(config.admin_token.require()?)?;
    let tls = kv_common::tls::start_node_tls(&config.tls, kv_common::tls::Role::Edge)?;
    let edge = Edge::new(config)?;
    tracing::info!(id = %edge.config.id, grpc = %edge.config.listen, http = %edge.config.http_listen,
        upstream = ?edge.config.upstream, mode = ?edge.config.mode, tls, "edge node listening");

    let (mut health, health_service, reflection) = serve::health_and_reflection(kv_proto::FILE_DESCRIPTOR_SET)?;
    health.set_serving::<KvServer<KvApi>>().await;
    let (e, h) = (edge.clone(), edge.clone());
    let layer = CallLayer::new(edge.default_budget(), edge.config.max_in_flight);
    let account = Account { id: edge.config.account_id.clone(), name: edge.config.account_name.clone() };
    let rest = rest::router(Gateway::new(KvApi(edge.clone()), account, layer.clone()));
    let (start_drain, drain) = Drain::new();
    let http = serve::serve_http_with(
        http,
        {
            let layer = layer.clone();
            Arc::new(move || e.render_metrics() + &layer.render_metrics())
        },
        Arc::new(move || h.health()),
        rest,
        drain.clone(),
    );
    let follower = crate::pushes::follow(edge.clone());
    let draining = drain.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = follower => {}
            () = draining.wait() => {}
        }
    });
    tokio::spawn(edge.clone().learn_start_version());
    let draining = drain.clone();
    tokio::spawn(async move {
        draining.wait().await;
        health.set_not_serving::<KvServer<KvApi>>().await;
    });

    let grace = edge.default_budget() + Duration::from_secs(1);
    let grpc = kv_common::call::server(layer)
        .add_service(
            KvServer::new(KvApi(edge))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming_shutdown(serve::incoming(grpc, drain.clone()), drain.wait());
    let servers = async { tokio::try_join!(async { grpc.await.context("gRPC server") }, http).map(drop) };
    serve::serve_draining(servers, shutdown, async {}, start_drain, grace).await
}
