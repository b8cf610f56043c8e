//! A full disk is a state, not a crash: one node's data dir is on a small filesystem (a tmpfs
//! of 32 MiB the test mounts: it needs root, and says so and skips when not run as root). While a client
//! writes, the filesystem is filled past that node's `--min-free-disk-bytes`: the cluster
//! refuses writes with `CacheFull` naming the node, serves reads and removes, keeps every node
//! running, and takes writes again by itself once the space is freed; every acknowledged write
//! is then read back from every node.
//!
//! Run with the phases printed: `cargo test --test disk_full -- --nocapture`.

mod multi_process;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use multi_process::{connect, phase, ProcessCluster, Retrying, DEADLINE};
use raftcache_testkit::wait::wait_until;

const TMPFS_BYTES: u64 = 32 << 20;
const MIN_FREE: u64 = 8 << 20;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_BYTES}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }

    fn free(&self) -> u64 {
        raftcache::disk::disk_space(&self.0).unwrap().0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a node that a failed test left running may still hold it.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// What the writer saw.
#[derive(Default)]
struct Seen {
    acked: Vec<String>,
    full: Vec<String>,
    other_errors: Vec<String>,
}

#[test]
fn a_node_whose_disk_fills_under_writes_refuses_them_serves_reads_and_resumes_once_freed() {
    let start = Instant::now();
    let mut cluster = ProcessCluster::create_with(
        3,
        &[
            &format!("--min-free-disk-bytes={MIN_FREE}"),
            "--log-segment-bytes=1048576",
            "--snapshot-every=500",
        ],
    );
    let mount_at = cluster.node(3).data_dir.with_file_name("small-disk");
    let tmpfs = match Tmpfs::mount(&mount_at) {
        Ok(tmpfs) => tmpfs,
        // SAFETY: geteuid has no preconditions.
        Err(e) if unsafe { libc::geteuid() } != 0 => {
            eprintln!("SKIPPED: mounting a tmpfs needs root: {e}");
            return;
        }
        Err(e) => panic!("cannot mount a tmpfs at {}: {e}", mount_at.display()),
    };
    phase(start, "3 nodes; node 3's data dir on a 32 MiB tmpfs");
    cluster.node_mut(3).data_dir = mount_at.join("node-3");
    cluster.start_all();

    phase(start, "a client writes through node 1 all along");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let addr = cluster.node(1).client_addr;
    let writer = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut client = connect(addr).unwrap();
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let key = format!("w-{n}");
                n += 1;
                match client.put(&key, &"v".repeat(200)) {
                    Ok(_) => seen.lock().unwrap().acked.push(key),
                    Err(e) => {
                        let text = multi_process::describe(e);
                        let mut seen = seen.lock().unwrap();
                        if text.starts_with("cache full") {
                            seen.full.push(text);
                        } else {
                            seen.other_errors.push(text);
                        }
                        drop(seen);
                        std::thread::sleep(Duration::from_millis(20));
                        client = connect(addr).unwrap();
                    }
                }
            }
        })
    };
    wait_until(DEADLINE, "writes are acknowledged", || {
        seen.lock().unwrap().acked.len() > 100
    });

    phase(
        start,
        "the tmpfs is filled to 4 MiB free, under the 8 MiB minimum",
    );
    let filler = mount_at.join("filler");
    let fill = tmpfs.free().saturating_sub(4 << 20);
    std::fs::write(&filler, vec![0u8; fill as usize]).expect("fill the tmpfs");
    wait_until(DEADLINE, "writes are refused with CacheFull", || {
        !seen.lock().unwrap().full.is_empty()
    });
    let refusal = seen.lock().unwrap().full[0].clone();
    assert!(
        refusal.contains("node 3") && refusal.contains("--min-free-disk-bytes"),
        "the refusal names the node and the flag: {refusal}"
    );
    let acked_before = seen.lock().unwrap().acked.len();
    std::thread::sleep(Duration::from_secs(2));
    let acked_during = seen.lock().unwrap().acked.len() - acked_before;
    assert!(
        acked_during <= 2,
        "{acked_during} writes acknowledged while the disk was full"
    );

    phase(
        start,
        "meanwhile: reads, removes, status and /health work; no node exited",
    );
    let first = seen.lock().unwrap().acked[0].clone();
    for id in [1, 2, 3] {
        let node = cluster.node(id);
        let mut client = Retrying::new(node.client_addr);
        assert!(client.get(&first, true).is_some(), "node {id} reads");
        assert!(node.status().is_ok(), "node {id} answers status");
        let (status, _) = raftcache::http::get(
            &node.http_addr.to_string(),
            "/health",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(status, 200, "node {id} is healthy");
    }
    let mut remover = Retrying::new(addr);
    let removed = seen.lock().unwrap().acked.remove(1);
    assert!(remover.remove(&removed).0, "a remove is taken");
    for id in [1, 2, 3] {
        assert!(
            cluster.node_mut(id).wait_exit(Duration::ZERO).is_none(),
            "node {id} still runs"
        );
    }

    phase(start, "space freed: writes resume by themselves");
    std::fs::remove_file(&filler).unwrap();
    let acked_now = seen.lock().unwrap().acked.len();
    wait_until(DEADLINE, "writes are acknowledged again", || {
        seen.lock().unwrap().acked.len() > acked_now + 50
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    phase(start, "every acknowledged write is on every node");
    let seen = seen.lock().unwrap();
    assert!(
        seen.other_errors.is_empty(),
        "errors other than CacheFull: {:?}",
        &seen.other_errors[..seen.other_errors.len().min(5)]
    );
    let last = seen.acked.last().unwrap().clone();
    for id in [1, 2, 3] {
        let node = cluster.node(id);
        let mut client = Retrying::new(node.client_addr);
        wait_until(DEADLINE, "the node applied the last write", || {
            client.get(&last, false).is_some()
        });
        for key in seen.acked.iter() {
            assert!(client.get(key, false).is_some(), "node {id} lost {key}");
        }
        assert_eq!(
            client.get(&removed, false),
            None,
            "node {id}: {removed} removed"
        );
    }
    eprintln!(
        "{} writes acknowledged, {} refused with CacheFull",
        seen.acked.len(),
        seen.full.len()
    );
    drop(cluster);
    drop(tmpfs);
}
