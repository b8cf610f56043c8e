//! Who leads, as this node sees it, and the one way to ask the leader something.
//!
//! Writes (`proposer.rs`), read indexes (`read_index.rs`) and admin changes (`membership/`) all
//! reach the leader the same way: look up its peer address in this node's membership, send the
//! call, and race it against this node stopping to follow that leader. A leader whose host died
//! answers nothing, not even a refusal; without the race a call would wait out its whole
//! timeout although this node stopped following that leader long before. The call goes out
//! through a `SendGate`, so a caller that gives up knows whether the request left this node
//! (its outcome unknown) or never will (safe to ask again).

use openraft::async_runtime::watch::WatchReceiver;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::network::{peer_addr, PeerClients, PeerError, PeerMethod, SendGate};
use crate::types::{NodeId, Raft};

/// Longest wait between two looks at the leader while none is known, or it keeps refusing.
pub const LEADER_POLL: Duration = Duration::from_millis(100);

/// Why a call to the leader has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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

/// This node's view of the leadership, from openraft's metrics.
#[derive(Clone)]
pub struct LeaderView {
    id: NodeId,
    raft: Raft,
}

impl LeaderView {
    pub fn new(id: NodeId, raft: Raft) -> Self {
        Self { id, raft }
    }

    /// The leader this node follows (or is), if it knows one.
    pub fn current(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Whether this node is the leader it knows of.
    pub fn is_self(&self, leader: NodeId) -> bool {
        leader == self.id
    }

    /// Resolves once this node no longer takes `leader` for its leader: it started an election
    /// (no heartbeat for an election timeout), voted in one, or learned of a newer leader; or its
    /// Raft stopped.
    pub async fn replaced(&self, leader: NodeId) {
        let mut metrics = self.raft.metrics();
        while metrics.borrow_and_update().current_leader == Some(leader) {
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until openraft's view changes (a new leader, say), `LEADER_POLL` passes, or the
    /// deadline comes. A stopped Raft never changes again: then it just waits out the interval,
    /// so that callers looping on it do not spin.
    pub async fn wait_for_change(&self, deadline: Instant) {
        let mut metrics = self.raft.metrics();
        let until = deadline.min(Instant::now() + LEADER_POLL);
        if let Ok(Err(_)) = tokio::time::timeout_at(until, metrics.changed()).await {
            tokio::time::sleep_until(until).await;
        }
    }

    /// Sends `request` to `leader` over the peer RPC and returns its answer, unless this node
    /// stops following `leader` first (see the module docs).
    pub async fn ask<Req, Resp>(
        &self,
        peers: &Arc<PeerClients>,
        leader: NodeId,
        method: PeerMethod,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, AskError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let Some(addr) = peer_addr(&self.raft, leader) else {
            return Err(AskError::NotSent(format!(
                "leader {leader} is not in this node's membership yet"
            )));
        };
        let gate = Arc::new(SendGate::default());
        let call = peers.rpc_gated(leader, &addr, method, request, timeout, gate.clone());
        tokio::select! {
            biased;
            answer = call => answer.map_err(|e| match e {
                PeerError::Unreachable { .. } => AskError::NotSent(e.to_string()),
                PeerError::Refused { .. } => AskError::Refused(e.to_string()),
                PeerError::NoAnswer { .. } => AskError::Unknown(format!(
                    "lost contact with the leader after sending the request: {e}"
                )),
            }),
            () = self.replaced(leader) => Err(if gate.close() {
                AskError::NotSent(format!(
                    "node {leader} stopped being this node's leader before the request was sent"
                ))
            } else {
                AskError::Unknown(format!(
                    "node {leader} stopped being this node's leader while the request was with it (it went silent or lost an election)"
                ))
            }),
        }
    }
}
