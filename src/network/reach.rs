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
//! that the others can call. A voter that has answered the leader for less than `cut_after`
//! (just added, or back after a crash or a cut) has had no time to call, and counts as a
//! caller: otherwise a follower restarting under a stuck joint change set off a hand-over. A
//! leader that no quorum answers is left to openraft's check-quorum, which stops its writes
//! once its lease lapses (handing over would not help: seen with a membership change stuck on
//! dead nodes, where it only made leaders come and go).

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
    /// How long a leader that handed over for want of callers stays out of elections.
    pub stand_down: Duration,
}

/// A leader that handed over because the others could not call it stays out of elections for a
/// while. It still reaches them, so once their new leader's heartbeats stop reaching it (the cut
/// is still there) it would time out, ask them for their votes on its own connections, and win
/// back the leadership they cannot use whenever they have not settled on a new leader yet: seen
/// in the fault suite, where the hand-over target's election stalled and the cut-off node won
/// the next term, then handed over again a second later. It keeps voting; only its own
/// candidacy waits, so the nodes that can reach one another elect among themselves.
#[derive(Debug, Default)]
struct StandDown {
    until: Option<Instant>,
}

impl StandDown {
    /// Handed over at `now`: stay out of elections until `now + hold`.
    fn begin(&mut self, now: Instant, hold: Duration) {
        self.until = Some(now + hold);
    }

    /// At `now`: true once, when the hold has just ended (elections may be enabled again).
    fn ended(&mut self, now: Instant) -> bool {
        match self.until {
            Some(until) if now >= until => {
                self.until = None;
                true
            }
            _ => false,
        }
    }
}

/// The leader's side of the watch: how long it has led, and since when each voter has been
/// answering it without a break.
#[derive(Debug, Default)]
struct LeaderReach {
    leading_since: Option<Instant>,
    /// Voters answering the leader's calls, since when. A voter that answers again (back after a
    /// crash or a cut, or just added) has had no time to call yet: it counts as reached for
    /// `cut_after`.
    answering_since: HashMap<NodeId, Instant>,
}

impl LeaderReach {
    /// This node does not lead (any more).
    fn not_leading(&mut self) {
        self.leading_since = None;
        self.answering_since.clear();
    }

    /// One check by a leader at `now`: the voters that reached it, when it should hand over
    /// (a quorum answers its calls while no quorum of voters has called it for `cut_after`).
    fn check(
        &mut self,
        now: Instant,
        cut_after: Duration,
        configs: &[BTreeSet<NodeId>],
        me: NodeId,
        called: impl Fn(NodeId) -> bool,
        answering: impl Fn(NodeId) -> bool,
    ) -> Option<BTreeSet<NodeId>> {
        let voters: BTreeSet<NodeId> = configs.iter().flatten().copied().collect();
        self.answering_since
            .retain(|v, _| voters.contains(v) && answering(*v));
        for v in voters.iter().filter(|v| answering(**v)) {
            self.answering_since.entry(*v).or_insert(now);
        }
        let since = *self.leading_since.get_or_insert(now);
        if now.duration_since(since) < cut_after {
            return None;
        }
        let mut answered: BTreeSet<NodeId> = self.answering_since.keys().copied().collect();
        answered.insert(me);
        let mut reached: BTreeSet<NodeId> = voters
            .iter()
            .copied()
            .filter(|v| {
                called(*v)
                    || self
                        .answering_since
                        .get(v)
                        .is_some_and(|at| now.duration_since(*at) < cut_after)
            })
            .collect();
        reached.insert(me);
        // Only the asymmetric case: a quorum answers this leader's calls right now (so Raft
        // sees nothing wrong) while no quorum has called it for `cut_after`. Without a quorum
        // either way there is no one to hand over to (a membership change stuck on dead
        // nodes): leave it to check-quorum.
        if !quorum_reaches(configs, &answered) || quorum_reaches(configs, &reached) {
            return None;
        }
        // Another `cut_after` before the next hand-over.
        self.leading_since = Some(now);
        Some(reached)
    }
}

impl ReachWatch {
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut side = LeaderReach::default();
            let mut stand_down = StandDown::default();
            let metrics = self.raft.metrics();
            loop {
                tokio::time::sleep(self.interval).await;
                if stand_down.ended(Instant::now()) {
                    tracing::info!("standing for election again after handing over");
                    self.raft.runtime_config().elect(true);
                }
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
                    side.not_leading();
                    if let Some(leader) = leader.filter(|l| *l != self.id && voter) {
                        self.call_leader(leader, vote).await;
                    }
                    continue;
                }
                let reached = side.check(
                    Instant::now(),
                    self.cut_after,
                    &configs,
                    self.id,
                    |v| self.inbound.heard_within(v, self.cut_after),
                    |v| self.peers.answered_within(v, 2 * self.interval),
                );
                if let Some(reached) = reached {
                    if self.hand_over(&configs, &reached).await {
                        self.raft.runtime_config().elect(false);
                        stand_down.begin(Instant::now(), self.stand_down);
                    }
                }
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
    /// this leader for `cut_after`. True if the hand-over was started.
    async fn hand_over(&self, configs: &[BTreeSet<NodeId>], reached: &BTreeSet<NodeId>) -> bool {
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
            return false;
        };
        let callers: Vec<String> = reached.iter().map(|id| id.to_string()).collect();
        tracing::warn!(
            target,
            called_by = %callers.join(","),
            silent_for_ms = self.cut_after.as_millis() as u64,
            stand_down_ms = self.stand_down.as_millis() as u64,
            "no quorum of voters has reached this leader's peer port: handing the leadership to a voter they can reach, and standing down from elections meanwhile"
        );
        match self.raft.trigger().transfer_leader(target).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "leader transfer failed");
                false
            }
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
    fn a_stand_down_ends_once_when_its_hold_is_over() {
        let start = Instant::now();
        let mut stand_down = StandDown::default();
        assert!(!stand_down.ended(start), "no hand-over, nothing to end");
        stand_down.begin(start, Duration::from_secs(3));
        assert!(!stand_down.ended(start + Duration::from_millis(2999)));
        assert!(stand_down.ended(start + Duration::from_secs(3)));
        assert!(
            !stand_down.ended(start + Duration::from_secs(4)),
            "ends only once"
        );
        // A second hand-over during a hold starts the hold again.
        stand_down.begin(start, Duration::from_secs(3));
        stand_down.begin(start + Duration::from_secs(2), Duration::from_secs(3));
        assert!(!stand_down.ended(start + Duration::from_secs(4)));
        assert!(stand_down.ended(start + Duration::from_secs(5)));
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

    const CUT: Duration = Duration::from_millis(1500);
    const TICK: Duration = Duration::from_millis(100);

    /// A leader (node 1) of `configs` checked every tick from `start` for `ticks` ticks, with
    /// `called` and `answering` saying which voters call it and answer it at each tick.
    /// Returns the tick of the first hand-over, if any.
    fn first_hand_over(
        configs: &[BTreeSet<NodeId>],
        ticks: u32,
        called: impl Fn(u32, NodeId) -> bool,
        answering: impl Fn(u32, NodeId) -> bool,
    ) -> Option<u32> {
        let start = Instant::now();
        let mut side = LeaderReach::default();
        (0..ticks).find(|tick| {
            side.check(
                start + TICK * *tick,
                CUT,
                configs,
                1,
                |v| called(*tick, v),
                |v| answering(*tick, v),
            )
            .is_some()
        })
    }

    #[test]
    fn a_leader_its_followers_answer_but_never_call_hands_over_after_the_cut_window() {
        let three = vec![set(&[1, 2, 3])];
        let at = first_hand_over(&three, 40, |_, _| false, |_, _| true);
        assert_eq!(at, Some(15), "after 1500 ms of leading without callers");
        let at = first_hand_over(&three, 40, |_, v| v == 2, |_, _| true);
        assert_eq!(at, None, "one caller is a quorum with the leader");
    }

    #[test]
    fn a_voter_back_after_a_crash_has_the_cut_window_to_call_before_anyone_hands_over() {
        // A promote of dead node 5 stuck in the joint config; node 2 down from tick 5 to tick
        // 30, then back: answering at once, calling only after its first ticks.
        let joint = vec![set(&[1, 2, 3]), set(&[1, 2, 3, 5])];
        let up = |tick: u32, v: NodeId| v == 3 || (v == 2 && !(5..30).contains(&tick));
        let calls_from = |first_call: u32| {
            move |tick: u32, v: NodeId| v == 3 || (v == 2 && (tick < 5 || tick >= first_call))
        };
        // Calling 1 s after it is back: no hand-over.
        assert_eq!(first_hand_over(&joint, 80, calls_from(40), up), None);
        // Never calling again (a one-way cut from it): hand-over once the window has passed.
        assert_eq!(
            first_hand_over(&joint, 80, calls_from(u32::MAX), up),
            Some(45)
        );
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
