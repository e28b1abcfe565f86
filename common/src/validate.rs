//! Checks of SPEC.md section 2, in the order the contract fixes for a write:
//! key, expiration options, metadata, value size. A failed check changes nothing.

use crate::{KvError, KvResult, Limits};

/// Checks a key name.
pub fn key(key: &str, limits: &Limits) -> KvResult<()> {
    if key.is_empty() {
        return Err(KvError::KeyEmpty);
    }
    if key == "." || key == ".." {
        return Err(KvError::KeyIllegal { key: key.to_owned() });
    }
    if key.len() > limits.max_key_bytes {
        return Err(KvError::KeyTooLong { len: key.len(), limit: limits.max_key_bytes });
    }
    Ok(())
}

/// Checks a list prefix: at most as long as a key may be (an empty prefix lists everything).
pub fn prefix(prefix: &str, limits: &Limits) -> KvResult<()> {
    if prefix.len() > limits.max_key_bytes {
        return Err(KvError::KeyTooLong { len: prefix.len(), limit: limits.max_key_bytes });
    }
    Ok(())
}

/// Resolves `expiration` / `expiration_ttl` into one absolute expiration (Unix seconds)
/// measured from `now_secs`; the TTL wins when both are given.
pub fn expiration(
    expiration: Option<i64>,
    expiration_ttl: Option<i64>,
    now_secs: i64,
    limits: &Limits,
) -> KvResult<Option<i64>> {
    let min = limits.min_expiration_ttl_secs;
    if let Some(ttl) = expiration_ttl {
        if ttl <= 0 {
            return Err(KvError::ExpirationTtlNotPositive { value: ttl });
        }
        if ttl < min {
            return Err(KvError::ExpirationTtlTooSmall { value: ttl, min });
        }
        return Ok(Some(now_secs.saturating_add(ttl)));
    }
    if let Some(at) = expiration {
        if at <= now_secs {
            return Err(KvError::ExpirationNotFuture { value: at });
        }
        if at < now_secs.saturating_add(min) {
            return Err(KvError::ExpirationTooSoon { value: at, min });
        }
        return Ok(Some(at));
    }
    Ok(None)
}

/// Checks metadata text: valid JSON, at most the limit once serialized compactly.
/// Returns the compact form, which is what gets stored.
pub fn metadata(json: Option<&str>, limits: &Limits) -> KvResult<Option<String>> {
    let Some(text) = json else { return Ok(None) };
    let compact = compact_json(text).ok_or(KvError::MetadataNotJson)?;
    if compact.len() > limits.max_metadata_bytes {
        return Err(KvError::MetadataTooLarge { len: compact.len(), limit: limits.max_metadata_bytes });
    }
    Ok(Some(compact))
}

/// JSON text in the compact form the store keeps (`None` when it is not JSON): the text
/// without the whitespace between tokens, so any JSON value keeps exactly what it says
/// (`1e400`, lone surrogate escapes, any depth; SPEC.md section 2: metadata is any JSON
/// value). A tier that keeps what a write stored uses the same form.
pub fn compact_json(text: &str) -> Option<String> {
    serde_json::from_str::<serde::de::IgnoredAny>(text).ok()?;
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    Some(out)
}

/// Whether `text` is what JavaScript's `JSON.parse` accepts, as a bulk get of type `json`
/// must judge it (SPEC.md section 3): the JSON grammar with no depth limit, numbers of any
/// magnitude (`1e400`) and lone surrogate escapes. serde_json skips a value without building
/// it, which checks exactly the grammar, iteratively. A leading byte-order mark is dropped,
/// as decoding a value's bytes to text does before `JSON.parse` sees them.
pub fn is_json(text: &str) -> bool {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// Checks a value's size.
pub fn value_len(len: usize, limits: &Limits) -> KvResult<()> {
    if len > limits.max_value_bytes {
        return Err(KvError::ValueTooLarge { len, limit: limits.max_value_bytes });
    }
    Ok(())
}

/// A put that passed every check, with its expiration made absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPut {
    pub expiration: Option<i64>,
    pub metadata: Option<String>,
}

/// Runs every check of a put in the contract's order.
pub fn put(
    key_name: &str,
    expiration_at: Option<i64>,
    expiration_ttl: Option<i64>,
    metadata_json: Option<&str>,
    value_length: usize,
    now_secs: i64,
    limits: &Limits,
) -> KvResult<CheckedPut> {
    key(key_name, limits)?;
    let expiration = expiration(expiration_at, expiration_ttl, now_secs, limits)?;
    let metadata = metadata(metadata_json, limits)?;
    value_len(value_length, limits)?;
    Ok(CheckedPut { expiration, metadata })
}

/// Resolves a read's cacheTtl (seconds), applying the default when absent.
pub fn cache_ttl(cache_ttl: Option<i64>, limits: &Limits) -> KvResult<i64> {
    let Some(v) = cache_ttl else { return Ok(limits.default_cache_ttl_secs) };
    if v < limits.min_cache_ttl_secs {
        return Err(KvError::CacheTtlTooSmall { value: v, min: limits.min_cache_ttl_secs });
    }
    if v > limits.max_cache_ttl_secs {
        return Err(KvError::CacheTtlTooLarge { value: v, max: limits.max_cache_ttl_secs });
    }
    Ok(v)
}

/// Resolves a list limit, applying the default (the maximum) when absent.
pub fn list_limit(limit: Option<i64>, limits: &Limits) -> KvResult<u32> {
    let Some(v) = limit else { return Ok(limits.max_list_limit) };
    if v < 1 {
        return Err(KvError::ListLimitTooSmall { value: v });
    }
    if v > i64::from(limits.max_list_limit) {
        return Err(KvError::ListLimitTooLarge { value: v, max: limits.max_list_limit });
    }
    Ok(v as u32)
}

/// Checks the number of keys of a bulk get.
pub fn bulk_get_count(count: usize, limits: &Limits) -> KvResult<()> {
    if count == 0 {
        return Err(KvError::BulkGetTooFew);
    }
    if count > limits.max_bulk_get_keys {
        return Err(KvError::BulkGetTooMany { max: limits.max_bulk_get_keys });
    }
    Ok(())
}

/// Checks the item count and total size of a bulk write or delete.
pub fn bulk_write(count: usize, bytes: usize, limits: &Limits) -> KvResult<()> {
    if count > limits.max_bulk_write_items {
        return Err(KvError::BulkWriteTooMany { count, max: limits.max_bulk_write_items });
    }
    if bytes > limits.max_bulk_write_bytes {
        return Err(KvError::BulkWriteTooLarge { bytes, max: limits.max_bulk_write_bytes });
    }
    Ok(())
}

/// A write's compare-and-set condition as the store takes it: the version the key must
/// have, 0 for "absent"; `if_absent` and `if_version` exclude each other.
pub fn condition(if_version: Option<u64>, if_absent: bool) -> KvResult<Option<u64>> {
    match (if_version, if_absent) {
        (Some(_), true) => Err(KvError::InvalidRequest("if_version and if_absent exclude each other".into())),
        (None, true) => Ok(Some(0)),
        (v, false) => Ok(v),
    }
}

/// "Last wins" within one write request: for each item (by its key), the position of the
/// item that decides the key, the last one naming it. Every tier applies only the deciding
/// items, so all of them end up holding the same version of every key.
pub fn last_wins<'a>(keys: impl IntoIterator<Item = &'a str>) -> Vec<usize> {
    let keys: Vec<&str> = keys.into_iter().collect();
    let mut last: std::collections::HashMap<&str, usize> = std::collections::HashMap::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        last.insert(k, i);
    }
    keys.iter().map(|k| last[k]).collect()
}

/// The version an entity tag names (`"42"`, as reads and writes give it): strong tags of
/// one version only, since a weak tag (`W/"42"`) never matches `If-Match`.
pub fn etag_version(tag: &str) -> KvResult<u64> {
    let bad = |why: &str| KvError::InvalidRequest(format!("{why}, not {tag:?}"));
    let tag = tag.trim();
    if tag.starts_with("W/") {
        return Err(bad("a weak ETag never matches If-Match"));
    }
    let inner = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(tag);
    if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("If-Match takes one version ETag such as \"42\""));
    }
    inner.parse().map_err(|_| bad("the version is too large"))
}

/// Longest request id a client may give, in bytes (the edge scopes it to the caller's token).
pub const MAX_CLIENT_REQUEST_ID_BYTES: usize = 64;

/// Checks a client's name for its write: at most `MAX_CLIENT_REQUEST_ID_BYTES`.
pub fn client_request_id(id: &str) -> KvResult<()> {
    if id.len() > MAX_CLIENT_REQUEST_ID_BYTES {
        return Err(KvError::InvalidRequest(format!(
            "request_id is {} bytes, more than {MAX_CLIENT_REQUEST_ID_BYTES}",
            id.len()
        )));
    }
    Ok(())
}

/// Longest request id accepted, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Checks a request id: empty means none; otherwise at most `MAX_REQUEST_ID_BYTES`.
pub fn request_id(id: &str) -> KvResult<Option<String>> {
    match id.len() {
        0 => Ok(None),
        n if n > MAX_REQUEST_ID_BYTES => {
            Err(KvError::InvalidRequest(format!("request_id is {n} bytes, more than {MAX_REQUEST_ID_BYTES}")))
        }
        _ => Ok(Some(id.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn msg<T: std::fmt::Debug>(r: KvResult<T>) -> (u16, String) {
        let e = r.unwrap_err();
        (e.http_status(), e.to_string())
    }

    #[test]
    fn key_rules() {
        let l = Limits::default();
        assert_eq!(msg(key("", &l)), (400, "Key names must not be empty".into()));
        assert_eq!(msg(key(".", &l)), (400, "Illegal key name \".\". Please use a different name.".into()));
        assert_eq!(msg(key("..", &l)), (400, "Illegal key name \"..\". Please use a different name.".into()));
        assert!(key("...", &l).is_ok());
        assert!(key(&"a".repeat(512), &l).is_ok());
        assert_eq!(
            msg(key(&"a".repeat(513), &l)),
            (414, "UTF-8 encoded length of 513 exceeds key length limit of 512.".into())
        );
        // The limit counts UTF-8 bytes, not characters: 171 three-byte characters are 513 bytes.
        assert_eq!(msg(key(&"€".repeat(171), &l)).0, 414);
        assert!(key(&"€".repeat(170), &l).is_ok());
    }

    #[test]
    fn prefix_rules() {
        let l = Limits::default();
        assert!(prefix("", &l).is_ok());
        assert!(prefix(&"p".repeat(512), &l).is_ok());
        assert_eq!(
            msg(prefix(&"p".repeat(513), &l)),
            (414, "UTF-8 encoded length of 513 exceeds key length limit of 512.".into())
        );
    }

    #[test]
    fn json_is_what_javascript_parses() {
        let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
        for ok in
            ["1e400", "-1E-400", "\"\\ud800\"", &deep, " {\"a\": [1, 2.5, true, null]} ", "\u{feff}1", "\"\u{fffd}\""]
        {
            assert!(is_json(ok), "{ok:.20}");
        }
        for bad in ["", "[1,]", "01", "1.", "'a'", "\"a\u{1}\"", "NaN", "{\"a\"}", "[1] x", &deep[1..]] {
            assert!(!is_json(bad), "{bad:.20}");
        }
    }

    #[test]
    fn value_rules() {
        let l = Limits::default();
        assert!(value_len(0, &l).is_ok());
        assert!(value_len(26_214_400, &l).is_ok());
        assert_eq!(msg(value_len(26_214_401, &l)), (413, "Value length of 26214401 exceeds limit of 26214400.".into()));
    }

    #[test]
    fn metadata_rules() {
        let l = Limits::default();
        assert_eq!(metadata(None, &l).unwrap(), None);
        assert_eq!(metadata(Some("{ \"a\" : 1 }"), &l).unwrap(), Some("{\"a\":1}".into()));
        assert_eq!(metadata(Some("null"), &l).unwrap(), Some("null".into()));
        // Any JSON value, kept as written but for the whitespace between tokens.
        let odd = "{ \"n\" : 1e400 ,\n \"s\": \"a \\\" \\ud800 b\", \"d\": [[[[1 ]]]] }";
        assert_eq!(
            metadata(Some(odd), &l).unwrap().unwrap(),
            "{\"n\":1e400,\"s\":\"a \\\" \\ud800 b\",\"d\":[[[[1]]]]}"
        );
        let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
        assert_eq!(metadata(Some(&deep), &l).unwrap().unwrap(), deep);
        assert_eq!(msg(metadata(Some("{nope"), &l)), (400, "Metadata must be valid JSON.".into()));
        // A 1024-byte JSON string is accepted, 1025 bytes is not.
        let ok = format!("\"{}\"", "x".repeat(1022));
        assert!(metadata(Some(&ok), &l).is_ok());
        let big = format!("\"{}\"", "x".repeat(1023));
        assert_eq!(msg(metadata(Some(&big), &l)), (413, "Metadata length of 1025 exceeds limit of 1024.".into()));
    }

    #[test]
    fn expiration_rules() {
        let l = Limits::default();
        assert_eq!(expiration(None, None, NOW, &l).unwrap(), None);
        assert_eq!(expiration(Some(NOW + 60), None, NOW, &l).unwrap(), Some(NOW + 60));
        assert_eq!(
            msg(expiration(Some(NOW + 59), None, NOW, &l)),
            (
                400,
                format!(
                    "Invalid expiration of {}. Expiration times must be at least 60 seconds in the future.",
                    NOW + 59
                )
            )
        );
        assert_eq!(
            msg(expiration(Some(NOW), None, NOW, &l)),
            (400, format!("Invalid expiration of {NOW}. Please specify integer greater than the current number of seconds since the UNIX epoch."))
        );
        assert_eq!(expiration(None, Some(60), NOW, &l).unwrap(), Some(NOW + 60));
        assert_eq!(
            msg(expiration(None, Some(59), NOW, &l)),
            (400, "Invalid expiration_ttl of 59. Expiration TTL must be at least 60.".into())
        );
        assert_eq!(
            msg(expiration(None, Some(0), NOW, &l)),
            (400, "Invalid expiration_ttl of 0. Please specify integer greater than 0.".into())
        );
        assert_eq!(
            msg(expiration(None, Some(-5), NOW, &l)),
            (400, "Invalid expiration_ttl of -5. Please specify integer greater than 0.".into())
        );
        // The TTL wins over an absolute expiration, even an invalid one.
        assert_eq!(expiration(Some(NOW - 1), Some(120), NOW, &l).unwrap(), Some(NOW + 120));
    }

    #[test]
    fn put_checks_run_in_contract_order() {
        let l = Limits::default();
        let huge_meta = format!("\"{}\"", "x".repeat(2000));
        // Key first, even when everything else is wrong too.
        assert_eq!(put("", Some(1), None, Some(&huge_meta), usize::MAX, NOW, &l).unwrap_err(), KvError::KeyEmpty);
        // Then expiration.
        assert!(matches!(
            put("k", Some(1), None, Some(&huge_meta), usize::MAX, NOW, &l).unwrap_err(),
            KvError::ExpirationNotFuture { .. }
        ));
        // Then metadata.
        assert!(matches!(
            put("k", None, None, Some(&huge_meta), usize::MAX, NOW, &l).unwrap_err(),
            KvError::MetadataTooLarge { .. }
        ));
        // Then value size.
        assert!(matches!(put("k", None, None, None, usize::MAX, NOW, &l).unwrap_err(), KvError::ValueTooLarge { .. }));
        let ok = put("k", None, Some(100), Some("[1]"), 10, NOW, &l).unwrap();
        assert_eq!(ok, CheckedPut { expiration: Some(NOW + 100), metadata: Some("[1]".into()) });
    }

    #[test]
    fn cache_ttl_rules() {
        let l = Limits::default();
        assert_eq!(cache_ttl(None, &l).unwrap(), 60);
        assert_eq!(cache_ttl(Some(30), &l).unwrap(), 30);
        assert_eq!(
            msg(cache_ttl(Some(29), &l)),
            (400, "Invalid cache_ttl of 29. Cache TTL must be at least 30.".into())
        );
        assert_eq!(cache_ttl(Some((1 << 53) - 1), &l).unwrap(), (1 << 53) - 1);
        assert_eq!(msg(cache_ttl(Some(1 << 53), &l)).0, 400);
    }

    #[test]
    fn list_limit_rules() {
        let l = Limits::default();
        assert_eq!(list_limit(None, &l).unwrap(), 1000);
        assert_eq!(list_limit(Some(1), &l).unwrap(), 1);
        assert_eq!(list_limit(Some(1000), &l).unwrap(), 1000);
        assert_eq!(
            msg(list_limit(Some(0), &l)),
            (400, "Invalid key_count_limit of 0. Please specify an integer greater than 0.".into())
        );
        assert_eq!(
            msg(list_limit(Some(1001), &l)),
            (400, "Invalid key_count_limit of 1001. Please specify an integer less than 1000.".into())
        );
    }

    #[test]
    fn bulk_rules() {
        let l = Limits::default();
        assert_eq!(msg(bulk_get_count(0, &l)), (400, "You must request a minimum of 1 key".into()));
        assert_eq!(msg(bulk_get_count(101, &l)), (400, "You can request a maximum of 100 keys".into()));
        assert!(bulk_get_count(100, &l).is_ok());
        assert!(bulk_write(10_000, 100_000_000, &l).is_ok());
        assert_eq!(msg(bulk_write(10_001, 10, &l)).0, 413);
        assert_eq!(msg(bulk_write(1, 100_000_001, &l)).0, 413);
        assert_eq!(KvError::BulkGetTooLarge.http_status(), 413);
        assert_eq!(KvError::BulkGetTooLarge.to_string(), "Total size of request exceeds the limit of 25MB");
        assert_eq!(
            KvError::BulkGetNotJson.to_string(),
            "At least one of the requested keys corresponds to a non-json value"
        );
    }

    #[test]
    fn limits_are_configurable() {
        let l = Limits { max_key_bytes: 4, min_cache_ttl_secs: 1, ..Limits::default() };
        assert_eq!(msg(key("abcde", &l)), (414, "UTF-8 encoded length of 5 exceeds key length limit of 4.".into()));
        assert_eq!(cache_ttl(Some(1), &l).unwrap(), 1);
    }

    #[test]
    fn the_last_item_naming_a_key_decides_it() {
        assert_eq!(last_wins(["a", "b", "a", "c", "b"]), vec![2, 4, 2, 3, 4]);
        assert_eq!(last_wins(Vec::<&str>::new()), Vec::<usize>::new());
        assert_eq!(request_id("").unwrap(), None);
        assert!(request_id(&"x".repeat(129)).is_err());
    }
}
