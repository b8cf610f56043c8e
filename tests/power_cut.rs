//! Power-cut test (issue 14): a 3-node cluster of the real binary, each node's data dir on a
//! disk of its own that forgets, when its power is cut, every write no `fsync`/`fdatasync`
//! covered (`raftcache-powerfs`, a FUSE filesystem in this test process). Under concurrent
//! writes, each round kills one node, or all three at once, with `kill -9`, cuts the power of
//! their disks, and starts them again; no acknowledged write may be lost, and every node must
//! start again. `kill -9` alone cannot show a missing sync: the kernel keeps what a killed
//! process wrote.
//!
//! The nodes build a snapshot every 20 entries and keep 10 entries behind it, in segments of
//! 4 KiB, so between two cuts the log is purged behind the state machine again and again: a
//! node that let its log go before the state machine that replaces it was durable comes back
//! with neither (and refuses to start, or, when all nodes lose it, the write is gone).
//!
//! Schedule (seeded): rounds alternate between one node (a random one: leader or follower) and
//! all three; each waits 200-1200 ms under load before the cut. A lone victim stays down until
//! the other two acknowledged more writes. A round ends when the three agree on a leader, a
//! probe write is acknowledged and the writers make progress again.
//!
//! Model (as in `tests/crash.rs`): writers own their keys; a key's acceptable final states are
//! its last acknowledged state and any write whose outcome its writer could not know (an error
//! or timeout after sending), after which that key is never touched again. At the end every key
//! is read linearizably, spread over the nodes, then the nodes' local reads must converge.
//!
//! Parameters (environment): RAFTCACHE_POWER_CUT_ROUNDS (default 20: 10 of one node, 10 of all),
//! RAFTCACHE_POWER_CUT_WRITERS (default 4), RAFTCACHE_POWER_CUT_SEED (default: from the clock).
//! A failed run copies the node logs and data dirs to `target/tmp/power-cut-<seed>/`. Needs
//! /dev/fuse and root (or fusermount3): without them the test fails saying so, it never skips.

mod multi_process;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use multi_process::writers::{
    env_u64, gather, read_keys, run_writer, KeyState, Outcome, Shared, WriterReport,
};
use multi_process::{phase, ProcessCluster, Retrying, DEADLINE};
use raftcache_powerfs::{CutReport, Disk};
use raftcache_testkit::rng::{clock_seed, Rng};
use raftcache_testkit::wait::{poll, wait_until};

/// Flags that make every node purge its log behind the state machine often.
const NODE_FLAGS: [&str; 3] = [
    "--snapshot-every=20",
    "--snapshot-keep-log=10",
    "--log-segment-bytes=4096",
];
/// The cluster on its disks, the writers and the seed. Dropped (also on a panic): the writers
/// stop, every node is killed, then the disks are unmounted, then their mount points removed.
struct Rig {
    cluster: ProcessCluster,
    disks: Vec<Disk>,
    _mounts: tempfile::TempDir,
    seed: u64,
    shared: Arc<Shared>,
    writers: Vec<JoinHandle<WriterReport>>,
}

impl Rig {
    /// Mounts one disk per node, puts each node's data dir on it, and starts the cluster.
    fn start(seed: u64) -> Rig {
        let mounts = tempfile::Builder::new()
            .prefix("raftcache-power-cut-")
            .tempdir()
            .expect("temp dir for mount points");
        let mut cluster = ProcessCluster::create_with(3, &NODE_FLAGS);
        let mut disks = Vec::new();
        for node in &mut cluster.nodes {
            let mountpoint = mounts.path().join(format!("disk-{}", node.id));
            std::fs::create_dir(&mountpoint).expect("mount point");
            let disk = Disk::mount(&mountpoint).unwrap_or_else(|e| {
                panic!("the power-cut test needs a FUSE mount per node and cannot run here: {e}")
            });
            // A directory below the mount, so the node creates its data dir on the disk too.
            node.data_dir = mountpoint.join("data");
            disks.push(disk);
        }
        let mut rig = Rig {
            cluster,
            disks,
            _mounts: mounts,
            seed,
            shared: Arc::default(),
            writers: Vec::new(),
        };
        rig.cluster.start_all();
        rig
    }

    fn replay(&self) -> String {
        format!("seed {0} (replay: RAFTCACHE_POWER_CUT_SEED={0})", self.seed)
    }

    fn acks(&self) -> u64 {
        self.shared.acks.load(SeqCst)
    }

    /// Waits until the writers acknowledged `more` writes after `from`.
    fn wait_progress(&self, from: u64, more: u64, what: &str) {
        let what = format!("{what}: {more} more writes acknowledged; {}", self.replay());
        wait_until(DEADLINE, &what, || {
            assert!(
                !self.writers.iter().any(JoinHandle::is_finished),
                "a writer ended early (it panicked); {}",
                self.replay()
            );
            let acks = self.acks() - from;
            (acks >= more).then_some(()).ok_or(format!("only {acks}"))
        });
    }

    /// Kills the nodes `victims` within microseconds of each other, then cuts their disks'
    /// power: what they had not synced is gone.
    fn power_cut(&mut self, victims: &[u64]) -> CutReport {
        self.cluster.kill_at_once(victims);
        let mut total = CutReport::default();
        for id in victims {
            total += self.disks[(*id - 1) as usize]
                .power_cut()
                .unwrap_or_else(|e| panic!("power cut of node {id}'s disk: {e}"));
        }
        total
    }

    /// Starts the nodes `ids` again and waits until they answer (a node that refuses its data
    /// dir fails the test here, with its log).
    fn restart(&mut self, ids: &[u64]) {
        for id in ids {
            self.cluster.node_mut(*id).spawn();
        }
        for id in ids {
            self.cluster.node_mut(*id).wait_up();
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        let ids = self.cluster.ids();
        self.cluster.kill_at_once(&ids);
        // The disks are unmounted when they are dropped: keep what they hold for a look.
        if let Some(dir) =
            self.cluster
                .keep_logs_if_panicking("power-cut", self.seed, &self.replay())
        {
            self.cluster.save_data_dirs(&dir);
        }
    }
}

#[test]
fn power_cuts_of_one_node_and_of_all_nodes_lose_no_acknowledged_write() {
    let t0 = Instant::now();
    let seed = env_u64("RAFTCACHE_POWER_CUT_SEED").unwrap_or_else(clock_seed);
    let rounds = env_u64("RAFTCACHE_POWER_CUT_ROUNDS").unwrap_or(20);
    let writers = env_u64("RAFTCACHE_POWER_CUT_WRITERS").unwrap_or(4).max(1) as usize;
    println!(
        "power-cut test: seed {seed}, {rounds} rounds, {writers} writers (replay: RAFTCACHE_POWER_CUT_SEED={seed} RAFTCACHE_POWER_CUT_ROUNDS={rounds} cargo test --test power_cut -- --nocapture)"
    );
    let mut rig = Rig::start(seed);
    let ids = rig.cluster.ids();
    let addrs: Vec<SocketAddr> = rig.cluster.nodes.iter().map(|n| n.client_addr).collect();
    phase(
        t0,
        &format!(
            "cluster up on power-cut disks, logs in {}",
            rig.cluster.dir().display()
        ),
    );
    rig.writers = (0..writers)
        .map(|w| {
            let (addrs, shared) = (addrs.clone(), rig.shared.clone());
            std::thread::Builder::new()
                .name(format!("writer-{w}"))
                .spawn(move || run_writer(w, &addrs, seed, &shared))
                .expect("spawn writer")
        })
        .collect();
    rig.wait_progress(0, 20 * writers as u64, "start");

    let mut rng = Rng::new(seed);
    let mut probes: BTreeMap<String, KeyState> = BTreeMap::new();
    let (mut one_node_cuts, mut all_node_cuts) = (0u64, 0u64);
    let mut discarded = CutReport::default();
    for round in 1..=rounds {
        let delay = rng.millis(200, 1200);
        let pick = ids[rng.below(ids.len() as u64) as usize];
        std::thread::sleep(delay); // under load: part of the schedule, not a synchronization
        let victims = if round % 2 == 1 {
            one_node_cuts += 1;
            vec![pick]
        } else {
            all_node_cuts += 1;
            ids.clone()
        };
        let at_cut = rig.acks();
        let cut = rig.power_cut(&victims);
        discarded.files_reverted += cut.files_reverted;
        discarded.unsynced_bytes += cut.unsynced_bytes;
        discarded.dirs_reverted += cut.dirs_reverted;
        discarded.inodes_dropped += cut.inodes_dropped;
        println!(
            "round {round}/{rounds}: power cut of {victims:?} after {} ms, {at_cut} writes acknowledged so far; the cut discarded unsynced bytes of {} files (at most {} bytes), entries of {} directories, {} inodes",
            delay.as_millis(),
            cut.files_reverted,
            cut.unsynced_bytes,
            cut.dirs_reverted,
            cut.inodes_dropped
        );
        if victims.len() < ids.len() {
            rig.wait_progress(at_cut, 2 * writers as u64, "writes with one node down");
        }
        rig.restart(&victims);
        let leader = rig.cluster.wait_for_leader(&ids);
        let (key, value) = (format!("probe-{round:04}"), format!("round-{round}"));
        Retrying::new(addrs[round as usize % addrs.len()]).put(&key, &value);
        probes.insert(
            key,
            KeyState {
                acked: Some(value),
                ..KeyState::default()
            },
        );
        let restarted = rig.acks();
        rig.wait_progress(restarted, writers as u64, "writes after the restart");
        phase(t0, &format!("round {round}: healed, leader {leader}"));
    }

    // Stop the writers, then every key, linearizably, spread over the nodes.
    let writers = std::mem::take(&mut rig.writers);
    let Outcome {
        acks,
        unknown,
        violations: wrong_removes,
        model,
        found,
        lost,
        ..
    } = gather(&rig.cluster, &rig.shared, writers, probes);
    phase(
        t0,
        &format!("writers stopped: {acks} acknowledged, {unknown} unknown outcome"),
    );
    let keys: Vec<&String> = model.keys().collect();
    let counters: Vec<String> = rig
        .disks
        .iter()
        .zip(&ids)
        .map(|(disk, id)| {
            let c = disk.counters();
            format!(
                "node {id}: {} file syncs, {} directory syncs, {} writes",
                c.file_syncs, c.dir_syncs, c.writes
            )
        })
        .collect();
    println!(
        "power-cut test totals: seed {seed}; power cuts of one node {one_node_cuts}, of all nodes {all_node_cuts}; writes acknowledged {acks}, unknown outcome {unknown}; keys checked {}; lost {}; wrong remove answers {}; discarded by the cuts: unsynced bytes of {} files (at most {} bytes), entries of {} directories, {} inodes; disks: {}; {:.1}s",
        model.len(),
        lost.len(),
        wrong_removes.len(),
        discarded.files_reverted,
        discarded.unsynced_bytes,
        discarded.dirs_reverted,
        discarded.inodes_dropped,
        counters.join("; "),
        t0.elapsed().as_secs_f64()
    );
    let examples = |what: &[String]| what[..what.len().min(20)].join("\n  ");
    if !lost.is_empty() {
        // What each node holds locally, for the report.
        let lost_keys: Vec<&String> = model
            .iter()
            .filter(|(key, state)| !state.accepts(&found[*key]))
            .map(|(key, _)| key)
            .collect();
        for (view, id) in read_keys(&rig.cluster, &lost_keys, false, false)
            .iter()
            .zip(&ids)
        {
            println!("node {id} holds locally: {view:?}");
        }
    }
    assert!(
        lost.is_empty() && wrong_removes.is_empty(),
        "after {rounds} power cuts, {} of {} keys are not in an acceptable state (lost or wrong writes), e.g.:\n  {}\n{} remove answers contradict acknowledged writes, e.g.:\n  {}\n{}",
        lost.len(),
        model.len(),
        examples(&lost),
        wrong_removes.len(),
        examples(&wrong_removes),
        rig.replay()
    );

    // The replicas agree: local reads on every node converge to one acceptable value per key.
    let mut pending = keys.clone();
    let converged = poll(DEADLINE, || {
        let views = read_keys(&rig.cluster, &pending, false, false);
        pending.retain(|key| {
            let first = &views[0][*key];
            !model[*key].accepts(first) || views.iter().any(|v| v[*key] != *first)
        });
        match pending.first() {
            None => Ok(()),
            Some(key) => Err(format!(
                "{} keys differ, e.g. {key}: {:?}, acceptable {:?}",
                pending.len(),
                views.iter().map(|v| &v[*key]).collect::<Vec<_>>(),
                model[*key]
            )),
        }
    });
    if let Err(timeout) = converged {
        panic!("the replicas did not converge: {timeout}\n{}", rig.replay());
    }

    // The test saw what it is for only if the logs were purged behind the state machines.
    for node in &rig.cluster.nodes {
        let purged = node.data_dir.join("log/purged");
        assert!(
            purged.exists(),
            "node {}'s log was never purged ({} is missing): the test did not exercise what it is for",
            node.id,
            purged.display()
        );
    }
    phase(
        t0,
        &format!("all {} keys agree on nodes {ids:?}", keys.len()),
    );
}

/// A follower's log loses a conflicting suffix (`truncate_after`), then the power is cut. The
/// `flushed` watermark had reached the old end on the disk (the kernel writes dirty pages back
/// within seconds, here forced by an fsync of the file), so the truncation must lower it durably
/// before the entries go: otherwise the node comes back with a watermark past its log's end
/// and refuses to start as damaged.
#[tokio::test]
async fn a_log_truncated_just_before_a_power_cut_opens_again() {
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
    use openraft::testing::{blank_ent, log_id};
    use raftcache::store::{self, StoreOptions};
    use raftcache::types::TypeConfig;

    let mounts = tempfile::tempdir().expect("temp dir for the mount point");
    let mut disk = Disk::mount(mounts.path()).unwrap_or_else(|e| {
        panic!("the power-cut test needs a FUSE mount and cannot run here: {e}")
    });
    let dir = mounts.path().join("data");
    std::fs::create_dir(&dir).expect("data dir");
    std::fs::File::open(mounts.path())
        .and_then(|root| root.sync_all())
        .expect("sync the data dir's entry");
    {
        let (mut log, _sm) = store::open(&dir, 1, None, &StoreOptions::default())
            .await
            .expect("open new stores");
        let entries = (1..=10).map(|i| blank_ent::<TypeConfig>(1, 1, i));
        log.blocking_append(entries).await.expect("append");
        // What the kernel's writeback would have done by now.
        std::fs::File::open(dir.join("flushed"))
            .and_then(|f| f.sync_all())
            .expect("sync the watermark");
        log.truncate_after(Some(log_id::<TypeConfig>(1, 1, 5)))
            .await
            .expect("truncate");
    }
    let cut = disk.power_cut().expect("power cut");
    eprintln!("power cut: {cut:?}");
    let (mut log, _sm) = store::open(&dir, 1, None, &StoreOptions::default())
        .await
        .unwrap_or_else(|e| panic!("the data dir does not open after the power cut: {e}"));
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(
        state.last_log_id.map(|id| id.index),
        Some(5),
        "the log must end where it was truncated"
    );
}
