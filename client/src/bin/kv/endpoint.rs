//! The edge the command line talks to: its gRPC API (`host:port`, over TLS when `--ca`
//! names the cluster CA), or its REST API (an `http://` or `https://` URL). Both answer the same calls with the same types and errors.

use kv_client::rest::RestClient;
use kv_client::{api, Client};
use std::path::Path;
use tonic::Status;

pub enum Endpoint {
    Grpc(Box<Client>),
    Rest(RestClient),
}

/// Calls the same method on whichever API the endpoint speaks.
macro_rules! forward {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $out:ty;)*) => {
        impl Endpoint {
            $(pub async fn $name(&self, $($arg: $ty),*) -> Result<$out, Status> {
                match self {
                    Endpoint::Grpc(c) => c.$name($($arg),*).await,
                    Endpoint::Rest(r) => r.$name($($arg),*).await,
                }
            })*
        }
    };
}

forward! {
    fn create_namespace(title: &str) -> api::Namespace;
    fn list_namespaces() -> Vec<api::Namespace>;
    fn get_namespace(namespace_id: &str) -> api::Namespace;
    fn rename_namespace(namespace_id: &str, title: &str) -> api::Namespace;
    fn delete_namespace(namespace_id: &str) -> ();
    fn put(req: api::PutRequest) -> api::WriteResponse;
    fn read(req: api::GetRequest) -> api::GetResponse;
    fn delete(namespace_id: &str, key: &str, if_version: Option<u64>) -> api::WriteResponse;
    fn list(req: api::ListRequest) -> api::ListResponse;
    fn put_bulk(req: api::PutBulkRequest) -> api::BulkWriteResponse;
    fn delete_bulk(req: api::DeleteBulkRequest) -> api::BulkWriteResponse;
    fn get_bulk(req: api::GetBulkRequest) -> api::GetBulkResponse;
    fn verify_token() -> api::Token;
}

impl Endpoint {
    /// Connects to `endpoint`: a URL with a scheme of `http` or `https` is a REST base URL
    /// (`.../client/v4`), anything else a gRPC address.
    /// Over TLS, trusting the CA certificates in `ca`, when given (for REST: when the URL
    /// says `https`).
    pub async fn connect(
        endpoint: &str,
        account: Option<&str>,
        token: Option<&str>,
        ca: Option<&Path>,
    ) -> anyhow::Result<Endpoint> {
        if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
            let ca = ca.filter(|_| endpoint.starts_with("https://"));
            Ok(Endpoint::Rest(
                RestClient::connect_with_ca(endpoint, account, token, ca)
                    .await
                    .map_err(|s| anyhow::anyhow!(s.message().to_owned()))?,
            ))
        } else {
            let client = Client::connect_with_ca(endpoint, ca).await?;
            Ok(Endpoint::Grpc(Box::new(match token {
                Some(t) => client.with_token(t)?,
                None => client,
            })))
        }
    }
}
