//! Node configuration: a TOML file, overridden by command-line flags and `KV_*` variables.

use anyhow::Context;
use clap::Parser;
use kv_common::Limits;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything a central node needs to run.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// A file holding the cluster's admin token (`KV_ADMIN_TOKEN` wins over it).
    pub admin_token_file: Option<PathBuf>,
    /// The cluster's admin token, from `KV_ADMIN_TOKEN` or `admin_token_file`: this node's
    /// credential on every call it makes, and accepted as an admin token.
    #[serde(skip)]
    pub admin_token: kv_common::auth::AdminToken,
    /// A file holding the keys values and metadata are sealed with at rest (see
    /// `storage::seal`; `KV_ENCRYPTION_KEY` wins over it). Keep it outside `data_dir`.
    pub encryption_key_file: Option<PathBuf>,
    /// The keys, from `KV_ENCRYPTION_KEY` or `encryption_key_file`.
    #[serde(skip)]
    pub sealer: Option<crate::storage::seal::Sealer>,
    pub node_id: u64,
    /// gRPC: store API, Raft transport, admin, health, reflection.
    pub listen: SocketAddr,
    /// HTTP: `/metrics` and `/health`.
    pub http_listen: SocketAddr,
    pub data_dir: PathBuf,
    /// When set, the node with the smallest id initializes a fresh cluster of these members.
    pub initial_members: Vec<MemberConfig>,
    pub raft: RaftTiming,
    pub feed: FeedSettings,
    pub limits: Limits,
    /// How often the leader proposes a sweep of expired entries.
    pub sweep_interval_ms: u64,
    /// How many expired entries one sweep removes at most.
    pub sweep_budget: u32,
    pub freshness: FreshnessSettings,
    /// The budget of a call whose caller set no deadline (`grpc-timeout`).
    pub request_timeout_ms: u64,
    /// Writes waiting for or in Raft, at most, in bytes; beyond it writes are shed.
    pub write_queue_bytes: usize,
    /// How long a request id's first outcome is kept to answer its retries.
    pub request_retention_ms: u64,
    /// Calls served at once, at most; more are shed with UNAVAILABLE.
    pub max_in_flight: usize,
    /// Peers this node reaches somewhere other than their membership address: node id (as
    /// text, TOML keys are strings) to `host:port`.
    pub peer_routes: std::collections::BTreeMap<String, String>,
    /// TLS on every listener and link (mutual between nodes): the CA, this node's
    /// certificate (naming its role) and key. None of them: plaintext.
    pub tls: kv_common::tls::TlsFiles,
    /// Trace export (OTLP); off unless an endpoint is set.
    pub telemetry: kv_common::telemetry::TelemetryConfig,
}

/// How this replica proves it is current, and what it demands of that proof.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FreshnessSettings {
    /// How often the node renews its proof (a read index from the leader).
    pub probe_interval_ms: u64,
    /// How long one renewal may take.
    pub probe_timeout_ms: u64,
    /// The oldest proof a read accepts when it names no `max_age_ms`.
    pub default_max_age_ms: u64,
    /// How long a read waits for a young enough proof (or its `min_version`) before it is refused.
    pub wait_ms: u64,
    /// Health reports the node unhealthy once its proof is older than this.
    pub health_max_age_ms: u64,
}

impl Default for FreshnessSettings {
    fn default() -> Self {
        FreshnessSettings {
            probe_interval_ms: 100,
            probe_timeout_ms: 1_000,
            default_max_age_ms: 1_000,
            wait_ms: 500,
            health_max_age_ms: 2_000,
        }
    }
}

impl FreshnessSettings {
    pub fn health_max_age(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.health_max_age_ms)
    }
}

/// One initial cluster member.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct MemberConfig {
    pub id: u64,
    pub addr: String,
}

/// Raft timers and log compaction.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTiming {
    /// Also the deadline openraft 0.9 gives every heartbeat (appends with entries run as
    /// transfers with deadlines of their own, see `raft::network`), so it must exceed the
    /// round trip between voters: raise it (and the election timeouts) for distant voters.
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, so lagging followers catch up by log.
    pub keep_logs: u64,
}

/// How the change feed is kept.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedSettings {
    pub retention: u64,
    /// History is trimmed at log indexes divisible by this.
    pub trim_every: u64,
    pub inline_value_limit: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_token_file: None,
            admin_token: Default::default(),
            tls: Default::default(),
            telemetry: Default::default(),
            encryption_key_file: None,
            sealer: None,
            node_id: 1,
            listen: ([127, 0, 0, 1], 7101).into(),
            http_listen: ([127, 0, 0, 1], 7201).into(),
            data_dir: PathBuf::from("data/central-1"),
            initial_members: Vec::new(),
            raft: RaftTiming::default(),
            feed: FeedSettings::default(),
            limits: Limits::default(),
            sweep_interval_ms: 5_000,
            sweep_budget: 1_000,
            freshness: FreshnessSettings::default(),
            request_timeout_ms: 10_000,
            write_queue_bytes: 512 << 20,
            request_retention_ms: 10 * 60 * 1000,
            max_in_flight: 2048,
            peer_routes: Default::default(),
        }
    }
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_ms: 100,
            election_min_ms: 350,
            election_max_ms: 700,
            snapshot_every: 20_000,
            keep_logs: 1_000,
        }
    }
}

impl Default for FeedSettings {
    fn default() -> Self {
        FeedSettings { retention: 100_000, trim_every: 1024, inline_value_limit: 64 * 1024 }
    }
}

/// Command-line flags; each one overrides the config file.
#[derive(Debug, Parser)]
#[command(name = "central-store", about = "A central KV store node (Raft over RocksDB)")]
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
    /// Encryption keys at rest, `id:hex` separated by commas, the last one sealing (prefer the
    /// environment variable: flags show in `ps`).
    #[arg(long = "encryption-key", env = "KV_ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: Option<String>,
    #[arg(long, env = "KV_NODE_ID")]
    pub node_id: Option<u64>,
    #[arg(long, env = "KV_LISTEN")]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "KV_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    #[arg(long, env = "KV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Initial members as `id=host:port,id=host:port,...`.
    #[arg(long, env = "KV_INITIAL_MEMBERS")]
    pub initial_members: Option<String>,
}

fn parse_members(text: &str) -> anyhow::Result<Vec<MemberConfig>> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|part| {
            let (id, addr) = part
                .split_once('=')
                .with_context(|| format!("expected id=host:port in --initial-members, got {part:?}"))?;
            let id = id.trim().parse().with_context(|| format!("bad node id in --initial-members entry {part:?}"))?;
            Ok(MemberConfig { id, addr: addr.trim().to_string() })
        })
        .collect()
}

impl Config {
    /// The budget of a call whose caller set no deadline.
    pub fn request_budget(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.request_timeout_ms)
    }

    /// `peer_routes` with the node ids parsed.
    pub fn peer_routes(&self) -> anyhow::Result<std::collections::HashMap<u64, String>> {
        self.peer_routes
            .iter()
            .map(|(id, addr)| {
                let id = id.parse().with_context(|| format!("peer_routes: {id:?} is not a node id"))?;
                Ok((id, addr.clone()))
            })
            .collect()
    }

    /// Reads the config file (if any) and applies the flags on top.
    pub fn load(args: Args) -> anyhow::Result<Config> {
        let mut c: Config = kv_common::config::load_toml(args.config.as_deref())?;
        if let Some(v) = args.node_id {
            c.node_id = v;
        }
        if let Some(v) = args.listen {
            c.listen = v;
        }
        if let Some(v) = args.http_listen {
            c.http_listen = v;
        }
        if let Some(v) = args.data_dir {
            c.data_dir = v;
        }
        if let Some(v) = args.initial_members {
            c.initial_members = parse_members(&v)?;
        }
        c.admin_token = kv_common::auth::AdminToken::load(args.admin_token, c.admin_token_file.as_deref())?;
        args.tls.apply(&mut c.tls);
        c.tls.enabled()?;
        c.telemetry.validate()?;
        let keys = match (args.encryption_key, &c.encryption_key_file) {
            (Some(text), _) => Some(text),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading encryption keys from {}", path.display()))?,
            ),
            (None, None) => None,
        };
        c.sealer = keys.map(|k| crate::storage::seal::Sealer::parse(&k)).transpose().context("encryption keys")?;
        Ok(c)
    }

    /// The encryption keys as `encryption_key_file` holds them now (`kv admin rotate-key`).
    pub fn read_keys(&self) -> anyhow::Result<crate::storage::seal::Sealer> {
        let Some(path) = &self.encryption_key_file else {
            anyhow::bail!("this node's keys come from KV_ENCRYPTION_KEY: restart it with the new keys instead")
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading encryption keys from {}", path.display()))?;
        crate::storage::seal::Sealer::parse(&text).with_context(|| format!("encryption keys in {}", path.display()))
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
    fn parses_members_and_toml() {
        let m = parse_members("1=127.0.0.1:1,2=127.0.0.1:2").unwrap();
        assert_eq!(m[1], MemberConfig { id: 2, addr: "127.0.0.1:2".into() });
        assert!(parse_members("x").is_err());
        let c: Config = toml::from_str("node_id = 3\n[limits]\nkey_write_interval_ms = 0\n").unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.limits.key_write_interval_ms, 0);
        assert_eq!(c.limits.max_key_bytes, 512);
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
    }

    #[test]
    fn flags_override_defaults() {
        let args = Args::try_parse_from([
            "central-store",
            "--node-id",
            "2",
            "--listen",
            "127.0.0.1:9002",
            "--initial-members",
            "1=127.0.0.1:9001,2=127.0.0.1:9002",
        ])
        .unwrap();
        let c = Config::load(args).unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.listen.to_string(), "127.0.0.1:9002");
        assert_eq!(c.initial_members.len(), 2);
        let bad = Args::try_parse_from(["central-store", "--initial-members", "oops"]).unwrap();
        assert!(Config::load(bad).is_err());
    }
}
