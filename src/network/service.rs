//! The incoming side of the peer network: decodes each `RaftPeer` call, hands it to openraft or
//! to the router, and encodes the `Result` back. Errors inside a `Result` travel to the caller;
//! only an undecodable request is a Thrift-level error.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    VoteRequest,
};
use openraft::ServerState;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thrift::{ApplicationError, ApplicationErrorKind, ProtocolError, ProtocolErrorKind};
use tokio::io::AsyncWriteExt;

use super::identity::{Admission, CallHeader, PeerIdentities, ReplyHeader};
use super::messages::{
    AdminError, AskError, ForwardError, ForwardRequest, ForwardedAdmin, MembersView, NodeInfo,
    NodeInfoRequest, RelayRequest, RelayedCall, SnapshotChunk,
};
use super::reach::Inbound;
use super::{peer_addr, PeerClients, PeerMethod};
use crate::gen::peer::{RaftPeerSyncHandler, RaftPeerSyncProcessor};
use crate::server::{self, Service};
use crate::store::SnapshotInbox;
use crate::types::{Applied, Raft, Request, Snapshot, TypeConfig, Vote};

/// What a leader does for its followers, as the peer service needs it (the router does it).
pub trait LeaderSide: Send + Sync + 'static {
    /// Carries out writes a follower forwarded, one answer per write, within `deadline`.
    fn write_forwarded(
        &self,
        requests: Vec<Request>,
        deadline: Duration,
    ) -> impl Future<Output = Vec<Result<Applied, ForwardError>>> + Send;

    /// A read index for a follower's linearizable read, if this node leads.
    fn read_index_as_leader(
        &self,
    ) -> impl Future<Output = Result<Option<u64>, ForwardError>> + Send;
}

/// What the membership answers on the peer port, as the peer service needs it.
pub trait MembershipSide: Send + Sync + 'static {
    /// The leader sent entries: this node is (still) in a cluster.
    fn heard_from_leader(&self);

    /// The leader's probe before it adds this node.
    fn node_info(&self, request: NodeInfoRequest) -> Result<NodeInfo, String>;

    /// An admin request a follower forwarded to this node as leader, with the admin token it
    /// must carry.
    fn admin_as_leader(
        &self,
        request: ForwardedAdmin,
    ) -> impl Future<Output = Result<MembersView, AdminError>> + Send;
}

/// The `RaftPeer` handler of one node.
pub struct PeerService<L, M> {
    raft: Raft,
    /// Carries out forwarded writes and read-index requests as leader.
    leader_side: Arc<L>,
    /// For asking the leader whether it still leads while a snapshot chunk is processed.
    peers: Arc<PeerClients>,
    /// Answers the leader's probe and admin requests forwarded to this node as leader.
    membership: Arc<M>,
    /// Checks who each call is from and for.
    identities: Arc<PeerIdentities>,
    /// Where received snapshots are written.
    inbox: SnapshotInbox,
    /// The snapshot transfer under way, if any.
    incoming: tokio::sync::Mutex<Option<Incoming>>,
    /// Who called this node, for the leader's check that its followers reach it.
    inbound: Arc<Inbound>,
    /// Where other nodes' disk alarms go (none: they are dropped).
    disk: Option<Arc<crate::disk::DiskGuard>>,
    /// With peer TLS on: a call is refused unless the caller's certificate names the node
    /// its header claims to be (`tls::peer_name`).
    check_certificates: bool,
}

/// A snapshot transfer being received.
struct Incoming {
    transfer: u64,
    /// Bytes written so far: where the next chunk starts.
    offset: u64,
    file: tokio::fs::File,
}

impl<L: LeaderSide, M: MembershipSide> PeerService<L, M> {
    pub fn new(
        raft: Raft,
        leader_side: Arc<L>,
        peers: Arc<PeerClients>,
        membership: Arc<M>,
        identities: Arc<PeerIdentities>,
        inbox: SnapshotInbox,
        inbound: Arc<Inbound>,
    ) -> Self {
        Self {
            raft,
            leader_side,
            peers,
            membership,
            identities,
            inbox,
            incoming: tokio::sync::Mutex::new(None),
            inbound,
            disk: None,
            check_certificates: false,
        }
    }

    /// With `check`, every call must come with a peer certificate naming its sender.
    pub fn with_peer_certificates(mut self, check: bool) -> Self {
        self.check_certificates = check;
        self
    }

    /// Takes other nodes' disk alarms to `disk`.
    pub fn with_disk(mut self, disk: Arc<crate::disk::DiskGuard>) -> Self {
        self.disk = Some(disk);
        self
    }

    /// Writes one snapshot chunk, and has openraft install the snapshot after the last one,
    /// keeping the sending leader's lease alive here meanwhile.
    ///
    /// A follower busy with a long transfer or install must not call an election against the
    /// leader that is sending it (a 1.2 GB snapshot once made a follower depose a healthy leader
    /// and the transfer start over, without end). So each chunk counts as a heartbeat from its
    /// sender, and while the install runs this node asks the sender every heartbeat interval
    /// whether it still leads, counting each "yes" as a heartbeat. A leader that died or was
    /// deposed says no or does not answer, and then the election timer runs as usual.
    async fn install_snapshot_chunk(
        &self,
        chunk: SnapshotChunk,
    ) -> Result<SnapshotResponse<TypeConfig>, String> {
        let vote = chunk.vote;
        if let Some(higher) = self.heard_from_leader(vote).await {
            return Ok(SnapshotResponse::new(higher));
        }
        let mut incoming = self.incoming.lock().await;
        if chunk.offset == 0 {
            let file = self.inbox.begin().await.map_err(|e| e.to_string())?;
            *incoming = Some(Incoming {
                transfer: chunk.transfer,
                offset: 0,
                file,
            });
        }
        let receiving = match incoming.as_mut() {
            Some(at) if at.transfer == chunk.transfer && at.offset == chunk.offset => at,
            Some(at) if at.transfer == chunk.transfer => {
                return Err(format!(
                    "snapshot chunk at offset {} out of order: expected offset {}",
                    chunk.offset, at.offset
                ))
            }
            _ => return Err("snapshot chunk of a transfer not under way".into()),
        };
        let written = receiving.file.write_all(&chunk.data).await;
        written.map_err(|e| format!("writing the snapshot: {e}"))?;
        receiving.offset += chunk.data.len() as u64;
        if !chunk.done {
            return Ok(SnapshotResponse::new(self.current_vote()));
        }
        let Incoming { mut file, .. } = incoming.take().expect("checked above");
        drop(incoming);
        file.flush()
            .await
            .map_err(|e| format!("writing the snapshot: {e}"))?;
        let snapshot = Snapshot {
            meta: chunk.meta,
            snapshot: file,
        };
        let interval = Duration::from_millis(self.raft.config().heartbeat_interval);
        let install = self.raft.install_full_snapshot(vote, snapshot);
        tokio::pin!(install);
        loop {
            tokio::select! {
                answer = &mut install => return answer.map_err(|e| e.to_string()),
                () = tokio::time::sleep(interval) => {
                    if self.still_leads(vote, interval).await {
                        self.heard_from_leader(vote).await;
                    }
                }
            }
        }
    }

    /// This node's vote.
    fn current_vote(&self) -> Vote {
        self.raft.metrics().borrow_watched().vote
    }

    /// Tells openraft it heard from the leader holding `vote`: an empty append-entries, which
    /// appends and commits nothing, from the start of the log (so it matches any log). A vote
    /// older than this node's is refused by openraft as usual.
    /// Answers the higher vote this node holds, if it refused the leader's.
    async fn heard_from_leader(&self, vote: Vote) -> Option<Vote> {
        let heartbeat = AppendEntriesRequest {
            vote,
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        match self.raft.append_entries(heartbeat).await {
            Ok(AppendEntriesResponse::HigherVote(higher)) => Some(higher),
            _ => None,
        }
    }

    /// Whether the node that holds `vote` says it still leads with it, within `timeout`.
    async fn still_leads(&self, vote: Vote, timeout: Duration) -> bool {
        let leader = vote.leader_id.node_id;
        let Some(addr) = peer_addr(&self.raft, leader) else {
            return false;
        };
        self.peers
            .rpc::<_, bool>(leader, &addr, PeerMethod::LeaderCheck, &vote, timeout)
            .await
            .unwrap_or(false)
    }
}

/// Refuses a snapshot chunk whose data does not match the checksum it was sent with: the
/// leader sees the call fail and sends the chunk again.
fn check_chunk(chunk: &SnapshotChunk) -> thrift::Result<()> {
    let found = crc32fast::hash(&chunk.data);
    if found == chunk.checksum {
        return Ok(());
    }
    tracing::warn!(
        offset = chunk.offset,
        bytes = chunk.data.len(),
        "a snapshot chunk failed its checksum; refused"
    );
    Err(thrift::Error::Protocol(ProtocolError::new(
        ProtocolErrorKind::InvalidData,
        format!(
            "the snapshot chunk at offset {} fails its checksum (crc32 {found:08x}, sent {:08x})",
            chunk.offset, chunk.checksum
        ),
    )))
}

fn decode<T: DeserializeOwned>(raw: &[u8]) -> thrift::Result<T> {
    bincode::deserialize(raw).map_err(|e| {
        thrift::Error::Protocol(ProtocolError::new(
            ProtocolErrorKind::InvalidData,
            format!("undecodable peer request: {e}"),
        ))
    })
}

fn encode<T: Serialize>(value: &T) -> thrift::Result<Vec<u8>> {
    Ok(bincode::serialize(value).expect("peer answers always serialize"))
}

impl<L: LeaderSide, M: MembershipSide> Service for PeerService<L, M> {
    /// Two passes of the generated processor, as in `CacheApi::call`: one decodes the call,
    /// the other writes its answer back.
    async fn call(
        &self,
        request: Vec<u8>,
        protocol: server::Protocol,
        connection: &server::Connection,
    ) -> Option<Vec<u8>> {
        let (method, payload) = {
            let decoded = Decoded::default();
            let processor = RaftPeerSyncProcessor::new(&decoded);
            let refusal = server::process(&processor, &request, protocol).ok()?;
            match decoded.0.into_inner() {
                Some(call) => call,
                None => return Some(refusal),
            }
        };
        let answer = self.admit_and_execute(method, &payload, connection).await;
        server::process(
            &RaftPeerSyncProcessor::new(Answer(RefCell::new(Some(answer)))),
            &request,
            protocol,
        )
        .ok()
    }
}

impl<L: LeaderSide, M: MembershipSide> PeerService<L, M> {
    /// Checks who the call is from and for (`identity.rs`), then carries it out; the answer
    /// starts with this node's stamp, or is only the refusal.
    async fn admit_and_execute(
        &self,
        method: PeerMethod,
        payload: &[u8],
        connection: &server::Connection,
    ) -> thrift::Result<Vec<u8>> {
        let mut body = payload;
        let header: CallHeader = bincode::deserialize_from(&mut body).map_err(|e| {
            thrift::Error::Protocol(ProtocolError::new(
                ProtocolErrorKind::InvalidData,
                format!("undecodable peer request header: {e}"),
            ))
        })?;
        if self.check_certificates {
            let claimed = crate::tls::peer_name(header.from.node_id);
            let named = connection
                .certificate
                .as_ref()
                .is_some_and(|cert| crate::tls::certificate_names(cert, &claimed));
            if !named {
                let reason = format!(
                    "the caller claims to be node {} but its certificate does not name {claimed}",
                    header.from.node_id
                );
                let refused =
                    self.identities
                        .refuse::<()>(header.from.node_id, "certificate", reason);
                return encode(&ReplyHeader::Refused(refused.unwrap_err()));
            }
        }
        let admission = match method {
            PeerMethod::NodeInfo => Admission::Probe,
            _ => Admission::Member,
        };
        if let Err(reason) = self.identities.admit(&header, admission) {
            return encode(&ReplyHeader::Refused(reason));
        }
        // Only what a follower sends its leader counts: appends and snapshot chunks flow from
        // the leader, and noting their sender on every one would only cost.
        if !matches!(
            method,
            PeerMethod::AppendEntries | PeerMethod::InstallSnapshot
        ) {
            self.inbound.heard(header.from.node_id);
        }
        let answer = self.execute(method, body).await?;
        // Stamped after: the probe may have made this node adopt the caller's cluster id.
        let mut out = encode(&ReplyHeader::Accepted(self.identities.stamp()))?;
        out.extend_from_slice(&answer);
        Ok(out)
    }

    async fn execute(&self, method: PeerMethod, payload: &[u8]) -> thrift::Result<Vec<u8>> {
        match method {
            PeerMethod::AppendEntries => {
                let request: AppendEntriesRequest<TypeConfig> = decode(payload)?;
                self.membership.heard_from_leader();
                encode(&stringly(self.raft.append_entries(request).await))
            }
            PeerMethod::Vote => {
                let request: VoteRequest<TypeConfig> = decode(payload)?;
                encode(&stringly(self.raft.vote(request).await))
            }
            PeerMethod::PreVote => {
                let request: VoteRequest<TypeConfig> = decode(payload)?;
                encode(&stringly(self.raft.pre_vote(request).await))
            }
            PeerMethod::TransferLeader => {
                let request: TransferLeaderRequest<TypeConfig> = decode(payload)?;
                encode(&stringly(self.raft.handle_transfer_leader(request).await))
            }
            PeerMethod::InstallSnapshot => {
                let chunk: SnapshotChunk = decode(payload)?;
                check_chunk(&chunk)?;
                encode(&self.install_snapshot_chunk(chunk).await)
            }
            PeerMethod::Forward => {
                let ForwardRequest {
                    requests,
                    deadline_ms,
                } = decode(payload)?;
                let deadline = Duration::from_millis(deadline_ms);
                encode(&self.leader_side.write_forwarded(requests, deadline).await)
            }
            PeerMethod::ReadIndex => {
                let () = decode(payload)?;
                encode(&self.leader_side.read_index_as_leader().await)
            }
            PeerMethod::LeaderCheck => {
                let vote: Vote = decode(payload)?;
                let metrics = self.raft.metrics();
                let metrics = metrics.borrow_watched();
                encode(&(metrics.state == ServerState::Leader && metrics.vote == vote))
            }
            PeerMethod::NodeInfo => {
                let request: NodeInfoRequest = decode(payload)?;
                encode(&self.membership.node_info(request))
            }
            PeerMethod::Admin => {
                let request: ForwardedAdmin = decode(payload)?;
                encode(&self.membership.admin_as_leader(request).await)
            }
            PeerMethod::Relay => {
                let request: RelayRequest = decode(payload)?;
                encode(&self.relay(request).await)
            }
            PeerMethod::DiskAlarm => {
                let alarm: crate::disk::DiskAlarm = decode(payload)?;
                if let Some(disk) = &self.disk {
                    disk.report(alarm);
                }
                encode(&())
            }
        }
    }

    /// Makes a call meant for the leader in the caller's place, and hands back the leader's
    /// encoded answer. Never relays further: the caller reaches this node, and this node
    /// either reaches the leader or says so.
    async fn relay(&self, request: RelayRequest) -> Result<Vec<u8>, AskError> {
        let RelayRequest {
            to,
            call,
            request,
            timeout_ms,
        } = request;
        let method = match call {
            RelayedCall::Forward => PeerMethod::Forward,
            RelayedCall::ReadIndex => PeerMethod::ReadIndex,
            RelayedCall::Admin => PeerMethod::Admin,
        };
        let me = self.identities.own_id();
        let leader = self.raft.metrics().borrow_watched().current_leader;
        if leader != Some(to) {
            return Err(AskError::NotSent(format!(
                "node {me} does not follow node {to} (its leader: {leader:?})"
            )));
        }
        if self.peers.failing(to) {
            return Err(AskError::NotSent(format!(
                "node {me}'s own last call to node {to} failed too"
            )));
        }
        let Some(addr) = peer_addr(&self.raft, to) else {
            return Err(AskError::NotSent(format!(
                "node {to} is not in node {me}'s membership"
            )));
        };
        let gate = Arc::new(super::SendGate::default());
        let timeout = Duration::from_millis(timeout_ms);
        let call = self
            .peers
            .rpc_encoded(to, &addr, method, &request, timeout, gate.clone());
        tokio::select! {
            biased;
            answer = call => answer.map_err(AskError::from),
            // A leader that died or was deposed: as `leader::LeaderView::ask` does.
            () = super::stopped_following(&self.raft, to) => Err(if gate.close() {
                AskError::NotSent(format!(
                    "node {me} stopped following node {to} before the request was sent"
                ))
            } else {
                AskError::Unknown(format!(
                    "node {me} stopped following node {to} while the request was with it"
                ))
            }),
        }
    }
}

/// openraft's answer with its error as text: the caller only reports it.
fn stringly<T, E: std::fmt::Display>(answer: Result<T, E>) -> Result<T, String> {
    answer.map_err(|e| e.to_string())
}

/// The first pass: records which method was called, with its payload.
#[derive(Default)]
struct Decoded(RefCell<Option<(PeerMethod, Vec<u8>)>>);

impl Decoded {
    fn record(&self, method: PeerMethod, payload: Vec<u8>) -> thrift::Result<Vec<u8>> {
        *self.0.borrow_mut() = Some((method, payload));
        Err(thrift::Error::Application(ApplicationError::new(
            ApplicationErrorKind::Unknown,
            "decoded",
        )))
    }
}

impl RaftPeerSyncHandler for &Decoded {
    fn handle_append_entries(&self, request: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.record(PeerMethod::AppendEntries, request)
    }
    fn handle_vote(&self, request: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.record(PeerMethod::Vote, request)
    }
    fn handle_install_snapshot(&self, request: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.record(PeerMethod::InstallSnapshot, request)
    }
    fn handle_forward(&self, request: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.record(PeerMethod::Forward, request)
    }
    fn handle_read_index(&self, request: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.record(PeerMethod::ReadIndex, request)
    }
    fn handle_leader_check(&self, request: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.record(PeerMethod::LeaderCheck, request)
    }
    fn handle_node_info(&self, request: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.record(PeerMethod::NodeInfo, request)
    }
    fn handle_admin(&self, request: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.record(PeerMethod::Admin, request)
    }
    fn handle_pre_vote(&self, request: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.record(PeerMethod::PreVote, request)
    }
    fn handle_transfer_leader(&self, request: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.record(PeerMethod::TransferLeader, request)
    }
    fn handle_relay(&self, request: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.record(PeerMethod::Relay, request)
    }
    fn handle_disk_alarm(&self, request: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.record(PeerMethod::DiskAlarm, request)
    }
}

/// The second pass: every method answers with the same encoded result.
struct Answer(RefCell<Option<thrift::Result<Vec<u8>>>>);

impl Answer {
    fn take(&self) -> thrift::Result<Vec<u8>> {
        self.0.borrow_mut().take().unwrap_or_else(|| {
            Err(thrift::Error::Application(ApplicationError::new(
                ApplicationErrorKind::InternalError,
                "answered twice",
            )))
        })
    }
}

impl RaftPeerSyncHandler for Answer {
    fn handle_append_entries(&self, _: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.take()
    }
    fn handle_vote(&self, _: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.take()
    }
    fn handle_install_snapshot(&self, _: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.take()
    }
    fn handle_forward(&self, _: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.take()
    }
    fn handle_read_index(&self, _: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.take()
    }
    fn handle_leader_check(&self, _: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.take()
    }
    fn handle_node_info(&self, _: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.take()
    }
    fn handle_admin(&self, _: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.take()
    }
    fn handle_pre_vote(&self, _: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.take()
    }
    fn handle_transfer_leader(&self, _: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.take()
    }
    fn handle_relay(&self, _: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.take()
    }
    fn handle_disk_alarm(&self, _: Vec<u8>) -> thrift::Result<Vec<u8>> {
        self.take()
    }
}
