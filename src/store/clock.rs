//! The log's clock: the time every replica agrees on, for expiry.
//!
//! Each entry the leader proposes carries the leader's clock (`Batch::now_ms`), and TTLs are
//! turned into absolute expiries against it. A replica's log clock is the largest such time among
//! the entries it has applied; reads hide a value from the moment the log clock reaches its
//! expiry. So every replica at the same applied index hides the same values, and a write is
//! visible on the node it was acknowledged through, whatever that node's own clock says (a
//! reader's clock 30 s ahead of the leader's used to hide a 10 s TTL write at once).
//!
//! The leader proposes with `leader_now_ms`, the larger of its clock and the log clock, so the
//! log's time never goes back when a leader whose clock is behind takes over. The assumption
//! is on the leaders' clocks only: a value expires late by at most the leader's clock error plus
//! one expiry interval (an idle log's clock moves when the leader's sweep proposes the removal
//! of what it sees expired), and early by at most how far ahead a leader's clock ran
//! (`docs/durability.md`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A replica's log clock, shared by its state machine (which moves it) and its readers.
#[derive(Debug, Clone, Default)]
pub struct LogClock(Arc<AtomicU64>);

impl LogClock {
    /// The largest leader time among the entries applied, in ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// The time a leader proposes at: its own clock `wall_ms`, never behind the log's.
    pub fn leader_now_ms(&self, wall_ms: u64) -> u64 {
        wall_ms.max(self.now_ms())
    }

    /// Moves the clock to `at_ms` if that is later.
    pub(super) fn advance(&self, at_ms: u64) {
        self.0.fetch_max(at_ms, Ordering::AcqRel);
    }
}
