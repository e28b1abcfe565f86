//! A running regional tier: the feed follower, the gRPC and HTTP servers, housekeeping.

use crate::config::Config;
use crate::regional::Regional;
use crate::service::{RegionalPushes, RegionalStore};
use anyhow::Context;
use kv_common::auth::AdminOnly;
use kv_common::call::CallLayer;
use kv_common::client::MAX_MESSAGE_BYTES;
use kv_common::serve::{self, Drain};
use kv_common::tls::{self, Role};
use kv_proto::store::v1::central_store_server::CentralStoreServer;
use kv_proto::tier::v1::pushes_server::PushesServer;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;

/// How often lapsed tracking and closed push streams are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Runs the tier until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let admin_token = config.admin_token.require()?.to_owned();
    kv_common::auth::set_node_token(&admin_token)?;
    let tls = tls::start_node_tls(&config.tls, Role::Regional)?;
    let grpc = tokio::net::TcpListener::bind(config.listen).await.context("binding gRPC listener")?;
    let http = tokio::net::TcpListener::bind(config.http_listen).await.context("binding HTTP listener")?;
    let regional = Regional::new(config)?;
    tracing::info!(region = %regional.config.region, grpc = %regional.config.listen, http = %regional.config.http_listen,
        central = ?regional.config.central, tls, "regional tier listening");

    let (mut health, health_service, reflection) = serve::health_and_reflection(kv_proto::FILE_DESCRIPTOR_SET)?;
    health.set_serving::<CentralStoreServer<RegionalStore>>().await;
    let (start_drain, drain) = Drain::new();
    let budget = Duration::from_millis(regional.config.request_timeout_ms);
    let layer = CallLayer::new(budget, regional.config.max_in_flight);
    let r = regional.clone();
    let l = layer.clone();
    let h = regional.clone();
    let http = serve::serve_http(
        http,
        Arc::new(move || r.render_metrics() + &l.render_metrics()),
        Arc::new(move || {
            let text = match h.proof() {
                Some((version, age)) => {
                    format!("following the feed: version {version}, proved {} ms ago", age.as_millis())
                }
                None => "feed not proved fresh: serving from central or stale".into(),
            };
            (true, text)
        }),
        drain.clone(),
    );
    tokio::spawn(crate::feed::follow(regional.clone()));
    let sweeper = regional.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tick.tick().await;
            sweeper.tracker.sweep();
        }
    });
    let draining = drain.clone();
    tokio::spawn(async move {
        draining.wait().await;
        health.set_not_serving::<CentralStoreServer<RegionalStore>>().await;
    });

    // Edges call with the cluster's admin token; nothing else may use this tier's APIs.
    let admin = AdminOnly::new(&admin_token, None).from_roles(&[Role::Edge]);
    let grpc = kv_common::call::server(layer)
        .add_service(InterceptedService::new(
            CentralStoreServer::new(RegionalStore(regional.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            admin.clone(),
        ))
        .add_service(InterceptedService::new(PushesServer::new(RegionalPushes(regional, drain.clone())), admin))
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming_shutdown(serve::incoming(grpc, drain.clone()), drain.wait());
    let servers = async { tokio::try_join!(async { grpc.await.context("gRPC server") }, http).map(drop) };
    serve::serve_draining(servers, shutdown, async {}, start_drain, budget + Duration::from_secs(1)).await
}
