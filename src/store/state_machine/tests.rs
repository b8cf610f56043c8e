//! Tests of the state machine: applies, snapshot builds and installs, and their overlaps.
use crate::types::{CommittedLeaderId, EntryPayload, Membership};
use openraft::vote::RaftLeaderId;
use openraft::RaftSnapshotBuilder;
use tokio::io::AsyncWriteExt;

use super::*;
use crate::store::schema::{encode, KEY_EXPIRY_BUILT, KEY_INSTALLING, KEY_LAST_APPLIED};
use crate::store::{self, StoreOptions};
use crate::types::{Expiry, Request, Response};

fn meta() -> SnapshotMeta {
    let membership = StoredMembership::new(
        Some(LogId::new(CommittedLeaderId::new(1, 1), 1)),
        Membership::new(
            vec![std::collections::BTreeSet::from([1])],
            std::collections::BTreeMap::from([(1, crate::types::Node::default())]),
        )
        .unwrap(),
    );
    SnapshotMeta {
        last_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 40)),
        last_membership: membership,
    }
}

/// The bytes of a snapshot of `n` keys, as a leader would send them: the first half copied,
/// the rest (and a removed key) as replayed writes.
fn snapshot_bytes(dir: &std::path::Path, n: usize) -> Vec<u8> {
    let path = dir.join("source");
    let mut out = snapshot::Writer::create(&path).unwrap();
    for i in 0..n / 2 {
        out.record(format!("k{i}").as_bytes(), format!("v{i}").as_bytes())
            .unwrap();
    }
    out.record(b"gone", b"soon").unwrap();
    out.end_records().unwrap();
    for i in n / 2..n {
        out.write(format!("k{i}").as_bytes(), Some(format!("v{i}").as_bytes()))
            .unwrap();
    }
    out.write(b"gone", None).unwrap();
    out.finish(&meta()).unwrap();
    std::fs::read(path).unwrap()
}

async fn receive(sm: &mut StateMachine, bytes: &[u8]) -> Result<(), StorageError> {
    let mut file = sm.inbox().begin().await.unwrap();
    file.write_all(bytes).await.unwrap();
    sm.install_snapshot(&meta(), file).await
}

/// A node in `base/node` that received a snapshot of `keys` keys and was then stopped with its
/// install marked as under way, after `damage` changed its state as a crash would have.
async fn interrupted_install(
    base: &std::path::Path,
    keys: usize,
    damage: impl FnOnce(&StateMachine),
) {
    let bytes = snapshot_bytes(base, keys);
    let (_log, mut sm) = store::open(&base.join("node"), 1, None, &StoreOptions::default())
        .await
        .unwrap();
    receive(&mut sm, &bytes).await.unwrap();
    sm.meta.insert(KEY_INSTALLING, b"test".as_slice()).unwrap();
    damage(&sm);
    sm.db.flush().unwrap();
}

#[tokio::test]
async fn an_install_interrupted_by_a_crash_is_finished_on_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    // Simulate a crash half-way through a (re)install: the marker is set, the data is half
    // cleared, last_applied is stale.
    interrupted_install(dir.path(), 10_000, |sm| {
        for i in 0..5000 {
            sm.data.remove(format!("k{i}").as_bytes()).unwrap();
        }
        sm.meta
            .insert(KEY_LAST_APPLIED, encode(&None::<LogId>))
            .unwrap();
    })
    .await;
    let (_log, mut sm) = store::open(&dir.path().join("node"), 1, None, &StoreOptions::default())
        .await
        .unwrap();
    assert!(
        !sm.meta.contains_key(KEY_INSTALLING).unwrap(),
        "the install was finished"
    );
    assert_eq!(sm.reader().len(), 10_000);
    assert_eq!(sm.reader().get("k7").unwrap().as_deref(), Some("v7"));
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, meta().last_log_id);
}

/// An install interrupted by a crash, whose snapshot file was then damaged on disk (fault-suite
/// seed 102040: a bit flipped while the node was down), cannot be finished: the node refuses to
/// start, saying that this data dir cannot recover on its own and what to do, instead of only
/// that a checksum failed.
#[tokio::test]
async fn an_interrupted_install_from_a_damaged_file_refuses_to_start_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    interrupted_install(dir.path(), 1_000, |_| {}).await;
    let current = dir.path().join("node/snapshots").join(snapshot::CURRENT);
    let mut damaged = std::fs::read(&current).unwrap();
    damaged[100] ^= 0x04;
    std::fs::write(&current, damaged).unwrap();
    let Err(e) = store::open(&dir.path().join("node"), 1, None, &StoreOptions::default()).await
    else {
        panic!("a node whose interrupted install cannot be finished must not start");
    };
    let message = e.to_string();
    assert!(
        message.contains("the snapshot is damaged")
            && message.contains("cannot recover on its own")
            && message.contains("remove-node"),
        "{message}"
    );
}

/// A power cut can keep a published snapshot (renamed and its directory synced) and lose the
/// state machine's applies up to it (sled flushed since, not synced). openraft then refused
/// to start ("snapshot_last_log_id <= committed"): the state machine installs it on open.
#[tokio::test]
async fn a_state_machine_behind_its_current_snapshot_installs_it_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = snapshot_bytes(dir.path(), 100);
    let node = dir.path().join("node");
    drop(
        store::open(&node, 1, None, &StoreOptions::default())
            .await
            .unwrap(),
    );
    std::fs::write(node.join("snapshots").join(snapshot::CURRENT), &bytes).unwrap();
    let (_log, mut sm) = store::open(&node, 1, None, &StoreOptions::default())
        .await
        .unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, meta().last_log_id);
    assert_eq!(sm.reader().len(), 100);
    assert_eq!(sm.reader().get("k70").unwrap().as_deref(), Some("v70"));
}

/// openraft purges a follower's log up to a received snapshot as soon as it hands the
/// snapshot to the state machine. The purge must not be durable before the install is: a
/// crash between the two left a log starting after what the state machine held, and a node
/// that refused to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_behind_a_snapshot_is_purged_only_once_its_install_is_marked() {
    use openraft::storage::RaftLogStorage;
    let dir = tempfile::tempdir().unwrap();
    let bytes = snapshot_bytes(dir.path(), 1000);
    let path = dir.path().join("node");
    let (mut log, mut sm) = store::open(&path, 1, None, &StoreOptions::default())
        .await
        .unwrap();
    let old: Vec<Entry> = (1..=10).map(|i| entry(i, Vec::new())).collect();
    sm.apply_entries(old).await.unwrap();
    let upto = meta().last_log_id.unwrap();
    // As openraft does: the snapshot is received, then its install and the purge of the
    // log behind it are started together.
    let mut file = sm.inbox().begin().await.unwrap();
    file.write_all(&bytes).await.unwrap();
    let purge = tokio::spawn(async move { log.purge(upto).await.map(|()| log) });
    // Nothing marks the install yet: the purge must still be waiting. (A wait for
    // something not to happen; it would be done within milliseconds.)
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !purge.is_finished(),
        "the log was purged up to {} while the state machine holds 10",
        upto.index
    );
    sm.install_snapshot(&meta(), file).await.unwrap();
    let log = tokio::time::timeout(std::time::Duration::from_secs(30), purge)
        .await
        .expect("the purge goes on once the install is marked")
        .unwrap()
        .unwrap();
    assert_eq!(log.last_purged(), Some(upto));
    drop((log, sm));
    let (_log, mut sm) = store::open(&path, 1, None, &StoreOptions::default())
        .await
        .expect("the node restarts");
    assert_eq!(sm.applied_state().await.unwrap().0, Some(upto));
}

#[tokio::test]
async fn a_snapshot_cut_short_in_transfer_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = snapshot_bytes(dir.path(), 1000);
    let (_log, mut sm) = store::open(&dir.path().join("node"), 1, None, &StoreOptions::default())
        .await
        .unwrap();
    sm.data.insert("mine", "kept").unwrap();
    let cut = &bytes[..bytes.len() - 100];
    assert!(
        receive(&mut sm, cut).await.is_err(),
        "a truncated snapshot must not install"
    );
    assert_eq!(sm.reader().get("mine").unwrap().as_deref(), Some("kept"));
    assert_eq!(sm.reader().len(), 1);
    assert!(
        sm.get_current_snapshot().await.unwrap().is_none(),
        "nor become the current snapshot"
    );
}

/// The stores of node 1 in `base/name`, opened (created on first use).
fn open_in(
    base: &std::path::Path,
    name: &str,
) -> impl std::future::Future<Output = (store::LogStore, StateMachine)> + use<> {
    let path = base.join(name);
    async move {
        store::open(&path, 1, None, &StoreOptions::default())
            .await
            .unwrap()
    }
}

/// Every pair held by `sm`, in key order.
fn dump(sm: &StateMachine) -> Vec<(sled::IVec, sled::IVec)> {
    sm.data.iter().map(|kv| kv.unwrap()).collect()
}

/// A snapshot build that started before a snapshot was installed, and had seen applies
/// meanwhile, ends after the install: the installed snapshot stays the current one, and a
/// node that installs the current snapshot holds exactly what was installed.
#[tokio::test]
async fn a_build_overtaken_by_an_install_never_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| {
        let opened = open_in(dir.path(), name);
        async move { opened.await.1 }
    };
    let put = |key: &str, value: &str| Request::Put {
        key: key.into(),
        value: value.into(),
        expiry: Expiry::Never,
    };
    // The leader's state at index 50: keys l0..l99.
    let mut leader = open("leader").await;
    let writes: Vec<Entry> = (1..=50)
        .map(|i| entry(i, vec![put(&format!("l{i}"), "leader")]))
        .collect();
    leader.apply_entries(writes).await.unwrap();
    let sent = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let sent_bytes = std::fs::read(leader.snapshot_dir.join(snapshot::CURRENT)).unwrap();

    // The follower is at index 10, starts a build, applies two more entries, then installs
    // the leader's snapshot (index 50) before its build finishes.
    let mut follower = open("follower").await;
    let old: Vec<Entry> = (1..=10)
        .map(|i| entry(i, vec![put(&format!("f{i}"), "old")]))
        .collect();
    follower.apply_entries(old).await.unwrap();
    let mut build = follower.get_snapshot_builder().await;
    let during = vec![
        entry(11, vec![put("f-late", "during the build")]),
        entry(12, vec![Request::Remove { key: "l7".into() }]),
    ];
    follower.apply_entries(during).await.unwrap();
    let mut file = follower.inbox().begin().await.unwrap();
    file.write_all(&sent_bytes).await.unwrap();
    follower.install_snapshot(&sent.meta, file).await.unwrap();
    assert_eq!(
        dump(&follower),
        dump(&leader),
        "the install loaded the leader's state"
    );

    let built = build.build_snapshot().await.unwrap();
    let current = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(
        current.meta, sent.meta,
        "the installed snapshot is still the current one"
    );
    assert_eq!(
        built.meta, sent.meta,
        "the overtaken build yields the installed snapshot"
    );
    let copy = install_copy(&follower, &current, &dir.path().join("copy")).await;
    assert_eq!(
        dump(&copy),
        dump(&leader),
        "a node added from it holds the leader's state"
    );
    assert_eq!(dump(&follower), dump(&leader));
}

/// A bit flipped on disk in the current snapshot (`val-0500` read back as `val-0400`) is
/// never sent to a follower: the node builds a new snapshot from its data instead.
#[tokio::test]
async fn a_damaged_current_snapshot_is_rebuilt_before_it_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = store::open(&dir.path().join("a"), 1, None, &StoreOptions::default())
        .await
        .unwrap();
    let writes: Vec<Entry> = (1..=1000)
        .map(|i| {
            entry(
                i,
                vec![Request::Put {
                    key: format!("k{i:04}"),
                    value: format!("val-{i:04}").into_bytes(),
                    expiry: Expiry::Never,
                }],
            )
        })
        .collect();
    sm.apply_entries(writes).await.unwrap();
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let path = sm.snapshot_dir.join(snapshot::CURRENT);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(8).position(|w| w == b"val-0500").unwrap();
    bytes[at + 5] = b'4';
    std::fs::write(&path, bytes).unwrap();

    let sent = sm.get_current_snapshot().await.unwrap().unwrap();
    snapshot::verify(&path).expect("what is sent verifies");
    let copy = install_copy(&sm, &sent, &dir.path().join("b")).await;
    assert_eq!(
        copy.reader().get("k0500").unwrap().as_deref(),
        Some("val-0500")
    );
    assert_eq!(dump(&copy), dump(&sm));
}

#[tokio::test]
async fn a_built_snapshot_streams_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = store::open(&dir.path().join("node"), 1, None, &StoreOptions::default())
        .await
        .unwrap();
    for i in 0..2000 {
        sm.data
            .insert(format!("k{i}"), format!("v{i}").as_bytes())
            .unwrap();
    }
    let mut builder = sm.get_snapshot_builder().await;
    let built = builder.build_snapshot().await.unwrap();
    let current = sm
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("a current snapshot");
    assert_eq!(current.meta, built.meta);
    let records = snapshot::verify(&sm.snapshot_dir.join(snapshot::CURRENT)).unwrap();
    assert_eq!(records, 2000);
}

pub(in crate::store) fn entry(index: u64, requests: Vec<Request>) -> Entry {
    entry_at(index, 1_000, requests)
}

/// An entry proposed when the leader's clock read `now_ms`.
fn entry_at(index: u64, now_ms: u64, requests: Vec<Request>) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(crate::types::Batch {
            requests,
            now_ms,
            capacity: Default::default(),
        }),
    }
}

#[tokio::test]
async fn a_snapshot_built_while_applies_go_on_equals_the_state_at_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut source) = store::open(&dir.path().join("a"), 1, None, &StoreOptions::default())
        .await
        .unwrap();
    let put = |i: u64, v: &str| Request::Put {
        key: format!("k{i}"),
        value: v.into(),
        expiry: Expiry::Never,
    };
    let mut entries = Vec::new();
    for index in 1..=100 {
        entries.push(entry(
            index,
            vec![put(index, "first"), put(index + 1000, "x")],
        ));
    }
    // Applied after the builder took its starting point: overwrites, removes, new keys.
    let mut later = Vec::new();
    for index in 101..=200 {
        let k = index - 100;
        later.push(entry(
            index,
            vec![
                put(k, "second"),
                Request::Remove {
                    key: format!("k{}", k + 1000),
                },
                put(index, "new"),
            ],
        ));
    }
    source.apply_entries(entries).await.unwrap();
    let mut builder = source.get_snapshot_builder().await;
    source.apply_entries(later).await.unwrap();
    let built = builder.build_snapshot().await.unwrap();
    assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(200));

    let (_log, mut target) = store::open(&dir.path().join("b"), 1, None, &StoreOptions::default())
        .await
        .unwrap();
    target.data.insert("stale", "gone after install").unwrap();
    let mut file = target.inbox().begin().await.unwrap();
    let bytes = std::fs::read(source.snapshot_dir.join(snapshot::CURRENT)).unwrap();
    file.write_all(&bytes).await.unwrap();
    target.install_snapshot(&built.meta, file).await.unwrap();
    let dump = |sm: &StateMachine| sm.data.iter().map(|kv| kv.unwrap()).collect::<Vec<_>>();
    assert_eq!(dump(&target), dump(&source));
    assert_eq!(
        target.reader().get("k1").unwrap().as_deref(),
        Some("second")
    );
    let (held, counted) = (
        target.reader().stats().unwrap(),
        source.reader().stats().unwrap(),
    );
    assert_eq!((held.keys, held.bytes), (counted.keys, counted.bytes));
    assert_eq!(held.keys, target.reader().len() as u64);
    assert_eq!(target.reader().get("k1001").unwrap(), None);
    assert_eq!(
        target.applied_state().await.unwrap().0,
        built.meta.last_log_id
    );
}

/// Installs the current snapshot of `source` into a fresh state machine under `dir`.
pub(in crate::store) async fn install_copy(
    source: &StateMachine,
    built: &Snapshot,
    dir: &std::path::Path,
) -> StateMachine {
    let (_log, mut target) = store::open(dir, 1, None, &StoreOptions::default())
        .await
        .unwrap();
    let mut file = target.inbox().begin().await.unwrap();
    let bytes = std::fs::read(source.snapshot_dir.join(snapshot::CURRENT)).unwrap();
    file.write_all(&bytes).await.unwrap();
    target.install_snapshot(&built.meta, file).await.unwrap();
    target
}

#[tokio::test]
async fn increments_applied_while_a_snapshot_is_copied_are_replayed_by_their_effect() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut source) = store::open(&dir.path().join("a"), 1, None, &StoreOptions::default())
        .await
        .unwrap();
    let increment = |index| {
        entry(
            index,
            vec![Request::Increment {
                key: "n".into(),
                delta: 1,
            }],
        )
    };
    let before: Vec<Entry> = (1..=10).map(increment).collect();
    source.apply_entries(before).await.unwrap();
    let mut builder = source.get_snapshot_builder().await;
    // Applied after the build started and before it copies: the copy already holds their
    // result, so replaying the requests would count them twice.
    let during: Vec<Entry> = (11..=15).map(increment).collect();
    let answers = source.apply_entries(during).await.unwrap();
    assert_eq!(answers[4].responses, vec![Response::Incremented(15)]);
    let built = builder.build_snapshot().await.unwrap();
    assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(15));
    let target = install_copy(&source, &built, &dir.path().join("b")).await;
    assert_eq!(target.reader().get("n").unwrap().as_deref(), Some("15"));
    assert!(
        !source.recording.load(Ordering::Acquire),
        "applies stop recording once the build is done"
    );
}

#[tokio::test]
async fn conditional_writes_and_expiry_are_decided_by_the_entry_time() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = store::open(&dir.path().join("a"), 1, None, &StoreOptions::default())
        .await
        .unwrap();
    let item = |key: &str, value: &str, expiry| crate::types::Item {
        key: key.into(),
        value: value.into(),
        expiry,
    };
    let requests = vec![
        Request::PutIfAbsent {
            item: item("a", "1", Expiry::AtMs(1_500)),
        },
        Request::PutIfAbsent {
            item: item("a", "2", Expiry::Never),
        },
        Request::CompareAndPut {
            expected: "0".into(),
            item: item("a", "3", Expiry::Never),
        },
        Request::CompareAndPut {
            expected: "1".into(),
            item: item("a", "4", Expiry::AtMs(1_500)),
        },
        Request::Put {
            key: "text".into(),
            value: "x".into(),
            expiry: Expiry::Never,
        },
        Request::Increment {
            key: "text".into(),
            delta: 1,
        },
        Request::Increment {
            key: "big".into(),
            delta: i64::MAX,
        },
        Request::Increment {
            key: "big".into(),
            delta: 1,
        },
    ];
    let answers = sm.apply_entries(vec![entry(1, requests)]).await.unwrap();
    let answers = &answers[0].responses;
    assert_eq!(
        answers[..4],
        [
            Response::Written(true),
            Response::Written(false),
            Response::Written(false),
            Response::Written(true),
        ]
    );
    assert!(matches!(answers[5], Response::Refused(_)));
    assert_eq!(answers[6], Response::Incremented(i64::MAX));
    assert!(matches!(answers[7], Response::Refused(_)));
    let reader = sm.reader();
    assert_eq!(reader.entry("a", 1_499).unwrap().unwrap().value, b"4");
    assert_eq!(
        reader.entry("a", 1_500).unwrap(),
        None,
        "hidden from its expiry on"
    );
    assert_eq!(reader.entry("text", 0).unwrap().unwrap().value, b"x");
    // At 2,000 "a" has expired: put_if_absent writes, and the sweep leaves the new value.
    let later = vec![
        Request::PutIfAbsent {
            item: item("a", "5", Expiry::Never),
        },
        Request::Expire {
            keys: vec!["a".into(), "text".into()],
        },
    ];
    let answers = sm
        .apply_entries(vec![entry_at(2, 2_000, later)])
        .await
        .unwrap();
    assert_eq!(
        answers[0].responses,
        [Response::Written(true), Response::Count(0)]
    );
    let mut ttl = sm
        .apply_entries(vec![entry(
            3,
            vec![
                Request::Put {
                    key: "t".into(),
                    value: "v".into(),
                    expiry: Expiry::AtMs(1_000),
                },
                Request::Expire {
                    keys: vec!["t".into()],
                },
            ],
        )])
        .await
        .unwrap();
    assert_eq!(ttl.remove(0).responses[1], Response::Count(1));
    assert_eq!(reader.stats().unwrap().expired, 1);
    assert_eq!(reader.len(), 3);
}

#[tokio::test]
async fn a_data_dir_without_the_expiry_index_gets_it_built_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a");
    let expected = {
        let (_log, mut sm) = store::open(&path, 1, None, &StoreOptions::default())
            .await
            .unwrap();
        let put = |key: &str, expiry| Request::Put {
            key: key.into(),
            value: "1".into(),
            expiry,
        };
        let requests = vec![
            put("t1", Expiry::AtMs(5_000)),
            put("plain", Expiry::Never),
            put("t2", Expiry::AtMs(4_000)),
        ];
        sm.apply_entries(vec![entry(1, requests)]).await.unwrap();
        let expected = expiry_index::entries(sm.expiry_tree());
        // As a data dir written before the index existed: no index, no marker.
        sm.expiry.clear().unwrap();
        sm.meta.remove(KEY_EXPIRY_BUILT).unwrap();
        sm.db.flush().unwrap();
        expected
    };
    assert_eq!(expected, [(4_000, "t2".into()), (5_000, "t1".into())]);
    let (_log, sm) = store::open(&path, 1, None, &StoreOptions::default())
        .await
        .unwrap();
    assert_eq!(expiry_index::entries(sm.expiry_tree()), expected);
    assert!(sm.meta.contains_key(KEY_EXPIRY_BUILT).unwrap());
}

/// Expiry is decided by the log's time (the leader's clock carried by each applied entry), not
/// by the clock of the node that reads: every replica at the same index agrees, and a write is
/// visible where it was acknowledged whatever that node's clock says.
#[tokio::test]
async fn reads_hide_expired_values_by_the_log_clock_not_the_readers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a");
    let put = |key: &str, at_ms| Request::Put {
        key: key.into(),
        value: "v".into(),
        expiry: Expiry::AtMs(at_ms),
    };
    {
        let (_log, mut sm) = store::open(&path, 1, None, &StoreOptions::default())
            .await
            .unwrap();
        // The leader's clock read 1,000 (this machine's reads far later): visible until 11,000.
        sm.apply_entries(vec![entry_at(1, 1_000, vec![put("t", 11_000)])])
            .await
            .unwrap();
        let reader = sm.reader();
        assert_eq!(reader.log_clock().now_ms(), 1_000);
        assert_eq!(reader.get("t").unwrap().as_deref(), Some("v"));
        sm.apply_entries(vec![entry_at(2, 10_999, Vec::new())])
            .await
            .unwrap();
        assert_eq!(reader.get("t").unwrap().as_deref(), Some("v"));
        sm.apply_entries(vec![entry_at(3, 11_000, Vec::new())])
            .await
            .unwrap();
        assert_eq!(reader.get("t").unwrap(), None, "hidden from its expiry on");
        // A leader whose clock is behind does not turn the log's time back.
        sm.apply_entries(vec![entry_at(4, 5_000, Vec::new())])
            .await
            .unwrap();
        assert_eq!(reader.log_clock().now_ms(), 11_000);
        assert_eq!(reader.get("t").unwrap(), None);
        assert_eq!(reader.log_clock().leader_now_ms(0), 11_000);
    }
    let (_log, sm) = store::open(&path, 1, None, &StoreOptions::default())
        .await
        .unwrap();
    assert_eq!(
        sm.reader().log_clock().now_ms(),
        11_000,
        "kept across a restart"
    );
}

/// Everything a state machine holds that applies write: its data, its expiry index and its
/// `sm_meta` but the journal itself, each in key order.
fn everything(sm: &StateMachine) -> [Vec<(sled::IVec, sled::IVec)>; 3] {
    let all = |tree: &sled::Tree| -> Vec<_> { tree.iter().map(|kv| kv.unwrap()).collect() };
    let mut meta = all(&sm.meta);
    meta.retain(|(key, _)| key.as_ref() != crate::store::schema::KEY_JOURNAL);
    [dump(sm), all(&sm.expiry), meta]
}

/// sled keeps, after a crash or a power cut, a prefix of what was written. An apply whose
/// journal was written can be stopped after any number of its writes; the next open must
/// finish it, so that the node holds exactly what an apply that was not stopped leaves (the
/// data, the expiry index, the counters, `last_applied`), and no request (an increment, a
/// conditional write) is decided twice.
#[tokio::test]
async fn an_apply_stopped_after_its_journal_is_finished_on_the_next_open() {
    let item = |key: &str, value: &str, expiry| crate::types::Item {
        key: key.into(),
        value: value.into(),
        expiry,
    };
    let before = vec![entry(
        1,
        vec![
            Request::Put {
                key: "n".into(),
                value: "1".into(),
                expiry: Expiry::Never,
            },
            Request::Put {
                key: "gone".into(),
                value: "x".into(),
                expiry: Expiry::AtMs(9_000),
            },
        ],
    )];
    let run = vec![
        entry(
            2,
            vec![
                Request::Increment {
                    key: "n".into(),
                    delta: 5,
                },
                Request::Remove { key: "gone".into() },
                Request::PutIfAbsent {
                    item: item("new", "a", Expiry::AtMs(5_000)),
                },
            ],
        ),
        entry_at(
            3,
            2_000,
            vec![
                Request::CompareAndPut {
                    expected: "a".into(),
                    item: item("new", "b", Expiry::AtMs(6_000)),
                },
                Request::Increment {
                    key: "n".into(),
                    delta: 10,
                },
                Request::Put {
                    key: "m".into(),
                    value: "zz".into(),
                    expiry: Expiry::Never,
                },
            ],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| open_in(dir.path(), name);
    let (_log, mut whole) = open("whole").await;
    whole.apply_entries(before.clone()).await.unwrap();
    whole.apply_entries(run.clone()).await.unwrap();
    let expected = everything(&whole);
    assert_eq!(whole.reader().get("n").unwrap().as_deref(), Some("16"));
    // Stopped after 0, 1, 2... of its writes, until the last one (`last_applied`) is written.
    let mut stopped_before_the_end = 0;
    for upto in 0.. {
        let name = format!("stopped-{upto}");
        let finished = {
            let (_log, mut sm) = open(&name).await;
            sm.apply_entries(before.clone()).await.unwrap();
            crate::store::apply::apply_interrupted(&sm.trees(), &run, upto).unwrap();
            let (applied, _) = sm.applied_state().await.unwrap();
            applied.map(|id| id.index) == Some(3)
        };
        let (_log, mut sm) = open(&name).await;
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|id| id.index), Some(3), "stopped after {upto}");
        assert_eq!(everything(&sm), expected, "stopped after {upto} writes");
        assert_eq!(sm.reader().get("n").unwrap().as_deref(), Some("16"));
        if finished {
            break;
        }
        stopped_before_the_end += 1;
    }
    // Stopped after 0 to 10 of its 11 writes: 4 keys, 3 expiry index entries, the counters
    // of keys and bytes, the clock, then `last_applied`.
    assert_eq!(stopped_before_the_end, 11);
}

fn tracked(client: u64, seq: u64, request: Request) -> Request {
    Request::Tracked {
        session: crate::types::SessionRequest {
            client,
            seq,
            lowest_unanswered: seq,
            limits: crate::types::SessionLimits::default(),
        },
        request: Box::new(request),
    }
}

#[tokio::test]
async fn a_tracked_write_is_applied_once_here_and_after_a_snapshot_install() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut source) = store::open(&dir.path().join("a"), 1, None, &StoreOptions::default())
        .await
        .unwrap();
    let increment = || Request::Increment {
        key: "n".into(),
        delta: 1,
    };
    let answers = source
        .apply_entries(vec![
            entry(1, vec![tracked(7, 1, increment())]),
            // The same write again (a retry after a change of leader), and another client's.
            entry(
                2,
                vec![tracked(7, 1, increment()), tracked(8, 1, increment())],
            ),
        ])
        .await
        .unwrap();
    assert_eq!(answers[0].responses, vec![Response::Incremented(1)]);
    assert_eq!(
        answers[1].responses,
        vec![
            Response::Repeated(Box::new(Response::Incremented(1))),
            Response::Incremented(2)
        ]
    );
    let reader = source.reader();
    assert_eq!(reader.get("n").unwrap().as_deref(), Some("2"));
    // The sessions are not keys: not counted, listed nor scanned.
    assert_eq!(reader.stats().unwrap().keys, 1);
    assert_eq!(reader.keys().collect::<Vec<_>>(), ["n"]);
    assert_eq!(reader.scan("", "", 10, 0).unwrap().len(), 1);

    let built = source
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut target = install_copy(&source, &built, &dir.path().join("b")).await;
    let after = target
        .apply_entries(vec![entry(
            3,
            vec![tracked(7, 1, increment()), tracked(7, 2, increment())],
        )])
        .await
        .unwrap();
    assert_eq!(
        after[0].responses,
        vec![
            Response::Repeated(Box::new(Response::Incremented(1))),
            Response::Incremented(3)
        ],
        "the snapshot carried client 7's answers"
    );
    assert_eq!(target.reader().stats().unwrap().keys, 1);
}

#[tokio::test]
async fn sessions_past_the_cap_forget_the_least_recently_seen_client() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = store::open(&dir.path().join("a"), 1, None, &StoreOptions::default())
        .await
        .unwrap();
    let limits = crate::types::SessionLimits {
        ttl_ms: 1_000_000,
        max_sessions: 10,
        max_answers: 10,
    };
    let put = |client: u64| Request::Tracked {
        session: crate::types::SessionRequest {
            client,
            seq: 1,
            lowest_unanswered: 1,
            limits,
        },
        request: Box::new(Request::Put {
            key: format!("k{client}"),
            value: b"v".to_vec(),
            expiry: Expiry::Never,
        }),
    };
    // Clients 1..=10 fill the cap, one per entry (client 1 seen first).
    let entries = (1..=10)
        .map(|c| entry_at(c, c * 10, vec![put(c)]))
        .collect();
    sm.apply_entries(entries).await.unwrap();
    // Client 11 makes room: the least recently seen (client 1) is forgotten.
    let answers = sm
        .apply_entries(vec![entry_at(11, 200, vec![put(11), put(1), put(10)])])
        .await
        .unwrap();
    assert_eq!(answers[0].responses[0], Response::Put);
    assert_eq!(
        answers[0].responses[1],
        Response::Put,
        "client 1's answer was forgotten"
    );
    assert_eq!(
        answers[0].responses[2],
        Response::Repeated(Box::new(Response::Put)),
        "client 10's answer is kept"
    );
    let held = sm
        .reader()
        .meta
        .get(crate::store::schema::KEY_SESSIONS)
        .unwrap();
    assert!(held.is_some_and(|raw| crate::store::schema::read_u64(&raw) <= 10));
}

#[tokio::test]
async fn every_change_of_a_key_is_an_event_in_log_order() {
    use crate::store::history::{EventKind, Position, Read};
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = store::open(&dir.path().join("a"), 1, None, &StoreOptions::default())
        .await
        .unwrap();
    let put = |key: &str, value: &str, expiry| Request::Put {
        key: key.into(),
        value: value.into(),
        expiry,
    };
    sm.apply_entries(vec![
        entry_at(
            1,
            1_000,
            vec![
                put("w/a", "1", Expiry::AtMs(1_500)),
                put("other", "x", Expiry::Never),
                tracked(
                    5,
                    1,
                    Request::Increment {
                        key: "w/n".into(),
                        delta: 2,
                    },
                ),
            ],
        ),
        entry_at(
            2,
            2_000,
            vec![
                Request::Expire {
                    keys: vec!["w/a".into()],
                },
                Request::Remove {
                    key: "w/missing".into(),
                },
                Request::RemoveMany {
                    keys: vec!["w/n".into(), "other".into()],
                },
            ],
        ),
    ])
    .await
    .unwrap();
    let Read::Events { events, resume } = sm.history().read("w/", Position::after_entry(0), 100)
    else {
        panic!("the history holds everything since the node opened")
    };
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.index, e.offset, e.kind, e.key.as_str(), e.value.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (1, 1, EventKind::Put, "w/a", Some(b"1".to_vec())),
            (1, 3, EventKind::Put, "w/n", Some(b"2".to_vec())),
            (2, 1, EventKind::Expire, "w/a", None),
            (2, 2, EventKind::Remove, "w/n", None),
        ]
    );
    assert_eq!(events[0].expires_at_ms, Some(1_500));
    assert_eq!(resume, Position::after_entry(2));
}
