//! Storage, all under the node's data dir: the Raft log and vote in segment files of our own
//! (`log/`, see `log.rs` and `segments.rs`), the state machine in a sled database (`db/`, see
//! `state_machine.rs`), and the current snapshot as a file (`snapshots/`).
//!
//! Durability rule (see `docs/durability.md`): nothing is reported written to openraft before
//! it is on disk: a log append after its `fdatasync`, a vote after its file was replaced and
//! synced. The state machine is not flushed per apply: after a crash, openraft re-applies the
//! log entries after its durable `last_applied`, and the log behind it is purged only after a
//! flush of sled whose files were then synced (`fsync.rs`: sled's flush alone does not survive
//! a power cut). sled's own background flush (every 500 ms) is never relied on for anything
//! acknowledged.

mod apply;
mod clock;
mod expiry_index;
pub(crate) mod fsync;
pub mod history;
pub(crate) mod integrity;
mod log;
mod schema;
mod segments;
mod sessions;
mod sm_flush;
pub(crate) mod snapshot;
mod state_machine;
mod value;

use std::path::{Path, PathBuf};

use integrity::{Identity, Watermark};
use schema::{KEY_NODE_ID, LOG_DIR, TREE_DATA, TREE_SM_META};

pub use clock::LogClock;
pub use integrity::{
    fnv1a, restored_cluster_id, write_durably, ClusterIdentity, FORMAT_VERSION, PENDING_CLUSTER_ID,
};
pub use log::{FlushStats, LogStore};
pub use sm_flush::StateFlusher;
pub use state_machine::{
    LiveEntry, ReplicaStats, SnapshotCounts, SnapshotInbox, StateMachine, StateReader,
};

use crate::types::{NodeId, StorageError};

/// Errors opening a node's data directory. Each one is fatal: the node does not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// sled could not open the database (missing permissions, a corrupted or truncated file).
    #[error("cannot open the data directory {path}: {source}. If the files are damaged, remove this node from the cluster and add a fresh one")]
    Sled { path: PathBuf, source: sled::Error },
    /// The data dir was created by another node.
    #[error("the data directory {path} belongs to node {found}, not node {expected}: use --id {found}, or another --data-dir")]
    WrongNode {
        path: PathBuf,
        found: NodeId,
        expected: NodeId,
    },
    /// The data dir belongs to another cluster.
    #[error("the data directory {path} belongs to cluster {found}, but --initial-cluster describes cluster {expected}: use the data dir of this cluster, or an empty one")]
    WrongCluster {
        path: PathBuf,
        found: String,
        expected: String,
    },
    /// The data dir was written by a raftcache with another on-disk format.
    #[error("the data directory {path} holds format version {found}, and this raftcache reads only format {expected}. Run the raftcache that wrote it, or start this node on an empty --data-dir and add it to the cluster as a new node (docs/operations.md)")]
    Format {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    /// Another process holds the database.
    #[error("the database {path} is in use by another process: is another raftcache node running with this --data-dir?")]
    Locked { path: PathBuf },
    /// The stores opened, but hold less than was made durable, or files are missing, damaged or
    /// unreadable.
    #[error("the data directory {path} is damaged: {reason}. Do not serve from it: remove this node from the cluster and add a fresh one in its place (docs/durability.md)")]
    Damaged { path: PathBuf, reason: String },
    /// Reading the stores' own metadata failed.
    #[error("cannot read the data directory {path}: {source}")]
    Storage { path: PathBuf, source: StorageError },
}

/// An I/O error for openraft, saying what failed.
pub(crate) fn storage_err(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

/// Options for opening the stores.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled's page cache size in bytes (`--cache-capacity-bytes`).
    pub cache_capacity_bytes: u64,
    /// Size at which a log segment is closed (`--log-segment-bytes`).
    pub log_segment_bytes: u64,
    /// Bytes of recent changes kept for `watch` (`--watch-history-bytes`; 0 keeps none).
    pub watch_history_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 256 * 1024 * 1024,
            log_segment_bytes: log::SEGMENT_BYTES,
            watch_history_bytes: 64 << 20,
        }
    }
}

/// Opens (creating on first use) the node's database under `dir` and returns its log store and
/// state machine. Refuses a data dir that belongs to another node or cluster, and one whose
/// database holds less than its watermark says was flushed.
///
/// `cluster_id` is the id this start implies (from `--initial-cluster`), if any; a fresh data dir
/// without one gets a random id, or, given `PENDING_CLUSTER_ID` (a node that will join a
/// cluster), none until a cluster adds it (`ClusterIdentity::adopt`).
pub async fn open(
    dir: &Path,
    id: NodeId,
    cluster_id: Option<&str>,
    opts: &StoreOptions,
) -> Result<(LogStore, StateMachine), OpenError> {
    let db_path = dir.join("db");
    let damaged = |reason: String| OpenError::Damaged {
        path: dir.to_path_buf(),
        reason,
    };
    // Created durably: a power cut must not take the data dir away from a node that served.
    fsync::create_dir_durably(dir).map_err(|e| damaged(format!("cannot create it: {e}")))?;
    let fresh = check_identity(dir, &db_path, id, cluster_id)?;
    let (watermark, flushed) = Watermark::open(dir).map_err(|e| damaged(e.to_string()))?;

    let db = open_sled(&db_path, opts).await.map_err(|e| match e {
        SledOpen::Panicked => {
            damaged("the database could not be read (sled failed while opening it)".into())
        }
        SledOpen::Locked => OpenError::Locked {
            path: db_path.clone(),
        },
        SledOpen::Failed(source) => OpenError::Sled {
            path: db_path.clone(),
            source,
        },
        SledOpen::Cleanup(e) => damaged(format!(
            "cannot remove an unfinished database snapshot: {e}"
        )),
    })?;
    let open_tree = |name: &str| {
        db.open_tree(name).map_err(|source| OpenError::Sled {
            path: db_path.clone(),
            source,
        })
    };
    let sm_meta = open_tree(TREE_SM_META)?;
    let flusher = StateFlusher::new(
        db.clone(),
        fsync::SledFiles::new(&db_path),
        sm_meta.clone(),
        watermark.clone(),
    );
    let log_dir = dir.join(LOG_DIR);
    let log = LogStore::open(
        &log_dir,
        opts.log_segment_bytes,
        flusher.clone(),
        watermark.clone(),
    )
    .map_err(|e| match e {
        log::LogOpenError::Damaged(reason) => damaged(format!("its log is damaged: {reason}")),
        log::LogOpenError::Io(e) => {
            damaged(format!("cannot read its log {}: {e}", log_dir.display()))
        }
    })?;

    let storage = |source| OpenError::Storage {
        path: db_path.clone(),
        source,
    };
    let held = log.held();
    if held.last_log_index < flushed.last_log_index || held.vote_term < flushed.vote_term {
        return Err(damaged(format!(
            "the log holds {} and a vote of term {}, but {} and a vote of term {} were flushed ({} says so)",
            describe_log(held.last_log_index),
            held.vote_term,
            describe_log(flushed.last_log_index),
            flushed.vote_term,
            watermark.path().display()
        )));
    }
    check_node_id(&db, &sm_meta, &db_path, id, fresh)?;
    let mut sm = StateMachine::open(
        db.clone(),
        open_tree(TREE_DATA)?,
        sm_meta,
        &flusher,
        dir.join("snapshots"),
        opts.watch_history_bytes,
    )
    .await
    .map_err(storage)?;
    // What opening created (`db/`, `log/`, `snapshots/`, `flushed`, a fresh database's node id)
    // is made durable before the node acts on it.
    flusher
        .sync_db()
        .and_then(|()| fsync::sync_dir(dir))
        .map_err(|e| damaged(format!("cannot sync it: {e}")))?;
    check_state_machine(&log, &mut sm, &flushed, dir).await?;
    Ok((log, sm))
}

/// The state machine must hold at least what its last recorded flush made durable, and the log
/// every entry after that (openraft re-applies those on start).
async fn check_state_machine(
    log: &LogStore,
    sm: &mut StateMachine,
    flushed: &integrity::Durable,
    dir: &Path,
) -> Result<(), OpenError> {
    use openraft::storage::RaftStateMachine;
    let (applied, _) = sm
        .applied_state()
        .await
        .map_err(|source| OpenError::Storage {
            path: dir.to_path_buf(),
            source,
        })?;
    let applied_index = applied.map(|a| a.index);
    if applied_index < flushed.state_applied {
        return Err(OpenError::Damaged {
            path: dir.to_path_buf(),
            reason: format!(
                "its state machine has applied entries up to {}, but up to {} were flushed ({} says so)",
                applied_index.map_or("none".to_string(), |a| a.to_string()),
                flushed.state_applied.unwrap_or_default(),
                integrity::WATERMARK_FILE,
            ),
        });
    }
    let held = log.held();
    tracing::info!(
        applied = ?applied_index,
        flushed_applied = ?flushed.state_applied,
        log_purged = ?log.last_purged().map(|p| p.index),
        log_last = ?held.last_log_index,
        "storage opened: the state machine resumes from its applied index, the log holds what follows"
    );
    match log.last_purged() {
        Some(purged) if applied.map(|a| a.index) < Some(purged.index) => Err(OpenError::Damaged {
            path: dir.to_path_buf(),
            reason: format!(
                "its state machine has applied entries up to {}, but its log starts after index {}: the state machine lost what it had flushed",
                applied.map_or("none".to_string(), |a| a.index.to_string()),
                purged.index
            ),
        }),
        _ => Ok(()),
    }
}

enum SledOpen {
    Panicked,
    Locked,
    Failed(sled::Error),
    /// An unfinished sled snapshot could not be removed.
    Cleanup(std::io::Error),
}

/// How long to wait for sled's file lock: a node stopped in this same process (a restart in a
/// test) releases it a moment after it stopped, when sled's last I/O thread lets go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens sled, waiting a little for its file lock, and never letting a panic inside sled out.
async fn open_sled(db_path: &Path, opts: &StoreOptions) -> Result<sled::Db, SledOpen> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        // Before each try: the lock it checks may be freed between two.
        let removed =
            fsync::remove_unfinished_sled_snapshots(db_path).map_err(SledOpen::Cleanup)?;
        for path in removed {
            tracing::warn!(path = %path.display(), "removed a database snapshot left unfinished (the node stopped while it was written)");
        }
        // No background flush: `StateFlusher` flushes, and records what it made durable.
        let config = sled::Config::new()
            .path(db_path)
            .flush_every_ms(None)
            .cache_capacity(opts.cache_capacity_bytes);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())) {
            Err(_) => return Err(SledOpen::Panicked),
            Ok(Ok(db)) => return Ok(db),
            Ok(Err(sled::Error::Io(e))) if e.to_string().contains("could not acquire lock") => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(SledOpen::Locked);
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Ok(Err(e)) => return Err(SledOpen::Failed(e)),
        }
    }
}

/// Checks (or, for a fresh data dir, writes) the identity file. Returns whether the dir is fresh.
fn check_identity(
    dir: &Path,
    db_path: &Path,
    id: NodeId,
    cluster_id: Option<&str>,
) -> Result<bool, OpenError> {
    let damaged = |reason: String| OpenError::Damaged {
        path: dir.to_path_buf(),
        reason,
    };
    let identity = Identity::read(dir)
        .map_err(|e| damaged(format!("unreadable {}: {e}", integrity::IDENTITY_FILE)))?;
    match identity {
        None if db_path.exists() => Err(damaged(format!(
            "it holds a database but no {}",
            integrity::IDENTITY_FILE
        ))),
        None => {
            let cluster_id = cluster_id
                .map(str::to_string)
                .unwrap_or_else(|| random_cluster_id(dir));
            let identity = Identity {
                format: FORMAT_VERSION,
                node_id: id,
                cluster_id,
                member: false,
                removed: false,
                incarnation: integrity::new_incarnation(),
                restored_from: None,
            };
            identity
                .write(dir)
                .map_err(|e| damaged(format!("cannot write {}: {e}", integrity::IDENTITY_FILE)))?;
            tracing::info!(node_id = id, cluster_id = %identity.cluster_id, dir = %dir.display(), "new data directory");
            Ok(true)
        }
        Some(identity) => {
            if identity.format != FORMAT_VERSION {
                return Err(OpenError::Format {
                    path: dir.to_path_buf(),
                    found: identity.format,
                    expected: FORMAT_VERSION,
                });
            }
            if identity.node_id != id {
                return Err(OpenError::WrongNode {
                    path: dir.to_path_buf(),
                    found: identity.node_id,
                    expected: id,
                });
            }
            // A restored data dir belongs to the cluster its flags imply, restored.
            let expected = cluster_id
                .filter(|c| *c != PENDING_CLUSTER_ID)
                .map(|c| match &identity.restored_from {
                    Some(from) => integrity::restored_cluster_id(c, from),
                    None => c.to_string(),
                });
            if let Some(expected) = expected.filter(|e| *e != identity.cluster_id) {
                return Err(OpenError::WrongCluster {
                    path: dir.to_path_buf(),
                    found: identity.cluster_id,
                    expected,
                });
            }
            if !db_path.exists() {
                return Err(damaged(format!(
                    "its database {} is missing",
                    db_path.display()
                )));
            }
            Ok(false)
        }
    }
}

fn describe_log(last_index: Option<u64>) -> String {
    match last_index {
        Some(index) => format!("the log up to index {index}"),
        None => "no log at all".into(),
    }
}

fn random_cluster_id(dir: &Path) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:016x}",
        fnv1a(&format!("{nanos}/{}/{}", std::process::id(), dir.display()))
    )
}

/// Records the node id in a fresh database, or checks an existing one still holds it (a
/// database that lost it lost everything).
fn check_node_id(
    db: &sled::Db,
    sm_meta: &sled::Tree,
    path: &Path,
    id: NodeId,
    fresh: bool,
) -> Result<(), OpenError> {
    let sled_err = |source| OpenError::Sled {
        path: path.to_path_buf(),
        source,
    };
    match sm_meta.get(KEY_NODE_ID).map_err(sled_err)? {
        Some(raw) => {
            let found = u64::from_be_bytes(raw.as_ref().try_into().unwrap_or([0; 8]));
            if found != id {
                return Err(OpenError::WrongNode {
                    path: path.to_path_buf(),
                    found,
                    expected: id,
                });
            }
        }
        None if !fresh => {
            return Err(OpenError::Damaged {
                path: path.to_path_buf(),
                reason: "the database has lost its contents (no node id)".into(),
            });
        }
        None => {
            sm_meta
                .insert(KEY_NODE_ID, &id.to_be_bytes())
                .map_err(sled_err)?;
            db.flush().map_err(sled_err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_data_dir_of_an_older_format_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let old = Identity {
            format: 2,
            node_id: 1,
            cluster_id: "c".into(),
            member: false,
            removed: false,
            incarnation: String::new(),
            restored_from: None,
        };
        old.write(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        let refused = open(dir.path(), 1, None, &StoreOptions::default())
            .await
            .err()
            .expect("an older format must be refused");
        assert!(
            matches!(
                refused,
                OpenError::Format {
                    found: 2,
                    expected: FORMAT_VERSION,
                    ..
                }
            ),
            "{refused}"
        );
        assert!(
            refused.to_string().contains("empty --data-dir"),
            "{refused}"
        );
    }
}
