//! Regional tier configuration: a TOML file, overridden by flags and `KV_*` variables.

use clap::Parser;
use kv_common::Limits;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything a regional tier needs to run.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// A file holding the cluster's admin token (`KV_ADMIN_TOKEN` wins over it).
    pub admin_token_file: Option<PathBuf>,
    /// The cluster's admin token, from `KV_ADMIN_TOKEN` or `admin_token_file`: this node's
    /// credential on every call it makes, and accepted as an admin token.
    #[serde(skip)]
    pub admin_token: kv_common::auth::AdminToken,
    /// The region's name, for logs.
    pub region: String,
    /// gRPC: the store API for edges, pushes, health, reflection.
    pub listen: SocketAddr,
    /// HTTP: `/metrics` and `/health`.
    pub http_listen: SocketAddr,
    /// Central store nodes, tried in turn.
    pub central: Vec<String>,
    /// Memory bound of the cache (keys, values and metadata).
    pub cache_bytes: u64,
    /// How long an entry stays; the change feed keeps it fresh meanwhile.
    pub entry_ttl_secs: u64,
    /// How long connecting to an upstream endpoint may take (a call's budget is split over
    /// the endpoints, see `kv_tier::upstream`).
    pub connect_timeout_ms: u64,
    /// The budget of a call whose caller set no deadline (`grpc-timeout`).
    pub request_timeout_ms: u64,
    /// How long a read that needs a newer feed position waits for the feed before reading centrally.
    pub catch_up_wait_ms: u64,
    /// Extra time an edge stays tracked after its copy's cacheTtl.
    pub tracking_slack_secs: u64,
    /// The longest an edge is tracked for one read, whatever its cacheTtl.
    pub max_tracking_secs: u64,
    /// Memory bound of the tracking of edges' interest: about 740 bytes per key an edge of
    /// the region holds, and 210 more for each further edge holding it. An edge whose
    /// interest is evicted drops its copy, so this should cover what the region's edges
    /// cache (two edges of 128 MiB caches of 1 KiB values hold about 154,000 keys).
    pub tracking_bytes: u64,
    /// The cache answers as fresh only while the feed is proved at most this old.
    pub max_feed_age_ms: u64,
    /// How often the followed central node is asked to prove the feed fresh.
    pub probe_interval_ms: u64,
    /// A feed without a new proof for this long is left for the next central node.
    pub feed_switch_after_ms: u64,
    /// Calls served at once, at most; more are shed with UNAVAILABLE.
    pub max_in_flight: usize,
    pub limits: Limits,
    /// TLS on every listener and link (mutual between nodes): the CA, this node's
    /// certificate (naming its role) and key. None of them: plaintext.
    pub tls: kv_common::tls::TlsFiles,
    /// Trace export (OTLP); off unless an endpoint is set.
    pub telemetry: kv_common::telemetry::TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_token_file: None,
            admin_token: Default::default(),
            tls: Default::default(),
            telemetry: Default::default(),
            region: "local".into(),
            listen: ([127, 0, 0, 1], 7301).into(),
            http_listen: ([127, 0, 0, 1], 7401).into(),
            central: vec!["127.0.0.1:7101".into()],
            cache_bytes: 256 << 20,
            entry_ttl_secs: 3600,
            connect_timeout_ms: 1000,
            request_timeout_ms: 10_000,
            catch_up_wait_ms: 50,
            tracking_slack_secs: 5,
            max_tracking_secs: 86_400,
            tracking_bytes: 128 << 20,
            max_feed_age_ms: 1000,
            probe_interval_ms: 200,
            feed_switch_after_ms: 3000,
            max_in_flight: 2048,
            limits: Limits::default(),
        }
    }
}

/// Command-line flags; each one overrides the config file.
#[derive(Debug, Parser)]
#[command(name = "regional-tier", about = "A regional cache tier between edges and the central store")]
pub struct Args {
    /// TOML config file.
    #[arg(long, env = "KV_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print every setting with its default value (TOML, as the config file takes it) and exit.
    #[arg(long)]
    pub print_default_config: bool,
    #[command(flatten)]
    pub admin_token: kv_common::auth::AdminTokenArg,
    #[command(flatten)]
    pub tls: kv_common::tls::TlsArgs,
    #[arg(long, env = "KV_REGION")]
    pub region: Option<String>,
    #[arg(long, env = "KV_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "KV_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Central nodes as `host:port,host:port,...`.
    #[arg(long, env = "KV_CENTRAL")]
    pub central: Option<String>,
    #[arg(long, env = "KV_CACHE_BYTES")]
    pub cache_bytes: Option<u64>,
}

impl Config {
    /// Reads the config file (if any) and applies the flags on top.
    pub fn load(args: Args) -> anyhow::Result<Config> {
        let mut c: Config = kv_common::config::load_toml(args.config.as_deref())?;
        if let Some(v) = args.region {
            c.region = v;
        }
        if let Some(v) = args.listen {
            c.listen = v;
        }
        if let Some(v) = args.http_listen {
            c.http_listen = v;
        }
        if let Some(v) = args.central {
            c.central = kv_common::config::split_list(&v);
        }
        if let Some(v) = args.cache_bytes {
            c.cache_bytes = v;
        }
        anyhow::ensure!(!c.central.is_empty(), "no central node configured (--central)");
        c.admin_token = kv_common::auth::AdminToken::load(args.admin_token, c.admin_token_file.as_deref())?;
        args.tls.apply(&mut c.tls);
        c.tls.enabled()?;
        c.telemetry.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_default_config_reads_back_as_the_default() {
        let text = kv_common::config::default_toml::<Config>("# a header\n").unwrap();
        let read: Config = toml::from_str(&text).unwrap();
        assert_eq!(format!("{read:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn flags_override_file_defaults() {
        let args =
            Args::try_parse_from(["regional-tier", "--central", "127.0.0.1:1, 127.0.0.1:2", "--region", "eu"]).unwrap();
        let c = Config::load(args).unwrap();
        assert_eq!(c.central, vec!["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(c.region, "eu");
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
        let bad = Args::try_parse_from(["regional-tier", "--central", ""]).unwrap();
        assert!(Config::load(bad).is_err());
    }
}
