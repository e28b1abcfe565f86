//! Cloudflare's JSON envelope, `{success, errors, messages, result, result_info?}`, and the
//! one mapping of a gRPC status (with its `kv-http-status` and `kv-error-code` trailers) to
//! an HTTP answer. Clients judge a call by `success` and reject an empty body, so every
//! answer but a raw value read is an envelope, errors included.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use kv_common::error::{current_version_of, http_status_of, ERROR_CODE_TRAILER};
use kv_common::KvError;
use serde::Serialize;
use serde_json::json;
use tonic::{Code, Status};

/// The code a client treats as "authentication failed" (wrangler knows no other).
pub const AUTH_ERROR_CODE: u32 = 10000;
/// The code of any error the contract names no code for.
pub const GENERIC_ERROR_CODE: u32 = 10001;

/// An error as a REST client sees it.
#[derive(Debug)]
pub struct RestError {
    status: StatusCode,
    code: u32,
    message: String,
    /// For a failed condition (412): the key's version then, as the `ETag` of the answer.
    current_version: Option<u64>,
}

impl RestError {
    /// A path no route serves (or naming an account that is not ours).
    pub fn no_route() -> RestError {
        RestError {
            status: StatusCode::NOT_FOUND,
            code: 7003,
            message: "No route for that URI".into(),
            current_version: None,
        }
    }

    pub fn method_not_allowed() -> RestError {
        RestError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: 7001,
            message: "Method not allowed".into(),
            current_version: None,
        }
    }
}

/// The HTTP status of a gRPC status that carries no `kv-http-status` trailer.
fn http_of_code(code: Code) -> u16 {
    match code {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        _ => 500,
    }
}

impl From<Status> for RestError {
    fn from(s: Status) -> RestError {
        let http = http_status_of(&s).unwrap_or_else(|| http_of_code(s.code()));
        let trailer = s.metadata().get(ERROR_CODE_TRAILER).and_then(|v| v.to_str().ok()?.parse().ok());
        // Per-item write errors come back without the code trailer: a 429 is still a 429.
        let code = match (trailer, http) {
            (Some(c), _) => c,
            (None, 401 | 403) => AUTH_ERROR_CODE,
            (None, 429) => KvError::TooManyRequests.api_code().unwrap_or(GENERIC_ERROR_CODE),
            (None, _) => GENERIC_ERROR_CODE,
        };
        let status = StatusCode::from_u16(http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        RestError { status, code, message: s.message().to_owned(), current_version: current_version_of(&s) }
    }
}

impl From<KvError> for RestError {
    fn from(e: KvError) -> RestError {
        e.to_status().into()
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let body = json!({
            "success": false,
            "errors": [{ "code": self.code, "message": self.message }],
            "messages": [],
            "result": null,
        });
        let mut resp = (self.status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            // One write per key per second: a client that honours Retry-After waits just enough.
            resp.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
        }
        if let Some(v) = self.current_version {
            resp.headers_mut().insert(header::ETAG, etag(v));
        }
        resp
    }
}

/// The envelope of a successful answer. It is serialized straight to text, so stored JSON
/// embedded as `RawValue` (`1e400`, lone surrogates, deep nesting) goes out as it was.
#[derive(Serialize)]
struct Success<R, I> {
    success: bool,
    errors: [(); 0],
    messages: [(); 0],
    result: R,
    #[serde(skip_serializing_if = "Option::is_none")]
    result_info: Option<I>,
}

/// A successful answer holding `result`.
pub fn ok(result: impl Serialize) -> Response {
    envelope(Success { success: true, errors: [], messages: [], result, result_info: None::<()> })
}

/// A successful answer holding one page of a list, with its `result_info`.
pub fn page(result: impl Serialize, info: impl Serialize) -> Response {
    envelope(Success { success: true, errors: [], messages: [], result, result_info: Some(info) })
}

fn envelope<R: Serialize, I: Serialize>(body: Success<R, I>) -> Response {
    match serde_json::to_string(&body) {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => RestError::from(KvError::Internal(format!("answer does not serialize: {e}"))).into_response(),
    }
}

/// Adds the version a write produced (`kv-version`), which a client may ask a later read to
/// reach; Cloudflare's API has no such field, so it travels as a header.
pub fn with_version(mut resp: Response, version: u64) -> Response {
    resp.headers_mut().insert("kv-version", axum::http::HeaderValue::from(version));
    resp
}

/// A version as an ETag, which `If-Match` takes back (compare-and-set).
pub fn etag(version: u64) -> axum::http::HeaderValue {
    axum::http::HeaderValue::from_str(&format!("\"{version}\""))
        .unwrap_or(axum::http::HeaderValue::from_static("\"0\""))
}

/// Embeds stored JSON text (metadata, a `json` value) in an answer as it is.
pub fn raw_json(text: &str) -> Result<Box<serde_json::value::RawValue>, RestError> {
    serde_json::value::RawValue::from_string(text.to_owned())
        .map_err(|e| KvError::Internal(format!("stored JSON does not parse: {e}")).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_through_their_trailers_or_their_codes() {
        let e = RestError::from(KvError::NamespaceTitleExists);
        assert_eq!((e.status.as_u16(), e.code), (400, 10014));
        let e = RestError::from(KvError::KeyTooLong { len: 513, limit: 512 });
        assert_eq!((e.status.as_u16(), e.code), (414, GENERIC_ERROR_CODE));
        let e = RestError::from(Status::unauthenticated("no token"));
        assert_eq!((e.status.as_u16(), e.code), (401, AUTH_ERROR_CODE));
        let e = RestError::from(Status::unavailable("overloaded"));
        assert_eq!(e.status.as_u16(), 503);
    }
}
