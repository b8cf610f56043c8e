//! Applying one log entry's requests to `sm_data`, inside the state machine's transaction.
//! Every conditional and read-modify-write request is decided here, at apply time, against
//! the state every replica has at that index, and every expiry check uses the leader's clock
//! recorded in the entry (`Batch::now_ms`): so all replicas decide alike, and two racing
//! clients cannot both win.
//!
//! Capacity (`--max-bytes`, `--max-keys`) is enforced here too, against the caps the leader
//! wrote into the entry: a write that would grow the data past them is answered `Full` and
//! changes nothing. Keys and bytes held are counted in `sm_meta` in the same transaction.
//! An eviction (`Request::Evict`) is chosen by the leader and only carried out here.
//!
//! While a snapshot is being built, each change is also recorded in `sm_effects` (the key
//! and its new stored bytes, or its removal), keyed by log index: the builder replays those
//! effects over its copy of `sm_data` (replaying the requests would not be exact: an
//! increment or a compare-and-put gives another result on another state).
//!
//! Every key that carries an expiry also has an entry in `sm_expiry` (`expiry_index.rs`),
//! written and removed in the same transaction as the value, so the expiry sweep reads only the
//! keys that can expire. A key without expiry never touches it.

use std::cell::Cell;
use std::collections::HashMap;

use crate::store::storage_err;
use openraft::EntryPayload;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};

use super::expiry_index;
use super::schema::{
    effect_key, encode, read_u64, TxResult, Usage, KEY_EVICTED, KEY_EXPIRED, KEY_LAST_APPLIED,
    KEY_LOG_CLOCK, KEY_MEMBERSHIP,
};
use super::value::{self, Stored};
use crate::types::{
    BatchResponse, Capacity, Entry, Item, Request, Response, StorageError, StoredMembership,
};

/// One entry's view of the state machine's trees, inside the transaction.
pub(super) struct EntryTx<'a> {
    pub data: &'a TransactionalTree,
    pub meta: &'a TransactionalTree,
    /// Set while a snapshot is being built: where each change is recorded.
    pub effects: Option<&'a TransactionalTree>,
    /// `sm_expiry`: the keys that carry an expiry, by expiry.
    pub expiry: &'a TransactionalTree,
    pub index: u64,
    /// The leader's clock when it proposed the entry.
    pub now_ms: u64,
    pub seq: Cell<u32>,
    /// The caps the leader proposed the entry with.
    pub capacity: Capacity,
    /// Keys and bytes held, kept current by every change.
    pub usage: &'a Cell<Usage>,
}

impl EntryTx<'_> {
    /// The live value of `key` at this entry's time: absent if missing or expired.
    fn live(&self, key: &str) -> TxResult<Option<Stored>> {
        Ok(self
            .data
            .get(key.as_bytes())?
            .map(|raw| value::decode(&raw))
            .filter(|stored| !stored.expired(self.now_ms)))
    }

    fn record(&self, key: &str, raw: Option<&[u8]>) -> TxResult<()> {
        if let Some(effects) = self.effects {
            let seq = self.seq.get();
            self.seq.set(seq + 1);
            let effect: (&[u8], Option<&[u8]>) = (key.as_bytes(), raw);
            effects.insert(&effect_key(self.index, seq), encode(&effect))?;
        }
        Ok(())
    }

    fn set(&self, key: &str, value: &str, expires_at_ms: Option<u64>) -> TxResult<()> {
        let raw = value::encode(value.as_bytes(), expires_at_ms);
        let old = self.data.insert(key.as_bytes(), raw.as_slice())?;
        self.derive(key, old.as_deref(), Some((value.len(), expires_at_ms)))?;
        self.record(key, Some(&raw))
    }

    /// Keeps what is derived from `sm_data` in step with a key going from `old` (stored bytes)
    /// to a value of `new` (its length and expiry), or to none: the counters, and the key's
    /// entry in `sm_expiry`.
    fn derive(
        &self,
        key: &str,
        old: Option<&[u8]>,
        new: Option<(usize, Option<u64>)>,
    ) -> TxResult<()> {
        let old = old.map(value::peek);
        self.count(key, old.map(|(_, len)| len), new.map(|(len, _)| len));
        let old_at = old.and_then(|(at, _)| at);
        let new_at = new.and_then(|(_, at)| at);
        expiry_index::moved(self.expiry, key.as_bytes(), old_at, new_at)
    }

    /// Counts a key whose value goes from `old_len` bytes (or none) to `new_len` (or none).
    fn count(&self, key: &str, old_len: Option<usize>, new_len: Option<usize>) {
        let mut usage = self.usage.get();
        if let Some(len) = old_len {
            usage.remove((key.len() + len) as u64);
        }
        if let Some(len) = new_len {
            usage.keys += 1;
            usage.bytes += (key.len() + len) as u64;
        }
        self.usage.set(usage);
    }

    /// Why writing `writes` (key, value length) would take the data past the caps, if it
    /// would. A write that does not grow the data always fits.
    fn no_room(&self, writes: &[(&str, usize)]) -> TxResult<Option<String>> {
        if self.capacity == Capacity::default() {
            return Ok(None);
        }
        let distinct: HashMap<&str, usize> = writes.iter().copied().collect();
        let Usage {
            mut keys,
            mut bytes,
        } = self.usage.get();
        let mut grows = false;
        for (key, len) in distinct {
            let old = self.data.get(key.as_bytes())?;
            let old_len = old.map(|raw| key.len() + value::peek(&raw).1);
            let new_len = key.len() + len;
            grows |= old_len.is_none_or(|old| new_len > old);
            if old_len.is_none() {
                keys += 1;
            }
            bytes = bytes + new_len as u64 - old_len.unwrap_or(0) as u64;
        }
        Ok((grows && !self.capacity.fits(keys, bytes)).then(|| {
            format!(
                "the cache is full: the write would hold {keys} keys and {bytes} bytes; the caps are {} keys and {} bytes (--max-keys, --max-bytes; 0 is no cap) and --eviction none",
                self.capacity.max_keys, self.capacity.max_bytes
            )
        }))
    }

    fn put(&self, item: &Item) -> TxResult<()> {
        self.set(&item.key, &item.value, item.expiry.at_ms())
    }

    /// Removes `key`; whether it was live.
    fn remove(&self, key: &str) -> TxResult<bool> {
        let existed = self.live(key)?.is_some();
        if let Some(old) = self.data.remove(key.as_bytes())? {
            self.derive(key, Some(&old), None)?;
            self.record(key, None)?;
        }
        Ok(existed)
    }

    fn bump(&self, counter: &[u8], by: u64) -> TxResult<()> {
        if by == 0 {
            return Ok(());
        }
        let now = self.meta.get(counter)?.map_or(0, |raw| read_u64(&raw));
        self.meta.insert(counter, &(now + by).to_be_bytes())?;
        Ok(())
    }

    /// Applies one request and returns its answer.
    pub fn apply(&self, request: &Request) -> TxResult<Response> {
        Ok(match request {
            Request::Put { key, value, expiry } => {
                if let Some(full) = self.no_room(&[(key, value.len())])? {
                    return Ok(Response::Full(full));
                }
                self.set(key, value, expiry.at_ms())?;
                Response::Put
            }
            Request::Remove { key } => Response::Removed {
                existed: self.remove(key)?,
            },
            Request::PutMany { items } => {
                let writes: Vec<(&str, usize)> = items
                    .iter()
                    .map(|i| (i.key.as_str(), i.value.len()))
                    .collect();
                if let Some(full) = self.no_room(&writes)? {
                    return Ok(Response::Full(full));
                }
                for item in items {
                    self.put(item)?;
                }
                Response::Count(items.len() as u64)
            }
            Request::RemoveMany { keys } => {
                let mut existed = 0;
                for key in keys {
                    existed += u64::from(self.remove(key)?);
                }
                Response::Count(existed)
            }
            Request::PutIfAbsent { item } => {
                let absent = self.live(&item.key)?.is_none();
                if absent {
                    if let Some(full) = self.no_room(&[(&item.key, item.value.len())])? {
                        return Ok(Response::Full(full));
                    }
                    self.put(item)?;
                }
                Response::Written(absent)
            }
            Request::CompareAndPut { expected, item } => {
                let current = self.live(&item.key)?;
                let matches = current.is_some_and(|c| c.value == expected.as_bytes());
                if matches {
                    if let Some(full) = self.no_room(&[(&item.key, item.value.len())])? {
                        return Ok(Response::Full(full));
                    }
                    self.put(item)?;
                }
                Response::Written(matches)
            }
            Request::Increment { key, delta } => self.increment(key, *delta)?,
            Request::Expire { keys } => self.expire(keys)?,
            Request::Evict { keys } => {
                let mut evicted = 0;
                for key in keys {
                    if let Some(old) = self.data.remove(key.as_bytes())? {
                        self.derive(key, Some(&old), None)?;
                        self.record(key, None)?;
                        evicted += 1;
                    }
                }
                self.bump(KEY_EVICTED, evicted)?;
                Response::Count(evicted)
            }
        })
    }

    fn increment(&self, key: &str, delta: i64) -> TxResult<Response> {
        let current = self.live(key)?;
        let (old, expires_at_ms) = match &current {
            None => (0, None),
            Some(stored) => match std::str::from_utf8(&stored.value)
                .ok()
                .and_then(|text| text.parse::<i64>().ok())
            {
                Some(n) => (n, stored.expires_at_ms),
                None => {
                    return Ok(Response::Refused(format!(
                        "the value of {key:?} is not a decimal integer; nothing was changed"
                    )))
                }
            },
        };
        let Some(new) = old.checked_add(delta) else {
            return Ok(Response::Refused(format!(
                "{old} + {delta} overflows a 64-bit integer; nothing was changed"
            )));
        };
        let text = new.to_string();
        if let Some(full) = self.no_room(&[(key, text.len())])? {
            return Ok(Response::Full(full));
        }
        self.set(key, &text, expires_at_ms)?;
        Ok(Response::Incremented(new))
    }

    /// Removes those of `keys` that are expired at this entry's time (a key written again
    /// since the sweep chose it stays).
    fn expire(&self, keys: &[String]) -> TxResult<Response> {
        let mut removed = 0;
        for key in keys {
            let expired = self
                .data
                .get(key.as_bytes())?
                .is_some_and(|raw| value::peek(&raw).0.is_some_and(|at| self.now_ms >= at));
            if expired {
                if let Some(old) = self.data.remove(key.as_bytes())? {
                    self.derive(key, Some(&old), None)?;
                }
                self.record(key, None)?;
                removed += 1;
            }
        }
        self.bump(KEY_EXPIRED, removed)?;
        Ok(Response::Count(removed))
    }
}

/// Applies entries in a single transaction and returns one response per entry. With
/// `recording`, each change is also recorded in `effects` (a snapshot is being built).
pub(super) fn apply_batch(
    data: &sled::Tree,
    meta: &sled::Tree,
    effects: &sled::Tree,
    expiry: &sled::Tree,
    recording: bool,
    log_clock_ms: u64,
    entries: &[Entry],
) -> Result<Vec<BatchResponse>, StorageError> {
    let Some(last) = entries.last() else {
        return Ok(Vec::new());
    };
    let trees = (data, meta, effects, expiry);
    let result = trees.transaction(|(data, meta, effects, expiry)| {
        let before = Usage::read(meta)?;
        let usage = Cell::new(before);
        let mut responses = Vec::with_capacity(entries.len());
        let mut membership = None;
        for entry in entries {
            let mut entry_responses = Vec::new();
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(batch) => {
                    let tx = EntryTx {
                        data,
                        meta,
                        effects: recording.then_some(effects),
                        expiry,
                        index: entry.log_id.index,
                        now_ms: batch.now_ms,
                        seq: Cell::new(0),
                        capacity: batch.capacity,
                        usage: &usage,
                    };
                    for request in &batch.requests {
                        entry_responses.push(tx.apply(request)?);
                    }
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()))
                }
            }
            responses.push(BatchResponse {
                responses: entry_responses,
            });
        }
        if usage.get() != before {
            usage.get().write(meta)?;
        }
        // `log_clock_ms` is what `sm_meta` holds (the in-memory clock is loaded from it and
        // moved only after each committed apply): written only when the entries move it.
        if let Some(at_ms) = log_time(entries).filter(|at_ms| *at_ms > log_clock_ms) {
            meta.insert(KEY_LOG_CLOCK, at_ms.to_be_bytes().to_vec())?;
        }
        meta.insert(KEY_LAST_APPLIED, encode(&Some(last.log_id)))?;
        if let Some(m) = &membership {
            meta.insert(KEY_MEMBERSHIP, encode(m))?;
        }
        Ok::<_, ConflictableTransactionError<()>>(responses)
    });
    result.map_err(|e: TransactionError<()>| storage_err("applying entries", format!("{e:?}")))
}

/// The largest leader time among `entries` (the log clock they move to), if any carries one.
pub(super) fn log_time(entries: &[Entry]) -> Option<u64> {
    entries
        .iter()
        .filter_map(|entry| match &entry.payload {
            EntryPayload::Normal(batch) => Some(batch.now_ms),
            _ => None,
        })
        .max()
}
