//! The REST gateway: Workers KV's REST API v4 (SPEC.md section 6) on the edge's HTTP port,
//! so the official client libraries, `wrangler` and curl work by changing the base URL.
//!
//! Every route turns its HTTP request into the client API's request and calls the same
//! `KvApi` the gRPC server serves: one validation, one read and write path, one consistency.
//! `envelope` is the one place where a gRPC status becomes an HTTP answer. Calls are admitted
//! through the node's `CallLayer`, so one in-flight bound and one budget cover both APIs.
//!
//! Read in this order: `envelope`, `target` (which account, namespace and key a request
//! names), `body` (request bodies, bounded in bytes), then the routes: `namespaces`, `values`, `keys`, `bulk`, `account`.

mod account;
mod body;
mod bulk;
mod envelope;
mod keys;
mod namespaces;
mod target;
mod values;

use crate::api::KvApi;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use envelope::RestError;
use kv_common::auth::{self, Need, Principal};
use kv_common::call::{CallLayer, LATE, OVERLOADED, TRACEPARENT};
use kv_common::Limits;
use tonic::Status;

/// The one account this cluster serves: what `/accounts` lists and every path must name.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub name: String,
}

/// What every route needs.
#[derive(Clone)]
pub struct Gateway {
    api: KvApi,
    account: Account,
    layer: CallLayer,
    limits: Limits,
    bodies: body::Budget,
}

impl Gateway {
    pub fn new(api: KvApi, account: Account, layer: CallLayer) -> Gateway {
        let limits = api.0.config.limits.clone();
        let bodies = body::Budget::new(api.0.config.rest_body_budget_bytes);
        Gateway { api, account, layer, limits, bodies }
    }

    /// Reads a request body within `limit` and the node's budget (see `body`).
    async fn body(
        &self,
        headers: &HeaderMap,
        body: axum::body::Body,
        limit: usize,
        too_large: impl FnOnce(usize) -> kv_common::KvError,
    ) -> Result<body::Read, RestError> {
        body::read(&self.bodies, headers, body, limit, too_large).await
    }

    /// Refuses a write its token may not make before its body is read (`KvApi` checks every
    /// call again; a namespace id that does not parse is left to it to refuse).
    fn may_write(who: &Principal, ns: &str) -> Result<(), RestError> {
        match kv_common::NamespaceId::parse(ns) {
            Ok(id) => who.require(Need::Write(&id)).map(drop).map_err(|e| RestError::from(Status::from(e))),
            Err(_) => Ok(()),
        }
    }

    /// The client API request for `msg`, carrying the caller's credentials as gRPC does.
    fn request<T>(&self, headers: &HeaderMap, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
            if let Ok(v) = v.parse() {
                req.metadata_mut().insert(auth::AUTHORIZATION, v);
            }
        }
        req
    }
}

/// The REST routes, under `/client/v4` as Cloudflare's API has them.
pub fn router(gateway: Gateway) -> Router {
    const NS: &str = "/client/v4/accounts/:account/storage/kv/namespaces";
    Router::new()
        .route("/client/v4/accounts", get(account::list))
        .route("/client/v4/accounts/:account", get(account::get))
        .route("/client/v4/memberships", get(account::memberships))
        .route("/client/v4/user", get(account::user))
        .route("/client/v4/user/tokens/verify", get(account::verify))
        .route(NS, get(namespaces::list).post(namespaces::create))
        .route(&format!("{NS}/:ns"), get(namespaces::get).put(namespaces::rename).delete(namespaces::delete))
        .route(&format!("{NS}/:ns/keys"), get(keys::list))
        // A key may hold `/`, encoded or not: it is the rest of the path (empty: the route below).
        .route(&format!("{NS}/:ns/values/*key"), get(values::get).put(values::put).delete(values::delete))
        .route(&format!("{NS}/:ns/values/"), get(values::get).put(values::put).delete(values::delete))
        .route(&format!("{NS}/:ns/metadata/*key"), get(values::metadata))
        .route(&format!("{NS}/:ns/metadata/"), get(values::metadata))
        .route(&format!("{NS}/:ns/bulk"), put(bulk::put).delete(bulk::delete))
        .route(&format!("{NS}/:ns/bulk/delete"), post(bulk::delete))
        .route(&format!("{NS}/:ns/bulk/get"), post(bulk::get))
        .fallback(|| async { RestError::no_route() })
        .layer(middleware::from_fn_with_state(gateway.clone(), admit))
        .with_state(gateway)
}

/// Admits each call through the node's `CallLayer` and answers it by its deadline; a
/// method the route does not have gets an envelope too (axum's own 405 has no body). A call
/// without a valid token is refused here, before its body is read; the routes find its
/// `Principal` among the request's extensions.
async fn admit(State(gw): State<Gateway>, mut req: Request, next: Next) -> Response {
    let traceparent = req.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let method = format!("{} {}", req.method(), req.uri().path());
    let Some(call) = gw.layer.admit("rest", &method, traceparent.as_deref(), None) else {
        return RestError::from(Status::unavailable(OVERLOADED)).into_response();
    };
    let served = call.serve(async move {
        let bearer = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(auth::bearer);
        match gw.api.authenticate(bearer).await {
            Ok(who) => {
                req.extensions_mut().insert(who);
                next.run(req).await
            }
            Err(e) => RestError::from(Status::from(e)).into_response(),
        }
    });
    match served.await {
        Some(r) if r.status() == StatusCode::METHOD_NOT_ALLOWED => {
            let mut answer = RestError::method_not_allowed().into_response();
            if let Some(allow) = r.headers().get(axum::http::header::ALLOW) {
                answer.headers_mut().insert(axum::http::header::ALLOW, allow.clone());
            }
            answer
        }
        Some(r) => r,
        None => RestError::from(Status::deadline_exceeded(LATE)).into_response(),
    }
}
