//! `central-store`: runs one central node until SIGINT or SIGTERM.

use central_store::config::{Args, Config};
use clap::Parser;

kv_common::node_allocator!();

/// What `--print-default-config` says first.
const DEFAULT_CONFIG_HEADER: &str = r#"# Secrets, from files or the environment (never in this file):
# admin_token_file = "/etc/kv/admin-token"        # or KV_ADMIN_TOKEN
# encryption_key_file = "/etc/kv/encryption-key"  # or KV_ENCRYPTION_KEY: id:64-hex, comma or line separated
"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", kv_common::config::default_toml::<Config>(DEFAULT_CONFIG_HEADER)?);
        return Ok(());
    }
    let config = Config::load(args)?;
    let telemetry =
        kv_common::telemetry::init_tracing("central-store", &config.node_id.to_string(), &config.telemetry)?;
    let served = central_store::server::run(config, kv_common::serve::shutdown_signal()).await;
    telemetry.shutdown().await;
    served
}
