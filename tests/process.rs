//! Multi-process tests with the real `raftcache` binary: crashes (SIGKILL, no shutdown and no
//! flush), restarts on the same flags and data dir, clean stops (SIGTERM), failover and
//! forwarding. Each node is its own process (see `multi_process`); every wait polls with a deadline.
//!
//! Run with output (failover time, phases): `cargo test --test process -- --nocapture`.
//! One ignored test reproduces a known server bug: `cargo test --test process -- --ignored`.

mod multi_process;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use multi_process::{
    connect, describe, phase, Load, Node, ProcessCluster, Retrying, WriterOutcome, DEADLINE,
};
use raftcache_testkit::wait::{poll, wait_until};

/// The expected contents of the cache: key to latest acknowledged value (`None`: removed).
type Model = BTreeMap<String, Option<String>>;

/// How long a write through a surviving node may take to succeed after the leader is killed.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(20);

/// Reads every key of `model` from `node` over one connection and describes each difference.
/// An `Err` is a failed read (not reachable yet, no leader), not a difference.
fn differences(node: &Node, model: &Model, linearizable: bool) -> Result<Vec<String>, String> {
    let mut client = node.client()?;
    let mut diffs = Vec::new();
    for (key, expected) in model {
        let found = client.get(key, linearizable).map_err(describe)?;
        if found != *expected {
            diffs.push(format!("{key}: expected {expected:?}, found {found:?}"));
        }
    }
    Ok(diffs)
}

/// Polls until `node`'s replica (read as `linearizable` says) equals `model`; returns how long
/// that took.
fn wait_until_equal(node: &Node, model: &Model, linearizable: bool) -> Duration {
    let start = Instant::now();
    let equal = poll(DEADLINE, || match differences(node, model, linearizable) {
        Ok(diffs) if diffs.is_empty() => Ok(()),
        Ok(diffs) => Err(format!(
            "{} of {} keys differ, e.g.:\n  {}",
            diffs.len(),
            model.len(),
            diffs[..diffs.len().min(10)].join("\n  ")
        )),
        Err(e) => Err(format!("reads still fail: {e}")),
    });
    if let Err(timeout) = equal {
        panic!(
            "node {} did not catch up (status {:?}): {timeout}",
            node.id,
            node.status()
        );
    }
    start.elapsed()
}

/// Reads every key of `model` once, linearizably, spreading the reads over `nodes` (a read that
/// fails is retried; a read that answers must answer the model's value, or for a key in
/// `uncertain`, whose last write was in flight at a crash, that write's value). Panics listing
/// the differences.
fn assert_linearizable_reads(
    cluster: &ProcessCluster,
    nodes: &[u64],
    model: &Model,
    uncertain: &Model,
    what: &str,
) -> Model {
    let mut readers: Vec<Retrying> = nodes
        .iter()
        .map(|id| Retrying::new(cluster.node(*id).client_addr))
        .collect();
    let mut diffs = Vec::new();
    let mut found_state = Model::new();
    for (i, (key, expected)) in model.iter().enumerate() {
        let reader = &mut readers[i % nodes.len()];
        let found = reader.get(key, true);
        found_state.insert(key.clone(), found.clone());
        if found != *expected && uncertain.get(key) != Some(&found) {
            diffs.push(format!(
                "{key} (read via {}): expected {expected:?}{}, found {found:?}",
                reader.addr,
                uncertain
                    .get(key)
                    .map(|u| format!(" (or {u:?}, in flight at the crash)"))
                    .unwrap_or_default()
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} of {} acknowledged keys are wrong, e.g.:\n  {}",
        diffs.len(),
        model.len(),
        diffs[..diffs.len().min(20)].join("\n  ")
    );
    found_state
}

/// Adds the writers' acknowledged state to `model`; returns the in-flight writes and the
/// number of acknowledged writes and retries.
fn merge(model: &mut Model, outcomes: Vec<WriterOutcome>) -> (Model, u64, u64) {
    let mut uncertain = Model::new();
    let (mut acks, mut retries) = (0, 0);
    for outcome in outcomes {
        acks += outcome.acks;
        retries += outcome.retries;
        if let Some((key, value)) = outcome.uncertain {
            // A key never acknowledged before is expected absent unless the write landed.
            model.entry(key.clone()).or_insert(None);
            uncertain.insert(key, value);
        }
        model.extend(outcome.acked);
    }
    (uncertain, acks, retries)
}

/// `raftcache status --json --addr ADDR`, parsed. Its exit status must say whether the node
/// knows a leader: 0 if it does, 1 (with the reason) if not.
fn cli_status(node: &Node) -> serde_json::Value {
    let out = Command::new(multi_process::bin())
        .args(["status", "--json", "--addr", &node.client_addr.to_string()])
        .output()
        .expect("run raftcache status");
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("status --json prints one JSON object");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if status["leader"].as_u64().is_some() {
        assert!(out.status.success(), "status --json failed: {stderr}");
    } else {
        assert_eq!(out.status.code(), Some(1), "{status}: {stderr}");
        assert!(stderr.contains("knows no leader"), "{stderr}");
    }
    status
}

/// The leader as `status --json` shows it: every node names it, and it says it is the leader.
fn leader_via_cli(cluster: &ProcessCluster, among: &[u64]) -> u64 {
    wait_until(DEADLINE, "a leader agreed in status --json", || {
        let views: Vec<serde_json::Value> = among
            .iter()
            .map(|id| cli_status(cluster.node(*id)))
            .collect();
        let leader = views[0]["leader"].as_u64();
        if let Some(leader) = leader {
            let agreed = views.iter().all(|v| v["leader"].as_u64() == Some(leader));
            let leads = views
                .iter()
                .any(|v| v["id"].as_u64() == Some(leader) && v["role"] == "leader");
            if agreed && leads {
                for v in &views {
                    assert_eq!(v["members"].as_array().map(Vec::len), Some(3), "{v}");
                }
                return Ok(leader);
            }
        }
        Err(format!("{views:?}"))
    })
}

/// a. SIGKILL of the leader of a 3-node cluster: writes through a survivor succeed again
/// within the failover deadline, and the killed node, restarted on its data dir, catches up:
/// its local reads show the latest value of every key, including those written while it was
/// down.
#[test]
fn leader_sigkill_fails_over_and_restarted_node_catches_up() {
    let t0 = Instant::now();
    let mut cluster = ProcessCluster::start(3);
    phase(t0, "a: cluster up");

    let mut model = Model::new();
    let mut writer = Retrying::new(cluster.node(1).client_addr);
    for i in 0..200 {
        let (key, value) = (format!("a{i:03}"), format!("v1-{i}"));
        writer.put(&key, &value);
        model.insert(key, Some(value));
    }
    phase(t0, "a: 200 keys written");

    let leader = leader_via_cli(&cluster, &[1, 2, 3]);
    let survivors: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    phase(t0, &format!("a: SIGKILL leader {leader}"));
    cluster.node_mut(leader).kill();
    let killed_at = Instant::now();

    // Writes through a survivor succeed again once a new leader is elected.
    let via = cluster.node(survivors[0]).client_addr;
    let mut failures = Vec::new();
    let what = format!(
        "a write through node {} after killing leader {leader}",
        survivors[0]
    );
    wait_until(FAILOVER_DEADLINE, &what, || {
        let outcome = connect(via).and_then(|mut c| c.put("failover", "done").map_err(describe));
        if let Err(e) = &outcome {
            failures.push(format!("after {} ms: {e}", killed_at.elapsed().as_millis()));
        }
        outcome
    });
    let failover = killed_at.elapsed();
    model.insert("failover".into(), Some("done".into()));
    assert!(failover < FAILOVER_DEADLINE, "failover took {failover:?}");
    let new_leader = cluster.wait_for_leader(&survivors);
    println!(
        "FAILOVER: leader {leader} SIGKILLed; first write through node {} succeeded after {} ms; new leader {new_leader}; {} failed attempt(s) before: {failures:?}",
        survivors[0],
        failover.as_millis(),
        failures.len()
    );
    phase(t0, &format!("a: failover took {failover:?}"));

    // Writes while the old leader is down: new keys, overwrites, removes.
    let mut writers: Vec<Retrying> = survivors
        .iter()
        .map(|id| Retrying::new(cluster.node(*id).client_addr))
        .collect();
    for i in 0..100 {
        let (key, value) = (format!("a-down{i:03}"), format!("down-{i}"));
        writers[i % 2].put(&key, &value);
        model.insert(key, Some(value));
    }
    for i in 0..50 {
        let (key, value) = (format!("a{i:03}"), format!("v2-{i}"));
        writers[i % 2].put(&key, &value);
        model.insert(key, Some(value));
    }
    for i in 50..60 {
        let key = format!("a{i:03}");
        let (existed, retried) = writers[i % 2].remove(&key);
        assert!(existed || retried, "remove {key}: the key existed");
        model.insert(key, None);
    }
    phase(t0, "a: 160 writes while the old leader is down");

    cluster.node_mut(leader).start();
    phase(t0, &format!("a: node {leader} restarted"));
    let caught_up = wait_until_equal(cluster.node(leader), &model, false);
    phase(
        t0,
        &format!("a: node {leader} caught up (local reads) in {caught_up:?}"),
    );
    cluster.wait_for_leader(&[1, 2, 3]);
}

/// SIGKILLs every node of the cluster at once (no shutdown, no flush), then reaps them.
fn kill_all(cluster: &mut ProcessCluster) {
    for node in &mut cluster.nodes {
        node.kill_no_wait();
    }
    for node in &mut cluster.nodes {
        node.kill();
    }
}

/// After `kill_all`: restarts the nodes that were followers of `leader` first. They are a
/// majority, so on their own they must serve every acknowledged write (a write is acknowledged
/// once a majority has it durably, and the old leader may be the only node that had it in
/// memory). Then restarts the old leader, whose local reads must converge to the same state.
fn recover_and_check(
    cluster: &mut ProcessCluster,
    leader: u64,
    model: &Model,
    uncertain: &Model,
    t0: Instant,
    what: &str,
) {
    let ids = cluster.ids();
    let followers: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
    for id in &followers {
        cluster.node_mut(*id).spawn();
    }
    for id in &followers {
        cluster.node_mut(*id).wait_up();
    }
    let new_leader = cluster.wait_for_leader(&followers);
    phase(
        t0,
        &format!("b: old followers {followers:?} restarted; leader {new_leader}"),
    );
    let state = assert_linearizable_reads(
        cluster,
        &followers,
        model,
        uncertain,
        &format!("{what}, read from the old followers alone (a majority)"),
    );
    cluster.node_mut(leader).start();
    cluster.wait_for_leader(&ids);
    let took = wait_until_equal(cluster.node(leader), &state, false);
    phase(
        t0,
        &format!(
            "b: old leader {leader} restarted and caught up in {took:?}; all {} keys checked",
            model.len()
        ),
    );
}

/// b. SIGKILL of all three nodes at once, right after the last acknowledged write: every
/// acknowledged write (puts, overwrites, removes that found the key) reads back, linearizably,
/// with its latest value, from the two old followers alone and then from all three. Twice: after
/// a sequence of writes through every node, and with writers in flight through every node.
#[test]
fn all_nodes_sigkilled_after_acks_lose_no_acknowledged_write() {
    let t0 = Instant::now();
    let mut cluster = ProcessCluster::start(3);
    phase(t0, "b: cluster up");

    let ids = cluster.ids();
    let mut writers: Vec<Retrying> = ids
        .iter()
        .map(|id| Retrying::new(cluster.node(*id).client_addr))
        .collect();
    let mut model = Model::new();
    let mut removed_existing = BTreeSet::new();
    let mut turn = 0usize;
    let mut next_writer = || {
        turn += 1;
        turn % 3
    };
    let mut acked = 0usize;
    for i in 0..300 {
        let (key, value) = (format!("b{i:03}"), format!("v1-{i}"));
        writers[next_writer()].put(&key, &value);
        acked += 1;
        model.insert(key, Some(value));
    }
    for i in (0..300).step_by(3) {
        let (key, value) = (format!("b{i:03}"), format!("v2-{i}"));
        writers[next_writer()].put(&key, &value);
        acked += 1;
        model.insert(key, Some(value));
    }
    for i in (1..300).step_by(6) {
        let key = format!("b{i:03}");
        let (existed, retried) = writers[next_writer()].remove(&key);
        acked += 1;
        assert!(existed || retried, "remove {key}: the key existed");
        if existed {
            removed_existing.insert(key.clone());
        }
        model.insert(key, None);
    }
    // The last writes before the crash: a new key, an overwrite, a remove, through every node.
    let leader = cluster.wait_for_leader(&ids);
    for i in 0..30 {
        let w = next_writer();
        let (key, value) = (format!("b-last{i:02}"), format!("last-{i}"));
        writers[w].put(&key, &value);
        acked += 1;
        model.insert(key, Some(value));
        let (key, value) = (format!("b{:03}", (i * 9) % 300), format!("v3-{i}"));
        writers[w].put(&key, &value);
        acked += 1;
        model.insert(key, Some(value));
        let key = format!("b-last{i:02}");
        if i % 2 == 1 {
            let (existed, retried) = writers[w].remove(&key);
            acked += 1;
            assert!(existed || retried, "remove {key}: the key existed");
            if existed {
                removed_existing.insert(key.clone());
            }
            model.insert(key, None);
        }
    }
    // Right after the last acknowledgement.
    kill_all(&mut cluster);
    let retries: u64 = writers.iter().map(|w| w.failures).sum();
    phase(
        t0,
        &format!(
            "b: {acked} writes acknowledged ({retries} retried), {} removes of existing keys; all nodes SIGKILLed (leader was {leader})",
            removed_existing.len()
        ),
    );
    drop(writers);
    for key in &removed_existing {
        assert_eq!(model[key], None);
    }
    recover_and_check(
        &mut cluster,
        leader,
        &model,
        &Model::new(),
        t0,
        "after SIGKILL of every node",
    );

    // Round 2: SIGKILL of every node while writes are in flight through all of them, right
    // after at least 600 acknowledgements.
    let leader = cluster.wait_for_leader(&ids);
    let addrs: Vec<_> = ids.iter().map(|id| cluster.node(*id).client_addr).collect();
    let load = Load::start("b-load", &addrs, 6);
    load.wait_acks(600);
    load.crashing();
    kill_all(&mut cluster);
    let (uncertain, acks, retries) = merge(&mut model, load.join());
    phase(
        t0,
        &format!(
            "b: {acks} concurrent writes acknowledged ({retries} retried); all nodes SIGKILLed (leader was {leader})"
        ),
    );
    recover_and_check(
        &mut cluster,
        leader,
        &model,
        &uncertain,
        t0,
        "after SIGKILL of every node under concurrent writes",
    );
}

/// c. One node (no --initial-cluster): 500 acknowledged puts, SIGKILL right after the last
/// acknowledgement, restart: all 500 are there. Then the same with four writers in flight at the
/// kill. Meant to catch a log store that acknowledges before sled's flush. A SIGKILL keeps what
/// sled already handed to the kernel, and sled hands over its buffers at every batch and
/// transaction, so such a bug loses only what is still in the process's buffers at the kill:
/// this test (with b) catches it often, not always (measured: 7 of 8 runs of this file, most of
/// them through the `flushed` watermark check at restart). Power loss is not simulated.
#[test]
fn single_node_sigkill_right_after_last_ack_keeps_every_write() {
    let t0 = Instant::now();
    let mut cluster = ProcessCluster::single();
    phase(t0, "c: node up");

    let mut model = Model::new();
    let mut client = cluster.node(1).client().expect("connect");
    for i in 0..500 {
        let (key, value) = (format!("c{i:03}"), format!("value-{i}"));
        if let Err(e) = client.put(&key, &value) {
            panic!("put {key} failed on a healthy single node: {}", describe(e));
        }
        model.insert(key, Some(value));
    }
    cluster.node_mut(1).kill();
    phase(t0, "c: 500 puts acknowledged; SIGKILLed");
    drop(client);

    cluster.node_mut(1).start();
    cluster.wait_for_leader(&[1]);
    phase(t0, "c: restarted");
    let diffs = wait_until(DEADLINE, "reads of every key", || {
        differences(cluster.node(1), &model, true)
    });
    assert!(
        diffs.is_empty(),
        "lost {} of 500 acknowledged writes across a SIGKILL, e.g.:\n  {}",
        diffs.len(),
        diffs[..diffs.len().min(20)].join("\n  ")
    );

    // Round 2: four writers, SIGKILL right after the 500th acknowledgement, writes in flight.
    let load = Load::start("c-load", &[cluster.node(1).client_addr], 4);
    load.wait_acks(500);
    load.crashing();
    cluster.node_mut(1).kill();
    let (uncertain, acks, retries) = merge(&mut model, load.join());
    phase(
        t0,
        &format!("c: {acks} concurrent writes acknowledged ({retries} retried); SIGKILLed"),
    );
    cluster.node_mut(1).start();
    cluster.wait_for_leader(&[1]);
    assert_linearizable_reads(
        &cluster,
        &[1],
        &model,
        &uncertain,
        "single node after SIGKILL under concurrent writes",
    );
    phase(t0, &format!("c: all {} keys read back", model.len()));
}

/// d. SIGTERM stops a node within a few seconds with exit status 0, even with a client
/// connected, and a restart on the same data dir keeps the data.
#[test]
fn sigterm_stops_node_cleanly_and_restart_keeps_data() {
    let t0 = Instant::now();
    let mut cluster = ProcessCluster::single();
    let mut model = Model::new();
    // The client stays connected (idle) while the node stops.
    let mut client = cluster.node(1).client().expect("connect");
    for i in 0..100 {
        let (key, value) = (format!("d{i:03}"), format!("value-{i}"));
        client.put(&key, &value).map_err(describe).expect("put");
        model.insert(key, Some(value));
    }
    let (status, took) = cluster.node_mut(1).terminate(Duration::from_secs(10));
    phase(
        t0,
        &format!("d: SIGTERM: exited with {status} after {took:?}"),
    );
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; log:\n{}",
        cluster.node(1).log_tail(20)
    );
    drop(client);

    cluster.node_mut(1).start();
    cluster.wait_for_leader(&[1]);
    phase(t0, "d: restarted");
    assert_linearizable_reads(
        &cluster,
        &[1],
        &model,
        &Model::new(),
        "after SIGTERM and restart",
    );
}

/// e. A follower forwards a write to the leader: a put through a follower's port succeeds, and
/// a linearizable read on the third node sees it at once (one read, no retry). Overwrites and
/// removes too.
#[test]
fn follower_forwards_writes_and_linearizable_reads_see_them_at_once() {
    let t0 = Instant::now();
    let cluster = ProcessCluster::start(3);
    phase(t0, "e: cluster up");
    for attempt in 1..=3 {
        let leader = cluster.wait_for_leader(&[1, 2, 3]);
        let followers: Vec<u64> = cluster
            .ids()
            .into_iter()
            .filter(|id| *id != leader)
            .collect();
        let (follower, third) = (cluster.node(followers[0]), cluster.node(followers[1]));
        let before = follower.status().expect("follower status");
        assert_eq!(before.role, "follower");
        assert_eq!(before.leader, Some(leader as i64));

        let mut via = follower.client().expect("connect to follower");
        let mut reader = third.client().expect("connect to third node");
        for i in 0..30 {
            let key = format!("e{attempt}-{i:02}");
            for value in [format!("first-{i}"), format!("second-{i}")] {
                via.put(&key, &value)
                    .map_err(describe)
                    .unwrap_or_else(|e| panic!("put {key} via follower {}: {e}", follower.id));
                let found = reader
                    .get(&key, true)
                    .map_err(describe)
                    .unwrap_or_else(|e| {
                        panic!("linearizable get {key} via node {}: {e}", third.id)
                    });
                assert_eq!(
                    found,
                    Some(value.clone()),
                    "linearizable read of {key} on node {} right after the put via follower {} was acknowledged",
                    third.id,
                    follower.id
                );
            }
            if i % 3 == 0 {
                let existed = via.remove(&key).map_err(describe).expect("remove");
                assert!(existed, "remove {key} via follower: the key existed");
                let found = reader.get(&key, true).map_err(describe).expect("get");
                assert_eq!(found, None, "{key} was removed via the follower");
            }
        }

        // The test proved forwarding only if the follower stayed a follower of the same leader.
        let after = follower.status().expect("follower status");
        if after.role == "follower" && after.leader == before.leader && after.term == before.term {
            phase(
                t0,
                &format!(
                    "e: 30 keys via follower {} (leader {leader}) read on node {}",
                    follower.id, third.id
                ),
            );
            return;
        }
        eprintln!(
            "e: leadership changed during attempt {attempt} (before {before:?}, after {after:?}); trying again"
        );
    }
    panic!("leadership changed during each of 3 attempts: forwarding was not tested");
}

/// The first write through a follower after the leader dies waits for the new leader (within
/// the request deadline) instead of failing at once with an unknown outcome. A pooled peer
/// connection to the dead leader is at end-of-file; the follower must notice that before
/// reusing it, since sending on it would turn an undelivered request into an ambiguous one.
/// The new leader is then another node, one both survivors name, and the write is readable
/// through each of them.
#[test]
fn write_via_follower_right_after_leader_crash_waits_for_the_new_leader() {
    let t0 = Instant::now();
    let mut cluster = ProcessCluster::start(3);
    let leader = cluster.wait_for_leader(&[1, 2, 3]);
    let survivors: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    let follower = survivors[0];
    phase(
        t0,
        &format!("leader {leader}; a write through follower {follower}"),
    );
    // A forwarded write leaves a pooled connection from the follower to the leader.
    let mut via = Retrying::new(cluster.node(follower).client_addr);
    via.put("before", "1");

    phase(
        t0,
        &format!("SIGKILL leader {leader}, then one write through {follower}"),
    );
    cluster.node_mut(leader).kill();
    let killed_at = Instant::now();
    let outcome = connect(cluster.node(follower).client_addr)
        .and_then(|mut c| c.put("after", "2").map_err(describe));
    if let Err(e) = outcome {
        panic!(
            "the first write via follower {follower} after leader {leader} was SIGKILLed failed after {:?} instead of waiting for a new leader: {e}",
            killed_at.elapsed()
        );
    }

    phase(t0, "the survivors agree on a new leader among themselves");
    assert!(
        !cluster.node(leader).is_running(),
        "node {leader} was killed"
    );
    let new_leader = cluster.wait_for_leader(&survivors);
    assert_ne!(
        new_leader, leader,
        "the survivors {survivors:?} name the killed node as their leader"
    );
    assert!(
        survivors.contains(&new_leader),
        "new leader {new_leader} is not one of the live nodes {survivors:?}"
    );

    phase(
        t0,
        &format!("new leader {new_leader}; read the write on each survivor"),
    );
    for id in &survivors {
        let mut reader = Retrying::new(cluster.node(*id).client_addr);
        assert_eq!(
            reader.get("after", true).as_deref(),
            Some("2"),
            "a linearizable read of the write through node {id}"
        );
    }
}

/// Rounds of `a_leader_restarted_with_its_cluster_reads_every_write_it_acknowledged`.
const RESTARTED_LEADER_ROUNDS: usize = 5;

/// A leader killed with its whole cluster finds its own vote when it starts again and leads at
/// once, without an election (openraft restores it), but it no longer knows how far its log was
/// committed: only what its state machine had made durable, which may be behind what it
/// acknowledged. A linearizable read through it right after the restart must still see the last
/// write it acknowledged before the crash. Several rounds of: 200 acknowledged overwrites of one
/// key through the leader, SIGKILL of every node, the old leader started first, then a
/// linearizable read through it, retried until it answers.
#[test]
fn a_leader_restarted_with_its_cluster_reads_every_write_it_acknowledged() {
    let t0 = Instant::now();
    let mut cluster = ProcessCluster::start(3);
    let ids = cluster.ids();
    for round in 0..RESTARTED_LEADER_ROUNDS {
        let leader = cluster.wait_for_leader(&ids);
        let addr = cluster.node(leader).client_addr;
        let mut client = connect(addr).expect("connect to the leader");
        let mut last = String::new();
        for i in 0..200 {
            last = format!("r{round}-{i}");
            client.put("k", &last).map_err(describe).expect("put");
        }
        drop(client);
        kill_all(&mut cluster);
        cluster.node_mut(leader).spawn();
        for id in ids.iter().filter(|id| **id != leader) {
            cluster.node_mut(*id).spawn();
        }
        let what = format!("round {round}: a linearizable read through node {leader}");
        let read = wait_until(DEADLINE, &what, || {
            connect(addr).and_then(|mut c| c.get("k", true).map_err(describe))
        });
        if read.as_deref() != Some(last.as_str()) {
            cluster.dump_logs(20);
        }
        assert_eq!(
            read.as_deref(),
            Some(last.as_str()),
            "round {round}: a linearizable read through restarted leader {leader} missed its last acknowledged write"
        );
        for id in &ids {
            cluster.node_mut(*id).wait_up();
        }
        phase(
            t0,
            &format!("round {round}: node {leader} read {last} after the restart"),
        );
    }
}

/// `--log-format json`: every line the node writes is one JSON object with its time, level,
/// target and message, from start to a clean stop.
#[test]
fn with_log_format_json_every_log_line_is_one_json_object() {
    let mut cluster = ProcessCluster::single_with(|node| {
        node.extra_args = vec!["--log-format=json".to_string()];
    });
    connect(cluster.node(1).client_addr)
        .and_then(|mut c| c.put("k", "v").map_err(describe))
        .expect("put");
    let (status, _) = cluster.node_mut(1).terminate(DEADLINE);
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(&cluster.node(1).log_path).expect("read the node's log");
    // The harness marks each start in the same file with a line of its own.
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.starts_with("=== test harness"))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        let object: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(object.get(field).is_some(), "no {field} in {line}");
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"message\":\"node stopped\"")),
        "{log}"
    );
}

/// A node whose peer port lies in the machine's ephemeral port range says so at start-up (the
/// test's ports come from binding port 0, so they are in that range).
#[test]
fn a_peer_port_in_the_ephemeral_range_is_warned_about() {
    let mut cluster = ProcessCluster::single();
    let port = cluster.node(1).peer_addr.port();
    let (status, _) = cluster.node_mut(1).terminate(DEADLINE);
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(&cluster.node(1).log_path).expect("read the node's log");
    let warning = log
        .lines()
        .find(|l| l.contains("the peer port is in this machine's ephemeral port range"))
        .unwrap_or_else(|| panic!("no warning for peer port {port}:\n{log}"));
    assert!(warning.contains(&format!("port={port}")), "{warning}");
}

/// Every command that prints data prints one JSON value with `--json`, for scripts: values
/// with a tab or a newline come through whole, and an absent key is `null` with exit status 1.
#[test]
fn every_command_that_prints_data_prints_json_with_json() {
    let cluster = ProcessCluster::single();
    let addr = cluster.node(1).client_addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let backup_file = dir.path().join("b.rcbackup");
    let run = |args: &[&str]| {
        let out = Command::new(multi_process::bin())
            .args(args)
            .args(["--addr", &addr])
            .output()
            .expect("run raftcache");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let value: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "{args:?} printed no single JSON value ({e}): {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), value)
    };
    let odd = "a\tvalue\nover two lines";
    let put = Command::new(multi_process::bin())
        .args(["put", "k", odd, "--addr", &addr])
        .status()
        .unwrap();
    assert!(put.success());

    let (code, got) = run(&["get", "k", "--json"]);
    assert_eq!(
        (code, &got["key"], &got["value"]),
        (Some(0), &"k".into(), &odd.into())
    );
    let (code, got) = run(&["get", "absent", "--json"]);
    assert_eq!((code, &got["value"]), (Some(1), &serde_json::Value::Null));
    let (code, got) = run(&["incr", "n", "5", "--json"]);
    assert_eq!((code, &got["value"]), (Some(0), &5.into()));
    let (_, got) = run(&["scan", "--json"]);
    let entries = got.as_array().expect("scan --json prints an array");
    assert_eq!(entries.len(), 2, "{got}");
    assert_eq!(
        (&entries[0]["key"], &entries[0]["value"]),
        (&"k".into(), &odd.into())
    );
    let (_, got) = run(&["stats", "--json"]);
    assert_eq!(got["keys"], 2, "{got}");
    let (_, got) = run(&["status", "--json"]);
    assert_eq!(got["leader"], 1, "{got}");
    let (_, got) = run(&["admin", "snapshot", "--json"]);
    assert!(got["index"].as_u64().is_some_and(|i| i > 0), "{got}");
    let (_, got) = run(&["admin", "members", "--json"]);
    assert_eq!(got["members"].as_array().map(Vec::len), Some(1), "{got}");
    let file = backup_file.display().to_string();
    let (code, got) = run(&["admin", "backup", &file, "--json"]);
    assert_eq!(
        (code, &got["file"]),
        (Some(0), &file.clone().into()),
        "{got}"
    );
}

/// `raftcache watch` prints each change under its prefix as it happens, in log order, with its
/// position; `--from` resumes after an earlier position, `--json` prints one object per line,
/// and a position the node no longer holds exits 1 and says where to watch from.
#[test]
fn watch_prints_each_change_as_it_happens_and_resumes_from_a_position() {
    let cluster = ProcessCluster::single_with(|node| {
        node.extra_args = vec!["--watch-history-bytes".into(), "2000".into()];
    });
    let addr = cluster.node(1).client_addr.to_string();
    let cli = |args: &[&str]| {
        Command::new(multi_process::bin())
            .args(args)
            .args(["--addr", &addr])
            .output()
            .expect("run raftcache")
    };
    assert!(cli(&["put", "w/a", "1"]).status.success());
    // Watching from now on: only the changes made after it started.
    let watcher = Command::new(multi_process::bin())
        .args(["watch", "w/", "--count", "3", "--addr", &addr])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(cli(&["put", "other", "x"]).status.success());
    assert!(cli(&["incr", "w/n", "5"]).status.success());
    assert!(cli(&["remove", "w/a"]).status.success());
    assert!(cli(&["put", "w/b", "two words"]).status.success());
    let out = watcher.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    let kinds: Vec<(&str, &str)> = lines.iter().map(|l| (l[1], l[2])).collect();
    assert_eq!(
        kinds,
        [("put", "w/n"), ("remove", "w/a"), ("put", "w/b")],
        "{text}"
    );
    assert_eq!(lines[2][3], "two words");
    // Resuming after the first of them prints the other two, as JSON.
    let first = lines[0][0].split('.').next().unwrap();
    let resumed = cli(&["watch", "w/", "--from", first, "--count", "2", "--json"]);
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&resumed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["kind"], "remove");
    assert_eq!(
        (&events[1]["key"], &events[1]["value"]),
        (&"w/b".into(), &"two words".into())
    );
    // Past --watch-history-bytes, the first changes are no longer held.
    let big = "v".repeat(500);
    for i in 0..10 {
        assert!(cli(&["put", &format!("w/big{i}"), &big]).status.success());
    }
    let gone = cli(&["watch", "w/", "--from", "0"]);
    let said = String::from_utf8_lossy(&gone.stderr);
    assert_eq!(gone.status.code(), Some(1), "{said}");
    assert!(
        said.contains("read the keys again and watch from index"),
        "{said}"
    );
}

/// A peer that goes down is logged once by each node that calls it, and once more when it
/// answers again: not a line per failed heartbeat and append (openraft's own warnings, several
/// a second, are off by default). Elections and leader changes are logged at INFO.
#[test]
fn a_peer_going_down_and_coming_back_is_logged_once_each_way() {
    let mut cluster = ProcessCluster::create_with(3, &[]);
    for node in &mut cluster.nodes {
        let filter = raftcache::config::DEFAULT_LOG_FILTER.to_string();
        node.env.push(("RUST_LOG".into(), filter));
    }
    cluster.start_all();
    let leader = cluster.wait_for_leader(&[1, 2, 3]);
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    cluster.node_mut(follower).kill();
    let mut writer = Retrying::new(cluster.node(leader).client_addr);
    for i in 0..20 {
        writer.put(&format!("k{i}"), "v");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.node_mut(follower).start();
    let log_path = cluster.node(leader).log_path.clone();
    let peer = format!("peer={follower} ");
    let lines = |what: &str| -> usize {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains(what) && l.contains(&peer))
            .count()
    };
    wait_until(
        DEADLINE,
        "the leader logs that the follower answers again",
        || lines("a peer answers again") == 1,
    );
    assert_eq!(lines("a peer does not answer"), 1, "down for 2 s: one line");
    let log = std::fs::read_to_string(&log_path).unwrap();
    let per_call = log
        .lines()
        .filter(|l| {
            l.contains("failed to send a heartbeat") || l.contains("ReplicationCore recv RPCError")
        })
        .count();
    assert_eq!(per_call, 0, "no line per failed call");
    assert!(
        log.contains("this node leads"),
        "the leader logs that it leads"
    );
}

/// `admin members` on a node that no leader answers for (a quorum is down) shows that node's
/// own view of the membership, says so, and exits 1, instead of only an error.
#[test]
fn admin_members_without_a_leader_shows_the_nodes_own_view() {
    let mut cluster = ProcessCluster::start_with(3, &["--request-deadline-ms=1000"]);
    let leader = cluster.wait_for_leader(&[1, 2, 3]);
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    cluster.node_mut(leader).kill();
    cluster.node_mut(others[0]).kill();
    let survivor = cluster.node(others[1]);
    let out = Command::new(multi_process::bin())
        .args([
            "admin",
            "members",
            "--addr",
            &survivor.client_addr.to_string(),
        ])
        .output()
        .expect("run raftcache admin members");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("no leader answered") && stderr.contains("own view"),
        "{stderr}"
    );
    for id in [1, 2, 3] {
        let peer = cluster.node(id).peer_addr.to_string();
        assert!(stdout.contains(&peer), "member {id} ({peer}) in: {stdout}");
    }
}
