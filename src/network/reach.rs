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
//! leadership to the most caught-up voter that answers it (openraft's leader transfer): the new
//! leader is one that the others can call. The target refuses when its log does not reach the
//! leader's last entry within half an election timeout (the leader's calls to it were slow):
//! a leader still leading `retry_after` after a hand-over tries again, with another voter if
//! one answers (seen in the fault suite: a refused hand-over, and the cluster without a usable
//! leader until the next one, 3.5 s later). A voter that has answered the leader for less than `cut_after`
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
    /// How long after a hand-over a leader that still leads takes it as refused and tries
    /// again.
    pub retry_after: Duration,
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
    /// The last hand-over this leader started: when, and to whom.
    handed_over: Option<(Instant, NodeId)>,
}

impl LeaderReach {
    /// This node does not lead (any more).
    fn not_leading(&mut self) {
        self.leading_since = None;
        self.answering_since.clear();
        self.handed_over = None;
    }

    /// A hand-over to `target` was started at `now`.
    fn handing_over(&mut self, now: Instant, target: NodeId) {
        self.handed_over = Some((now, target));
    }

    /// The target of a hand-over that did not take: this node still leads `retry_after` after
    /// starting it.
    fn refused(&self, now: Instant, retry_after: Duration) -> Option<NodeId> {
        self.handed_over
            .filter(|(at, _)| now.duration_since(*at) >= retry_after)
            .map(|(_, target)| target)
    }

    /// One check by a leader at `now`: the voters that reached it, when it should hand over
    /// (a quorum answers its calls while no quorum of voters has called it for `cut_after`).
    #[allow(clippy::too_many_arguments)]
    fn check(
        &mut self,
        now: Instant,
        cut_after: Duration,
        retry_after: Duration,
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
        let waited = match self.handed_over {
            // After a hand-over, the next one waits only until this one is known refused.
            Some((at, _)) => now.duration_since(at) >= retry_after,
            None => now.duration_since(since) >= cut_after,
        };
        if !waited {
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
            self.handed_over = None;
            return None;
        }
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
                let now = Instant::now();
                let answering = |v| self.peers.answered_within(v, 2 * self.interval);
                let refused = side.refused(now, self.retry_after);
                let reached = side.check(
                    now,
                    self.cut_after,
                    self.retry_after,
                    &configs,
                    self.id,
                    |v| self.inbound.heard_within(v, self.cut_after),
                    answering,
                );
                let Some(reached) = reached else {
                    continue;
                };
                let matched = metrics.borrow_watched().replication.clone();
                let target = hand_over_target(&configs, self.id, refused, answering, |v| {
                    matched
                        .as_ref()?
                        .get(&v)
                        .cloned()
                        .flatten()
                        .map(|l| l.index)
                });
                let Some(target) = target else {
                    continue;
                };
                if let Some(refused) = refused {
                    tracing::warn!(
                        refused,
                        target,
                        waited_ms = self.retry_after.as_millis() as u64,
                        "the hand-over did not take (this node still leads): trying again"
                    );
                }
                side.handing_over(now, target);
                if self.hand_over(target, &reached).await {
                    self.raft.runtime_config().elect(false);
                    stand_down.begin(Instant::now(), self.stand_down);
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

    /// Hands the leadership to `target`, when no quorum of voters has called this leader for
    /// `cut_after`. True if the hand-over was started.
    async fn hand_over(&self, target: NodeId, reached: &BTreeSet<NodeId>) -> bool {
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

/// Whom a leader hands over to: the most caught-up voter (`matched`) among those that answer
/// its calls (a target it cannot replicate to refuses), other than one that just `refused` if
/// another answers; any other voter when none answers.
fn hand_over_target(
    configs: &[BTreeSet<NodeId>],
    me: NodeId,
    refused: Option<NodeId>,
    answering: impl Fn(NodeId) -> bool,
    matched: impl Fn(NodeId) -> Option<u64>,
) -> Option<NodeId> {
    let others: BTreeSet<NodeId> = configs
        .iter()
        .flatten()
        .copied()
        .filter(|v| *v != me)
        .collect();
    let answering: Vec<NodeId> = others.iter().copied().filter(|v| answering(*v)).collect();
    let fresh: Vec<NodeId> = answering
        .iter()
        .copied()
        .filter(|v| Some(*v) != refused)
        .collect();
    let pool = if !fresh.is_empty() {
        fresh
    } else if !answering.is_empty() {
        answering
    } else {
        others.into_iter().collect()
    };
    pool.into_iter().max_by_key(|v| matched(*v))
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
    const RETRY: Duration = Duration::from_millis(800);
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
                RETRY,
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
    fn a_hand_over_that_does_not_take_is_tried_again_after_the_retry_wait() {
        let three = vec![set(&[1, 2, 3])];
        let start = Instant::now();
        let mut side = LeaderReach::default();
        let at = |tick: u32| start + TICK * tick;
        let check = |side: &mut LeaderReach, tick: u32| {
            side.check(at(tick), CUT, RETRY, &three, 1, |_| false, |_| true)
                .is_some()
        };
        let first = (0..40).find(|t| check(&mut side, *t)).unwrap();
        assert_eq!(first, 15, "the first after the cut window");
        side.handing_over(at(first), 2);
        assert_eq!(
            side.refused(at(first + 7), RETRY),
            None,
            "not yet known refused"
        );
        let again = (first + 1..40).find(|t| check(&mut side, *t)).unwrap();
        assert_eq!(
            again,
            first + 8,
            "the retry wait (800 ms), not another cut window"
        );
        assert_eq!(side.refused(at(again), RETRY), Some(2));
        // Leadership lost (the hand-over took): nothing is refused any more.
        side.not_leading();
        assert_eq!(side.refused(at(again + 20), RETRY), None);
    }

    #[test]
    fn a_hand_over_goes_to_the_most_caught_up_voter_that_answers_and_not_twice_to_a_refusal() {
        let five = vec![set(&[1, 2, 3, 4, 5])];
        let matched = |v: NodeId| Some([0, 0, 90, 100, 80, 70][v as usize]);
        let all = |_: NodeId| true;
        assert_eq!(hand_over_target(&five, 1, None, all, matched), Some(3));
        // Node 3's calls fail: the most caught-up of those that answer.
        let not_3 = |v: NodeId| v != 3;
        assert_eq!(hand_over_target(&five, 1, None, not_3, matched), Some(2));
        // Node 3 refused: another, even one further behind.
        assert_eq!(hand_over_target(&five, 1, Some(3), all, matched), Some(2));
        // Only the refusing node answers: it is asked again.
        let only_3 = |v: NodeId| v == 3;
        assert_eq!(
            hand_over_target(&five, 1, Some(3), only_3, matched),
            Some(3)
        );
        // None answers: the most caught-up voter all the same.
        assert_eq!(
            hand_over_target(&five, 1, None, |_| false, matched),
            Some(3)
        );
        assert_eq!(hand_over_target(&[set(&[1])], 1, None, all, matched), None);
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
