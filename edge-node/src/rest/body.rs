//! Request bodies: read whole (every route needs all of it), within the route's limit and
//! within the node's budget of body bytes held at once. Past the budget a request is shed
//! (503, "retry elsewhere or later") before its body is read, so memory stays bounded in
//! bytes however many large writes arrive together.

use super::envelope::RestError;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use kv_common::call::OVERLOADED;
use kv_common::KvError;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget is kept in KiB, so that it fits a semaphore's permits on any machine.
const UNIT: usize = 1024;

/// Body bytes the gateway may hold at once.
#[derive(Clone)]
pub struct Budget(Arc<Semaphore>);

impl Budget {
    pub fn new(bytes: usize) -> Budget {
        Budget(Arc::new(Semaphore::new((bytes / UNIT).min(Semaphore::MAX_PERMITS))))
    }
}

/// A body that was read, and its share of the budget, given back when dropped.
pub struct Read {
    pub bytes: Bytes,
    _share: OwnedSemaphorePermit,
}

/// Reads a body of at most `limit` bytes, its share of `budget` taken first (its declared
/// length, else `limit`). A longer body is `too_large(length)`, its length as declared when
/// it was; a body the client stopped sending is a 400.
pub async fn read(
    budget: &Budget,
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
    too_large: impl FnOnce(usize) -> KvError,
) -> Result<Read, RestError> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if let Some(n) = declared.filter(|n| *n > limit) {
        return Err(too_large(n).into());
    }
    let units = u32::try_from(declared.unwrap_or(limit).div_ceil(UNIT)).unwrap_or(u32::MAX);
    let share = budget
        .0
        .clone()
        .try_acquire_many_owned(units)
        .map_err(|_| RestError::from(tonic::Status::unavailable(OVERLOADED)))?;
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(Read { bytes, _share: share }),
        Err(e) if over_limit(&e) => Err(too_large(declared.unwrap_or(limit + 1)).into()),
        Err(e) => Err(KvError::InvalidRequest(format!("the request body could not be read: {e}")).into()),
    }
}

/// Whether reading failed because the body passed its limit.
fn over_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Parses a JSON request body, with a clear 400 when it is not what the route takes.
pub fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, RestError> {
    serde_json::from_slice(body).map_err(|e| KvError::InvalidRequest(format!("malformed request body: {e}")).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_are_bounded_by_their_limit_and_by_the_budget() {
        let budget = Budget::new(4 * UNIT);
        let headers = HeaderMap::new();
        let too_large = |n| KvError::ValueTooLarge { len: n, limit: 10 };
        let got = read(&budget, &headers, "12345".into(), 10, too_large).await.unwrap();
        assert_eq!(&got.bytes[..], b"12345");
        let long = read(&budget, &headers, "0123456789ab".into(), 10, too_large).await;
        assert!(long.is_err(), "past its limit");
        // The first body still holds its share (the limit's, as it declared no length).
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, (4 * UNIT).into());
        let shed = read(&budget, &declared, "x".into(), 8 * UNIT, too_large).await;
        assert!(shed.is_err(), "past the budget: shed");
        drop(got);
        assert!(read(&budget, &declared, "x".into(), 8 * UNIT, too_large).await.is_ok());
    }
}
