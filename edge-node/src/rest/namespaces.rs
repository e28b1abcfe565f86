//! Namespaces: create, list (paged, ordered), get, rename, delete.

use super::body::json;
use super::envelope::{ok, page, RestError};
use super::target::{Query, Target};
use super::Gateway;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use kv_common::KvError;
use kv_proto::client::v1::{self as api, kv_server::Kv};
use serde::Deserialize;
use serde_json::json;

/// The largest body a namespace call takes (a title).
const BODY_LIMIT: usize = 64 << 10;

/// A namespace as Cloudflare's API shows it.
fn shown(n: &api::Namespace) -> serde_json::Value {
    json!({ "id": n.id, "title": n.title, "supports_url_encoding": true })
}

#[derive(Deserialize)]
struct Title {
    title: String,
}

async fn title(gw: &Gateway, headers: &HeaderMap, body: Body) -> Result<String, RestError> {
    let too_large = |_| KvError::InvalidRequest("the body is too large".into());
    let body = gw.body(headers, body, BODY_LIMIT, too_large).await?;
    Ok(json::<Title>(&body.bytes)?.title)
}

pub async fn create(
    State(gw): State<Gateway>,
    _ours: Target,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RestError> {
    let title = title(&gw, &headers, body).await?;
    let n = gw.api.create_namespace(gw.request(&headers, api::CreateNamespaceRequest { title })).await?;
    Ok(ok(shown(n.get_ref())))
}

#[derive(Deserialize)]
pub struct ListQuery {
    page: Option<String>,
    per_page: Option<String>,
    order: Option<String>,
    direction: Option<String>,
}

/// A positive integer query parameter.
fn count(name: &str, v: Option<&str>) -> Result<Option<u32>, RestError> {
    v.map(|v| {
        v.parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| KvError::InvalidRequest(format!("{name} must be a positive integer, not {v:?}")).into())
    })
    .transpose()
}

pub async fn list(
    State(gw): State<Gateway>,
    _ours: Target,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, RestError> {
    let page_no = count("page", q.page.as_deref())?.unwrap_or(1);
    let per_page = count("per_page", q.per_page.as_deref())?.unwrap_or(20).min(1000);
    let req = api::ListNamespacesRequest {
        page: page_no,
        per_page,
        order: q.order.unwrap_or_default(),
        direction: q.direction.unwrap_or_default(),
    };
    let out = gw.api.list_namespaces(gw.request(&headers, req)).await?.into_inner();
    let shown: Vec<_> = out.namespaces.iter().map(shown).collect();
    let info = json!({
        "page": page_no,
        "per_page": per_page,
        "count": shown.len(),
        "total_count": out.total_count,
        "total_pages": out.total_count.div_ceil(per_page),
    });
    Ok(page(shown, info))
}

pub async fn get(State(gw): State<Gateway>, target: Target, headers: HeaderMap) -> Result<Response, RestError> {
    let n = gw.api.get_namespace(gw.request(&headers, api::NamespaceRef { namespace_id: target.ns })).await?;
    Ok(ok(shown(n.get_ref())))
}

pub async fn rename(
    State(gw): State<Gateway>,
    target: Target,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RestError> {
    let title = title(&gw, &headers, body).await?;
    let req = api::RenameNamespaceRequest { namespace_id: target.ns, title };
    let n = gw.api.rename_namespace(gw.request(&headers, req)).await?;
    Ok(ok(shown(n.get_ref())))
}

pub async fn delete(State(gw): State<Gateway>, target: Target, headers: HeaderMap) -> Result<Response, RestError> {
    gw.api.delete_namespace(gw.request(&headers, api::NamespaceRef { namespace_id: target.ns })).await?;
    Ok(ok(json!({})))
}
