//! Conversions between the store API's wire types and the caches' values.

use crate::cache::{Cached, Effect, Value};
use kv_proto::store::v1 as pb;

/// The cached form of a stored entry.
pub fn value_of(e: &pb::Entry) -> Value {
    Value { bytes: e.value.clone(), metadata_json: e.metadata_json.clone(), expiration: e.expiration }
}

/// The wire form of a cached answer visible at `now_secs`; `None` when absent or expired.
pub fn entry_of(c: &Cached, now_secs: i64) -> Option<pb::Entry> {
    c.visible(now_secs).map(|v| pb::Entry {
        value: v.bytes.clone(),
        metadata_json: v.metadata_json.clone(),
        expiration: v.expiration,
        version: c.version,
    })
}

/// Interprets one change of the feed.
pub fn effect_of(c: &pb::Change) -> Effect {
    let key = || (c.namespace_id.clone(), c.key.clone());
    match pb::ChangeKind::try_from(c.kind) {
        Ok(pb::ChangeKind::Put) if c.value_omitted => Effect::Drop(key()),
        Ok(pb::ChangeKind::Put) => Effect::Set(
            key(),
            Some(Value { bytes: c.value.clone(), metadata_json: c.metadata_json.clone(), expiration: c.expiration }),
        ),
        Ok(pb::ChangeKind::Delete) => Effect::Set(key(), None),
        Ok(pb::ChangeKind::NamespaceDeleted) => Effect::DropNamespace(c.namespace_id.clone()),
        _ => Effect::Unknown,
    }
}
