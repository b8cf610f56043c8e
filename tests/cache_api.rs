//! The cache API on 3-node clusters in one process: TTLs expire on every replica at once and
//! are swept by the leader; racing conditional writes and increments through different nodes;
//! `put_many` then `min_index` reads on a follower; the item caps of every batch method.

mod in_process;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use in_process::{phase, BlockingClient, InProcessCluster};
use raftcache::gen::cache::{
    CacheEntry, CacheStats, Consistency, InvalidRequest, ReadOptions, TCacheServiceSyncClient,
};
use raftcache::types::{now_ms, NodeId};
use raftcache_testkit::wait::wait_until_async;

const WAIT: Duration = Duration::from_secs(20);

fn entry(key: &str, value: &str, ttl_ms: Option<i64>) -> CacheEntry {
    CacheEntry::new(key.to_string(), value.to_string(), ttl_ms)
}

fn is_invalid(e: &thrift::Error) -> bool {
    matches!(e, thrift::Error::User(u) if u.is::<InvalidRequest>())
}

/// The message of an InvalidRequest ("" for any other error).
fn invalid_message(e: &thrift::Error) -> String {
    match e {
        thrift::Error::User(u) => u
            .downcast_ref::<InvalidRequest>()
            .map(|x| x.message.clone())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

async fn stats(client: &BlockingClient) -> CacheStats {
    client.run(|c| c.service().stats()).await.expect("stats")
}

/// Polls `check` on every node until it holds on all of them, failing after `WAIT` on one.
async fn until_all<F, Fut>(cluster: &InProcessCluster, what: &str, check: F)
where
    F: Fn(BlockingClient) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for id in [1, 2, 3] {
        let what = format!("node {id}: {what}");
        wait_until_async(WAIT, &what, async || check(cluster.client(id)).await).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_with_a_ttl_is_visible_everywhere_then_nowhere_and_counted_as_expired() {
    let cluster = InProcessCluster::start(3, &["--expiry-interval-ms=50"]).await;
    let leader = cluster.wait_for_leader().await;
    let ttl_ms = 1_000;

    phase("a key put with ttl_ms 1000 through the leader, and one without");
    let started_ms = now_ms();
    let client = cluster.client(leader);
    client
        .run(move |c| c.put_ttl("short", "lived", Some(ttl_ms)))
        .await
        .expect("put with ttl");
    client.put("kept", "forever").await.expect("put");

    phase("readable on every node before it expires (linearizable reads)");
    for id in [1, 2, 3] {
        let found = cluster
            .client(id)
            .run(|c| {
                let options = ReadOptions::new(Some(Consistency::LINEARIZABLE), None);
                c.service().get_with("short".into(), options)
            })
            .await;
        // The expiry is at least started_ms + ttl_ms: before then the key must be there.
        match found {
            Ok(e) => {
                assert_eq!(e.value, "lived");
                let left = e.ttl_ms.expect("a key with a ttl reports the time left");
                assert!(left > 0 && left <= ttl_ms, "ttl left {left}");
            }
            Err(e) => assert!(
                now_ms() >= started_ms + ttl_ms as u64,
                "node {id} lost the key before its ttl: {e}"
            ),
        }
    }

    phase("invisible on every node once expired; the other key stays");
    until_all(&cluster, "the key expires", |c| async move {
        c.get("short", false).await.expect("get").is_none()
    })
    .await;
    for id in [1, 2, 3] {
        let kept = cluster.client(id).get("kept", false).await.expect("get");
        assert_eq!(kept.as_deref(), Some("forever"));
    }

    phase("the sweep removes it on every replica and counts it");
    until_all(&cluster, "stats count the expired key", |c| async move {
        let s = stats(&c).await;
        s.expired == 1 && s.keys == 1
    })
    .await;
    let first = cluster.client(1).local_contents().await;
    assert_eq!(first, vec![("kept".to_string(), "forever".to_string())]);
    for id in [2, 3] {
        assert_eq!(
            cluster.client(id).local_contents().await,
            first,
            "node {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_compare_and_put_through_two_nodes_has_exactly_one_winner() {
    let cluster = InProcessCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let others: Vec<NodeId> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    cluster.client(leader).put("cas", "0").await.expect("put");

    for round in 0..5 {
        phase(&format!(
            "round {round}: two followers race from the same value"
        ));
        let expected = if round == 0 {
            "0".to_string()
        } else {
            format!("r{}", round - 1)
        };
        let mut racers = Vec::new();
        for id in &others {
            let client = cluster.client(*id);
            let (expected, value) = (expected.clone(), format!("r{round}"));
            racers.push(tokio::spawn(async move {
                client
                    .run(move |c| {
                        c.service().compare_and_put(
                            "cas".into(),
                            expected,
                            entry("cas", &value, None),
                        )
                    })
                    .await
                    .expect("compare_and_put")
            }));
        }
        let mut wins = 0;
        for racer in racers {
            wins += usize::from(racer.await.unwrap());
        }
        assert_eq!(wins, 1, "exactly one racer wins");
        let now = cluster.client(leader).get("cas", true).await.unwrap();
        assert_eq!(now, Some(format!("r{round}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_increments_by_ten_clients_through_every_node_end_at_a_thousand() {
    let cluster = InProcessCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;

    phase("10 clients, 100 increments each, spread over the 3 nodes");
    let mut clients = Vec::new();
    for i in 0..10u64 {
        let client = cluster.client(i % 3 + 1);
        clients.push(tokio::spawn(async move {
            client
                .run(|c| {
                    (0..100)
                        .map(|_| c.service().increment("counter".into(), 1))
                        .collect::<thrift::Result<Vec<i64>>>()
                })
                .await
                .expect("increments")
        }));
    }
    let mut seen = Vec::new();
    for client in clients {
        seen.extend(client.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=1000).collect::<Vec<i64>>(), "each result once");

    phase("every node ends at exactly 1000");
    until_all(&cluster, "the counter reads 1000", |c| async move {
        c.get("counter", false).await.unwrap().as_deref() == Some("1000")
    })
    .await;

    phase("an increment of a value that is not an integer, or one that overflows, changes nothing");
    let client = cluster.client(1);
    client.put("text", "abc").await.unwrap();
    let e = client
        .run(|c| c.service().increment("text".into(), 1))
        .await
        .unwrap_err();
    assert!(is_invalid(&e), "{e}");
    let e = client
        .run(|c| c.service().increment("counter".into(), i64::MAX))
        .await
        .unwrap_err();
    assert!(is_invalid(&e), "{e}");
    assert_eq!(
        client.get("counter", true).await.unwrap().as_deref(),
        Some("1000")
    );
    assert_eq!(
        client.get("text", true).await.unwrap().as_deref(),
        Some("abc")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_many_then_a_min_index_read_on_a_follower_sees_the_whole_batch() {
    let cluster = InProcessCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;

    phase("put_many of 200 entries through the leader");
    let entries: Vec<CacheEntry> = (0..200)
        .map(|i| entry(&format!("batch-{i:03}"), &format!("v{i}"), None))
        .collect();
    let written = cluster
        .client(leader)
        .run(move |c| c.service().put_many(entries))
        .await
        .expect("put_many");
    assert_eq!(written.count, 200);
    assert!(written.index > 0);

    phase("each follower, asked with min_index, answers with every entry at once");
    for id in [1, 2, 3].into_iter().filter(|i| *i != leader) {
        let index = written.index;
        let client = cluster.client(id);
        let found = client
            .run(move |c| {
                let keys = (0..200).map(|i| format!("batch-{i:03}")).collect();
                c.service()
                    .get_many(keys, ReadOptions::new(None, Some(index)))
            })
            .await
            .expect("get_many");
        assert_eq!(found.len(), 200, "node {id}");
        assert_eq!(found[7].value, "v7");
        let one = client
            .run(move |c| {
                let options = ReadOptions::new(None, Some(index));
                c.service().get_with("batch-199".into(), options)
            })
            .await
            .expect("get_with min_index");
        assert_eq!(one.value, "v199");
    }

    phase("put_if_absent, remove_many and scan");
    let client = cluster.client(leader);
    let wrote = client
        .run(|c| {
            let first = c
                .service()
                .put_if_absent(entry("batch-000", "again", None))?;
            let second = c.service().put_if_absent(entry("fresh", "new", None))?;
            Ok((first, second))
        })
        .await
        .unwrap();
    assert_eq!(wrote, (false, true));
    let removed = client
        .run(|c| {
            let keys = vec!["batch-000".into(), "batch-001".into(), "missing".into()];
            c.service().remove_many(keys)
        })
        .await
        .unwrap();
    assert_eq!(removed.count, 2);
    let page = client
        .run(|c| {
            let options = ReadOptions::new(Some(Consistency::LINEARIZABLE), None);
            c.service()
                .scan("batch-".into(), "batch-005".into(), 3, options)
        })
        .await
        .unwrap();
    let page: Vec<String> = page.into_iter().map(|e| e.key).collect();
    assert_eq!(page, ["batch-006", "batch-007", "batch-008"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_batch_method_refuses_more_items_than_its_cap() {
    let flags = [
        "--max-batch-items=10",
        "--max-scan-items=5",
        "--max-batch-bytes=2000",
        "--max-key-bytes=16",
        "--max-value-bytes=1600",
    ];
    let cluster = InProcessCluster::start(3, &flags).await;
    let leader = cluster.wait_for_leader().await;
    let client = cluster.client(leader);
    let keys = |n: usize| (0..n).map(|i| format!("k{i:02}")).collect::<Vec<String>>();

    phase("10 items pass; 11 are refused with InvalidRequest, and nothing is written");
    let entries = |n: usize| {
        keys(n)
            .into_iter()
            .map(|k| entry(&k, "v", None))
            .collect::<Vec<_>>()
    };
    let ten = entries(10);
    let ok = client
        .run(move |c| c.service().put_many(ten))
        .await
        .unwrap();
    assert_eq!(ok.count, 10);
    let eleven = entries(11);
    let e = client
        .run(move |c| c.service().put_many(eleven))
        .await
        .unwrap_err();
    assert!(invalid_message(&e).contains("--max-batch-items"), "{e}");
    assert_eq!(
        client.get("k10", true).await.unwrap(),
        None,
        "nothing written"
    );
    let k11 = keys(11);
    let e = client
        .run(move |c| c.service().get_many(k11, ReadOptions::new(None, None)))
        .await
        .unwrap_err();
    assert!(is_invalid(&e), "{e}");
    let k11 = keys(11);
    let e = client
        .run(move |c| c.service().remove_many(k11))
        .await
        .unwrap_err();
    assert!(is_invalid(&e), "{e}");
    assert_eq!(client.get("k00", true).await.unwrap().as_deref(), Some("v"));

    phase("put_many over --max-batch-bytes is refused");
    let big = vec![
        entry("big1", &"x".repeat(1500), None),
        entry("big2", &"y".repeat(600), None),
    ];
    let e = client
        .run(move |c| c.service().put_many(big))
        .await
        .unwrap_err();
    assert!(invalid_message(&e).contains("--max-batch-bytes"), "{e}");

    phase("scan asking for 100 gets at most --max-scan-items");
    let page = client
        .run(|c| {
            let options = ReadOptions::new(None, None);
            c.service().scan("k".into(), String::new(), 100, options)
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 5);

    phase("a bad ttl, a negative min_index and a mismatched compare_and_put key are refused");
    let e = client
        .run(|c| c.service().put(entry("t", "v", Some(0))))
        .await
        .unwrap_err();
    assert!(is_invalid(&e), "{e}");
    let e = client
        .run(|c| {
            c.service()
                .get_with("k00".into(), ReadOptions::new(None, Some(-1)))
        })
        .await
        .unwrap_err();
    assert!(is_invalid(&e), "{e}");
    let e = client
        .run(|c| {
            c.service()
                .compare_and_put("k00".into(), "v".into(), entry("k01", "w", None))
        })
        .await
        .unwrap_err();
    assert!(is_invalid(&e), "{e}");

    phase("a key over --max-key-bytes or a value over --max-value-bytes, in every method");
    let long = "k".repeat(17);
    let calls: Vec<(&str, CallFn)> = vec![
        (
            "get_many",
            Box::new(|c, k| {
                c.service()
                    .get_many(vec![k], ReadOptions::new(None, None))
                    .map(drop)
            }),
        ),
        (
            "put_many",
            Box::new(|c, k| c.service().put_many(vec![entry(&k, "v", None)]).map(drop)),
        ),
        (
            "remove_many",
            Box::new(|c, k| c.service().remove_many(vec![k]).map(drop)),
        ),
        (
            "put_if_absent",
            Box::new(|c, k| c.service().put_if_absent(entry(&k, "v", None)).map(drop)),
        ),
        (
            "compare_and_put",
            Box::new(|c, k| {
                c.service()
                    .compare_and_put(k.clone(), "v".into(), entry(&k, "w", None))
                    .map(drop)
            }),
        ),
        (
            "increment",
            Box::new(|c, k| c.service().increment(k, 1).map(drop)),
        ),
        (
            "scan",
            Box::new(|c, k| {
                c.service()
                    .scan(k, String::new(), 1, ReadOptions::new(None, None))
                    .map(drop)
            }),
        ),
    ];
    for (method, call) in calls {
        let key = long.clone();
        let e = client.run(move |c| call(c, key)).await.unwrap_err();
        assert!(
            invalid_message(&e).contains("--max-key-bytes"),
            "{method}: {e}"
        );
    }
    let e = client
        .run(|c| {
            c.service()
                .put_many(vec![entry("k", &"v".repeat(1601), None)])
        })
        .await
        .unwrap_err();
    assert!(invalid_message(&e).contains("--max-value-bytes"), "{e}");
}

type CallFn =
    Box<dyn FnOnce(&mut raftcache::client::CacheClient, String) -> thrift::Result<()> + Send>;

/// One client rewrites 200 keys with `put_many`, all to the same value, over and over; another
/// reads them with `get_many` and with `scan` on the same node meanwhile, until it has made
/// `RAFTCACHE_TORN_READS` [2,000] `get_many`s. Every read must see one batch whole: a read that
/// mixes two values saw a state that never existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_many_and_scan_never_see_half_of_a_put_many() {
    const KEYS: usize = 200;
    let target: usize = std::env::var("RAFTCACHE_TORN_READS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let cluster = InProcessCluster::start(1, &[]).await;
    let node = cluster.wait_for_leader().await;
    let keys: Vec<String> = (0..KEYS).map(|i| format!("torn-{i:03}")).collect();
    let stop = Arc::new(AtomicBool::new(false));

    phase(&format!(
        "a writer loops put_many of 200 keys set to one value; a reader makes {target} get_many and as many scans"
    ));
    let writer = cluster.client(node);
    let batch_keys = keys.clone();
    let writing = stop.clone();
    let writes = tokio::spawn(async move {
        let mut round = 0u64;
        while !writing.load(SeqCst) {
            let entries: Vec<CacheEntry> = batch_keys
                .iter()
                .map(|k| entry(k, &round.to_string(), None))
                .collect();
            writer
                .run(move |c| c.service().put_many(entries))
                .await
                .expect("put_many");
            round += 1;
        }
        round
    });
    let reader = cluster.client(node);
    let read_keys = keys.clone();
    let reads = reader
        .run(move |c| {
            let (mut reads, mut torn, mut seen) = (0, Vec::new(), BTreeSet::new());
            let mut check = |what: &str, values: Vec<String>| {
                let distinct: BTreeSet<_> = values.iter().cloned().collect();
                if distinct.len() > 1 {
                    torn.push(format!("{what} saw {distinct:?}"));
                }
                seen.extend(distinct);
            };
            let local = || ReadOptions::new(Some(Consistency::LOCAL), None);
            while reads < target {
                let many = c.service().get_many(read_keys.clone(), local())?;
                reads += 1;
                check("get_many", many.into_iter().map(|e| e.value).collect());
                let scanned =
                    c.service()
                        .scan("torn-".into(), String::new(), KEYS as i32, local())?;
                check("scan", scanned.into_iter().map(|e| e.value).collect());
            }
            Ok((reads, torn, seen.len()))
        })
        .await
        .expect("reads");
    stop.store(true, SeqCst);
    let rounds = writes.await.expect("writer");
    let (reads, torn, batches_seen) = reads;
    eprintln!(
        "{reads} get_many (and as many scans) over {rounds} put_many; {batches_seen} batches seen"
    );
    assert!(
        batches_seen > 20,
        "the reads saw only {batches_seen} of the writer's batches: they did not race the writes"
    );
    assert!(
        torn.is_empty(),
        "{} of {reads} get_many and {reads} scans were torn, e.g. {}",
        torn.len(),
        torn[0]
    );
}

/// A read whose `min_index` this node does not reach in time is `Unavailable` with a short
/// message that names the index and how far the node got, not a dump of its Raft metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_min_index_not_reached_in_time_is_unavailable_with_a_short_message() {
    let cluster = InProcessCluster::start(1, &["--request-deadline-ms=300"]).await;
    let leader = cluster.wait_for_leader().await;
    let refused = cluster
        .client(leader)
        .run(|c| {
            c.service()
                .get_with("k".into(), ReadOptions::new(None, Some(1_000_000)))
        })
        .await
        .expect_err("index 1,000,000 is never applied");
    let thrift::Error::User(e) = &refused else {
        panic!("not a declared exception: {refused:?}")
    };
    let unavailable = e
        .downcast_ref::<raftcache::gen::cache::Unavailable>()
        .unwrap_or_else(|| panic!("not Unavailable: {refused:?}"));
    let message = &unavailable.message;
    assert!(
        message.contains("1000000") && message.contains("applied up to"),
        "{message}"
    );
    assert!(
        message.len() < 200,
        "{} characters: {message}",
        message.len()
    );
}
