//! `kv-local-cluster`: starts a local central cluster (3 voters by default) as separate
//! `central-store` processes on loopback, each with its own data directory, waits until it
//! has a leader, prints the endpoints, and stops every process cleanly on Ctrl-C.

use anyhow::{bail, Context};
use clap::Parser;
use kv_proto::admin::v1::{cluster_admin_client::ClusterAdminClient, MetricsRequest};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(name = "kv-local-cluster", about = "Run a local KV cluster as separate processes")]
struct Args {
    /// Number of central voters.
    #[arg(long, default_value_t = 3)]
    central: u16,
    /// First gRPC port; node i listens on base+i-1 and serves HTTP on base+100+i-1.
    #[arg(long, default_value_t = 7101)]
    base_port: u16,
    /// Where each node keeps its data (one sub-directory per node); reused across runs.
    #[arg(long, default_value = "data/local-cluster")]
    data_dir: PathBuf,
    /// The `central-store` binary (default: beside this one).
    #[arg(long)]
    central_store_bin: Option<PathBuf>,
}

/// Child processes, stopped with SIGTERM (then killed) when dropped.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &self.0 {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for c in &mut self.0 {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match args.central_store_bin {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("central-store"),
    };
    if !bin.exists() {
        bail!("{} not found; build it with `cargo build --bins`", bin.display());
    }
    let nodes: Vec<(u16, String, String)> = (0..args.central)
        .map(|i| {
            let grpc = format!("127.0.0.1:{}", args.base_port + i);
            let http = format!("127.0.0.1:{}", args.base_port + 100 + i);
            (i + 1, grpc, http)
        })
        .collect();
    let members: Vec<String> = nodes.iter().map(|(id, grpc, _)| format!("{id}={grpc}")).collect();
    let mut procs = Processes(Vec::new());
    for (id, grpc, http) in &nodes {
        let dir = args.data_dir.join(format!("central-{id}"));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("node.log"))?;
        let child = Command::new(&bin)
            .args(["--node-id", &id.to_string(), "--listen", grpc, "--http-listen", http])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--initial-members", &members.join(",")])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting central node {id}"))?;
        procs.0.push(child);
    }

    let leader = tokio::select! {
        leader = wait_for_leader(&nodes) => leader?,
        exited = watch_children(&mut procs) => bail!("{exited} during start-up; see its node.log under {}", args.data_dir.display()),
    };
    println!("central cluster is up (leader: node {leader})");
    for (id, grpc, http) in &nodes {
        println!(
            "  central-{id}: grpc {grpc}  metrics http://{http}/metrics  log {}",
            args.data_dir.join(format!("central-{id}/node.log")).display()
        );
    }
    println!("stop with Ctrl-C");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => println!("stopping"),
        exited = watch_children(&mut procs) => eprintln!("{exited}; stopping the rest"),
    }
    Ok(())
}

async fn wait_for_leader(nodes: &[(u16, String, String)]) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for (_, grpc, _) in nodes {
            if let Ok(mut c) = ClusterAdminClient::connect(format!("http://{grpc}")).await {
                if let Ok(m) = c.metrics(MetricsRequest {}).await {
                    if let Some(l) = m.into_inner().leader_id {
                        return Ok(l);
                    }
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no leader after 60 s; see the node logs");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Resolves when any child exits on its own.
async fn watch_children(procs: &mut Processes) -> String {
    loop {
        for c in &mut procs.0 {
            if let Ok(Some(status)) = c.try_wait() {
                return format!("process {} exited ({status})", c.id());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
