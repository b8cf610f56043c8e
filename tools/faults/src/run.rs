//! One run: a fresh compose cluster, clients recording every operation, the seed's faults one
//! after another (each healed before the next), then everything healed, every node killed and
//! started again, and the checks: the history is linearizable, no acknowledged write is lost,
//! and every node holds the same contents.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use raftcache::client::{describe_error, CacheClient};
use raftcache::gen::cache::{AdminOp, Consistency, ReadOptions, TCacheServiceSyncClient};
use raftcache::membership::{add_node, CatchUp};
use raftcache_powerfs::{CutReport, Disk};
use raftcache_testkit::compose::Project;
use raftcache_testkit::copy_dir;
use raftcache_testkit::counters::{CounterReport, Counters};
use raftcache_testkit::history::{ClientLimits, Shared, Workload, CALL_TIMEOUT};
use raftcache_testkit::linearizability::{self, Call, Limits, Operation, Outcome, Verdict};
use raftcache_testkit::rng::Rng;
use raftcache_testkit::wait::poll;
use raftcache_testkit::watcher::Watcher;

use crate::schedule::{plan_first, FaultKind, Schedule, Step};

/// How long the cluster may take to have every member answer and agree on a leader: generous,
/// since nothing here measures speed and a shared 2-core machine can be slow.
const HEALTHY_DEADLINE: Duration = Duration::from_secs(120);
/// How long the nodes may take to hold the same contents once the clients stopped.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(60);
/// Clients that increment counters of their own with exactly-once retries, beside the others.
const COUNTER_CLIENTS: u64 = 2;
/// How long the watcher may take, once the faults are healed, to read every change.
const WATCH_DRAIN: Duration = Duration::from_secs(60);
/// Pause between two tries of a final read.
const POLL: Duration = Duration::from_millis(250);
/// How long a step that targets the leader waits for one before it picks another node.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// A status call's timeout.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How a new node catches up before a membership change makes it a voter.
const CATCH_UP: CatchUp = CatchUp {
    max_lag: 1_000,
    timeout: Duration::from_secs(60),
};
/// How long one admin call of a membership change may take: a joint change commits twice, and
/// the leader first probes the new node.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after a wiped node's hold a member may take to log that it refused it.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(10);
/// What a member logs when it refuses a member back on a wiped data dir.
const WIPED_REFUSAL: &str = "came back without the state it had";
/// The peer port a misplaced node is started on (the cluster records 9190).
const MISPLACED_PEER_PORT: u16 = 9191;
/// What a node started on another peer address than its cluster records says.
const MISPLACED_REFUSAL: &str = "the other nodes would not reach it";
/// What a node logs when a snapshot transfer from the leader begins.
const SNAPSHOT_RECEIVING: &str = "receiving a snapshot from the leader";
/// What a node logs when its current snapshot fails its checksum.
const SNAPSHOT_DAMAGED: &str = "the current snapshot is damaged";
/// What a node logs when it refuses to start because the install it was making when it stopped
/// can only be finished from a snapshot file that is now damaged.
const STATE_UNRECOVERABLE: &str = "cannot recover on its own";
/// Where a node's current snapshot is, in its data dir.
const CURRENT_SNAPSHOT: &str = "snapshots/current";
/// `serve` flags of every node: a snapshot every 1,000 entries and 100 entries kept behind it,
/// so a follower that falls behind (paused, killed, cut off) is sent snapshots, and builds
/// overlap the faults.
const NODE_FLAGS: [&str; 4] = ["--snapshot-every", "1000", "--snapshot-keep-log", "100"];
/// Keys per page when a node's contents are listed.
const SCAN_PAGE: i32 = 500;

/// What every run shares.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub seconds: u64,
    pub clients: u64,
    pub nodes: Option<usize>,
    /// The kinds of each run's first faults, in order, if asked for.
    pub first: Vec<FaultKind>,
    pub spares: u64,
    pub image: String,
    /// The log filter of every node.
    pub node_log: String,
    /// Where a failed run's files are kept.
    pub out_dir: PathBuf,
    /// Whether a run that passed keeps its files too.
    pub keep_all: bool,
    pub limits: ClientLimits,
    pub checker: Limits,
}

/// What a run did and found.
#[derive(Debug, Default)]
pub struct RunReport {
    pub seed: u64,
    pub nodes: usize,
    pub operations: usize,
    /// Operations that constrained the linearizability check.
    pub checked: usize,
    /// `put_many`s and `get_many`s among the operations recorded.
    pub multi_key: usize,
    /// Acknowledged puts of keys written once, each read back at the end.
    pub own_keys_checked: usize,
    pub faults: BTreeMap<FaultKind, u64>,
    /// Steps that did not happen, and why (out of time, no spare node, a refused change).
    pub not_injected: Vec<String>,
    /// Why the run failed; `None` when every check passed.
    pub failure: Option<String>,
    /// The directory holding the failed run's history, schedule and logs.
    pub kept: Option<PathBuf>,
}

/// Runs the schedule of `seed`.
pub fn run(config: &RunConfig, seed: u64) -> RunReport {
    let schedule = plan_first(seed, config.seconds, config.nodes, &config.first);
    let dir = config.out_dir.join(format!("run-{seed}"));
    let mut report = RunReport {
        seed,
        nodes: schedule.nodes,
        ..RunReport::default()
    };
    let mut journal = Journal::new(&dir);
    journal.line(format!(
        "seed {seed}: {} nodes, {} s, {} clients, image {}",
        schedule.nodes, config.seconds, config.clients, config.image
    ));
    for (i, step) in schedule.steps.iter().enumerate() {
        journal.line(format!("plan {}: {step}", i + 1));
    }
    let result = std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating {}", dir.display()))
        .and_then(|()| Run::start(config, &schedule, &dir, &mut journal))
        .and_then(|mut run| {
            let outcome = run.execute(&schedule, &mut report, &mut journal);
            if outcome.is_err() || report.failure.is_some() || config.keep_all {
                run.cluster.save_logs(&dir);
                run.save_data_dirs(&dir);
            }
            outcome
        });
    if let Err(e) = result {
        report.failure = Some(format!("the run could not go on: {e:#}"));
    }
    journal.save();
    if report.failure.is_some() || config.keep_all {
        report.kept = Some(dir);
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    report
}

/// The clients that run beside the history's: the exactly-once counters (stopped with the
/// workload) and the watcher (stopped once the faults are healed).
struct SideClients {
    counters: Vec<CounterReport>,
    watcher: Watcher,
}

/// The run's log of what happened when, printed as it goes and kept with a failed run.
struct Journal {
    path: PathBuf,
    start: Instant,
    lines: Vec<String>,
}

impl Journal {
    fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("schedule.log"),
            start: Instant::now(),
            lines: Vec::new(),
        }
    }

    fn line(&mut self, text: String) {
        let line = format!("[{:7.2} s] {text}", self.start.elapsed().as_secs_f64());
        eprintln!("faults: {line}");
        self.lines.push(line);
    }

    fn save(&self) {
        if let Some(dir) = self.path.parent() {
            if dir.exists() {
                let _ = std::fs::write(&self.path, self.lines.join("\n") + "\n");
            }
        }
    }
}

/// The cluster of one run. Its fields drop in order: the cluster is taken down before the
/// disks its nodes' data dirs are on are unmounted.
struct Run<'a> {
    config: &'a RunConfig,
    cluster: Project,
    /// Each node's disk (spares included), bind-mounted as its data dir: a power cut loses
    /// what the node did not sync.
    disks: BTreeMap<u64, Disk>,
    /// Members (voters and learners) as the run knows them.
    members: Vec<u64>,
    spares: VecDeque<u64>,
    dir: &'a Path,
    /// Times (on the clients' clock) when no side of a partition held a quorum.
    no_quorum: Vec<(u64, u64)>,
    /// Writes that should have been acknowledged and were not (a fault a quorum outlives).
    unavailable: Vec<String>,
}

impl<'a> Run<'a> {
    fn start(
        config: &'a RunConfig,
        schedule: &Schedule,
        dir: &'a Path,
        journal: &mut Journal,
    ) -> Result<Self> {
        let project = format!("rcfaults{}s{}", std::process::id(), schedule.seed);
        let voters = schedule.nodes as u64;
        let disks_dir = dir.join("disks");
        let mut disks = BTreeMap::new();
        for id in 1..=voters + config.spares {
            let mountpoint = disks_dir.join(format!("node{id}"));
            std::fs::create_dir_all(&mountpoint)
                .with_context(|| format!("creating {}", mountpoint.display()))?;
            disks.insert(id, Disk::mount_shared(&mountpoint)?);
        }
        // Declared after the disks, so that on an error below it is dropped (taken down) first.
        let cluster = Project::generate(dir, &project, &config.image, voters, config.spares)?
            .with_flags(&NODE_FLAGS)?
            .with_log_filter(&config.node_log)?
            .with_data_dirs(&disks_dir)?;
        let members: Vec<u64> = (1..=voters).collect();
        let spares = (voters + 1..=voters + config.spares).collect();
        cluster.up(&members)?;
        let run = Run {
            config,
            cluster,
            disks,
            members,
            spares,
            dir,
            no_quorum: Vec::new(),
            unavailable: Vec::new(),
        };
        let leader = run.wait_healthy()?;
        journal.line(format!(
            "cluster {project} up, node {leader} leads; clients start"
        ));
        Ok(run)
    }

    fn addrs(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|id| self.cluster.node(*id).addr())
            .collect()
    }

    fn execute(
        &mut self,
        schedule: &Schedule,
        report: &mut RunReport,
        journal: &mut Journal,
    ) -> Result<()> {
        let workload = Workload::start(
            self.config.clients,
            schedule.seed,
            self.addrs(),
            self.config.limits,
        );
        let shared = workload.shared.clone();
        let counters = Counters::start(COUNTER_CLIENTS, schedule.seed, shared.clone());
        let watcher = Watcher::start(schedule.seed, shared.clone());
        let faults = self.inject_all(schedule, report, journal, &workload);
        let answered = workload.answered();
        let mut history = workload.finish();
        let counters = counters.finish();
        journal.line(format!(
            "clients stopped: {} operations, {answered} answered; counters: {}",
            history.len(),
            counters
                .iter()
                .map(|c| format!(
                    "{} answered {} ({} retries, {} repeated answers)",
                    c.key, c.answered, c.retries, c.repeated
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        report.operations = history.len();
        let checked = faults.and_then(|()| {
            let side = SideClients { counters, watcher };
            self.heal_and_check(&mut history, side, &shared, report, journal)
        });
        if checked.is_err() {
            self.save_history(&history)?;
        }
        checked
    }

    /// Heals every fault, kills and starts every member, reads every key back and checks the
    /// history, the acknowledged writes and the replicas: a failed check is recorded in
    /// `report`, Err is a run that could not go on.
    fn heal_and_check(
        &mut self,
        history: &mut Vec<Operation>,
        side: SideClients,
        shared: &Shared,
        report: &mut RunReport,
        journal: &mut Journal,
    ) -> Result<()> {
        self.cluster.unpause_all()?;
        self.cluster.heal()?;
        let leader = self.wait_healthy()?;
        journal.line(format!("healed; node {leader} leads"));
        // The watcher reads up to the leader's last entry before the nodes restart (their
        // histories are in memory).
        let applied = connect(&self.cluster.node(leader).addr())?
            .service()
            .stats()
            .map_err(|e| anyhow!("stats of node {leader}: {}", describe_error(&e)))?
            .applied_index;
        let watched = side.watcher.finish(applied as u64, WATCH_DRAIN);
        self.cluster.kill_at_once(&self.members)?;
        for &id in &self.members {
            self.cluster.start(id)?;
        }
        let leader = self.wait_healthy()?;
        journal.line(format!(
            "every node killed and started again; node {leader} leads"
        ));

        let mut final_reads = self.read_back(history, leader, shared)?;
        let mut failures = self.unavailable.clone();
        for counter in &side.counters {
            failures.extend(counter.wrong_answers());
            let value = self.read_counter(leader, counter)?;
            if let Err(e) = counter.check(value) {
                failures.push(e);
            }
            if let Some(value) = value {
                final_reads.insert(counter.key.clone(), value.to_string());
            }
        }
        let (watch_failures, watch_summary) = watched.check(history, &final_reads, &[PROBE_PREFIX]);
        journal.line(watch_summary);
        failures.extend(watch_failures);
        report.operations = history.len();
        report.multi_key = history
            .iter()
            .filter(|op| matches!(op.call, Call::PutMany(_) | Call::GetMany(_)))
            .count();

        let lost = lost_writes(history, &final_reads);
        report.own_keys_checked = history
            .iter()
            .filter(|op| op.key.starts_with("own-") && op.outcome == Outcome::Written)
            .count();
        if !lost.is_empty() {
            failures.push(format!(
                "{} acknowledged writes lost, e.g. {}",
                lost.len(),
                lost[..lost.len().min(5)].join("; ")
            ));
        }

        let answered = answered_without_quorum(history, &self.no_quorum);
        if !answered.is_empty() {
            failures.push(format!(
                "{} operations sent while no side of a partition held a quorum were answered, e.g. {}",
                answered.len(),
                answered[..answered.len().min(5)].join("; ")
            ));
        }

        match self.converge(&final_reads) {
            Ok(()) => journal.line(format!(
                "all {} members hold the same {} keys",
                self.members.len(),
                final_reads.len()
            )),
            Err(e) => failures.push(e),
        }

        let checked = linearizability::check(history, self.config.checker)
            .map_err(|e| anyhow!("the recorded history is malformed: {e}"))?;
        report.checked = checked.operations_checked;
        journal.line(format!(
            "checked {} operations on {} keys ({} families of keys written or read together): {:?}",
            checked.operations_checked,
            checked.keys_checked,
            checked.families_checked,
            checked.verdict()
        ));
        match checked.verdict() {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable => {
                let shown: Vec<String> = checked
                    .violations
                    .iter()
                    .take(3)
                    .map(|v| v.to_string())
                    .collect();
                failures.push(format!(
                    "not linearizable on {} keys (or families of keys written or read together):\n{}",
                    checked.violations.len(),
                    shown.join("\n")
                ));
            }
            Verdict::Unknown => failures.push(format!(
                "the checker ran out of its step budget on keys {:?}: nothing proven",
                checked.unknown_keys
            )),
        }
        if !failures.is_empty() {
            self.save_history(history)?;
            report.failure = Some(failures.join("\n"));
        }
        Ok(())
    }

    /// Injects the schedule's faults while the clients run, until `--seconds` have passed.
    fn inject_all(
        &mut self,
        schedule: &Schedule,
        report: &mut RunReport,
        journal: &mut Journal,
        workload: &Workload,
    ) -> Result<()> {
        let end = workload.shared.clock + Duration::from_secs(self.config.seconds);
        let tail = Duration::from_secs(3);
        // The first faults asked for (`--first-fault`) are injected even if they run past the
        // end: the clients then run until they are done.
        let asked_for = self.config.first.len();
        for (i, step) in schedule.steps.iter().enumerate() {
            if i >= asked_for && Instant::now() + step.quiet + step.hold + tail > end {
                report
                    .not_injected
                    .push(format!("step {} ({}): out of time", i + 1, step.kind));
                continue;
            }
            sleep(step.quiet);
            let before = workload.answered();
            match self.inject(step, workload)? {
                Injected::Done(what) => {
                    *report.faults.entry(step.kind).or_default() += 1;
                    journal.line(format!(
                        "step {} {}: {what} ({} answers meanwhile)",
                        i + 1,
                        step.kind,
                        workload.answered() - before
                    ));
                }
                Injected::Not(why) => {
                    journal.line(format!("step {} {}: not injected: {why}", i + 1, step.kind));
                    report
                        .not_injected
                        .push(format!("step {} ({}): {why}", i + 1, step.kind));
                }
            }
        }
        if let Some(left) = end.checked_duration_since(Instant::now()) {
            sleep(left);
        }
        Ok(())
    }

    /// Kills the members and copies every node's data dir next to the logs of a failed run
    /// (its disk is gone once unmounted).
    fn save_data_dirs(&self, dir: &Path) {
        if let Err(e) = self.cluster.kill_at_once(&self.members) {
            eprintln!("faults: killing the members before their data dirs are copied: {e:#}");
        }
        for (id, disk) in &self.disks {
            let to = dir.join("data").join(format!("node{id}"));
            if let Err(e) = copy_dir(disk.mountpoint(), &to) {
                eprintln!("faults: node {id}'s data dir: {e}");
            }
        }
    }

    /// Kills the nodes `ids` and cuts their disks' power, starting them again after `hold`.
    fn power_cut(&mut self, ids: &[u64], hold: Duration) -> Result<CutReport> {
        self.cluster.kill_at_once(ids)?;
        let mut cut = CutReport::default();
        for id in ids {
            cut += self.disk(*id)?.power_cut()?;
        }
        sleep(hold);
        for &id in ids {
            self.cluster.start(id)?;
        }
        Ok(cut)
    }

    /// Kills member `target`, flips one bit (chosen by `choice`) of its current snapshot file on
    /// its disk, durably, and starts it again after `hold`: within `REFUSAL_DEADLINE` it must
    /// log that the snapshot is damaged. It is asked to build one first (`admin snapshot`).
    fn bit_flip(
        &mut self,
        target: u64,
        hold: Duration,
        choice: u64,
        workload: &Workload,
    ) -> Result<Injected> {
        // A snapshot to damage, however early in the run.
        if let Err(e) = self.admin_snapshot(target) {
            return Ok(Injected::Not(format!(
                "node {target} built no snapshot: {e:#}"
            )));
        }
        self.cluster.kill(target)?;
        let path = self.disk(target)?.mountpoint().join(CURRENT_SNAPSHOT);
        let flipped = flip_bit(&path, choice)
            .with_context(|| format!("flipping a bit of {}", path.display()))?;
        sleep(hold);
        let since = unix_now();
        self.cluster.start(target)?;
        let Some((offset, bit, len)) = flipped else {
            return Ok(Injected::Not(format!(
                "node {target} had no snapshot yet (killed and started again)"
            )));
        };
        // Usually the node rebuilds the snapshot from its data. If it was killed while
        // installing a snapshot from the leader, that file was its only whole copy of the state:
        // it must refuse to start, saying so, and is then replaced as an operator would.
        let noticed = poll(REFUSAL_DEADLINE, || {
            self.cluster.logs(target, Some(since)).ok().and_then(|log| {
                if log.contains(STATE_UNRECOVERABLE) {
                    Some(true)
                } else {
                    log.contains(SNAPSHOT_DAMAGED).then_some(false)
                }
            })
        });
        if let Ok(true) = noticed {
            let rest = self.members_except(target);
            let said = format!(
                "node {target}'s snapshot ({len} bytes) had bit {bit} of byte {offset} flipped while it was down for {} ms, in the middle of an install: it refused to start, saying it cannot recover on its own",
                hold.as_millis()
            );
            return Ok(match self.remove_and_add_again(target, rest, workload)? {
                Ok(replaced) => Injected::Done(format!("{said}; {replaced}")),
                Err(failed) => Injected::Not(format!("{said}; {failed}")),
            });
        }
        let noticed = noticed.is_ok();
        if !noticed {
            self.unavailable.push(format!(
                "bit-flip: node {target} did not log {SNAPSHOT_DAMAGED:?} within {} ms of its start with bit {bit} of byte {offset} of its {len}-byte snapshot flipped",
                REFUSAL_DEADLINE.as_millis()
            ));
        }
        Ok(Injected::Done(format!(
            "node {target}'s snapshot ({len} bytes) had bit {bit} of byte {offset} flipped while it was down for {} ms; {}",
            hold.as_millis(),
            if noticed { "it said the snapshot is damaged" } else { "it did NOT notice" }
        )))
    }

    /// The members other than `id`.
    fn members_except(&self, id: u64) -> Vec<u64> {
        self.members.iter().copied().filter(|&n| n != id).collect()
    }

    /// `admin snapshot` on node `id`: the index of the snapshot it built.
    fn admin_snapshot(&self, id: u64) -> Result<i64> {
        let addr = self.cluster.node(id).addr();
        CacheClient::connect(&addr, ADMIN_TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?
            .admin_snapshot()
            .map_err(|e| anyhow!(describe_error(&e)))
    }

    /// Kills node `id`, deletes its container and gives it a new, empty disk.
    fn wipe_node(&mut self, id: u64) -> Result<()> {
        self.cluster.wipe(id)?;
        self.disk(id)?.replace()?;
        Ok(())
    }

    fn disk(&mut self, id: u64) -> Result<&mut Disk> {
        self.disks
            .get_mut(&id)
            .ok_or_else(|| anyhow!("node {id} has no disk"))
    }

    /// Writes the history of a failed run next to its schedule and logs.
    fn save_history(&self, history: &[Operation]) -> Result<()> {
        let path = self.dir.join("history.jsonl");
        let file = std::fs::File::create(&path)?;
        linearizability::write_history(std::io::BufWriter::new(file), history)?;
        Ok(())
    }

    /// Injects one fault and heals it.
    fn inject(&mut self, step: &Step, workload: &Workload) -> Result<Injected> {
        let mut pick = Rng::new(step.choice);
        let mut shuffled = self.members.clone();
        pick.shuffle(&mut shuffled);
        let random = shuffled[0];
        let quorum = self.members.len() / 2 + 1;
        let done = match step.kind {
            FaultKind::PartitionMinority => {
                let size = 1 + pick.below((quorum - 1) as u64) as usize;
                let (minority, rest) = shuffled.split_at(size);
                hold_partition(
                    &mut self.cluster,
                    &[minority.to_vec(), rest.to_vec()],
                    step.hold,
                )?
            }
            FaultKind::PartitionMajority => {
                let sides: Vec<Vec<u64>> =
                    shuffled.chunks(quorum - 1).map(<[u64]>::to_vec).collect();
                self.cluster.partition(&sides)?;
                let cut_us = workload.shared.now_us();
                sleep(step.hold);
                self.no_quorum.push((cut_us, workload.shared.now_us()));
                self.cluster.heal()?;
                format!("sides {sides:?} for {} ms", step.hold.as_millis())
            }
            FaultKind::PartitionLeader => {
                let leader = self.leader_or(random);
                let rest = self.members_except(leader);
                hold_partition(&mut self.cluster, &[vec![leader], rest], step.hold)?
            }
            FaultKind::PartitionBridge => {
                if shuffled.len() < 5 {
                    return Ok(Injected::Not(format!(
                        "{} members, a bridge needs 5",
                        shuffled.len()
                    )));
                }
                let sides = [shuffled[..3].to_vec(), shuffled[2..].to_vec()];
                let text = hold_partition(&mut self.cluster, &sides, step.hold)?;
                format!("{text}, node {} bridges", shuffled[2])
            }
            FaultKind::OneWay => {
                let leader = self.leader_or(random);
                let others: Vec<u64> = shuffled.iter().copied().filter(|&n| n != leader).collect();
                let links: Vec<(u64, u64)> = match pick.below(3) {
                    0 => others.iter().map(|&o| (o, leader)).collect(),
                    1 => others.iter().map(|&o| (leader, o)).collect(),
                    _ if pick.below(2) == 0 => vec![(others[0], leader)],
                    _ => vec![(leader, others[0])],
                };
                for &(from, to) in &links {
                    self.cluster.cut_one_way(from, to)?;
                }
                let shown: Vec<String> = links.iter().map(|(f, t)| format!("{f}->{t}")).collect();
                // Whichever links are cut one way, the first follower (the one a single cut
                // touches) still reaches a quorum, and a quorum reaches it: writes through it
                // must go on, within AVAILABLE_AFTER of the cut (under a new leader when every
                // link of the leader is cut; through another member when its calls to the
                // leader are lost; answered without waiting to apply them when the leader's
                // calls to it are).
                let probe = if others.len() > 1 && step.hold > AVAILABLE_AFTER {
                    let addr = self.cluster.node(others[0]).addr();
                    let first = first_write_within(
                        &addr,
                        step.hold,
                        &format!("{PROBE_PREFIX}{}", step.choice),
                    );
                    match first {
                        Some(after) if after <= AVAILABLE_AFTER => {
                            format!(
                                ", first write through node {} after {} ms",
                                others[0],
                                after.as_millis()
                            )
                        }
                        other => {
                            self.unavailable.push(format!(
                                "unavailable: with {} dropped (leader {leader}), the first write through node {} was acknowledged {} (allowed: {} ms)",
                                shown.join(", "),
                                others[0],
                                other.map_or("never".to_string(), |t| format!("after {} ms", t.as_millis())),
                                AVAILABLE_AFTER.as_millis()
                            ));
                            ", no write in time".to_string()
                        }
                    }
                } else {
                    sleep(step.hold);
                    String::new()
                };
                self.cluster.heal()?;
                format!(
                    "dropped {} (leader {leader}) for {} ms{probe}",
                    shown.join(", "),
                    step.hold.as_millis()
                )
            }
            FaultKind::TransferLeader => {
                let leader = self.leader_or(random);
                let Some(&target) = shuffled.iter().find(|&&n| n != leader) else {
                    return Ok(Injected::Not("one member only".into()));
                };
                let via = shuffled[shuffled.len() - 1];
                let addr = self.cluster.node(via).addr();
                let started = Instant::now();
                let moved = CacheClient::connect(&addr, ADMIN_TIMEOUT)
                    .with_context(|| format!("connecting to {addr}"))?
                    .admin_change(AdminOp::TRANSFER_LEADER, target, None, None, false, "");
                let took = started.elapsed().as_millis();
                let what = match moved {
                    Ok(m) if m.leader == target as i64 => None,
                    Ok(m) => Some(format!("answered with node {} leading", m.leader)),
                    Err(e) => Some(describe_error(&e)),
                };
                match what {
                    None => format!("{leader} -> {target} through node {via} in {took} ms"),
                    // A refusal says why (a lagging target after a kill): nothing was tried.
                    Some(why) if why.starts_with("refused:") => {
                        return Ok(Injected::Not(why));
                    }
                    Some(what) => {
                        self.unavailable.push(format!(
                            "transfer-leader {leader} -> {target} through node {via} failed after {took} ms: {what}"
                        ));
                        format!("{leader} -> {target}: failed")
                    }
                }
            }
            FaultKind::KillLeader | FaultKind::KillRandom => {
                let target = if step.kind == FaultKind::KillLeader {
                    self.leader_or(random)
                } else {
                    random
                };
                self.cluster.kill(target)?;
                sleep(step.hold);
                self.cluster.start(target)?;
                format!(
                    "node {target} killed, started after {} ms",
                    step.hold.as_millis()
                )
            }
            FaultKind::KillAll => {
                self.cluster.kill_at_once(&self.members)?;
                sleep(step.hold);
                for &id in &self.members {
                    self.cluster.start(id)?;
                }
                format!(
                    "nodes {:?} killed, started after {} ms",
                    self.members,
                    step.hold.as_millis()
                )
            }
            FaultKind::Pause => {
                let target = if step.choice.is_multiple_of(2) {
                    self.leader_or(random)
                } else {
                    random
                };
                if let Err(e) = self.cluster.pause(target) {
                    return Ok(Injected::Not(format!("node {target}: {e:#}")));
                }
                sleep(step.hold);
                self.cluster.unpause_all()?;
                format!("node {target} paused for {} ms", step.hold.as_millis())
            }
            FaultKind::Restart => {
                self.cluster.stop(random)?;
                self.cluster.start(random)?;
                format!("node {random} stopped cleanly and started")
            }
            FaultKind::Membership => {
                let replace = (step.choice >> 32).is_multiple_of(2);
                return self.change_membership(random, replace, workload);
            }
            FaultKind::Wipe => return self.wipe(random, step.hold, workload),
            FaultKind::Misplace => return self.misplace(random, step.hold),
            FaultKind::SnapshotCrash => {
                return self.snapshot_crash(&shuffled, step.hold, step.choice)
            }
            FaultKind::BitFlip => return self.bit_flip(random, step.hold, step.choice, workload),
            FaultKind::PowerCut => {
                let victims = match step.choice % 3 {
                    0 => self.members.clone(),
                    1 => vec![self.leader_or(random)],
                    _ => vec![random],
                };
                let cut = self.power_cut(&victims, step.hold)?;
                format!(
                    "nodes {victims:?} lost power ({} files and {} directories reverted, {} inodes dropped, up to {} unsynced bytes lost), started after {} ms",
                    cut.files_reverted,
                    cut.dirs_reverted,
                    cut.inodes_dropped,
                    cut.unsynced_bytes,
                    step.hold.as_millis()
                )
            }
        };
        Ok(Injected::Done(done))
    }

    /// A follower (the first of `shuffled` that does not lead) is paused for `hold` while the
    /// clients write; the leader then compacts its log (`admin snapshot`: with the suite's
    /// `--snapshot-keep-log`, usually less than what the follower missed), so the follower is
    /// sent a snapshot once it is unpaused; it is killed 0-300 ms later (by `choice`) and started
    /// again. The end checks then see whether it caught up and holds what the others hold.
    fn snapshot_crash(
        &mut self,
        shuffled: &[u64],
        hold: Duration,
        choice: u64,
    ) -> Result<Injected> {
        let leader = self.leader_or(shuffled[0]);
        let Some(&target) = shuffled.iter().find(|&&n| n != leader) else {
            return Ok(Injected::Not("one member only".into()));
        };
        if let Err(e) = self.cluster.pause(target) {
            return Ok(Injected::Not(format!("node {target}: {e:#}")));
        }
        sleep(hold);
        let compacted = self.admin_snapshot(leader);
        let since = unix_now();
        self.cluster.unpause_all()?;
        let delay = Duration::from_millis(choice % 300);
        sleep(delay);
        self.cluster.kill(target)?;
        // Whether a snapshot transfer to it had begun by the kill, as its log says.
        let installing = self
            .cluster
            .logs(target, Some(since))
            .is_ok_and(|log| log.contains(SNAPSHOT_RECEIVING));
        sleep(Duration::from_millis(500));
        self.cluster.start(target)?;
        let compacted = match compacted {
            Ok(index) => format!("leader {leader} compacted its log at index {index}"),
            Err(e) => format!("leader {leader} did not compact its log: {e:#}"),
        };
        Ok(Injected::Done(format!(
            "node {target} paused for {} ms, {compacted}, node {target} killed {} ms after it was unpaused ({}), started again",
            hold.as_millis(),
            delay.as_millis(),
            if installing {
                "after a snapshot transfer to it began"
            } else {
                "before a snapshot transfer began"
            }
        )))
    }

    /// Wipes member `target`'s data dir and starts it again with the same flags: for `hold`,
    /// another member must refuse it (the rest keep serving: the clients' history is checked
    /// as for any fault). Then it is repaired as an operator would: removed, started with an
    /// empty data dir and `--no-bootstrap`, and added again with its id.
    fn wipe(&mut self, target: u64, hold: Duration, workload: &Workload) -> Result<Injected> {
        if self.members.len() < 3 {
            return Ok(Injected::Not(format!(
                "{} members: without node {target} none would be left to refuse it",
                self.members.len()
            )));
        }
        let rest = self.members_except(target);
        let since = unix_now();
        self.wipe_node(target)?;
        self.cluster.up(&[target])?;
        sleep(hold);
        let refused = poll(REFUSAL_DEADLINE, || {
            rest.iter()
                .any(|&id| {
                    self.cluster
                        .logs(id, Some(since))
                        .is_ok_and(|log| log.contains(WIPED_REFUSAL))
                })
                .then_some(())
        });
        let mut found = Vec::new();
        if refused.is_err() {
            found.push(format!(
                "no member logged {WIPED_REFUSAL:?} within {} ms of node {target}'s return",
                (hold + REFUSAL_DEADLINE).as_millis()
            ));
        }
        if let Some(s) = status(&self.cluster.node(target).addr()) {
            if s.role == "leader" {
                found.push(format!("node {target} leads in term {}", s.term));
            }
        }
        let seen = if found.is_empty() {
            "refused"
        } else {
            "NOT refused"
        };
        for what in found {
            self.unavailable.push(format!(
                "wipe: node {target} came back with a wiped data dir and was not refused: {what}"
            ));
        }

        Ok(match self.remove_and_add_again(target, rest, workload)? {
            Ok(replaced) => Injected::Done(format!(
                "node {target} wiped, {seen} ({} ms), {replaced}",
                hold.as_millis()
            )),
            Err(failed) => Injected::Not(format!("node {target} wiped, {seen}, {failed}")),
        })
    }

    /// Repairs member `target` as an operator would: removes it through the leader of `rest`,
    /// wipes it, starts it empty with `--no-bootstrap` and adds it again with its id. Says how
    /// that went.
    fn remove_and_add_again(
        &mut self,
        target: u64,
        rest: Vec<u64>,
        workload: &Workload,
    ) -> Result<std::result::Result<String, String>> {
        let leader = self.wait_healthy_among(&rest)?;
        let addr = self.cluster.node(leader).addr();
        let mut client = CacheClient::connect(&addr, ADMIN_TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?;
        client
            .admin_change(AdminOp::REMOVE_NODE, target, None, None, false, "")
            .map_err(|e| anyhow!("remove-node {target}: {}", describe_error(&e)))?;
        self.members = rest;
        self.wipe_node(target)?;
        self.cluster.recreate(target, |node| node.rejoin = true)?;
        let added = self.add_member(target, None, false)?;
        workload.set_targets(self.addrs());
        Ok(match added {
            Ok(via) => {
                self.members = self.current_members(via)?;
                workload.set_targets(self.addrs());
                Ok(format!(
                    "removed and added again; members now {:?}",
                    self.members
                ))
            }
            Err(why) => Err(format!(
                "removed, but adding it again failed: {why}; members now {:?}",
                self.members
            )),
        })
    }

    /// Starts member `target` again on another peer port than the one the cluster records: it
    /// must refuse to start, saying why; after `hold` it starts again on the right one.
    fn misplace(&mut self, target: u64, hold: Duration) -> Result<Injected> {
        let since = unix_now();
        self.cluster.recreate(target, |node| {
            node.misplaced_peer_port = Some(MISPLACED_PEER_PORT)
        })?;
        sleep(hold);
        let said = self
            .cluster
            .logs(target, Some(since))
            .map(|log| log.contains(MISPLACED_REFUSAL))
            .unwrap_or(false);
        let answered = status(&self.cluster.node(target).addr()).is_some();
        let seen = match (said, answered) {
            (true, false) => "refused to run, saying why",
            (_, true) => "runs and answers",
            (false, false) => "stopped without saying why",
        };
        if !said || answered {
            self.unavailable.push(format!(
                "misplace: node {target}, started on peer port {MISPLACED_PEER_PORT} while the cluster records another, {seen}"
            ));
        }
        self.cluster
            .recreate(target, |node| node.misplaced_peer_port = None)?;
        let leader = self.wait_healthy()?;
        Ok(Injected::Done(format!(
            "node {target} started on peer port {MISPLACED_PEER_PORT}: {seen} ({} ms); back on its own, node {leader} leads",
            hold.as_millis()
        )))
    }

    /// Adds node `new` (started, waiting to be added) through the leader, or through another
    /// member if the leader is `leaving` (the member about to go, which `new` replaces in the
    /// same change if `replace`). Ok(Ok) is the member the change was asked through, Ok(Err)
    /// why the cluster refused it; Err, a cluster that does not answer.
    fn add_member(
        &self,
        new: u64,
        leaving: Option<u64>,
        replace: bool,
    ) -> Result<std::result::Result<u64, String>> {
        let leader = self.wait_healthy()?;
        // The leader's probe must find the new node's peer port open: wait until it answers.
        let addr = self.cluster.node(new).addr();
        poll(HEALTHY_DEADLINE, || status(&addr))
            .map_err(|timeout| anyhow!("node {new} answered no status: {timeout}"))?;
        // Ask through a member that stays, so the answer is not lost with the removed node.
        let via = if Some(leader) != leaving {
            leader
        } else {
            *self
                .members
                .iter()
                .find(|&&id| Some(id) != leaving)
                .expect("more than one member")
        };
        let old = leaving.filter(|_| replace);
        let addr = self.cluster.node(via).addr();
        let mut client = CacheClient::connect(&addr, ADMIN_TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?;
        let peer = self.cluster.node(new).peer_addr();
        let mut progress = |_: &str| {};
        Ok(add_node(
            &mut client,
            new,
            &peer,
            old,
            CATCH_UP,
            false,
            "",
            &mut progress,
        )
        .map(|_| via))
    }

    /// The leader now, waiting a little for one; `fallback` if there is none.
    fn leader_or(&self, fallback: u64) -> u64 {
        poll(LEADER_WAIT, || self.leader()).unwrap_or(fallback)
    }

    /// The member that says it leads, with the highest term.
    fn leader(&self) -> Option<u64> {
        self.members
            .iter()
            .filter_map(|&id| {
                let status = status(&self.cluster.node(id).addr())?;
                (status.role == "leader").then_some((status.term, id))
            })
            .max()
            .map(|(_, id)| id)
    }

    /// Removes `old` and adds a fresh spare, once every member answers.
    fn change_membership(
        &mut self,
        old: u64,
        replace: bool,
        workload: &Workload,
    ) -> Result<Injected> {
        let Some(new) = self.spares.pop_front() else {
            return Ok(Injected::Not("no spare node left".into()));
        };
        self.cluster.up(&[new])?;
        let added = self.add_member(new, Some(old), replace)?;
        let mut via = self.members.iter().copied().find(|&id| id != old);
        let changed = added.and_then(|through| {
            via = Some(through);
            if replace {
                return Ok(());
            }
            let addr = self.cluster.node(through).addr();
            CacheClient::connect(&addr, ADMIN_TIMEOUT)
                .map_err(|e| format!("connecting to {addr}: {e:#}"))?
                .admin_change(AdminOp::REMOVE_NODE, old, None, None, false, "")
                .map(drop)
                .map_err(|e| describe_error(&e))
        });
        let via = via.expect("more than one member");
        // What the cluster holds now decides which nodes the run follows.
        let members = self.current_members(via)?;
        self.members = members;
        workload.set_targets(self.addrs());
        if !self.members.contains(&old) {
            self.cluster.stop(old)?;
        }
        let how = if replace {
            "replace-node"
        } else {
            "add-node, then remove-node"
        };
        Ok(match changed {
            Ok(()) => Injected::Done(format!(
                "node {old} replaced by node {new} ({how}); members now {:?}",
                self.members
            )),
            Err(why) => Injected::Not(format!(
                "{how} of {old} by {new} refused: {why}; members now {:?}",
                self.members
            )),
        })
    }

    /// The members (voters and learners) the cluster's leader lists, asked through `via`.
    fn current_members(&self, via: u64) -> Result<Vec<u64>> {
        let addr = self.cluster.node(via).addr();
        let listed = poll(HEALTHY_DEADLINE, || {
            connect(&addr).and_then(|mut c| {
                c.admin_members("")
                    .map_err(|e| anyhow!("admin members: {}", describe_error(&e)))
            })
        })
        .map_err(|timeout| anyhow!("listing the members through node {via}: {timeout}"))?;
        Ok(listed.members.iter().map(|m| m.id as u64).collect())
    }

    /// Waits until every member answers and all name the same leader, one of them.
    fn wait_healthy(&self) -> Result<u64> {
        self.wait_healthy_among(&self.members)
    }

    /// Waits until every one of `members` answers and all name the same leader, one of them.
    fn wait_healthy_among(&self, members: &[u64]) -> Result<u64> {
        let healthy = poll(HEALTHY_DEADLINE, || {
            let leaders: Vec<Option<u64>> = members
                .iter()
                .map(|&id| {
                    status(&self.cluster.node(id).addr()).and_then(|s| s.leader.map(|l| l as u64))
                })
                .collect();
            if let Some(Some(leader)) = leaders.first() {
                if leaders.iter().all(|l| *l == Some(*leader)) && members.contains(leader) {
                    return Ok(*leader);
                }
            }
            Err(format!("they name {leaders:?}"))
        });
        healthy.map_err(|timeout| {
            anyhow!("the members {members:?} did not all answer and agree on a leader: {timeout}")
        })
    }

    /// Reads every key of the history linearizably through the leader, adding each read to
    /// the history; returns the keys that hold a value.
    fn read_back(
        &self,
        history: &mut Vec<Operation>,
        leader: u64,
        shared: &Shared,
    ) -> Result<BTreeMap<String, String>> {
        let keys: BTreeSet<String> = history
            .iter()
            .flat_map(|op| op.keys())
            .map(str::to_string)
            .collect();
        let addr = self.cluster.node(leader).addr();
        let reader = self.config.clients;
        let mut values = BTreeMap::new();
        let mut conn = connect(&addr)?;
        for key in keys {
            let deadline = Instant::now() + HEALTHY_DEADLINE;
            loop {
                let invoke_us = shared.now_us();
                match conn.get(&key, true) {
                    Ok(value) => {
                        history.push(Operation {
                            client: reader,
                            key: key.clone(),
                            call: Call::Get,
                            invoke_us,
                            return_us: shared.now_us(),
                            outcome: Outcome::Read(value.clone()),
                        });
                        if let Some(value) = value {
                            values.insert(key, value);
                        }
                        break;
                    }
                    Err(e) if Instant::now() >= deadline => {
                        bail!(
                            "the final read of {key:?} through node {leader} failed: {}",
                            describe_error(&e)
                        )
                    }
                    Err(_) => {
                        sleep(POLL);
                        conn = connect(&addr)?;
                    }
                }
            }
        }
        Ok(values)
    }

    /// The value of a counter, read linearizably through `leader`.
    fn read_counter(&self, leader: u64, counter: &CounterReport) -> Result<Option<i64>> {
        let addr = self.cluster.node(leader).addr();
        let deadline = Instant::now() + HEALTHY_DEADLINE;
        loop {
            match connect(&addr)?.get(&counter.key, true) {
                Ok(value) => {
                    return value
                        .map(|v| v.parse::<i64>())
                        .transpose()
                        .map_err(|e| anyhow!("counter {} is not a number: {e}", counter.key))
                }
                Err(e) if Instant::now() >= deadline => bail!(
                    "the final read of counter {} through node {leader} failed: {}",
                    counter.key,
                    describe_error(&e)
                ),
                Err(_) => sleep(POLL),
            }
        }
    }

    /// Waits until every member's own contents equal `expected`; the differences if not.
    fn converge(&self, expected: &BTreeMap<String, String>) -> std::result::Result<(), String> {
        let converged = poll(CONVERGE_DEADLINE, || {
            let mut differences = Vec::new();
            for &id in &self.members {
                match local_contents(&self.cluster.node(id).addr()) {
                    Ok(held) if &held == expected => {}
                    Ok(held) => differences.push(format!("node {id}: {}", diff(expected, &held))),
                    Err(e) => differences.push(format!("node {id}: {e:#}")),
                }
            }
            if differences.is_empty() {
                Ok(())
            } else {
                Err(format!("\n{}", differences.join("\n")))
            }
        });
        converged
            .map_err(|timeout| format!("the members do not converge to the final reads: {timeout}"))
    }
}

/// How soon after a one-way cut around the leader a write through another node must be
/// acknowledged.
const AVAILABLE_AFTER: Duration = Duration::from_secs(3);

/// Flips bit `choice % 8` of byte `choice / 8 % len` of the file at `path` and syncs it: the
/// byte offset, the bit and the file's length, or `None` if there is no such file or it is
/// empty.
fn flip_bit(path: &Path, choice: u64) -> std::io::Result<Option<(u64, u8, u64)>> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let offset = choice / 8 % len;
    let bit = (choice % 8) as u8;
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut byte)?;
    byte[0] ^= 1 << bit;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(&byte)?;
    file.sync_all()?;
    Ok(Some((offset, bit, len)))
}

/// Seconds since the Unix epoch, as `docker logs --since` takes them.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
}

/// Writes `key` through `addr` again and again for `hold`; how long after the start the first
/// write was acknowledged, if one was. Takes `hold` in all.
fn first_write_within(addr: &str, hold: Duration, key: &str) -> Option<Duration> {
    let start = Instant::now();
    let mut first = None;
    while start.elapsed() < hold {
        let acked = connect(addr)
            .ok()
            .and_then(|mut c| c.put(key, "probe").ok())
            .is_some();
        if acked && first.is_none() {
            first = Some(start.elapsed());
        }
        sleep(Duration::from_millis(100));
    }
    first
}

enum Injected {
    Done(String),
    Not(String),
}

fn hold_partition(cluster: &mut Project, sides: &[Vec<u64>], hold: Duration) -> Result<String> {
    cluster.partition(sides)?;
    sleep(hold);
    cluster.heal()?;
    Ok(format!("sides {sides:?} for {} ms", hold.as_millis()))
}

fn connect(addr: &str) -> Result<CacheClient> {
    CacheClient::connect(addr, CALL_TIMEOUT).with_context(|| format!("connecting to {addr}"))
}

fn status(addr: &str) -> Option<raftcache::gen::cache::NodeStatus> {
    CacheClient::connect(addr, STATUS_TIMEOUT)
        .ok()?
        .status()
        .ok()
}

/// Keys the suite writes outside the checked history (availability probes), left out of the
/// comparison of each node's contents with the final reads.
const PROBE_PREFIX: &str = "probe-oneway-";

/// A node's own contents (a local scan, no leader involved), availability probes left out.
fn local_contents(addr: &str) -> Result<BTreeMap<String, String>> {
    let mut client = connect(addr)?;
    let mut held = BTreeMap::new();
    let mut after = String::new();
    loop {
        let options = ReadOptions {
            consistency: Some(Consistency::LOCAL),
            min_index: None,
        };
        let page = client
            .service()
            .scan(String::new(), after.clone(), SCAN_PAGE, options)
            .map_err(|e| anyhow!("scan: {}", describe_error(&e)))?;
        let full = page.len() == SCAN_PAGE as usize;
        for entry in page {
            after = entry.key.clone();
            if !entry.key.starts_with(PROBE_PREFIX) {
                held.insert(entry.key, entry.value);
            }
        }
        if !full {
            return Ok(held);
        }
    }
}

/// The first few differences between two contents.
fn diff(expected: &BTreeMap<String, String>, held: &BTreeMap<String, String>) -> String {
    let mut out = Vec::new();
    for (key, value) in expected {
        match held.get(key) {
            None => out.push(format!("missing {key}")),
            Some(v) if v != value => out.push(format!("{key}={v:?}, the final read {value:?}")),
            Some(_) => {}
        }
    }
    for key in held.keys().filter(|k| !expected.contains_key(*k)) {
        out.push(format!("extra {key}"));
    }
    let count = out.len();
    out.truncate(5);
    format!("{count} differences: {}", out.join(", "))
}

/// Acknowledged puts of keys written once whose value the final read did not return.
fn lost_writes(history: &[Operation], final_reads: &BTreeMap<String, String>) -> Vec<String> {
    history
        .iter()
        .filter(|op| op.key.starts_with("own-") && op.outcome == Outcome::Written)
        .filter_map(|op| match &op.call {
            Call::Put(value) if final_reads.get(&op.key) != Some(value) => Some(format!(
                "{} = {value:?} (acknowledged at {} us, read back {:?})",
                op.key,
                op.return_us,
                final_reads.get(&op.key)
            )),
            _ => None,
        })
        .collect()
}

/// Operations invoked while no side of a partition held a quorum (`windows`) that got a
/// definite answer: none can, since a write must be committed by a quorum and a linearizable
/// read must hear from one after it arrives.
fn answered_without_quorum(history: &[Operation], windows: &[(u64, u64)]) -> Vec<String> {
    // Sent and answered inside the window: an answer that came once the heal began may have
    // been served after a quorum formed again (the heal reconnects nodes one by one).
    history
        .iter()
        .filter(|op| op.outcome != Outcome::Unknown)
        .filter(|op| {
            windows
                .iter()
                .any(|&(from, to)| op.invoke_us >= from && op.return_us <= to)
        })
        .map(|op| op.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, outcome: Outcome) -> Operation {
        Operation {
            client: 0,
            key: key.into(),
            call: Call::Put(value.into()),
            invoke_us: 1,
            return_us: 2,
            outcome,
        }
    }

    #[test]
    fn an_acknowledged_own_key_missing_or_changed_is_lost_and_an_unknown_one_is_not() {
        let history = vec![
            put("own-c0-1", "a", Outcome::Written),
            put("own-c0-2", "b", Outcome::Written),
            put("own-c0-3", "c", Outcome::Unknown),
            put("own-c0-4", "d", Outcome::Written),
            put("k0", "e", Outcome::Written),
        ];
        let reads: BTreeMap<String, String> = [("own-c0-1", "a"), ("own-c0-4", "x")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lost = lost_writes(&history, &reads);
        assert_eq!(lost.len(), 2, "{lost:?}");
        assert!(lost[0].starts_with("own-c0-2"));
        assert!(lost[1].starts_with("own-c0-4"));
    }

    #[test]
    fn only_answers_to_operations_sent_during_a_partition_without_quorum_count() {
        let op = |invoke_us, outcome| Operation {
            invoke_us,
            return_us: invoke_us + 10,
            ..put("k0", "v", outcome)
        };
        let history = vec![
            op(5, Outcome::Written),
            op(100, Outcome::Unknown),
            op(150, Outcome::Written),
            // Sent during the cut, answered after the heal began (seed 20019).
            op(195, Outcome::Written),
            op(250, Outcome::Written),
        ];
        let answered = answered_without_quorum(&history, &[(100, 200)]);
        assert_eq!(answered.len(), 1, "{answered:?}");
        assert!(answered[0].contains("[150..160 us]"), "{answered:?}");
    }

    #[test]
    fn diff_names_missing_changed_and_extra_keys() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let text = diff(
            &map(&[("a", "1"), ("b", "2")]),
            &map(&[("b", "3"), ("c", "4")]),
        );
        assert!(text.starts_with("3 differences"), "{text}");
        assert!(text.contains("missing a") && text.contains("b=\"3\"") && text.contains("extra c"));
    }
}
