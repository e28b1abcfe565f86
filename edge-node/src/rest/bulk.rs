//! Bulk writes, deletes and reads, in wrangler's and the SDKs' JSON formats.

use super::body::{json, Read};
use super::envelope::{ok, raw_json, with_version, RestError};
use super::target::Target;
use super::Gateway;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use kv_common::auth::Principal;
use kv_common::KvError;
use kv_proto::client::v1::{self as api, kv_server::Kv};
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

/// The largest bulk body: the contract's byte bound on items, doubled for base64's 4/3,
/// JSON's escapes and framing.
fn body_limit(gw: &Gateway) -> usize {
    gw.limits.max_bulk_write_bytes.saturating_mul(2) + (1 << 20)
}

async fn body(gw: &Gateway, headers: &HeaderMap, body: Body) -> Result<Read, RestError> {
    let max = gw.limits.max_bulk_write_bytes;
    gw.body(headers, body, body_limit(gw), |bytes| KvError::BulkWriteTooLarge { bytes, max }).await
}

/// Refuses a conditional bulk request: Workers KV's bulk format has no place for a condition
/// per item, and writing unconditionally what was asked conditionally would be worse.
fn unconditional(headers: &HeaderMap) -> Result<(), RestError> {
    if headers.contains_key(axum::http::header::IF_MATCH) || headers.contains_key(axum::http::header::IF_NONE_MATCH) {
        return Err(KvError::InvalidRequest(
            "bulk writes take no If-Match or If-None-Match: use gRPC's per-item conditions".into(),
        )
        .into());
    }
    Ok(())
}

/// What a bulk write or delete reports; `refused` are keys of items refused here already.
fn report(r: &api::BulkWriteResponse, refused: Vec<String>) -> Response {
    let mut unsuccessful = refused;
    unsuccessful.extend(r.unsuccessful_keys.iter().cloned());
    let result = json!({ "successful_key_count": r.successful_key_count, "unsuccessful_keys": unsuccessful });
    with_version(ok(result), r.version)
}

pub async fn put(
    State(gw): State<Gateway>,
    Extension(who): Extension<Principal>,
    target: Target,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, RestError> {
    Gateway::may_write(&who, &target.ns)?;
    unconditional(&headers)?;
    let read = body(&gw, &headers, b).await?;
    let (put, refused) = kv_common::bulk::put_items(json(&read.bytes)?);
    let req = api::PutBulkRequest { namespace_id: target.ns, items: put, ..Default::default() };
    Ok(report(gw.api.put_bulk(gw.request(&headers, req)).await?.get_ref(), refused))
}

pub async fn delete(
    State(gw): State<Gateway>,
    Extension(who): Extension<Principal>,
    target: Target,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, RestError> {
    Gateway::may_write(&who, &target.ns)?;
    unconditional(&headers)?;
    let read = body(&gw, &headers, b).await?;
    let keys: Vec<String> = json(&read.bytes)?;
    let req = api::DeleteBulkRequest { namespace_id: target.ns, keys, ..Default::default() };
    Ok(report(gw.api.delete_bulk(gw.request(&headers, req)).await?.get_ref(), Vec::new()))
}

/// A bulk read: up to 100 keys, as text or JSON, with metadata when asked.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkGet {
    keys: Vec<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    with_metadata: bool,
    cache_ttl: Option<i64>,
}

pub async fn get(
    State(gw): State<Gateway>,
    target: Target,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, RestError> {
    let read = gw.body(&headers, b, 1 << 20, |_| KvError::BulkGetTooMany { max: 100 }).await?;
    let q: BulkGet = json(&read.bytes)?;
    let json = match q.kind.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => {
            return Err(KvError::InvalidRequest(format!("type must be text or json, not {other:?}")).into());
        }
    };
    let kind = if json { api::ValueType::Json } else { api::ValueType::Text };
    let req = api::GetBulkRequest {
        namespace_id: target.ns,
        keys: q.keys,
        r#type: kind as i32,
        with_metadata: q.with_metadata,
        cache_ttl: q.cache_ttl,
        ..Default::default()
    };
    let out = gw.api.get_bulk(gw.request(&headers, req)).await?.into_inner();
    let mut values = Vec::with_capacity(out.values.len());
    let mut total = 0usize;
    for v in out.values {
        // A key asked twice is answered once (the answer is a JSON object).
        if values.iter().any(|(k, _): &(String, Box<RawValue>)| *k == v.key) {
            continue;
        }
        let value = match (v.found, json) {
            (false, _) => raw_json("null")?,
            // The client API has checked that it is JSON: it goes out as the stored text.
            (true, true) => raw_json(v.value.trim_start_matches('\u{feff}'))?,
            (true, false) => to_raw(&v.value)?,
        };
        let shown = if q.with_metadata && v.found {
            let meta = v.metadata_json.as_deref().unwrap_or("null");
            raw_json(&format!("{{\"value\":{},\"metadata\":{meta}}}", value.get()))?
        } else {
            value
        };
        // The contract bounds the whole answer, as sent: escapes count.
        total += v.key.len() + shown.get().len();
        if total > gw.limits.max_bulk_get_bytes {
            return Err(KvError::BulkGetTooLarge.into());
        }
        values.push((v.key, shown));
    }
    Ok(ok(Values(values)))
}

/// Text as a JSON string.
fn to_raw(text: &str) -> Result<Box<RawValue>, RestError> {
    serde_json::value::to_raw_value(text).map_err(|e| KvError::Internal(e.to_string()).into())
}

/// A bulk read's `{"values": {key: value}}`, in the order the keys were asked for.
struct Values(Vec<(String, Box<RawValue>)>);

impl Serialize for Values {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut outer = s.serialize_map(Some(1))?;
        outer.serialize_entry("values", &Map(&self.0))?;
        outer.end()
    }
}

struct Map<'a>(&'a [(String, Box<RawValue>)]);

impl Serialize for Map<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}
