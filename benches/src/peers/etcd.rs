//! A 3-member etcd cluster from the distribution's package (`etcd-server`), on free
//! ports, with etcd's defaults (every write fsynced by a quorum before it is answered).

use super::{installed, spawn};
use anyhow::Context;
use std::path::Path;
use std::time::Duration;
use tokio::process::Child;
use tonic::transport::Channel;

/// The part of etcd's API the benchmark calls.
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

pub struct Etcd {
    /// Each member's client URL.
    pub urls: Vec<String>,
    _children: Vec<Child>,
}

impl Etcd {
    pub async fn start(dir: &Path, members: usize) -> anyhow::Result<Etcd> {
        let bin = installed("etcd", "etcd-server")?;
        let mut ports = Vec::new();
        for _ in 0..members {
            ports.push((kv_deploy::ports::free_port()?, kv_deploy::ports::free_port()?));
        }
        let peer_url = |p: u16| format!("http://127.0.0.1:{p}");
        let initial: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, p))| format!("m{i}={}", peer_url(*p))).collect();
        let mut children = Vec::new();
        let mut urls = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let url = peer_url(*client);
            let args: Vec<String> = [
                ("--name", format!("m{i}")),
                ("--data-dir", dir.join(format!("etcd-m{i}")).to_string_lossy().into_owned()),
                ("--listen-client-urls", url.clone()),
                ("--advertise-client-urls", url.clone()),
                ("--listen-peer-urls", peer_url(*peer)),
                ("--initial-advertise-peer-urls", peer_url(*peer)),
                ("--initial-cluster", initial.join(",")),
                ("--initial-cluster-state", "new".into()),
                ("--initial-cluster-token", "kv-bench-peers".into()),
            ]
            .into_iter()
            .flat_map(|(k, v)| [k.to_owned(), v])
            .collect();
            children.push(spawn(&bin, &args, &dir.join(format!("etcd-m{i}.log")))?);
            urls.push(url);
        }
        let etcd = Etcd { urls, _children: children };
        kv_tests::eventually(Duration::from_secs(30), "etcd to elect a leader and take a write", || async {
            let mut kv = pb::kv_client::KvClient::new(etcd.channel(0).await.ok()?);
            kv.put(pb::PutRequest { key: "ready".into(), value: "1".into(), lease: 0 }).await.ok()
        })
        .await?;
        Ok(etcd)
    }

    /// A new connection to member `i`.
    pub async fn channel(&self, i: usize) -> anyhow::Result<Channel> {
        let url = &self.urls[i % self.urls.len()];
        let ep = tonic::transport::Endpoint::from_shared(url.clone())?.tcp_nodelay(true);
        ep.connect().await.with_context(|| format!("connecting to etcd at {url}"))
    }

    /// The index of the member that leads.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        for i in 0..self.urls.len() {
            let mut m = pb::maintenance_client::MaintenanceClient::new(self.channel(i).await?);
            let s = m.status(pb::StatusRequest {}).await?.into_inner();
            if s.header.is_some_and(|h| h.member_id == s.leader) {
                return Ok(i);
            }
        }
        anyhow::bail!("no etcd member says it leads")
    }
}
