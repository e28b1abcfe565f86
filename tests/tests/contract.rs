//! The KV contract (SPEC sections 2 to 4), written once as a table of cases and run against
//! every node that offers it: an edge (the client API), a regional tier and a central node
//! (the store API), all in one real cluster with KV's own limits. Each case runs in its own
//! namespace per target; a failing case is reported with the target it failed on.

use kv_client::api::{self, kv_client::KvClient};
use kv_common::auth::Authorized;
use kv_common::error::{current_version_of, http_status_of};
use kv_deploy::topology::Topology;
use kv_proto::store::v1::{self as pb, central_store_client::CentralStoreClient};
use kv_tests::rest::{error_code, Rest};
use kv_tests::tiers::Tiers;
use serde_json::{json, Value};
use std::future::Future;
use std::pin::Pin;
use tonic::{Code, Status};

/// One node offering the contract.
#[derive(Clone)]
enum Target {
    Edge(KvClient<Authorized>, Authorized),
    Store(CentralStoreClient<Authorized>, Authorized),
    /// An edge's REST gateway, spoken to as any HTTP client would.
    Rest(Rest),
}

/// A Get request whose key is raw bytes: both Get messages carry the namespace in field 1
/// and the key in field 2, so this is how a client that sends bad UTF-8 looks on the wire.
#[derive(Clone, PartialEq, prost::Message)]
struct RawGet {
    #[prost(string, tag = "1")]
    namespace_id: String,
    #[prost(bytes = "vec", tag = "2")]
    key: Vec<u8>,
}

/// A put's options.
#[derive(Default, Clone)]
struct Opts {
    expiration: Option<i64>,
    expiration_ttl: Option<i64>,
    metadata: Option<String>,
    /// Compare-and-set: only at this version (0: absent).
    if_version: Option<u64>,
    /// Compare-and-set: only while absent (the store API says `if_version = 0`).
    if_absent: bool,
}

/// A key as read.
#[derive(Debug, PartialEq)]
struct Got {
    value: Vec<u8>,
    metadata: Option<String>,
    expiration: Option<i64>,
    version: u64,
}

fn store_put(key: &str, value: &[u8], o: &Opts) -> pb::WriteOp {
    let put = pb::Put {
        value: value.to_vec().into(),
        metadata_json: o.metadata.clone(),
        expiration: o.expiration,
        expiration_ttl: o.expiration_ttl,
    };
    let if_version = if o.if_absent { Some(0) } else { o.if_version };
    pb::WriteOp { key: key.into(), op: Some(pb::write_op::Op::Put(put)), if_version }
}

/// The status a failed write item stands for.
fn item_status(e: pb::OpError) -> Status {
    let mut s = Status::new(Code::from(e.grpc_code), e.message);
    s.metadata_mut().insert(kv_common::HTTP_STATUS_TRAILER, e.http_status.into());
    if e.http_status == 412 {
        s.metadata_mut().insert(kv_common::CURRENT_VERSION_TRAILER, e.current_version.into());
    }
    s
}

impl Target {
    async fn put(&self, ns: &str, key: &str, value: &[u8], o: Opts) -> Result<u64, Status> {
        match self {
            Target::Edge(c, _) => {
                let req = api::PutRequest {
                    namespace_id: ns.into(),
                    key: key.into(),
                    value: value.to_vec().into(),
                    expiration: o.expiration,
                    expiration_ttl: o.expiration_ttl,
                    metadata_json: o.metadata,
                    if_version: o.if_version,
                    if_absent: o.if_absent,
                    ..Default::default()
                };
                Ok(c.clone().put(req).await?.into_inner().version)
            }
            Target::Store(c, _) => {
                let req = pb::WriteRequest {
                    namespace_id: ns.into(),
                    ops: vec![store_put(key, value, &o)],
                    ..Default::default()
                };
                let r = c.clone().write(req).await?.into_inner().results.remove(0);
                match r.error {
                    Some(e) => Err(item_status(e)),
                    None => Ok(r.version),
                }
            }
            Target::Rest(r) => {
                let mut req = r.http.put(r.key_url(ns, "values", key.as_bytes()));
                let query: Vec<(&str, i64)> = [("expiration", o.expiration), ("expiration_ttl", o.expiration_ttl)]
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, v?)))
                    .collect();
                req = req.query(&query);
                if let Some(v) = o.if_version {
                    req = req.header("if-match", format!("\"{v}\""));
                }
                if o.if_absent {
                    req = req.header("if-none-match", "*");
                }
                // With metadata, the multipart form the SDKs send; without, the raw value.
                req = match o.metadata {
                    Some(m) => {
                        let value = reqwest::multipart::Part::bytes(value.to_vec()).file_name("blob");
                        req.multipart(reqwest::multipart::Form::new().part("value", value).text("metadata", m))
                    }
                    None => req.body(value.to_vec()),
                };
                Ok(Rest::version(&r.send(req).await?))
            }
        }
    }

    async fn get(&self, ns: &str, key: &str) -> Result<Option<Got>, Status> {
        match self {
            Target::Edge(c, _) => {
                let req = api::GetRequest {
                    namespace_id: ns.into(),
                    key: key.into(),
                    cache_ttl: None,
                    with_metadata: true,
                    ..Default::default()
                };
                let r = c.clone().get(req).await?.into_inner();
                Ok(r.found.then(|| Got {
                    value: r.value.to_vec(),
                    metadata: r.metadata_json,
                    expiration: r.expiration,
                    version: r.version,
                }))
            }
            Target::Store(c, _) => {
                let req = pb::GetRequest { namespace_id: ns.into(), key: key.into(), ..Default::default() };
                let r = c.clone().get(req).await?.into_inner();
                Ok(r.entry.map(|e| Got {
                    value: e.value.to_vec(),
                    metadata: e.metadata_json,
                    expiration: e.expiration,
                    version: e.version,
                }))
            }
            Target::Rest(r) => {
                let missing = |s: &Status| s.code() == Code::NotFound && error_code(s) == Some(10009);
                let resp = match r.send(r.http.get(r.key_url(ns, "values", key.as_bytes()))).await {
                    Err(s) if missing(&s) => return Ok(None),
                    other => other?,
                };
                let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()?.parse::<i64>().ok());
                let (expiration, version) = (header("expiration"), header("kv-version").unwrap_or(0) as u64);
                let value = resp.bytes().await.map_err(|e| Status::internal(e.to_string()))?.to_vec();
                let meta = r.send(r.http.get(r.key_url(ns, "metadata", key.as_bytes()))).await?;
                let text = meta.text().await.map_err(|e| Status::internal(e.to_string()))?;
                let env: Value = serde_json::from_str(&text).map_err(|e| Status::internal(e.to_string()))?;
                let metadata = (!env["result"].is_null()).then(|| env["result"].to_string());
                Ok(Some(Got { value, metadata, expiration, version }))
            }
        }
    }

    /// Deletes `key` (only at version `if_version`, when given).
    async fn delete(&self, ns: &str, key: &str, if_version: Option<u64>) -> Result<u64, Status> {
        match self {
            Target::Edge(c, _) => Ok(c
                .clone()
                .delete(api::DeleteRequest {
                    namespace_id: ns.into(),
                    key: key.into(),
                    if_version,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .version),
            Target::Store(c, _) => {
                let op = pb::WriteOp { key: key.into(), op: Some(pb::write_op::Op::Delete(pb::Delete {})), if_version };
                let req = pb::WriteRequest { namespace_id: ns.into(), ops: vec![op], ..Default::default() };
                let r = c.clone().write(req).await?.into_inner().results.remove(0);
                match r.error {
                    Some(e) => Err(item_status(e)),
                    None => Ok(r.version),
                }
            }
            Target::Rest(r) => {
                let mut req = r.http.delete(r.key_url(ns, "values", key.as_bytes()));
                if let Some(v) = if_version {
                    req = req.header("if-match", format!("\"{v}\""));
                }
                Ok(Rest::version(&r.send(req).await?))
            }
        }
    }

    /// One page: the names, whether the list is complete, and the cursor.
    async fn list(
        &self,
        ns: &str,
        prefix: &str,
        limit: Option<u32>,
        cursor: &str,
    ) -> Result<(Vec<String>, bool, String), Status> {
        match self {
            Target::Edge(c, _) => {
                let req = api::ListRequest {
                    namespace_id: ns.into(),
                    prefix: prefix.into(),
                    limit: limit.map(i64::from),
                    cursor: cursor.into(),
                };
                let r = c.clone().list(req).await?.into_inner();
                Ok((r.keys.into_iter().map(|k| k.name).collect(), r.list_complete, r.cursor))
            }
            Target::Store(c, _) => {
                let req = pb::ListRequest {
                    namespace_id: ns.into(),
                    prefix: prefix.into(),
                    limit: limit.unwrap_or(0),
                    cursor: cursor.into(),
                    ..Default::default()
                };
                let r = c.clone().list(req).await?.into_inner();
                Ok((r.keys.into_iter().map(|k| k.name).collect(), r.list_complete, r.cursor))
            }
            Target::Rest(r) => {
                let mut query = vec![("prefix", prefix.to_owned()), ("cursor", cursor.to_owned())];
                query.extend(limit.map(|l| ("limit", l.to_string())));
                let env = r.call(r.http.get(r.ns_url(&format!("/{ns}/keys"))).query(&query)).await?;
                let names = env["result"].as_array().into_iter().flatten();
                let names = names.map(|k| k["name"].as_str().unwrap_or_default().to_owned()).collect();
                let cursor = env["result_info"]["cursor"].as_str().unwrap_or_default().to_owned();
                Ok((names, cursor.is_empty(), cursor))
            }
        }
    }

    /// Every name of a list, following cursors, `limit` per page.
    async fn list_all(&self, ns: &str, prefix: &str, limit: u32) -> Result<Vec<String>, Status> {
        let (mut names, mut cursor) = (Vec::new(), String::new());
        loop {
            let (page, complete, next) = self.list(ns, prefix, Some(limit), &cursor).await?;
            names.extend(page);
            if complete {
                return Ok(names);
            }
            cursor = next;
        }
    }

    /// Several puts in one request; per item, its version or its error.
    async fn put_many(&self, ns: &str, items: &[(&str, &str)]) -> Result<Vec<Result<u64, u32>>, Status> {
        match self {
            Target::Edge(c, _) => {
                let items_req = items
                    .iter()
                    .map(|(k, v)| api::BulkPutItem {
                        key: k.to_string(),
                        value: v.as_bytes().to_vec().into(),
                        ..Default::default()
                    })
                    .collect();
                let r = c
                    .clone()
                    .put_bulk(api::PutBulkRequest { namespace_id: ns.into(), items: items_req, ..Default::default() })
                    .await?
                    .into_inner();
                Ok(items
                    .iter()
                    .map(|(k, _)| match r.errors.iter().find(|e| e.key == *k) {
                        Some(e) => Err(e.http_status),
                        None => Ok(r.version),
                    })
                    .collect())
            }
            Target::Store(c, _) => {
                let ops = items.iter().map(|(k, v)| store_put(k, v.as_bytes(), &Opts::default())).collect();
                let r = c
                    .clone()
                    .write(pb::WriteRequest { namespace_id: ns.into(), ops, ..Default::default() })
                    .await?
                    .into_inner();
                Ok(r.results.into_iter().map(|o| o.error.map_or(Ok(o.version), |e| Err(e.http_status))).collect())
            }
            Target::Rest(r) => {
                let body: Vec<Value> = items.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect();
                let resp = r.send(r.http.put(r.ns_url(&format!("/{ns}/bulk"))).json(&body)).await?;
                let version = Rest::version(&resp);
                let env: Value = resp.json().await.map_err(|e| Status::internal(e.to_string()))?;
                let failed = &env["result"]["unsuccessful_keys"];
                let failed: Vec<&str> = failed.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                Ok(items.iter().map(|(k, _)| if failed.contains(k) { Err(400) } else { Ok(version) }).collect())
            }
        }
    }

    /// Several keys in one read.
    /// Whether a client of this target can name `key` at all: a URL path normalizes the
    /// segments `.` and `..` away (even as `%2E`), so no HTTP client sends them as keys.
    fn can_name(&self, key: &str) -> bool {
        !matches!(self, Target::Rest(_)) || !matches!(key, "." | "..")
    }

    /// A Get of a key given as raw bytes; only its error matters.
    async fn get_raw_key(&self, ns: &str, key: &[u8]) -> Result<(), Status> {
        let (channel, path) = match self {
            Target::Edge(_, ch) => (ch, "/kv.client.v1.Kv/Get"),
            Target::Store(_, ch) => (ch, "/kv.store.v1.CentralStore/Get"),
            Target::Rest(r) => return r.send(r.http.get(r.key_url(ns, "values", key))).await.map(drop),
        };
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let req = tonic::Request::new(RawGet { namespace_id: ns.into(), key: key.to_vec() });
        let path = http::uri::PathAndQuery::from_static(path);
        grpc.unary(req, path, tonic::codec::ProstCodec::<RawGet, ()>::default()).await.map(drop)
    }

    /// A bulk read of type `json`, where the target offers one (only the client API does).
    async fn get_json(&self, ns: &str, keys: &[&str]) -> Option<Result<Vec<String>, Status>> {
        if let Target::Rest(r) = self {
            return Some(rest_json(r, ns, keys).await);
        }
        let Target::Edge(c, _) = self else { return None };
        let keys = keys.iter().map(|k| k.to_string()).collect();
        let req = api::GetBulkRequest {
            namespace_id: ns.into(),
            keys,
            r#type: api::ValueType::Json as i32,
            ..Default::default()
        };
        Some(c.clone().get_bulk(req).await.map(|r| r.into_inner().values.into_iter().map(|v| v.value).collect()))
    }

    async fn get_many(&self, ns: &str, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, Status> {
        match self {
            Target::Edge(c, _) => {
                let req = api::GetBulkRequest { namespace_id: ns.into(), keys: keys.to_vec(), ..Default::default() };
                let r = c.clone().get_bulk(req).await?.into_inner();
                Ok(r.values.into_iter().map(|v| v.found.then(|| v.value.into_bytes())).collect())
            }
            Target::Store(c, _) => {
                let req = pb::BatchGetRequest { namespace_id: ns.into(), keys: keys.to_vec(), ..Default::default() };
                let r = c.clone().batch_get(req).await?.into_inner();
                Ok(r.results.into_iter().map(|k| k.entry.map(|e| e.value.to_vec())).collect())
            }
            Target::Rest(r) => {
                let body = json!({ "keys": keys, "type": "text" });
                let env = r.call(r.http.post(r.ns_url(&format!("/{ns}/bulk/get"))).json(&body)).await?;
                let values = &env["result"]["values"];
                Ok(keys.iter().map(|k| values[k].as_str().map(|v| v.as_bytes().to_vec())).collect())
            }
        }
    }
}

/// A REST bulk read of type `json`: each value's text exactly as the answer holds it.
async fn rest_json(r: &Rest, ns: &str, keys: &[&str]) -> Result<Vec<String>, Status> {
    #[derive(serde::Deserialize)]
    struct Answer {
        result: Values,
    }
    #[derive(serde::Deserialize)]
    struct Values {
        values: std::collections::HashMap<String, Box<serde_json::value::RawValue>>,
    }
    let body = json!({ "keys": keys, "type": "json" });
    let resp = r.send(r.http.post(r.ns_url(&format!("/{ns}/bulk/get"))).json(&body)).await?;
    let text = resp.text().await.map_err(|e| Status::internal(e.to_string()))?;
    let mut a: Answer = serde_json::from_str(&text).map_err(|e| Status::internal(format!("{e}: {text:.200}")))?;
    Ok(keys.iter().map(|k| a.result.values.remove(*k).map(|v| v.get().to_owned()).unwrap_or_default()).collect())
}

/// Fails unless `r` is the contract's error: this gRPC code, HTTP-equivalent status and message.
fn refused<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, http: u16, message: &str) -> Result<(), String> {
    match r {
        Ok(v) => Err(format!("expected {http} {message:?}, got {v:?}")),
        Err(s) if s.code() == code && http_status_of(&s) == Some(http) && s.message() == message => Ok(()),
        Err(s) => Err(format!(
            "expected {code:?}/{http} {message:?}, got {:?}/{:?} {:?}",
            s.code(),
            http_status_of(&s),
            s.message()
        )),
    }
}

/// Fails unless `r` is a failed condition (FAILED_PRECONDITION, 412) naming `current`.
fn failed_condition<T: std::fmt::Debug>(r: Result<T, Status>, current: u64) -> Result<(), String> {
    match r {
        Ok(v) => Err(format!("expected a failed condition, got {v:?}")),
        Err(s)
            if s.code() == Code::FailedPrecondition
                && http_status_of(&s) == Some(412)
                && current_version_of(&s) == Some(current) =>
        {
            Ok(())
        }
        Err(s) => Err(format!(
            "expected FailedPrecondition/412 at version {current}, got {:?}/{:?} at {:?}: {}",
            s.code(),
            http_status_of(&s),
            current_version_of(&s),
            s.message()
        )),
    }
}

/// A write to a key written within the last second, sent until the per-key limit lets it
/// be decided (each 429 changed nothing).
async fn after_limit<T, F, Fut>(mut write: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let decided = kv_tests::eventually(std::time::Duration::from_secs(10), "the write limit to let it in", || {
        let attempt = write();
        async move {
            match attempt.await {
                Err(s) if s.code() == Code::ResourceExhausted => None,
                other => Some(other),
            }
        }
    });
    match decided.await {
        Ok(outcome) => outcome,
        Err(e) => Err(Status::resource_exhausted(e.to_string())),
    }
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

fn now() -> i64 {
    kv_common::time::now_secs()
}

type CaseFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
type Case = for<'a> fn(&'a Target, &'a str) -> CaseFuture<'a>;

macro_rules! case {
    ($name:literal, |$t:ident, $ns:ident| $body:block) => {
        ($name, {
            fn f<'a>($t: &'a Target, $ns: &'a str) -> CaseFuture<'a> {
                Box::pin(async move { $body })
            }
            f as Case
        })
    };
}

const INVALID: Code = Code::InvalidArgument;

/// The contract, case by case.
fn cases() -> Vec<(&'static str, Case)> {
    vec![
        case!("key names are checked in the contract's words", |t, ns| {
            refused(t.put(ns, "", b"v", Opts::default()).await, INVALID, 400, "Key names must not be empty")?;
            for dots in [".", ".."].into_iter().filter(|k| t.can_name(k)) {
                refused(
                    t.put(ns, dots, b"v", Opts::default()).await,
                    INVALID,
                    400,
                    &format!("Illegal key name \"{dots}\". Please use a different name."),
                )?;
            }
            let long = "é".repeat(257);
            refused(
                t.put(ns, &long, b"v", Opts::default()).await,
                INVALID,
                414,
                "UTF-8 encoded length of 514 exceeds key length limit of 512.",
            )?;
            refused(
                t.get(ns, &long).await,
                INVALID,
                414,
                "UTF-8 encoded length of 514 exceeds key length limit of 512.",
            )?;
            refused(t.delete(ns, "", None).await, INVALID, 400, "Key names must not be empty")?;
            refused(t.get_raw_key(ns, b"k\xff\xfe").await, INVALID, 400, "Key names must be valid UTF-8.")?;
            check(t.put(ns, &"k".repeat(512), b"v", Opts::default()).await.is_ok(), || "a 512-byte key is valid".into())
        }),
        case!("values, metadata and expirations are checked in the contract's order", |t, ns| {
            let big = vec![0u8; 26_214_401];
            refused(
                t.put(ns, "big", &big, Opts::default()).await,
                INVALID,
                413,
                "Value length of 26214401 exceeds limit of 26214400.",
            )?;
            let meta = Opts { metadata: Some(format!("\"{}\"", "m".repeat(1023))), ..Default::default() };
            refused(
                t.put(ns, "meta", b"v", meta).await,
                INVALID,
                413,
                "Metadata length of 1025 exceeds limit of 1024.",
            )?;
            let past = Opts { expiration: Some(5), ..Default::default() };
            refused(t.put(ns, "e", b"v", past).await, INVALID, 400, "Invalid expiration of 5. Please specify integer greater than the current number of seconds since the UNIX epoch.")?;
            let soon = now() + 30;
            let msg =
                format!("Invalid expiration of {soon}. Expiration times must be at least 60 seconds in the future.");
            refused(
                t.put(ns, "e", b"v", Opts { expiration: Some(soon), ..Default::default() }).await,
                INVALID,
                400,
                &msg,
            )?;
            refused(
                t.put(ns, "e", b"v", Opts { expiration_ttl: Some(0), ..Default::default() }).await,
                INVALID,
                400,
                "Invalid expiration_ttl of 0. Please specify integer greater than 0.",
            )?;
            refused(
                t.put(ns, "e", b"v", Opts { expiration_ttl: Some(30), ..Default::default() }).await,
                INVALID,
                400,
                "Invalid expiration_ttl of 30. Expiration TTL must be at least 60.",
            )?;
            // The key is checked before anything else, the value's size last.
            let both = Opts { expiration_ttl: Some(0), ..Default::default() };
            refused(t.put(ns, "", &big, both.clone()).await, INVALID, 400, "Key names must not be empty")?;
            refused(
                t.put(ns, "e", &big, both).await,
                INVALID,
                400,
                "Invalid expiration_ttl of 0. Please specify integer greater than 0.",
            )?;
            check(t.get(ns, "e").await.map_err(|s| s.to_string())?.is_none(), || "a refused put changed nothing".into())
        }),
        case!("a put is read back with its metadata and absolute expiration; a missing key is absent", |t, ns| {
            let o =
                Opts { metadata: Some("{ \"a\" : [1, 2] }".into()), expiration_ttl: Some(3600), ..Default::default() };
            let before = now();
            let v = t.put(ns, "k", b"value", o).await.map_err(|s| s.to_string())?;
            let got = t.get(ns, "k").await.map_err(|s| s.to_string())?.ok_or("the put is not read back")?;
            check(got.value == b"value" && got.version == v, || format!("read {got:?} after put {v}"))?;
            check(got.metadata.as_deref() == Some("{\"a\":[1,2]}"), || {
                format!("metadata stored compactly: {:?}", got.metadata)
            })?;
            let exp = got.expiration.unwrap_or(0);
            check((before + 3600..=now() + 3601).contains(&exp), || format!("expiration_ttl made absolute: {exp}"))?;
            check(t.get(ns, "never-written").await.map_err(|s| s.to_string())?.is_none(), || {
                "a missing key is absent".into()
            })
        }),
        case!("deleting a missing key succeeds and a delete hides the key", |t, ns| {
            t.delete(ns, "ghost", None).await.map_err(|s| s.to_string())?;
            let v = t.put(ns, "gone", b"v", Opts::default()).await.map_err(|s| s.to_string())?;
            // A delete is a write too: within a second of the put, it is 429; then it goes through.
            refused(t.delete(ns, "gone", None).await, Code::ResourceExhausted, 429, "Too Many Requests")?;
            let d = kv_tests::eventually(std::time::Duration::from_secs(5), "the delete to be allowed", || async {
                t.delete(ns, "gone", None).await.ok()
            })
            .await
            .map_err(|e| e.to_string())?;
            check(d > v, || format!("the delete's version {d} follows the put's {v}"))?;
            check(t.get(ns, "gone").await.map_err(|s| s.to_string())?.is_none(), || "read after delete".into())
        }),
        case!("an unknown or malformed namespace is NOT_FOUND", |t, _ns| {
            let unknown = "0".repeat(32);
            refused(t.get(&unknown, "k").await, Code::NotFound, 404, "namespace not found")?;
            refused(t.put(&unknown, "k", b"v", Opts::default()).await, Code::NotFound, 404, "namespace not found")?;
            refused(t.get("not-a-namespace", "k").await, Code::NotFound, 404, "namespace not found")
        }),
        case!("a second write to one key within a second is 429", |t, ns| {
            t.put(ns, "hot", b"1", Opts::default()).await.map_err(|s| s.to_string())?;
            refused(t.put(ns, "hot", b"2", Opts::default()).await, Code::ResourceExhausted, 429, "Too Many Requests")?;
            let got = t.get(ns, "hot").await.map_err(|s| s.to_string())?.ok_or("hot is gone")?;
            check(got.value == b"1", || "the refused write changed nothing".into())
        }),
        case!("lists are in UTF-8 byte order, with a literal prefix and opaque cursors", |t, ns| {
            let names = ["b", "a", "B", "é", "a/b", "a/a", "ab", "A", "a*", "😀"];
            for n in names {
                t.put(ns, &format!("l-{n}"), b"v", Opts::default()).await.map_err(|s| s.to_string())?;
            }
            let all = t.list_all(ns, "l-", 3).await.map_err(|s| s.to_string())?;
            let want: Vec<String> =
                ["A", "B", "a", "a*", "a/a", "a/b", "ab", "b", "é", "😀"].iter().map(|n| format!("l-{n}")).collect();
            check(all == want, || format!("pages of 3 gave {all:?}"))?;
            let star = t.list_all(ns, "l-a*", 1000).await.map_err(|s| s.to_string())?;
            check(star == vec!["l-a*".to_string()], || format!("the prefix is literal: {star:?}"))?;
            let upper = t.list_all(ns, "l-A", 1000).await.map_err(|s| s.to_string())?;
            check(upper == vec!["l-A".to_string()], || format!("the prefix is case-sensitive: {upper:?}"))?;
            let (_, complete, cursor) = t.list(ns, "l-", Some(1000), "").await.map_err(|s| s.to_string())?;
            check(complete && cursor.is_empty(), || "a complete list has no cursor".into())?;
            refused(
                t.list(ns, "l-", Some(1001), "").await,
                INVALID,
                400,
                "Invalid key_count_limit of 1001. Please specify an integer less than 1000.",
            )?;
            refused(
                t.list(ns, &"p".repeat(513), None, "").await,
                INVALID,
                414,
                "UTF-8 encoded length of 513 exceeds key length limit of 512.",
            )?;
            refused(t.list(ns, "l-", None, "not a cursor").await, INVALID, 400, "Invalid list cursor.")
        }),
        case!("the last item naming a key in one write wins", |t, ns| {
            let r = t
                .put_many(ns, &[("dup", "first"), ("other", "x"), ("dup", "second")])
                .await
                .map_err(|s| s.to_string())?;
            check(r.iter().all(Result::is_ok), || format!("every item succeeds: {r:?}"))?;
            let got = t.get(ns, "dup").await.map_err(|s| s.to_string())?.ok_or("dup missing")?;
            check(got.value == b"second", || format!("read {:?}", String::from_utf8_lossy(&got.value)))
        }),
        case!("bulk reads return every key, absent ones as absent, within the key-count bounds", |t, ns| {
            t.put_many(ns, &[("m1", "one"), ("m2", "two")]).await.map_err(|s| s.to_string())?;
            let keys: Vec<String> = ["m1", "nope", "m2"].iter().map(|k| k.to_string()).collect();
            let got = t.get_many(ns, &keys).await.map_err(|s| s.to_string())?;
            check(got == vec![Some(b"one".to_vec()), None, Some(b"two".to_vec())], || format!("{got:?}"))?;
            refused(t.get_many(ns, &[]).await, INVALID, 400, "You must request a minimum of 1 key")?;
            let many: Vec<String> = (0..101).map(|i| format!("x{i}")).collect();
            refused(t.get_many(ns, &many).await, INVALID, 400, "You can request a maximum of 100 keys")
        }),
        case!("a bulk read of type json accepts what JSON.parse accepts, and only that", |t, ns| {
            let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
            let values =
                [("big", "1e400"), ("surrogate", "\"\\ud800\""), ("deep", deep.as_str()), ("text", "{\"a\":1}")];
            t.put_many(ns, &values).await.map_err(|s| s.to_string())?;
            let keys: Vec<&str> = values.iter().map(|(k, _)| *k).collect();
            let Some(got) = t.get_json(ns, &keys).await else { return Ok(()) };
            let got = got.map_err(|s| s.to_string())?;
            let want: Vec<&str> = values.iter().map(|(_, v)| *v).collect();
            check(got == want, || format!("json values read back as {got:?}"))?;
            t.put_many(ns, &[("plain", "not json")]).await.map_err(|s| s.to_string())?;
            let refusal = t.get_json(ns, &["big", "plain"]).await.unwrap_or(Ok(Vec::new()));
            refused(refusal, INVALID, 400, "At least one of the requested keys corresponds to a non-json value")
        }),
        case!("a compare-and-set write takes effect only at the version it names", |t, ns| {
            let absent = || Opts { if_absent: true, ..Default::default() };
            let at = |v: u64| Opts { if_version: Some(v), ..Default::default() };
            let v1 = t.put(ns, "c", b"1", absent()).await.map_err(|s| s.to_string())?;
            failed_condition(after_limit(|| t.put(ns, "c", b"x", absent())).await, v1)?;
            failed_condition(after_limit(|| t.put(ns, "c", b"x", at(v1 + 1000))).await, v1)?;
            let got = t.get(ns, "c").await.map_err(|s| s.to_string())?.ok_or("c is gone")?;
            check(got.value == b"1" && got.version == v1, || format!("failed conditions changed c: {got:?}"))?;
            let v2 = after_limit(|| t.put(ns, "c", b"2", at(v1))).await.map_err(|s| s.to_string())?;
            check(v2 > v1, || format!("the conditional put's version {v2} follows {v1}"))?;
            failed_condition(after_limit(|| t.delete(ns, "c", Some(v1))).await, v2)?;
            after_limit(|| t.delete(ns, "c", Some(v2))).await.map_err(|s| s.to_string())?;
            check(t.get(ns, "c").await.map_err(|s| s.to_string())?.is_none(), || "the conditional delete".into())?;
            // Deleted is absent: version 0, or if_absent, holds again.
            after_limit(|| t.put(ns, "c", b"3", at(0))).await.map_err(|s| s.to_string())?;
            failed_condition(t.put(ns, "never", b"x", at(v2)).await, 0)?;
            if !matches!(t, Target::Store(..)) {
                let both = Opts { if_version: Some(1), if_absent: true, ..Default::default() };
                let message = match t {
                    Target::Rest(_) => "Invalid request: If-Match and If-None-Match exclude each other",
                    _ => "Invalid request: if_version and if_absent exclude each other",
                };
                refused(t.put(ns, "both", b"x", both).await, INVALID, 400, message)?;
            }
            Ok(())
        }),
        case!("every later read sees an acknowledged write, and versions only grow", |t, ns| {
            let mut last = 0;
            for i in 0..5 {
                let key = format!("ryw-{i}");
                let v = t.put(ns, &key, key.as_bytes(), Opts::default()).await.map_err(|s| s.to_string())?;
                check(v > last, || format!("version {v} after {last}"))?;
                let got = t.get(ns, &key).await.map_err(|s| s.to_string())?.ok_or("a write was not read back")?;
                check(got.version >= v, || format!("read {} after writing {v}", got.version))?;
                last = v;
            }
            Ok(())
        }),
    ]
}

/// One region, one edge, KV's own limits (no test scaling).
fn with_kv_limits() -> Topology {
    let text = r#"
[central]
voters = 3
peer_delay_ms = 1

[[regions]]
name = "a"
central_delay_ms = 5
edges = [{ name = "a-push", delay_ms = 1 }]
"#;
    Topology::parse(text).expect("the contract topology parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_keeps_the_kv_contract() {
    let t = Tiers::start_topology(&with_kv_limits()).await.unwrap();
    let lazy = |addr: std::net::SocketAddr| t.authorized(addr);
    let big = 110 << 20;
    let edge_target = |addr| {
        let ch = lazy(addr);
        Target::Edge(KvClient::new(ch.clone()).max_encoding_message_size(big).max_decoding_message_size(big), ch)
    };
    let store_target = |addr| {
        let ch = lazy(addr);
        let c = CentralStoreClient::new(ch.clone()).max_encoding_message_size(big).max_decoding_message_size(big);
        Target::Store(c, ch)
    };
    let targets = [
        ("edge", edge_target(t.cluster.edges().next().unwrap().node.grpc)),
        ("regional tier", store_target(t.cluster.regions[0].regional.grpc)),
        ("central node", store_target(t.cluster.central[0].grpc)),
        ("REST gateway", Target::Rest(t.rest(0))),
    ];
    let edge = t.edge(0).await.unwrap();
    let mut failures = Vec::new();
    let mut ran = 0;
    for (target_name, target) in &targets {
        for (case_name, case) in cases() {
            let ns = edge.create_namespace(&format!("{target_name}: {case_name}")).await.unwrap().id;
            if let Err(why) = case(target, &ns).await {
                failures.push(format!("{target_name}: {case_name}: {why}"));
            }
            ran += 1;
        }
    }
    assert!(failures.is_empty(), "{} of {ran} cases failed:\n{}", failures.len(), failures.join("\n"));
}
