//! Runs a workload against a set of edges and records what every operation saw.
//!
//! Each endpoint gets `clients` connections, each driven by its own task. In a closed loop
//! a client sends its next operation when the last one is answered. In an open loop
//! (`rate` > 0) operations are due on a fixed schedule, and latency is measured from when
//! each was due, not from when it could be sent: a stall then shows as the latency every
//! delayed operation really had (no coordinated omission), as wrk2 and YCSB's
//! intended-start measurement do.

use crate::ycsb::{Keys, Op, ValueSize, Workload};
use crate::{status, Latency};
use kv_client::{api, RawClient};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

/// One edge the benchmark drives, by a name its results are reported under.
#[derive(Clone)]
pub struct Endpoint {
    pub name: String,
    pub clients: Vec<RawClient>,
}

/// What one run does.
#[derive(Clone)]
pub struct Plan {
    pub namespace: String,
    pub workload: Workload,
    pub value_size: ValueSize,
    /// Operations per second over all clients; 0 runs a closed loop.
    pub rate: f64,
    pub warmup: Duration,
    pub duration: Duration,
    /// `cacheTtl` of reads, when set.
    pub cache_ttl: Option<i64>,
    pub seed: u64,
}

/// How an operation ended, as results are grouped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// A read's cache status and, for a miss, whose copy answered (`hit`, `miss:regional`,
    /// `miss:central`, `stale`), or `ok` for other operations.
    Ok(&'static str),
    /// The read found no value.
    Absent,
    /// Refused or failed, by gRPC code (`resource_exhausted` is KV's 429).
    Error(String),
}

impl Outcome {
    pub fn label(&self) -> String {
        match self {
            Outcome::Ok(s) => (*s).to_owned(),
            Outcome::Absent => "absent".into(),
            Outcome::Error(code) => format!("error:{code}"),
        }
    }
}

/// Results grouped by endpoint, operation and outcome.
pub type Groups = BTreeMap<(String, Op, Outcome), Latency>;

/// What a run measured (after its warm-up).
#[derive(Default)]
pub struct Measured {
    pub groups: Groups,
    /// Operations completed in each second from the start of the measured window, per
    /// endpoint (past its end too, when an open loop fell behind its schedule).
    pub timeline: BTreeMap<String, Vec<u64>>,
    /// From the start of the measured window to the last completion of an operation begun
    /// (or due) in it: rates are counted over this, so an open loop the cluster cannot keep
    /// up with reports what was achieved, not what was asked.
    pub seconds: f64,
}

/// The time between two operations of one client of an open loop at `rate` over
/// `clients`; `None` for a closed loop (rate 0). Bounded so the schedule never overflows.
pub fn interval(rate: f64, clients: usize, longest: Duration) -> anyhow::Result<Option<Duration>> {
    anyhow::ensure!(rate.is_finite() && rate >= 0.0, "the rate must be a number of operations per second, 0 or more");
    if rate == 0.0 {
        return Ok(None);
    }
    let i = Duration::try_from_secs_f64(clients.max(1) as f64 / rate).unwrap_or(Duration::MAX);
    Ok(Some(i.clamp(Duration::from_nanos(1), longest)))
}

/// Runs `plan` on every endpoint's clients at once, calling `tick` about once a second
/// with the seconds elapsed (for a progress bar).
pub async fn run(plan: &Plan, endpoints: &[Endpoint], keys: Arc<Keys>, tick: impl Fn(u64)) -> anyhow::Result<Measured> {
    let clients: usize = endpoints.iter().map(|e| e.clients.len()).sum();
    let interval = interval(plan.rate, clients, plan.warmup + plan.duration + Duration::from_secs(1))?;
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let mut tasks = Vec::new();
    let mut n = 0u64;
    for e in endpoints {
        for c in &e.clients {
            n += 1;
            let driver = Driver {
                plan: plan.clone(),
                endpoint: e.name.clone(),
                client: c.clone(),
                keys: keys.clone(),
                rng: rand::rngs::StdRng::seed_from_u64(plan.seed.wrapping_add(n)),
            };
            // Clients of an open loop are spread over one interval, not all due at once.
            let offset = interval.map_or(Duration::ZERO, |i| i.mul_f64((n - 1) as f64 / clients as f64));
            let window = Window { first: start + offset, measure_from, end };
            tasks.push(tokio::spawn(driver.drive(window, interval)));
        }
    }
    let ticker = async {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            tick(start.elapsed().as_secs());
        }
    };
    let joined = futures::future::join_all(tasks);
    let results = tokio::select! {
        r = joined => r,
        _ = ticker => unreachable!("the ticker never ends"),
    };
    let mut total = Measured::default();
    for r in results {
        let r = r.map_err(|e| anyhow::anyhow!("a client of the benchmark failed: {e}"))?;
        total.seconds = total.seconds.max(r.seconds);
        for (k, l) in r.groups {
            total.groups.entry(k).or_default().merge(&l);
        }
        for (e, counts) in r.timeline {
            let line = total.timeline.entry(e).or_default();
            if line.len() < counts.len() {
                line.resize(counts.len(), 0);
            }
            for (t, c) in line.iter_mut().zip(counts) {
                *t += c;
            }
        }
    }
    total.seconds = total.seconds.max(plan.duration.as_secs_f64());
    Ok(total)
}

/// When a client runs and measures.
struct Window {
    first: Instant,
    measure_from: Instant,
    end: Instant,
}

/// One client's loop.
struct Driver {
    plan: Plan,
    endpoint: String,
    client: RawClient,
    keys: Arc<Keys>,
    rng: rand::rngs::StdRng,
}

impl Driver {
    async fn drive(mut self, w: Window, interval: Option<Duration>) -> Measured {
        let mut out = Measured::default();
        let mut line: Vec<u64> = Vec::new();
        let mut due = w.first;
        loop {
            // Open loop: the operation counts from when it was due. Closed loop: from when
            // it is sent, right after the last one was answered.
            let started = if interval.is_some() { due } else { Instant::now().max(due) };
            if started >= w.end {
                break;
            }
            tokio::time::sleep_until(started.into()).await;
            let op = self.plan.workload.next_op(&mut self.rng);
            let outcome = self.one(op).await;
            let done = Instant::now();
            if started >= w.measure_from {
                out.groups.entry((self.endpoint.clone(), op, outcome)).or_default().record(done - started);
                let elapsed = done - w.measure_from;
                out.seconds = out.seconds.max(elapsed.as_secs_f64());
                let second = elapsed.as_secs() as usize;
                if line.len() <= second {
                    line.resize(second + 1, 0);
                }
                line[second] += 1;
            }
            if let Some(i) = interval {
                due += i;
            }
        }
        out.timeline.insert(self.endpoint.clone(), line);
        out
    }

    async fn one(&mut self, op: Op) -> Outcome {
        let result = match op {
            Op::Read => {
                let n = self.keys.choose(&mut self.rng);
                self.read(n).await
            }
            Op::Update => {
                let n = self.keys.choose(&mut self.rng);
                self.write(n).await
            }
            Op::Insert => {
                let n = self.keys.claim();
                let r = self.write(n).await;
                if r.is_ok() {
                    self.keys.inserted(n);
                }
                r
            }
            Op::Scan => self.scan().await,
            Op::ReadModifyWrite => {
                let n = self.keys.choose(&mut self.rng);
                match self.read(n).await {
                    Ok(read) => self.write(n).await.map(|_| read),
                    Err(e) => Err(e),
                }
            }
        };
        result.unwrap_or_else(|s| Outcome::Error(code_name(s.code())))
    }

    async fn read(&mut self, n: u64) -> Result<Outcome, tonic::Status> {
        let req = api::GetRequest {
            namespace_id: self.plan.namespace.clone(),
            key: self.keys.name(n),
            cache_ttl: self.plan.cache_ttl,
            with_metadata: false,
            ..Default::default()
        };
        let r = self.client.get(req).await?.into_inner();
        if !r.found {
            return Ok(Outcome::Absent);
        }
        let served_by = api::ServedBy::try_from(r.served_by).unwrap_or_default();
        Ok(Outcome::Ok(match (status(&r), served_by) {
            (api::CacheStatus::Hit, _) => "hit",
            (api::CacheStatus::Miss, api::ServedBy::Regional) => "miss:regional",
            (api::CacheStatus::Miss, api::ServedBy::Central) => "miss:central",
            // An edge that does not say (an older one).
            (api::CacheStatus::Miss, _) => "miss",
            (api::CacheStatus::Stale, _) => "stale",
            (api::CacheStatus::Unspecified, _) => "unspecified",
        }))
    }

    async fn write(&mut self, n: u64) -> Result<Outcome, tonic::Status> {
        let len = self.plan.value_size.draw(&mut self.rng);
        let req = api::PutRequest {
            namespace_id: self.plan.namespace.clone(),
            key: self.keys.name(n),
            value: value(len, self.rng.gen()).into(),
            ..Default::default()
        };
        self.client.put(req).await?;
        Ok(Outcome::Ok("ok"))
    }

    async fn scan(&mut self) -> Result<Outcome, tonic::Status> {
        let n = self.keys.choose(&mut self.rng);
        let req = api::ListRequest {
            namespace_id: self.plan.namespace.clone(),
            prefix: self.keys.scan_prefix(n),
            limit: Some(self.rng.gen_range(1..=100)),
            cursor: String::new(),
        };
        self.client.list(req).await?;
        Ok(Outcome::Ok("ok"))
    }
}

/// A value of `len` bytes, different per write.
pub fn value(len: usize, fill: u8) -> Vec<u8> {
    vec![fill; len]
}

/// A gRPC code as results name it (`resource_exhausted`, `unavailable`, ...).
pub fn code_name(code: Code) -> String {
    let name = format!("{code:?}");
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_intervals_are_bounded_and_bad_rates_refused() {
        let longest = Duration::from_secs(12);
        assert_eq!(interval(0.0, 4, longest).unwrap(), None);
        assert_eq!(interval(100.0, 2, longest).unwrap(), Some(Duration::from_millis(20)));
        assert_eq!(interval(1e-300, 2, longest).unwrap(), Some(longest));
        assert_eq!(interval(1e300, 2, longest).unwrap(), Some(Duration::from_nanos(1)));
        for bad in [f64::NAN, f64::INFINITY, -1.0] {
            assert!(interval(bad, 2, longest).is_err(), "{bad}");
        }
    }

    #[test]
    fn codes_are_named_in_snake_case() {
        assert_eq!(code_name(Code::ResourceExhausted), "resource_exhausted");
        assert_eq!(code_name(Code::Unavailable), "unavailable");
        assert_eq!(code_name(Code::Ok), "ok");
    }
}
