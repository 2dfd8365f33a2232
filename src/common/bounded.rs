//! A map with a fixed number of entries, for state keyed by what users write (a region
//! of any shape the schema allows): when full, the entry used longest ago makes room.
//! Without it, each new string a namespace user puts in a resource would add an SDK
//! client or a quota bucket that the shared controller keeps for ever.

use std::collections::HashMap;
use std::hash::Hash;

/// At most `cap` entries; the least recently used goes first.
#[derive(Debug)]
pub struct Bounded<K, V> {
    cap: usize,
    clock: u64,
    entries: HashMap<K, (V, u64)>,
}

impl<K: Eq + Hash + Clone, V> Bounded<K, V> {
    /// A map of at most `cap` (at least 1) entries.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            clock: 0,
            entries: HashMap::new(),
        }
    }

    /// The entry for `key`, made by `make` when there is none (evicting the entry used
    /// longest ago when the map is full).
    pub fn get_or_insert_with(&mut self, key: &K, make: impl FnOnce() -> V) -> &mut V {
        self.clock += 1;
        let now = self.clock;
        if !self.entries.contains_key(key) && self.entries.len() >= self.cap {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
        let entry = self
            .entries
            .entry(key.clone())
            .or_insert_with(|| (make(), now));
        entry.1 = now;
        &mut entry.0
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Keeps only the entries whose key `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }
}

/// Which value (a region) each user (a resource) is on, and how many are on each: the
/// moment a value has no user left, `set` and `remove` return it, so what is kept for it
/// (SDK clients, quota buckets) goes with its last resource, not only when 32 others
/// push it out of a `Bounded`.
#[derive(Debug, Default)]
pub struct Users {
    on: HashMap<String, String>,
    count: HashMap<String, usize>,
}

impl Users {
    /// `user` is on `value` now; returns the value it left if nobody else is on it.
    pub fn set(&mut self, user: &str, value: &str) -> Option<String> {
        if self.on.get(user).is_some_and(|v| v == value) {
            return None;
        }
        *self.count.entry(value.to_string()).or_default() += 1;
        let left = self.on.insert(user.to_string(), value.to_string())?;
        self.leave(left)
    }

    /// `user` is gone; returns the value it was on if nobody else is.
    pub fn remove(&mut self, user: &str) -> Option<String> {
        let left = self.on.remove(user)?;
        self.leave(left)
    }

    fn leave(&mut self, value: String) -> Option<String> {
        let n = self.count.get_mut(&value)?;
        *n = n.saturating_sub(1);
        if *n > 0 {
            return None;
        }
        self.count.remove(&value);
        Some(value)
    }

    /// Values with at least one user.
    pub fn values(&self) -> usize {
        self.count.len()
    }
}

#[cfg(test)]
mod tests {
    use super::{Bounded, Users};

    #[test]
    fn a_value_is_given_back_when_its_last_user_leaves_it() {
        let mut u = Users::default();
        assert_eq!(u.set("ns/a", "us-east-1"), None);
        assert_eq!(u.set("ns/b", "us-east-1"), None);
        assert_eq!(
            u.set("ns/a", "us-east-1"),
            None,
            "the same again changes nothing"
        );
        assert_eq!(u.set("ns/c", "zz-aa-1"), None);
        // c moves: zz-aa-1 has nobody left.
        assert_eq!(u.set("ns/c", "us-east-1"), Some("zz-aa-1".into()));
        assert_eq!(u.remove("ns/a"), None);
        assert_eq!(u.remove("ns/b"), None);
        assert_eq!(u.remove("ns/c"), Some("us-east-1".into()));
        assert_eq!(u.remove("ns/c"), None, "gone twice is gone once");
        assert_eq!(u.values(), 0);
        // 200 resources on 200 regions, all deleted: nothing kept.
        for i in 0..200 {
            u.set(&format!("ns/r{i}"), &format!("zz-{i}"));
        }
        assert_eq!(u.values(), 200);
        let freed = (0..200)
            .filter_map(|i| u.remove(&format!("ns/r{i}")))
            .count();
        assert_eq!((freed, u.values()), (200, 0));
    }

    #[test]
    fn retain_keeps_what_it_is_told() {
        let mut m: Bounded<String, i32> = Bounded::new(8);
        for k in ["a", "b", "c"] {
            m.get_or_insert_with(&k.to_string(), || 0);
        }
        m.retain(|k| k != "b");
        assert!(m.contains_key(&"a".into()) && !m.contains_key(&"b".into()));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn full_it_drops_the_entry_used_longest_ago() {
        let key = |k: &str| k.to_string();
        let mut m: Bounded<String, i32> = Bounded::new(3);
        let mut made = 0;
        for k in ["a", "b", "c"] {
            m.get_or_insert_with(&key(k), || {
                made += 1;
                made
            });
        }
        // "a" is used again (and not made again): "b" is now the oldest.
        assert_eq!(*m.get_or_insert_with(&key("a"), || 99), 1);
        m.get_or_insert_with(&key("d"), || 4);
        assert_eq!(m.len(), 3);
        assert!(!m.contains_key(&key("b")));
        assert!(m.contains_key(&key("a")) && m.contains_key(&key("d")));
        // 200 new strings through it leave 3 entries.
        for i in 0..200 {
            m.get_or_insert_with(&format!("r{i}"), || i);
        }
        assert_eq!(m.len(), 3);
    }
}
