//! Applying committed log entries to the state machine's trees, without sled transactions.
//!
//! Every conditional and read-modify-write request is decided here, at apply time, against the
//! state every replica has at that index, and every expiry check uses the leader's clock
//! recorded in the entry (`Batch::now_ms`): so all replicas decide alike, and two racing
//! clients cannot both win.
//!
//! Capacity (`--max-bytes`, `--max-keys`) is enforced here too, against the caps the leader
//! wrote into the entry: a write that would grow the data past them is answered `Full` and
//! changes nothing. An eviction (`Request::Evict`) is chosen by the leader and only carried out
//! here.
//!
//! ## The apply rule: the changes are journaled, then written
//!
//! A run of entries is first decided in memory (`Changes`): every request reads the state as
//! the earlier requests of the run left it, and the run's effect becomes a list of plain writes:
//! the keys' new stored bytes (or their removal), their entries in `sm_expiry`, the counters,
//! the log clock, the membership, and `last_applied` last. That list is written whole, as one
//! value, to `sm_meta`'s `apply_journal`, and then write by write to the trees.
//!
//! sled recovers from a crash or a power cut a prefix of what was written, in the order it was
//! written (its log is replayed up to the first missing or damaged record). So after a crash
//! either the journal of the run is missing, and so is every write of the run (openraft applies
//! the run again from the log: `last_applied` is the one before it), or the journal is there,
//! with some of its writes: opening the state machine writes them all again (`finish_journal`).
//! Each write sets a key to given bytes or removes it, so writing it twice changes nothing, and
//! no request is ever decided twice. sled's transactions would give the same atomicity, but the
//! first one switches every later read of the whole process to a global lock, and each one
//! writes and syncs sled's write buffer twice; runs are applied under the state machine's
//! apply lock, which readers of several keys take too, so no read sees half a run.
//!
//! While a snapshot is being built, each run's changes to `sm_data` are also recorded in
//! `sm_effects` (the key and its new stored bytes, or its removal), keyed by the run's last log
//! index: the builder replays those over its copy of `sm_data` (replaying the requests would
//! not be exact: an increment or a compare-and-put gives another result on another state).
//!
//! Every key that carries an expiry also has an entry in `sm_expiry` (`expiry_index.rs`), kept
//! in step with the value in the same run, so the expiry sweep reads only the keys that can
//! expire. A key without expiry never touches it.

use std::collections::{BTreeMap, HashMap};

use crate::store::storage_err;
use openraft::EntryPayload;
use serde::{Deserialize, Serialize};

use super::expiry_index;
use super::history::{Event, EventKind};
use super::schema::{
    decode, effect_key, encode, read_u64, Usage, KEY_BYTES, KEY_EVICTED, KEY_EXPIRED, KEY_JOURNAL,
    KEY_KEYS, KEY_LAST_APPLIED, KEY_LOG_CLOCK, KEY_MEMBERSHIP, KEY_SESSIONS,
};
use super::sessions::{self, Decision, Session};
use super::value::{self, Stored};
use crate::types::{
    BatchResponse, Capacity, Entry, Item, LogId, Request, Response, SessionLimits, SessionRequest,
    StorageError, StoredMembership,
};

/// A run of entries is written (journal, then writes) once its changes reach about this many
/// bytes, and at its end. An entry is never split.
pub const JOURNAL_BYTES: usize = 1 << 20;

/// The state machine's trees, as applies write them.
pub(super) struct Trees<'a> {
    pub data: &'a sled::Tree,
    pub meta: &'a sled::Tree,
    /// `sm_effects`: written only while a snapshot is being built.
    pub effects: &'a sled::Tree,
    pub expiry: &'a sled::Tree,
}

/// Which tree a journaled write goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Target {
    Data,
    Expiry,
    Meta,
}

/// A run's writes, as journaled in `sm_meta`: each sets a key to bytes, or removes it.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    /// The log id of the run's last entry: the `last_applied` the run writes last.
    last: LogId,
    writes: Vec<(Target, Vec<u8>, Option<Vec<u8>>)>,
}

impl Journal {
    fn write(&self, trees: &Trees, upto: usize) -> sled::Result<()> {
        for (target, key, value) in self.writes.iter().take(upto) {
            let tree = match target {
                Target::Data => trees.data,
                Target::Expiry => trees.expiry,
                Target::Meta => trees.meta,
            };
            match value {
                Some(value) => tree.insert(key.as_slice(), value.as_slice())?,
                None => tree.remove(key.as_slice())?,
            };
        }
        Ok(())
    }
}

/// What a run of entries changes, decided in memory before any of it is written.
#[derive(Debug, Default)]
struct Changes {
    /// Each key's new stored bytes, or `None` once removed.
    data: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Index keys of `sm_expiry` to insert (`true`) or remove.
    expiry: BTreeMap<Vec<u8>, bool>,
    /// Keys and bytes held, kept current by every change.
    usage: Usage,
    /// Keys removed by expiry and by eviction in this run.
    expired: u64,
    evicted: u64,
    /// The membership of the run's last membership entry.
    membership: Option<StoredMembership>,
    /// About how many bytes the journal will hold.
    bytes: usize,
    /// Each change of a key, in order, for `watch` (when the run records them).
    events: Vec<Event>,
}

/// One entry's requests, decided against the trees as the run changed them so far.
struct EntryTx<'a> {
    data: &'a sled::Tree,
    changes: &'a mut Changes,
    /// The leader's clock when it proposed the entry.
    now_ms: u64,
    /// The caps the leader proposed the entry with.
    capacity: Capacity,
    /// The entry's log index, and how many changes of keys it made so far (for `watch`).
    index: u64,
    offset: u32,
    /// What the request being applied does to the keys it changes.
    kind: EventKind,
    /// Whether to record each change as an `Event`.
    record: bool,
}

impl EntryTx<'_> {
    /// The stored bytes of `key`, as the run left them.
    fn stored(&self, key: &str) -> sled::Result<Option<Vec<u8>>> {
        self.record(key.as_bytes())
    }

    /// The live value of `key` at this entry's time: absent if missing or expired.
    fn live(&self, key: &str) -> sled::Result<Option<Stored>> {
        Ok(self
            .stored(key)?
            .map(|raw| value::decode(&raw))
            .filter(|stored| !stored.expired(self.now_ms)))
    }

    /// Sets `key` to `raw` (or removes it), keeping the counters and `sm_expiry` in step;
    /// whether it held a value before.
    fn change(&mut self, key: &str, raw: Option<Vec<u8>>) -> sled::Result<bool> {
        let old = self.stored(key)?;
        if old.is_none() && raw.is_none() {
            return Ok(false);
        }
        let old = old.as_deref().map(value::peek);
        let new = raw.as_deref().map(value::peek);
        let changes = &mut *self.changes;
        if let Some((_, len)) = old {
            changes.usage.remove((key.len() + len) as u64);
        }
        if let Some((_, len)) = new {
            changes.usage.keys += 1;
            changes.usage.bytes += (key.len() + len) as u64;
        }
        let (old_at, new_at) = (old.and_then(|(at, _)| at), new.and_then(|(at, _)| at));
        if old_at != new_at {
            if let Some(at) = old_at {
                changes.index(expiry_index::index_key(at, key.as_bytes()), false);
            }
            if let Some(at) = new_at {
                changes.index(expiry_index::index_key(at, key.as_bytes()), true);
            }
        }
        changes.bytes += key.len() + raw.as_ref().map_or(0, Vec::len) + 16;
        if self.record {
            self.offset += 1;
            let (kind, value, expires_at_ms) = match raw.as_deref().map(value::decode) {
                Some(stored) => (EventKind::Put, Some(stored.value), stored.expires_at_ms),
                None => (self.kind, None, None),
            };
            changes.events.push(Event {
                index: self.index,
                offset: self.offset,
                kind,
                key: key.to_owned(),
                value,
                expires_at_ms,
            });
        }
        changes.data.insert(key.as_bytes().to_vec(), raw);
        Ok(old.is_some())
    }

    fn set(&mut self, key: &str, value: &[u8], expires_at_ms: Option<u64>) -> sled::Result<()> {
        let raw = value::encode(value, expires_at_ms);
        self.change(key, Some(raw)).map(|_| ())
    }

    /// The stored bytes of `key` of `sm_data` (a client's key or one of raftcache's own
    /// records), as the run left them.
    fn record(&self, key: &[u8]) -> sled::Result<Option<Vec<u8>>> {
        match self.changes.data.get(key) {
            Some(changed) => Ok(changed.clone()),
            None => Ok(self.data.get(key)?.map(|raw| raw.to_vec())),
        }
    }

    /// Sets a record of raftcache's own (not a client key: not counted, indexed nor watched).
    fn set_record(&mut self, key: Vec<u8>, raw: Option<Vec<u8>>) {
        self.changes.bytes += key.len() + raw.as_ref().map_or(0, Vec::len) + 16;
        self.changes.data.insert(key, raw);
    }

    /// Applies a tracked request at most once: its first answer if its client's session holds
    /// one, else applies it and keeps the answer (`sessions.rs`).
    fn apply_tracked(
        &mut self,
        tracking: &SessionRequest,
        request: &Request,
    ) -> sled::Result<Response> {
        let key = sessions::key(tracking.client);
        let held = self.record(&key)?.map(|raw| {
            Session::from_stored(&raw).expect("a session record of the state machine is damaged")
        });
        let new = held.is_none();
        let mut session = held
            .filter(|session| !session.expired(self.now_ms, tracking.limits.ttl_ms))
            .unwrap_or_default();
        let response = match session.decide(tracking, self.now_ms) {
            Decision::Answer(response) => response,
            Decision::Apply => {
                let response = self.apply(request)?;
                session.remember(tracking, response.clone());
                response
            }
        };
        if new {
            if self.changes.usage.sessions >= tracking.limits.max_sessions.max(1) {
                self.prune_sessions(&tracking.limits)?;
            }
            self.changes.usage.sessions += 1;
        }
        self.set_record(key, Some(session.to_stored()));
        Ok(response)
    }

    /// Makes room for a new session: forgets every expired session, then the least recently
    /// seen until a tenth of `max_sessions` is free (so that the scan is rare).
    fn prune_sessions(&mut self, limits: &SessionLimits) -> sled::Result<()> {
        let (start, end) = sessions::key_range();
        let mut held: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for pair in self.data.range(start.clone()..end.clone()) {
            let (key, raw) = pair?;
            held.insert(key.to_vec(), last_seen(&raw));
        }
        for (key, raw) in self.changes.data.range(start..end) {
            match raw {
                Some(raw) => held.insert(key.clone(), last_seen(raw)),
                None => held.remove(key),
            };
        }
        let keep = limits.max_sessions.max(1) - (limits.max_sessions / 10).max(1);
        let mut by_age: Vec<(u64, Vec<u8>)> = held.into_iter().map(|(k, at)| (at, k)).collect();
        by_age.sort();
        let excess = by_age.len().saturating_sub(keep as usize);
        for (i, (at, key)) in by_age.into_iter().enumerate() {
            let expired = self.now_ms.saturating_sub(at) >= limits.ttl_ms;
            if i < excess || expired {
                self.set_record(key, None);
                self.changes.usage.sessions = self.changes.usage.sessions.saturating_sub(1);
            }
        }
        Ok(())
    }

    /// Why writing `writes` (key, value length) would take the data past the caps, if it
    /// would. A write that does not grow the data always fits.
    fn no_room(&self, writes: &[(&str, usize)]) -> sled::Result<Option<String>> {
        if self.capacity == Capacity::default() {
            return Ok(None);
        }
        let distinct: HashMap<&str, usize> = writes.iter().copied().collect();
        let Usage {
            mut keys,
            mut bytes,
            ..
        } = self.changes.usage;
        let mut grows = false;
        for (key, len) in distinct {
            let old = self.stored(key)?;
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

    fn put(&mut self, item: &Item) -> sled::Result<()> {
        self.set(&item.key, &item.value, item.expiry.at_ms())
    }

    /// Applies one request and returns its answer, its changes recorded as `kind`.
    fn apply(&mut self, request: &Request) -> sled::Result<Response> {
        self.kind = match request {
            Request::Remove { .. } | Request::RemoveMany { .. } => EventKind::Remove,
            Request::Expire { .. } => EventKind::Expire,
            Request::Evict { .. } => EventKind::Evict,
            _ => EventKind::Put,
        };
        self.decide(request)
    }

    /// Removes `key`; whether it was live.
    fn remove(&mut self, key: &str) -> sled::Result<bool> {
        let existed = self.live(key)?.is_some();
        self.change(key, None)?;
        Ok(existed)
    }

    /// Decides one request and returns its answer.
    fn decide(&mut self, request: &Request) -> sled::Result<Response> {
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
                    if self.change(key, None)? {
                        evicted += 1;
                    }
                }
                self.changes.evicted += evicted;
                Response::Count(evicted)
            }
            Request::Tracked { session, request } => self.apply_tracked(session, request)?,
        })
    }

    fn increment(&mut self, key: &str, delta: i64) -> sled::Result<Response> {
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
        self.set(key, text.as_bytes(), expires_at_ms)?;
        Ok(Response::Incremented(new))
    }

    /// Removes those of `keys` that are expired at this entry's time (a key written again
    /// since the sweep chose it stays).
    fn expire(&mut self, keys: &[String]) -> sled::Result<Response> {
        let mut removed = 0;
        for key in keys {
            let expired = self
                .stored(key)?
                .is_some_and(|raw| value::peek(&raw).0.is_some_and(|at| self.now_ms >= at));
            if expired {
                self.change(key, None)?;
                removed += 1;
            }
        }
        self.changes.expired += removed;
        Ok(Response::Count(removed))
    }
}

impl Changes {
    /// `key` of `sm_expiry` is to be inserted (`present`) or removed.
    fn index(&mut self, key: Vec<u8>, present: bool) {
        self.bytes += key.len() + 8;
        self.expiry.insert(key, present);
    }
}

/// Runs of entries being applied: the changes decided so far, and what `sm_meta` holds of the
/// counters and the clock they move.
struct Run<'a> {
    trees: &'a Trees<'a>,
    changes: Changes,
    /// Keys and bytes held, as `sm_meta` records them.
    written_usage: Usage,
    /// The log clock, as `sm_meta` records it, and as the entries decided so far move it.
    written_clock: u64,
    clock: u64,
    /// Record each run's changes to `sm_data` in `sm_effects` (a snapshot is being built).
    recording: bool,
    /// Record each change of a key as an `Event` (for `watch`).
    watching: bool,
}

impl<'a> Run<'a> {
    fn start(
        trees: &'a Trees<'a>,
        recording: bool,
        watching: bool,
        log_clock_ms: u64,
    ) -> sled::Result<Self> {
        let usage = Usage::read(trees.meta)?;
        Ok(Run {
            trees,
            changes: Changes {
                usage,
                ..Changes::default()
            },
            written_usage: usage,
            written_clock: log_clock_ms,
            clock: log_clock_ms,
            recording,
            watching,
        })
    }

    /// Decides `entry` into the run; its answers.
    fn decide(&mut self, entry: &Entry) -> sled::Result<BatchResponse> {
        let mut responses = Vec::new();
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Normal(batch) => {
                let mut tx = EntryTx {
                    data: self.trees.data,
                    changes: &mut self.changes,
                    now_ms: batch.now_ms,
                    capacity: batch.capacity,
                    index: entry.log_id.index,
                    offset: 0,
                    kind: EventKind::Put,
                    record: self.watching,
                };
                for request in &batch.requests {
                    responses.push(tx.apply(request)?);
                }
                self.clock = self.clock.max(batch.now_ms);
            }
            EntryPayload::Membership(m) => {
                self.changes.membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()))
            }
        }
        Ok(BatchResponse { responses })
    }

    /// The journal of the changes decided so far, the last entry being `last`, and a fresh run
    /// after it.
    fn journal(&mut self, last: LogId) -> sled::Result<Journal> {
        let usage = self.changes.usage;
        let events = std::mem::take(&mut self.changes.events);
        let changes = std::mem::replace(
            &mut self.changes,
            Changes {
                usage,
                events,
                ..Changes::default()
            },
        );
        let meta = |key: &[u8], value: Vec<u8>| (Target::Meta, key.to_vec(), Some(value));
        let mut writes = Vec::with_capacity(changes.data.len() + changes.expiry.len() + 7);
        writes.extend(changes.data.into_iter().map(|(k, v)| (Target::Data, k, v)));
        writes.extend(
            (changes.expiry.into_iter())
                .map(|(k, present)| (Target::Expiry, k, present.then(Vec::new))),
        );
        if (usage.keys, usage.bytes) != (self.written_usage.keys, self.written_usage.bytes) {
            writes.push(meta(KEY_KEYS, usage.keys.to_be_bytes().to_vec()));
            writes.push(meta(KEY_BYTES, usage.bytes.to_be_bytes().to_vec()));
        }
        if usage.sessions != self.written_usage.sessions {
            writes.push(meta(KEY_SESSIONS, usage.sessions.to_be_bytes().to_vec()));
        }
        self.written_usage = usage;
        for (counter, by) in [
            (KEY_EXPIRED, changes.expired),
            (KEY_EVICTED, changes.evicted),
        ] {
            if by > 0 {
                let held = self
                    .trees
                    .meta
                    .get(counter)?
                    .map_or(0, |raw| read_u64(&raw));
                writes.push(meta(counter, (held + by).to_be_bytes().to_vec()));
            }
        }
        if self.clock > self.written_clock {
            writes.push(meta(KEY_LOG_CLOCK, self.clock.to_be_bytes().to_vec()));
            self.written_clock = self.clock;
        }
        if let Some(membership) = &changes.membership {
            writes.push(meta(KEY_MEMBERSHIP, encode(membership)));
        }
        writes.push(meta(KEY_LAST_APPLIED, encode(&Some(last))));
        Ok(Journal { last, writes })
    }

    /// Writes the changes decided so far (the last entry being `last`): the journal, the
    /// effects of a snapshot build, then the first `upto` writes (all of them, but in tests of
    /// an interrupted run).
    fn write(&mut self, last: LogId, upto: usize) -> sled::Result<()> {
        let journal = self.journal(last)?;
        let trees = self.trees;
        trees.meta.insert(KEY_JOURNAL, encode(&journal))?;
        if self.recording {
            let changed = journal.writes.iter().filter(|(t, ..)| *t == Target::Data);
            for (seq, (_, key, raw)) in changed.enumerate() {
                let effect = effect_key(last.index, seq as u32);
                trees.effects.insert(effect, encode(&(key, raw)))?;
            }
        }
        journal.write(trees, upto)
    }
}

/// How a run of entries is applied besides its writes.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Recording {
    /// Record each run's changes to `sm_data` in `effects` (a snapshot is being built).
    pub effects: bool,
    /// Return each change of a key as an `Event`, in order (for `watch`).
    pub events: bool,
}

/// Applies `entries` and returns one response per entry, and the changes of keys as events
/// (when `recording.events`). `log_clock_ms` is the log clock as `sm_meta` holds it.
pub(super) fn apply_batch(
    trees: &Trees,
    recording: Recording,
    log_clock_ms: u64,
    entries: &[Entry],
) -> Result<(Vec<BatchResponse>, Vec<Event>), StorageError> {
    apply_upto(trees, recording, log_clock_ms, entries, usize::MAX)
}

/// `apply_batch`, with the writes of the last run stopped after `upto` of them, as a crash
/// would stop them: for tests.
#[cfg(test)]
pub(super) fn apply_interrupted(
    trees: &Trees,
    entries: &[Entry],
    upto: usize,
) -> Result<Vec<BatchResponse>, StorageError> {
    apply_upto(trees, Recording::default(), 0, entries, upto).map(|(responses, _)| responses)
}

fn apply_upto(
    trees: &Trees,
    recording: Recording,
    log_clock_ms: u64,
    entries: &[Entry],
    upto: usize,
) -> Result<(Vec<BatchResponse>, Vec<Event>), StorageError> {
    let err = |e: sled::Error| storage_err("applying entries", e);
    let mut run =
        Run::start(trees, recording.effects, recording.events, log_clock_ms).map_err(err)?;
    let mut responses = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        responses.push(run.decide(entry).map_err(err)?);
        let last = i + 1 == entries.len();
        if last || run.changes.bytes >= JOURNAL_BYTES {
            let upto = if last { upto } else { usize::MAX };
            run.write(entry.log_id, upto).map_err(err)?;
        }
    }
    Ok((responses, std::mem::take(&mut run.changes.events)))
}

/// When the session stored in `raw` last saw its client (0 if unreadable: forgotten first).
fn last_seen(raw: &[u8]) -> u64 {
    Session::from_stored(raw).map_or(0, |session| session.last_seen_ms)
}

/// Finishes the last run if a crash or a power cut stopped its writes: its journal is there
/// and `last_applied` is still before it. Writing its writes again is harmless, each sets a key
/// to given bytes or removes it. Returns the log id it finished at, if it did.
pub(super) fn finish_journal(trees: &Trees) -> Result<Option<LogId>, StorageError> {
    let err = |e: &dyn std::fmt::Display| storage_err("reading the state machine", e.to_string());
    let Some(raw) = trees.meta.get(KEY_JOURNAL).map_err(|e| err(&e))? else {
        return Ok(None);
    };
    let journal: Journal = decode(&raw).map_err(|e| err(&e))?;
    let applied = trees.meta.get(KEY_LAST_APPLIED).map_err(|e| err(&e))?;
    let applied = applied
        .map(|raw| decode::<Option<LogId>>(&raw))
        .transpose()
        .map_err(|e| err(&e))?
        .flatten();
    if applied.map(|id| id.index) >= Some(journal.last.index) {
        return Ok(None);
    }
    journal
        .write(trees, usize::MAX)
        .map_err(|e| storage_err("writing the state machine", e))?;
    Ok(Some(journal.last))
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
