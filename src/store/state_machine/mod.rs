//! The cache's state machine in sled: `sm_data` holds the key-value pairs, `sm_meta` holds the
//! last applied log id and the last membership. A run of entries is applied as plain writes
//! after a journal of them (`apply.rs`), so an entry's effect and `last_applied` never come
//! apart: a restart finishes a run a crash interrupted, and neither applies an entry twice nor
//! skips one.
//!
//! Stored values carry their absolute expiry (`value.rs`); reads on every node hide a value
//! from its expiry on, by the node's own clock. Requests are applied by `apply.rs`. `sm_expiry`
//! indexes the keys that carry an expiry by their expiry, for the leader's sweep; it is derived
//! from `sm_data` (kept by the applies, rebuilt when a snapshot is installed, built on
//! open for a data dir that lacks it) and never sent in a snapshot.
//!
//! The current snapshot lives in `<data-dir>/snapshots/current` (written to a temp file, synced,
//! then renamed). Installing a snapshot received from the leader is recorded in `sm_meta` first,
//! so a crash half-way through an install is finished from the snapshot file on the next start.

mod build;
mod install;
mod reader;
#[cfg(test)]
pub(super) mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::store::storage_err;
use futures::{Stream, StreamExt};
use openraft::storage::{ApplyResponder, EntryResponder, RaftStateMachine};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

pub use build::SnapshotBuilder;

/// Entries applied (and answered) together, at most.
const APPLY_CHUNK: usize = 4096;
/// Bytes of requests (`Request::size_bytes`) applied together, about at most: a chunk ends
/// after the entry that reaches it, so a long range of large entries (a follower catching up)
/// is not held in memory whole.
const APPLY_CHUNK_BYTES: usize = 4 << 20;

/// About how many bytes of requests `entry` carries.
fn entry_bytes(entry: &Entry) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(batch) => {
            batch.requests.iter().map(|r| r.size_bytes()).sum()
        }
        _ => 0,
    }
}
pub use reader::{ApplyLock, LiveEntry, ReplicaStats, StateReader};

use super::apply::{apply_batch, finish_journal, log_time, Recording, Trees};
use super::clock::LogClock;
use super::expiry_index;
use super::history::History;
use super::schema::decode;
use super::schema::{
    read_u64, KEY_EXPIRY_BUILT, KEY_LAST_APPLIED, KEY_LOG_CLOCK, KEY_MEMBERSHIP, TREE_EFFECTS,
    TREE_EXPIRY,
};
use super::sm_flush::{PeriodicFlush, StateFlusher, STATE_FLUSH_INTERVAL};
use super::snapshot;
use crate::types::{
    BatchResponse, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use install::same_file;

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
    pub(super) installs: u64,
}

/// What became of this node's snapshot builds and installs since it started, for the metrics.
#[derive(Debug, Default)]
pub struct SnapshotCounts {
    /// Builds published as the current snapshot.
    pub built: AtomicU64,
    /// Builds dropped because an install overtook them or the current snapshot was as recent.
    pub dropped: AtomicU64,
    /// Builds that failed (a storage error).
    pub build_failed: AtomicU64,
    /// Milliseconds the last published or dropped build took.
    pub last_build_ms: AtomicU64,
    /// Snapshots received from a leader and installed.
    pub installed: AtomicU64,
    /// Snapshots received from a leader and refused (damaged, or not the one announced).
    pub install_failed: AtomicU64,
}

/// The state machine openraft applies committed entries to.
pub struct StateMachine {
    /// The node's sled database, for flushes.
    db: sled::Db,
    /// The cache's keys and values.
    data: sled::Tree,
    /// `last_applied`, the membership, the counters and the install marker.
    meta: sled::Tree,
    /// Taken by each apply, and by readers of several keys (`StateReader::entries`).
    applies: ApplyLock,
    /// The log's time, moved by each apply; readers hide expired values by it.
    clock: LogClock,
    /// The changes applied while a snapshot is being built, for the builder to replay.
    effects: sled::Tree,
    /// The keys that carry an expiry, by expiry (`apply.rs` keeps it).
    expiry: sled::Tree,
    /// Set while a snapshot is being built: applies then record their changes in `effects`.
    recording: Arc<AtomicBool>,
    snapshot_dir: PathBuf,
    /// The file the snapshot being received from the leader is written to.
    receiving: Arc<Mutex<Option<PathBuf>>>,
    /// Serializes installs with the publishing of builds.
    slot: Arc<std::sync::Mutex<SnapshotSlot>>,
    /// Builds and installs, counted.
    counts: Arc<SnapshotCounts>,
    /// Told when an install is durably under way, so the log behind it may be purged.
    flusher: StateFlusher,
    /// Flushes this state machine about once a second, while it exists.
    _periodic_flush: PeriodicFlush,
    /// The recent changes of keys, for `watch`.
    history: Arc<History>,
}

impl StateMachine {
    pub(super) async fn open(
        db: sled::Db,
        data: sled::Tree,
        meta: sled::Tree,
        flusher: &StateFlusher,
        snapshot_dir: PathBuf,
        history_bytes: usize,
    ) -> Result<Self, StorageError> {
        let io_err = |e: std::io::Error| -> StorageError { storage_err("writing a snapshot", e) };
        std::fs::create_dir_all(&snapshot_dir).map_err(io_err)?;
        snapshot::remove_temporaries(&snapshot_dir).map_err(io_err)?;
        let open_tree = |name| {
            db.open_tree(name)
                .map_err(|e| storage_err("reading the state machine", e))
        };
        let effects = open_tree(TREE_EFFECTS)?;
        let expiry = open_tree(TREE_EXPIRY)?;
        let mut sm = Self {
            db,
            data,
            meta,
            effects,
            expiry,
            recording: Arc::new(AtomicBool::new(false)),
            snapshot_dir,
            receiving: Arc::default(),
            applies: ApplyLock::default(),
            clock: LogClock::default(),
            slot: Arc::default(),
            counts: Arc::default(),
            flusher: flusher.clone(),
            _periodic_flush: flusher
                .spawn_periodic(STATE_FLUSH_INTERVAL)
                .map_err(io_err)?,
            history: Arc::new(History::new(history_bytes, 0)),
        };
        if let Some(finished) = finish_journal(&sm.trees())? {
            tracing::warn!(applied = ?finished, "the last applies were interrupted; their journaled writes are written again");
        }
        sm.catch_up_with_current()?;
        sm.upgrade_current()?;
        let clock = sm
            .meta
            .get(KEY_LOG_CLOCK)
            .map_err(|e| storage_err("reading the state machine", e))?;
        sm.clock.advance(clock.map_or(0, |raw| read_u64(&raw)));
        let indexed = sm
            .meta
            .contains_key(KEY_EXPIRY_BUILT)
            .map_err(|e| storage_err("reading the state machine", e))?;
        if !indexed {
            sm.build_expiry_index()
                .map_err(|e| storage_err("writing the state machine", e))?;
        }
        let applied = sm.read_meta::<Option<LogId>>(KEY_LAST_APPLIED)?.flatten();
        sm.history.reset(applied.map_or(0, |id| id.index));
        Ok(sm)
    }

    /// Builds `sm_expiry` from `sm_data` (a data dir that lacks it). Flushed before it is marked
    /// built, so a crash half-way builds it again on the next open.
    fn build_expiry_index(&self) -> Result<(), sled::Error> {
        let (_, indexed) = expiry_index::rebuild(&self.data, &self.expiry)?;
        self.db.flush()?;
        self.meta.insert(KEY_EXPIRY_BUILT, &[])?;
        self.db.flush()?;
        tracing::info!(keys = indexed, "expiry index built");
        Ok(())
    }

    /// The expiry index, for tests of its upkeep.
    #[cfg(test)]
    pub(super) fn expiry_tree(&self) -> &sled::Tree {
        &self.expiry
    }

    /// The trees, as applies write them.
    pub(super) fn trees(&self) -> Trees<'_> {
        Trees {
            data: &self.data,
            meta: &self.meta,
            effects: &self.effects,
            expiry: &self.expiry,
        }
    }

    /// Applies `entries`; one response per entry.
    fn apply_chunk(&mut self, entries: &[Entry]) -> Result<Vec<BatchResponse>, StorageError> {
        let recording = Recording {
            effects: self.recording.load(Ordering::Acquire),
            events: self.history.enabled(),
        };
        let _exclusive = self.applies.write().expect("apply lock");
        let at_ms = log_time(entries);
        let (responses, events) =
            apply_batch(&self.trees(), recording, self.clock.now_ms(), entries)?;
        if let Some(at_ms) = at_ms {
            self.clock.advance(at_ms);
        }
        if let Some(last) = entries.last() {
            self.history.record(events, last.log_id.index);
        }
        Ok(responses)
    }

    /// The recent changes of keys applied here, for `watch`.
    pub fn history(&self) -> Arc<History> {
        self.history.clone()
    }

    /// Applies `chunk`, then answers each entry's responder (if it has one),
    /// and empties both.
    fn apply_and_answer(
        &mut self,
        chunk: &mut Vec<Entry>,
        responders: &mut Vec<Option<ApplyResponder<TypeConfig>>>,
    ) -> Result<(), StorageError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let responses = self.apply_chunk(chunk)?;
        for (responder, response) in responders.drain(..).zip(responses) {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        chunk.clear();
        Ok(())
    }

    /// Applies `entries` as openraft would, for tests: one response per entry.
    #[cfg(test)]
    pub(crate) async fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
    ) -> Result<Vec<BatchResponse>, StorageError> {
        self.apply_chunk(&entries)
    }

    /// Where the peer service writes the snapshots it receives.
    pub fn inbox(&self) -> SnapshotInbox {
        SnapshotInbox {
            dir: self.snapshot_dir.clone(),
            flusher: self.flusher.clone(),
            receiving: self.receiving.clone(),
        }
    }

    /// This state machine's snapshot builds and installs, counted.
    pub fn snapshot_counts(&self) -> Arc<SnapshotCounts> {
        self.counts.clone()
    }

    /// A handle for local reads.
    pub fn reader(&self) -> StateReader {
        StateReader {
            data: self.data.clone(),
            meta: self.meta.clone(),
            expiry: self.expiry.clone(),
            applies: self.applies.clone(),
            clock: self.clock.clone(),
            history: self.history.clone(),
        }
    }

    /// A snapshot builder over this state machine's trees, starting from `from`.
    fn builder(
        &self,
        from: Result<Option<LogId>, String>,
        recording: Arc<AtomicBool>,
        installs_before: u64,
    ) -> SnapshotBuilder {
        SnapshotBuilder {
            from,
            data: self.data.clone(),
            meta: self.meta.clone(),
            effects: self.effects.clone(),
            applies: self.applies.clone(),
            recording,
            snapshot_dir: self.snapshot_dir.clone(),
            slot: self.slot.clone(),
            installs_before,
            counts: self.counts.clone(),
        }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let raw = self
            .meta
            .get(key)
            .map_err(|e| storage_err("reading the state machine", e))?;
        raw.map(|raw| decode(&raw))
            .transpose()
            .map_err(|e| storage_err("reading the state machine", e))
    }
}

/// Where a snapshot streamed from the leader is written before openraft hands it to
/// `install_snapshot`, which then installs that file in place. Cheap to clone.
#[derive(Clone)]
pub struct SnapshotInbox {
    dir: PathBuf,
    flusher: StateFlusher,
    /// The file of the transfer under way, shared with the state machine.
    receiving: Arc<Mutex<Option<PathBuf>>>,
}

impl SnapshotInbox {
    /// Starts receiving a snapshot: an empty file of its own (a transfer begun before and not
    /// finished is dropped). Until it is installed or fails, the log's purge waits for it.
    pub async fn begin(&self) -> Result<tokio::fs::File, StorageError> {
        let path = snapshot::temp_path(&self.dir, "receiving");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| storage_err("writing a snapshot", e))?;
        let stale = self.receiving.lock().expect("receiving lock").replace(path);
        if let Some(stale) = stale {
            let _ = std::fs::remove_file(stale);
        }
        self.flusher.receiving();
        tracing::info!("receiving a snapshot from the leader");
        Ok(file)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = tokio::fs::File;

    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let last_applied = self.read_meta::<Option<LogId>>(KEY_LAST_APPLIED)?.flatten();
        let membership = self.read_meta(KEY_MEMBERSHIP)?.unwrap_or_default();
        Ok((last_applied, membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), StorageError>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, StorageError>> + Unpin + Send,
    {
        // Applied in chunks of at most `APPLY_CHUNK` entries (and about `APPLY_CHUNK_BYTES`),
        // each answered once its writes
        // are done. Not flushed here: the entries are already durable in the log
        // on a majority, and a restart re-applies whatever the state machine had not yet made
        // durable.
        let mut chunk = Vec::new();
        let mut responders = Vec::new();
        let mut bytes = 0;
        while let Some((entry, responder)) = entries.next().await.transpose()? {
            bytes += entry_bytes(&entry);
            chunk.push(entry);
            responders.push(responder);
            if chunk.len() == APPLY_CHUNK || bytes >= APPLY_CHUNK_BYTES {
                self.apply_and_answer(&mut chunk, &mut responders)?;
                bytes = 0;
            }
        }
        self.apply_and_answer(&mut chunk, &mut responders)
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
        self.builder(from, self.recording.clone(), installs_before)
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: tokio::fs::File,
    ) -> Result<(), StorageError> {
        let write_err =
            |e: std::io::Error| -> StorageError { storage_err("writing a snapshot", e) };
        let mut file = snapshot;
        file.flush().await.map_err(write_err)?;
        let receiving = self.receiving.lock().expect("receiving lock").take();
        let received = match receiving {
            // The file handed back is the one the inbox created: use it in place.
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
            self.counts.install_failed.fetch_add(1, Ordering::Relaxed);
        } else {
            // The changes up to the snapshot are not known one by one.
            self.history
                .reset(meta.last_log_id.map_or(0, |id| id.index));
            self.counts.installed.fetch_add(1, Ordering::Relaxed);
        }
        installed
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.open_current()
    }
}
