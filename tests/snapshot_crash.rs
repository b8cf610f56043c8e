//! A follower killed (`kill -9`) at any moment of a snapshot install restarts and catches up by
//! itself. Seen before: killed 10-200 ms into an install, it refused to start ("its log starts
//! after index ...": the purge of its log was durable before the install was marked).
//!
//! The same setup checks that the metrics count snapshot builds and installs.
//!
//! Run with the phases printed: `cargo test --test snapshot_crash -- --nocapture`.

mod multi_process;

use std::process::Command;
use std::time::{Duration, Instant};

use multi_process::{bin, connect, phase, ProcessCluster, Retrying, DEADLINE};
use raftcache::gen::cache::{CacheEntry, TCacheServiceSyncClient};
use raftcache_testkit::wait::wait_until;

/// Batches of `put_many` written while the follower is down, and keys per batch.
const BATCHES: usize = 60;
const PER_BATCH: usize = 200;
/// Kills at 10 ms steps, from 10 ms after a snapshot transfer to the follower begins.
const STEPS: u64 = 25;

#[test]
fn a_follower_killed_at_every_step_of_a_snapshot_install_restarts_and_catches_up() {
    let start = Instant::now();
    let (mut cluster, _leader, follower, applied) = a_follower_behind_the_purged_log(start);

    phase(
        start,
        "the follower started, and killed 10, 20, ... ms after a snapshot starts arriving",
    );
    let receiving = |log: &str| log.matches("receiving a snapshot from the leader").count();
    let mut killed_during_install = 0;
    for step in 1..=STEPS {
        let log_path = cluster.node(follower).log_path.clone();
        let before = receiving(&std::fs::read_to_string(&log_path).unwrap_or_default());
        cluster.node_mut(follower).spawn();
        // Until a new transfer begins; none within the wait means the last install completed. A
        // node that exited at once lost the race for its port (`multi_process`): start it again.
        let began = raftcache_testkit::wait::poll(Duration::from_secs(15), || {
            if cluster
                .node_mut(follower)
                .wait_exit(Duration::ZERO)
                .is_some()
            {
                cluster.node_mut(follower).spawn();
            }
            receiving(&std::fs::read_to_string(&log_path).unwrap_or_default()) > before
        });
        if began.is_err() {
            cluster.node_mut(follower).kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10 * step));
        cluster.node_mut(follower).kill();
        killed_during_install += 1;
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("snapshot installed") {
            // Caught up by this install: no later start needs a snapshot.
            break;
        }
    }
    let log = std::fs::read_to_string(&cluster.node(follower).log_path).unwrap_or_default();
    eprintln!(
        "{killed_during_install} kills after a transfer began; follower log: {} installed, {} interrupted installs finished on a restart",
        log.matches("snapshot installed").count(),
        log.matches("a snapshot install was interrupted").count(),
    );
    if killed_during_install == 0 {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("snapshot_crash");
        cluster.save_logs(&dir);
        panic!(
            "no snapshot transfer began: the test proves nothing (node logs saved in {})",
            dir.display()
        );
    }

    phase(
        start,
        "started once more, it comes up and catches up with the leader",
    );
    cluster.node_mut(follower).start();
    let node = cluster.node(follower);
    wait_until(DEADLINE, "the follower applies what the leader had", || {
        node.status().is_ok_and(|s| s.last_applied >= applied)
    });
    let mut local = Retrying::new(node.client_addr);
    let value = value();
    for batch in [0, BATCHES / 2, BATCHES - 1] {
        let key = format!("k{batch}-{}", PER_BATCH - 1);
        assert_eq!(
            local.get(&key, false).as_deref(),
            Some(value.as_str()),
            "{key}"
        );
    }
}

/// The metrics count snapshot builds and installs: the leader's builds are published, and the
/// follower that was behind the purged log counts each snapshot it installed (its log says how
/// many: one, or two when the leader first sends the snapshot it had taken for the stopped
/// follower's stream before its last build, then the latest), and refused none.
#[test]
fn snapshot_builds_and_installs_are_counted_in_the_metrics() {
    let start = Instant::now();
    let (mut cluster, leader, follower, applied) = a_follower_behind_the_purged_log(start);
    let metric = |id: u64, name: &str| cluster.node(id).metric(name).unwrap();
    let built = metric(
        leader,
        "raftcache_snapshot_builds_total{outcome=\"published\"}",
    );
    assert!(built >= 1.0, "the leader published {built} snapshot builds");
    let took = metric(leader, "raftcache_snapshot_last_build_seconds");
    assert!(took > 0.0, "last build took {took} s");
    assert!(metric(leader, "raftcache_snapshot_bytes") > 0.0);
    assert_eq!(
        metric(
            leader,
            "raftcache_snapshot_builds_total{outcome=\"failed\"}"
        ),
        0.0
    );

    phase(start, "the follower started: it catches up from a snapshot");
    cluster.node_mut(follower).start();
    let node = cluster.node(follower);
    wait_until(DEADLINE, "the follower applies what the leader had", || {
        node.status().is_ok_and(|s| s.last_applied >= applied)
    });
    let installs = |outcome: &str| {
        node.metric(&format!(
            "raftcache_snapshot_installs_total{{outcome=\"{outcome}\"}}"
        ))
        .unwrap()
    };
    let log = std::fs::read_to_string(&node.log_path).unwrap();
    let logged = log.matches("snapshot installed").count();
    assert!(logged >= 1, "the follower installed no snapshot");
    assert_eq!(installs("installed"), logged as f64);
    assert_eq!(installs("refused"), 0.0);
    let leader_installs = cluster
        .node(leader)
        .metric("raftcache_snapshot_installs_total{outcome=\"installed\"}");
    assert_eq!(leader_installs, Ok(0.0), "the leader installed no snapshot");
}

/// The value of every key written.
fn value() -> String {
    "x".repeat(400)
}

/// 3 nodes that snapshot every 20 entries; one follower stopped while the leader writes 12,000
/// keys of 400 bytes in 60 entries, takes a snapshot and purges its log past what the follower
/// holds. Returns the cluster (the follower still stopped), the leader, the follower and the
/// leader's applied index.
fn a_follower_behind_the_purged_log(start: Instant) -> (ProcessCluster, u64, u64, i64) {
    phase(
        start,
        "3 nodes, snapshots every 20 entries; one follower stopped",
    );
    let mut cluster =
        ProcessCluster::start_with(3, &["--snapshot-every=20", "--snapshot-keep-log=5"]);
    let leader = cluster.wait_for_leader(&[1, 2, 3]);
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let follower_last = cluster.node(follower).status().unwrap().last_log_index;
    cluster.node_mut(follower).kill();

    phase(
        start,
        "12,000 keys of 400 bytes in 60 entries: the leader snapshots every 20 and compacts its log",
    );
    let addr = cluster.node(leader).client_addr;
    let mut client = connect(addr).expect("connect to the leader");
    let value = value();
    for batch in 0..BATCHES {
        let entries: Vec<CacheEntry> = (0..PER_BATCH)
            .map(|i| CacheEntry::new(format!("k{batch}-{i}"), value.clone(), None))
            .collect();
        client.service().put_many(entries).expect("put_many");
    }
    let snapshot = Command::new(bin())
        .args(["admin", "snapshot", &format!("--addr={addr}")])
        .output()
        .expect("run raftcache admin snapshot");
    assert!(snapshot.status.success(), "admin snapshot: {snapshot:?}");
    let applied = cluster.node(leader).status().unwrap().last_applied;
    phase(
        start,
        "until the leader's log no longer holds what the follower needs",
    );
    // The leader purges behind a snapshot only while no replication reads those entries, so a
    // purge may wait for the failing stream to the stopped follower to be retried.
    wait_until(
        DEADLINE,
        "the leader purges its log past what the follower holds",
        || {
            cluster
                .node(leader)
                .metric("raftcache_raft_purged_index")
                .is_ok_and(|purged| purged > follower_last as f64)
        },
    );

    (cluster, leader, follower, applied)
}
