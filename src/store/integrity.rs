//! What a data dir knows about itself beside its stores, so that damage inside them is detected
//! instead of served.
//!
//! sled 0.34 recovers a damaged or truncated database by silently dropping everything after the
//! first bad record: it opens "successfully" with an older state, or an empty one; a log file
//! cut short or put back from an old copy reads as a shorter log. For a Raft node that is
//! dangerous: a node that forgot its vote or acknowledged log entries can break the cluster's
//! safety, and one that comes back empty would bootstrap a new cluster. Two small files guard
//! against that:
//!
//! - `raftcache.json`, the identity: node id, cluster id, format version. Written (temp file,
//!   fsync, rename) when the data dir is created, and once more by a node that started without
//!   a cluster (`--join`, `--no-bootstrap`) when a cluster adds it and it adopts that
//!   cluster's id (`ClusterIdentity`).
//! - `flushed`, the durability watermark: the highest log index and vote term made durable.
//!   Rewritten after each log sync and vote (after, so it never claims more than the log
//!   holds; and lowered, durably, before a log truncation). On open, the log must hold at least
//!   as much.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

pub const IDENTITY_FILE: &str = "raftcache.json";
pub const WATERMARK_FILE: &str = "flushed";
/// Bumped when the on-disk format changes incompatibly. 3: the Raft log moved out of sled into
/// segment files, and a member records its client address (`types::Node`), in the log, the
/// state machine and snapshots alike. 4: a stored value carries its expiry (`store::value`),
/// and log entries carry the cache API's requests and the leader's clock.
pub const FORMAT_VERSION: u32 = 4;
/// The cluster id of a data dir whose node has not joined a cluster yet (`--join` or
/// `--no-bootstrap` on first start): it adopts the id of the cluster that adds it.
pub const PENDING_CLUSTER_ID: &str = "";
/// The watermark is written as a fixed-size record so a rewrite never leaves stale bytes.
const WATERMARK_RECORD_BYTES: usize = 32;

/// The identity of a data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub format: u32,
    pub node_id: NodeId,
    pub cluster_id: String,
    /// Whether this node has been a member of its cluster's membership: from then on, a
    /// membership without it means it was removed (before, it is still catching up).
    #[serde(default)]
    pub member: bool,
    /// Whether the leader told this node it was removed (cleared when a cluster adds it
    /// again).
    #[serde(default)]
    pub removed: bool,
    /// A random id given to this data dir when it was created: a node started again on a
    /// wiped data dir has another, and its peers tell it from the member it replaces
    /// (`network::identity`). Empty in a data dir written before it existed, which gets one
    /// when it is next opened.
    #[serde(default)]
    pub incarnation: String,
    /// For a data dir made by `raftcache restore`: the source cluster and the backup's index
    /// (`source/index`). Its cluster id is then `restored_cluster_id` of the one its
    /// `--initial-cluster` implies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
}

/// A fresh incarnation id.
pub fn new_incarnation() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Identity {
    pub fn read(dir: &Path) -> std::io::Result<Option<Identity>> {
        match std::fs::read(dir.join(IDENTITY_FILE)) {
            Ok(raw) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the identity durably.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_durably(dir, IDENTITY_FILE, &json)
    }
}

/// Replaces `dir/name` with `bytes` so that a crash leaves either the old file or the new one,
/// and the new one survives once this returns: temp file, fsync, rename, fsync of the directory.
pub fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

/// The cluster a running node belongs to, as its identity file records it, with the one change
/// allowed at run time: a node that has not joined a cluster yet adopts the id of the cluster
/// that adds it (durably, before it answers that it agrees).
pub struct ClusterIdentity {
    dir: PathBuf,
    current: Mutex<Identity>,
}

impl ClusterIdentity {
    /// Reads the identity of an opened data dir (giving it an incarnation if it has none).
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        let mut current = Identity::read(dir)?.ok_or_else(|| {
            std::io::Error::other(format!("{} is missing", dir.join(IDENTITY_FILE).display()))
        })?;
        if current.incarnation.is_empty() {
            current.incarnation = new_incarnation();
            current.write(dir)?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            current: Mutex::new(current),
        })
    }

    /// The cluster id, or None while this node has not joined a cluster.
    pub fn cluster_id(&self) -> Option<String> {
        let current = self.current.lock().expect("identity lock");
        (current.cluster_id != PENDING_CLUSTER_ID).then(|| current.cluster_id.clone())
    }

    /// Joins cluster `cluster_id`: adopts it if this node has none yet (written durably before
    /// this returns), accepts it if it is already this node's. Err names the cluster this node
    /// belongs to.
    pub fn adopt(&self, cluster_id: &str) -> Result<(), String> {
        let mut current = self.current.lock().expect("identity lock");
        if current.cluster_id == cluster_id {
            return Ok(());
        }
        if current.cluster_id != PENDING_CLUSTER_ID {
            return Err(format!(
                "it belongs to cluster {}, not {cluster_id}",
                current.cluster_id
            ));
        }
        let adopted = Identity {
            cluster_id: cluster_id.to_string(),
            ..current.clone()
        };
        adopted
            .write(&self.dir)
            .map_err(|e| format!("it cannot record the cluster id: {e}"))?;
        tracing::info!(cluster_id, "joined a cluster: cluster id recorded");
        *current = adopted;
        Ok(())
    }

    /// The incarnation of this data dir.
    pub fn incarnation(&self) -> String {
        self.current
            .lock()
            .expect("identity lock")
            .incarnation
            .clone()
    }

    /// Whether this node has ever been in its cluster's membership.
    pub fn was_member(&self) -> bool {
        self.current.lock().expect("identity lock").member
    }

    /// Records (durably, once) that this node is in its cluster's membership.
    pub fn mark_member(&self) -> std::io::Result<()> {
        self.update(|identity| identity.member = true)
    }

    /// Whether the leader told this node it was removed.
    pub fn told_removed(&self) -> bool {
        self.current.lock().expect("identity lock").removed
    }

    /// Records (durably) that the leader told this node it was removed, or, with `false`, that
    /// a cluster added it again.
    pub fn set_removed(&self, removed: bool) -> std::io::Result<()> {
        self.update(|identity| identity.removed = removed)
    }

    /// Applies `change` and writes the identity if that changed it.
    fn update(&self, change: impl FnOnce(&mut Identity)) -> std::io::Result<()> {
        let mut current = self.current.lock().expect("identity lock");
        let mut changed = current.clone();
        change(&mut changed);
        if changed != *current {
            changed.write(&self.dir)?;
            *current = changed;
        }
        Ok(())
    }
}

/// What the log has made durable, as last recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    /// Highest log index flushed (None: no entry ever).
    pub last_log_index: Option<u64>,
    /// Term of the last vote flushed.
    pub vote_term: u64,
    /// Index of the last entry the state machine had applied at its last flush.
    pub state_applied: Option<u64>,
}

/// The watermark file and the values it holds now.
#[derive(Clone)]
pub struct Watermark {
    inner: Arc<Mutex<(File, Durable)>>,
    path: PathBuf,
}

impl Watermark {
    /// Opens (creating if absent) the watermark of `dir` and returns it with its recorded value.
    pub fn open(dir: &Path) -> std::io::Result<(Watermark, Durable)> {
        let path = dir.join(WATERMARK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut raw = vec![0u8; WATERMARK_RECORD_BYTES];
        let n = file.read_at(&mut raw, 0)?;
        let recorded = if n == 0 {
            Durable::default()
        } else {
            bincode::deserialize(&raw[..n])
                .map_err(|e| std::io::Error::other(format!("unreadable {}: {e}", path.display())))?
        };
        Ok((
            Watermark {
                inner: Arc::new(Mutex::new((file, recorded))),
                path,
            },
            recorded,
        ))
    }

    /// Records new values. Not fsynced: it is written after the log's sync returned, so after a
    /// crash it is at most as new as the log's durable state, never newer.
    pub fn record(&self, update: impl FnOnce(&mut Durable)) -> std::io::Result<()> {
        self.write(update, false)
    }

    /// Records lower values, durably before this returns: what the log is about to lose must
    /// not be claimed by a watermark that the kernel wrote back earlier and a power cut leaves.
    pub fn lower(&self, update: impl FnOnce(&mut Durable)) -> std::io::Result<()> {
        self.write(update, true)
    }

    fn write(&self, update: impl FnOnce(&mut Durable), sync: bool) -> std::io::Result<()> {
        let mut guard = self.inner.lock().expect("watermark lock");
        let (file, durable) = &mut *guard;
        update(durable);
        let mut record = bincode::serialize(durable).expect("watermark serializes");
        record.resize(WATERMARK_RECORD_BYTES, 0);
        file.write_all_at(&record, 0)?;
        if sync {
            file.sync_data()?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The cluster id of a cluster restored from a backup (`from`: its source cluster and index)
/// with the flags that would bootstrap cluster `base`: neither the source's nor `base`'s, and
/// the same on every node restored from that backup with those flags.
pub fn restored_cluster_id(base: &str, from: &str) -> String {
    format!("{:016x}", fnv1a(&format!("{base}/restored-from/{from}")))
}

/// A stable 64-bit FNV-1a hash, for deriving a cluster id from the bootstrap membership.
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_survives_reopen_and_shrinking_values() {
        let dir = tempfile::tempdir().unwrap();
        let (w, initial) = Watermark::open(dir.path()).unwrap();
        assert_eq!(initial, Durable::default());
        w.record(|d| {
            d.last_log_index = Some(1_000_000);
            d.vote_term = 7;
        })
        .unwrap();
        w.record(|d| d.last_log_index = Some(3)).unwrap();
        let (_, reread) = Watermark::open(dir.path()).unwrap();
        assert_eq!(
            reread,
            Durable {
                last_log_index: Some(3),
                vote_term: 7,
                state_applied: None,
            }
        );
    }

    #[test]
    fn identity_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Identity::read(dir.path()).unwrap(), None);
        let id = Identity {
            format: FORMAT_VERSION,
            node_id: 3,
            cluster_id: "abc".into(),
            member: false,
            removed: false,
            incarnation: String::new(),
            restored_from: None,
        };
        id.write(dir.path()).unwrap();
        assert_eq!(Identity::read(dir.path()).unwrap(), Some(id));
    }

    #[test]
    fn a_pending_cluster_id_is_adopted_once_and_durably() {
        let dir = tempfile::tempdir().unwrap();
        let pending = Identity {
            format: FORMAT_VERSION,
            node_id: 4,
            cluster_id: PENDING_CLUSTER_ID.into(),
            member: false,
            removed: false,
            incarnation: String::new(),
            restored_from: None,
        };
        pending.write(dir.path()).unwrap();
        let identity = ClusterIdentity::load(dir.path()).unwrap();
        assert_eq!(identity.cluster_id(), None);
        identity.adopt("c1").unwrap();
        identity.adopt("c1").unwrap();
        let refused = identity.adopt("c2").unwrap_err();
        assert!(refused.contains("belongs to cluster c1"), "{refused}");
        identity.mark_member().unwrap();
        identity.set_removed(true).unwrap();
        let reread = ClusterIdentity::load(dir.path()).unwrap();
        assert_eq!(reread.cluster_id().as_deref(), Some("c1"));
        assert!(reread.was_member());
        assert!(reread.told_removed());
    }
}
