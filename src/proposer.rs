//! Group commit: writes that arrive while earlier ones are being committed are proposed to
//! Raft together, as one log entry. openraft 0.9 appends each proposal and waits for its flush
//! before it takes the next one, so without batching every client write costs its own fsync on
//! the leader (and its own append on each follower); with it, one flush covers every write that
//! queued up meanwhile, and throughput grows with the number of clients.
//!
//! On a follower the same batch is forwarded to the leader in one peer call, where it joins the
//! leader's own batching. Requests that arrived from a peer are never forwarded again, so two
//! nodes with stale views of who leads cannot bounce them between each other.
//!
//! The leader fixes what depends on time as it proposes a batch: its clock goes into the entry
//! (`Batch::now_ms`, the time every expiry check of the entry uses) and every relative TTL
//! becomes an absolute expiry. A follower forwards requests as the client sent them.
//!
//! A write that may not be applied twice (`Request::is_idempotent`) is answered "outcome
//! unknown" (`ForwardError::Failed`) rather than "not the leader" once it was proposed, so the
//! router never retries it: openraft may report a lost leadership for an entry that a later
//! leader still commits.
//!
//! A batch is bounded by a number of requests and by bytes (never more than one maximal single
//! write, so peer messages keep their bound). A few batches may be in flight at once, so the
//! next batch is appended while the previous one is being replicated.

use openraft::async_runtime::watch::WatchReceiver;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::eviction::Eviction;
use crate::leader::{AskError, LeaderView};
use crate::network::{ForwardError, ForwardRequest, PeerClients, PeerMethod};
use crate::store::LogClock;
use crate::types::{now_ms, Applied, Batch, NodeId, Raft, Request, SessionLimits, TypeConfig};

/// Bounds on proposal batching.
#[derive(Debug, Clone)]
pub struct BatchLimits {
    /// Most requests in one log entry (`--batch-max-requests`).
    pub max_requests: usize,
    /// Most bytes of requests in one log entry (one maximal write: key + value limits).
    pub max_bytes: usize,
    /// Batches proposed or forwarded but not yet answered, at most (`--batch-max-in-flight`).
    pub max_in_flight: usize,
    /// Writes waiting to be batched, at most; more wait to enqueue (`--max-pending-writes`).
    pub max_pending: usize,
    /// How long a batch forwarded to the leader may take (the request deadline).
    pub forward_timeout: Duration,
    /// How tracked writes' answers are kept (`--session-ttl-ms`, `--max-sessions`,
    /// `--max-session-answers`): the leader's, written into each tracked request it proposes.
    pub sessions: SessionLimits,
}

/// Where a write came from, which decides whether it may be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client of this node: forwarded to the leader if this node does not lead.
    Client,
    /// Forwarded here by a peer: proposed here or refused, never forwarded again.
    Peer,
}

/// The answer to one proposed write.
pub type Answer = oneshot::Receiver<Result<Applied, ForwardError>>;

/// A write waiting to be proposed, and where its answer goes.
struct Pending {
    request: Request,
    origin: Origin,
    reply: oneshot::Sender<Result<Applied, ForwardError>>,
}

/// The handle writes are proposed through. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Pending>,
}

/// What a failed `client_write` on node `id` means to the writer.
pub fn write_error(
    e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    id: NodeId,
) -> ForwardError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ForwardError::NotLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ForwardError::Failed(e.to_string())
        }
        // Appended, then dropped for another leader's log: it may still commit through it.
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => ForwardError::Failed(
            "the write's log entry was discarded by a change of leader: it may or may not be applied"
                .into(),
        ),
        RaftError::APIError(e @ ClientWriteError::PreconditionFailed(_)) => {
            ForwardError::Failed(e.to_string())
        }
        RaftError::Fatal(e) => ForwardError::Failed(format!("node {id} is stopping: {e}")),
    }
}

fn stopping() -> ForwardError {
    ForwardError::Failed("this node is stopping".into())
}

impl Proposer {
    /// Starts the batching task for node `id`.
    pub fn spawn(
        id: NodeId,
        raft: Raft,
        peers: Arc<PeerClients>,
        limits: BatchLimits,
        gates: Gates,
    ) -> Self {
        let (queue, pending) = mpsc::channel(limits.max_pending.max(1));
        let batcher = Batcher {
            id,
            raft,
            peers,
            limits,
            eviction: gates.eviction,
            clock: gates.clock,
            disk: gates.disk,
            batch_sizes: gates.batch_sizes,
        };
        tokio::spawn(batcher.run(pending));
        Self { queue }
    }

    /// Queues `request`; the answer arrives once its batch is committed and applied (here or on
    /// the leader), or refused.
    pub async fn submit(&self, request: Request, origin: Origin) -> Result<Answer, ForwardError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                request,
                origin,
                reply,
            })
            .await
            .map_err(|_| stopping())?;
        Ok(answer)
    }

    /// Proposes `request` and waits for its answer.
    pub async fn propose(&self, request: Request, origin: Origin) -> Result<Applied, ForwardError> {
        self.submit(request, origin)
            .await?
            .await
            .map_err(|_| stopping())?
    }
}

/// What the leader consults, and records, as it proposes a batch.
pub struct Gates {
    /// The caps written into each entry, and the evictions proposed ahead of writes.
    pub eviction: Arc<Eviction>,
    /// The log's time.
    pub clock: LogClock,
    /// Whether a node's disk is nearly full.
    pub disk: Arc<crate::disk::DiskGuard>,
    /// Client requests per proposed entry.
    pub batch_sizes: prometheus_client::metrics::histogram::Histogram,
}

/// The task that turns queued writes into batches.
struct Batcher {
    id: NodeId,
    raft: Raft,
    peers: Arc<PeerClients>,
    limits: BatchLimits,
    /// The caps written into each entry, and the evictions proposed ahead of writes.
    eviction: Arc<Eviction>,
    /// The log's time: an entry is proposed at this node's clock, or later if the log is ahead.
    clock: LogClock,
    /// Whether a node's disk is nearly full: writes that add data are then refused unproposed.
    disk: Arc<crate::disk::DiskGuard>,
    /// Client requests per proposed entry (`/metrics`: how much group commit batches).
    batch_sizes: prometheus_client::metrics::histogram::Histogram,
}

impl Batcher {
    async fn run(self, mut queue: mpsc::Receiver<Pending>) {
        let this = Arc::new(self);
        let in_flight = Arc::new(Semaphore::new(this.limits.max_in_flight.max(1)));
        let mut carried: Option<Pending> = None;
        loop {
            let first = match carried.take() {
                Some(pending) => pending,
                None => match queue.recv().await {
                    Some(pending) => pending,
                    None => return,
                },
            };
            // Waiting for a slot is what lets the next batch grow.
            let Ok(slot) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let (batch, rest) = take_batch(first, &mut queue, &this.limits);
            carried = rest;
            let this = this.clone();
            tokio::spawn(async move {
                this.dispatch(batch).await;
                drop(slot);
            });
        }
    }

    /// Proposes the batch if this node leads, else forwards what may be forwarded.
    async fn dispatch(&self, batch: Vec<Pending>) {
        let (leader, state) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow_watched();
            (m.current_leader, m.state)
        };
        if leader == Some(self.id) && state == ServerState::Leader {
            return self.propose_and_answer(batch).await;
        }
        let (forward, refuse): (Vec<Pending>, Vec<Pending>) =
            batch.into_iter().partition(|p| p.origin == Origin::Client);
        for pending in refuse {
            let _ = pending.reply.send(Err(ForwardError::NotLeader { leader }));
        }
        match leader {
            Some(leader) if leader != self.id && !forward.is_empty() => {
                self.forward(leader, forward).await
            }
            _ => {
                for pending in forward {
                    let _ = pending.reply.send(Err(ForwardError::NotLeader { leader }));
                }
            }
        }
    }

    /// Proposes the batch as one entry and answers each request once it is applied here.
    async fn propose_and_answer(&self, batch: Vec<Pending>) {
        // A disk nearly full: what would add data is refused before it reaches the log.
        let batch = match self.disk.refusal() {
            None => batch,
            Some(why) => {
                let (refused, rest): (Vec<Pending>, Vec<Pending>) =
                    batch.into_iter().partition(|p| p.request.adds_data());
                for pending in refused {
                    let response = crate::types::Response::Full(why.clone());
                    let _ = pending.reply.send(Ok(Applied { index: 0, response }));
                }
                if rest.is_empty() {
                    return;
                }
                rest
            }
        };
        let now_ms = self.clock.leader_now_ms(now_ms());
        let (mut requests, replies): (Vec<Request>, Vec<_>) = batch
            .into_iter()
            .map(|mut p| {
                p.request.resolve_expiry(now_ms);
                if let Request::Tracked { session, .. } = &mut p.request {
                    session.limits = self.limits.sessions;
                }
                (p.request, p.reply)
            })
            .unzip();
        let idempotent: Vec<bool> = requests.iter().map(Request::is_idempotent).collect();
        // Room is made first, in the same entry, so replicas evict exactly these keys.
        let evicting = self.eviction.plan(&requests);
        let skip = usize::from(evicting.is_some());
        if let Some(evict) = evicting {
            requests.insert(0, evict);
        }
        let count = requests.len();
        self.batch_sizes.observe((count - skip) as f64);
        let capacity = self.eviction.capacity();
        let batch = Batch {
            requests,
            now_ms,
            capacity,
        };
        match self.raft.client_write(batch).await {
            Ok(written) => {
                let index = written.log_id.index;
                let responses = written.data.responses;
                assert_eq!(
                    responses.len(),
                    count,
                    "the state machine answers every request of a batch"
                );
                for (reply, response) in replies.into_iter().zip(responses.into_iter().skip(skip)) {
                    let _ = reply.send(Ok(Applied { index, response }));
                }
            }
            Err(e) => {
                let error = write_error(e, self.id);
                for (reply, idempotent) in replies.into_iter().zip(idempotent) {
                    let _ = reply.send(Err(after_proposal(error.clone(), idempotent)));
                }
            }
        }
    }

    /// Sends the batch to the leader in one peer call and hands each request its answer.
    async fn forward(&self, leader: NodeId, batch: Vec<Pending>) {
        let (requests, replies): (Vec<Request>, Vec<_>) =
            batch.into_iter().map(|p| (p.request, p.reply)).unzip();
        let count = requests.len();
        let request = ForwardRequest {
            requests,
            deadline_ms: self.limits.forward_timeout.as_millis() as u64,
        };
        // A little longer than the leader's own deadline, so its answer can arrive.
        let timeout = self.limits.forward_timeout + Duration::from_millis(500);
        let leader_view = LeaderView::new(self.id, self.raft.clone());
        let answers: Result<Vec<Result<Applied, ForwardError>>, ForwardError> = leader_view
            .ask(&self.peers, leader, PeerMethod::Forward, &request, timeout)
            .await
            .map_err(|e| match e {
                AskError::NotSent(reason) | AskError::Refused(reason) => {
                    ForwardError::TryAgain(reason)
                }
                AskError::Unknown(reason) => ForwardError::Failed(format!(
                    "{reason}; the write may or may not have been applied"
                )),
            });
        match answers {
            Ok(answers) if answers.len() == count => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
            }
            Ok(answers) => {
                let e = ForwardError::Failed(format!(
                    "the leader answered {} of {count} forwarded writes",
                    answers.len()
                ));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The error a proposed request is answered with: "not the leader" invites a retry, which only
/// an idempotent request may take, since the entry may still be committed by the next leader.
fn after_proposal(error: ForwardError, idempotent: bool) -> ForwardError {
    match error {
        ForwardError::NotLeader { leader } if !idempotent => ForwardError::Failed(format!(
            "leadership changed (leader now: {leader:?}) while the write was being committed; it may or may not have been applied, and is not retried because applying it twice would differ"
        )),
        other => other,
    }
}

/// `first` plus whatever is already queued, within the limits; also the request that did not
/// fit, to start the next batch with. A batch always holds at least one request.
fn take_batch(
    first: Pending,
    queue: &mut mpsc::Receiver<Pending>,
    limits: &BatchLimits,
) -> (Vec<Pending>, Option<Pending>) {
    let mut bytes = first.request.size_bytes();
    let mut batch = vec![first];
    while batch.len() < limits.max_requests {
        let Ok(next) = queue.try_recv() else { break };
        let size = next.request.size_bytes();
        if bytes + size > limits.max_bytes {
            return (batch, Some(next));
        }
        bytes += size;
        batch.push(next);
    }
    (batch, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(key: &str, value_len: usize) -> Pending {
        let (reply, _answer) = oneshot::channel();
        Pending {
            request: Request::Put {
                key: key.into(),
                value: "v".repeat(value_len).into_bytes(),
                expiry: crate::types::Expiry::Never,
            },
            origin: Origin::Client,
            reply,
        }
    }

    fn limits(max_requests: usize, max_bytes: usize) -> BatchLimits {
        BatchLimits {
            max_requests,
            max_bytes,
            max_in_flight: 1,
            max_pending: 64,
            forward_timeout: Duration::from_secs(1),
            sessions: SessionLimits::default(),
        }
    }

    #[tokio::test]
    async fn a_batch_stops_at_the_request_limit_and_leaves_the_rest_queued() {
        let (tx, mut rx) = mpsc::channel(64);
        for i in 0..10 {
            tx.send(pending(&format!("k{i}"), 1)).await.unwrap();
        }
        let (batch, rest) = take_batch(pending("first", 1), &mut rx, &limits(4, 1 << 20));
        assert_eq!(batch.len(), 4);
        assert!(rest.is_none());
        assert_eq!(
            rx.len(),
            7,
            "requests past the limit stay queued for the next batch"
        );
    }

    #[tokio::test]
    async fn a_batch_stops_before_the_byte_limit_and_carries_the_request_that_did_not_fit() {
        let (tx, mut rx) = mpsc::channel(64);
        for i in 0..3 {
            tx.send(pending(&format!("k{i}"), 100)).await.unwrap();
        }
        let one = pending("kx", 100).request.size_bytes();
        let (batch, rest) = take_batch(pending("kf", 100), &mut rx, &limits(100, 2 * one + 1));
        assert_eq!(batch.len(), 2);
        assert!(
            rest.is_some(),
            "the request over the byte limit starts the next batch"
        );
        assert_eq!(rx.len(), 1);
    }

    #[test]
    fn a_write_that_may_not_apply_twice_is_not_retried_after_it_was_proposed() {
        let lost = || ForwardError::NotLeader { leader: Some(2) };
        assert!(matches!(
            after_proposal(lost(), true),
            ForwardError::NotLeader { .. }
        ));
        assert!(matches!(
            after_proposal(lost(), false),
            ForwardError::Failed(_)
        ));
        let increment = Request::Increment {
            key: "n".into(),
            delta: 1,
        };
        assert!(!increment.is_idempotent());
        // With a client id and a number, the state machine applies it once however often it
        // is sent: it may be retried like a put.
        let tracked = Request::Tracked {
            session: crate::types::SessionRequest {
                client: 9,
                seq: 1,
                lowest_unanswered: 1,
                limits: SessionLimits::default(),
            },
            request: Box::new(increment),
        };
        assert!(tracked.is_idempotent());
    }

    #[tokio::test]
    async fn an_oversized_first_request_still_forms_a_batch_of_one() {
        let (_tx, mut rx) = mpsc::channel(64);
        let (batch, rest) = take_batch(pending("big", 10_000), &mut rx, &limits(100, 10));
        assert_eq!(batch.len(), 1);
        assert!(rest.is_none());
    }
}
