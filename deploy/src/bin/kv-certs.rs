//! `kv-certs`: makes a cluster's certificates for machines of your own, as the local
//! launcher does for loopback: a CA, then one certificate per node naming its role and the
//! addresses its peers dial. (Any CA will do; see docs/deploy.md for the openssl way.)

use clap::{Parser, Subcommand, ValueEnum};
use kv_common::tls::Role;
use kv_deploy::pki::Ca;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "kv-certs", about = "Make a KV cluster's CA and node certificates")]
struct Args {
    /// Where the CA (`ca.pem`, `ca.key`) is kept and node certificates are written.
    #[arg(long, default_value = "tls")]
    dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Central,
    Regional,
    Edge,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Makes the CA, unless `--dir` has one already.
    Ca,
    /// Signs a certificate (`<name>.pem`, `<name>.key`) for one node.
    Node {
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The node's name (the certificate's common name and file names).
        #[arg(long)]
        name: String,
        /// An IP address or DNS name the node is dialled at; repeat for each.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ca = Ca::open_or_create(&args.dir)?;
    match args.cmd {
        Cmd::Ca => println!("CA: {}", ca.cert_file().display()),
        Cmd::Node { role, name, hosts } => {
            let role = match role {
                RoleArg::Central => Role::Central,
                RoleArg::Regional => Role::Regional,
                RoleArg::Edge => Role::Edge,
            };
            let files = ca.issue(role, &name, &hosts)?;
            print!("{}", kv_deploy::pki::tls_section(&files).trim_start());
        }
    }
    Ok(())
}
