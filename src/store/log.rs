//! The Raft log store, under `<data-dir>/log/`: entries in segment files (`segments.rs`), the
//! vote and the purge point in small files of their own (`vote`, `purged`), each replaced
//! atomically (temp file, fsync, rename, fsync of the directory).
//!
//! Durability: an append is written to the segment at once (so it is readable), and reported
//! to openraft only after one `fdatasync` covered it. The syncs run on one thread of their own,
//! `raft-log-sync`: appends that arrive while it syncs are covered together by its next sync.
//! A vote is durable before `save_vote` returns. The purge point is made durable, and the state
//! machine flushed, before any entry is deleted: entries the state machine may still need after
//! a crash are never purged.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};

use super::integrity::{write_durably, Durable, Watermark};
use super::schema::{decode, encode};
use super::segments::{SegmentError, SegmentLog, SyncWork};
use super::sm_flush::StateFlusher;
use crate::types::{Entry, LogId, TypeConfig, Vote};

const VOTE_FILE: &str = "vote";
const PURGED_FILE: &str = "purged";
/// The default size at which a segment file is closed and the next append starts a new one
/// (`--log-segment-bytes`); the log is deleted a segment at a time behind each snapshot.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// The log store. Cheap to clone: clones share the same files.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    segments: Arc<Mutex<SegmentLog>>,
    meta: Mutex<Meta>,
    /// Records what each sync made durable, so damage is detected on the next open.
    watermark: Watermark,
    flushes: Arc<FlushStats>,
    /// Hands appends to the sync thread, which reports them done once synced.
    syncs: mpsc::Sender<Done>,
    /// Flushes the state machine, before the log behind it is purged.
    state: StateFlusher,
}

/// What the log knows besides its entries.
struct Meta {
    vote: Option<Vote>,
    last_purged: Option<LogId>,
    last_log_id: Option<LogId>,
}

/// Counters of the log store's syncs.
#[derive(Debug)]
pub struct FlushStats {
    /// Syncs (`fdatasync` rounds) made since the node started.
    pub count: AtomicU64,
    /// Appends handed to the sync thread and not yet reported done.
    pub in_flight: AtomicU64,
    /// How long each sync took (`/metrics`: a slow disk shows here first).
    pub sync_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for FlushStats {
    fn default() -> Self {
        Self {
            count: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            // 100 us to about 3.3 s, doubling.
            sync_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_1, 2.0, 16),
            ),
        }
    }
}

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LogOpenError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The log's files hold what no crash can leave behind.
    #[error("{0}")]
    Damaged(String),
}

impl From<SegmentError> for LogOpenError {
    fn from(e: SegmentError) -> Self {
        match e {
            SegmentError::Io(e) => LogOpenError::Io(e),
            SegmentError::Damaged(reason) => LogOpenError::Damaged(reason),
        }
    }
}

impl LogStore {
    /// Opens the log in `dir` (creating it). `state` flushes the state machine.
    pub(super) fn open(
        dir: &Path,
        segment_bytes: u64,
        state: StateFlusher,
        watermark: Watermark,
    ) -> Result<Self, LogOpenError> {
        std::fs::create_dir_all(dir)?;
        let vote: Option<Vote> = read_small(dir, VOTE_FILE)?;
        let last_purged: Option<LogId> = read_small(dir, PURGED_FILE)?;
        let (segments, cut_bytes) =
            SegmentLog::open(dir, segment_bytes, last_purged.map(|p| p.index))?;
        if cut_bytes > 0 {
            tracing::warn!(cut_bytes, "the log ended in an unfinished append, cut off");
        }
        let last_log_id = match segments.last_index() {
            Some(last) => Some(read_entries(&segments, last, last + 1)?.remove(0).log_id),
            None => last_purged,
        };
        let flushes = Arc::new(FlushStats::default());
        let segments = Arc::new(Mutex::new(segments));
        let syncer = Syncer {
            segments: segments.clone(),
            watermark: watermark.clone(),
            flushes: flushes.clone(),
            sync: Arc::new(SyncWork::sync),
        };
        let syncs = syncer.spawn()?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                segments,
                meta: Mutex::new(Meta {
                    vote,
                    last_purged,
                    last_log_id,
                }),
                watermark,
                flushes,
                syncs,
                state,
            }),
        })
    }

    /// What the log holds now: its last index (or the purge point) and the vote's term.
    pub(super) fn held(&self) -> Durable {
        let meta = self.meta();
        Durable {
            last_log_index: meta.last_log_id.map(|id| id.index),
            vote_term: meta.vote.map_or(0, |v| v.leader_id.term),
            ..Durable::default()
        }
    }

    /// Flushes the state machine this log was opened with (the node does on stop).
    pub fn state_flusher(&self) -> StateFlusher {
        self.inner.state.clone()
    }

    /// The last purged log id.
    pub(super) fn last_purged(&self) -> Option<LogId> {
        self.meta().last_purged
    }

    /// The entries `start..end` the log holds, read from disk. Blocking.
    pub fn entries(&self, start: u64, end: u64) -> Result<Vec<Entry>, std::io::Error> {
        read_entries(&self.segments(), start, end)
    }

    /// The counters of the syncs this store makes.
    pub fn flush_stats(&self) -> Arc<FlushStats> {
        self.inner.flushes.clone()
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, Meta> {
        self.inner.meta.lock().expect("log meta lock")
    }

    fn segments(&self) -> std::sync::MutexGuard<'_, SegmentLog> {
        self.inner.segments.lock().expect("segments lock")
    }

    /// Removes the entries from `index` on, durably. Rare (a follower's conflicting suffix), so
    /// synced in place.
    fn truncate_from(&self, index: u64) -> std::io::Result<()> {
        let mut segments = self.segments();
        // Lower the watermark first, durably: it must never claim entries the log may no longer
        // hold (nor, for a truncation past the end, entries not yet synced), even after a power
        // cut that keeps the truncation and an older write-back of the watermark.
        self.inner.watermark.lower(|d| {
            d.last_log_index = d.last_log_index.min(index.checked_sub(1));
        })?;
        segments.truncate(index)?;
        let last = match segments.last_index() {
            Some(last) => Some(read_entries(&segments, last, last + 1)?[0].log_id),
            None => self.meta().last_purged,
        };
        self.meta().last_log_id = last;
        Ok(())
    }

    /// Replaces one of the small files durably, on tokio's blocking pool.
    async fn write_small<T: serde::Serialize>(
        &self,
        name: &'static str,
        value: &T,
    ) -> std::io::Result<()> {
        let (dir, bytes) = (self.inner.dir.clone(), encode(value));
        tokio::task::spawn_blocking(move || write_durably(&dir, name, &bytes))
            .await
            .map_err(std::io::Error::other)?
    }
}

/// Reads one of the small files, if it exists.
fn read_small<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
) -> Result<Option<T>, LogOpenError> {
    match std::fs::read(dir.join(name)) {
        Ok(raw) => decode(&raw).map(Some).map_err(|e| {
            LogOpenError::Damaged(format!("unreadable {}: {e}", dir.join(name).display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn read_entries(segments: &SegmentLog, start: u64, end: u64) -> Result<Vec<Entry>, std::io::Error> {
    segments
        .read_range(start, end)?
        .iter()
        .map(|raw| decode::<Entry>(raw).map_err(std::io::Error::other))
        .collect()
}

/// The first index of `range` and the one after its last.
fn index_bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => *i + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => *i + 1,
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

/// Entries read from the segments at a time by `entries_stream`.
const STREAM_ENTRIES: u64 = 64;

/// What the sync thread calls once an append is durable (or could not be made so).
type Done = Box<dyn FnOnce(std::io::Result<()>) + Send>;
/// How the sync thread makes written segments durable.
type SyncFn = Arc<dyn Fn(&SyncWork) -> std::io::Result<()> + Send + Sync>;

/// The sync thread: makes appends durable, several at a time, and reports them done.
struct Syncer {
    segments: Arc<Mutex<SegmentLog>>,
    watermark: Watermark,
    flushes: Arc<FlushStats>,
    /// Makes written segments durable (`SyncWork::sync`; tests watch it).
    sync: SyncFn,
}

impl Syncer {
    /// Starts the thread; it ends when every sender is gone.
    fn spawn(self) -> std::io::Result<mpsc::Sender<Done>> {
        let (syncs, pending) = mpsc::channel();
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || self.run(pending))?;
        Ok(syncs)
    }

    fn run(self, pending: mpsc::Receiver<Done>) {
        while let Ok(first) = pending.recv() {
            let mut done = vec![first];
            done.extend(pending.try_iter());
            // Everything those appends wrote is in the work taken now.
            let (work, last_index) = {
                let mut segments = self.segments.lock().expect("segments lock");
                (segments.take_sync_work(), segments.last_index())
            };
            self.flushes.count.fetch_add(1, Ordering::Relaxed);
            let started = std::time::Instant::now();
            let mut result = (self.sync)(&work);
            self.flushes
                .sync_seconds
                .observe(started.elapsed().as_secs_f64());
            if result.is_ok() {
                // Under the segments lock, so a truncation that lowered the watermark meanwhile
                // is never overwritten with a higher index.
                let segments = self.segments.lock().expect("segments lock");
                let durable = match (last_index, segments.last_index()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    _ => None,
                };
                if durable.is_some() {
                    result = self.watermark.record(|d| d.last_log_index = durable);
                }
            }
            for report in done {
                report(match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                });
                self.flushes.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> std::io::Result<Vec<Entry>> {
        let (start, end) = index_bounds(&range);
        self.entries(start, end)
    }

    /// The entries of `range`, read `STREAM_ENTRIES` at a time as the stream is polled:
    /// applying a long range (a follower catching up, a node restarting) holds that many
    /// entries in memory at once, never the whole range.
    async fn entries_stream<RB>(
        &mut self,
        range: RB,
    ) -> impl futures::Stream<Item = std::io::Result<Entry>> + Send
    where
        RB: RangeBounds<u64> + Clone + Debug + Send,
    {
        use futures::StreamExt;
        let (start, end) = index_bounds(&range);
        let store = self.clone();
        futures::stream::unfold(Some(start), move |next| {
            let store = store.clone();
            async move {
                let next = next.filter(|next| *next < end)?;
                let upto = end.min(next.saturating_add(STREAM_ENTRIES));
                match store.entries(next, upto) {
                    Ok(chunk) if chunk.is_empty() => None,
                    Ok(chunk) => {
                        let after = next + chunk.len() as u64;
                        let chunk = futures::stream::iter(chunk.into_iter().map(Ok));
                        Some((chunk.left_stream(), Some(after)))
                    }
                    Err(e) => Some((futures::stream::iter([Err(e)]).right_stream(), None)),
                }
            }
        })
        .flatten()
    }

    async fn read_vote(&mut self) -> std::io::Result<Option<Vote>> {
        Ok(self.meta().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> std::io::Result<LogState<TypeConfig>> {
        let meta = self.meta();
        Ok(LogState {
            last_purged_log_id: meta.last_purged,
            last_log_id: meta.last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> std::io::Result<()> {
        // A vote is a promise to other nodes: it must survive a crash before it is answered.
        self.write_small(VOTE_FILE, vote).await?;
        self.meta().vote = Some(*vote);
        self.inner
            .watermark
            .record(|d| d.vote_term = d.vote_term.max(vote.leader_id.term))?;
        Ok(())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> std::io::Result<()>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut last = None;
        let records: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|entry| {
                last = Some(entry.log_id);
                (entry.log_id.index, encode(&entry))
            })
            .collect();
        // An entry written again replaces it and everything after it (they conflict with it).
        let rewrites = match (records.first(), self.meta().last_log_id) {
            (Some((first, _)), Some(last)) => *first <= last.index,
            _ => false,
        };
        if rewrites {
            self.truncate_from(records[0].0)?;
        }
        // Written now, so readable when this returns; reported durable by the sync thread.
        self.segments().append(&records)?;
        if last.is_some() {
            self.meta().last_log_id = last;
        }
        self.inner.flushes.in_flight.fetch_add(1, Ordering::SeqCst);
        let done: Done = Box::new(move |synced| callback.io_completed(synced));
        if let Err(mpsc::SendError(done)) = self.inner.syncs.send(done) {
            self.inner.flushes.in_flight.fetch_sub(1, Ordering::SeqCst);
            done(Err(std::io::Error::other("the log sync thread is gone")));
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> std::io::Result<()> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        self.truncate_from(from)
    }

    async fn purge(&mut self, log_id: LogId) -> std::io::Result<()> {
        // The state machine is made durable first (it has applied at least up to `log_id`, or
        // the install of a snapshot that covers it is marked), then the purge point: after a
        // crash, the state machine never needs an entry that is gone.
        let state = self.inner.state.clone();
        let index = log_id.index;
        tokio::task::spawn_blocking(move || state.wait_until_covered(index))
            .await
            .map_err(std::io::Error::other)??;
        self.write_small(PURGED_FILE, &log_id).await?;
        self.segments().purge(log_id.index)?;
        let mut meta = self.meta();
        meta.last_purged = Some(log_id);
        if meta.last_log_id < Some(log_id) {
            meta.last_log_id = Some(log_id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::store::integrity::Watermark;

    /// A syncer over a log holding entries 1..=3 (written, not synced), whose sync step is
    /// `sync`; returns the sender appends report through and the watermark.
    fn syncer(dir: &Path, sync: SyncFn) -> (mpsc::Sender<Done>, Watermark) {
        let (mut segments, _) = SegmentLog::open(&dir.join("log"), 1 << 20, None).unwrap();
        let records: Vec<_> = (1..=3u64).map(|i| (i, vec![i as u8; 10])).collect();
        segments.append(&records).unwrap();
        let (watermark, _) = Watermark::open(dir).unwrap();
        let syncer = Syncer {
            segments: Arc::new(Mutex::new(segments)),
            watermark: watermark.clone(),
            flushes: Arc::new(FlushStats {
                in_flight: AtomicU64::new(1),
                ..FlushStats::default()
            }),
            sync,
        };
        (syncer.spawn().unwrap(), watermark)
    }

    #[test]
    fn an_append_is_reported_done_only_after_its_segment_was_synced() {
        let dir = tempfile::tempdir().unwrap();
        let synced = Arc::new(AtomicBool::new(false));
        let seen = synced.clone();
        let (syncs, watermark) = syncer(
            dir.path(),
            Arc::new(move |work: &SyncWork| {
                assert_eq!(work.files.len(), 1, "the written segment is synced");
                work.sync()?;
                seen.store(true, Ordering::SeqCst);
                Ok(())
            }),
        );
        let (tx, rx) = mpsc::channel();
        let flag = synced.clone();
        syncs
            .send(Box::new(move |r| {
                tx.send((r.is_ok(), flag.load(Ordering::SeqCst))).unwrap()
            }))
            .unwrap();
        assert_eq!(
            rx.recv().unwrap(),
            (true, true),
            "reported ok, after the sync"
        );
        let (_, recorded) = Watermark::open(dir.path()).unwrap();
        assert_eq!(recorded.last_log_index, Some(3));
        drop(watermark);
    }

    #[test]
    fn a_failed_sync_is_reported_and_not_recorded_as_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (syncs, _watermark) = syncer(
            dir.path(),
            Arc::new(|_: &SyncWork| Err(std::io::Error::other("disk gone"))),
        );
        let (tx, rx) = mpsc::channel();
        syncs
            .send(Box::new(move |r| {
                tx.send(r.map_err(|e| e.to_string())).unwrap()
            }))
            .unwrap();
        assert_eq!(rx.recv().unwrap(), Err("disk gone".to_string()));
        let (_, recorded) = Watermark::open(dir.path()).unwrap();
        assert_eq!(recorded.last_log_index, None);
    }

    /// `entries_stream` reads `STREAM_ENTRIES` at a time: over ranges that span several reads,
    /// it yields exactly what `try_get_log_entries` returns.
    #[tokio::test]
    async fn the_entries_stream_reads_in_chunks_and_yields_the_whole_range() {
        use futures::StreamExt;
        use openraft::storage::RaftLogStorage;
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) =
            crate::store::open(dir.path(), 1, None, &crate::store::StoreOptions::default())
                .await
                .unwrap();
        let n = 3 * STREAM_ENTRIES + 5;
        let entries: Vec<Entry> = (1..=n)
            .map(|i| crate::store::state_machine::tests::entry(i, Vec::new()))
            .collect();
        // Readable once written; the sync that follows does not matter here.
        log.append(entries, IOFlushed::noop()).await.unwrap();
        let ranges = [
            (1, n + 1),
            (2, STREAM_ENTRIES + 2),
            (STREAM_ENTRIES, 2 * STREAM_ENTRIES + 1),
            (n - 3, n + 100),
            (5, 5),
        ];
        for (start, end) in ranges {
            let streamed: Vec<LogId> = log
                .entries_stream(start..end)
                .await
                .map(|e| e.unwrap().log_id)
                .collect()
                .await;
            let read: Vec<LogId> = log
                .try_get_log_entries(start..end)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.log_id)
                .collect();
            assert_eq!(streamed, read, "{start}..{end}");
        }
        let all: Vec<_> = log.entries_stream(1..).await.collect().await;
        assert_eq!(all.len() as u64, n);
    }
}
