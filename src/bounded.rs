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
}

#[cfg(test)]
mod tests {
    use super::Bounded;

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
