//! The cache's state machine in sled: `sm_data` holds the key-value pairs, `sm_meta` holds the
//! last applied log id and the last membership. Applying a batch of entries is one sled
//! transaction over both trees, so an entry's effect and `last_applied` never come apart: a
//! restart neither applies an entry twice nor skips one.
//!
//! The current snapshot lives in `<data-dir>/snapshots/current` (written to a temp file, synced,
//! then renamed). Installing a snapshot received from the leader is recorded in `sm_meta` first,
//! so a crash half-way through an install is finished from the snapshot file on the next start.

use std::io::{Cursor, Write};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::{decode, encode};
use crate::types::{
    BatchResponse, Entry, LogId, Request, Response, Snapshot, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig,
};

const KEY_LAST_APPLIED: &[u8] = b"last_applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
/// Present while a received snapshot is being installed into `sm_data`.
const KEY_INSTALLING: &[u8] = b"installing_snapshot";
const SNAPSHOT_FILE: &str = "current";

/// A read-only handle on the replica's data, for serving local reads.
#[derive(Clone)]
pub struct StateReader {
    data: sled::Tree,
}

impl StateReader {
    /// The value stored under `key` on this replica, as of its last applied entry.
    pub fn get(&self, key: &str) -> Result<Option<String>, sled::Error> {
        Ok(self
            .data
            .get(key.as_bytes())?
            .map(|raw| String::from_utf8_lossy(&raw).into_owned()))
    }

    /// Number of keys held on this replica.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// The state machine openraft applies committed entries to.
pub struct StateMachine {
    db: sled::Db,
    data: sled::Tree,
    meta: sled::Tree,
    snapshot_dir: PathBuf,
}

/// A snapshot file: its metadata and the encoded `SnapshotImage`.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The whole cache at one log index: the bytes a snapshot carries.
#[derive(Serialize, Deserialize)]
struct SnapshotImage {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl StateMachine {
    pub(super) async fn open(
        db: sled::Db,
        data: sled::Tree,
        meta: sled::Tree,
        snapshot_dir: PathBuf,
    ) -> Result<Self, StorageError> {
        std::fs::create_dir_all(&snapshot_dir)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let mut sm = Self {
            db,
            data,
            meta,
            snapshot_dir,
        };
        if sm
            .meta
            .contains_key(KEY_INSTALLING)
            .map_err(|e| StorageIOError::read_state_machine(&e))?
        {
            tracing::warn!(
                "a snapshot install was interrupted; installing it again from the snapshot file"
            );
            let file = sm.read_snapshot_file()?.ok_or_else(|| {
                StorageIOError::read_snapshot(
                    None,
                    &std::io::Error::other("interrupted install but no snapshot file"),
                )
            })?;
            sm.install_image(&file.meta, &file.data)?;
        }
        Ok(sm)
    }

    /// A handle for local reads.
    pub fn reader(&self) -> StateReader {
        StateReader {
            data: self.data.clone(),
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

    fn snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join(SNAPSHOT_FILE)
    }

    fn read_snapshot_file(&self) -> Result<Option<SnapshotFile>, StorageError> {
        let raw = match std::fs::read(self.snapshot_path()) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageIOError::read_snapshot(None, &e).into()),
        };
        decode(&raw)
            .map(Some)
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }

    /// Replaces the whole state with a snapshot image. Marked in `sm_meta` (and flushed) before
    /// `sm_data` is touched, and unmarked in the same batch that records the new `last_applied`.
    fn install_image(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let write_err =
            |e: &sled::Error| -> StorageError { StorageIOError::write_state_machine(e).into() };
        let image: SnapshotImage =
            decode(data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.meta
            .insert(KEY_INSTALLING, meta.snapshot_id.as_bytes())
            .map_err(|e| write_err(&e))?;
        self.db.flush().map_err(|e| write_err(&e))?;
        self.data.clear().map_err(|e| write_err(&e))?;
        for chunk in image.pairs.chunks(4096) {
            let mut batch = sled::Batch::default();
            for (k, v) in chunk {
                batch.insert(k.as_slice(), v.as_slice());
            }
            self.data.apply_batch(batch).map_err(|e| write_err(&e))?;
        }
        let mut batch = sled::Batch::default();
        batch.insert(KEY_LAST_APPLIED, encode(&meta.last_log_id));
        batch.insert(KEY_MEMBERSHIP, encode(&meta.last_membership));
        batch.remove(KEY_INSTALLING);
        self.meta.apply_batch(batch).map_err(|e| write_err(&e))?;
        self.db.flush().map_err(|e| write_err(&e))?;
        Ok(())
    }
}

/// Writes a snapshot file atomically: temp file, fsync, rename, fsync of the directory.
fn write_snapshot_file(dir: &std::path::Path, file: &SnapshotFile) -> std::io::Result<()> {
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&encode(file))?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Applies entries in a single transaction and returns one response per entry.
fn apply_batch(
    data: &sled::Tree,
    meta: &sled::Tree,
    entries: &[Entry],
) -> Result<Vec<BatchResponse>, StorageError> {
    let Some(last) = entries.last() else {
        return Ok(Vec::new());
    };
    let result = (data, meta).transaction(|(data, meta)| {
        let mut responses = Vec::with_capacity(entries.len());
        let mut membership = None;
        for entry in entries {
            let mut entry_responses = Vec::new();
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(batch) => {
                    for request in &batch.requests {
                        entry_responses.push(match request {
                            Request::Put { key, value } => {
                                data.insert(key.as_bytes(), value.as_bytes())?;
                                Response::Put
                            }
                            Request::Remove { key } => Response::Removed {
                                existed: data.remove(key.as_bytes())?.is_some(),
                            },
                        });
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
        apply_batch(&self.data, &self.meta, &entries)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // openraft calls this between applies, so copying here reads one consistent state.
        // The copy pauses applies for as long as it takes (see docs/durability.md).
        let (last_applied, membership) = self.applied_state().await.unwrap_or_default();
        let pairs = self
            .data
            .iter()
            .filter_map(|kv| kv.ok())
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        SnapshotBuilder {
            last_applied,
            membership,
            image: SnapshotImage { pairs },
            snapshot_dir: self.snapshot_dir.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let file = SnapshotFile {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        // The file first: it is what an interrupted install is finished from.
        write_snapshot_file(&self.snapshot_dir, &file)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.install_image(&file.meta, &file.data)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self.read_snapshot_file()?.map(|file| Snapshot {
            meta: file.meta,
            snapshot: Box::new(Cursor::new(file.data)),
        }))
    }
}

/// Builds a snapshot from a copy of the state taken in `get_snapshot_builder`.
pub struct SnapshotBuilder {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    image: SnapshotImage,
    snapshot_dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let snapshot_id = match self.last_applied {
            Some(id) => format!(
                "{}-{}-{}-{nanos}",
                id.leader_id.term, id.leader_id.node_id, id.index
            ),
            None => format!("empty-{nanos}"),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let file = SnapshotFile {
            meta: meta.clone(),
            data: encode(&self.image),
        };
        write_snapshot_file(&self.snapshot_dir, &file)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(file.data)),
        })
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Membership};

    use super::*;
    use crate::store::{self, StoreOptions};

    fn image(pairs: &[(&str, &str)]) -> Vec<u8> {
        let pairs = pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        encode(&SnapshotImage { pairs })
    }

    #[tokio::test]
    async fn an_install_interrupted_by_a_crash_is_finished_on_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let last = LogId::new(CommittedLeaderId::new(3, 1), 40);
        let membership = StoredMembership::new(
            Some(LogId::new(CommittedLeaderId::new(1, 1), 1)),
            Membership::new(vec![Default::default()], None),
        );
        let meta = SnapshotMeta {
            last_log_id: Some(last),
            last_membership: membership,
            snapshot_id: "test".into(),
        };
        let pairs: Vec<(String, String)> = (0..100)
            .map(|i| (format!("k{i}"), format!("v{i}")))
            .collect();
        let refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        {
            let (_log, mut sm) = store::open(dir.path(), 1, None, &StoreOptions::default())
                .await
                .unwrap();
            sm.install_snapshot(&meta, Box::new(Cursor::new(image(&refs))))
                .await
                .unwrap();
            // Simulate a crash half-way through a (re)install: the marker is set, the data is
            // half cleared, last_applied is stale.
            sm.meta.insert(KEY_INSTALLING, b"test".as_slice()).unwrap();
            for i in 0..50 {
                sm.data.remove(format!("k{i}").as_bytes()).unwrap();
            }
            sm.meta
                .insert(KEY_LAST_APPLIED, encode(&None::<LogId>))
                .unwrap();
            sm.db.flush().unwrap();
        }
        let (_log, mut sm) = store::open(dir.path(), 1, None, &StoreOptions::default())
            .await
            .unwrap();
        assert!(
            !sm.meta.contains_key(KEY_INSTALLING).unwrap(),
            "the install was finished"
        );
        assert_eq!(sm.reader().len(), 100);
        assert_eq!(sm.reader().get("k7").unwrap().as_deref(), Some("v7"));
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(last));
    }
}
