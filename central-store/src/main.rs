//! `central-store`: runs one central node until SIGINT or SIGTERM.

use central_store::config::{Args, Config};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kv_common::telemetry::init_tracing("central-store");
    let config = Config::load(Args::parse())?;
    central_store::node::run(config, shutdown_signal()).await
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
