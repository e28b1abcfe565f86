//! The watchers of a fault-suite run: one per edge, watching the whole namespace through every
//! fault, as a client following the documented contract would. A stream that breaks is
//! watched again from the last version it completed; a Resync starts a new watch from now.
//! Each stream is one `Segment` of the record, checked on its own (`checker::check_watches`).

use super::history::{Recorder, Segment, WatchLog, Watched};
use super::workload::recorded;
use kv_client::api::{self, watch_event::Event};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::watch;

/// Pause between attempts to open a watch on an edge that is down.
const REOPEN: Duration = Duration::from_millis(100);

/// One watcher of a run.
pub struct Watcher {
    pub edge: usize,
    pub endpoint: SocketAddr,
    pub namespace: String,
    pub token: String,
}

impl Watcher {
    /// Watches until `stop` turns true; returns every stream it had.
    pub async fn run(self, rec: Recorder, mut stop: watch::Receiver<bool>) -> WatchLog {
        let mut log = WatchLog { edge: self.edge, segments: Vec::new() };
        let channel = super::workload::channel(self.endpoint);
        let Ok(mut kv) = kv_client::raw_client(channel, Some(&self.token)) else { return log };
        // The version every change up to which has been received: where a broken stream resumes.
        let mut resume: Option<u64> = None;
        let mut reopen = tokio::time::interval(REOPEN);
        reopen.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*stop.borrow() {
            tokio::select! {
                _ = reopen.tick() => {}
                _ = stop.changed() => break,
            }
            let req =
                api::WatchRequest { namespace_id: self.namespace.clone(), from_version: resume, ..Default::default() };
            let mut seg = Segment { from: resume, opened: rec.now(), events: Vec::new(), ended: String::new() };
            let mut stream = match kv.watch(req).await {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    seg.ended = format!("not opened: {}", e.message());
                    log.segments.push(seg);
                    continue;
                }
            };
            // The newest version whose changes all arrived, and one that may be partly in.
            let mut partial: Option<u64> = None;
            seg.ended = loop {
                let message = tokio::select! {
                    m = stream.message() => m,
                    _ = stop.changed() => break "stopped".into(),
                };
                let event = match message {
                    Ok(Some(api::WatchEvent { event: Some(e) })) => e,
                    Ok(Some(_)) => continue,
                    Ok(None) => break "ended".into(),
                    Err(e) => break format!("broke: {}", e.message()),
                };
                let at = rec.now();
                match event {
                    Event::Change(c) => {
                        if partial.is_some_and(|p| p < c.version) {
                            resume = partial;
                        }
                        partial = Some(c.version);
                        let kind = c.kind();
                        let value = (kind == api::WatchKind::Put)
                            .then(|| recorded(&String::from_utf8_lossy(&c.value)))
                            .filter(|_| !c.value_omitted);
                        seg.events.push((
                            at,
                            Watched::Change { key: c.key, kind: kind.as_str_name().into(), version: c.version, value },
                        ));
                    }
                    Event::Progress(v) => {
                        resume = Some(v);
                        partial = None;
                        seg.events.push((at, Watched::Progress(v)));
                    }
                    Event::Resync(v) => {
                        seg.events.push((at, Watched::Resync(v)));
                        resume = None;
                        break "resync".into();
                    }
                }
            };
            log.segments.push(seg);
        }
        log
    }
}
