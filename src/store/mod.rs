//! Storage: one sled database per node holding the Raft log, the vote and the state machine in
//! separate trees (`log.rs`, `state_machine.rs`), plus the current snapshot as a file.
//!
//! Durability rule (see `docs/durability.md`): nothing is reported written to openraft before
//! sled's `flush` returned. sled's own background flush (every 500 ms) is never relied on.

mod log;
mod state_machine;

use std::path::{Path, PathBuf};

pub use log::LogStore;
pub use state_machine::{StateMachine, StateReader};

use crate::types::{NodeId, StorageError};

/// Tree names inside the node's sled database.
const TREE_LOG: &str = "raft_log";
const TREE_RAFT_META: &str = "raft_meta";
const TREE_DATA: &str = "sm_data";
const TREE_SM_META: &str = "sm_meta";
/// Key in `sm_meta` holding the node id the data dir belongs to.
const KEY_NODE_ID: &[u8] = b"node_id";

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
    /// Reading the stores' own metadata failed.
    #[error("cannot read the data directory {path}: {source}")]
    Storage { path: PathBuf, source: StorageError },
}

/// Options for opening the stores.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled's page cache size in bytes (`--cache-capacity-bytes`).
    pub cache_capacity_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Opens (creating on first use) the node's database under `dir` and returns its log store and
/// state machine. Refuses a data dir that belongs to another node id.
pub async fn open(
    dir: &Path,
    id: NodeId,
    opts: &StoreOptions,
) -> Result<(LogStore, StateMachine), OpenError> {
    let db_path = dir.join("db");
    let db = sled::Config::new()
        .path(&db_path)
        .cache_capacity(opts.cache_capacity_bytes)
        .open()
        .map_err(|source| OpenError::Sled {
            path: db_path.clone(),
            source,
        })?;
    let open_tree = |name: &str| {
        db.open_tree(name).map_err(|source| OpenError::Sled {
            path: db_path.clone(),
            source,
        })
    };
    let log = LogStore::new(db.clone(), open_tree(TREE_LOG)?, open_tree(TREE_RAFT_META)?);
    let sm_meta = open_tree(TREE_SM_META)?;
    check_node_id(&db, &sm_meta, &db_path, id)?;
    let sm = StateMachine::open(
        db.clone(),
        open_tree(TREE_DATA)?,
        sm_meta,
        dir.join("snapshots"),
    )
    .await
    .map_err(|source| OpenError::Storage {
        path: db_path.clone(),
        source,
    })?;
    Ok((log, sm))
}

/// Records the node id in a fresh data dir, or checks it matches an existing one.
fn check_node_id(
    db: &sled::Db,
    sm_meta: &sled::Tree,
    path: &Path,
    id: NodeId,
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
        None => {
            sm_meta
                .insert(KEY_NODE_ID, &id.to_be_bytes())
                .map_err(sled_err)?;
            db.flush().map_err(sled_err)?;
        }
    }
    Ok(())
}

/// Encodes a value for storage. Our own types always serialize; a failure is a bug.
fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("raftcache types always serialize")
}

fn decode<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(raw)
}
