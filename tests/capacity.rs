//! Capacity on 3-node clusters in one process: with `--eviction lru` writing twice the cap
//! keeps the data under it and identical on every replica; with `--eviction none` the write
//! past the cap fails with `CacheFull` and changes nothing.

mod in_process;

use in_process::{phase, InProcessCluster};
use openraft::async_runtime::watch::WatchReceiver;
use raftcache::gen::cache::{CacheEntry, CacheFull, TCacheServiceSyncClient};

fn is_full(e: &thrift::Error) -> bool {
    matches!(e, thrift::Error::User(u) if u.is::<CacheFull>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lru_keeps_twice_the_cap_under_the_cap_and_the_same_on_every_replica() {
    let max_bytes = 20_000u64;
    let flags = [
        &format!("--max-bytes={max_bytes}") as &str,
        "--eviction=lru",
    ];
    let cluster = InProcessCluster::start(3, &flags).await;
    let leader = cluster.wait_for_leader().await;

    phase("400 writes of 100 bytes (twice the cap) through every node");
    let mut written = 0u64;
    for i in 0..400u64 {
        let key = format!("key-{i:04}");
        let value = "v".repeat(100 - key.len());
        written += (key.len() + value.len()) as u64;
        let node = i % 3 + 1;
        cluster
            .client(node)
            .put(&key, &value)
            .await
            .unwrap_or_else(|e| panic!("put {key} through node {node}: {e}"));
        if i % 50 == 0 {
            // Read the oldest key through the leader now and then: it stays recently used.
            let kept = cluster.client(leader).get("key-0000", false).await.unwrap();
            assert!(kept.is_some(), "key-0000 was evicted though recently read");
        }
    }
    assert_eq!(written, 2 * max_bytes);

    phase("every replica at the leader's index holds the same data, under the cap");
    let index = cluster
        .node(leader)
        .raft()
        .metrics()
        .borrow_watched()
        .last_applied
        .unwrap()
        .index;
    for id in [1, 2, 3] {
        cluster.wait_applied(id, index).await;
    }
    let first = cluster.client(1).local_contents().await;
    for id in [1, 2, 3] {
        let stats = cluster
            .client(id)
            .run(|c| c.service().stats())
            .await
            .unwrap();
        assert!(stats.bytes as u64 <= max_bytes, "node {id}: {stats:?}");
        assert!(stats.evicted > 0, "node {id}: {stats:?}");
        assert_eq!(stats.keys as usize, first.len(), "node {id}");
        assert_eq!(
            cluster.client(id).local_contents().await,
            first,
            "node {id}"
        );
    }
    let keys: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
    assert!(keys.contains(&"key-0399"), "the newest write stays");
    assert!(
        keys.contains(&"key-0000"),
        "the key read through the leader stays"
    );
    assert!(
        !keys.contains(&"key-0001"),
        "the least recently used keys go"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_eviction_the_write_past_the_cap_fails_with_cache_full() {
    let cluster = InProcessCluster::start(3, &["--max-keys=10", "--eviction=none"]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = if leader == 1 { 2 } else { 1 };

    phase("10 keys fit");
    for i in 0..10 {
        cluster
            .client(follower)
            .put(&format!("k{i}"), "v")
            .await
            .unwrap();
    }

    phase("the 11th key, by put, put_many, put_if_absent or increment, is CacheFull");
    let client = cluster.client(follower);
    let e = client.put("k10", "v").await.unwrap_err();
    assert!(is_full(&e), "{e}");
    let e = client
        .run(|c| {
            let entries = vec![
                CacheEntry::new("k0".into(), "w".into(), None),
                CacheEntry::new("k11".into(), "v".into(), None),
            ];
            c.service().put_many(entries)
        })
        .await
        .unwrap_err();
    assert!(is_full(&e), "{e}");
    let e = client
        .run(|c| {
            c.service()
                .put_if_absent(CacheEntry::new("k12".into(), "v".into(), None))
        })
        .await
        .unwrap_err();
    assert!(is_full(&e), "{e}");
    let e = client
        .run(|c| c.service().increment("k13".into(), 1))
        .await
        .unwrap_err();
    assert!(is_full(&e), "{e}");
    assert_eq!(
        client.get("k0", true).await.unwrap().as_deref(),
        Some("v"),
        "all or nothing"
    );
    assert_eq!(client.get("k10", true).await.unwrap(), None);

    phase("overwriting a key and removing one still work, and then a new key fits");
    client.put("k0", "again").await.unwrap();
    assert!(client.remove("k1").await.unwrap());
    client.put("k10", "v").await.unwrap();
    // A linearizable read first: the follower has then applied every write above.
    assert!(client.get("k10", true).await.unwrap().is_some());
    let stats = client.run(|c| c.service().stats()).await.unwrap();
    assert_eq!(stats.keys, 10);
    assert_eq!(stats.evicted, 0);
}

/// A leader knows only the accesses it has seen since it started leading. Keys it has not seen
/// are older than any it has: after a restart, fresh writes must evict the old keys, never the
/// previous fresh write (seen: `a2 a3 a4 a5 bN` after each of `b1`, `b2`, `b3`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_restart_fresh_writes_evict_old_keys_not_each_other() {
    let mut cluster = InProcessCluster::start(1, &["--max-keys=5", "--eviction=lru"]).await;
    let node = cluster.wait_for_leader().await;
    phase("a1..a5 fill the cap; the node restarts");
    for i in 1..=5 {
        cluster
            .client(node)
            .put(&format!("a{i}"), "old")
            .await
            .unwrap();
    }
    cluster.stop(node).await;
    cluster.restart(node).await;
    cluster.wait_for_leader().await;

    phase("b1, b2, b3 written after the restart: each stays, old keys go");
    for i in 1..=3 {
        cluster
            .client(node)
            .put(&format!("b{i}"), "new")
            .await
            .unwrap();
        let held: Vec<String> = cluster
            .client(node)
            .local_contents()
            .await
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(held.len(), 5, "after b{i}: {held:?}");
        for j in 1..=i {
            assert!(
                held.contains(&format!("b{j}")),
                "after b{i}, the fresh write b{j} was evicted: {held:?}"
            );
        }
    }
}
