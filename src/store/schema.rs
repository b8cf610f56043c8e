//! The layout of a node's sled database, in one place: every tree, every key of `sm_meta`, and
//! how the numbers and records stored there are encoded. The other files of `store/` name what
//! they read and write through this module, and nothing here imports them back.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `sm_data` | the cache key | `value.rs`: the value and its absolute expiry |
//! | `sm_data` | `0xFF`, `s`, client id (`u64`) | `value.rs` of bincode `sessions::Session` (never a client key: those are UTF-8) |
//! | `sm_meta` | `last_applied`, `membership` | bincode `Option<LogId>`, `StoredMembership` |
//! | `sm_meta` | `installing_snapshot` | the snapshot id, while an install is under way |
//! | `sm_meta` | `keys_held`, `bytes_held`, `sessions_held`, `expired_count`, `evicted_count`, `log_clock` | `u64`, big-endian |
//! | `sm_meta` | `expiry_indexed` | empty, once `sm_expiry` indexes every key with an expiry |
//! | `sm_meta` | `node_id` | the node id the data dir belongs to |
//! | `sm_meta` | `apply_journal` | bincode: the last applied run's writes (`apply.rs`) |
//! | `sm_expiry` | expiry (`u64` ms, big-endian) then the data key | empty |
//! | `sm_effects` | entry index (`u64`) then the change's order in it (`u32`) | bincode `(key, Option<value>)` |

/// Where the log lives in a data dir.
pub const LOG_DIR: &str = "log";
/// The cache's keys and values.
pub const TREE_DATA: &str = "sm_data";
/// The state machine's metadata and counters.
pub const TREE_SM_META: &str = "sm_meta";
/// The keys of `sm_data` that carry an expiry, by expiry (`expiry_index.rs`).
pub const TREE_EXPIRY: &str = "sm_expiry";
/// The changes applied while a snapshot is being built (`apply.rs`, `state_machine/build.rs`).
pub const TREE_EFFECTS: &str = "sm_effects";

/// The log id of the last applied entry.
pub const KEY_LAST_APPLIED: &[u8] = b"last_applied";
/// The membership as of the last applied membership entry.
pub const KEY_MEMBERSHIP: &[u8] = b"membership";
/// Present while a received snapshot is being installed into `sm_data`.
pub const KEY_INSTALLING: &[u8] = b"installing_snapshot";
/// The log's clock: the largest leader time among the applied entries (`clock.rs`).
pub const KEY_LOG_CLOCK: &[u8] = b"log_clock";
/// The node id the data dir belongs to.
pub const KEY_NODE_ID: &[u8] = b"node_id";
/// Present once `sm_expiry` indexes every key of `sm_data` with an expiry.
pub const KEY_EXPIRY_BUILT: &[u8] = b"expiry_indexed";
/// Keys removed by the expiry sweep.
pub const KEY_EXPIRED: &[u8] = b"expired_count";
/// Keys removed by eviction.
pub const KEY_EVICTED: &[u8] = b"evicted_count";
/// The writes of the last run of applied entries, written before them (`apply.rs`).
pub const KEY_JOURNAL: &[u8] = b"apply_journal";
/// Keys held.
pub const KEY_KEYS: &[u8] = b"keys_held";
/// Bytes of keys and values held.
pub const KEY_BYTES: &[u8] = b"bytes_held";
/// Clients whose answers are kept (`sessions.rs`): records of `sm_data` that are not keys.
pub const KEY_SESSIONS: &[u8] = b"sessions_held";
/// The first byte of every record of `sm_data` that is not a client's key. Keys are UTF-8
/// text, and no UTF-8 text holds the byte `0xFF`: such records sort after every key, travel in
/// snapshots with the data, and are never seen by reads, scans or the counters of keys.
pub const INTERNAL_PREFIX: u8 = 0xFF;

/// Whether a key of `sm_data` is one of raftcache's records, not a client's key.
pub fn is_internal(key: &[u8]) -> bool {
    key.first() == Some(&INTERNAL_PREFIX)
}

/// Encodes a value for storage. raftcache's own types always serialize; a failure is a bug.
pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("raftcache types always serialize")
}

pub fn decode<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(raw)
}

/// A counter stored as 8 big-endian bytes. Anything else means the database is damaged (sled
/// checks its own records, so only a bug writes one): this fails loudly rather than read 0.
pub fn read_u64(raw: &[u8]) -> u64 {
    match <[u8; 8]>::try_from(raw) {
        Ok(bytes) => u64::from_be_bytes(bytes),
        Err(_) => panic!(
            "a stored counter is {} bytes, not 8: the state machine's database is damaged",
            raw.len()
        ),
    }
}

/// Key of an effect in `sm_effects`: the entry's index, then the change's order in it.
pub fn effect_key(index: u64, seq: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&index.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// Keys and bytes of keys and values held, as `sm_meta` counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub keys: u64,
    pub bytes: u64,
    /// Clients whose answers are kept (not keys: `sessions.rs`).
    pub sessions: u64,
}

impl Usage {
    /// The usage recorded in `sm_meta`.
    pub fn read(meta: &sled::Tree) -> sled::Result<Usage> {
        let counter =
            |key: &[u8]| -> sled::Result<u64> { Ok(meta.get(key)?.map_or(0, |r| read_u64(&r))) };
        Ok(Usage {
            keys: counter(KEY_KEYS)?,
            bytes: counter(KEY_BYTES)?,
            sessions: counter(KEY_SESSIONS)?,
        })
    }

    /// One key of `key_bytes` bytes (key and value) less. Panics if the counters would go below
    /// zero: the counters and the data disagree, which only a bug can cause.
    pub fn remove(&mut self, key_bytes: u64) {
        self.keys = self
            .keys
            .checked_sub(1)
            .expect("the key counter went below zero: counters and data disagree");
        self.bytes = self
            .bytes
            .checked_sub(key_bytes)
            .expect("the byte counter went below zero: counters and data disagree");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_round_trips() {
        assert_eq!(read_u64(&42u64.to_be_bytes()), 42);
    }

    #[test]
    #[should_panic(expected = "damaged")]
    fn a_malformed_counter_fails_loudly() {
        read_u64(&[1, 2, 3]);
    }

    #[test]
    #[should_panic(expected = "below zero")]
    fn counters_never_underflow() {
        let mut usage = Usage::default();
        usage.remove(3);
    }
}
