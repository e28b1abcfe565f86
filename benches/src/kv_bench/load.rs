//! The key space runs read, and loading it.

use crate::output::bar;
use crate::target::{client, Connected, Target};
use clap::Args;
use kv_benches::driver;
use kv_benches::ycsb::{Keys, Popularity, ValueSize};
use kv_client::api;

#[derive(Args)]
pub struct Keyspace {
    /// Keys in the key space (loaded ones; inserts add more).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Value size: bytes (1024, 4KiB) or a uniform range (100..64KiB), at most 25 MiB.
    #[arg(long, default_value = "1KiB")]
    pub value_size: ValueSize,
    /// Key names are this prefix and a 12-digit number.
    #[arg(long, default_value = "user")]
    pub key_prefix: String,
}

#[derive(Args)]
pub struct Load {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub keyspace: Keyspace,
    /// Bulk writes in flight at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
}

/// Writes keys `0..keys` through the first endpoint in bulk writes of at most 10,000 keys
/// and 4 MiB. The central leader commits at most 4 MiB of writes in one Raft entry; a
/// larger bulk write goes alone as one big entry, and a few of them in flight outlasted the
/// calls' deadlines on the local cluster. A bulk write whose deadline passed is sent again
/// (a put of the same value is harmless).
pub async fn load(at: &Connected, keyspace: &Keyspace, parallel: usize) -> anyhow::Result<()> {
    const BULK: u64 = 10_000;
    const BULK_BYTES: u64 = 4 << 20;
    const ATTEMPTS: usize = 3;
    let client = client(&at.endpoints[0].1, at.ca.as_deref(), at.token.as_deref()).await?;
    let keys = Keys::new(&keyspace.key_prefix, keyspace.keys, Popularity::Uniform, 1.0)?;
    let bar = bar(keyspace.keys, "{wide_bar} {pos}/{len} keys loaded ({per_sec}, {eta} left)");
    let per_bulk = BULK.min(BULK_BYTES / keyspace.value_size.max().max(1)).max(1);
    let starts: Vec<u64> = (0..keyspace.keys).step_by(per_bulk as usize).collect();
    let mut rng = rand::thread_rng();
    for chunk in starts.chunks(parallel.max(1)) {
        let mut calls = Vec::new();
        for &from in chunk {
            let to = (from + per_bulk).min(keyspace.keys);
            let items = (from..to)
                .map(|n| api::BulkPutItem {
                    key: keys.name(n),
                    value: driver::value(keyspace.value_size.draw(&mut rng), n as u8).into(),
                    ..Default::default()
                })
                .collect();
            let req = api::PutBulkRequest { namespace_id: at.namespace.clone(), items, ..Default::default() };
            let client = &client;
            calls.push(async move {
                let mut r = client.put_bulk(req.clone()).await;
                for _ in 1..ATTEMPTS {
                    match &r {
                        Err(s) if s.code() == tonic::Code::DeadlineExceeded => r = client.put_bulk(req.clone()).await,
                        _ => break,
                    }
                }
                (to - from, r)
            });
        }
        for (n, r) in futures::future::join_all(calls).await {
            let r = r?;
            anyhow::ensure!(r.unsuccessful_keys.is_empty(), "{} keys were not loaded", r.unsuccessful_keys.len());
            bar.inc(n);
        }
    }
    bar.finish_and_clear();
    Ok(())
}
