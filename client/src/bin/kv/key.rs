//! `kv key put|get|list|delete`, with wrangler's flags.

use crate::endpoint::Endpoint;
use crate::{say, Done, Fail, Output};
use anyhow::Context;
use clap::Subcommand;
use kv_client::api;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum Cmd {
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
        /// Write only if the key's current version is this one (compare-and-set); otherwise
        /// nothing changes and the command fails, naming the current version.
        #[arg(long)]
        if_version: Option<u64>,
        /// Write only if the key is absent.
        #[arg(long, conflicts_with = "if_version")]
        if_absent: bool,
    },
    /// Prints a value (raw bytes unless `--output json`); a missing key exits with 1 (with
    /// `--output json`, after printing `"found": false`).
    Get {
        key: String,
        #[arg(long, short = 'n', env = "KV_NAMESPACE_ID")]
        namespace_id: String,
        /// Seconds the edge may cache the answer (at least 30).
        #[arg(long)]
        cache_ttl: Option<i64>,
        /// A linearizable read: skips every cache and sees every write acknowledged before it.
        #[arg(long)]
        strong: bool,
        /// A session read: at least as new as this version (one a write printed), at any edge.
        #[arg(long)]
        min_version: Option<u64>,
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
    /// Prints the changes of the keys named, of the keys under `--prefix`, or of every key,
    /// as they are committed (one line each; JSON lines with `--output json`), until
    /// interrupted. Exits 1 when told to resync (re-read, then watch from the version given).
    Watch {
        keys: Vec<String>,
        #[arg(long, short = 'n', env = "KV_NAMESPACE_ID")]
        namespace_id: String,
        #[arg(long, default_value = "")]
        prefix: String,
        /// Resume after this version (one a read, write or earlier watch printed).
        #[arg(long)]
        from_version: Option<u64>,
    },
    Delete {
        key: String,
        #[arg(long, short = 'n', env = "KV_NAMESPACE_ID")]
        namespace_id: String,
        /// Delete only if the key's current version is this one (compare-and-set).
        #[arg(long)]
        if_version: Option<u64>,
    },
}

/// Stored metadata as JSON, for `--output json`.
pub fn metadata_json(text: Option<&str>) -> serde_json::Value {
    text.and_then(|m| serde_json::from_str::<Box<serde_json::value::RawValue>>(m).ok())
        .and_then(|raw| serde_json::to_value(raw).ok())
        .unwrap_or(serde_json::Value::Null)
}

pub async fn run(client: &Endpoint, cmd: Cmd, output: Output) -> Done {
    match cmd {
        Cmd::Put { key, value, namespace_id, path, ttl, expiration, metadata, if_version, if_absent } => {
            let value = match (value, path) {
                (Some(v), None) => v.into_bytes(),
                (None, Some(p)) => std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
                _ => return Err(Fail::Input(anyhow::anyhow!("give the value inline or with --path"))),
            };
            let req = api::PutRequest {
                namespace_id,
                key: key.clone(),
                value: value.into(),
                expiration,
                expiration_ttl: ttl,
                metadata_json: metadata,
                if_version,
                if_absent,
                ..Default::default()
            };
            let r = client.put(req).await?;
            let json = json!({"key": key, "version": r.version, "expiration": r.expiration});
            say(output, json, || format!("wrote {key:?} (version {})", r.version));
        }
        Cmd::Get { key, namespace_id, cache_ttl, strong, min_version } => {
            let consistency = if strong { api::Consistency::Strong } else { api::Consistency::Eventual };
            let req = api::GetRequest {
                namespace_id,
                key: key.clone(),
                cache_ttl,
                with_metadata: true,
                consistency: consistency as i32,
                min_version: min_version.unwrap_or(0),
            };
            let r = client.read(req).await?;
            if output == Output::Json {
                let status = api::CacheStatus::try_from(r.cache_status)
                    .map_or("UNKNOWN", |s| s.as_str_name().trim_start_matches("CACHE_STATUS_"));
                println!(
                    "{}",
                    json!({"key": key, "found": r.found, "value": String::from_utf8_lossy(&r.value),
                        "metadata": metadata_json(r.metadata_json.as_deref()),
                        "expiration": r.expiration, "cache_status": status, "version": r.version})
                );
            } else if r.found {
                use std::io::Write;
                let mut out = std::io::stdout();
                out.write_all(&r.value).and_then(|()| out.write_all(b"\n")).context("writing the value")?;
            }
            if !r.found {
                return Err(Fail::Refused(Box::new(tonic::Status::not_found(format!("key {key:?} not found")))));
            }
        }
        Cmd::List { namespace_id, prefix, limit } => {
            let mut cursor = String::new();
            let mut keys = Vec::new();
            loop {
                let req =
                    api::ListRequest { namespace_id: namespace_id.clone(), prefix: prefix.clone(), limit, cursor };
                let page = client.list(req).await?;
                keys.extend(page.keys);
                if page.list_complete || limit.is_some() {
                    break;
                }
                cursor = page.cursor;
            }
            let rows = keys
                .iter()
                .map(|k| json!({"name": k.name, "expiration": k.expiration, "metadata": metadata_json(k.metadata_json.as_deref())}))
                .collect();
            say(output, serde_json::Value::Array(rows), || {
                keys.iter().map(|k| k.name.as_str()).collect::<Vec<_>>().join("\n")
            });
        }
        Cmd::Watch { keys, namespace_id, prefix, from_version } => {
            let Endpoint::Grpc(c) = client else {
                return Err(Fail::Input(anyhow::anyhow!("watch needs a gRPC endpoint (REST has no watch)")));
            };
            let req = api::WatchRequest { namespace_id, keys, prefix, from_version };
            let mut events = c.watch(req).await?;
            // The stream repeats its position every second while idle, as a heartbeat; it is
            // worth a line only when it has moved.
            let mut shown = None;
            while let Some(e) = events.message().await? {
                match e.event {
                    Some(api::watch_event::Event::Change(c)) => {
                        let kind = c.kind();
                        let put = kind == api::WatchKind::Put;
                        let value = String::from_utf8_lossy(&c.value).into_owned();
                        let name = match kind {
                            api::WatchKind::Put => "put",
                            api::WatchKind::Expired => "expired",
                            _ => "delete",
                        };
                        let json = json!({"key": c.key, "kind": name, "version": c.version,
                            "value": put.then_some(&value), "value_omitted": c.value_omitted});
                        say(output, json, || match kind {
                            api::WatchKind::Put => format!("{} put {:?} at {}", c.key, value, c.version),
                            api::WatchKind::Expired => format!("{} expired at {}", c.key, c.version),
                            _ => format!("{} deleted at {}", c.key, c.version),
                        });
                    }
                    Some(api::watch_event::Event::Progress(v)) if shown < Some(v) => {
                        shown = Some(v);
                        say(output, json!({"progress": v}), || format!("(caught up to {v})"));
                    }
                    Some(api::watch_event::Event::Resync(v)) => {
                        let why = format!("resync: re-read, then watch again from version {v}");
                        return Err(Fail::Refused(Box::new(tonic::Status::out_of_range(why))));
                    }
                    Some(api::watch_event::Event::Progress(_)) | None => {}
                }
            }
        }
        Cmd::Delete { key, namespace_id, if_version } => {
            let r = client.delete(&namespace_id, &key, if_version).await?;
            say(output, json!({"key": key, "version": r.version}), || format!("deleted {key:?}"));
        }
    }
    Ok(())
}
