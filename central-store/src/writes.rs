//! The leader's write path: a client request is checked item by item, reduced to one item
//! per key (the last one, "last wins"), rate-limited, and committed once, however often it
//! is retried.
//!
//! A request that carries an id is applied at most once: a retry finds the first attempt's
//! outcome recorded in the state machine (`Reader::request`), or joins the attempt still
//! under way on this leader (`InFlight`), or, when it reaches a new leader before the first
//! attempt is applied there, is recognised by the state machine itself when applied. In
//! each case the client gets the first attempt's outcome, versions included.

use crate::error::StoreResult;
use crate::node::Node;
use crate::propose::propose;
use crate::types::{
    Command, CommandResult, Decided, NamespaceDone, NamespaceWrite, Op, OpKind, Recorded, WriteOutcome,
};
use kv_common::{time, validate, KvError, Limits, NamespaceId};
use kv_proto::store::v1 as pb;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

/// Commits one write request on the leader and answers it item by item.
pub async fn write(node: &Arc<Node>, req: pb::WriteRequest) -> StoreResult<pb::WriteResponse> {
    let limits = &node.config.limits;
    let ns = NamespaceId::parse(&req.namespace_id)?;
    node.reader.namespace(&ns)?;
    let bytes: usize = req.ops.iter().map(op_bytes).sum();
    validate::bulk_write(req.ops.len(), bytes, limits)?;
    let request = validate::request_id(&req.request_id)?;
    let keys: Vec<String> = req.ops.iter().map(|op| op.key.clone()).collect();
    if let Some(first) = recorded(node, request.as_ref())? {
        return answer(&keys, first);
    }
    let n = node.clone();
    let id = request.clone();
    let attempt = async move {
        let started = Instant::now();
        let outcome = commit(&n, ns, req.ops, id).await.map_err(|e| e.to_kv())?;
        n.metrics.write_latency.observe(started.elapsed().as_secs_f64());
        Ok(Recorded::Write(outcome))
    };
    answer(&keys, node.in_flight.run(request.as_ref(), attempt).await?)
}

/// Proposes a namespace command built by `cmd` (given the request id) once per request id.
pub async fn namespace(
    node: &Arc<Node>,
    request_id: &str,
    cmd: impl FnOnce(Option<String>) -> Command,
) -> StoreResult<NamespaceDone> {
    match once(node, request_id, cmd).await? {
        Recorded::Namespace(done) => Ok(done?),
        _ => Err(reused()),
    }
}

/// Proposes a token command built by `cmd` once per request id; the version that committed it.
pub async fn token(
    node: &Arc<Node>,
    request_id: &str,
    cmd: impl FnOnce(Option<String>) -> Command,
) -> StoreResult<u64> {
    match once(node, request_id, cmd).await? {
        Recorded::Token(done) => Ok(done?),
        _ => Err(reused()),
    }
}

fn reused() -> crate::error::StoreError {
    KvError::InvalidRequest("request_id was already used by another kind of request".into()).into()
}

/// Proposes an administrative command once per request id, and what it recorded.
async fn once(
    node: &Arc<Node>,
    request_id: &str,
    cmd: impl FnOnce(Option<String>) -> Command,
) -> StoreResult<Recorded> {
    let request = validate::request_id(request_id)?;
    if let Some(first) = recorded(node, request.as_ref())? {
        return Ok(first);
    }
    let n = node.clone();
    let cmd = cmd(request.clone());
    let attempt = async move {
        match propose(&n.raft, &n.metrics, cmd).await.map_err(|e| e.to_kv())? {
            (_, CommandResult::Namespace(done)) => Ok(Recorded::Namespace(done)),
            (_, CommandResult::Token(done)) => Ok(Recorded::Token(done)),
            (_, other) => Err(KvError::Internal(format!("unexpected apply result {other:?}"))),
        }
    };
    Ok(node.in_flight.run(request.as_ref(), attempt).await?)
}

/// The outcome recorded for `request`, if it was applied already.
fn recorded(node: &Node, request: Option<&String>) -> StoreResult<Option<Recorded>> {
    let Some(id) = request else { return Ok(None) };
    let first = node.reader.request(id)?;
    if first.is_some() {
        node.metrics.duplicate_requests.inc();
    }
    Ok(first)
}

/// Decides every item, then commits the ones that take effect.
async fn commit(
    node: &Node,
    ns: NamespaceId,
    items: Vec<pb::WriteOp>,
    request: Option<String>,
) -> StoreResult<WriteOutcome> {
    let now_secs = time::now_secs();
    let mut outcomes: Vec<Result<Option<Op>, KvError>> = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| checked_op(item, i as u32, now_secs, &node.config.limits).map(Some))
        .collect();
    refuse_repeated_conditional_keys(&mut outcomes);
    // Last wins: among valid items, only the last naming a key is applied; the others
    // share its outcome.
    let valid: Vec<usize> = (0..outcomes.len()).filter(|i| outcomes[*i].is_ok()).collect();
    let keys: Vec<&str> = valid
        .iter()
        .map(|&i| outcomes[i].as_ref().ok().and_then(Option::as_ref).map_or("", |op| op.key.as_str()))
        .collect();
    let deciding = validate::last_wins(keys);
    let mut follows: Vec<Option<usize>> = vec![None; outcomes.len()];
    for (pos, &i) in valid.iter().enumerate() {
        let winner = valid[deciding[pos]];
        if winner != i {
            follows[i] = Some(winner);
        }
    }
    for (i, o) in outcomes.iter_mut().enumerate() {
        if let Ok(Some(op)) = o {
            if follows[i].is_none() && !node.limiter.allow(&ns, &op.key) {
                node.metrics.rate_limited.inc();
                *o = Err(KvError::TooManyRequests);
            }
        }
    }
    let mut decided = Decided::default();
    let mut ops = Vec::new();
    for i in 0..outcomes.len() {
        let decider = follows[i].unwrap_or(i);
        match &outcomes[decider] {
            Err(e) => decided.errors.push((i as u32, e.clone())),
            Ok(Some(op)) => {
                if let Some(exp) = op.kind.expiration() {
                    decided.expirations.push((i as u32, exp));
                }
            }
            Ok(None) => {}
        }
        if follows[i].is_none() {
            if let Ok(op) = &mut outcomes[i] {
                ops.extend(op.take());
            }
        }
    }
    if ops.is_empty() {
        return Ok(WriteOutcome::Applied { version: 0, decided });
    }
    node.batcher.submit(NamespaceWrite { namespace: ns, ops, request, decided, trace: None }).await
}

/// The response to a write request of `keys` (in order) from its outcome.
fn answer(keys: &[String], recorded: Recorded) -> StoreResult<pb::WriteResponse> {
    let (version, decided) = match recorded {
        Recorded::Write(WriteOutcome::Applied { version, decided }) => (version, decided),
        Recorded::Write(WriteOutcome::Failed(e)) => return Err(e.into()),
        Recorded::Namespace(_) | Recorded::Token(_) => return Err(reused()),
    };
    let errors: HashMap<u32, KvError> = decided.errors.into_iter().collect();
    let expirations: HashMap<u32, i64> = decided.expirations.into_iter().collect();
    let results = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let i = i as u32;
            match errors.get(&i) {
                Some(e) => pb::OpResult { key: key.clone(), version: 0, error: Some(op_error(e)), expiration: None },
                None => {
                    pb::OpResult { key: key.clone(), version, error: None, expiration: expirations.get(&i).copied() }
                }
            }
        })
        .collect();
    Ok(pb::WriteResponse { results })
}

/// Bytes a write item contributes toward the bulk size limit.
fn op_bytes(op: &pb::WriteOp) -> usize {
    let body = match &op.op {
        Some(pb::write_op::Op::Put(p)) => p.value.len() + p.metadata_json.as_ref().map_or(0, String::len),
        _ => 0,
    };
    op.key.len() + body
}

/// A key with a condition may be named only once in a request: whether a conditional item
/// or another naming the same key should win has no answer a user could rely on (etcd
/// refuses a key twice in one transaction likewise). Every item naming such a key fails.
fn refuse_repeated_conditional_keys(outcomes: &mut [Result<Option<Op>, KvError>]) {
    let mut named: HashMap<&str, (usize, bool)> = HashMap::new();
    for op in outcomes.iter().filter_map(|o| o.as_ref().ok().and_then(Option::as_ref)) {
        let e = named.entry(op.key.as_str()).or_default();
        e.0 += 1;
        e.1 |= matches!(op.kind, OpKind::Conditional { .. });
    }
    let refused: HashSet<String> =
        named.into_iter().filter(|(_, (n, cond))| *n > 1 && *cond).map(|(k, _)| k.to_owned()).collect();
    if refused.is_empty() {
        return;
    }
    for o in outcomes.iter_mut() {
        if matches!(o, Ok(Some(op)) if refused.contains(&op.key)) {
            *o = Err(KvError::InvalidRequest(
                "a key with a condition (if_version or if_absent) may appear only once in a request".into(),
            ));
        }
    }
}

/// Runs the contract's checks on item `item` and resolves its expiration on the leader's
/// clock; a condition wraps the op, to be decided when applied.
fn checked_op(op: pb::WriteOp, item: u32, now_secs: i64, limits: &Limits) -> Result<Op, KvError> {
    let checked = plain_op(op.key, op.op, now_secs, limits)?;
    Ok(match op.if_version {
        None => checked,
        Some(if_version) => {
            Op { key: checked.key, kind: OpKind::Conditional { if_version, item, then: Box::new(checked.kind) } }
        }
    })
}

fn plain_op(key: String, op: Option<pb::write_op::Op>, now_secs: i64, limits: &Limits) -> Result<Op, KvError> {
    match op {
        Some(pb::write_op::Op::Put(p)) => {
            let c = validate::put(
                &key,
                p.expiration,
                p.expiration_ttl,
                p.metadata_json.as_deref(),
                p.value.len(),
                now_secs,
                limits,
            )?;
            Ok(Op {
                key,
                kind: OpKind::Put { value: p.value.to_vec(), metadata: c.metadata, expiration: c.expiration },
            })
        }
        Some(pb::write_op::Op::Delete(_)) => {
            validate::key(&key, limits)?;
            Ok(Op { key, kind: OpKind::Delete })
        }
        None => Err(KvError::InvalidRequest("a write item must be a put or a delete".into())),
    }
}

/// The per-item form of a contract error.
fn op_error(e: &KvError) -> pb::OpError {
    pb::OpError {
        grpc_code: e.grpc_code() as i32,
        http_status: u32::from(e.http_status()),
        message: e.to_string(),
        current_version: e.current_version().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_gives_every_item_its_outcome() {
        let keys: Vec<String> = ["a", "bad", "a"].iter().map(|s| s.to_string()).collect();
        let decided = Decided { errors: vec![(1, KvError::KeyEmpty)], expirations: vec![(0, 99), (2, 99)] };
        let r = answer(&keys, Recorded::Write(WriteOutcome::Applied { version: 7, decided })).unwrap();
        let got: Vec<(u64, Option<i64>, bool)> =
            r.results.iter().map(|o| (o.version, o.expiration, o.error.is_some())).collect();
        assert_eq!(got, vec![(7, Some(99), false), (0, None, true), (7, Some(99), false)]);
    }
}
