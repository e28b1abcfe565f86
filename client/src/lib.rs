//! A client of the KV client API (any edge node): connects, sends its bearer token with
//! every call, and retries with backoff when the cluster says "too many requests" (429) or
//! "unavailable", as the KV bindings do.

use kv_common::auth::Bearer;
use kv_proto::client::v1::kv_client::KvClient;
use std::future::Future;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

pub use kv_proto::client::v1 as api;

pub mod rest;

/// Largest message the client sends or accepts: a bulk write of 100 MB plus framing.
const MAX_MESSAGE: usize = 110 << 20;

/// Attempts per call, including the first.
const ATTEMPTS: u32 = 5;

/// Calls `method` with a fresh clone of `req` on every attempt, retrying as `retrying` does.
macro_rules! call {
    ($self:ident, $method:ident, $req:expr) => {{
        let req = $req;
        $self
            .retrying(|mut c| {
                let r = req.clone();
                async move { c.$method(r).await }
            })
            .await
    }};
}

/// Names a write for its retries, unless the caller did.
fn name(request_id: &mut String) {
    if request_id.is_empty() {
        *request_id = format!("{:032x}", rand::random::<u128>());
    }
}

/// The generated client, sending a bearer token with every call.
pub type RawClient = KvClient<InterceptedService<Channel, Bearer>>;

/// The generated client on `channel`, sending `token` (when given) with every call.
pub fn raw_client(channel: Channel, token: Option<&str>) -> anyhow::Result<RawClient> {
    Ok(KvClient::with_interceptor(channel, Bearer::new(token)?)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// A connection to one edge node.
#[derive(Clone)]
pub struct Client {
    inner: RawClient,
    channel: Channel,
}

impl Client {
    /// Connects to `endpoint` (`host:port` or a URL), without a token (see `with_token`).
    pub async fn connect(endpoint: &str) -> anyhow::Result<Client> {
        Client::connect_with_ca(endpoint, None).await
    }

    /// `connect`, over TLS trusting the CA certificates in `ca` when given.
    pub async fn connect_with_ca(endpoint: &str, ca: Option<&std::path::Path>) -> anyhow::Result<Client> {
        Client::from_channel(kv_common::client::tool_channel(endpoint, ca).await?, None)
    }

    /// A client on an existing channel.
    pub fn from_channel(channel: Channel, token: Option<&str>) -> anyhow::Result<Client> {
        Ok(Client { inner: raw_client(channel.clone(), token)?, channel })
    }

    /// This client's connection, sending `token` with every call.
    pub fn with_token(self, token: &str) -> anyhow::Result<Client> {
        Client::from_channel(self.channel, Some(token))
    }

    /// The generated client, for calls without retries.
    pub fn raw(&self) -> RawClient {
        self.inner.clone()
    }

    /// Runs `call`, retrying with exponential backoff while it fails with 429 or UNAVAILABLE.
    pub async fn retrying<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(RawClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match call(self.inner.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if attempt < ATTEMPTS && matches!(s.code(), Code::ResourceExhausted | Code::Unavailable) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(s) => return Err(s),
            }
        }
    }

    pub async fn get(&self, namespace_id: &str, key: &str, cache_ttl: Option<i64>) -> Result<api::GetResponse, Status> {
        let req = api::GetRequest {
            namespace_id: namespace_id.into(),
            key: key.into(),
            cache_ttl,
            with_metadata: true,
            ..Default::default()
        };
        self.read(req).await
    }

    /// A read with every option: a STRONG (linearizable) one, or a session read at least as
    /// new as a version a write returned (`min_version`).
    pub async fn read(&self, req: api::GetRequest) -> Result<api::GetResponse, Status> {
        call!(self, get, req)
    }

    /// A put; retried on 429 and UNAVAILABLE under one request id, so it is applied once and
    /// a retry of a compare-and-set that won is answered as won.
    pub async fn put(&self, mut req: api::PutRequest) -> Result<api::WriteResponse, Status> {
        name(&mut req.request_id);
        call!(self, put, req)
    }

    /// Up to 10,000 puts in one write; items that fail are listed in the answer, the rest land.
    pub async fn put_bulk(&self, mut req: api::PutBulkRequest) -> Result<api::BulkWriteResponse, Status> {
        name(&mut req.request_id);
        call!(self, put_bulk, req)
    }

    /// Deletes `key` (only at version `if_version`, when given: compare-and-set).
    pub async fn delete(
        &self,
        namespace_id: &str,
        key: &str,
        if_version: Option<u64>,
    ) -> Result<api::WriteResponse, Status> {
        let mut req =
            api::DeleteRequest { namespace_id: namespace_id.into(), key: key.into(), if_version, ..Default::default() };
        name(&mut req.request_id);
        call!(self, delete, req)
    }

    pub async fn list(&self, req: api::ListRequest) -> Result<api::ListResponse, Status> {
        call!(self, list, req)
    }

    /// A stream of the changes of a namespace's keys (see `WatchRequest`); not retried:
    /// after a break, watch again from the last version received.
    pub async fn watch(&self, req: api::WatchRequest) -> Result<tonic::Streaming<api::WatchEvent>, Status> {
        Ok(self.raw().watch(req).await?.into_inner())
    }

    /// Up to 100 keys in one read.
    pub async fn get_bulk(&self, req: api::GetBulkRequest) -> Result<api::GetBulkResponse, Status> {
        call!(self, get_bulk, req)
    }

    /// Up to 10,000 deletes in one write; items that fail are listed in the answer.
    pub async fn delete_bulk(&self, mut req: api::DeleteBulkRequest) -> Result<api::BulkWriteResponse, Status> {
        name(&mut req.request_id);
        call!(self, delete_bulk, req)
    }

    pub async fn get_namespace(&self, namespace_id: &str) -> Result<api::Namespace, Status> {
        call!(self, get_namespace, api::NamespaceRef { namespace_id: namespace_id.into() })
    }

    pub async fn rename_namespace(&self, namespace_id: &str, title: &str) -> Result<api::Namespace, Status> {
        let req = api::RenameNamespaceRequest { namespace_id: namespace_id.into(), title: title.into() };
        call!(self, rename_namespace, req)
    }

    pub async fn delete_namespace(&self, namespace_id: &str) -> Result<(), Status> {
        call!(self, delete_namespace, api::NamespaceRef { namespace_id: namespace_id.into() }).map(drop)
    }

    pub async fn create_namespace(&self, title: &str) -> Result<api::Namespace, Status> {
        let req = api::CreateNamespaceRequest { title: title.into() };
        call!(self, create_namespace, req)
    }

    /// Every namespace, across pages.
    pub async fn list_namespaces(&self) -> Result<Vec<api::Namespace>, Status> {
        let mut all = Vec::new();
        for page in 1.. {
            let req = api::ListNamespacesRequest { page, per_page: 1000, ..Default::default() };
            let r = call!(self, list_namespaces, req)?;
            let done = r.namespaces.is_empty() || all.len() + r.namespaces.len() >= r.total_count as usize;
            all.extend(r.namespaces);
            if done {
                break;
            }
        }
        Ok(all)
    }

    /// A new token; its secret is in the answer only.
    pub async fn create_token(&self, req: api::CreateTokenRequest) -> Result<api::CreatedToken, Status> {
        call!(self, create_token, req)
    }

    pub async fn list_tokens(&self) -> Result<Vec<api::Token>, Status> {
        call!(self, list_tokens, api::ListTokensRequest {}).map(|r| r.tokens)
    }

    pub async fn revoke_token(&self, token_id: &str) -> Result<(), Status> {
        call!(self, revoke_token, api::RevokeTokenRequest { token_id: token_id.into() }).map(drop)
    }

    /// The token this client sends, as the cluster sees it.
    pub async fn verify_token(&self) -> Result<api::Token, Status> {
        call!(self, verify_token, api::VerifyTokenRequest {})
    }
}
