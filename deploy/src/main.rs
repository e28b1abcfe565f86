//! `kv-local-cluster`: starts a whole multi-region cluster on loopback as separate
//! processes (central voters, a regional tier per region, its edges), with the topology's
//! link delays simulated in software, prints the edge endpoints, and stops on Ctrl-C.

use anyhow::Context;
use clap::Parser;
use kv_deploy::launch::LocalCluster;
use kv_deploy::topology::{Topology, DEFAULT};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "kv-local-cluster", about = "Run a local multi-region KV cluster as separate processes")]
struct Args {
    /// Topology file (TOML); the embedded default has 3 central voters and 3 regions of 1 regional tier and 2 edges.
    #[arg(long)]
    topology: Option<PathBuf>,
    /// Where each node keeps its data and log (one sub-directory per node); reused across runs.
    #[arg(long, default_value = "data/local-cluster")]
    data_dir: PathBuf,
    /// Print the embedded default topology and exit.
    #[arg(long)]
    print_default_topology: bool,
    /// Run every link in plaintext (the default is mutual TLS, with a CA made under the data
    /// directory's `tls/`).
    #[arg(long)]
    insecure: bool,
    /// Run the central group and each region on its own machine: a Linux network namespace
    /// with its own address (10.231.x.y) on a bridge, as across hosts (needs root, `ip` and
    /// `iptables`; the namespaces go when the launcher stops).
    #[arg(long)]
    netns: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_default_topology {
        print!("{DEFAULT}");
        return Ok(());
    }
    let text = match &args.topology {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        None => DEFAULT.to_string(),
    };
    let mut topology = Topology::parse(&text)?;
    topology.tls = !args.insecure;
    topology.netns |= args.netns;
    std::fs::create_dir_all(&args.data_dir)?;
    // Absolute, so the paths cluster.toml gives tools work from any directory.
    let data_dir = args.data_dir.canonicalize()?;
    println!("starting the cluster under {} ...", data_dir.display());
    let mut cluster = LocalCluster::start(&topology, &data_dir).await?;
    let scheme = if topology.tls { "https" } else { "http" };

    println!("\ncentral store (Raft voters):");
    for c in &cluster.central {
        println!("  {:<14} grpc {}  metrics {scheme}://{}/metrics", c.name, c.grpc, c.http);
    }
    for (r, spec) in cluster.regions.iter().zip(&topology.regions) {
        println!("\nregion {} (regional <-> central: {} ms each way)", r.name, spec.central_delay_ms);
        println!("  {:<14} grpc {}  metrics {scheme}://{}/metrics", r.regional.name, r.regional.grpc, r.regional.http);
        for e in &r.edges {
            println!(
                "  {:<14} grpc {}  REST {scheme}://{}/client/v4  (edge <-> regional: {} ms each way)",
                e.node.name,
                e.node.grpc,
                e.node.http,
                e.link.delay.as_millis()
            );
        }
    }
    let first = cluster.edges().next().map(|e| e.node.grpc.to_string()).unwrap_or_default();
    let first_http = cluster.edges().next().map(|e| e.node.http.to_string()).unwrap_or_default();
    println!("\nthe admin token (also in {}; keep it secret):", kv_deploy::launch::token_file(&data_dir).display());
    println!("  {}", cluster.admin_token);
    println!("\nclient endpoints are the edges' grpc addresses, or their REST base URLs; try:");
    println!("  export KV_ENDPOINT={first}");
    println!("  export KV_TOKEN=$(cat {})", kv_deploy::launch::token_file(&data_dir).display());
    let ca = kv_deploy::launch::tls_dir(&data_dir).join("ca.pem");
    if topology.tls {
        println!("  export KV_CA={}   # every link is mutual TLS; tools trust this CA", ca.display());
    }
    println!("  cargo run --release -p kv-client --bin kv -- namespace create demo");
    println!("  cargo run --release -p kv-client --bin kv -- token create --ns <id> --read --write   # a scoped token");
    println!("  export CLOUDFLARE_API_BASE_URL={scheme}://{first_http}/client/v4   # for wrangler and the SDKs");
    if topology.tls {
        println!(
            "  export NODE_EXTRA_CA_CERTS=$KV_CA SSL_CERT_FILE=$KV_CA   # wrangler (Node) and Python trust the CA"
        );
    }
    println!("  export CLOUDFLARE_API_TOKEN=$KV_TOKEN");
    println!(
        "  kv-bench run --cluster {} --workload b --keys 10000 --load   # benchmarks find every edge in {}",
        data_dir.display(),
        kv_deploy::reach::reach_file(&data_dir).display()
    );
    println!("\nrunning; Ctrl-C stops every process.");
    kv_common::serve::shutdown_signal().await;
    cluster.stop();
    println!("stopped.");
    Ok(())
}
