//! A node whose Raft stops after a fatal storage error exits (status 1, with a log line saying
//! so) instead of staying up with a dead core, answering nothing useful and spinning.

use std::process::{Child, Command};
use std::time::Duration;

use raftcache::client::CacheClient;
use raftcache_testkit::ports::free_ports;
use raftcache_testkit::wait::wait_until;

/// How long the node may take to come up, and then to exit.
const DEADLINE: Duration = Duration::from_secs(30);

/// The node's process. Dropping it kills the process (by its pid) and reaps it, so a failed
/// assertion, which unwinds through the drop, never leaves a node running.
struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // Both fail harmlessly if the process has already exited and been reaped.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_node_exits_when_its_raft_stops_on_a_storage_error() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3).expect("bind 127.0.0.1:0");
    let (client_port, peer_port, http_port) = (ports[0], ports[1], ports[2]);
    // The log goes to a file, not a pipe: a pipe nobody reads until the end could fill up and
    // block the node.
    let log_path = dir.path().join("node.log");
    let log_file = std::fs::File::create(&log_path).expect("create the node's log file");
    let mut node = NodeProcess(
        Command::new(env!("CARGO_BIN_EXE_raftcache"))
            .args(["serve", "--snapshot-every=50"])
            .arg(format!("--listen=127.0.0.1:{client_port}"))
            .arg(format!("--peer-listen=127.0.0.1:{peer_port}"))
            .arg(format!("--http-listen=127.0.0.1:{http_port}"))
            .arg(format!("--data-dir={}", dir.path().join("node").display()))
            .stderr(log_file)
            .spawn()
            .expect("start raftcache"),
    );
    let addr = format!("127.0.0.1:{client_port}");
    let mut client = wait_until(DEADLINE, "the node comes up and takes a write", || {
        let mut c = CacheClient::connect(&addr, Duration::from_secs(10)).ok()?;
        c.put("ready", "1").ok().map(|_| c)
    });

    // The snapshot directory disappears under the node: the next snapshot cannot be written.
    std::fs::remove_dir_all(dir.path().join("node/snapshots")).unwrap();
    let mut failed_at = None;
    for i in 0..200 {
        if client.put(&format!("k{i}"), "v").is_err() {
            failed_at = Some(i);
            break;
        }
    }
    assert!(
        failed_at.is_some(),
        "writes past the snapshot point should fail once Raft has stopped"
    );

    let status = wait_until(DEADLINE, "the node exits after its Raft stopped", || {
        node.0.try_wait().unwrap()
    });
    let log = std::fs::read_to_string(&log_path).expect("read the node's log");
    assert_eq!(status.code(), Some(1), "exit status; log:\n{log}");
    assert!(
        log.contains("Raft stopped after a fatal error"),
        "log:\n{log}"
    );
}
