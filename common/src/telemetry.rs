//! Logging set-up shared by every binary.

use tracing_subscriber::EnvFilter;

/// Installs a `tracing` subscriber that honours `RUST_LOG` (default `info`), colours only
/// a terminal (logs are mostly files), and tags every line with the service name.
pub fn init_tracing(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).try_init();
    tracing::info!(service, "tracing initialised");
}
