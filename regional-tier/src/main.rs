//! `regional-tier`: runs one regional cache tier until SIGINT or SIGTERM.

use clap::Parser;
use regional_tier::config::{Args, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kv_common::telemetry::init_tracing("regional-tier");
    let config = Config::load(Args::parse())?;
    regional_tier::node::run(config, kv_common::serve::shutdown_signal()).await
}
