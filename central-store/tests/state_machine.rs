//! The KV contract run against the state machine itself (no network): list rules of
//! SPEC.md section 3, expiry, namespaces, the change feed and snapshots.

mod sm;

use central_store::storage::keys::ChangeKind;
use central_store::storage::reader::FeedRead;
use central_store::types::*;
use kv_common::NamespaceId;
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use sm::*;

#[tokio::test]
async fn list_is_in_utf8_byte_order_with_literal_case_sensitive_prefix() {
    let mut s = new_sm().await;
    for k in ["b", "a", "B", "é", "a/b", "a/a", "ab", "A", "z", "😀", "a*"] {
        s.put(k, b"v", None).await;
    }
    let all = s.all_names("", 1000);
    let mut sorted = all.clone();
    sorted.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
    assert_eq!(all, sorted);
    assert_eq!(all, vec!["A", "B", "a", "a*", "a/a", "a/b", "ab", "b", "z", "é", "😀"]);
    // Prefix is literal (no globbing) and case-sensitive.
    assert_eq!(s.all_names("a/", 1000), vec!["a/a", "a/b"]);
    assert_eq!(s.all_names("a*", 1000), vec!["a*"]);
    assert_eq!(s.all_names("A", 1000), vec!["A"]);
    assert!(s.all_names("nothing", 1000).is_empty());
}

#[tokio::test]
async fn list_pages_with_an_opaque_cursor_and_limit() {
    let mut s = new_sm().await;
    for i in 0..25 {
        s.put(&format!("k{i:02}"), b"v", None).await;
    }
    let (first, cursor) = s.names("", 10, None);
    assert_eq!(first.len(), 10);
    assert_eq!(first[0], "k00");
    let cursor = cursor.expect("more keys follow");
    let (second, _) = s.names("", 10, Some(&cursor));
    assert_eq!(second[0], "k10", "cursor resumes right after the last key returned");
    // Following cursors returns every key exactly once; the last page has no cursor.
    let all = s.all_names("", 7);
    assert_eq!(all.len(), 25);
    let (last_page, none) = s.names("", 1000, None);
    assert_eq!(last_page.len(), 25);
    assert!(none.is_none(), "list_complete when everything fit");
    // A page exactly as large as what is left completes the list.
    let (_, c) = s.names("", 25, None);
    assert!(c.is_none());
    // Garbage cursors are refused with a clear error.
    let err = s.reader.list(&NS, "", 10, Some("xyz"), NOW).unwrap_err();
    assert_eq!(err.to_kv(), kv_common::KvError::InvalidCursor);
}

#[tokio::test]
async fn list_hides_deleted_and_expired_keys_and_shows_metadata_and_expiration() {
    let mut s = new_sm().await;
    s.put("live", b"v", Some(NOW + 3600)).await;
    s.put("expired", b"v", Some(NOW - 1)).await;
    s.put("expires-now", b"v", Some(NOW)).await;
    s.put("deleted", b"v", None).await;
    s.delete("deleted").await;
    let page = s.reader.list(&NS, "", 1000, None, NOW).unwrap();
    assert_eq!(page.keys.len(), 1);
    let (name, meta) = &page.keys[0];
    assert_eq!(name, "live");
    assert_eq!(meta.expiration, Some(NOW + 3600));
    assert_eq!(meta.metadata.as_deref(), Some("{\"k\":\"live\"}"));
    // Reads hide them too, at once.
    assert!(s.reader.get(&NS, "expired", NOW).unwrap().entry.is_none());
    assert!(s.reader.get(&NS, "expires-now", NOW).unwrap().entry.is_none());
    assert!(s.reader.get(&NS, "live", NOW).unwrap().entry.is_some());
}

#[tokio::test]
async fn a_page_may_be_short_while_the_list_is_incomplete() {
    let mut s = new_sm().await;
    for i in 0..3000 {
        s.put(&format!("d{i:04}"), b"v", None).await;
    }
    for i in 0..3000 {
        s.delete(&format!("d{i:04}")).await;
    }
    s.put("z-live", b"v", None).await;
    // Many tombstones in a row: a page may come back empty but still point onwards.
    let (names, cursor) = s.names("", 1, None);
    assert!(names.is_empty());
    assert!(cursor.is_some());
    assert_eq!(s.all_names("", 1), vec!["z-live"]);
}

#[tokio::test]
async fn versions_are_log_indexes_and_absent_reads_carry_the_applied_version() {
    let mut s = new_sm().await;
    let v1 = s.put("k", b"one", None).await;
    let r = s.reader.get(&NS, "k", NOW).unwrap();
    assert_eq!(r.version, v1);
    assert_eq!(r.entry.unwrap().value, b"one");
    let v2 = s.delete("k").await;
    assert!(v2 > v1);
    let r = s.reader.get(&NS, "k", NOW).unwrap();
    assert!(r.entry.is_none());
    assert_eq!(r.version, v2);
    let missing = s.reader.get(&NS, "never", NOW).unwrap();
    assert_eq!(missing.version, s.reader.applied());
    let unknown = s.reader.get(&NamespaceId([1; 16]), "k", NOW).unwrap_err();
    assert_eq!(unknown.to_kv(), kv_common::KvError::NamespaceNotFound);
}

#[tokio::test]
async fn a_read_waits_for_its_min_version_then_gives_up_with_unavailable() {
    let mut s = new_sm().await;
    let v = s.put("k", b"v", None).await;
    s.reader.wait_applied(v, std::time::Duration::from_millis(10)).await.unwrap();
    let reader = s.reader.clone();
    let waiting = tokio::spawn(async move { reader.wait_applied(v + 1, std::time::Duration::from_secs(10)).await });
    s.put("k2", b"v", None).await;
    waiting.await.unwrap().expect("the wait ends once the version is applied");
    let err = s.reader.wait_applied(v + 100, std::time::Duration::from_millis(20)).await.unwrap_err();
    assert!(matches!(err.to_kv(), kv_common::KvError::Unavailable(_)), "{err}");
}

#[tokio::test]
async fn writes_to_a_missing_namespace_are_rejected_at_apply() {
    let mut s = new_sm().await;
    let op = Op { key: "k".into(), kind: OpKind::Delete };
    let good = write(NS, vec![Op { key: "ok".into(), kind: OpKind::Delete }]);
    let gone = write(NamespaceId([9; 16]), vec![op]);
    // In one group-committed entry, only the write to the missing namespace fails.
    let (v, r) = s.apply(Command::Write { now_ms: NOW_MS, writes: vec![gone, good] }).await;
    match r {
        CommandResult::Writes(outcomes) => {
            let applied = WriteOutcome::Applied { version: v, decided: Decided::default() };
            assert_eq!(outcomes, vec![WriteOutcome::Failed(kv_common::KvError::NamespaceNotFound), applied]);
        }
        other => panic!("unexpected {other:?}"),
    }
    let FeedRead::Changes(sets) = s.reader.changes_after(v - 1, 10).unwrap() else { panic!("resync") };
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0].1.len(), 1, "only the applied write is in the feed");
}

#[tokio::test]
async fn namespace_titles_are_unique_and_delete_removes_every_key() {
    let mut s = new_sm().await;
    let other = NamespaceId([0xBB; 16]);
    let (_, r) = s.apply(create(other, "ns")).await;
    assert!(matches!(r, CommandResult::Namespace(Err(kv_common::KvError::NamespaceTitleExists))));
    s.apply(create(other, "other")).await;
    let rename = Command::RenameNamespace { id: other, title: "ns".into(), now_ms: NOW_MS, request: None };
    let (_, r) = s.apply(rename).await;
    assert!(matches!(r, CommandResult::Namespace(Err(kv_common::KvError::NamespaceTitleExists))));

    s.put("a", b"v", Some(NOW + 100)).await;
    s.put("b", b"v", None).await;
    let (v, r) = s.apply(Command::DeleteNamespace { id: NS, now_ms: NOW_MS, request: None }).await;
    assert!(matches!(r, CommandResult::Namespace(Ok(NamespaceDone { version, record: None })) if version == v));
    assert!(s.reader.namespace(&NS).is_err());
    // Re-creating the same id shows none of the old keys.
    s.apply(create(NS, "ns")).await;
    assert!(s.all_names("", 1000).is_empty());
    // The orphaned expiry index entry is swept without touching anything else.
    let (_, r) = s.apply(sweep((NOW as u64 + 200) * 1000, 100, 0)).await;
    assert!(matches!(r, CommandResult::Swept { removed: 0 }));
}

#[tokio::test]
async fn sweep_removes_only_what_is_due_and_is_deterministic() {
    let mut a = new_sm().await;
    let mut b = new_sm().await;
    for s in [&mut a, &mut b] {
        s.put("soon", b"v", Some(NOW + 60)).await;
        s.put("later", b"v", Some(NOW + 600)).await;
        s.put("never", b"v", None).await;
        // Overwritten: the old expiration must not remove the new value.
        s.put("rewritten", b"v", Some(NOW + 60)).await;
        s.put("rewritten", b"v2", None).await;
    }
    let cmd = sweep((NOW as u64 + 61) * 1000, 10, 0);
    let (va, ra) = a.apply(cmd.clone()).await;
    let (_, rb) = b.apply(cmd).await;
    assert!(matches!(ra, CommandResult::Swept { removed: 1 }), "{ra:?}");
    assert!(matches!(rb, CommandResult::Swept { removed: 1 }));
    // The expiry is a change of the feed, at the sweep's version, so tiers and watchers see it.
    let FeedRead::Changes(sets) = a.reader.changes_after(va - 1, 10).unwrap() else { panic!("resync") };
    let got: Vec<(u64, &str, ChangeKind)> =
        sets.iter().flat_map(|(v, cs)| cs.iter().map(move |c| (*v, c.key.as_str(), c.kind))).collect();
    assert_eq!(got, vec![(va, "soon", ChangeKind::Expired)]);
    // Even a reader whose clock is behind no longer finds the swept entry.
    assert!(a.reader.get(&NS, "soon", NOW).unwrap().entry.is_none());
    assert!(a.reader.get(&NS, "later", NOW).unwrap().entry.is_some());
    assert_eq!(a.reader.get(&NS, "rewritten", NOW).unwrap().entry.unwrap().value, b"v2");
    assert_eq!(a.all_names("", 1000), b.all_names("", 1000));
}

#[tokio::test]
async fn old_tombstones_are_swept_and_a_rewritten_key_is_kept() {
    let mut s = new_sm().await;
    s.put("gone", b"v", None).await;
    let deleted = s.delete("gone").await;
    s.put("back", b"v", None).await;
    let tomb_of_back = s.delete("back").await;
    let back = s.put("back", b"again", None).await;
    assert!(back > tomb_of_back);
    let sweep = |before| sweep(NOW_MS, 100, before);
    // A tombstone is kept while its version is not below the bound.
    let (_, r) = s.apply(sweep(deleted)).await;
    assert!(matches!(r, CommandResult::Swept { removed: 0 }), "{r:?}");
    assert!(s.reader.has_sweep_work(NOW, deleted + 1, 0).unwrap());
    let (_, r) = s.apply(sweep(s.next)).await;
    assert!(matches!(r, CommandResult::Swept { removed: 1 }), "only the live tombstone goes: {r:?}");
    assert!(!s.reader.has_sweep_work(NOW, s.next, 0).unwrap());
    assert_eq!(s.reader.get(&NS, "back", NOW).unwrap().entry.unwrap().value, b"again");
    let gone = s.reader.get(&NS, "gone", NOW).unwrap();
    assert!(gone.entry.is_none());
    assert!(gone.version >= deleted, "absent is still ordered after the delete");
}

#[tokio::test]
async fn the_feed_holds_each_change_set_and_reports_trimmed_history() {
    let mut s = new_sm().await;
    let v1 = s.put("small", b"tiny", None).await;
    let v2 = s.put("large", &[1u8; 100], None).await;
    let v3 = s.delete("small").await;
    let FeedRead::Changes(sets) = s.reader.changes_after(0, 100).unwrap() else { panic!("resync") };
    let got: Vec<(u64, &str, ChangeKind)> =
        sets.iter().flat_map(|(v, cs)| cs.iter().map(move |c| (*v, c.key.as_str(), c.kind))).collect();
    assert_eq!(
        got,
        vec![(v1, "small", ChangeKind::Put), (v2, "large", ChangeKind::Put), (v3, "small", ChangeKind::Delete)]
    );
    assert_eq!(sets[0].1[0].value.as_deref(), Some(&b"tiny"[..]));
    assert_eq!(sets[1].1[0].value, None, "values over the inline limit are left out");
    let FeedRead::Changes(after) = s.reader.changes_after(v2, 100).unwrap() else { panic!("resync") };
    assert_eq!(after.len(), 1);

    // Past the retention, old history is dropped and asking for it says resync.
    for i in 0..1200 {
        s.put(&format!("f{i}"), b"v", None).await;
    }
    assert!(matches!(s.reader.changes_after(1, 10).unwrap(), FeedRead::Resync { .. }));
}

#[tokio::test]
async fn a_snapshot_rebuilds_an_identical_state_machine() {
    let mut s = new_sm().await;
    for i in 0..200 {
        s.put(&format!("k{i:03}"), &vec![i as u8; 5000], if i % 2 == 0 { Some(NOW + 1000) } else { None }).await;
    }
    s.delete("k007").await;
    let (_, made) = s.apply(create_token("0123456789abcdef0123456789abcdef", None)).await;
    assert!(matches!(made, CommandResult::Token(Ok(_))));
    let mut builder = s.sm.get_snapshot_builder().await;
    let snap = builder.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id.unwrap().index, s.next - 1);

    let mut t = new_sm().await;
    let mut incoming = t.sm.begin_receiving_snapshot().await.unwrap();
    let mut data = snap.snapshot;
    tokio::io::copy(&mut data, &mut *incoming).await.unwrap();
    t.sm.install_snapshot(&snap.meta, incoming).await.unwrap();

    assert_eq!(t.reader.applied(), s.next - 1);
    assert_eq!(t.all_names("", 1000), s.all_names("", 1000));
    for name in s.all_names("", 1000) {
        assert_eq!(t.reader.get(&NS, &name, NOW).unwrap().entry, s.reader.get(&NS, &name, NOW).unwrap().entry);
    }
    assert_eq!(t.reader.tokens().unwrap(), s.reader.tokens().unwrap(), "tokens travel in snapshots");
    assert_eq!(t.reader.tokens().unwrap().len(), 1);
    // The installed node's feed starts at the snapshot.
    assert!(matches!(t.reader.changes_after(1, 10).unwrap(), FeedRead::Resync { .. }));
    let (_, membership) = t.sm.applied_state().await.unwrap();
    assert_eq!(membership, StoredMembership::default());
    // A corrupt (truncated) snapshot is refused rather than half-installed silently.
    let mut u = new_sm().await;
    let mut incoming = u.sm.begin_receiving_snapshot().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut *incoming, &[0, 5, 0, 0, 0, 1]).await.unwrap();
    assert!(u.sm.install_snapshot(&snap.meta, incoming).await.is_err());
}

#[tokio::test]
async fn a_corrupted_snapshot_is_refused_by_its_checksum_and_changes_nothing() {
    let (meta, mut bytes) = snapshot_of(20).await;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    let mut t = new_sm().await;
    t.put("mine", b"v", None).await;
    let err = install(&mut t.sm, &meta, &bytes).await.unwrap_err();
    assert!(format!("{err}").contains("checksum"), "{err}");
    assert!(t.reader.get(&NS, "mine", NOW).unwrap().entry.is_some(), "nothing was replaced");
}

#[tokio::test]
async fn a_retried_request_is_applied_once_and_answered_with_its_first_outcome() {
    let mut s = new_sm().await;
    let put =
        |v: &[u8]| Op { key: "k".into(), kind: OpKind::Put { value: v.to_vec(), metadata: None, expiration: None } };
    let first = NamespaceWrite { request: Some("req-1".into()), ..write(NS, vec![put(b"one")]) };
    let (v1, r1) = s.apply(Command::Write { now_ms: NOW_MS, writes: vec![first.clone()] }).await;
    // The retry carries the same id (even with other contents, it is the same request).
    let retry = NamespaceWrite { ops: vec![put(b"two")], ..first };
    let (_, r2) = s.apply(Command::Write { now_ms: NOW_MS, writes: vec![retry] }).await;
    let applied = WriteOutcome::Applied { version: v1, decided: Decided::default() };
    for r in [r1, r2] {
        assert!(matches!(r, CommandResult::Writes(ref o) if o == &vec![applied.clone()]), "{r:?}");
    }
    assert_eq!(s.reader.get(&NS, "k", NOW).unwrap().entry.unwrap().value, b"one");
    assert_eq!(s.reader.request("req-1").unwrap(), Some(Recorded::Write(applied)));
    // A retried namespace create is answered with the namespace the first one made.
    let a = NamespaceId([0x11; 16]);
    let create_once =
        |id| Command::CreateNamespace { id, title: "t".into(), now_ms: NOW_MS, request: Some("ns-1".into()) };
    let (_, first) = s.apply(create_once(a)).await;
    let (_, again) = s.apply(create_once(NamespaceId([0x22; 16]))).await;
    assert_eq!(format!("{first:?}"), format!("{again:?}"));
    // Records are swept once old enough.
    let (_, r) = s
        .apply(Command::Sweep { now_ms: NOW_MS, budget: 10, tombstones_before: 0, requests_before_ms: NOW_MS + 1 })
        .await;
    assert!(matches!(r, CommandResult::Swept { .. }));
    assert_eq!(s.reader.request("req-1").unwrap(), None);
}

fn create_token(id: &str, request: Option<&str>) -> Command {
    let record = TokenRecord {
        id: id.into(),
        name: "reader".into(),
        digest: kv_common::auth::SecretDigest::of("secret"),
        rights: kv_common::auth::Rights {
            admin: false,
            grants: vec![kv_common::auth::Grant { scope: kv_common::auth::Scope::One(NS), read: true, write: false }],
        },
        created_at: NOW,
    };
    Command::CreateToken { record, now_ms: NOW_MS, request: request.map(String::from) }
}

#[tokio::test]
async fn tokens_are_stored_by_digest_revoked_once_and_their_requests_applied_once() {
    let mut s = new_sm().await;
    let id = "00112233445566778899aabbccddeeff";
    let (v, r) = s.apply(create_token(id, Some("make-1"))).await;
    assert!(matches!(r, CommandResult::Token(Ok(version)) if version == v));
    let stored = s.reader.token(id).unwrap().expect("stored");
    assert!(stored.digest.matches("secret") && !stored.digest.matches("other"));
    // A retry of the same request is answered with the first outcome, not a collision.
    let (_, again) = s.apply(create_token(id, Some("make-1"))).await;
    assert!(matches!(again, CommandResult::Token(Ok(version)) if version == v));
    let (_, clash) = s.apply(create_token(id, None)).await;
    assert!(matches!(clash, CommandResult::Token(Err(kv_common::KvError::Internal(_)))), "ids are never reused");

    let revoke = |request: &str| Command::RevokeToken { id: id.into(), now_ms: NOW_MS, request: Some(request.into()) };
    let (rv, r) = s.apply(revoke("gone-1")).await;
    assert!(matches!(r, CommandResult::Token(Ok(version)) if version == rv));
    assert!(s.reader.token(id).unwrap().is_none());
    assert!(s.reader.tokens().unwrap().is_empty());
    let (_, retried) = s.apply(revoke("gone-1")).await;
    assert!(matches!(retried, CommandResult::Token(Ok(version)) if version == rv), "a retried revoke succeeds");
    let (_, twice) = s.apply(revoke("gone-2")).await;
    assert!(matches!(twice, CommandResult::Token(Err(kv_common::KvError::TokenNotFound))));
}

/// A conditional op of item `item`: `then` at version `if_version` (0: absent).
fn conditional(key: &str, if_version: u64, item: u32, then: OpKind) -> Op {
    Op { key: key.into(), kind: OpKind::Conditional { if_version, item, then: Box::new(then) } }
}

fn put_kind(value: &[u8], expiration: Option<i64>) -> OpKind {
    OpKind::Put { value: value.to_vec(), metadata: None, expiration }
}

#[tokio::test]
async fn a_condition_is_decided_against_the_key_as_applied_expired_and_deleted_keys_being_absent() {
    let mut s = new_sm().await;
    let v1 = s.put("k", b"1", None).await;
    s.put("gone", b"x", None).await;
    s.delete("gone").await;
    s.put("old", b"x", Some(NOW)).await;
    let mut w = write(
        NS,
        vec![
            conditional("k", v1 + 1, 0, put_kind(b"no", None)),
            conditional("gone", 0, 1, put_kind(b"back", None)),
            conditional("old", 0, 2, put_kind(b"fresh", Some(NOW + 60))),
            conditional("never", 7, 3, OpKind::Delete),
        ],
    );
    w.decided.expirations = vec![(2, NOW + 60)];
    let (at, r) = s.apply(Command::Write { now_ms: NOW_MS, writes: vec![w] }).await;
    let CommandResult::Writes(outcomes) = r else { panic!("{r:?}") };
    let WriteOutcome::Applied { version, decided } = &outcomes[0] else { panic!("{outcomes:?}") };
    assert_eq!(*version, at);
    assert_eq!(
        decided.errors,
        vec![
            (0, kv_common::KvError::PreconditionFailed { current: v1 }),
            (3, kv_common::KvError::PreconditionFailed { current: 0 })
        ]
    );
    assert_eq!(decided.expirations, vec![(2, NOW + 60)]);
    let value = |key: &str| s.reader.get(&NS, key, NOW).unwrap().entry.map(|e| e.value);
    assert_eq!(value("k").as_deref(), Some(&b"1"[..]), "a failed condition changed nothing");
    assert_eq!(value("gone").as_deref(), Some(&b"back"[..]), "a deleted key is absent");
    assert_eq!(value("old").as_deref(), Some(&b"fresh"[..]), "an expired key is absent");
    assert!(value("never").is_none());
    // Only the applied items reach the feed.
    let FeedRead::Changes(sets) = s.reader.changes_after(at - 1, 10).unwrap() else { panic!("resync") };
    let keys: Vec<&str> = sets.iter().flat_map(|(_, set)| set.iter().map(|c| c.key.as_str())).collect();
    assert_eq!(keys, vec!["gone", "old"]);
}

#[tokio::test]
async fn conditions_on_one_key_in_one_entry_are_decided_in_order() {
    let mut s = new_sm().await;
    let writes = vec![
        write(NS, vec![conditional("k", 0, 0, put_kind(b"first", None))]),
        write(NS, vec![conditional("k", 0, 0, put_kind(b"second", None))]),
    ];
    let (at, r) = s.apply(Command::Write { now_ms: NOW_MS, writes }).await;
    let CommandResult::Writes(outcomes) = r else { panic!("{r:?}") };
    let failed = |o: &WriteOutcome| match o {
        WriteOutcome::Applied { decided, .. } => decided.errors.clone(),
        other => panic!("{other:?}"),
    };
    assert!(failed(&outcomes[0]).is_empty(), "the first create wins");
    assert_eq!(failed(&outcomes[1]), vec![(0, kv_common::KvError::PreconditionFailed { current: at })]);
    assert_eq!(s.reader.get(&NS, "k", NOW).unwrap().entry.map(|e| e.value).as_deref(), Some(&b"first"[..]));
}
