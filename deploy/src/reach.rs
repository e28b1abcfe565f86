//! How tools reach a cluster the launcher started: `cluster.toml` under its data directory
//! names every edge (its addresses and refresh mode), the CA to trust and the admin token's
//! file, so a benchmark or script needs only the directory, wherever the nodes listen
//! (loopback, or addresses on namespace machines).

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// What `cluster.toml` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Reach {
    /// The CA every node's certificate chains to; absent when the cluster runs plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The file holding the cluster's admin token.
    pub token_file: PathBuf,
    pub edges: Vec<ReachEdge>,
}

/// One edge of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReachEdge {
    pub name: String,
    pub grpc: SocketAddr,
    /// The REST API and metrics.
    pub http: SocketAddr,
    /// `push` or `ttl`.
    pub mode: String,
}

/// Where a cluster under `root` says how to reach it.
pub fn reach_file(root: &Path) -> PathBuf {
    root.join("cluster.toml")
}

impl Reach {
    pub fn write(&self, root: &Path) -> anyhow::Result<()> {
        let text = toml::to_string(self).context("writing cluster.toml")?;
        std::fs::write(reach_file(root), text).with_context(|| format!("writing {}", reach_file(root).display()))
    }

    /// The cluster started under `root`, as its launcher described it.
    pub fn read(root: &Path) -> anyhow::Result<Reach> {
        let path = reach_file(root);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (is a cluster running there?)", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The admin token, read from its file.
    pub fn token(&self) -> anyhow::Result<String> {
        let t = std::fs::read_to_string(&self.token_file)
            .with_context(|| format!("reading {}", self.token_file.display()))?;
        Ok(t.trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_description_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let reach = Reach {
            ca: Some(dir.path().join("tls/ca.pem")),
            token_file: dir.path().join("admin-token"),
            edges: vec![ReachEdge {
                name: "e1".into(),
                grpc: "10.231.9.2:7501".parse().unwrap(),
                http: "10.231.9.2:7601".parse().unwrap(),
                mode: "ttl".into(),
            }],
        };
        reach.write(dir.path()).unwrap();
        assert_eq!(Reach::read(dir.path()).unwrap(), reach);
        std::fs::write(reach_file(dir.path()), "edges = 3\n").unwrap();
        assert!(Reach::read(dir.path()).is_err());
        assert!(Reach::read(&dir.path().join("none")).unwrap_err().to_string().contains("is a cluster running"));
    }
}
