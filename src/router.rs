//! Routing: the one place that decides how a request is served.
//!
//! - A local read is answered from this replica's state machine.
//! - A linearizable read gets a read index (from openraft if this node leads, else from the
//!   leader over the peer RPC), waits until this replica has applied it, then reads locally.
//! - A write goes to the proposer, which batches it and proposes it to openraft if this node
//!   leads, or forwards the batch to the leader (`proposer.rs`). While no leader is known the
//!   router waits for one, up to the request deadline, then answers `Unavailable`.
//! - A node that was removed from the cluster, or has not been added to one yet, answers
//!   every client request with `Unavailable` saying so.

use openraft::async_runtime::watch::WatchReceiver;
use std::sync::Arc;
use std::time::Duration;

use openraft::metrics::WaitError;
use tokio::time::Instant;

use crate::eviction::Eviction;
use crate::leader::LeaderView;
use crate::membership::Standing;
use crate::network::{ForwardError, LeaderSide, PeerClients};
use crate::proposer::{Origin, Proposer};
use crate::read_index::{ReadIndexBatcher, ReadIndexSource};
use crate::store::StateReader;
use crate::types::{Applied, NodeId, Raft, Request, TypeConfig};

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

/// The router's limits (flags `--request-deadline-ms`, `--max-waiting-reads`).
#[derive(Debug, Clone, Copy)]
pub struct RouterLimits {
    /// How long a request may wait for a leader, a quorum or a catch-up.
    pub request_deadline: Duration,
    /// Most linearizable reads waiting for the next read-index round.
    pub max_waiting_reads: usize,
    /// How long without entries from the leader means that they do not arrive, for a write
    /// this node forwarded and waits to apply (`settle_locally`): the election timeout's
    /// lower bound, after which a follower would call an election.
    pub leader_silence: Duration,
}

/// This node's replica, and the access history its reads feed while it leads.
pub struct LocalState {
    pub state: StateReader,
    pub eviction: Arc<Eviction>,
}

/// Routes client requests for one node.
pub struct Router {
    /// This node's id.
    id: NodeId,
    raft: Raft,
    /// Who leads; waits for a change of leader between attempts.
    leader: LeaderView,
    /// This node's replica, for local reads.
    state: StateReader,
    /// Batches this node's writes (group commit) and forwards them when it does not lead.
    proposer: Proposer,
    /// Read indexes: the leader check for this node's own answers, and batched rounds.
    read_source: ReadIndexSource,
    read_rounds: ReadIndexBatcher,
    /// How long a request may wait for a leader, a quorum or a catch-up.
    request_deadline: Duration,
    /// `RouterLimits::leader_silence`.
    leader_silence: Duration,
    /// Whether this node is in a cluster: a removed or waiting node serves no client.
    standing: Arc<Standing>,
    /// The access history LRU eviction uses (fed only while this node leads).
    eviction: Arc<Eviction>,
}

impl Router {
    pub fn new(
        id: NodeId,
        raft: Raft,
        local: LocalState,
        peers: Arc<PeerClients>,
        proposer: Proposer,
        limits: RouterLimits,
        standing: Arc<Standing>,
    ) -> Self {
        let LocalState { state, eviction } = local;
        let RouterLimits {
            request_deadline,
            max_waiting_reads,
            leader_silence,
        } = limits;
        let read_source = ReadIndexSource::new(id, raft.clone(), peers);
        let read_rounds =
            ReadIndexBatcher::spawn(read_source.clone(), request_deadline, max_waiting_reads);
        Self {
            id,
            leader: LeaderView::new(id, raft.clone()),
            raft,
            state,
            proposer,
            read_source,
            read_rounds,
            request_deadline,
            leader_silence,
            standing,
            eviction,
        }
    }

    /// Records reads of `keys` as accesses for LRU eviction, if this node leads: only the
    /// leader's view of accesses decides what is evicted.
    pub fn note_reads<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        if self.raft.metrics().borrow_watched().state == openraft::ServerState::Leader {
            self.eviction.touch(keys);
        }
    }

    /// `Unavailable` if this node must not serve clients: removed, or not in a cluster yet.
    fn refuse_if_not_member(&self) -> Result<(), RouteError> {
        match self.standing.refusal() {
            Some(message) => Err(RouteError::Unavailable(message)),
            None => Ok(()),
        }
    }

    /// This replica's state as it is now (for counters, not for reads a client asked for).
    pub fn state(&self) -> &StateReader {
        &self.state
    }

    /// This replica's state, once it may be read with `consistency` and has applied at least
    /// `min_index` (waiting up to the request deadline for both).
    pub async fn reader(
        &self,
        consistency: Consistency,
        min_index: Option<u64>,
    ) -> Result<&StateReader, RouteError> {
        self.refuse_if_not_member()?;
        let deadline = Instant::now() + self.request_deadline;
        if consistency == Consistency::Linearizable {
            if let Some(index) = self.read_index(deadline).await? {
                self.wait_applied(index, deadline, "the read index").await?;
            }
        }
        if let Some(index) = min_index.filter(|i| *i > 0) {
            self.wait_applied(index, deadline, "the requested min_index")
                .await?;
        }
        Ok(&self.state)
    }

    /// Waits until this node has applied `index`, up to `deadline`.
    async fn wait_applied(
        &self,
        index: u64,
        deadline: Instant,
        what: &str,
    ) -> Result<(), RouteError> {
        let wait = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(wait))
            .applied_index_at_least(Some(index), what)
            .await
            .map(|_| ())
            .map_err(|e| {
                RouteError::Unavailable(match e {
                    WaitError::ShuttingDown => self.shutting_down(),
                    // Not openraft's message: it carries a dump of the node's whole metrics.
                    WaitError::Timeout(..) => format!(
                        "this node did not catch up to {what} {index} within the request deadline of {} ms (it has applied up to {})",
                        self.request_deadline.as_millis(),
                        self.applied_index()
                    ),
                })
            })
    }

    fn shutting_down(&self) -> String {
        format!("node {} is shutting down: use another node", self.id)
    }

    /// Proposes a write through Raft (here, or on the leader) and returns its result once it is
    /// committed on a majority and applied.
    ///
    /// A tracked write (`Request::Tracked`) is applied at most once whatever happens, so one
    /// whose outcome is unknown (the leader it was forwarded to died, or lost its leadership
    /// with the entry) is sent again until the deadline rather than answered "unknown".
    pub async fn write(&self, request: Request) -> Result<Applied, RouteError> {
        self.refuse_if_not_member()?;
        let deadline = Instant::now() + self.request_deadline;
        let tracked = matches!(request, Request::Tracked { .. });
        let mut last_reason = String::from("no leader");
        let mut maybe_applied = false;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let outcome = if maybe_applied {
                    "an attempt may or may not have been applied (send it again with the same WriteOptions: it is applied once)"
                } else {
                    "it was not applied"
                };
                return Err(RouteError::Unavailable(format!(
                    "no leader accepted the write within the request deadline of {} ms ({last_reason}); {outcome}",
                    self.request_deadline.as_millis()
                )));
            }
            if let Some(stopped) = self.stopped() {
                return Err(stopped);
            }
            let proposed = self.proposer.propose(request.clone(), Origin::Client);
            match tokio::time::timeout(remaining, proposed).await {
                Ok(Ok(applied)) => {
                    self.settle_locally(applied.index, deadline).await;
                    return Ok(applied);
                }
                Ok(Err(ForwardError::Failed(reason))) if tracked => {
                    maybe_applied = true;
                    last_reason = reason;
                }
                Ok(Err(ForwardError::Failed(reason))) => {
                    return Err(RouteError::Unavailable(reason))
                }
                Ok(Err(e)) => last_reason = e.to_string(),
                Err(_) => {
                    return Err(RouteError::Unavailable(not_committed(
                        self.request_deadline,
                    )))
                }
            }
            self.leader.wait_for_change(deadline).await;
        }
    }

    /// Waits (up to `deadline`) until this node has applied the write at `index` too, so that a
    /// local read here right after the answer sees it: read-your-writes on the node a client
    /// writes through, follower or leader (the leader has applied it already). The write is
    /// committed either way; a follower that cannot apply it in time (cut off from the leader
    /// right after the commit) still answers it as done, and only its local reads lag. So does
    /// one that has had no entries from the leader for `leader_silence`: they are not coming
    /// (the leader cannot reach it while it reaches the leader), and waiting out the deadline
    /// would only hold every client of this node.
    async fn settle_locally(&self, index: u64, deadline: Instant) {
        let silent = async {
            loop {
                let silent_for = self.standing.leader_silent_for();
                if silent_for >= self.leader_silence {
                    return silent_for;
                }
                tokio::time::sleep(self.leader_silence - silent_for).await;
            }
        };
        tokio::select! {
            biased;
            applied = self.wait_applied(index, deadline, "its own write") => {
                if let Err(e) = applied {
                    tracing::debug!(index, error = %e, "answering a committed write not yet applied here");
                }
            }
            silent_for = silent => {
                tracing::debug!(index, silent_ms = silent_for.as_millis() as u64, "answering a committed write not yet applied here: no entries from the leader");
            }
        }
    }

    /// Proposes writes a follower forwarded, on this node only, and answers each one in order.
    pub async fn write_forwarded(
        &self,
        requests: Vec<Request>,
        deadline: Duration,
    ) -> Vec<Result<Applied, ForwardError>> {
        let until = Instant::now() + deadline;
        let mut answers = Vec::with_capacity(requests.len());
        for request in requests {
            answers.push(self.proposer.submit(request, Origin::Peer).await);
        }
        let mut results = Vec::with_capacity(answers.len());
        for answer in answers {
            results.push(match answer {
                Ok(answer) => match tokio::time::timeout_at(until, answer).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err(ForwardError::Failed(format!(
                        "node {} is stopping",
                        self.id
                    ))),
                    Err(_) => Err(ForwardError::Failed(not_committed(deadline))),
                },
                Err(e) => Err(e),
            });
        }
        results
    }

    /// How long a request may wait (`--request-deadline-ms`).
    pub fn request_deadline(&self) -> Duration {
        self.request_deadline
    }

    /// The index this node's replica has applied up to (0 before anything).
    pub fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map_or(0, |id| id.index)
    }

    /// Builds a snapshot on this node now and waits (up to the request deadline) until one
    /// covers everything applied here when it was asked for. Returns the index it covers.
    ///
    /// openraft ignores a trigger while a build runs, and a running build may have read its
    /// index before the last apply: the trigger is repeated until a snapshot covers `applied`.
    pub async fn snapshot(&self) -> Result<u64, RouteError> {
        /// How long one trigger is waited for before it is repeated.
        const RETRIGGER: Duration = Duration::from_millis(100);
        let applied = self.applied_index();
        let covers = |m: &openraft::RaftMetrics<TypeConfig>| m.snapshot.map_or(0, |s| s.index);
        let deadline = Instant::now() + self.request_deadline;
        loop {
            self.raft.trigger().snapshot().await.map_err(|e| {
                RouteError::Unavailable(format!("node {} is stopping: {e}", self.id))
            })?;
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .raft
                .wait(Some(left.min(RETRIGGER)))
                .metrics(|m| covers(m) >= applied, "snapshot built")
                .await
            {
                Ok(metrics) => return Ok(covers(&metrics)),
                Err(WaitError::ShuttingDown) => {
                    return Err(RouteError::Unavailable(self.shutting_down()))
                }
                Err(WaitError::Timeout(..)) if left > RETRIGGER => continue,
                Err(WaitError::Timeout(..)) => {
                    return Err(RouteError::Unavailable(format!(
                        "no snapshot covering index {applied} within the request deadline of {} ms",
                        self.request_deadline.as_millis()
                    )))
                }
            }
        }
    }

    /// Whether this node can serve now (`GET /ready`): a member, following a leader that
    /// confirms with a quorum that it still leads (a read index round), and caught up to what
    /// that leader had committed when asked, all within `timeout`. Returns the applied index,
    /// or why not.
    pub async fn ready(&self, timeout: Duration) -> Result<u64, String> {
        self.refuse_if_not_member().map_err(|e| e.to_string())?;
        let deadline = Instant::now() + timeout;
        let within = || format!("within {} ms", timeout.as_millis());
        let index = tokio::time::timeout(timeout, self.read_index(deadline))
            .await
            .map_err(|_| {
                let leader = self.raft.metrics().borrow_watched().current_leader;
                match leader {
                    None => format!("no leader known {}", within()),
                    Some(leader) => format!(
                        "leader {leader} did not confirm its commit index with a quorum {}",
                        within()
                    ),
                }
            })?
            .map_err(|e| e.to_string())?;
        if let Some(index) = index {
            let wait = deadline.saturating_duration_since(Instant::now());
            self.raft
                .wait(Some(wait))
                .applied_index_at_least(Some(index), "the leader's commit index")
                .await
                .map_err(|_| {
                    format!(
                        "applied index {}, behind the leader's commit index {index}, {}",
                        self.applied_index(),
                        within()
                    )
                })?;
        }
        Ok(self.applied_index())
    }

    /// The read index for a linearizable read, if this node leads (asked by followers).
    pub async fn read_index_as_leader(&self) -> Result<Option<u64>, ForwardError> {
        self.read_source.as_leader().await
    }

    /// A read index from this node if it leads, else from the leader.
    async fn read_index(&self, deadline: Instant) -> Result<Option<u64>, RouteError> {
        let mut last_reason;
        loop {
            match self.read_rounds.next_round().await {
                Ok(index) => return Ok(index),
                Err(ForwardError::Failed(reason)) => return Err(RouteError::Unavailable(reason)),
                Err(e) => last_reason = e.to_string(),
            }
            if let Some(stopped) = self.stopped() {
                return Err(stopped);
            }
            if Instant::now() >= deadline {
                return Err(RouteError::Unavailable(format!(
                    "no leader confirmed a read index within the request deadline of {} ms ({last_reason})",
                    self.request_deadline.as_millis()
                )));
            }
            self.leader.wait_for_change(deadline).await;
        }
    }

    /// `Unavailable` if this node's Raft has stopped (shut down, or after a fatal storage
    /// error): retrying here cannot help, the client should use another node.
    fn stopped(&self) -> Option<RouteError> {
        let state = self.raft.metrics().borrow_watched().state;
        (state == openraft::ServerState::Shutdown).then(|| {
            RouteError::Unavailable(format!(
                "node {} has stopped serving (see its log); use another node",
                self.id
            ))
        })
    }
}

fn not_committed(deadline: Duration) -> String {
    format!(
        "the write was proposed but not committed within the request deadline of {} ms (no quorum?); it may or may not be applied",
        deadline.as_millis()
    )
}

impl LeaderSide for Router {
    async fn write_forwarded(
        &self,
        requests: Vec<Request>,
        deadline: Duration,
    ) -> Vec<Result<Applied, ForwardError>> {
        Router::write_forwarded(self, requests, deadline).await
    }

    async fn read_index_as_leader(&self) -> Result<Option<u64>, ForwardError> {
        Router::read_index_as_leader(self).await
    }
}
