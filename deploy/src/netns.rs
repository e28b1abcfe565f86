//! Machines made of Linux network namespaces: one namespace per machine (the central group,
//! each region), each with its own address on one bridge, so that nodes bind and dial real
//! addresses as across hosts and a partition is an iptables rule inside a namespace. Needs
//! root; everything made is removed when the `Machines` is dropped (also on panic).

use crate::link::DelayLink;
use anyhow::{bail, Context};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The namespaces, their addresses and the bridge joining them (which the launching
/// process, in the host namespace, also sits on, like a client elsewhere).
pub struct Machines {
    tag: String,
    /// The third octet of 10.231.x.0/24.
    subnet: u8,
    names: Vec<String>,
}

/// Runs a command; its failure is an error naming it.
fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Whether a route to 10.231.`n`.0/24 exists already (another cluster of this kind).
fn subnet_taken(n: u8) -> bool {
    Command::new("ip")
        .args(["route", "show", &format!("10.231.{n}.0/24")])
        .output()
        .map_or(true, |o| !o.stdout.is_empty())
}

impl Machines {
    /// Why this machine cannot make namespaces, if it cannot.
    pub fn unsupported() -> Option<String> {
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
        let made = run(&["ip", "netns", "add", &probe]).is_ok();
        let _ = Command::new("ip").args(["netns", "del", &probe]).output();
        (!made).then(|| "network namespaces cannot be made here".into())
    }

    /// Makes one namespace per name, on a bridge with a subnet no other cluster uses.
    pub fn create(names: &[String]) -> anyhow::Result<Machines> {
        if let Some(why) = Machines::unsupported() {
            bail!("network namespaces need root, ip and iptables: {why}");
        }
        let pid = std::process::id();
        let subnet = (0..240u32)
            .map(|i| ((pid + i) % 240 + 10) as u8)
            .find(|n| !subnet_taken(*n))
            .context("every 10.231.x.0/24 subnet is in use")?;
        let m = Machines { tag: format!("kv{}", pid % 100_000), subnet, names: names.to_vec() };
        let bridge = m.bridge();
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&["ip", "addr", "add", &format!("10.231.{subnet}.254/24"), "dev", &bridge])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        for (i, name) in names.iter().enumerate() {
            let ns = m.ns(name);
            let (host, inside) = (format!("{}h{i}", m.tag), format!("{}n{i}", m.tag));
            let ip = m.ip(name).context("a machine just named")?;
            run(&["ip", "netns", "add", &ns])?;
            run(&["ip", "link", "add", &host, "type", "veth", "peer", "name", &inside])?;
            run(&["ip", "link", "set", &inside, "netns", &ns])?;
            run(&["ip", "link", "set", &host, "master", &bridge, "up"])?;
            run(&["ip", "netns", "exec", &ns, "ip", "addr", "add", &format!("{ip}/24"), "dev", &inside])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", &inside, "up"])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(m)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn ns(&self, machine: &str) -> String {
        format!("{}-{machine}", self.tag)
    }

    /// The namespace file of `machine`, for `setns`.
    pub fn ns_file(&self, machine: &str) -> PathBuf {
        Path::new("/var/run/netns").join(self.ns(machine))
    }

    /// The address of `machine`.
    pub fn ip(&self, machine: &str) -> Option<IpAddr> {
        let i = self.names.iter().position(|n| n == machine)?;
        Some(IpAddr::V4(Ipv4Addr::new(10, 231, self.subnet, i as u8 + 1)))
    }

    /// Cuts `machine` off from `from` (both ways), inside `machine`'s namespace.
    pub fn partition(&self, machine: &str, from: &str) -> anyhow::Result<()> {
        let (ns, peer) = (self.ns(machine), self.ip(from).context("an unknown machine")?.to_string());
        run(&["ip", "netns", "exec", &ns, "iptables", "-A", "OUTPUT", "-d", &peer, "-j", "REJECT"])?;
        run(&["ip", "netns", "exec", &ns, "iptables", "-A", "INPUT", "-s", &peer, "-j", "DROP"])
    }

    /// Undoes every partition of `machine`.
    pub fn heal(&self, machine: &str) -> anyhow::Result<()> {
        run(&["ip", "netns", "exec", &self.ns(machine), "iptables", "-F"])
    }

    /// A delay link to `target` on `machine`, listening on that machine's own address (so the
    /// name the target's certificate gives still fits what the dialling node asks for).
    pub fn link(&self, machine: &str, target: SocketAddr, delay: Duration) -> anyhow::Result<DelayLink> {
        let ns = std::fs::File::open(self.ns_file(machine)).context("opening a machine's namespace")?;
        let bind = SocketAddr::new(self.ip(machine).context("an unknown machine")?, 0);
        std::thread::spawn(move || -> std::io::Result<DelayLink> {
            use std::os::fd::AsRawFd;
            // SAFETY: moves only this fresh thread into the namespace; the link's threads,
            // spawned from it, stay there.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            DelayLink::start_on(bind, target, delay)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("starting a link panicked"))?
        .context("starting a link in a namespace")
    }
}

impl Drop for Machines {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(n)]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge()]).output();
    }
}
