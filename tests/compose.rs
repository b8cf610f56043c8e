//! The compose cluster as a user runs it: `cluster/docker-compose.yml` started with docker-compose
//! on the image `cluster/build-image.sh` built, three containers on their own network. Checks
//! that it bootstraps by itself, that every published port serves reads and writes, that writes
//! keep working through the other two after `docker kill` of the leader, and that the killed
//! node rejoins and catches up; and that a history of concurrent clients recorded across the
//! kill and the restart, and another across cutting the leader off the network and back, are
//! linearizable (`raftcache_testkit::linearizability`).
//!
//! This test builds nothing. It uses the image named by `RAFTCACHE_IMAGE` (default
//! `raftcache:local`) and skips, saying why, when docker, docker-compose or the image is missing,
//! unless `RAFTCACHE_REQUIRE_DOCKER=1` (set by `scripts/test.sh` after it built the image), when
//! it fails instead. It runs as its own compose project on free ports, so it can run beside a
//! user's cluster, and removes its containers, network and volumes when it ends, even on failure.

use std::path::PathBuf;
use std::time::Duration;

use raftcache::client::{describe_error, CacheClient};
use raftcache_testkit::compose::{self, missing_prerequisite, Project};
use raftcache_testkit::history::{ClientLimits, Workload};
use raftcache_testkit::linearizability::{self, Limits, Operation, Outcome, Verdict};
use raftcache_testkit::rng::clock_seed;
use raftcache_testkit::wait::wait_until;

/// How long the cluster may take to elect a leader, a write to succeed after the leader is
/// killed, or the killed node to catch up. Generous: a shared 2-core machine can be slow, and
/// nothing here measures speed.
const DEADLINE: Duration = Duration::from_secs(60);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn phase(name: &str) {
    eprintln!("--- compose: {name}");
}

/// Panics with the message of a docker or docker-compose command that failed.
fn ok<T>(result: compose::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

fn addr(compose: &Project, node: u64) -> String {
    compose.node(node).addr()
}

/// Polls `attempt` until it returns `Some`, or panics after `DEADLINE` with its last error.
fn eventually<T>(what: &str, mut attempt: impl FnMut() -> Result<Option<T>, String>) -> T {
    wait_until(DEADLINE, what, || attempt()?.ok_or("not yet".to_string()))
}

fn client(addr: &str) -> Result<CacheClient, String> {
    CacheClient::connect(addr, CALL_TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))
}

/// The leader every one of `nodes` names, once they agree.
fn agreed_leader(compose: &Project, nodes: &[u64]) -> Result<Option<u64>, String> {
    let mut leaders = Vec::new();
    for &node in nodes {
        let status = client(&addr(compose, node))?
            .status()
            .map_err(|e| describe_error(&e))?;
        leaders.push(status.leader);
    }
    Ok(match leaders[0] {
        Some(l) if leaders.iter().all(|x| *x == Some(l)) => Some(l as u64),
        _ => None,
    })
}

fn put(addr: &str, key: &str, value: &str) -> Result<Option<()>, String> {
    let ok = client(addr)?
        .put(key, value)
        .map_err(|e| describe_error(&e))?;
    assert!(ok, "put answered false");
    Ok(Some(()))
}

fn get(addr: &str, key: &str, linearizable: bool) -> Result<Option<String>, String> {
    client(addr)?
        .get(key, linearizable)
        .map_err(|e| describe_error(&e))
}

/// Starts the compose cluster as project `raftcache-NAME-PID` and waits for a leader; `None`
/// (after saying why) when this machine cannot run it.
fn start_cluster(name: &str) -> Option<(Project, u64)> {
    let image = std::env::var("RAFTCACHE_IMAGE").unwrap_or_else(|_| "raftcache:local".into());
    if let Some(reason) = missing_prerequisite(&image) {
        let required = std::env::var("RAFTCACHE_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
        assert!(!required, "RAFTCACHE_REQUIRE_DOCKER=1 but {reason}");
        eprintln!("compose: SKIPPED: {reason}");
        return None;
    }
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cluster/docker-compose.yml");
    let project = format!("raftcache-{name}-{}", std::process::id());
    let compose = ok(Project::checked_in(&file, &project, &image));
    phase("up -d: three nodes bootstrap from --initial-cluster by service name");
    ok(compose.up(&[1, 2, 3]));
    let leader = eventually("the three nodes agree on a leader", || {
        agreed_leader(&compose, &[1, 2, 3])
    });
    Some((compose, leader))
}

#[test]
fn the_compose_cluster_bootstraps_serves_every_port_and_survives_killing_the_leader() {
    let Some((compose, leader)) = start_cluster("basic") else {
        return;
    };

    phase("a write through each port is read linearizably through every port");
    for writer in 1..=3 {
        let key = format!("via-{writer}");
        eventually("write", || put(&addr(&compose, writer), &key, "v"));
        for reader in 1..=3 {
            // A read may fail while, say, a busy machine delays a heartbeat into an election;
            // a read that answers must answer right.
            let found = eventually("a linearizable read", || {
                get(&addr(&compose, reader), &key, true).map(Some)
            });
            assert_eq!(
                found.as_deref(),
                Some("v"),
                "{key} read through node{reader}"
            );
        }
    }

    phase("docker kill the leader; writes through each survivor succeed again");
    let survivors: Vec<u64> = (1..=3).filter(|&n| n != leader).collect();
    ok(compose.kill(leader));
    for &node in &survivors {
        let key = format!("after-kill-{node}");
        eventually("a write through a survivor", || {
            put(&addr(&compose, node), &key, "w")
        });
    }
    let new_leader = eventually("the survivors agree on a new leader", || {
        agreed_leader(&compose, &survivors)
    });
    assert_ne!(new_leader, leader, "the killed node cannot lead");

    phase("the killed node starts again and catches up");
    ok(compose.start(leader));
    for &node in &survivors {
        let key = format!("after-kill-{node}");
        eventually("the restarted node holds the writes it missed", || {
            Ok(get(&addr(&compose, leader), &key, false)?.filter(|v| v == "w"))
        });
    }
}

/// Clients recording a history, and the keys they share (so their operations contend).
const HISTORY_CLIENTS: u64 = 4;
const HISTORY_KEYS: u64 = 3;
/// Operations a history client makes at most, however slow the phases are.
const MAX_OPS_PER_CLIENT: u64 = 5000;
/// Operations answered (by all clients together) in each phase before the next fault.
const OPS_PER_PHASE: u64 = 150;

/// Starts the history clients on every node of `compose`, with a seed from the clock.
fn start_clients(compose: &Project) -> Workload {
    let seed = clock_seed();
    eprintln!("compose: history seed {seed}");
    let limits = ClientLimits {
        hot_keys: HISTORY_KEYS,
        families: 0,
        max_ops: MAX_OPS_PER_CLIENT,
        think: Duration::ZERO,
    };
    let targets = compose.nodes.values().map(|n| n.addr()).collect();
    Workload::start(HISTORY_CLIENTS, seed, targets, limits)
}

/// Waits until the clients have had `count` more operations answered.
fn wait_for_answers(workload: &Workload, count: u64) {
    let target = workload.answered() + count;
    eventually("clients get answers", || {
        Ok((workload.answered() >= target).then_some(()))
    });
}

/// Checks `history`; on anything but linearizable, saves it as JSON lines and fails.
fn assert_linearizable(history: &[Operation]) {
    let report = linearizability::check(history, Limits::default()).expect("a valid history");
    let unknown = history.iter().filter(|op| op.outcome == Outcome::Unknown);
    let reads = history
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Read(Some(_))));
    eprintln!(
        "compose: history of {} operations ({} with unknown outcome, {} reads of a value): {:?}",
        history.len(),
        unknown.count(),
        reads.clone().count(),
        report.verdict()
    );
    assert!(
        reads.count() > 0,
        "no read returned a value: nothing was checked"
    );
    if report.verdict() != Verdict::Linearizable {
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("compose-history-{}.jsonl", std::process::id()));
        let file = std::fs::File::create(&path).expect("create the history file");
        linearizability::write_history(std::io::BufWriter::new(file), history).unwrap();
        let violations: Vec<String> = report.violations.iter().map(|v| v.to_string()).collect();
        panic!(
            "the history is {:?} (saved to {}):\n{}\nout of budget: {:?}",
            report.verdict(),
            path.display(),
            violations.join("\n"),
            report.unknown_keys
        );
    }
}

#[test]
fn a_history_recorded_across_killing_and_restarting_the_leader_is_linearizable() {
    let Some((compose, leader)) = start_cluster("history") else {
        return;
    };
    let workload = start_clients(&compose);
    phase("clients run against the whole cluster");
    wait_for_answers(&workload, OPS_PER_PHASE);
    phase("docker kill the leader while they run");
    ok(compose.kill(leader));
    wait_for_answers(&workload, OPS_PER_PHASE);
    phase("the killed node starts again while they run");
    ok(compose.start(leader));
    wait_for_answers(&workload, OPS_PER_PHASE);
    let history = workload.finish();

    phase("check the history");
    assert_linearizable(&history);
}

#[test]
fn a_history_recorded_across_isolating_the_leader_is_linearizable() {
    let Some((mut compose, leader)) = start_cluster("partition") else {
        return;
    };
    let workload = start_clients(&compose);
    phase("clients run against the whole cluster");
    wait_for_answers(&workload, OPS_PER_PHASE);
    phase("the leader's container is cut from the network while they run");
    ok(compose.isolate(leader));
    let others: Vec<u64> = (1..=3).filter(|&n| n != leader).collect();
    eventually("the other two elect a new leader", || {
        Ok(agreed_leader(&compose, &others)?.filter(|&l| l != leader))
    });
    wait_for_answers(&workload, OPS_PER_PHASE);
    phase("it is connected again while they run, and rejoins");
    ok(compose.heal());
    eventually("all three agree on a leader", || {
        agreed_leader(&compose, &[1, 2, 3])
    });
    wait_for_answers(&workload, OPS_PER_PHASE);
    let history = workload.finish();

    phase("check the history");
    assert_linearizable(&history);
}
