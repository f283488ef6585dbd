//! Runtime state that outlives snapshots.
//!
//! Breaker counters, latency estimates, ejections and connection pools belong
//! to a backend or an endpoint, not to a version of the config: a config push
//! that leaves a backend unchanged must not reset them. They live in a
//! [`StateMap`] keyed by [`BackendKey`] or [`EndpointKey`], and a snapshot
//! only names those keys. After a publish, [`StateMap::retain`] drops the
//! state of what the new snapshot no longer names.
//!
//! ```
//! use proxyless_core::state::{EndpointKey, StateMap};
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! let inflight: StateMap<EndpointKey, AtomicU64> = StateMap::new();
//! let key = EndpointKey::new("reviews-v1", "127.0.0.1:9001");
//! inflight.get_or_insert_with(&key, || AtomicU64::new(0)).fetch_add(1, Ordering::Relaxed);
//! // The same key (e.g. from a newer snapshot) finds the same state.
//! let again = inflight.get_or_insert_with(&key, || AtomicU64::new(0));
//! assert_eq!(again.load(Ordering::Relaxed), 1);
//! ```

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

/// Identifies a backend across snapshots: its name.
pub type BackendKey = Arc<str>;

/// Identifies an endpoint across snapshots: its backend and address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    /// The backend's name.
    pub backend: Arc<str>,
    /// The endpoint's `host:port`.
    pub address: Arc<str>,
}

impl EndpointKey {
    /// A key from a backend name and an address.
    pub fn new(backend: impl Into<Arc<str>>, address: impl Into<Arc<str>>) -> Self {
        Self {
            backend: backend.into(),
            address: address.into(),
        }
    }
}

/// Shared state per key. Lookups take a short lock; callers on the hot path
/// resolve their `Arc<V>` once per snapshot and keep it.
#[derive(Debug)]
pub struct StateMap<K, V> {
    map: Mutex<HashMap<K, Arc<V>>>,
}

impl<K, V> Default for StateMap<K, V> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V> StateMap<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state of `key`, created by `init` if there is none yet.
    pub fn get_or_insert_with(&self, key: &K, init: impl FnOnce() -> V) -> Arc<V> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = map.get(key) {
            return v.clone();
        }
        let v = Arc::new(init());
        map.insert(key.clone(), v.clone());
        v
    }

    /// The state of `key`, if any.
    pub fn get(&self, key: &K) -> Option<Arc<V>> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key).cloned()
    }

    /// Drops the state of `key`, if any.
    pub fn remove(&self, key: &K) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.remove(key);
    }

    /// Keeps only the keys for which `keep` is true (call after a publish
    /// with "is it still in the snapshot").
    pub fn retain(&self, mut keep: impl FnMut(&K) -> bool) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|k, _| keep(k));
    }

    /// How many keys have state.
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no key has state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl crate::snapshot::Snapshot {
    /// Whether this snapshot names the endpoint `key`.
    pub fn has_endpoint(&self, key: &EndpointKey) -> bool {
        self.backend_named(&key.backend)
            .is_some_and(|b| b.endpoints().iter().any(|e| e.address == key.address))
    }

    /// Whether this snapshot names the backend `key`.
    pub fn has_backend(&self, key: &str) -> bool {
        self.backend_named(key).is_some()
    }
}
