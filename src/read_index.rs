//! Read indexes for linearizable reads, batched: concurrent linearizable reads share one round
//! of "confirm leadership with a quorum and take the commit index", as etcd's ReadIndex does,
//! instead of one round each.
//!
//! A read only joins a round that starts after the read arrived: a round already under way may
//! have fixed its index before a write that the reader saw acknowledged, so the reader would
//! miss it. Reads that arrive during a round wait for the next one; rounds run one at a time.

use openraft::async_runtime::watch::WatchReceiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{LinearizableReadError, RaftError};
use openraft::ReadPolicy;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::leader::LeaderView;
use crate::network::{ForwardError, PeerClients, PeerMethod};
use crate::types::{now_ms, Batch, Capacity, NodeId, Raft};

/// One attempt at a read index: this node's, if it leads, else the leader's.
#[derive(Clone)]
pub struct ReadIndexSource {
    /// This node's id.
    pub id: NodeId,
    pub raft: Raft,
    /// Who leads, and how a follower asks it for a read index.
    pub leader: LeaderView,
    /// Connections to the other nodes.
    pub peers: Arc<PeerClients>,
    /// The term and index of an entry this process proposed and saw committed while leading.
    pub barrier: Arc<Mutex<Option<(u64, u64)>>>,
}

type Round = Result<Option<u64>, ForwardError>;

impl ReadIndexSource {
    pub fn new(id: NodeId, raft: Raft, peers: Arc<PeerClients>) -> Self {
        Self {
            id,
            leader: LeaderView::new(id, raft.clone()),
            raft,
            peers,
            barrier: Arc::new(Mutex::new(None)),
        }
    }

    /// The read index, if this node leads: leadership confirmed by a quorum, then the larger of
    /// the commit index and this node's applied index, never below this process's barrier for
    /// the term (see `barrier`).
    pub async fn as_leader(&self) -> Round {
        let barrier = self.barrier().await?;
        match self.raft.get_read_log_id(ReadPolicy::ReadIndex).await {
            Ok((read, applied)) => {
                let applied = applied.map_or(0, |id| id.index);
                Ok(Some(read.index().max(applied).max(barrier)))
            }
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(ForwardError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(e))) => {
                Err(ForwardError::TryAgain(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(ForwardError::Failed(format!(
                "node {} is stopping: {e}",
                self.id
            ))),
        }
    }

    /// The index of an entry this process proposed as leader in the current term and saw
    /// committed, proposing an empty one first if there is none yet.
    ///
    /// Raft lets a leader serve reads only once it has committed an entry of its own term: only
    /// then does its commit index cover everything committed before. openraft's read index is
    /// the larger of the commit index and the leader's first entry of its term, which does that
    /// after an election. But a leader killed and started again finds its own vote and leads at
    /// once in the same term, its first entry long behind it, and its commit index only as far
    /// as its state machine had made durable: a read index from that misses writes it had
    /// acknowledged before the crash. An entry proposed after the restart and committed comes
    /// after every entry the log held, so a read index at or past it misses nothing.
    async fn barrier(&self) -> Result<u64, ForwardError> {
        let term = self.raft.metrics().borrow_watched().current_term;
        if let Some((barrier_term, index)) = *self.barrier.lock().unwrap() {
            if barrier_term == term {
                return Ok(index);
            }
        }
        let empty = Batch {
            requests: Vec::new(),
            now_ms: now_ms(),
            capacity: Capacity::default(),
        };
        match self.raft.client_write(empty).await {
            Ok(written) => {
                let log_id = written.log_id;
                let entry_term = log_id.leader_id.term;
                let mut barrier = self.barrier.lock().unwrap();
                if barrier.is_none_or(|(t, _)| t < entry_term) {
                    *barrier = Some((entry_term, log_id.index));
                }
                Ok(log_id.index)
            }
            Err(e) => Err(crate::proposer::write_error(e, self.id)),
        }
    }

    /// This node's read index if it leads, else the leader's (asked over the peer RPC, once).
    async fn attempt(&self, timeout: Duration) -> Round {
        match self.as_leader().await {
            Err(ForwardError::NotLeader {
                leader: Some(leader),
            }) if leader != self.id => self.ask(leader, timeout).await,
            other => other,
        }
    }

    /// Asks the leader. Asking again is always safe, so any failure is one to retry.
    async fn ask(&self, leader: NodeId, timeout: Duration) -> Round {
        self.leader
            .ask::<(), Round>(&self.peers, leader, PeerMethod::ReadIndex, &(), timeout)
            .await
            .unwrap_or_else(|e| Err(ForwardError::TryAgain(e.to_string())))
    }
}

/// The handle reads ask for a round through.
#[derive(Clone)]
pub struct ReadIndexBatcher {
    queue: mpsc::Sender<oneshot::Sender<Round>>,
}

impl ReadIndexBatcher {
    /// Starts the round task. `timeout` bounds one round; `max_waiting` reads may queue.
    pub fn spawn(source: ReadIndexSource, timeout: Duration, max_waiting: usize) -> Self {
        let (queue, waiting) = mpsc::channel(max_waiting.max(1));
        tokio::spawn(run(source, waiting, timeout));
        Self { queue }
    }

    /// The result of the next round to start.
    pub async fn next_round(&self) -> Round {
        let stopping = || ForwardError::Failed("this node is stopping".into());
        let (reply, answer) = oneshot::channel();
        self.queue.send(reply).await.map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())?
    }
}

async fn run(
    source: ReadIndexSource,
    mut waiting: mpsc::Receiver<oneshot::Sender<Round>>,
    timeout: Duration,
) {
    while let Some(first) = waiting.recv().await {
        let mut readers = vec![first];
        while let Ok(next) = waiting.try_recv() {
            readers.push(next);
        }
        // Every reader in `readers` arrived before this round starts.
        let started = Instant::now();
        let round = match tokio::time::timeout(timeout, source.attempt(timeout)).await {
            Ok(round) => round,
            Err(_) => Err(ForwardError::TryAgain(format!(
                "no read index within {} ms",
                started.elapsed().as_millis()
            ))),
        };
        for reader in readers {
            let _ = reader.send(round.clone());
        }
    }
}
