//! The cluster across machines, with Linux network namespaces standing in for them: one
//! namespace per region (central, a, b), joined by veth pairs on a bridge, every node bound
//! to its namespace's own address, every link mutual TLS with certificates naming those
//! addresses, a software delay on each inter-region link, and partitions made with
//! iptables inside a namespace. The test partitions a region and heals it, kills the
//! central leader, and kills a region's regional tier and brings it back.
//!
//! It needs root (namespaces, iptables): without it, it says so and passes.

use kv_client::Client;
use kv_common::tls::Role;
use kv_deploy::launch::{bin_dir, http_get_with, spawn_node_in};
use kv_deploy::link::DelayLink;
use kv_deploy::pki::{tls_section, Ca};
use kv_proto::admin::v1::{cluster_admin_client::ClusterAdminClient, MetricsRequest};
use kv_tests::eventually;
use kv_tests::tiers::put;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

const SUBNET: &str = "10.231.7";
const BRIDGE_IP: &str = "10.231.7.254";

/// Runs a command; its failure is the test's.
fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in [["ip", "-V"], ["iptables", "-V"]] {
        if !Command::new(tool[0]).arg(tool[1]).output().is_ok_and(|o| o.status.success()) {
            return Some(format!("`{}` is missing (scripts/setup installs it)", tool[0]));
        }
    }
    // Root in a container may still lack the right to make namespaces.
    let probe = format!("kvprobe{}", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &probe]).output().is_ok_and(|o| o.status.success());
    let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    (!made).then(|| "network namespaces cannot be made here".into())
}

/// The namespaces and the bridge; removed when dropped (also on panic).
struct Net {
    tag: String,
    regions: Vec<&'static str>,
}

impl Net {
    fn new(regions: &[&'static str]) -> Net {
        let tag = format!("kv{}", std::process::id() % 100_000);
        let net = Net { tag: tag.clone(), regions: regions.to_vec() };
        let bridge = format!("{tag}br");
        run(&["ip", "link", "add", &bridge, "type", "bridge"]);
        run(&["ip", "addr", "add", &format!("{BRIDGE_IP}/24"), "dev", &bridge]);
        run(&["ip", "link", "set", &bridge, "up"]);
        for (i, r) in regions.iter().enumerate() {
            let ns = net.ns(r);
            let (host, inside) = (format!("{tag}h{i}"), format!("{tag}n{i}"));
            run(&["ip", "netns", "add", &ns]);
            run(&["ip", "link", "add", &host, "type", "veth", "peer", "name", &inside]);
            run(&["ip", "link", "set", &inside, "netns", &ns]);
            run(&["ip", "link", "set", &host, "master", &bridge, "up"]);
            run(&["ip", "netns", "exec", &ns, "ip", "addr", "add", &format!("{}/24", net.ip(r)), "dev", &inside]);
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", &inside, "up"]);
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        }
        net
    }

    fn ns(&self, region: &str) -> String {
        format!("{}-{region}", self.tag)
    }

    fn ns_file(&self, region: &str) -> PathBuf {
        Path::new("/var/run/netns").join(self.ns(region))
    }

    /// The address of `region`'s machine.
    fn ip(&self, region: &str) -> String {
        let i = self.regions.iter().position(|r| *r == region).expect("a known region");
        format!("{SUBNET}.{}", i + 1)
    }

    /// Cuts `region` off from `from` (both ways), inside `region`'s namespace.
    fn partition(&self, region: &str, from: &str) {
        let (ns, peer) = (self.ns(region), self.ip(from));
        run(&["ip", "netns", "exec", &ns, "iptables", "-A", "OUTPUT", "-d", &peer, "-j", "REJECT"]);
        run(&["ip", "netns", "exec", &ns, "iptables", "-A", "INPUT", "-s", &peer, "-j", "DROP"]);
    }

    fn heal(&self, region: &str) {
        run(&["ip", "netns", "exec", &self.ns(region), "iptables", "-F"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for r in &self.regions {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(r)]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &format!("{}br", self.tag)]).output();
    }
}

/// A node process in a namespace; killed when dropped.
struct Node {
    name: String,
    ns: PathBuf,
    bin: PathBuf,
    dir: PathBuf,
    grpc: SocketAddr,
    http: SocketAddr,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self) {
        let (config, log) = (self.dir.join("node.toml"), self.dir.join("node.log"));
        self.child = Some(spawn_node_in(Some(&self.ns), &self.bin, &config, &log, None, &[]).unwrap());
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            kv_tests::dump_log(&self.name, &self.dir.join("node.log"));
        }
        self.kill();
    }
}

/// A delay link started inside `ns`, listening on `ip` (the target's own address, so the
/// name its certificate gives still fits what the dialling node asks for).
fn link_in(ns: &Path, ip: &str, target: SocketAddr, delay: Duration) -> DelayLink {
    let (ns, bind) = (ns.to_owned(), SocketAddr::new(ip.parse().unwrap(), 0));
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns).unwrap();
        // SAFETY: moves only this (fresh) thread into the namespace; the link's threads,
        // spawned from it, stay there.
        assert_eq!(unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) }, 0);
        DelayLink::start_on(bind, target, delay).unwrap()
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_region_cluster_over_mutual_tls_survives_partitions_and_kills() {
    if let Some(why) = unsupported() {
        eprintln!("SKIPPED: the multi-host test needs root, ip and iptables: {why}");
        return;
    }
    let net = Net::new(&["central", "a", "b"]);
    let root = tempfile::tempdir().unwrap();
    let ca = Ca::open_or_create(&root.path().join("tls")).unwrap();
    let token = format!("kvadmin_{}", hex::encode(rand::random::<[u8; 16]>()));
    let secrets = root.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("admin-token"), &token).unwrap();
    std::fs::write(secrets.join("key"), format!("1:{}", hex::encode(rand::random::<[u8; 32]>()))).unwrap();
    let bins = bin_dir().unwrap();
    let node = |name: &str, region: &str, role: Role, port: u16, specific: String| {
        let ip = net.ip(region);
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let tls = ca.issue(role, name, std::slice::from_ref(&ip)).unwrap();
        let (grpc, http) = (format!("{ip}:{port}"), format!("{ip}:{}", port + 100));
        let text = format!(
            "{specific}listen = \"{grpc}\"\nhttp_listen = \"{http}\"\nadmin_token_file = \"{}\"\n{}",
            secrets.join("admin-token").display(),
            tls_section(&tls)
        );
        std::fs::write(dir.join("node.toml"), text).unwrap();
        let bin = bins.join(match role {
            Role::Central => "central-store",
            Role::Regional => "regional-tier",
            Role::Edge => "edge-node",
        });
        let mut n = Node {
            name: name.into(),
            ns: net.ns_file(region),
            bin,
            dir,
            grpc: grpc.parse().unwrap(),
            http: http.parse().unwrap(),
            child: None,
        };
        n.start();
        n
    };

    // Three voters on the central machine.
    let members: Vec<String> =
        (1..=3).map(|i| format!("{{ id = {i}, addr = \"{}:{}\" }}", net.ip("central"), 7100 + i)).collect();
    let mut central: Vec<Node> = (1..=3u16)
        .map(|i| {
            let specific = format!(
                "node_id = {i}\ndata_dir = \"{}\"\nencryption_key_file = \"{}\"\ninitial_members = [{}]\n",
                root.path().join(format!("central-{i}/data")).display(),
                secrets.join("key").display(),
                members.join(", ")
            );
            node(&format!("central-{i}"), "central", Role::Central, 7100 + i, specific)
        })
        .collect();
    // Each region: a regional tier that reaches the voters over a delayed link, and an edge.
    let mut links = Vec::new();
    let mut regionals = Vec::new();
    let mut edges = Vec::new();
    for (region, delay_ms) in [("a", 20), ("b", 35)] {
        let to_central: Vec<String> = central
            .iter()
            .map(|c| {
                let l = link_in(&net.ns_file("central"), &net.ip("central"), c.grpc, Duration::from_millis(delay_ms));
                let at = format!("\"{}\"", l.listen);
                links.push(l);
                at
            })
            .collect();
        let specific = format!("region = \"{region}\"\ncentral = [{}]\n", to_central.join(", "));
        regionals.push(node(&format!("regional-{region}"), region, Role::Regional, 7301, specific));
        let specific = format!("id = \"edge-{region}\"\nupstream = [\"{}:7301\"]\n", net.ip(region));
        edges.push(node(&format!("edge-{region}"), region, Role::Edge, 7501, specific));
    }

    // The test process is on the bridge, like a client elsewhere; it trusts the cluster CA.
    let tls = kv_common::tls::tool_config(&ca.cert_file()).unwrap();
    for n in central.iter().chain(&regionals).chain(&edges) {
        let want = if n.name.starts_with("regional") {
            "following"
        } else if n.name.starts_with("edge") {
            "ready"
        } else {
            ""
        };
        eventually(Duration::from_secs(60), &format!("{} to be ready", n.name), || async {
            match http_get_with(Some(&tls), n.http, "/health").await {
                Ok((200, body)) if body.contains(want) => Some(()),
                _ => None,
            }
        })
        .await
        .unwrap();
    }
    let ca_file = ca.cert_file();
    let client = |edge: &Node| {
        let (addr, ca_file, token) = (edge.grpc.to_string(), ca_file.clone(), token.clone());
        async move { Client::connect_with_ca(&addr, Some(&ca_file)).await.unwrap().with_token(&token).unwrap() }
    };
    let (a, b) = (client(&edges[0]).await, client(&edges[1]).await);
    let ns = a.create_namespace("multi-host").await.unwrap().id;
    let sees = |c: &Client, key: &'static str, value: &'static str| {
        let (c, ns) = (c.clone(), ns.clone());
        move || {
            let (c, ns) = (c.clone(), ns.clone());
            async move {
                let got = c.get(&ns, key, None).await.ok()?;
                (got.found && got.value == value.as_bytes()).then_some(())
            }
        }
    };

    // A write at region a is read at region b.
    a.put(put(&ns, "k1", "v1")).await.unwrap();
    eventually(Duration::from_secs(5), "region b to read k1", sees(&b, "k1", "v1")).await.unwrap();

    // Region b is cut off from the central machine: region a still writes; b has none of
    // it until the partition heals, then catches up.
    net.partition("b", "central");
    a.put(put(&ns, "k2", "v2")).await.unwrap();
    for _ in 0..3 {
        if let Ok(got) = b.get(&ns, "k2", None).await {
            assert!(!got.found, "region b read k2 through a partition");
        }
    }
    net.heal("b");
    eventually(Duration::from_secs(15), "region b to read k2 after healing", sees(&b, "k2", "v2")).await.unwrap();

    // The central leader is killed: the other two voters elect one and writes go on.
    let admin = |n: &Node| {
        let ch =
            tonic::transport::Endpoint::from_shared(format!("http://{}", n.grpc)).unwrap().connect_with_connector_lazy(
                kv_common::tls::Connector(kv_common::tls::ClientSource::Fixed(Arc::clone(&tls)), &[]),
            );
        ClusterAdminClient::new(kv_common::auth::authorized(ch, &token).unwrap())
    };
    let leader = admin(&central[0]).metrics(MetricsRequest {}).await.unwrap().into_inner().leader_id.unwrap();
    central[leader as usize - 1].kill();
    eventually(Duration::from_secs(20), "a write after the leader died", || async {
        a.put(put(&ns, "k3", "v3")).await.ok()
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(10), "region b to read k3", sees(&b, "k3", "v3")).await.unwrap();

    // Region a's regional tier is killed: its edge cannot write; once it is back, it can.
    regionals[0].kill();
    let refused = a.put(put(&ns, "k4", "down")).await.expect_err("no regional tier, no write");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    regionals[0].start();
    eventually(Duration::from_secs(30), "a write after region a's tier is back", || async {
        a.put(put(&ns, "k4", "v4")).await.ok()
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(10), "region b to read k4", sees(&b, "k4", "v4")).await.unwrap();
}
