//! raftcache-testkit: the tooling that raftcache's tests (`tests/`) and its fault-injection
//! suite (`tools/faults`) share, kept out of the server library so that the product exports no
//! test code.
//!
//! - `linearizability`: the checker that judges a recorded history of client operations.
//! - `history`: the clients that record such a history against a cluster.
//! - `compose`: raftcache nodes in containers (a compose project), with faults: kill, stop,
//!   pause, partitions.
//! - `ports`: free loopback ports for test nodes.
//! - `wait`: waiting for a condition with a deadline (`wait_until`), never a fixed sleep.
//! - `rng`: the one seeded generator behind every random schedule and workload, so a printed
//!   seed replays a run.

pub mod compose;
pub mod history;
pub mod linearizability;
pub mod ports;
pub mod rng;
pub mod wait;
