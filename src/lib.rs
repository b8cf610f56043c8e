//! raftcache: a persistent, replicated key-value cache.
//!
//! Clients speak Thrift (`cache.thrift`) to any node. Writes go through Raft (openraft) and are
//! applied to a sled-backed state machine on every replica; reads are served from the local
//! replica, or linearizably on request. The modules follow a request's path:
//!
//! - `server`: our Thrift accept loop (connection cap, message size limit, timeouts), used by
//!   both the client port and the peer port; `tls`: their TLS (rustls), re-read on SIGHUP.
//! - `api`: the client `CacheService` handler: checks limits, maps errors to declared exceptions.
//! - `router`: how a request is served: a local read, a linearizable read (read index, then
//!   catch-up), or a write retried until its deadline.
//! - `proposer`: group commit: concurrent writes become one Raft log entry, proposed here if
//!   this node leads, else forwarded to the leader as one batch.
//! - `eviction`: capacity caps and the leader's LRU choice of keys to evict.
//! - `disk`: the cluster-wide alarm of a disk nearly full (`--min-free-disk-bytes`).
//! - `expiry`: the leader's sweep that removes expired keys in replicated batches.
//! - `read_index`: concurrent linearizable reads share one leadership-confirming round.
//! - `membership`: admin membership changes (members, add, promote, demote, remove, replace),
//!   carried out on the leader with safety checks; `--join`; whether this node was removed.
//! - `network`: the peer RPC (openraft's messages, forwarding, read index), with a fault seam.
//! - `store`: the sled log store and state machine, and snapshots.
//! - `backup`: backup files (`admin backup`), the backups a node serves, and `restore`.
//! - `http`, `metrics`: the HTTP port for machines (`/metrics`, `/health`, `/ready`).
//! - `node`: wires one node together; `config`: its flags; `types`: the Raft type config.
//! - `client`: the Rust client (the command line is the `raftcache` binary's, `src/cli.rs`).
//! - `leader`: who leads, and the one way to ask the leader (writes, read index, admin).
//! - `gen`: code generated from the Thrift IDL (never edited by hand).
//!
//! `docs/architecture.md` walks one put and one get through these layers.

// openraft's `StorageError` is the error type its storage traits require; it is large, and
// boxing it at every call site would only move the cost.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod backup;
pub mod client;
pub mod config;
pub mod disk;
pub mod eviction;
pub mod expiry;
pub mod gen;
pub mod http;
pub mod leader;
pub mod membership;
pub mod metrics;
pub mod network;
pub mod node;
pub mod proposer;
pub mod read_index;
pub mod router;
pub mod server;
pub mod store;
pub mod tls;
pub mod types;
