//! A small bounded cache with a lifetime per entry, for webhook decisions.
//!
//! Bound: at most `capacity` entries. Overflow policy: on insert into a full cache, expired
//! entries are dropped first, then the oldest-inserted ones (FIFO), so the newest decision is
//! always kept. An entry is served only while `inserted <= now < expires`, so a clock that
//! jumps backwards retires entries instead of prolonging them.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, SystemTime};

struct Entry<V> {
    value: V,
    inserted: SystemTime,
    expires: SystemTime,
    seq: u64,
}

/// See the module docs.
pub(crate) struct TtlCache<K, V> {
    map: HashMap<K, Entry<V>>,
    /// Insertion order as (key, seq); a pair whose seq no longer matches the map is stale.
    order: VecDeque<(K, u64)>,
    capacity: usize,
    next_seq: u64,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    /// An empty cache holding at most `capacity` entries (0 disables caching).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            next_seq: 0,
        }
    }

    /// The live value for `key`, if any.
    pub(crate) fn get(&mut self, key: &K, now: SystemTime) -> Option<V> {
        let entry = self.map.get(key)?;
        if entry.inserted <= now && now < entry.expires {
            return Some(entry.value.clone());
        }
        self.map.remove(key);
        None
    }

    /// Stores `value` for `ttl` from `now`. A zero `ttl` stores nothing.
    pub(crate) fn insert(&mut self, key: K, value: V, ttl: Duration, now: SystemTime) {
        if self.capacity == 0 || ttl.is_zero() {
            return;
        }
        let Some(expires) = now.checked_add(ttl) else {
            return;
        };
        if !self.map.contains_key(&key) {
            self.make_room(now);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((key.clone(), seq));
        self.map.insert(
            key,
            Entry {
                value,
                inserted: now,
                expires,
                seq,
            },
        );
        // Re-inserted keys leave stale pairs in `order`; keep it within a constant of the map.
        if self.order.len() > self.capacity.saturating_mul(2) {
            let map = &self.map;
            self.order
                .retain(|(k, s)| map.get(k).is_some_and(|e| e.seq == *s));
        }
    }

    /// Number of entries held (live or not yet purged).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    fn make_room(&mut self, now: SystemTime) {
        if self.map.len() < self.capacity {
            return;
        }
        self.map.retain(|_, e| e.inserted <= now && now < e.expires);
        while self.map.len() >= self.capacity {
            let Some((k, s)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|e| e.seq == s) {
                self.map.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_and_stays_bounded() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut c = TtlCache::new(3);
        c.insert(1, "a", Duration::from_secs(5), t0);
        assert_eq!(c.get(&1, t0 + Duration::from_secs(4)), Some("a"));
        assert_eq!(c.get(&1, t0 + Duration::from_secs(5)), None);
        // Clock going backwards retires the entry.
        c.insert(2, "b", Duration::from_secs(5), t0);
        assert_eq!(c.get(&2, t0 - Duration::from_secs(1)), None);

        for i in 10..100 {
            c.insert(i, "x", Duration::from_secs(60), t0);
            assert!(c.len() <= 3);
            assert!(c.order.len() <= 6 + 1);
        }
        // The newest three survive (FIFO eviction).
        assert_eq!(c.get(&99, t0), Some("x"));
        assert_eq!(c.get(&97, t0), Some("x"));
        assert_eq!(c.get(&96, t0), None);

        // Re-inserting one key many times keeps `order` bounded.
        for _ in 0..100 {
            c.insert(99, "y", Duration::from_secs(60), t0);
            assert!(c.order.len() <= 7);
        }
        assert_eq!(c.get(&99, t0), Some("y"));
    }

    #[test]
    fn zero_ttl_or_capacity_stores_nothing() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut c = TtlCache::new(0);
        c.insert(1, 1, Duration::from_secs(5), t0);
        assert_eq!(c.get(&1, t0), None);
        let mut c = TtlCache::new(2);
        c.insert(1, 1, Duration::ZERO, t0);
        assert_eq!(c.len(), 0);
    }
}
