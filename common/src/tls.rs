//! TLS on every link (rustls, ring).
//!
//! A node that is given `[tls]` files serves only TLS on every listener (gRPC and HTTP) and
//! calls every other node over mutual TLS. Its certificate is signed by the cluster CA and
//! names its role (`urn:kv:role:central`, `:regional` or `:edge`, a URI SAN), so a node
//! refuses a peer the CA did not sign, and an API checks that the role of the peer fits
//! the call (`Peer::admit`): Raft only between central nodes, the store API from the tier
//! below. Clients (the CLI, SDKs, wrangler) need no certificate: tokens decide what they may.
//!
//! The files are read again on SIGHUP (`reload_on_sighup`): connections made from then on
//! use the new certificate; open ones keep theirs, so a reload drops no link.

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

/// The `[tls]` section of a node's config: all three files, or none (plaintext).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM: the cluster CA certificates (several while the CA is being replaced).
    pub ca_file: Option<PathBuf>,
    /// PEM: this node's certificate chain, signed by the CA, naming the node's role.
    pub cert_file: Option<PathBuf>,
    /// PEM: the certificate's private key.
    pub key_file: Option<PathBuf>,
}

/// Flags (and `KV_TLS_*` variables) that override the `[tls]` section.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    #[arg(long = "tls-ca", env = "KV_TLS_CA")]
    pub ca_file: Option<PathBuf>,
    #[arg(long = "tls-cert", env = "KV_TLS_CERT")]
    pub cert_file: Option<PathBuf>,
    #[arg(long = "tls-key", env = "KV_TLS_KEY")]
    pub key_file: Option<PathBuf>,
}

impl TlsArgs {
    pub fn apply(self, files: &mut TlsFiles) {
        files.ca_file = self.ca_file.or(files.ca_file.take());
        files.cert_file = self.cert_file.or(files.cert_file.take());
        files.key_file = self.key_file.or(files.key_file.take());
    }
}

impl TlsFiles {
    /// Whether TLS is configured; an error when only some of the files are named.
    pub fn enabled(&self) -> anyhow::Result<bool> {
        match (&self.ca_file, &self.cert_file, &self.key_file) {
            (None, None, None) => Ok(false),
            (Some(_), Some(_), Some(_)) => Ok(true),
            _ => anyhow::bail!("[tls] needs all of ca_file, cert_file and key_file, or none of them"),
        }
    }
}

/// What a node is; its certificate says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Central,
    Regional,
    Edge,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Central, Role::Regional, Role::Edge];

    pub fn name(self) -> &'static str {
        match self {
            Role::Central => "central",
            Role::Regional => "regional",
            Role::Edge => "edge",
        }
    }

    /// The URI SAN that gives a certificate this role.
    pub fn uri(self) -> String {
        format!("urn:kv:role:{}", self.name())
    }

    /// The role a certificate (DER) names, if it names exactly one.
    pub fn of_certificate(der: &[u8]) -> Option<Role> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        let mut roles = san.value.general_names.iter().filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => Role::ALL.into_iter().find(|r| r.uri() == *uri),
            _ => None,
        });
        let role = roles.next()?;
        roles.next().is_none().then_some(role)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Who is on the other end of a served connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Whether the connection is TLS (it is on every listener of a node with `[tls]`).
    pub tls: bool,
    /// The role its CA-signed certificate names; none without a client certificate.
    pub role: Option<Role>,
}

impl Peer {
    /// Admits a call to an API for operators' tools (no certificate: tokens decide) and
    /// nodes of `roles`; a node certificate of another role is refused.
    pub fn admit_tools_or(self, roles: &[Role]) -> crate::KvResult<()> {
        match self.role {
            Some(r) if self.tls && !roles.contains(&r) => {
                Err(crate::KvError::PermissionDenied(format!("a {r} node's certificate may not call this API")))
            }
            _ => Ok(()),
        }
    }

    /// Admits a call to an API that only nodes of `roles` may make. Over plaintext (a node
    /// without TLS) there is no certificate to check, and tokens alone decide.
    pub fn admit(self, roles: &[Role]) -> crate::KvResult<()> {
        use crate::KvError;
        if !self.tls || roles.is_empty() {
            return Ok(());
        }
        match self.role {
            Some(r) if roles.contains(&r) => Ok(()),
            Some(r) => Err(KvError::PermissionDenied(format!("a {r} node's certificate may not call this API"))),
            None => Err(KvError::Unauthenticated(
                "this API is the nodes' own: present a node certificate signed by the cluster CA".into(),
            )),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA certificates in `path`, as a trust store.
pub fn trust_store(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading CA certificates from {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    for c in certs {
        roots.add(c).with_context(|| format!("a CA certificate in {} is not usable", path.display()))?;
    }
    Ok(roots)
}

/// A client config for tools: trusts the CA certificates in `ca`, presents no certificate.
pub fn tool_config(ca: &Path) -> anyhow::Result<Arc<ClientConfig>> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(trust_store(ca)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A node's TLS configurations, as last read from its files.
struct Loaded {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl Loaded {
    fn read(files: &TlsFiles, role: Role) -> anyhow::Result<Loaded> {
        let (Some(ca), Some(cert), Some(key)) = (&files.ca_file, &files.cert_file, &files.key_file) else {
            anyhow::bail!("[tls] needs all of ca_file, cert_file and key_file");
        };
        let roots = Arc::new(trust_store(ca)?);
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("reading the certificate from {}", cert.display()))?;
        let leaf = chain.first().with_context(|| format!("{} holds no certificate", cert.display()))?;
        let named = Role::of_certificate(leaf);
        anyhow::ensure!(
            named == Some(role),
            "{} names the role {}, but this is a {role} node (the certificate needs the URI SAN {})",
            cert.display(),
            named.map_or("none", Role::name),
            role.uri()
        );
        let key =
            PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading the key from {}", key.display()))?;

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .context("building the client certificate verifier")?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .context("the certificate does not match its key")?;
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("the certificate does not match its key")?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Loaded { server: Arc::new(server), client: Arc::new(client) })
    }
}

/// A node's TLS: what it serves with and calls with, reloadable.
pub struct Tls {
    files: TlsFiles,
    role: Role,
    current: RwLock<Loaded>,
}

impl Tls {
    /// Reads `files` (which must name this node's `role`); `None` when TLS is off.
    pub fn load(files: &TlsFiles, role: Role) -> anyhow::Result<Option<Arc<Tls>>> {
        if !files.enabled()? {
            return Ok(None);
        }
        let current = RwLock::new(Loaded::read(files, role)?);
        Ok(Some(Arc::new(Tls { files: files.clone(), role, current })))
    }

    /// Reads the files again; on an error the node keeps what it had.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = Loaded::read(&self.files, self.role)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).server.clone()
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).client.clone()
    }

    /// Reloads on every SIGHUP, for as long as the process runs.
    pub fn reload_on_sighup(self: Arc<Self>) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => return tracing::error!(error = %e, "cannot listen for SIGHUP: certificates will not reload"),
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match self.reload() {
                    Ok(()) => tracing::info!("TLS certificates reloaded"),
                    Err(e) => tracing::error!(error = format!("{e:#}"), "TLS reload failed; keeping the old ones"),
                }
            }
        });
    }
}

static NODE_TLS: OnceLock<Arc<Tls>> = OnceLock::new();

/// Sets this node's TLS up from its `[tls]` files (nothing when there are none) and reloads
/// them on SIGHUP; returns whether the node runs with TLS.
pub fn start_node_tls(files: &TlsFiles, role: Role) -> anyhow::Result<bool> {
    let Some(tls) = Tls::load(files, role)? else { return Ok(false) };
    tls.clone().reload_on_sighup();
    set_node_tls(tls);
    Ok(true)
}

/// Makes `tls` this process's: every channel it opens to another node uses it.
pub fn set_node_tls(tls: Arc<Tls>) {
    let _ = NODE_TLS.set(tls);
}

/// This process's TLS, when it runs with TLS.
pub fn node_tls() -> Option<&'static Arc<Tls>> {
    NODE_TLS.get()
}

/// Where a client config comes from at each connect: a node's current one (it changes on
/// reload), or a tool's fixed one.
#[derive(Clone)]
pub enum ClientSource {
    Node(Arc<Tls>),
    Fixed(Arc<ClientConfig>),
}

impl ClientSource {
    fn config(&self) -> Arc<ClientConfig> {
        match self {
            ClientSource::Node(tls) => tls.client_config(),
            ClientSource::Fixed(c) => c.clone(),
        }
    }
}

/// Opens a TLS connection for a gRPC channel (`Endpoint::connect_with_connector_lazy`): TCP
/// with Nagle off, then a handshake that checks the server's certificate against the
/// address's host, with the client config current at that moment. The endpoint's
/// `connect_timeout` bounds both. A node dialling another node also checks that the server's
/// certificate names one of the roles it expects there (the second field; none: any), so a
/// certificate of another role cannot stand in for the tier above.
#[derive(Clone)]
pub struct Connector(pub ClientSource, pub &'static [Role]);

type Connected = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = Connected;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Connected, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (config, expect) = (self.0.config(), self.1);
        Box::pin(async move {
            let host = uri.host().ok_or("the address has no host")?.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.to_owned())?;
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            if !expect.is_empty() {
                let role =
                    tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| Role::of_certificate(c));
                if !role.is_some_and(|r| expect.contains(&r)) {
                    let named = role.map_or("no role", Role::name);
                    return Err(format!("{host}:{port} presents a certificate of {named}, not of {expect:?}").into());
                }
            }
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// A connection a server accepted: plaintext, or TLS with what the peer's certificate says.
pub enum PeerStream {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>, Option<Role>),
}

impl PeerStream {
    /// Completes the server side of a handshake.
    pub async fn accept(
        tcp: tokio::net::TcpStream,
        config: Arc<ServerConfig>,
        timeout: Duration,
    ) -> std::io::Result<PeerStream> {
        let accepted = tokio::time::timeout(timeout, tokio_rustls::TlsAcceptor::from(config).accept(tcp))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let role =
            accepted.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| Role::of_certificate(c));
        Ok(PeerStream::Tls(Box::new(accepted), role))
    }

    pub fn peer(&self) -> Peer {
        match self {
            PeerStream::Plain(_) => Peer { tls: false, role: None },
            PeerStream::Tls(_, role) => Peer { tls: true, role: *role },
        }
    }
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer()
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            PeerStream::Plain($s) => {
                let $s = std::pin::Pin::new($s);
                $e
            }
            PeerStream::Tls($s, _) => {
                let $s = std::pin::Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl tokio::io::AsyncRead for PeerStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for PeerStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PeerStream::Plain(s) => s.is_write_vectored(),
            PeerStream::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_tls_sections_are_refused() {
        assert!(!TlsFiles::default().enabled().unwrap());
        let partial = TlsFiles { ca_file: Some("ca.pem".into()), ..Default::default() };
        assert!(partial.enabled().is_err());
    }

    #[test]
    fn a_call_from_the_wrong_role_or_without_a_certificate_is_refused() {
        let plain = Peer { tls: false, role: None };
        assert!(plain.admit(&[Role::Central]).is_ok(), "plaintext nodes rely on tokens alone");
        let central = Peer { tls: true, role: Some(Role::Central) };
        assert!(central.admit(&[Role::Central]).is_ok());
        let edge = Peer { tls: true, role: Some(Role::Edge) };
        assert_eq!(edge.admit(&[Role::Central]).unwrap_err().http_status(), 403);
        let anonymous = Peer { tls: true, role: None };
        assert_eq!(anonymous.admit(&[Role::Regional]).unwrap_err().http_status(), 401);
        assert!(anonymous.admit(&[]).is_ok(), "an API open to clients takes calls without a certificate");
    }
}
