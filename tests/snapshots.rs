//! Snapshots and log compaction: a follower that was down while the leader compacted its log
//! past the follower's last entry catches up from a snapshot, and ends with the same data.

mod in_process;

use in_process::{phase, InProcessCluster, WAIT};
use openraft::async_runtime::watch::WatchReceiver;
use raftcache::types::NodeId;

/// Waits until `lagging` has installed a snapshot and applied what `leader` had applied when
/// this was called.
async fn wait_caught_up_by_snapshot(cluster: &InProcessCluster, lagging: NodeId, leader: NodeId) {
    let leader_applied = cluster
        .node(leader)
        .raft()
        .metrics()
        .borrow_watched()
        .last_applied
        .map(|l| l.index);
    cluster
        .node(lagging)
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.snapshot.is_some() && m.last_applied.map(|l| l.index) >= leader_applied,
            "snapshot installed",
        )
        .await
        .expect("the follower installs a snapshot and applies up to the leader's index");
}

/// A 3-node cluster started with `flags`, its leader, and one of its followers.
async fn three_nodes_and_a_follower(flags: &[&str]) -> (InProcessCluster, NodeId, NodeId) {
    let cluster = InProcessCluster::start(3, flags).await;
    let leader = cluster.wait_for_leader().await;
    let lagging = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    (cluster, leader, lagging)
}

/// Node `a` holds exactly what node `b` holds: the same value for each of `k0`..`k{keys}`, and as
/// many keys.
fn assert_same_data(cluster: &InProcessCluster, a: NodeId, b: NodeId, keys: usize) {
    let (ours, theirs) = (cluster.node(a).state(), cluster.node(b).state());
    for i in 0..keys {
        let key = format!("k{i}");
        assert_eq!(
            ours.get(&key).unwrap(),
            theirs.get(&key).unwrap(),
            "key {key}"
        );
    }
    assert_eq!(ours.len(), theirs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_the_compacted_log_catches_up_from_a_snapshot() {
    // Small log segments, so that the log rotates through many and purges whole ones.
    let (mut cluster, leader, lagging) = three_nodes_and_a_follower(&[
        "--snapshot-every=50",
        "--snapshot-keep-log=10",
        "--log-segment-bytes=4096",
    ])
    .await;
    cluster
        .client(leader)
        .put("before", "stop")
        .await
        .expect("put");
    cluster
        .wait_local_value(lagging, "before", Some("stop"))
        .await;
    let lagging_last = cluster
        .node(lagging)
        .raft()
        .metrics()
        .borrow_watched()
        .last_log_index
        .unwrap_or(0);

    phase("stop a follower, then write 400 entries one by one, with overwrites and removes");
    cluster.stop(lagging).await;
    let writer = cluster.client(leader);
    for i in 0..400 {
        writer
            .put(&format!("k{}", i % 300), &format!("v{i}"))
            .await
            .expect("put");
    }
    for i in 0..20 {
        assert!(writer.remove(&format!("k{i}")).await.expect("remove"));
    }

    phase("the leader purges its log past the stopped follower's last entry");
    // openraft purges behind a snapshot only while no replication stream reads those entries:
    // the stream to the stopped follower holds them until its failure is reported, after a
    // backoff of up to a second (seen: the 420 writes above can take less than that).
    let purged = cluster
        .node(leader)
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index > lagging_last),
            "the leader purges past the follower's last entry",
        )
        .await
        .unwrap_or_else(|e| {
            panic!("the leader did not purge past the follower's last entry {lagging_last}: {e}")
        })
        .purged
        .map(|p| p.index);

    phase("the leader's log rotated through segments and deleted those behind the purge point");
    let log_dir = cluster.dir.path().join(format!("node-{leader}/log"));
    let mut segment_starts: Vec<u64> = std::fs::read_dir(&log_dir)
        .expect("log dir")
        .filter_map(|e| {
            let name = e.expect("entry").file_name().into_string().ok()?;
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    segment_starts.sort_unstable();
    let purged = purged.expect("checked above");
    // A segment starting after index 0 exists only if the log rotated; the one starting at 0
    // is gone only if purging deleted it.
    assert!(
        segment_starts.first().is_some_and(|first| *first > 0 && *first <= purged + 1),
        "the oldest segment left starts after index 0, at or before the first kept entry {}: {segment_starts:?}",
        purged + 1
    );

    phase("restart the follower: it installs a snapshot and catches up");
    cluster.restart(lagging).await;
    wait_caught_up_by_snapshot(&cluster, lagging, leader).await;

    phase("its local data equals the leader's, key by key");
    assert_same_data(&cluster, lagging, leader, 300);
    let ours = cluster.node(lagging).state();
    assert_eq!(ours.get("k5").unwrap(), None, "a removed key stays removed");
    assert_eq!(ours.get("k299").unwrap().as_deref(), Some("v299"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_snapshot_builds_one_covering_everything_applied() {
    let cluster = InProcessCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    for i in 0..30 {
        cluster
            .client(leader)
            .put(&format!("k{i}"), "v")
            .await
            .expect("put");
    }
    let node = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    cluster.wait_local_value(node, "k29", Some("v")).await;
    let applied = cluster
        .node(node)
        .raft()
        .metrics()
        .borrow_watched()
        .last_applied
        .map(|l| l.index)
        .unwrap();
    assert!(
        cluster
            .node(node)
            .raft()
            .metrics()
            .borrow_watched()
            .snapshot
            .is_none(),
        "no snapshot before the command"
    );

    phase("admin snapshot on a follower");
    let index = cluster
        .client(node)
        .admin_snapshot()
        .await
        .expect("admin snapshot");
    assert!(
        index as u64 >= applied,
        "snapshot at {index} does not cover applied index {applied}"
    );
    let snapshot = cluster
        .node(node)
        .raft()
        .metrics()
        .borrow_watched()
        .snapshot
        .map(|s| s.index);
    assert_eq!(snapshot, Some(index as u64));
}

/// `admin snapshot` asked while a snapshot is being built must still end with one covering
/// what was applied when it was asked. openraft ignores a trigger while a build runs, so a
/// single trigger waited out the request deadline when the running build had read its index
/// before the last write was applied (seen in `snapshot_crash`: "no snapshot covering index
/// 61"). Each round writes one entry past the `--snapshot-every` threshold, so that the build
/// the threshold starts is still running, or just ending, when the command arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_snapshot_during_a_build_waits_for_one_covering_what_came_after() {
    const EVERY: usize = 10;
    let cluster = InProcessCluster::start(
        1,
        &[
            &format!("--snapshot-every={EVERY}"),
            "--request-deadline-ms=1500",
        ],
    )
    .await;
    let node = cluster.wait_for_leader().await;
    let client = cluster.client(node);
    let value = "x".repeat(400);
    for round in 0..40 {
        for i in 0..=EVERY {
            client
                .put(&format!("k{round}-{i}"), &value)
                .await
                .expect("put");
        }
        let applied = cluster
            .node(node)
            .raft()
            .metrics()
            .borrow_watched()
            .last_applied
            .map(|l| l.index)
            .unwrap();
        let index = client
            .admin_snapshot()
            .await
            .unwrap_or_else(|e| panic!("round {round}: admin snapshot: {e}"));
        assert!(
            index as u64 >= applied,
            "round {round}: snapshot at {index} does not cover applied index {applied}"
        );
    }
}

/// openraft 0.9 sends a follower no heartbeats while it streams a snapshot to it. Without the
/// lease kept by `PeerService::install_snapshot_chunk`, a transfer longer than the election
/// timeout made the receiving follower call elections that deposed a healthy leader and
/// restarted the transfer, over and over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_transfer_longer_than_the_election_timeout_deposes_no_leader() {
    let (mut cluster, leader, lagging) = three_nodes_and_a_follower(&[
        "--snapshot-every=50",
        "--snapshot-keep-log=10",
        "--snapshot-chunk-bytes=1024",
        "--election-timeout-min-ms=500",
        "--election-timeout-max-ms=1000",
    ])
    .await;
    cluster.stop(lagging).await;
    let writer = cluster.client(leader);
    let value = "v".repeat(100);
    for i in 0..300 {
        writer.put(&format!("k{i}"), &value).await.expect("put");
    }
    let leader_raft = cluster.node(leader).raft().clone();
    let leader_metrics = || leader_raft.metrics().borrow_watched().clone();
    leader_raft
        .wait(Some(WAIT))
        .metrics(|m| m.purged.is_some(), "log purged")
        .await
        .expect("the leader compacts its log: the follower will need a snapshot");

    phase("restart the follower with every snapshot chunk (1 KiB) held back 100 ms");
    let term = leader_metrics().current_term;
    cluster
        .faults
        .delay_snapshot_chunks(std::time::Duration::from_millis(100));
    let started = std::time::Instant::now();
    cluster.restart(lagging).await;
    wait_caught_up_by_snapshot(&cluster, lagging, leader).await;
    let took = started.elapsed();
    assert!(
        took > std::time::Duration::from_millis(2000),
        "the transfer took {took:?}, not longer than two election timeouts: the test proves nothing"
    );

    phase("no election happened meanwhile");
    let after = leader_metrics();
    assert_eq!(
        (after.current_term, after.current_leader),
        (term, Some(leader)),
        "the leader was deposed during a {took:?} snapshot transfer"
    );
    cluster
        .faults
        .delay_snapshot_chunks(std::time::Duration::ZERO);
}

/// Snapshot chunks damaged on the way (a bit flipped after the sender took their checksum) are
/// refused by the follower and sent again: it ends with exactly the leader's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_snapshot_chunks_are_refused_and_sent_again() {
    let (mut cluster, leader, lagging) = three_nodes_and_a_follower(&[
        "--snapshot-every=50",
        "--snapshot-keep-log=10",
        "--snapshot-chunk-bytes=1024",
    ])
    .await;

    phase("stop a follower; write 300 keys; the leader compacts its log past it");
    cluster.stop(lagging).await;
    let writer = cluster.client(leader);
    for i in 0..300 {
        writer
            .put(&format!("k{i}"), &format!("val-{i:04}"))
            .await
            .expect("put");
    }
    cluster
        .node(leader)
        .raft()
        .wait(Some(WAIT))
        .metrics(|m| m.purged.is_some(), "log purged")
        .await
        .expect("the leader compacts its log: the follower will need a snapshot");

    phase("restart the follower with the first 3 snapshot chunks damaged on the way");
    cluster.faults.damage_snapshot_chunks(3);
    cluster.restart(lagging).await;
    wait_caught_up_by_snapshot(&cluster, lagging, leader).await;
    assert!(
        !cluster.faults.take_damaged_snapshot_chunk(),
        "every damaged chunk was sent (the fault was exercised)"
    );

    phase("its data equals the leader's, key by key");
    assert_same_data(&cluster, lagging, leader, 300);
}

/// While a follower stays down, the leader keeps compacting its log: the replication stream to
/// the missing follower holds the entries it would send only until its failure is reported, so
/// the purge point moves on as snapshots are taken, and the log does not grow without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_keeps_purging_its_log_while_a_follower_stays_down() {
    let (mut cluster, leader, lagging) =
        three_nodes_and_a_follower(&["--snapshot-every=50", "--snapshot-keep-log=10"]).await;
    cluster.stop(lagging).await;
    let writer = cluster.client(leader);
    let purged = || {
        cluster
            .node(leader)
            .raft()
            .metrics()
            .borrow_watched()
            .purged
            .map_or(0, |p| p.index)
    };
    let mut seen = Vec::new();
    for second in 0..6 {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let mut i = 0;
        while std::time::Instant::now() < until {
            writer
                .put(&format!("s{second}-{i}"), "v")
                .await
                .expect("put");
            i += 1;
        }
        seen.push((purged(), i));
    }
    phase(&format!(
        "purge point and writes after each second: {seen:?}"
    ));
    let moves = seen.windows(2).filter(|w| w[1].0 > w[0].0).count();
    assert!(
        moves >= 4,
        "the purge point moved in {moves} of 5 seconds of writes: {seen:?}"
    );
}
