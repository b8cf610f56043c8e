//! Membership changes on live multi-process clusters, with the real binary and its `admin`
//! commands: growing with `--join` and `add-node`, shrinking, removing the leader, replacing a
//! killed node, all under a client that keeps writing; then each safety rule, the admin token,
//! and the start modes. Every wait polls a condition with a deadline (see `multi_process`).
//!
//! Run with the phases printed: `cargo test --test membership -- --nocapture`.

mod multi_process;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use multi_process::{bin, connect, free_addrs, phase, Node, ProcessCluster, DEADLINE, POLL};
use raftcache_testkit::wait::wait_until;

/// What one `raftcache admin ...` run printed, and how it exited.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `raftcache admin ARGS --addr ADDR` with `token` in the environment (if any).
fn admin(addr: SocketAddr, args: &[&str], token: Option<&str>) -> Ran {
    let mut command = Command::new(bin());
    command
        .arg("admin")
        .args(args)
        .arg(format!("--addr={addr}"))
        .env_remove("RAFTCACHE_ADMIN_TOKEN");
    if let Some(token) = token {
        command.env("RAFTCACHE_ADMIN_TOKEN", token);
    }
    let out = command.output().expect("run raftcache admin");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs an admin command that must succeed.
fn admin_ok(addr: SocketAddr, args: &[&str], token: Option<&str>) -> String {
    let ran = admin(addr, args, token);
    assert_eq!(
        ran.code, 0,
        "admin {args:?} via {addr} failed:\n{}{}",
        ran.stdout, ran.stderr
    );
    ran.stdout
}

/// Runs an admin command that must be refused (exit 2) with a message containing `expected`.
fn admin_refused(addr: SocketAddr, args: &[&str], token: Option<&str>, expected: &str) {
    let ran = admin(addr, args, token);
    assert_eq!(
        ran.code, 2,
        "admin {args:?} should have failed: {}{}",
        ran.stdout, ran.stderr
    );
    assert!(
        ran.stderr.contains(expected),
        "admin {args:?}: expected a message containing {expected:?}, got: {}",
        ran.stderr
    );
}

/// Voter and learner ids, as `status` (each node's own view) reports them.
type View = (BTreeSet<i64>, BTreeSet<i64>);

fn status_view(node: &Node) -> Result<View, String> {
    let status = node.status()?;
    if status.membership_changing == Some(true) {
        return Err("a change is in progress".into());
    }
    let voters = status.members.iter().filter(|m| m.voter).map(|m| m.id);
    let learners = status.members.iter().filter(|m| !m.voter).map(|m| m.id);
    Ok((voters.collect(), learners.collect()))
}

/// Waits until `status` on every node of `on` shows exactly `voters` and `learners`.
fn wait_membership(cluster: &ProcessCluster, on: &[u64], voters: &[u64], learners: &[u64]) {
    let expected: View = (
        voters.iter().map(|v| *v as i64).collect(),
        learners.iter().map(|l| *l as i64).collect(),
    );
    let what = format!("nodes {on:?} all show voters {voters:?} and learners {learners:?}");
    wait_until(DEADLINE, &what, || {
        let views: Vec<_> = on.iter().map(|id| status_view(cluster.node(*id))).collect();
        let shown = views.iter().all(|v| v.as_ref() == Ok(&expected));
        shown.then_some(()).ok_or(format!("{views:?}"))
    });
}

/// `admin members --json` via every node of `on`: they must agree, on `voters` exactly.
fn assert_members_agree(cluster: &ProcessCluster, on: &[u64], voters: &[u64]) {
    let expected: BTreeSet<i64> = voters.iter().map(|v| *v as i64).collect();
    for id in on {
        let out = admin_ok(cluster.node(*id).client_addr, &["members", "--json"], None);
        let json: serde_json::Value = serde_json::from_str(&out).expect("members --json");
        let members = json["members"].as_array().expect("members array");
        let listed: BTreeSet<i64> = members
            .iter()
            .filter(|m| m["voter"] == true)
            .map(|m| m["id"].as_i64().expect("id"))
            .collect();
        assert_eq!(listed, expected, "admin members via node {id}: {out}");
        for m in members {
            assert!(
                m["client_addr"].as_str().is_some_and(|a| !a.is_empty()),
                "member without a client address via node {id}: {out}"
            );
        }
    }
}

/// Starts nodes 2 and 3 with `--join` to node 1 (client address `a1`) and waits until all three
/// are voters everywhere.
fn grow_to_three_with_join(cluster: &mut ProcessCluster, a1: SocketAddr) {
    for _ in 0..2 {
        let id = cluster.add_node(&[format!("--join={a1}")]);
        cluster.node_mut(id).start();
    }
    settle(cluster, &[1, 2, 3], &[1, 2, 3]);
}

/// Waits until every node of `on` shows exactly `voters` (and no learner) in `status`, then
/// checks that `admin members --json` agrees via each of them.
fn settle(cluster: &ProcessCluster, on: &[u64], voters: &[u64]) {
    wait_membership(cluster, on, voters, &[]);
    assert_members_agree(cluster, on, voters);
}

/// A client that writes new keys (`w{n}` = `v{n}`) without pause, through whichever of the
/// current member addresses answers, and records every acknowledged one.
struct Writer {
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Vec<u64>, Duration)>,
}

impl Writer {
    fn start(addrs: Vec<SocketAddr>) -> Self {
        let addrs = Arc::new(Mutex::new(addrs));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (addrs.clone(), stop.clone());
        let thread = std::thread::spawn(move || write_until_stopped(&a, &s));
        Writer {
            addrs,
            stop,
            thread,
        }
    }

    /// The addresses the writer may use from now on.
    fn set_addrs(&self, addrs: Vec<SocketAddr>) {
        *self.addrs.lock().unwrap() = addrs;
    }

    /// Stops the writer; returns the acknowledged key numbers and the longest time writes
    /// kept failing (printed, not asserted: tests never assert times).
    fn stop(self) -> (Vec<u64>, Duration) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("writer panicked")
    }
}

fn write_until_stopped(addrs: &Mutex<Vec<SocketAddr>>, stop: &AtomicBool) -> (Vec<u64>, Duration) {
    let (mut acked, mut longest) = (Vec::new(), Duration::ZERO);
    let (mut n, mut turn) = (0u64, 0usize);
    let mut failing_since: Option<Instant> = None;
    let mut client = None;
    while !stop.load(Ordering::SeqCst) {
        let addr = {
            let addrs = addrs.lock().unwrap();
            addrs[turn % addrs.len()]
        };
        let outcome = client
            .take()
            .map_or_else(|| connect(addr), Ok)
            .and_then(|mut c| {
                let put = c.put(&format!("w{n}"), &format!("v{n}"));
                put.map(|_| c).map_err(multi_process::describe)
            });
        match outcome {
            Ok(c) => {
                client = Some(c);
                acked.push(n);
                n += 1;
                if let Some(since) = failing_since.take() {
                    longest = longest.max(since.elapsed());
                }
            }
            Err(_) => {
                failing_since.get_or_insert_with(Instant::now);
                let since = failing_since.expect("set above");
                assert!(
                    since.elapsed() < DEADLINE,
                    "writes kept failing for {DEADLINE:?}"
                );
                // The key may or may not have been written: write the next one instead, so
                // every acknowledged key has exactly one expected value.
                n += 1;
                turn += 1;
                std::thread::sleep(POLL);
            }
        }
    }
    (acked, longest)
}

/// Waits until `node`'s local replica holds every key of `expected`.
fn wait_local_reads(node: &Node, expected: &BTreeMap<String, String>) {
    let what = format!("node {} holds every acknowledged write", node.id);
    wait_until(DEADLINE, &what, || {
        let mut missing = Vec::new();
        match node.client() {
            Ok(mut client) => {
                for (key, value) in expected {
                    match client.get(key, false) {
                        Ok(Some(found)) if found == *value => {}
                        other => missing.push(format!("{key}: {other:?}")),
                    }
                    if missing.len() > 5 {
                        break;
                    }
                }
            }
            Err(e) => missing.push(e),
        }
        missing
            .is_empty()
            .then_some(())
            .ok_or(format!("missing {missing:?}"))
    });
}

fn client_addrs(cluster: &ProcessCluster, ids: &[u64]) -> Vec<SocketAddr> {
    ids.iter().map(|id| cluster.node(*id).client_addr).collect()
}

/// The leader, as node `ask` sees it once every node in `among` agrees.
fn leader(cluster: &ProcessCluster, among: &[u64]) -> u64 {
    cluster.wait_for_leader(among)
}

#[test]
fn grow_shrink_remove_the_leader_and_replace_a_dead_node_while_writing() {
    let start = Instant::now();
    phase(start, "one node, 1,000 keys");
    let mut cluster = ProcessCluster::single();
    let a1 = cluster.node(1).client_addr;
    let mut seed = connect(a1).unwrap();
    let mut expected = BTreeMap::new();
    for i in 0..1000 {
        seed.put(&format!("seed{i}"), "s").unwrap();
        expected.insert(format!("seed{i}"), "s".to_string());
    }
    let writer = Writer::start(vec![a1]);

    phase(start, "grow to 3 with --join");
    grow_to_three_with_join(&mut cluster, a1);
    writer.set_addrs(client_addrs(&cluster, &[1, 2, 3]));

    phase(
        start,
        "grow to 5 with add-node (nodes started with --no-bootstrap)",
    );
    for _ in 0..2 {
        let id = cluster.add_node(&["--no-bootstrap".to_string()]);
        cluster.node_mut(id).start();
        let peer = cluster.node(id).peer_addr.to_string();
        let out = admin(a1, &["add-node", &id.to_string(), &peer], None);
        assert_eq!(out.code, 0, "add-node {id}: {}", out.stderr);
        assert!(
            out.stderr.contains("caught up"),
            "no progress shown: {}",
            out.stderr
        );
    }
    let all = [1, 2, 3, 4, 5];
    settle(&cluster, &all, &all);
    writer.set_addrs(client_addrs(&cluster, &all));

    phase(start, "remove the leader");
    let old_leader = leader(&cluster, &all);
    let rest: Vec<u64> = all.iter().copied().filter(|i| *i != old_leader).collect();
    writer.set_addrs(client_addrs(&cluster, &rest));
    admin_ok(
        cluster.node(rest[0]).client_addr,
        &["remove-node", &old_leader.to_string()],
        None,
    );
    settle(&cluster, &rest, &rest);
    let new_leader = leader(&cluster, &rest);
    assert_ne!(new_leader, old_leader);
    assert_removed(cluster.node(old_leader));

    phase(start, "shrink to 3");
    let gone = *rest.iter().rev().find(|i| **i != new_leader).unwrap();
    let three: Vec<u64> = rest.iter().copied().filter(|i| *i != gone).collect();
    writer.set_addrs(client_addrs(&cluster, &three));
    admin_ok(
        cluster.node(three[0]).client_addr,
        &["remove-node", &gone.to_string()],
        None,
    );
    settle(&cluster, &three, &three);
    assert_removed(cluster.node(gone));

    phase(
        start,
        "kill a follower; removing a live voter now is refused",
    );
    let dead = *three.iter().find(|i| **i != new_leader).unwrap();
    let live: Vec<u64> = three.iter().copied().filter(|i| *i != dead).collect();
    writer.set_addrs(client_addrs(&cluster, &live));
    cluster.node_mut(dead).kill();
    let other_live = *live.iter().find(|i| **i != new_leader).unwrap();
    admin_refused(
        cluster.node(new_leader).client_addr,
        &["remove-node", &other_live.to_string()],
        None,
        "only",
    );

    phase(start, "replace the dead node by a fresh one");
    let fresh = cluster.add_node(&["--no-bootstrap".to_string()]);
    cluster.node_mut(fresh).start();
    let fresh_peer = cluster.node(fresh).peer_addr.to_string();
    admin_ok(
        cluster.node(live[0]).client_addr,
        &[
            "replace-node",
            &dead.to_string(),
            &fresh.to_string(),
            &fresh_peer,
        ],
        None,
    );
    let voters: Vec<u64> = live.iter().copied().chain([fresh]).collect();
    settle(&cluster, &voters, &voters);
    writer.set_addrs(client_addrs(&cluster, &voters));
    connect(cluster.node(fresh).client_addr)
        .unwrap()
        .put("after", "x")
        .unwrap();

    phase(
        start,
        "stop writing; every voter holds every acknowledged write",
    );
    let (acked, longest) = writer.stop();
    eprintln!(
        "{} writes acknowledged; longest run of failures {longest:?}",
        acked.len()
    );
    assert!(
        acked.len() > 10,
        "the writer made too little progress: {}",
        acked.len()
    );
    for n in acked {
        expected.insert(format!("w{n}"), format!("v{n}"));
    }
    expected.insert("after".into(), "x".into());
    for id in &voters {
        wait_local_reads(cluster.node(*id), &expected);
    }
    assert_members_agree(&cluster, &voters, &voters);
}

/// A removed node says so in `status` and refuses client requests with a message saying why.
fn assert_removed(node: &Node) {
    let what = format!("node {} says it was removed", node.id);
    wait_until(DEADLINE, &what, || match node.status() {
        Ok(status) if status.role == "removed" => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let refused = node.client().unwrap().put("k", "v").unwrap_err();
    let message = multi_process::describe(refused);
    assert!(message.contains("was removed"), "{message}");
    assert_cli_status_fails(node, "was removed from its cluster");
}

/// `raftcache status` of `node` exits 1 and says `why` on stderr (a node that cannot serve).
fn assert_cli_status_fails(node: &Node, why: &str) {
    let out = Command::new(bin())
        .args(["status", "--addr", &node.client_addr.to_string()])
        .output()
        .expect("run raftcache status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(why), "{stderr}");
}

/// A free loopback address with nothing listening on it.
fn dead_addr() -> String {
    free_addrs(1)[0].to_string()
}

#[test]
fn the_safety_rules_refuse_with_their_reason_and_the_token_guards_admin_calls() {
    let start = Instant::now();
    phase(
        start,
        "three nodes with an admin token and a short probe timeout",
    );
    let flags = [
        "--admin-token=sesame",
        "--peer-probe-timeout-ms=300",
        "--request-deadline-ms=2000",
    ];
    let mut cluster = ProcessCluster::start_with(3, &flags);
    let a1 = cluster.node(1).client_addr;
    let token = Some("sesame");

    phase(start, "admin calls need the token; reads and writes do not");
    admin_refused(a1, &["members"], None, "unauthorized");
    admin_refused(a1, &["members"], Some("wrong"), "unauthorized");
    admin_refused(a1, &["remove-node", "3"], None, "unauthorized");
    admin_ok(a1, &["members"], token);
    admin_refused(a1, &["snapshot"], None, "unauthorized");
    admin_ok(a1, &["snapshot"], token);
    let old_call = connect(a1).unwrap().admin_snapshot().unwrap_err();
    assert!(multi_process::describe(old_call).contains("unauthorized"));
    let mut client = connect(a1).unwrap();
    client.put("k", "v").unwrap();
    assert_eq!(client.get("k", true).unwrap(), Some("v".into()));

    phase(
        start,
        "add-node of an existing voter changes nothing, and says so",
    );
    let peer2 = cluster.node(2).peer_addr.to_string();
    let ran = admin(a1, &["add-node", "2", &peer2], token);
    assert_eq!(ran.code, 0, "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stderr.contains("already a voter") && ran.stderr.contains("nothing changed"),
        "{}",
        ran.stderr
    );
    admin_refused(
        a1,
        &["add-node", "2", &dead_addr()],
        token,
        "node ids are never reused",
    );

    phase(start, "a new voter that does not answer is refused");
    admin_refused(
        a1,
        &["add-node", "4", &dead_addr()],
        token,
        "does not answer",
    );
    admin_refused(a1, &["add-learner", "4", &dead_addr()], token, "--force");
    // Refusals are logged with their reason where the call arrived; tokens never are.
    let log = std::fs::read_to_string(&cluster.node(1).log_path).unwrap();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("admin change refused"))
        .collect();
    assert!(
        refused.iter().any(|l| l.contains("does not answer")),
        "{refused:?}"
    );
    assert!(
        log.contains("admin call refused: it lacks the admin token"),
        "{log}"
    );
    assert!(
        !log.contains("sesame") && !log.contains("\"wrong\""),
        "{log}"
    );

    phase(
        start,
        "a peer port that accepts but never answers: refused within the probe timeout",
    );
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    admin_refused(
        a1,
        &["add-learner", "4", &silent_addr],
        token,
        "within the probe timeout of 300 ms",
    );
    drop(silent);

    phase(
        start,
        "forced, the node is added but never catches up: add-node gives up, bounded",
    );
    admin_refused(
        a1,
        &[
            "add-node",
            "4",
            &dead_addr(),
            "--force",
            "--catch-up-timeout-ms=500",
        ],
        token,
        "did not catch up",
    );
    wait_membership(&cluster, &[1, 2, 3], &[1, 2, 3], &[4]);
    admin_ok(a1, &["remove-node", "4"], token);
    wait_membership(&cluster, &[1, 2, 3], &[1, 2, 3], &[]);

    // A follower goes down (not the leader: its election would eat the short request deadline).
    let leader = cluster.wait_for_leader(&[1, 2, 3]);
    let mut followers = [1, 2, 3].into_iter().filter(|id| *id != leader);
    let (up, down) = (followers.next().unwrap(), followers.next().unwrap());
    let al = cluster.node(leader).client_addr;
    phase(
        start,
        "a follower down: a forced change that needs it stays in progress",
    );
    cluster.node_mut(down).kill();
    admin_ok(al, &["add-learner", "5", &dead_addr(), "--force"], token);
    admin_refused(al, &["promote", "5"], token, "does not answer");
    let stuck = admin(al, &["promote", "5", "--force"], token);
    assert_eq!(
        stuck.code, 2,
        "a promote that cannot commit must fail: {}",
        stuck.stdout
    );
    assert!(stuck.stderr.contains("not committed"), "{}", stuck.stderr);

    phase(start, "a second change while one is in progress is refused");
    admin_refused(al, &["remove-node", &up.to_string()], token, "in progress");

    phase(start, "the follower back: the change completes by itself");
    cluster.node_mut(down).start();
    wait_membership(&cluster, &[1, 2, 3], &[1, 2, 3, 5], &[]);
    admin_ok(a1, &["remove-node", "5"], token);
    wait_membership(&cluster, &[1, 2, 3], &[1, 2, 3], &[]);

    phase(
        start,
        "demoting the leader is refused; a follower is demoted",
    );
    let leader = cluster.wait_for_leader(&[1, 2, 3]);
    admin_refused(a1, &["demote", &leader.to_string()], token, "remove-node");
    let demoted = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let voters: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != demoted).collect();
    admin_ok(a1, &["demote", &demoted.to_string()], token);
    wait_membership(&cluster, &[1, 2, 3], &voters, &[demoted]);
    let role = cluster.node(demoted).status().unwrap().role;
    assert_eq!(role, "learner", "a demoted node is a learner, not removed");

    phase(start, "the membership survives a restart of every node");
    cluster.kill_at_once(&[1, 2, 3]);
    for id in [1, 2, 3] {
        cluster.node_mut(id).start();
    }
    wait_membership(&cluster, &[1, 2, 3], &voters, &[demoted]);
    assert_eq!(
        client_after_restart(&cluster, demoted),
        Some("v".to_string())
    );
}

fn client_after_restart(cluster: &ProcessCluster, id: u64) -> Option<String> {
    let mut reader = multi_process::Retrying::new(cluster.node(id).client_addr);
    reader.get("k", true)
}

#[test]
fn join_as_a_learner_resumes_after_a_restart_rejoins_after_a_removal_and_gives_up_in_time() {
    let start = Instant::now();
    phase(
        start,
        "a node that joins nothing gives up after the join timeout",
    );
    let mut cluster = ProcessCluster::single();
    let a1 = cluster.node(1).client_addr;
    let lost = cluster.add_node(&[
        format!("--join={}", dead_addr()),
        "--join-timeout-ms=1000".to_string(),
    ]);
    cluster.node_mut(lost).spawn();
    let exit = cluster.node_mut(lost).wait_exit(DEADLINE);
    assert_eq!(
        exit.and_then(|e| e.code()),
        Some(2),
        "the node should exit with 2"
    );
    let log = cluster.node(lost).log_tail(20);
    assert!(log.contains("could not join"), "{log}");

    phase(
        start,
        "--join --learner stays a learner, and resumes after a restart",
    );
    connect(a1).unwrap().put("k", "v").unwrap();
    let learner = cluster.add_node(&[format!("--join={a1}"), "--learner".to_string()]);
    cluster.node_mut(learner).start();
    wait_membership(&cluster, &[1, learner], &[1], &[learner]);
    cluster.node_mut(learner).kill();
    cluster.node_mut(learner).start();
    wait_membership(&cluster, &[1, learner], &[1], &[learner]);
    let expected = BTreeMap::from([("k".to_string(), "v".to_string())]);
    wait_local_reads(cluster.node(learner), &expected);

    phase(
        start,
        "a removed learner is told so, and rejoins with --join",
    );
    admin_ok(a1, &["remove-node", &learner.to_string()], None);
    assert_removed(cluster.node(learner));
    cluster.node_mut(learner).kill();
    cluster.node_mut(learner).extra_args = vec![format!("--join={a1}")];
    cluster.node_mut(learner).start();
    wait_membership(&cluster, &[1, learner], &[1, learner], &[]);
    connect(cluster.node(learner).client_addr)
        .unwrap()
        .put("back", "yes")
        .unwrap();

    phase(
        start,
        "a --no-bootstrap node waits, answering status, and refuses clients",
    );
    let waiting = cluster.add_node(&["--no-bootstrap".to_string()]);
    cluster.node_mut(waiting).start();
    let status = cluster.node(waiting).status().unwrap();
    assert_eq!(status.role, "waiting");
    assert_eq!(status.cluster_id, None);
    assert_cli_status_fails(cluster.node(waiting), "waits to be added");
    let refused = cluster
        .node(waiting)
        .client()
        .unwrap()
        .put("k", "v")
        .unwrap_err();
    assert!(multi_process::describe(refused).contains("not a member"));
    let addr = cluster.node(waiting).client_addr;
    admin_refused(addr, &["members"], None, "not a member of any cluster yet");

    phase(
        start,
        "added, the --no-bootstrap node is a voter, and stays one after a restart",
    );
    let peer = cluster.node(waiting).peer_addr.to_string();
    admin_ok(a1, &["add-node", &waiting.to_string(), &peer], None);
    let voters = [1, learner, waiting];
    wait_membership(&cluster, &voters, &voters, &[]);
    cluster.node_mut(waiting).kill();
    cluster.node_mut(waiting).start();
    wait_membership(&cluster, &voters, &voters, &[]);
    let status = cluster.node(waiting).status().unwrap();
    assert!(status.cluster_id.is_some(), "it adopted the cluster's id");
    wait_local_reads(cluster.node(waiting), &expected);
}

/// The acceptance run: one node with 1,000 keys grows to 3 with `--join`; the original
/// node is killed and replaced by a fresh node 4; node 2 is removed and its machine (same
/// addresses, wiped data dir) comes back as a fresh node 5; a client writes throughout.
#[test]
fn acceptance_join_kill_replace_remove_and_return_as_a_new_node() {
    let start = Instant::now();
    phase(
        start,
        "node 1 with 1,000 keys, a client writing from now on",
    );
    let mut cluster = ProcessCluster::single();
    let a1 = cluster.node(1).client_addr;
    let mut expected = BTreeMap::new();
    let mut seed = connect(a1).unwrap();
    for i in 0..1000 {
        seed.put(&format!("k{i}"), &format!("{i}")).unwrap();
        expected.insert(format!("k{i}"), format!("{i}"));
    }
    let writer = Writer::start(vec![a1]);

    phase(start, "grow to 3 with --join");
    grow_to_three_with_join(&mut cluster, a1);

    phase(start, "kill node 1, replace it by a fresh node 4");
    writer.set_addrs(client_addrs(&cluster, &[2, 3]));
    cluster.node_mut(1).kill();
    let four = cluster.add_node(&["--no-bootstrap".to_string()]);
    cluster.node_mut(four).start();
    let peer4 = cluster.node(four).peer_addr.to_string();
    let a2 = cluster.node(2).client_addr;
    admin_ok(a2, &["replace-node", "1", "4", &peer4], None);
    settle(&cluster, &[2, 3, 4], &[2, 3, 4]);

    phase(
        start,
        "remove node 2; its machine comes back wiped, as node 5",
    );
    writer.set_addrs(client_addrs(&cluster, &[3, 4]));
    admin_ok(cluster.node(3).client_addr, &["remove-node", "2"], None);
    settle(&cluster, &[3, 4], &[3, 4]);
    cluster.node_mut(2).kill();
    let (client2, peer2) = (cluster.node(2).client_addr, cluster.node(2).peer_addr);
    let five = cluster.add_node(&["--no-bootstrap".to_string()]);
    cluster.node_mut(five).client_addr = client2;
    cluster.node_mut(five).peer_addr = peer2;
    cluster.node_mut(five).start();
    admin_ok(
        cluster.node(3).client_addr,
        &["add-node", "5", &peer2.to_string()],
        None,
    );
    settle(&cluster, &[3, 4, 5], &[3, 4, 5]);
    writer.set_addrs(client_addrs(&cluster, &[3, 4, 5]));

    phase(
        start,
        "every voter holds the 1,000 keys and every acknowledged write",
    );
    let (acked, longest) = writer.stop();
    eprintln!(
        "{} writes acknowledged; longest run of failures {longest:?}",
        acked.len()
    );
    for n in acked {
        expected.insert(format!("w{n}"), format!("v{n}"));
    }
    for id in [3, 4, 5] {
        wait_local_reads(cluster.node(id), &expected);
    }
}

/// The `admin members --json` entry of node `id`, asked via `addr`.
fn member_entry(addr: SocketAddr, id: u64) -> serde_json::Value {
    let out = admin_ok(addr, &["members", "--json"], None);
    let json: serde_json::Value = serde_json::from_str(&out).expect("members --json");
    let members = json["members"].as_array().expect("members array");
    let entry = members.iter().find(|m| m["id"] == id);
    entry
        .unwrap_or_else(|| panic!("node {id} is not listed: {out}"))
        .clone()
}

#[test]
fn join_registers_the_advertised_addresses_and_refuses_an_unspecified_one_without_them() {
    let start = Instant::now();
    phase(start, "one node");
    let mut cluster = ProcessCluster::single();
    let a1 = cluster.node(1).client_addr;

    phase(
        start,
        "--join with --peer-listen 0.0.0.0 and no --advertise-peer: refused, nothing bound or written",
    );
    // The node would bind 0.0.0.0:P. Holding 127.0.0.1:P keeps this test on loopback even if
    // the refusal were missing: that bind then fails (the port is taken) instead of listening
    // on every interface, and the test still fails on the message.
    let held = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let held_port = held.local_addr().expect("local addr").port();
    let refused = cluster.add_node(&[format!("--join={a1}")]);
    let unspecified: SocketAddr = format!("0.0.0.0:{held_port}").parse().unwrap();
    cluster.node_mut(refused).peer_addr = unspecified;
    cluster.node_mut(refused).spawn();
    let exit = cluster.node_mut(refused).wait_exit(DEADLINE);
    drop(held);
    let log = cluster.node(refused).log_tail(20);
    assert_eq!(exit.and_then(|e| e.code()), Some(2), "{log}");
    assert!(log.contains("invalid configuration"), "{log}");
    assert!(log.contains("--advertise-peer HOST:PORT"), "{log}");
    assert!(log.contains(&unspecified.to_string()), "{log}");
    assert!(
        !cluster.node(refused).data_dir.exists(),
        "a refused node must not create its data dir"
    );

    phase(
        start,
        "a node on loopback advertising host names joins; the cluster records those names",
    );
    let joined = cluster.add_node(&[format!("--join={a1}")]);
    let node = cluster.node(joined);
    let peer_name = format!("localhost:{}", node.peer_addr.port());
    let client_name = format!("localhost:{}", node.client_addr.port());
    cluster.node_mut(joined).extra_args.extend([
        format!("--advertise-peer={peer_name}"),
        format!("--advertise-client={client_name}"),
    ]);
    cluster.node_mut(joined).start();
    wait_membership(&cluster, &[1, joined], &[1, joined], &[]);
    for via in [1, joined] {
        let entry = member_entry(cluster.node(via).client_addr, joined);
        assert_eq!(entry["peer_addr"], peer_name.as_str(), "via node {via}");
        assert_eq!(entry["client_addr"], client_name.as_str(), "via node {via}");
        assert_eq!(entry["reachable"], true, "via node {via}");
    }

    phase(
        start,
        "both voters take writes: the leader replicates to the advertised name",
    );
    connect(a1).unwrap().put("from-1", "a").unwrap();
    connect(cluster.node(joined).client_addr)
        .unwrap()
        .put("from-joined", "b")
        .unwrap();
    let expected = BTreeMap::from([
        ("from-1".to_string(), "a".to_string()),
        ("from-joined".to_string(), "b".to_string()),
    ]);
    for id in [1, joined] {
        wait_local_reads(cluster.node(id), &expected);
    }
}
