//! A small map shared by request threads for values derived from one immutable snapshot.

use std::sync::RwLock;

use crate::FastMap;

/// How many entries a snapshot's caches keep unless told otherwise; a full cache is emptied.
const CACHE_CAPACITY: usize = 4_096;

/// A small map shared by request threads, emptied when it reaches its capacity. It holds
/// values derived from one immutable snapshot, so nothing in it ever goes stale.
#[derive(Debug)]
pub(crate) struct Cache<K, V> {
    map: RwLock<FastMap<K, V>>,
    capacity: usize,
}

impl<K: std::hash::Hash + Eq, V: Clone> Cache<K, V> {
    /// An empty cache of the default capacity.
    pub(crate) fn new() -> Self {
        Self::with_capacity(CACHE_CAPACITY)
    }

    /// An empty cache that keeps at most `capacity` entries.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            map: RwLock::new(FastMap::default()),
            capacity,
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
        if map.len() >= self.capacity {
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

#[cfg(test)]
mod tests {
    use super::Cache;

    #[test]
    fn a_full_cache_starts_over_and_never_holds_more_than_its_capacity() {
        let cache = Cache::with_capacity(2);
        cache.insert(1, "one");
        cache.insert(2, "two");
        assert_eq!((cache.get(&1), cache.get(&2)), (Some("one"), Some("two")));
        cache.insert(3, "three");
        assert_eq!((cache.get(&1), cache.get(&2)), (None, None));
        assert_eq!(cache.get(&3), Some("three"));
    }
}
