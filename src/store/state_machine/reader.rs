//! The read side of the replica: local reads, scans, the expiry index's due keys and the
//! replicated counters, straight from sled, with expired values hidden by the reader's clock.

use super::super::clock::LogClock;
use super::super::expiry_index;
use super::super::history::History;
use super::super::schema::{
    is_internal, read_u64, INTERNAL_PREFIX, KEY_BYTES, KEY_EVICTED, KEY_EXPIRED, KEY_KEYS,
    KEY_SESSIONS,
};
use super::super::value::{self, Stored};

/// A read-only handle on the replica's data, for serving local reads. Every read hides values
/// expired at `now_ms`: the caller passes the log clock (`log_clock`), never its own.
#[derive(Clone)]
pub struct StateReader {
    /// The cache's keys and values.
    pub(super) data: sled::Tree,
    /// `last_applied` and the replicated counters.
    pub(super) meta: sled::Tree,
    /// The keys that carry an expiry, by expiry.
    pub(super) expiry: sled::Tree,
    /// Held (shared) by reads of several keys, and (exclusive) by each apply: the writes of a
    /// run of entries are plain sled writes (`apply.rs`), and `get_many` or `scan` reading key
    /// by key would otherwise see half of a `put_many`.
    pub(super) applies: ApplyLock,
    /// The log's time: reads hide a value from the moment it reaches the value's expiry.
    pub(super) clock: LogClock,
    /// The recent changes of keys, for `watch`.
    pub(super) history: std::sync::Arc<History>,
}

/// The lock that makes a read of several keys see one point in the apply order.
pub type ApplyLock = std::sync::Arc<std::sync::RwLock<()>>;

/// One live entry read from the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEntry {
    pub key: String,
    /// Any bytes (`put_bytes`); text for the values `put` writes.
    pub value: Vec<u8>,
    pub expires_at_ms: Option<u64>,
}

/// The replicated counters of a replica (the same on every replica at the same index).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Keys held, expired ones not yet swept included.
    pub keys: u64,
    /// Bytes of keys and values held.
    pub bytes: u64,
    /// Clients whose exactly-once answers are kept.
    pub sessions: u64,
    pub expired: u64,
    pub evicted: u64,
}

impl StateReader {
    /// The recent changes of keys applied here, for `watch`.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The log's clock, by which every read of this replica hides expired values.
    pub fn log_clock(&self) -> &LogClock {
        &self.clock
    }

    /// The value stored under `key` on this replica, as of its last applied entry, unless it
    /// is expired by the log clock.
    pub fn get(&self, key: &str) -> Result<Option<String>, sled::Error> {
        Ok(self
            .entry(key, self.clock.now_ms())?
            .map(|entry| String::from_utf8_lossy(&entry.value).into_owned()))
    }

    /// The live entry of `key` at `now_ms`.
    pub fn entry(&self, key: &str, now_ms: u64) -> Result<Option<LiveEntry>, sled::Error> {
        let Some(raw) = self.data.get(key.as_bytes())? else {
            return Ok(None);
        };
        Ok(live(key.as_bytes(), &raw, now_ms))
    }

    /// The live entries of `keys` at `now_ms`, in order (None for a key not held), all as of
    /// one applied entry.
    pub fn entries(
        &self,
        keys: &[String],
        now_ms: u64,
    ) -> Result<Vec<Option<LiveEntry>>, sled::Error> {
        let _one_state = self.applies.read().expect("apply lock");
        keys.iter().map(|key| self.entry(key, now_ms)).collect()
    }

    /// Up to `limit` live entries whose keys start with `prefix` and sort after `start_after`,
    /// in byte order, all as of one applied entry.
    pub fn scan(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<LiveEntry>, sled::Error> {
        let _one_state = self.applies.read().expect("apply lock");
        let from = std::ops::Bound::Excluded(start_after.as_bytes().to_vec());
        let start = if start_after.as_bytes() < prefix.as_bytes() {
            std::ops::Bound::Included(prefix.as_bytes().to_vec())
        } else {
            from
        };
        let mut out = Vec::new();
        for pair in self
            .data
            .range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded))
        {
            if out.len() >= limit {
                break;
            }
            let (key, raw) = pair?;
            if !key.starts_with(prefix.as_bytes()) || is_internal(&key) {
                break;
            }
            out.extend(live(&key, &raw, now_ms));
        }
        Ok(out)
    }

    /// Up to `limit` keys expired at `now_ms`, soonest expiry first, read from the expiry
    /// index: keys without an expiry, or with one still to come, are not looked at.
    pub fn expired_keys(&self, limit: usize, now_ms: u64) -> Result<Vec<String>, sled::Error> {
        expiry_index::due(&self.data, &self.expiry, &self.applies, limit, now_ms)
    }

    /// Keys, bytes and the replicated expiry and eviction counters.
    pub fn stats(&self) -> Result<ReplicaStats, sled::Error> {
        let mut stats = ReplicaStats::default();
        let counter = |key: &[u8]| -> Result<u64, sled::Error> {
            Ok(self.meta.get(key)?.map_or(0, |raw| read_u64(&raw)))
        };
        stats.keys = counter(KEY_KEYS)?;
        stats.bytes = counter(KEY_BYTES)?;
        stats.sessions = counter(KEY_SESSIONS)?;
        stats.expired = counter(KEY_EXPIRED)?;
        stats.evicted = counter(KEY_EVICTED)?;
        Ok(stats)
    }

    /// Bytes of `key` and its value, if it is held (expired or not).
    pub fn size_of(&self, key: &str) -> Result<Option<u64>, sled::Error> {
        Ok(self
            .data
            .get(key.as_bytes())?
            .map(|raw| (key.len() + value::decode(&raw).value.len()) as u64))
    }

    /// Every key held, in byte order (stops at a read error).
    pub fn keys(&self) -> impl Iterator<Item = String> + '_ {
        self.data
            .range(..vec![INTERNAL_PREFIX])
            .keys()
            .map_while(Result::ok)
            .map(|k| String::from_utf8_lossy(&k).into_owned())
    }

    /// Number of keys held on this replica (counted one by one).
    pub fn len(&self) -> usize {
        self.keys().count()
    }

    pub fn is_empty(&self) -> bool {
        self.keys().next().is_none()
    }
}

/// The entry in stored bytes, unless expired at `now_ms`.
fn live(key: &[u8], raw: &[u8], now_ms: u64) -> Option<LiveEntry> {
    let stored: Stored = value::decode(raw);
    (!stored.expired(now_ms)).then(|| LiveEntry {
        key: String::from_utf8_lossy(key).into_owned(),
        value: stored.value,
        expires_at_ms: stored.expires_at_ms,
    })
}
