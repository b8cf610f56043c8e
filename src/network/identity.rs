//! Who a peer message is from and for, checked on both ends of every peer call.
//!
//! Two things can make a node that answers on a member's address the wrong one to talk to:
//!
//! - **another cluster**: a node whose data dir was wiped and that was started again with no
//!   flags bootstraps a one-node cluster of its own (a random cluster id), on the address the
//!   old cluster still records for it. Without a check the old leader replicated into it and it
//!   kept its own entry too: the two clusters' data mixed on one node.
//! - **the same member without its state**: a member whose data dir was wiped and that was
//!   started again with the same `--initial-cluster` flags has the same cluster id (it is
//!   derived from the flags) but has forgotten its log and its vote. Counted as a voter, it can
//!   vote twice in a term, or help elect a leader that misses committed entries.
//!
//! So every data dir has an *incarnation*, a random id written when the data dir is created
//! (`store::Identity::incarnation`), and every peer call carries a `CallHeader`: the sender's
//! cluster id, node id and incarnation, the node id it means to reach and the incarnation it
//! knows that node by. Every answer carries the answering node's stamp, or why it refused. Each
//! node remembers the incarnation of every member it has heard from (`peers.json` in its data
//! dir, written durably before the first message is accepted), and of every member another
//! member told it of: a call also carries the incarnations its sender knows, so a follower
//! knows the other followers from the leader's heartbeats though it has never called them (a
//! member it has heard from itself keeps the incarnation it heard). It refuses a member that comes
//! back with another: that node neither votes nor takes entries until an operator removes it
//! from the membership (which forgets its record on every member) and adds it again. A node
//! that is not a member (yet) is not remembered: the leader's probe before adding a node
//! reaches it as a stranger.
//!
//! The cluster id says which cluster a node was born in; the incarnation tells a member from a
//! wiped node started again in its place. Two clusters born from the same flags share a cluster
//! id, but not their members' incarnations: a member of one is refused by the other as soon as
//! they have talked once.

use openraft::async_runtime::watch::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::store::ClusterIdentity;
use crate::types::{LogId, NodeId, Raft};

/// File of a data dir that records the incarnation of every member this node has heard from.
pub const PEERS_FILE: &str = "peers.json";
/// A refusal is logged at most once per this interval per peer and direction.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Who sent a message: the node and the data dir it runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Empty while the node waits to be added to a cluster (`--join`, `--no-bootstrap`).
    pub cluster_id: String,
    pub node_id: NodeId,
    pub incarnation: String,
}

/// What precedes every peer call's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallHeader {
    pub from: Stamp,
    /// The node the caller means to reach.
    pub to: NodeId,
    /// The incarnation the caller knows that node by, if it has heard from it.
    pub to_incarnation: Option<String>,
    /// The incarnation of every member the caller knows, so that a member learns those it has
    /// never heard from itself (a follower rarely calls another follower).
    pub known: BTreeMap<NodeId, String>,
    /// The membership config the caller's `known` goes with: a member takes what a caller
    /// knows only from one whose membership is not older than its own, so that a lagging node
    /// never passes on the incarnation of a member removed (and added again) since.
    pub known_as_of: Option<LogId>,
}

/// What precedes every peer answer's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ReplyHeader {
    /// The call was carried out; its answer follows.
    Accepted(Stamp),
    /// The call was refused before anything was done, for this reason; nothing follows.
    Refused(String),
}

/// Which checks a call must pass beyond the stamp of its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Any call of a member of this node's cluster.
    Member,
    /// The leader's probe before it adds a node: it reaches a node that has no cluster yet,
    /// and adopts it (`membership::Admin::node_info`).
    Probe,
}

/// This node's identity and what it knows of its peers' incarnations.
pub struct PeerIdentities {
    own_id: NodeId,
    identity: Arc<ClusterIdentity>,
    incarnation: String,
    /// The incarnation of each member heard from, as written in `peers.json`.
    known: Mutex<BTreeMap<NodeId, String>>,
    dir: PathBuf,
    /// The membership view, once Raft runs; before that every peer counts as a member.
    raft: OnceLock<Raft>,
    /// When each refusal (peer, what) was last logged.
    logged: Mutex<BTreeMap<(NodeId, &'static str), Instant>>,
}

impl PeerIdentities {
    /// Loads what the data dir `dir` knows of its peers.
    pub fn load(
        own_id: NodeId,
        identity: Arc<ClusterIdentity>,
        dir: PathBuf,
    ) -> std::io::Result<Arc<Self>> {
        let known = match std::fs::read(dir.join(PEERS_FILE)) {
            Ok(raw) => serde_json::from_slice(&raw).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        let incarnation = identity.incarnation();
        Ok(Arc::new(Self {
            own_id,
            identity,
            incarnation,
            known: Mutex::new(known),
            dir,
            raft: OnceLock::new(),
            logged: Mutex::new(BTreeMap::new()),
        }))
    }

    /// Gives the membership view, and forgets the incarnation of every node that leaves the
    /// membership from now on (so that an operator can add it again, with a fresh data dir).
    pub fn watch_membership(self: &Arc<Self>, raft: &Raft) {
        let _ = self.raft.set(raft.clone());
        let this = Arc::downgrade(self);
        let mut metrics = raft.metrics();
        tokio::spawn(async move {
            loop {
                // The metrics' first value, before Raft has read its log, has no membership at
                // all: forgetting by it would forget every peer.
                let members: Option<BTreeSet<NodeId>> = {
                    let metrics = metrics.borrow_and_update();
                    let config = &metrics.membership_config;
                    config
                        .log_id()
                        .is_some()
                        .then(|| config.membership().nodes().map(|(id, _)| *id).collect())
                };
                let Some(this) = this.upgrade() else { return };
                if let Some(members) = members {
                    this.forget_all_but(&members);
                }
                drop(this);
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// This node's id.
    pub fn own_id(&self) -> NodeId {
        self.own_id
    }

    /// This node's stamp, as its answers carry it.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            cluster_id: self.identity.cluster_id().unwrap_or_default(),
            node_id: self.own_id,
            incarnation: self.incarnation.clone(),
        }
    }

    /// The header of a call to node `to`.
    pub fn call_header(&self, to: NodeId) -> CallHeader {
        let known = self.known.lock().expect("peers lock").clone();
        CallHeader {
            from: self.stamp(),
            to,
            to_incarnation: known.get(&to).cloned(),
            known,
            known_as_of: self.membership_log_id(),
        }
    }

    /// Checks an incoming call; Err is the refusal sent back (and logged here).
    pub fn admit(&self, header: &CallHeader, admission: Admission) -> Result<(), String> {
        let from = header.from.node_id;
        if header.to != self.own_id {
            return self.refuse(from, "misaddressed", format!(
                "this is node {}, not node {}: the peer address the cluster records for node {} reaches another node",
                self.own_id, header.to, header.to
            ));
        }
        match self.identity.cluster_id() {
            None if admission == Admission::Probe => {}
            // The caller knows an incarnation of this node, so it was a member: it lost its
            // data dir and waits to be added again (refused as such below).
            None if header.to_incarnation.is_some() => {}
            None => {
                return self.refuse(from, "no cluster yet", format!(
                    "node {} has not been added to a cluster yet: it answers only the leader's probe before `admin add-node`",
                    self.own_id
                ))
            }
            Some(own) if own != header.from.cluster_id => {
                return self.refuse(from, "other cluster", format!(
                    "node {} belongs to cluster {own}; node {from} belongs to cluster {}: they are different clusters (was a data dir wiped, and the node started again?)",
                    self.own_id,
                    describe_cluster(&header.from.cluster_id)
                ))
            }
            Some(_) => {}
        }
        if let Some(expected) = &header.to_incarnation {
            if *expected != self.incarnation {
                return self.refuse(from, "this node lost its state", format!(
                    "node {own} came back without the state it had (its data dir is new: incarnation {}, the cluster knows {expected}); it takes no part until an operator removes it and adds it again: `raftcache admin remove-node {own}`, then start it with an empty data dir and `--no-bootstrap` and run `raftcache admin add-node {own} PEER_ADDR`",
                    self.incarnation,
                    own = self.own_id,
                ));
            }
        }
        if admission == Admission::Member {
            self.check_peer(&header.from)?;
            if header.known_as_of >= self.membership_log_id() {
                self.learn(from, &header.known)?;
            }
        }
        Ok(())
    }

    /// Checks the stamp on an answer from node `to`; Err says why the answer is not taken.
    pub fn check_answer(&self, to: NodeId, stamp: &Stamp) -> Result<(), String> {
        if stamp.node_id != to {
            return self.refuse(
                to,
                "misaddressed",
                format!(
                    "node {to}'s peer address is answered by node {}",
                    stamp.node_id
                ),
            );
        }
        if let Some(own) = self.identity.cluster_id() {
            if own != stamp.cluster_id {
                return self.refuse(
                    to,
                    "other cluster",
                    format!(
                        "node {to} answers for cluster {}, not this node's cluster {own}",
                        describe_cluster(&stamp.cluster_id)
                    ),
                );
            }
        }
        self.check_peer(stamp)
    }

    /// Notes a refusal received from node `to` (logged, at most once per interval).
    pub fn refused_by(&self, to: NodeId, addr: &str, reason: &str) {
        if self.should_log(to, "refused by") {
            tracing::error!(peer = to, addr, reason, "a peer refused this node's call");
        }
    }

    /// A member's incarnation must be the one remembered; the first one heard is remembered.
    fn check_peer(&self, stamp: &Stamp) -> Result<(), String> {
        let id = stamp.node_id;
        if !self.is_member(id) {
            return Ok(());
        }
        let mut known = self.known.lock().expect("peers lock");
        match known.get(&id) {
            Some(incarnation) if *incarnation == stamp.incarnation => Ok(()),
            Some(incarnation) => {
                let was = incarnation.clone();
                drop(known);
                self.refuse(id, "peer lost its state", format!(
                    "node {id} came back without the state it had (a new data dir: incarnation {}, was {was}); it neither votes nor takes entries until an operator removes it and adds it again: `raftcache admin remove-node {id}`, then start it with an empty data dir and `--no-bootstrap` and run `raftcache admin add-node {id} PEER_ADDR`",
                    stamp.incarnation
                ))
            }
            None => {
                known.insert(id, stamp.incarnation.clone());
                self.write(&known).map_err(|e| {
                    format!(
                        "node {} cannot record the incarnation of node {id}: {e}",
                        self.own_id
                    )
                })?;
                tracing::info!(peer = id, incarnation = %stamp.incarnation, "first heard from a member: its incarnation is recorded");
                Ok(())
            }
        }
    }

    /// Records what member `from` knows of the other members' incarnations, for those this
    /// node has not heard from: what it heard itself is never replaced.
    fn learn(&self, from: NodeId, told: &BTreeMap<NodeId, String>) -> Result<(), String> {
        let mut known = self.known.lock().expect("peers lock");
        let new: Vec<(NodeId, String)> = told
            .iter()
            .filter(|(id, _)| **id != self.own_id && **id != from && !known.contains_key(id))
            .filter(|(id, _)| self.is_member(**id))
            .map(|(id, incarnation)| (*id, incarnation.clone()))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut updated = known.clone();
        updated.extend(new.iter().cloned());
        self.write(&updated).map_err(|e| {
            format!(
                "node {} cannot record the incarnations node {from} told it: {e}",
                self.own_id
            )
        })?;
        *known = updated;
        drop(known);
        for (id, incarnation) in new {
            tracing::info!(peer = id, %incarnation, told_by = from, "a member's incarnation is recorded, as another member knows it");
        }
        Ok(())
    }

    /// The log id of this node's current membership config (None before Raft runs).
    fn membership_log_id(&self) -> Option<LogId> {
        let raft = self.raft.get()?;
        let metrics = raft.metrics();
        let log_id = *metrics.borrow_watched().membership_config.log_id();
        log_id
    }

    fn is_member(&self, id: NodeId) -> bool {
        match self.raft.get() {
            None => true,
            Some(raft) => raft
                .metrics()
                .borrow_watched()
                .membership_config
                .membership()
                .get_node(&id)
                .is_some(),
        }
    }

    fn forget_all_but(&self, members: &BTreeSet<NodeId>) {
        let mut known = self.known.lock().expect("peers lock");
        let before = known.len();
        known.retain(|id, _| members.contains(id));
        if known.len() != before {
            if let Err(e) = self.write(&known) {
                tracing::error!(error = %e, "cannot record the incarnations of the members");
            }
        }
    }

    fn write(&self, known: &BTreeMap<NodeId, String>) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(known).map_err(std::io::Error::other)?;
        crate::store::write_durably(&self.dir, PEERS_FILE, &json)
    }

    /// Logs a refusal of `peer` (at most once per interval per kind) and returns it as Err.
    pub(crate) fn refuse<T>(
        &self,
        peer: NodeId,
        what: &'static str,
        reason: String,
    ) -> Result<T, String> {
        if self.should_log(peer, what) {
            tracing::error!(peer, %reason, "peer message refused");
        }
        Err(reason)
    }

    fn should_log(&self, peer: NodeId, what: &'static str) -> bool {
        let mut logged = self.logged.lock().expect("log lock");
        let now = Instant::now();
        match logged.get(&(peer, what)) {
            Some(at) if now.duration_since(*at) < REFUSAL_LOG_INTERVAL => false,
            _ => {
                logged.insert((peer, what), now);
                true
            }
        }
    }
}

fn describe_cluster(id: &str) -> String {
    if id.is_empty() {
        "none yet".into()
    } else {
        id.to_string()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::integrity::{new_incarnation, Identity, PENDING_CLUSTER_ID};

    const CLUSTER: &str = "c0ffee";

    /// A node's identities on a fresh data dir of its own (no Raft yet: every peer counts as a
    /// member).
    pub(crate) fn node(id: NodeId) -> (tempfile::TempDir, Arc<PeerIdentities>) {
        node_of(id, CLUSTER, true)
    }

    /// A node's identities on a fresh data dir that waits to be added (`--no-bootstrap`).
    fn waiting_node(id: NodeId) -> (tempfile::TempDir, Arc<PeerIdentities>) {
        node_of(id, PENDING_CLUSTER_ID, false)
    }

    fn node_of(
        id: NodeId,
        cluster_id: &str,
        member: bool,
    ) -> (tempfile::TempDir, Arc<PeerIdentities>) {
        let dir = tempfile::tempdir().unwrap();
        Identity {
            format: crate::store::FORMAT_VERSION,
            node_id: id,
            cluster_id: cluster_id.into(),
            member,
            removed: false,
            incarnation: new_incarnation(),
            restored_from: None,
        }
        .write(dir.path())
        .unwrap();
        let identity = Arc::new(ClusterIdentity::load(dir.path()).unwrap());
        let identities = PeerIdentities::load(id, identity, dir.path().to_path_buf()).unwrap();
        (dir, identities)
    }

    /// `from` calls `to`: the call is checked as `to` checks a member's call, and `from`
    /// checks the answer.
    fn call(from: &PeerIdentities, to: &PeerIdentities) -> Result<(), String> {
        to.admit(&from.call_header(to.own_id()), Admission::Member)?;
        from.check_answer(to.own_id(), &to.stamp())
    }

    /// Panics unless a call between the two fails as one to or from a wiped node.
    fn assert_wiped_refused(from: &PeerIdentities, to: &PeerIdentities) {
        let refused = call(from, to).unwrap_err();
        assert!(
            refused.contains("came back without the state it had"),
            "{refused}"
        );
    }

    #[test]
    fn a_member_refuses_a_wiped_peer_it_has_talked_to() {
        let (_d1, one) = node(1);
        let (_d2, two) = node(2);
        call(&one, &two).unwrap();
        let (_d2b, wiped) = node(2);
        assert_wiped_refused(&wiped, &one);
        assert_wiped_refused(&one, &wiped);
    }

    #[test]
    fn a_member_refuses_a_wiped_peer_it_never_talked_to_once_another_member_called_it() {
        // The leader (1) has heard from both followers; the followers never called each other.
        let (_d1, leader) = node(1);
        let (_d2, two) = node(2);
        let (_d3, three) = node(3);
        call(&leader, &two).unwrap();
        call(&leader, &three).unwrap();
        // Node 2 comes back on a wiped data dir: node 3 must know it by its old incarnation.
        let (_d2b, wiped) = node(2);
        assert_wiped_refused(&wiped, &three);
        assert_wiped_refused(&three, &wiped);
    }

    #[test]
    fn what_another_member_says_never_replaces_what_this_node_heard_itself() {
        let (_d1, one) = node(1);
        let (_d2, two) = node(2);
        let (_d3, three) = node(3);
        call(&three, &two).unwrap();
        // Node 2 is wiped; node 1 first hears of it after the wipe and passes that on to 3.
        let (_d2b, wiped) = node(2);
        call(&wiped, &one).unwrap();
        call(&one, &three).unwrap();
        assert_wiped_refused(&wiped, &three);
    }

    #[test]
    fn a_member_back_on_a_wiped_data_dir_waiting_to_be_added_is_refused_as_one_that_lost_its_state()
    {
        // Node 2 joined with `--no-bootstrap` and `add-node`; wiped, it starts the same way and
        // has no cluster yet. The leader's calls must say what happened, not that it was
        // never added.
        let (_d1, leader) = node(1);
        let (_d2, two) = node(2);
        call(&leader, &two).unwrap();
        let (_d2b, wiped) = waiting_node(2);
        assert_wiped_refused(&leader, &wiped);
        // A node that no member knows yet still waits for the leader's probe.
        let (_d3, new) = waiting_node(3);
        let refused = call(&leader, &new).unwrap_err();
        assert!(
            refused.contains("has not been added to a cluster yet"),
            "{refused}"
        );
        new.admit(&leader.call_header(3), Admission::Probe).unwrap();
    }
}
