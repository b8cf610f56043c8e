//! Building a snapshot while applies go on (`store/snapshot.rs` says why the result is exact),
//! and publishing it as the current one unless an install overtook it (`SnapshotSlot`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::store::storage_err;
use openraft::RaftSnapshotBuilder;

use super::super::schema::decode;
use super::super::schema::{effect_key, KEY_LAST_APPLIED, KEY_MEMBERSHIP};
use super::super::snapshot;
use super::{SnapshotCounts, SnapshotSlot};
use crate::types::{LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// Builds a snapshot while applies go on: a copy of the data tree, then the changes applied
/// during the copy, as recorded in the effects tree (`store/snapshot.rs` says why that is
/// exact).
#[derive(Clone)]
pub struct SnapshotBuilder {
    /// The applied log id when the build started, or why it could not be read.
    pub(super) from: Result<Option<LogId>, String>,
    pub(super) data: sled::Tree,
    pub(super) meta: sled::Tree,
    pub(super) effects: sled::Tree,
    /// Taken (shared) to read `last_applied` and the membership of one point in the applies.
    pub(super) applies: super::ApplyLock,
    /// Cleared when the build ends: applies stop recording their changes.
    pub(super) recording: Arc<AtomicBool>,
    pub(super) snapshot_dir: PathBuf,
    /// Taken to publish the built file; see `SnapshotSlot`.
    pub(super) slot: Arc<std::sync::Mutex<SnapshotSlot>>,
    /// `SnapshotSlot::installs` when the build started: any other value when it ends means an
    /// install overtook it.
    pub(super) installs_before: u64,
    /// Counts what became of the build.
    pub(super) counts: Arc<SnapshotCounts>,
}

impl SnapshotBuilder {
    /// Writes the snapshot file at `path` and returns its metadata. Blocking.
    pub(super) fn write(
        &self,
        path: &std::path::Path,
        from: Option<LogId>,
    ) -> Result<SnapshotMeta, String> {
        let started = std::time::Instant::now();
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let mut out = snapshot::Writer::create(path).map_err(|e| err(&e))?;
        for pair in self.data.iter() {
            let (key, value) = pair.map_err(|e| err(&e))?;
            out.record(&key, &value).map_err(|e| err(&e))?;
        }
        out.end_records().map_err(|e| err(&e))?;
        // Read after the copy: every change the copy saw was applied at or before `upto`.
        let (upto, membership) = {
            let _between_applies = self.applies.read().expect("apply lock");
            let upto = self.meta.get(KEY_LAST_APPLIED).map_err(|e| err(&e))?;
            (upto, self.meta.get(KEY_MEMBERSHIP).map_err(|e| err(&e))?)
        };
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
        let meta = SnapshotMeta {
            last_log_id: upto,
            last_membership: membership,
        };
        let (records, writes, bytes) = out.finish(&meta).map_err(|e| err(&e))?;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(snapshot = ?meta.last_log_id, records, replayed_writes = writes, bytes, elapsed_ms, "snapshot written; applies went on meanwhile");
        Ok(meta)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = tokio::fs::File;

    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let started = std::time::Instant::now();
        let built = self.build().await;
        let counts = &self.counts;
        match &built {
            Ok((_, kept)) => {
                let outcome = if *kept {
                    &counts.built
                } else {
                    &counts.dropped
                };
                outcome.fetch_add(1, Ordering::Relaxed);
                let took = started.elapsed().as_millis() as u64;
                counts.last_build_ms.store(took, Ordering::Relaxed);
            }
            Err(_) => {
                counts.build_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        built.map(|(snapshot, _)| snapshot)
    }
}

impl SnapshotBuilder {
    /// Builds the snapshot, and publishes it unless it was overtaken (then answers with the
    /// current one): the snapshot, and whether the build was the one published.
    async fn build(&mut self) -> Result<(Snapshot, bool), StorageError> {
        let failed = |e: String| -> StorageError { storage_err("writing a snapshot", e) };
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
            ..self.clone()
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
        let write_err =
            |e: std::io::Error| -> StorageError { storage_err("writing a snapshot", e) };
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
                tracing::info!(built = ?meta.last_log_id, kept = ?installed.last_log_id, why, "snapshot build dropped");
                installed
            }
            None => {
                snapshot::publish(&self.snapshot_dir, &path).map_err(write_err)?;
                meta
            }
        };
        let file = std::fs::File::open(&current).map_err(write_err)?;
        drop(slot);
        let snapshot = Snapshot {
            meta,
            snapshot: tokio::fs::File::from_std(file),
        };
        Ok((snapshot, overtaken.is_none()))
    }
}
