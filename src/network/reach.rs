//! Whether the followers can reach the leader, seen from what arrives on the leader's own peer
//! port.
//!
//! Raft only sees the leader's side of each link: the leader calls its followers, and their
//! answers come back on the connection it opened. A one-way partition that drops everything
//! the followers send to the leader's port (a firewall rule, a broken route) leaves that side
//! healthy, so openraft's leader keeps its quorum, its term and its lease, while every write a
//! follower forwards and every read index it asks for fails, for as long as the cut lasts.
//!
//! So every voter that follows calls its leader at least once per heartbeat interval (a
//! `leader_check`, skipped when another call to the leader was answered within the interval),
//! and the leader notes who called it. A leader that a quorum still answers but that, for
//! `cut_after`, has not been called by enough voters to make a quorum with itself hands its
//! leadership to the most caught-up voter (openraft's leader transfer): the new leader is one
//! that the others can call. A leader that no quorum answers is left to openraft's
//! check-quorum, which stops its writes once its lease lapses (handing over would not help:
//! seen with a membership change stuck on dead nodes, where it only made leaders come and go).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;
use openraft::ServerState;

use super::{peer_addr, PeerClients, PeerMethod};
use crate::types::{NodeId, Raft};

/// When each node last called this one on its peer port (a call that was admitted).
#[derive(Debug, Default)]
pub struct Inbound {
    seen: Mutex<HashMap<NodeId, Instant>>,
}

impl Inbound {
    /// Node `from` called, now.
    pub fn heard(&self, from: NodeId) {
        self.seen
            .lock()
            .expect("inbound lock")
            .insert(from, Instant::now());
    }

    /// Whether node `from` called within `within`.
    fn heard_within(&self, from: NodeId, within: Duration) -> bool {
        let seen = self.seen.lock().expect("inbound lock");
        seen.get(&from).is_some_and(|at| at.elapsed() <= within)
    }
}

/// Whether `reached` (with the leader itself) holds a majority of every voter set of the
/// (possibly joint) configuration.
fn quorum_reaches(configs: &[BTreeSet<NodeId>], reached: &BTreeSet<NodeId>) -> bool {
    configs
        .iter()
        .all(|voters| voters.iter().filter(|v| reached.contains(v)).count() * 2 > voters.len())
}

/// Watches the links to and from the leader, on every node, until the node stops.
pub struct ReachWatch {
    pub id: NodeId,
    pub raft: Raft,
    pub peers: Arc<PeerClients>,
    pub inbound: Arc<Inbound>,
    /// How often a follower calls its leader, and the leader checks who called.
    pub interval: Duration,
    /// How long a leader goes without a quorum of callers before it hands over.
    pub cut_after: Duration,
}

impl ReachWatch {
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut leading_since: Option<Instant> = None;
            // When each voter became one, as this node saw it: a voter added less than
            // `cut_after` ago has had no time to call yet, and counts as reached.
            let mut voter_since: HashMap<NodeId, Instant> = HashMap::new();
            let metrics = self.raft.metrics();
            loop {
                tokio::time::sleep(self.interval).await;
                let (state, leader, vote, configs, voter) = {
                    let m = metrics.borrow_watched();
                    if m.running_state.is_err() || m.state == ServerState::Shutdown {
                        return;
                    }
                    let stored = m.membership_config.clone();
                    let membership = stored.membership();
                    let configs = membership.get_joint_config().clone();
                    let voter = membership.voter_ids().any(|v| v == self.id);
                    (m.state, m.current_leader, m.vote, configs, voter)
                };
                if state != ServerState::Leader {
                    leading_since = None;
                    if let Some(leader) = leader.filter(|l| *l != self.id && voter) {
                        self.call_leader(leader, vote).await;
                    }
                    continue;
                }
                let voters: BTreeSet<NodeId> = configs.iter().flatten().copied().collect();
                voter_since.retain(|v, _| voters.contains(v));
                for v in &voters {
                    voter_since.entry(*v).or_insert_with(Instant::now);
                }
                let since = *leading_since.get_or_insert_with(Instant::now);
                if since.elapsed() < self.cut_after {
                    continue;
                }
                let mut reached: BTreeSet<NodeId> = configs
                    .iter()
                    .flatten()
                    .copied()
                    .filter(|v| {
                        self.inbound.heard_within(*v, self.cut_after)
                            || voter_since[v].elapsed() < self.cut_after
                    })
                    .collect();
                reached.insert(self.id);
                // Only the asymmetric case: a quorum answers this leader's calls right now (so
                // Raft sees nothing wrong) while no quorum has called it for `cut_after`.
                // Without a quorum either way there is no one to hand over to (a membership
                // change stuck on dead nodes): leave it to check-quorum.
                let mut answering: BTreeSet<NodeId> = configs
                    .iter()
                    .flatten()
                    .copied()
                    .filter(|v| self.peers.answered_within(*v, 2 * self.interval))
                    .collect();
                answering.insert(self.id);
                if !quorum_reaches(&configs, &answering) || quorum_reaches(&configs, &reached) {
                    continue;
                }
                self.hand_over(&configs, &reached).await;
                leading_since = Some(Instant::now());
            }
        })
    }

    /// A follower's call to its leader, unless another call was answered within the interval.
    async fn call_leader(&self, leader: NodeId, vote: crate::types::Vote) {
        if self.peers.answered_within(leader, self.interval) {
            return;
        }
        let Some(addr) = peer_addr(&self.raft, leader) else {
            return;
        };
        let _ = self
            .peers
            .rpc::<_, bool>(leader, &addr, PeerMethod::LeaderCheck, &vote, self.interval)
            .await;
    }

    /// Hands the leadership to the most caught-up voter, when no quorum of voters has called
    /// this leader for `cut_after`.
    async fn hand_over(&self, configs: &[BTreeSet<NodeId>], reached: &BTreeSet<NodeId>) {
        let matched = self
            .raft
            .metrics()
            .borrow_watched()
            .replication
            .clone()
            .unwrap_or_default();
        let target = configs
            .iter()
            .flatten()
            .filter(|v| **v != self.id)
            .max_by_key(|v| matched.get(v).cloned().flatten().map(|l| l.index));
        let Some(target) = target.copied() else {
            return;
        };
        let callers: Vec<String> = reached.iter().map(|id| id.to_string()).collect();
        tracing::warn!(
            target,
            called_by = %callers.join(","),
            silent_for_ms = self.cut_after.as_millis() as u64,
            "no quorum of voters has reached this leader's peer port: handing the leadership to a voter they can reach"
        );
        if let Err(e) = self.raft.trigger().transfer_leader(target).await {
            tracing::warn!(error = %e, "leader transfer failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_quorum_of_every_configuration_is_needed() {
        let three = vec![set(&[1, 2, 3])];
        assert!(quorum_reaches(&three, &set(&[1, 2])));
        assert!(!quorum_reaches(&three, &set(&[1])));
        let joint = vec![set(&[1, 2, 3]), set(&[1, 4, 5])];
        assert!(
            !quorum_reaches(&joint, &set(&[1, 2])),
            "only the old config"
        );
        assert!(quorum_reaches(&joint, &set(&[1, 2, 4])));
    }

    #[test]
    fn a_caller_counts_only_within_the_window() {
        let inbound = Inbound::default();
        inbound.heard(2);
        assert!(inbound.heard_within(2, Duration::from_secs(5)));
        assert!(!inbound.heard_within(3, Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!inbound.heard_within(2, Duration::from_millis(5)));
    }
}
