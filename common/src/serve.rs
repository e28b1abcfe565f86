//! What every server process repeats: the `/metrics` + `/health` HTTP endpoint, gRPC
//! listeners, health and reflection, and a graceful drain on SIGINT/SIGTERM.
//!
//! A drain (`Drain`, `serve_draining`): the node's health turns to "draining" at once, its
//! servers take no new connections, the streams it serves (the change feed, pushes) end so
//! their subscribers move on to another node, and the calls in flight are answered, within
//! a grace period no shorter than the node's call budget. So a rolling restart under load
//! cuts no call short.

use crate::tls::PeerStream;
use axum::{http::StatusCode, routing::get, Router};
use futures::StreamExt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Renders the Prometheus text exposition.
pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;
/// Reports whether the node can serve, with a short reason.
pub type CheckHealth = Arc<dyn Fn() -> (bool, String) + Send + Sync>;

/// Whether the node is draining; cheap to clone, and every clone sees the drain start.
#[derive(Clone)]
pub struct Drain(watch::Receiver<bool>);

impl Drain {
    /// A drain that starts when the returned sender says so (`serve_draining` does).
    pub fn new() -> (watch::Sender<bool>, Drain) {
        let (tx, rx) = watch::channel(false);
        (tx, Drain(rx))
    }

    pub fn started(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the drain has started (never, if its sender is gone without starting it).
    pub async fn wait(mut self) {
        if self.0.wait_for(|d| *d).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// `health`, but "draining" (unhealthy) once the drain started.
    pub fn health(&self, health: CheckHealth) -> CheckHealth {
        let drain = self.clone();
        Arc::new(move || if drain.started() { (false, "draining".into()) } else { health() })
    }
}

/// Serves `/metrics` and `/health` (200 when healthy, 503 otherwise) until `drain` starts
/// and the calls in flight are answered.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    render: RenderMetrics,
    health: CheckHealth,
    drain: Drain,
) -> anyhow::Result<()> {
    serve_http_with(listener, render, health, Router::new(), drain).await
}

/// `serve_http`, with `routes` served beside `/metrics` and `/health` (an edge's REST API),
/// over TLS when the node runs with it (HTTP/1.1 and HTTP/2 either way).
pub async fn serve_http_with(
    listener: tokio::net::TcpListener,
    render: RenderMetrics,
    health: CheckHealth,
    routes: Router,
    drain: Drain,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    let health = drain.health(health);
    let app = routes.route("/metrics", get(move || async move { render() })).route(
        "/health",
        get(move || async move {
            let (ok, text) = health();
            (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, text)
        }),
    );
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut conns = incoming(listener, drain.clone());
    // Until the drain starts; the connections then finish what they serve.
    let drained = drain.wait();
    tokio::pin!(drained);
    loop {
        let conn = tokio::select! {
            () = &mut drained => break,
            conn = conns.next() => match conn {
                Some(Ok(conn)) => conn,
                Some(Err(_)) => continue,
                None => break,
            },
        };
        let (app, watcher) = (app.clone(), graceful.watcher());
        tokio::spawn(async move {
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // A client that never finishes its request head is cut off, so a drain is not
            // held up by it (hyper has no such timeout without a timer).
            builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
            let served = builder.serve_connection(TokioIo::new(conn), TowerToHyperService::new(app));
            if let Err(e) = watcher.watch(served).await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// Runs a node's servers (built to stop taking calls once `drain` starts) until they fail,
/// or until `shutdown` resolves; then runs `prepare` (a central leader hands its leadership
/// over while it still serves), starts the drain and gives the calls in flight up to `grace`
/// to be answered.
pub async fn serve_draining(
    servers: impl Future<Output = anyhow::Result<()>>,
    shutdown: impl Future<Output = ()>,
    prepare: impl Future<Output = ()>,
    drain: watch::Sender<bool>,
    grace: Duration,
) -> anyhow::Result<()> {
    tokio::pin!(servers);
    tokio::select! {
        served = &mut servers => return served,
        () = shutdown => {}
    }
    tokio::select! {
        served = &mut servers => return served,
        () = prepare => {}
    }
    tracing::info!(grace_ms = grace.as_millis() as u64, "draining: no new calls; answering the calls in flight");
    drain.send_replace(true);
    match tokio::time::timeout(grace, servers).await {
        Ok(served) => served,
        Err(_) => {
            tracing::warn!("calls were still in flight when the grace period ended");
            Ok(())
        }
    }
}

/// The connections a server accepts on `listener` (with Nagle's algorithm off, over TLS when
/// this node runs with it: `tls::node_tls`) until `drain` starts: then the listener is
/// closed, so a new client is refused at once (and tries another node) instead of waiting
/// on a node that will not serve it.
///
/// `Server::tcp_nodelay` applies only to listeners tonic binds itself; without this, a
/// small answer can wait for the client's delayed ACK (about 40 ms on Linux).
pub fn incoming(listener: tokio::net::TcpListener, drain: Drain) -> Incoming {
    let (conns, rx) = tokio::sync::mpsc::channel(1);
    let incoming = Incoming(Arc::new(std::sync::Mutex::new(Some(rx))));
    let taken = incoming.clone();
    let tls = crate::tls::node_tls().cloned();
    // Handshakes run beside the accept loop (a slow peer holds up no one): this many
    // connections at once may wait for or be in a handshake, this many in one at once, and
    // each address gets its own queue (`PerPeer`), so no single one holds up the others.
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING));
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let per_peer = PerPeer::default();
    tokio::spawn(async move {
        let drained = drain.clone().wait();
        tokio::pin!(drained);
        // Once the drain starts, a connection accepted but not yet taken by the server is
        // closed (the server takes none from now on), so its client goes elsewhere at once.
        let _close = CloseOnDrop(taken);
        loop {
            // Plaintext: one slot, taken before accepting, so a connection is accepted only
            // when the server is ready for it and none waits unserved when the drain starts.
            // TLS: room among the pending handshakes; the handshaken connection then waits
            // for the slot.
            let room = tokio::select! {
                // Returning drops the listener: new clients are refused from now on.
                () = &mut drained => return,
                room = Room::take(&conns, &pending, tls.as_deref()) => match room {
                    Some(room) => room,
                    None => return,
                },
            };
            let (conn, from) = tokio::select! {
                () = &mut drained => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, then take calls again.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = conn.set_nodelay(true);
            match room {
                Room::Slot(slot) => {
                    slot.send(Ok(PeerStream::Plain(conn)));
                }
                Room::Handshake(permit, config) => {
                    // One address cannot fill the queue (and so hold up the listener).
                    let Some(queue) = per_peer.join(from.ip()) else {
                        tracing::debug!(peer = %from.ip(), "too many handshakes from one address: connection dropped");
                        continue;
                    };
                    let (conns, drain, handshakes) = (conns.clone(), drain.clone(), handshakes.clone());
                    tokio::spawn(async move {
                        let shake = async {
                            let _turn = queue.turn().await?;
                            let _slot = handshakes.acquire_owned().await.ok()?;
                            PeerStream::accept(conn, config, HANDSHAKE_TIMEOUT).await.ok()
                        };
                        let shaken = tokio::time::timeout(HANDSHAKE_TIMEOUT, shake).await.ok().flatten();
                        drop((permit, queue));
                        // Not served once the drain has started: the client goes elsewhere.
                        if let Some(conn) = shaken.filter(|_| !drain.started()) {
                            let _ = conns.send(Ok(conn)).await;
                        }
                    });
                }
            }
        }
    });
    incoming
}

/// The connections a listener accepted, for the server to take; see `incoming`.
#[derive(Clone)]
pub struct Incoming(Arc<std::sync::Mutex<Option<Accepted>>>);

/// Where accepted connections wait for the server.
type Accepted = tokio::sync::mpsc::Receiver<Result<PeerStream, std::io::Error>>;

impl futures::Stream for Incoming {
    type Item = Result<PeerStream, std::io::Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            Some(rx) => rx.poll_recv(cx),
            None => std::task::Poll::Ready(None),
        }
    }
}

/// Drops the accepted connections still waiting to be taken (and ends the stream) when
/// the accept loop ends.
struct CloseOnDrop(Incoming);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0 .0.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// What lets `incoming` accept one more connection.
enum Room {
    Slot(tokio::sync::mpsc::OwnedPermit<Result<PeerStream, std::io::Error>>),
    /// A place among the pending handshakes, and the server config current when it was taken.
    Handshake(tokio::sync::OwnedSemaphorePermit, Arc<rustls::ServerConfig>),
}

impl Room {
    /// Waits for room; `None` once the server is gone.
    async fn take(
        conns: &tokio::sync::mpsc::Sender<Result<PeerStream, std::io::Error>>,
        pending: &Arc<tokio::sync::Semaphore>,
        tls: Option<&crate::tls::Tls>,
    ) -> Option<Room> {
        match tls {
            Some(tls) => {
                let permit = pending.clone().acquire_owned().await.ok()?;
                Some(Room::Handshake(permit, tls.server_config()))
            }
            None => conns.clone().reserve_owned().await.ok().map(Room::Slot),
        }
    }
}

/// How long an HTTP/1 client may take to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections waiting for or in a TLS handshake, at most, per listener.
const MAX_PENDING: usize = 4096;
/// Of those, from one address.
const MAX_PENDING_PER_PEER: usize = 512;
/// TLS handshakes in progress at once, at most, per listener.
const MAX_HANDSHAKES: usize = 256;
/// Of those, from one address.
const MAX_HANDSHAKES_PER_PEER: usize = 32;
/// How long a peer may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Handshake queues per peer address.
#[derive(Clone, Default)]
struct PerPeer(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, Queue>>>);

/// One address's queue: its handshake turns, and how many of its connections wait or shake.
struct Queue {
    turns: Arc<tokio::sync::Semaphore>,
    members: usize,
}

/// A connection's place in its address's queue, given back when dropped.
struct PeerSlot(PerPeer, std::net::IpAddr, Arc<tokio::sync::Semaphore>);

impl PerPeer {
    /// A place in `ip`'s queue; `None` when it is full.
    fn join(&self, ip: std::net::IpAddr) -> Option<PeerSlot> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let q = map.entry(ip).or_insert_with(|| Queue {
            turns: Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES_PER_PEER)),
            members: 0,
        });
        if q.members >= MAX_PENDING_PER_PEER {
            return None;
        }
        q.members += 1;
        Some(PeerSlot(self.clone(), ip, q.turns.clone()))
    }
}

impl PeerSlot {
    /// Waits for this address's turn to shake hands.
    async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.2.acquire().await.ok()
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = map.get_mut(&self.1) {
            q.members -= 1;
            if q.members == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// gRPC health and reflection services for a server exposing `descriptors`.
pub fn health_and_reflection(
    descriptors: &'static [u8],
) -> Result<
    (
        tonic_health::server::HealthReporter,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
        tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    ),
    tonic_reflection::server::Error,
> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(descriptors)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    Ok((reporter, health, reflection))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_fills_only_its_own_handshake_queue() {
        let peers = PerPeer::default();
        let (a, b): (std::net::IpAddr, std::net::IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let mut held: Vec<PeerSlot> = (0..MAX_PENDING_PER_PEER).map(|_| peers.join(a).unwrap()).collect();
        assert!(peers.join(a).is_none(), "a's queue is full");
        assert!(peers.join(b).is_some(), "b has its own");
        held.pop();
        assert!(peers.join(a).is_some(), "a place given back is taken again");
        drop(held);
        assert!(peers.0.lock().unwrap().is_empty(), "queues of addresses with no connection are forgotten");
    }
}
