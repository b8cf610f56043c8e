//! Randomized crash test (issue 3): a 3-node cluster of the real binary under concurrent writes,
//! SIGKILLed again and again on a seeded schedule; no acknowledged write may be lost.
//!
//! Schedule: writer threads (default 4) write without pause through all nodes, each to its own
//! keys: mostly new keys with unique values, some overwrites and removes of its earlier keys.
//! Each round, a seeded PRNG picks an action (kill -9 one random node: 1/4, kill -9 the current
//! leader: 1/4, or kill -9 all three at once: 1/2) and a delay (100-1500 ms) to wait under load
//! before it.
//! A killed single node stays down until the survivors acknowledged more writes, then it is
//! restarted (same flags, same data dir); after a kill of all, all restart. A round ends when
//! the three nodes agree on a leader, a probe write succeeds and the writers make progress again.
//!
//! Model: a writer records each acknowledged write. A write that failed after it was sent (an
//! error or timeout; a refused connection sent nothing and is retried on the next node) has an
//! unknown outcome: it is added to its key's acceptable final states, and the writer never
//! touches that key again, so no later write can race with it. A key's acceptable states are
//! its last acknowledged state (a value, or absent after a remove or if never acknowledged)
//! plus its unknown-outcome writes. A `remove` of a key whose state is known must answer
//! `existed` accordingly.
//!
//! End: the writers stop; every key is read linearizably (spread over the nodes) and must be
//! in its acceptable set; then the three nodes' LOCAL reads must converge to one acceptable
//! value per key, within a deadline.
//!
//! Parameters (environment): RAFTCACHE_CRASH_ROUNDS (default 20), RAFTCACHE_CRASH_WRITERS
//! (default 4), RAFTCACHE_CRASH_SEED (default: from the clock). The seed is printed at the start
//! and in every failure; `RAFTCACHE_CRASH_SEED=<seed> cargo test --test crash -- --nocapture`
//! replays the same schedule (actions, victims, delays; thread timing still varies). A failed
//! run copies the nodes' logs to `target/tmp/crash-<seed>/`. Longer run:
//! `RAFTCACHE_CRASH_ROUNDS=30 cargo test --test crash -- --nocapture`.
//!
//! Limits: SIGKILL keeps what a node handed to the kernel, and sled hands over its buffers at
//! each batch and transaction, so a log store that acknowledges before its flush is caught only
//! when a kill lands in that window (measured with such a broken store: 5 of 8 default runs,
//! 4 of 4 runs of 30 rounds). Power loss is not simulated here: `tests/power_cut.rs` does.

mod multi_process;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use multi_process::writers::{
    env_u64, gather, read_keys, run_writer, KeyState, Outcome, Shared, WriterReport,
};
use multi_process::{phase, ProcessCluster, Retrying, DEADLINE};
use raftcache_testkit::rng::{clock_seed, Rng};
use raftcache_testkit::wait::{poll, wait_until};

const KINDS: [&str; 3] = ["kill-random", "kill-leader", "kill-all"];

/// The cluster, the writers and the seed. On a panic (a failed check, or a wait in `multi_process`
/// that ran out), prints the seed and saves the node logs; always stops the writers.
struct Harness {
    cluster: ProcessCluster,
    seed: u64,
    shared: Arc<Shared>,
    writers: Vec<JoinHandle<WriterReport>>,
}

impl Harness {
    fn replay(&self) -> String {
        format!("seed {0} (replay: RAFTCACHE_CRASH_SEED={0})", self.seed)
    }

    fn acks(&self) -> u64 {
        self.shared.acks.load(SeqCst)
    }

    /// Polls until the writers acknowledged `more` writes beyond `from` (a writer that ended
    /// early panicked).
    fn wait_progress(&self, from: u64, more: u64, what: &str) {
        let what = format!("{what}: {more} writes acknowledged; {}", self.replay());
        wait_until(DEADLINE, &what, || {
            assert!(
                !self.writers.iter().any(JoinHandle::is_finished),
                "a writer ended early; {}",
                self.replay()
            );
            let acks = self.acks() - from;
            (acks >= more).then_some(()).ok_or(format!("only {acks}"))
        });
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        self.cluster
            .keep_logs_if_panicking("crash", self.seed, &self.replay());
    }
}

#[test]
fn randomized_sigkills_lose_no_acknowledged_write() {
    let t0 = Instant::now();
    let seed = env_u64("RAFTCACHE_CRASH_SEED").unwrap_or_else(clock_seed);
    let rounds = env_u64("RAFTCACHE_CRASH_ROUNDS").unwrap_or(20);
    let writers = env_u64("RAFTCACHE_CRASH_WRITERS").unwrap_or(4).max(1) as usize;
    println!(
        "crash test: seed {seed}, {rounds} rounds, {writers} writers (replay: RAFTCACHE_CRASH_SEED={seed} RAFTCACHE_CRASH_ROUNDS={rounds} RAFTCACHE_CRASH_WRITERS={writers} cargo test --test crash -- --nocapture)"
    );
    // Panics in `multi_process` helpers and in threads do not know the seed: say it before each.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("crash test panic; seed {seed} (replay: RAFTCACHE_CRASH_SEED={seed})");
        default_hook(info);
    }));

    let cluster = ProcessCluster::start(3);
    let ids = cluster.ids();
    let addrs: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.client_addr).collect();
    phase(
        t0,
        &format!("cluster up, logs in {}", cluster.dir().display()),
    );
    let shared = Arc::new(Shared::default());
    let writer_threads = (0..writers)
        .map(|w| {
            let (addrs, shared) = (addrs.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("writer-{w}"))
                .spawn(move || run_writer(w, &addrs, seed, &shared))
                .expect("spawn writer")
        })
        .collect();
    let mut h = Harness {
        cluster,
        seed,
        shared,
        writers: writer_threads,
    };
    h.wait_progress(0, 20 * writers as u64, "start");

    let mut rng = Rng::new(seed);
    let mut by_kind = [0u64; 3];
    let mut probes: BTreeMap<String, KeyState> = BTreeMap::new();
    for round in 1..=rounds {
        // kill-all is the round that can lose what a majority did not make durable: half.
        let kind = [0, 1, 2, 2][rng.below(4) as usize];
        let delay = Duration::from_millis(100 + rng.below(1401));
        let pick = ids[rng.below(ids.len() as u64) as usize];
        std::thread::sleep(delay); // under load: part of the schedule, not a synchronization
        let victims = match kind {
            0 => vec![pick],
            1 => vec![h.cluster.wait_for_leader(&ids)],
            _ => ids.clone(),
        };
        h.cluster.kill_at_once(&victims);
        let at_kill = h.acks();
        by_kind[kind] += 1;
        println!(
            "round {round}/{rounds}: {} victim(s) {victims:?} after {} ms; {at_kill} writes acknowledged so far ({} unknown outcome)",
            KINDS[kind],
            delay.as_millis(),
            h.shared.unknown.load(SeqCst)
        );
        if victims.len() < ids.len() {
            // The survivors (a majority) serve writes while the victim is down.
            h.wait_progress(at_kill, 2 * writers as u64, "writes with one node down");
        }
        for id in &victims {
            h.cluster.node_mut(*id).spawn();
        }
        for id in &victims {
            h.cluster.node_mut(*id).wait_up();
        }
        // Healed: one leader named by all, a probe write acknowledged, writers moving again.
        let leader = h.cluster.wait_for_leader(&ids);
        let (key, value) = (format!("probe-{round:03}"), format!("round-{round}"));
        Retrying::new(addrs[round as usize % addrs.len()]).put(&key, &value);
        probes.insert(
            key,
            KeyState {
                acked: Some(value),
                ..KeyState::default()
            },
        );
        let restarted = h.acks();
        h.wait_progress(restarted, writers as u64, "writes after the restart");
        phase(
            t0,
            &format!(
                "round {round}: healed, leader {leader}, {} writes since the kill",
                h.acks() - at_kill
            ),
        );
    }

    // Stop the writers, then every key, linearizably, spread over the nodes.
    let writers = std::mem::take(&mut h.writers);
    let Outcome {
        acks,
        unknown,
        violations,
        model,
        found,
        lost,
    } = gather(&h.cluster, &h.shared, writers, probes);
    phase(
        t0,
        &format!("writers stopped: {acks} acknowledged, {unknown} unknown"),
    );
    let keys: Vec<&String> = model.keys().collect();
    let landed = model.iter().filter(|(k, s)| found[*k] != s.acked).count() - lost.len();
    println!(
        "crash test totals: seed {seed}; rounds {rounds} (kill-random {}, kill-leader {}, kill-all {}); writes acknowledged {acks}, unknown outcome {unknown} ({landed} keys hold an unknown-outcome write); keys checked {}; lost writes {}; wrong remove answers {}; {:.1}s",
        by_kind[0],
        by_kind[1],
        by_kind[2],
        model.len(),
        lost.len(),
        violations.len(),
        t0.elapsed().as_secs_f64()
    );
    let examples = |what: &[String]| what[..what.len().min(20)].join("\n  ");
    assert!(
        lost.is_empty() && violations.is_empty(),
        "after {rounds} rounds, {} of {} keys read linearizably are not in their acceptable state (lost or wrong writes), e.g.:\n  {}\n{} remove answers contradict acknowledged writes, e.g.:\n  {}\n{}",
        lost.len(),
        model.len(),
        examples(&lost),
        violations.len(),
        examples(&violations),
        h.replay()
    );

    // Local reads on all three nodes converge to one acceptable value per key.
    let mut pending = keys.clone();
    let mut polls = 0;
    let converged = poll(DEADLINE, || {
        polls += 1;
        let views = read_keys(&h.cluster, &pending, false, false);
        let differs = |key: &String| {
            let first = &views[0][key];
            !model[key].accepts(first) || views.iter().any(|v| v[key] != *first)
        };
        pending.retain(|key| differs(key));
        let examples: Vec<String> = pending
            .iter()
            .take(10)
            .map(|k| {
                let per_node: Vec<_> = views.iter().map(|v| &v[*k]).collect();
                format!(
                    "{k}: nodes {ids:?} read {per_node:?}, acceptable {:?}",
                    model[*k]
                )
            })
            .collect();
        match pending.len() {
            0 => Ok(()),
            differ => Err(format!(
                "{differ} of {} keys differ, e.g.:\n  {}",
                keys.len(),
                examples.join("\n  ")
            )),
        }
    });
    if let Err(timeout) = converged {
        panic!(
            "the nodes' local reads did not converge: {timeout}\n{}",
            h.replay()
        );
    }
    phase(
        t0,
        &format!(
            "local reads of all {} keys on nodes {ids:?} agree after {polls} poll(s)",
            keys.len()
        ),
    );
}

/// A leader killed and started again at once must not resume leading in its old term: it may
/// have sent entries to its followers before its own log synced them (openraft sends an entry
/// while the leader's write of it is still in flight), so after a power cut its log can lack
/// entries of its term that a quorum holds and committed. Leading on in that term, it would
/// append different entries under the same log ids, which the followers take for the ones they
/// hold: committed writes lost, replicas apart (seen in `tests/power_cut.rs`). So it starts as a
/// follower and the next leader is elected in a new term, whose vote checks every log.
#[test]
fn a_leader_killed_and_started_again_at_once_waits_for_an_election_in_a_new_term() {
    let t0 = Instant::now();
    // Long timeouts: the old leader is back long before a follower would call an election.
    let mut cluster = ProcessCluster::start_with(
        3,
        &[
            "--election-timeout-min-ms=4000",
            "--election-timeout-max-ms=5000",
        ],
    );
    let leader = cluster.wait_for_leader(&[1, 2, 3]);
    let mut client = Retrying::new(cluster.node(leader).client_addr);
    client.put("before", "the kill");
    let term = cluster.node(leader).status().expect("leader status").term;
    phase(
        t0,
        &format!("node {leader} leads in term {term}; killing it"),
    );
    cluster.node_mut(leader).kill();
    cluster.node_mut(leader).start();
    phase(t0, &format!("node {leader} started again"));
    // From its first answer until a leader is elected, it never claims the old term.
    let new_leader = wait_until(DEADLINE, "a leader elected after the restart", || {
        let status = cluster.node(leader).status()?;
        assert!(
            !(status.role == "leader" && status.term == term),
            "node {leader} resumed leading in term {term} without an election"
        );
        let elected = cluster
            .nodes
            .iter()
            .filter_map(|n| n.status().ok())
            .find(|s| s.role == "leader" && s.term > term);
        elected.map(|s| (s.id as u64, s.term)).ok_or(format!(
            "node {leader} is {} in term {}",
            status.role, status.term
        ))
    });
    phase(
        t0,
        &format!("node {} leads in term {}", new_leader.0, new_leader.1),
    );
    let mut client = Retrying::new(cluster.node(new_leader.0).client_addr);
    client.put("after", "the election");
    assert_eq!(client.get("before", true), Some("the kill".to_string()));
}
