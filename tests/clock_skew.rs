//! Expiry with skewed clocks (issue 14, item 6: expiry must not depend on who reads).
//!
//! Real `raftcache serve` processes on loopback, some of them with their wall clock moved 30 s
//! ahead or behind by libfaketime (Debian's `faketime` package: `LD_PRELOAD` of
//! `libfaketime.so.1` with `FAKETIME=+30s`, the monotonic clock left alone so Raft's timers run
//! normally). Node 1 starts alone, so it leads, and nodes 2 and 3 join it; the election timeouts
//! are long so that it keeps leading. Each test writes a 10 s TTL key through every node, then:
//!
//! - the write is visible on the node it went through right away, by a local and by a
//!   linearizable read, and by a linearizable read on every node;
//! - while the test keeps writing (each write moves the log's clock), every replica holds the
//!   same values at the same applied index: compared whenever all nodes have applied the leader's
//!   last entry (`agreed_state`), until the TTL keys are gone on every node. The sweep runs every
//!   2 s, so values expired but not yet removed are read for a while: there a reader's own clock
//!   would decide;
//! - a key once gone stays gone, and a key without TTL is never gone.
//!
//! Without libfaketime the tests fail and say so. `docs/testing.md` records how they fail with
//! reads by the reader's clock.

mod multi_process;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use multi_process::{connect, describe, phase, Node, ProcessCluster, DEADLINE};
use raftcache::gen::cache::{Consistency, ReadOptions, TCacheServiceSyncClient};
use raftcache_testkit::wait::wait_until;

/// The skew, in seconds, of a clock set "ahead" or "behind": three TTLs.
const SKEW_S: i64 = 30;
/// The TTL of the keys whose expiry is watched.
const TTL_MS: i64 = 10_000;
/// Flags of every node: a sweep every 2 s (values expired and not yet removed are read for a
/// while) and elections slow enough that node 1 keeps leading.
const FLAGS: [&str; 3] = [
    "--expiry-interval-ms=2000",
    "--election-timeout-min-ms=3000",
    "--election-timeout-max-ms=6000",
];
/// How long the TTL keys may take to be gone on every node after they were written.
const GONE_WITHIN: Duration = Duration::from_secs(40);
/// The key without TTL written with them.
const PLAIN: &str = "plain";

/// Where libfaketime may be: `RAFTCACHE_LIBFAKETIME`, else Debian's paths.
fn libfaketime() -> PathBuf {
    let named = std::env::var("RAFTCACHE_LIBFAKETIME").ok();
    let debian = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ];
    let candidates: Vec<&str> = match &named {
        Some(path) => vec![path.as_str()],
        None => debian.to_vec(),
    };
    let found = candidates.iter().map(PathBuf::from).find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!(
            "libfaketime.so.1 not found (looked in {candidates:?}; RAFTCACHE_LIBFAKETIME names \
             another): these tests need it to skew a node's clock. Install Debian's package: \
             apt-get install faketime (scripts/test.sh does)"
        )
    })
}

/// The environment that moves a process's wall clock by `skew_s` seconds (none for 0).
fn skewed(skew_s: i64) -> Vec<(String, String)> {
    if skew_s == 0 {
        return Vec::new();
    }
    vec![
        ("LD_PRELOAD".into(), libfaketime().display().to_string()),
        ("FAKETIME".into(), format!("{skew_s:+}s")),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// Checks that the environment of `skewed` moves a child's clock: `date +%s` under it must be
/// `skew_s` off this process's clock.
fn assert_faketime_works(skew_s: i64) {
    let ours = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let out = Command::new("date")
        .arg("+%s")
        .envs(skewed(skew_s))
        .output()
        .expect("run date");
    let text = String::from_utf8_lossy(&out.stdout);
    let theirs: i64 = text.trim().parse().unwrap_or_else(|_| {
        panic!(
            "date under libfaketime printed {text:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let off = theirs - ours;
    assert!(
        (off - skew_s).abs() <= 5,
        "date under libfaketime (FAKETIME={skew_s:+}s) is {off} s off our clock"
    );
}

/// Checks that libfaketime is loaded into `node`'s process (when its clock is skewed).
fn assert_skew_loaded(node: &Node) {
    let pid = node.pid().expect("node is running");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    assert!(
        maps.contains("libfaketime"),
        "node {} (pid {pid}) was started with libfaketime, but it is not mapped",
        node.id
    );
}

/// Starts node 1 alone with its clock moved by `skews[0]` s, then nodes 2 and 3 with `--join`,
/// moved by `skews[1]` and `skews[2]`; waits until all three are voters led by node 1.
fn start(skews: [i64; 3]) -> ProcessCluster {
    for skew in skews.iter().filter(|s| **s != 0) {
        assert_faketime_works(*skew);
    }
    let flags: Vec<String> = FLAGS.iter().map(|f| f.to_string()).collect();
    let mut cluster = ProcessCluster::single_with(|node| {
        node.env = skewed(skews[0]);
        node.extra_args = flags.clone();
    });
    let a1 = cluster.node(1).client_addr;
    for skew in &skews[1..] {
        let mut args = flags.clone();
        args.push(format!("--join={a1}"));
        let id = cluster.add_node(&args);
        cluster.node_mut(id).env = skewed(*skew);
        cluster.node_mut(id).start();
    }
    wait_until(DEADLINE, "nodes 1-3 are voters, led by node 1", || {
        let views: Vec<_> = cluster.nodes.iter().map(Node::status).collect();
        let settled = views.iter().all(|v| {
            v.as_ref().is_ok_and(|s| {
                s.leader == Some(1)
                    && s.membership_changing != Some(true)
                    && s.members.iter().filter(|m| m.voter).count() == 3
            })
        });
        settled.then_some(()).ok_or(format!("{views:?}"))
    });
    for (node, skew) in cluster.nodes.iter().zip(skews) {
        if skew != 0 {
            assert_skew_loaded(node);
        }
    }
    cluster
}

/// The TTL key written through node `id`.
fn ttl_key(id: u64) -> String {
    format!("ttl-via-{id}")
}

/// Every key a test writes, sorted.
fn keys(cluster: &ProcessCluster) -> Vec<String> {
    let mut keys: Vec<String> = cluster.ids().into_iter().map(ttl_key).collect();
    keys.push(PLAIN.to_string());
    keys.sort();
    keys
}

/// Writes `plain` through the leader, then a TTL key through every node; each write must be
/// visible right away on the node it went through, by a local and a linearizable read, and then
/// by a linearizable read on every node.
fn write_and_read_back(cluster: &ProcessCluster) {
    let mut leader = connect(cluster.node(1).client_addr).unwrap();
    assert!(leader.put(PLAIN, "stays").map_err(describe).unwrap());
    for node in &cluster.nodes {
        let (key, value) = (ttl_key(node.id), format!("v{}", node.id));
        let mut client = node.client().unwrap();
        let put = client.put_ttl(&key, &value, Some(TTL_MS)).map_err(describe);
        assert_eq!(
            put,
            Ok(true),
            "put {key} ttl {TTL_MS} ms via node {}",
            node.id
        );
        for linearizable in [false, true] {
            let got = client.get(&key, linearizable).map_err(describe);
            assert_eq!(
                got,
                Ok(Some(value.clone())),
                "get {key} (linearizable: {linearizable}) via node {}, the node it was written \
                 through, right after the write",
                node.id
            );
        }
    }
    for node in &cluster.nodes {
        let mut client = node.client().unwrap();
        for writer in cluster.ids() {
            let got = client.get(&ttl_key(writer), true).map_err(describe);
            assert_eq!(
                got,
                Ok(Some(format!("v{writer}"))),
                "linearizable get {} via node {}, right after every write",
                ttl_key(writer),
                node.id
            );
        }
    }
}

/// What one node holds of `keys` (key -> value; absent keys left out).
type Held = BTreeMap<String, String>;

/// Local reads of `keys` on every node, taken when every node has applied exactly the leader's
/// last entry (its `last_log_index`) before and after them, with the same leader and term: all
/// the reads saw that one index. Returns the index and each node's values. The TTL left that
/// a read answers is never more than the TTL (it is 1 ms on a node whose clock is past the
/// expiry by the leader's time: `docs/durability.md`).
fn agreed_state(cluster: &ProcessCluster, keys: &[String]) -> (i64, Vec<Held>) {
    wait_until(
        DEADLINE,
        "every node applied the leader's last entry",
        || {
            let settled = |what: &str| -> Result<(i64, i64), String> {
                let views: Vec<_> = cluster.nodes.iter().map(Node::status).collect();
                let leader = views[0].as_ref().map_err(Clone::clone)?;
                let at = leader.last_log_index;
                let all = views.iter().all(|v| {
                    v.as_ref().is_ok_and(|s| {
                        s.last_applied == at && s.leader == Some(1) && s.term == leader.term
                    })
                });
                all.then_some((at, leader.term))
                    .ok_or(format!("{what}: {views:?}"))
            };
            let before = settled("before the reads")?;
            let options = ReadOptions {
                consistency: Some(Consistency::LOCAL),
                min_index: None,
            };
            let mut held = Vec::new();
            for node in &cluster.nodes {
                let mut client = node.client()?;
                let entries = client
                    .service()
                    .get_many(keys.to_vec(), options.clone())
                    .map_err(describe)?;
                for entry in &entries {
                    let expected = if entry.key == PLAIN {
                        "none"
                    } else {
                        "1..=TTL"
                    };
                    let fits = match entry.ttl_ms {
                        None => entry.key == PLAIN,
                        Some(ttl_ms) => entry.key != PLAIN && (1..=TTL_MS).contains(&ttl_ms),
                    };
                    assert!(
                        fits,
                        "node {}: {entry:?}: the TTL left must be {expected}",
                        node.id
                    );
                }
                held.push(entries.into_iter().map(|e| (e.key, e.value)).collect());
            }
            let after = settled("after the reads")?;
            (before == after)
                .then_some((before.0, held))
                .ok_or(format!("moved from {before:?} to {after:?}"))
        },
    )
}

/// Keeps writing (one key, through the leader, each write moving the log's clock) and comparing
/// the replicas at one index until no node holds a TTL key. Every comparison must find the
/// same values on every node; a TTL key once gone must stay gone; `plain` must stay. Returns
/// how many comparisons saw every TTL key still held, and how many in all.
fn compare_until_expired(cluster: &ProcessCluster, skews: [i64; 3]) -> (u64, u64) {
    let keys = keys(cluster);
    let ttl_keys: Vec<String> = cluster.ids().into_iter().map(ttl_key).collect();
    let mut leader = connect(cluster.node(1).client_addr).unwrap();
    let mut gone_at: BTreeMap<String, i64> = BTreeMap::new();
    let (mut all_held, mut compared) = (0, 0);
    let deadline = Instant::now() + GONE_WITHIN;
    for tick in 0u64.. {
        assert!(
            Instant::now() < deadline,
            "the TTL keys were not gone on every node within {GONE_WITHIN:?}: gone at {gone_at:?}"
        );
        leader
            .put("tick", &tick.to_string())
            .map_err(describe)
            .unwrap();
        let (index, held) = agreed_state(cluster, &keys);
        compared += 1;
        for (node, values) in cluster.nodes.iter().zip(&held).skip(1) {
            assert_eq!(
                values,
                &held[0],
                "at applied index {index}, node {} (clock {:+} s) holds other values than \
                 node 1 (clock {:+} s, the leader); all: {held:?}",
                node.id,
                skews[node.id as usize - 1],
                skews[0]
            );
        }
        let values = &held[0];
        assert_eq!(values.get(PLAIN).map(String::as_str), Some("stays"));
        for key in &ttl_keys {
            match (values.contains_key(key), gone_at.get(key)) {
                (true, Some(at)) => panic!("{key} was gone at index {at}, back at {index}"),
                (false, None) => {
                    gone_at.insert(key.clone(), index);
                }
                _ => {}
            }
        }
        if gone_at.is_empty() {
            all_held += 1;
        }
        if gone_at.len() == ttl_keys.len() {
            break;
        }
    }
    (all_held, compared)
}

/// One scenario: the cluster with clocks moved by `skews` (node 1 leads), the TTL writes, the
/// comparisons until they expire, then linearizable reads on every node.
fn scenario(name: &str, skews: [i64; 3]) {
    let began = Instant::now();
    phase(
        began,
        &format!("{name}: clocks of nodes 1-3 moved by {skews:?} s"),
    );
    let cluster = start(skews);

    phase(began, "a 10 s TTL key through every node, read back");
    write_and_read_back(&cluster);

    phase(
        began,
        "write and compare the replicas until the TTL keys are gone",
    );
    let (all_held, compared) = compare_until_expired(&cluster, skews);
    phase(
        began,
        &format!("{compared} comparisons, {all_held} with every TTL key still held"),
    );
    assert!(
        all_held > 0,
        "no comparison saw the TTL keys before they expired"
    );

    phase(
        began,
        "gone for linearizable reads on every node; node 1 still leads",
    );
    for node in &cluster.nodes {
        let mut client = node.client().unwrap();
        for id in cluster.ids() {
            let got = client.get(&ttl_key(id), true).map_err(describe);
            assert_eq!(
                got,
                Ok(None),
                "linearizable get {} via node {}",
                ttl_key(id),
                node.id
            );
        }
        assert_eq!(
            client.get(PLAIN, true).map_err(describe),
            Ok(Some("stays".into()))
        );
        let status = node.status().unwrap();
        assert_eq!(
            status.leader,
            Some(1),
            "node {} follows another leader",
            node.id
        );
    }
}

#[test]
fn leader_30s_behind_the_followers() {
    scenario("leader behind", [-SKEW_S, 0, 0]);
}

#[test]
fn leader_30s_ahead_of_the_followers() {
    scenario("leader ahead", [SKEW_S, 0, 0]);
}

#[test]
fn followers_30s_ahead_and_behind_the_leader() {
    scenario("followers skewed", [0, SKEW_S, -SKEW_S]);
}
