//! Wiring: everything one node is made of, put together in `start`.

use openraft::async_runtime::watch::WatchReceiver;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::SnapshotPolicy;

use crate::api::{AdminParts, ApiLimits, CacheApi};
use crate::config::{Advertised, NodeConfig, StartMode, MAX_ENTRIES_PER_APPEND};
use crate::gen::cache::NodeStatus;
use crate::membership::{self, Admin, CatchUp, JoinRequest, Standing};
use crate::network::identity::PeerIdentities;
use crate::network::reach::{Inbound, ReachWatch};
use crate::network::{Faults, PeerClients, PeerNetwork, PeerService};
use crate::proposer::{BatchLimits, Proposer};
use crate::router::{LocalState, Router, RouterLimits};
use crate::server::{self, ServerHandle};
use crate::store::{
    self, ClusterIdentity, FlushStats, OpenError, SnapshotCounts, SnapshotInbox, StateFlusher,
    StateReader, StoreOptions,
};
use crate::types::{Node, NodeId, Raft};

/// Why a node could not start. Each message names what to change.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] OpenError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("raft failed to start: {0}")]
    Raft(String),
    #[error("cannot start a server: {0}")]
    Thread(#[from] std::io::Error),
}

/// A running node. Stop it with `shutdown`.
pub struct RunningNode {
    /// This node's id (`--id`).
    id: NodeId,
    /// The log store's flush counters.
    flushes: Arc<FlushStats>,
    /// The node's Raft: its metrics tell tests and shutdown where it stands.
    raft: Raft,
    /// This replica's data, for tests that read it directly.
    state: StateReader,
    /// Flushes the state machine one last time on stop.
    state_flusher: StateFlusher,
    /// The client port's server; stopped first on shutdown, so no new request arrives.
    client_server: ServerHandle,
    /// The peer port's server; stopped after Raft.
    peer_server: ServerHandle,
    /// The HTTP port's server (`--http-listen`), if on; stopped first.
    http_server: Option<crate::http::HttpHandle>,
    /// Set when the node gave up on something it must do to serve (a `--join` that timed out).
    failed: tokio::sync::watch::Receiver<Option<String>>,
    /// Whether the node waits to be added, is a member, or was removed.
    standing: Arc<Standing>,
    /// The TLS of the ports and of the calls to peers, re-read by `reload_tls`.
    tls: NodeTls,
}

/// Binds the configured addresses and starts the node.
pub async fn start(mut config: NodeConfig) -> Result<RunningNode, StartError> {
    config.resolve_id().map_err(StartError::Config)?;
    // Refused before anything is bound: a joining node on an unspecified address needs
    // --advertise-peer (and --advertise-client).
    config
        .advertised(config.peer_listen, config.listen)
        .map_err(StartError::Config)?;
    let bind = |what, addr| {
        TcpListener::bind(addr).map_err(|source| StartError::Bind { what, addr, source })
    };
    let client = bind("clients", config.listen)?;
    let peer = bind("peers", config.peer_listen)?;
    let http = config
        .http_listen
        .0
        .map(|addr| bind("HTTP (metrics, health)", addr))
        .transpose()?;
    let listeners = Listeners { client, peer, http };
    start_with_listeners(config, listeners, Arc::new(Faults::default())).await
}

/// The ports a node serves, bound by the caller.
pub struct Listeners {
    /// The client port (`--listen`).
    pub client: TcpListener,
    /// The peer port (`--peer-listen`).
    pub peer: TcpListener,
    /// The HTTP port (`--http-listen`), if on.
    pub http: Option<TcpListener>,
}

/// Starts a node on listeners the caller bound (tests bind port 0), with a fault seam.
pub async fn start_with_listeners(
    config: NodeConfig,
    listeners: Listeners,
    faults: Arc<Faults>,
) -> Result<RunningNode, StartError> {
    let Listeners {
        client: client_listener,
        peer: peer_listener,
        http: http_listener,
    } = listeners;
    let id = config.id;
    let data_dir = config.data_dir();
    // Read before the storage is opened: a bad file stops the start with what is wrong.
    let tls = NodeTls::load(&config)?;
    let client_token = config.client_token().map_err(StartError::Config)?;
    let advertised = config
        .advertised(peer_listener.local_addr()?, client_listener.local_addr()?)
        .map_err(StartError::Config)?;
    let Core {
        raft,
        peers,
        state,
        state_flusher,
        flushes,
        snapshots,
        identity,
        identities,
        inbox,
    } = open_core(&config, faults, &advertised, tls.peer_client.clone()).await?;
    log_leadership(id, &raft);
    let (standing, admin) = start_membership(&config, &raft, &peers, identity, &advertised);
    let disk = crate::disk::DiskGuard::new(id, config.data_dir(), config.min_free_disk_bytes);
    let batch_sizes = crate::metrics::batch_histogram();
    disk.spawn_watch(raft.clone(), peers.clone());
    let router = start_router(
        &config,
        &raft,
        &state,
        &peers,
        standing.clone(),
        disk.clone(),
        batch_sizes.clone(),
    );
    let api_counters = crate::api::ApiCounters::default();
    let inbound = Arc::new(Inbound::default());
    let peer_service = PeerService::new(
        raft.clone(),
        router.clone(),
        peers.clone(),
        admin.clone(),
        identities,
        inbox,
        inbound.clone(),
    )
    .with_disk(disk.clone())
    .with_peer_certificates(tls.peer_server.is_some());
    ReachWatch {
        id,
        raft: raft.clone(),
        peers: peers.clone(),
        inbound,
        interval: Duration::from_millis(config.heartbeat_ms),
        // As long as a follower's lease on its leader: a cut from the followers is seen in
        // about the time a cut from the leader takes to time the followers out.
        cut_after: Duration::from_millis(config.election_timeout_max_ms),
        // Long enough for the others to elect among themselves (an election timeout to notice,
        // another for a vote that fails), short enough that a wrong hand-over costs little.
        stand_down: Duration::from_millis(3 * config.election_timeout_max_ms),
        // The target waits up to election_timeout_min for its log to reach the leader's before
        // it refuses; a taken hand-over deposes this leader within a heartbeat or two.
        retry_after: Duration::from_millis(
            config.election_timeout_min_ms + 2 * config.heartbeat_ms,
        ),
    }
    .spawn();
    let peer_limits = config.connection_limits(config.peer_max_message_bytes());
    let peer_server = server::spawn(
        "peer",
        peer_listener,
        peer_limits,
        tls.peer_server.clone(),
        peer_service,
    )?;
    let api_limits = ApiLimits {
        max_key_bytes: config.max_key_bytes,
        max_value_bytes: config.max_value_bytes,
        max_batch_items: config.max_batch_items,
        max_batch_bytes: config.max_batch_bytes,
        max_scan_items: config.max_scan_items,
    };
    let admin_parts = AdminParts {
        admin,
        standing: standing.clone(),
        admin_token: config.admin_token.clone(),
        client_token,
        backups: Arc::new(crate::backup::Backups::new(
            config.data_dir().join("snapshots"),
            Duration::from_millis(config.idle_timeout_ms),
        )),
    };
    let api = CacheApi::new(
        id,
        raft.clone(),
        router.clone(),
        api_limits,
        flushes.clone(),
        admin_parts,
        api_counters.clone(),
    );
    let client_limits = config.connection_limits(config.max_message_bytes);
    let client_server = server::spawn(
        "client",
        client_listener,
        client_limits,
        tls.client.clone(),
        api,
    )?;
    let http_server = match http_listener {
        None => None,
        Some(listener) => {
            let sources = crate::metrics::Sources {
                raft: raft.clone(),
                router,
                peers: peers.clone(),
                flushes: flushes.clone(),
                snapshots,
                client_connections: client_server.counts(),
                peer_connections: peer_server.counts(),
                reads: api_counters.reads.clone(),
                ready_timeout: Duration::from_millis(config.election_timeout_max_ms),
                data_dir: config.data_dir(),
                batch_sizes: batch_sizes.clone(),
            };
            let routes = crate::metrics::NodeHttp::new(sources, &api_counters.events);
            Some(crate::http::spawn(
                listener,
                config.http_limits(),
                tls.http.clone(),
                routes,
            )?)
        }
    };
    tracing::info!(
        id,
        client_addr = %client_server.local_addr(),
        peer_addr = %peer_server.local_addr(),
        http_addr = %http_server.as_ref().map_or("off".to_string(), |h| h.local_addr().to_string()),
        advertise_client = %advertised.client_addr,
        advertise_peer = %advertised.peer_addr,
        data_dir = %data_dir.display(),
        mode = ?config.start_mode(),
        "raftcache node started"
    );
    warn_if_ephemeral(
        "peer",
        peer_server.local_addr().port(),
        config.peer_listen.port(),
    );
    warn_if_ephemeral(
        "client",
        client_server.local_addr().port(),
        config.listen.port(),
    );
    if let (Some(http), Some(configured)) = (&http_server, config.http_listen.0) {
        warn_if_ephemeral("HTTP", http.local_addr().port(), configured.port());
    }
    let failed = spawn_join(&config, &raft, &standing, &advertised);
    Ok(RunningNode {
        id,
        flushes,
        raft,
        state,
        state_flusher,
        client_server,
        peer_server,
        http_server,
        failed,
        standing,
        tls,
    })
}

/// The TLS of a node's ports and of its calls to the others, as its flags ask.
struct NodeTls {
    /// The client port's (`--tls-cert`).
    client: Option<Arc<crate::tls::ServerTls>>,
    /// The peer port's (`--peer-tls-cert`), requiring a certificate of the peer CA.
    peer_server: Option<Arc<crate::tls::ServerTls>>,
    /// This node's calls to the others, with the same certificate.
    peer_client: Option<Arc<crate::tls::ClientTls>>,
    /// The HTTP port's (`--http-tls`): the client port's certificate, no client certificates.
    http: Option<Arc<crate::tls::ServerTls>>,
}

impl NodeTls {
    fn load(config: &NodeConfig) -> Result<Self, StartError> {
        let client = config
            .client_tls()
            .map_err(StartError::Config)?
            .map(crate::tls::ServerTls::load)
            .transpose()
            .map_err(|e| StartError::Config(format!("client TLS: {e}")))?;
        let http = match (&client, config.http_tls) {
            (_, false) => None,
            (None, true) => {
                return Err(StartError::Config(
                    "--http-tls serves the HTTP port with the client port's certificate: it needs --tls-cert and --tls-key".into(),
                ))
            }
            (Some(_), true) => {
                let files = config
                    .client_tls()
                    .map_err(StartError::Config)?
                    .map(|files| crate::tls::ServerFiles {
                        client_ca: None,
                        ..files
                    })
                    .expect("client TLS is on");
                Some(
                    crate::tls::ServerTls::load(files)
                        .map_err(|e| StartError::Config(format!("HTTP TLS: {e}")))?,
                )
            }
        };
        let (peer_server, peer_client) = match config.peer_tls() {
            None => (None, None),
            Some((server, client)) => {
                let peer = |e: crate::tls::TlsError| StartError::Config(format!("peer TLS: {e}"));
                (
                    Some(crate::tls::ServerTls::load(server).map_err(peer)?),
                    Some(crate::tls::ClientTls::load(client).map_err(peer)?),
                )
            }
        };
        Ok(Self {
            client,
            peer_server,
            peer_client,
            http,
        })
    }

    /// Reads every file again; what fails to load leaves what is in use in place.
    fn reload(&self) -> Result<(), String> {
        let reloads = [
            ("client TLS", self.client.as_ref().map(|tls| tls.reload())),
            (
                "peer TLS",
                self.peer_server.as_ref().map(|tls| tls.reload()),
            ),
            ("HTTP TLS", self.http.as_ref().map(|tls| tls.reload())),
            (
                "peer TLS (calls)",
                self.peer_client.as_ref().map(|tls| tls.reload()),
            ),
        ];
        let failed: Vec<String> = reloads
            .into_iter()
            .filter_map(|(what, reloaded)| Some(format!("{what}: {}", reloaded?.err()?)))
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }
}

/// Warns when a port given on the command line (`configured`, not 0) lies in the machine's
/// ephemeral port range (`/proc/sys/net/ipv4/ip_local_port_range`): the kernel may hand it to
/// an outgoing connection while this node is down (seen: a peer's reconnect loop connected to
/// itself on a stopped node's port, and the node could not restart for a minute).
fn warn_if_ephemeral(what: &str, port: u16, configured: u16) {
    if configured == 0 {
        return;
    }
    let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return;
    };
    let bounds: Vec<u16> = range
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    if let [low, high] = bounds[..] {
        if (low..=high).contains(&port) {
            tracing::warn!(
                port,
                ephemeral = %format!("{low}-{high}"),
                "the {what} port is in this machine's ephemeral port range: an outgoing connection may take it while the node is down, and the node could not start again until it is released; choose a port outside it (or narrow net.ipv4.ip_local_port_range)"
            );
        }
    }
}

/// This node's standing in the membership, and its admin request handler.
fn start_membership(
    config: &NodeConfig,
    raft: &Raft,
    peers: &Arc<PeerClients>,
    identity: Arc<ClusterIdentity>,
    advertised: &Advertised,
) -> (Arc<Standing>, Arc<Admin>) {
    // A leaving node that hears nothing from the leader for this long was removed (it is far
    // longer than a heartbeat, and than an election).
    let removal_grace = Duration::from_millis(2 * config.election_timeout_max_ms);
    let standing = Standing::watch(config.id, raft.clone(), identity, removal_grace);
    let admin = Arc::new(
        Admin::new(
            config.id,
            raft.clone(),
            peers.clone(),
            standing.clone(),
            advertised.client_addr.clone(),
            config.peer_probe_timeout(),
            config.request_deadline(),
        )
        .with_token(config.admin_token.clone()),
    );
    admin.spawn_finisher();
    (standing, admin)
}

/// The proposer and the router over it.
fn start_router(
    config: &NodeConfig,
    raft: &Raft,
    state: &StateReader,
    peers: &Arc<PeerClients>,
    standing: Arc<Standing>,
    disk: Arc<crate::disk::DiskGuard>,
    batch_sizes: prometheus_client::metrics::histogram::Histogram,
) -> Arc<Router> {
    let batch_limits = BatchLimits {
        max_requests: config.batch_max_requests,
        max_bytes: config.entry_max_bytes(),
        max_in_flight: config.batch_max_in_flight,
        max_pending: config.max_pending_writes,
        forward_timeout: config.request_deadline(),
        sessions: crate::types::SessionLimits {
            ttl_ms: config.session_ttl_ms,
            max_sessions: config.max_sessions,
            max_answers: config.max_session_answers,
        },
    };
    let capacity = crate::types::Capacity {
        max_bytes: config.max_bytes,
        max_keys: config.max_keys,
    };
    let eviction = Arc::new(crate::eviction::Eviction::new(
        config.eviction,
        capacity,
        state.clone(),
    ));
    let proposer = Proposer::spawn(
        config.id,
        raft.clone(),
        peers.clone(),
        batch_limits,
        crate::proposer::Gates {
            eviction: eviction.clone(),
            clock: state.log_clock().clone(),
            disk,
            batch_sizes,
        },
    );
    let expiry_limits = crate::expiry::ExpiryLimits {
        interval: Duration::from_millis(config.expiry_interval_ms.max(1)),
        scan_keys: config.expiry_scan_keys.max(1),
        batch_keys: config.expiry_batch_keys.max(1),
    };
    crate::expiry::spawn(
        config.id,
        raft.clone(),
        state.clone(),
        proposer.clone(),
        expiry_limits,
    );
    let local = LocalState {
        state: state.clone(),
        eviction,
    };
    Arc::new(Router::new(
        config.id,
        raft.clone(),
        local,
        peers.clone(),
        proposer,
        RouterLimits {
            request_deadline: config.request_deadline(),
            max_waiting_reads: config.max_waiting_reads,
            leader_silence: Duration::from_millis(config.election_timeout_min_ms),
        },
        standing,
    ))
}

/// With `--join`, asks the cluster to add this node, in the background: the node answers
/// `status` meanwhile. The receiver turns `Some(reason)` if the join timed out.
fn spawn_join(
    config: &NodeConfig,
    raft: &Raft,
    standing: &Arc<Standing>,
    advertised: &Advertised,
) -> tokio::sync::watch::Receiver<Option<String>> {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let StartMode::Join { addr, voter } = config.start_mode() else {
        return rx;
    };
    let request = JoinRequest {
        id: config.id,
        peer_addr: advertised.peer_addr.clone(),
        member_addr: addr,
        voter,
        token: config.admin_token.clone().unwrap_or_default(),
        catch_up: CatchUp {
            max_lag: config.catch_up_max_lag,
            timeout: config.join_timeout(),
        },
        // The member may forward to the leader, which may wait its own deadline for a commit.
        call_timeout: 3 * config.request_deadline(),
        connect: crate::client::ClientOptions {
            tls: config
                .join_tls_ca
                .clone()
                .map(|ca| crate::client::TlsOptions {
                    files: crate::tls::ClientFiles {
                        ca,
                        ..Default::default()
                    },
                    server_name: None,
                }),
            token: config.client_token.clone(),
        },
    };
    let timeout = config.join_timeout();
    let (raft, standing) = (raft.clone(), standing.clone());
    tokio::task::spawn_blocking(move || {
        // A removed node asks again: being added clears its removal.
        let done = || !standing.removed() && joined(&raft, request.id, request.voter);
        match membership::join_cluster(&request, &done, timeout) {
            Ok(()) => tracing::info!(id = request.id, voter, "this node is a member"),
            Err(reason) => {
                tracing::error!(%reason, "join failed");
                let _ = tx.send(Some(reason));
            }
        }
    });
    rx
}

/// Whether node `id` is in its local membership as a voter (or, if `!voter`, at all).
fn joined(raft: &Raft, id: NodeId, voter: bool) -> bool {
    let metrics = raft.metrics();
    let metrics = metrics.borrow_watched();
    let membership = &metrics.membership_config;
    if voter {
        let m = membership.membership();
        m.get_joint_config().len() == 1 && m.voter_ids().any(|v| v == id)
    } else {
        membership::lists(membership, id)
    }
}

/// What a node is made of below its services: its stores, its Raft and its peer clients.
struct Core {
    /// Raft over the node's stores, started.
    raft: Raft,
    /// Connections to the other nodes, shared by Raft, the router and the membership.
    peers: Arc<PeerClients>,
    /// Local reads of the replica.
    state: StateReader,
    /// Flushes the state machine (periodically, and on stop).
    state_flusher: StateFlusher,
    /// The log store's flush counters, for `status`.
    flushes: Arc<FlushStats>,
    /// The state machine's snapshot builds and installs, counted.
    snapshots: Arc<SnapshotCounts>,
    /// The data dir's node id, cluster id and incarnation.
    identity: Arc<ClusterIdentity>,
    /// Who this node is to its peers, and who they are to it.
    identities: Arc<PeerIdentities>,
    /// Where snapshots received from the leader are written.
    inbox: SnapshotInbox,
}

/// Logs at INFO each change of leader or term this node sees (openraft logs elections only at
/// its own info level, below the default filter): who leads now, in which term, or that no
/// leader is known.
fn log_leadership(id: NodeId, raft: &Raft) {
    let mut metrics = raft.metrics();
    tokio::spawn(async move {
        let mut seen = None;
        loop {
            let now = {
                let m = metrics.borrow_watched();
                (m.current_term, m.current_leader)
            };
            if seen != Some(now) {
                let (term, leader) = now;
                match leader {
                    Some(leader) if leader == id => tracing::info!(term, "this node leads"),
                    Some(leader) => tracing::info!(term, leader, "following a leader"),
                    None => tracing::info!(term, "no leader known"),
                }
                seen = Some(now);
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Opens the data dir, starts Raft on it, and bootstraps a new cluster if this start says so.
async fn open_core(
    config: &NodeConfig,
    faults: Arc<Faults>,
    advertised: &Advertised,
    peer_tls: Option<Arc<crate::tls::ClientTls>>,
) -> Result<Core, StartError> {
    let (id, data_dir) = (config.id, config.data_dir());
    let cluster_id = config.cluster_id();
    let (log, sm) = store::open(
        &data_dir,
        id,
        cluster_id.as_deref(),
        &StoreOptions {
            cache_capacity_bytes: config.cache_capacity_bytes,
            log_segment_bytes: config.log_segment_bytes,
            watch_history_bytes: config.watch_history_bytes,
        },
    )
    .await?;
    let identity = ClusterIdentity::load(&data_dir)
        .map_err(|e| StartError::Config(format!("cannot read the data dir's identity: {e}")))?;
    let identity = Arc::new(identity);
    let state_flusher = log.state_flusher();
    let flushes = log.flush_stats();
    let snapshots = sm.snapshot_counts();
    let state = sm.reader();
    let inbox = sm.inbox();

    let identities = PeerIdentities::load(id, identity.clone(), data_dir.clone()).map_err(|e| {
        StartError::Config(format!(
            "cannot read what the data dir knows of its peers: {e}"
        ))
    })?;
    let peers = PeerClients::new(
        identities.clone(),
        faults,
        Duration::from_secs(1),
        config.peer_max_message_bytes(),
        peer_tls,
    );
    let raft = Raft::new(
        id,
        raft_config(config)?,
        PeerNetwork::new(peers.clone()),
        log,
        sm,
    )
    .await
    .map_err(|e| StartError::Raft(e.to_string()))?;
    identities.watch_membership(&raft);
    if let Err(e) = check_recorded_address(&raft, id, advertised).await {
        let _ = raft.shutdown().await;
        return Err(e);
    }
    if config.start_mode() == StartMode::Bootstrap {
        bootstrap(&raft, config, advertised).await?;
    }
    Ok(Core {
        raft,
        peers,
        state,
        state_flusher,
        flushes,
        snapshots,
        identity,
        identities,
        inbox,
    })
}

/// Refuses to start a member whose peer address is not the one its cluster records for it: the
/// others would send it nothing, while it could still call elections and win them (seen: a
/// follower restarted on another `--peer-listen` became a leader no one could forward to).
async fn check_recorded_address(
    raft: &Raft,
    id: NodeId,
    own: &Advertised,
) -> Result<(), StartError> {
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    if !initialized {
        return Ok(());
    }
    let loaded = raft
        .wait(Some(Duration::from_secs(5)))
        .metrics(
            |m| m.membership_config.log_id().is_some(),
            "membership loaded",
        )
        .await;
    let Ok(metrics) = loaded else {
        return Ok(());
    };
    let membership = metrics.membership_config.membership();
    let recorded = membership.get_node(&id).map(|node| node.peer_addr.clone());
    let alone = membership.nodes().all(|(member, _)| *member == id);
    match recorded {
        Some(recorded) if alone && addresses_differ(&recorded, &own.peer_addr) => {
            // No other member needs to reach it; a node added later would use the old record.
            tracing::warn!(%recorded, now = %own.peer_addr, "this one-node cluster records another peer address for this node: a node that joins it will not reach it there");
            Ok(())
        }
        Some(recorded) if addresses_differ(&recorded, &own.peer_addr) => Err(StartError::Config(format!(
            "the cluster records node {id} at peer address {recorded}, but this node's peer address is {}: the other nodes would not reach it. Start it with --peer-listen (or --advertise-peer) {recorded}, or replace it (`raftcache admin replace-node`, docs/operations.md)",
            own.peer_addr
        ))),
        _ => Ok(()),
    }
}

/// Whether two peer addresses name different places. An unspecified IP (`0.0.0.0`) or a host
/// name cannot be compared with an address: then only the ports are.
fn addresses_differ(recorded: &str, own: &str) -> bool {
    use std::net::SocketAddr;
    let port = |addr: &str| addr.rsplit(':').next().map(str::to_string);
    match (recorded.parse::<SocketAddr>(), own.parse::<SocketAddr>()) {
        (Ok(r), Ok(o)) if !o.ip().is_unspecified() => r != o,
        _ => port(recorded) != port(own),
    }
}

fn raft_config(config: &NodeConfig) -> Result<Arc<openraft::Config>, StartError> {
    let raft_config = openraft::Config {
        cluster_name: "raftcache".into(),
        heartbeat_interval: config.heartbeat_ms,
        election_timeout_min: config.election_timeout_min_ms,
        election_timeout_max: config.election_timeout_max_ms,
        // A follower that is slow to answer (fsync stall) gets the same time as a heartbeat.
        install_snapshot_timeout: config.heartbeat_ms.max(1000),
        max_payload_entries: MAX_ENTRIES_PER_APPEND,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
        max_in_snapshot_log_to_keep: config.snapshot_keep_log,
        snapshot_max_chunk_size: config.snapshot_chunk_bytes,
        // A node that cannot win (cut off, restarted, behind) asks before it raises its term,
        // so it never deposes a leader that a quorum follows.
        enable_pre_vote: Some(true),
        // A leader that no quorum has answered for a lease stops taking writes, and then sends
        // heartbeats only every other such period, so the rest can elect a leader they reach.
        quorum_loss_probe_interval: Some(2 * config.election_timeout_max_ms),
        // A leader that restarts does not resume leading in its old term: it sent entries to
        // its followers before its own log synced them, so after a power cut its log can lack
        // entries of that term that a quorum committed, and leading on it would append other
        // entries under the same log ids (lost writes, replicas apart). An election in a new
        // term checks every voter's log instead (docs/durability.md).
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    raft_config
        .validate()
        .map(Arc::new)
        .map_err(|e| StartError::Config(e.to_string()))
}

/// On first start (empty data dir), proposes the initial membership. Every node of a new
/// cluster may do this with the same members; a node that already heard from a leader is told
/// it is not allowed, which is fine.
async fn bootstrap(raft: &Raft, config: &NodeConfig, own: &Advertised) -> Result<(), StartError> {
    if raft
        .is_initialized()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?
    {
        tracing::info!(
            id = config.id,
            "data dir holds state: resuming, --initial-cluster ignored"
        );
        return Ok(());
    }
    let members = config.bootstrap_members(own).map_err(StartError::Config)?;
    if let Some(own) = members.get(&config.id) {
        refuse_unspecified_peer_addr(&own.peer_addr).map_err(StartError::Config)?;
    }
    let nodes = members.into_iter().map(|(id, m)| {
        let node = Node {
            peer_addr: m.peer_addr,
            client_addr: m.client_addr,
        };
        (id, node)
    });
    match raft
        .initialize(nodes.collect::<std::collections::BTreeMap<_, _>>())
        .await
    {
        Ok(()) => Ok(()),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(StartError::Raft(format!("bootstrap failed: {e}"))),
    }
}

/// Refuses to found a cluster that records this node's peer address as an unspecified IP
/// (`0.0.0.0`, `::`): a node that joins later would send its writes there and reach no one.
fn refuse_unspecified_peer_addr(peer_addr: &str) -> Result<(), String> {
    match peer_addr.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => Err(format!(
            "this node would found a cluster that records its peer address as {addr}, which no node that joins it can reach: give the address to record with --advertise-peer HOST:PORT (this host's name or IP as the other nodes see it, e.g. --advertise-peer node1:{port}), or listen on a specific address with --peer-listen",
            port = addr.port()
        )),
        _ => Ok(()),
    }
}

impl RunningNode {
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Reads the TLS certificates, keys and CAs again (SIGHUP): connections opened from now on
    /// use them. A file that cannot be used leaves what is in use in place, and is reported.
    pub fn reload_tls(&self) -> Result<(), String> {
        self.tls.reload()
    }

    pub fn client_addr(&self) -> SocketAddr {
        self.client_server.local_addr()
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_server.local_addr()
    }

    /// The HTTP port's address, if it is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_server.as_ref().map(|h| h.local_addr())
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Resolves when this node's Raft stops by itself (a fatal storage error), as opposed to
    /// through `shutdown`, within `STOPPED_POLL`.
    ///
    /// Polled rather than woken by every change of openraft's metrics: they change with every
    /// commit, and waking the thread that waits here for each one cost a context switch per
    /// write batch.
    pub async fn raft_stopped(&self) {
        let metrics = self.raft.metrics();
        loop {
            let stopped = {
                let now = metrics.borrow_watched();
                now.running_state.is_err() || now.state == openraft::ServerState::Shutdown
            };
            if stopped {
                return;
            }
            tokio::time::sleep(STOPPED_POLL).await;
        }
    }

    /// This replica's local state, for tests that compare replicas.
    pub fn state(&self) -> &StateReader {
        &self.state
    }

    /// Open client connections.
    pub fn open_client_connections(&self) -> usize {
        self.client_server.open_connections()
    }

    pub fn status(&self) -> NodeStatus {
        let mut status = crate::api::node_status(self.id, &self.raft);
        status.log_flushes = Some(self.flushes.count.load(Ordering::Relaxed) as i64);
        status
    }

    /// Whether this node was removed from its cluster.
    pub fn removed(&self) -> bool {
        self.standing.removed()
    }

    /// Resolves with the reason when the node gave up on joining its cluster (`--join`).
    pub async fn failed(&self) -> String {
        let mut failed = self.failed.clone();
        loop {
            if let Some(reason) = failed.borrow().clone() {
                return reason;
            }
            if failed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops the node: no new client requests, in-flight ones answered or failed, Raft stopped,
    /// everything flushed. When it returns, nothing holds the data dir any more, so the same
    /// data dir can be opened again (a restart in the same process).
    pub async fn shutdown(mut self) {
        tracing::info!(id = self.id, "node stopping");
        if let Some(http) = &self.http_server {
            http.stop();
        }
        self.client_server.stop();
        wait_until("client connections to finish", || {
            self.client_server.drained()
        })
        .await;
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(id = self.id, error = %e, "raft did not stop cleanly");
        }
        self.peer_server.stop();
        wait_until("peer connections to finish", || self.peer_server.drained()).await;
        let flushes = self.flushes.clone();
        wait_until("log flushes to finish", || {
            flushes.in_flight.load(Ordering::SeqCst) == 0
        })
        .await;
        let flusher = self.state_flusher.clone();
        let flushed = tokio::task::spawn_blocking(move || flusher.flush()).await;
        if !matches!(flushed, Ok(Ok(_))) {
            tracing::error!(id = self.id, result = ?flushed, "final flush failed");
        }
        tracing::info!(id = self.id, "node stopped");
    }
}

/// Polls `done` until it holds, for at most `SHUTDOWN_WAIT`.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("gave up waiting for {what} after {SHUTDOWN_WAIT:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How often `raft_stopped` looks whether Raft stopped.
const STOPPED_POLL: Duration = Duration::from_millis(200);

/// Longest a shutdown step waits (a client request in flight may wait for its deadline).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_is_not_founded_on_an_unspecified_peer_address() {
        let why = refuse_unspecified_peer_addr("0.0.0.0:9190").unwrap_err();
        assert!(why.contains("--advertise-peer HOST:PORT"), "{why}");
        assert!(refuse_unspecified_peer_addr("[::]:9190").is_err());
        assert!(refuse_unspecified_peer_addr("127.0.0.1:9190").is_ok());
        assert!(refuse_unspecified_peer_addr("node1:9190").is_ok());
    }
}
