//! A closed loop: each client sends its next call as soon as its last one is answered, for
//! a warm-up and then a measured window. The same loop drives every system `bench-peers`
//! compares, so their numbers differ only by what answers the calls.

use crate::Latency;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

/// A call not answered within this fails, so one hung call cannot hang the run.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A client whose calls are boxed, for code that makes clients for others to run.
pub type Call = Box<dyn FnMut(u64) -> futures::future::BoxFuture<'static, Result<&'static str, String>> + Send>;

/// What the clients of one loop measured.
#[derive(Default, Clone)]
pub struct Looped {
    /// Calls begun in the measured window and answered well.
    pub ops: u64,
    /// Those calls by the outcome each reported (a read's cache status, say).
    pub outcomes: BTreeMap<&'static str, u64>,
    pub errors: u64,
    /// The first error's message, to tell what went wrong.
    pub first_error: Option<String>,
    /// From the start of the window to the last answer of a call begun in it.
    pub seconds: f64,
    pub latency: Latency,
}

impl Looped {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }
}

/// Runs one task per entry of `clients`; each calls its closure with the number of its
/// call (0, 1, ...) and awaits the answer before the next. A call answers the outcome it
/// counts under, or why it failed.
pub async fn run<F, Fut>(clients: Vec<F>, warmup: Duration, window: Duration) -> anyhow::Result<Looped>
where
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: Future<Output = Result<&'static str, String>> + Send,
{
    let from = Instant::now() + warmup;
    let end = from + window;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut call| {
            tokio::spawn(async move {
                let mut out = Looped::default();
                let mut last = from;
                for n in 0.. {
                    let began = Instant::now();
                    if began >= end {
                        break;
                    }
                    let r = match tokio::time::timeout(CALL_TIMEOUT, call(n)).await {
                        Ok(r) => r,
                        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
                    };
                    let done = Instant::now();
                    if began < from {
                        continue;
                    }
                    last = last.max(done);
                    match r {
                        Ok(outcome) => {
                            out.ops += 1;
                            *out.outcomes.entry(outcome).or_default() += 1;
                            out.latency.record(done - began);
                        }
                        Err(e) => {
                            out.errors += 1;
                            out.first_error.get_or_insert(e);
                        }
                    }
                }
                out.seconds = (last - from).as_secs_f64();
                out
            })
        })
        .collect();
    let mut total = Looped::default();
    for t in tasks {
        let r = t.await.map_err(|e| anyhow::anyhow!("a client of the loop failed: {e}"))?;
        total.ops += r.ops;
        total.errors += r.errors;
        for (outcome, n) in r.outcomes {
            *total.outcomes.entry(outcome).or_default() += n;
        }
        total.first_error = total.first_error.or(r.first_error);
        total.seconds = total.seconds.max(r.seconds);
        total.latency.merge(&r.latency);
    }
    total.seconds = total.seconds.max(window.as_secs_f64());
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_of_the_window_are_counted_and_errors_kept_apart() {
        let clients: Vec<_> = (0..2)
            .map(|c| {
                move |n: u64| async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    if c == 1 && n.is_multiple_of(2) {
                        Err(format!("call {n} refused"))
                    } else {
                        Ok(if c == 0 { "first" } else { "second" })
                    }
                }
            })
            .collect();
        let r = run(clients, Duration::from_millis(50), Duration::from_millis(300)).await.unwrap();
        // Half of client 1's calls fail, none of client 0's.
        assert!(r.errors > 0 && r.ops > r.errors, "{} ok, {} failed", r.ops, r.errors);
        assert!(r.first_error.unwrap().ends_with("refused"));
        assert_eq!(r.latency.count(), r.ops);
        assert_eq!(r.outcomes.values().sum::<u64>(), r.ops);
        assert!(r.outcomes["first"] > 0 && r.outcomes["second"] > 0, "{:?}", r.outcomes);
        assert!(r.seconds >= 0.3);
    }
}
