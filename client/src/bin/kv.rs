//! `kv`: the command line for a KV cluster, after `wrangler kv`.
//!
//! The endpoint (any edge node) comes from `--endpoint` or `KV_ENDPOINT`.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use kv_client::{api, Client};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "kv", about = "Use a KV cluster from the command line")]
struct Cli {
    /// An edge node's gRPC address.
    #[arg(long, env = "KV_ENDPOINT", default_value = "127.0.0.1:7501", global = true)]
    endpoint: String,
    /// `json` prints machine-readable output.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, rename and delete namespaces.
    #[command(subcommand)]
    Namespace(NamespaceCmd),
    /// Put, get, list and delete keys.
    #[command(subcommand)]
    Key(KeyCmd),
}

#[derive(Debug, Subcommand)]
enum NamespaceCmd {
    Create { title: String },
    List,
    Rename { namespace_id: String, title: String },
    Delete { namespace_id: String },
}

#[derive(Debug, Subcommand)]
enum KeyCmd {
    /// Writes a value given inline or read from `--path`.
    Put {
        key: String,
        value: Option<String>,
        #[arg(long, short = 'n', env = "KV_NAMESPACE_ID")]
        namespace_id: String,
        #[arg(long, conflicts_with = "value")]
        path: Option<std::path::PathBuf>,
        /// Seconds until the key expires (at least 60).
        #[arg(long)]
        ttl: Option<i64>,
        /// Absolute Unix seconds when the key expires.
        #[arg(long)]
        expiration: Option<i64>,
        /// JSON metadata stored with the key.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Prints a value (raw bytes unless `--output json`).
    Get {
        key: String,
        #[arg(long, short = 'n', env = "KV_NAMESPACE_ID")]
        namespace_id: String,
        /// Seconds the edge may cache the answer (at least 30).
        #[arg(long)]
        cache_ttl: Option<i64>,
    },
    /// Lists keys, following the cursor to the end unless `--limit` is given.
    List {
        #[arg(long, short = 'n', env = "KV_NAMESPACE_ID")]
        namespace_id: String,
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long)]
        limit: Option<i64>,
    },
    Delete {
        key: String,
        #[arg(long, short = 'n', env = "KV_NAMESPACE_ID")]
        namespace_id: String,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = Client::connect(&cli.endpoint).await.with_context(|| format!("connecting to {}", cli.endpoint))?;
    let json_out = cli.output == Output::Json;
    match cli.command {
        Command::Namespace(cmd) => namespace(&client, cmd, json_out).await,
        Command::Key(cmd) => key(&client, cmd, json_out).await,
    }
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

async fn namespace(client: &Client, cmd: NamespaceCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        NamespaceCmd::Create { title } => {
            let ns = client.create_namespace(&title).await.map_err(status)?;
            if json_out {
                println!("{}", json!({"id": ns.id, "title": ns.title}));
            } else {
                println!("created namespace {:?} with id {}", ns.title, ns.id);
            }
        }
        NamespaceCmd::List => {
            let all = client.list_namespaces().await.map_err(status)?;
            let rows: Vec<_> = all.iter().map(|n| json!({"id": n.id, "title": n.title})).collect();
            if json_out {
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for n in all {
                    println!("{}  {}", n.id, n.title);
                }
            }
        }
        NamespaceCmd::Rename { namespace_id, title } => {
            let req = api::RenameNamespaceRequest { namespace_id, title };
            let ns = client.raw().rename_namespace(req).await.map_err(status)?.into_inner();
            println!(
                "{}",
                if json_out {
                    json!({"id": ns.id, "title": ns.title}).to_string()
                } else {
                    format!("renamed to {:?}", ns.title)
                }
            );
        }
        NamespaceCmd::Delete { namespace_id } => {
            client
                .raw()
                .delete_namespace(api::NamespaceRef { namespace_id: namespace_id.clone() })
                .await
                .map_err(status)?;
            println!(
                "{}",
                if json_out { json!({"deleted": namespace_id}).to_string() } else { format!("deleted {namespace_id}") }
            );
        }
    }
    Ok(())
}

async fn key(client: &Client, cmd: KeyCmd, json_out: bool) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::Put { key, value, namespace_id, path, ttl, expiration, metadata } => {
            let value = match (value, path) {
                (Some(v), None) => v.into_bytes(),
                (None, Some(p)) => std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
                _ => anyhow::bail!("give the value inline or with --path"),
            };
            let req = api::PutRequest {
                namespace_id,
                key: key.clone(),
                value: value.into(),
                expiration,
                expiration_ttl: ttl,
                metadata_json: metadata,
            };
            let r = client.put(req).await.map_err(status)?;
            if json_out {
                println!("{}", json!({"key": key, "version": r.version, "expiration": r.expiration}));
            } else {
                println!("wrote {key:?} (version {})", r.version);
            }
        }
        KeyCmd::Get { key, namespace_id, cache_ttl } => {
            let r = client.get(&namespace_id, &key, cache_ttl).await.map_err(status)?;
            if json_out {
                let status = api::CacheStatus::try_from(r.cache_status)
                    .map_or("UNKNOWN", |s| s.as_str_name().trim_start_matches("CACHE_STATUS_"));
                println!(
                    "{}",
                    json!({"key": key, "found": r.found, "value": String::from_utf8_lossy(&r.value),
                        "metadata": r.metadata_json.as_deref().and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok()),
                        "expiration": r.expiration, "cache_status": status, "version": r.version})
                );
            } else if r.found {
                use std::io::Write;
                std::io::stdout().write_all(&r.value)?;
                println!();
            } else {
                anyhow::bail!("key {key:?} not found");
            }
        }
        KeyCmd::List { namespace_id, prefix, limit } => {
            let mut cursor = String::new();
            let mut keys = Vec::new();
            loop {
                let req =
                    api::ListRequest { namespace_id: namespace_id.clone(), prefix: prefix.clone(), limit, cursor };
                let page = client.list(req).await.map_err(status)?;
                keys.extend(page.keys);
                if page.list_complete || limit.is_some() {
                    break;
                }
                cursor = page.cursor;
            }
            if json_out {
                let rows: Vec<_> = keys
                    .iter()
                    .map(|k| json!({"name": k.name, "expiration": k.expiration,
                        "metadata": k.metadata_json.as_deref().and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())}))
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for k in keys {
                    println!("{}", k.name);
                }
            }
        }
        KeyCmd::Delete { key, namespace_id } => {
            let r = client.delete(&namespace_id, &key).await.map_err(status)?;
            println!(
                "{}",
                if json_out {
                    json!({"key": key, "version": r.version}).to_string()
                } else {
                    format!("deleted {key:?}")
                }
            );
        }
    }
    Ok(())
}
