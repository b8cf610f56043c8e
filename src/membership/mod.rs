//! Membership administration: the admin requests behind `raftcache admin members|add-learner|
//! promote|demote|remove-node|add-node|replace-node`, carried out on the leader.
//!
//! - A request that reaches a follower is forwarded to the leader over the peer RPC (the same
//!   `PeerClients` the write path forwards with), and the leader's answer is returned: an
//!   operator can point the CLI at any member.
//! - The leader checks the safety rules (`safety.rs`) against which members answer its peer
//!   probe right now, refuses a change while another is in progress, then proposes the change
//!   through openraft (joint consensus) and answers once it is committed.
//! - The probe (`node_info` on the peer port) also tells the leader a new node's client
//!   address, and has a node that started without a cluster adopt this cluster's id.
//! - `standing.rs`: whether this node is waiting, a member, or was removed.
//! - `join.rs`: `serve --join`, a node asking a cluster to add it.

mod join;
mod leader;
pub mod safety;
mod standing;

use openraft::async_runtime::watch::WatchReceiver;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use join::{add_node, join_cluster, CatchUp, JoinRequest};
pub use standing::{lists, Standing};

pub use crate::network::messages::{
    AdminError, AdminRequest, Change, ForwardedAdmin, MemberView, MembersView, NodeInfo,
    NodeInfoRequest,
};

use crate::leader::{AskError, LeaderView};
use crate::network::{MembershipSide, PeerClients, PeerMethod};
use crate::store::ClusterIdentity;
use crate::types::{NodeId, Raft};

/// Admin requests on one node.
pub struct Admin {
    /// This node's id.
    id: NodeId,
    raft: Raft,
    /// Who leads, and how admin requests reach it from a follower.
    leader: LeaderView,
    /// Connections to the other nodes, for forwarding and probes.
    peers: Arc<PeerClients>,
    /// Whether this node is waiting, a member, or removed.
    standing: Arc<Standing>,
    /// Where clients reach this node (`--advertise-client`, else `--listen`): reported by the
    /// probe, and so recorded by the leader that adds this node.
    client_addr: String,
    /// How long a probe of a peer port may take.
    probe_timeout: Duration,
    /// How long a request may wait for a leader or for its change to commit.
    deadline: Duration,
    /// Held while this leader makes a change: a second one is refused, never queued.
    changing: tokio::sync::Mutex<()>,
    /// Proposals still running here, including ones whose caller gave up at its deadline.
    in_flight: Arc<AtomicUsize>,
    /// `--admin-token`: sent with every request this node forwards to the leader, and
    /// required of every request forwarded to this node.
    token: Option<String>,
}

/// Whether `given` is the token `expected`, compared in constant time (the time taken does not
/// tell how much of a guess was right).
pub fn same_token(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Admin {
    pub fn new(
        id: NodeId,
        raft: Raft,
        peers: Arc<PeerClients>,
        standing: Arc<Standing>,
        client_addr: String,
        probe_timeout: Duration,
        deadline: Duration,
    ) -> Self {
        Self {
            id,
            leader: LeaderView::new(id, raft.clone()),
            raft,
            peers,
            standing,
            client_addr,
            probe_timeout,
            deadline,
            changing: tokio::sync::Mutex::new(()),
            in_flight: Arc::new(AtomicUsize::new(0)),
            token: None,
        }
    }

    /// With `--admin-token`: forwarded requests carry it, and requests forwarded here need it.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Carries out `request` on the leader: here, or forwarded to it. Waits for a leader up
    /// to the deadline.
    pub async fn handle(&self, request: AdminRequest) -> Result<MembersView, AdminError> {
        let deadline = Instant::now() + self.deadline;
        loop {
            if self.standing.removed() {
                return Err(AdminError::Unavailable(self.standing.removed_message()));
            }
            if self.standing.waiting() {
                return Err(AdminError::Unavailable(self.no_leader_message()));
            }
            let asked = self.leader.current();
            let outcome = match asked {
                Some(leader) if self.leader.is_self(leader) => {
                    self.as_leader(request.clone()).await
                }
                Some(leader) => self.forward(leader, &request, deadline).await,
                None => Err(AdminError::NotLeader { leader: None }),
            };
            match outcome {
                Err(AdminError::NotLeader { .. }) if Instant::now() < deadline => {
                    self.leader.wait_for_change(deadline).await
                }
                Err(AdminError::NotLeader { .. }) => {
                    return Err(AdminError::Unavailable(self.no_leader_message()))
                }
                // The leader changed while it handled a transfer: if it moved where it was
                // asked to, that is the transfer done; if another node was elected (the
                // target could not stand in time: seen right after a partition healed), ask
                // that one, while the deadline allows.
                Err(AdminError::Unavailable(why)) => {
                    if let AdminRequest::TransferLeader { to, .. } = request {
                        match self.next_leader(asked, deadline).await {
                            Some(leader) if leader == to => {
                                return Box::pin(self.handle(AdminRequest::Members)).await;
                            }
                            Some(leader) => {
                                tracing::info!(to, elected = leader, %why, "leader transfer: asking the new leader again");
                                continue;
                            }
                            None => {}
                        }
                    }
                    return Err(AdminError::Unavailable(why));
                }
                other => return other,
            }
        }
    }

    /// The first leader this node knows, other than `asked`, before `deadline`.
    async fn next_leader(&self, asked: Option<NodeId>, deadline: Instant) -> Option<NodeId> {
        loop {
            match self.leader.current() {
                Some(leader) if Some(leader) != asked => return Some(leader),
                _ if Instant::now() >= deadline => return None,
                _ => self.leader.wait_for_change(deadline).await,
            }
        }
    }

    fn no_leader_message(&self) -> String {
        if self.standing.waiting() {
            return format!(
                "node {} is not a member of any cluster yet: ask a member, or add this node with `raftcache admin add-node`",
                self.id
            );
        }
        format!(
            "no leader within the request deadline of {} ms",
            self.deadline.as_millis()
        )
    }

    /// Sends `request` to the leader over the peer RPC.
    async fn forward(
        &self,
        leader: NodeId,
        request: &AdminRequest,
        deadline: Instant,
    ) -> Result<MembersView, AdminError> {
        let timeout = deadline.saturating_duration_since(Instant::now()) + self.deadline;
        let forwarded = ForwardedAdmin {
            token: self.token.clone().unwrap_or_default(),
            request: request.clone(),
        };
        self.leader
            .ask::<_, Result<MembersView, AdminError>>(
                &self.peers,
                leader,
                PeerMethod::Admin,
                &forwarded,
                timeout,
            )
            .await
            .map_err(|e| match (request, e) {
                // Nothing was delivered, or nothing changes: asking again is safe.
                (_, AskError::NotSent(_)) | (AdminRequest::Members, AskError::Unknown(_)) => {
                    AdminError::NotLeader { leader: None }
                }
                (_, AskError::Refused(e)) => AdminError::Unavailable(format!(
                    "the leader (node {leader}) refused the request, nothing was changed: {e}"
                )),
                (AdminRequest::Change { .. }, AskError::Unknown(e)) => AdminError::Unavailable(format!(
                    "the leader (node {leader}) did not answer: {e}; the change may or may not have been made (see `raftcache admin members`)"
                )),
                (AdminRequest::TransferLeader { .. }, AskError::Unknown(e)) => AdminError::Unavailable(format!(
                    "the leader (node {leader}) did not answer: {e}; the leadership may or may not have moved (see `raftcache admin members`)"
                )),
            })?
    }

    /// Answers the leader's probe: who this node is, after joining the prober's cluster.
    pub fn node_info(&self, request: NodeInfoRequest) -> Result<NodeInfo, String> {
        if request.id != self.id {
            return Err(format!(
                "the node there is node {}, not node {}",
                self.id, request.id
            ));
        }
        let identity = self.identity_store();
        identity.adopt(&request.cluster_id)?;
        if request.removed || identity.told_removed() {
            // Told it was removed; or probed to be added again, after a removal.
            identity
                .set_removed(request.removed)
                .map_err(|e| format!("it cannot record its removal: {e}"))?;
            tracing::warn!(removed = request.removed, "the leader says so");
        }
        Ok(NodeInfo {
            id: self.id,
            client_addr: self.client_addr.clone(),
        })
    }

    fn identity_store(&self) -> &ClusterIdentity {
        self.standing.identity()
    }

    /// This node's standing (the peer service tells it when the leader sends).
    pub fn standing(&self) -> &Standing {
        &self.standing
    }
}

/// Voter ids of the target configuration.
fn target_voters(raft: &Raft) -> BTreeSet<NodeId> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow_watched();
    metrics
        .membership_config
        .membership()
        .get_joint_config()
        .last()
        .cloned()
        .unwrap_or_default()
}

impl MembershipSide for Admin {
    fn heard_from_leader(&self) {
        self.standing.heard_from_leader();
    }

    fn node_info(&self, request: NodeInfoRequest) -> Result<NodeInfo, String> {
        Admin::node_info(self, request)
    }

    async fn admin_as_leader(&self, request: ForwardedAdmin) -> Result<MembersView, AdminError> {
        if let Some(expected) = &self.token {
            if !same_token(expected, &request.token) {
                // The token given is never logged.
                tracing::warn!(
                    given = if request.token.is_empty() {
                        "none"
                    } else {
                        "a wrong one"
                    },
                    "forwarded admin call refused: it lacks the admin token"
                );
                return Err(AdminError::Unauthorized(
                    "an admin request forwarded over the peer port lacked the admin token of this cluster: every node needs the same --admin-token".into(),
                ));
            }
        }
        self.as_leader(request.request).await
    }
}
