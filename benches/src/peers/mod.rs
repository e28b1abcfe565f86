//! The systems `bench-peers` sets beside the cluster, each run as real processes on
//! loopback: a bare gRPC echo server (the floor of one call), a 3-member etcd cluster and
//! a Redis server, from the distribution's packages.

pub mod echo;
pub mod etcd;
pub mod redis;

use anyhow::Context;
use std::path::Path;
use std::process::Stdio;
use tokio::process::Child;

/// Starts `program` with `args`, its output in `log`; killed when dropped, or when this
/// process ends however it ends.
fn spawn(program: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    kv_deploy::launch::dies_with_parent(&mut cmd);
    tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

/// The path of `program` on `PATH`, or a clear error naming the package to install.
fn installed(program: &str, package: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} is not installed (apt-get install {package}; scripts/bench-peers does)"))
}
