//! Narrow race windows of the state machine, held open at the exact point by failpoints
//! (TiKV's `fail` crate) rather than hoped for: the change feed against a trim, a read's
//! absence against a delete, reads and snapshot builds against a snapshot install. Each
//! test holds the failpoint registry (`FailScenario`), so they never see each other's
//! failpoints.

mod sm;

use central_store::storage::reader::FeedRead;
use fail::FailScenario;
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use sm::*;
use std::sync::{Arc, Barrier};

/// A failpoint that stops the thread reaching it until the test lets it go: `reached`
/// returns once a thread is held there, `release` lets it go on.
struct Hold {
    name: &'static str,
    barriers: Arc<(Barrier, Barrier)>,
}

impl Hold {
    fn at(name: &'static str) -> Hold {
        let barriers = Arc::new((Barrier::new(2), Barrier::new(2)));
        let b = barriers.clone();
        fail::cfg_callback(name, move || {
            b.0.wait();
            b.1.wait();
        })
        .unwrap();
        Hold { name, barriers }
    }

    async fn reached(&self) {
        let b = self.barriers.clone();
        tokio::task::spawn_blocking(move || b.0.wait()).await.unwrap();
    }

    async fn release(&self) {
        fail::remove(self.name);
        let b = self.barriers.clone();
        tokio::task::spawn_blocking(move || b.1.wait()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trim_between_reading_the_floor_and_the_changes_cannot_skip_changes() {
    let _scenario = FailScenario::setup();
    let mut s = new_sm_with(FeedConfig { retention: 10, trim_every: 10, inline_value_limit: 16 }).await;
    for i in 0..11 {
        s.put(&format!("k{i}"), b"v", None).await;
    }
    let from = 5;
    let hold = Hold::at("feed::after_floor");
    let reader = s.reader.clone();
    let feed = tokio::task::spawn_blocking(move || reader.changes_after(from, 100).unwrap());
    hold.reached().await;
    // Meanwhile the log moves on and history up to 20 is trimmed.
    while s.next <= 31 {
        let n = s.next;
        s.put(&format!("later{n}"), b"v", None).await;
    }
    hold.release().await;
    match feed.await.unwrap() {
        FeedRead::Resync { .. } => {}
        FeedRead::Changes(sets) => {
            let versions: Vec<u64> = sets.iter().map(|(v, _)| *v).collect();
            assert_eq!(versions.first(), Some(&(from + 1)), "the feed must go on exactly after {from}: {versions:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absence_is_dated_no_earlier_than_the_delete_the_read_saw() {
    let _scenario = FailScenario::setup();
    let mut s = new_sm().await;
    let put = s.put("k", b"v", None).await;
    let hold = Hold::at("read::before_snapshot");
    let reader = s.reader.clone();
    let read = tokio::task::spawn_blocking(move || reader.get(&NS, "k", NOW).unwrap());
    hold.reached().await;
    // The read has begun when the key is deleted; its snapshot is taken after.
    let deleted = s.delete("k").await;
    hold.release().await;
    let r = read.await.unwrap();
    assert!(r.entry.is_none(), "the snapshot was taken after the delete");
    assert!(r.version >= deleted, "absent as of {}, before the delete at {deleted} (put at {put})", r.version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_during_a_snapshot_install_are_refused_not_half_answered() {
    let _scenario = FailScenario::setup();
    let (meta, bytes) = snapshot_of(50).await;
    let mut t = new_sm().await;
    t.put("mine", b"v", None).await;
    let hold = Hold::at("snapshot::install_after_wipe");
    let reader = t.reader.clone();
    let installing = tokio::spawn(async move {
        install(&mut t.sm, &meta, &bytes).await.unwrap();
        t
    });
    hold.reached().await;
    let during = reader.get(&NS, "k001", NOW);
    let namespace = reader.namespace(&NS);
    hold.release().await;
    assert!(
        matches!(&during, Err(e) if matches!(e.to_kv(), kv_common::KvError::Unavailable(_))),
        "a read of a half-installed state machine must be refused: {during:?}"
    );
    assert!(namespace.is_err());
    let t = installing.await.unwrap();
    assert_eq!(t.reader.get(&NS, "k001", NOW).unwrap().entry.unwrap().value, vec![1u8; 100]);
    assert!(t.reader.get(&NS, "mine", NOW).unwrap().entry.is_none(), "the snapshot replaced the old state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_build_cannot_overlap_an_install_or_replace_a_newer_snapshot() {
    let _scenario = FailScenario::setup();
    let (meta, bytes) = snapshot_of(60).await;
    let mut t = new_sm().await;
    for i in 0..5 {
        t.put(&format!("old{i}"), b"v", None).await;
    }
    let hold = Hold::at("snapshot::build_after_read_view");
    let mut builder = t.sm.get_snapshot_builder().await;
    let building = tokio::spawn(async move { builder.build_snapshot().await.unwrap() });
    hold.reached().await;
    let mut sm = t.sm;
    let mut installing = tokio::spawn(async move {
        install(&mut sm, &meta, &bytes).await.unwrap();
        sm
    });
    // While the build holds its view, the install must not go ahead.
    let finished_early = tokio::time::timeout(std::time::Duration::from_millis(500), &mut installing).await.is_ok();
    hold.release().await;
    assert!(!finished_early, "an install ran while a build was reading the state machine");
    building.await.unwrap();
    let mut sm = installing.await.unwrap();
    let current = sm.get_current_snapshot().await.unwrap().expect("a current snapshot");
    assert_eq!(
        current.meta.last_log_id.map(|l| l.index),
        Some(61),
        "the installed (newer) snapshot stays current, not the older build"
    );
}
