//! A node's configuration: every flag of `raftcache serve`, with its default. Each limit has a
//! name here, a default, a flag, and a test that goes past it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::types::NodeId;

/// Flags of `raftcache serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeConfig {
    /// This node's id: a positive integer, unique in the cluster, never reused.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub id: NodeId,

    /// Address for clients (the Thrift `CacheService`).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,

    /// Address for the other nodes (Raft and forwarding RPC). Keep it firewalled from clients.
    #[arg(long, default_value = "127.0.0.1:9190")]
    pub peer_listen: SocketAddr,

    /// Where this node keeps its data [default: raftcache-data/node-<id>].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,

    /// The voters of a new cluster, as ID=PEER_ADDR,... (e.g. 1=10.0.0.1:9190,2=10.0.0.2:9190).
    /// Used on first start only, to bootstrap; ignored once the data dir holds state. Without
    /// it, a node with an empty data dir bootstraps a one-node cluster of itself.
    #[arg(long, value_parser = parse_initial_cluster)]
    pub initial_cluster: Option<InitialCluster>,

    /// Most client connections served at once; more are closed as soon as they are accepted.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,

    /// Largest request message a client may send, in bytes; a larger one closes the connection.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Largest key, in bytes; a larger one is refused with InvalidRequest.
    #[arg(long, default_value_t = 4096)]
    pub max_key_bytes: usize,

    /// Largest value, in bytes; a larger one is refused with InvalidRequest.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_value_bytes: usize,

    /// A connection that stalls this long in the middle of a message is closed.
    #[arg(long, default_value_t = 10_000)]
    pub read_timeout_ms: u64,

    /// A connection idle this long between messages is closed.
    #[arg(long, default_value_t = 300_000)]
    pub idle_timeout_ms: u64,

    /// How long a request may wait for a leader, a quorum or a catch-up before it fails with
    /// Unavailable.
    #[arg(long, default_value_t = 5_000)]
    pub request_deadline_ms: u64,

    /// Most client writes proposed together as one Raft log entry (group commit).
    #[arg(long, default_value_t = 1024)]
    pub batch_max_requests: usize,

    /// Most write batches proposed (or forwarded) but not yet committed at once. One by
    /// default: a batch then holds everything that queued while the last one committed, and
    /// flushes, the largest cost per batch, are fewest (docs/benchmarks.md).
    #[arg(long, default_value_t = 1)]
    pub batch_max_in_flight: usize,

    /// Most writes waiting to join a batch; further writers wait (within their deadline).
    #[arg(long, default_value_t = 4096)]
    pub max_pending_writes: usize,

    /// Most linearizable reads waiting for the next read-index round; further readers wait to
    /// queue (within their deadline).
    #[arg(long, default_value_t = 4096)]
    pub max_waiting_reads: usize,

    /// Leader heartbeat interval; also the time a follower has to answer one append RPC.
    #[arg(long, default_value_t = 150)]
    pub heartbeat_ms: u64,

    /// Shortest time a follower waits without hearing from a leader before it calls an election.
    #[arg(long, default_value_t = 500)]
    pub election_timeout_min_ms: u64,

    /// Longest such time (each wait is random between the two). openraft also uses it as the
    /// leader lease: no vote is granted until this long after the last heartbeat, so it bounds
    /// how fast a dead leader is replaced.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout_max_ms: u64,

    /// Build a snapshot (and compact the log behind it) every this many applied entries.
    #[arg(long, default_value_t = 50_000)]
    pub snapshot_every: u64,

    /// Log entries kept behind a snapshot, so a follower that lags by less than this catches up
    /// from the log instead of receiving a whole snapshot.
    #[arg(long, default_value_t = 1000)]
    pub snapshot_keep_log: u64,

    /// Largest piece of a snapshot sent to a follower in one RPC, in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub snapshot_chunk_bytes: u64,

    /// sled's page cache, in bytes.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    pub cache_capacity_bytes: u64,
}

/// The voters named by `--initial-cluster`: node id to peer address.
pub type InitialCluster = BTreeMap<NodeId, String>;

/// Entries per append RPC; with the key and value limits this bounds a peer message.
pub const MAX_ENTRIES_PER_APPEND: u64 = 64;

fn parse_initial_cluster(text: &str) -> Result<InitialCluster, String> {
    let mut members = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not ID=PEER_ADDR"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| format!("`{id}` in `{part}` is not a node id"))?;
        if id == 0 {
            return Err("node ids start at 1".into());
        }
        if members.insert(id, addr.trim().to_string()).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    if members.is_empty() {
        return Err("no members listed".into());
    }
    Ok(members)
}

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    config: NodeConfig,
}

impl NodeConfig {
    /// Parses serve flags (without the program name), as tests and embedders need.
    pub fn from_args<I: IntoIterator<Item = S>, S: Into<std::ffi::OsString> + Clone>(
        args: I,
    ) -> Result<Self, clap::Error> {
        let argv = std::iter::once("raftcache".into()).chain(args.into_iter().map(Into::into));
        Wrapper::try_parse_from(argv).map(|w| w.config)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("raftcache-data/node-{}", self.id)))
    }

    /// The voters to bootstrap with on first start: `--initial-cluster`, or this node alone.
    pub fn bootstrap_members(&self, own_peer_addr: SocketAddr) -> Result<InitialCluster, String> {
        match &self.initial_cluster {
            Some(members) if !members.contains_key(&self.id) => Err(format!(
                "--initial-cluster does not list this node's id {}",
                self.id
            )),
            Some(members) => Ok(members.clone()),
            None => Ok(BTreeMap::from([(self.id, own_peer_addr.to_string())])),
        }
    }

    /// Largest encoded batch of writes in one log entry: one maximal write.
    pub fn batch_max_bytes(&self) -> usize {
        self.max_key_bytes + self.max_value_bytes + 1024
    }

    /// Largest message accepted on the peer port: a full append RPC of maximal entries (each
    /// a batch of at most `batch_max_bytes`, plus per-request framing).
    pub fn peer_max_message_bytes(&self) -> usize {
        let per_entry = self.batch_max_bytes() + 32 * self.batch_max_requests + 1024;
        let append = MAX_ENTRIES_PER_APPEND as usize * per_entry;
        let snapshot_chunk = self.snapshot_chunk_bytes as usize;
        append.max(snapshot_chunk).max(self.max_message_bytes) + 1024 * 1024
    }

    /// The cluster id implied by `--initial-cluster`: the same on every node bootstrapped
    /// together, different for a cluster of other members. None without the flag.
    pub fn cluster_id(&self) -> Option<String> {
        let members = self.initial_cluster.as_ref()?;
        let text: Vec<String> = members
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect();
        Some(format!("{:016x}", crate::store::fnv1a(&text.join(","))))
    }

    /// The limits of a server on one of this node's ports, with its own message size limit.
    pub fn connection_limits(&self, max_message_bytes: usize) -> crate::server::ConnectionLimits {
        crate::server::ConnectionLimits {
            max_connections: self.max_connections,
            max_message_bytes,
            read_timeout: Duration::from_millis(self.read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
        }
    }

    pub fn request_deadline(&self) -> Duration {
        Duration::from_millis(self.request_deadline_ms)
    }
}
