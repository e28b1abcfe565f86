//! A Redis server from the distribution's package, on a free port. Writes are made durable
//! before they are answered (`appendfsync always`), as the cluster's are; it is one node
//! with no replication, and speaks its own protocol, not gRPC.

use super::{installed, spawn};
use std::path::Path;
use std::time::Duration;
use tokio::process::Child;

pub struct Redis {
    pub client: redis::Client,
    _child: Child,
}

impl Redis {
    pub async fn start(dir: &Path) -> anyhow::Result<Redis> {
        let bin = installed("redis-server", "redis-server")?;
        let port = kv_deploy::ports::free_port()?;
        let data = dir.join("redis");
        std::fs::create_dir_all(&data)?;
        let args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &data.to_string_lossy(),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let child = spawn(&bin, &args, &dir.join("redis.log"))?;
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
        kv_tests::eventually(Duration::from_secs(10), "the redis server", || async {
            let mut c = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING").query_async::<String>(&mut c).await.ok()
        })
        .await?;
        Ok(Redis { client, _child: child })
    }

    /// A connection of its own.
    pub async fn connection(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        Ok(self.client.get_multiplexed_async_connection().await?)
    }
}
