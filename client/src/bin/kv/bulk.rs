//! `kv bulk put|get|delete FILE`, reading wrangler's JSON files: for `put`, a list of
//! `{key, value, expiration?, expiration_ttl?, metadata?, base64?}`; for `get` and `delete`,
//! a list of keys (strings, or objects with `key` or `name`). Work is split into requests
//! the contract allows (10,000 items and 100 MB per write, 100 keys per read), with a
//! progress bar when stderr is a terminal.

use crate::endpoint::Endpoint;
use crate::key::metadata_json;
use crate::{say, Done, Fail, Output};
use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use kv_client::api;
use kv_common::Limits;
use serde::Deserialize;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Writes every item of FILE.
    Put {
        file: PathBuf,
        #[arg(long, short = 'n', env = "KV_NAMESPACE_ID")]
        namespace_id: String,
    },
    /// Reads every key of FILE; prints `{key: value or null}` (values with their metadata
    /// with `--with-metadata`).
    Get {
        file: PathBuf,
        #[arg(long, short = 'n', env = "KV_NAMESPACE_ID")]
        namespace_id: String,
        #[arg(long)]
        with_metadata: bool,
    },
    /// Deletes every key of FILE.
    Delete {
        file: PathBuf,
        #[arg(long, short = 'n', env = "KV_NAMESPACE_ID")]
        namespace_id: String,
        /// Accepted for wrangler's command lines; `kv` never asks.
        #[arg(long)]
        force: bool,
    },
}

/// A key in a keys file.
#[derive(Deserialize)]
#[serde(untagged)]
enum KeyEntry {
    Name(String),
    Key { key: String },
    Named { name: String },
}

fn read_json<T: serde::de::DeserializeOwned>(file: &Path) -> anyhow::Result<T> {
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is not a list in wrangler's format", file.display()))
}

fn keys(file: &Path) -> anyhow::Result<Vec<String>> {
    let entries: Vec<KeyEntry> = read_json(file)?;
    Ok(entries
        .into_iter()
        .map(|e| match e {
            KeyEntry::Name(k) | KeyEntry::Key { key: k } | KeyEntry::Named { name: k } => k,
        })
        .collect())
}

fn progress(total: usize, output: Output) -> ProgressBar {
    if output == Output::Json {
        return ProgressBar::hidden();
    }
    // indicatif draws only when stderr is a terminal.
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} keys {elapsed}") {
        bar.set_style(style);
    }
    bar
}

/// Splits items into runs that each fit one write: at most `max_items`, and at most
/// `max_bytes` of keys, values and metadata (a single larger item goes alone, and is refused).
fn batches<T>(items: Vec<T>, size: impl Fn(&T) -> usize, max_items: usize, max_bytes: usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut bytes = 0;
    for item in items {
        let n = size(&item);
        match out.last_mut() {
            Some(run) if run.len() < max_items && bytes + n <= max_bytes => {
                run.push(item);
                bytes += n;
            }
            _ => {
                out.push(vec![item]);
                bytes = n;
            }
        }
    }
    out
}

/// What a bulk write reports, summed over its requests.
#[derive(Default)]
struct Tally {
    successful: u64,
    unsuccessful: Vec<String>,
}

impl Tally {
    fn add(&mut self, r: api::BulkWriteResponse) {
        self.successful += u64::from(r.successful_key_count);
        self.unsuccessful.extend(r.unsuccessful_keys);
    }

    fn finish(self, output: Output, verb: &str) -> Done {
        let json = json!({"successful_key_count": self.successful, "unsuccessful_keys": self.unsuccessful});
        say(output, json, || {
            let mut text = format!("{verb} {} keys", self.successful);
            if !self.unsuccessful.is_empty() {
                text += &format!("; not {verb}: {}", self.unsuccessful.join(", "));
            }
            text
        });
        match self.unsuccessful.len() {
            0 => Ok(()),
            n => Err(Fail::Partial(n)),
        }
    }
}

pub async fn run(client: &Endpoint, cmd: Cmd, output: Output) -> Done {
    let limits = Limits::default();
    match cmd {
        Cmd::Put { file, namespace_id } => {
            let items: Vec<kv_common::bulk::BulkItem> = read_json(&file)?;
            let bar = progress(items.len(), output);
            let (puts, refused) = kv_common::bulk::put_items(items);
            let mut tally = Tally { unsuccessful: refused, ..Tally::default() };
            let size =
                |i: &api::BulkPutItem| i.key.len() + i.value.len() + i.metadata_json.as_ref().map_or(0, String::len);
            for run in batches(puts, size, limits.max_bulk_write_items, limits.max_bulk_write_bytes) {
                let n = run.len() as u64;
                let req = api::PutBulkRequest { namespace_id: namespace_id.clone(), items: run, ..Default::default() };
                tally.add(client.put_bulk(req).await?);
                bar.inc(n);
            }
            bar.finish_and_clear();
            tally.finish(output, "wrote")
        }
        Cmd::Delete { file, namespace_id, force: _ } => {
            let keys = keys(&file)?;
            let bar = progress(keys.len(), output);
            let mut tally = Tally::default();
            for run in batches(keys, String::len, limits.max_bulk_write_items, limits.max_bulk_write_bytes) {
                let n = run.len() as u64;
                tally.add(
                    client
                        .delete_bulk(api::DeleteBulkRequest {
                            namespace_id: namespace_id.clone(),
                            keys: run,
                            ..Default::default()
                        })
                        .await?,
                );
                bar.inc(n);
            }
            bar.finish_and_clear();
            tally.finish(output, "deleted")
        }
        Cmd::Get { file, namespace_id, with_metadata } => {
            let keys = keys(&file)?;
            let bar = progress(keys.len(), output);
            let mut values = serde_json::Map::new();
            for run in keys.chunks(limits.max_bulk_get_keys) {
                let req = api::GetBulkRequest {
                    namespace_id: namespace_id.clone(),
                    keys: run.to_vec(),
                    with_metadata,
                    ..Default::default()
                };
                for v in client.get_bulk(req).await?.values {
                    let value = if v.found { json!(v.value) } else { serde_json::Value::Null };
                    let shown = if with_metadata && v.found {
                        json!({"value": value, "metadata": metadata_json(v.metadata_json.as_deref())})
                    } else {
                        value
                    };
                    values.insert(v.key, shown);
                }
                bar.inc(run.len() as u64);
            }
            bar.finish_and_clear();
            // The values are the output, in either mode.
            println!("{}", serde_json::Value::Object(values));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_both_bounds() {
        let sizes = vec![4, 4, 4, 9, 1, 1];
        let runs = batches(sizes, |n| *n, 10, 8);
        assert_eq!(runs, vec![vec![4, 4], vec![4], vec![9], vec![1, 1]]);
        let many: Vec<usize> = vec![1; 25_000];
        let runs = batches(many, |n| *n, 10_000, usize::MAX);
        assert_eq!(runs.iter().map(Vec::len).collect::<Vec<_>>(), [10_000, 10_000, 5_000]);
    }
}
