//! Checks a fault-suite history against SPEC section 4.
//!
//! Values are unique per write, so a value read names its write; versions order writes to
//! a key. What is checked, by violation kind:
//! - `unknown_value`: a read returned a value no write of that key asked for;
//! - `version_mismatch`: a value was read with a version other than the one its write got;
//! - `lost_write`: the final central state of a key is older than an acknowledged write, or
//!   holds another value at the same version;
//! - `read_your_writes`: after a write was acknowledged at an edge, a read of the key at that
//!   edge returned an older version (STALE answers included);
//! - `monotonic_reads`: a read at an edge returned an older state of a key than a read at the
//!   same edge that had ended before it began;
//! - `bounded_staleness`: a read that began more than its cacheTtl (plus `max_stale` for a
//!   STALE answer) after a write to the key was acknowledged anywhere did not reflect it;
//! - `expired_value`: a value was returned by a read that began at or after its expiration;
//! - `list_read_your_writes`: a list at an edge missed a key put there (or showed one
//!   deleted there) when no other write to the key could explain it;
//! - `not_converged`: after the faults healed, a push-mode edge still served (with a long
//!   cacheTtl) another version than the central store holds;
//! - `stale_without_fault`: an answer was STALE although no fault could keep its edge from
//!   the central store around that time;
//! - `strong_read`: a STRONG read returned an older version of a key than a write
//!   acknowledged before the read began (linearizable reads), or answered STALE;
//! - `session_read`: a session read returned an older version of a key than an acknowledged
//!   write of it at or below the read's token;
//! - `compare_and_set`: a conditional write succeeded although the key's version just before
//!   it in commit order was not the one its condition named (another write came between), or
//!   a write conditional on absence succeeded right after a put that was still live.

use super::history::{Call, KeyRead, Op, ReadMode, Recorded, Scope, Segment, WatchLog, Watched, WriteResult};
use super::linearizable::{self, Placed};
use std::collections::{HashMap, HashSet};

/// One way the history breaks SPEC section 4.
#[derive(Debug, Clone)]
pub struct Violation {
    pub kind: &'static str,
    pub detail: String,
    /// The calls that show it.
    pub ops: Vec<usize>,
}

/// What the checker must know about the run.
pub struct Settings {
    /// The edges' stale-if-error bound.
    pub max_stale_ms: u64,
    /// How long after a fault healed a STALE answer is still explained by it.
    pub stale_grace_ms: u64,
    /// Region of each edge, in edge order.
    pub edge_region: Vec<usize>,
}

/// The central store's final state of a key: its version and value (`None`: absent).
pub type Final = (u64, Option<String>);

/// How one write of one key ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Acked { version: u64 },
    Refused,
    Unknown,
}

/// One key's write, as the checker sees it.
#[derive(Debug, Clone)]
struct Write {
    op: usize,
    edge: usize,
    key: String,
    value: Option<String>,
    start: u64,
    end: u64,
    state: State,
    expiration: Option<i64>,
    /// Asked to expire (its stored expiration is known only when acknowledged).
    expiring: bool,
    if_version: Option<u64>,
}

/// One key as one read returned it.
#[derive(Debug, Clone)]
struct Read {
    op: usize,
    edge: usize,
    start: u64,
    end: u64,
    start_wall_ms: u64,
    cache_ttl_ms: u64,
    mode: ReadMode,
    got: KeyRead,
}

fn writes_of(ops: &[Op]) -> Vec<Write> {
    let mut out = Vec::new();
    for op in ops {
        let Call::Write { writes, result } = &op.call else { continue };
        let deciding = kv_common::validate::last_wins(writes.iter().map(|w| w.key.as_str()));
        for (i, w) in writes.iter().enumerate() {
            if deciding[i] != i {
                continue; // superseded by a later item of the same request: never applied
            }
            let (state, expiration) = match result {
                WriteResult::Done(items) => match items.get(i) {
                    Some(item) if item.refused.is_none() && item.version > 0 => {
                        (State::Acked { version: item.version }, item.expiration)
                    }
                    Some(_) => (State::Refused, None),
                    None => (State::Unknown, None),
                },
                WriteResult::Refused(_) | WriteResult::ConditionFailed { .. } => (State::Refused, None),
                WriteResult::Unknown(_) => (State::Unknown, None),
            };
            out.push(Write {
                op: op.id,
                edge: op.edge,
                key: w.key.clone(),
                value: w.value.clone(),
                start: op.start,
                end: op.end,
                state,
                expiration,
                expiring: w.expiration_ttl.is_some(),
                if_version: w.if_version,
            });
        }
    }
    out
}

fn reads_of(ops: &[Op]) -> Vec<Read> {
    let mut out = Vec::new();
    for op in ops {
        let Call::Read { cache_ttl_secs, mode, result: Ok(results), .. } = &op.call else { continue };
        for got in results {
            out.push(Read {
                op: op.id,
                edge: op.edge,
                start: op.start,
                end: op.end,
                start_wall_ms: op.start_wall_ms,
                cache_ttl_ms: u64::try_from(*cache_ttl_secs).unwrap_or(0) * 1000,
                mode: *mode,
                got: got.clone(),
            });
        }
    }
    out
}

fn version_of(w: &Write) -> Option<u64> {
    match w.state {
        State::Acked { version } => Some(version),
        _ => None,
    }
}

/// Checks `rec` (the run's calls and faults), given the central store's final state of each
/// key and the reads made at push-mode edges once everything had healed and settled.
pub fn check(rec: &Recorded, finals: &HashMap<String, Final>, final_reads: &[Op], s: &Settings) -> Vec<Violation> {
    let writes = writes_of(&rec.ops);
    let reads = reads_of(&rec.ops);
    let mut out = Vec::new();
    let by_value: HashMap<&str, &Write> = writes.iter().filter_map(|w| w.value.as_deref().map(|v| (v, w))).collect();

    // What each read saw, and whether its value is one that was written.
    let mut seen_version: HashMap<&str, (u64, usize)> = HashMap::new();
    for r in &reads {
        let Some(v) = r.got.value.as_deref() else { continue };
        match by_value.get(v) {
            Some(w) if w.key == r.got.key => {
                match w.state {
                    State::Acked { version } if version != r.got.version => out.push(Violation {
                        kind: "version_mismatch",
                        detail: format!("{v:?} was written at {version} but read at {}", r.got.version),
                        ops: vec![w.op, r.op],
                    }),
                    State::Refused => out.push(Violation {
                        kind: "unknown_value",
                        detail: format!("{v:?} was refused yet read"),
                        ops: vec![w.op, r.op],
                    }),
                    _ => {}
                }
                let first = *seen_version.entry(v).or_insert((r.got.version, r.op));
                if first.0 != r.got.version {
                    out.push(Violation {
                        kind: "version_mismatch",
                        detail: format!("{v:?} read at {} and at {}", first.0, r.got.version),
                        ops: vec![first.1, r.op],
                    });
                }
                if let Some(exp) = w.expiration {
                    if r.start_wall_ms >= u64::try_from(exp).unwrap_or(0) * 1000 {
                        out.push(Violation {
                            kind: "expired_value",
                            detail: format!(
                                "{v:?} expired at {exp} s, read {} ms after it",
                                r.start_wall_ms - u64::try_from(exp).unwrap_or(0) * 1000
                            ),
                            ops: vec![w.op, r.op],
                        });
                    }
                }
            }
            _ => out.push(Violation {
                kind: "unknown_value",
                detail: format!("{v:?} read for {} was never written to it", r.got.key),
                ops: vec![r.op],
            }),
        }
    }

    // Per key: acknowledged writes, for the checks below.
    let mut acked: HashMap<&str, Vec<&Write>> = HashMap::new();
    for w in writes.iter().filter(|w| version_of(w).is_some()) {
        acked.entry(w.key.as_str()).or_default().push(w);
    }

    // No acknowledged write lost.
    for (key, ws) in &acked {
        let Some((fv, fval)) = finals.get(*key) else { continue };
        for w in ws {
            let v = version_of(w).unwrap_or(0);
            let expired = w.expiration.is_some_and(|e| e <= kv_common::time::now_secs());
            if v > *fv {
                out.push(Violation {
                    kind: "lost_write",
                    detail: format!("{key}: write at {v} acknowledged, the store ends at {fv}"),
                    ops: vec![w.op],
                });
            } else if v == *fv && !expired && w.value != *fval {
                out.push(Violation {
                    kind: "lost_write",
                    detail: format!("{key}: at {v} the store holds {fval:?}, not {:?}", w.value),
                    ops: vec![w.op],
                });
            }
        }
    }

    for r in &reads {
        let key = r.got.key.as_str();
        let ws = acked.get(key).map(Vec::as_slice).unwrap_or_default();
        // Read-your-writes at the writing edge.
        if let Some(w) = ws.iter().filter(|w| w.edge == r.edge && w.end < r.start).max_by_key(|w| version_of(w)) {
            let v = version_of(w).unwrap_or(0);
            if r.got.version < v {
                out.push(Violation {
                    kind: "read_your_writes",
                    detail: format!("{key} at edge {}: wrote version {v}, then read {}", r.edge, r.got.version),
                    ops: vec![w.op, r.op],
                });
            }
        }
        // Bounded staleness.
        let bound = r.cache_ttl_ms + if r.got.stale { s.max_stale_ms } else { 0 };
        let due = r.start.saturating_sub(bound * 1000);
        if let Some(w) = ws.iter().filter(|w| w.end < due).max_by_key(|w| version_of(w)) {
            let v = version_of(w).unwrap_or(0);
            if r.got.version < v {
                out.push(Violation {
                    kind: "bounded_staleness",
                    detail: format!(
                        "{key} at edge {} (cacheTtl {} s{}): version {v} acknowledged {} ms before the read, which saw {}",
                        r.edge,
                        r.cache_ttl_ms / 1000,
                        if r.got.stale { ", STALE" } else { "" },
                        (r.start - w.end) / 1000,
                        r.got.version
                    ),
                    ops: vec![w.op, r.op],
                });
            }
        }
    }

    // Monotonic reads per edge and key.
    let mut per_edge_key: HashMap<(usize, &str), Vec<&Read>> = HashMap::new();
    for r in &reads {
        per_edge_key.entry((r.edge, r.got.key.as_str())).or_default().push(r);
    }
    for ((edge, key), rs) in &per_edge_key {
        for r2 in rs {
            for r1 in rs.iter().filter(|r1| r1.end < r2.start) {
                let older = match (&r1.got.value, &r2.got.value) {
                    // Both absent: the same state, whatever versions stamp it.
                    (None, None) => false,
                    (Some(_), _) => r2.got.version < r1.got.version,
                    // Absent, then a value written before that absence: older only if a
                    // delete came in between.
                    (None, Some(_)) => acked.get(*key).is_some_and(|ws| {
                        ws.iter().any(|w| {
                            w.value.is_none()
                                && version_of(w).is_some_and(|v| v > r2.got.version && v <= r1.got.version)
                        })
                    }),
                };
                if older {
                    out.push(Violation {
                        kind: "monotonic_reads",
                        detail: format!("{key} at edge {edge}: read {} after {}", r2.got.version, r1.got.version),
                        ops: vec![r1.op, r2.op],
                    });
                    break;
                }
            }
        }
    }

    out.extend(check_stronger_reads(&reads, &acked));
    out.extend(check_compare_and_set(&writes, &reads));
    out.extend(check_lists(&rec.ops, &writes));
    out.extend(check_watches(&rec.watches, &rec.ops, &writes));
    out.extend(check_linearizable(&rec.ops, &writes, &reads));

    // Convergence after heal (push-mode edges, long cacheTtl).
    for op in final_reads {
        let Call::Read { result: Ok(results), .. } = &op.call else {
            out.push(Violation {
                kind: "not_converged",
                detail: format!("final read at edge {} failed", op.edge),
                ops: vec![op.id],
            });
            continue;
        };
        for got in results {
            let Some((fv, fval)) = finals.get(&got.key) else { continue };
            let same = match (&got.value, fval) {
                (None, None) => true,
                (Some(a), Some(b)) => a == b && got.version == *fv,
                _ => false,
            };
            if !same || got.stale {
                out.push(Violation {
                    kind: "not_converged",
                    detail: format!(
                        "{} at edge {}: serves {:?}@{} (stale: {}), the store holds {fval:?}@{fv}",
                        got.key, op.edge, got.value, got.version, got.stale
                    ),
                    ops: vec![op.id],
                });
            }
        }
    }

    // STALE only when a fault could explain it.
    for r in reads.iter().filter(|r| r.got.stale) {
        let region = s.edge_region.get(r.edge).copied();
        let explained = rec.faults.iter().any(|f| {
            let touches = match f.scope {
                Scope::All => true,
                Scope::Region(x) => Some(x) == region,
                Scope::Edge(e) => e == r.edge,
            };
            touches && f.start <= r.end && f.end + s.stale_grace_ms * 1000 >= r.start
        });
        if !explained {
            out.push(Violation {
                kind: "stale_without_fault",
                detail: format!("{} at edge {} answered STALE with no fault near", r.got.key, r.edge),
                ops: vec![r.op],
            });
        }
    }
    out
}

/// STRONG reads see every write acknowledged before they began; session reads every write
/// of the key at or below their token.
fn check_stronger_reads(reads: &[Read], acked: &HashMap<&str, Vec<&Write>>) -> Vec<Violation> {
    let mut out = Vec::new();
    for r in reads {
        let ws = acked.get(r.got.key.as_str()).map(Vec::as_slice).unwrap_or_default();
        let (kind, floor) = match r.mode {
            ReadMode::Eventual => continue,
            ReadMode::Strong => ("strong_read", ws.iter().filter(|w| w.end < r.start).max_by_key(|w| version_of(w))),
            ReadMode::Session(token) => (
                "session_read",
                ws.iter().filter(|w| version_of(w).is_some_and(|v| v <= token)).max_by_key(|w| version_of(w)),
            ),
        };
        if r.mode == ReadMode::Strong && r.got.stale {
            out.push(Violation {
                kind,
                detail: format!("{} at edge {}: a STRONG read answered STALE", r.got.key, r.edge),
                ops: vec![r.op],
            });
        }
        let Some(w) = floor else { continue };
        let v = version_of(w).unwrap_or(0);
        if r.got.version < v {
            out.push(Violation {
                kind,
                detail: format!(
                    "{} at edge {} ({:?}): read {}, older than {v}",
                    r.got.key, r.edge, r.mode, r.got.version
                ),
                ops: vec![w.op, r.op],
            });
        }
    }
    out
}

/// A conditional write that succeeded at version V with condition C: in commit order, the
/// key's state just before V is what C names. The versions known to have been committed are
/// those of acknowledged writes and those reads returned with a value (which names its
/// write, whether or not its writer heard back); one of them strictly between C and V means
/// another write came between the condition and the commit. (A write with an unknown
/// outcome that was committed unseen only hides a violation, except a delete, which could
/// make a key absent unseen: absence conditions are not judged on a key with one.)
fn check_compare_and_set(writes: &[Write], reads: &[Read]) -> Vec<Violation> {
    let mut committed: HashMap<&str, Vec<(u64, usize, bool)>> = HashMap::new();
    for w in writes {
        if let Some(v) = version_of(w) {
            committed.entry(w.key.as_str()).or_default().push((v, w.op, w.value.is_some() && !w.expiring));
        }
    }
    let by_value: HashMap<&str, &Write> = writes.iter().filter_map(|w| w.value.as_deref().map(|v| (v, w))).collect();
    for r in reads {
        let Some(w) = r.got.value.as_deref().and_then(|v| by_value.get(v)) else { continue };
        committed.entry(w.key.as_str()).or_default().push((r.got.version, w.op, !w.expiring));
    }
    let unseen_delete =
        |key: &str| writes.iter().any(|w| w.key == key && w.value.is_none() && w.state == State::Unknown);
    let mut out = Vec::new();
    for w in writes {
        let (Some(cond), Some(v)) = (w.if_version, version_of(w)) else { continue };
        let known = committed.get(w.key.as_str()).map(Vec::as_slice).unwrap_or_default();
        let before = known.iter().filter(|(k, _, _)| *k < v).max_by_key(|(k, _, _)| *k);
        let broken = match (cond, before) {
            (0, Some((_, _, live_put))) => *live_put && !unseen_delete(&w.key),
            (0, None) => false,
            (c, Some((k, _, _))) => *k != c,
            (_, None) => false,
        };
        if broken {
            let (k, by) = before.map_or((0, w.op), |(k, op, _)| (*k, *op));
            out.push(Violation {
                kind: "compare_and_set",
                detail: format!("{}: a write conditional on version {cond} committed at {v}, just after {k}", w.key),
                ops: vec![by, w.op],
            });
        }
    }
    out
}

/// Each key as a register (see `linearizable`): its writes, its STRONG reads and its failed
/// conditions, placed by the versions they carry, must admit an order that respects real time.
/// Whether `w`'s value may have expired by the end of read `r`: its expiration is unknown
/// (never acknowledged), or had passed by then on the reading edge's estimate of the central
/// clock, which runs up to `EXPIRY_SLACK_MS` ahead of the wall clock here.
fn may_have_expired(w: &Write, r: &Read) -> bool {
    const EXPIRY_SLACK_MS: u64 = 2000;
    let read_end_ms = r.start_wall_ms + r.end.saturating_sub(r.start) / 1000;
    match (w.expiring, w.expiration) {
        (false, _) => false,
        (true, None) => true,
        (true, Some(exp)) => read_end_ms + EXPIRY_SLACK_MS >= u64::try_from(exp).unwrap_or(0) * 1000,
    }
}

fn check_linearizable(ops: &[Op], writes: &[Write], reads: &[Read]) -> Vec<Violation> {
    // Versions of writes whose caller never heard back, known when their value was read.
    let mut read_at: HashMap<&str, u64> = HashMap::new();
    for r in reads {
        if let Some(v) = r.got.value.as_deref() {
            read_at.insert(v, r.got.version);
        }
    }
    let mut keys: HashMap<&str, Vec<(Placed, Option<&Write>)>> = HashMap::new();
    for w in writes {
        let (version, end) = match w.state {
            State::Acked { version } => (version, Some(w.end)),
            State::Unknown => match w.value.as_deref().and_then(|v| read_at.get(v)) {
                Some(v) => (*v, None),
                None => continue,
            },
            State::Refused => continue,
        };
        let placed = Placed { op: w.op, start: w.start, end, version, observes: false };
        keys.entry(w.key.as_str()).or_default().push((placed, Some(w)));
    }
    let unseen_delete =
        |key: &str| writes.iter().any(|w| w.key == key && w.value.is_none() && w.state == State::Unknown);
    let mut out = Vec::new();
    for r in reads.iter().filter(|r| r.mode == ReadMode::Strong && !r.got.stale) {
        let key = r.got.key.as_str();
        let version = match r.got.value {
            Some(_) => r.got.version,
            None => {
                // Absent as of its position: it saw the newest write at or below it, which
                // must have left the key absent.
                let known = keys.get(key).map(Vec::as_slice).unwrap_or_default();
                let last = known
                    .iter()
                    .filter(|(p, w)| w.is_some() && p.version <= r.got.version)
                    .max_by_key(|(p, _)| p.version);
                match last {
                    Some((p, Some(w))) if w.value.is_some() && !may_have_expired(w, r) => {
                        if !unseen_delete(key) {
                            out.push(Violation {
                                kind: "not_linearizable",
                                detail: format!(
                                    "{key}: a STRONG read found it absent at {}, after the put at {}",
                                    r.got.version, p.version
                                ),
                                ops: vec![w.op, r.op],
                            });
                        }
                        continue;
                    }
                    Some((p, _)) => p.version,
                    None => 0,
                }
            }
        };
        let placed = Placed { op: r.op, start: r.start, end: Some(r.end), version, observes: true };
        keys.entry(key).or_default().push((placed, None));
    }
    for op in ops {
        let Call::Write { writes: items, result: WriteResult::ConditionFailed { current } } = &op.call else {
            continue;
        };
        let ([item], true) = (items.as_slice(), *current > 0) else { continue };
        let Some(known) = keys.get_mut(item.key.as_str()) else { continue };
        if known.iter().any(|(p, w)| w.is_some() && p.version == *current) {
            let placed = Placed { op: op.id, start: op.start, end: Some(op.end), version: *current, observes: true };
            known.push((placed, None));
        }
    }
    for (key, placed) in keys {
        let placed: Vec<Placed> = placed.into_iter().map(|(p, _)| p).collect();
        for (earlier, later) in linearizable::out_of_order(&placed) {
            out.push(Violation {
                kind: "not_linearizable",
                detail: format!(
                    "{key}: call {earlier} ended before call {later} began, but the versions order it after"
                ),
                ops: vec![earlier, later],
            });
        }
    }
    out
}

/// Watches (issue 13): every stream delivers changes in version order, invents none, and
/// from the version it began at to the version it reached misses no acknowledged write of the
/// namespace; and each watcher, over its streams, reached the newest acknowledged write by the
/// end (after the heal), so a watch outlives every fault.
fn check_watches(watches: &[WatchLog], ops: &[Op], writes: &[Write]) -> Vec<Violation> {
    // What any write item asked for, superseded items of a bulk write included.
    let (mut asked, mut deletes, mut expiring) = (HashMap::new(), HashSet::new(), HashSet::new());
    for op in ops {
        let Call::Write { writes, .. } = &op.call else { continue };
        for w in writes {
            match &w.value {
                Some(v) => drop(asked.insert(v.as_str(), w.key.as_str())),
                None => drop(deletes.insert(w.key.as_str())),
            }
            if w.expiration_ttl.is_some() {
                expiring.insert(w.key.as_str());
            }
        }
    }
    let acked: Vec<(&Write, u64)> = writes.iter().filter_map(|w| version_of(w).map(|v| (w, v))).collect();
    let acked_value: HashMap<&str, (&Write, u64)> =
        acked.iter().filter_map(|(w, v)| w.value.as_deref().map(|val| (val, (*w, *v)))).collect();
    let newest = acked.iter().map(|(_, v)| *v).max().unwrap_or(0);
    let mut out = Vec::new();
    for log in watches {
        let mut reached_at_all = 0;
        for (n, seg) in log.segments.iter().enumerate() {
            let at = format!("watcher at edge {}, stream {n}", log.edge);
            let mut last = 0;
            for (_, e) in &seg.events {
                let (v, broken) = match e {
                    Watched::Change { version, .. } => (*version, *version < last),
                    Watched::Progress(p) => (*p, *p < last),
                    Watched::Resync(_) => break,
                };
                if broken {
                    out.push(Violation { kind: "watch_order", detail: format!("{at}: {v} after {last}"), ops: vec![] });
                }
                last = last.max(v);
            }
            for (_, e) in &seg.events {
                let Watched::Change { key, kind, version, value } = e else { continue };
                let (invented, by) = match (kind.as_str(), value) {
                    ("WATCH_KIND_PUT", Some(value)) => match acked_value.get(value.as_str()) {
                        Some((w, v)) => (w.key != *key || v != version, vec![w.op]),
                        None => (asked.get(value.as_str()) != Some(&key.as_str()), vec![]),
                    },
                    ("WATCH_KIND_PUT", None) => (false, vec![]),
                    ("WATCH_KIND_EXPIRED", _) => (!expiring.contains(key.as_str()), vec![]),
                    _ => (!deletes.contains(key.as_str()), vec![]),
                };
                if invented {
                    out.push(Violation {
                        kind: "watch_invented",
                        detail: format!("{at}: {key} {kind} {value:?} at {version}, which no write made"),
                        ops: by,
                    });
                }
            }
            let Some((from, reached)) = span(seg) else { continue };
            reached_at_all = reached_at_all.max(reached);
            for (w, v) in acked.iter().filter(|(_, v)| *v > from && *v <= reached) {
                let delivered = seg
                    .events
                    .iter()
                    .any(|(_, e)| matches!(e, Watched::Change { key, version, .. } if *key == w.key && *version == *v));
                if !delivered {
                    out.push(Violation {
                        kind: "watch_missed",
                        detail: format!("{at}: from {from} to {reached}, {} at {v} never came", w.key),
                        ops: vec![w.op],
                    });
                }
            }
        }
        if reached_at_all < newest {
            out.push(Violation {
                kind: "watch_behind",
                detail: format!("watcher at edge {}: reached {reached_at_all}, the newest write is {newest}", log.edge),
                ops: vec![],
            });
        }
    }
    out
}

/// The versions a watch stream covers: from where it began (the version it resumed from,
/// or the position its first Progress named) to the newest version all of whose changes
/// arrived (a Progress, or a change followed by a newer one). `None` if it never began.
fn span(seg: &Segment) -> Option<(u64, u64)> {
    let events: Vec<&Watched> =
        seg.events.iter().map(|(_, e)| e).take_while(|e| !matches!(e, Watched::Resync(_))).collect();
    let from = match seg.from {
        Some(v) => v,
        None => match events.first() {
            Some(Watched::Progress(p)) => *p,
            _ => return None,
        },
    };
    let mut reached = from;
    let mut newest_change = None;
    for e in events {
        match e {
            Watched::Progress(p) => reached = reached.max(*p),
            Watched::Change { version, .. } => {
                if let Some(prev) = newest_change.filter(|p| p < version) {
                    reached = reached.max(prev);
                }
                newest_change = Some(*version);
            }
            Watched::Resync(_) => {}
        }
    }
    Some((from, reached))
}

/// Lists reflect writes made at the same edge, when nothing else could have changed the key.
fn check_lists(ops: &[Op], writes: &[Write]) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut by_key: HashMap<&str, Vec<&Write>> = HashMap::new();
    for w in writes.iter().filter(|w| w.state != State::Refused) {
        by_key.entry(w.key.as_str()).or_default().push(w);
    }
    for op in ops {
        let Call::List { prefix, result: Ok(names) } = &op.call else { continue };
        for (key, ws) in &by_key {
            if !key.starts_with(prefix.as_str()) {
                continue;
            }
            let mine = ws.iter().filter(|w| w.edge == op.edge && w.end < op.start && version_of(w).is_some());
            let Some(w) = mine.max_by_key(|w| version_of(w)) else { continue };
            // Every other write of the key must have taken effect before this one began. An
            // unknown outcome bounds nothing: the write may still be committed after its
            // caller gave up (by a retry under way in the tiers), even after the caller's
            // next write, as in Jepsen's model of indeterminate operations (seed 3 of the
            // short suite once hit this).
            let done_before = |o: &Write| o.state != State::Unknown && o.end < w.start;
            let quiet = ws.iter().all(|o| o.op == w.op || done_before(o) || o.start > op.end);
            let expires = w.expiration.is_some();
            if !quiet || expires {
                continue;
            }
            let listed = names.iter().any(|n| n == key);
            let should = w.value.is_some();
            if listed != should {
                out.push(Violation {
                    kind: "list_read_your_writes",
                    detail: format!(
                        "{key} at edge {}: {} there, then a list {} it",
                        op.edge,
                        if should { "put" } else { "deleted" },
                        if listed { "showed" } else { "missed" }
                    ),
                    ops: vec![w.op, op.id],
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::history::{Fault, ItemDone, KeyWrite};
    use super::*;

    fn op(id: usize, edge: usize, start: u64, end: u64, call: Call) -> Op {
        Op { id, client: 0, edge, start, end, start_wall_ms: 0, call }
    }

    fn put(id: usize, edge: usize, at: u64, key: &str, value: &str, version: u64) -> Op {
        let write = KeyWrite { key: key.into(), value: Some(value.into()), expiration_ttl: None, if_version: None };
        let done = ItemDone { version, expiration: None, refused: None };
        op(id, edge, at, at + 1000, Call::Write { writes: vec![write], result: WriteResult::Done(vec![done]) })
    }

    fn get(id: usize, edge: usize, at: u64, key: &str, value: Option<&str>, version: u64, stale: bool) -> Op {
        let got = KeyRead { key: key.into(), value: value.map(String::from), version, stale, age_ms: 0 };
        op(
            id,
            edge,
            at,
            at + 1000,
            Call::Read { keys: vec![key.into()], cache_ttl_secs: 1, mode: ReadMode::Eventual, result: Ok(vec![got]) },
        )
    }

    fn settings() -> Settings {
        Settings { max_stale_ms: 5_000, stale_grace_ms: 1_000, edge_region: vec![0, 0, 1] }
    }

    fn kinds(ops: Vec<Op>, faults: Vec<Fault>, finals: &[(&str, u64, Option<&str>)]) -> Vec<&'static str> {
        let finals = finals.iter().map(|(k, v, val)| (k.to_string(), (*v, val.map(String::from)))).collect();
        let mut k: Vec<_> = check(&Recorded { ops, faults, watches: vec![] }, &finals, &[], &settings())
            .into_iter()
            .map(|v| v.kind)
            .collect();
        k.sort();
        k
    }

    const S: u64 = 1_000_000;

    fn list(id: usize, edge: usize, at: u64, names: &[&str]) -> Op {
        let names = names.iter().map(|n| n.to_string()).collect();
        op(id, edge, at, at + 1000, Call::List { prefix: String::new(), result: Ok(names) })
    }

    fn delete(id: usize, edge: usize, at: u64, key: &str, version: u64) -> Op {
        let write = KeyWrite { key: key.into(), value: None, expiration_ttl: None, if_version: None };
        let done = ItemDone { version, expiration: None, refused: None };
        op(id, edge, at, at + 1000, Call::Write { writes: vec![write], result: WriteResult::Done(vec![done]) })
    }

    #[test]
    fn lists_show_what_was_written_at_their_edge() {
        // Deleted at edge 0, then listed there: a list showing the key breaks read-your-writes.
        let ops = vec![put(0, 0, 0, "k", "a", 5), delete(1, 0, S, "k", 6), list(2, 0, 2 * S, &["k"])];
        assert_eq!(kinds(ops, vec![], &[("k", 6, None)]), vec!["list_read_your_writes"]);
        // Unless an earlier put whose outcome is unknown (its caller got UNAVAILABLE) was
        // committed after the delete: it may take effect at any time after it began.
        let unknown = KeyWrite { key: "k".into(), value: Some("b".into()), expiration_ttl: None, if_version: None };
        let lost = Call::Write { writes: vec![unknown], result: WriteResult::Unknown("unavailable".into()) };
        let ops = vec![op(0, 0, 0, S / 2, lost), delete(1, 0, S, "k", 6), list(2, 0, 2 * S, &["k"])];
        assert!(kinds(ops, vec![], &[("k", 7, Some("b"))]).is_empty());
    }

    fn cas(id: usize, at: u64, key: &str, value: &str, if_version: u64, version: u64) -> Op {
        let write =
            KeyWrite { key: key.into(), value: Some(value.into()), expiration_ttl: None, if_version: Some(if_version) };
        let done = ItemDone { version, expiration: None, refused: None };
        op(id, 0, at, at + 1000, Call::Write { writes: vec![write], result: WriteResult::Done(vec![done]) })
    }

    fn read_in(mode: ReadMode, id: usize, edge: usize, at: u64, value: Option<&str>, version: u64) -> Op {
        let got = KeyRead { key: "k".into(), value: value.map(String::from), version, stale: false, age_ms: 0 };
        op(
            id,
            edge,
            at,
            at + 1000,
            Call::Read { keys: vec!["k".into()], cache_ttl_secs: 300, mode, result: Ok(vec![got]) },
        )
    }

    #[test]
    fn stronger_reads_and_conditions_are_judged_by_commit_order() {
        // A write at version 5 conditional on 3 committed just after 4: broken.
        let ops = vec![put(0, 1, 0, "k", "a", 3), put(1, 1, S, "k", "b", 4), cas(2, 2 * S, "k", "c", 3, 5)];
        assert_eq!(kinds(ops, vec![], &[("k", 5, Some("c"))]), vec!["compare_and_set"]);
        // Conditional on 4, right after it: fine; a create right after a live put is not.
        let ops = vec![put(0, 1, 0, "k", "a", 4), cas(1, S, "k", "c", 4, 5), cas(2, 2 * S, "k", "d", 0, 6)];
        assert_eq!(kinds(ops, vec![], &[("k", 6, Some("d"))]), vec!["compare_and_set"]);
        // A STRONG read older than a write acknowledged before it began, at another edge
        // (which no order respecting real time explains either).
        let ops = vec![put(0, 1, 0, "k", "a", 4), read_in(ReadMode::Strong, 1, 2, 2 * S, None, 3)];
        assert_eq!(kinds(ops, vec![], &[("k", 4, Some("a"))]), vec!["not_linearizable", "strong_read"]);
        // A session read older than the token's write; one newer than the write is fine.
        let ops = vec![
            put(0, 1, 0, "k", "a", 4),
            read_in(ReadMode::Session(4), 1, 2, 2 * S, None, 3),
            read_in(ReadMode::Session(3), 2, 2, 3 * S, None, 3),
        ];
        assert_eq!(kinds(ops, vec![], &[("k", 4, Some("a"))]), vec!["session_read"]);
    }

    #[test]
    fn a_clean_history_passes() {
        let ops = vec![
            put(0, 0, 0, "k", "a", 5),
            get(1, 0, 2 * S, "k", Some("a"), 5, false),
            get(2, 1, 3 * S, "k", Some("a"), 5, false),
        ];
        assert!(kinds(ops, vec![], &[("k", 5, Some("a"))]).is_empty());
    }

    #[test]
    fn each_kind_of_violation_is_caught() {
        // Read-your-writes, then monotonic reads, at edge 0.
        let ops = vec![
            put(0, 0, 0, "k", "a", 5),
            put(1, 1, 10_000, "k", "b", 7),
            get(2, 0, 20_000, "k", None, 3, false),
            get(3, 1, 30_000, "k", Some("b"), 7, false),
            get(4, 1, 40_000, "k", Some("a"), 5, false),
        ];
        let got = kinds(ops, vec![], &[("k", 7, Some("b"))]);
        assert_eq!(got, vec!["monotonic_reads", "read_your_writes", "read_your_writes"]);
        // A value never written, a lost write, a mismatched version.
        let ops = vec![
            put(0, 0, 0, "k", "a", 5),
            get(1, 2, 2 * S, "k", Some("zzz"), 9, false),
            get(2, 1, 3 * S, "k", Some("a"), 6, false),
        ];
        assert_eq!(kinds(ops, vec![], &[("k", 4, None)]), vec!["lost_write", "unknown_value", "version_mismatch"]);
        // Stale past the cacheTtl (1 s) with no fault; a STALE answer with no fault.
        let ops =
            vec![put(0, 0, 0, "k", "a", 5), put(1, 0, 3 * S, "k", "b", 9), get(2, 2, 10 * S, "k", Some("a"), 5, true)];
        let got = kinds(ops, vec![], &[("k", 9, Some("b"))]);
        assert_eq!(got, vec!["bounded_staleness", "stale_without_fault"]);
        // The same STALE answer during a fault of its region is explained (still within max_stale).
        let ops =
            vec![put(0, 0, 0, "k", "a", 5), put(1, 0, 3 * S, "k", "b", 9), get(2, 2, 5 * S, "k", Some("a"), 5, true)];
        let fault = Fault { what: "cut".into(), scope: Scope::Region(1), start: 4 * S, end: 6 * S };
        assert!(kinds(ops, vec![fault], &[("k", 9, Some("b"))]).is_empty());
    }

    #[test]
    fn a_watch_that_misses_invents_reorders_or_stalls_is_caught() {
        let ops = vec![put(0, 0, 0, "k", "a", 5), put(1, 0, S, "j", "b", 6), put(2, 0, 2 * S, "k", "c", 8)];
        let change = |key: &str, value: &str, version| {
            let value = Some(value.to_string());
            Watched::Change { key: key.into(), kind: "WATCH_KIND_PUT".into(), version, value }
        };
        let stream = |from, events: Vec<Watched>| Segment {
            from,
            opened: 0,
            events: events.into_iter().map(|e| (0, e)).collect(),
            ended: "stopped".into(),
        };
        let check_one = |segments| {
            let rec = Recorded { ops: ops.clone(), faults: vec![], watches: vec![WatchLog { edge: 0, segments }] };
            let finals = [("k".to_string(), (8, Some("c".to_string()))), ("j".to_string(), (6, Some("b".to_string())))];
            let mut k: Vec<_> = check(&rec, &finals.into(), &[], &settings()).into_iter().map(|v| v.kind).collect();
            k.sort();
            k
        };
        // Everything, in order, resumed once after a break (a repeat across streams is fine).
        let good = vec![
            stream(None, vec![Watched::Progress(4), change("k", "a", 5), change("j", "b", 6)]),
            stream(Some(5), vec![change("j", "b", 6), change("k", "c", 8), Watched::Progress(8)]),
        ];
        assert!(check_one(good).is_empty());
        // j at 6 skipped although the stream got past it.
        let missed = vec![stream(
            None,
            vec![Watched::Progress(4), change("k", "a", 5), change("k", "c", 8), Watched::Progress(9)],
        )];
        assert_eq!(check_one(missed), vec!["watch_missed"]);
        // A value at a version its write did not get; then out of order; then never caught up.
        let invented = vec![stream(Some(4), vec![change("k", "a", 6)])];
        assert_eq!(check_one(invented), vec!["watch_behind", "watch_invented"]);
        let reordered = vec![stream(
            Some(4),
            vec![change("j", "b", 6), change("k", "a", 5), change("k", "c", 8), Watched::Progress(8)],
        )];
        assert_eq!(check_one(reordered), vec!["watch_order"]);
        // A Resync ends what a stream vouches for: what follows it counts for nothing.
        let resynced = vec![stream(Some(4), vec![change("k", "a", 5), Watched::Resync(9), Watched::Progress(9)])];
        assert_eq!(check_one(resynced), vec!["watch_behind"]);
    }

    #[test]
    fn a_strong_read_that_goes_back_is_not_linearizable_though_each_read_alone_passes() {
        let strong = |id, edge, at: u64, value: &str, version| {
            let got = KeyRead { key: "k".into(), value: Some(value.into()), version, stale: false, age_ms: 0 };
            let call =
                Call::Read { keys: vec!["k".into()], cache_ttl_secs: 1, mode: ReadMode::Strong, result: Ok(vec![got]) };
            op(id, edge, at, at + 1000, call)
        };
        let slow = KeyWrite { key: "k".into(), value: Some("b".into()), expiration_ttl: None, if_version: None };
        let done = WriteResult::Done(vec![ItemDone { version: 9, expiration: None, refused: None }]);
        let ops = vec![
            put(0, 0, 0, "k", "a", 5),
            // Acknowledged only late, so no read below began after its acknowledgement.
            op(1, 1, 0, 50 * S, Call::Write { writes: vec![slow], result: done }),
            strong(2, 2, 10 * S, "b", 9),
            strong(3, 3, 20 * S, "a", 5),
        ];
        assert_eq!(kinds(ops, vec![], &[("k", 9, Some("b"))]), vec!["not_linearizable"]);
    }

    #[test]
    fn an_absent_strong_read_is_judged_by_the_last_write_not_by_earlier_reads_of_it() {
        // A STRONG read of the put at 5 is no write: the absent read at 12 still follows the put.
        let ops = vec![
            put(0, 0, 0, "k", "a", 5),
            read_in(ReadMode::Strong, 1, 1, S, Some("a"), 5),
            read_in(ReadMode::Strong, 2, 2, 2 * S, None, 12),
        ];
        assert!(kinds(ops, vec![], &[("k", 5, Some("a"))]).contains(&"not_linearizable"));
        // A put that expires excuses an absent read only once its expiration has passed.
        let expiring = |id, expiration| {
            let w = KeyWrite { key: "k".into(), value: Some("a".into()), expiration_ttl: Some(60), if_version: None };
            let done = ItemDone { version: 5, expiration: Some(expiration), refused: None };
            op(id, 0, 0, 1000, Call::Write { writes: vec![w], result: WriteResult::Done(vec![done]) })
        };
        let absent_at = |wall_ms| {
            let mut r = read_in(ReadMode::Strong, 1, 1, S, None, 12);
            r.start_wall_ms = wall_ms;
            r
        };
        let ops = vec![expiring(0, 100), absent_at(200_000)];
        let k = kinds(ops, vec![], &[("k", 12, None)]);
        assert!(!k.contains(&"not_linearizable"), "expired by then: {k:?}");
        let ops = vec![expiring(0, 100), absent_at(10_000)];
        assert!(kinds(ops, vec![], &[("k", 12, None)]).contains(&"not_linearizable"), "90 s before it expires");
    }
}
