//! Every message nodes send each other on the peer port, beside openraft's own: what each peer
//! call carries (bincode, inside Thrift `binary`) and answers. The layers that use them (the
//! proposer and router for forwarded writes and read indexes, the membership for probes and
//! admin requests) import them from here; the peer network imports none of those layers.
//! Who a call is from and for travels ahead of each of these (`identity.rs`).

use serde::{Deserialize, Serialize};

use crate::types::{NodeId, Request, SnapshotMeta, Vote};

/// Writes forwarded from a follower to the leader, answered one by one (in order): some
/// requests of a forwarded batch may be applied while others are refused.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub requests: Vec<Request>,
    /// How long the leader may spend on them, in milliseconds.
    pub deadline_ms: u64,
}

/// A call meant for the leader, sent to another member to make in its place: the sender's own
/// calls do not reach the leader (a one-way partition), the relay's do. Only the calls a
/// follower makes to its leader on behalf of clients and operators are relayed.
#[derive(Debug, Serialize, Deserialize)]
pub struct RelayRequest {
    /// The leader, as the sender knows it.
    pub to: NodeId,
    pub call: RelayedCall,
    /// The call's request, encoded as for a direct call.
    pub request: Vec<u8>,
    /// How long the relay may wait for the leader's answer, in milliseconds.
    pub timeout_ms: u64,
}

/// The calls a member relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayedCall {
    Forward,
    ReadIndex,
    Admin,
}

/// Why a call meant for the leader has no answer: asked directly (`leader::LeaderView::ask`)
/// or through a relay, which answers with it as it saw its own call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AskError {
    /// The request never left this node (no address for the leader, the leader unreachable, or
    /// no longer this node's leader before it was sent): asking again is safe.
    #[error("{0}")]
    NotSent(String),
    /// The node at the leader's address refused the call before doing anything (another
    /// cluster, another node, a wiped data dir): asking it again will not help.
    #[error("{0}")]
    Refused(String),
    /// The request left this node and no answer came back: it may or may not have been
    /// carried out.
    #[error("{0}")]
    Unknown(String),
}

/// One chunk of a snapshot the leader streams to a follower, with the CRC-32 of its data. The
/// receiver checks the CRC before it writes the chunk and refuses a damaged one; the leader then
/// sends it again. (The whole file's checksum is checked again before the install:
/// `store::snapshot`.) Chunks of one transfer carry the same `transfer` id and arrive in order;
/// the last one (`done`) has the follower install the snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The sending leader's vote.
    pub vote: Vote,
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// Chosen at random by the sender for each transfer.
    pub transfer: u64,
    /// Where in the file `data` starts.
    pub offset: u64,
    pub data: Vec<u8>,
    /// This is the last chunk.
    pub done: bool,
    /// CRC-32 of `data`.
    pub checksum: u32,
}

/// Why the leader did not carry out a forwarded write or a read-index request.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// The receiver is not the leader; `leader` is who it thinks leads, if anyone.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// A condition that may clear (no quorum confirmed yet); the caller may retry.
    #[error("{0}")]
    TryAgain(String),
    /// The request failed for good on this node (shutting down, or the deadline passed with the
    /// outcome unknown).
    #[error("{0}")]
    Failed(String),
}

/// One membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Add node `id` at `peer_addr` as a learner.
    AddLearner { id: NodeId, peer_addr: String },
    /// Make learner `id` a voter.
    Promote { id: NodeId },
    /// Make voter `id` a learner.
    Demote { id: NodeId },
    /// Remove voter or learner `id`.
    Remove { id: NodeId },
    /// Replace voter `old` by learner `new` in one joint-consensus change.
    Replace { old: NodeId, new: NodeId },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::AddLearner { id, peer_addr } => write!(f, "adding learner {id} at {peer_addr}"),
            Change::Promote { id } => write!(f, "promoting node {id}"),
            Change::Demote { id } => write!(f, "demoting node {id}"),
            Change::Remove { id } => write!(f, "removing node {id}"),
            Change::Replace { old, new } => write!(f, "replacing node {old} by node {new}"),
        }
    }
}

/// What an admin caller asks of the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRequest {
    Members,
    Change {
        change: Change,
        force: bool,
    },
    /// Hand the leadership to voter `to` (`force`: even if it lags).
    TransferLeader {
        to: NodeId,
        force: bool,
    },
}

/// An admin request one node forwards to the leader over the peer port, with the admin token
/// (`--admin-token`): the leader checks it as the client port does, so that the peer port is no
/// way around it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedAdmin {
    pub token: String,
    pub request: AdminRequest,
}

/// One member as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: NodeId,
    pub peer_addr: String,
    pub client_addr: String,
    pub voter: bool,
    pub reachable: bool,
    /// Entries behind the leader's last log entry (None: no progress known yet).
    pub lag: Option<u64>,
}

/// The membership as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersView {
    pub leader: NodeId,
    pub last_log_index: u64,
    /// A joint configuration is in effect: a change is in progress.
    pub changing: bool,
    pub members: Vec<MemberView>,
}

/// Why an admin request failed.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum AdminError {
    /// This node does not lead (`leader`: who it thinks does). Forwarding handles it.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// Refused and not made: a safety rule, a change in progress, or a wrong argument.
    #[error("{0}")]
    Refused(String),
    /// No leader or no quorum in time. A change may or may not have been made: the message
    /// says so, and `admin members` tells.
    #[error("{0}")]
    Unavailable(String),
    /// The request lacked the admin token; nothing was done.
    #[error("{0}")]
    Unauthorized(String),
}

/// The leader's probe of a node's peer port: "are you node `id`? you belong to `cluster_id`",
/// and, after a removal, "you were removed" (`removed`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfoRequest {
    pub id: NodeId,
    pub cluster_id: String,
    pub removed: bool,
}

/// A node's answer to the probe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub client_addr: String,
}
