//! Key lists. Client libraries stop paging at an empty page, so a REST page is never empty
//! while the list goes on: the gateway reads on until it has a key or the list is complete
//! (over gRPC an empty page with a cursor is allowed, SPEC.md section 3).

use super::envelope::{page, raw_json, RestError};
use super::target::{Query, Target};
use super::Gateway;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use kv_common::KvError;
use kv_proto::client::v1::{self as api, kv_server::Kv};
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

#[derive(Deserialize)]
pub struct ListQuery {
    prefix: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// A key as the list shows it: metadata and expiration only when it has them.
#[derive(Serialize)]
struct Shown<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Box<RawValue>>,
}

fn shown(k: &api::ListedKey) -> Result<Shown<'_>, RestError> {
    let metadata = k.metadata_json.as_deref().map(raw_json).transpose()?;
    Ok(Shown { name: &k.name, expiration: k.expiration, metadata })
}

pub async fn list(
    State(gw): State<Gateway>,
    target: Target,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, RestError> {
    let limit = q
        .limit
        .map(|v| v.parse::<i64>().map_err(|_| KvError::InvalidRequest(format!("limit must be an integer, not {v:?}"))))
        .transpose()?;
    let mut cursor = q.cursor.unwrap_or_default();
    loop {
        let req = api::ListRequest {
            namespace_id: target.ns.clone(),
            prefix: q.prefix.clone().unwrap_or_default(),
            limit,
            cursor: cursor.clone(),
        };
        let out = gw.api.list(gw.request(&headers, req)).await?.into_inner();
        if out.keys.is_empty() && !out.list_complete {
            cursor = out.cursor;
            continue;
        }
        let keys = out.keys.iter().map(shown).collect::<Result<Vec<_>, _>>()?;
        let next = if out.list_complete { String::new() } else { out.cursor };
        return Ok(page(&keys, json!({ "count": keys.len(), "cursor": next })));
    }
}
