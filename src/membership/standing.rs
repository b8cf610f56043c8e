//! Where this node stands in its cluster's membership: waiting to be added, a member, or
//! removed. A removed node refuses client requests with a message saying so, and `status`
//! reports it.
//!
//! "Removed" needs memory: a node that is catching up after being added replays older
//! membership entries that do not list it yet, and it must not call itself removed then. So
//! the first time a node sees itself in a membership it records that in its identity file
//! (`ClusterIdentity::mark_member`). From then on it is removed when its membership's target
//! configuration lists it neither as voter nor as learner, and either
//! - the membership is final (not joint) and no longer lists it at all (a removed leader sees
//!   this: it commits its own removal), or
//! - the membership is joint and the leader has stopped sending to it for `grace`. openraft
//!   stops replicating to a removed node once the final configuration is appended, so a
//!   removed follower never sees more than the joint one; a demoted node sees the same joint
//!   configuration, but keeps hearing from the leader and soon becomes a learner.
//!
//! A removed learner sees nothing at all (no joint configuration for learners), so the leader
//! also tells every node it removes, over the peer port; the node records it in its identity
//! file. Being added again (`--join`, `add-learner`) clears it.

use openraft::async_runtime::watch::WatchReceiver;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::ClusterIdentity;
use crate::types::{NodeId, Raft, StoredMembership};

/// Where the target configuration leaves this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    /// No membership known yet.
    Unknown,
    /// Listed as a voter or a learner.
    Listed,
    /// Not in the target configuration, but the membership is joint: leaving or demoted.
    Leaving,
    /// Not in the membership at all.
    Gone,
}

/// This node's standing, kept up to date from openraft's metrics and the peer service.
pub struct Standing {
    id: NodeId,
    identity: Arc<ClusterIdentity>,
    /// The latest `Listing`, as a number (`listing_code`).
    listing: AtomicU64,
    /// Milliseconds since `epoch` when the leader last sent append-entries here.
    heard_ms: AtomicU64,
    epoch: Instant,
    /// How long a leaving node may go without hearing from the leader before it counts as
    /// removed.
    grace: Duration,
    /// Whether "removed" was logged already.
    logged: AtomicBool,
}

fn listing_code(listing: Listing) -> u64 {
    match listing {
        Listing::Unknown | Listing::Listed => 0,
        Listing::Leaving => 1,
        Listing::Gone => 2,
    }
}

impl Standing {
    /// Starts watching `raft`'s membership for node `id`; `grace` as in the module doc.
    pub fn watch(
        id: NodeId,
        raft: Raft,
        identity: Arc<ClusterIdentity>,
        grace: Duration,
    ) -> Arc<Self> {
        let standing = Arc::new(Self {
            id,
            identity,
            listing: AtomicU64::new(0),
            heard_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            grace,
            logged: AtomicBool::new(false),
        });
        let watcher = standing.clone();
        let mut metrics = raft.metrics();
        let mut seen = metrics.borrow_watched().membership_config.clone();
        standing.update(&seen);
        tokio::spawn(async move {
            while metrics.changed().await.is_ok() {
                // Metrics change with every commit; the membership rarely does.
                let changed = {
                    let now = metrics.borrow_watched();
                    (now.membership_config.log_id() != seen.log_id()
                        || now.membership_config.membership() != seen.membership())
                    .then(|| now.membership_config.clone())
                };
                if let Some(membership) = changed {
                    watcher.update(&membership);
                    seen = membership;
                }
            }
        });
        standing
    }

    fn update(&self, membership: &StoredMembership) {
        let listing = listing(membership, self.id);
        tracing::debug!(?listing, %membership, "membership seen");
        // Stored before `mark_member`, so that `removed` never sees a member mark with a
        // listing older than the one that made it.
        self.listing.store(listing_code(listing), Ordering::SeqCst);
        if listing == Listing::Listed {
            if let Err(e) = self.identity.mark_member() {
                tracing::error!(error = %e, "cannot record membership in the identity file");
            }
        }
    }

    /// Called for every append-entries from a leader.
    pub fn heard_from_leader(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.heard_ms.store(now, Ordering::Relaxed);
    }

    /// How long since the leader last sent append-entries here (since this node started, if
    /// it never did).
    pub fn leader_silent_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.heard_ms.load(Ordering::Relaxed)))
    }

    /// Whether this node was removed from its cluster.
    pub fn removed(&self) -> bool {
        if self.identity.told_removed() {
            return true;
        }
        if !self.identity.was_member() {
            return false;
        }
        let removed = match self.listing.load(Ordering::SeqCst) {
            0 => false,
            1 => {
                let silent_ms = (self.epoch.elapsed().as_millis() as u64)
                    .saturating_sub(self.heard_ms.load(Ordering::Relaxed));
                silent_ms > self.grace.as_millis() as u64
            }
            _ => true,
        };
        if removed && !self.logged.swap(true, Ordering::SeqCst) {
            tracing::warn!(id = self.id, "this node was removed from the cluster");
        }
        removed
    }

    /// Whether this node has not been added to any cluster yet (started with `--join` or
    /// `--no-bootstrap`, and no leader has probed it).
    pub fn waiting(&self) -> bool {
        self.identity.cluster_id().is_none()
    }

    /// `Unavailable` for a client request this node must not serve: it was removed, or it is
    /// not in a cluster yet.
    pub fn refusal(&self) -> Option<String> {
        if self.removed() {
            return Some(self.removed_message());
        }
        self.waiting().then(|| {
            format!(
                "node {} is not a member of any cluster yet: it waits to be added (raftcache admin add-node)",
                self.id
            )
        })
    }

    /// The message a removed node answers every client request with.
    pub fn removed_message(&self) -> String {
        format!(
            "node {} was removed from the cluster and serves no requests: use another node (to bring this node back, restart it with --join and a member's client address)",
            self.id
        )
    }

    pub fn identity(&self) -> &ClusterIdentity {
        &self.identity
    }
}

/// Whether the target configuration of `membership` lists `id` as a voter or a learner.
pub fn lists(membership: &StoredMembership, id: NodeId) -> bool {
    listing(membership, id) == Listing::Listed
}

fn listing(membership: &StoredMembership, id: NodeId) -> Listing {
    if membership.log_id().is_none() {
        // No membership loaded yet (openraft's first metrics, before it read the log): this
        // says nothing about this node.
        return Listing::Unknown;
    }
    let membership = membership.membership();
    let voter = membership
        .get_joint_config()
        .last()
        .is_some_and(|config| config.contains(&id));
    if voter || membership.learner_ids().any(|l| l == id) {
        Listing::Listed
    } else if membership.get_node(&id).is_some() {
        Listing::Leaving
    } else {
        Listing::Gone
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use crate::types::{CommittedLeaderId, LogId, Membership};
    use openraft::vote::RaftLeaderId;

    use super::*;
    use crate::types::Node;

    fn stored(configs: Vec<Vec<NodeId>>, nodes: &[NodeId]) -> StoredMembership {
        let configs: Vec<BTreeSet<NodeId>> = configs
            .into_iter()
            .map(|c| c.into_iter().collect())
            .collect();
        let nodes: BTreeMap<NodeId, Node> = nodes.iter().map(|n| (*n, Node::default())).collect();
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), 5);
        StoredMembership::new(Some(log_id), Membership::new(configs, nodes).unwrap())
    }

    #[test]
    fn a_node_reads_its_listing_from_the_target_configuration() {
        assert_eq!(listing(&StoredMembership::default(), 1), Listing::Unknown);
        let plain = stored(vec![vec![1, 2]], &[1, 2, 3]);
        assert_eq!(listing(&plain, 2), Listing::Listed);
        assert_eq!(listing(&plain, 3), Listing::Listed, "a learner is listed");
        assert_eq!(listing(&plain, 4), Listing::Gone);
        let joint = stored(vec![vec![1, 2, 3], vec![1, 2]], &[1, 2, 3]);
        assert_eq!(listing(&joint, 3), Listing::Leaving);
        assert_eq!(listing(&joint, 1), Listing::Listed);
    }
}
