//! What admitting and serving one call costs a node, with its logger installed as every
//! node installs it (no exporter): `CallLayer::admit`, then `Admitted::serve` of a future
//! that yields once, so it is polled twice as a call's future is. No network, no service:
//! only the call layer and the log set-up.
//!
//! `cargo run --release -p kv-common --example call_cost` prints one JSON line per round.

use kv_common::call::CallLayer;
use kv_common::telemetry::{init_tracing, TelemetryConfig};
use std::time::{Duration, Instant};

const CALLS: u32 = 200_000;
const ROUNDS: u32 = 5;
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _telemetry = init_tracing("call-cost", "bench", &TelemetryConfig::default())?;
    let layer = CallLayer::new(Duration::from_secs(5), 1024);
    for round in 1..=ROUNDS {
        let started = Instant::now();
        for _ in 0..CALLS {
            let admitted = layer
                .admit("grpc", "/kv.v1.Kv/Get", Some(TRACEPARENT), None)
                .ok_or_else(|| anyhow::anyhow!("a call was shed"))?;
            admitted.serve(tokio::task::yield_now()).await;
        }
        let ns = started.elapsed().as_nanos() as f64 / f64::from(CALLS);
        println!("{{\"bench\":\"call_cost\",\"round\":{round},\"calls\":{CALLS},\"ns_per_call\":{ns:.0}}}");
    }
    Ok(())
}
