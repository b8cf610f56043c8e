//! Peer network: how nodes talk to each other over Thrift on the peer port.
//!
//! - `client.rs`: the outgoing side: openraft's `RaftNetworkFactory`, and the forward and
//!   read-index calls the router makes to the leader.
//! - `service.rs`: the incoming side: the `RaftPeer` Thrift handler.
//! - `Faults` (here): the seam where tests cut links between nodes.
//!
//! Payloads are bincode-encoded openraft messages (and raftcache's forwarded writes, read
//! indexes, probes and admin requests); Thrift carries them as `binary`. Nodes of different
//! `store::FORMAT_VERSION`s cannot talk to each other.

mod client;
pub mod identity;
pub mod messages;
pub mod reach;
mod service;

use openraft::async_runtime::watch::WatchReceiver;
use std::collections::HashSet;
use std::sync::RwLock;
use std::time::Duration;

pub use client::{Method as PeerMethod, PeerClients, PeerError, PeerNetwork, SendGate};
pub use messages::{
    AskError, ForwardError, ForwardRequest, RelayRequest, RelayedCall, SnapshotChunk,
};
pub use service::{LeaderSide, MembershipSide, PeerService};

use crate::types::{NodeId, Raft};

/// The peer address of node `id` in this node's current view of the membership.
pub fn peer_addr(raft: &crate::types::Raft, id: NodeId) -> Option<String> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow_watched();
    metrics
        .membership_config
        .membership()
        .get_node(&id)
        .map(|n| n.peer_addr.clone())
}

/// Resolves once `raft` no longer takes `leader` for its leader: it started an election (no
/// heartbeat for an election timeout), voted in one, or learned of a newer leader; or it stopped.
pub async fn stopped_following(raft: &Raft, leader: NodeId) {
    let mut metrics = raft.metrics();
    while metrics.borrow_and_update().current_leader == Some(leader) {
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Faults injected by tests: links cut (a message from `a` to `b` is dropped while `(a, b)` is
/// blocked), silent links, and slow snapshot transfers. None in a real node.
#[derive(Debug, Default)]
pub struct Faults {
    blocked: RwLock<HashSet<(NodeId, NodeId)>>,
    /// Links where a request goes out and no answer ever comes back, as with a peer whose host
    /// died or was cut off by a firewall (no refusal, just silence until the call times out).
    silent: RwLock<HashSet<(NodeId, NodeId)>>,
    snapshot_chunk_delay: RwLock<Duration>,
    /// Snapshot chunks still to be damaged on the way (a bit flipped after the checksum).
    damaged_snapshot_chunks: std::sync::atomic::AtomicU32,
}

impl Faults {
    /// Cuts both directions between `node` and every node in `others`.
    pub fn isolate(&self, node: NodeId, others: &[NodeId]) {
        let mut blocked = self.blocked.write().expect("faults lock");
        for &other in others {
            blocked.insert((node, other));
            blocked.insert((other, node));
        }
    }

    /// Cuts one direction only: calls from `from` to each of `to` fail (their answers to calls
    /// the other way still arrive, as with a firewall that drops inbound connections).
    pub fn cut_one_way(&self, from: NodeId, to: &[NodeId]) {
        let mut blocked = self.blocked.write().expect("faults lock");
        for &other in to {
            blocked.insert((from, other));
        }
    }

    /// Silences both directions between `node` and every node in `others`: calls wait out
    /// their timeout and fail with no answer, as they do towards a dead host.
    pub fn silence(&self, node: NodeId, others: &[NodeId]) {
        let mut silent = self.silent.write().expect("faults lock");
        for &other in others {
            silent.insert((node, other));
            silent.insert((other, node));
        }
    }

    /// Silences one direction only: calls from `from` to each of `to` go out and are never
    /// answered (as with a firewall that drops what `from` sends on connections it already has
    /// open), while calls the other way are answered.
    pub fn silence_one_way(&self, from: NodeId, to: &[NodeId]) {
        let mut silent = self.silent.write().expect("faults lock");
        for &other in to {
            silent.insert((from, other));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.blocked.write().expect("faults lock").clear();
        self.silent.write().expect("faults lock").clear();
    }

    /// Delays every snapshot chunk sent from now on by `delay`, as a slow link would.
    pub fn delay_snapshot_chunks(&self, delay: Duration) {
        *self.snapshot_chunk_delay.write().expect("faults lock") = delay;
    }

    /// Flips a bit in each of the next `count` snapshot chunks sent, after their checksum was
    /// taken, as a faulty link or NIC would.
    pub fn damage_snapshot_chunks(&self, count: u32) {
        self.damaged_snapshot_chunks
            .store(count, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether to damage the snapshot chunk about to be sent (counts it).
    pub fn take_damaged_snapshot_chunk(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.damaged_snapshot_chunks
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// How long each snapshot chunk is held back before it is sent.
    pub fn snapshot_chunk_delay(&self) -> Duration {
        *self.snapshot_chunk_delay.read().expect("faults lock")
    }

    /// Whether a call from `from` to `to` goes unanswered.
    pub fn is_silent(&self, from: NodeId, to: NodeId) -> bool {
        self.silent
            .read()
            .expect("faults lock")
            .contains(&(from, to))
    }

    /// Whether a message from `from` to `to` may be sent.
    pub fn allows(&self, from: NodeId, to: NodeId) -> bool {
        !self
            .blocked
            .read()
            .expect("faults lock")
            .contains(&(from, to))
    }
}
