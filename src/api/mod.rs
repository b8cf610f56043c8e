//! The client API: the `CacheService` Thrift handler. It checks each request against the
//! limits, hands it to the router, and turns every error into a declared Thrift exception with a
//! message a person can act on. Admin calls are checked against the admin token here, then
//! handed to `membership::Admin`.
//!
//! - `passes.rs`: the generated processor's two passes over a request (decode, answer).
//! - `data.rs`: the cache methods beyond get/put/remove (batches, conditional writes,
//!   counters, scans, stats, TTLs).

mod data;
mod passes;

use openraft::async_runtime::watch::WatchReceiver;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::ServerState;

use crate::gen::cache::{
    AdminChange, AdminOp, AdminRefused, BackupInfo, CacheEntry, CacheFull,
    CacheServiceSyncProcessor, Consistency as WireConsistency, InvalidRequest, KeyNotFound, Member,
    MemberState, Membership, NodeStatus, ReadOptions, Unauthorized, Unavailable,
};
use crate::membership::{
    same_token, Admin, AdminError, AdminRequest, Change, MembersView, Standing,
};
use crate::router::{Consistency, RouteError, Router};
use crate::server::{self, Service};
use crate::store::FlushStats;
use crate::types::{Applied, Expiry, NodeId, Raft, Request, Response};
use passes::{Answer, Call, Decoded, Outcome};

/// Limits on what a client may send (flags of `raftcache serve`).
#[derive(Debug, Clone)]
pub struct ApiLimits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Most keys or entries in one `get_many`, `put_many` or `remove_many`
    /// (`--max-batch-items`).
    pub max_batch_items: usize,
    /// Most bytes of keys and values in one `put_many` (`--max-batch-bytes`).
    pub max_batch_bytes: usize,
    /// Most entries one `scan` returns, whatever limit it asks for (`--max-scan-items`).
    pub max_scan_items: usize,
}

/// The name multiplexed clients (`TMultiplexedProtocol`) call this service by.
pub const SERVICE_NAME: &str = "CacheService";

/// What the API counts, shared with `/metrics`.
#[derive(Clone, Default)]
pub struct ApiCounters {
    pub reads: Arc<ReadCounters>,
    pub events: crate::metrics::EventMetrics,
}

/// This node's read counters, for `stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct ReadCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

/// The `CacheService` of one node.
pub struct CacheApi {
    id: NodeId,
    raft: Raft,
    router: Arc<Router>,
    limits: ApiLimits,
    /// The log store's flush counter, reported by `status`.
    flushes: Arc<FlushStats>,
    /// Membership administration (here or forwarded to the leader).
    admin: Arc<Admin>,
    /// Whether this node is waiting, a member, or removed (for `status`).
    standing: Arc<Standing>,
    /// Admin calls must carry it when set (`--admin-token`).
    admin_token: Option<String>,
    /// With `--client-auth token`: what a connection must present before its other calls.
    client_token: Option<String>,
    /// Hits and misses of the reads this node served.
    reads: Arc<ReadCounters>,
    /// Requests by method and outcome, and their latency (`/metrics`).
    events: crate::metrics::EventMetrics,
    /// Backups being read from this node.
    backups: Arc<crate::backup::Backups>,
}

/// The parts of a node the admin calls need.
pub struct AdminParts {
    pub admin: Arc<Admin>,
    pub standing: Arc<Standing>,
    pub admin_token: Option<String>,
    /// `--client-token`, with `--client-auth token`.
    pub client_token: Option<String>,
    pub backups: Arc<crate::backup::Backups>,
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

impl Service for CacheApi {
    /// The generated processor is synchronous, so it runs twice over the request: once to
    /// decode it into a `Call` (its answer is kept only if it could not decode the request:
    /// an exception), and, once the call has been carried out, once more to write the
    /// `Outcome` back with the request's method name and sequence number.
    async fn call(
        &self,
        request: Vec<u8>,
        protocol: server::Protocol,
        connection: &server::Connection,
    ) -> Option<Vec<u8>> {
        // A multiplexed client's call of this service is served as a plain one.
        let request = server::wire::demultiplex(protocol, &request, SERVICE_NAME);
        let call = {
            let decoded = Decoded::default();
            let refusal = server::process(
                &CacheServiceSyncProcessor::new(&decoded),
                &request,
                protocol,
            )
            .ok()?;
            match decoded.0.into_inner() {
                Some(call) => call,
                None => return Some(refusal),
            }
        };
        let started = std::time::Instant::now();
        let method = call.method();
        let outcome = match call {
            Call::Authenticate { token } => Outcome::Done(self.authenticate(&token, connection)),
            call if self.client_token.is_some()
                && !connection.authenticated.load(Ordering::Relaxed) =>
            {
                Outcome::unauthenticated(&call)
            }
            call => self.execute(call).await,
        };
        self.events
            .request(method, outcome.label(), started.elapsed());
        let answer = Answer(RefCell::new(Some(outcome)));
        server::process(&CacheServiceSyncProcessor::new(answer), &request, protocol).ok()
    }
}

impl CacheApi {
    pub fn new(
        id: NodeId,
        raft: Raft,
        router: Arc<Router>,
        limits: ApiLimits,
        flushes: Arc<FlushStats>,
        admin: AdminParts,
        counters: ApiCounters,
    ) -> Self {
        Self {
            id,
            raft,
            router,
            limits,
            flushes,
            admin: admin.admin,
            standing: admin.standing,
            admin_token: admin.admin_token,
            client_token: admin.client_token,
            reads: counters.reads,
            events: counters.events,
            backups: admin.backups,
        }
    }

    async fn execute(&self, call: Call) -> Outcome {
        match call {
            Call::Get { key } => Outcome::Entry(self.read(key, Consistency::Local, None).await),
            Call::GetWith { key, options } => Outcome::Entry(self.get_with(key, options).await),
            Call::Put { entry } => Outcome::Flag(self.put(entry).await),
            Call::Remove { key } => Outcome::Flag(self.remove(key).await),
            Call::Status => Outcome::Status(Ok(self.status())),
            Call::AdminSnapshot { token } => Outcome::Index(self.admin_snapshot(&token).await),
            Call::AdminBackupBegin { token } => {
                Outcome::Backup(self.admin_backup_begin(&token).await)
            }
            Call::AdminBackupRead {
                token,
                backup_id,
                offset,
                max_bytes,
            } => Outcome::Bytes(self.admin_backup_read(&token, &backup_id, offset, max_bytes)),
            Call::AdminBackupEnd { token, backup_id } => Outcome::Done(
                self.check_token(&token)
                    .map(|()| self.backups.end(&backup_id)),
            ),
            Call::AdminMembers { token } => {
                Outcome::Membership(self.admin_call(&token, Ok(AdminRequest::Members)).await)
            }
            Call::AdminChange { change, token } if change.op == AdminOp::TRANSFER_LEADER => {
                let request = u64::try_from(change.id)
                    .ok()
                    .filter(|id| *id > 0)
                    .map(|to| AdminRequest::TransferLeader {
                        to,
                        force: change.force.unwrap_or(false),
                    })
                    .ok_or_else(|| format!("{} is not a node id", change.id));
                Outcome::Membership(self.admin_call(&token, request).await)
            }
            Call::AdminChange { change, token } => {
                let request =
                    to_change(change).map(|(change, force)| AdminRequest::Change { change, force });
                Outcome::Membership(self.admin_call(&token, request).await)
            }
            other => self.execute_data(other).await,
        }
    }

    /// `authenticate`: marks the connection as authenticated if `token` is the client token
    /// (any token, on a node without one).
    fn authenticate(&self, token: &str, connection: &server::Connection) -> thrift::Result<()> {
        match &self.client_token {
            Some(expected) if !same_token(expected, token) => {
                // The token given is never logged.
                tracing::warn!("client refused: a wrong client token");
                Err(user_error(Unauthorized {
                    message: "wrong client token".into(),
                }))
            }
            _ => {
                connection.authenticated.store(true, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Refuses an admin call without this node's admin token (if it has one).
    fn check_token(&self, token: &str) -> thrift::Result<()> {
        match &self.admin_token {
            Some(expected) if !same_token(expected, token) => {
                // The token given is never logged.
                tracing::warn!(
                    given = if token.is_empty() {
                        "none"
                    } else {
                        "a wrong one"
                    },
                    "admin call refused: it lacks the admin token"
                );
                Err(user_error(Unauthorized {
                    message: "admin calls need the admin token of this cluster (raftcache admin --token, or RAFTCACHE_ADMIN_TOKEN)".into(),
                }))
            }
            _ => Ok(()),
        }
    }

    /// Checks the admin token, then carries out an admin request through the leader.
    async fn admin_call(
        &self,
        token: &str,
        request: Result<AdminRequest, String>,
    ) -> thrift::Result<Membership> {
        self.check_token(token)?;
        let request = request.map_err(|message| {
            tracing::warn!(why = %message, "admin call refused");
            user_error(AdminRefused { message })
        })?;
        match self.admin.handle(request.clone()).await {
            Ok(view) => Ok(to_membership(view)),
            Err(AdminError::Refused(message)) => {
                tracing::warn!(?request, why = %message, "admin change refused");
                Err(user_error(AdminRefused { message }))
            }
            Err(AdminError::Unavailable(message)) => Err(user_error(Unavailable { message })),
            Err(AdminError::Unauthorized(message)) => Err(user_error(Unauthorized { message })),
            Err(e @ AdminError::NotLeader { .. }) => Err(user_error(Unavailable {
                message: e.to_string(),
            })),
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

    async fn read(
        &self,
        key: String,
        consistency: Consistency,
        min_index: Option<u64>,
    ) -> thrift::Result<CacheEntry> {
        let (entry, ttl_from) = self.read_live(key, consistency, min_index).await?;
        to_wire(entry, ttl_from)
    }

    /// The live entry of `key` (KeyNotFound if none), and the time its TTL is counted from.
    async fn read_live(
        &self,
        key: String,
        consistency: Consistency,
        min_index: Option<u64>,
    ) -> thrift::Result<(crate::store::LiveEntry, u64)> {
        self.check_key(&key)?;
        let state = self.readable(consistency, min_index).await?;
        let now_ms = state.log_clock().now_ms();
        let found = state
            .entry(&key, now_ms)
            .map_err(|e| route_error(RouteError::Storage(e.to_string())))?;
        self.count_reads(1, u64::from(found.is_some()));
        self.router.note_reads([key.as_str()]);
        match found {
            Some(entry) => Ok((entry, ttl_clock(state))),
            None => Err(user_error(KeyNotFound { key })),
        }
    }

    /// This replica's state once it may be read as asked (see `Router::reader`).
    async fn readable(
        &self,
        consistency: Consistency,
        min_index: Option<u64>,
    ) -> thrift::Result<&crate::store::StateReader> {
        self.router
            .reader(consistency, min_index)
            .await
            .map_err(route_error)
    }

    /// `readable`, with the client's `ReadOptions`.
    async fn readable_with(
        &self,
        options: &ReadOptions,
    ) -> thrift::Result<&crate::store::StateReader> {
        let (consistency, min_index) = read_options(options)?;
        self.readable(consistency, min_index).await
    }

    async fn get_with(&self, key: String, options: ReadOptions) -> thrift::Result<CacheEntry> {
        let (consistency, min_index) = read_options(&options)?;
        self.read(key, consistency, min_index).await
    }

    /// Carries out a write; one the caps refused is `CacheFull`, one the state machine refused
    /// (an increment of a value that is not a number, a retry whose answer was forgotten)
    /// `InvalidRequest`. A tracked write seen before answers as it first did (`repeated`).
    async fn write(&self, request: Request) -> thrift::Result<Written> {
        let applied: Applied = self.router.write(request).await.map_err(route_error)?;
        let (response, repeated) = match applied.response {
            Response::Repeated(first) => (*first, true),
            response => (response, false),
        };
        match response {
            Response::Full(message) => Err(user_error(CacheFull { message })),
            Response::Refused(message) => Err(invalid(message)),
            response => Ok(Written {
                index: applied.index,
                response,
                repeated,
            }),
        }
    }

    /// Checks an entry to write against the key and value limits and its TTL.
    fn check_entry(&self, entry: &CacheEntry) -> thrift::Result<Expiry> {
        self.check_write(&entry.key, entry.value.len(), entry.ttl_ms)
    }

    /// Checks a key, a value's length and a TTL to write against the limits.
    fn check_write(
        &self,
        key: &str,
        value_len: usize,
        ttl_ms: Option<i64>,
    ) -> thrift::Result<Expiry> {
        self.check_key(key)?;
        if value_len > self.limits.max_value_bytes {
            return Err(invalid(format!(
                "value is {value_len} bytes; the limit is {} bytes (--max-value-bytes)",
                self.limits.max_value_bytes
            )));
        }
        match ttl_ms {
            None => Ok(Expiry::Never),
            Some(ttl) if ttl > 0 => Ok(Expiry::AfterMs(ttl as u64)),
            Some(ttl) => Err(invalid(format!(
                "ttl_ms is {ttl}; it must be positive (leave it out for no expiry)"
            ))),
        }
    }

    async fn put(&self, entry: CacheEntry) -> thrift::Result<bool> {
        let expiry = self.check_entry(&entry)?;
        self.write(Request::Put {
            key: entry.key,
            value: entry.value.into_bytes(),
            expiry,
        })
        .await?;
        Ok(true)
    }

    async fn remove(&self, key: String) -> thrift::Result<bool> {
        self.check_key(&key)?;
        match self.write(Request::Remove { key }).await?.response {
            Response::Removed { existed } => Ok(existed),
            other => Err(unexpected(other, "remove")),
        }
    }

    fn status(&self) -> NodeStatus {
        let mut status = node_status(self.id, &self.raft);
        status.log_flushes = Some(self.flushes.count.load(Ordering::Relaxed) as i64);
        if self.standing.removed() {
            status.role = "removed".into();
        } else if self.standing.waiting() {
            status.role = "waiting".into();
        }
        status.cluster_id = self.standing.identity().cluster_id();
        status
    }

    async fn admin_snapshot(&self, token: &str) -> thrift::Result<i64> {
        self.check_token(token)?;
        let built = self.router.snapshot().await.map_err(|e| {
            user_error(Unavailable {
                message: e.to_string(),
            })
        })?;
        Ok(built as i64)
    }

    /// A snapshot covering everything applied here, kept for `admin_backup_read`.
    async fn admin_backup_begin(&self, token: &str) -> thrift::Result<BackupInfo> {
        self.check_token(token)?;
        let unavailable = |message: String| user_error(Unavailable { message });
        self.router
            .snapshot()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let begun = self
            .backups
            .begin()
            .map_err(|e| unavailable(format!("cannot keep the snapshot for the backup: {e}")))?;
        tracing::info!(backup = %begun.id, index = ?begun.meta.last_log_id.map(|l| l.index), bytes = begun.bytes, "backup begun");
        Ok(BackupInfo {
            backup_id: begun.id,
            cluster_id: self.standing.identity().cluster_id().unwrap_or_default(),
            node_id: self.id as i64,
            index: begun.meta.last_log_id.map_or(0, |l| l.index) as i64,
            bytes: begun.bytes as i64,
        })
    }

    fn admin_backup_read(
        &self,
        token: &str,
        backup_id: &str,
        offset: i64,
        max_bytes: i32,
    ) -> thrift::Result<Vec<u8>> {
        self.check_token(token)?;
        let offset =
            u64::try_from(offset).map_err(|_| invalid(format!("offset {offset} is negative")))?;
        if max_bytes <= 0 {
            return Err(invalid(format!("max_bytes {max_bytes} is not positive")));
        }
        let max = max_bytes.min(crate::backup::MAX_READ_BYTES) as usize;
        self.backups.read(backup_id, offset, max).map_err(invalid)
    }
}

/// What the client port does with a connection's bytes before a call is carried out, without a
/// node: tells the wire, splits the messages, strips a multiplexed prefix and decodes each
/// message into a call (or the exception a client would get back). Returns how many messages
/// were decoded. The fuzz target (`fuzz/`) runs it on arbitrary bytes.
pub fn decode_connection_bytes(bytes: &[u8], max_message_bytes: usize) -> usize {
    let Ok(Some(wire)) = server::wire::detect(bytes, max_message_bytes) else {
        return 0;
    };
    let mut rest = bytes;
    let mut decoded = 0;
    while let server::frame::Measured::Complete(len) =
        server::wire::measure(wire, rest, max_message_bytes)
    {
        let message = server::wire::payload(wire, &rest[..len]);
        let request = server::wire::demultiplex(wire.protocol, message, SERVICE_NAME);
        let pass = Decoded::default();
        let processor = CacheServiceSyncProcessor::new(&pass);
        if server::process(&processor, &request, wire.protocol).is_ok() {
            decoded += 1;
        }
        rest = &rest[len..];
    }
    decoded
}

/// The consistency and min_index a read asks for.
fn read_options(options: &ReadOptions) -> thrift::Result<(Consistency, Option<u64>)> {
    let consistency = match options.consistency {
        None | Some(WireConsistency::LOCAL) => Consistency::Local,
        Some(WireConsistency::LINEARIZABLE) => Consistency::Linearizable,
        Some(other) => return Err(invalid(format!("unknown consistency level {}", other.0))),
    };
    let min_index = match options.min_index {
        None => None,
        Some(i) if i >= 0 => Some(i as u64),
        Some(i) => {
            return Err(invalid(format!(
                "min_index is {i}; it must not be negative"
            )))
        }
    };
    Ok((consistency, min_index))
}

/// A live entry as the client sees it: its TTL is the time left.
/// The time a TTL left is counted from: the log clock decides what is visible (`store/clock.rs`),
/// but stands still while nothing is written, so the time left is counted from this node's
/// clock when that is later.
fn ttl_clock(state: &crate::store::StateReader) -> u64 {
    state.log_clock().leader_now_ms(crate::types::now_ms())
}

/// The answer of a write that was applied (or had been, for a repeated tracked write).
struct Written {
    index: u64,
    response: Response,
    /// The first answer of a tracked write seen before; it was not applied again.
    repeated: bool,
}

/// The time to live left of a value expiring at `expires_at_ms`, counted from `now_ms`.
fn ttl_left(expires_at_ms: Option<u64>, now_ms: u64) -> Option<i64> {
    expires_at_ms.map(|at| at.saturating_sub(now_ms).max(1) as i64)
}

/// An entry as the client sees it, with the time left counted from `now_ms`. A value that is
/// not UTF-8 text (written by `put_bytes`) cannot be a Thrift string: InvalidRequest, never a
/// value changed on the way.
fn to_wire(entry: crate::store::LiveEntry, now_ms: u64) -> thrift::Result<CacheEntry> {
    let ttl_ms = ttl_left(entry.expires_at_ms, now_ms);
    match String::from_utf8(entry.value) {
        Ok(value) => Ok(CacheEntry {
            key: entry.key,
            value,
            ttl_ms,
        }),
        Err(_) => Err(invalid(format!(
            "the value of {:?} is not UTF-8 text (it was written by put_bytes): read it with get_bytes",
            entry.key
        ))),
    }
}

/// A state machine answer of the wrong kind: a bug, reported rather than hidden.
fn unexpected(response: Response, method: &str) -> thrift::Error {
    user_error(Unavailable {
        message: format!("unexpected result {response:?} for {method}"),
    })
}

/// The wire form of an admin change, checked: ids positive, the arguments each op needs.
fn to_change(wire: AdminChange) -> Result<(Change, bool), String> {
    let node_id = |n: i64| u64::try_from(n).ok().filter(|n| *n > 0);
    let id = node_id(wire.id).ok_or_else(|| format!("{} is not a node id", wire.id))?;
    let change = match wire.op {
        AdminOp::ADD_LEARNER => Change::AddLearner {
            id,
            peer_addr: wire
                .peer_addr
                .filter(|a| !a.is_empty())
                .ok_or("add-learner needs the new node's peer address")?,
        },
        AdminOp::PROMOTE => Change::Promote { id },
        AdminOp::DEMOTE => Change::Demote { id },
        AdminOp::REMOVE_NODE => Change::Remove { id },
        AdminOp::REPLACE_NODE => Change::Replace {
            old: id,
            new: wire
                .new_id
                .and_then(node_id)
                .ok_or("replace-node needs the new node's id")?,
        },
        other => return Err(format!("unknown admin operation {}", other.0)),
    };
    Ok((change, wire.force.unwrap_or(false)))
}

fn to_membership(view: MembersView) -> Membership {
    Membership {
        leader: view.leader as i64,
        last_log_index: view.last_log_index as i64,
        changing: view.changing,
        members: view
            .members
            .into_iter()
            .map(|m| MemberState {
                id: m.id as i64,
                peer_addr: m.peer_addr,
                client_addr: m.client_addr,
                voter: m.voter,
                reachable: m.reachable,
                lag: m.lag.map(|l| l as i64),
            })
            .collect(),
    }
}

/// This node's view of the cluster, from openraft's metrics.
pub fn node_status(id: NodeId, raft: &Raft) -> NodeStatus {
    let metrics = raft.metrics().borrow_watched().clone();
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
            client_addr: (!node.client_addr.is_empty()).then(|| node.client_addr.clone()),
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
        cluster_id: None,
        membership_changing: Some(membership.get_joint_config().len() > 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unframed binary `status()` call.
    fn status_call() -> Vec<u8> {
        let mut b = vec![0x80, 0x01, 0x00, 0x01, 0, 0, 0, 6];
        b.extend(b"status");
        b.extend([0, 0, 0, 1, 0]);
        b
    }

    #[test]
    fn pipelined_calls_are_each_decoded_and_garbage_is_not() {
        let two = [status_call(), status_call()].concat();
        assert_eq!(decode_connection_bytes(&two, 1024), 2);
        let framed = [
            &(status_call().len() as i32).to_be_bytes()[..],
            &status_call(),
        ]
        .concat();
        assert_eq!(decode_connection_bytes(&framed, 1024), 1);
        assert_eq!(decode_connection_bytes(b"GET / HTTP/1.1\r\n\r\n", 1024), 0);
        assert_eq!(decode_connection_bytes(&status_call()[..7], 1024), 0);
    }
}
