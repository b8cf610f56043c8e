//! The client API: the `CacheService` Thrift handler. It checks each request against the
//! limits, hands it to the router, and turns every error into a declared Thrift exception with a
//! message a person can act on.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::ServerState;
use tokio::runtime::Handle;

use crate::gen::cache::{
    CacheEntry, CacheServiceSyncHandler, Consistency as WireConsistency, InvalidRequest,
    KeyNotFound, Member, NodeStatus, ReadOptions, Unavailable,
};
use crate::router::{Consistency, RouteError, Router};
use crate::store::FlushStats;
use crate::types::{NodeId, Raft, Request, Response};

/// Size limits on what a client may write.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

/// The `CacheService` handler of one node.
pub struct CacheApi {
    id: NodeId,
    raft: Raft,
    router: Arc<Router>,
    limits: ApiLimits,
    /// Runs the router's async calls from the server's connection threads.
    runtime: Handle,
    /// The log store's flush counter, reported by `status`.
    flushes: Arc<FlushStats>,
}

fn user_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> thrift::Error {
    thrift::Error::User(Box::new(e))
}

fn invalid(message: String) -> thrift::Error {
    user_error(InvalidRequest { message })
}

fn route_error(e: RouteError) -> thrift::Error {
    match e {
        RouteError::Unavailable(message) => user_error(Unavailable { message }),
        RouteError::Storage(message) => user_error(Unavailable { message }),
    }
}

impl CacheApi {
    pub fn new(
        id: NodeId,
        raft: Raft,
        router: Arc<Router>,
        limits: ApiLimits,
        runtime: Handle,
        flushes: Arc<FlushStats>,
    ) -> Self {
        Self {
            id,
            raft,
            router,
            limits,
            runtime,
            flushes,
        }
    }

    fn check_key(&self, key: &str) -> thrift::Result<()> {
        if key.len() > self.limits.max_key_bytes {
            return Err(invalid(format!(
                "key is {} bytes; the limit is {} bytes (--max-key-bytes)",
                key.len(),
                self.limits.max_key_bytes
            )));
        }
        Ok(())
    }

    fn read(&self, key: String, consistency: Consistency) -> thrift::Result<CacheEntry> {
        self.check_key(&key)?;
        match self
            .runtime
            .block_on(self.router.read(&key, consistency))
            .map_err(route_error)?
        {
            Some(value) => Ok(CacheEntry { key, value }),
            None => Err(user_error(KeyNotFound { key })),
        }
    }

    fn write(&self, request: Request) -> thrift::Result<Response> {
        self.runtime
            .block_on(self.router.write(request))
            .map_err(route_error)
    }
}

impl CacheServiceSyncHandler for CacheApi {
    fn handle_get(&self, key: String) -> thrift::Result<CacheEntry> {
        self.read(key, Consistency::Local)
    }

    fn handle_get_with(&self, key: String, options: ReadOptions) -> thrift::Result<CacheEntry> {
        let consistency = match options.consistency {
            None | Some(WireConsistency::LOCAL) => Consistency::Local,
            Some(WireConsistency::LINEARIZABLE) => Consistency::Linearizable,
            Some(other) => return Err(invalid(format!("unknown consistency level {}", other.0))),
        };
        self.read(key, consistency)
    }

    fn handle_put(&self, entry: CacheEntry) -> thrift::Result<bool> {
        self.check_key(&entry.key)?;
        if entry.value.len() > self.limits.max_value_bytes {
            return Err(invalid(format!(
                "value is {} bytes; the limit is {} bytes (--max-value-bytes)",
                entry.value.len(),
                self.limits.max_value_bytes
            )));
        }
        self.write(Request::Put {
            key: entry.key,
            value: entry.value,
        })?;
        Ok(true)
    }

    fn handle_remove(&self, key: String) -> thrift::Result<bool> {
        self.check_key(&key)?;
        match self.write(Request::Remove { key })? {
            Response::Removed { existed } => Ok(existed),
            other => Err(user_error(Unavailable {
                message: format!("unexpected result {other:?} for a remove"),
            })),
        }
    }

    fn handle_status(&self) -> thrift::Result<NodeStatus> {
        let mut status = node_status(self.id, &self.raft);
        status.log_flushes = Some(self.flushes.count.load(Ordering::Relaxed) as i64);
        Ok(status)
    }

    fn handle_admin_snapshot(&self) -> thrift::Result<i64> {
        let unavailable = |message: String| user_error(Unavailable { message });
        let built = self
            .runtime
            .block_on(self.router.snapshot())
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(built as i64)
    }
}

/// This node's view of the cluster, from openraft's metrics.
pub fn node_status(id: NodeId, raft: &Raft) -> NodeStatus {
    let metrics = raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let is_voter = membership.voter_ids().any(|v| v == id);
    let role = match metrics.state {
        ServerState::Leader => "leader",
        ServerState::Candidate => "candidate",
        ServerState::Follower if is_voter => "follower",
        ServerState::Follower | ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    };
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(member, node)| Member {
            id: *member as i64,
            peer_addr: node.peer_addr.clone(),
            voter: voters.contains(member),
        })
        .collect();
    NodeStatus {
        id: id as i64,
        role: role.to_string(),
        leader: metrics.current_leader.map(|l| l as i64),
        term: metrics.current_term as i64,
        last_log_index: metrics.last_log_index.unwrap_or(0) as i64,
        last_applied: metrics.last_applied.map(|l| l.index).unwrap_or(0) as i64,
        members,
        log_flushes: None,
    }
}
