//! A client of an edge's REST API (Workers KV's REST API v4), with the same methods and
//! answers as the gRPC `Client`, so a caller (the `kv` command line with an `http://` or
//! `https://` endpoint) can use either. A failed call becomes the `tonic::Status` the gRPC
//! API would have given: its code, the contract's message, and `kv-http-status`.

use crate::api;
use base64::Engine;
use reqwest::{RequestBuilder, Response};
use serde_json::{json, Value};
use tonic::{Code, Status};

/// The REST API of one edge, for one account.
#[derive(Clone)]
pub struct RestClient {
    http: reqwest::Client,
    /// `.../client/v4/accounts/{account}/storage/kv/namespaces`.
    namespaces: String,
    token: Option<String>,
    /// The API's base URL (`.../client/v4`).
    base: String,
}

/// The envelope code of a read of a key that does not exist.
const KEY_NOT_FOUND: u64 = 10009;

/// The gRPC code a REST status stands for.
fn code_of(http: u16) -> Code {
    match http {
        400 | 413 | 414 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        412 => Code::FailedPrecondition,
        429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

/// A failed answer's first error as a status; its envelope code rides in `kv-error-code`.
pub fn status_of(http: u16, envelope: &Value) -> Status {
    let first = &envelope["errors"][0];
    let message = first["message"].as_str().unwrap_or("no message in the envelope");
    let mut s = Status::new(code_of(http), message);
    s.metadata_mut().insert("kv-http-status", http.into());
    if let Some(code) = first["code"].as_u64() {
        s.metadata_mut().insert("kv-error-code", code.into());
    }
    s
}

/// A failed answer as a status: its envelope's first error and, for a failed condition
/// (412), the key's current version, which the answer's ETag names.
pub async fn failure(resp: Response) -> Status {
    let http = resp.status().as_u16();
    let current = resp
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| kv_common::validate::etag_version(v.to_str().ok()?).ok())
        .filter(|_| http == 412);
    let body = match resp.text().await {
        Ok(b) => b,
        Err(e) => return unavailable(e),
    };
    let Ok(envelope) = serde_json::from_str::<Value>(&body) else {
        return Status::internal(format!("a {http} answer without an envelope: {body:.200}"));
    };
    let mut status = status_of(http, &envelope);
    if let Some(v) = current {
        status.metadata_mut().insert(kv_common::CURRENT_VERSION_TRAILER, v.into());
    }
    status
}

/// The envelope code of a status made by `status_of`.
pub fn error_code(s: &Status) -> Option<u64> {
    s.metadata().get("kv-error-code")?.to_str().ok()?.parse().ok()
}

/// Percent-encodes every byte but the unreserved ones, as `encodeURIComponent` does.
pub fn encode(bytes: &[u8]) -> String {
    const SET: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    percent_encoding::percent_encode(bytes, SET).to_string()
}

/// Workers KV's bulk routes carry no conditions: refused rather than dropped.
fn no_bulk_conditions() -> Status {
    Status::unimplemented("conditional bulk writes need the gRPC API (the REST bulk routes carry no conditions)")
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

fn header_u64(resp: &Response, name: &str) -> Option<u64> {
    resp.headers().get(name)?.to_str().ok()?.parse().ok()
}

impl RestClient {
    /// A client of the REST API under `base` (`http://host:port/client/v4`) for `account`,
    /// or for the first account `/accounts` lists.
    pub async fn connect(base: &str, account: Option<&str>, token: Option<&str>) -> Result<RestClient, Status> {
        RestClient::connect_with_ca(base, account, token, None).await
    }

    /// `connect`, trusting (only) the CA certificates in `ca` for an `https` base.
    pub async fn connect_with_ca(
        base: &str,
        account: Option<&str>,
        token: Option<&str>,
        ca: Option<&std::path::Path>,
    ) -> Result<RestClient, Status> {
        let base = base.trim_end_matches('/');
        let mut http = reqwest::Client::builder();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).map_err(|e| Status::invalid_argument(format!("{}: {e}", ca.display())))?;
            for cert in
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Status::invalid_argument(e.to_string()))?
            {
                http = http.add_root_certificate(cert);
            }
        }
        let mut client = RestClient {
            http: http.build().map_err(unavailable)?,
            namespaces: String::new(),
            token: token.map(str::to_owned),
            base: base.to_owned(),
        };
        let account = match account {
            Some(a) => a.to_owned(),
            None => {
                let env = client.call(client.http.get(format!("{base}/accounts"))).await?;
                env["result"][0]["id"].as_str().ok_or_else(|| Status::not_found("no account is listed"))?.to_owned()
            }
        };
        client.namespaces = format!("{base}/accounts/{account}/storage/kv/namespaces");
        Ok(client)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.namespaces)
    }

    /// Sends a request: the answer when it succeeded, else its error as a status.
    pub async fn send(&self, req: RequestBuilder) -> Result<Response, Status> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(unavailable)?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(failure(resp).await)
    }

    /// Sends a request and returns its envelope.
    pub async fn call(&self, req: RequestBuilder) -> Result<Value, Status> {
        let envelope: Value = self.send(req).await?.json().await.map_err(unavailable)?;
        if envelope["success"] != Value::Bool(true) {
            return Err(Status::internal(format!("a 2xx answer without success: {envelope:.200}")));
        }
        Ok(envelope)
    }

    /// The token this client sends, as the edge sees it (only its id over REST).
    pub async fn verify_token(&self) -> Result<api::Token, Status> {
        let env = self.call(self.http.get(format!("{}/user/tokens/verify", self.base))).await?;
        Ok(api::Token { id: env["result"]["id"].as_str().unwrap_or_default().to_owned(), ..Default::default() })
    }

    fn namespace(v: &Value) -> api::Namespace {
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        api::Namespace { id: text("id"), title: text("title") }
    }

    pub async fn create_namespace(&self, title: &str) -> Result<api::Namespace, Status> {
        let env = self.call(self.http.post(self.url("")).json(&json!({ "title": title }))).await?;
        Ok(Self::namespace(&env["result"]))
    }

    /// Every namespace, across pages.
    pub async fn list_namespaces(&self) -> Result<Vec<api::Namespace>, Status> {
        let mut all = Vec::new();
        for page in 1u32.. {
            let query = [("page", page), ("per_page", 1000)];
            let env = self.call(self.http.get(self.url("")).query(&query)).await?;
            let items = env["result"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                break;
            }
            all.extend(items.iter().map(Self::namespace));
        }
        Ok(all)
    }

    pub async fn get_namespace(&self, namespace_id: &str) -> Result<api::Namespace, Status> {
        let env = self.call(self.http.get(self.url(&format!("/{namespace_id}")))).await?;
        Ok(Self::namespace(&env["result"]))
    }

    pub async fn rename_namespace(&self, namespace_id: &str, title: &str) -> Result<api::Namespace, Status> {
        let req = self.http.put(self.url(&format!("/{namespace_id}"))).json(&json!({ "title": title }));
        Ok(Self::namespace(&self.call(req).await?["result"]))
    }

    pub async fn delete_namespace(&self, namespace_id: &str) -> Result<(), Status> {
        self.call(self.http.delete(self.url(&format!("/{namespace_id}")))).await.map(drop)
    }

    fn key_url(&self, ns: &str, kind: &str, key: &str) -> String {
        self.url(&format!("/{ns}/{kind}/{}", encode(key.as_bytes())))
    }

    pub async fn put(&self, req: api::PutRequest) -> Result<api::WriteResponse, Status> {
        let mut query = Vec::new();
        query.extend(req.expiration.map(|e| ("expiration", e)));
        query.extend(req.expiration_ttl.map(|e| ("expiration_ttl", e)));
        let mut http = self.http.put(self.key_url(&req.namespace_id, "values", &req.key)).query(&query);
        if let Some(v) = req.if_version {
            http = http.header(reqwest::header::IF_MATCH, format!("\"{v}\""));
        }
        if req.if_absent {
            http = http.header(reqwest::header::IF_NONE_MATCH, "*");
        }
        let http = match req.metadata_json {
            Some(meta) => {
                let value = reqwest::multipart::Part::bytes(req.value.to_vec()).file_name("value");
                http.multipart(reqwest::multipart::Form::new().part("value", value).text("metadata", meta))
            }
            None => http.body(req.value.to_vec()),
        };
        let resp = self.send(http).await?;
        let version = header_u64(&resp, "kv-version").unwrap_or(0);
        Ok(api::WriteResponse { version, expiration: None })
    }

    /// `get`, for a read Workers KV's REST API can express: strong and session reads need gRPC.
    pub async fn read(&self, req: api::GetRequest) -> Result<api::GetResponse, Status> {
        if req.consistency != api::Consistency::Eventual as i32 || req.min_version > 0 {
            return Err(Status::unimplemented("strong and session reads need the gRPC API"));
        }
        self.get(&req.namespace_id, &req.key, req.cache_ttl).await
    }

    /// A value and its metadata; absent keys are `found: false`, as over gRPC.
    pub async fn get(&self, namespace_id: &str, key: &str, cache_ttl: Option<i64>) -> Result<api::GetResponse, Status> {
        let query: Vec<(&str, i64)> = cache_ttl.map(|t| ("cache_ttl", t)).into_iter().collect();
        let resp = match self.send(self.http.get(self.key_url(namespace_id, "values", key)).query(&query)).await {
            Err(s) if error_code(&s) == Some(KEY_NOT_FOUND) => return Ok(api::GetResponse::default()),
            other => other?,
        };
        let status = match resp.headers().get("kv-cache-status").and_then(|v| v.to_str().ok()) {
            Some("HIT") => api::CacheStatus::Hit,
            Some("STALE") => api::CacheStatus::Stale,
            _ => api::CacheStatus::Miss,
        };
        let served_by = resp
            .headers()
            .get("kv-served-by")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| api::ServedBy::from_str_name(&format!("SERVED_BY_{v}")))
            .unwrap_or_default();
        let (version, age_ms) = (header_u64(&resp, "kv-version").unwrap_or(0), header_u64(&resp, "kv-age-ms"));
        let expiration = header_u64(&resp, "expiration").and_then(|e| i64::try_from(e).ok());
        let value = resp.bytes().await.map_err(unavailable)?;
        let meta = self.call(self.http.get(self.key_url(namespace_id, "metadata", key)).query(&query)).await?;
        let metadata_json = (!meta["result"].is_null()).then(|| meta["result"].to_string());
        Ok(api::GetResponse {
            found: true,
            value,
            metadata_json,
            expiration,
            cache_status: status as i32,
            version,
            age_ms: age_ms.unwrap_or(0),
            served_by: served_by as i32,
        })
    }

    /// Deletes `key` (only at version `if_version`, when given).
    pub async fn delete(
        &self,
        namespace_id: &str,
        key: &str,
        if_version: Option<u64>,
    ) -> Result<api::WriteResponse, Status> {
        let mut http = self.http.delete(self.key_url(namespace_id, "values", key));
        if let Some(v) = if_version {
            http = http.header(reqwest::header::IF_MATCH, format!("\"{v}\""));
        }
        let resp = self.send(http).await?;
        Ok(api::WriteResponse { version: header_u64(&resp, "kv-version").unwrap_or(0), expiration: None })
    }

    /// One page of keys (never an empty one while the list goes on, over REST).
    pub async fn list(&self, req: api::ListRequest) -> Result<api::ListResponse, Status> {
        let mut query = vec![("prefix", req.prefix), ("cursor", req.cursor)];
        query.extend(req.limit.map(|l| ("limit", l.to_string())));
        let env = self.call(self.http.get(self.url(&format!("/{}/keys", req.namespace_id))).query(&query)).await?;
        let keys = env["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|k| api::ListedKey {
                name: k["name"].as_str().unwrap_or_default().to_owned(),
                expiration: k["expiration"].as_i64(),
                metadata_json: k.get("metadata").map(Value::to_string),
            })
            .collect();
        let cursor = env["result_info"]["cursor"].as_str().unwrap_or_default().to_owned();
        Ok(api::ListResponse { keys, list_complete: cursor.is_empty(), cursor })
    }

    fn bulk_report(env: &Value, version: u64) -> api::BulkWriteResponse {
        let unsuccessful: Vec<String> = env["result"]["unsuccessful_keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect();
        let successful = env["result"]["successful_key_count"].as_u64().unwrap_or(0);
        api::BulkWriteResponse {
            successful_key_count: u32::try_from(successful).unwrap_or(u32::MAX),
            unsuccessful_keys: unsuccessful,
            errors: Vec::new(),
            version,
        }
    }

    /// Writes items in one request; values travel base64-encoded, so any bytes do.
    pub async fn put_bulk(&self, req: api::PutBulkRequest) -> Result<api::BulkWriteResponse, Status> {
        if req.items.iter().any(|i| i.if_version.is_some() || i.if_absent) {
            return Err(no_bulk_conditions());
        }
        let items: Vec<Value> = req
            .items
            .iter()
            .map(|i| {
                let mut item = json!({
                    "key": i.key,
                    "value": base64::engine::general_purpose::STANDARD.encode(&i.value),
                    "base64": true,
                });
                if let Some(e) = i.expiration {
                    item["expiration"] = json!(e);
                }
                if let Some(t) = i.expiration_ttl {
                    item["expiration_ttl"] = json!(t);
                }
                if let Some(m) = i.metadata_json.as_deref().and_then(|m| serde_json::from_str::<Value>(m).ok()) {
                    item["metadata"] = m;
                }
                item
            })
            .collect();
        let resp = self.send(self.http.put(self.url(&format!("/{}/bulk", req.namespace_id))).json(&items)).await?;
        let version = header_u64(&resp, "kv-version").unwrap_or(0);
        Ok(Self::bulk_report(&resp.json().await.map_err(unavailable)?, version))
    }

    pub async fn delete_bulk(&self, req: api::DeleteBulkRequest) -> Result<api::BulkWriteResponse, Status> {
        if !req.if_versions.is_empty() {
            return Err(no_bulk_conditions());
        }
        let url = self.url(&format!("/{}/bulk/delete", req.namespace_id));
        let resp = self.send(self.http.post(url).json(&req.keys)).await?;
        let version = header_u64(&resp, "kv-version").unwrap_or(0);
        Ok(Self::bulk_report(&resp.json().await.map_err(unavailable)?, version))
    }

    /// Up to 100 keys as text, with their metadata when asked.
    pub async fn get_bulk(&self, req: api::GetBulkRequest) -> Result<api::GetBulkResponse, Status> {
        let body = json!({ "keys": req.keys, "type": "text", "withMetadata": req.with_metadata });
        let env = self.call(self.http.post(self.url(&format!("/{}/bulk/get", req.namespace_id))).json(&body)).await?;
        let values = &env["result"]["values"];
        let out = req
            .keys
            .iter()
            .map(|k| {
                let v = &values[k];
                let (value, meta) =
                    if req.with_metadata && v.is_object() { (&v["value"], v.get("metadata")) } else { (v, None) };
                api::BulkValue {
                    key: k.clone(),
                    found: !value.is_null(),
                    value: value.as_str().unwrap_or_default().to_owned(),
                    metadata_json: meta.filter(|m| !m.is_null()).map(Value::to_string),
                    ..Default::default()
                }
            })
            .collect();
        Ok(api::GetBulkResponse { values: out, cache_status: 0 })
    }
}
