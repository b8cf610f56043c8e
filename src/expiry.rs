//! The expiry sweep: the leader removes expired keys physically, in replicated batches.
//!
//! Reads never depend on it: every node hides a value from its expiry on by the log clock (the
//! largest leader time among the entries it applied, `store::LogClock`), never by its own. The
//! sweep only frees the space. Each round, the leader reads up to `scan_keys` keys whose expiry
//! has passed from the state machine's expiry index (soonest first; keys without an expiry are
//! never looked at) and proposes their removal, at most `batch_keys` per log entry, as
//! `Request::Expire`. The state machine removes a key only if it is still expired at the entry's
//! time (it may have been written again meanwhile), so every replica removes the same keys and
//! counts them in `stats.expired`; removing a key removes its index entry, so the next round
//! finds the next ones.

use openraft::async_runtime::watch::WatchReceiver;
use std::time::Duration;

use openraft::ServerState;

use crate::proposer::{Origin, Proposer};
use crate::store::StateReader;
use crate::types::{now_ms, NodeId, Raft, Request};

/// The sweep's limits (flags `--expiry-interval-ms`, `--expiry-scan-keys`,
/// `--expiry-batch-keys`).
#[derive(Debug, Clone, Copy)]
pub struct ExpiryLimits {
    /// Time between two rounds.
    pub interval: Duration,
    /// Most expired keys looked at per round.
    pub scan_keys: usize,
    /// Most keys removed by one log entry.
    pub batch_keys: usize,
}

/// Starts the sweep of node `id`; it runs while its Raft runs, and acts only while it leads.
pub fn spawn(id: NodeId, raft: Raft, state: StateReader, proposer: Proposer, limits: ExpiryLimits) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(limits.interval).await;
            let (leader, state_now) = {
                let metrics = raft.metrics();
                let m = metrics.borrow_watched();
                (m.current_leader, m.state)
            };
            if state_now == ServerState::Shutdown {
                return;
            }
            if leader != Some(id) || state_now != ServerState::Leader {
                continue;
            }
            match round(&state, &proposer, limits).await {
                Ok(0) => {}
                Ok(removed) => tracing::debug!(removed, "expired keys removed"),
                Err(reason) => tracing::warn!(%reason, "expiry sweep round failed"),
            }
        }
    });
}

/// One round: finds expired keys and proposes their removal. Returns how many were removed.
async fn round(
    state: &StateReader,
    proposer: &Proposer,
    limits: ExpiryLimits,
) -> Result<u64, String> {
    let expired = state
        .expired_keys(limits.scan_keys, state.log_clock().leader_now_ms(now_ms()))
        .map_err(|e| e.to_string())?;
    let mut removed = 0;
    for keys in expired.chunks(limits.batch_keys.max(1)) {
        let request = Request::Expire {
            keys: keys.to_vec(),
        };
        // Proposed only here (a node that no longer leads refuses it, and the next leader
        // sweeps on its own): an expiry is never forwarded.
        match proposer.propose(request, Origin::Peer).await {
            Ok(applied) => {
                if let crate::types::Response::Count(n) = applied.response {
                    removed += n;
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(removed)
}
