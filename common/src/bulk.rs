//! One item of a bulk write as wrangler's files and the REST API's `PUT .../bulk` carry it,
//! and its conversion to the client API's item. The REST gateway and the `kv` command line
//! both read this format.

use kv_proto::client::v1 as api;

/// `{key, value, expiration?, expiration_ttl?, metadata?, base64?}`.
#[derive(Debug, serde::Deserialize)]
pub struct BulkItem {
    pub key: String,
    pub value: String,
    pub expiration: Option<i64>,
    pub expiration_ttl: Option<i64>,
    pub metadata: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    pub base64: bool,
}

/// The client API's items for `items`, and the keys of those refused already: each item is
/// judged alone, so one whose value is not base64 fails by itself.
pub fn put_items(items: Vec<BulkItem>) -> (Vec<api::BulkPutItem>, Vec<String>) {
    let (mut put, mut refused) = (Vec::with_capacity(items.len()), Vec::new());
    for i in items {
        let value = if i.base64 {
            match crate::base64::decode(&i.value) {
                Ok(v) => v,
                Err(_) => {
                    refused.push(i.key);
                    continue;
                }
            }
        } else {
            i.value.into_bytes()
        };
        put.push(api::BulkPutItem {
            key: i.key,
            value: value.into(),
            expiration: i.expiration,
            expiration_ttl: i.expiration_ttl,
            metadata_json: i.metadata.map(|m| m.get().to_owned()),
            ..Default::default()
        });
    }
    (put, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_become_puts_and_bad_base64_fails_alone() {
        let items: Vec<BulkItem> = serde_json::from_str(
            r#"[{"key":"a","value":"AAEC/w==","base64":true,"metadata":{"m":1},"expiration_ttl":60},
                {"key":"b","value":"!!","base64":true},{"key":"c","value":"text"}]"#,
        )
        .unwrap();
        let (put, refused) = put_items(items);
        assert_eq!(refused, ["b"]);
        assert_eq!(put.len(), 2);
        assert_eq!(
            (&put[0].value[..], put[0].metadata_json.as_deref(), put[0].expiration_ttl),
            (&[0, 1, 2, 255][..], Some("{\"m\":1}"), Some(60))
        );
        assert_eq!(&put[1].value[..], b"text");
    }
}
