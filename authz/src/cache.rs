//! A small map shared by request threads for values derived from one immutable snapshot.

use std::sync::RwLock;

use crate::FastMap;

/// How many entries a snapshot's caches keep; a full cache is emptied.
const CACHE_CAPACITY: usize = 4_096;

/// A small map shared by request threads, emptied when it reaches its capacity. It holds
/// values derived from one immutable snapshot, so nothing in it ever goes stale.
#[derive(Debug)]
pub(crate) struct Cache<K, V> {
    map: RwLock<FastMap<K, V>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Cache<K, V> {
    /// An empty cache.
    pub(crate) fn new() -> Self {
        Self {
            map: RwLock::new(FastMap::default()),
        }
    }

    /// A clone of the value kept for `key`.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        // A poisoned lock only means a panic elsewhere; the map itself is always whole.
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(key).cloned()
    }

    /// Keeps `value` for `key`, first emptying the cache when it is full.
    pub(crate) fn insert(&self, key: K, value: V) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHE_CAPACITY {
            map.clear();
        }
        map.insert(key, value);
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> Default for Cache<K, V> {
    fn default() -> Self {
        Self::new()
    }
}
