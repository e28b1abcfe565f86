//! A plain HTTP client of an edge's REST gateway, as the cluster tests use it: requests are
//! built with reqwest as any client would, and a failed answer becomes the `tonic::Status` the
//! gRPC API would have given (code, message, `kv-http-status`), so one assertion checks both.

use serde_json::Value;
use std::net::SocketAddr;
use tonic::Status;

/// The account every edge serves by default.
pub const ACCOUNT: &str = "00000000000000000000000000000001";

/// One edge's REST API.
#[derive(Clone)]
pub struct Rest {
    pub http: reqwest::Client,
    /// `http://host:port/client/v4`.
    pub root: String,
}

pub use kv_client::rest::{encode, error_code, failure};

impl Rest {
    /// The REST API at `http`, sending `token` (when given) with every request.
    pub fn new(http: SocketAddr, token: Option<&str>) -> Rest {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(v) = token.and_then(|t| format!("Bearer {t}").parse().ok()) {
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let http_client = reqwest::Client::builder().default_headers(headers).build().expect("a reqwest client");
        Rest { http: http_client, root: format!("http://{http}/client/v4") }
    }

    /// The URL of the namespaces collection, or of `path` below it.
    pub fn ns_url(&self, path: &str) -> String {
        format!("{}/accounts/{ACCOUNT}/storage/kv/namespaces{path}", self.root)
    }

    /// The URL of a key's value (`kind` "values") or metadata.
    pub fn key_url(&self, ns: &str, kind: &str, key: &[u8]) -> String {
        self.ns_url(&format!("/{ns}/{kind}/{}", encode(key)))
    }

    /// Sends a request: the answer when it succeeded, else its error as a status.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, Status> {
        let resp = req.send().await.map_err(|e| Status::unavailable(e.to_string()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(failure(resp).await)
    }

    /// Sends a request and returns its envelope, checked to say `success: true`.
    pub async fn call(&self, req: reqwest::RequestBuilder) -> Result<Value, Status> {
        let envelope: Value = self.send(req).await?.json().await.map_err(|e| Status::internal(e.to_string()))?;
        if envelope["success"] != Value::Bool(true) {
            return Err(Status::internal(format!("a 2xx answer without success: {envelope}")));
        }
        Ok(envelope)
    }

    /// The `kv-version` header of a write's answer.
    pub fn version(resp: &reqwest::Response) -> u64 {
        resp.headers().get("kv-version").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0)
    }

    pub async fn create_namespace(&self, title: &str) -> Result<String, Status> {
        let env = self.call(self.http.post(self.ns_url("")).json(&serde_json::json!({ "title": title }))).await?;
        Ok(env["result"]["id"].as_str().unwrap_or_default().to_owned())
    }
}
