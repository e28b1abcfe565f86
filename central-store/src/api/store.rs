//! The store API: reads served by this replica, writes validated and rate-limited on the
//! leader (forwarded there from followers), then committed through Raft.

use crate::error::{StoreError, StoreResult};
use crate::node::Node;
use crate::routing::{forwarded, propose, route, Route};
use crate::storage::reader::StoredEntry;
use crate::types::{Command, CommandResult, NamespaceRecord, NamespaceWrite, Op, OpKind};
use kv_common::{namespace::validate_title, time, validate, KvError, NamespaceId};
use kv_proto::store::v1::{self as pb, central_store_server::CentralStore};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// How long a read waits for this replica to reach the asked-for `min_version`.
const MIN_VERSION_WAIT: Duration = Duration::from_secs(5);
/// Default and largest page of `ListNamespaces`.
const NAMESPACE_PAGE: (u32, u32) = (20, 100);

/// The CentralStore gRPC service.
pub struct StoreService {
    node: Arc<Node>,
}

impl StoreService {
    pub fn new(node: Arc<Node>) -> Self {
        StoreService { node }
    }

    async fn caught_up(&self, min_version: u64) -> StoreResult<()> {
        if min_version > 0 {
            self.node.reader.wait_applied(min_version, MIN_VERSION_WAIT).await?;
        }
        Ok(())
    }

    /// Validates, rate-limits and commits a write on the leader.
    async fn write_local(&self, req: pb::WriteRequest) -> StoreResult<pb::WriteResponse> {
        let node = &self.node;
        let limits = &node.config.limits;
        let ns = NamespaceId::parse(&req.namespace_id)?;
        node.reader.namespace(&ns)?;
        let bytes: usize = req.ops.iter().map(op_bytes).sum();
        validate::bulk_write(req.ops.len(), bytes, limits)?;

        let now_ms = time::now_ms();
        let now_secs = (now_ms / 1000) as i64;
        let mut results = Vec::with_capacity(req.ops.len());
        let mut ops = Vec::new();
        for op in req.ops {
            let mut result = pb::OpResult { key: op.key.clone(), ..Default::default() };
            match checked_op(op, now_secs, limits) {
                Err(e) => result.error = Some(op_error(&e)),
                Ok(op) if !node.limiter.allow(&ns, &op.key) => {
                    node.metrics.rate_limited.inc();
                    result.error = Some(op_error(&KvError::TooManyRequests));
                }
                Ok(op) => {
                    if let OpKind::Put { expiration, .. } = &op.kind {
                        result.expiration = *expiration;
                    }
                    ops.push((results.len(), op));
                }
            }
            results.push(result);
        }
        if ops.is_empty() {
            return Ok(pb::WriteResponse { results });
        }
        let slots: Vec<usize> = ops.iter().map(|(i, _)| *i).collect();
        let ops = ops.into_iter().map(|(_, op)| op).collect();
        let started = Instant::now();
        let version = node.batcher.submit(NamespaceWrite { namespace: ns, ops }).await?;
        node.metrics.write_latency.observe(started.elapsed().as_secs_f64());
        for i in slots {
            results[i].version = version;
        }
        Ok(pb::WriteResponse { results })
    }

    async fn namespace_command(&self, cmd: Command) -> StoreResult<NamespaceRecord> {
        match propose(&self.node.raft, &self.node.metrics, cmd).await?.1 {
            CommandResult::Namespace(rec) => Ok(rec),
            other => Err(StoreError::Other(anyhow::anyhow!("unexpected apply result {other:?}"))),
        }
    }
}

/// Bytes a write item contributes toward the bulk size limit.
fn op_bytes(op: &pb::WriteOp) -> usize {
    let body = match &op.op {
        Some(pb::write_op::Op::Put(p)) => p.value.len() + p.metadata_json.as_ref().map_or(0, String::len),
        _ => 0,
    };
    op.key.len() + body
}

/// Runs the contract's checks on one item and resolves its expiration on the leader's clock.
fn checked_op(op: pb::WriteOp, now_secs: i64, limits: &kv_common::Limits) -> Result<Op, KvError> {
    match op.op {
        Some(pb::write_op::Op::Put(p)) => {
            let c = validate::put(
                &op.key,
                p.expiration,
                p.expiration_ttl,
                p.metadata_json.as_deref(),
                p.value.len(),
                now_secs,
                limits,
            )?;
            Ok(Op {
                key: op.key,
                kind: OpKind::Put { value: p.value.to_vec(), metadata: c.metadata, expiration: c.expiration },
            })
        }
        Some(pb::write_op::Op::Delete(_)) => {
            validate::key(&op.key, limits)?;
            Ok(Op { key: op.key, kind: OpKind::Delete })
        }
        None => Err(KvError::InvalidRequest("a write item must be a put or a delete".into())),
    }
}

/// The per-item form of a contract error.
fn op_error(e: &KvError) -> pb::OpError {
    pb::OpError { grpc_code: e.grpc_code() as i32, http_status: u32::from(e.http_status()), message: e.to_string() }
}

fn to_entry(e: StoredEntry) -> pb::Entry {
    pb::Entry {
        value: e.value.into(),
        metadata_json: e.meta.metadata,
        expiration: e.meta.expiration,
        version: e.meta.version,
    }
}

fn to_namespace(rec: NamespaceRecord) -> pb::Namespace {
    pb::Namespace { id: rec.id.to_string(), title: rec.title }
}

/// Serves locally on the leader, or forwards the call to it.
macro_rules! leader_or_forward {
    ($self:ident, $req:ident, $method:ident, $local:expr) => {
        match route(&$self.node, &$req)? {
            Route::Leader(ch) => kv_common::upstream::store_client(ch).$method(forwarded($req.into_inner())).await,
            Route::Local => Ok(Response::new($local($req.into_inner()).await?)),
        }
    };
}

type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<pb::WatchEvent, Status>>;

#[tonic::async_trait]
impl CentralStore for StoreService {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let req = req.into_inner();
        let ns = NamespaceId::parse(&req.namespace_id)?;
        validate::key(&req.key, &self.node.config.limits)?;
        self.caught_up(req.min_version).await?;
        self.node.metrics.reads.with_label_values(&["get"]).inc();
        let r = self.node.reader.get(&ns, &req.key, time::now_secs())?;
        Ok(Response::new(pb::GetResponse { entry: r.entry.map(to_entry), version: r.version, stale: false }))
    }

    async fn batch_get(&self, req: Request<pb::BatchGetRequest>) -> Result<Response<pb::BatchGetResponse>, Status> {
        let req = req.into_inner();
        let limits = &self.node.config.limits;
        let ns = NamespaceId::parse(&req.namespace_id)?;
        validate::bulk_get_count(req.keys.len(), limits)?;
        for k in &req.keys {
            validate::key(k, limits)?;
        }
        self.caught_up(req.min_version).await?;
        self.node.metrics.reads.with_label_values(&["batch_get"]).inc();
        let (entries, read_version) = self.node.reader.get_many(&ns, &req.keys, time::now_secs())?;
        let total: usize = entries.iter().flatten().map(|e| e.value.len()).sum();
        if total > limits.max_bulk_get_bytes {
            return Err(KvError::BulkGetTooLarge.into());
        }
        let results =
            req.keys.into_iter().zip(entries).map(|(key, e)| pb::KeyEntry { key, entry: e.map(to_entry) }).collect();
        Ok(Response::new(pb::BatchGetResponse { results, read_version, stale: false }))
    }

    async fn list(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let req = req.into_inner();
        let ns = NamespaceId::parse(&req.namespace_id)?;
        let asked = (req.limit != 0).then_some(i64::from(req.limit));
        let limit = validate::list_limit(asked, &self.node.config.limits)?;
        self.caught_up(req.min_version).await?;
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
        }))
    }

    async fn write(&self, req: Request<pb::WriteRequest>) -> Result<Response<pb::WriteResponse>, Status> {
        leader_or_forward!(self, req, write, |r| self.write_local(r))
    }

    async fn create_namespace(
        &self,
        req: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::Namespace>, Status> {
        leader_or_forward!(self, req, create_namespace, |r: pb::CreateNamespaceRequest| async move {
            validate_title(&r.title)?;
            let id = NamespaceId(rand::random());
            self.namespace_command(Command::CreateNamespace { id, title: r.title }).await.map(to_namespace)
        })
    }

    async fn list_namespaces(
        &self,
        req: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        let req = req.into_inner();
        let per_page = match req.per_page {
            0 => NAMESPACE_PAGE.0,
            n => n.min(NAMESPACE_PAGE.1),
        } as usize;
        let page = req.page.max(1) as usize;
        let all = self.node.reader.namespaces().map_err(Status::from)?;
        let total_count = all.len() as u32;
        let namespaces = all.into_iter().skip((page - 1) * per_page).take(per_page).map(to_namespace).collect();
        Ok(Response::new(pb::ListNamespacesResponse { namespaces, total_count }))
    }

    async fn get_namespace(&self, req: Request<pb::NamespaceRef>) -> Result<Response<pb::Namespace>, Status> {
        let id = NamespaceId::parse(&req.into_inner().namespace_id)?;
        Ok(Response::new(to_namespace(self.node.reader.namespace(&id)?)))
    }

    async fn rename_namespace(
        &self,
        req: Request<pb::RenameNamespaceRequest>,
    ) -> Result<Response<pb::Namespace>, Status> {
        leader_or_forward!(self, req, rename_namespace, |r: pb::RenameNamespaceRequest| async move {
            let id = NamespaceId::parse(&r.namespace_id)?;
            validate_title(&r.title)?;
            self.namespace_command(Command::RenameNamespace { id, title: r.title }).await.map(to_namespace)
        })
    }

    async fn delete_namespace(
        &self,
        req: Request<pb::NamespaceRef>,
    ) -> Result<Response<pb::DeleteNamespaceResponse>, Status> {
        leader_or_forward!(self, req, delete_namespace, |r: pb::NamespaceRef| async move {
            let id = NamespaceId::parse(&r.namespace_id)?;
            propose(&self.node.raft, &self.node.metrics, Command::DeleteNamespace { id }).await?;
            Ok::<_, StoreError>(pb::DeleteNamespaceResponse {})
        })
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        let start = if req.from_now { super::watch::Start::Now } else { super::watch::Start::After(req.from_version) };
        Ok(Response::new(super::watch::stream(self.node.clone(), start)))
    }
}
