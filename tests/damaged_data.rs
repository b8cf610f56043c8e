//! A damaged or foreign data dir stops the node with a message naming the path and what to do;
//! it is never opened and served. Each case damages a real data dir that held acknowledged
//! writes, the way an operator or a disk would.

mod in_process;

use std::path::Path;

use in_process::{phase, BlockingClient, InProcessCluster, WAIT};
use raftcache::config::NodeConfig;
use raftcache::node::{self, RunningNode, StartError};

/// How many keys `data_dir_with_writes` writes: `k0`.. with the values `v0`..
const KEYS_WRITTEN: usize = 50;

/// Runs a one-node cluster, writes `KEYS_WRITTEN` keys, stops it, and returns the data dir's
/// parent.
async fn data_dir_with_writes() -> (tempfile::TempDir, std::path::PathBuf) {
    let mut cluster = InProcessCluster::start(1, &[]).await;
    cluster.wait_for_leader().await;
    for i in 0..KEYS_WRITTEN {
        cluster
            .client(1)
            .put(&format!("k{i}"), &format!("v{i}"))
            .await
            .expect("put");
    }
    cluster.stop(1).await;
    let dir = cluster.dir.path().join("node-1");
    let keep = std::mem::replace(&mut cluster.dir, tempfile::TempDir::new().unwrap());
    (keep, dir)
}

/// Starts node 1 on `dir` (ports chosen by the OS) and leaves it running.
async fn serve_on(dir: &Path, extra: &[&str]) -> Result<RunningNode, StartError> {
    let mut args = vec![
        "--listen=127.0.0.1:0".to_string(),
        "--peer-listen=127.0.0.1:0".to_string(),
        "--http-listen=127.0.0.1:0".to_string(),
        format!("--data-dir={}", dir.display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    node::start(NodeConfig::from_args(args).expect("flags")).await
}

/// Starts node 1 on `dir` and stops it again: whether the data dir is accepted.
async fn start_on(dir: &Path, extra: &[&str]) -> Result<(), StartError> {
    serve_on(dir, extra).await?.shutdown().await;
    Ok(())
}

async fn expect_refusal(dir: &Path, extra: &[&str], says: &[&str]) {
    let err = start_on(dir, extra)
        .await
        .expect_err("a damaged or foreign data dir must not start");
    let message = err.to_string();
    assert!(
        message.contains(&dir.display().to_string()),
        "message names the path: {message}"
    );
    for s in says {
        assert!(message.contains(s), "message should say {s:?}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_intact_data_dir_restarts() {
    let (_keep, dir) = data_dir_with_writes().await;
    restart_and_read_back(&dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_snapshot_left_unfinished_by_a_kill_is_ignored() {
    // sled writes its own snapshot of its page table now and then, to `snap.<lsn>.generating`,
    // renamed to `snap.<lsn>` once complete. A node killed in between leaves the unfinished
    // file, and sled 0.34 reads the newest `snap.*` by name, that one included: without a
    // clean-up the node refused its data dir as corrupted.
    let (_keep, dir) = data_dir_with_writes().await;
    let unfinished = dir.join("db").join("snap.FFFFFFFFFFFFFFF0.generating");
    std::fs::write(&unfinished, vec![0x5a; 4096]).expect("write an unfinished sled snapshot");
    restart_and_read_back(&dir).await;
    assert!(!unfinished.exists(), "the unfinished snapshot is removed");
}

/// Starts node 1 again on `dir`, waits until it leads its one-node cluster, and reads back
/// every key `data_dir_with_writes` wrote.
async fn restart_and_read_back(dir: &Path) {
    phase("restart on the data dir and wait until the node leads its one-node cluster again");
    let node = serve_on(dir, &[]).await.expect("an intact data dir starts");
    node.raft()
        .wait(Some(WAIT))
        .current_leader(node.id(), "the restarted node leads")
        .await
        .expect("the restarted node leads");

    phase("read back every key written before the restart, through a client");
    let client = BlockingClient {
        addr: node.client_addr().to_string(),
    };
    for i in 0..KEYS_WRITTEN {
        let key = format!("k{i}");
        let found = client.get(&key, true).await.expect("linearizable get");
        assert_eq!(
            found,
            Some(format!("v{i}")),
            "{key} after the restart on the same data dir"
        );
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_node_id_is_refused() {
    let (_keep, dir) = data_dir_with_writes().await;
    expect_refusal(&dir, &["--id=2"], &["belongs to node 1", "--id 1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_dir_of_another_cluster_is_refused() {
    let (_keep, dir) = data_dir_with_writes().await;
    let other = "--initial-cluster=1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3";
    expect_refusal(&dir, &[other], &["belongs to cluster", "describes cluster"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_truncated_database_file_is_refused() {
    let (_keep, dir) = data_dir_with_writes().await;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("db/db"))
        .expect("sled file");
    file.set_len(100).expect("truncate");
    expect_refusal(
        &dir,
        &[],
        &[
            "is damaged",
            "remove this node from the cluster and add a fresh one",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupted_database_file_is_refused() {
    let (_keep, dir) = data_dir_with_writes().await;
    let path = dir.join("db/db");
    let mut bytes = std::fs::read(&path).expect("read sled file");
    for i in (200..bytes.len()).step_by(7) {
        bytes[i] ^= 0xff;
    }
    std::fs::write(&path, bytes).expect("write");
    expect_refusal(&dir, &[], &["is damaged", "add a fresh one"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_database_is_refused() {
    let (_keep, dir) = data_dir_with_writes().await;
    std::fs::remove_dir_all(dir.join("db")).expect("remove db");
    expect_refusal(&dir, &[], &["is damaged", "is missing"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_without_its_identity_file_is_refused() {
    let (_keep, dir) = data_dir_with_writes().await;
    std::fs::remove_file(dir.join("raftcache.json")).expect("remove identity");
    expect_refusal(&dir, &[], &["is damaged", "raftcache.json"]).await;
}

/// The data dir's one log segment (a small log fits in one).
fn log_segment(dir: &Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(dir.join("log"))
        .expect("log dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert_eq!(segments.len(), 1, "one segment: {segments:?}");
    segments.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_truncated_log_is_refused() {
    let (_keep, dir) = data_dir_with_writes().await;
    let segment = log_segment(&dir);
    let len = std::fs::metadata(&segment).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(len / 2).expect("truncate");
    expect_refusal(
        &dir,
        &[],
        &["is damaged", "were flushed", "add a fresh one"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupted_log_is_refused() {
    let (_keep, dir) = data_dir_with_writes().await;
    let segment = log_segment(&dir);
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 3;
    for b in &mut bytes[middle..middle + 8] {
        *b ^= 0x5a;
    }
    std::fs::write(&segment, bytes).unwrap();
    expect_refusal(&dir, &[], &["is damaged", "add a fresh one"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_log_is_refused() {
    let (_keep, dir) = data_dir_with_writes().await;
    std::fs::remove_dir_all(dir.join("log")).expect("remove log");
    expect_refusal(&dir, &[], &["is damaged", "were flushed"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_older_than_what_was_flushed_is_refused() {
    let (_keep, dir) = data_dir_with_writes().await;
    // Keep a copy of the database as it is, write more, then put the old copy back: sled
    // opens it happily, but it lacks applies that were flushed.
    let old = dir.parent().unwrap().join("db-old");
    copy_dir(&dir.join("db"), &old);
    {
        let mut cluster_args = vec![];
        cluster_args.push(format!("--data-dir={}", dir.display()));
        let node = node::start(
            NodeConfig::from_args([
                "--listen=127.0.0.1:0",
                "--peer-listen=127.0.0.1:0",
                "--http-listen=127.0.0.1:0",
                &cluster_args[0],
            ])
            .unwrap(),
        )
        .await
        .expect("start");
        node.raft()
            .wait(Some(in_process::WAIT))
            .current_leader(1, "leader")
            .await
            .expect("leader");
        let addr = node.client_addr().to_string();
        tokio::task::spawn_blocking(move || {
            let mut c =
                raftcache::client::CacheClient::connect(&addr, std::time::Duration::from_secs(10))
                    .unwrap();
            for i in 0..20 {
                c.put(&format!("later{i}"), "v").unwrap();
            }
        })
        .await
        .unwrap();
        node.shutdown().await;
    }
    std::fs::remove_dir_all(dir.join("db")).unwrap();
    std::fs::rename(&old, dir.join("db")).unwrap();
    expect_refusal(&dir, &[], &["is damaged", "were flushed"]).await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_dir_in_use_by_a_running_node_is_refused() {
    let cluster = InProcessCluster::start(1, &[]).await;
    cluster.wait_for_leader().await;
    let dir = cluster.dir.path().join("node-1");
    expect_refusal(&dir, &[], &["in use by another process", "--data-dir"]).await;
}
