//! The cache's state machine in sled: `sm_data` holds the key-value pairs, `sm_meta` holds the
//! last applied log id and the last membership. Applying a batch of entries is one sled
//! transaction over both trees, so an entry's effect and `last_applied` never come apart: a
//! restart neither applies an entry twice nor skips one.
//!
//! Stored values carry their absolute expiry (`value.rs`); reads on every node hide a value
//! from its expiry on, by the node's own clock. Requests are applied by `apply.rs`. `sm_expiry`
//! indexes the keys that carry an expiry by their expiry, for the leader's sweep; it is derived
//! from `sm_data` (kept in the apply transaction, rebuilt when a snapshot is installed, built on
//! open for a data dir that lacks it) and never sent in a snapshot.
//!
//! The current snapshot lives in `<data-dir>/snapshots/current` (written to a temp file, synced,
//! then renamed). Installing a snapshot received from the leader is recorded in `sm_meta` first,
//! so a crash half-way through an install is finished from the snapshot file on the next start.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::apply::{
    effect_key, read_u64, EntryTx, Usage, KEY_BYTES, KEY_EVICTED, KEY_EXPIRED, KEY_KEYS,
};
use super::expiry_index;
use super::sm_flush::{PeriodicFlush, StateFlusher, STATE_FLUSH_INTERVAL};
use super::value::{self, Stored};
use super::{decode, encode, snapshot};
use crate::types::{
    BatchResponse, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

pub(super) const KEY_LAST_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
/// Present while a received snapshot is being installed into `sm_data`.
const KEY_INSTALLING: &[u8] = b"installing_snapshot";

/// Tree of the changes made while a snapshot is being built (`apply.rs`).
const TREE_EFFECTS: &str = "sm_effects";

/// Who may replace `snapshots/current`, shared by the state machine and its snapshot builders.
///
/// A build runs in a task of its own while the state machine goes on, and a snapshot received
/// from the leader can be installed meanwhile. An install replaces the data the build is
/// copying, so a build that an install overtook holds a mix of both states, stamped with an
/// index it does not describe. An install holds the lock from before it publishes the received
/// file until the data holds it, and counts itself; a build publishes its file only under the
/// lock and only if no install happened since the build started. Otherwise it is dropped and
/// the build answers with the installed snapshot.
#[derive(Debug, Default)]
struct SnapshotSlot {
    /// Installs begun since the state machine was opened.
    installs: u64,
}

/// A read-only handle on the replica's data, for serving local reads. Every read hides values
/// expired at `now_ms` (the caller passes this node's clock).
#[derive(Clone)]
pub struct StateReader {
    data: sled::Tree,
    meta: sled::Tree,
    expiry: sled::Tree,
}

/// One live entry read from the replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEntry {
    pub key: String,
    pub value: String,
    pub expires_at_ms: Option<u64>,
}

/// The replicated counters of a replica (the same on every replica at the same index).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Keys held, expired ones not yet swept included.
    pub keys: u64,
    /// Bytes of keys and values held.
    pub bytes: u64,
    pub expired: u64,
    pub evicted: u64,
}

impl StateReader {
    /// The value stored under `key` on this replica, as of its last applied entry, unless it
    /// is expired by this node's clock.
    pub fn get(&self, key: &str) -> Result<Option<String>, sled::Error> {
        Ok(self
            .entry(key, crate::types::now_ms())?
            .map(|entry| entry.value))
    }

    /// The live entry of `key` at `now_ms`.
    pub fn entry(&self, key: &str, now_ms: u64) -> Result<Option<LiveEntry>, sled::Error> {
        let Some(raw) = self.data.get(key.as_bytes())? else {
            return Ok(None);
        };
        Ok(live(key.as_bytes(), &raw, now_ms))
    }

    /// Up to `limit` live entries whose keys start with `prefix` and sort after `start_after`,
    /// in byte order.
    pub fn scan(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<LiveEntry>, sled::Error> {
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
            if !key.starts_with(prefix.as_bytes()) {
                break;
            }
            out.extend(live(&key, &raw, now_ms));
        }
        Ok(out)
    }

    /// Up to `limit` keys expired at `now_ms`, soonest expiry first, read from the expiry
    /// index: keys without an expiry, or with one still to come, are not looked at.
    pub fn expired_keys(&self, limit: usize, now_ms: u64) -> Result<Vec<String>, sled::Error> {
        expiry_index::due(&self.data, &self.expiry, limit, now_ms)
    }

    /// Keys, bytes and the replicated expiry and eviction counters.
    pub fn stats(&self) -> Result<ReplicaStats, sled::Error> {
        let mut stats = ReplicaStats::default();
        let counter = |key: &[u8]| -> Result<u64, sled::Error> {
            Ok(self.meta.get(key)?.map_or(0, |raw| read_u64(&raw)))
        };
        stats.keys = counter(KEY_KEYS)?;
        stats.bytes = counter(KEY_BYTES)?;
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
            .iter()
            .keys()
            .map_while(Result::ok)
            .map(|k| String::from_utf8_lossy(&k).into_owned())
    }

    /// Number of keys held on this replica.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// The entry in stored bytes, unless expired at `now_ms`.
fn live(key: &[u8], raw: &[u8], now_ms: u64) -> Option<LiveEntry> {
    let stored: Stored = value::decode(raw);
    (!stored.expired(now_ms)).then(|| LiveEntry {
        key: String::from_utf8_lossy(key).into_owned(),
        value: stored.text(),
        expires_at_ms: stored.expires_at_ms,
    })
}

/// The state machine openraft applies committed entries to.
pub struct StateMachine {
    db: sled::Db,
    data: sled::Tree,
    meta: sled::Tree,
    /// The changes applied while a snapshot is being built, for the builder to replay.
    effects: sled::Tree,
    /// The keys that carry an expiry, by expiry (`apply.rs` keeps it).
    expiry: sled::Tree,
    /// Set while a snapshot is being built: applies then record their changes in `effects`.
    recording: Arc<AtomicBool>,
    snapshot_dir: PathBuf,
    /// The file the snapshot being received from the leader is written to.
    receiving: Option<PathBuf>,
    /// Serializes installs with the publishing of builds.
    slot: Arc<std::sync::Mutex<SnapshotSlot>>,
    /// Told when an install is durably under way, so the log behind it may be purged.
    flusher: StateFlusher,
    /// Flushes this state machine about once a second, while it exists.
    _periodic_flush: PeriodicFlush,
}

/// Keys written to `sm_data` per sled batch when installing a snapshot.
const INSTALL_CHUNK: usize = 4096;

impl StateMachine {
    pub(super) async fn open(
        db: sled::Db,
        data: sled::Tree,
        meta: sled::Tree,
        flusher: &StateFlusher,
        snapshot_dir: PathBuf,
    ) -> Result<Self, StorageError> {
        let io_err =
            |e: std::io::Error| -> StorageError { StorageIOError::write_snapshot(None, &e).into() };
        std::fs::create_dir_all(&snapshot_dir).map_err(io_err)?;
        snapshot::remove_temporaries(&snapshot_dir).map_err(io_err)?;
        let open_tree = |name| {
            db.open_tree(name)
                .map_err(|e| StorageIOError::read_state_machine(&e))
        };
        let effects = open_tree(TREE_EFFECTS)?;
        let expiry = open_tree(expiry_index::TREE)?;
        let mut sm = Self {
            db,
            data,
            meta,
            effects,
            expiry,
            recording: Arc::new(AtomicBool::new(false)),
            snapshot_dir,
            receiving: None,
            slot: Arc::default(),
            flusher: flusher.clone(),
            _periodic_flush: flusher
                .spawn_periodic(STATE_FLUSH_INTERVAL)
                .map_err(io_err)?,
        };
        if sm
            .meta
            .contains_key(KEY_INSTALLING)
            .map_err(|e| StorageIOError::read_state_machine(&e))?
        {
            tracing::warn!(
                "a snapshot install was interrupted; installing it again from the snapshot file"
            );
            let current = sm.snapshot_dir.join(snapshot::CURRENT);
            let meta = snapshot::read_meta(&current)
                .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
            sm.install_current(&meta, Verified::No)?;
        }
        sm.upgrade_current()?;
        let indexed = sm
            .meta
            .contains_key(expiry_index::KEY_BUILT)
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        if !indexed {
            sm.build_expiry_index()
                .map_err(|e| StorageIOError::write_state_machine(&e))?;
        }
        Ok(sm)
    }

    /// Builds `sm_expiry` from `sm_data` (a data dir that lacks it). Flushed before it is marked
    /// built, so a crash half-way builds it again on the next open.
    fn build_expiry_index(&self) -> Result<(), sled::Error> {
        let (_, indexed) = expiry_index::rebuild(&self.data, &self.expiry)?;
        self.db.flush()?;
        self.meta.insert(expiry_index::KEY_BUILT, &[])?;
        self.db.flush()?;
        tracing::info!(keys = indexed, "expiry index built");
        Ok(())
    }

    /// The expiry index, for tests of its upkeep.
    #[cfg(test)]
    pub(super) fn expiry_tree(&self) -> &sled::Tree {
        &self.expiry
    }

    /// A handle for local reads.
    pub fn reader(&self) -> StateReader {
        StateReader {
            data: self.data.clone(),
            meta: self.meta.clone(),
            expiry: self.expiry.clone(),
        }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let raw = self
            .meta
            .get(key)
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        raw.map(|raw| decode(&raw))
            .transpose()
            .map_err(|e| StorageIOError::read_state_machine(&e).into())
    }

    /// Replaces the whole state with the current snapshot file, streaming it in chunks. The file
    /// is checked whole first (unless the caller just did); the install is marked in `sm_meta`
    /// (and flushed) before `sm_data` is touched, and unmarked in the same batch that records
    /// the new `last_applied`. Once marked, a restart finishes the install from the file, so
    /// the log up to the snapshot's index may be purged (`StateFlusher::install_marked`).
    fn install_current(
        &mut self,
        meta: &SnapshotMeta,
        verified: Verified,
    ) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        let path = self.snapshot_dir.join(snapshot::CURRENT);
        let read_err = |e: std::io::Error| -> StorageError {
            StorageIOError::read_snapshot(Some(meta.signature()), &e).into()
        };
        let write_err =
            |e: sled::Error| -> StorageError { StorageIOError::write_state_machine(&e).into() };
        if verified == Verified::No {
            snapshot::verify(&path).map_err(read_err)?;
        }
        self.meta
            .insert(KEY_INSTALLING, meta.snapshot_id.as_bytes())
            .map_err(write_err)?;
        self.db.flush().map_err(write_err)?;
        if let Some(installed) = meta.last_log_id {
            self.flusher.install_marked(installed.index);
        }
        self.data.clear().map_err(write_err)?;
        let data = &self.data;
        let records = snapshot::for_each_chunk(&path, INSTALL_CHUNK, |pairs| {
            let mut batch = sled::Batch::default();
            for (k, v) in pairs {
                match v {
                    Some(v) => batch.insert(k, v),
                    None => batch.remove(k),
                }
            }
            data.apply_batch(batch)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .map_err(read_err)?;
        // The snapshot carries the data, not its counters nor its expiry index: count what was
        // installed, and index it.
        let (usage, _) = expiry_index::rebuild(&self.data, &self.expiry).map_err(write_err)?;
        let mut batch = sled::Batch::default();
        batch.insert(KEY_KEYS, &usage.keys.to_be_bytes());
        batch.insert(KEY_BYTES, &usage.bytes.to_be_bytes());
        batch.insert(KEY_LAST_APPLIED, encode(&meta.last_log_id));
        batch.insert(KEY_MEMBERSHIP, encode(&meta.last_membership));
        batch.insert(expiry_index::KEY_BUILT, &[]);
        batch.remove(KEY_INSTALLING);
        self.meta.apply_batch(batch).map_err(write_err)?;
        self.db.flush().map_err(write_err)?;
        tracing::info!(snapshot = %meta.snapshot_id, records, elapsed_ms = started.elapsed().as_millis() as u64, "snapshot installed");
        Ok(())
    }

    /// The current snapshot, checked whole first: a damaged one (a flipped bit on disk) is never
    /// sent to a follower; a new one is built from the data instead.
    fn open_current(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let path = self.snapshot_dir.join(snapshot::CURRENT);
        if !path.exists() {
            return Ok(None);
        }
        if let Err(e) = snapshot::verify(&path) {
            tracing::error!(path = %path.display(), error = %e, "the current snapshot is damaged; building a new one from the data");
            self.rebuild_current()?;
        }
        let read_err =
            |e: std::io::Error| -> StorageError { StorageIOError::read_snapshot(None, &e).into() };
        let meta = snapshot::read_meta(&path).map_err(read_err)?;
        let file = std::fs::File::open(&path).map_err(read_err)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

impl StateMachine {
    /// Replaces the current snapshot with one built from the data, at the applied index. No
    /// apply runs meanwhile (this holds the state machine), so the copy is the state there.
    fn rebuild_current(&mut self) -> Result<(), StorageError> {
        let failed = |e: String| -> StorageError {
            StorageIOError::write_snapshot(None, &std::io::Error::other(e)).into()
        };
        let from = self.read_meta::<Option<LogId>>(KEY_LAST_APPLIED)?.flatten();
        let builder = SnapshotBuilder {
            from: Ok(from),
            data: self.data.clone(),
            meta: self.meta.clone(),
            effects: self.effects.clone(),
            recording: Arc::new(AtomicBool::new(false)),
            snapshot_dir: self.snapshot_dir.clone(),
            slot: self.slot.clone(),
            installs_before: 0,
        };
        let path = snapshot::temp_path(&self.snapshot_dir, "rebuilding");
        let meta = builder.write(&path, from).map_err(failed)?;
        let _slot = self.slot.lock().expect("snapshot slot lock");
        snapshot::publish(&self.snapshot_dir, &path).map_err(|e| failed(e.to_string()))?;
        tracing::info!(snapshot = %meta.snapshot_id, "current snapshot rebuilt from the data");
        Ok(())
    }

    /// Rewrites a current snapshot of the layout without a checksum in the current layout, or
    /// rebuilds it from the data if it cannot be read whole.
    fn upgrade_current(&mut self) -> Result<(), StorageError> {
        let path = self.snapshot_dir.join(snapshot::CURRENT);
        if !path.exists() || !snapshot::is_unchecked(&path).unwrap_or(false) {
            return Ok(());
        }
        match snapshot::upgrade(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "snapshot file given a checksum");
                Ok(())
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "the current snapshot is damaged; building a new one from the data");
                self.rebuild_current()
            }
        }
    }
}

/// Applies entries in a single transaction and returns one response per entry. With
/// `recording`, each change is also recorded in `effects` (a snapshot is being built).
fn apply_batch(
    data: &sled::Tree,
    meta: &sled::Tree,
    effects: &sled::Tree,
    expiry: &sled::Tree,
    recording: bool,
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
        meta.insert(KEY_LAST_APPLIED, encode(&Some(last.log_id)))?;
        if let Some(m) = &membership {
            meta.insert(KEY_MEMBERSHIP, encode(m))?;
        }
        Ok::<_, ConflictableTransactionError<()>>(responses)
    });
    result.map_err(|e: TransactionError<()>| {
        StorageIOError::apply(last.log_id, &std::io::Error::other(format!("{e:?}"))).into()
    })
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let last_applied = self.read_meta::<Option<LogId>>(KEY_LAST_APPLIED)?.flatten();
        let membership = self.read_meta(KEY_MEMBERSHIP)?.unwrap_or_default();
        Ok((last_applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // Not flushed here: the entries are already durable in the log on a majority, and a
        // restart re-applies whatever the state machine had not yet made durable.
        let recording = self.recording.load(Ordering::Acquire);
        apply_batch(
            &self.data,
            &self.meta,
            &self.effects,
            &self.expiry,
            recording,
            &entries,
        )
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // No pause: remember where applies stand, and have every later apply record its
        // changes; the builder copies while applies go on, then replays those changes. No apply
        // runs while this runs (both hold the state machine), so none is missed.
        let from = self
            .read_meta::<Option<LogId>>(KEY_LAST_APPLIED)
            .map(Option::flatten)
            .map_err(|e| e.to_string());
        let from = match self.effects.clear() {
            Ok(()) => from,
            Err(e) => Err(e.to_string()),
        };
        self.recording.store(true, Ordering::Release);
        let installs_before = self.slot.lock().expect("snapshot slot lock").installs;
        SnapshotBuilder {
            from,
            data: self.data.clone(),
            meta: self.meta.clone(),
            effects: self.effects.clone(),
            recording: self.recording.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
            slot: self.slot.clone(),
            installs_before,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = snapshot::temp_path(&self.snapshot_dir, "receiving");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        if let Some(stale) = self.receiving.replace(path) {
            let _ = std::fs::remove_file(stale);
        }
        self.flusher.receiving();
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let write_err = |e: std::io::Error| -> StorageError {
            StorageIOError::write_snapshot(Some(meta.signature()), &e).into()
        };
        let mut file = *snapshot;
        file.flush().await.map_err(write_err)?;
        let received = match self.receiving.take() {
            // The file handed back is the one `begin_receiving_snapshot` created: use it in place.
            Some(path) if same_file(&file, &path).await => {
                file.sync_all().await.map_err(write_err)?;
                path
            }
            // Any other snapshot data: copy it (streaming) into a file of our own.
            stale => {
                if let Some(stale) = stale {
                    let _ = std::fs::remove_file(stale);
                }
                let path = snapshot::temp_path(&self.snapshot_dir, "receiving");
                file.seek(std::io::SeekFrom::Start(0))
                    .await
                    .map_err(write_err)?;
                let mut copy = tokio::fs::File::create(&path).await.map_err(write_err)?;
                tokio::io::copy(&mut file, &mut copy)
                    .await
                    .map_err(write_err)?;
                copy.sync_all().await.map_err(write_err)?;
                path
            }
        };
        drop(file);
        let installed = self.install_received(&received, meta);
        if installed.is_err() {
            let _ = std::fs::remove_file(&received);
            self.flusher.install_failed();
        }
        installed
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.open_current()
    }
}

impl StateMachine {
    /// Makes the received snapshot file the current one and loads it, under the snapshot lock
    /// (see `SnapshotSlot`). The file is checked whole, and must describe the snapshot openraft
    /// says it received, before it replaces anything: a cut-short or damaged transfer changes
    /// nothing.
    fn install_received(
        &mut self,
        received: &Path,
        meta: &SnapshotMeta,
    ) -> Result<(), StorageError> {
        let write_err = |e: std::io::Error| -> StorageError {
            StorageIOError::write_snapshot(Some(meta.signature()), &e).into()
        };
        let slot = self.slot.clone();
        let mut slot = slot.lock().expect("snapshot slot lock");
        slot.installs += 1;
        snapshot::verify(received).map_err(write_err)?;
        let described = snapshot::read_meta(received).map_err(write_err)?;
        if described.last_log_id != meta.last_log_id || described.snapshot_id != meta.snapshot_id {
            return Err(write_err(std::io::Error::other(format!(
                "the received file holds snapshot {} at {:?}, not {} at {:?}",
                described.snapshot_id, described.last_log_id, meta.snapshot_id, meta.last_log_id
            ))));
        }
        snapshot::publish(&self.snapshot_dir, received).map_err(write_err)?;
        self.install_current(meta, Verified::Yes)
    }
}

/// Whether a snapshot file was just checked whole by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verified {
    Yes,
    No,
}

/// Whether `file` is the file at `path` (same device and inode).
async fn same_file(file: &tokio::fs::File, path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata().await, tokio::fs::metadata(path).await) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Builds a snapshot while applies go on: a copy of the data tree, then the changes applied
/// during the copy, as recorded in the effects tree (`store/snapshot.rs` says why that is
/// exact).
pub struct SnapshotBuilder {
    /// The applied log id when the build started, or why it could not be read.
    from: Result<Option<LogId>, String>,
    data: sled::Tree,
    meta: sled::Tree,
    effects: sled::Tree,
    /// Cleared when the build ends: applies stop recording their changes.
    recording: Arc<AtomicBool>,
    snapshot_dir: PathBuf,
    /// Taken to publish the built file; see `SnapshotSlot`.
    slot: Arc<std::sync::Mutex<SnapshotSlot>>,
    /// `SnapshotSlot::installs` when the build started: any other value when it ends means an
    /// install overtook it.
    installs_before: u64,
}

impl SnapshotBuilder {
    /// Writes the snapshot file at `path` and returns its metadata. Blocking.
    fn write(&self, path: &std::path::Path, from: Option<LogId>) -> Result<SnapshotMeta, String> {
        let started = std::time::Instant::now();
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let mut out = snapshot::Writer::create(path).map_err(|e| err(&e))?;
        for pair in self.data.iter() {
            let (key, value) = pair.map_err(|e| err(&e))?;
            out.record(&key, &value).map_err(|e| err(&e))?;
        }
        out.end_records().map_err(|e| err(&e))?;
        // Read after the copy: every change the copy saw was applied at or before `upto`.
        let (upto, membership) = self
            .meta
            .transaction(|m| {
                Ok::<_, ConflictableTransactionError<()>>((
                    m.get(KEY_LAST_APPLIED)?,
                    m.get(KEY_MEMBERSHIP)?,
                ))
            })
            .map_err(|e| format!("{e:?}"))?;
        let upto: Option<LogId> = upto
            .map(|raw| decode::<Option<LogId>>(&raw))
            .transpose()
            .map_err(|e| err(&e))?
            .flatten();
        let membership: StoredMembership = membership
            .map(|raw| decode(&raw))
            .transpose()
            .map_err(|e| err(&e))?
            .unwrap_or_default();
        // The changes of the entries applied since `from`, up to `upto`, in apply order.
        let first = from.map_or(0, |id| id.index + 1);
        if let Some(upto) = upto.filter(|upto| upto.index >= first) {
            let range = effect_key(first, 0).to_vec()..effect_key(upto.index + 1, 0).to_vec();
            for pair in self.effects.range(range) {
                let (_, raw) = pair.map_err(|e| err(&e))?;
                let (key, value): (Vec<u8>, Option<Vec<u8>>) = decode(&raw).map_err(|e| err(&e))?;
                out.write(&key, value.as_deref()).map_err(|e| err(&e))?;
            }
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let snapshot_id = match upto {
            Some(id) => format!(
                "{}-{}-{}-{nanos}",
                id.leader_id.term, id.leader_id.node_id, id.index
            ),
            None => format!("empty-{nanos}"),
        };
        let meta = SnapshotMeta {
            last_log_id: upto,
            last_membership: membership,
            snapshot_id,
        };
        let (records, writes, bytes) = out.finish(&meta).map_err(|e| err(&e))?;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(snapshot = %meta.snapshot_id, records, replayed_writes = writes, bytes, elapsed_ms, "snapshot written; applies went on meanwhile");
        Ok(meta)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let failed = |e: String| -> StorageError {
            StorageIOError::write_snapshot(None, &std::io::Error::other(e)).into()
        };
        let from = match self.from.clone() {
            Ok(from) => from,
            Err(e) => {
                self.recording.store(false, Ordering::Release);
                return Err(failed(e));
            }
        };
        let path = snapshot::temp_path(&self.snapshot_dir, "building");
        let builder = SnapshotBuilder {
            from: Ok(from),
            data: self.data.clone(),
            meta: self.meta.clone(),
            effects: self.effects.clone(),
            recording: self.recording.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
            slot: self.slot.clone(),
            installs_before: self.installs_before,
        };
        let written = path.clone();
        let built = tokio::task::spawn_blocking(move || builder.write(&written, from)).await;
        // Applies stop recording; what they recorded is cleared when the next build starts.
        self.recording.store(false, Ordering::Release);
        let meta = built
            .map_err(|e| failed(e.to_string()))?
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&path);
            })
            .map_err(failed)?;
        let signature = meta.signature();
        let write_err = |e: std::io::Error| -> StorageError {
            StorageIOError::write_snapshot(Some(signature.clone()), &e).into()
        };
        let current = self.snapshot_dir.join(snapshot::CURRENT);
        let slot = self.slot.lock().expect("snapshot slot lock");
        let overtaken = if slot.installs != self.installs_before {
            Some("a snapshot was installed while it was built")
        } else if snapshot::read_meta(&current).is_ok_and(|c| c.last_log_id >= meta.last_log_id) {
            Some("the current snapshot is as recent")
        } else {
            None
        };
        let meta = match overtaken {
            Some(why) => {
                let _ = std::fs::remove_file(&path);
                let installed = snapshot::read_meta(&current).map_err(write_err)?;
                tracing::info!(built = %meta.snapshot_id, kept = %installed.snapshot_id, why, "snapshot build dropped");
                installed
            }
            None => {
                snapshot::publish(&self.snapshot_dir, &path).map_err(write_err)?;
                meta
            }
        };
        let file = std::fs::File::open(&current).map_err(write_err)?;
        drop(slot);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use openraft::{CommittedLeaderId, Membership};

    use super::*;
    use crate::store::{self, StoreOptions};
    use crate::types::{Expiry, Request, Response};

    fn meta() -> SnapshotMeta {
        let membership = StoredMembership::new(
            Some(LogId::new(CommittedLeaderId::new(1, 1), 1)),
            Membership::new(vec![Default::default()], None),
        );
        SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 40)),
            last_membership: membership,
            snapshot_id: "test".into(),
        }
    }

    /// The bytes of a snapshot of `n` keys, as a leader would send them: the first half copied,
    /// the rest (and a removed key) as replayed writes.
    fn snapshot_bytes(dir: &std::path::Path, n: usize) -> Vec<u8> {
        let path = dir.join("source");
        let mut out = snapshot::Writer::create(&path).unwrap();
        for i in 0..n / 2 {
            out.record(format!("k{i}").as_bytes(), format!("v{i}").as_bytes())
                .unwrap();
        }
        out.record(b"gone", b"soon").unwrap();
        out.end_records().unwrap();
        for i in n / 2..n {
            out.write(format!("k{i}").as_bytes(), Some(format!("v{i}").as_bytes()))
                .unwrap();
        }
        out.write(b"gone", None).unwrap();
        out.finish(&meta()).unwrap();
        std::fs::read(path).unwrap()
    }

    async fn receive(sm: &mut StateMachine, bytes: &[u8]) -> Result<(), StorageError> {
        let mut file = sm.begin_receiving_snapshot().await.unwrap();
        file.write_all(bytes).await.unwrap();
        sm.install_snapshot(&meta(), file).await
    }

    #[tokio::test]
    async fn an_install_interrupted_by_a_crash_is_finished_on_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = snapshot_bytes(dir.path(), 10_000);
        {
            let (_log, mut sm) =
                store::open(&dir.path().join("node"), 1, None, &StoreOptions::default())
                    .await
                    .unwrap();
            receive(&mut sm, &bytes).await.unwrap();
            // Simulate a crash half-way through a (re)install: the marker is set, the data is
            // half cleared, last_applied is stale.
            sm.meta.insert(KEY_INSTALLING, b"test".as_slice()).unwrap();
            for i in 0..5000 {
                sm.data.remove(format!("k{i}").as_bytes()).unwrap();
            }
            sm.meta
                .insert(KEY_LAST_APPLIED, encode(&None::<LogId>))
                .unwrap();
            sm.db.flush().unwrap();
        }
        let (_log, mut sm) =
            store::open(&dir.path().join("node"), 1, None, &StoreOptions::default())
                .await
                .unwrap();
        assert!(
            !sm.meta.contains_key(KEY_INSTALLING).unwrap(),
            "the install was finished"
        );
        assert_eq!(sm.reader().len(), 10_000);
        assert_eq!(sm.reader().get("k7").unwrap().as_deref(), Some("v7"));
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied, meta().last_log_id);
    }

    /// openraft purges a follower's log up to a received snapshot as soon as it hands the
    /// snapshot to the state machine. The purge must not be durable before the install is: a
    /// crash between the two left a log starting after what the state machine held, and a node
    /// that refused to start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_behind_a_snapshot_is_purged_only_once_its_install_is_marked() {
        use openraft::storage::RaftLogStorage;
        let dir = tempfile::tempdir().unwrap();
        let bytes = snapshot_bytes(dir.path(), 1000);
        let path = dir.path().join("node");
        let (mut log, mut sm) = store::open(&path, 1, None, &StoreOptions::default())
            .await
            .unwrap();
        let old: Vec<Entry> = (1..=10).map(|i| entry(i, Vec::new())).collect();
        sm.apply(old).await.unwrap();
        let upto = meta().last_log_id.unwrap();
        // As openraft does: the snapshot is received, then its install and the purge of the
        // log behind it are started together.
        let mut file = sm.begin_receiving_snapshot().await.unwrap();
        file.write_all(&bytes).await.unwrap();
        let purge = tokio::spawn(async move { log.purge(upto).await.map(|()| log) });
        // Nothing marks the install yet: the purge must still be waiting. (A wait for
        // something not to happen; it would be done within milliseconds.)
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(
            !purge.is_finished(),
            "the log was purged up to {} while the state machine holds 10",
            upto.index
        );
        sm.install_snapshot(&meta(), file).await.unwrap();
        let log = tokio::time::timeout(std::time::Duration::from_secs(30), purge)
            .await
            .expect("the purge goes on once the install is marked")
            .unwrap()
            .unwrap();
        assert_eq!(log.last_purged(), Some(upto));
        drop((log, sm));
        let (_log, mut sm) = store::open(&path, 1, None, &StoreOptions::default())
            .await
            .expect("the node restarts");
        assert_eq!(sm.applied_state().await.unwrap().0, Some(upto));
    }

    #[tokio::test]
    async fn a_snapshot_cut_short_in_transfer_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = snapshot_bytes(dir.path(), 1000);
        let (_log, mut sm) =
            store::open(&dir.path().join("node"), 1, None, &StoreOptions::default())
                .await
                .unwrap();
        sm.data.insert("mine", "kept").unwrap();
        let cut = &bytes[..bytes.len() - 100];
        assert!(
            receive(&mut sm, cut).await.is_err(),
            "a truncated snapshot must not install"
        );
        assert_eq!(sm.reader().get("mine").unwrap().as_deref(), Some("kept"));
        assert_eq!(sm.reader().len(), 1);
        assert!(
            sm.get_current_snapshot().await.unwrap().is_none(),
            "nor become the current snapshot"
        );
    }

    /// Every pair held by `sm`, in key order.
    fn dump(sm: &StateMachine) -> Vec<(sled::IVec, sled::IVec)> {
        sm.data.iter().map(|kv| kv.unwrap()).collect()
    }

    /// A snapshot build that started before a snapshot was installed, and had seen applies
    /// meanwhile, ends after the install: the installed snapshot stays the current one, and a
    /// node that installs the current snapshot holds exactly what was installed.
    #[tokio::test]
    async fn a_build_overtaken_by_an_install_never_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            let path = dir.path().join(name);
            async move {
                store::open(&path, 1, None, &StoreOptions::default())
                    .await
                    .unwrap()
                    .1
            }
        };
        let put = |key: &str, value: &str| Request::Put {
            key: key.into(),
            value: value.into(),
            expiry: Expiry::Never,
        };
        // The leader's state at index 50: keys l0..l99.
        let mut leader = open("leader").await;
        let writes: Vec<Entry> = (1..=50)
            .map(|i| entry(i, vec![put(&format!("l{i}"), "leader")]))
            .collect();
        leader.apply(writes).await.unwrap();
        let sent = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let sent_bytes = std::fs::read(leader.snapshot_dir.join(snapshot::CURRENT)).unwrap();

        // The follower is at index 10, starts a build, applies two more entries, then installs
        // the leader's snapshot (index 50) before its build finishes.
        let mut follower = open("follower").await;
        let old: Vec<Entry> = (1..=10)
            .map(|i| entry(i, vec![put(&format!("f{i}"), "old")]))
            .collect();
        follower.apply(old).await.unwrap();
        let mut build = follower.get_snapshot_builder().await;
        let during = vec![
            entry(11, vec![put("f-late", "during the build")]),
            entry(12, vec![Request::Remove { key: "l7".into() }]),
        ];
        follower.apply(during).await.unwrap();
        let mut file = follower.begin_receiving_snapshot().await.unwrap();
        file.write_all(&sent_bytes).await.unwrap();
        follower.install_snapshot(&sent.meta, file).await.unwrap();
        assert_eq!(
            dump(&follower),
            dump(&leader),
            "the install loaded the leader's state"
        );

        let built = build.build_snapshot().await.unwrap();
        let current = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(
            current.meta, sent.meta,
            "the installed snapshot is still the current one"
        );
        assert_eq!(
            built.meta, sent.meta,
            "the overtaken build yields the installed snapshot"
        );
        let copy = install_copy(&follower, &current, &dir.path().join("copy")).await;
        assert_eq!(
            dump(&copy),
            dump(&leader),
            "a node added from it holds the leader's state"
        );
        assert_eq!(dump(&follower), dump(&leader));
    }

    /// A bit flipped on disk in the current snapshot (`val-0500` read back as `val-0400`) is
    /// never sent to a follower: the node builds a new snapshot from its data instead.
    #[tokio::test]
    async fn a_damaged_current_snapshot_is_rebuilt_before_it_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = store::open(&dir.path().join("a"), 1, None, &StoreOptions::default())
            .await
            .unwrap();
        let writes: Vec<Entry> = (1..=1000)
            .map(|i| {
                entry(
                    i,
                    vec![Request::Put {
                        key: format!("k{i:04}"),
                        value: format!("val-{i:04}"),
                        expiry: Expiry::Never,
                    }],
                )
            })
            .collect();
        sm.apply(writes).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let path = sm.snapshot_dir.join(snapshot::CURRENT);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(8).position(|w| w == b"val-0500").unwrap();
        bytes[at + 5] = b'4';
        std::fs::write(&path, bytes).unwrap();

        let sent = sm.get_current_snapshot().await.unwrap().unwrap();
        snapshot::verify(&path).expect("what is sent verifies");
        let copy = install_copy(&sm, &sent, &dir.path().join("b")).await;
        assert_eq!(
            copy.reader().get("k0500").unwrap().as_deref(),
            Some("val-0500")
        );
        assert_eq!(dump(&copy), dump(&sm));
    }

    #[tokio::test]
    async fn a_built_snapshot_streams_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) =
            store::open(&dir.path().join("node"), 1, None, &StoreOptions::default())
                .await
                .unwrap();
        for i in 0..2000 {
            sm.data
                .insert(format!("k{i}"), format!("v{i}").as_bytes())
                .unwrap();
        }
        let mut builder = sm.get_snapshot_builder().await;
        let built = builder.build_snapshot().await.unwrap();
        let current = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a current snapshot");
        assert_eq!(current.meta, built.meta);
        let records = snapshot::verify(&sm.snapshot_dir.join(snapshot::CURRENT)).unwrap();
        assert_eq!(records, 2000);
    }

    pub(in crate::store) fn entry(index: u64, requests: Vec<Request>) -> Entry {
        entry_at(index, 1_000, requests)
    }

    /// An entry proposed when the leader's clock read `now_ms`.
    fn entry_at(index: u64, now_ms: u64, requests: Vec<Request>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(crate::types::Batch {
                requests,
                now_ms,
                capacity: Default::default(),
            }),
        }
    }

    #[tokio::test]
    async fn a_snapshot_built_while_applies_go_on_equals_the_state_at_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut source) =
            store::open(&dir.path().join("a"), 1, None, &StoreOptions::default())
                .await
                .unwrap();
        let put = |i: u64, v: &str| Request::Put {
            key: format!("k{i}"),
            value: v.to_string(),
            expiry: Expiry::Never,
        };
        let mut entries = Vec::new();
        for index in 1..=100 {
            entries.push(entry(
                index,
                vec![put(index, "first"), put(index + 1000, "x")],
            ));
        }
        // Applied after the builder took its starting point: overwrites, removes, new keys.
        let mut later = Vec::new();
        for index in 101..=200 {
            let k = index - 100;
            later.push(entry(
                index,
                vec![
                    put(k, "second"),
                    Request::Remove {
                        key: format!("k{}", k + 1000),
                    },
                    put(index, "new"),
                ],
            ));
        }
        source.apply(entries).await.unwrap();
        let mut builder = source.get_snapshot_builder().await;
        source.apply(later).await.unwrap();
        let built = builder.build_snapshot().await.unwrap();
        assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(200));

        let (_log, mut target) =
            store::open(&dir.path().join("b"), 1, None, &StoreOptions::default())
                .await
                .unwrap();
        target.data.insert("stale", "gone after install").unwrap();
        let mut file = target.begin_receiving_snapshot().await.unwrap();
        let bytes = std::fs::read(source.snapshot_dir.join(snapshot::CURRENT)).unwrap();
        file.write_all(&bytes).await.unwrap();
        target.install_snapshot(&built.meta, file).await.unwrap();
        let dump = |sm: &StateMachine| sm.data.iter().map(|kv| kv.unwrap()).collect::<Vec<_>>();
        assert_eq!(dump(&target), dump(&source));
        assert_eq!(
            target.reader().get("k1").unwrap().as_deref(),
            Some("second")
        );
        let (held, counted) = (
            target.reader().stats().unwrap(),
            source.reader().stats().unwrap(),
        );
        assert_eq!((held.keys, held.bytes), (counted.keys, counted.bytes));
        assert_eq!(held.keys, target.reader().len() as u64);
        assert_eq!(target.reader().get("k1001").unwrap(), None);
        assert_eq!(
            target.applied_state().await.unwrap().0,
            built.meta.last_log_id
        );
    }

    /// Installs the current snapshot of `source` into a fresh state machine under `dir`.
    pub(in crate::store) async fn install_copy(
        source: &StateMachine,
        built: &Snapshot,
        dir: &std::path::Path,
    ) -> StateMachine {
        let (_log, mut target) = store::open(dir, 1, None, &StoreOptions::default())
            .await
            .unwrap();
        let mut file = target.begin_receiving_snapshot().await.unwrap();
        let bytes = std::fs::read(source.snapshot_dir.join(snapshot::CURRENT)).unwrap();
        file.write_all(&bytes).await.unwrap();
        target.install_snapshot(&built.meta, file).await.unwrap();
        target
    }

    #[tokio::test]
    async fn increments_applied_while_a_snapshot_is_copied_are_replayed_by_their_effect() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut source) =
            store::open(&dir.path().join("a"), 1, None, &StoreOptions::default())
                .await
                .unwrap();
        let increment = |index| {
            entry(
                index,
                vec![Request::Increment {
                    key: "n".into(),
                    delta: 1,
                }],
            )
        };
        let before: Vec<Entry> = (1..=10).map(increment).collect();
        source.apply(before).await.unwrap();
        let mut builder = source.get_snapshot_builder().await;
        // Applied after the build started and before it copies: the copy already holds their
        // result, so replaying the requests would count them twice.
        let during: Vec<Entry> = (11..=15).map(increment).collect();
        let answers = source.apply(during).await.unwrap();
        assert_eq!(answers[4].responses, vec![Response::Incremented(15)]);
        let built = builder.build_snapshot().await.unwrap();
        assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(15));
        let target = install_copy(&source, &built, &dir.path().join("b")).await;
        assert_eq!(target.reader().get("n").unwrap().as_deref(), Some("15"));
        assert!(
            !source.recording.load(Ordering::Acquire),
            "applies stop recording once the build is done"
        );
    }

    #[tokio::test]
    async fn conditional_writes_and_expiry_are_decided_by_the_entry_time() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = store::open(&dir.path().join("a"), 1, None, &StoreOptions::default())
            .await
            .unwrap();
        let item = |key: &str, value: &str, expiry| crate::types::Item {
            key: key.into(),
            value: value.into(),
            expiry,
        };
        let requests = vec![
            Request::PutIfAbsent {
                item: item("a", "1", Expiry::AtMs(1_500)),
            },
            Request::PutIfAbsent {
                item: item("a", "2", Expiry::Never),
            },
            Request::CompareAndPut {
                expected: "0".into(),
                item: item("a", "3", Expiry::Never),
            },
            Request::CompareAndPut {
                expected: "1".into(),
                item: item("a", "4", Expiry::AtMs(1_500)),
            },
            Request::Put {
                key: "text".into(),
                value: "x".into(),
                expiry: Expiry::Never,
            },
            Request::Increment {
                key: "text".into(),
                delta: 1,
            },
            Request::Increment {
                key: "big".into(),
                delta: i64::MAX,
            },
            Request::Increment {
                key: "big".into(),
                delta: 1,
            },
        ];
        let answers = sm.apply(vec![entry(1, requests)]).await.unwrap();
        let answers = &answers[0].responses;
        assert_eq!(
            answers[..4],
            [
                Response::Written(true),
                Response::Written(false),
                Response::Written(false),
                Response::Written(true),
            ]
        );
        assert!(matches!(answers[5], Response::Refused(_)));
        assert_eq!(answers[6], Response::Incremented(i64::MAX));
        assert!(matches!(answers[7], Response::Refused(_)));
        let reader = sm.reader();
        assert_eq!(reader.entry("a", 1_499).unwrap().unwrap().value, "4");
        assert_eq!(
            reader.entry("a", 1_500).unwrap(),
            None,
            "hidden from its expiry on"
        );
        assert_eq!(reader.entry("text", 0).unwrap().unwrap().value, "x");
        // At 2,000 "a" has expired: put_if_absent writes, and the sweep leaves the new value.
        let later = vec![
            Request::PutIfAbsent {
                item: item("a", "5", Expiry::Never),
            },
            Request::Expire {
                keys: vec!["a".into(), "text".into()],
            },
        ];
        let answers = sm.apply(vec![entry_at(2, 2_000, later)]).await.unwrap();
        assert_eq!(
            answers[0].responses,
            [Response::Written(true), Response::Count(0)]
        );
        let mut ttl = sm
            .apply(vec![entry(
                3,
                vec![
                    Request::Put {
                        key: "t".into(),
                        value: "v".into(),
                        expiry: Expiry::AtMs(1_000),
                    },
                    Request::Expire {
                        keys: vec!["t".into()],
                    },
                ],
            )])
            .await
            .unwrap();
        assert_eq!(ttl.remove(0).responses[1], Response::Count(1));
        assert_eq!(reader.stats().unwrap().expired, 1);
        assert_eq!(reader.len(), 3);
    }

    #[tokio::test]
    async fn a_data_dir_without_the_expiry_index_gets_it_built_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        let expected = {
            let (_log, mut sm) = store::open(&path, 1, None, &StoreOptions::default())
                .await
                .unwrap();
            let put = |key: &str, expiry| Request::Put {
                key: key.into(),
                value: "1".into(),
                expiry,
            };
            let requests = vec![
                put("t1", Expiry::AtMs(5_000)),
                put("plain", Expiry::Never),
                put("t2", Expiry::AtMs(4_000)),
            ];
            sm.apply(vec![entry(1, requests)]).await.unwrap();
            let expected = expiry_index::entries(sm.expiry_tree());
            // As a data dir written before the index existed: no index, no marker.
            sm.expiry.clear().unwrap();
            sm.meta.remove(expiry_index::KEY_BUILT).unwrap();
            sm.db.flush().unwrap();
            expected
        };
        assert_eq!(expected, [(4_000, "t2".into()), (5_000, "t1".into())]);
        let (_log, sm) = store::open(&path, 1, None, &StoreOptions::default())
            .await
            .unwrap();
        assert_eq!(expiry_index::entries(sm.expiry_tree()), expected);
        assert!(sm.meta.contains_key(expiry_index::KEY_BUILT).unwrap());
    }
}
