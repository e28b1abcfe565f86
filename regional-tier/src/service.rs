//! The regional tier's gRPC services: the store API for its edges (answered from the cache
//! where possible, forwarded otherwise) and the push streams.

use crate::regional::{Answers, Regional};
use kv_common::serve::Drain;
use kv_common::{validate, KvError};
use kv_proto::store::v1::{self as pb, central_store_server::CentralStore};
use kv_proto::tier::v1::{pushes_server::Pushes, PushEvent, SubscribeRequest};
use kv_tier::wire::age_ms;
use kv_tier::{ReadSpec, TierError};
use std::sync::Arc;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

/// The store API as a regional tier serves it.
pub struct RegionalStore(pub Arc<Regional>);

#[tonic::async_trait]
impl CentralStore for RegionalStore {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let req = req.into_inner();
        let keys = std::slice::from_ref(&req.key);
        let ns = self.0.check_read(&req.namespace_id, keys)?;
        // Interest first, so every change after the answer is pushed to the reading edge.
        self.0.track(&req.namespace_id, keys, req.track.as_ref());
        if req.linearizable {
            // No copy here can be proved current as of the read's arrival: central answers.
            return Ok(Response::new(self.0.tier.upstream().get(req).await?));
        }
        let spec = ReadSpec { ahead: req.ahead, ..self.0.spec(req.min_version, req.max_age_ms) };
        let a = self.0.read(&ns, keys, &spec).await?;
        let s = a.served.first().ok_or_else(|| Status::internal("no answer"))?;
        Ok(Response::new(pb::GetResponse {
            entry: Answers::entry(s),
            version: s.copy.version,
            stale: a.stale,
            age_ms: a.age_ms,
            central_time_ms: kv_common::time::central_now_ms(),
            served_by: s.served_by(pb::Tier::Regional) as i32,
        }))
    }

    async fn batch_get(&self, req: Request<pb::BatchGetRequest>) -> Result<Response<pb::BatchGetResponse>, Status> {
        let req = req.into_inner();
        validate::bulk_get_count(req.keys.len(), &self.0.config.limits).map_err(TierError::from)?;
        let ns = self.0.check_read(&req.namespace_id, &req.keys)?;
        self.0.track(&req.namespace_id, &req.keys, req.track.as_ref());
        if req.linearizable {
            return Ok(Response::new(self.0.tier.upstream().batch_get(req).await?));
        }
        let spec = ReadSpec { ahead: req.ahead, ..self.0.spec(req.min_version, req.max_age_ms) };
        let a = self.0.read(&ns, &req.keys, &spec).await?;
        let results = req
            .keys
            .into_iter()
            .zip(&a.served)
            .map(|(key, s)| pb::KeyEntry {
                key,
                entry: Answers::entry(s),
                version: s.copy.version,
                served_by: s.served_by(pb::Tier::Regional) as i32,
            })
            .collect();
        Ok(Response::new(pb::BatchGetResponse {
            results,
            stale: a.stale,
            age_ms: a.age_ms,
            central_time_ms: kv_common::time::central_now_ms(),
        }))
    }

    async fn list(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        Ok(Response::new(self.0.tier.upstream().list(req.into_inner()).await?))
    }

    async fn write(&self, req: Request<pb::WriteRequest>) -> Result<Response<pb::WriteResponse>, Status> {
        Ok(Response::new(self.0.write(req.into_inner()).await?))
    }

    async fn create_namespace(
        &self,
        req: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::Namespace>, Status> {
        Ok(Response::new(self.0.tier.upstream().create_namespace(req.into_inner()).await?))
    }

    async fn list_namespaces(
        &self,
        req: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        Ok(Response::new(self.0.tier.upstream().list_namespaces(req.into_inner()).await?))
    }

    async fn get_namespace(&self, req: Request<pb::NamespaceRef>) -> Result<Response<pb::Namespace>, Status> {
        Ok(Response::new(self.0.tier.upstream().get_namespace(req.into_inner()).await?))
    }

    async fn rename_namespace(
        &self,
        req: Request<pb::RenameNamespaceRequest>,
    ) -> Result<Response<pb::Namespace>, Status> {
        Ok(Response::new(self.0.tier.upstream().rename_namespace(req.into_inner()).await?))
    }

    async fn delete_namespace(
        &self,
        req: Request<pb::NamespaceRef>,
    ) -> Result<Response<pb::DeleteNamespaceResponse>, Status> {
        Ok(Response::new(self.0.tier.upstream().delete_namespace(req.into_inner()).await?))
    }

    async fn create_token(&self, req: Request<pb::CreateTokenRequest>) -> Result<Response<pb::TokenInfo>, Status> {
        Ok(Response::new(self.0.tier.upstream().create_token(req.into_inner()).await?))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        Ok(Response::new(self.0.tier.upstream().list_tokens(req.into_inner()).await?))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        Ok(Response::new(self.0.tier.upstream().revoke_token(req.into_inner()).await?))
    }

    /// Passed up (never cached here, so the edge's bound on revocations is the only one),
    /// with the age counted from this tier's own receipt.
    async fn lookup_token(
        &self,
        req: Request<pb::LookupTokenRequest>,
    ) -> Result<Response<pb::LookupTokenResponse>, Status> {
        let sent = std::time::Instant::now();
        let mut r = self.0.tier.upstream().lookup_token(req.into_inner()).await?;
        r.age_ms = age_ms(kv_tier::wire::as_of(sent, r.age_ms).elapsed());
        Ok(Response::new(r))
    }

    type WatchStream = tonic::Streaming<pb::WatchEvent>;

    /// The central change feed, passed through: edges open one per namespace they serve
    /// watchers of (however many watchers), and the central store keeps the history that
    /// resuming by version needs.
    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(self.0.tier.upstream().watch(req.into_inner()).await?))
    }

    /// This tier's own proof while its feed is live; otherwise the central store's.
    async fn read_index(&self, _: Request<pb::ReadIndexRequest>) -> Result<Response<pb::ReadIndexResponse>, Status> {
        if let Some((version, age)) = self.0.proof() {
            let central_time_ms = kv_common::time::central_now_ms();
            return Ok(Response::new(pb::ReadIndexResponse { version, age_ms: age_ms(age), central_time_ms }));
        }
        let sent = std::time::Instant::now();
        let (version, as_of) = self.0.tier.upstream().read_index().await?;
        let age = sent.saturating_duration_since(as_of) + sent.elapsed();
        let central_time_ms = kv_common::time::central_now_ms();
        Ok(Response::new(pb::ReadIndexResponse { version, age_ms: age_ms(age), central_time_ms }))
    }
}

/// The push streams to this region's edges; they end when the tier drains, so the edges
/// move to another regional endpoint.
pub struct RegionalPushes(pub Arc<Regional>, pub Drain);

type PushStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<PushEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Pushes for RegionalPushes {
    type SubscribeStream = PushStream;

    async fn subscribe(&self, req: Request<SubscribeRequest>) -> Result<Response<PushStream>, Status> {
        let id = req.into_inner().subscriber_id;
        if id.is_empty() {
            return Err(TierError::from(KvError::InvalidRequest("subscriber_id is empty".into())).into());
        }
        tracing::info!(edge = %id, "edge subscribed to pushes");
        let inbox = self.0.tracker.subscribe(&id, self.0.feed.applied());
        let stream = inbox.into_stream().map(Ok);
        Ok(Response::new(Box::pin(futures::StreamExt::take_until(stream, self.1.clone().wait()))))
    }
}
