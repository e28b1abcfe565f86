//! What a request names: the account (which must be ours), the namespace and the key in its
//! path, and its query parameters.
//!
//! They are read from the raw path rather than axum's decoded captures, because a key is
//! stored exactly as its bytes: some clients percent-encode keys and some send
//! `+ & = : ; , ! ' ( ) * @ $` (and `/`) raw, so only percent-escapes are decoded (a `+`
//! stays a `+`), and a key whose bytes are not UTF-8 gets the contract's 400, not a 404.

use super::envelope::RestError;
use super::Gateway;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use kv_common::KvError;

/// The namespace a route under `/accounts/{account}/storage/kv/namespaces/{ns}` names, and
/// the key after `/values/` or `/metadata/` where there is one.
pub struct Target {
    pub ns: String,
    pub key: Result<String, KvError>,
}

/// Segments of `/client/v4/accounts/{a}/storage/kv/namespaces/{ns}/values/{key}`, split on `/`
/// (the first one empty): the account's, the namespace's and where the key starts.
const ACCOUNT: usize = 4;
const NAMESPACE: usize = 8;
const KEY: usize = 10;

/// Percent-decodes one path part into text; `+` stays `+`.
fn decode(part: &str) -> Result<String, KvError> {
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(part).collect();
    String::from_utf8(bytes).map_err(|_| KvError::KeyNotUtf8)
}

/// Checks that `account` is the gateway's: another account's paths route nowhere.
fn check_account(gw: &Gateway, account: &str) -> Result<(), RestError> {
    if decode(account).ok().as_deref() == Some(gw.account.id.as_str()) {
        Ok(())
    } else {
        Err(RestError::no_route())
    }
}

#[axum::async_trait]
impl FromRequestParts<Gateway> for Target {
    type Rejection = RestError;

    async fn from_request_parts(parts: &mut Parts, gw: &Gateway) -> Result<Target, RestError> {
        let parts: Vec<&str> = parts.uri.path().splitn(KEY + 1, '/').collect();
        check_account(gw, parts.get(ACCOUNT).copied().unwrap_or_default())?;
        let ns = decode(parts.get(NAMESPACE).copied().unwrap_or_default()).map_err(|_| KvError::NamespaceNotFound)?;
        Ok(Target { ns, key: decode(parts.get(KEY).copied().unwrap_or_default()) })
    }
}

/// A request's query parameters as `T`, read leniently, as clients send them: the first of
/// repeated parameters wins, and a query `T` cannot take is a 400 with an envelope (axum's
/// own extractor answers such requests in plain text, which clients cannot read).
pub struct Query<T>(pub T);

#[axum::async_trait]
impl<T: serde::de::DeserializeOwned, S: Sync> FromRequestParts<S> for Query<T> {
    type Rejection = RestError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Query<T>, RestError> {
        let mut params = serde_json::Map::new();
        for (k, v) in form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes()) {
            params.entry(k.into_owned()).or_insert_with(|| serde_json::Value::String(v.into_owned()));
        }
        serde_json::from_value(serde_json::Value::Object(params))
            .map(Query)
            .map_err(|e| KvError::InvalidRequest(format!("malformed query: {e}")).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_decode_percent_escapes_only() {
        assert_eq!(decode("a+b%20c").unwrap(), "a+b c");
        assert_eq!(decode("a%2Fb/c").unwrap(), "a/b/c");
        assert_eq!(decode("%E2%82%AC&=:;,!'()*@$").unwrap(), "€&=:;,!'()*@$");
        assert_eq!(decode("%zz").unwrap(), "%zz", "a stray % is a literal %");
        assert_eq!(decode("k%FF").unwrap_err(), KvError::KeyNotUtf8);
    }
}
