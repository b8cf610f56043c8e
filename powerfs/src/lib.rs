//! raftcache-powerfs: a test-only FUSE filesystem that models a power cut, in the spirit of
//! Jepsen's LazyFS. `tests/power_cut.rs` puts each node's data dir on one (`Disk`), kills the
//! node and cuts the power of its disk: whatever the node wrote but never made durable with
//! `fsync`/`fdatasync` (of the file, and of the directory for a created, renamed or removed
//! entry) is gone when it starts again. `kill -9` alone cannot show that: the kernel keeps what
//! a killed process wrote.
//!
//! - `model`: the tree with each file's current and durable bytes and each directory's current
//!   and durable entries, and the rules of what a sync makes durable and a cut reverts.
//! - `fuse`: the FUSE requests, each one operation on the tree; no kernel caching.
//! - `mount`: `Disk`, one mounted tree, its `power_cut` (unmount, revert, mount again), and
//!   its unmount on drop.
//!
//! The fault-injection suite (`tools/faults`) puts every container's data dir on one too
//! (`Disk::mount_shared`, bind-mounted at `/data`) for its `power-cut` fault.
//!
//! Why a workspace member of its own rather than a module of `raftcache-testkit`: it needs the
//! `fuser` crate (and, through it, `nix` and the FUSE device at run time), which the rest of
//! the test kit's users (the in-process and compose tests) do not. Linux only, and mounting
//! needs root or `fusermount3` (the `fuse3` package).

pub mod fuse;
pub mod model;
pub mod mount;

pub use model::{Counters, CutReport};
pub use mount::Disk;
