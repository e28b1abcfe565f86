//! The store API: reads served by this replica once it has proved it is fresh enough,
//! writes and namespace changes committed on the leader (forwarded there from followers).

use crate::error::{StoreError, StoreResult};
use crate::freshness::Proof;
use crate::node::Node;
use crate::routing::{forwarded, route, Route};
use crate::storage::reader::StoredEntry;
use crate::types::{Command, NamespaceRecord, TokenRecord};
use crate::writes;
use kv_common::client::{store_client, StoreClient};
use kv_common::serve::Drain;
use kv_common::{auth, call, namespace::validate_title, time, validate, KvError, NamespaceId};
use kv_proto::store::v1::{self as pb, central_store_server::CentralStore};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The CentralStore gRPC service.
pub struct StoreService {
    node: Arc<Node>,
    /// Watch streams end when the node drains, so their subscribers move to another node.
    drain: Drain,
}

impl StoreService {
    pub fn new(node: Arc<Node>, drain: Drain) -> Self {
        StoreService { node, drain }
    }

    /// Makes sure this replica may answer a read: it has applied `min_version`, and holds a
    /// proof of freshness at most `max_age_ms` old (0: the configured default). Both waits are
    /// bounded by the call's deadline; a replica that cannot prove itself says UNAVAILABLE,
    /// so the caller asks another.
    async fn fresh(&self, min_version: u64, max_age_ms: u32, linearizable: bool) -> StoreResult<Proof> {
        let f = &self.node.config.freshness;
        let budget = call::remaining_or(Duration::from_millis(f.wait_ms));
        if min_version > 0 {
            self.node.reader.wait_applied(min_version, budget).await?;
        }
        if linearizable {
            return self.node.prove_now(call::remaining_or(budget)).await.map_err(|why| {
                self.node.metrics.stale_refusals.inc();
                KvError::Unavailable(format!("this replica cannot prove it is current ({why}); ask another node"))
                    .into()
            });
        }
        let max_age = match max_age_ms {
            0 => Duration::from_millis(f.default_max_age_ms),
            n => Duration::from_millis(u64::from(n)),
        };
        let wait = call::remaining_or(budget).min(Duration::from_millis(f.wait_ms));
        match self.node.freshness.within(max_age, wait).await {
            Some(proof) => Ok(proof),
            None => {
                self.node.metrics.stale_refusals.inc();
                Err(KvError::Unavailable(format!(
                    "this replica cannot prove it is within {} ms of the leader; ask another node",
                    max_age.as_millis()
                ))
                .into())
            }
        }
    }

    /// Serves a leader-only call: here when leading, else forwarded to the leader once.
    async fn on_leader<Req, Resp, Local, LocalFut, Fwd, FwdFut>(
        &self,
        req: Request<Req>,
        local: Local,
        forward: Fwd,
    ) -> Result<Response<Resp>, Status>
    where
        Local: FnOnce(Req) -> LocalFut,
        LocalFut: Future<Output = StoreResult<Resp>>,
        Fwd: FnOnce(StoreClient, Request<Req>) -> FwdFut,
        FwdFut: Future<Output = Result<Response<Resp>, Status>>,
    {
        match route(&self.node, &req)? {
            Route::Leader(ch) => forward(store_client(ch), forwarded(req.into_inner())).await,
            Route::Local => Ok(Response::new(local(req.into_inner()).await?)),
        }
    }
}

/// How old an answer read under `proof` is now, in whole milliseconds (rounded up).
fn age_ms(proof: &Proof) -> u32 {
    u32::try_from(proof.age().as_micros().div_ceil(1000)).unwrap_or(u32::MAX)
}

fn to_entry(e: StoredEntry) -> pb::Entry {
    pb::Entry {
        value: e.value.into(),
        metadata_json: e.meta.metadata,
        expiration: e.meta.expiration,
        version: e.meta.version,
    }
}

fn to_namespace(rec: NamespaceRecord, version: u64) -> pb::Namespace {
    pb::Namespace { id: rec.id.to_string(), title: rec.title, version }
}

fn to_token(t: &TokenRecord, version: u64) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id.clone(),
        name: t.name.clone(),
        admin: t.rights.admin,
        grants: auth::grants_to_wire(&t.rights),
        created_at: t.created_at,
        version,
    }
}

type WatchStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl CentralStore for StoreService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let req = req.into_inner();
        let ns = NamespaceId::parse(&req.namespace_id)?;
        validate::key(&req.key, &self.node.config.limits)?;
        let proof = self.fresh(req.min_version, req.max_age_ms, req.linearizable).await?;
        self.node.metrics.reads.with_label_values(&["get"]).inc();
        let r = self.node.reader.get(&ns, &req.key, time::now_secs())?;
        Ok(Response::new(pb::GetResponse {
            entry: r.entry.map(to_entry),
            version: r.version,
            stale: false,
            age_ms: age_ms(&proof),
            central_time_ms: time::now_ms(),
            served_by: pb::Tier::Central as i32,
        }))
    }

    async fn batch_get(&self, req: Request<pb::BatchGetRequest>) -> Result<Response<pb::BatchGetResponse>, Status> {
        let req = req.into_inner();
        let limits = &self.node.config.limits;
        let ns = NamespaceId::parse(&req.namespace_id)?;
        validate::bulk_get_count(req.keys.len(), limits)?;
        for k in &req.keys {
            validate::key(k, limits)?;
        }
        let proof = self.fresh(req.min_version, req.max_age_ms, req.linearizable).await?;
        self.node.metrics.reads.with_label_values(&["batch_get"]).inc();
        let (entries, read_version) = self.node.reader.get_many(&ns, &req.keys, time::now_secs())?;
        let total: usize = entries.iter().flatten().map(|e| e.value.len()).sum();
        if total > limits.max_bulk_get_bytes {
            return Err(KvError::BulkGetTooLarge.into());
        }
        let results = req
            .keys
            .into_iter()
            .zip(entries)
            .map(|(key, e)| {
                let version = e.as_ref().map_or(read_version, |e| e.meta.version);
                pb::KeyEntry { key, entry: e.map(to_entry), version, served_by: pb::Tier::Central as i32 }
            })
            .collect();
        Ok(Response::new(pb::BatchGetResponse {
            results,
            stale: false,
            age_ms: age_ms(&proof),
            central_time_ms: time::now_ms(),
        }))
    }

    async fn list(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let req = req.into_inner();
        let ns = NamespaceId::parse(&req.namespace_id)?;
        let asked = (req.limit != 0).then_some(i64::from(req.limit));
        let limit = validate::list_limit(asked, &self.node.config.limits)?;
        validate::prefix(&req.prefix, &self.node.config.limits)?;
        let proof = self.fresh(req.min_version, req.max_age_ms, false).await?;
        self.node.metrics.reads.with_label_values(&["list"]).inc();
        let cursor = (!req.cursor.is_empty()).then_some(req.cursor.as_str());
        let page = self.node.reader.list(&ns, &req.prefix, limit, cursor, time::now_secs())?;
        let keys = page
            .keys
            .into_iter()
            .map(|(name, meta)| pb::ListedKey { name, expiration: meta.expiration, metadata_json: meta.metadata })
            .collect();
        Ok(Response::new(pb::ListResponse {
            keys,
            list_complete: page.cursor.is_none(),
            cursor: page.cursor.unwrap_or_default(),
            age_ms: age_ms(&proof),
        }))
    }

    async fn write(&self, req: Request<pb::WriteRequest>) -> Result<Response<pb::WriteResponse>, Status> {
        let started = std::time::Instant::now();
        let written =
            self.on_leader(req, |r| writes::write(&self.node, r), |mut c, r| async move { c.write(r).await }).await;
        self.node.metrics.stage(crate::metrics::Stage::Handler, started);
        written
    }

    async fn create_namespace(
        &self,
        req: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::Namespace>, Status> {
        let local = |r: pb::CreateNamespaceRequest| async move {
            validate_title(&r.title)?;
            let id = NamespaceId(rand::random());
            let now_ms = time::now_ms();
            let title = r.title;
            let done = writes::namespace(&self.node, &r.request_id, |request| Command::CreateNamespace {
                id,
                title,
                now_ms,
                request,
            })
            .await?;
            let rec = done.record.ok_or_else(|| StoreError::Other(anyhow::anyhow!("create recorded no namespace")))?;
            Ok(to_namespace(rec, done.version))
        };
        self.on_leader(req, local, |mut c, r| async move { c.create_namespace(r).await }).await
    }

    async fn list_namespaces(
        &self,
        req: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        let req = req.into_inner();
        self.fresh(0, 0, false).await?;
        let per_page = kv_common::namespace::namespace_page_size(req.per_page) as usize;
        let page = req.page.max(1) as usize;
        let mut all = self.node.reader.namespaces()?;
        match req.order.as_str() {
            "" | "title" => {}
            "id" => all.sort_by_key(|n| n.id),
            other => return Err(KvError::InvalidRequest(format!("order must be title or id, not {other:?}")).into()),
        }
        match req.direction.as_str() {
            "" | "asc" => {}
            "desc" => all.reverse(),
            other => {
                return Err(KvError::InvalidRequest(format!("direction must be asc or desc, not {other:?}")).into())
            }
        }
        let total_count = all.len() as u32;
        let namespaces =
            all.into_iter().skip((page - 1) * per_page).take(per_page).map(|r| to_namespace(r, 0)).collect();
        Ok(Response::new(pb::ListNamespacesResponse { namespaces, total_count }))
    }

    async fn get_namespace(&self, req: Request<pb::NamespaceRef>) -> Result<Response<pb::Namespace>, Status> {
        let id = NamespaceId::parse(&req.into_inner().namespace_id)?;
        self.fresh(0, 0, false).await?;
        Ok(Response::new(to_namespace(self.node.reader.namespace(&id)?, 0)))
    }

    async fn rename_namespace(
        &self,
        req: Request<pb::RenameNamespaceRequest>,
    ) -> Result<Response<pb::Namespace>, Status> {
        let local = |r: pb::RenameNamespaceRequest| async move {
            let id = NamespaceId::parse(&r.namespace_id)?;
            validate_title(&r.title)?;
            let (title, now_ms) = (r.title, time::now_ms());
            let done = writes::namespace(&self.node, &r.request_id, |request| Command::RenameNamespace {
                id,
                title,
                now_ms,
                request,
            })
            .await?;
            let rec = done.record.ok_or_else(|| StoreError::Other(anyhow::anyhow!("rename recorded no namespace")))?;
            Ok(to_namespace(rec, done.version))
        };
        self.on_leader(req, local, |mut c, r| async move { c.rename_namespace(r).await }).await
    }

    async fn delete_namespace(
        &self,
        req: Request<pb::NamespaceRef>,
    ) -> Result<Response<pb::DeleteNamespaceResponse>, Status> {
        let local = |r: pb::NamespaceRef| async move {
            let id = NamespaceId::parse(&r.namespace_id)?;
            let now_ms = time::now_ms();
            let done = writes::namespace(&self.node, &r.request_id, |request| Command::DeleteNamespace {
                id,
                now_ms,
                request,
            })
            .await?;
            Ok::<_, StoreError>(pb::DeleteNamespaceResponse { version: done.version })
        };
        self.on_leader(req, local, |mut c, r| async move { c.delete_namespace(r).await }).await
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        let start = if req.from_now { super::watch::Start::Now } else { super::watch::Start::After(req.from_version) };
        let stream = super::watch::stream(self.node.clone(), start);
        Ok(Response::new(Box::pin(futures::StreamExt::take_until(stream, self.drain.clone().wait()))))
    }

    async fn create_token(&self, req: Request<pb::CreateTokenRequest>) -> Result<Response<pb::TokenInfo>, Status> {
        let local = |r: pb::CreateTokenRequest| async move {
            let info = r.token.ok_or_else(|| KvError::InvalidRequest("a token to create is required".into()))?;
            auth::validate_id(&info.id)?;
            auth::validate_name(&info.name)?;
            let rights = auth::rights_from_wire(info.admin, &info.grants)?;
            let digest = auth::SecretDigest::from_slice(&r.secret_sha256)
                .ok_or_else(|| KvError::InvalidRequest("secret_sha256 must be 32 bytes".into()))?;
            let now_ms = time::now_ms();
            let record =
                TokenRecord { id: info.id, name: info.name, digest, rights, created_at: (now_ms / 1000) as i64 };
            let stored = record.clone();
            let version =
                writes::token(&self.node, &r.request_id, |request| Command::CreateToken { record, now_ms, request })
                    .await?;
            Ok::<_, StoreError>(to_token(&stored, version))
        };
        self.on_leader(req, local, |mut c, r| async move { c.create_token(r).await }).await
    }

    async fn list_tokens(&self, _: Request<pb::ListTokensRequest>) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.fresh(0, 0, false).await?;
        let tokens = self.node.reader.tokens()?.iter().map(|t| to_token(t, 0)).collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let local = |r: pb::RevokeTokenRequest| async move {
            auth::validate_id(&r.token_id)?;
            let (id, now_ms) = (r.token_id, time::now_ms());
            let version =
                writes::token(&self.node, &r.request_id, |request| Command::RevokeToken { id, now_ms, request })
                    .await?;
            Ok::<_, StoreError>(pb::RevokeTokenResponse { version })
        };
        self.on_leader(req, local, |mut c, r| async move { c.revoke_token(r).await }).await
    }

    async fn lookup_token(
        &self,
        req: Request<pb::LookupTokenRequest>,
    ) -> Result<Response<pb::LookupTokenResponse>, Status> {
        let arrived = std::time::Instant::now();
        let req = req.into_inner();
        auth::validate_id(&req.token_id)?;
        let mut proof = self.fresh(0, req.max_age_ms, false).await?;
        let mut found = self.node.reader.token(&req.token_id)?;
        if found.is_none() {
            // "No such token" is read linearizably, so a token is found by every edge as soon
            // as its creation is acknowledged (a revocation may take the edges' bound).
            let wait = call::remaining_or(Duration::from_millis(self.node.config.freshness.wait_ms));
            proof = self.node.freshness.since(arrived, wait).await.ok_or_else(|| {
                KvError::Unavailable("this replica cannot prove it is current; ask another node".into())
            })?;
            found = self.node.reader.token(&req.token_id)?;
        }
        Ok(Response::new(pb::LookupTokenResponse {
            secret_sha256: found.as_ref().map(|t| t.digest.0.to_vec()).unwrap_or_default(),
            token: found.map(|t| to_token(&t, 0)),
            age_ms: age_ms(&proof),
        }))
    }

    async fn read_index(&self, _: Request<pb::ReadIndexRequest>) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let proof = self.node.freshness.current().ok_or_else(|| {
            StoreError::Kv(KvError::Unavailable("this replica has not proved its freshness yet".into()))
        })?;
        Ok(Response::new(pb::ReadIndexResponse {
            version: proof.index,
            age_ms: age_ms(&proof),
            central_time_ms: time::now_ms(),
        }))
    }
}
