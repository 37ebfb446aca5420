//! A small map whose entries expire: how authentication avoids a database
//! round trip per call while still noticing changes within the TTL.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// Above this many entries, expired ones are swept on insert (bounds memory).
const SWEEP_ABOVE: usize = 100_000;

pub struct TtlCache<K, V> {
    ttl: Duration,
    /// Value and expiry. Expiries are spread over the last 20% of the TTL so entries
    /// cached together do not all miss in the same instant (a stampede on
    /// the database).
    entries: RwLock<HashMap<K, (V, Instant)>>,
}

impl<K: Hash + Eq, V: Copy> TtlCache<K, V> {
    /// A zero TTL disables the cache: nothing is stored.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: RwLock::new(HashMap::new()),
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(_, expires)| Instant::now() < *expires)
            .map(|(v, _)| *v)
    }

    pub fn put(&self, key: K, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if entries.len() >= SWEEP_ABOVE {
            entries.retain(|_, (_, expires)| now < *expires);
        }
        let spread = self
            .ttl
            .mul_f64(rand::random_range(0.8..1.2))
            .min(self.ttl.mul_f64(1.2));
        entries.insert(key, (value, now + spread));
    }

    pub fn remove<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.write().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_a_zero_ttl_stores_nothing() {
        let cache = TtlCache::new(Duration::from_millis(30));
        cache.put("a".to_owned(), 1);
        assert_eq!(cache.get("a"), Some(1));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get("a"), None);
        cache.put("b".to_owned(), 2);
        cache.remove("b");
        assert_eq!(cache.get("b"), None);
        let off = TtlCache::new(Duration::ZERO);
        off.put(1, 1);
        assert_eq!(off.get(&1), None);
    }
}
