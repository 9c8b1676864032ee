//! A small map whose entries end after a while: what a node remembers of credentials it has
//! checked, so that a request with a known key costs a SHA-256 and a lookup, not an argon2
//! hash and a database round trip.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries live at most `ttl`; at most `capacity` are kept (when full, the ended ones are
/// dropped, and if none has ended, all of them: a full cache is only refilled by checks).
pub struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    ttl: Duration,
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        TtlCache {
            entries: Mutex::new(HashMap::new()),
            ttl,
            capacity,
        }
    }

    /// The live entry for `key`.
    pub fn get(&self, key: &K) -> Option<V> {
        let entries = crate::sync::lock(&self.entries);
        entries
            .get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(value, _)| value.clone())
    }

    /// The entry for `key`, live or ended (kept until the cache is full): what was once
    /// checked, to be checked again cheaply.
    pub fn get_any(&self, key: &K) -> Option<V> {
        crate::sync::lock(&self.entries)
            .get(key)
            .map(|(value, _)| value.clone())
    }

    /// Keeps `value` for the cache's TTL, or for `at_most` if that is shorter.
    pub fn insert(&self, key: K, value: V, at_most: Option<Duration>) {
        let now = Instant::now();
        let life = at_most.map_or(self.ttl, |d| d.min(self.ttl));
        let mut entries = crate::sync::lock(&self.entries);
        if entries.len() >= self.capacity {
            entries.retain(|_, (_, until)| now < *until);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, (value, now + life));
    }

    pub fn remove(&self, key: &K) {
        crate::sync::lock(&self.entries).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_end_after_their_time_and_the_cache_stays_bounded() {
        let cache = TtlCache::new(Duration::from_secs(60), 2);
        cache.insert(1, "a", None);
        cache.insert(2, "b", Some(Duration::ZERO));
        assert_eq!(cache.get(&1), Some("a"));
        assert_eq!(cache.get(&2), None, "ended at once");
        assert_eq!(cache.get_any(&2), Some("b"), "but still known");
        cache.insert(3, "c", None);
        assert_eq!((cache.get(&1), cache.get(&3)), (Some("a"), Some("c")));
        cache.insert(4, "d", None);
        assert_eq!(cache.get(&4), Some("d"));
        assert!(crate::sync::lock(&cache.entries).len() <= 2);
        cache.remove(&4);
        assert_eq!(cache.get(&4), None);
    }
}
