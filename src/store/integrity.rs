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
//! - `raftcache.json`, the identity: node id, cluster id, format version. Written once (temp
//!   file, fsync, rename) when the data dir is created.
//! - `flushed`, the durability watermark: the highest log index and vote term made durable.
//!   Rewritten after each log sync and vote (after, so it never claims more than the log
//!   holds; and lowered before a log truncation). On open, the log must hold at least as much.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

pub const IDENTITY_FILE: &str = "raftcache.json";
pub const WATERMARK_FILE: &str = "flushed";
/// Bumped when the on-disk format changes incompatibly (3: the Raft log moved out of sled into
/// segment files).
pub const FORMAT_VERSION: u32 = 3;
/// The watermark is written as a fixed-size record so a rewrite never leaves stale bytes.
const WATERMARK_RECORD_BYTES: usize = 32;

/// The identity of a data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub format: u32,
    pub node_id: NodeId,
    pub cluster_id: String,
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
        let mut guard = self.inner.lock().expect("watermark lock");
        let (file, durable) = &mut *guard;
        update(durable);
        let mut record = bincode::serialize(durable).expect("watermark serializes");
        record.resize(WATERMARK_RECORD_BYTES, 0);
        file.write_all_at(&record, 0)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
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
        };
        id.write(dir.path()).unwrap();
        assert_eq!(Identity::read(dir.path()).unwrap(), Some(id));
    }
}
