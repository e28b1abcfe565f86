//! `kv`: the command line for a KV cluster, after `wrangler kv`.
//!
//! The endpoint (any edge node, over gRPC or REST) comes from `--endpoint` or `KV_ENDPOINT`.
//! Read in this order: this file (commands, output, exit codes), `endpoint`, then
//! `namespace`, `key`, `bulk`, `token` and `admin`.
//!
//! Exit codes, for scripts: 0 done; 1 the cluster refused the request (its message on
//! stderr); 2 a usage error or an input file that cannot be used; 3 the cluster could not be
//! reached or did not answer in time; 4 a bulk command ran to the end but some items failed
//! (listed in its output).

mod admin;
mod bulk;
mod endpoint;
mod key;
mod namespace;
mod token;

use clap::{Parser, Subcommand, ValueEnum};
use endpoint::Endpoint;
use tonic::Code;

#[derive(Debug, Parser)]
#[command(name = "kv", about = "Use a KV cluster from the command line")]
struct Cli {
    /// An edge node's gRPC address, or its REST API's base URL (`http://host:port/client/v4`).
    #[arg(long, env = "KV_ENDPOINT", default_value = "127.0.0.1:7501", global = true)]
    endpoint: String,
    /// The account, over REST (default: the first the edge lists).
    #[arg(long, env = "KV_ACCOUNT_ID", global = true)]
    account_id: Option<String>,
    /// The cluster CA's certificate (PEM): connect over TLS and trust it.
    #[arg(long, env = "KV_CA", global = true)]
    ca: Option<std::path::PathBuf>,
    /// A bearer token, sent with every call.
    #[arg(long, env = "KV_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// `json` prints machine-readable output.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, get, rename and delete namespaces.
    #[command(subcommand)]
    Namespace(namespace::Cmd),
    /// Put, get, list and delete keys.
    #[command(subcommand)]
    Key(key::Cmd),
    /// Put, get and delete many keys from a JSON file, as `wrangler kv bulk` does.
    #[command(subcommand)]
    Bulk(bulk::Cmd),
    /// Create, list and revoke bearer tokens (admin right).
    #[command(subcommand)]
    Token(token::Cmd),
    /// The central Raft group: members, learners, voters, leadership, snapshots.
    Admin(admin::Admin),
}

/// Why a command failed, which decides its exit code.
pub enum Fail {
    /// The cluster refused the request.
    Refused(Box<tonic::Status>),
    /// No answer: the cluster could not be reached, or not in time.
    Unreachable(String),
    /// The command line or an input file cannot be used.
    Input(anyhow::Error),
    /// A bulk command finished with this many items unsuccessful.
    Partial(usize),
}

impl From<tonic::Status> for Fail {
    fn from(s: tonic::Status) -> Fail {
        match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => Fail::Unreachable(s.message().to_owned()),
            _ => Fail::Refused(Box::new(s)),
        }
    }
}

impl From<anyhow::Error> for Fail {
    fn from(e: anyhow::Error) -> Fail {
        Fail::Input(e)
    }
}

impl Fail {
    fn exit_code(&self) -> i32 {
        match self {
            Fail::Refused(_) => 1,
            Fail::Input(_) => 2,
            Fail::Unreachable(_) => 3,
            Fail::Partial(_) => 4,
        }
    }

    fn message(&self) -> String {
        match self {
            Fail::Refused(s) => s.message().to_owned(),
            Fail::Unreachable(why) => format!("the cluster did not answer: {why}"),
            Fail::Input(e) => format!("{e:#}"),
            Fail::Partial(n) => format!("{n} items were not written"),
        }
    }
}

pub type Done = Result<(), Fail>;

/// Prints `json` with `--output json`, else `text`.
pub fn say(output: Output, json: serde_json::Value, text: impl FnOnce() -> String) {
    match output {
        Output::Json => println!("{json}"),
        Output::Text => println!("{}", text()),
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(f) = run(cli).await {
        eprintln!("error: {}", f.message());
        std::process::exit(f.exit_code());
    }
}

async fn run(cli: Cli) -> Done {
    let (token, output) = (cli.token.as_deref(), cli.output);
    // Every command but `admin` talks to an edge.
    let edge = || async {
        Endpoint::connect(&cli.endpoint, cli.account_id.as_deref(), token, cli.ca.as_deref())
            .await
            .map_err(|e| Fail::Unreachable(format!("{}: {e:#}", cli.endpoint)))
    };
    match cli.command {
        Command::Namespace(cmd) => namespace::run(&edge().await?, cmd, output).await,
        Command::Key(cmd) => key::run(&edge().await?, cmd, output).await,
        Command::Bulk(cmd) => bulk::run(&edge().await?, cmd, output).await,
        Command::Token(cmd) => token::run(&edge().await?, cmd, output).await,
        Command::Admin(admin) => admin::run(admin, token, cli.ca.as_deref(), output).await,
    }
}
