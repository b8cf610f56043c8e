//! raftcache-testkit: the tooling that raftcache's tests (`tests/`) and its fault-injection
//! suite (`tools/faults`) share, kept out of the server library so that the product exports no
//! test code.
//!
//! - `linearizability`: the checker that judges a recorded history of client operations.
//! - `history`: the clients that record such a history against a cluster.
//! - `compose`: raftcache nodes in containers (a compose project), with faults: kill, stop,
//!   pause, partitions.
//! - `certs`: a test CA and the certificates it signs, as PEM files, for the TLS tests.
//! - `ports`: free loopback ports for test nodes.
//! - `wait`: waiting for a condition with a deadline (`wait_until`), never a fixed sleep.
//! - `rng`: the one seeded generator behind every random schedule and workload, so a printed
//!   seed replays a run.
//! - `copy_dir`: a node's data dir copied next to a failed run's logs.

pub mod certs;
pub mod compose;
pub mod counters;
pub mod history;
pub mod linearizability;
pub mod ports;
pub mod rng;
pub mod wait;
pub mod watcher;

/// Copies the contents of directory `from` into `to` (created if needed) with `cp -a`, keeping
/// what a failed run left on a disk that goes away with the test.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from.join("."))
        .arg(to)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "cp -a {} {}: {status}",
            from.display(),
            to.display()
        )))
    }
}
