//! Backup and restore, as an operator runs them: `raftcache admin backup` from a live cluster
//! while a client writes, `raftcache restore` into the data dirs of a new 3-node cluster, then
//! `raftcache serve` on them. The new cluster holds exactly the source's data at the backup's
//! index (the writer's keys are a gap-free prefix of what it wrote), under a cluster id of its
//! own; a damaged, cut-short or foreign file and a data dir in use are refused with their
//! reason.
//!
//! Run with the phases printed: `cargo test --test backup -- --nocapture`.

mod multi_process;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use multi_process::{bin, connect, phase, ProcessCluster, Retrying, DEADLINE};
use raftcache::gen::cache::{CacheEntry, TCacheServiceSyncClient};
use raftcache_testkit::wait::wait_until;

/// Keys written before the backup, in batches of `put_many`.
const BASE_KEYS: usize = 3000;
const BATCH: usize = 300;

fn run(args: &[String]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run raftcache")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `raftcache restore FILE` with the flags node `id` of `cluster` is served with.
fn restore(cluster: &ProcessCluster, id: u64, file: &std::path::Path) -> Output {
    let mut args = vec!["restore".to_string(), file.display().to_string()];
    args.extend(cluster.node(id).args().into_iter().skip(1));
    run(&args)
}

#[test]
fn a_backup_taken_during_writes_restores_into_a_new_cluster_holding_the_data_at_its_index() {
    let start = Instant::now();
    phase(start, "source: 3 nodes, 3,000 keys, removes and counters");
    let source = ProcessCluster::start(3);
    let leader = source.wait_for_leader(&[1, 2, 3]);
    let addr = source.node(leader).client_addr;
    let mut client = connect(addr).unwrap();
    for batch in 0..BASE_KEYS / BATCH {
        let entries = (0..BATCH)
            .map(|i| CacheEntry::new(format!("base-{}", batch * BATCH + i), format!("v{i}"), None))
            .collect();
        client.service().put_many(entries).expect("put_many");
    }
    for i in 0..100 {
        assert!(client.remove(&format!("base-{i}")).unwrap());
    }
    for _ in 0..7 {
        client.service().increment("counter".into(), 6).unwrap();
    }

    phase(
        start,
        "a writer puts live-0, live-1, ... one after the other; backup meanwhile",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut c = connect(addr).unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let n = acked.load(Ordering::Relaxed);
                c.put(&format!("live-{n}"), &format!("w{n}")).expect("put");
                acked.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    wait_until(DEADLINE, "the writer is under way", || {
        acked.load(Ordering::Relaxed) > 50
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cache.rcbackup");
    let before = acked.load(Ordering::Relaxed);
    let backup = run(&[
        "admin".into(),
        "backup".into(),
        file.display().to_string(),
        "--json".into(),
        format!("--addr={addr}"),
    ]);
    let after = acked.load(Ordering::Relaxed);
    assert!(backup.status.success(), "admin backup: {}", text(&backup));
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let result: serde_json::Value = serde_json::from_slice(&backup.stdout).unwrap();
    let index = result["index"].as_u64().unwrap();
    let source_cluster = source.node(leader).status().unwrap().cluster_id.unwrap();
    assert_eq!(result["cluster_id"].as_str(), Some(source_cluster.as_str()));
    assert!(
        text(&backup).contains("backup: ") && text(&backup).contains("(100%)"),
        "a progress line: {}",
        text(&backup)
    );
    eprintln!(
        "backup at index {index}; the writer had {before} acknowledged before, {after} after"
    );

    phase(
        start,
        "restore into a new 3-node cluster's data dirs, then serve them",
    );
    let mut target = ProcessCluster::create_with(3, &[]);
    for id in [1, 2, 3] {
        let restored = restore(&target, id, &file);
        assert!(restored.status.success(), "restore: {}", text(&restored));
        assert!(text(&restored).contains(&format!("at log index {index}")));
    }
    let again = restore(&target, 1, &file);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("is not empty"),
        "a data dir that holds state is refused: {}",
        text(&again)
    );
    target.start_all();
    let new_leader = target.wait_for_leader(&[1, 2, 3]);
    let status = target.node(new_leader).status().unwrap();
    let new_cluster = status.cluster_id.unwrap();
    assert_ne!(
        new_cluster, source_cluster,
        "the new cluster has its own id"
    );
    assert!(status.last_applied as u64 >= index);

    phase(
        start,
        "every node of the new cluster holds the source's data at the index",
    );
    for id in [1, 2, 3] {
        let node = target.node(id);
        wait_until(DEADLINE, "the node applied up to the backup", || {
            node.status().is_ok_and(|s| s.last_applied as u64 >= index)
        });
        let mut c = Retrying::new(node.client_addr);
        for i in [0, 99, 100, 1234, BASE_KEYS - 1] {
            let want = (i >= 100).then(|| format!("v{}", i % BATCH));
            assert_eq!(
                c.get(&format!("base-{i}"), false),
                want,
                "node {id}: base-{i}"
            );
        }
        assert_eq!(c.get("counter", false).as_deref(), Some("42"));
        // The writer's keys: a gap-free prefix, at least what was acknowledged before the
        // backup was asked for, at most one more than what was acknowledged when it ended.
        let live = (0..after + 2)
            .take_while(|n| c.get(&format!("live-{n}"), false).is_some())
            .count() as u64;
        assert!(
            live >= before && live <= after + 1,
            "node {id}: {live} of the writer's keys ({before} before the backup, {after} after)"
        );
        for n in live..after + 2 {
            assert_eq!(
                c.get(&format!("live-{n}"), false),
                None,
                "node {id}: live-{n} after a gap"
            );
        }
    }

    phase(
        start,
        "the new cluster takes writes; the source is unchanged by it",
    );
    let mut c = Retrying::new(target.node(new_leader).client_addr);
    c.put("after-restore", "yes");
    assert_eq!(c.get("after-restore", true).as_deref(), Some("yes"));
    let mut s = Retrying::new(addr);
    assert_eq!(s.get("after-restore", true), None);
}

#[test]
fn a_damaged_cut_short_or_foreign_backup_is_refused_with_its_reason_and_leaves_no_data_dir() {
    let source = ProcessCluster::single();
    let addr = source.node(1).client_addr;
    let mut client = connect(addr).unwrap();
    for i in 0..200 {
        client.put(&format!("k{i}"), "v").unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.rcbackup");
    let backup = |file: &std::path::Path| {
        run(&[
            "admin".into(),
            "backup".into(),
            file.display().to_string(),
            format!("--addr={addr}"),
        ])
    };
    let out = backup(&file);
    assert!(out.status.success(), "{}", text(&out));
    let refused = backup(&file);
    assert!(
        !refused.status.success() && text(&refused).contains("exists"),
        "an existing file is not replaced: {}",
        text(&refused)
    );
    let bytes = std::fs::read(&file).unwrap();

    let damaged = dir.path().join("damaged");
    let mut flipped = bytes.clone();
    let middle = bytes.len() / 2;
    flipped[middle] ^= 0x10;
    std::fs::write(&damaged, &flipped).unwrap();
    let cut = dir.path().join("cut");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let foreign = dir.path().join("foreign");
    let mut other = bytes.clone();
    other[8..12].copy_from_slice(&2u32.to_be_bytes());
    std::fs::write(&foreign, &other).unwrap();
    let not_a_backup = dir.path().join("notes.txt");
    std::fs::write(&not_a_backup, "a shopping list\n").unwrap();

    let target = ProcessCluster::create_with(1, &[]);
    for (file, reason) in [
        (&damaged, "checksum does not match"),
        (&cut, "cut short"),
        (&foreign, "format version 2"),
        (&not_a_backup, "not a raftcache backup"),
    ] {
        let out = restore(&target, 1, file);
        assert!(!out.status.success(), "{}: {}", file.display(), text(&out));
        assert!(
            text(&out).contains(reason),
            "{}: wanted {reason:?} in {}",
            file.display(),
            text(&out)
        );
        let data_dir = &target.node(1).data_dir;
        let holds_state = std::fs::read_dir(data_dir)
            .map(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name() == "db")))
            .unwrap_or(false);
        assert!(
            !holds_state,
            "{}: a refused restore left a database",
            file.display()
        );
    }
    let out = restore(&target, 1, &file);
    assert!(
        out.status.success(),
        "the whole file restores: {}",
        text(&out)
    );
}
