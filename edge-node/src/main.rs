//! `edge-node`: runs one edge node until SIGINT or SIGTERM.

use clap::Parser;
use edge_node::config::{Args, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kv_common::telemetry::init_tracing("edge-node");
    let config = Config::load(Args::parse())?;
    edge_node::node::run(config, kv_common::serve::shutdown_signal()).await
}
