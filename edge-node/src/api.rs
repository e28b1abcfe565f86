//! The client API (kv.client.v1.Kv): every input is checked against the contract here,
//! before anything goes upstream; then the edge's read and write paths do the work.

use crate::edge::{new_request_id, Edge, Want};
use bytes::{Bytes, BytesMut};
use kv_common::auth::{self, Access, Need, Principal};
use kv_common::namespace::{namespace_page_size, validate_title, NAMESPACE_PAGE};
use kv_common::{time, validate, KvError, NamespaceId, CURRENT_VERSION_TRAILER, HTTP_STATUS_TRAILER};
use kv_proto::client::v1::{self as api, kv_server::Kv};
use kv_proto::store::v1 as pb;
use kv_tier::{Served, Source, TierError, TierResult};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Size of the value chunks GetStream sends.
const STREAM_CHUNK: usize = 256 << 10;

/// The client API of one edge (the REST gateway calls it too).
#[derive(Clone)]
pub struct KvApi(pub Arc<Edge>);

impl KvApi {
    /// Counts a request refused by validation.
    fn check<T>(&self, r: Result<T, KvError>) -> TierResult<T> {
        r.inspect_err(|_| self.0.metrics.rejected.inc()).map_err(TierError::from)
    }

    /// Refuses a request the contract names no specific check for.
    fn refuse(&self, why: &str) -> Status {
        self.0.metrics.rejected.inc();
        KvError::InvalidRequest(why.into()).to_status()
    }

    fn namespace(&self, id: &str) -> TierResult<NamespaceId> {
        self.check(NamespaceId::parse(id))
    }

    /// Who the call comes from (401 without a valid token); checked before anything else.
    async fn who(&self, md: &tonic::metadata::MetadataMap) -> TierResult<Principal> {
        self.authenticate(auth::bearer_of(md)).await
    }

    /// Who a bearer token names (401 when none or not valid); the REST gateway asks first.
    pub async fn authenticate(&self, bearer: Option<&str>) -> TierResult<Principal> {
        let who = self.0.tokens.principal(bearer, self.0.tier.upstream()).await;
        self.allowed(who)
    }

    /// 403 unless `who` may do what the call needs.
    fn may(&self, who: &Principal, need: Need<'_>) -> TierResult<()> {
        self.allowed(who.require(need)).map(|_| ())
    }

    /// The namespace a call names, once `who` may do `need` in it.
    fn namespace_for(&self, who: &Principal, id: &str, access: Access) -> TierResult<NamespaceId> {
        let ns = self.namespace(id)?;
        self.may(who, access.on(&ns))?;
        Ok(ns)
    }

    fn allowed<T>(&self, r: Result<T, KvError>) -> TierResult<T> {
        r.inspect_err(|e| {
            if matches!(e, KvError::Unauthenticated(_) | KvError::PermissionDenied(_)) {
                self.0.metrics.unauthorized.inc();
            }
        })
        .map_err(TierError::from)
    }

    fn cache_ttl(&self, asked: Option<i64>) -> TierResult<Duration> {
        self.check(self.0.cache_ttl(asked))
    }

    /// A read's consistency and session token.
    fn want(&self, consistency: i32, min_version: u64) -> TierResult<Want> {
        let strong = match api::Consistency::try_from(consistency) {
            Ok(api::Consistency::Eventual) => false,
            Ok(api::Consistency::Strong) => true,
            Err(_) => return Err(self.refuse("consistency must be EVENTUAL or STRONG").into()),
        };
        Ok(Want { strong, min_version })
    }

    async fn read(&self, who: &Principal, req: &api::GetRequest) -> TierResult<Served> {
        let ns = self.namespace_for(who, &req.namespace_id, Access::Read)?;
        self.check(validate::key(&req.key, &self.0.config.limits))?;
        let ttl = self.cache_ttl(req.cache_ttl)?;
        let want = self.want(req.consistency, req.min_version)?;
        let mut out = self.0.read(&ns, std::slice::from_ref(&req.key), ttl, want).await;
        out.pop().unwrap_or_else(|| Err(tonic::Status::internal("no answer").into()))
    }

    /// Validates one put and turns it into a write op.
    fn put_op(&self, key: String, value: Bytes, options: PutOptions) -> Result<pb::WriteOp, KvError> {
        let limits = &self.0.config.limits;
        let now = time::central_now_secs();
        let PutOptions { expiration, expiration_ttl, metadata_json, if_version, if_absent } = options;
        let checked =
            validate::put(&key, expiration, expiration_ttl, metadata_json.as_deref(), value.len(), now, limits)?;
        let if_version = validate::condition(if_version, if_absent)?;
        let put = pb::Put { value, metadata_json: checked.metadata, expiration, expiration_ttl };
        Ok(pb::WriteOp { key, op: Some(pb::write_op::Op::Put(put)), if_version })
    }

    /// Validates one delete (of a key whose version must be `if_version`, when given).
    fn delete_op(&self, key: String, if_version: Option<u64>) -> Result<pb::WriteOp, KvError> {
        validate::key(&key, &self.0.config.limits)?;
        Ok(pb::WriteOp { key, op: Some(pb::write_op::Op::Delete(pb::Delete {})), if_version })
    }

    /// The store's name for a client's write: the client's name for it (the same across its
    /// retries) under its token's id, so no two callers' names meet; empty when the client
    /// gave none (the edge names it).
    fn request_id(&self, who: &Principal, client: &str) -> TierResult<String> {
        if client.is_empty() {
            return Ok(String::new());
        }
        self.check(validate::client_request_id(client))?;
        Ok(format!("{}/{client}", who.token_id))
    }

    /// Writes one op; its own failure becomes the call's error.
    async fn write_one(&self, ns: &NamespaceId, op: pb::WriteOp, request_id: String) -> TierResult<api::WriteResponse> {
        let resp = self.0.write(write_request(ns, vec![op], request_id)).await?;
        let r = resp.results.into_iter().next().ok_or_else(|| Status::internal("upstream returned no result"))?;
        match r.error {
            Some(e) => Err(op_status(&e).into()),
            None => Ok(api::WriteResponse { version: r.version, expiration: r.expiration }),
        }
    }

    /// Validates each item alone, writes the valid ones in one batch, and reports per key.
    async fn bulk(
        &self,
        ns: &NamespaceId,
        items: Vec<(String, Result<pb::WriteOp, KvError>)>,
        request_id: String,
    ) -> TierResult<api::BulkWriteResponse> {
        let mut out = api::BulkWriteResponse::default();
        let mut ops = Vec::new();
        for (key, op) in items {
            match op {
                Ok(op) => ops.push(op),
                Err(e) => {
                    self.0.metrics.rejected.inc();
                    let current = e.current_version().unwrap_or(0);
                    out.errors.push(key_error(key, u32::from(e.http_status()), e.to_string(), current));
                }
            }
        }
        if !ops.is_empty() {
            let resp = self.0.write(write_request(ns, ops, request_id)).await?;
            for r in resp.results {
                match r.error {
                    None => {
                        out.successful_key_count += 1;
                        out.version = out.version.max(r.version);
                    }
                    Some(e) => out.errors.push(key_error(r.key, e.http_status, e.message, e.current_version)),
                }
            }
        }
        out.unsuccessful_keys = out.errors.iter().map(|e| e.key.clone()).collect();
        Ok(out)
    }
}

/// A write of `ops` in `ns`, named `request_id` (when empty, the edge names it).
fn write_request(ns: &NamespaceId, ops: Vec<pb::WriteOp>, request_id: String) -> pb::WriteRequest {
    pb::WriteRequest { namespace_id: ns.to_string(), ops, request_id, track: None }
}

fn key_error(key: String, http_status: u32, message: String, current_version: u64) -> api::KeyError {
    api::KeyError { key, http_status, message, current_version }
}

/// The status a failed write item stands for, with the same code, message and trailers.
fn op_status(e: &pb::OpError) -> Status {
    let mut s = Status::new(tonic::Code::from(e.grpc_code), e.message.clone());
    s.metadata_mut().insert(HTTP_STATUS_TRAILER, e.http_status.into());
    if e.http_status == 412 {
        s.metadata_mut().insert(CURRENT_VERSION_TRAILER, e.current_version.into());
    }
    s
}

/// A put's options besides its key and value.
pub(crate) struct PutOptions {
    pub expiration: Option<i64>,
    pub expiration_ttl: Option<i64>,
    pub metadata_json: Option<String>,
    pub if_version: Option<u64>,
    pub if_absent: bool,
}

fn cache_status(s: Source) -> api::CacheStatus {
    match s {
        Source::Hit => api::CacheStatus::Hit,
        Source::Miss => api::CacheStatus::Miss,
        Source::Stale => api::CacheStatus::Stale,
    }
}

/// Whose copy answered: this edge's, or the tier above's that its fetch reached.
fn served_by(s: &Served) -> api::ServedBy {
    match s.served_by(pb::Tier::Edge) {
        pb::Tier::Edge => api::ServedBy::Edge,
        pb::Tier::Regional => api::ServedBy::Regional,
        pb::Tier::Central => api::ServedBy::Central,
        pb::Tier::Unspecified => api::ServedBy::Unspecified,
    }
}

/// How old an answer is, in milliseconds.
fn age_ms(s: &Served) -> u64 {
    u64::try_from(s.as_of.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The less fresh of two statuses: STALE over MISS over HIT.
fn least_fresh(a: api::CacheStatus, b: api::CacheStatus) -> api::CacheStatus {
    let rank = |s: api::CacheStatus| match s {
        api::CacheStatus::Stale => 3,
        api::CacheStatus::Miss => 2,
        _ => 1,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

fn to_grant(g: pb::Grant) -> api::Grant {
    api::Grant { namespace_id: g.namespace_id, read: g.read, write: g.write }
}

fn to_token(t: pb::TokenInfo) -> api::Token {
    api::Token {
        id: t.id,
        name: t.name,
        admin: t.admin,
        grants: t.grants.into_iter().map(to_grant).collect(),
        created_at: t.created_at,
    }
}

fn to_namespace(n: pb::Namespace) -> api::Namespace {
    api::Namespace { id: n.id, title: n.title }
}

type GetStreamOut = Pin<Box<dyn Stream<Item = Result<api::GetStreamChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Kv for KvApi {
    async fn create_namespace(
        &self,
        req: Request<api::CreateNamespaceRequest>,
    ) -> Result<Response<api::Namespace>, Status> {
        self.may(&self.who(req.metadata()).await?, Need::Admin)?;
        let title = req.into_inner().title;
        self.check(validate_title(&title))?;
        let r = pb::CreateNamespaceRequest { title, request_id: new_request_id() };
        let n = self.0.tier.upstream().create_namespace(r).await?;
        self.0.namespace_changed(n.version, None);
        Ok(Response::new(to_namespace(n)))
    }

    async fn list_namespaces(
        &self,
        req: Request<api::ListNamespacesRequest>,
    ) -> Result<Response<api::ListNamespacesResponse>, Status> {
        let who = self.who(req.metadata()).await?;
        let req = req.into_inner();
        if who.rights.allows(Need::ReadEvery) {
            let r = pb::ListNamespacesRequest {
                page: req.page,
                per_page: req.per_page,
                order: req.order,
                direction: req.direction,
            };
            let out = self.0.tier.upstream().list_namespaces(r).await?;
            return Ok(Response::new(api::ListNamespacesResponse {
                namespaces: out.namespaces.into_iter().map(to_namespace).collect(),
                total_count: out.total_count,
            }));
        }
        // A token scoped to some namespaces lists those: every page, filtered, paged here.
        let mine: std::collections::HashSet<String> = who
            .rights
            .grants
            .iter()
            .filter_map(|g| match &g.scope {
                auth::Scope::One(id) => Some(id.to_string()),
                auth::Scope::Every => None,
            })
            .collect();
        if mine.is_empty() {
            self.may(&who, Need::ReadEvery)?;
        }
        let mut seen = Vec::new();
        for page in 1.. {
            let r = pb::ListNamespacesRequest {
                page,
                per_page: NAMESPACE_PAGE.1,
                order: req.order.clone(),
                direction: req.direction.clone(),
            };
            let out = self.0.tier.upstream().list_namespaces(r).await?;
            let full = out.namespaces.len() == NAMESPACE_PAGE.1 as usize;
            seen.extend(out.namespaces.into_iter().filter(|n| mine.contains(&n.id)).map(to_namespace));
            if !full || page * NAMESPACE_PAGE.1 >= out.total_count {
                break;
            }
        }
        let per_page = namespace_page_size(req.per_page) as usize;
        let skip = (req.page.max(1) as usize - 1).saturating_mul(per_page);
        let total_count = seen.len() as u32;
        let namespaces = seen.into_iter().skip(skip).take(per_page).collect();
        Ok(Response::new(api::ListNamespacesResponse { namespaces, total_count }))
    }

    async fn get_namespace(&self, req: Request<api::NamespaceRef>) -> Result<Response<api::Namespace>, Status> {
        let who = self.who(req.metadata()).await?;
        let ns = self.namespace_for(&who, &req.into_inner().namespace_id, Access::Read)?;
        let r = pb::NamespaceRef { namespace_id: ns.to_string(), request_id: String::new() };
        Ok(Response::new(to_namespace(self.0.tier.upstream().get_namespace(r).await?)))
    }

    async fn rename_namespace(
        &self,
        req: Request<api::RenameNamespaceRequest>,
    ) -> Result<Response<api::Namespace>, Status> {
        self.may(&self.who(req.metadata()).await?, Need::Admin)?;
        let req = req.into_inner();
        let ns = self.namespace(&req.namespace_id)?;
        self.check(validate_title(&req.title))?;
        let r =
            pb::RenameNamespaceRequest { namespace_id: ns.to_string(), title: req.title, request_id: new_request_id() };
        let n = self.0.tier.upstream().rename_namespace(r).await?;
        self.0.namespace_changed(n.version, None);
        Ok(Response::new(to_namespace(n)))
    }

    async fn delete_namespace(
        &self,
        req: Request<api::NamespaceRef>,
    ) -> Result<Response<api::DeleteNamespaceResponse>, Status> {
        self.may(&self.who(req.metadata()).await?, Need::Admin)?;
        let ns = self.namespace(&req.into_inner().namespace_id)?;
        let r = pb::NamespaceRef { namespace_id: ns.to_string(), request_id: new_request_id() };
        let done = self.0.tier.upstream().delete_namespace(r).await?;
        self.0.namespace_changed(done.version, Some(&ns));
        Ok(Response::new(api::DeleteNamespaceResponse {}))
    }

    async fn get(&self, req: Request<api::GetRequest>) -> Result<Response<api::GetResponse>, Status> {
        let who = self.who(req.metadata()).await?;
        let req = req.into_inner();
        let s = self.read(&who, &req).await?;
        let visible = s.copy.visible(time::central_now_secs());
        Ok(Response::new(api::GetResponse {
            found: visible.is_some(),
            value: visible.map(|v| v.bytes.clone()).unwrap_or_default(),
            metadata_json: visible.filter(|_| req.with_metadata).and_then(|v| v.metadata_json.clone()),
            expiration: visible.and_then(|v| v.expiration),
            cache_status: cache_status(s.source) as i32,
            version: s.copy.version,
            age_ms: age_ms(&s),
            served_by: served_by(&s) as i32,
        }))
    }

    async fn get_bulk(&self, req: Request<api::GetBulkRequest>) -> Result<Response<api::GetBulkResponse>, Status> {
        let who = self.who(req.metadata()).await?;
        let req = req.into_inner();
        let limits = &self.0.config.limits;
        let ns = self.namespace_for(&who, &req.namespace_id, Access::Read)?;
        self.check(validate::bulk_get_count(req.keys.len(), limits))?;
        let json = match api::ValueType::try_from(req.r#type) {
            Ok(api::ValueType::Text) => false,
            Ok(api::ValueType::Json) => true,
            Err(_) => return Err(self.refuse("type must be text or json")),
        };
        for k in &req.keys {
            self.check(validate::key(k, limits))?;
        }
        let ttl = self.cache_ttl(req.cache_ttl)?;
        let want = self.want(req.consistency, req.min_version)?;
        let answers = self.0.read(&ns, &req.keys, ttl, want).await;
        let now = time::central_now_secs();
        let mut total = 0usize;
        let mut values = Vec::with_capacity(answers.len());
        let mut overall = api::CacheStatus::Hit;
        for (key, s) in req.keys.into_iter().zip(answers) {
            let s = s?;
            let v = s.copy.visible(now);
            total += v.map_or(0, |v| v.bytes.len());
            let text = v.map(|v| String::from_utf8_lossy(&v.bytes).into_owned());
            if json && text.as_deref().is_some_and(|t| !validate::is_json(t)) {
                return Err(KvError::BulkGetNotJson.into());
            }
            let status = cache_status(s.source);
            overall = least_fresh(overall, status);
            values.push(api::BulkValue {
                key,
                found: v.is_some(),
                value: text.unwrap_or_default(),
                metadata_json: v.filter(|_| req.with_metadata).and_then(|v| v.metadata_json.clone()),
                cache_status: status as i32,
                version: s.copy.version,
                age_ms: age_ms(&s),
                served_by: served_by(&s) as i32,
            });
        }
        if total > limits.max_bulk_get_bytes {
            return Err(KvError::BulkGetTooLarge.into());
        }
        Ok(Response::new(api::GetBulkResponse { values, cache_status: overall as i32 }))
    }

    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<api::WatchEvent, Status>>;

    async fn watch(&self, req: Request<api::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let who = self.who(req.metadata()).await?;
        let req = req.into_inner();
        let ns = self.namespace_for(&who, &req.namespace_id, Access::Read)?;
        for k in &req.keys {
            self.check(validate::key(k, &self.0.config.limits))?;
        }
        self.check(validate::prefix(&req.prefix, &self.0.config.limits))?;
        // An unknown namespace is NOT_FOUND, as for a read, rather than a stream of nothing.
        let r = pb::NamespaceRef { namespace_id: ns.to_string(), request_id: String::new() };
        self.0.tier.upstream().get_namespace(r).await?;
        let req = api::WatchRequest { namespace_id: ns.to_string(), ..req };
        Ok(Response::new(self.0.watches.watch(req)))
    }

    type GetStreamStream = GetStreamOut;

    async fn get_stream(&self, req: Request<api::GetRequest>) -> Result<Response<GetStreamOut>, Status> {
        let who = self.who(req.metadata()).await?;
        let req = req.into_inner();
        let s = self.read(&who, &req).await?;
        let visible = s.copy.visible(time::central_now_secs());
        let value = visible.map(|v| v.bytes.clone()).unwrap_or_default();
        let header = api::GetStreamHeader {
            found: visible.is_some(),
            metadata_json: visible.filter(|_| req.with_metadata).and_then(|v| v.metadata_json.clone()),
            expiration: visible.and_then(|v| v.expiration),
            cache_status: cache_status(s.source) as i32,
            version: s.copy.version,
            value_length: value.len() as u64,
            age_ms: age_ms(&s),
            served_by: served_by(&s) as i32,
        };
        // Chunks are slices of the one cached buffer: no second copy of the value.
        let chunks = (0..value.len()).step_by(STREAM_CHUNK).map(move |at| {
            let end = (at + STREAM_CHUNK).min(value.len());
            Ok(api::GetStreamChunk { part: Some(api::get_stream_chunk::Part::Chunk(value.slice(at..end))) })
        });
        let first = Ok(api::GetStreamChunk { part: Some(api::get_stream_chunk::Part::Header(header)) });
        Ok(Response::new(Box::pin(tokio_stream::iter(std::iter::once(first).chain(chunks)))))
    }

    async fn put(&self, req: Request<api::PutRequest>) -> Result<Response<api::WriteResponse>, Status> {
        let who = self.who(req.metadata()).await?;
        let req = req.into_inner();
        let ns = self.namespace_for(&who, &req.namespace_id, Access::Write)?;
        let id = self.request_id(&who, &req.request_id)?;
        let options = PutOptions {
            expiration: req.expiration,
            expiration_ttl: req.expiration_ttl,
            metadata_json: req.metadata_json,
            if_version: req.if_version,
            if_absent: req.if_absent,
        };
        let op = self.check(self.put_op(req.key, req.value, options))?;
        Ok(Response::new(self.write_one(&ns, op, id).await?))
    }

    async fn put_stream(
        &self,
        req: Request<Streaming<api::PutStreamChunk>>,
    ) -> Result<Response<api::WriteResponse>, Status> {
        let who = self.who(req.metadata()).await?;
        let mut stream = req.into_inner();
        let header = match stream.next().await {
            Some(Ok(api::PutStreamChunk { part: Some(api::put_stream_chunk::Part::Header(h)) })) => h,
            Some(Err(e)) => return Err(e),
            _ => return Err(self.refuse("PutStream must start with a header")),
        };
        let ns = self.namespace_for(&who, &header.namespace_id, Access::Write)?;
        let id = self.request_id(&who, &header.request_id)?;
        let limits = &self.0.config.limits;
        let options = || PutOptions {
            expiration: header.expiration,
            expiration_ttl: header.expiration_ttl,
            metadata_json: header.metadata_json.clone(),
            if_version: header.if_version,
            if_absent: header.if_absent,
        };
        // Check everything but the size before taking in the value.
        self.check(self.put_op(header.key.clone(), Bytes::new(), options()))?;
        let mut value = BytesMut::new();
        while let Some(part) = stream.next().await {
            match part?.part {
                Some(api::put_stream_chunk::Part::Chunk(c)) => {
                    self.check(validate::value_len(value.len() + c.len(), limits))?;
                    value.extend_from_slice(&c);
                }
                _ => return Err(self.refuse("only one header per PutStream")),
            }
        }
        let op = self.check(self.put_op(header.key.clone(), value.freeze(), options()))?;
        Ok(Response::new(self.write_one(&ns, op, id).await?))
    }

    async fn delete(&self, req: Request<api::DeleteRequest>) -> Result<Response<api::WriteResponse>, Status> {
        let who = self.who(req.metadata()).await?;
        let req = req.into_inner();
        let ns = self.namespace_for(&who, &req.namespace_id, Access::Write)?;
        let id = self.request_id(&who, &req.request_id)?;
        let op = self.check(self.delete_op(req.key, req.if_version))?;
        Ok(Response::new(self.write_one(&ns, op, id).await?))
    }

    async fn list(&self, req: Request<api::ListRequest>) -> Result<Response<api::ListResponse>, Status> {
        let who = self.who(req.metadata()).await?;
        let req = req.into_inner();
        let ns = self.namespace_for(&who, &req.namespace_id, Access::Read)?;
        let limit = self.check(validate::list_limit(req.limit, &self.0.config.limits))?;
        self.check(validate::prefix(&req.prefix, &self.0.config.limits))?;
        let r = pb::ListRequest {
            namespace_id: ns.to_string(),
            prefix: req.prefix,
            limit,
            cursor: req.cursor,
            min_version: 0,
            max_age_ms: 0,
        };
        let out = self.0.list(r).await?;
        Ok(Response::new(api::ListResponse {
            keys: out
                .keys
                .into_iter()
                .map(|k| api::ListedKey { name: k.name, expiration: k.expiration, metadata_json: k.metadata_json })
                .collect(),
            list_complete: out.list_complete,
            cursor: out.cursor,
        }))
    }

    async fn put_bulk(&self, req: Request<api::PutBulkRequest>) -> Result<Response<api::BulkWriteResponse>, Status> {
        let who = self.who(req.metadata()).await?;
        let req = req.into_inner();
        let ns = self.namespace_for(&who, &req.namespace_id, Access::Write)?;
        let id = self.request_id(&who, &req.request_id)?;
        let bytes = req
            .items
            .iter()
            .map(|i| i.key.len() + i.value.len() + i.metadata_json.as_ref().map_or(0, String::len))
            .sum();
        self.check(validate::bulk_write(req.items.len(), bytes, &self.0.config.limits))?;
        let items = req
            .items
            .into_iter()
            .map(|i| {
                let options = PutOptions {
                    expiration: i.expiration,
                    expiration_ttl: i.expiration_ttl,
                    metadata_json: i.metadata_json,
                    if_version: i.if_version,
                    if_absent: i.if_absent,
                };
                (i.key.clone(), self.put_op(i.key, i.value, options))
            })
            .collect();
        Ok(Response::new(self.bulk(&ns, items, id).await?))
    }

    async fn delete_bulk(
        &self,
        req: Request<api::DeleteBulkRequest>,
    ) -> Result<Response<api::BulkWriteResponse>, Status> {
        let who = self.who(req.metadata()).await?;
        let req = req.into_inner();
        let ns = self.namespace_for(&who, &req.namespace_id, Access::Write)?;
        let id = self.request_id(&who, &req.request_id)?;
        let bytes = req.keys.iter().map(String::len).sum();
        self.check(validate::bulk_write(req.keys.len(), bytes, &self.0.config.limits))?;
        let listed: std::collections::HashSet<&String> = req.keys.iter().collect();
        if let Some(k) = req.if_versions.keys().find(|k| !listed.contains(k)) {
            return Err(self.refuse(&format!("if_versions names {k:?}, which keys does not")));
        }
        let items = req
            .keys
            .into_iter()
            .map(|k| {
                let op = self.delete_op(k.clone(), req.if_versions.get(&k).copied());
                (k, op)
            })
            .collect();
        Ok(Response::new(self.bulk(&ns, items, id).await?))
    }

    async fn create_token(&self, req: Request<api::CreateTokenRequest>) -> Result<Response<api::CreatedToken>, Status> {
        self.may(&self.who(req.metadata()).await?, Need::Admin)?;
        let req = req.into_inner();
        let grants: Vec<pb::Grant> = req
            .grants
            .into_iter()
            .map(|g| pb::Grant { namespace_id: g.namespace_id, read: g.read, write: g.write })
            .collect();
        self.check(auth::validate_name(&req.name))?;
        self.check(auth::rights_from_wire(req.admin, &grants))?;
        let minted = auth::mint();
        let token =
            pb::TokenInfo { id: minted.id, name: req.name, admin: req.admin, grants, created_at: 0, version: 0 };
        let r = pb::CreateTokenRequest {
            token: Some(token),
            secret_sha256: minted.digest.0.to_vec(),
            request_id: new_request_id(),
        };
        let made = self.0.tier.upstream().create_token(r).await?;
        Ok(Response::new(api::CreatedToken { token: Some(to_token(made)), secret: minted.token }))
    }

    async fn list_tokens(
        &self,
        req: Request<api::ListTokensRequest>,
    ) -> Result<Response<api::ListTokensResponse>, Status> {
        self.may(&self.who(req.metadata()).await?, Need::Admin)?;
        let out = self.0.tier.upstream().list_tokens(pb::ListTokensRequest {}).await?;
        Ok(Response::new(api::ListTokensResponse { tokens: out.tokens.into_iter().map(to_token).collect() }))
    }

    async fn revoke_token(
        &self,
        req: Request<api::RevokeTokenRequest>,
    ) -> Result<Response<api::RevokeTokenResponse>, Status> {
        self.may(&self.who(req.metadata()).await?, Need::Admin)?;
        let id = req.into_inner().token_id;
        self.check(auth::validate_id(&id))?;
        let r = pb::RevokeTokenRequest { token_id: id.clone(), request_id: new_request_id() };
        self.0.tier.upstream().revoke_token(r).await?;
        self.0.tokens.forget(&id).await;
        Ok(Response::new(api::RevokeTokenResponse {}))
    }

    async fn verify_token(&self, req: Request<api::VerifyTokenRequest>) -> Result<Response<api::Token>, Status> {
        let who = self.who(req.metadata()).await?;
        Ok(Response::new(api::Token {
            grants: auth::grants_to_wire(&who.rights).into_iter().map(to_grant).collect(),
            id: who.token_id,
            name: String::new(),
            admin: who.rights.admin,
            created_at: 0,
        }))
    }
}
