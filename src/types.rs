//! The Raft type configuration: what a log entry carries (a `Batch` of `Request`s), what
//! applying it returns (a `BatchResponse`), and how a node is addressed (`Node`). Everything
//! that goes through the log or over the peer RPC is defined here, so the on-disk and on-wire
//! formats have one home. Changing one of these types changes both: bump
//! `store::FORMAT_VERSION` with it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's id in the cluster; chosen by the operator (`--id`), never reused for another node.
pub type NodeId = u64;

/// A member as the membership records it: how other nodes reach it (its peer RPC address)
/// and how clients reach it (its client address, so that an operator or a client can be told
/// where a member, the leader say, answers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub peer_addr: String,
    /// Empty when not known: a member bootstrapped by `--initial-cluster` without its client
    /// address (`ID=PEER_ADDR`) is recorded without one; `admin members` asks it for it.
    pub client_addr: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.client_addr.is_empty() {
            write!(f, "{}", self.peer_addr)
        } else {
            write!(f, "{} (clients: {})", self.peer_addr, self.client_addr)
        }
    }
}

/// One client mutation of the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Put { key: String, value: String },
    Remove { key: String },
}

impl Request {
    /// Approximate encoded size, for bounding batches.
    pub fn size_bytes(&self) -> usize {
        match self {
            Request::Put { key, value } => key.len() + value.len() + 16,
            Request::Remove { key } => key.len() + 16,
        }
    }
}

/// The result of one `Request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A `Put` was stored.
    Put,
    /// A `Remove`: whether the key existed.
    Removed { existed: bool },
}

/// The payload of one Raft log entry: requests proposed together (group commit), applied in
/// order, all in one atomic step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub requests: Vec<Request>,
}

/// The result of applying one log entry: one `Response` per request of its `Batch` (none for
/// blank and membership entries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    pub responses: Vec<Response>,
}

openraft::declare_raft_types!(
    /// raftcache's choice of types for openraft.
    pub TypeConfig:
        D = Batch,
        R = BatchResponse,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
