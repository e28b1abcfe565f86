//! Starts every node of a topology as its own process on loopback, each with its own data
//! directory and log, with a delay link in front of every inter-tier connection. Used by
//! the `kv-local-cluster` command and by the cluster tests.

use crate::link::DelayLink;
use crate::netns::Machines;
use crate::pki::{self, Ca};
use crate::reach::{Reach, ReachEdge};
use crate::topology::{RegionSpec, Topology};
use anyhow::{bail, Context};
use kv_common::auth::Bearer;
use kv_common::tls::{ClientSource, Connector, Role, TlsFiles};
use kv_proto::admin::v1::{cluster_admin_client::ClusterAdminClient, MetricsRequest};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// How long the whole cluster may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One node process: its ports, directory, and how to start it again.
pub struct NodeProc {
    pub name: String,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub dir: PathBuf,
    bin: PathBuf,
    log_filter: Option<String>,
    /// Extra environment of the process (e.g. `KV_CLOCK_SKEW_MS`), applied at each start.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    /// The file holding the cluster's admin token.
    token_file: PathBuf,
    /// The node's CA, certificate and key, when the cluster runs with TLS.
    tls: Option<TlsFiles>,
    /// The network namespace the node runs in, when machines are namespaces.
    netns: Option<PathBuf>,
}

impl NodeProc {
    fn config_path(&self) -> PathBuf {
        self.dir.join("node.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    /// Writes the node's config file: its own lines (`specific`), its listeners, then `extra`
    /// (the topology's TOML for every node of its kind). TOML tables go in `tables`, last.
    fn write_config(&self, specific: &str, extra: &str, tables: &str) -> std::io::Result<()> {
        let text = format!(
            "{specific}listen = \"{}\"\nhttp_listen = \"{}\"\nadmin_token_file = \"{}\"\n{extra}\n{tables}{}",
            self.grpc,
            self.http,
            self.token_file.display(),
            self.tls.as_ref().map(pki::tls_section).unwrap_or_default()
        );
        std::fs::write(self.config_path(), text)
    }

    /// Starts the process (again) from its config file; it dies with this process.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let child = spawn_node(
            self.netns.as_deref(),
            &self.bin,
            &self.config_path(),
            &self.log_path(),
            self.log_filter.as_deref(),
            &self.env,
        )
        .with_context(|| format!("starting {} ({})", self.name, self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the process where it is (SIGSTOP): it holds its connections but answers nothing.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Asks the process to stop (SIGTERM), without waiting; a paused one is woken to hear it.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
        self.signal(libc::SIGCONT);
    }

    /// SIGHUP: the node reads its certificate and key files again.
    pub fn reload_certificates(&self) {
        self.signal(libc::SIGHUP);
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. Whether it exited by
    /// itself, successfully, within `grace` (false when there was no process).
    pub fn stop(&mut self, grace: Duration) -> bool {
        self.terminate();
        let Some(mut c) = self.child.take() else { return false };
        let deadline = Instant::now() + grace;
        loop {
            match c.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => break,
            }
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Whether the process was started and not killed or stopped since (it may have exited).
    pub fn has_child(&self) -> bool {
        self.child.is_some()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// Has the child `cmd` starts killed when this process exits, even by SIGKILL, so no node
/// outlives a test or benchmark that panicked or was killed.
pub fn dies_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the child when the
    // launching process exits.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Runs `bin --config config`, appending its output to `log`, with `RUST_LOG` from `filter`,
/// else `$KV_TEST_LOG`, else `info`, and `env` on top; in the network namespace `netns` (a
/// file such as `/var/run/netns/NAME`) when given, where the node binds and dials that
/// namespace's addresses, as on its own machine. The child dies with the launching process.
fn spawn_node(
    netns: Option<&Path>,
    bin: &Path,
    config: &Path,
    log: &Path,
    filter: Option<&str>,
    env: &[(String, String)],
) -> anyhow::Result<Child> {
    let netns = netns
        .map(|p| std::fs::File::open(p).with_context(|| format!("opening network namespace {}", p.display())))
        .transpose()?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(config)
        .env(
            "RUST_LOG",
            filter
                .map(str::to_string)
                .or_else(|| std::env::var("KV_TEST_LOG").ok())
                .unwrap_or_else(|| "info,openraft=warn".into()),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    dies_with_parent(&mut cmd);
    if let Some(ns) = netns {
        use std::os::fd::AsRawFd;
        let fd = ns.as_raw_fd();
        // SAFETY: setns is async-signal-safe; `ns` stays open until after the spawn.
        unsafe {
            cmd.pre_exec(move || match libc::setns(fd, libc::CLONE_NEWNET) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
        let child = cmd.spawn()?;
        drop(ns);
        return Ok(child);
    }
    Ok(cmd.spawn()?)
}

/// A region's processes and links.
pub struct Region {
    pub name: String,
    pub regional: NodeProc,
    /// One link per central node, in central order: what the regional tier dials.
    pub central_links: Vec<DelayLink>,
    /// More regional tiers of the region, which its edges fail over to.
    pub standbys: Vec<Standby>,
    pub edges: Vec<Edge>,
}

/// A standby regional tier and its links to the central nodes.
pub struct Standby {
    pub node: NodeProc,
    pub central_links: Vec<DelayLink>,
}

/// An edge and its links to its regional tier (first) and to the standbys.
pub struct Edge {
    pub node: NodeProc,
    pub link: DelayLink,
    pub standby_links: Vec<DelayLink>,
}

/// A running local cluster; every process is stopped when it is dropped.
pub struct LocalCluster {
    pub central: Vec<NodeProc>,
    /// `peer_links[i][j]`: how voter `i` reaches voter `j` (none for `i == j`, or when the
    /// topology links voters directly).
    pub peer_links: Vec<Vec<Option<DelayLink>>>,
    pub regions: Vec<Region>,
    /// TOML appended to every central node's config.
    central_config: String,
    /// The cluster's admin token (every node's credential, and the operator's first token).
    pub admin_token: String,
    /// The cluster CA, when every link runs mutual TLS.
    ca: Option<Ca>,
    /// How the launcher, tests and tools connect: trusting the CA, when there is one.
    pub client_tls: Option<Arc<rustls::ClientConfig>>,
    /// The namespaces the nodes run in, when the topology asks for machines (`netns`): the
    /// central group on one, each region on its own. Last, so it goes after the links.
    pub machines: Option<Machines>,
}

/// Where binaries are: `$KV_BIN_DIR`, or beside the running executable (its parent when
/// that is a cargo `deps` directory, as for tests).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("KV_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("executable has no directory")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

fn binary(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    if !p.exists() {
        bail!("{} is missing: build it with `cargo build --bins`", p.display());
    }
    Ok(p)
}

pub use crate::ports::free_port;

/// Ports of the n-th node of a tier at `ip`: fixed from `base`, or free ones when `base` is 0.
fn ports(ip: IpAddr, base: u16, tier_offset: u16, n: usize) -> std::io::Result<(SocketAddr, SocketAddr)> {
    let (g, h) = if base == 0 {
        (free_port()?, free_port()?)
    } else {
        let g = base + tier_offset + n as u16 + 1;
        (g, g + 100)
    };
    Ok((SocketAddr::new(ip, g), SocketAddr::new(ip, h)))
}

/// Where a node runs: on loopback, or on one machine of `Machines`.
struct Place {
    ip: IpAddr,
    netns: Option<PathBuf>,
}

impl Place {
    /// `machine` of `machines`, or loopback when there are none.
    fn of(machines: Option<&Machines>, machine: &str) -> anyhow::Result<Place> {
        Ok(match machines {
            None => Place { ip: IpAddr::V4(Ipv4Addr::LOCALHOST), netns: None },
            Some(m) => Place { ip: m.ip(machine).context("an unknown machine")?, netns: Some(m.ns_file(machine)) },
        })
    }

    /// The hosts the certificate of a node here names: the address its peers dial.
    fn hosts(&self) -> Vec<String> {
        match self.netns {
            None => vec!["127.0.0.1".into(), "localhost".into()],
            Some(_) => vec![self.ip.to_string()],
        }
    }
}

/// A delay link in front of `target`, which runs on `machine`.
fn link(machines: Option<&Machines>, machine: &str, target: SocketAddr, delay: Duration) -> anyhow::Result<DelayLink> {
    match machines {
        None => Ok(DelayLink::start(target, delay)?),
        Some(m) => m.link(machine, target, delay),
    }
}

/// The machine of the central group, when machines are namespaces.
const CENTRAL: &str = "central";

fn node(
    (name, role): (&str, Role),
    topology: &Topology,
    root: &Path,
    ca: Option<&Ca>,
    bin: PathBuf,
    (place, tier_offset, n): (&Place, u16, usize),
) -> anyhow::Result<NodeProc> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    let (grpc, http) = ports(place.ip, topology.base_port, tier_offset, n)?;
    let tls = ca.map(|ca| ca.issue(role, name, &place.hosts())).transpose()?;
    Ok(NodeProc {
        name: name.into(),
        grpc,
        http,
        dir,
        bin,
        log_filter: topology.log.clone(),
        env: Vec::new(),
        child: None,
        token_file: token_file(root),
        tls,
        netns: place.netns.clone(),
    })
}

/// Where a cluster under `root` keeps its CA and node certificates.
pub fn tls_dir(root: &Path) -> PathBuf {
    root.join("tls")
}

/// Where a cluster under `root` keeps its admin token.
pub fn token_file(root: &Path) -> PathBuf {
    root.join("admin-token")
}

/// Where a cluster under `root` keeps the central store's encryption keys (outside every
/// node's data directory).
pub fn key_file(root: &Path) -> PathBuf {
    root.join("encryption-key")
}

/// A secret of the cluster under `root`, kept in `path` (owner-only), where the nodes read
/// it: the one a previous run kept, else `$var`, else `fresh()`. A kept secret is never
/// rewritten (the data sealed with a key is lost with it): an empty file, or a `$var` that
/// differs from it, is an error to resolve by hand.
fn cluster_secret(root: &Path, path: &Path, var: &str, fresh: impl FnOnce() -> String) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let from_env = std::env::var(var).ok().map(|v| v.trim().to_owned());
    match std::fs::read_to_string(path) {
        Ok(kept) => {
            let kept = kept.trim().to_owned();
            anyhow::ensure!(!kept.is_empty(), "{} is empty: restore it from a backup", path.display());
            if let Some(given) = from_env {
                anyhow::ensure!(given == kept, "${var} differs from the one kept in {}", path.display());
            }
            Ok(kept)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = from_env.unwrap_or_else(fresh);
            std::fs::create_dir_all(root)?;
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
            f.write_all(secret.as_bytes())?;
            f.sync_all()?;
            Ok(secret)
        }
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

fn quoted_list<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items.into_iter().map(|i| format!("\"{}\"", i.to_string())).collect::<Vec<_>>().join(", ")
}

impl LocalCluster {
    /// Starts `topology` with data under `root` and waits until it serves.
    pub async fn start(topology: &Topology, root: &Path) -> anyhow::Result<LocalCluster> {
        let bins = bin_dir()?;
        let admin_token = cluster_secret(root, &token_file(root), "KV_ADMIN_TOKEN", || {
            format!("kvadmin_{}", hex::encode(rand::random::<[u8; 32]>()))
        })?;
        cluster_secret(root, &key_file(root), "KV_ENCRYPTION_KEY", || {
            format!("1:{}", hex::encode(rand::random::<[u8; 32]>()))
        })?;
        let ca = if topology.tls { Some(Ca::open_or_create(&tls_dir(root))?) } else { None };
        let client_tls = ca.as_ref().map(|ca| kv_common::tls::tool_config(&ca.cert_file())).transpose()?;
        let machines = if topology.netns {
            let names = std::iter::once(CENTRAL.to_owned()).chain(topology.regions.iter().map(|r| r.name.clone()));
            Some(Machines::create(&names.collect::<Vec<_>>())?)
        } else {
            None
        };
        let at_central = Place::of(machines.as_ref(), CENTRAL)?;
        let mut central = Vec::new();
        for i in 0..topology.central.voters {
            central.push(node(
                (&format!("central-{}", i + 1), Role::Central),
                topology,
                root,
                ca.as_ref(),
                binary(&bins, "central-store")?,
                (&at_central, 0, i),
            )?);
        }
        let peer_delay = Duration::from_millis(topology.central.peer_delay_ms);
        let mut peer_links = Vec::new();
        for i in 0..central.len() {
            let mut row = Vec::new();
            for (j, to) in central.iter().enumerate() {
                let linked = i != j && !topology.central.direct;
                row.push(if linked { Some(link(machines.as_ref(), CENTRAL, to.grpc, peer_delay)?) } else { None });
            }
            peer_links.push(row);
        }
        let members = central
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{{ id = {}, addr = \"{}\" }}", i + 1, n.grpc))
            .collect::<Vec<_>>()
            .join(", ");
        let members = if topology.central.initialize { members } else { String::new() };
        let mut cluster = LocalCluster {
            central,
            peer_links,
            regions: Vec::new(),
            central_config: topology.central.config.clone(),
            admin_token,
            ca,
            client_tls,
            machines,
        };
        for i in 0..cluster.central.len() {
            let routes: String = cluster.peer_links[i]
                .iter()
                .enumerate()
                .filter_map(|(j, l)| l.as_ref().map(|l| format!("\"{}\" = \"{}\"\n", j + 1, l.listen)))
                .collect();
            let n = &mut cluster.central[i];
            let specific = format!(
                "node_id = {}\ndata_dir = \"{}\"\nencryption_key_file = \"{}\"\ninitial_members = [{members}]\n",
                i + 1,
                n.dir.join("data").display(),
                key_file(root).display()
            );
            n.write_config(&specific, &cluster.central_config, &format!("[peer_routes]\n{routes}"))?;
            n.start()?;
        }
        if topology.central.initialize {
            cluster.wait_for_leader().await?;
        }

        let mut edge_no = 0;
        let mut regional_no = 0;
        let mut reach = Vec::new();
        for spec in &topology.regions {
            let place = Place::of(cluster.machines.as_ref(), &spec.name)?;
            let mut regionals = Vec::new();
            for k in 0..=spec.standbys {
                let name = match k {
                    0 => format!("regional-{}", spec.name),
                    k => format!("regional-{}-{}", spec.name, k + 1),
                };
                regionals.push(cluster.start_regional(&name, spec, topology, root, &bins, (&place, regional_no))?);
                regional_no += 1;
            }
            let mut edges = Vec::new();
            for e in &spec.edges {
                let delay = Duration::from_millis(e.delay_ms);
                let mut links = regionals
                    .iter()
                    .map(|(r, _)| link(cluster.machines.as_ref(), &spec.name, r.grpc, delay))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut node = node(
                    (&e.name, Role::Edge),
                    topology,
                    root,
                    cluster.ca.as_ref(),
                    binary(&bins, "edge-node")?,
                    (&place, 400, edge_no),
                )?;
                edge_no += 1;
                let mode = e.mode.as_ref().map(|m| format!("mode = \"{m}\"\n")).unwrap_or_default();
                let upstream = quoted_list(links.iter().map(|l| l.listen));
                node.write_config(
                    &format!("id = \"{}\"\nupstream = [{upstream}]\n{mode}", e.name),
                    &topology.edge_config,
                    "",
                )?;
                node.start()?;
                let link = links.remove(0);
                reach.push(ReachEdge {
                    name: e.name.clone(),
                    grpc: node.grpc,
                    http: node.http,
                    mode: e.mode.clone().unwrap_or_else(|| "push".into()),
                });
                edges.push(Edge { node, link, standby_links: links });
            }
            let (regional, central_links) = regionals.remove(0);
            let standbys = regionals.into_iter().map(|(node, central_links)| Standby { node, central_links }).collect();
            cluster.regions.push(Region { name: spec.name.clone(), regional, central_links, standbys, edges });
        }
        cluster.wait_until_serving().await?;
        Reach { ca: cluster.ca_file(), token_file: token_file(root), edges: reach }.write(root)?;
        Ok(cluster)
    }

    /// Starts one regional tier of `spec`'s region, with its own links to every central node.
    fn start_regional(
        &self,
        name: &str,
        spec: &RegionSpec,
        topology: &Topology,
        root: &Path,
        bins: &Path,
        (place, n): (&Place, usize),
    ) -> anyhow::Result<(NodeProc, Vec<DelayLink>)> {
        let delay = Duration::from_millis(spec.central_delay_ms);
        let central_links = self
            .central
            .iter()
            .map(|c| link(self.machines.as_ref(), CENTRAL, c.grpc, delay))
            .collect::<Result<Vec<_>, _>>()?;
        let bin = binary(bins, "regional-tier")?;
        let mut regional = node((name, Role::Regional), topology, root, self.ca.as_ref(), bin, (place, 200, n))?;
        let central = quoted_list(central_links.iter().map(|l| l.listen));
        regional.write_config(
            &format!("region = \"{}\"\ncentral = [{central}]\n", spec.name),
            &topology.regional_config,
            "",
        )?;
        regional.start()?;
        Ok((regional, central_links))
    }

    /// Starts one more central node that belongs to no cluster yet (to be added through the
    /// admin API); returns its index.
    pub fn add_central(&mut self, root: &Path) -> anyhow::Result<usize> {
        let i = self.central.len();
        let first = self.central.first().context("a cluster has a first node")?;
        let (bin, filter) = (first.bin.clone(), first.log_filter.clone());
        let name = format!("central-{}", i + 1);
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir)?;
        let place = Place::of(self.machines.as_ref(), CENTRAL)?;
        let (grpc, http) = ports(place.ip, 0, 0, i)?;
        let tls = self.ca.as_ref().map(|ca| ca.issue(Role::Central, &name, &place.hosts())).transpose()?;
        let mut n = NodeProc {
            name,
            grpc,
            http,
            dir,
            bin,
            log_filter: filter,
            env: Vec::new(),
            child: None,
            token_file: token_file(root),
            tls,
            netns: place.netns,
        };
        let specific = format!(
            "node_id = {}\ndata_dir = \"{}\"\nencryption_key_file = \"{}\"\n",
            i + 1,
            n.dir.join("data").display(),
            key_file(root).display()
        );
        n.write_config(&specific, &self.central_config, "")?;
        n.start()?;
        self.central.push(n);
        Ok(i)
    }

    /// The CA certificate every node and client of this cluster trusts, when it runs TLS.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.ca.as_ref().map(Ca::cert_file)
    }

    /// Cuts voter `i` off from every other voter (both ways), as a network partition would;
    /// tiers can still reach it. Voters linked directly (`direct`) cannot be cut apart.
    pub fn isolate_central(&self, i: usize) {
        self.peer_links_of(i).for_each(DelayLink::cut);
    }

    /// Undoes `isolate_central`.
    pub fn heal_central(&self, i: usize) {
        self.peer_links_of(i).for_each(DelayLink::restore);
    }

    fn peer_links_of(&self, i: usize) -> impl Iterator<Item = &DelayLink> {
        self.peer_links.iter().enumerate().flat_map(move |(a, row)| {
            row.iter().enumerate().filter(move |(b, _)| a == i || *b == i).filter_map(|(_, l)| l.as_ref())
        })
    }

    /// The index of the voter that the running voters agree leads, if they do.
    pub async fn central_leader(&self) -> Option<usize> {
        let mut leaders = Vec::new();
        for n in &self.central {
            if n.has_child() {
                leaders.push(central_leader(n.grpc, &self.admin_token, self.client_tls.as_ref()).await);
            }
        }
        let first = (*leaders.first()?)?;
        leaders.iter().all(|l| *l == Some(first)).then(|| first.checked_sub(1)).flatten().map(|i| i as usize)
    }

    /// Waits until every central node names the same leader and is healthy (it has proved
    /// it is current).
    pub async fn wait_for_leader(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut leaders = Vec::new();
            let mut healthy = true;
            for n in &mut self.central {
                if !n.is_running() {
                    bail!("{} exited at start-up; see {}", n.name, n.log_path().display());
                }
                leaders.push(central_leader(n.grpc, &self.admin_token, self.client_tls.as_ref()).await);
                healthy &= matches!(http_get_with(self.client_tls.as_ref(), n.http, "/health").await, Ok((200, _)));
            }
            if healthy && leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0]) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the central group elected no leader within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every regional tier follows the central feed and every edge is ready
    /// (in mode `push`: subscribed to its regional tier).
    pub async fn wait_until_serving(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        for region in &mut self.regions {
            let mut nodes: Vec<&mut NodeProc> = vec![&mut region.regional];
            nodes.extend(region.standbys.iter_mut().map(|s| &mut s.node));
            nodes.extend(region.edges.iter_mut().map(|e| &mut e.node));
            for n in nodes {
                loop {
                    if !n.is_running() {
                        bail!("{} exited at start-up; see {}", n.name, n.log_path().display());
                    }
                    let ready = match http_get_with(self.client_tls.as_ref(), n.http, "/health").await {
                        Ok((200, body)) => body.contains("following") || body.contains("ready"),
                        _ => false,
                    };
                    if ready {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("{} did not become ready within {START_TIMEOUT:?}", n.name);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Ok(())
    }

    /// Every edge, in topology order.
    pub fn edges(&self) -> impl Iterator<Item = &Edge> {
        self.regions.iter().flat_map(|r| r.edges.iter())
    }

    /// Stops every process: SIGTERM to all at once, then SIGKILL to any still running after a grace period.
    pub fn stop(&mut self) {
        let mut all: Vec<&mut NodeProc> = self.central.iter_mut().collect();
        for r in &mut self.regions {
            all.push(&mut r.regional);
            all.extend(r.standbys.iter_mut().map(|s| &mut s.node));
            all.extend(r.edges.iter_mut().map(|e| &mut e.node));
        }
        for n in &all {
            n.terminate();
        }
        for n in all {
            n.stop(Duration::from_secs(10));
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A connection to the gRPC server at `addr`: over TLS trusting the CA of `tls`, when given.
pub async fn channel(addr: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>) -> anyhow::Result<Channel> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true);
    Ok(match tls {
        Some(c) => ep.connect_with_connector(Connector(ClientSource::Fixed(c.clone()), &[])).await?,
        None => ep.connect().await?,
    })
}

/// The leader a central node names, if any.
async fn central_leader(addr: SocketAddr, token: &str, tls: Option<&Arc<rustls::ClientConfig>>) -> Option<u64> {
    let ch = channel(addr, tls).await.ok()?;
    let mut c = ClusterAdminClient::with_interceptor(ch, Bearer::new(Some(token)).ok()?);
    c.metrics(MetricsRequest {}).await.ok()?.into_inner().leader_id
}

/// A plain HTTP/1.0 GET on loopback: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_get_with(None, addr, path).await
}

/// `http_get`, over TLS trusting the CA of `tls` when given.
pub async fn http_get_with(
    tls: Option<&Arc<rustls::ClientConfig>>,
    addr: SocketAddr,
    path: &str,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut s: Box<dyn ReadWrite> = match tls {
        None => Box::new(tcp),
        Some(c) => {
            let mut config = (**c).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = rustls::pki_types::ServerName::from(addr.ip());
            Box::new(tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?)
        }
    };
    trait ReadWrite: AsyncRead + AsyncWrite + Unpin + Send {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send> ReadWrite for T {}
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}
