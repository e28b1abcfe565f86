//! Edge node configuration: a TOML file, overridden by flags and `KV_*` variables.

use clap::{Parser, ValueEnum};
use kv_common::Limits;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// How an edge keeps cached copies fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Copies are replaced by pushed newer versions (ours; the default).
    Push,
    /// Pushes are ignored: a copy lives until its cacheTtl ends, exactly like Workers KV.
    Ttl,
}

/// The account id every edge serves unless configured otherwise.
pub const DEFAULT_ACCOUNT_ID: &str = "00000000000000000000000000000001";

/// Everything an edge node needs to run.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// A file holding the cluster's admin token (`KV_ADMIN_TOKEN` wins over it).
    pub admin_token_file: Option<PathBuf>,
    /// The cluster's admin token, from `KV_ADMIN_TOKEN` or `admin_token_file`: this node's
    /// credential on every call it makes, and accepted as an admin token.
    #[serde(skip)]
    pub admin_token: kv_common::auth::AdminToken,
    /// The edge's name; its regional tier tracks and pushes by it. Unique per region.
    pub id: String,
    /// gRPC: the client API, health, reflection.
    pub listen: SocketAddr,
    /// HTTP: the REST API (`/client/v4`), `/metrics` and `/health`.
    pub http_listen: SocketAddr,
    /// The one account the REST API serves (32 hex characters); every edge of a cluster
    /// must name the same.
    pub account_id: String,
    /// The account's name, as `/accounts` shows it.
    pub account_name: String,
    /// The regional tier (first) and any fallbacks, tried in turn.
    pub upstream: Vec<String>,
    pub mode: Mode,
    /// Memory bound of the cache (keys, values and metadata).
    pub cache_bytes: u64,
    /// How long past its cacheTtl a copy may be served STALE while no upstream answers.
    pub max_stale_secs: u64,
    /// A hit past this fraction of its cacheTtl refreshes the key in the background.
    pub refresh_ahead: f64,
    /// How long connecting to an upstream endpoint may take (a call's budget is split over
    /// the endpoints, see `kv_tier::upstream`).
    pub connect_timeout_ms: u64,
    /// The budget of a client call that set no deadline (`grpc-timeout`).
    pub request_timeout_ms: u64,
    /// The oldest answer the edge accepts from upstream as fresh (reads with a short
    /// cacheTtl ask for at most half of it).
    pub fresh_within_ms: u64,
    /// The longest a copy stays fresh, whatever the cacheTtl (the regional tier tracks an
    /// edge's interest for as long, so keep them equal).
    pub max_copy_secs: u64,
    /// Calls served at once, at most; more are shed with UNAVAILABLE.
    pub max_in_flight: usize,
    /// How long a token's record (or its absence) is kept after the instant it was current
    /// as of: the bound on how long a revoked token keeps working at this edge.
    pub token_cache_ms: u64,
    /// Memory bound of the kept token records.
    pub token_cache_bytes: u64,
    /// REST request bodies held at once, in bytes, at most; more are shed with 503.
    pub rest_body_budget_bytes: usize,
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
            id: "edge-1".into(),
            listen: ([127, 0, 0, 1], 7501).into(),
            http_listen: ([127, 0, 0, 1], 7601).into(),
            account_id: DEFAULT_ACCOUNT_ID.into(),
            account_name: "kv".into(),
            upstream: vec!["127.0.0.1:7301".into()],
            mode: Mode::Push,
            cache_bytes: 128 << 20,
            max_stale_secs: 300,
            refresh_ahead: 0.75,
            connect_timeout_ms: 1000,
            request_timeout_ms: 10_000,
            fresh_within_ms: 1000,
            max_copy_secs: 86_400,
            max_in_flight: 2048,
            token_cache_ms: 5_000,
            token_cache_bytes: 16 << 20,
            rest_body_budget_bytes: 512 << 20,
            limits: Limits::default(),
        }
    }
}

/// Command-line flags; each one overrides the config file.
#[derive(Debug, Parser)]
#[command(name = "edge-node", about = "A KV edge node: the client API and a cacheTtl cache")]
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
    #[arg(long, env = "KV_EDGE_ID")]
    pub id: Option<String>,
    #[arg(long, env = "KV_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "KV_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Upstream endpoints as `host:port,host:port,...` (the regional tier first).
    #[arg(long, env = "KV_UPSTREAM")]
    pub upstream: Option<String>,
    #[arg(long, env = "KV_MODE", value_enum)]
    pub mode: Option<Mode>,
}

impl Config {
    /// Reads the config file (if any) and applies the flags on top.
    pub fn load(args: Args) -> anyhow::Result<Config> {
        let mut c: Config = kv_common::config::load_toml(args.config.as_deref())?;
        if let Some(v) = args.id {
            c.id = v;
        }
        if let Some(v) = args.listen {
            c.listen = v;
        }
        if let Some(v) = args.http_listen {
            c.http_listen = v;
        }
        if let Some(v) = args.upstream {
            c.upstream = kv_common::config::split_list(&v);
        }
        if let Some(v) = args.mode {
            c.mode = v;
        }
        anyhow::ensure!(!c.upstream.is_empty(), "no upstream configured (--upstream)");
        anyhow::ensure!(!c.id.is_empty(), "the edge id must not be empty");
        anyhow::ensure!((0.0..=1.0).contains(&c.refresh_ahead), "refresh_ahead must be within 0..=1");
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
    fn mode_and_upstreams_from_flags_or_file() {
        let args = Args::try_parse_from(["edge-node", "--mode", "ttl", "--upstream", "127.0.0.1:1"]).unwrap();
        let c = Config::load(args).unwrap();
        assert_eq!((c.mode, c.upstream.len()), (Mode::Ttl, 1));
        let c: Config =
            toml::from_str("mode = \"push\"\nmax_stale_secs = 5\n[limits]\nmin_cache_ttl_secs = 1\n").unwrap();
        assert_eq!((c.mode, c.max_stale_secs, c.limits.min_cache_ttl_secs), (Mode::Push, 5, 1));
        assert!(toml::from_str::<Config>("mode = \"sometimes\"").is_err());
    }
}
