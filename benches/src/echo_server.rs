//! `echo-server --listen HOST:PORT`: the bare gRPC server `bench-peers` measures the
//! cluster's reads against (see `kv_benches::peers::echo`).

use clap::Parser;

#[derive(Parser)]
#[command(about = "A bare tonic unary echo server, the floor of one gRPC call")]
struct Args {
    #[arg(long)]
    listen: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kv_benches::peers::echo::serve(Args::parse().listen).await
}
