//! The fault schedule of one run: how many nodes, which faults in which order, how long each is
//! held and the quiet time before it. It is drawn from the run's seed alone, so the same seed
//! gives the same schedule. What depends on the cluster at that moment (which node leads, which
//! nodes are members after a membership change) is resolved when the step runs, from the step's
//! own random `choice`.

use std::fmt;
use std::time::Duration;

use raftcache_testkit::rng::Rng;

/// One kind of fault the suite injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// A random minority of the nodes is cut off from the rest (it may hold the leader).
    PartitionMinority,
    /// Every side is a minority: no side can elect a leader or commit anything.
    PartitionMajority,
    /// The leader alone is cut off from the rest.
    PartitionLeader,
    /// Five nodes: two sides of two that cannot see each other, and a fifth node that sees
    /// both ("bridge").
    PartitionBridge,
    /// One-way cuts around the leader: nothing the others send reaches its peer port (its own
    /// calls still get their answers), or nothing it sends reaches theirs, or one direction of
    /// one link between it and a follower.
    OneWay,
    /// `admin transfer-leader` to a random other member, through a random node, under traffic:
    /// it must answer with the target leading.
    TransferLeader,
    /// `docker kill` (SIGKILL) of the leader's container, started again after the hold.
    KillLeader,
    /// `docker kill` of a random node's container, started again after the hold.
    KillRandom,
    /// `docker kill` of every node's container at once, all started again after the hold.
    KillAll,
    /// `docker pause` (frozen, connections kept open) of a node, the leader half of the time,
    /// for 1 to 10 s.
    Pause,
    /// `docker stop` (SIGTERM, a clean shutdown) and `docker start` of a random node.
    Restart,
    /// Membership change under traffic: a random member (the leader included) is removed and a
    /// fresh node added, either by `replace-node` or by `add-node` then `remove-node`.
    Membership,
    /// A random member loses its data dir and starts again with the same flags: the others
    /// must refuse it (it neither votes nor takes entries) while they keep serving; then it is
    /// repaired as `docs/operations.md` says (`remove-node`, an empty data dir, `--no-bootstrap`,
    /// `add-node` with the same id).
    Wipe,
    /// A random member starts again on another peer port than the one the cluster records: it
    /// must refuse to start, saying so; then it starts again on the right one.
    Misplace,
    /// A follower falls behind (paused for the hold) while the leader compacts its log, so it
    /// is sent a snapshot when it is back; it is killed (`docker kill`) 0-300 ms into that, and
    /// started again: it must start, catch up and end with the same data as the others.
    SnapshotCrash,
    /// The power of every member, of the leader or of a random member is cut: its container is
    /// killed and its disk (a `raftcache-powerfs` filesystem) loses every write that no
    /// `fsync`/`fdatasync` covered; it is started again after the hold.
    PowerCut,
    /// A random member is killed, one bit of its current snapshot file flipped (made durable)
    /// and the member started again after the hold: it must log that the snapshot is damaged
    /// (and build a new one) rather than keep or send it.
    BitFlip,
}

impl FaultKind {
    pub const ALL: [FaultKind; 17] = [
        FaultKind::OneWay,
        FaultKind::TransferLeader,
        FaultKind::PartitionMinority,
        FaultKind::PartitionMajority,
        FaultKind::PartitionLeader,
        FaultKind::PartitionBridge,
        FaultKind::KillLeader,
        FaultKind::KillRandom,
        FaultKind::KillAll,
        FaultKind::Pause,
        FaultKind::Restart,
        FaultKind::Membership,
        FaultKind::Wipe,
        FaultKind::Misplace,
        FaultKind::SnapshotCrash,
        FaultKind::PowerCut,
        FaultKind::BitFlip,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::PartitionMinority => "partition-minority",
            FaultKind::PartitionMajority => "partition-majority",
            FaultKind::PartitionLeader => "partition-leader",
            FaultKind::PartitionBridge => "partition-bridge",
            FaultKind::OneWay => "one-way",
            FaultKind::TransferLeader => "transfer-leader",
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillRandom => "kill-random",
            FaultKind::KillAll => "kill-all",
            FaultKind::Pause => "pause",
            FaultKind::Restart => "restart",
            FaultKind::Membership => "membership",
            FaultKind::Wipe => "wipe",
            FaultKind::Misplace => "misplace",
            FaultKind::SnapshotCrash => "snapshot-crash",
            FaultKind::PowerCut => "power-cut",
            FaultKind::BitFlip => "bit-flip",
        }
    }

    /// Whether the fault makes sense on a cluster of `nodes` voters.
    pub fn applies_to(self, nodes: usize) -> bool {
        match self {
            FaultKind::PartitionBridge => nodes >= 5,
            _ => true,
        }
    }

    /// How long the fault is held before it is healed (for a kill: how long the node stays
    /// down; for a restart or a membership change: nothing, the step takes what it takes).
    fn hold(self, rng: &mut Rng) -> Duration {
        match self {
            FaultKind::PartitionMinority
            | FaultKind::PartitionMajority
            | FaultKind::PartitionLeader
            | FaultKind::PartitionBridge
            | FaultKind::OneWay => rng.millis(2_000, 8_000),
            FaultKind::Wipe | FaultKind::Misplace | FaultKind::SnapshotCrash => {
                rng.millis(2_000, 5_000)
            }
            FaultKind::KillLeader | FaultKind::KillRandom => rng.millis(500, 5_000),
            FaultKind::KillAll | FaultKind::PowerCut | FaultKind::BitFlip => rng.millis(500, 3_000),
            FaultKind::Pause => rng.millis(1_000, 10_000),
            FaultKind::Restart | FaultKind::Membership | FaultKind::TransferLeader => {
                Duration::ZERO
            }
        }
    }

    /// A rough guess of the time the step needs besides its hold (restarts, elections), used
    /// only to decide how many steps fit in a run.
    fn overhead(self) -> Duration {
        match self {
            FaultKind::Restart
            | FaultKind::KillAll
            | FaultKind::PowerCut
            | FaultKind::BitFlip
            | FaultKind::Membership
            | FaultKind::Misplace
            | FaultKind::SnapshotCrash => Duration::from_secs(5),
            FaultKind::Wipe => Duration::from_secs(10),
            _ => Duration::from_secs(2),
        }
    }
}

impl std::str::FromStr for FaultKind {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| format!("no fault named {name}"))
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One fault of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Time without a fault before this one.
    pub quiet: Duration,
    pub kind: FaultKind,
    pub hold: Duration,
    /// Picks the targets among the nodes when the step runs.
    pub choice: u64,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "after {} ms quiet: {} held {} ms (choice {})",
            self.quiet.as_millis(),
            self.kind,
            self.hold.as_millis(),
            self.choice
        )
    }
}

/// The plan of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub seed: u64,
    /// Voters the cluster starts with (and keeps: a membership change replaces one).
    pub nodes: usize,
    pub steps: Vec<Step>,
}

/// Time kept free of faults at the end of a run, before everything is healed.
const TAIL: Duration = Duration::from_secs(3);

/// The schedule of a run of `seconds` with `seed`: `nodes` voters if given, otherwise 3 for an
/// even seed and 5 for an odd one (so consecutive seeds alternate). The kinds come in shuffled
/// rounds, each round holding every kind that applies once, so a run of N steps injects
/// min(N, kinds) different kinds.
#[cfg(test)]
pub fn plan(seed: u64, seconds: u64, nodes: Option<usize>) -> Schedule {
    plan_first(seed, seconds, nodes, &[])
}

/// `plan`, with the run's first faults of the kinds `first`, in that order (those that apply
/// to the cluster, at most one round's worth).
pub fn plan_first(seed: u64, seconds: u64, nodes: Option<usize>, first: &[FaultKind]) -> Schedule {
    let nodes = nodes.unwrap_or(if seed.is_multiple_of(2) { 3 } else { 5 });
    let mut rng = Rng::new(seed);
    let budget = Duration::from_secs(seconds).saturating_sub(TAIL);
    let mut planned = Duration::ZERO;
    let mut steps = Vec::new();
    let mut round: Vec<FaultKind> = Vec::new();
    loop {
        if round.is_empty() {
            round = FaultKind::ALL
                .into_iter()
                .filter(|k| k.applies_to(nodes))
                .collect();
            rng.shuffle(&mut round);
            // Kinds are taken from the end: the first asked for goes last.
            if steps.is_empty() {
                for kind in first.iter().rev() {
                    if let Some(pos) = round.iter().position(|x| x == kind) {
                        let kind = round.remove(pos);
                        round.push(kind);
                    }
                }
            }
        }
        let kind = round.pop().expect("a round holds kinds");
        let step = Step {
            quiet: rng.millis(1_000, 4_000),
            kind,
            hold: kind.hold(&mut rng),
            choice: rng.next_u64(),
        };
        planned += step.quiet + step.hold + kind.overhead();
        // Every run injects at least one fault, and every first fault asked for.
        if planned > budget && steps.len() >= first.len().max(1) {
            break;
        }
        steps.push(step);
    }
    Schedule { seed, nodes, steps }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        assert_eq!(plan(42, 60, None), plan(42, 60, None));
        assert_ne!(plan(42, 60, None).steps, plan(44, 60, None).steps);
    }

    #[test]
    fn a_first_fault_asked_for_comes_first() {
        for seed in 0..20 {
            let s = plan_first(seed, 30, None, &[FaultKind::OneWay]);
            assert_eq!(s.steps[0].kind, FaultKind::OneWay, "seed {seed}");
        }
    }

    #[test]
    fn first_faults_asked_for_come_first_in_their_order() {
        let first = [FaultKind::OneWay, FaultKind::SnapshotCrash];
        for seed in 0..20 {
            let s = plan_first(seed, 30, None, &first);
            let kinds: Vec<FaultKind> = s.steps.iter().take(2).map(|s| s.kind).collect();
            assert_eq!(kinds, first, "seed {seed}");
        }
    }

    #[test]
    fn seeds_alternate_three_and_five_nodes_unless_told() {
        assert_eq!(plan(10, 30, None).nodes, 3);
        assert_eq!(plan(11, 30, None).nodes, 5);
        assert_eq!(plan(11, 30, Some(3)).nodes, 3);
    }

    #[test]
    fn a_bridge_needs_five_nodes() {
        for seed in 0..50 {
            let three = plan(seed * 2, 120, Some(3));
            assert!(three
                .steps
                .iter()
                .all(|s| s.kind != FaultKind::PartitionBridge));
        }
    }

    #[test]
    fn long_runs_inject_every_kind_and_fit_their_time() {
        let five = plan(7, 180, Some(5));
        let kinds: BTreeSet<FaultKind> = five.steps.iter().map(|s| s.kind).collect();
        assert_eq!(kinds.len(), FaultKind::ALL.len(), "{five:?}");
        for seed in 0..20 {
            let s = plan(seed, 30, None);
            let planned: Duration = s
                .steps
                .iter()
                .map(|st| st.quiet + st.hold + st.kind.overhead())
                .sum();
            assert!(!s.steps.is_empty());
            assert!(s.steps.len() == 1 || planned <= Duration::from_secs(27));
            for step in &s.steps {
                if step.kind == FaultKind::Pause {
                    assert!((1_000..=10_000).contains(&(step.hold.as_millis() as u64)));
                }
            }
        }
    }
}
