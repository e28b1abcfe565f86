//! The regional tier's gRPC services: the store API for its edges (answered from the cache
//! where possible, forwarded otherwise) and the push streams.

use crate::error::RegionalError;
use crate::regional::Regional;
use kv_common::time;
use kv_common::wire::entry_of;
use kv_proto::store::v1::{self as pb, central_store_server::CentralStore};
use kv_proto::tier::v1::{pushes_server::Pushes, PushEvent, SubscribeRequest};
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

/// The store API as a regional tier serves it.
pub struct RegionalStore(pub Arc<Regional>);

/// Forwards a call unchanged to the central store (the trace goes on with it).
macro_rules! forward {
    ($self:ident, $req:ident, $method:ident) => {{
        let inner = $req.into_inner();
        kv_common::store_call!($self.0.upstream, $method, inner.clone()).await
    }};
}

#[tonic::async_trait]
impl CentralStore for RegionalStore {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let req = req.into_inner();
        let ns = self.0.check_read(&req.namespace_id, std::slice::from_ref(&req.key))?;
        self.0.track(&req.namespace_id, std::slice::from_ref(&req.key), req.track.as_ref());
        let a = self.0.get(&ns, &req.key, req.min_version).await?;
        let entry = entry_of(&a.cached, time::now_secs());
        Ok(Response::new(pb::GetResponse { entry, version: a.cached.version, stale: a.stale }))
    }

    async fn batch_get(&self, req: Request<pb::BatchGetRequest>) -> Result<Response<pb::BatchGetResponse>, Status> {
        let req = req.into_inner();
        kv_common::validate::bulk_get_count(req.keys.len(), &self.0.config.limits).map_err(RegionalError::from)?;
        let ns = self.0.check_read(&req.namespace_id, &req.keys)?;
        self.0.track(&req.namespace_id, &req.keys, req.track.as_ref());
        Ok(Response::new(self.0.batch_get(&ns, &req.keys, req.min_version).await?))
    }

    async fn list(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        forward!(self, req, list)
    }

    async fn write(&self, req: Request<pb::WriteRequest>) -> Result<Response<pb::WriteResponse>, Status> {
        Ok(Response::new(self.0.write(req.into_inner()).await?))
    }

    async fn create_namespace(
        &self,
        req: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::Namespace>, Status> {
        forward!(self, req, create_namespace)
    }

    async fn list_namespaces(
        &self,
        req: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        forward!(self, req, list_namespaces)
    }

    async fn get_namespace(&self, req: Request<pb::NamespaceRef>) -> Result<Response<pb::Namespace>, Status> {
        forward!(self, req, get_namespace)
    }

    async fn rename_namespace(
        &self,
        req: Request<pb::RenameNamespaceRequest>,
    ) -> Result<Response<pb::Namespace>, Status> {
        forward!(self, req, rename_namespace)
    }

    async fn delete_namespace(
        &self,
        req: Request<pb::NamespaceRef>,
    ) -> Result<Response<pb::DeleteNamespaceResponse>, Status> {
        forward!(self, req, delete_namespace)
    }

    type WatchStream = ReceiverStream<Result<pb::WatchEvent, Status>>;

    async fn watch(&self, _: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("a regional tier pushes changes through kv.tier.v1.Pushes; watch the central store"))
    }
}

/// The push streams to this region's edges.
pub struct RegionalPushes(pub Arc<Regional>);

type PushStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<PushEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Pushes for RegionalPushes {
    type SubscribeStream = PushStream;

    async fn subscribe(&self, req: Request<SubscribeRequest>) -> Result<Response<PushStream>, Status> {
        let id = req.into_inner().subscriber_id;
        if id.is_empty() {
            return Err(RegionalError::from(kv_common::KvError::InvalidRequest("subscriber_id is empty".into())).into());
        }
        tracing::info!(edge = %id, "edge subscribed to pushes");
        let rx = self.0.tracker.subscribe(&id, self.0.feed.applied());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}
