//! The outgoing side of the peer network: a pool of Thrift connections per peer address, used
//! by openraft (through `PeerNetwork`) and by the router (forward, read index).
//!
//! The `thrift` crate is blocking, so each call runs on tokio's blocking pool with socket
//! timeouts set from the caller's deadline.

use std::collections::HashMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::transport::{TBufferedReadTransport, TBufferedWriteTransport};
use thrift::TConfiguration;

use super::Faults;
use crate::gen::peer::{RaftPeerSyncClient, TRaftPeerSyncClient};
use crate::types::{Node, NodeId, TypeConfig};

type ThriftClient = RaftPeerSyncClient<
    TBinaryInputProtocol<TBufferedReadTransport<TcpStream>>,
    TBinaryOutputProtocol<TBufferedWriteTransport<TcpStream>>,
>;

/// Idle pooled connections older than this are dropped rather than reused, so a call never
/// lands on a connection the peer has already closed for idleness.
const POOL_MAX_IDLE: Duration = Duration::from_secs(30);
/// Idle connections kept per peer address.
const POOL_MAX_PER_PEER: usize = 64;

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
}

struct Conn {
    client: ThriftClient,
    /// A handle on the same socket, to set per-call timeouts.
    stream: TcpStream,
    last_used: Instant,
}

/// Connections to every peer, shared by all callers on this node.
pub struct PeerClients {
    /// This node's id, for checking test faults.
    from: NodeId,
    faults: Arc<Faults>,
    pools: Mutex<HashMap<String, Vec<Conn>>>,
    connect_timeout: Duration,
    /// Largest answer accepted from a peer.
    max_message_bytes: usize,
}

impl PeerClients {
    pub fn new(
        from: NodeId,
        faults: Arc<Faults>,
        connect_timeout: Duration,
        max_message_bytes: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            from,
            faults,
            pools: Mutex::new(HashMap::new()),
            connect_timeout,
            max_message_bytes,
        })
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
        if !self.faults.allows(self.from, to) {
            return Err(PeerError::Unreachable {
                addr: addr.to_string(),
                reason: "link cut by a test fault".into(),
            });
        }
        if method == Method::InstallSnapshot {
            let delay = self.faults.snapshot_chunk_delay();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        let payload = bincode::serialize(request).expect("peer requests always serialize");
        let this = self.clone();
        let addr_owned = addr.to_string();
        let answer = tokio::task::spawn_blocking(move || {
            this.call_blocking(&addr_owned, method, payload, timeout)
        })
        .await
        .map_err(|e| PeerError::NoAnswer {
            addr: addr.to_string(),
            reason: e.to_string(),
        })??;
        bincode::deserialize(&answer).map_err(|e| PeerError::NoAnswer {
            addr: addr.to_string(),
            reason: format!("undecodable answer: {e}"),
        })
    }

    fn call_blocking(
        &self,
        addr: &str,
        method: Method,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, PeerError> {
        let mut conn = match self.take_pooled(addr) {
            Some(conn) => conn,
            None => self.connect(addr)?,
        };
        let no_answer = |reason: String| PeerError::NoAnswer {
            addr: addr.to_string(),
            reason,
        };
        conn.stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| no_answer(e.to_string()))?;
        conn.stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| no_answer(e.to_string()))?;
        let answer = match method {
            Method::AppendEntries => conn.client.append_entries(payload),
            Method::Vote => conn.client.vote(payload),
            Method::InstallSnapshot => conn.client.install_snapshot(payload),
            Method::Forward => conn.client.forward(payload),
            Method::ReadIndex => conn.client.read_index(payload),
            Method::LeaderCheck => conn.client.leader_check(payload),
            Method::NodeInfo => conn.client.node_info(payload),
            Method::Admin => conn.client.admin(payload),
        };
        let answer = answer.map_err(|e| no_answer(e.to_string()))?;
        conn.last_used = Instant::now();
        let mut pools = self.pools.lock().expect("pool lock");
        let pool = pools.entry(addr.to_string()).or_default();
        if pool.len() < POOL_MAX_PER_PEER {
            pool.push(conn);
        }
        Ok(answer)
    }

    fn take_pooled(&self, addr: &str) -> Option<Conn> {
        let mut pools = self.pools.lock().expect("pool lock");
        let pool = pools.get_mut(addr)?;
        while let Some(conn) = pool.pop() {
            if conn.last_used.elapsed() < POOL_MAX_IDLE && still_open(&conn.stream) {
                return Some(conn);
            }
        }
        None
    }

    fn connect(&self, addr: &str) -> Result<Conn, PeerError> {
        let unreachable = |reason: String| PeerError::Unreachable {
            addr: addr.to_string(),
            reason,
        };
        let sock_addr = addr
            .to_socket_addrs()
            .map_err(|e| unreachable(e.to_string()))?
            .next()
            .ok_or_else(|| unreachable("address resolves to nothing".into()))?;
        let stream = TcpStream::connect_timeout(&sock_addr, self.connect_timeout)
            .map_err(|e| unreachable(e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| unreachable(e.to_string()))?;
        let config = TConfiguration::builder()
            .max_string_size(Some(self.max_message_bytes))
            .max_container_size(Some(self.max_message_bytes))
            .build()
            .expect("limits are positive");
        let clone = |s: &TcpStream| s.try_clone().map_err(|e| unreachable(e.to_string()));
        let input = TBinaryInputProtocol::with_config(
            TBufferedReadTransport::new(clone(&stream)?),
            true,
            config,
        );
        let output =
            TBinaryOutputProtocol::new(TBufferedWriteTransport::new(clone(&stream)?), true);
        Ok(Conn {
            client: RaftPeerSyncClient::new(input, output),
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
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let open =
        matches!(stream.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    open && stream.set_nonblocking(false).is_ok()
}

/// openraft's view of the peer network: one `PeerConnection` per target node.
pub struct PeerNetwork {
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
    target: NodeId,
    addr: String,
    clients: Arc<PeerClients>,
}

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &self,
        method: Method,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Resp, RaftError<NodeId, E>> = self
            .clients
            .rpc(self.target, &self.addr, method, request, timeout)
            .await
            .map_err(|e| match e {
                PeerError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                PeerError::NoAnswer { .. } => RPCError::Network(NetworkError::new(&e)),
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(Method::AppendEntries, &rpc, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Method::InstallSnapshot, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(Method::Vote, &rpc, option.hard_ttl()).await
    }
}
