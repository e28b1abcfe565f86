//! The bare gRPC call: a tonic server whose one unary method answers a value of the size
//! asked for, sliced from one buffer (as the edge answers from its cache without copying).
//! What a hot read costs beyond it is the cluster's own work.

use anyhow::Context;
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::Path;
use tokio::process::Child;
use tonic::{Request, Response, Status};

/// The echo service's wire types.
pub mod pb {
    tonic::include_proto!("kv.bench.v1");
}

/// Largest value the echo answers with.
pub const MAX_REPLY: usize = 1 << 20;

struct Echo {
    value: Bytes,
}

#[tonic::async_trait]
impl pb::echo_server::Echo for Echo {
    async fn echo(&self, req: Request<pb::EchoRequest>) -> Result<Response<pb::EchoResponse>, Status> {
        let n = req.get_ref().reply_bytes as usize;
        if n > self.value.len() {
            return Err(Status::invalid_argument(format!("at most {MAX_REPLY} bytes")));
        }
        Ok(Response::new(pb::EchoResponse { value: self.value.slice(..n) }))
    }
}

/// Serves the echo on `addr` until the process ends.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let echo = Echo { value: Bytes::from(vec![b'e'; MAX_REPLY]) };
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(pb::echo_server::EchoServer::new(echo))
        .serve(addr)
        .await
        .with_context(|| format!("serving the echo on {addr}"))
}

/// One call of a closed loop to the echo: a key-sized `payload` in, `reply_bytes` back, as
/// a hot read of that key is answered.
pub async fn call(
    mut client: pb::echo_client::EchoClient<tonic::transport::Channel>,
    payload: String,
    reply_bytes: u32,
) -> Result<&'static str, String> {
    let req = pb::EchoRequest { payload: payload.into_bytes().into(), reply_bytes };
    client.echo(req).await.map(|_| "ok").map_err(|e| e.to_string())
}

/// An `echo-server` process (the binary beside this one) on a free port.
pub struct EchoServer {
    pub addr: SocketAddr,
    _child: Child,
}

impl EchoServer {
    pub async fn start(dir: &Path) -> anyhow::Result<EchoServer> {
        let addr = SocketAddr::from(([127, 0, 0, 1], kv_deploy::ports::free_port()?));
        let bin = kv_deploy::launch::bin_dir()?.join("echo-server");
        let child = super::spawn(&bin, &["--listen".into(), addr.to_string()], &dir.join("echo.log"))?;
        let url = format!("http://{addr}");
        kv_tests::eventually(std::time::Duration::from_secs(10), "the echo server", || async {
            let mut c = pb::echo_client::EchoClient::connect(url.clone()).await.ok()?;
            c.echo(pb::EchoRequest::default()).await.ok()
        })
        .await?;
        Ok(EchoServer { addr, _child: child })
    }
}
