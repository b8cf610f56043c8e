//! The Raft type configuration: what a log entry carries (`Request`), what applying it returns
//! (`Response`), and how a node is addressed (`Node`). Everything that goes through the log or
//! over the peer RPC is defined here, so the on-disk and on-wire formats have one home.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A node's id in the cluster; chosen by the operator (`--id`), never reused for another node.
pub type NodeId = u64;

/// How other nodes reach a node: its peer RPC address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub peer_addr: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.peer_addr)
    }
}

/// A mutation of the cache: one Raft log entry each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Put { key: String, value: String },
    Remove { key: String },
}

/// The result of applying one log entry to the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A blank or membership entry: nothing for a client.
    Applied,
    /// A `Put` was stored.
    Put,
    /// A `Remove`: whether the key existed.
    Removed { existed: bool },
}

openraft::declare_raft_types!(
    /// raftcache's choice of types for openraft.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
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
