//! 3-node clusters in one process: replication, follower forwarding, linearizable reads on a
//! follower, leader failover, a stopped node catching up, and a partitioned leader.

mod in_process;

use in_process::{phase, InProcessCluster};
use openraft::async_runtime::watch::WatchReceiver;
use raftcache::gen::cache::Unavailable;
use raftcache::types::NodeId;
use raftcache_testkit::wait::wait_until_async;

fn followers(cluster: &InProcessCluster, leader: NodeId) -> Vec<NodeId> {
    cluster
        .nodes
        .keys()
        .copied()
        .filter(|id| *id != leader)
        .collect()
}

fn is_unavailable(e: &thrift::Error) -> bool {
    matches!(e, thrift::Error::User(u) if u.is::<Unavailable>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_on_any_node_replicate_to_every_replica() {
    let cluster = InProcessCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;

    phase("a write on each node, leader and followers alike");
    for id in [1, 2, 3] {
        let key = format!("from-{id}");
        assert!(cluster
            .client(id)
            .put(&key, &format!("value-{id}"))
            .await
            .expect("put"));
    }

    phase("every replica's local state holds every write");
    for reader in [1, 2, 3] {
        for writer in [1, 2, 3] {
            cluster
                .wait_local_value(
                    reader,
                    &format!("from-{writer}"),
                    Some(&format!("value-{writer}")),
                )
                .await;
        }
    }

    phase("a remove through a follower reports whether the key existed");
    let follower = followers(&cluster, leader)[0];
    assert!(cluster
        .client(follower)
        .remove("from-1")
        .await
        .expect("remove"));
    assert!(!cluster
        .client(follower)
        .remove("from-1")
        .await
        .expect("remove again"));
    for id in [1, 2, 3] {
        cluster.wait_local_value(id, "from-1", None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn linearizable_read_on_a_follower_sees_a_write_made_elsewhere() {
    let cluster = InProcessCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let f = followers(&cluster, leader);
    let (writer, reader) = (f[0], f[1]);

    phase("write on one follower, read linearizably on the other, immediately, 50 times");
    for i in 0..50 {
        let value = format!("v{i}");
        cluster
            .client(writer)
            .put("counter", &value)
            .await
            .expect("put");
        let seen = cluster
            .client(reader)
            .get("counter", true)
            .await
            .expect("linearizable get");
        assert_eq!(
            seen.as_deref(),
            Some(value.as_str()),
            "round {i}: stale linearizable read"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolated_follower_refuses_linearizable_reads_instead_of_serving_stale_data() {
    let cluster = InProcessCluster::start(3, &["--request-deadline-ms=1500"]).await;
    let leader = cluster.wait_for_leader().await;
    let f = followers(&cluster, leader);
    let (cut, other) = (f[0], f[1]);
    cluster.client(leader).put("k", "old").await.expect("put");
    cluster.wait_local_value(cut, "k", Some("old")).await;

    phase("cut one follower off, then overwrite the key through the majority");
    cluster.faults.isolate(cut, &[leader, other]);
    cluster
        .client(leader)
        .put("k", "new")
        .await
        .expect("put with a majority");

    phase("the cut follower still holds the old value locally, but a linearizable read fails");
    assert_eq!(
        cluster
            .client(cut)
            .get("k", false)
            .await
            .expect("local get")
            .as_deref(),
        Some("old")
    );
    let err = cluster
        .client(cut)
        .get("k", true)
        .await
        .expect_err("a linearizable read must not return stale data");
    assert!(is_unavailable(&err), "expected Unavailable, got {err:?}");

    phase("after healing, the follower catches up and serves the new value");
    cluster.faults.heal();
    cluster.wait_local_value(cut, "k", Some("new")).await;
    assert_eq!(
        cluster
            .client(cut)
            .get("k", true)
            .await
            .expect("linearizable get")
            .as_deref(),
        Some("new")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failover_and_the_old_leader_catches_up_after_restart() {
    let mut cluster = InProcessCluster::start(3, &[]).await;
    let old_leader = cluster.wait_for_leader().await;
    for i in 0..20 {
        cluster
            .client(old_leader)
            .put(&format!("before-{i}"), "x")
            .await
            .expect("put");
    }

    phase("stop the leader; the two others elect a new one");
    cluster.stop(old_leader).await;
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, old_leader);

    phase("writes through either survivor succeed");
    for id in followers(&cluster, old_leader) {
        for i in 0..20 {
            cluster
                .client(id)
                .put(&format!("after-{id}-{i}"), "y")
                .await
                .expect("put after failover");
        }
    }

    phase("restart the old leader: it catches up on what it missed");
    cluster.restart(old_leader).await;
    for id in followers(&cluster, old_leader) {
        cluster
            .wait_local_value(old_leader, &format!("after-{id}-19"), Some("y"))
            .await;
    }
    cluster
        .wait_local_value(old_leader, "before-0", Some("x"))
        .await;
    let leader_state = cluster.node(new_leader).state();
    assert_eq!(cluster.node(old_leader).state().len(), leader_state.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_leader_stops_accepting_writes_and_majority_carries_on() {
    let cluster = InProcessCluster::start(3, &["--request-deadline-ms=1500"]).await;
    let old_leader = cluster.wait_for_leader().await;
    let f = followers(&cluster, old_leader);

    phase("isolate the leader from both followers");
    cluster.faults.isolate(old_leader, &f);

    phase("a write to the isolated leader fails with Unavailable within its deadline");
    let err = cluster
        .client(old_leader)
        .put("p", "minority")
        .await
        .expect_err("no quorum");
    assert!(is_unavailable(&err), "expected Unavailable, got {err:?}");

    phase("the majority elects a leader and accepts writes");
    let what = "the majority accepts a write";
    wait_until_async(in_process::WAIT, what, async || {
        match cluster.client(f[0]).put("p", "majority").await {
            Err(e) if !is_unavailable(&e) => panic!("the majority refused the write: {e:?}"),
            answer => answer,
        }
    })
    .await;

    phase("after healing, all three hold the majority's value");
    cluster.faults.heal();
    for id in [1, 2, 3] {
        cluster.wait_local_value(id, "p", Some("majority")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_that_cannot_reach_the_leader_get_a_leader_they_reach() {
    // One-way: the leader still calls the followers and hears their answers, so Raft alone
    // sees a healthy quorum, while every write the followers forward to it fails.
    let cluster = InProcessCluster::start(3, &["--request-deadline-ms=1500"]).await;
    let old_leader = cluster.wait_for_leader().await;
    let f = followers(&cluster, old_leader);
    cluster.client(f[0]).put("before", "cut").await.unwrap();

    phase("nothing the followers send reaches the leader");
    let cut = std::time::Instant::now();
    cluster.faults.cut_one_way(f[0], &[old_leader]);
    cluster.faults.cut_one_way(f[1], &[old_leader]);

    phase("writes through a follower succeed again, under a new leader");
    let what = "a write through a follower is acknowledged";
    wait_until_async(in_process::WAIT, what, async || {
        cluster.client(f[0]).put("after", "cut").await
    })
    .await;
    eprintln!(
        "first write through a follower acknowledged {} ms after the cut",
        cut.elapsed().as_millis()
    );
    let leader_of = |id| {
        cluster
            .node(id)
            .raft()
            .metrics()
            .borrow_watched()
            .current_leader
    };
    let new_leader = leader_of(f[0]);
    assert!(
        new_leader.is_some_and(|l| l != old_leader) && leader_of(f[1]) == new_leader,
        "the followers follow {new_leader:?} and {:?}, not a new leader they reach",
        leader_of(f[1])
    );
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let old = cluster
        .node(old_leader)
        .raft()
        .metrics()
        .borrow_watched()
        .clone();
    eprintln!(
        "the old leader after 5 s more: {:?}, term {}, leader {:?}",
        old.state, old.current_term, old.current_leader
    );
    assert_eq!(
        cluster
            .client(f[1])
            .get("after", true)
            .await
            .unwrap()
            .as_deref(),
        Some("cut")
    );

    phase("healed: the old leader follows and holds the write");
    cluster.faults.heal();
    cluster
        .wait_local_value(old_leader, "after", Some("cut"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_that_cannot_reach_the_leader_serves_its_clients_through_another_member() {
    // Its calls to the leader fail at once (a refused or unroutable connection).
    one_follower_cut_from_the_leader(|cluster, from, to| cluster.faults.cut_one_way(from, &[to]))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_whose_calls_to_the_leader_go_unanswered_serves_its_clients_through_another_member(
) {
    // Its calls to the leader go out on open connections and are never answered (a firewall
    // that drops packets): a write sent just after the cut must not hold the client for the
    // whole forward timeout before the next one finds the way round.
    one_follower_cut_from_the_leader(|cluster, from, to| {
        cluster.faults.silence_one_way(from, &[to])
    })
    .await;
}

/// One follower's calls to the leader are lost; the leader still reaches it, and a quorum (the
/// leader and the other follower) calls the leader, so the leadership stays. That follower
/// reaches the other one: its clients' writes and linearizable reads must go on, the first
/// within 3 s of the cut, each later one within the request deadline.
async fn one_follower_cut_from_the_leader(cut: impl Fn(&InProcessCluster, NodeId, NodeId)) {
    // The default request deadline (5 s): a write stuck that long would miss the 3 s.
    let cluster = InProcessCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let f = followers(&cluster, leader);
    cluster.client(f[0]).put("before", "cut").await.unwrap();
    let term = |id| {
        cluster
            .node(id)
            .raft()
            .metrics()
            .borrow_watched()
            .current_term
    };
    let term_before = term(leader);

    phase("nothing follower f0 sends reaches the leader");
    let started = std::time::Instant::now();
    cut(&cluster, f[0], leader);

    phase("writes through f0 succeed, and keep succeeding");
    let what = "a write through the cut-off follower is acknowledged";
    wait_until_async(std::time::Duration::from_secs(3), what, async || {
        cluster.client(f[0]).put("after", "cut").await
    })
    .await;
    eprintln!(
        "first write through the cut-off follower acknowledged {} ms after the cut",
        started.elapsed().as_millis()
    );
    for i in 0..20 {
        let key = format!("k{i}");
        cluster
            .client(f[0])
            .put(&key, "v")
            .await
            .unwrap_or_else(|e| panic!("write {i} through the cut-off follower: {e:?}"));
        assert_eq!(
            cluster
                .client(f[0])
                .get(&key, true)
                .await
                .unwrap()
                .as_deref(),
            Some("v"),
            "a linearizable read through the cut-off follower"
        );
    }
    assert_eq!(
        cluster
            .client(leader)
            .get("k19", true)
            .await
            .unwrap()
            .as_deref(),
        Some("v")
    );
    let now_leader = cluster
        .node(f[1])
        .raft()
        .metrics()
        .borrow_watched()
        .current_leader;
    assert_eq!(now_leader, Some(leader), "the leadership stayed");
    assert_eq!(term(leader), term_before, "no election");
    cluster.faults.heal();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_back_from_isolation_changes_neither_leader_nor_term() {
    let cluster = InProcessCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let f = followers(&cluster, leader);
    cluster.client(f[0]).put("k", "v").await.unwrap();
    let term = |id| {
        cluster
            .node(id)
            .raft()
            .metrics()
            .borrow_watched()
            .current_term
    };
    let before = term(leader);

    phase("a follower is cut off for several election timeouts, then comes back");
    cluster.faults.isolate(f[1], &[leader, f[0]]);
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert_eq!(
        term(f[1]),
        before,
        "a node that cannot win raised its term (no pre-vote?)"
    );
    cluster.faults.heal();
    cluster.wait_local_value(f[1], "k", Some("v")).await;
    cluster.client(f[0]).put("k2", "v2").await.unwrap();
    cluster.wait_local_value(f[1], "k2", Some("v2")).await;
    assert_eq!(
        cluster.wait_for_leader().await,
        leader,
        "the leader changed"
    );
    for id in [1, 2, 3] {
        assert_eq!(term(id), before, "node {id}: the term changed");
    }
}

/// The target of a transfer cannot stand at first: nothing the leader sends it is answered
/// (so it neither hears of the transfer nor gets the leader's last entries), for 1.5 s. Every
/// voter still gives up its lease on the old leader and another node is elected; asked again by
/// the command, that node hands over to the target, which it reaches. Before, the command
/// waited for the target to lead until the deadline, and failed (seen in the fault suite right
/// after a partition healed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transfer_whose_target_cannot_stand_at_first_is_asked_again_of_the_new_leader() {
    use raftcache::gen::cache::AdminOp;
    let cluster = InProcessCluster::start(3, &[]).await;
    let old = cluster.wait_for_leader().await;
    let f = followers(&cluster, old);
    let (through, target) = (f[0], f[1]);
    cluster.client(through).put("before", "v").await.unwrap();

    phase("the leader's calls to the target go unanswered; a few writes leave it behind");
    cluster.faults.silence_one_way(old, &[target]);
    for i in 0..5 {
        cluster
            .client(through)
            .put(&format!("k{i}"), "v")
            .await
            .unwrap();
    }
    let faults = cluster.faults.clone();
    let heal = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        faults.heal();
    });

    phase("transfer-leader to the target, through the third node");
    let moved = cluster
        .client(through)
        .run(move |c| c.admin_change(AdminOp::TRANSFER_LEADER, target, None, None, false, ""))
        .await
        .expect("transfer-leader");
    assert_eq!(moved.leader, target as i64);
    heal.await.unwrap();
    assert_eq!(cluster.wait_for_leader().await, target);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfer_leader_moves_the_leadership_under_load_losing_no_write() {
    use raftcache::gen::cache::AdminOp;
    let cluster = InProcessCluster::start(3, &[]).await;
    let old = cluster.wait_for_leader().await;
    let f = followers(&cluster, old);
    let (through, target) = (f[0], f[1]);

    phase("a learner or an unknown node is refused");
    let refused = cluster
        .client(old)
        .run(|c| c.admin_change(AdminOp::TRANSFER_LEADER, 9, None, None, false, ""))
        .await
        .expect_err("node 9 is not a member");
    assert!(
        format!("{refused:?}").contains("not a member"),
        "{refused:?}"
    );

    phase("a writer keeps writing through a follower while the leadership moves");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let client = cluster.client(through);
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut acked, mut longest_failing, mut failing_since) = (Vec::new(), 0u128, None);
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && i < 100_000 {
                let key = format!("t{i}");
                match client.put(&key, "v").await {
                    Ok(_) => {
                        if let Some(since) = failing_since.take() {
                            let since: std::time::Instant = since;
                            longest_failing = longest_failing.max(since.elapsed().as_millis());
                        }
                        acked.push(key);
                    }
                    Err(_) => {
                        failing_since.get_or_insert_with(std::time::Instant::now);
                    }
                }
                i += 1;
            }
            (acked, longest_failing, failing_since.is_some())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let moved = cluster
        .client(through)
        .run(move |c| c.admin_change(AdminOp::TRANSFER_LEADER, target, None, None, false, ""))
        .await
        .expect("transfer-leader");
    assert_eq!(moved.leader, target as i64);
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (acked, longest_failing, still_failing) = writer.await.unwrap();
    eprintln!(
        "{} writes acknowledged; longest run of failing writes {longest_failing} ms",
        acked.len()
    );
    assert!(!still_failing, "writes were still failing at the end");
    assert!(
        longest_failing < 1000,
        "writes failed for {longest_failing} ms, more than an election timeout"
    );
    assert_eq!(cluster.wait_for_leader().await, target);

    phase("every acknowledged write is there");
    for key in &acked {
        assert_eq!(
            cluster.client(old).get(key, true).await.unwrap().as_deref(),
            Some("v"),
            "{key} lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_forwarded_to_a_leader_that_went_silent_fails_fast_and_the_next_one_succeeds() {
    // A long deadline: a forward that waited for the silent leader's answer would hang for a
    // minute; the follower must give up as soon as it stops following that leader.
    let cluster = InProcessCluster::start(3, &["--request-deadline-ms=60000"]).await;
    let old_leader = cluster.wait_for_leader().await;
    let f = followers(&cluster, old_leader);
    cluster.client(f[0]).put("warm", "up").await.unwrap();

    phase("the leader goes silent, as a dead host does: requests to it are never answered");
    cluster.faults.silence(old_leader, &f);

    phase("a write through a follower answers well before its deadline");
    let first = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        cluster.client(f[0]).put("s", "first"),
    )
    .await
    .expect("the write waited for the silent leader instead of giving up on it");
    match first {
        Ok(_) => {}
        Err(e) => assert!(
            is_unavailable(&e) && format!("{e:?}").contains("may or may not"),
            "expected success or an Unavailable with an unknown outcome, got {e:?}"
        ),
    }

    phase("the next write through the same follower goes to the new leader");
    cluster.client(f[0]).put("s", "second").await.unwrap();
    assert_eq!(
        cluster
            .client(f[1])
            .get("s", true)
            .await
            .unwrap()
            .as_deref(),
        Some("second")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_linearizable_read_on_a_follower_does_not_wait_for_a_leader_that_went_silent() {
    let cluster = InProcessCluster::start(3, &["--request-deadline-ms=60000"]).await;
    let old_leader = cluster.wait_for_leader().await;
    let f = followers(&cluster, old_leader);
    cluster.client(f[0]).put("r", "before").await.unwrap();

    phase("the leader goes silent; a linearizable read through a follower asks the new leader");
    cluster.faults.silence(old_leader, &f);
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        cluster.client(f[0]).get("r", true),
    )
    .await
    .expect("the read waited for the silent leader instead of asking the new one");
    assert_eq!(read.unwrap().as_deref(), Some("before"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_cluster_restart_keeps_every_write() {
    let mut cluster = InProcessCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    for i in 0..100 {
        cluster
            .client(1 + i % 3)
            .put(&format!("k{i}"), &format!("v{i}"))
            .await
            .expect("put");
    }

    phase("stop all three, start all three");
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
    for id in [1, 2, 3] {
        cluster.restart(id).await;
    }
    cluster.wait_for_leader().await;

    phase("every write is there, on every node");
    for id in [1, 2, 3] {
        let client = cluster.client(id);
        for i in 0..100 {
            let key = format!("k{i}");
            let got = client.get(&key, true).await.expect("get");
            assert_eq!(got, Some(format!("v{i}")), "{key} on node {id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_linearizable_reads_never_see_less_than_what_was_acknowledged_before_them() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    // Few waiting slots, many readers: readers queue past --max-waiting-reads.
    let cluster = InProcessCluster::start(3, &["--max-waiting-reads=2"]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = followers(&cluster, leader)[0];
    let acked = Arc::new(AtomicU64::new(0));
    cluster.client(leader).put("n", "0").await.expect("put");

    phase("one writer counts up through the leader; 8 readers read linearizably on a follower");
    let writer_addr = cluster.client_addrs[&leader].to_string();
    let writer_acked = acked.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut c = raftcache::client::CacheClient::connect(
            &writer_addr,
            std::time::Duration::from_secs(10),
        )
        .unwrap();
        for i in 1..=300u64 {
            c.put("n", &i.to_string()).expect("put");
            writer_acked.store(i, Ordering::SeqCst);
        }
    });
    let mut readers = Vec::new();
    for _ in 0..8 {
        let addr = cluster.client_addrs[&follower].to_string();
        let acked = acked.clone();
        readers.push(tokio::task::spawn_blocking(move || {
            let mut c =
                raftcache::client::CacheClient::connect(&addr, std::time::Duration::from_secs(10))
                    .unwrap();
            let mut reads = 0;
            while acked.load(Ordering::SeqCst) < 300 {
                let before = acked.load(Ordering::SeqCst);
                let seen: u64 = c
                    .get("n", true)
                    .expect("linearizable get")
                    .expect("present")
                    .parse()
                    .unwrap();
                assert!(
                    seen >= before,
                    "read {seen} after {before} was acknowledged: stale linearizable read"
                );
                reads += 1;
            }
            reads
        }));
    }
    writer.await.expect("writer");
    let mut total = 0;
    for r in readers {
        total += r.await.expect("reader");
    }
    assert!(total > 0, "readers made no reads");
    eprintln!("{total} linearizable reads checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_answered_by_a_follower_is_visible_to_a_local_read_there_right_away() {
    let cluster = InProcessCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = followers(&cluster, leader)[0];
    let client = cluster.client(follower);

    phase("put, local get, remove, local get through one follower, 200 times");
    for i in 0..200 {
        let key = format!("ryw-{i}");
        assert!(client.put(&key, "v").await.expect("put"));
        assert_eq!(
            client.get(&key, false).await.expect("get").as_deref(),
            Some("v"),
            "a local read on node {follower} right after its put of {key} was answered"
        );
        assert!(client.remove(&key).await.expect("remove"));
        assert_eq!(
            client.get(&key, false).await.expect("get"),
            None,
            "a local read on node {follower} right after its remove of {key} was answered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_its_leader_cannot_call_answers_its_writes_without_waiting_out_the_deadline() {
    // The leader's calls to one follower are lost; the follower's own calls reach it. The
    // follower gets no entries while the cut lasts, so it cannot apply its clients' writes,
    // which the leader commits: it must answer them once it sees that no entries come, not
    // at the request deadline (5 s) each.
    let cluster = InProcessCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let f = followers(&cluster, leader);
    cluster.client(f[0]).put("before", "cut").await.unwrap();

    phase("nothing the leader sends reaches follower f0");
    cluster.faults.cut_one_way(leader, &[f[0]]);
    let cut = std::time::Instant::now();
    let mut slowest = std::time::Duration::ZERO;
    for i in 0..5 {
        let started = std::time::Instant::now();
        cluster
            .client(f[0])
            .put(&format!("x{i}"), "v")
            .await
            .unwrap_or_else(|e| panic!("write {i} through f0: {e:?}"));
        slowest = slowest.max(started.elapsed());
    }
    eprintln!(
        "5 writes through f0 in {} ms, the slowest {} ms",
        cut.elapsed().as_millis(),
        slowest.as_millis()
    );
    assert!(
        slowest < std::time::Duration::from_secs(3),
        "a write through the follower its leader cannot call took {} ms",
        slowest.as_millis()
    );
    assert_eq!(
        cluster
            .client(f[1])
            .get("x4", true)
            .await
            .unwrap()
            .as_deref(),
        Some("v")
    );

    phase("healed: f0 catches up");
    cluster.faults.heal();
    cluster.wait_local_value(f[0], "x4", Some("v")).await;
}
