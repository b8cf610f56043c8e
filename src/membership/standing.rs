//! Where this node stands in its cluster's membership: waiting to be added, a member, or
//! removed. A removed node refuses client requests with a message saying so, and `status`
//! reports it.
//!
//! "Removed" needs memory: a node that is catching up after being added replays older
//! membership entries that do not list it yet, and it must not call itself removed then. So
//! the first time a node sees itself in a membership it records that in its identity file
//! (`ClusterIdentity::mark_member`); from then on, a membership whose target configuration
//! lists it neither as voter nor as learner means it was removed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::store::ClusterIdentity;
use crate::types::{NodeId, Raft, StoredMembership};

/// This node's standing, kept up to date from openraft's metrics.
pub struct Standing {
    id: NodeId,
    identity: Arc<ClusterIdentity>,
    removed: AtomicBool,
}

impl Standing {
    /// Starts watching `raft`'s membership for node `id`.
    pub fn watch(id: NodeId, raft: Raft, identity: Arc<ClusterIdentity>) -> Arc<Self> {
        let standing = Arc::new(Self {
            id,
            identity,
            removed: AtomicBool::new(false),
        });
        let watcher = standing.clone();
        let mut metrics = raft.metrics();
        standing.update(&metrics.borrow().membership_config.clone());
        tokio::spawn(async move {
            while metrics.changed().await.is_ok() {
                let membership = metrics.borrow().membership_config.clone();
                watcher.update(&membership);
            }
        });
        standing
    }

    fn update(&self, membership: &StoredMembership) {
        let listed = lists(membership, self.id);
        if listed {
            if let Err(e) = self.identity.mark_member() {
                tracing::error!(error = %e, "cannot record membership in the identity file");
            }
        }
        let removed = !listed && self.identity.was_member();
        if removed && !self.removed.swap(true, Ordering::SeqCst) {
            tracing::warn!(id = self.id, "this node was removed from the cluster");
        } else if !removed {
            self.removed.store(false, Ordering::SeqCst);
        }
    }

    /// Whether this node was removed from its cluster.
    pub fn removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
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
            "node {} was removed from the cluster and serves no requests: use another node (to bring this machine back, start it as a new node with a new id and an empty data dir)",
            self.id
        )
    }

    pub fn identity(&self) -> &ClusterIdentity {
        &self.identity
    }
}

/// Whether the target configuration of `membership` lists `id` as a voter or a learner.
pub fn lists(membership: &StoredMembership, id: NodeId) -> bool {
    let membership = membership.membership();
    let voter = membership
        .get_joint_config()
        .last()
        .is_some_and(|config| config.contains(&id));
    voter || membership.learner_ids().any(|l| l == id)
}
