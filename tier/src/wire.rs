//! Conversions between the store API's wire types and the tiers' own.

use crate::change::Effect;
use crate::copy::{Copy, Value};
use bytes::Bytes;
use kv_common::telemetry;
use kv_proto::store::v1 as pb;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Values up to this size are copied out of the message they came in before they are
/// cached; larger ones are kept where they are.
const DETACH_MAX: usize = 1 << 20;

/// `b` in an allocation of its own when it is small. A value decoded from a message is a
/// slice of the message's buffer and keeps all of it alive: a 1 KiB value of a 4 MiB bulk
/// write or of a batch answer pinned the whole buffer for as long as it stayed cached,
/// while the cache counted 1 KiB (an edge with a 128 MiB cache held 390 MB after a bulk
/// load). Copying a small value costs little; a large one is most of its message anyway.
fn detach(b: &Bytes) -> Bytes {
    if b.len() <= DETACH_MAX {
        Bytes::copy_from_slice(b)
    } else {
        b.clone()
    }
}

/// The cached form of a stored entry.
pub fn value_of(e: &pb::Entry) -> Value {
    Value { bytes: detach(&e.value), metadata_json: e.metadata_json.clone(), expiration: e.expiration }
}

/// The wire form of a copy visible at `now_secs`; `None` when absent or expired.
pub fn entry_of(c: &Copy, now_secs: i64) -> Option<pb::Entry> {
    c.visible(now_secs).map(|v| pb::Entry {
        value: v.bytes.clone(),
        metadata_json: v.metadata_json.clone(),
        expiration: v.expiration,
        version: c.version,
    })
}

/// How a change of the feed acts on the copies of its key.
pub fn effect_of(c: &pb::Change) -> Effect {
    let key = || (c.namespace_id.clone(), c.key.clone());
    match pb::ChangeKind::try_from(c.kind) {
        Ok(pb::ChangeKind::Put) if c.value_omitted => Effect::Unknown(key()),
        Ok(pb::ChangeKind::Put) => Effect::Set(
            key(),
            Some(Value { bytes: detach(&c.value), metadata_json: c.metadata_json.clone(), expiration: c.expiration }),
        ),
        Ok(pb::ChangeKind::Delete | pb::ChangeKind::Expired) => Effect::Set(key(), None),
        Ok(pb::ChangeKind::NamespaceDeleted) => Effect::DropNamespace(c.namespace_id.clone()),
        _ => Effect::Ignore,
    }
}

/// The value a write item stored (`None` for a delete): its metadata in the compact form the
/// store keeps, and the expiration the store resolved.
pub fn written_value(op: &pb::WriteOp, result: &pb::OpResult) -> Option<Value> {
    match &op.op {
        Some(pb::write_op::Op::Put(p)) => Some(Value {
            bytes: detach(&p.value),
            metadata_json: p.metadata_json.as_deref().and_then(kv_common::validate::compact_json),
            expiration: result.expiration,
        }),
        _ => None,
    }
}

/// An age as the wire carries it: whole milliseconds, rounded up.
pub fn age_ms(age: Duration) -> u32 {
    u32::try_from(age.as_micros().div_ceil(1000)).unwrap_or(u32::MAX)
}

/// The instant an answer is fresh as of, given when its request was sent and the age it came with.
pub fn as_of(sent: Instant, age_ms: u32) -> Instant {
    sent.checked_sub(Duration::from_millis(u64::from(age_ms))).unwrap_or(sent)
}

/// Records, in the trace of each write whose changes are in `changes` (those that carry a
/// `traceparent`), a span `make` creates for this tier's handling of them, and puts that
/// span in their place: the next tier's span then becomes its child. The spans end when
/// dropped; nothing happens where no spans are exported.
pub fn trace_changes(changes: &mut [pb::Change], make: impl Fn() -> tracing::Span) -> Vec<tracing::Span> {
    let mut spans = Vec::new();
    // Changes of one write share its parent; they get one span between them.
    let mut mine: HashMap<String, String> = HashMap::new();
    for c in changes.iter_mut().filter(|c| !c.traceparent.is_empty()) {
        if let Some(span) = mine.get(&c.traceparent) {
            c.traceparent.clone_from(span);
            continue;
        }
        let Some(span) = telemetry::continue_trace(&c.traceparent, &make) else { continue };
        let Some(id) = telemetry::identity(&span) else { continue };
        let header = id.header();
        mine.insert(std::mem::replace(&mut c.traceparent, header.clone()), header);
        spans.push(span);
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_copied_out_of_their_message_large_ones_are_not() {
        let message = Bytes::from(vec![7u8; 4 << 20]);
        let small = message.slice(..1024);
        let cached = value_of(&pb::Entry { value: small.clone(), ..Default::default() });
        assert_eq!(cached.bytes, small);
        assert_ne!(cached.bytes.as_ptr(), small.as_ptr(), "a copy of its own, not a slice of the message");
        let large = message.slice(..(2 << 20));
        let cached = value_of(&pb::Entry { value: large.clone(), ..Default::default() });
        assert_eq!(cached.bytes.as_ptr(), large.as_ptr(), "no copy of a large value");
    }

    #[test]
    fn a_written_value_holds_its_metadata_as_the_store_keeps_it() {
        let put = pb::Put { value: "v".into(), metadata_json: Some("{ \"a\" : [1, 2] }".into()), ..Default::default() };
        let op = pb::WriteOp { key: "k".into(), op: Some(pb::write_op::Op::Put(put)), if_version: None };
        let result = pb::OpResult { key: "k".into(), version: 3, error: None, expiration: Some(99) };
        let v = written_value(&op, &result).expect("a put");
        assert_eq!((v.metadata_json.as_deref(), v.expiration), (Some("{\"a\":[1,2]}"), Some(99)));
    }
}
