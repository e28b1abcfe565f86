//! The REST gateway over real HTTP, as the official clients use it: every route, the
//! envelope, each client's style of multipart write, raw and encoded keys, pagination of keys
//! and namespaces to the end, bulk in wrangler's formats, and the errors. (The KV contract
//! itself runs over REST too, in `contract.rs`.)

use kv_tests::rest::{error_code, Rest, ACCOUNT};
use kv_tests::tiers::{test_topology, Tiers};
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};
use tonic::Code;

async fn start() -> (Tiers, Rest) {
    let t = Tiers::start_topology(&test_topology(
        "[[regions]]\nname = \"a\"\ncentral_delay_ms = 2\nedges = [{ name = \"a-1\", delay_ms = 1 }]\n",
    ))
    .await
    .unwrap();
    let rest = t.rest(0);
    (t, rest)
}

/// Fails unless `r` is an error envelope with this HTTP status, code and message (any
/// message when `message` is empty).
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, http: u16, code: u64, message: &str) {
    let s = r.expect_err("the call should fail");
    assert_eq!(kv_common::error::http_status_of(&s), Some(http), "{s:?}");
    assert_eq!(error_code(&s), Some(code), "{s:?}");
    if !message.is_empty() {
        assert_eq!(s.message(), message);
    }
}

async fn value(rest: &Rest, ns: &str, key: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let resp = rest.send(rest.http.get(rest.key_url(ns, "values", key))).await?;
    Ok(resp.bytes().await.unwrap().to_vec())
}

async fn metadata(rest: &Rest, ns: &str, key: &str) -> Value {
    rest.call(rest.http.get(rest.key_url(ns, "metadata", key.as_bytes()))).await.unwrap()["result"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_serves_every_route_as_the_official_clients_call_it() {
    let (_t, rest) = start().await;
    let http = &rest.http;

    // Account discovery, as wrangler does it without an account id configured.
    let accounts = rest.call(http.get(format!("{}/accounts", rest.root))).await.unwrap();
    assert_eq!(accounts["result"][0]["id"], ACCOUNT);
    let past = rest.call(http.get(format!("{}/accounts?page=2", rest.root))).await.unwrap();
    assert_eq!(past["result"], json!([]), "an empty page past the end");
    let members = rest.call(http.get(format!("{}/memberships?page=1", rest.root))).await.unwrap();
    assert_eq!(members["result"][0]["account"]["id"], ACCOUNT);
    for path in ["/user", "/user/tokens/verify", &format!("/accounts/{ACCOUNT}")] {
        rest.call(http.get(format!("{}{path}", rest.root))).await.unwrap();
    }
    let other = format!("{}/accounts/{}/storage/kv/namespaces", rest.root, "f".repeat(32));
    refused(rest.send(http.get(other)).await, 404, 7003, "No route for that URI");
    refused(rest.send(http.get(format!("{}/nowhere", rest.root))).await, 404, 7003, "No route for that URI");
    refused(rest.send(http.patch(rest.ns_url(""))).await, 405, 7001, "Method not allowed");
    let allow = http.patch(rest.ns_url("")).send().await.unwrap().headers().get("allow").cloned();
    assert_eq!(allow.as_ref().and_then(|v| v.to_str().ok()), Some("GET,HEAD,POST"));

    // Namespaces: create, a duplicate title (code 10014), get, rename, list, delete.
    let ns = rest.create_namespace("rest-main").await.unwrap();
    refused(
        rest.create_namespace("rest-main").await,
        400,
        10014,
        "a namespace with this account ID and title already exists",
    );
    let got = rest.call(http.get(rest.ns_url(&format!("/{ns}")))).await.unwrap();
    assert_eq!(got["result"], json!({ "id": ns, "title": "rest-main", "supports_url_encoding": true }));
    let renamed = rest.call(http.put(rest.ns_url(&format!("/{ns}"))).json(&json!({ "title": "rest-renamed" })));
    assert_eq!(renamed.await.unwrap()["result"]["title"], "rest-renamed");
    refused(rest.send(http.post(rest.ns_url("")).body("{nope")).await, 400, 10001, "");
    refused(rest.send(http.get(rest.ns_url(&format!("/{}", "0".repeat(32))))).await, 404, 10013, "namespace not found");

    // Writes in each client's style; the value's bytes are stored verbatim.
    let binary: Vec<u8> = (0..=255u8).collect();
    let url = |k: &str| rest.key_url(&ns, "values", k.as_bytes());
    rest.call(http.put(url("raw")).body(binary.clone())).await.unwrap();
    rest.call(http.put(url("form")).header("content-type", "application/x-www-form-urlencoded").body("a=b&c"))
        .await
        .unwrap();
    // The Python SDK: multipart always, the value as a file part, even without metadata.
    let file = Part::bytes(binary.clone()).file_name("value").mime_str("application/octet-stream").unwrap();
    rest.call(http.put(url("py")).multipart(Form::new().part("value", file))).await.unwrap();
    // wrangler: the value and metadata as parts, metadata as JSON text.
    let pretty = format!("{{\n  \"note\": \"{}\"\n}}", "m".repeat(1011));
    let meta = Part::text(pretty.clone()).mime_str("application/json").unwrap();
    let form = Form::new().part("value", Part::bytes(b"w".to_vec()).file_name("blob")).part("metadata", meta);
    rest.call(http.put(url("wrangler")).query(&[("expiration_ttl", "3600")]).multipart(form)).await.unwrap();
    // Flattened metadata fields, as some SDK versions send an object.
    let form = Form::new().text("value", "flat").text("metadata[a]", "1").text("metadata[b][c]", "2");
    rest.call(http.put(url("flat")).multipart(form)).await.unwrap();
    let form = Form::new().text("value", "dots").text("metadata.a.b", "1").text("metadata.t[]", "x");
    rest.call(http.put(url("dotted")).multipart(form)).await.unwrap();

    assert_eq!(value(&rest, &ns, b"raw").await.unwrap(), binary);
    assert_eq!(value(&rest, &ns, b"form").await.unwrap(), b"a=b&c");
    assert_eq!(value(&rest, &ns, b"py").await.unwrap(), binary);
    assert_eq!(value(&rest, &ns, b"flat").await.unwrap(), b"flat");
    assert_eq!(
        metadata(&rest, &ns, "wrangler").await["note"].as_str().unwrap().len(),
        1011,
        "pretty JSON counted compactly"
    );
    assert_eq!(metadata(&rest, &ns, "flat").await, json!({ "a": "1", "b": { "c": "2" } }));
    assert_eq!(metadata(&rest, &ns, "dotted").await, json!({ "a": { "b": "1" }, "t[]": "x" }));
    let form = Form::new().text("value", "arr").text("metadata[tags][]", "a").text("metadata[tags][]", "b");
    rest.call(http.put(url("array")).multipart(form)).await.unwrap();
    assert_eq!(metadata(&rest, &ns, "array").await, json!({ "tags": ["a", "b"] }), "arrays as form encoders send them");
    let deep = format!("metadata{}", "[a]".repeat(100_000));
    let form = Form::new().text("value", "v").text(deep, "1");
    refused(
        rest.send(http.put(url("deep")).multipart(form)).await,
        400,
        10001,
        "Invalid request: metadata field names nest at most 32 deep",
    );
    // Repeated query parameters: the first wins; a query that cannot be read is an envelope.
    let twice = format!("{}?cache_ttl=60&cache_ttl=90", url("raw"));
    assert_eq!(rest.send(http.get(twice)).await.unwrap().bytes().await.unwrap().len(), 256);
    assert_eq!(metadata(&rest, &ns, "raw").await, Value::Null);
    let too_big = format!("{{\"note\": \"{}\"}}", "m".repeat(1020));
    let form = Form::new().text("value", "v").text("metadata", too_big);
    refused(
        rest.send(http.put(url("meta-big")).multipart(form)).await,
        413,
        10001,
        "Metadata length of 1031 exceeds limit of 1024.",
    );
    refused(
        rest.send(http.put(url("exp")).query(&[("expiration_ttl", "soon")]).body("v")).await,
        400,
        10001,
        "Invalid request: expiration_ttl must be an integer, not \"soon\"",
    );
    let form = Form::new().text("metadata", "{}");
    refused(
        rest.send(http.put(url("novalue")).multipart(form)).await,
        400,
        10001,
        "Invalid request: the multipart body has no value part",
    );

    // Keys: percent-escapes are decoded, nothing else; a raw `+` stays a `+`.
    let special = "a+b &=:;,!'()*@$/é";
    rest.call(http.put(url(special)).body("special")).await.unwrap();
    assert_eq!(value(&rest, &ns, special.as_bytes()).await.unwrap(), b"special");
    let raw = format!("{}/{ns}/values/a+b%20&=:;,!'()*@$/%C3%A9", rest.ns_url(""));
    assert_eq!(rest.send(http.get(raw)).await.unwrap().bytes().await.unwrap(), "special", "sent unencoded");
    let plus = format!("{}/{ns}/values/x+y", rest.ns_url(""));
    rest.call(http.put(plus).body("plus")).await.unwrap();
    assert_eq!(value(&rest, &ns, b"x+y").await.unwrap(), b"plus");
    assert!(value(&rest, &ns, b"x y").await.is_err(), "a + is never a space");
    refused(value(&rest, &ns, b"k\xff").await, 400, 10001, "Key names must be valid UTF-8.");
    refused(value(&rest, &ns, b"never-written").await, 404, 10009, "key not found");
    let meta_missing = rest.send(http.get(rest.key_url(&ns, "metadata", b"never-written"))).await;
    refused(meta_missing, 404, 10009, "key not found");
    refused(
        value(&rest, &ns, &[b'k'; 513]).await,
        414,
        10001,
        "UTF-8 encoded length of 513 exceeds key length limit of 512.",
    );

    // The freshness of an answer is in its headers; a write's version too.
    let resp = rest.send(http.get(url("raw"))).await.unwrap();
    assert!(["HIT", "MISS"].contains(&resp.headers()["kv-cache-status"].to_str().unwrap()));
    assert!(["EDGE", "REGIONAL", "CENTRAL"].contains(&resp.headers()["kv-served-by"].to_str().unwrap()));
    // A write within the per-key interval is 429, with the code clients retry on and
    // Retry-After. Five writes sent at once: one lands, the others come within the interval.
    let burst = (0..5).map(|i| http.put(url("burst")).body(format!("b{i}")).send());
    let answers: Vec<reqwest::Response> =
        futures::future::join_all(burst).await.into_iter().map(Result::unwrap).collect();
    let landed = answers.iter().filter(|a| a.status().is_success()).count();
    assert!((1..5).contains(&landed), "one write of the burst lands, not all: {landed}");
    for a in answers.into_iter().filter(|a| !a.status().is_success()) {
        assert_eq!(a.status().as_u16(), 429);
        assert_eq!(a.headers().get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
        let env: Value = a.json().await.unwrap();
        assert_eq!(env["errors"][0], json!({ "code": 10049, "message": "Too Many Requests" }));
    }
    let delete = || async { rest.send(http.delete(url("form"))).await.ok() };
    let written = kv_tests::eventually(std::time::Duration::from_secs(5), "the delete", delete).await.unwrap();
    assert!(Rest::version(&written) > 0);
    refused(value(&rest, &ns, b"form").await, 404, 10009, "key not found");

    // Bulk, in wrangler's file format: base64 items, metadata, expirations, a bad item.
    let items = json!([
        { "key": "b1", "value": "one" },
        { "key": "b2", "value": "AAEC/w==", "base64": true, "metadata": { "m": 1 } },
        { "key": "b3", "value": "{\"n\": 1e400}", "expiration_ttl": 3600 },
        { "key": "", "value": "bad" },
        { "key": "b4", "value": "!!", "base64": true },
    ]);
    let done = rest.call(http.put(rest.ns_url(&format!("/{ns}/bulk"))).json(&items)).await.unwrap();
    assert_eq!(done["result"], json!({ "successful_key_count": 3, "unsuccessful_keys": ["b4", ""] }));
    assert_eq!(value(&rest, &ns, b"b2").await.unwrap(), [0, 1, 2, 255]);
    let get = |body: Value| rest.call(http.post(rest.ns_url(&format!("/{ns}/bulk/get"))).json(&body));
    let text = get(json!({ "keys": ["b1", "nope"] })).await.unwrap();
    assert_eq!(text["result"]["values"], json!({ "b1": "one", "nope": null }));
    let with_meta = get(json!({ "keys": ["b2"], "withMetadata": true })).await.unwrap();
    assert_eq!(with_meta["result"]["values"]["b2"]["metadata"], json!({ "m": 1 }));
    let as_json =
        rest.send(http.post(rest.ns_url(&format!("/{ns}/bulk/get"))).json(&json!({ "keys": ["b3"], "type": "json" })));
    let body = as_json.await.unwrap().text().await.unwrap();
    assert!(body.contains("{\"n\": 1e400}"), "JSON values go out as stored: {body}");
    refused(
        get(json!({ "keys": ["b1"], "type": "json" })).await,
        400,
        10001,
        "At least one of the requested keys corresponds to a non-json value",
    );
    refused(get(json!({ "keys": [] })).await, 400, 10001, "You must request a minimum of 1 key");
    let too_many: Vec<String> = (0..10_001).map(|i| format!("k{i}")).collect();
    refused(
        rest.send(http.post(rest.ns_url(&format!("/{ns}/bulk/delete"))).json(&too_many)).await,
        413,
        10001,
        "Bulk request holds 10001 items, more than the limit of 10000.",
    );
    refused(rest.send(http.put(rest.ns_url(&format!("/{ns}/bulk"))).body("[{\"key\": 1}]")).await, 400, 10001, "");
    // Both ways of deleting in bulk: wrangler's DELETE and the SDKs' POST (each retried
    // until the keys' write interval has passed, as items within it are refused with 429).
    let bulk = rest.ns_url(&format!("/{ns}/bulk"));
    let r = &rest;
    let deleted = |req: reqwest::RequestBuilder, n: u64| async move {
        let env = r.call(req).await.ok()?;
        (env["result"]["successful_key_count"] == n).then_some(())
    };
    let wait = std::time::Duration::from_secs(5);
    let by_delete = || deleted(http.delete(&bulk).json(&json!(["b1"])), 1);
    kv_tests::eventually(wait, "DELETE /bulk", by_delete).await.unwrap();
    let by_post = || deleted(http.post(format!("{bulk}/delete")).json(&json!(["b2", "b3"])), 2);
    kv_tests::eventually(wait, "POST /bulk/delete", by_post).await.unwrap();
    let gone = get(json!({ "keys": ["b1", "b2", "b3"] })).await.unwrap();
    assert_eq!(gone["result"]["values"], json!({ "b1": null, "b2": null, "b3": null }));

    // Deleting the namespace removes it.
    rest.call(http.delete(rest.ns_url(&format!("/{ns}")))).await.unwrap();
    refused(rest.send(http.get(rest.ns_url(&format!("/{ns}")))).await, 404, 10013, "namespace not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_namespaces_page_to_the_end_and_no_page_is_empty_before_it() {
    let (_t, rest) = start().await;
    let http = &rest.http;
    let ns = rest.create_namespace("paging").await.unwrap();
    let items: Vec<Value> = (0..95).map(|i| json!({ "key": format!("p{i:03}"), "value": "v" })).collect();
    rest.call(http.put(rest.ns_url(&format!("/{ns}/bulk"))).json(&items)).await.unwrap();

    // Page by tens to the end: a page may be short, but never empty while a cursor follows.
    let (mut names, mut cursor, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let query = [("limit", "10"), ("cursor", cursor.as_str()), ("prefix", "p")];
        let env = rest.call(http.get(rest.ns_url(&format!("/{ns}/keys"))).query(&query)).await.unwrap();
        let page: Vec<String> =
            env["result"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap().to_owned()).collect();
        cursor = env["result_info"]["cursor"].as_str().unwrap().to_owned();
        assert_eq!(env["result_info"]["count"], page.len());
        assert!(!page.is_empty() || cursor.is_empty(), "an empty page with cursor {cursor:?}");
        pages += 1;
        names.extend(page);
        if cursor.is_empty() {
            break;
        }
    }
    let want: Vec<String> = (0..95).map(|i| format!("p{i:03}")).collect();
    assert_eq!(names, want);
    assert_eq!(pages, 10);

    // Namespaces: the SDKs ask for per_page=1000; wrangler pages by title; past the end is empty.
    for i in 0..5 {
        rest.create_namespace(&format!("page-{i}")).await.unwrap();
    }
    let list = |q: Vec<(&'static str, String)>| rest.call(http.get(rest.ns_url("")).query(&q));
    let all = list(vec![("per_page", "1000".into())]).await.unwrap();
    assert_eq!(all["result"].as_array().unwrap().len(), 6);
    assert_eq!(all["result_info"]["total_count"], 6);
    let mut titles = Vec::new();
    for page in 1.. {
        let q = vec![
            ("page", page.to_string()),
            ("per_page", "2".into()),
            ("order", "title".into()),
            ("direction", "asc".into()),
        ];
        let env = list(q).await.unwrap();
        let got = env["result"].as_array().unwrap().clone();
        if got.is_empty() {
            assert_eq!(page, 4, "three pages of two, then an empty page");
            break;
        }
        titles.extend(got.iter().map(|n| n["title"].as_str().unwrap().to_owned()));
    }
    assert_eq!(titles, ["page-0", "page-1", "page-2", "page-3", "page-4", "paging"]);
    let desc = list(vec![("direction", "desc".into())]).await.unwrap();
    assert_eq!(desc["result"][0]["title"], "paging");
    let bad = rest.send(http.get(rest.ns_url("")).query(&[("per_page", "lots")])).await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
}
