//! Installing a snapshot into the state machine: one received from the leader, or the current
//! one again after a crash half-way; checking the current one before it is sent, and building
//! it anew from the data when it is damaged.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::store::storage_err;

use super::super::schema::encode;
use super::super::schema::{
    KEY_BYTES, KEY_EXPIRY_BUILT, KEY_INSTALLING, KEY_KEYS, KEY_LAST_APPLIED, KEY_MEMBERSHIP,
    KEY_SESSIONS,
};
use super::super::{expiry_index, snapshot};
use super::StateMachine;
use crate::types::{LogId, Snapshot, SnapshotMeta, StorageError};

/// Records read from a snapshot file at a time when installing it.
const INSTALL_CHUNK: usize = 4096;

impl StateMachine {
    /// Replaces the whole state with the current snapshot file, streaming it in chunks. The file
    /// is checked whole first (unless the caller just did); the install is marked in `sm_meta`
    /// (and flushed) before `sm_data` is touched, and unmarked after the new `last_applied`,
    /// counters and membership are written. Once marked, a restart finishes the install from the file, so
    /// the log up to the snapshot's index may be purged (`StateFlusher::install_marked`).
    pub(super) fn install_current(
        &mut self,
        meta: &SnapshotMeta,
        verified: Verified,
    ) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        let path = self.snapshot_dir.join(snapshot::CURRENT);
        let read_err = |e: std::io::Error| -> StorageError { storage_err("reading a snapshot", e) };
        let write_err =
            |e: sled::Error| -> StorageError { storage_err("writing the state machine", e) };
        if verified == Verified::No {
            snapshot::verify(&path).map_err(read_err)?;
        }
        let sync_err =
            |e: std::io::Error| -> StorageError { storage_err("writing the state machine", e) };
        self.meta
            .insert(KEY_INSTALLING, encode(&meta.last_log_id))
            .map_err(write_err)?;
        // Durable (sled's files synced): the log behind the snapshot is purged on the strength
        // of this marker.
        self.flusher.sync_db().map_err(sync_err)?;
        if let Some(installed) = meta.last_log_id {
            self.flusher.install_marked(installed.index);
        }
        self.data.clear().map_err(write_err)?;
        let data = &self.data;
        let records = snapshot::for_each_chunk(&path, INSTALL_CHUNK, |pairs| {
            for (k, v) in pairs {
                match v {
                    Some(v) => data.insert(k, v),
                    None => data.remove(k),
                }
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            }
            Ok(())
        })
        .map_err(read_err)?;
        // The snapshot carries the data, not its counters nor its expiry index: count what was
        // installed, and index it. The marker goes last: until then a restart installs again.
        let (usage, _) = expiry_index::rebuild(&self.data, &self.expiry).map_err(write_err)?;
        let meta_writes = [
            (KEY_KEYS, usage.keys.to_be_bytes().to_vec()),
            (KEY_BYTES, usage.bytes.to_be_bytes().to_vec()),
            (KEY_SESSIONS, usage.sessions.to_be_bytes().to_vec()),
            (KEY_LAST_APPLIED, encode(&meta.last_log_id)),
            (KEY_MEMBERSHIP, encode(&meta.last_membership)),
            (KEY_EXPIRY_BUILT, Vec::new()),
        ];
        for (key, value) in meta_writes {
            self.meta.insert(key, value).map_err(write_err)?;
        }
        self.meta.remove(KEY_INSTALLING).map_err(write_err)?;
        self.flusher.sync_db().map_err(sync_err)?;
        tracing::info!(snapshot = ?meta.last_log_id, records, elapsed_ms = started.elapsed().as_millis() as u64, "snapshot installed");
        Ok(())
    }

    /// The current snapshot, checked whole first: a damaged one (a flipped bit on disk) is never
    /// sent to a follower; a new one is built from the data instead.
    pub(super) fn open_current(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let path = self.snapshot_dir.join(snapshot::CURRENT);
        if !path.exists() {
            return Ok(None);
        }
        if let Err(e) = snapshot::verify(&path) {
            tracing::error!(path = %path.display(), error = %e, "the current snapshot is damaged; building a new one from the data");
            self.rebuild_current()?;
        }
        let read_err = |e: std::io::Error| -> StorageError { storage_err("reading a snapshot", e) };
        // Under the snapshot lock: a build running meanwhile renames its file onto `current`
        // only under it, and the metadata sent must describe the bytes sent (a follower
        // refuses a file that holds another snapshot than the one it was told).
        let (meta, file) = {
            let _slot = self.slot.lock().expect("snapshot slot lock");
            let meta = snapshot::read_meta(&path).map_err(read_err)?;
            (meta, std::fs::File::open(&path).map_err(read_err)?)
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: tokio::fs::File::from_std(file),
        }))
    }
}

impl StateMachine {
    /// On open, installs the current snapshot again if the state machine is behind it: an
    /// install that was marked and not finished, or a snapshot made current (built here, or
    /// received and published before its install was marked) that the state machine had not
    /// made durable up to when a crash or power cut came. openraft refuses to start with a
    /// snapshot beyond what the state machine applied; the snapshot holds committed entries
    /// only, so installing it is the same as applying the entries up to it.
    pub(super) fn catch_up_with_current(&mut self) -> Result<(), StorageError> {
        let read_err = |e: std::io::Error| -> StorageError { storage_err("reading a snapshot", e) };
        let current = self.snapshot_dir.join(snapshot::CURRENT);
        let interrupted = self
            .meta
            .contains_key(KEY_INSTALLING)
            .map_err(|e| storage_err("reading the state machine", e))?;
        if interrupted {
            tracing::warn!(
                "a snapshot install was interrupted; installing it again from the snapshot file"
            );
            // The half-loaded state machine can only be finished from that file: the log
            // behind it is purged, and the data before it half cleared.
            if let Err(e) = snapshot::verify(&current) {
                return Err(storage_err(
                    "finishing an interrupted snapshot install",
                    format!(
                        "{e}. The install this node was making when it stopped had half loaded its state machine from that file, so this data dir cannot recover on its own: remove the node (`raftcache admin remove-node ID` through another member), empty its data dir, start it with --no-bootstrap and add it again (`raftcache admin add-node`; docs/operations.md, \"A node that came back without its data\")"
                    ),
                ));
            }
            let meta = snapshot::read_meta(&current).map_err(read_err)?;
            return self.install_current(&meta, Verified::Yes);
        }
        if !current.exists() {
            return Ok(());
        }
        // A damaged file is rebuilt from the data when it is next opened (`open_current`).
        let Ok(meta) = snapshot::read_meta(&current) else {
            return Ok(());
        };
        let applied = self.read_meta::<Option<LogId>>(KEY_LAST_APPLIED)?.flatten();
        if meta.last_log_id > applied {
            tracing::warn!(snapshot = ?meta.last_log_id, applied = ?applied, "the state machine is behind the current snapshot (it was not durable when the node stopped); installing the snapshot");
            self.install_current(&meta, Verified::No)?;
        }
        Ok(())
    }

    /// Replaces the current snapshot with one built from the data, at the applied index. No
    /// apply runs meanwhile (this holds the state machine), so the copy is the state there.
    pub(super) fn rebuild_current(&mut self) -> Result<(), StorageError> {
        let failed = |e: String| -> StorageError { storage_err("writing a snapshot", e) };
        let from = self.read_meta::<Option<LogId>>(KEY_LAST_APPLIED)?.flatten();
        let builder = self.builder(Ok(from), Arc::new(AtomicBool::new(false)), 0);
        let path = snapshot::temp_path(&self.snapshot_dir, "rebuilding");
        let meta = builder.write(&path, from).map_err(failed)?;
        let _slot = self.slot.lock().expect("snapshot slot lock");
        snapshot::publish(&self.snapshot_dir, &path).map_err(|e| failed(e.to_string()))?;
        tracing::info!(snapshot = ?meta.last_log_id, "current snapshot rebuilt from the data");
        Ok(())
    }

    /// Rewrites a current snapshot of the layout without a checksum in the current layout, or
    /// rebuilds it from the data if it cannot be read whole.
    pub(super) fn upgrade_current(&mut self) -> Result<(), StorageError> {
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

impl StateMachine {
    /// Makes the received snapshot file the current one and loads it, under the snapshot lock
    /// (see `SnapshotSlot`). The file is checked whole, and must describe the snapshot openraft
    /// says it received, before it replaces anything: a cut-short or damaged transfer changes
    /// nothing.
    pub(super) fn install_received(
        &mut self,
        received: &Path,
        meta: &SnapshotMeta,
    ) -> Result<(), StorageError> {
        let write_err =
            |e: std::io::Error| -> StorageError { storage_err("writing a snapshot", e) };
        let slot = self.slot.clone();
        let mut slot = slot.lock().expect("snapshot slot lock");
        slot.installs += 1;
        snapshot::verify(received).map_err(write_err)?;
        let described = snapshot::read_meta(received).map_err(write_err)?;
        if described != *meta {
            return Err(write_err(std::io::Error::other(format!(
                "the received file holds the snapshot at {:?}, not the one at {:?}",
                described.last_log_id, meta.last_log_id
            ))));
        }
        snapshot::publish(&self.snapshot_dir, received).map_err(write_err)?;
        self.install_current(meta, Verified::Yes)
    }
}

/// Whether a snapshot file was just checked whole by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verified {
    Yes,
    No,
}

/// Whether `file` is the file at `path` (same device and inode).
pub(super) async fn same_file(file: &tokio::fs::File, path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata().await, tokio::fs::metadata(path).await) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}
