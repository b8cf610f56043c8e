//! Flushing the state machine's sled database. Nothing flushes it per apply: every applied entry
//! is already durable in the log, and after a crash openraft re-applies the entries after the
//! state machine's durable `last_applied`. So it is flushed about once a second on a thread of
//! its own (`state-flush`), before the log behind it is purged, and when the node stops.
//!
//! Each flush records in the `flushed` watermark how far the state machine had applied when the
//! flush began. sled recovers a damaged database by silently dropping what follows the damage;
//! a state machine that comes back with less than the watermark says is refused as damaged.

use std::sync::mpsc;
use std::time::Duration;

use super::decode;
use super::integrity::Watermark;
use super::state_machine::KEY_LAST_APPLIED;
use crate::types::LogId;

/// How often the state machine is flushed while the node runs.
pub const STATE_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Flushes the state machine and records how far it got. Cheap to clone.
#[derive(Clone)]
pub struct StateFlusher {
    db: sled::Db,
    meta: sled::Tree,
    watermark: Watermark,
}

impl StateFlusher {
    pub(super) fn new(db: sled::Db, meta: sled::Tree, watermark: Watermark) -> Self {
        Self {
            db,
            meta,
            watermark,
        }
    }

    /// Makes everything applied so far durable, and records it. Blocking.
    pub fn flush(&self) -> std::io::Result<()> {
        // Read first: everything applied up to here is in the flush that follows.
        let applied = match self
            .meta
            .get(KEY_LAST_APPLIED)
            .map_err(std::io::Error::from)?
        {
            Some(raw) => decode::<Option<LogId>>(&raw)
                .map_err(std::io::Error::other)?
                .map(|id| id.index),
            None => None,
        };
        self.db.flush().map_err(std::io::Error::from)?;
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
