//! A simulated network link: a loopback TCP proxy that delays every byte by a one-way
//! delay in each direction (so a round trip costs twice that), and can be cut.
//!
//! `tc netem` is not available here, so inter-tier latency is injected in software. The
//! proxy runs on its own OS threads and waits with `std::thread::sleep`, which is precise
//! to tens of microseconds; tokio's timer rounds every wait up to the next millisecond
//! tick, which would add about a millisecond to each crossing of a 1 ms link.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes read per step; each chunk is delivered `delay` after it was read.
const CHUNK: usize = 64 << 10;

/// How long the proxy waits to reach the target before dropping the inbound connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One proxy from `listen` to a target.
pub struct DelayLink {
    pub listen: SocketAddr,
    pub target: SocketAddr,
    pub delay: Duration,
    state: Arc<LinkState>,
}

/// What the proxy threads share.
#[derive(Default)]
struct LinkState {
    cut: AtomicBool,
    closed: AtomicBool,
    next_id: AtomicU64,
    /// Both sockets of every open connection, so a cut can close them.
    open: Mutex<HashMap<u64, [TcpStream; 2]>>,
}

impl LinkState {
    fn close_all(&self) {
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(|p| p.into_inner()));
        for s in open.values().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl DelayLink {
    /// Starts proxying a fresh loopback port to `target` with `delay` each way.
    pub fn start(target: SocketAddr, delay: Duration) -> std::io::Result<DelayLink> {
        DelayLink::start_on(([127, 0, 0, 1], 0).into(), target, delay)
    }

    /// Proxies `bind` (port 0: a fresh one) to `target`. Its threads stay in the network
    /// namespace of the thread that starts it.
    pub fn start_on(bind: SocketAddr, target: SocketAddr, delay: Duration) -> std::io::Result<DelayLink> {
        let listener = TcpListener::bind(bind)?;
        let listen = listener.local_addr()?;
        let state = Arc::new(LinkState::default());
        let s = state.clone();
        std::thread::Builder::new()
            .name(format!("link-{}", listen.port()))
            .spawn(move || accept_loop(listener, target, delay, s))?;
        Ok(DelayLink { listen, target, delay, state })
    }

    /// Drops every open connection and refuses new ones, as a network partition would.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.close_all();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for DelayLink {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the accept loop so it sees `closed` and ends.
        let _ = TcpStream::connect_timeout(&self.listen, CONNECT_TIMEOUT);
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, delay: Duration, state: Arc<LinkState>) {
    for inbound in listener.incoming() {
        if state.closed.load(Ordering::SeqCst) {
            return;
        }
        let Ok(inbound) = inbound else { continue };
        if state.cut.load(Ordering::SeqCst) {
            continue;
        }
        let state = state.clone();
        let _ =
            std::thread::Builder::new().name("link-conn".into()).spawn(move || proxy(inbound, target, delay, &state));
    }
}

/// Carries one connection both ways until either side closes or the link is cut.
fn proxy(inbound: TcpStream, target: SocketAddr, delay: Duration, state: &LinkState) {
    let Ok(outbound) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else { return };
    let (Ok(in2), Ok(out2), Ok(in3), Ok(out3)) =
        (inbound.try_clone(), outbound.try_clone(), inbound.try_clone(), outbound.try_clone())
    else {
        return;
    };
    for s in [&inbound, &outbound] {
        let _ = s.set_nodelay(true);
    }
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    state.open.lock().unwrap_or_else(|p| p.into_inner()).insert(id, [in3, out3]);
    if state.cut.load(Ordering::SeqCst) {
        state.close_all();
    }
    std::thread::scope(|s| {
        s.spawn(move || pump(inbound, out2, delay));
        s.spawn(move || pump(outbound, in2, delay));
    });
    state.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
}

/// Copies one direction, each chunk released `delay` after it arrived, in order.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    if delay.is_zero() {
        // No delay to keep: copy as it comes, without a second thread to hand each chunk to.
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
        return;
    }
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::scope(|s| {
        s.spawn(move || {
            for (due, bytes) in rx {
                let wait = due.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                if to.write_all(&bytes).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        drop(tx);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_each_direction_and_can_be_cut() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut s in echo.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut b = [0u8; 16];
                    while let Ok(n) = s.read(&mut b) {
                        if n == 0 || s.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let link = DelayLink::start(target, Duration::from_millis(40)).unwrap();
        let mut s = TcpStream::connect(link.listen).unwrap();
        let started = Instant::now();
        s.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        let rtt = started.elapsed();
        assert!(rtt >= Duration::from_millis(80), "a round trip costs two one-way delays, took {rtt:?}");

        link.cut();
        let mut rest = Vec::new();
        let n = s.read_to_end(&mut rest).unwrap_or(0);
        assert_eq!(n, 0, "a cut link closes open connections");
        let mut refused = TcpStream::connect(link.listen).unwrap();
        refused.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(refused.read(&mut b).unwrap_or(0), 0, "a cut link refuses new connections");

        link.restore();
        let mut again = TcpStream::connect(link.listen).unwrap();
        again.write_all(b"pong").unwrap();
        again.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"pong", "a restored link carries traffic again");
    }
}
