//! What the HTTP port (`http.rs`) answers: `/metrics` in the Prometheus (OpenMetrics) text
//! format, `/health` and `/ready`.
//!
//! Counters of events (requests by method and outcome, their latency, leader changes) are
//! kept as they happen; everything else is read at scrape time from where it already lives:
//! openraft's metrics (role, term, leader, indexes, each follower's matched index), the state
//! machine's counters (keys, bytes, expired, evicted), the API's read counters, the log's sync
//! count, the servers' connection counts and the peer clients' failed calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;
use openraft::ServerState;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::http::{Reply, Routes};
use crate::network::PeerClients;
use crate::router::Router;
use crate::server::ConnectionCounts;
use crate::store::FlushStats;
use crate::types::Raft;

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
type PeerLabels = [(&'static str, String); 1];
type PeerErrorLabels = [(&'static str, String); 2];

/// Client requests per proposed log entry: 1 to 1024, doubling.
pub fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

fn request_histogram() -> Histogram {
    // 50 us to about 6.5 s, doubling.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// Counters kept as events happen, shared with the parts that count them.
#[derive(Clone)]
pub struct EventMetrics {
    requests: Family<Labels2, Counter>,
    request_seconds: Family<Labels1, Histogram, fn() -> Histogram>,
}

impl Default for EventMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl EventMetrics {
    pub fn new() -> Self {
        Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(request_histogram),
        }
    }

    /// A client call of `method` ended with `outcome` after `took`.
    pub fn request(&self, method: &'static str, outcome: &'static str, took: Duration) {
        self.requests
            .get_or_create(&[("method", method), ("outcome", outcome)])
            .inc();
        self.request_seconds
            .get_or_create(&[("method", method)])
            .observe(took.as_secs_f64());
    }
}

/// Where the scrape-time figures come from.
pub struct Sources {
    pub raft: Raft,
    pub router: Arc<Router>,
    pub peers: Arc<PeerClients>,
    pub flushes: Arc<FlushStats>,
    pub snapshots: Arc<crate::store::SnapshotCounts>,
    pub client_connections: ConnectionCounts,
    pub peer_connections: ConnectionCounts,
    /// Hits and misses of this node's reads.
    pub reads: Arc<crate::api::ReadCounters>,
    /// How long `/ready` waits for the leader's commit index and this node's apply.
    pub ready_timeout: Duration,
    /// The data dir: its log, snapshot and filesystem are measured at each scrape.
    pub data_dir: std::path::PathBuf,
    /// Client requests per entry this node proposed as leader.
    pub batch_sizes: Histogram,
}

/// The gauges and mirrored counters set at each scrape, and the registry that holds them all.
struct Scraped {
    registry: Registry,
    state: Family<Labels1, Gauge>,
    term: Gauge,
    leader: Gauge,
    leader_changes: Counter,
    last_log_index: Gauge,
    committed_index: Gauge,
    applied_index: Gauge,
    snapshot_index: Gauge,
    purged_index: Gauge,
    follower_matched: Family<PeerLabels, Gauge>,
    follower_lag: Family<PeerLabels, Gauge>,
    keys: Gauge,
    bytes: Gauge,
    sessions: Gauge,
    watch_history_bytes: Gauge,
    hits: Counter,
    misses: Counter,
    expired: Counter,
    evicted: Counter,
    log_syncs: Counter,
    connections_open: Family<Labels1, Gauge>,
    connections_refused: Family<Labels1, Counter>,
    peer_errors: Family<PeerErrorLabels, Counter>,
    log_segments: Gauge,
    log_bytes: Gauge,
    snapshot_bytes: Gauge,
    snapshot_builds: Family<Labels1, Counter>,
    snapshot_last_build_seconds: Gauge<f64, AtomicU64>,
    snapshot_installs: Family<Labels1, Counter>,
    disk_free_bytes: Gauge,
    disk_size_bytes: Gauge,
}

/// Raises `counter` to `total` (a count kept elsewhere, which only grows).
fn mirror(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

impl Scraped {
    fn new(events: &EventMetrics, sources: &Sources) -> Self {
        let flushes = &sources.flushes;
        let mut scraped = Self {
            registry: Registry::with_prefix("raftcache"),
            state: Family::default(),
            term: Gauge::default(),
            leader: Gauge::default(),
            leader_changes: Counter::default(),
            last_log_index: Gauge::default(),
            committed_index: Gauge::default(),
            applied_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            purged_index: Gauge::default(),
            follower_matched: Family::default(),
            follower_lag: Family::default(),
            keys: Gauge::default(),
            bytes: Gauge::default(),
            sessions: Gauge::default(),
            watch_history_bytes: Gauge::default(),
            hits: Counter::default(),
            misses: Counter::default(),
            expired: Counter::default(),
            evicted: Counter::default(),
            log_syncs: Counter::default(),
            connections_open: Family::default(),
            connections_refused: Family::default(),
            peer_errors: Family::default(),
            log_segments: Gauge::default(),
            log_bytes: Gauge::default(),
            snapshot_bytes: Gauge::default(),
            snapshot_builds: Family::default(),
            snapshot_last_build_seconds: Gauge::default(),
            snapshot_installs: Family::default(),
            disk_free_bytes: Gauge::default(),
            disk_size_bytes: Gauge::default(),
        };
        let r = &mut scraped.registry;
        r.register(
            "raft_state",
            "1 for this node's Raft role (leader, follower, candidate, learner, shutdown), 0 for the others",
            scraped.state.clone(),
        );
        r.register("raft_term", "The current term", scraped.term.clone());
        r.register(
            "raft_leader_id",
            "The leader this node knows, 0 if none",
            scraped.leader.clone(),
        );
        r.register(
            "raft_leader_changes",
            "Times this node saw the leader change (to another node, or to none)",
            scraped.leader_changes.clone(),
        );
        r.register(
            "raft_last_log_index",
            "Index of the last entry in this node's log",
            scraped.last_log_index.clone(),
        );
        r.register(
            "raft_committed_index",
            "Index of the last entry this node knows to be committed (and holds)",
            scraped.committed_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Index of the last entry applied to this node's state machine",
            scraped.applied_index.clone(),
        );
        r.register(
            "raft_snapshot_index",
            "Index the latest snapshot covers, 0 if none",
            scraped.snapshot_index.clone(),
        );
        r.register(
            "raft_purged_index",
            "Index up to which the log was compacted, 0 if never",
            scraped.purged_index.clone(),
        );
        r.register(
            "raft_follower_matched_index",
            "On the leader: the last index each follower is known to hold",
            scraped.follower_matched.clone(),
        );
        r.register(
            "raft_follower_lag_entries",
            "On the leader: entries each follower is behind the leader's log",
            scraped.follower_lag.clone(),
        );
        r.register("keys", "Keys held by this replica", scraped.keys.clone());
        r.register(
            "bytes",
            "Bytes of keys and values held by this replica",
            scraped.bytes.clone(),
        );
        r.register(
            "sessions",
            "Clients whose exactly-once answers this replica keeps (WriteOptions.client_id)",
            scraped.sessions.clone(),
        );
        r.register(
            "watch_history_bytes",
            "Bytes of recent changes of keys this node keeps for watch (--watch-history-bytes at most)",
            scraped.watch_history_bytes.clone(),
        );
        r.register(
            "read_hits",
            "Keys found by the reads this node served",
            scraped.hits.clone(),
        );
        r.register(
            "read_misses",
            "Keys not found by the reads this node served",
            scraped.misses.clone(),
        );
        r.register(
            "expired_keys",
            "Keys removed by the expiry sweep (replicated: the same on every replica)",
            scraped.expired.clone(),
        );
        r.register(
            "evicted_keys",
            "Keys removed by eviction (replicated: the same on every replica)",
            scraped.evicted.clone(),
        );
        r.register(
            "log_syncs",
            "Syncs (fdatasync rounds) of the Raft log since the node started",
            scraped.log_syncs.clone(),
        );
        r.register(
            "connections_open",
            "Connections open now, by port (client, peer)",
            scraped.connections_open.clone(),
        );
        r.register(
            "connections_refused",
            "Connections refused at --max-connections since the node started, by port",
            scraped.connections_refused.clone(),
        );
        r.register(
            "peer_rpc_errors",
            "Failed calls to other nodes since the node started, by peer and kind (unreachable, no_answer, refused)",
            scraped.peer_errors.clone(),
        );
        r.register(
            "requests",
            "Client calls answered, by method and outcome (ok, or the exception raised)",
            events.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from a client call's decoding to its answer, by method",
            events.request_seconds.clone(),
        );
        r.register(
            "log_sync_duration_seconds",
            "Time each sync (fdatasync round) of the Raft log took",
            flushes.sync_seconds.clone(),
        );
        r.register(
            "proposals_per_entry",
            "Client requests carried by each log entry this node proposed as leader (group commit)",
            sources.batch_sizes.clone(),
        );
        r.register(
            "log_segments",
            "Segment files of the Raft log",
            scraped.log_segments.clone(),
        );
        r.register(
            "log_bytes",
            "Bytes of the Raft log's segment files",
            scraped.log_bytes.clone(),
        );
        r.register(
            "snapshot_bytes",
            "Size of the current snapshot file, 0 if none",
            scraped.snapshot_bytes.clone(),
        );
        r.register(
            "snapshot_builds",
            "Snapshot builds since the node started, by outcome (published; dropped, when an install overtook it or the current snapshot was as recent; failed)",
            scraped.snapshot_builds.clone(),
        );
        r.register(
            "snapshot_last_build_seconds",
            "Time the last snapshot build took (applies go on meanwhile), 0 if none yet",
            scraped.snapshot_last_build_seconds.clone(),
        );
        r.register(
            "snapshot_installs",
            "Snapshots received from a leader since the node started, by outcome (installed, refused)",
            scraped.snapshot_installs.clone(),
        );
        r.register(
            "disk_free_bytes",
            "Bytes free for this node on the filesystem of its data dir",
            scraped.disk_free_bytes.clone(),
        );
        r.register(
            "disk_size_bytes",
            "Size of the filesystem of this node's data dir",
            scraped.disk_size_bytes.clone(),
        );
        scraped
    }
}

/// The HTTP port's routes for one node.
pub struct NodeHttp {
    sources: Sources,
    scraped: Mutex<Scraped>,
}

impl NodeHttp {
    /// Also starts counting leader changes.
    pub fn new(sources: Sources, events: &EventMetrics) -> Arc<Self> {
        let http = Arc::new(Self {
            scraped: Mutex::new(Scraped::new(events, &sources)),
            sources,
        });
        let changes = http
            .scraped
            .lock()
            .expect("metrics lock")
            .leader_changes
            .clone();
        let mut metrics = http.sources.raft.metrics();
        tokio::spawn(async move {
            let mut leader = metrics.borrow_watched().current_leader;
            while metrics.changed().await.is_ok() {
                let now = metrics.borrow_watched().current_leader;
                if now != leader {
                    changes.inc();
                    leader = now;
                }
            }
        });
        http
    }

    fn health(&self) -> Reply {
        let metrics = self.sources.raft.metrics().borrow_watched().clone();
        match (&metrics.running_state, metrics.state) {
            (Err(e), _) => Reply::text(503, format!("the Raft core stopped: {e}\n")),
            (Ok(()), ServerState::Shutdown) => Reply::text(503, "the Raft core is shut down\n"),
            (Ok(()), _) => Reply::text(200, "ok\n"),
        }
    }

    async fn ready(&self) -> Reply {
        let health = self.health();
        if health.status != 200 {
            return health;
        }
        let started = Instant::now();
        match self.sources.router.ready(self.sources.ready_timeout).await {
            Ok(applied) => Reply::text(
                200,
                format!(
                    "ready: applied index {applied}, caught up with the leader's commit in {} ms\n",
                    started.elapsed().as_millis()
                ),
            ),
            Err(reason) => Reply::text(503, format!("not ready: {reason}\n")),
        }
    }

    fn metrics(&self) -> Reply {
        let s = &self.sources;
        let m = s.raft.metrics().borrow_watched().clone();
        let scraped = self.scraped.lock().expect("metrics lock");
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        for state in ["leader", "follower", "candidate", "learner", "shutdown"] {
            scraped
                .state
                .get_or_create(&[("state", state)])
                .set(i64::from(state == role));
        }
        let as_gauge = |v: Option<u64>| v.unwrap_or(0) as i64;
        scraped.term.set(m.current_term as i64);
        scraped.leader.set(as_gauge(m.current_leader));
        let last = m.last_log_index.unwrap_or(0);
        scraped.last_log_index.set(last as i64);
        scraped
            .committed_index
            .set(as_gauge(m.local_committed.map(|l| l.index)));
        scraped
            .applied_index
            .set(as_gauge(m.last_applied.map(|l| l.index)));
        scraped
            .snapshot_index
            .set(as_gauge(m.snapshot.map(|l| l.index)));
        scraped
            .purged_index
            .set(as_gauge(m.purged.map(|l| l.index)));
        scraped.follower_matched.clear();
        scraped.follower_lag.clear();
        if let Some(replication) = &m.replication {
            for (id, matched) in replication {
                if *id == m.id {
                    continue;
                }
                let labels = [("follower", id.to_string())];
                let matched = matched.map_or(0, |l| l.index);
                scraped
                    .follower_matched
                    .get_or_create(&labels)
                    .set(matched as i64);
                scraped
                    .follower_lag
                    .get_or_create(&labels)
                    .set(last.saturating_sub(matched) as i64);
            }
        }
        if let Ok(replica) = s.router.state().stats() {
            scraped.keys.set(replica.keys as i64);
            scraped.bytes.set(replica.bytes as i64);
            scraped.sessions.set(replica.sessions as i64);
            mirror(&scraped.expired, replica.expired);
            mirror(&scraped.evicted, replica.evicted);
        }
        scraped
            .watch_history_bytes
            .set(s.router.state().history().held_bytes() as i64);
        mirror(&scraped.hits, s.reads.hits.load(Ordering::Relaxed));
        mirror(&scraped.misses, s.reads.misses.load(Ordering::Relaxed));
        mirror(&scraped.log_syncs, s.flushes.count.load(Ordering::Relaxed));
        for (port, counts) in [
            ("client", &s.client_connections),
            ("peer", &s.peer_connections),
        ] {
            scraped
                .connections_open
                .get_or_create(&[("port", port)])
                .set(counts.open.load(Ordering::Relaxed) as i64);
            mirror(
                &scraped.connections_refused.get_or_create(&[("port", port)]),
                counts.refused.load(Ordering::Relaxed),
            );
        }
        for ((peer, kind), count) in s.peers.error_counts() {
            let labels = [("peer", peer.to_string()), ("kind", kind.to_string())];
            mirror(&scraped.peer_errors.get_or_create(&labels), count);
        }
        let (segments, log_bytes) = dir_files(&s.data_dir.join("log"), ".seg");
        scraped.log_segments.set(segments as i64);
        scraped.log_bytes.set(log_bytes as i64);
        let snapshot = std::fs::metadata(s.data_dir.join("snapshots").join("current"));
        scraped
            .snapshot_bytes
            .set(snapshot.map_or(0, |m| m.len()) as i64);
        let snap = &s.snapshots;
        for (family, outcome, count) in [
            (&scraped.snapshot_builds, "published", &snap.built),
            (&scraped.snapshot_builds, "dropped", &snap.dropped),
            (&scraped.snapshot_builds, "failed", &snap.build_failed),
            (&scraped.snapshot_installs, "installed", &snap.installed),
            (&scraped.snapshot_installs, "refused", &snap.install_failed),
        ] {
            let counter = family.get_or_create(&[("outcome", outcome)]);
            mirror(&counter, count.load(Ordering::Relaxed));
        }
        let last_build_ms = snap.last_build_ms.load(Ordering::Relaxed);
        scraped
            .snapshot_last_build_seconds
            .set(last_build_ms as f64 / 1000.0);
        if let Some((free, size)) = crate::disk::disk_space(&s.data_dir) {
            scraped.disk_free_bytes.set(free as i64);
            scraped.disk_size_bytes.set(size as i64);
        }
        let mut body = String::new();
        if let Err(e) = encode(&mut body, &scraped.registry) {
            return Reply::text(500, format!("cannot encode the metrics: {e}\n"));
        }
        Reply {
            status: 200,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        }
    }
}

/// How many files in `dir` end with `suffix`, and their bytes.
fn dir_files(dir: &std::path::Path, suffix: &str) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
        .fold((0, 0), |(n, bytes), e| {
            (n + 1, bytes + e.metadata().map_or(0, |m| m.len()))
        })
}

impl Routes for NodeHttp {
    async fn get(&self, path: &str) -> Reply {
        match path {
            "/metrics" => self.metrics(),
            "/health" => self.health(),
            "/ready" => self.ready().await,
            "/" => Reply::text(200, "raftcache: GET /metrics, /health, /ready\n"),
            other => Reply::text(
                404,
                format!("no such path: {other} (served: /metrics, /health, /ready)\n"),
            ),
        }
    }
}
