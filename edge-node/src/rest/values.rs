//! One key: read its value (raw bytes) or metadata, write it, delete it.
//!
//! A write's body is the value itself (whatever its Content-Type), or a multipart form with
//! a `value` part (often a file part) and a `metadata` part (JSON text, pretty or not:
//! it is stored compactly and its size counted so), or flattened `metadata[a][b]` (or
//! `metadata.a.b`) fields, as some SDK versions send. The value's bytes are stored verbatim.
//!
//! A value read gives the key's version as its `ETag`; a write or delete with `If-Match:
//! "<version>"` takes effect only at that version, and a write with `If-None-Match: *` only
//! while the key is absent (HTTP's conditional requests, decided by compare-and-set).

use super::envelope::{etag, ok, raw_json, with_version, RestError};
use super::target::{Query, Target};
use super::Gateway;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use kv_common::auth::Principal;
use kv_common::{time, validate, KvError};
use kv_proto::client::v1::{self as api, kv_server::Kv};
use serde::Deserialize;
use serde_json::json;

/// Room a multipart body needs beyond the value and metadata it carries.
const MULTIPART_SLACK: usize = 1 << 20;

#[derive(Deserialize, Default)]
pub struct ReadQuery {
    cache_ttl: Option<String>,
}

/// An integer query or form parameter.
fn integer(name: &str, v: Option<&str>) -> Result<Option<i64>, RestError> {
    v.map(|v| {
        v.trim()
            .parse::<i64>()
            .map_err(|_| KvError::InvalidRequest(format!("{name} must be an integer, not {v:?}")).into())
    })
    .transpose()
}

/// Reads `target`'s key through the client API; a missing key is 404 over REST.
async fn read(
    gw: &Gateway,
    target: Target,
    q: &ReadQuery,
    headers: &HeaderMap,
    with_metadata: bool,
) -> Result<api::GetResponse, RestError> {
    let cache_ttl = integer("cache_ttl", q.cache_ttl.as_deref())?;
    let req =
        api::GetRequest { namespace_id: target.ns, key: target.key?, cache_ttl, with_metadata, ..Default::default() };
    let got = gw.api.get(gw.request(headers, req)).await?.into_inner();
    if !got.found {
        return Err(KvError::KeyNotFound.into());
    }
    Ok(got)
}

/// The compare-and-set condition of a write: `If-Match` with one version ETag (as a read
/// or write returned it, quoted or not), or `If-None-Match: *` for "only while absent".
fn condition(headers: &HeaderMap) -> Result<(Option<u64>, bool), RestError> {
    let text = |name: header::HeaderName| -> Result<Option<String>, RestError> {
        headers
            .get(&name)
            .map(|v| v.to_str().map(|s| s.trim().to_owned()))
            .transpose()
            .map_err(|_| KvError::InvalidRequest(format!("{name} is not text")).into())
    };
    let if_version = text(header::IF_MATCH)?.map(|tag| validate::etag_version(&tag)).transpose()?;
    let if_absent = match text(header::IF_NONE_MATCH)? {
        None => false,
        Some(tag) if tag == "*" => true,
        Some(tag) => {
            return Err(KvError::InvalidRequest(format!("If-None-Match on a write must be *, not {tag:?}")).into())
        }
    };
    if if_version.is_some() && if_absent {
        return Err(KvError::InvalidRequest("If-Match and If-None-Match exclude each other".into()).into());
    }
    Ok((if_version, if_absent))
}

/// Headers that tell how fresh an answer is (SPEC.md section 4: every answer knows).
fn freshness(got: &api::GetResponse) -> [(&'static str, HeaderValue); 5] {
    let status = api::CacheStatus::try_from(got.cache_status).unwrap_or_default().as_str_name();
    let status = status.trim_start_matches("CACHE_STATUS_");
    let served_by = api::ServedBy::try_from(got.served_by).unwrap_or_default().as_str_name();
    let served_by = served_by.trim_start_matches("SERVED_BY_");
    let text = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("UNSPECIFIED"));
    [
        ("kv-cache-status", text(status)),
        ("kv-served-by", text(served_by)),
        ("kv-version", HeaderValue::from(got.version)),
        ("kv-age-ms", HeaderValue::from(got.age_ms)),
        ("etag", etag(got.version)),
    ]
}

pub async fn get(
    State(gw): State<Gateway>,
    target: Target,
    Query(q): Query<ReadQuery>,
    headers: HeaderMap,
) -> Result<Response, RestError> {
    let got = read(&gw, target, &q, &headers, false).await?;
    let mut resp = (freshness(&got), got.value).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Some(exp) = got.expiration {
        h.insert("expiration", HeaderValue::from(exp));
    }
    Ok(resp)
}

pub async fn metadata(
    State(gw): State<Gateway>,
    target: Target,
    Query(q): Query<ReadQuery>,
    headers: HeaderMap,
) -> Result<Response, RestError> {
    let got = read(&gw, target, &q, &headers, true).await?;
    let meta = got.metadata_json.as_deref().map(raw_json).transpose()?;
    Ok((freshness(&got), ok(meta)).into_response())
}

#[derive(Deserialize, Default)]
pub struct WriteQuery {
    expiration: Option<String>,
    expiration_ttl: Option<String>,
}

/// A value write as it arrived: the value, and whatever options came with it.
#[derive(Default)]
struct Upload {
    value: Option<Bytes>,
    metadata: Option<String>,
    flat_metadata: Option<serde_json::Value>,
    expiration: Option<String>,
    expiration_ttl: Option<String>,
}

/// The deepest flattened metadata field accepted (`metadata[a][b]...`): stored metadata
/// nests far less, and a bound keeps building it from untrusted field names cheap.
const MAX_FLAT_DEPTH: usize = 32;

/// Sets `path` (the brackets of `metadata[a][b]`) to `value` under `slot`, making objects on
/// the way; an empty segment (`metadata[tags][]`) appends to an array, as form encoders
/// flatten arrays.
fn set_flat(slot: &mut serde_json::Value, path: &[&str], value: String) {
    let Some((first, rest)) = path.split_first() else {
        *slot = serde_json::Value::String(value);
        return;
    };
    if first.is_empty() {
        if !slot.is_array() {
            *slot = json!([]);
        }
        if let Some(items) = slot.as_array_mut() {
            items.push(serde_json::Value::Null);
            if let Some(last) = items.last_mut() {
                set_flat(last, rest, value);
            }
        }
        return;
    }
    if !slot.is_object() {
        *slot = json!({});
    }
    if let Some(fields) = slot.as_object_mut() {
        set_flat(fields.entry((*first).to_owned()).or_insert(serde_json::Value::Null), rest, value);
    }
}

/// The path of a flattened metadata field name (`metadata[a][b]` or `metadata.a.b`), if it is one.
fn flat_path(name: &str) -> Option<Result<Vec<&str>, KvError>> {
    let path: Vec<&str> = if let Some(inner) = name.strip_prefix("metadata[").and_then(|n| n.strip_suffix(']')) {
        inner.split("][").collect()
    } else {
        // Older Python SDKs flatten with dots.
        name.strip_prefix("metadata.")?.split('.').collect()
    };
    if path.len() > MAX_FLAT_DEPTH {
        return Some(Err(KvError::InvalidRequest(format!("metadata field names nest at most {MAX_FLAT_DEPTH} deep"))));
    }
    Some(Ok(path))
}

/// Reads a multipart form into an upload.
async fn multipart(body: Bytes, boundary: String) -> Result<Upload, RestError> {
    let malformed = |e: multer::Error| KvError::InvalidRequest(format!("malformed multipart body: {e}"));
    let stream = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut up = Upload::default();
    while let Some(field) = form.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_owned();
        let data = field.bytes().await.map_err(malformed)?;
        let text = || String::from_utf8_lossy(&data).into_owned();
        match name.as_str() {
            "value" => up.value = Some(data.clone()),
            "metadata" => up.metadata = Some(text()),
            "expiration" => up.expiration = Some(text()),
            "expiration_ttl" => up.expiration_ttl = Some(text()),
            other => {
                if let Some(path) = flat_path(other) {
                    let root = up.flat_metadata.get_or_insert_with(|| json!({}));
                    set_flat(root, &path?, text());
                }
            }
        }
    }
    Ok(up)
}

pub async fn put(
    State(gw): State<Gateway>,
    Extension(who): Extension<Principal>,
    target: Target,
    Query(q): Query<WriteQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RestError> {
    Gateway::may_write(&who, &target.ns)?;
    // The body is read before answering (a client still sending would see a broken
    // connection instead of the answer), but one too large for any value is reported only
    // after the key and expiration, which the contract checks first.
    let limit = gw.limits.max_value_bytes + gw.limits.max_metadata_bytes + MULTIPART_SLACK;
    let max = gw.limits.max_value_bytes;
    let body = gw.body(&headers, body, limit, |len| KvError::ValueTooLarge { len, limit: max }).await;
    let key = target.key?;
    validate::key(&key, &gw.limits)?;
    let (expiration, expiration_ttl) =
        (integer("expiration", q.expiration.as_deref())?, integer("expiration_ttl", q.expiration_ttl.as_deref())?);
    validate::expiration(expiration, expiration_ttl, time::central_now_secs(), &gw.limits)?;
    let read = body?;
    let body = read.bytes.clone();
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut up = match multer::parse_boundary(content_type) {
        Ok(boundary) if content_type.starts_with("multipart/form-data") => multipart(body, boundary).await?,
        _ => Upload { value: Some(body), ..Upload::default() },
    };
    if up.metadata.is_none() {
        up.metadata = up.flat_metadata.take().map(|m| m.to_string());
    }
    let value = up.value.ok_or_else(|| KvError::InvalidRequest("the multipart body has no value part".into()))?;
    let (if_version, if_absent) = condition(&headers)?;
    let req = api::PutRequest {
        namespace_id: target.ns,
        key,
        value,
        expiration: expiration.or(integer("expiration", up.expiration.as_deref())?),
        expiration_ttl: expiration_ttl.or(integer("expiration_ttl", up.expiration_ttl.as_deref())?),
        metadata_json: up.metadata,
        if_version,
        if_absent,
        ..Default::default()
    };
    let done = gw.api.put(gw.request(&headers, req)).await?.into_inner();
    // The value's version, which If-Match takes back. A delete's answer has none: a
    // tombstone's version is no condition any write can meet.
    let mut resp = with_version(ok(json!({})), done.version);
    resp.headers_mut().insert(header::ETAG, etag(done.version));
    Ok(resp)
}

pub async fn delete(State(gw): State<Gateway>, target: Target, headers: HeaderMap) -> Result<Response, RestError> {
    let (if_version, if_absent) = condition(&headers)?;
    if if_absent {
        return Err(KvError::InvalidRequest("a delete takes If-Match, not If-None-Match".into()).into());
    }
    let req = api::DeleteRequest { namespace_id: target.ns, key: target.key?, if_version, ..Default::default() };
    let done = gw.api.delete(gw.request(&headers, req)).await?.into_inner();
    Ok(with_version(ok(json!({})), done.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattened_metadata_fields_nest_and_make_arrays() {
        let mut m = json!({});
        for (name, v) in [
            ("metadata[a]", "1"),
            ("metadata[b][c]", "2"),
            ("metadata.b.d", "3"),
            ("metadata[t][]", "x"),
            ("metadata[t][]", "y"),
        ] {
            set_flat(&mut m, &flat_path(name).unwrap().unwrap(), v.into());
        }
        assert_eq!(m, json!({"a": "1", "b": {"c": "2", "d": "3"}, "t": ["x", "y"]}));
        assert!(flat_path("value").is_none());
        let deep = format!("metadata{}", "[a]".repeat(MAX_FLAT_DEPTH + 1));
        assert!(flat_path(&deep).unwrap().is_err(), "a field name nesting without bound is refused");
    }
}
