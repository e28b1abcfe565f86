//! A cluster's certificates: a CA, and a certificate per node signed by it that names the
//! node's hosts (the addresses its peers dial) and its role (`kv_common::tls::Role`).
//! The local launcher makes them for every run; `kv-certs` makes them for real machines.

use anyhow::Context;
use kv_common::tls::{Role, TlsFiles};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A cluster CA that can sign node certificates; its key stays in its directory.
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
    dir: PathBuf,
}

impl Ca {
    /// The CA kept in `dir` (`ca.pem`, `ca.key`), or a new one written there.
    pub fn open_or_create(dir: &Path) -> anyhow::Result<Ca> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        if key_path.exists() {
            let key = KeyPair::from_pem(&read(&key_path)?).context("parsing the CA key")?;
            let params =
                CertificateParams::from_ca_cert_pem(&read(&cert_path)?).context("parsing the CA certificate")?;
            // The same name and key as the kept certificate: what it signs, the kept one verifies.
            let cert = params.self_signed(&key)?;
            return Ok(Ca { cert, key, dir: dir.to_owned() });
        }
        std::fs::create_dir_all(dir)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("kv cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write_secret(&key_path, &key.serialize_pem())?;
        std::fs::write(&cert_path, cert.pem())?;
        Ok(Ca { cert, key, dir: dir.to_owned() })
    }

    /// The CA certificate's file: what every node and client trusts.
    pub fn cert_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Signs a new key for node `name` of `role`, reachable at `hosts` (IP addresses or DNS
    /// names), and writes `<name>.pem` and `<name>.key` beside the CA.
    pub fn issue(&self, role: Role, name_: &str, hosts: &[String]) -> anyhow::Result<TlsFiles> {
        let mut params =
            CertificateParams::new(hosts.to_vec()).context("a host is neither an IP address nor a name")?;
        params.distinguished_name = name(name_);
        params.subject_alt_names.push(SanType::URI(role.uri().try_into()?));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let (cert_file, key_file) = (self.dir.join(format!("{name_}.pem")), self.dir.join(format!("{name_}.key")));
        std::fs::write(&cert_file, cert.pem())?;
        write_secret(&key_file, &key.serialize_pem())?;
        Ok(TlsFiles { ca_file: Some(self.cert_file()), cert_file: Some(cert_file), key_file: Some(key_file) })
    }
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "kv");
    dn.push(DnType::CommonName, common);
    dn
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes `text` to `path`, readable by its owner only (replacing what was there).
fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(f.sync_all()?)
}

/// The TOML `[tls]` section naming `files`.
pub fn tls_section(files: &TlsFiles) -> String {
    let show = |p: &Option<PathBuf>| p.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
    format!(
        "\n[tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        show(&files.ca_file),
        show(&files.cert_file),
        show(&files.key_file)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use kv_common::tls::{tool_config, PeerStream, Tls};
    use std::sync::Arc;

    #[test]
    fn a_certificate_loads_only_as_the_role_it_names() {
        let dir = tempfile_dir();
        let ca = Ca::open_or_create(&dir).unwrap();
        let files = ca.issue(Role::Regional, "regional-eu", &["127.0.0.1".into(), "localhost".into()]).unwrap();
        assert!(Tls::load(&files, Role::Regional).unwrap().is_some());
        let wrong = Tls::load(&files, Role::Central).err().expect("a regional certificate is not a central one");
        assert!(format!("{wrong:#}").contains("urn:kv:role:central"), "{wrong:#}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The role the server sees after a handshake of `client` (a node's or a tool's config)
    /// with `server`, at the server name `host`.
    async fn handshake(server: &Tls, client: Arc<rustls::ClientConfig>, host: &str) -> std::io::Result<Option<Role>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let config = server.server_config();
        let served = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            PeerStream::accept(tcp, config, std::time::Duration::from_secs(5)).await.map(|p| p.peer().role)
        });
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
        let connected = tokio_rustls::TlsConnector::from(client).connect(name, tcp).await;
        let role = served.await.unwrap();
        connected?;
        role
    }

    #[tokio::test]
    async fn nodes_of_one_ca_shake_hands_and_others_are_refused() {
        let dir = tempfile_dir();
        let ca = Ca::open_or_create(&dir).unwrap();
        let central = Tls::load(&ca.issue(Role::Central, "central-1", &["127.0.0.1".into()]).unwrap(), Role::Central)
            .unwrap()
            .unwrap();
        // Reopened (a later run of the launcher), the CA signs what the first CA file verifies.
        let again = Ca::open_or_create(&dir).unwrap();
        let edge =
            Tls::load(&again.issue(Role::Edge, "edge-1", &["127.0.0.1".into()]).unwrap(), Role::Edge).unwrap().unwrap();
        assert_eq!(handshake(&central, edge.client_config(), "127.0.0.1").await.unwrap(), Some(Role::Edge));
        let tool = tool_config(&ca.cert_file()).unwrap();
        assert_eq!(handshake(&central, tool.clone(), "127.0.0.1").await.unwrap(), None, "tools need no certificate");
        assert!(handshake(&central, tool, "10.9.9.9").await.is_err(), "the server's certificate names its hosts");

        let other_dir = tempfile_dir();
        let other = Ca::open_or_create(&other_dir).unwrap();
        let rogue = Tls::load(&other.issue(Role::Central, "rogue", &["127.0.0.1".into()]).unwrap(), Role::Central)
            .unwrap()
            .unwrap();
        assert!(handshake(&central, rogue.client_config(), "127.0.0.1").await.is_err(), "another CA's client");
        assert!(handshake(&rogue, edge.client_config(), "127.0.0.1").await.is_err(), "another CA's server");
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(other_dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("kv-pki-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
