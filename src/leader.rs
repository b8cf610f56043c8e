//! Who leads, as this node sees it, and the one way to ask the leader something.
//!
//! Writes (`proposer.rs`), read indexes (`read_index.rs`) and admin changes (`membership/`) all
//! reach the leader the same way: look up its peer address in this node's membership, send the
//! call, and race it against this node stopping to follow that leader. A leader whose host died
//! answers nothing, not even a refusal; without the race a call would wait out its whole
//! timeout although this node stopped following that leader long before. The call goes out
//! through a `SendGate`, so a caller that gives up knows whether the request left this node
//! (its outcome unknown) or never will (safe to ask again).
//!
//! While this node's own calls to the leader fail (a one-way partition: the leader still
//! reaches it, a quorum still calls the leader, so nothing changes leader), the call goes to
//! another voter to relay (`network::RelayRequest`); and a call that a lost link left waiting is
//! given up after an election timeout once a later call to the leader failed.

use openraft::async_runtime::watch::WatchReceiver;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

pub use crate::network::AskError;
use crate::network::{
    peer_addr, PeerClients, PeerError, PeerMethod, RelayRequest, RelayedCall, SendGate,
};
use crate::types::{NodeId, Raft};

/// Longest wait between two looks at the leader while none is known, or it keeps refusing.
pub const LEADER_POLL: Duration = Duration::from_millis(100);
/// How much longer a call through a relay may take than the relay's own call to the leader.
const RELAY_MARGIN: Duration = Duration::from_millis(500);

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

    /// How long a call may go unanswered before a later call to the same node that failed (the
    /// followers' `leader_check`, every heartbeat) counts as losing it: a link that drops what
    /// this node sends leaves a pooled connection waiting out its whole timeout. One election
    /// timeout (`--election-timeout-max-ms`, 1 s by default): long against a forwarded
    /// write's usual time, so that a busy leader's slow answer is waited for.
    fn link_lost_after(&self) -> Duration {
        Duration::from_millis(self.raft.config().election_timeout_max)
    }

    /// Whether this node is the leader it knows of.
    pub fn is_self(&self, leader: NodeId) -> bool {
        leader == self.id
    }

    /// Resolves once this node no longer takes `leader` for its leader: it started an election
    /// (no heartbeat for an election timeout), voted in one, or learned of a newer leader; or its
    /// Raft stopped.
    pub async fn replaced(&self, leader: NodeId) {
        crate::network::stopped_following(&self.raft, leader).await
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
        if peers.failing(leader) {
            if let Some((relay, call)) = self.relay_for(peers, leader, method) {
                return self
                    .ask_through(peers, relay, leader, call, request, timeout)
                    .await;
            }
        }
        let Some(addr) = peer_addr(&self.raft, leader) else {
            return Err(AskError::NotSent(format!(
                "leader {leader} is not in this node's membership yet"
            )));
        };
        let gate = Arc::new(SendGate::default());
        let call = peers.rpc_gated(leader, &addr, method, request, timeout, gate.clone());
        self.unless_replaced(peers, leader, gate, call).await
    }

    /// The member to relay a call of `method` to `leader` through, when this node's own
    /// calls do not reach the leader: one whose last call from this node did not fail, the
    /// one heard from last; else the one that failed longest ago. None for a call that is not
    /// relayed, or with no other member.
    fn relay_for(
        &self,
        peers: &PeerClients,
        leader: NodeId,
        method: PeerMethod,
    ) -> Option<(NodeId, RelayedCall)> {
        let call = match method {
            PeerMethod::Forward => RelayedCall::Forward,
            PeerMethod::ReadIndex => RelayedCall::ReadIndex,
            PeerMethod::Admin => RelayedCall::Admin,
            _ => return None,
        };
        let others: Vec<NodeId> = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow_watched();
            let membership = metrics.membership_config.membership();
            membership
                .voter_ids()
                .filter(|id| *id != self.id && *id != leader)
                .collect()
        };
        let relay = others
            .iter()
            .copied()
            .max_by_key(|id| (!peers.failing(*id), peers.last_answer(*id)))?;
        Some((relay, call))
    }

    /// `ask`, through member `relay` (`network::RelayRequest`).
    async fn ask_through<Req, Resp>(
        &self,
        peers: &Arc<PeerClients>,
        relay: NodeId,
        leader: NodeId,
        call: RelayedCall,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, AskError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let Some(addr) = peer_addr(&self.raft, relay) else {
            return Err(AskError::NotSent(format!(
                "relay {relay} is not in this node's membership"
            )));
        };
        let relayed = RelayRequest {
            to: leader,
            call,
            request: bincode::serialize(request).expect("peer requests always serialize"),
            timeout_ms: timeout.as_millis() as u64,
        };
        // No race against this node's view of the leader here: the relay races its own call
        // against its view, and its answer says whether the call reached the leader.
        let answer = peers
            .rpc::<_, Result<Vec<u8>, AskError>>(
                relay,
                &addr,
                PeerMethod::Relay,
                &relayed,
                timeout + RELAY_MARGIN,
            )
            .await;
        let through = |reason: String| format!("through node {relay}: {reason}");
        // This node's own call to the relay: refused or unreachable, nothing was relayed.
        let answer = answer.map_err(|e| match AskError::from(e) {
            AskError::Refused(reason) => AskError::NotSent(through(reason)),
            e => e.map_reason(through),
        })?;
        match answer {
            Ok(encoded) => bincode::deserialize(&encoded).map_err(|e| {
                AskError::Unknown(through(format!("undecodable answer from the leader: {e}")))
            }),
            Err(e) => Err(e.map_reason(through)),
        }
    }

    /// Waits for `call` to `leader` (sent through `gate`), unless this node stops following
    /// `leader` first, or a later call to it fails for want of a link (`link_lost`).
    async fn unless_replaced<Resp>(
        &self,
        peers: &PeerClients,
        leader: NodeId,
        gate: Arc<SendGate>,
        call: impl std::future::Future<Output = Result<Resp, PeerError>>,
    ) -> Result<Resp, AskError> {
        let started = std::time::Instant::now();
        tokio::select! {
            biased;
            answer = call => answer.map_err(AskError::from),
            () = self.replaced(leader) => Err(if gate.close() {
                AskError::NotSent(format!(
                    "node {leader} stopped being this node's leader before the request was sent"
                ))
            } else {
                AskError::Unknown(format!(
                    "node {leader} stopped being this node's leader while the request was with it (it went silent or lost an election)"
                ))
            }),
            () = link_lost(peers, leader, started, self.link_lost_after()) => Err(if gate.close() {
                AskError::NotSent(format!(
                    "the link to node {leader} failed before the request was sent"
                ))
            } else {
                AskError::Unknown(format!(
                    "the link to node {leader} failed while the request was with it (a later call to it was not answered)"
                ))
            }),
        }
    }
}

/// Resolves once a call to `called` made after `started` failed for want of a link, and at
/// least `after` has passed since `started`; never before.
async fn link_lost(
    peers: &PeerClients,
    called: NodeId,
    started: std::time::Instant,
    after: Duration,
) {
    tokio::time::sleep(after).await;
    while !peers.failed_since(called, started) {
        tokio::time::sleep(LEADER_POLL).await;
    }
}
