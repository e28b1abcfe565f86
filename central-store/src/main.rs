//! `central-store`: runs one central node until SIGINT or SIGTERM.

use central_store::config::{Args, Config};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kv_common::telemetry::init_tracing("central-store");
    let config = Config::load(Args::parse())?;
    central_store::server::run(config, kv_common::serve::shutdown_signal()).await
}
