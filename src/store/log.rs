//! The Raft log and vote in sled: `raft_log` maps a big-endian index to an encoded entry (so
//! sled's key order is log order); `raft_meta` holds the vote, the last purged log id and the
//! committed log id.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader, StorageIOError};

use super::integrity::{Durable, Watermark};
use super::{decode, encode};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";

/// The log store. Cheap to clone: clones share the same sled trees.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    /// Records what each flush made durable, so damage is detected on the next open.
    watermark: Watermark,
    /// Flushes made, and flushes running (reported by `status`, awaited on shutdown).
    flushes: Arc<FlushStats>,
}

/// Counters of the log store's flushes.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Flushes started since the node started.
    pub count: AtomicU64,
    /// Flushes running now; a flush may outlive openraft's task, and holds the database open.
    pub in_flight: AtomicU64,
}

impl LogStore {
    pub(super) fn new(
        db: sled::Db,
        log: sled::Tree,
        meta: sled::Tree,
        watermark: Watermark,
    ) -> Self {
        Self {
            db,
            log,
            meta,
            watermark,
            flushes: Arc::new(FlushStats::default()),
        }
    }

    /// What sled holds now: the last log index (or the purge point) and the vote's term.
    pub(super) fn held(&self) -> Result<Durable, StorageError> {
        let last = self.log.last().map_err(|e| StorageIOError::read_logs(&e))?;
        let last_log_index = match last {
            Some((key, _)) => Some(u64::from_be_bytes(
                key.as_ref().try_into().expect("log keys are 8 bytes"),
            )),
            None => self.read_meta::<LogId>(KEY_LAST_PURGED)?.map(|id| id.index),
        };
        let vote_term = self
            .read_meta::<Vote>(KEY_VOTE)?
            .map(|v| v.leader_id.term)
            .unwrap_or(0);
        Ok(Durable {
            last_log_index,
            vote_term,
        })
    }

    fn record(&self, update: impl FnOnce(&mut Durable)) -> Result<(), StorageError> {
        self.watermark
            .record(update)
            .map_err(|e| StorageIOError::write(&e).into())
    }

    /// The database this store lives in (shared with the state machine).
    pub fn db(&self) -> sled::Db {
        self.db.clone()
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let raw = self.meta.get(key).map_err(|e| StorageIOError::read(&e))?;
        raw.map(|raw| decode(&raw))
            .transpose()
            .map_err(|e| StorageIOError::read(&e).into())
    }

    /// Makes everything written so far durable. Called before any write is reported done.
    async fn flush(&self) -> Result<(), sled::Error> {
        self.flushes.count.fetch_add(1, Ordering::Relaxed);
        self.flushes.in_flight.fetch_add(1, Ordering::SeqCst);
        // sled's `flush_async` queues the flush on sled's own thread pool, whose every job wakes
        // all its idle threads; a blocking flush on tokio's blocking pool costs one hand-off.
        let (db, stats) = (self.db.clone(), self.flushes.clone());
        let flush = move || {
            let flushed = db.flush();
            drop(db);
            stats.in_flight.fetch_sub(1, Ordering::SeqCst);
            flushed
        };
        match tokio::task::spawn_blocking(flush).await {
            Ok(flushed) => flushed.map(|_| ()),
            Err(e) => Err(sled::Error::Io(std::io::Error::other(e))),
        }
    }

    /// The counters of the flushes this store makes.
    pub fn flush_stats(&self) -> Arc<FlushStats> {
        self.flushes.clone()
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => index_key(*i),
            Bound::Excluded(i) => index_key(*i + 1),
            Bound::Unbounded => index_key(0),
        };
        let mut entries = Vec::new();
        for item in self.log.range(start..) {
            let (key, raw) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index = u64::from_be_bytes(key.as_ref().try_into().expect("log keys are 8 bytes"));
            if !range.contains(&index) {
                break;
            }
            entries.push(decode::<Entry>(&raw).map_err(|e| StorageIOError::read_logs(&e))?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(KEY_LAST_PURGED)?;
        let last = self.log.last().map_err(|e| StorageIOError::read_logs(&e))?;
        let last_log_id = match last {
            Some((_, raw)) => Some(
                decode::<Entry>(&raw)
                    .map_err(|e| StorageIOError::read_logs(&e))?
                    .log_id,
            ),
            // An empty log (all purged) still reports the purged id, or a restart would lose it.
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.meta
            .insert(KEY_VOTE, encode(vote))
            .map_err(|e| StorageIOError::write_vote(&e))?;
        // A vote is a promise to other nodes: it must survive a crash before it is answered.
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.record(|d| d.vote_term = d.vote_term.max(vote.leader_id.term))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed on its own: it is a hint that lets a restarted node apply sooner, and it is
        // never ahead of the durable log. It becomes durable with the next flush.
        self.meta
            .insert(KEY_COMMITTED, encode(&committed))
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = sled::Batch::default();
        let mut last = None;
        for entry in entries {
            batch.insert(&index_key(entry.log_id.index), encode(&entry));
            last = Some(entry.log_id.index);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // The entries are readable now; openraft hears they are durable only once the flush has
        // returned. One flush covers the whole batch openraft handed over.
        let flushed = self.flush().await.map_err(std::io::Error::other);
        if flushed.is_ok() && last.is_some() {
            self.record(|d| d.last_log_index = last)?;
        }
        callback.log_io_completed(flushed);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Lower the watermark first: it must never claim entries sled may no longer hold.
        self.record(|d| d.last_log_index = log_id.index.checked_sub(1))?;
        let mut batch = sled::Batch::default();
        for key in self.log.range(index_key(log_id.index)..).keys() {
            batch.remove(key.map_err(|e| StorageIOError::write_logs(&e))?);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point durably first, so a crash mid-purge never leaves a log whose
        // start is unknown. The flush also makes the state machine durable up to `log_id`
        // (sled flushes all trees), so the purged entries are never needed again.
        self.meta
            .insert(KEY_LAST_PURGED, encode(&log_id))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let mut batch = sled::Batch::default();
        for key in self.log.range(..=index_key(log_id.index)).keys() {
            batch.remove(key.map_err(|e| StorageIOError::write_logs(&e))?);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
