//! Routing: the one place that decides how a request is served.
//!
//! - A local read is answered from this replica's state machine.
//! - A linearizable read gets a read index (from openraft if this node leads, else from the
//!   leader over the peer RPC), waits until this replica has applied it, then reads locally.
//! - A write is proposed to openraft if this node leads, else forwarded to the leader, whose
//!   answer is returned. While no leader is known the router waits for one, up to the request
//!   deadline, then answers `Unavailable`.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::time::Instant;

use crate::network::PeerMethod as Method;
use crate::network::{ForwardError, ForwardRequest, PeerClients, PeerError};
use crate::proposer::Proposer;
use crate::store::StateReader;
use crate::types::{NodeId, Raft, Request, Response};

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// This replica's state as it is now.
    Local,
    /// At least as new as every write acknowledged before the read started.
    Linearizable,
}

/// Errors a routed request ends with. Every variant reaches the client as a declared exception.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No leader or quorum within the deadline, or this node is stopping. For a write, the
    /// outcome may be unknown: the message says so.
    #[error("{0}")]
    Unavailable(String),
    /// Reading this replica's storage failed.
    #[error("storage error: {0}")]
    Storage(String),
}

/// Whether a request to the leader that got no answer may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads: asking again changes nothing.
    Safe,
    /// Writes: only a request that was never delivered is sent again.
    OnlyIfUndelivered,
}

/// Longest wait between two attempts while no leader is known.
const LEADER_POLL: Duration = Duration::from_millis(100);

/// Routes client requests for one node.
pub struct Router {
    id: NodeId,
    raft: Raft,
    state: StateReader,
    peers: Arc<PeerClients>,
    /// Batches this node's proposals (group commit).
    proposer: Proposer,
    /// How long a request may wait for a leader, a quorum or a catch-up.
    request_deadline: Duration,
}

impl Router {
    pub fn new(
        id: NodeId,
        raft: Raft,
        state: StateReader,
        peers: Arc<PeerClients>,
        proposer: Proposer,
        request_deadline: Duration,
    ) -> Self {
        Self {
            id,
            raft,
            state,
            peers,
            proposer,
            request_deadline,
        }
    }

    /// Reads `key` with the given consistency.
    pub async fn read(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<String>, RouteError> {
        if consistency == Consistency::Linearizable {
            let deadline = Instant::now() + self.request_deadline;
            let index = self.read_index(deadline).await?;
            if let Some(index) = index {
                let wait = deadline.saturating_duration_since(Instant::now());
                self.raft
                    .wait(Some(wait))
                    .applied_index_at_least(Some(index), "linearizable read")
                    .await
                    .map_err(|e| {
                        RouteError::Unavailable(format!(
                            "this node did not catch up to the read index {index} in time: {e}"
                        ))
                    })?;
            }
        }
        self.state
            .get(key)
            .map_err(|e| RouteError::Storage(e.to_string()))
    }

    /// Proposes a write through Raft, on this node or on the leader, and returns its result once
    /// it is committed on a majority and applied.
    pub async fn write(&self, request: Request) -> Result<Response, RouteError> {
        let deadline = Instant::now() + self.request_deadline;
        let mut last_reason = String::from("no leader");
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(RouteError::Unavailable(format!(
                    "no leader accepted the write within the request deadline of {} ms ({last_reason}); it was not applied",
                    self.request_deadline.as_millis()
                )));
            }
            let outcome = match self.write_as_leader(request.clone(), remaining).await {
                Err(ForwardError::NotLeader {
                    leader: Some(leader),
                }) if leader != self.id => self.forward(leader, &request, remaining).await,
                other => other,
            };
            match outcome {
                Ok(response) => return Ok(response),
                Err(ForwardError::Failed(reason)) => return Err(RouteError::Unavailable(reason)),
                Err(e) => last_reason = e.to_string(),
            }
            self.wait_for_change(deadline).await;
        }
    }

    /// Proposes `request` on this node only. Used for local writes and for writes forwarded by
    /// followers; never forwards again, so two nodes with stale views cannot bounce a request.
    pub async fn write_as_leader(
        &self,
        request: Request,
        deadline: Duration,
    ) -> Result<Response, ForwardError> {
        match tokio::time::timeout(deadline, self.proposer.propose(request)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(ForwardError::Failed(format!(
                "the write was proposed but not committed within the request deadline of {} ms (no quorum?); it may or may not be applied",
                deadline.as_millis()
            ))),
        }
    }

    /// The read index for a linearizable read, if this node leads.
    pub async fn read_index_as_leader(&self) -> Result<Option<u64>, ForwardError> {
        match self.raft.get_read_log_id().await {
            Ok((read, applied)) => Ok(read.max(applied).map(|id| id.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(ForwardError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(ForwardError::TryAgain(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(ForwardError::Failed(format!(
                "node {} is stopping: {e}",
                self.id
            ))),
        }
    }

    /// A read index from this node if it leads, else from the leader.
    async fn read_index(&self, deadline: Instant) -> Result<Option<u64>, RouteError> {
        let mut last_reason;
        loop {
            let outcome = match self.read_index_as_leader().await {
                Err(ForwardError::NotLeader {
                    leader: Some(leader),
                }) if leader != self.id => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    self.ask_leader(leader, Method::ReadIndex, &(), remaining, Retry::Safe)
                        .await
                }
                other => other,
            };
            match outcome {
                Ok(index) => return Ok(index),
                Err(ForwardError::Failed(reason)) => return Err(RouteError::Unavailable(reason)),
                Err(e) => last_reason = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(RouteError::Unavailable(format!(
                    "no leader confirmed a read index within the request deadline of {} ms ({last_reason})",
                    self.request_deadline.as_millis()
                )));
            }
            self.wait_for_change(deadline).await;
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        request: &Request,
        remaining: Duration,
    ) -> Result<Response, ForwardError> {
        let forward = ForwardRequest {
            request: request.clone(),
            deadline_ms: remaining.as_millis() as u64,
        };
        self.ask_leader(
            leader,
            Method::Forward,
            &forward,
            remaining,
            Retry::OnlyIfUndelivered,
        )
        .await
    }

    /// Sends a request to the leader. A request that never left this node may always be retried;
    /// a write that got no answer may have been carried out, so its caller is told the outcome
    /// is unknown, while a read-index request can simply be asked again.
    async fn ask_leader<Req, Resp>(
        &self,
        leader: NodeId,
        method: Method,
        request: &Req,
        remaining: Duration,
        retry: Retry,
    ) -> Result<Resp, ForwardError>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
    {
        let Some(addr) = self.peer_addr(leader) else {
            return Err(ForwardError::TryAgain(format!(
                "leader {leader} is not in this node's membership yet"
            )));
        };
        // A little longer than the leader's own deadline, so its answer can arrive.
        let timeout = remaining + Duration::from_millis(500);
        match self.peers.rpc::<Req, Result<Resp, ForwardError>>(leader, &addr, method, request, timeout).await {
            Ok(answer) => answer,
            Err(e @ PeerError::Unreachable { .. }) => Err(ForwardError::TryAgain(e.to_string())),
            Err(e @ PeerError::NoAnswer { .. }) if retry == Retry::Safe => Err(ForwardError::TryAgain(e.to_string())),
            Err(e @ PeerError::NoAnswer { .. }) => Err(ForwardError::Failed(format!(
                "lost contact with the leader after sending the request; it may or may not have been applied: {e}"
            ))),
        }
    }

    fn peer_addr(&self, id: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.peer_addr.clone())
    }

    /// Waits until openraft's view changes (a new leader, say) or a short poll interval passes.
    async fn wait_for_change(&self, deadline: Instant) {
        let mut metrics = self.raft.metrics();
        let until = deadline.min(Instant::now() + LEADER_POLL);
        let _ = tokio::time::timeout_at(until, metrics.changed()).await;
    }
}
