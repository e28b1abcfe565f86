//! `edge-node`: runs one edge node until SIGINT or SIGTERM.

use clap::Parser;
use edge_node::config::{Args, Config};

kv_common::node_allocator!();

/// What `--print-default-config` says first.
const DEFAULT_CONFIG_HEADER: &str = r#"# Secrets, from files or the environment (never in this file):
# admin_token_file = "/etc/kv/admin-token"  # or KV_ADMIN_TOKEN
"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", kv_common::config::default_toml::<Config>(DEFAULT_CONFIG_HEADER)?);
        return Ok(());
    }
    let config = Config::load(args)?;
    let telemetry = kv_common::telemetry::init_tracing("edge-node", &config.id, &config.telemetry)?;
    let served = edge_node::node::run(config, kv_common::serve::shutdown_signal()).await;
    telemetry.shutdown().await;
    served
}
