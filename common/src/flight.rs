//! Request coalescing: concurrent misses of one key share a single upstream fetch.

use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Whether a caller started the fetch or joined one already under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Waiter,
}

type Flight<V> = Shared<BoxFuture<'static, V>>;

/// The fetches under way, by key.
pub struct Flights<K, V: Clone> {
    map: Mutex<HashMap<K, Flight<V>>>,
}

impl<K: Eq + Hash + Clone, V: Clone + Send + Sync + 'static> Default for Flights<K, V> {
    fn default() -> Self {
        Flights { map: Mutex::new(HashMap::new()) }
    }
}

impl<K: Eq + Hash + Clone, V: Clone + Send + Sync + 'static> Flights<K, V> {
    /// Joins the fetch of `key` under way, or starts `fetch` as the one for everybody.
    /// The fetch runs to its end even if the caller that started it goes away while others wait.
    pub async fn run<F>(&self, key: K, fetch: impl FnOnce() -> F) -> (V, Role)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (flight, role) = {
            let mut map = self.lock();
            match map.get(&key) {
                Some(f) => (f.clone(), Role::Waiter),
                None => {
                    let f = fetch().boxed().shared();
                    map.insert(key.clone(), f.clone());
                    (f, Role::Leader)
                }
            }
        };
        let out = flight.clone().await;
        let mut map = self.lock();
        if map.get(&key).is_some_and(|f| f.ptr_eq(&flight)) {
            map.remove(&key);
        }
        (out, role)
    }

    /// Whether a fetch of `key` is under way (a push for it must not be lost).
    pub fn in_flight(&self, key: &K) -> bool {
        self.lock().contains_key(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Flight<V>>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Shared behind an `Arc` by the handlers of one tier.
pub type SharedFlights<K, V> = Arc<Flights<K, V>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let flights: Arc<Flights<&'static str, u32>> = Arc::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (flights, calls, mut gate) = (flights.clone(), calls.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                flights
                    .run("k", move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let _ = gate.wait_for(|open| *open).await;
                        7
                    })
                    .await
            }));
        }
        while !flights.in_flight(&"k") {
            tokio::task::yield_now().await;
        }
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        release.send_replace(true);
        let mut leaders = 0;
        for t in tasks {
            let (v, role) = t.await.unwrap();
            assert_eq!(v, 7);
            leaders += usize::from(role == Role::Leader);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert!(!flights.in_flight(&"k"));
    }
}
