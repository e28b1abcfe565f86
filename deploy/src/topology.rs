//! The topology file: which nodes run where, and the one-way delay of each inter-tier link.

use serde::Deserialize;

/// The embedded default: 3 central voters, 3 regions each with 1 regional tier and 2 edges.
pub const DEFAULT: &str = include_str!("../topologies/default.toml");

/// A whole cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Ports are laid out from here (central base+1.., regional base+201.., edges base+401..,
    /// each HTTP port 100 above its gRPC port); 0 picks free ports (tests).
    #[serde(default)]
    pub base_port: u16,
    pub central: CentralSpec,
    pub regions: Vec<RegionSpec>,
    /// TOML appended to every regional tier's config (e.g. a `[limits]` section).
    #[serde(default)]
    pub regional_config: String,
    /// TOML appended to every edge's config.
    #[serde(default)]
    pub edge_config: String,
    /// Mutual TLS on every link, with a CA and node certificates the launcher makes (kept
    /// under the data directory's `tls/`, the CA reused across runs).
    #[serde(default)]
    pub tls: bool,
    /// Each region, and the central group, on its own machine: a Linux network namespace
    /// with its own address on a bridge (needs root; see `netns.rs`).
    #[serde(default)]
    pub netns: bool,
    /// Every node's log filter (`RUST_LOG` syntax); when absent, `$KV_TEST_LOG` or `info`.
    #[serde(default)]
    pub log: Option<String>,
}

/// The central Raft group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CentralSpec {
    pub voters: usize,
    /// One-way delay on the link between every two voters (each pair has its own link, so a
    /// voter can be cut off from the others).
    #[serde(default)]
    pub peer_delay_ms: u64,
    /// Voters reach each other directly instead, without links: no delay and no cutting
    /// them apart, as a peer system's members on one machine are (for benchmarks).
    #[serde(default)]
    pub direct: bool,
    /// Whether the voters form a cluster by themselves at start (`false`: they wait to be
    /// initialized through the admin API).
    #[serde(default = "yes")]
    pub initialize: bool,
    /// TOML appended to every central node's config.
    #[serde(default)]
    pub config: String,
}

fn yes() -> bool {
    true
}

/// One region: a regional tier and its edges.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    pub name: String,
    /// One-way delay between the regional tier and every central node.
    #[serde(default)]
    pub central_delay_ms: u64,
    /// More regional tiers of the region, which its edges fail over to.
    #[serde(default)]
    pub standbys: usize,
    pub edges: Vec<EdgeSpec>,
}

/// One edge node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    pub name: String,
    /// One-way delay between the edge and its regional tier.
    #[serde(default)]
    pub delay_ms: u64,
    /// `push` (default) or `ttl`.
    #[serde(default)]
    pub mode: Option<String>,
}

impl Topology {
    pub fn parse(text: &str) -> anyhow::Result<Topology> {
        let t: Topology = toml::from_str(text)?;
        anyhow::ensure!(t.central.voters >= 1, "the central group needs at least one voter");
        anyhow::ensure!(
            !(t.central.direct && t.central.peer_delay_ms > 0),
            "central voters linked directly have no peer delay: drop peer_delay_ms or direct"
        );
        for r in &t.regions {
            for e in &r.edges {
                if let Some(m) = &e.mode {
                    anyhow::ensure!(m == "push" || m == "ttl", "edge {}: mode must be push or ttl, not {m:?}", e.name);
                }
            }
        }
        Ok(t)
    }

    /// The largest round trip on any path from an edge to the central group and back down.
    pub fn largest_link_round_trip_ms(&self) -> u64 {
        self.regions.iter().map(|r| 2 * r.central_delay_ms).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_topology_parses() {
        let t = Topology::parse(DEFAULT).unwrap();
        assert_eq!(t.central.voters, 3);
        assert_eq!(t.regions.len(), 3);
        assert!(t.regions.iter().all(|r| r.edges.len() == 2));
        assert_eq!(t.largest_link_round_trip_ms(), 150);
        assert!(Topology::parse("[central]\nvoters = 0\nregions = []\n").is_err());
        let central_only = Topology::parse("regions = []\n[central]\nvoters = 3\n").unwrap();
        assert!(central_only.central.initialize && central_only.regions.is_empty());
        let bad = DEFAULT.replace("{ name = \"us-east-1\", delay_ms = 1 }", "{ name = \"x\", mode = \"sometimes\" }");
        assert!(Topology::parse(&bad).is_err());
        let direct = "regions = []\n[central]\nvoters = 3\ndirect = true\n";
        assert!(Topology::parse(direct).unwrap().central.direct);
        let err = Topology::parse(&format!("{direct}peer_delay_ms = 5\n")).unwrap_err().to_string();
        assert!(err.contains("linked directly have no peer delay"), "{err}");
    }
}
