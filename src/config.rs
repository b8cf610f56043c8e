//! A node's configuration: every flag of `raftcache serve`, with its default. Each limit has a
//! name here, a default, a flag, and a test that goes past it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::types::NodeId;

mod advertised;

pub use advertised::Advertised;

/// The log filter when RUST_LOG is unset: info, openraft's own at warn, except its warning for
/// each failed heartbeat and append (several a second while a peer is down), which
/// `PeerClients` replaces with one line when a peer goes down and one when it is back.
pub const DEFAULT_LOG_FILTER: &str = "info,openraft=warn,openraft::core::heartbeat=error,openraft::replication=error,openraft::engine::handler::replication_handler=error";

/// What a client must show before its calls are served (`--client-auth`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Nothing: anyone who reaches the client port is served.
    None,
    /// The `--client-token`, presented once per connection (`authenticate`).
    Token,
    /// A TLS client certificate signed by `--tls-ca`.
    Cert,
}

/// Flags of `raftcache serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeConfig {
    /// This node's id: a positive integer, unique in the cluster, never reused.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub id: NodeId,

    /// Take the node id from this machine's hostname instead of `--id`: the number after its
    /// last `-`, plus one (`raftcache-0` is node 1), as a Kubernetes StatefulSet names its pods.
    #[arg(long, conflicts_with = "id")]
    pub id_from_hostname: bool,

    /// Address for clients (the Thrift `CacheService`).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,

    /// Address for the other nodes (Raft and forwarding RPC). Keep it firewalled from clients.
    #[arg(long, default_value = "127.0.0.1:9190")]
    pub peer_listen: SocketAddr,

    /// How the node writes its log lines (to stderr): `text` for people, `json` (one object per
    /// line: timestamp, level, target, fields) for log collectors. RUST_LOG filters them
    /// [default: info, openraft's at warn but its warning for every failed heartbeat and append
    /// (a peer that is down is logged once when it goes down and once when it is back)].
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Address of the HTTP port for machines: GET /metrics (Prometheus), /health, /ready. It
    /// serves no data, but says much about the cluster: keep it on loopback or a monitoring
    /// network. `none` turns it off.
    #[arg(long, default_value = "127.0.0.1:9290", value_name = "HOST:PORT|none", value_parser = parse_http_listen)]
    pub http_listen: HttpListen,

    /// Serve the HTTP port over TLS (HTTPS), with the client port's certificate and key
    /// (--tls-cert, --tls-key); clients are not asked for certificates.
    #[arg(long, requires = "tls_cert")]
    pub http_tls: bool,

    /// HTTP connections served at once; further ones get a 503 and are closed.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_max_connections: u64,

    /// Largest HTTP request head (request line and headers), in bytes; a larger one gets a 431.
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(64..))]
    pub http_max_request_bytes: u64,

    /// The address the other nodes use to reach this node's peer port, when it is not the
    /// --peer-listen address (a node that listens on 0.0.0.0 in a container, behind NAT). It is
    /// the peer address --join registers, and the one a one-node cluster records for itself. A
    /// host name is kept as written and looked up on every connect. [default: the --peer-listen
    /// address; with --join, required if that is 0.0.0.0 or ::]
    #[arg(long, value_name = "HOST:PORT", value_parser = advertised::parse_addr)]
    pub advertise_peer: Option<String>,

    /// The address clients and operators use to reach this node's client port, when it is not
    /// the --listen address. It is the client address the cluster records for this node (shown by
    /// `admin members` and `status`), told to the leader when it probes this node. [default: the
    /// --listen address; with --join, required if that is 0.0.0.0 or ::]
    #[arg(long, value_name = "HOST:PORT", value_parser = advertised::parse_addr)]
    pub advertise_client: Option<String>,

    /// Where this node keeps its data [default: raftcache-data/node-<id>].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,

    /// The voters of a new cluster, as ID=PEER_ADDR[/CLIENT_ADDR],... (e.g.
    /// 1=10.0.0.1:9190/10.0.0.1:9090,2=10.0.0.2:9190/10.0.0.2:9090). Used on first start only,
    /// to bootstrap; ignored once the data dir holds state. Without it (and without --join or
    /// --no-bootstrap), a node with an empty data dir bootstraps a one-node cluster of itself.
    #[arg(long, value_parser = parse_initial_cluster, conflicts_with_all = ["join", "no_bootstrap"])]
    pub initial_cluster: Option<InitialCluster>,

    /// A name for the cluster --initial-cluster founds, mixed into its cluster id (as etcd's
    /// --initial-cluster-token): two clusters founded from the same --initial-cluster with
    /// different tokens refuse each other's nodes. Give every node of one cluster the same token.
    /// Used on first start only.
    #[arg(long, requires = "initial_cluster")]
    pub initial_cluster_token: Option<String>,

    /// Join the cluster that the node at this client address belongs to: on first start (and
    /// on a restart, until it is done) ask it to add this node as a learner at its
    /// --advertise-peer address, wait to catch up, then become a voter. Once a member, a restart
    /// just resumes.
    #[arg(long, value_name = "CLIENT_ADDR", conflicts_with = "no_bootstrap")]
    pub join: Option<String>,

    /// With --initial-cluster: a node whose id it does not list joins the cluster at this
    /// client address instead, as with --join. Every pod of a Kubernetes StatefulSet can then
    /// run the same flags, and the set can grow past the members it was founded with.
    #[arg(
        long,
        value_name = "CLIENT_ADDR",
        requires = "initial_cluster",
        conflicts_with = "no_bootstrap"
    )]
    pub join_unlisted: Option<String>,

    /// With --join: stay a learner (a non-voting replica) instead of becoming a voter.
    #[arg(long, requires = "join")]
    pub learner: bool,

    /// Start empty and wait, answering `status`, until an admin command (add-learner, add-node,
    /// replace-node) adds this node to a cluster. Never bootstraps.
    #[arg(long)]
    pub no_bootstrap: bool,

    /// How long --join keeps trying (asking the cluster, catching up, becoming a voter) before
    /// the node gives up and exits with an error. Starting it again resumes the join.
    #[arg(long, default_value_t = 120_000)]
    pub join_timeout_ms: u64,

    /// With --join: the node counts as caught up (and asks to become a voter) once it is within
    /// this many log entries of the leader.
    #[arg(long, default_value_t = 100)]
    pub catch_up_max_lag: u64,

    /// Admin calls (`raftcache admin ...`) must carry this token; without it anyone who reaches
    /// the client port may change the membership. Client reads and writes never need it.
    #[arg(long, env = "RAFTCACHE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Serve the client port over TLS with this certificate chain (PEM, the node's own
    /// certificate first; its names must include the address clients dial, or the name they
    /// check). Needs --tls-key. Re-read, with the key and the CAs, on SIGHUP. Without it the
    /// client port speaks plaintext.
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// The CA that signs client certificates (PEM), for --client-auth cert.
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,

    /// What a client must show before its calls are served: `none`; `token`, the
    /// --client-token, given once per connection with the `authenticate` call; `cert`, a
    /// certificate signed by --tls-ca, checked in the TLS handshake.
    #[arg(long, value_enum, default_value_t = ClientAuth::None)]
    pub client_auth: ClientAuth,

    /// The token clients present with `authenticate` (--client-auth token). Compared in
    /// constant time, never logged. Without TLS on the client port it crosses the network in
    /// clear text.
    #[arg(long, env = "RAFTCACHE_CLIENT_TOKEN", hide_env_values = true)]
    pub client_token: Option<String>,

    /// With --join, reach the member's client port over TLS, trusting its certificate's CA
    /// (PEM). The client token, if the members ask for one, is this node's --client-token.
    #[arg(long, value_name = "PEM")]
    pub join_tls_ca: Option<PathBuf>,

    /// Mutual TLS between nodes, with this node's peer certificate (PEM): signed by
    /// --peer-tls-ca, naming this node as the DNS name `node-<id>.raftcache`. The node presents
    /// it on its peer port and when it calls the others, and only talks to nodes that present
    /// the certificate of the id they claim. Needs --peer-tls-key and --peer-tls-ca; every
    /// node of the cluster needs them too. Re-read on SIGHUP.
    #[arg(long, requires_all = ["peer_tls_key", "peer_tls_ca"], value_name = "PEM")]
    pub peer_tls_cert: Option<PathBuf>,

    /// The private key of --peer-tls-cert (PEM).
    #[arg(long, requires = "peer_tls_cert", value_name = "PEM")]
    pub peer_tls_key: Option<PathBuf>,

    /// The CA that signs every node's peer certificate (PEM).
    #[arg(long, requires = "peer_tls_cert", value_name = "PEM")]
    pub peer_tls_ca: Option<PathBuf>,

    /// How long the leader waits for a member's (or a new node's) peer port to answer when it
    /// checks who is reachable before a membership change, and for `admin members`.
    #[arg(long, default_value_t = 1_000)]
    pub peer_probe_timeout_ms: u64,

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

    /// Most keys or entries in one get_many, put_many or remove_many; more is InvalidRequest.
    #[arg(long, default_value_t = 1000)]
    pub max_batch_items: usize,

    /// Most bytes of keys and values in one put_many; more is InvalidRequest.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_batch_bytes: usize,

    /// Most entries one scan returns, whatever limit the client asks for (and most events one
    /// watch returns).
    #[arg(long, default_value_t = 1000)]
    pub max_scan_items: usize,

    /// Bytes of recent changes of keys kept in memory for `watch` (0: none; every watch is then
    /// Compacted). A watcher further behind gets Compacted and reads the keys again.
    #[arg(long, default_value_t = 64 << 20)]
    pub watch_history_bytes: usize,

    /// A client's exactly-once answers (WriteOptions.client_id) are forgotten this long after
    /// its last write; a retry that comes later is applied again.
    #[arg(long, default_value_t = 600_000)]
    pub session_ttl_ms: u64,

    /// Clients whose exactly-once answers are kept, at most; past it, expired ones and then the
    /// least recently seen are forgotten.
    #[arg(long, default_value_t = 100_000)]
    pub max_sessions: u64,

    /// Answers kept per client, at most (the oldest is forgotten first; a retry of a forgotten
    /// one is InvalidRequest, never applied twice).
    #[arg(long, default_value_t = 1_000)]
    pub max_session_answers: u64,

    /// Most bytes of keys and values the cache holds (0: no cap). Past it, see --eviction.
    #[arg(long, default_value_t = 0)]
    pub max_bytes: u64,

    /// Most keys the cache holds (0: no cap). Past it, see --eviction.
    #[arg(long, default_value_t = 0)]
    pub max_keys: u64,

    /// Free space the data dir's filesystem must keep: while any voter has less, the cluster
    /// refuses writes that add data (CacheFull, naming the node), and takes them again once it
    /// has room; reads and removes go on, and no node exits for a full disk. 0 turns the check
    /// off. [default: 5% of the disk, at least 16 MiB and at most 1 GiB, and at most a quarter
    /// of a small disk]
    #[arg(long)]
    pub min_free_disk_bytes: Option<u64>,

    /// A write past --max-bytes or --max-keys: `none` fails it with CacheFull; `lru` has the
    /// leader evict the least recently used keys first (by the accesses the leader saw; reads
    /// served by followers do not count).
    #[arg(long, value_enum, default_value_t = crate::eviction::Policy::None)]
    pub eviction: crate::eviction::Policy,

    /// How often the leader looks for expired keys to remove.
    #[arg(long, default_value_t = 250)]
    pub expiry_interval_ms: u64,

    /// Most expired keys the leader looks at per expiry round (soonest expiry first).
    #[arg(long, default_value_t = 10_000)]
    pub expiry_scan_keys: usize,

    /// Most expired keys removed by one replicated log entry.
    #[arg(long, default_value_t = 1000)]
    pub expiry_batch_keys: usize,

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

    /// sled's page cache, in bytes. It counts pages at their size on disk, not in memory: at
    /// 10 million keys a node held about 3.5 times this in cache, plus about 0.6 GiB besides
    /// (docs/benchmarks.md). Lower it to bound the RSS of a node with much data; reads that
    /// miss the cache go to disk.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    pub cache_capacity_bytes: u64,

    /// Size at which a Raft log segment file is closed and a new one started; the log is
    /// deleted a whole segment at a time behind each snapshot.
    #[arg(long, default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(4096..))]
    pub log_segment_bytes: u64,
}

/// The voters named by `--initial-cluster`: node id to addresses.
pub type InitialCluster = BTreeMap<NodeId, InitialMember>;

/// One voter of `--initial-cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub peer_addr: String,
    /// Empty when the flag does not give it.
    pub client_addr: String,
}

/// How a node with an empty data dir enters a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartMode {
    /// Bootstrap a new cluster: `--initial-cluster`, or a one-node cluster of itself.
    Bootstrap,
    /// Ask the cluster of the node at this client address to add it (`--join`).
    Join { addr: String, voter: bool },
    /// Wait until an admin command adds it (`--no-bootstrap`).
    Wait,
}

/// Entries per append RPC; with the key and value limits this bounds a peer message.
pub const MAX_ENTRIES_PER_APPEND: u64 = 64;

fn parse_initial_cluster(text: &str) -> Result<InitialCluster, String> {
    let mut members = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addrs) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not ID=PEER_ADDR[/CLIENT_ADDR]"))?;
        let (peer_addr, client_addr) = addrs.split_once('/').unwrap_or((addrs, ""));
        let member = InitialMember {
            peer_addr: peer_addr.trim().to_string(),
            client_addr: client_addr.trim().to_string(),
        };
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| format!("`{id}` in `{part}` is not a node id"))?;
        if id == 0 {
            return Err("node ids start at 1".into());
        }
        if members.insert(id, member).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    if members.is_empty() {
        return Err("no members listed".into());
    }
    Ok(members)
}

/// The node id of a StatefulSet pod named `hostname`: its ordinal (after the last `-`) plus
/// one, since node ids start at 1.
pub fn id_from_hostname(hostname: &str) -> Result<NodeId, String> {
    let ordinal = hostname
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<NodeId>().ok())
        .ok_or_else(|| {
            format!("--id-from-hostname: hostname `{hostname}` does not end in -<number>")
        })?;
    ordinal
        .checked_add(1)
        .ok_or_else(|| format!("--id-from-hostname: ordinal in `{hostname}` is too large"))
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

    /// Applies `--id-from-hostname`, reading the hostname from the kernel.
    pub fn resolve_id(&mut self) -> Result<(), String> {
        if !self.id_from_hostname {
            return Ok(());
        }
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_err(|e| format!("--id-from-hostname: cannot read the hostname: {e}"))?;
        self.id = id_from_hostname(hostname.trim())?;
        Ok(())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("raftcache-data/node-{}", self.id)))
    }

    /// The voters to bootstrap with on first start: `--initial-cluster`, or this node alone at
    /// its advertised addresses.
    pub fn bootstrap_members(&self, own: &Advertised) -> Result<InitialCluster, String> {
        match &self.initial_cluster {
            Some(members) if !members.contains_key(&self.id) => Err(format!(
                "--initial-cluster does not list this node's id {}",
                self.id
            )),
            Some(members) => Ok(members.clone()),
            None => Ok(BTreeMap::from([(
                self.id,
                InitialMember {
                    peer_addr: own.peer_addr.clone(),
                    client_addr: own.client_addr.clone(),
                },
            )])),
        }
    }

    /// How this node enters a cluster when its data dir is empty.
    pub fn start_mode(&self) -> StartMode {
        let unlisted = self
            .initial_cluster
            .as_ref()
            .is_some_and(|members| !members.contains_key(&self.id));
        if let (Some(addr), true) = (&self.join_unlisted, unlisted) {
            return StartMode::Join {
                addr: addr.clone(),
                voter: true,
            };
        }
        match (&self.join, self.no_bootstrap) {
            (Some(addr), _) => StartMode::Join {
                addr: addr.clone(),
                voter: !self.learner,
            },
            (None, true) => StartMode::Wait,
            (None, false) => StartMode::Bootstrap,
        }
    }

    /// The token clients must present, with `--client-auth token`; an error for flags that
    /// do not go together.
    pub fn client_token(&self) -> Result<Option<String>, String> {
        match (self.client_auth, &self.client_token) {
            (ClientAuth::Token, Some(token)) if !token.is_empty() => Ok(Some(token.clone())),
            (ClientAuth::Token, _) => {
                Err("--client-auth token needs --client-token (or RAFTCACHE_CLIENT_TOKEN)".into())
            }
            (_, Some(_)) => Err("--client-token needs --client-auth token".into()),
            (_, None) => Ok(None),
        }
    }

    /// The TLS files of the client port, if it speaks TLS; an error for flags that do not go
    /// together.
    pub fn client_tls(&self) -> Result<Option<crate::tls::ServerFiles>, String> {
        let client_ca = match (self.client_auth, &self.tls_ca) {
            (ClientAuth::Cert, None) => {
                return Err(
                    "--client-auth cert needs --tls-ca, the CA of the client certificates".into(),
                )
            }
            (ClientAuth::Cert, Some(ca)) => Some(ca.clone()),
            (_, Some(_)) => {
                return Err(
                    "--tls-ca is the CA of client certificates: it needs --client-auth cert".into(),
                )
            }
            (_, None) => None,
        };
        Ok(self
            .tls_cert
            .clone()
            .zip(self.tls_key.clone())
            .map(|(cert, key)| crate::tls::ServerFiles {
                cert,
                key,
                client_ca,
            }))
    }

    /// The TLS files of the peer port and of this node's calls to the others, if peers speak
    /// TLS.
    pub fn peer_tls(&self) -> Option<(crate::tls::ServerFiles, crate::tls::ClientFiles)> {
        let (cert, key, ca) = (
            self.peer_tls_cert.clone()?,
            self.peer_tls_key.clone()?,
            self.peer_tls_ca.clone()?,
        );
        let server = crate::tls::ServerFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: Some(ca.clone()),
        };
        let client = crate::tls::ClientFiles {
            ca,
            cert: Some(cert),
            key: Some(key),
        };
        Some((server, client))
    }

    pub fn join_timeout(&self) -> Duration {
        Duration::from_millis(self.join_timeout_ms)
    }

    pub fn peer_probe_timeout(&self) -> Duration {
        Duration::from_millis(self.peer_probe_timeout_ms)
    }

    /// Largest encoded batch of writes in one log entry: one maximal write (a single put, a
    /// put_many, or an expiry batch).
    pub fn entry_max_bytes(&self) -> usize {
        let single = self.max_key_bytes + self.max_value_bytes;
        let many = self.max_batch_bytes + 24 * self.max_batch_items;
        let expiry = self.expiry_batch_keys * (self.max_key_bytes + 8);
        single.max(many).max(expiry) + 1024
    }

    /// Largest message accepted on the peer port: a full append RPC of maximal entries (each
    /// a batch of at most `entry_max_bytes`, plus per-request framing).
    pub fn peer_max_message_bytes(&self) -> usize {
        let per_entry = self.entry_max_bytes() + 32 * self.batch_max_requests + 1024;
        let append = MAX_ENTRIES_PER_APPEND as usize * per_entry;
        let snapshot_chunk = self.snapshot_chunk_bytes as usize;
        append.max(snapshot_chunk).max(self.max_message_bytes) + 1024 * 1024
    }

    /// The cluster id implied by `--initial-cluster`: the same on every node bootstrapped
    /// together, different for a cluster of other members. `PENDING_CLUSTER_ID` for a node
    /// that will be added to a cluster (`--join`, `--no-bootstrap`): it adopts that cluster's.
    /// None otherwise (a one-node cluster picks a random id).
    pub fn cluster_id(&self) -> Option<String> {
        if self.start_mode() != StartMode::Bootstrap {
            return Some(crate::store::PENDING_CLUSTER_ID.to_string());
        }
        let members = self.initial_cluster.as_ref()?;
        let mut text: Vec<String> = members
            .iter()
            .map(|(id, m)| format!("{id}={}", m.peer_addr))
            .collect();
        if let Some(token) = &self.initial_cluster_token {
            text.push(format!("token={token}"));
        }
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

    pub fn http_limits(&self) -> crate::http::HttpLimits {
        crate::http::HttpLimits {
            max_connections: self.http_max_connections as usize,
            max_request_bytes: self.http_max_request_bytes as usize,
            read_timeout: Duration::from_millis(self.read_timeout_ms),
        }
    }

    pub fn request_deadline(&self) -> Duration {
        Duration::from_millis(self.request_deadline_ms)
    }
}

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--http-listen`: an address, or none (the HTTP port off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpListen(pub Option<SocketAddr>);

fn parse_http_listen(raw: &str) -> Result<HttpListen, String> {
    if raw.eq_ignore_ascii_case("none") {
        return Ok(HttpListen(None));
    }
    raw.parse()
        .map(|addr| HttpListen(Some(addr)))
        .map_err(|e| format!("{e}: give HOST:PORT (an IP address and a port), or none"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_takes_an_optional_client_address() {
        let members =
            parse_initial_cluster("1=10.0.0.1:9190/10.0.0.1:9090, 2=10.0.0.2:9190").unwrap();
        assert_eq!(members[&1].peer_addr, "10.0.0.1:9190");
        assert_eq!(members[&1].client_addr, "10.0.0.1:9090");
        assert_eq!(members[&2].client_addr, "");
        assert!(parse_initial_cluster("1=a,1=b").is_err());
    }

    #[test]
    fn join_and_no_bootstrap_exclude_initial_cluster_and_each_other() {
        assert!(NodeConfig::from_args(["--join=a:1", "--no-bootstrap"]).is_err());
        assert!(NodeConfig::from_args(["--join=a:1", "--initial-cluster=1=p"]).is_err());
        assert!(NodeConfig::from_args(["--learner"]).is_err());
        let join = NodeConfig::from_args(["--join=a:1", "--learner"]).unwrap();
        assert_eq!(
            join.start_mode(),
            StartMode::Join {
                addr: "a:1".into(),
                voter: false
            }
        );
        assert_eq!(
            join.cluster_id().as_deref(),
            Some(crate::store::PENDING_CLUSTER_ID)
        );
    }

    #[test]
    fn the_cluster_token_tells_clusters_founded_from_the_same_flags_apart() {
        let members = "--initial-cluster=1=a:1,2=b:1,3=c:1";
        let id = |args: &[&str]| {
            NodeConfig::from_args(args.iter().copied())
                .unwrap()
                .cluster_id()
        };
        assert_eq!(id(&[members]), id(&[members]));
        assert_eq!(
            id(&[members, "--initial-cluster-token=blue"]),
            id(&[members, "--initial-cluster-token=blue"])
        );
        assert_ne!(
            id(&[members, "--initial-cluster-token=blue"]),
            id(&[members, "--initial-cluster-token=green"])
        );
        assert_ne!(
            id(&[members]),
            id(&[members, "--initial-cluster-token=blue"])
        );
        assert!(NodeConfig::from_args(["--initial-cluster-token=blue"]).is_err());
    }

    #[test]
    fn a_statefulset_pod_name_gives_its_ordinal_plus_one() {
        assert_eq!(id_from_hostname("raftcache-0"), Ok(1));
        assert_eq!(id_from_hostname("my-cache-12"), Ok(13));
        assert!(id_from_hostname("raftcache").is_err());
        assert!(id_from_hostname("raftcache-x").is_err());
        assert!(id_from_hostname("raftcache-18446744073709551615").is_err());
    }

    #[test]
    fn id_from_hostname_replaces_the_id_and_excludes_an_explicit_one() {
        let mut config = NodeConfig::from_args(["--id-from-hostname"]).unwrap();
        assert!(config.id_from_hostname);
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        match id_from_hostname(hostname.trim()) {
            Ok(id) => {
                config.resolve_id().unwrap();
                assert_eq!(config.id, id);
            }
            Err(e) => assert_eq!(config.resolve_id(), Err(e)),
        }
        assert!(NodeConfig::from_args(["--id-from-hostname", "--id", "2"]).is_err());
        let mut plain = NodeConfig::from_args(["--id", "2"]).unwrap();
        plain.resolve_id().unwrap();
        assert_eq!(plain.id, 2);
    }

    #[test]
    fn initial_cluster_takes_host_names() {
        let config =
            NodeConfig::from_args(["--initial-cluster", "1=node1:9190,2=node-2.peers.svc:9190"])
                .unwrap();
        let members = config.initial_cluster.unwrap();
        assert_eq!(members[&1].peer_addr, "node1:9190");
        assert_eq!(members[&2].peer_addr, "node-2.peers.svc:9190");
    }

    #[test]
    fn with_join_unlisted_a_node_the_initial_cluster_does_not_list_joins() {
        let args = |id: &str| {
            NodeConfig::from_args([
                "--id",
                id,
                "--initial-cluster",
                "1=a:9190,2=b:9190,3=c:9190",
                "--join-unlisted",
                "cache:9090",
            ])
            .unwrap()
        };
        assert_eq!(args("2").start_mode(), StartMode::Bootstrap);
        assert_eq!(
            args("4").start_mode(),
            StartMode::Join {
                addr: "cache:9090".into(),
                voter: true
            }
        );
        assert_eq!(
            args("4").cluster_id().as_deref(),
            Some(crate::store::PENDING_CLUSTER_ID),
            "it adopts the cluster's id"
        );
        assert!(NodeConfig::from_args(["--join-unlisted", "cache:9090"]).is_err());
    }
}
