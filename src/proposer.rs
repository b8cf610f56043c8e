//! Group commit: writes that arrive on the leader while earlier ones are being committed are
//! proposed to Raft together, as one log entry. openraft 0.9 appends each proposal and waits
//! for its flush before it takes the next one, so without batching every client write costs
//! its own fsync on the leader (and its own append on each follower); with it, one flush covers
//! every write that queued up meanwhile, and throughput grows with the number of clients.
//!
//! A batch is bounded by a number of requests and by bytes (never more than one maximal single
//! write, so peer messages keep their bound). A few batches may be in flight at once, so the
//! next batch is appended while the previous one is being replicated.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::network::ForwardError;
use crate::types::{Batch, NodeId, Raft, Request, Response};

/// Bounds on proposal batching.
#[derive(Debug, Clone)]
pub struct BatchLimits {
    /// Most requests in one log entry (`--batch-max-requests`).
    pub max_requests: usize,
    /// Most bytes of requests in one log entry (one maximal write: key + value limits).
    pub max_bytes: usize,
    /// Batches proposed but not yet committed, at most (`--batch-max-in-flight`).
    pub max_in_flight: usize,
    /// Writes waiting to be batched, at most; more wait to enqueue (`--max-pending-writes`).
    pub max_pending: usize,
}

/// A write waiting to be proposed, and where its answer goes.
struct Pending {
    request: Request,
    reply: oneshot::Sender<Result<Response, ForwardError>>,
}

/// The handle writes are proposed through. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the batching task for node `id`.
    pub fn spawn(id: NodeId, raft: Raft, limits: BatchLimits) -> Self {
        let (queue, pending) = mpsc::channel(limits.max_pending.max(1));
        tokio::spawn(run(id, raft, pending, limits));
        Self { queue }
    }

    /// Proposes `request` and returns its result once its batch is committed and applied here.
    pub async fn propose(&self, request: Request) -> Result<Response, ForwardError> {
        let stopping = || ForwardError::Failed("this node is stopping".into());
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { request, reply })
            .await
            .map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())?
    }
}

async fn run(id: NodeId, raft: Raft, mut queue: mpsc::Receiver<Pending>, limits: BatchLimits) {
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
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
        let (batch, rest) = take_batch(first, &mut queue, &limits);
        carried = rest;
        let raft = raft.clone();
        tokio::spawn(async move {
            commit(id, &raft, batch).await;
            drop(slot);
        });
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

async fn commit(id: NodeId, raft: &Raft, batch: Vec<Pending>) {
    let (requests, replies): (Vec<Request>, Vec<_>) =
        batch.into_iter().map(|p| (p.request, p.reply)).unzip();
    let count = requests.len();
    match raft.client_write(Batch { requests }).await {
        Ok(written) => {
            let responses = written.data.responses;
            assert_eq!(
                responses.len(),
                count,
                "the state machine answers every request of a batch"
            );
            for (reply, response) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok(response));
            }
        }
        Err(e) => {
            let error = match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                    ForwardError::NotLeader {
                        leader: f.leader_id,
                    }
                }
                RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                    ForwardError::Failed(e.to_string())
                }
                RaftError::Fatal(e) => ForwardError::Failed(format!("node {id} is stopping: {e}")),
            };
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(key: &str, value_len: usize) -> Pending {
        let (reply, _answer) = oneshot::channel();
        Pending {
            request: Request::Put {
                key: key.into(),
                value: "v".repeat(value_len),
            },
            reply,
        }
    }

    fn limits(max_requests: usize, max_bytes: usize) -> BatchLimits {
        BatchLimits {
            max_requests,
            max_bytes,
            max_in_flight: 1,
            max_pending: 64,
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

    #[tokio::test]
    async fn an_oversized_first_request_still_forms_a_batch_of_one() {
        let (_tx, mut rx) = mpsc::channel(64);
        let (batch, rest) = take_batch(pending("big", 10_000), &mut rx, &limits(100, 10));
        assert_eq!(batch.len(), 1);
        assert!(rest.is_none());
    }
}
