//! The incoming side of the peer network: decodes each `RaftPeer` call, hands it to openraft or
//! to the router, and encodes the `Result` back. Errors inside a `Result` travel to the caller;
//! only an undecodable request is a Thrift-level error.

use std::sync::Arc;
use std::time::Duration;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use thrift::{ProtocolError, ProtocolErrorKind};
use tokio::runtime::Handle;

use super::ForwardRequest;
use crate::gen::peer::RaftPeerSyncHandler;
use crate::router::Router;
use crate::types::{NodeId, Raft, TypeConfig};

/// The `RaftPeer` handler of one node.
pub struct PeerService {
    raft: Raft,
    router: Arc<Router>,
    /// Runs openraft's async calls from the server's connection threads.
    runtime: Handle,
}

impl PeerService {
    pub fn new(raft: Raft, router: Arc<Router>, runtime: Handle) -> Self {
        Self {
            raft,
            router,
            runtime,
        }
    }
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

impl RaftPeerSyncHandler for PeerService {
    fn handle_append_entries(&self, request: Vec<u8>) -> thrift::Result<Vec<u8>> {
        let request: AppendEntriesRequest<TypeConfig> = decode(&request)?;
        encode(&self.runtime.block_on(self.raft.append_entries(request)))
    }

    fn handle_vote(&self, request: Vec<u8>) -> thrift::Result<Vec<u8>> {
        let request: VoteRequest<NodeId> = decode(&request)?;
        encode(&self.runtime.block_on(self.raft.vote(request)))
    }

    fn handle_install_snapshot(&self, request: Vec<u8>) -> thrift::Result<Vec<u8>> {
        let request: InstallSnapshotRequest<TypeConfig> = decode(&request)?;
        encode(&self.runtime.block_on(self.raft.install_snapshot(request)))
    }

    fn handle_forward(&self, request: Vec<u8>) -> thrift::Result<Vec<u8>> {
        let ForwardRequest {
            requests,
            deadline_ms,
        } = decode(&request)?;
        let deadline = Duration::from_millis(deadline_ms);
        encode(
            &self
                .runtime
                .block_on(self.router.write_forwarded(requests, deadline)),
        )
    }

    fn handle_read_index(&self, request: Vec<u8>) -> thrift::Result<Vec<u8>> {
        let () = decode(&request)?;
        encode(&self.runtime.block_on(self.router.read_index_as_leader()))
    }
}
