//! Families: the keys that multi-key operations tie together. A `put_many` or `get_many` takes
//! effect on all its keys at one instant, so its keys must be searched together; every other
//! key is independent of the rest. The families are the connected groups of keys, where an
//! operation connects the keys it touches; each is checked as one model, a register per key.

use std::collections::{BTreeMap, HashMap};

use super::Operation;

/// Keys searched together, and every operation on them.
pub(super) struct Family<'a> {
    /// Sorted. A key's register is its position here.
    pub keys: Vec<&'a str>,
    /// In the history's order.
    pub ops: Vec<&'a Operation>,
}

impl Family<'_> {
    /// The key, or the keys joined by `+`.
    pub fn name(&self) -> String {
        self.keys.join("+")
    }

    /// Each key's register.
    pub fn registers(&self) -> HashMap<&str, usize> {
        self.keys.iter().enumerate().map(|(i, k)| (*k, i)).collect()
    }
}

/// Splits `ops` into families, ordered by their first key.
pub(super) fn families<'a>(ops: &[&'a Operation]) -> Vec<Family<'a>> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut sets = Sets::default();
    for op in ops {
        let keys: Vec<usize> = op
            .keys()
            .into_iter()
            .map(|key| *index.entry(key).or_insert_with(|| sets.add()))
            .collect();
        for pair in keys.windows(2) {
            sets.union(pair[0], pair[1]);
        }
    }
    let mut by_root: BTreeMap<usize, Family<'a>> = BTreeMap::new();
    for (&key, &i) in &index {
        let root = sets.find(i);
        let family = by_root.entry(root).or_insert_with(|| Family {
            keys: Vec::new(),
            ops: Vec::new(),
        });
        family.keys.push(key);
    }
    for op in ops {
        let root = sets.find(index[op.keys()[0]]);
        by_root
            .get_mut(&root)
            .expect("every key has a family")
            .ops
            .push(op);
    }
    let mut families: Vec<Family> = by_root.into_values().collect();
    for family in &mut families {
        family.keys.sort_unstable();
    }
    families.sort_by(|a, b| a.keys[0].cmp(b.keys[0]));
    families
}

/// Disjoint sets of key numbers (union-find with path halving).
#[derive(Default)]
struct Sets {
    parent: Vec<usize>,
}

impl Sets {
    fn add(&mut self) -> usize {
        self.parent.push(self.parent.len());
        self.parent.len() - 1
    }

    fn find(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.parent[a.max(b)] = a.min(b);
        }
    }
}
