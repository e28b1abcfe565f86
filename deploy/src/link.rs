//! A simulated network link: a loopback TCP proxy that delays every byte by a one-way
//! delay in each direction (so a round trip costs twice that), and can be cut.
//!
//! `tc netem` is not available here, so inter-tier latency is injected in software.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Bytes read per step; each chunk is delivered `delay` after it was read.
const CHUNK: usize = 64 << 10;

/// One proxy from `listen` to a target.
pub struct DelayLink {
    pub listen: SocketAddr,
    pub target: SocketAddr,
    pub delay: Duration,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl DelayLink {
    /// Starts proxying a fresh loopback port to `target` with `delay` each way.
    pub async fn start(target: SocketAddr, delay: Duration) -> std::io::Result<DelayLink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let listen = listener.local_addr()?;
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, target, delay, cut_rx));
        Ok(DelayLink { listen, target, delay, cut, task })
    }

    /// Drops every open connection and refuses new ones, as a network partition would.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for DelayLink {
    fn drop(&mut self) {
        self.cut.send_replace(true);
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, delay: Duration, cut: watch::Receiver<bool>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else { continue };
        if *cut.borrow() {
            continue;
        }
        let cut = cut.clone();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else { return };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            let mut cut_wait = cut.clone();
            tokio::select! {
                _ = async { tokio::join!(pump(ir, ow, delay), pump(or, iw, delay)) } => {}
                _ = cut_wait.wait_for(|c| *c) => {}
            }
        });
    }
}

/// Copies one direction, each chunk released `delay` after it arrived, in order.
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delays_each_direction_and_can_be_cut() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 16];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let link = DelayLink::start(target, Duration::from_millis(40)).await.unwrap();
        let mut s = TcpStream::connect(link.listen).await.unwrap();
        let started = std::time::Instant::now();
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        assert!(started.elapsed() >= Duration::from_millis(80), "a round trip costs two one-way delays");

        link.cut();
        let mut rest = Vec::new();
        let n = s.read_to_end(&mut rest).await.unwrap_or(0);
        assert_eq!(n, 0, "a cut link closes open connections");
    }
}
