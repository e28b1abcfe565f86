//! The clients of a fault-suite run: each is bound to one edge and, from its own seeded
//! random stream, calls get, bulk get, put (some with an expiration, some conditional on
//! the version the client last read), delete, bulk put and delete, and list on a small set
//! of shared keys, with random cacheTtls; some gets are STRONG, and some are session reads
//! at another edge with the version of the client's last write. Every value written is
//! unique, so any value read names the one write that made it.

use super::history::{Call, ItemDone, KeyRead, KeyWrite, Op, ReadMode, Recorder, WriteResult};
use kv_client::api;
use kv_client::RawClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How long one call may take before it counts as unanswered.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The cacheTtls reads pick from (seconds): short ones revalidate often, long ones rely on pushes.
const CACHE_TTLS: [i64; 5] = [1, 2, 5, 30, 300];
/// Calls per second per client, at most.
const PACE: Duration = Duration::from_millis(25);

/// One client of a run.
pub struct Client {
    pub id: usize,
    pub edge: usize,
    pub endpoint: SocketAddr,
    pub namespace: String,
    pub keys: usize,
    pub seed: u64,
    /// The bearer token every call sends.
    pub token: String,
    /// Another edge (its index and address), where session reads go.
    pub far: (usize, SocketAddr),
}

/// What a client remembers between its calls.
#[derive(Default)]
struct Memory {
    /// Values written so far (each unique).
    seq: u64,
    /// The version each key had when this client last read it at its edge (0: absent).
    seen: HashMap<String, u64>,
    /// The newest version of this client's own acknowledged writes: its session token.
    token: u64,
}

/// The keys a run uses.
pub fn key_name(i: usize) -> String {
    format!("k{i}")
}

pub fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid loopback address")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy()
}

/// `msg` as a request that gives up after `CALL_TIMEOUT`.
fn timed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(CALL_TIMEOUT);
    r
}

/// Whether a failed write certainly changed nothing (the contract refused it).
fn refused(s: &Status) -> bool {
    matches!(s.code(), Code::InvalidArgument | Code::NotFound | Code::ResourceExhausted | Code::FailedPrecondition)
}

fn write_failure(s: Status) -> WriteResult {
    let why = format!("{:?}: {}", s.code(), s.message());
    if let Some(current) = kv_common::error::current_version_of(&s) {
        WriteResult::ConditionFailed { current }
    } else if refused(&s) {
        WriteResult::Refused(why)
    } else {
        WriteResult::Unknown(why)
    }
}

/// Bytes of padding of a large value.
const LARGE: usize = 70 * 1024;

/// How a value is recorded: as it is, or a large one by its unique head and its length.
pub fn recorded(value: &str) -> String {
    match value.find('x') {
        Some(at) if value.len() > 1024 => format!("{}+{}", &value[..at], value.len() - at),
        _ => value.to_owned(),
    }
}

fn read_of(key: String, found: bool, value: &[u8], version: u64, status: i32, age_ms: u64) -> KeyRead {
    KeyRead {
        key,
        value: found.then(|| recorded(&String::from_utf8_lossy(value))),
        version,
        stale: status == api::CacheStatus::Stale as i32,
        age_ms,
    }
}

impl Client {
    /// Calls until `until`, recording each call.
    pub async fn run(self, rec: Recorder, until: Instant) {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let Ok(mut kv) = kv_client::raw_client(channel(self.endpoint), Some(&self.token)) else { return };
        let Ok(mut far) = kv_client::raw_client(channel(self.far.1), Some(&self.token)) else { return };
        let mut mem = Memory::default();
        while Instant::now() < until {
            let next = Instant::now() + PACE;
            let start = rec.now();
            let start_wall_ms = kv_common::time::now_ms();
            let (call, edge) = if rng.gen_bool(0.04) && mem.token > 0 {
                (self.session_read(&mut rng, &mut far, mem.token).await, self.far.0)
            } else {
                (self.one(&mut rng, &mut kv, &mut mem).await, self.edge)
            };
            rec.op(Op { id: 0, client: self.id, edge, start, end: rec.now(), start_wall_ms, call });
            tokio::time::sleep_until(next.into()).await;
        }
    }

    fn key(&self, rng: &mut StdRng) -> String {
        key_name(rng.gen_range(0..self.keys))
    }

    /// A unique value; some are large enough that the change feed leaves them out (over
    /// 64 KiB), so the tiers must fetch them.
    fn value(&self, rng: &mut StdRng, seq: &mut u64) -> String {
        *seq += 1;
        let large = if rng.gen_bool(0.05) { LARGE } else { 0 };
        format!("c{}-{}{}", self.id, seq, "x".repeat(large))
    }

    /// One get of `key` in `mode`, through `kv`.
    async fn get(&self, kv: &mut RawClient, key: String, cache_ttl: i64, mode: ReadMode) -> Call {
        let (consistency, min_version) = match mode {
            ReadMode::Eventual => (api::Consistency::Eventual, 0),
            ReadMode::Strong => (api::Consistency::Strong, 0),
            ReadMode::Session(token) => (api::Consistency::Eventual, token),
        };
        let req = api::GetRequest {
            namespace_id: self.namespace.clone(),
            key: key.clone(),
            cache_ttl: Some(cache_ttl),
            consistency: consistency as i32,
            min_version,
            ..Default::default()
        };
        let result = kv
            .get(timed(req))
            .await
            .map(|r| {
                let r = r.into_inner();
                vec![read_of(key.clone(), r.found, &r.value, r.version, r.cache_status, r.age_ms)]
            })
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()));
        Call::Read { keys: vec![key], cache_ttl_secs: cache_ttl, mode, result }
    }

    /// A read at another edge, at least as new as this client's last write.
    async fn session_read(&self, rng: &mut StdRng, far: &mut RawClient, token: u64) -> Call {
        let cache_ttl = CACHE_TTLS[rng.gen_range(0..CACHE_TTLS.len())];
        let key = self.key(rng);
        self.get(far, key, cache_ttl, ReadMode::Session(token)).await
    }

    async fn one(&self, rng: &mut StdRng, kv: &mut RawClient, mem: &mut Memory) -> Call {
        let call = self.call(rng, kv, mem).await;
        match &call {
            Call::Read { mode: ReadMode::Eventual, result: Ok(got), .. } => {
                for r in got {
                    mem.seen.insert(r.key.clone(), if r.value.is_some() { r.version } else { 0 });
                }
            }
            Call::Write { result: WriteResult::Done(items), .. } => {
                mem.token = items.iter().map(|i| i.version).fold(mem.token, u64::max);
            }
            _ => {}
        }
        call
    }

    async fn call(&self, rng: &mut StdRng, kv: &mut RawClient, mem: &mut Memory) -> Call {
        let seq = &mut mem.seq;
        let ns = self.namespace.clone();
        let roll = rng.gen_range(0..100);
        let cache_ttl = CACHE_TTLS[rng.gen_range(0..CACHE_TTLS.len())];
        match roll {
            0..=35 => {
                let key = self.key(rng);
                self.get(kv, key, cache_ttl, ReadMode::Eventual).await
            }
            36..=39 => {
                let key = self.key(rng);
                self.get(kv, key, cache_ttl, ReadMode::Strong).await
            }
            40..=49 => {
                let n = rng.gen_range(2..=4);
                let keys: Vec<String> = (0..n).map(|_| self.key(rng)).collect();
                let req = api::GetBulkRequest {
                    namespace_id: ns,
                    keys: keys.clone(),
                    r#type: api::ValueType::Text as i32,
                    with_metadata: false,
                    cache_ttl: Some(cache_ttl),
                    ..Default::default()
                };
                let result = kv
                    .get_bulk(timed(req))
                    .await
                    .map(|r| {
                        r.into_inner()
                            .values
                            .into_iter()
                            .map(|v| read_of(v.key, v.found, v.value.as_bytes(), v.version, v.cache_status, v.age_ms))
                            .collect()
                    })
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()));
                Call::Read { keys, cache_ttl_secs: cache_ttl, mode: ReadMode::Eventual, result }
            }
            50..=67 => {
                let key = self.key(rng);
                let value = self.value(rng, seq);
                // A third of the puts are conditional on the version this client last read.
                let if_version = rng.gen_bool(0.35).then(|| mem.seen.get(&key).copied().unwrap_or(0));
                let write = KeyWrite {
                    key: key.clone(),
                    value: Some(recorded(&value)),
                    expiration_ttl: rng.gen_bool(0.15).then(|| rng.gen_range(2..=4)),
                    if_version,
                };
                let req = api::PutRequest {
                    namespace_id: ns,
                    key,
                    value: value.into(),
                    expiration_ttl: write.expiration_ttl,
                    if_version,
                    ..Default::default()
                };
                let result = match kv.put(timed(req)).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        WriteResult::Done(vec![ItemDone {
                            version: r.version,
                            expiration: r.expiration,
                            refused: None,
                        }])
                    }
                    Err(s) => write_failure(s),
                };
                Call::Write { writes: vec![write], result }
            }
            68..=72 => {
                let write = KeyWrite { key: self.key(rng), value: None, expiration_ttl: None, if_version: None };
                let req = api::DeleteRequest {
                    namespace_id: ns,
                    key: write.key.clone(),
                    if_version: None,
                    ..Default::default()
                };
                let result = match kv.delete(timed(req)).await {
                    Ok(r) => WriteResult::Done(vec![ItemDone {
                        version: r.into_inner().version,
                        expiration: None,
                        refused: None,
                    }]),
                    Err(s) => write_failure(s),
                };
                Call::Write { writes: vec![write], result }
            }
            73..=81 => {
                let deletes = roll >= 79;
                let n = rng.gen_range(2..=3);
                let items: Vec<(String, Option<String>)> =
                    (0..n).map(|_| (self.key(rng), (!deletes).then(|| self.value(rng, seq)))).collect();
                let writes: Vec<KeyWrite> = items
                    .iter()
                    .map(|(key, value)| KeyWrite {
                        key: key.clone(),
                        value: value.as_deref().map(recorded),
                        expiration_ttl: None,
                        if_version: None,
                    })
                    .collect();
                let answer = if deletes {
                    let keys = items.iter().map(|(k, _)| k.clone()).collect();
                    kv.delete_bulk(timed(api::DeleteBulkRequest { namespace_id: ns, keys, ..Default::default() })).await
                } else {
                    let items = items
                        .iter()
                        .map(|(key, value)| api::BulkPutItem {
                            key: key.clone(),
                            value: value.clone().unwrap_or_default().into(),
                            ..Default::default()
                        })
                        .collect();
                    kv.put_bulk(timed(api::PutBulkRequest { namespace_id: ns, items, ..Default::default() })).await
                };
                let result = match answer {
                    Ok(r) => WriteResult::Done(bulk_items(&writes, r.into_inner())),
                    Err(s) => write_failure(s),
                };
                Call::Write { writes, result }
            }
            _ => {
                let prefix = if rng.gen_bool(0.3) { "k1".to_string() } else { String::new() };
                let result = list_all(kv, &ns, &prefix).await.map_err(|s| format!("{:?}: {}", s.code(), s.message()));
                Call::List { prefix, result }
            }
        }
    }
}

/// Each item's outcome in a bulk write's answer (all accepted items share its version).
fn bulk_items(writes: &[KeyWrite], r: api::BulkWriteResponse) -> Vec<ItemDone> {
    writes
        .iter()
        .map(|w| match r.errors.iter().find(|e| e.key == w.key) {
            Some(e) => ItemDone { version: 0, expiration: None, refused: Some(e.message.clone()) },
            None => ItemDone { version: r.version, expiration: None, refused: None },
        })
        .collect()
}

/// Every key of a list, page after page, from the start.
async fn list_all(kv: &mut RawClient, ns: &str, prefix: &str) -> Result<Vec<String>, Status> {
    let mut names = Vec::new();
    let mut cursor = String::new();
    loop {
        let req = api::ListRequest { namespace_id: ns.into(), prefix: prefix.into(), limit: Some(5), cursor };
        let page = kv.list(timed(req)).await?.into_inner();
        names.extend(page.keys.into_iter().map(|k| k.name));
        if page.list_complete {
            return Ok(names);
        }
        cursor = page.cursor;
    }
}
