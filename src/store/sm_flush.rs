//! Flushing the state machine's sled database. Nothing flushes it per apply: every applied entry
//! is already durable in the log, and after a crash openraft re-applies the entries after the
//! state machine's durable `last_applied`. So it is flushed about once a second on a thread of
//! its own (`state-flush`), before the log behind it is purged, and when the node stops.
//!
//! Each flush is made durable against power loss too (`fsync::SledFiles`): sled's own flush
//! does not sync its files, and a purge of the log relies on what it flushed.
//!
//! Each flush records in the `flushed` watermark how far the state machine had applied when the
//! flush began. sled recovers a damaged database by silently dropping what follows the damage;
//! a state machine that comes back with less than the watermark says is refused as damaged.

use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::fsync::SledFiles;
use super::integrity::Watermark;
use super::schema::decode;
use super::schema::KEY_LAST_APPLIED;
use crate::types::LogId;

/// How often the state machine is flushed while the node runs.
pub const STATE_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How long a purge of the log waits for the state machine to cover the purged entries (a
/// snapshot install under way) before it fails, which stops the node.
pub const PURGE_WAIT_LIMIT: Duration = Duration::from_secs(600);

/// Flushes the state machine and records how far it got. Cheap to clone.
#[derive(Clone)]
pub struct StateFlusher {
    db: sled::Db,
    /// sled's files, synced after each flush.
    files: Arc<SledFiles>,
    meta: sled::Tree,
    watermark: Watermark,
    /// How far a restart can rebuild the state machine from a snapshot whose install is
    /// durably marked, for a purge waiting on it.
    installs: Arc<(Mutex<Installs>, Condvar)>,
}

/// Snapshot installs, as the log's purge needs to know them.
#[derive(Debug, Default)]
struct Installs {
    /// A snapshot is being received and its install has neither been marked nor failed.
    pending: bool,
    /// The index of the last snapshot whose install is durably marked.
    marked: Option<u64>,
    /// Installs that failed: a purge waiting for one fails too.
    failed: u64,
}

impl StateFlusher {
    pub(super) fn new(
        db: sled::Db,
        files: SledFiles,
        meta: sled::Tree,
        watermark: Watermark,
    ) -> Self {
        Self {
            db,
            files: Arc::new(files),
            meta,
            watermark,
            installs: Arc::default(),
        }
    }

    /// The state machine began receiving a snapshot from the leader.
    pub(super) fn receiving(&self) {
        let (installs, _) = &*self.installs;
        installs.lock().expect("installs lock").pending = true;
    }

    /// The state machine durably marked the install of a snapshot at `index`: from now on a
    /// restart finishes it from the snapshot file, whatever the log holds.
    pub(super) fn install_marked(&self, index: u64) {
        let (installs, changed) = &*self.installs;
        let mut installs = installs.lock().expect("installs lock");
        installs.marked = installs.marked.max(Some(index));
        installs.pending = false;
        changed.notify_all();
    }

    /// A snapshot install failed.
    pub(super) fn install_failed(&self) {
        let (installs, changed) = &*self.installs;
        let mut installs = installs.lock().expect("installs lock");
        installs.failed += 1;
        installs.pending = false;
        changed.notify_all();
    }

    /// The index the state machine has applied, as far as it is written (not flushed).
    fn applied(&self) -> std::io::Result<Option<u64>> {
        Ok(
            match self
                .meta
                .get(KEY_LAST_APPLIED)
                .map_err(std::io::Error::from)?
            {
                Some(raw) => decode::<Option<LogId>>(&raw)
                    .map_err(std::io::Error::other)?
                    .map(|id| id.index),
                None => None,
            },
        )
    }

    /// Flushes the state machine before the log up to `index` is purged, first waiting, while
    /// a snapshot received from the leader is being installed, until a restart can rebuild the
    /// state machine up to `index` without the log: the state machine has applied `index`, or
    /// the install of a snapshot that covers it is durably marked. openraft purges a follower's
    /// log as soon as it hands the state machine the received snapshot; without this wait a
    /// crash before the install was marked left a log that starts after what the state machine
    /// holds, and a node that refused to start. Blocking.
    pub fn wait_until_covered(&self, index: u64) -> std::io::Result<()> {
        let started = Instant::now();
        let (installs, changed) = &*self.installs;
        let failed_before = installs.lock().expect("installs lock").failed;
        loop {
            if self.applied()? >= Some(index) {
                return self.flush();
            }
            let guard = installs.lock().expect("installs lock");
            if guard.marked >= Some(index) {
                return Ok(());
            }
            if !guard.pending && guard.failed == failed_before {
                // No install under way: the log is purged behind what was applied (a snapshot
                // this node built), as openraft asks.
                drop(guard);
                return self.flush();
            }
            if guard.failed != failed_before {
                return Err(std::io::Error::other(format!(
                    "the snapshot install that covers index {index} failed: the log is not purged"
                )));
            }
            if started.elapsed() > PURGE_WAIT_LIMIT {
                return Err(std::io::Error::other(format!(
                    "the state machine did not reach index {index} within {PURGE_WAIT_LIMIT:?}: the log is not purged"
                )));
            }
            // Applies do not notify: poll them, and wake at once for installs.
            let _ = changed
                .wait_timeout(guard, Duration::from_millis(10))
                .expect("installs lock");
        }
    }

    /// Flushes sled and syncs its files: what was written to it so far survives a power cut.
    /// Blocking.
    pub(super) fn sync_db(&self) -> std::io::Result<()> {
        self.db.flush().map_err(std::io::Error::from)?;
        self.files.sync()
    }

    /// Makes everything applied so far durable, and records it. Blocking.
    pub fn flush(&self) -> std::io::Result<()> {
        // Read first: everything applied up to here is in the flush that follows.
        let applied = self.applied()?;
        self.sync_db()?;
        self.watermark
            .record(|d| d.state_applied = d.state_applied.max(applied))
    }

    /// Starts flushing every `interval` on a thread of its own, until the returned handle is
    /// dropped; the thread then flushes once more and ends.
    pub(super) fn spawn_periodic(&self, interval: Duration) -> std::io::Result<PeriodicFlush> {
        let (stop, stopped) = mpsc::channel::<()>();
        let flusher = self.clone();
        std::thread::Builder::new()
            .name("state-flush".into())
            .spawn(move || loop {
                let last = !matches!(
                    stopped.recv_timeout(interval),
                    Err(mpsc::RecvTimeoutError::Timeout)
                );
                if let Err(e) = flusher.flush() {
                    tracing::error!(error = %e, "flushing the state machine failed");
                }
                if last {
                    return;
                }
            })?;
        Ok(PeriodicFlush { _stop: stop })
    }
}

/// Keeps the periodic flush thread running; dropping it stops the thread.
pub struct PeriodicFlush {
    _stop: mpsc::Sender<()>,
}
