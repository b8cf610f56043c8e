//! A node whose Raft stops after a fatal storage error exits (status 1, with a log line saying
//! so) instead of staying up with a dead core, answering nothing useful and spinning.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use raftcache::client::CacheClient;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_node_exits_when_its_raft_stops_on_a_storage_error() {
    let dir = tempfile::tempdir().unwrap();
    let (client_port, peer_port) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_raftcache"))
        .args(["serve", "--snapshot-every=50"])
        .arg(format!("--listen=127.0.0.1:{client_port}"))
        .arg(format!("--peer-listen=127.0.0.1:{peer_port}"))
        .arg(format!("--data-dir={}", dir.path().join("node").display()))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start raftcache");
    let addr = format!("127.0.0.1:{client_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = loop {
        if let Ok(mut c) = CacheClient::connect(&addr, Duration::from_secs(10)) {
            if c.put("ready", "1").is_ok() {
                break c;
            }
        }
        assert!(Instant::now() < deadline, "node did not come up");
        std::thread::sleep(Duration::from_millis(50));
    };

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

    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node kept running after its Raft stopped");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert_eq!(status.code(), Some(1), "exit status; log:\n{log}");
    assert!(
        log.contains("Raft stopped after a fatal error"),
        "log:\n{log}"
    );
}
