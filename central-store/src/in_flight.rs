//! Requests with an id that are being proposed on this leader: a retry that arrives while
//! the first attempt is still under way joins it instead of proposing again.

use crate::types::Recorded;
use futures::future::{BoxFuture, FutureExt, Shared};
use kv_common::KvError;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, PoisonError};

type Attempt = Shared<BoxFuture<'static, Result<Recorded, KvError>>>;

/// Requests with an id that are being proposed on this leader.
#[derive(Default)]
pub struct InFlight {
    map: Mutex<HashMap<String, Attempt>>,
}

impl InFlight {
    /// Runs `attempt` for `request`, or joins the one under way for the same id. The attempt
    /// runs as its own task, so a caller that goes away does not abandon it half done.
    pub async fn run<F>(&self, request: Option<&String>, attempt: F) -> Result<Recorded, KvError>
    where
        F: Future<Output = Result<Recorded, KvError>> + Send + 'static,
    {
        let Some(id) = request else { return attempt.await };
        let shared = {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            match map.get(id) {
                Some(a) => a.clone(),
                None => {
                    // The attempt keeps the first caller's trace and deadline.
                    let task = kv_common::call::spawn(attempt);
                    let a = async move { task.await.unwrap_or_else(|e| Err(KvError::Internal(e.to_string()))) }
                        .boxed()
                        .shared();
                    map.insert(id.clone(), a.clone());
                    a
                }
            }
        };
        let out = shared.clone().await;
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(id).is_some_and(|a| a.ptr_eq(&shared)) {
            map.remove(id);
        }
        out
    }
}
