//! How stale reads are, measured the way Bailis et al. define probabilistic bounded
//! staleness (PBS, VLDB 2012): the probability that a read issued `t` after a write was
//! acknowledged returns that write or a newer one, as a curve over `t`, for every pair of
//! writing and reading edge.
//!
//! Each writer edge writes its own few keys, each with a counter that goes up by one per
//! write, one write per key per `write_interval` (KV allows one a second). Every edge reads
//! every key on a fixed schedule. After the run, each read is set against every
//! acknowledged write of its key: a read issued `t` after write `k` was acknowledged is a
//! sample at `t`, visible when it returned counter `k` or higher. The same reads show what
//! the cluster promises per edge (SPEC 4): a read at the writing edge that misses a write
//! acknowledged before it began breaks read-your-writes, and a read that returns an older
//! counter than a read at the same edge that ended before it began breaks monotonic reads.
//! A read that misses writes is stale by how many it missed and by how long ago the first
//! of them was acknowledged; one that misses a write acknowledged more than its cacheTtl
//! before it began, without being answered STALE, breaks bounded staleness (SPEC 4.3).

use crate::driver::code_name;
use crate::Latency;
use kv_client::{api, RawClient};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lower edges of the curve's bins in milliseconds; the last bin ends at `HORIZON_MS`.
pub const BINS_MS: [u64; 29] = [
    0, 1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000,
    15_000, 20_000, 30_000, 45_000, 60_000, 90_000, 120_000,
];

/// Samples later than this after a write are not counted (every mode's bound is cacheTtl,
/// which KV caps far below it in practice).
pub const HORIZON_MS: u64 = 180_000;

/// Reads of one edge in flight at once; a schedule that would exceed it skips the read
/// (and counts it) rather than queueing without bound.
const IN_FLIGHT: usize = 64;

/// An edge the probe reads from (and maybe writes through), with how it is refreshed.
#[derive(Clone)]
pub struct Edge {
    pub name: String,
    /// `push` or `ttl`, as the user labelled it; only reported.
    pub mode: String,
    pub clients: Vec<RawClient>,
}

/// What one probe does.
#[derive(Clone)]
pub struct Probe {
    pub namespace: String,
    /// Indices (into the edges) of the edges that write.
    pub writers: Vec<usize>,
    pub keys_per_writer: usize,
    pub write_interval: Duration,
    /// Reads per second at each edge, spread over all keys.
    pub reads_per_sec: f64,
    pub duration: Duration,
    pub cache_ttl: Option<i64>,
    /// Names this run's keys so that earlier runs' values are never read.
    pub run_id: String,
}

/// One read as the analysis needs it; times are microseconds from the start of the probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    pub edge: usize,
    pub key: usize,
    pub start: u64,
    pub end: u64,
    /// The counter returned (0 when the key was absent), or the error's gRPC code.
    pub seen: Result<u32, String>,
    /// Answered STALE: upstream could not be reached (SPEC 4.8 lets it be older than cacheTtl).
    pub stale: bool,
}

/// Everything a probe observed.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub edges: Vec<String>,
    /// The writing edge of each key.
    pub writer_of: Vec<usize>,
    /// Per key, when each write (counter 1, 2, ...) was acknowledged. Writing a key stops at
    /// its first failed write, whose outcome is unknown, so only the last entry can be `None`.
    pub acks: Vec<Vec<Option<u64>>>,
    pub reads: Vec<Read>,
    /// Reads the schedule skipped because too many were in flight, per edge.
    pub skipped: Vec<u64>,
    /// Writes refused by the per-key write limit (429, so not written; tried again).
    pub refused: u64,
    /// The reads' cacheTtl: the bound of SPEC 4.3.
    pub cache_ttl_ms: u64,
}

/// Refuses settings no probe can run with: a writer named twice (two counters on one key
/// would look like broken guarantees), no keys, or a read rate that is not a positive number.
pub fn check<W: Eq + std::hash::Hash>(writers: &[W], keys_per_writer: usize, reads_per_sec: f64) -> anyhow::Result<()> {
    let distinct: std::collections::HashSet<&W> = writers.iter().collect();
    anyhow::ensure!(distinct.len() == writers.len(), "each writer may be named once");
    anyhow::ensure!(keys_per_writer > 0, "each writer needs at least one key");
    anyhow::ensure!(
        reads_per_sec.is_finite() && reads_per_sec > 0.0,
        "the read rate must be a positive number of reads per second"
    );
    Ok(())
}

/// The key of index `key` of writer `writer`.
fn key_name(run_id: &str, writer: &str, key: usize) -> String {
    format!("kv-bench-visibility/{run_id}/{writer}/{key}")
}

/// Runs `probe` against `edges` and returns what it saw; `tick` is called about once a
/// second with the seconds elapsed.
pub async fn run(probe: &Probe, edges: &[Edge], tick: impl Fn(u64)) -> anyhow::Result<Observed> {
    anyhow::ensure!(!edges.is_empty() && !probe.writers.is_empty(), "the probe needs an edge and a writer");
    check(&probe.writers, probe.keys_per_writer, probe.reads_per_sec)?;
    let mut writer_of = Vec::new();
    let mut names = Vec::new();
    for &w in &probe.writers {
        let edge = edges.get(w).ok_or_else(|| anyhow::anyhow!("no edge {w}"))?;
        for i in 0..probe.keys_per_writer {
            writer_of.push(w);
            names.push(key_name(&probe.run_id, &edge.name, i));
        }
    }
    let names = Arc::new(names);
    let zero = Instant::now();
    let end = zero + probe.duration;
    let reads = Arc::new(Mutex::new(Vec::new()));

    let mut writes = Vec::new();
    for (key, &w) in writer_of.iter().enumerate() {
        // Keys of one writer start a share of the interval apart, so writes are spread out.
        let first = zero
            + Duration::from_millis(200)
            + probe.write_interval.mul_f64((key % probe.keys_per_writer) as f64 / probe.keys_per_writer as f64);
        let writer = KeyWriter {
            client: edges[w].clients[key % edges[w].clients.len()].clone(),
            namespace: probe.namespace.clone(),
            key: names[key].clone(),
            interval: probe.write_interval,
            expiration_ttl: probe.duration.as_secs() as i64 + 3_600,
        };
        writes.push(tokio::spawn(writer.write(zero, first, end)));
    }
    let mut readers = Vec::new();
    for (e, edge) in edges.iter().enumerate() {
        let reader = EdgeReader {
            edge: e,
            clients: edge.clients.clone(),
            namespace: probe.namespace.clone(),
            names: names.clone(),
            cache_ttl: probe.cache_ttl,
            reads: reads.clone(),
        };
        let every = Duration::try_from_secs_f64(1.0 / probe.reads_per_sec).unwrap_or(Duration::from_secs(1));
        readers.push(tokio::spawn(reader.read(zero, every.max(Duration::from_micros(10)), end)));
    }
    let ticker = async {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            tick(zero.elapsed().as_secs());
        }
    };
    let all = async { (futures::future::join_all(writes).await, futures::future::join_all(readers).await) };
    let (writes, readers) = tokio::select! {
        r = all => r,
        _ = ticker => unreachable!("the ticker never ends"),
    };
    let (mut acks, mut refused) = (Vec::new(), 0);
    for w in writes {
        let (a, r) = w.map_err(|e| anyhow::anyhow!("a writer of the probe failed: {e}"))?;
        acks.push(a);
        refused += r;
    }
    let mut skipped = Vec::new();
    for r in readers {
        skipped.push(r.map_err(|e| anyhow::anyhow!("a reader of the probe failed: {e}"))?);
    }
    let reads = std::mem::take(&mut *reads.lock().map_err(|_| anyhow::anyhow!("a reader of the probe failed"))?);
    Ok(Observed {
        edges: edges.iter().map(|e| e.name.clone()).collect(),
        writer_of,
        acks,
        reads,
        skipped,
        refused,
        cache_ttl_ms: probe.cache_ttl.map_or(DEFAULT_CACHE_TTL_MS, |t| t.max(0) as u64 * 1000),
    })
}

fn micros(zero: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(zero).as_micros() as u64
}

/// KV's cacheTtl when a read names none.
const DEFAULT_CACHE_TTL_MS: u64 = 60_000;

/// Writes one key's counter, once per interval, until the end or its first failure of
/// unknown outcome; returns when each write was acknowledged, and how many were refused.
struct KeyWriter {
    client: RawClient,
    namespace: String,
    key: String,
    interval: Duration,
    expiration_ttl: i64,
}

impl KeyWriter {
    async fn write(mut self, zero: Instant, first: Instant, end: Instant) -> (Vec<Option<u64>>, u64) {
        let (mut acks, mut refused) = (Vec::new(), 0);
        let mut due = first;
        while due < end {
            tokio::time::sleep_until(due.into()).await;
            let counter = acks.len() + 1;
            let req = api::PutRequest {
                namespace_id: self.namespace.clone(),
                key: self.key.clone(),
                value: counter.to_string().into_bytes().into(),
                expiration_ttl: Some(self.expiration_ttl),
                ..Default::default()
            };
            match self.client.put(req).await {
                Ok(_) => acks.push(Some(micros(zero, Instant::now()))),
                // Refused by the per-key write limit before anything was written (two writes
                // can reach the leader closer than they were sent): the same counter again.
                Err(s) if s.code() == tonic::Code::ResourceExhausted => refused += 1,
                Err(_) => {
                    // The write may still commit later; a later counter could then be
                    // overwritten by it, so this key is written no more.
                    acks.push(None);
                    break;
                }
            }
            due = (due + self.interval).max(Instant::now());
        }
        (acks, refused)
    }
}

/// Reads the keys in turn at one edge on a fixed schedule.
struct EdgeReader {
    edge: usize,
    clients: Vec<RawClient>,
    namespace: String,
    names: Arc<Vec<String>>,
    cache_ttl: Option<i64>,
    reads: Arc<Mutex<Vec<Read>>>,
}

impl EdgeReader {
    /// Returns how many reads were skipped.
    async fn read(self, zero: Instant, every: Duration, end: Instant) -> u64 {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut skipped = 0;
        let mut calls = Vec::new();
        let mut due = zero;
        let mut n = 0usize;
        while due < end {
            tokio::time::sleep_until(due.into()).await;
            due += every;
            n += 1;
            if in_flight.load(Ordering::Relaxed) >= IN_FLIGHT {
                skipped += 1;
                continue;
            }
            in_flight.fetch_add(1, Ordering::Relaxed);
            let key = n % self.names.len();
            let mut client = self.clients[n % self.clients.len()].clone();
            let req = api::GetRequest {
                namespace_id: self.namespace.clone(),
                key: self.names[key].clone(),
                cache_ttl: self.cache_ttl,
                with_metadata: false,
                ..Default::default()
            };
            let (reads, in_flight, edge) = (self.reads.clone(), in_flight.clone(), self.edge);
            calls.push(tokio::spawn(async move {
                let start = micros(zero, Instant::now());
                let (seen, stale) = match client.get(req).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        (counter(&r), r.cache_status == api::CacheStatus::Stale as i32)
                    }
                    Err(s) => (Err(code_name(s.code())), false),
                };
                let end = micros(zero, Instant::now());
                if let Ok(mut reads) = reads.lock() {
                    reads.push(Read { edge, key, start, end, seen, stale });
                }
                in_flight.fetch_sub(1, Ordering::Relaxed);
            }));
        }
        futures::future::join_all(calls).await;
        skipped
    }
}

/// The counter a read returned: 0 when absent.
fn counter(r: &api::GetResponse) -> Result<u32, String> {
    if !r.found {
        return Ok(0);
    }
    std::str::from_utf8(&r.value).ok().and_then(|s| s.parse().ok()).ok_or_else(|| "foreign_value".to_owned())
}

/// What reads at one edge saw of the writes of another (or the same) edge.
#[derive(Clone, Default)]
pub struct Pair {
    pub writer: usize,
    pub reader: usize,
    /// Per bin of `BINS_MS`: (samples, visible samples).
    pub bins: Vec<(u64, u64)>,
    pub reads: u64,
    /// Reads that missed at least one write acknowledged before they began.
    pub stale_reads: u64,
    /// For each stale read, how long before it began the first write it missed was acknowledged.
    pub staleness: Latency,
    /// The most writes one read missed.
    pub most_versions_behind: u64,
    pub versions_behind_total: u64,
}

impl Pair {
    /// The share of samples in bin `i` that were visible.
    pub fn visible(&self, i: usize) -> Option<f64> {
        let (n, v) = self.bins[i];
        (n > 0).then(|| v as f64 / n as f64)
    }

    /// The smallest bin edge from which every bin with samples shows a share of at least
    /// `q`: reads issued that long or longer after a write see it with probability `q`.
    pub fn visible_after_ms(&self, q: f64) -> Option<u64> {
        let mut from = None;
        for i in (0..BINS_MS.len()).rev() {
            match self.visible(i) {
                Some(p) if p < q => break,
                Some(_) => from = Some(BINS_MS[i]),
                None => {}
            }
        }
        from
    }

    /// The bin edge past which no sample was invisible, i.e. where the last invisible one
    /// ended; `None` when every sample was visible.
    pub fn invisible_until_ms(&self) -> Option<u64> {
        (0..BINS_MS.len()).rev().find(|&i| self.bins[i].1 < self.bins[i].0).map(bin_end)
    }
}

/// The upper edge of bin `i`.
pub fn bin_end(i: usize) -> u64 {
    BINS_MS.get(i + 1).copied().unwrap_or(HORIZON_MS)
}

/// What a probe found.
#[derive(Default)]
pub struct Report {
    /// Every (writer, reader) pair that had reads.
    pub pairs: Vec<Pair>,
    /// Per edge: reads at a key's writing edge that missed a write acknowledged before they began.
    pub read_your_writes_violations: Vec<u64>,
    /// Per edge: reads older than a read at that edge which ended before they began.
    pub monotonic_violations: Vec<u64>,
    /// Per edge: reads, not answered STALE, that missed a write acknowledged more than
    /// cacheTtl before they began.
    pub bounded_staleness_violations: Vec<u64>,
    /// Per edge: failed reads by gRPC code.
    pub read_errors: Vec<BTreeMap<String, u64>>,
    pub writes_acked: u64,
    pub writes_unknown: u64,
}

fn bin_of(ms: u64) -> Option<usize> {
    if ms >= HORIZON_MS {
        return None;
    }
    Some(BINS_MS.partition_point(|&b| b <= ms) - 1)
}

/// Sets every read against the writes of its key.
pub fn analyze(o: &Observed) -> Report {
    let n = o.edges.len();
    let mut report = Report {
        read_your_writes_violations: vec![0; n],
        monotonic_violations: vec![0; n],
        bounded_staleness_violations: vec![0; n],
        read_errors: vec![BTreeMap::new(); n],
        ..Default::default()
    };
    for acks in &o.acks {
        report.writes_acked += acks.iter().flatten().count() as u64;
        report.writes_unknown += acks.iter().filter(|a| a.is_none()).count() as u64;
    }
    let mut pairs: BTreeMap<(usize, usize), Pair> = BTreeMap::new();
    for r in &o.reads {
        let seen = match &r.seen {
            Ok(c) => *c as usize,
            Err(code) => {
                *report.read_errors[r.edge].entry(code.clone()).or_default() += 1;
                continue;
            }
        };
        let (Some(&writer), Some(acks)) = (o.writer_of.get(r.key), o.acks.get(r.key)) else { continue };
        let pair = pairs.entry((writer, r.edge)).or_insert_with(|| Pair {
            writer,
            reader: r.edge,
            bins: vec![(0, 0); BINS_MS.len()],
            ..Default::default()
        });
        pair.reads += 1;
        // Writes acknowledged before the read began: counters 1..=latest.
        let latest = acks.iter().take_while(|a| a.is_some_and(|t| t <= r.start)).count();
        for k in (1..=latest).rev() {
            let Some(acked) = acks[k - 1] else { break };
            let Some(bin) = bin_of((r.start - acked) / 1000) else { break };
            pair.bins[bin].0 += 1;
            pair.bins[bin].1 += u64::from(seen >= k);
        }
        if seen < latest {
            pair.stale_reads += 1;
            let behind = (latest - seen) as u64;
            pair.most_versions_behind = pair.most_versions_behind.max(behind);
            pair.versions_behind_total += behind;
            if let Some(first_missed) = acks[seen] {
                pair.staleness.record(Duration::from_micros(r.start - first_missed));
            }
            if writer == r.edge {
                report.read_your_writes_violations[r.edge] += 1;
            }
            // The newest write acknowledged more than cacheTtl before the read began.
            let due = acks.iter().take_while(|a| a.is_some_and(|t| t + o.cache_ttl_ms * 1000 < r.start)).count();
            if seen < due && !r.stale {
                report.bounded_staleness_violations[r.edge] += 1;
            }
        }
    }
    report.pairs = pairs.into_values().collect();
    monotonic(o, &mut report.monotonic_violations);
    report
}

/// Counts, per edge, reads that returned an older counter than a read of the same key at
/// the same edge that ended before they began.
fn monotonic(o: &Observed, violations: &mut [u64]) {
    // (start, end, counter) of the reads of each key at each edge.
    type Spans = Vec<(u64, u64, u32)>;
    let mut by_edge_key: BTreeMap<(usize, usize), Spans> = BTreeMap::new();
    for r in &o.reads {
        if let Ok(c) = r.seen {
            by_edge_key.entry((r.edge, r.key)).or_default().push((r.start, r.end, c));
        }
    }
    for ((edge, _), mut reads) in by_edge_key {
        let mut by_end: Vec<(u64, u32)> = reads.iter().map(|&(_, end, c)| (end, c)).collect();
        by_end.sort_unstable();
        reads.sort_unstable();
        let (mut ended, mut newest) = (0, 0);
        for (start, _, c) in reads {
            while ended < by_end.len() && by_end[ended].0 < start {
                newest = newest.max(by_end[ended].1);
                ended += 1;
            }
            if c < newest {
                violations[edge] += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(edge: usize, start_ms: u64, seen: u32) -> Read {
        Read { edge, key: 0, start: start_ms * 1000, end: start_ms * 1000 + 500, seen: Ok(seen), stale: false }
    }

    /// One key written by edge 0: counter 1 acknowledged at 100 ms, 2 at 1,100 ms.
    fn observed(reads: Vec<Read>) -> Observed {
        Observed {
            edges: vec!["w".into(), "r".into()],
            writer_of: vec![0],
            acks: vec![vec![Some(100_000), Some(1_100_000)]],
            reads,
            skipped: vec![0, 0],
            refused: 0,
            cache_ttl_ms: 1_000,
        }
    }

    #[test]
    fn a_read_is_a_sample_of_every_write_acknowledged_before_it_began() {
        // At 1,150 ms the reader sees counter 1: it missed write 2 (50 ms old) but has
        // write 1 (1,050 ms old).
        let r = analyze(&observed(vec![read(1, 1_150, 1)]));
        let pair = &r.pairs[0];
        assert_eq!((pair.writer, pair.reader, pair.reads, pair.stale_reads), (0, 1, 1, 1));
        assert_eq!(pair.bins[bin_of(50).unwrap()], (1, 0));
        assert_eq!(pair.bins[bin_of(1_050).unwrap()], (1, 1));
        assert_eq!(pair.bins.iter().map(|b| b.0).sum::<u64>(), 2);
        assert_eq!((pair.most_versions_behind, pair.staleness.count()), (1, 1));
        assert!((pair.staleness.ms(0.5) - 50.0).abs() < 0.1);
        // Reads that began before any acknowledgement are no samples, and are never stale.
        let r = analyze(&observed(vec![read(1, 50, 0)]));
        assert_eq!((r.pairs[0].bins.iter().map(|b| b.0).sum::<u64>(), r.pairs[0].stale_reads), (0, 0));
    }

    #[test]
    fn the_curve_reads_as_the_time_after_which_writes_are_seen() {
        let reads = (0..99).map(|i| read(1, 110 + i * 10, u32::from(i >= 19))).collect();
        let r = analyze(&observed(reads));
        let pair = &r.pairs[0];
        // Reads 10..200 ms after write 1 missed it, later ones saw it.
        assert_eq!(pair.visible_after_ms(0.99), Some(200));
        assert_eq!(pair.invisible_until_ms(), Some(200));
        assert_eq!(pair.visible(bin_of(0).unwrap()), None);
        assert_eq!(pair.visible(bin_of(10).unwrap()), Some(0.0));
    }

    #[test]
    fn broken_guarantees_are_counted_per_edge() {
        let r = analyze(&observed(vec![
            // The writing edge misses its own write 2: read-your-writes broken.
            read(0, 1_200, 1),
            // The reader goes back from 2 to 1 (the later read began after the first ended).
            read(1, 1_300, 2),
            read(1, 1_400, 1),
            // Overlapping reads may disagree: this one began before the first one ended.
            Read { start: 1_300_200, end: 1_300_900, ..read(1, 0, 1) },
        ]));
        assert_eq!(r.read_your_writes_violations, vec![1, 0]);
        assert_eq!(r.monotonic_violations, vec![0, 1]);
        let clean = analyze(&observed(vec![read(0, 1_200, 2), read(1, 1_300, 1), read(1, 1_400, 2)]));
        assert_eq!((clean.read_your_writes_violations, clean.monotonic_violations), (vec![0, 0], vec![0, 0]));
    }

    #[test]
    fn a_read_that_misses_a_write_older_than_cache_ttl_breaks_the_bound_unless_stale() {
        // cacheTtl 1 s; write 1 was acknowledged at 100 ms, write 2 at 1,100 ms.
        let late = |stale| Read { stale, ..read(1, 1_200, 0) };
        let r = analyze(&observed(vec![read(1, 1_000, 0), late(false), late(true), read(1, 2_150, 1)]));
        // At 1,000 ms write 1 is 900 ms old: allowed. At 1,200 ms it is 1,100 ms old: a
        // fresh answer without it breaks the bound, a STALE one does not. At 2,150 ms write
        // 2 is 1,050 ms old and was missed.
        assert_eq!(r.bounded_staleness_violations, vec![0, 2]);
    }

    #[test]
    fn failed_reads_and_unknown_writes_are_counted_not_sampled() {
        let mut o = observed(vec![Read { seen: Err("unavailable".into()), ..read(1, 2_000, 0) }]);
        o.acks[0].push(None);
        let r = analyze(&o);
        assert!(r.pairs.is_empty());
        assert_eq!(r.read_errors[1].get("unavailable"), Some(&1));
        assert_eq!((r.writes_acked, r.writes_unknown), (2, 1));
    }
}
