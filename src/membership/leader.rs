//! The leader's side of an admin request: probe who answers, check the safety rules, propose
//! the change through openraft and wait until it is committed.

use openraft::async_runtime::watch::WatchReceiver;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;

use super::safety::{check_quorum, list};
use super::{
    target_voters, Admin, AdminError, AdminRequest, Change, MemberView, MembersView, NodeInfo,
    NodeInfoRequest,
};
use crate::network::{PeerError, PeerMethod};
use crate::types::{Node, NodeId, TypeConfig};

type WriteError = RaftError<TypeConfig, ClientWriteError<TypeConfig>>;

/// How far behind the leader a voter may be for `admin transfer-leader` without `--force`.
const TRANSFER_MAX_LAG: u64 = 1_000;

/// How often the leader looks for a half-done membership change to finish.
const FINISH_POLL: std::time::Duration = std::time::Duration::from_millis(500);

impl Admin {
    /// Finishes, on whichever node leads, a membership change left half done: a joint
    /// configuration committed whose second step no one is making (its leader failed, or
    /// openraft refused the step because the leader had lost its quorum meanwhile). Runs until
    /// the node stops.
    pub fn spawn_finisher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let admin = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FINISH_POLL).await;
                let Some(admin) = admin.upgrade() else {
                    return;
                };
                if admin.raft.metrics().borrow_watched().current_leader != Some(admin.id) {
                    continue;
                }
                let Ok(_one_at_a_time) = admin.changing.try_lock() else {
                    continue;
                };
                if let Ok(Some(target)) = admin.unfinished() {
                    if let Err(e) = admin.finish(target).await {
                        tracing::warn!(error = %e, "finishing a half-done membership change failed; trying again");
                    }
                }
            }
        })
    }

    /// Carries out `request` if this node leads.
    pub async fn as_leader(&self, request: AdminRequest) -> Result<MembersView, AdminError> {
        let leader = self.raft.metrics().borrow_watched().current_leader;
        if leader != Some(self.id) {
            return Err(AdminError::NotLeader { leader });
        }
        if let AdminRequest::TransferLeader { to, force } = request {
            return self.transfer_leader(to, force).await;
        }
        if let AdminRequest::Change { change, force } = request {
            let _one_at_a_time = self.changing.try_lock().map_err(|_| {
                AdminError::Refused(
                    "another membership change is being made right now; try again when it is done"
                        .into(),
                )
            })?;
            if let Some(target) = self.unfinished()? {
                self.finish(target).await?;
                return Err(AdminError::Refused(format!(
                    "an earlier membership change had been left half done (by a leader that lost leadership in the middle of it); it is now finished with voters {}. Check `raftcache admin members` and run your command again",
                    list(&target_voters(&self.raft))
                )));
            }
            self.make(change, force).await?;
        }
        self.members().await
    }

    /// Hands the leadership to voter `to` once it holds every entry this leader has (openraft's
    /// leader transfer: this leader stops taking writes, `to` calls an election at once), and
    /// answers when `to` leads. Refused for a learner, a node that is not a member, or, unless
    /// `force`, a voter more than `TRANSFER_MAX_LAG` entries behind.
    async fn transfer_leader(&self, to: NodeId, force: bool) -> Result<MembersView, AdminError> {
        if to == self.id {
            return self.members().await;
        }
        let (voter, member) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            let membership = m.membership_config.membership();
            let voter = membership.voter_ids().any(|v| v == to);
            (voter, membership.get_node(&to).is_some())
        };
        if !member {
            return Err(AdminError::Refused(format!("node {to} is not a member")));
        }
        if !voter {
            return Err(AdminError::Refused(format!(
                "node {to} is a learner: only a voter can lead (promote it first)"
            )));
        }
        // A leader just elected knows no follower's progress until its first appends are
        // answered (and the command asks a new leader again when the transfer landed
        // elsewhere): give it an election timeout to learn it.
        let lag_of = |m: &openraft::RaftMetrics<TypeConfig>| {
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&to).cloned().flatten());
            matched.map(|l| m.last_log_index.unwrap_or(0).saturating_sub(l.index))
        };
        let patience = std::time::Duration::from_millis(self.raft.config().election_timeout_max);
        let lag = match self
            .raft
            .wait(Some(patience))
            .metrics(|m| lag_of(m).is_some(), "the target's replication progress")
            .await
        {
            Ok(m) => lag_of(&m),
            Err(_) => lag_of(&self.raft.metrics().borrow_watched()),
        };
        match lag {
            None if !force => {
                return Err(AdminError::Refused(format!(
                    "no replication progress is known for node {to} (does it answer? see `raftcache admin members`); --force to try anyway"
                )))
            }
            Some(lag) if lag > TRANSFER_MAX_LAG && !force => {
                return Err(AdminError::Refused(format!(
                    "node {to} is {lag} entries behind the leader (at most {TRANSFER_MAX_LAG}): wait for it to catch up, or --force"
                )))
            }
            _ => {}
        }
        // Every voter gives up its lease on this leader when told of the transfer, so an
        // election follows whether or not `to` could stand (it waits only a moment for this
        // leader's last entry, and the call telling it may be lost: both seen right after a
        // partition healed). Wait for the leader of a newer term: `to` is done; this node
        // again, try again; another node, the node that asked (`Admin::handle`) asks it.
        let deadline = tokio::time::Instant::now() + self.deadline;
        loop {
            let term = self.raft.metrics().borrow_watched().current_term;
            tracing::info!(
                to,
                term,
                "handing the leadership over (admin transfer-leader)"
            );
            self.raft
                .trigger()
                .transfer_leader(to)
                .await
                .map_err(|e| AdminError::Unavailable(format!("this node has stopped: {e}")))?;
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            let elected = self
                .raft
                .wait(Some(wait))
                .metrics(
                    |m| m.current_term > term && m.current_leader.is_some(),
                    "a leader in a newer term",
                )
                .await
                .map(|m| m.current_leader);
            match elected {
                Ok(Some(leader)) if leader == to => return self.members().await,
                Ok(Some(leader)) if leader == self.id && tokio::time::Instant::now() < deadline => {
                    tracing::info!(to, "this node was elected again: handing over again");
                }
                Ok(leader) => {
                    return Err(AdminError::Unavailable(format!(
                        "node {} was elected instead of node {to}",
                        leader.map_or("?".to_string(), |l| l.to_string())
                    )))
                }
                Err(_) => {
                    return Err(AdminError::Unavailable(format!(
                        "no new leader within the request deadline of {} ms; see `raftcache admin members`",
                        self.deadline.as_millis()
                    )))
                }
            }
        }
    }

    /// Refuses while a change is in progress (a joint configuration not committed yet).
    /// A committed joint configuration with no change running here was left half done by an
    /// earlier leader (openraft's `change_membership` makes its second step only on the leader
    /// that began it): returns its target voters, to finish it.
    fn unfinished(&self) -> Result<Option<BTreeSet<NodeId>>, AdminError> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Err(AdminError::Refused(
                "a membership change is in progress: proposed on this leader and not committed yet (waiting for a quorum of the old and new voters). Wait for it and try again".into(),
            ));
        }
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let joint = metrics.membership_config.membership().get_joint_config();
        let index = metrics.membership_config.log_id().map(|l| l.index);
        let applied = metrics.last_applied.map(|l| l.index);
        if joint.len() > 1 && index <= applied {
            return Ok(joint.last().cloned());
        }
        if joint.len() > 1 {
            let configs: Vec<String> = joint.iter().map(list).collect();
            return Err(AdminError::Refused(format!(
                "a membership change is in progress (voters {}, since log index {}); it finishes once a quorum of both configurations answers. Wait for it and try again",
                configs.join(" -> "),
                index.unwrap_or(0)
            )));
        }
        Ok(None)
    }

    /// Finishes a half-done change: its target voters become the voters; the nodes it would
    /// have dropped stay as learners (remove them with `remove-node`).
    async fn finish(&self, target: BTreeSet<NodeId>) -> Result<(), AdminError> {
        tracing::warn!(voters = %list(&target), "finishing a half-done membership change");
        let raft = self.raft.clone();
        self.wait_committed(async move {
            raft.change_membership(ChangeMembers::ReplaceAllVoters(target), true)
                .await
        })
        .await
    }

    /// The membership now, with each member's reachability and lag.
    pub async fn members(&self) -> Result<MembersView, AdminError> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let probes = membership
            .nodes()
            .map(|(id, node)| self.probe_member(*id, node.clone()));
        let answers = futures::future::join_all(probes).await;
        let last = metrics.last_log_index.unwrap_or(0);
        let matched = metrics.replication.clone().unwrap_or_default();
        let members = answers
            .into_iter()
            .map(|(id, node, info)| MemberView {
                id,
                peer_addr: node.peer_addr.clone(),
                client_addr: match &info {
                    Some(info) if node.client_addr.is_empty() => info.client_addr.clone(),
                    _ => node.client_addr.clone(),
                },
                voter: voters.contains(&id),
                reachable: info.is_some(),
                lag: if id == self.id {
                    Some(0)
                } else {
                    matched
                        .get(&id)
                        .copied()
                        .flatten()
                        .map(|m| last.saturating_sub(m.index))
                },
            })
            .collect();
        Ok(MembersView {
            leader: metrics.current_leader.unwrap_or(self.id),
            last_log_index: last,
            changing: membership.get_joint_config().len() > 1,
            members,
        })
    }

    async fn probe_member(&self, id: NodeId, node: Node) -> (NodeId, Node, Option<NodeInfo>) {
        let info = if id == self.id {
            Some(NodeInfo {
                id,
                client_addr: self.client_addr.clone(),
            })
        } else {
            self.probe(id, &node.peer_addr).await.ok()
        };
        (id, node, info)
    }

    /// Asks the node at `peer_addr` whether it is node `id` (and has it join this cluster).
    async fn probe(&self, id: NodeId, peer_addr: &str) -> Result<NodeInfo, String> {
        self.node_info_call(id, peer_addr, false).await
    }

    /// Tells node `id` (no longer a member) that it was removed, so that it stops serving:
    /// openraft stops sending to a removed node, and a removed learner would never know.
    /// Best effort: a node that does not answer learns nothing (docs/operations.md).
    async fn tell_removed(&self, id: NodeId, node: Option<Node>) {
        let Some(node) = node.filter(|_| id != self.id) else {
            return;
        };
        if let Err(why) = self.node_info_call(id, &node.peer_addr, true).await {
            tracing::warn!(id, why, "could not tell a removed node that it was removed");
        }
    }

    async fn node_info_call(
        &self,
        id: NodeId,
        peer_addr: &str,
        removed: bool,
    ) -> Result<NodeInfo, String> {
        let request = NodeInfoRequest {
            id,
            cluster_id: self.identity_store().cluster_id().unwrap_or_default(),
            removed,
        };
        let timeout = self.probe_timeout;
        let call = self.peers.rpc::<_, Result<NodeInfo, String>>(
            id,
            peer_addr,
            PeerMethod::NodeInfo,
            &request,
            timeout,
        );
        // The socket timeouts bound the answer; this bounds the connect too.
        let answer = tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(PeerError::NoAnswer {
                    addr: peer_addr.to_string(),
                    reason: "timed out".into(),
                })
            });
        answer.map_err(|e| {
            format!(
                "{e} (within the probe timeout of {} ms)",
                timeout.as_millis()
            )
        })?
    }

    /// The nodes that answer now: this leader and every member whose peer port answers.
    async fn reachable(&self) -> BTreeSet<NodeId> {
        self.members()
            .await
            .map(|view| {
                view.members
                    .iter()
                    .filter(|m| m.reachable)
                    .map(|m| m.id)
                    .collect()
            })
            .unwrap_or_else(|_| BTreeSet::from([self.id]))
    }

    /// Checks `change` against the rules (unless `force`) and proposes it.
    async fn make(&self, change: Change, force: bool) -> Result<(), AdminError> {
        tracing::info!(?change, force, "membership change requested");
        let membership = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .clone();
        let voters = target_voters(&self.raft);
        let node = |id: NodeId| membership.get_node(&id).cloned();
        let refused = |m: String| Err(AdminError::Refused(m));
        let new_voters: BTreeSet<NodeId> = match &change {
            Change::AddLearner { id, peer_addr } => {
                return self.add_learner(*id, peer_addr, node(*id), force).await
            }
            Change::Promote { id } if voters.contains(id) => return Ok(()),
            Change::Promote { id } if node(*id).is_none() => {
                return refused(format!(
                    "node {id} is not a member: add it first (add-learner or add-node)"
                ))
            }
            Change::Promote { id } => voters.iter().copied().chain([*id]).collect(),
            Change::Demote { id } if !voters.contains(id) => {
                return refused(format!("node {id} is not a voter"))
            }
            Change::Demote { id } if *id == self.id && !force => {
                return refused(format!(
                    "node {id} is the leader, and openraft keeps a demoted leader leading as a non-voting learner. Move the leadership first (transfer-leader), use remove-node {id} (the leader steps down once its removal commits), or --force to demote it anyway"
                ))
            }
            Change::Remove { id } if node(*id).is_none() => {
                return refused(format!("node {id} is not a member"))
            }
            Change::Demote { id } | Change::Remove { id } => {
                voters.iter().copied().filter(|v| v != id).collect()
            }
            Change::Replace { old, .. } if !voters.contains(old) => {
                return refused(format!("node {old} is not a voter"))
            }
            Change::Replace { new, .. } if node(*new).is_none() => {
                return refused(format!(
                    "node {new} is not a learner: add it first (add-learner)"
                ))
            }
            Change::Replace { old, new } => voters
                .iter()
                .copied()
                .filter(|v| v != old)
                .chain([*new])
                .collect(),
        };
        if !force {
            self.check(&change, &voters, &new_voters).await?;
        }
        self.propose(&change, new_voters).await?;
        match change {
            Change::Remove { id } | Change::Replace { old: id, .. } => {
                self.tell_removed(id, node(id)).await
            }
            _ => {}
        }
        Ok(())
    }

    /// The safety rules: every new voter answers, and a quorum of old and new voters answers.
    async fn check(
        &self,
        change: &Change,
        old: &BTreeSet<NodeId>,
        new: &BTreeSet<NodeId>,
    ) -> Result<(), AdminError> {
        let reachable = self.reachable().await;
        for added in new.difference(old) {
            if !reachable.contains(added) {
                return Err(AdminError::Refused(format!(
                    "node {added} does not answer on its peer address, so making it a voter would raise the quorum with a node that cannot vote; start it first, or use --force"
                )));
            }
        }
        check_quorum(old, new, &reachable)
            .map_err(|why| AdminError::Refused(format!("{change} is refused: {why}")))
    }

    async fn add_learner(
        &self,
        id: NodeId,
        peer_addr: &str,
        existing: Option<Node>,
        force: bool,
    ) -> Result<(), AdminError> {
        if let Some(existing) = existing {
            if existing.peer_addr == peer_addr {
                return Ok(());
            }
            return Err(AdminError::Refused(format!(
                "node {id} is already a member, at {}; node ids are never reused: pick a new id",
                existing.peer_addr
            )));
        }
        let client_addr = match self.probe(id, peer_addr).await {
            Ok(info) => info.client_addr,
            Err(why) if force => {
                tracing::warn!(id, peer_addr, why, "adding a node that does not answer (--force)");
                String::new()
            }
            Err(why) => {
                return Err(AdminError::Refused(format!(
                    "the node at {peer_addr} does not answer as node {id}: {why}. Start it (with --no-bootstrap) first, or use --force"
                )))
            }
        };
        let node = Node {
            peer_addr: peer_addr.to_string(),
            client_addr,
        };
        let raft = self.raft.clone();
        self.wait_committed(async move { raft.add_learner(id, node, false).await })
            .await
    }

    async fn propose(
        &self,
        change: &Change,
        new_voters: BTreeSet<NodeId>,
    ) -> Result<(), AdminError> {
        let (changes, retain) = match change {
            Change::Remove { id } if !target_voters(&self.raft).contains(id) => {
                (ChangeMembers::RemoveNodes(BTreeSet::from([*id])), false)
            }
            Change::Demote { .. } | Change::Promote { .. } => {
                (ChangeMembers::ReplaceAllVoters(new_voters), true)
            }
            _ => (ChangeMembers::ReplaceAllVoters(new_voters), false),
        };
        let raft = self.raft.clone();
        self.wait_committed(async move { raft.change_membership(changes, retain).await })
            .await
    }

    /// Proposes a membership change and waits (up to the deadline) for it to commit. The
    /// proposal runs in its own task: openraft's `change_membership` proposes the joint
    /// configuration, waits for it to commit, then proposes the final one, and a caller that
    /// gave up must not leave the change stuck half way.
    async fn wait_committed<T: Send + 'static>(
        &self,
        proposed: impl std::future::Future<Output = Result<T, WriteError>> + Send + 'static,
    ) -> Result<(), AdminError> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let running = InFlight(self.in_flight.clone());
        let task = tokio::spawn(async move {
            let _running = running;
            proposed.await
        });
        match tokio::time::timeout(self.deadline, task).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(e))) => Err(write_error(e)),
            Ok(Err(e)) => Err(AdminError::Unavailable(format!("the change failed: {e}"))),
            Err(_) => Err(AdminError::Unavailable(format!(
                "the change was proposed but not committed within the request deadline of {} ms (no quorum of the old and new voters?); it completes by itself if a quorum comes back. See `raftcache admin members`",
                self.deadline.as_millis()
            ))),
        }
    }
}

/// Counts one running proposal for as long as it lives.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn write_error(e: WriteError) -> AdminError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => AdminError::NotLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(p),
        )) => AdminError::Refused(format!(
            "a membership change is in progress ({p}); wait for it and try again"
        )),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(other)) => {
            AdminError::Refused(other.to_string())
        }
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => AdminError::Unavailable(
            "the change's log entry was discarded by a change of leader: check `admin members` before trying again".into(),
        ),
        RaftError::APIError(e @ ClientWriteError::PreconditionFailed(_)) => {
            AdminError::Refused(e.to_string())
        }
        RaftError::Fatal(f) => AdminError::Unavailable(format!("this node has stopped: {f}")),
    }
}
