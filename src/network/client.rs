//! The outgoing side of the peer network: a pool of Thrift connections per peer address, used
//! by openraft (through `PeerNetwork`) and by the router (forward, read index).
//!
//! Calls are async on tokio's sockets: a request is encoded in memory, written, and its answer
//! read until `server::frame::measure` finds its end, then decoded from memory. No thread is handed
//! a call (a blocking client on tokio's blocking pool cost two thread wake-ups per call).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::future::Future;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::pin::Pin;
use std::task::{Context, Poll};
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TFieldIdentifier, TInputProtocol,
    TMessageIdentifier, TMessageType, TOutputProtocol, TStructIdentifier, TType,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use rustls::pki_types::ServerName;

use super::identity::{PeerIdentities, ReplyHeader};
use super::{Faults, SnapshotChunk};
use crate::server::frame::{self, Measured};
use crate::tls::ClientTls;
use crate::types::{Node, NodeId, Snapshot, TypeConfig, Vote};

/// Idle pooled connections older than this are dropped rather than reused. An idle connection
/// cannot tell a live path from a dead one: if the peer's address changed meanwhile (a node
/// restarted elsewhere, a container put back on its network), what is sent on it vanishes, and
/// the call waits out its whole timeout, its outcome unknown. Calls that matter keep their
/// connections busy (appends and heartbeats, a follower's leader check, forwarded writes under
/// load, each at least every heartbeat), so a short idle life costs only an occasional connect.
const POOL_MAX_IDLE: Duration = Duration::from_secs(5);
/// Idle connections kept per peer address.
const POOL_MAX_PER_PEER: usize = 64;
/// Opening a connection that takes longer than this is logged (at debug), with its name lookup.
const SLOW_CONNECT: Duration = Duration::from_millis(50);
/// Bytes read from a peer's socket at a time, at most.
const READ_CHUNK: usize = 64 * 1024;

/// The peer RPC methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Forward,
    ReadIndex,
    LeaderCheck,
    NodeInfo,
    Admin,
    PreVote,
    TransferLeader,
    Relay,
    DiskAlarm,
}

impl Method {
    /// The method's name in `peer.thrift`.
    fn name(self) -> &'static str {
        match self {
            Method::AppendEntries => "append_entries",
            Method::Vote => "vote",
            Method::InstallSnapshot => "install_snapshot",
            Method::Forward => "forward",
            Method::ReadIndex => "read_index",
            Method::LeaderCheck => "leader_check",
            Method::NodeInfo => "node_info",
            Method::Admin => "admin",
            Method::PreVote => "pre_vote",
            Method::TransferLeader => "transfer_leader",
            Method::Relay => "relay",
            Method::DiskAlarm => "disk_alarm",
        }
    }
}

/// Why a peer call failed. `Unreachable` guarantees the request was not delivered; after
/// `NoAnswer` it may or may not have been carried out.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Could not connect (or the link is cut by a test fault): nothing was sent.
    #[error("peer {addr} is unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    /// The request may have been sent but no valid answer came back in time.
    #[error("no answer from peer {addr}: {reason}")]
    NoAnswer { addr: String, reason: String },
    /// The node at `addr` is not the one meant, or not as it was (another cluster, another
    /// node, a wiped data dir): it refused the call, or its answer was not taken. Nothing
    /// was done.
    #[error("peer {addr} refused: {reason}")]
    Refused { addr: String, reason: String },
}

impl From<PeerError> for super::AskError {
    /// Unreachable: nothing was sent; refused: nothing was done; no answer: it may have been.
    fn from(e: PeerError) -> Self {
        match e {
            PeerError::Unreachable { .. } => Self::NotSent(e.to_string()),
            PeerError::Refused { .. } => Self::Refused(e.to_string()),
            PeerError::NoAnswer { .. } => {
                Self::Unknown(format!("lost contact after sending the request: {e}"))
            }
        }
    }
}

impl super::AskError {
    /// The same error, its reason passed through `f`.
    pub fn map_reason(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            Self::NotSent(r) => Self::NotSent(f(r)),
            Self::Refused(r) => Self::Refused(f(r)),
            Self::Unknown(r) => Self::Unknown(f(r)),
        }
    }
}

/// Decides, once, between "the request went out" and "the caller gave up before it did". A
/// caller that stops waiting for a call closes the gate: if that succeeds the request was never
/// sent and never will be (so it may be retried elsewhere); if not, the peer may have it.
#[derive(Debug, Default)]
pub struct SendGate(AtomicU8);

const GATE_OPEN: u8 = 0;
const GATE_SENT: u8 = 1;
const GATE_CLOSED: u8 = 2;

impl SendGate {
    /// The sender, just before writing: false if the caller gave up first.
    fn enter(&self) -> bool {
        self.0
            .compare_exchange(GATE_OPEN, GATE_SENT, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// The caller, giving up: true if the request was not sent and now will not be.
    pub fn close(&self) -> bool {
        self.0
            .compare_exchange(GATE_OPEN, GATE_CLOSED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// A connection to a peer: a socket, or TLS over one (`--peer-tls-cert`).
enum PeerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl PeerStream {
    /// The socket under the connection.
    fn socket(&self) -> &TcpStream {
        match self {
            PeerStream::Plain(stream) => stream,
            PeerStream::Tls(stream) => stream.get_ref().0,
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            PeerStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            PeerStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            PeerStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            PeerStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

struct Conn {
    /// The connection, `TCP_NODELAY` set.
    stream: PeerStream,
    /// When its last call ended: a connection idle past `POOL_MAX_IDLE` is not reused.
    last_used: Instant,
}

/// Connections to every peer, shared by all callers on this node.
pub struct PeerClients {
    /// This node's id, for checking test faults.
    from: NodeId,
    /// Stamps every call, and checks who answered.
    identities: Arc<PeerIdentities>,
    /// Links tests cut or slow (empty in a real node).
    faults: Arc<Faults>,
    /// Idle connections by peer address, at most `POOL_MAX_PER_PEER` each.
    pools: Mutex<HashMap<String, Vec<Conn>>>,
    /// How long opening a connection may take.
    connect_timeout: Duration,
    /// Largest answer accepted from a peer.
    max_message_bytes: usize,
    /// With peer TLS on: how this node opens its connections, presenting its certificate and
    /// checking that the node it reached presents the one of the id it meant to call.
    tls: Option<Arc<ClientTls>>,
    /// When each node last answered a call of this node's.
    answered: Mutex<HashMap<NodeId, Instant>>,
    /// When a call of this node's to each node last failed for want of a link (unreachable,
    /// or no answer).
    failed: Mutex<HashMap<NodeId, Instant>>,
    /// Failed calls by peer and kind (`unreachable`, `no_answer`, `refused`), for `/metrics`.
    errors: Mutex<BTreeMap<(NodeId, &'static str), u64>>,
    /// Peers whose last call failed for want of a link, since when: logged once when a peer
    /// goes down and once when it answers again, not at every failed call.
    down: Mutex<HashMap<NodeId, Instant>>,
}

impl PeerClients {
    pub fn new(
        identities: Arc<PeerIdentities>,
        faults: Arc<Faults>,
        connect_timeout: Duration,
        max_message_bytes: usize,
        tls: Option<Arc<ClientTls>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            from: identities.own_id(),
            identities,
            faults,
            pools: Mutex::new(HashMap::new()),
            connect_timeout,
            max_message_bytes,
            tls,
            answered: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            errors: Mutex::new(BTreeMap::new()),
            down: Mutex::new(HashMap::new()),
        })
    }

    /// Failed calls since the node started, by peer and kind.
    pub fn error_counts(&self) -> Vec<((NodeId, &'static str), u64)> {
        let errors = self.errors.lock().expect("errors lock");
        errors.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Whether node `id` answered a call of this node's within `within`.
    pub fn answered_within(&self, id: NodeId, within: Duration) -> bool {
        let answered = self.answered.lock().expect("answered lock");
        answered.get(&id).is_some_and(|at| at.elapsed() <= within)
    }

    /// Whether this node's last call to node `id` failed for want of a link (it was not
    /// answered since).
    pub fn failing(&self, id: NodeId) -> bool {
        let Some(failed) = self.failed.lock().expect("failed lock").get(&id).copied() else {
            return false;
        };
        let answered = self
            .answered
            .lock()
            .expect("answered lock")
            .get(&id)
            .copied();
        answered.is_none_or(|answered| answered < failed)
    }

    /// Whether a call of this node's to node `id` failed for want of a link after `since`.
    pub fn failed_since(&self, id: NodeId, since: Instant) -> bool {
        let failed = self.failed.lock().expect("failed lock");
        failed.get(&id).is_some_and(|at| *at > since)
    }

    /// When node `id` last answered a call of this node's.
    pub fn last_answer(&self, id: NodeId) -> Option<Instant> {
        self.answered
            .lock()
            .expect("answered lock")
            .get(&id)
            .copied()
    }

    /// Sends `request` to node `to` at `addr` and decodes its answer, within `timeout`.
    pub async fn rpc<Req, Resp>(
        self: &Arc<Self>,
        to: NodeId,
        addr: &str,
        method: Method,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let gate = Arc::new(SendGate::default());
        self.rpc_gated(to, addr, method, request, timeout, gate)
            .await
    }

    /// `rpc`, for a caller that may give up while it runs: the request is sent only if
    /// `gate` was not closed first, so a caller that closes it learns whether it went out.
    pub async fn rpc_gated<Req, Resp>(
        self: &Arc<Self>,
        to: NodeId,
        addr: &str,
        method: Method,
        request: &Req,
        timeout: Duration,
        gate: Arc<SendGate>,
    ) -> Result<Resp, PeerError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let write = |payload: &mut Vec<u8>| {
            bincode::serialize_into(payload, request).expect("peer requests always serialize")
        };
        let (answer, at) = self.call(to, addr, method, write, timeout, gate).await?;
        bincode::deserialize(&answer[at..]).map_err(|e| PeerError::NoAnswer {
            addr: addr.to_string(),
            reason: format!("undecodable answer: {e}"),
        })
    }

    /// `rpc_gated` of a request already encoded (`relay`): returns the answer's encoded bytes.
    pub async fn rpc_encoded(
        self: &Arc<Self>,
        to: NodeId,
        addr: &str,
        method: Method,
        request: &[u8],
        timeout: Duration,
        gate: Arc<SendGate>,
    ) -> Result<Vec<u8>, PeerError> {
        let write = |payload: &mut Vec<u8>| payload.extend_from_slice(request);
        let (mut answer, at) = self.call(to, addr, method, write, timeout, gate).await?;
        answer.drain(..at);
        Ok(answer)
    }

    /// One call: the header, then what `write_request` appends, framed as Thrift `method`.
    /// Returns the answer's payload and where its body starts (after the reply header).
    async fn call(
        self: &Arc<Self>,
        to: NodeId,
        addr: &str,
        method: Method,
        write_request: impl FnOnce(&mut Vec<u8>),
        timeout: Duration,
        gate: Arc<SendGate>,
    ) -> Result<(Vec<u8>, usize), PeerError> {
        let answer = self
            .call_once(to, addr, method, write_request, timeout, gate)
            .await;
        if let Err(e) = &answer {
            let kind = match e {
                PeerError::Unreachable { .. } => "unreachable",
                PeerError::NoAnswer { .. } => "no_answer",
                PeerError::Refused { .. } => "refused",
            };
            *self
                .errors
                .lock()
                .expect("errors lock")
                .entry((to, kind))
                .or_default() += 1;
        }
        if let Err(e @ (PeerError::Unreachable { .. } | PeerError::NoAnswer { .. })) = &answer {
            let now = Instant::now();
            self.failed.lock().expect("failed lock").insert(to, now);
            if let std::collections::hash_map::Entry::Vacant(down) =
                self.down.lock().expect("down lock").entry(to)
            {
                down.insert(now);
                tracing::warn!(peer = to, addr, error = %e, "a peer does not answer (logged again once it does)");
            }
            // The other idle connections to that address most likely share the dead path: a
            // call on each would wait out its own timeout. The next call opens a new one.
            self.forget_idle(addr);
        }
        answer
    }

    async fn call_once(
        self: &Arc<Self>,
        to: NodeId,
        addr: &str,
        method: Method,
        write_request: impl FnOnce(&mut Vec<u8>),
        timeout: Duration,
        gate: Arc<SendGate>,
    ) -> Result<(Vec<u8>, usize), PeerError> {
        if !self.faults.allows(self.from, to) {
            return Err(PeerError::Unreachable {
                addr: addr.to_string(),
                reason: "link cut by a test fault".into(),
            });
        }
        if self.faults.is_silent(self.from, to) && gate.enter() {
            tokio::time::sleep(timeout).await;
            return Err(PeerError::NoAnswer {
                addr: addr.to_string(),
                reason: "no answer within the timeout (link silenced by a test fault)".into(),
            });
        }
        if method == Method::InstallSnapshot {
            let delay = self.faults.snapshot_chunk_delay();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        let header = self.identities.call_header(to);
        let mut payload = bincode::serialize(&header).expect("peer headers always serialize");
        write_request(&mut payload);
        let message = encode_call(method, &payload);
        drop(payload);
        let no_answer = |reason: String| PeerError::NoAnswer {
            addr: addr.to_string(),
            reason,
        };
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        // How long opening a new connection took, for the error of a call that then timed out.
        let mut opened_in = None;
        let mut conn = match self.take_pooled(addr) {
            Some(conn) => conn,
            None => {
                let conn = tokio::time::timeout_at(deadline, self.connect(to, addr))
                    .await
                    .map_err(|_| PeerError::Unreachable {
                        addr: addr.to_string(),
                        reason: "connect timed out".into(),
                    })??;
                opened_in = Some(started.elapsed());
                conn
            }
        };
        if !gate.enter() {
            return Err(PeerError::Unreachable {
                addr: addr.to_string(),
                reason: "the caller gave up before the request was sent".into(),
            });
        }
        let answer = tokio::time::timeout_at(deadline, self.exchange(&mut conn, &message))
            .await
            .map_err(|_| {
                no_answer(match opened_in {
                    Some(opened) => format!(
                        "timed out after {timeout:?}, {} ms of which went to opening the connection",
                        opened.as_millis()
                    ),
                    None => format!("timed out after {timeout:?}"),
                })
            })?
            .map_err(no_answer)?;
        let payload = decode_reply(method, &answer).map_err(no_answer)?;
        conn.last_used = Instant::now();
        self.put_back(addr, conn);
        let mut body = payload.as_slice();
        let header: ReplyHeader = bincode::deserialize_from(&mut body)
            .map_err(|e| no_answer(format!("undecodable answer: {e}")))?;
        let at = payload.len() - body.len();
        let refused = |reason: String| {
            self.identities.refused_by(to, addr, &reason);
            PeerError::Refused {
                addr: addr.to_string(),
                reason,
            }
        };
        match header {
            ReplyHeader::Refused(reason) => return Err(refused(reason)),
            ReplyHeader::Accepted(stamp) => {
                self.identities.check_answer(to, &stamp).map_err(refused)?
            }
        }
        self.answered
            .lock()
            .expect("answered lock")
            .insert(to, Instant::now());
        if let Some(since) = self.down.lock().expect("down lock").remove(&to) {
            tracing::info!(
                peer = to,
                addr,
                down_ms = since.elapsed().as_millis() as u64,
                "a peer answers again"
            );
        }
        Ok((payload, at))
    }

    /// Writes one request and reads its whole answer.
    async fn exchange(&self, conn: &mut Conn, message: &[u8]) -> Result<Vec<u8>, String> {
        conn.stream
            .write_all(message)
            .await
            .map_err(|e| e.to_string())?;
        // TLS may hold the end of the message until flushed.
        conn.stream.flush().await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        loop {
            let needed = match frame::measure(&buf, self.max_message_bytes) {
                Measured::Complete(len) if len == buf.len() => return Ok(buf),
                Measured::Complete(_) => return Err("the peer sent more than one answer".into()),
                Measured::Invalid(reason) => return Err(reason),
                Measured::Incomplete(needed) => needed,
            };
            buf.reserve((needed - buf.len()).clamp(1, READ_CHUNK));
            match conn.stream.read_buf(&mut buf).await {
                Ok(0) => return Err("the peer closed the connection".into()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn put_back(&self, addr: &str, conn: Conn) {
        let mut pools = self.pools.lock().expect("pool lock");
        let pool = pools.entry(addr.to_string()).or_default();
        if pool.len() < POOL_MAX_PER_PEER {
            pool.push(conn);
        }
    }

    /// Drops every idle connection to `addr`.
    fn forget_idle(&self, addr: &str) {
        self.pools.lock().expect("pool lock").remove(addr);
    }

    fn take_pooled(&self, addr: &str) -> Option<Conn> {
        let mut pools = self.pools.lock().expect("pool lock");
        let pool = pools.get_mut(addr)?;
        while let Some(conn) = pool.pop() {
            if conn.last_used.elapsed() < POOL_MAX_IDLE && still_open(conn.stream.socket()) {
                return Some(conn);
            }
        }
        None
    }

    /// Opens a connection to node `to` at `addr` (over TLS with peer TLS on).
    async fn connect(&self, to: NodeId, addr: &str) -> Result<Conn, PeerError> {
        let unreachable = |reason: String| PeerError::Unreachable {
            addr: addr.to_string(),
            reason,
        };
        // The name is looked up apart from the connect, so that a slow lookup says so.
        let started = std::time::Instant::now();
        let looked_up = tokio::time::timeout(self.connect_timeout, tokio::net::lookup_host(addr))
            .await
            .map_err(|_| unreachable("name lookup timed out".into()))?
            .map_err(|e| unreachable(format!("name lookup failed: {e}")))?;
        let lookup = started.elapsed();
        let mut last_error = None;
        let mut stream = None;
        for resolved in looked_up {
            let left = self.connect_timeout.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, TcpStream::connect(resolved)).await {
                Ok(Ok(connected)) => {
                    stream = Some(connected);
                    break;
                }
                Ok(Err(e)) => last_error = Some(e.to_string()),
                Err(_) => last_error = Some("connect timed out".into()),
            }
        }
        let Some(stream) = stream else {
            let why = last_error.unwrap_or_else(|| "the name has no address".into());
            return Err(unreachable(format!(
                "{why} (name lookup took {} ms)",
                lookup.as_millis()
            )));
        };
        if started.elapsed() >= SLOW_CONNECT {
            tracing::debug!(
                %addr,
                lookup_ms = lookup.as_millis() as u64,
                total_ms = started.elapsed().as_millis() as u64,
                "slow connect to a peer"
            );
        }
        stream
            .set_nodelay(true)
            .map_err(|e| unreachable(e.to_string()))?;
        let stream = match &self.tls {
            None => PeerStream::Plain(stream),
            Some(tls) => {
                let name = ServerName::try_from(crate::tls::peer_name(to))
                    .map_err(|e| unreachable(e.to_string()))?;
                let left = self.connect_timeout.saturating_sub(started.elapsed());
                let handshake = tls.connector().connect(name, stream);
                let stream = tokio::time::timeout(left, handshake)
                    .await
                    .map_err(|_| unreachable("TLS handshake timed out".into()))?
                    .map_err(|e| unreachable(format!("TLS handshake failed: {e}")))?;
                PeerStream::Tls(Box::new(stream))
            }
        };
        Ok(Conn {
            stream,
            last_used: Instant::now(),
        })
    }
}

/// Whether an idle pooled connection can still carry a request: the peer has not closed it (a
/// crashed or restarted peer leaves end-of-file behind) and sent nothing unasked. Sending on a
/// closed connection would turn a request that was never delivered into one whose outcome is
/// unknown.
fn still_open(stream: &TcpStream) -> bool {
    matches!(stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Sequence number of every call: one call per connection at a time, so any fixed number
/// matches an answer to its call.
const SEQUENCE: i32 = 1;

/// Encodes a call of `method` (every peer method takes one `binary request`).
fn encode_call(method: Method, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 64);
    let mut protocol = TBinaryOutputProtocol::new(&mut out, true);
    let written: thrift::Result<()> = (|| {
        let ident = TMessageIdentifier::new(method.name(), TMessageType::Call, SEQUENCE);
        protocol.write_message_begin(&ident)?;
        protocol.write_struct_begin(&TStructIdentifier::new("args"))?;
        protocol.write_field_begin(&TFieldIdentifier::new("request", TType::String, 1))?;
        protocol.write_bytes(payload)?;
        protocol.write_field_end()?;
        protocol.write_field_stop()?;
        protocol.write_struct_end()?;
        protocol.write_message_end()?;
        protocol.flush()
    })();
    written.expect("writing to memory cannot fail");
    out
}

/// Decodes the answer to a call of `method`: its `binary` result, or why there is none.
fn decode_reply(method: Method, answer: &[u8]) -> Result<Vec<u8>, String> {
    let limits = crate::server::wire::limits(answer.len());
    let mut protocol = TBinaryInputProtocol::with_config(answer, true, limits);
    let result: thrift::Result<Option<Vec<u8>>> = (|| {
        let ident = protocol.read_message_begin()?;
        if ident.message_type == TMessageType::Exception {
            let e = thrift::Error::read_application_error_from_in_protocol(&mut protocol)?;
            return Err(thrift::Error::Application(e));
        }
        if ident.message_type != TMessageType::Reply
            || ident.name != method.name()
            || ident.sequence_number != SEQUENCE
        {
            return Ok(None);
        }
        let mut success = None;
        protocol.read_struct_begin()?;
        loop {
            let field = protocol.read_field_begin()?;
            match (field.field_type, field.id) {
                (TType::Stop, _) => break,
                (TType::String, Some(0)) => success = Some(protocol.read_bytes()?),
                (other, _) => protocol.skip(other)?,
            }
            protocol.read_field_end()?;
        }
        protocol.read_struct_end()?;
        Ok(success)
    })();
    match result {
        Ok(Some(payload)) => Ok(payload),
        Ok(None) => Err(format!("not an answer to {}", method.name())),
        Err(e) => Err(format!("undecodable answer: {e}")),
    }
}

/// openraft's view of the peer network: one `PeerConnection` per target node.
pub struct PeerNetwork {
    /// The pool every connection openraft asks for shares.
    clients: Arc<PeerClients>,
}

impl PeerNetwork {
    pub fn new(clients: Arc<PeerClients>) -> Self {
        Self { clients }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConnection {
        PeerConnection {
            target,
            addr: node.peer_addr.clone(),
            clients: self.clients.clone(),
        }
    }
}

/// Sends openraft's messages to one target node.
pub struct PeerConnection {
    /// The node this connection reaches.
    target: NodeId,
    /// Its peer address, as the membership records it.
    addr: String,
    /// The shared pool the calls go through.
    clients: Arc<PeerClients>,
}

/// How long the last chunk of a snapshot may take: its answer comes once the follower has
/// installed the snapshot.
const SNAPSHOT_INSTALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Times a snapshot chunk is sent again after no (valid) answer came, before the transfer is
/// given up (openraft starts another one later).
const SNAPSHOT_CHUNK_ATTEMPTS: u32 = 3;
/// Snapshot chunk size when openraft names none.
const SNAPSHOT_CHUNK_BYTES: usize = 4 * 1024 * 1024;

impl PeerConnection {
    async fn call<Req, Resp>(
        &self,
        method: Method,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let answer: Result<Resp, String> = self
            .clients
            .rpc(self.target, &self.addr, method, request, timeout)
            .await
            .map_err(peer_error)?;
        // The receiver's openraft failed for good (it is stopping): as good as unreachable.
        answer.map_err(|e| RPCError::Unreachable(Unreachable::new(&AnyError::error(e))))
    }

    /// Sends one snapshot chunk, again after no answer (a damaged chunk is refused that way),
    /// until it is answered or the transfer is cancelled.
    async fn send_chunk(
        &self,
        chunk: &SnapshotChunk,
        timeout: Duration,
        cancel: &mut (impl Future<Output = ReplicationClosed> + Unpin),
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .clients
                .rpc::<_, Result<SnapshotResponse<TypeConfig>, String>>(
                    self.target,
                    &self.addr,
                    Method::InstallSnapshot,
                    chunk,
                    timeout,
                );
            let answer = tokio::select! {
                closed = &mut *cancel => return Err(StreamingError::Closed(closed)),
                answer = sent => answer,
            };
            match answer {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(refused)) => {
                    return Err(StreamingError::Network(NetworkError::new(
                        &AnyError::error(refused),
                    )))
                }
                Err(e @ PeerError::NoAnswer { .. }) if attempt < SNAPSHOT_CHUNK_ATTEMPTS => {
                    tracing::debug!(target = self.target, offset = chunk.offset, error = %e, "snapshot chunk sent again");
                }
                Err(e) => return Err(StreamingError::Unreachable(Unreachable::new(&e))),
            }
        }
    }
}

/// openraft's error for a failed peer call.
fn peer_error(e: PeerError) -> RPCError<TypeConfig> {
    match e {
        PeerError::Unreachable { .. } | PeerError::Refused { .. } => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        PeerError::NoAnswer { .. } => RPCError::Network(NetworkError::new(&e)),
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = tokio::fs::File;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Method::AppendEntries, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Method::Vote, &rpc, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Method::PreVote, &rpc, option.hard_ttl()).await
    }

    async fn transfer_leader(
        &mut self,
        request: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Method::TransferLeader, &request, option.hard_ttl())
            .await
    }

    /// Streams the snapshot file in chunks, each with its CRC-32; the answer to the last one
    /// comes once the follower installed it.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let io_err = |e: std::io::Error| {
            StreamingError::StorageError(openraft::StorageError::from_io_error(
                openraft::ErrorSubject::Snapshot(Some(snapshot.meta.signature())),
                openraft::ErrorVerb::Read,
                e,
            ))
        };
        let mut file = snapshot.snapshot;
        let total = file.metadata().await.map_err(io_err)?.len();
        file.seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(io_err)?;
        let chunk_bytes = option
            .snapshot_chunk_size()
            .unwrap_or(SNAPSHOT_CHUNK_BYTES)
            .max(1);
        let transfer = rand_u64();
        let mut cancel = Box::pin(cancel);
        let mut offset = 0u64;
        loop {
            let mut data = Vec::with_capacity(chunk_bytes.min(total as usize));
            (&mut file)
                .take(chunk_bytes as u64)
                .read_to_end(&mut data)
                .await
                .map_err(io_err)?;
            let done = offset + data.len() as u64 >= total;
            let checksum = crc32fast::hash(&data);
            if self.clients.faults.take_damaged_snapshot_chunk() && !data.is_empty() {
                data[0] ^= 0x01;
            }
            let len = data.len() as u64;
            let chunk = SnapshotChunk {
                vote,
                meta: snapshot.meta.clone(),
                transfer,
                offset,
                data,
                done,
                checksum,
            };
            let timeout = if done {
                SNAPSHOT_INSTALL_TIMEOUT
            } else {
                option.hard_ttl()
            };
            let response = self.send_chunk(&chunk, timeout, &mut cancel).await?;
            // The follower has seen a newer leader, or has installed it: openraft takes over.
            if done || response.vote > vote {
                return Ok(response);
            }
            offset += len;
        }
    }
}

/// A transfer id: unique enough to tell one transfer from the next.
fn rand_u64() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that accepts connections and never answers on them: a path where what is sent
    /// vanishes. Returns its address and the number of connections it accepted so far.
    async fn black_hole() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        (addr, accepted)
    }

    /// Node 1's peer clients, on a data dir of its own (keep the dir while they are used).
    fn node_1_peers() -> (tempfile::TempDir, Arc<PeerClients>) {
        let (dir, identities) = crate::network::identity::tests::node(1);
        let peers = PeerClients::new(
            identities,
            Arc::new(Faults::default()),
            Duration::from_secs(1),
            1 << 20,
            None,
        );
        (dir, peers)
    }

    #[tokio::test]
    async fn a_call_that_gets_no_answer_drops_the_other_idle_connections_to_that_peer() {
        let (_dir, peers) = node_1_peers();
        let (addr, accepted) = black_hole().await;
        // Three idle connections in the pool, as calls that were answered leave them.
        for _ in 0..3 {
            let conn = peers.connect(2, &addr).await.unwrap();
            peers.put_back(&addr, conn);
        }
        tokio::time::timeout(Duration::from_secs(1), async {
            while accepted.load(Ordering::SeqCst) < 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the black hole accepts the pooled connections");

        let call = |timeout| peers.rpc::<_, bool>(2, &addr, Method::LeaderCheck, &(), timeout);
        let first = call(Duration::from_millis(100)).await;
        assert!(
            matches!(first, Err(PeerError::NoAnswer { .. })),
            "{first:?}"
        );
        assert!(peers.failing(2));
        assert!(
            peers.take_pooled(&addr).is_none(),
            "the idle connections that shared the silent path are gone"
        );
        // The next call opens a connection of its own instead of waiting on another old one.
        let second = call(Duration::from_millis(100)).await;
        assert!(
            matches!(&second, Err(PeerError::NoAnswer { reason, .. }) if reason.contains("went to opening the connection")),
            "{second:?}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn an_idle_connection_past_its_idle_life_is_not_reused() {
        let (_dir, peers) = node_1_peers();
        let (addr, _accepted) = black_hole().await;
        let mut conn = peers.connect(2, &addr).await.unwrap();
        conn.last_used = Instant::now() - POOL_MAX_IDLE;
        peers.put_back(&addr, conn);
        assert!(peers.take_pooled(&addr).is_none());
        let conn = peers.connect(2, &addr).await.unwrap();
        peers.put_back(&addr, conn);
        assert!(peers.take_pooled(&addr).is_some(), "a fresh one is");
    }
}
