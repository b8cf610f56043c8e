//! Capacity and LRU eviction, decided by the leader.
//!
//! Every replica enforces the caps (`--max-bytes`, `--max-keys`) the leader wrote into each
//! entry (`store/apply.rs`): a write that would grow the data past them changes nothing and is
//! answered `CacheFull`. With `--eviction lru`, the leader makes room first: before proposing a
//! batch of writes, it estimates what they add, picks the least recently used keys (by the
//! accesses it has seen: its own reads and the writes it proposed; reads served locally by
//! followers do not count), and puts their removal (`Request::Evict`) at the head of the same
//! log entry. Every replica then removes the same keys, so replicas always hold the same data.
//! "Recently" is as this leader has seen it: a new leader (after a restart or a failover)
//! starts without access history, and counts every key it has not seen since it began leading
//! as older than any it has: those are evicted first, in key order, then the keys it has seen,
//! least recently used first. So a write made through the new leader is never evicted before a
//! key nobody touched since it took over.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use crate::store::StateReader;
use crate::types::{Capacity, Request};

/// What happens to a write past the caps (`--eviction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// The write fails with CacheFull.
    None,
    /// The leader evicts the least recently used keys first.
    Lru,
}

/// Most keys evicted for one batch of writes; a write that needs more fails with CacheFull.
pub const MAX_EVICTED_PER_BATCH: usize = 10_000;

/// The leader's access history (a logical clock per key).
#[derive(Default)]
struct Tracker {
    /// Counts accesses; the tick of a key's last access orders keys from least recent.
    tick: u64,
    /// Each tracked key's last access.
    by_key: HashMap<String, u64>,
    /// The same, by access: the first entry is the least recently used key.
    by_tick: BTreeMap<u64, String>,
}

impl Tracker {
    fn touch(&mut self, key: &str) {
        self.tick += 1;
        if let Some(old) = self.by_key.insert(key.to_string(), self.tick) {
            self.by_tick.remove(&old);
        }
        self.by_tick.insert(self.tick, key.to_string());
    }

    fn forget(&mut self, key: &str) {
        if let Some(tick) = self.by_key.remove(key) {
            self.by_tick.remove(&tick);
        }
    }
}

/// Capacity, policy and (for LRU) the access history of one node.
pub struct Eviction {
    /// `--eviction`: refuse writes past the caps, or evict the least recently used keys.
    policy: Policy,
    /// `--max-keys` and `--max-bytes` (0: no cap).
    capacity: Capacity,
    /// The replica, for the sizes of the keys chosen for eviction.
    state: StateReader,
    /// The accesses seen while this node leads.
    tracker: Mutex<Tracker>,
}

impl Eviction {
    pub fn new(policy: Policy, capacity: Capacity, state: StateReader) -> Self {
        Self {
            policy,
            capacity,
            state,
            tracker: Mutex::default(),
        }
    }

    /// The caps every entry this node proposes carries.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    fn tracking(&self) -> bool {
        self.policy == Policy::Lru && self.capacity != Capacity::default()
    }

    /// Records accesses to `keys` (call only while leading).
    pub fn touch<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        if self.tracking() {
            let mut tracker = self.tracker.lock().expect("lru lock");
            for key in keys {
                tracker.touch(key);
            }
        }
    }

    /// The eviction to propose ahead of `requests`, if they need room; records them as
    /// accesses.
    pub fn plan(&self, requests: &[Request]) -> Option<Request> {
        if !self.tracking() {
            return None;
        }
        let writes: Vec<(&str, usize)> = requests.iter().flat_map(written).collect();
        let stats = self.state.stats().ok()?;
        let (mut keys, mut bytes) = (stats.keys, stats.bytes);
        for (key, len) in &writes {
            let old = self.state.size_of(key).ok()?;
            keys += u64::from(old.is_none());
            bytes = (bytes + (key.len() + len) as u64).saturating_sub(old.unwrap_or(0));
        }
        let protected: HashSet<&str> = writes.iter().map(|(k, _)| *k).collect();
        let mut tracker = self.tracker.lock().expect("lru lock");
        for request in requests {
            for key in removed(request) {
                tracker.forget(key);
            }
        }
        let mut victims = Vec::new();
        let mut chosen = HashSet::new();
        // First the keys the history does not hold, in key order: this node has not seen them
        // since it began leading, so they are older than any it has seen. Skipped when the
        // history holds as many keys as the replica (every key held has been seen).
        let mut unseen = self.state.keys();
        let mut unseen_left = stats.keys > tracker.by_key.len() as u64;
        while !self.capacity.fits(keys, bytes) && victims.len() < MAX_EVICTED_PER_BATCH {
            let next_unseen = if unseen_left {
                unseen.find(|key| !tracker.by_key.contains_key(key))
            } else {
                None
            };
            let candidate = match next_unseen {
                Some(key) => key,
                None => {
                    unseen_left = false;
                    let oldest = tracker.by_tick.first_key_value().map(|(_, k)| k.clone());
                    match oldest {
                        Some(key) => {
                            tracker.forget(&key);
                            key
                        }
                        None => break,
                    }
                }
            };
            if protected.contains(candidate.as_str()) || chosen.contains(&candidate) {
                continue;
            }
            if let Ok(Some(size)) = self.state.size_of(&candidate) {
                keys -= 1;
                bytes = bytes.saturating_sub(size);
                chosen.insert(candidate.clone());
                victims.push(candidate);
            }
        }
        drop(unseen);
        for (key, _) in &writes {
            tracker.touch(key);
        }
        (!victims.is_empty()).then_some(Request::Evict { keys: victims })
    }
}

/// The keys a request removes.
fn removed(request: &Request) -> Vec<&str> {
    match request.inner() {
        Request::Remove { key } => vec![key.as_str()],
        Request::RemoveMany { keys } | Request::Expire { keys } | Request::Evict { keys } => {
            keys.iter().map(String::as_str).collect()
        }
        _ => Vec::new(),
    }
}

/// The keys a request writes, with the length of the value it writes (an upper bound).
fn written(request: &Request) -> Vec<(&str, usize)> {
    match request.inner() {
        Request::Put { key, value, .. } => vec![(key.as_str(), value.len())],
        Request::PutMany { items } => items
            .iter()
            .map(|i| (i.key.as_str(), i.value.len()))
            .collect(),
        Request::PutIfAbsent { item } | Request::CompareAndPut { item, .. } => {
            vec![(item.key.as_str(), item.value.len())]
        }
        Request::Increment { key, .. } => vec![(key.as_str(), 20)],
        _ => Vec::new(),
    }
}
