//! Bearer tokens (SPEC.md section 8): their format, their rights, and the checks every node
//! shares.
//!
//! A stored token reads `kvt_<id>_<secret>`: the id (32 hex) names its record in the central
//! store and is not secret; the secret (64 hex, 256 random bits) is known only to its holder,
//! and the store keeps its SHA-256. A fast hash is enough because the secret is random, not
//! chosen: there is nothing to guess from the digest.
//!
//! Besides stored tokens there is the cluster's admin token, configured on every node
//! (`KV_ADMIN_TOKEN` or `admin_token_file`). It is the first token an operator holds (the
//! launcher prints it) and the nodes' own credential on the links between them: every call a
//! node makes carries it (`set_node_token`, used by `call::outgoing`), and the tier APIs
//! (the store API of regional tiers and central nodes, pushes, Raft) admit only admin tokens
//! (`AdminOnly`). The client API checks each call's rights against the grants of its token.

use crate::tls::{Peer, Role};
use crate::{KvError, KvResult, NamespaceId};
use kv_proto::store::v1 as pb;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::sync::{Arc, OnceLock};
use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};

/// The gRPC metadata key (and HTTP header) of the bearer token.
pub const AUTHORIZATION: &str = "authorization";
/// How a stored token starts.
const PREFIX: &str = "kvt_";
/// The id the configured admin token answers to (stored ids are hex, so never this).
pub const ADMIN_TOKEN_ID: &str = "admin";
/// Most grants one token may carry.
pub const MAX_GRANTS: usize = 100;
/// Longest token name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// The SHA-256 of a token secret, compared in constant time.
#[derive(Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretDigest(pub [u8; 32]);

impl SecretDigest {
    pub fn of(secret: &str) -> SecretDigest {
        SecretDigest(Sha256::digest(secret.as_bytes()).into())
    }

    /// Whether `secret` hashes to this digest, in time independent of where they differ.
    pub fn matches(&self, secret: &str) -> bool {
        SecretDigest::of(secret).0.ct_eq(&self.0).into()
    }

    pub fn from_slice(bytes: &[u8]) -> Option<SecretDigest> {
        bytes.try_into().ok().map(SecretDigest)
    }
}

impl std::fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretDigest(..)")
    }
}

/// A freshly drawn token: what is stored (`id`, `digest`) and what only its holder gets.
pub struct Minted {
    pub id: String,
    pub digest: SecretDigest,
    pub token: String,
}

/// Draws a new token from the operating system's random source.
pub fn mint() -> Minted {
    let id = hex::encode(rand::random::<[u8; 16]>());
    let secret = hex::encode(rand::random::<[u8; 32]>());
    Minted { digest: SecretDigest::of(&secret), token: format!("{PREFIX}{id}_{secret}"), id }
}

/// A stored token's id and secret, when `token` has the stored shape.
pub fn split(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    let hex = |s: &str, len| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (hex(id, 32) && hex(secret, 64)).then_some((id, secret))
}

/// The token of an `authorization` value (`Bearer <token>`, the scheme in any case).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The bearer token a gRPC call carries, if any.
pub fn bearer_of(md: &MetadataMap) -> Option<&str> {
    bearer(md.get(AUTHORIZATION)?.to_str().ok()?)
}

/// Which namespaces a grant covers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Scope {
    Every,
    One(NamespaceId),
}

impl Scope {
    pub fn parse(text: &str) -> KvResult<Scope> {
        if text == "*" {
            return Ok(Scope::Every);
        }
        NamespaceId::parse(text)
            .map(Scope::One)
            .map_err(|_| KvError::InvalidRequest(format!("a grant names a namespace id or \"*\", not {text:?}")))
    }

    fn covers(&self, ns: &NamespaceId) -> bool {
        match self {
            Scope::Every => true,
            Scope::One(id) => id == ns,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Every => f.write_str("*"),
            Scope::One(id) => write!(f, "{id}"),
        }
    }
}

/// What a token may do in the namespaces of `scope`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Grant {
    pub scope: Scope,
    pub read: bool,
    pub write: bool,
}

/// Everything a token may do.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rights {
    /// Namespaces, tokens, cluster administration, and every namespace's keys.
    pub admin: bool,
    pub grants: Vec<Grant>,
}

/// What a call needs.
#[derive(Clone, Copy, Debug)]
pub enum Need<'a> {
    /// Only a valid token (who-am-I calls).
    Token,
    Read(&'a NamespaceId),
    Write(&'a NamespaceId),
    /// Reading every namespace: listing them.
    ReadEvery,
    Admin,
}

/// The right a call needs in the namespace it names.
#[derive(Clone, Copy, Debug)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    pub fn on(self, ns: &NamespaceId) -> Need<'_> {
        match self {
            Access::Read => Need::Read(ns),
            Access::Write => Need::Write(ns),
        }
    }
}

impl Rights {
    pub fn admin() -> Rights {
        Rights { admin: true, grants: Vec::new() }
    }

    /// Checks the rights a new token asks for: a known shape, at least one right.
    pub fn validate(&self) -> KvResult<()> {
        if self.grants.len() > MAX_GRANTS {
            return Err(KvError::InvalidRequest(format!("a token may carry at most {MAX_GRANTS} grants")));
        }
        if let Some(g) = self.grants.iter().find(|g| !g.read && !g.write) {
            return Err(KvError::InvalidRequest(format!("the grant on {} gives neither read nor write", g.scope)));
        }
        if !self.admin && self.grants.is_empty() {
            return Err(KvError::InvalidRequest("a token needs the admin right or at least one grant".into()));
        }
        Ok(())
    }

    pub fn allows(&self, need: Need<'_>) -> bool {
        if self.admin {
            return true;
        }
        let any = |f: &dyn Fn(&Grant) -> bool| self.grants.iter().any(f);
        match need {
            Need::Token => true,
            Need::Read(ns) => any(&|g| g.read && g.scope.covers(ns)),
            Need::Write(ns) => any(&|g| g.write && g.scope.covers(ns)),
            Need::ReadEvery => any(&|g| g.read && g.scope == Scope::Every),
            Need::Admin => false,
        }
    }

    /// `Ok` when these rights cover `need`; the 403 that says what is missing otherwise.
    pub fn require(&self, need: Need<'_>) -> KvResult<()> {
        if self.allows(need) {
            return Ok(());
        }
        Err(KvError::PermissionDenied(match need {
            Need::Token => "this call needs a valid token".into(),
            Need::Read(ns) => format!("this token may not read namespace {ns}"),
            Need::Write(ns) => format!("this token may not write namespace {ns}"),
            Need::ReadEvery => "listing namespaces needs read on every namespace (\"*\") or the admin right".into(),
            Need::Admin => "this call needs a token with the admin right".into(),
        }))
    }
}

/// A stored token as its checks need it.
#[derive(Clone, Debug)]
pub struct StoredToken {
    pub id: String,
    pub digest: SecretDigest,
    pub rights: Rights,
}

/// Who a call comes from, once its token was checked.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The token's id (`ADMIN_TOKEN_ID` for the configured admin token).
    pub token_id: String,
    pub rights: Rights,
}

impl Principal {
    pub fn require(&self, need: Need<'_>) -> KvResult<Principal> {
        self.rights.require(need).map(|()| self.clone())
    }
}

/// The 401 every failed authentication gets.
pub fn unauthenticated(why: &str) -> KvError {
    KvError::Unauthenticated(why.into())
}

/// What a presented token claims to be, before any stored record is consulted.
pub enum Presented<'a> {
    /// The configured admin token.
    Admin,
    /// A stored token: look its record up by `id`, then `check` it.
    Stored { id: &'a str, secret: &'a str },
}

impl<'a> Presented<'a> {
    /// Reads the token of an `authorization` value against the configured admin token.
    pub fn of(authorization: Option<&'a str>, admin: &SecretDigest) -> KvResult<Presented<'a>> {
        let Some(token) = authorization else {
            return Err(unauthenticated("no bearer token was given (Authorization: Bearer <token>)"));
        };
        if admin.matches(token) {
            return Ok(Presented::Admin);
        }
        let (id, secret) = split(token).ok_or_else(|| unauthenticated("the bearer token is not valid"))?;
        Ok(Presented::Stored { id, secret })
    }

    /// The principal, given the record found for a stored token (`None`: no such token).
    pub fn check(&self, record: Option<&StoredToken>) -> KvResult<Principal> {
        match self {
            Presented::Admin => Ok(Principal { token_id: ADMIN_TOKEN_ID.into(), rights: Rights::admin() }),
            Presented::Stored { id, secret } => match record {
                Some(r) if r.id == *id && r.digest.matches(secret) => {
                    Ok(Principal { token_id: r.id.clone(), rights: r.rights.clone() })
                }
                _ => Err(unauthenticated("the bearer token is not valid (unknown, revoked or mistyped)")),
            },
        }
    }
}

/// Rights as the store API carries them (`admin`, `grants`), checked.
pub fn rights_from_wire(admin: bool, grants: &[pb::Grant]) -> KvResult<Rights> {
    let grants = grants
        .iter()
        .map(|g| Ok(Grant { scope: Scope::parse(&g.namespace_id)?, read: g.read, write: g.write }))
        .collect::<KvResult<Vec<_>>>()?;
    let rights = Rights { admin, grants };
    rights.validate()?;
    Ok(rights)
}

/// The grants of `rights` as the store API carries them.
pub fn grants_to_wire(rights: &Rights) -> Vec<pb::Grant> {
    rights
        .grants
        .iter()
        .map(|g| pb::Grant { namespace_id: g.scope.to_string(), read: g.read, write: g.write })
        .collect()
}

/// Checks a token name: at most `MAX_NAME_BYTES`.
pub fn validate_name(name: &str) -> KvResult<()> {
    if name.len() > MAX_NAME_BYTES {
        return Err(KvError::InvalidRequest(format!("a token name is at most {MAX_NAME_BYTES} bytes")));
    }
    Ok(())
}

/// Checks a stored token's id: 32 lowercase hex characters.
pub fn validate_id(id: &str) -> KvResult<()> {
    if id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Ok(());
    }
    if id == ADMIN_TOKEN_ID {
        return Err(KvError::InvalidRequest(
            "the configured admin token is not stored: change KV_ADMIN_TOKEN on every node instead".into(),
        ));
    }
    // Never repeat the input: it may be a whole token, secret and all.
    Err(KvError::InvalidRequest("a token id is 32 lowercase hex characters (the part after kvt_)".into()))
}

/// This node's own token, which every call it makes carries.
static NODE_TOKEN: OnceLock<MetadataValue<Ascii>> = OnceLock::new();

/// Sets this process's credential once, at start (each process runs one node).
pub fn set_node_token(token: &str) -> anyhow::Result<()> {
    let value = format!("Bearer {token}").parse().map_err(|_| anyhow::anyhow!("the admin token must be ASCII text"))?;
    // A second node in the same process (tests) shares the cluster's one admin token.
    let _ = NODE_TOKEN.set(value);
    Ok(())
}

/// The `authorization` value of this node's calls, once set.
pub fn node_token() -> Option<&'static MetadataValue<Ascii>> {
    NODE_TOKEN.get()
}

/// The flag (or `KV_ADMIN_TOKEN`) that gives a node the cluster's admin token.
#[derive(Clone, Default, clap::Args)]
pub struct AdminTokenArg {
    /// The cluster's admin token (prefer the environment variable: flags show in `ps`).
    #[arg(long = "admin-token", env = "KV_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

impl std::fmt::Debug for AdminTokenArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.admin_token.is_some() { "AdminTokenArg(set)" } else { "AdminTokenArg(unset)" })
    }
}

/// The cluster's admin token, as a node holds it: never printed.
#[derive(Clone, Default)]
pub struct AdminToken(Option<String>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "AdminToken(set)" } else { "AdminToken(unset)" })
    }
}

impl AdminToken {
    /// From the flag or environment variable, else from `file` (trimmed), else unset.
    pub fn load(arg: AdminTokenArg, file: Option<&std::path::Path>) -> anyhow::Result<AdminToken> {
        let token = match (arg.admin_token, file) {
            (Some(t), _) => t,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading the admin token from {}: {e}", path.display()))?,
            (None, None) => return Ok(AdminToken(None)),
        };
        let token = token.trim().to_owned();
        anyhow::ensure!(token.len() >= 16, "the admin token must be at least 16 characters");
        anyhow::ensure!(
            token.bytes().all(|b| b.is_ascii_graphic()),
            "the admin token must be printable ASCII without spaces"
        );
        Ok(AdminToken(Some(token)))
    }

    pub fn new(token: &str) -> AdminToken {
        AdminToken(Some(token.to_owned()))
    }

    /// The token; a node cannot run without one.
    pub fn require(&self) -> anyhow::Result<&str> {
        self.0.as_deref().ok_or_else(|| {
            anyhow::anyhow!("no admin token: set KV_ADMIN_TOKEN or admin_token_file (scripts/run-cluster makes one)")
        })
    }
}

/// Looks a stored token up synchronously (a central node reads its own replica).
pub type SyncLookup = Arc<dyn Fn(&str) -> KvResult<Option<StoredToken>> + Send + Sync>;

/// A gRPC interceptor for the tier APIs: only admin tokens pass (the nodes' own, and, where
/// the node can look them up itself, stored tokens with the admin right); over TLS, only
/// from peers whose certificate names one of `roles` (none named: any caller).
#[derive(Clone)]
pub struct AdminOnly {
    admin: SecretDigest,
    stored: Option<SyncLookup>,
    roles: &'static [Role],
    /// Whether callers without a certificate (operators' tools) are admitted too.
    tools: bool,
}

impl AdminOnly {
    pub fn new(admin_token: &str, stored: Option<SyncLookup>) -> AdminOnly {
        AdminOnly { admin: SecretDigest::of(admin_token), stored, roles: &[], tools: false }
    }

    /// Only nodes of `roles` may call (checked when the connection is TLS).
    pub fn from_roles(self, roles: &'static [Role]) -> AdminOnly {
        AdminOnly { roles, tools: false, ..self }
    }

    /// Operators' tools (no certificate) and nodes of `roles` may call; nodes of other roles
    /// may not, even with the admin token they hold.
    pub fn from_tools_and(self, roles: &'static [Role]) -> AdminOnly {
        AdminOnly { roles, tools: true, ..self }
    }

    pub fn principal(&self, md: &MetadataMap) -> KvResult<Principal> {
        let presented = Presented::of(bearer_of(md), &self.admin)?;
        let record = match (&presented, &self.stored) {
            (Presented::Stored { id, .. }, Some(lookup)) => lookup(id)?,
            (Presented::Stored { .. }, None) => {
                return Err(KvError::PermissionDenied(
                    "this API is the nodes' own: it takes the cluster's configured admin token".into(),
                ))
            }
            (Presented::Admin, _) => None,
        };
        presented.check(record.as_ref())?.require(Need::Admin)
    }
}

impl tonic::service::Interceptor for AdminOnly {
    /// Admits the call, with its `Principal` among the request's extensions.
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        match req.extensions().get::<Peer>() {
            Some(peer) if self.tools => peer.admit_tools_or(self.roles),
            Some(peer) => peer.admit(self.roles),
            // Every listener of a node with TLS says who the peer is: without that, refuse.
            None if crate::tls::node_tls().is_some() => {
                Err(KvError::Unauthenticated("the caller's connection is unknown".into()))
            }
            None => Ok(()),
        }
        .map_err(|e| e.to_status())?;
        let who = self.principal(req.metadata()).map_err(|e| e.to_status())?;
        req.extensions_mut().insert(who);
        Ok(req)
    }
}

/// A client interceptor that sends `token` with every call.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub fn new(token: Option<&str>) -> anyhow::Result<Bearer> {
        let value = token
            .map(|t| format!("Bearer {t}").parse())
            .transpose()
            .map_err(|_| anyhow::anyhow!("a token must be ASCII text"))?;
        Ok(Bearer(value))
    }
}

/// A channel whose calls carry a bearer token (for tools and tests; nodes use `NodeChannel`).
pub type Authorized = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;

/// `ch` sending `token` with every call.
pub fn authorized(ch: tonic::transport::Channel, token: &str) -> anyhow::Result<Authorized> {
    Ok(tonic::service::interceptor::InterceptedService::new(ch, Bearer::new(Some(token))?))
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(AUTHORIZATION, v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_split_and_verify_and_nothing_else_does() {
        let m = mint();
        let (id, secret) = split(&m.token).expect("a minted token has the stored shape");
        assert_eq!(id, m.id);
        assert!(m.digest.matches(secret));
        // One character changed (always a different hex digit) no longer matches.
        let first = if secret.starts_with('0') { "1" } else { "0" };
        assert!(!m.digest.matches(&format!("{first}{}", &secret[1..])));
        for bad in ["", "kvt_", "kvt_abc_def", &m.token.to_uppercase(), &format!("{}x", m.token)] {
            assert_eq!(split(bad), None, "{bad:?}");
        }
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn rights_cover_what_their_grants_say() {
        let (a, b) = (NamespaceId([1; 16]), NamespaceId([2; 16]));
        let reader = Rights { admin: false, grants: vec![Grant { scope: Scope::One(a), read: true, write: false }] };
        assert!(reader.allows(Need::Read(&a)));
        assert!(!reader.allows(Need::Write(&a)));
        assert!(!reader.allows(Need::Read(&b)));
        assert!(!reader.allows(Need::ReadEvery));
        assert!(!reader.allows(Need::Admin));
        assert_eq!(reader.require(Need::Write(&a)).unwrap_err().http_status(), 403);
        let every = Rights { admin: false, grants: vec![Grant { scope: Scope::Every, read: true, write: true }] };
        assert!(every.allows(Need::Write(&b)) && every.allows(Need::ReadEvery) && !every.allows(Need::Admin));
        assert!(Rights::admin().allows(Need::Write(&b)));
        assert!(Rights::default().validate().is_err(), "a token with no right at all");
        let useless = Rights { admin: false, grants: vec![Grant { scope: Scope::Every, read: false, write: false }] };
        assert!(useless.validate().is_err());
    }

    #[test]
    fn presented_tokens_are_checked_against_their_record() {
        let admin = SecretDigest::of("the-admin-token-1234");
        assert!(matches!(Presented::of(Some("the-admin-token-1234"), &admin), Ok(Presented::Admin)));
        assert_eq!(Presented::of(None, &admin).err().map(|e| e.http_status()), Some(401));
        assert_eq!(Presented::of(Some("guess"), &admin).err().map(|e| e.http_status()), Some(401));
        let m = mint();
        let record = StoredToken { id: m.id.clone(), digest: m.digest, rights: Rights::admin() };
        let p = Presented::of(Some(&m.token), &admin).unwrap();
        assert_eq!(p.check(Some(&record)).unwrap().token_id, m.id);
        assert_eq!(p.check(None).unwrap_err().http_status(), 401, "revoked");
        let other = mint();
        let forged = format!("kvt_{}_{}", m.id, split(&other.token).unwrap().1);
        let p = Presented::of(Some(&forged), &admin).unwrap();
        assert_eq!(p.check(Some(&record)).unwrap_err().http_status(), 401, "right id, wrong secret");
    }
}
