//! In-process test clusters: several raftcache nodes in one test process, on port-0 loopback
//! listeners, each with its own temp data dir, sharing one fault seam. Waits poll a condition
//! with a deadline; nothing sleeps for a fixed time.

#![allow(dead_code)]

use openraft::async_runtime::watch::WatchReceiver;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use raftcache::client::CacheClient;
use raftcache::config::NodeConfig;
use raftcache::network::Faults;
use raftcache::node::{self, RunningNode};
use raftcache::types::NodeId;
use raftcache_testkit::wait::wait_until_async;
use tempfile::TempDir;

/// How long a test waits for a condition before failing.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Logs the start of a test phase.
pub fn phase(name: &str) {
    tracing::warn!("--- phase: {name}");
    eprintln!("--- phase: {name}");
}

pub struct InProcessCluster {
    pub dir: TempDir,
    pub faults: Arc<Faults>,
    pub client_addrs: BTreeMap<NodeId, SocketAddr>,
    pub peer_addrs: BTreeMap<NodeId, SocketAddr>,
    pub nodes: BTreeMap<NodeId, RunningNode>,
    /// Extra `serve` flags given to every node.
    pub extra_args: Vec<String>,
}

fn free_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind port 0")
}

impl InProcessCluster {
    /// Starts `n` voters (ids 1..=n) bootstrapped together with `--initial-cluster`.
    pub async fn start(n: u64, extra_args: &[&str]) -> Self {
        init_tracing();
        let mut listeners = BTreeMap::new();
        for id in 1..=n {
            listeners.insert(id, (free_listener(), free_listener()));
        }
        let mut cluster = InProcessCluster {
            dir: TempDir::new().expect("temp dir"),
            faults: Arc::new(Faults::default()),
            client_addrs: listeners
                .iter()
                .map(|(id, (c, _))| (*id, c.local_addr().unwrap()))
                .collect(),
            peer_addrs: listeners
                .iter()
                .map(|(id, (_, p))| (*id, p.local_addr().unwrap()))
                .collect(),
            nodes: BTreeMap::new(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        for (id, (client, peer)) in listeners {
            cluster.start_on(id, client, peer).await;
        }
        cluster
    }

    fn config(&self, id: NodeId) -> NodeConfig {
        let initial: Vec<String> = self
            .peer_addrs
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect();
        let mut args = vec![
            format!("--id={id}"),
            format!("--listen={}", self.client_addrs[&id]),
            format!("--peer-listen={}", self.peer_addrs[&id]),
            format!(
                "--data-dir={}",
                self.dir.path().join(format!("node-{id}")).display()
            ),
            format!("--initial-cluster={}", initial.join(",")),
        ];
        args.extend(self.extra_args.iter().cloned());
        NodeConfig::from_args(args).expect("valid test flags")
    }

    async fn start_on(&mut self, id: NodeId, client: TcpListener, peer: TcpListener) {
        let listeners = node::Listeners {
            client,
            peer,
            http: None,
        };
        let node = node::start_with_listeners(self.config(id), listeners, self.faults.clone())
            .await
            .unwrap_or_else(|e| panic!("node {id} failed to start: {e}"));
        self.nodes.insert(id, node);
    }

    /// Restarts a stopped node on its old addresses and data dir.
    pub async fn restart(&mut self, id: NodeId) {
        let client = TcpListener::bind(self.client_addrs[&id]).expect("rebind client port");
        let peer = TcpListener::bind(self.peer_addrs[&id]).expect("rebind peer port");
        self.start_on(id, client, peer).await;
    }

    /// Stops a node (its servers close, Raft stops); its data dir stays.
    pub async fn stop(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).expect("node is running");
        node.shutdown().await;
    }

    pub fn node(&self, id: NodeId) -> &RunningNode {
        &self.nodes[&id]
    }

    /// Waits until every running node agrees on one leader among the running nodes.
    pub async fn wait_for_leader(&self) -> NodeId {
        wait_until_async(WAIT, "an agreed leader", async || {
            let leaders: Vec<Option<NodeId>> = self
                .nodes
                .values()
                .map(|n| n.raft().metrics().borrow_watched().current_leader)
                .collect();
            if let Some(Some(leader)) = leaders.first() {
                if self.nodes.contains_key(leader)
                    && leaders.iter().all(|l| *l == Some(*leader))
                    && self.nodes[leader].status().role == "leader"
                {
                    return Ok(*leader);
                }
            }
            Err(format!("{leaders:?}"))
        })
        .await
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: NodeId, index: u64) {
        self.node(id)
            .raft()
            .wait(Some(WAIT))
            .applied_index_at_least(Some(index), "test wait")
            .await
            .unwrap_or_else(|e| panic!("node {id} did not apply index {index}: {e}"));
    }

    /// Waits until node `id`'s local replica holds `value` under `key` (None: absent).
    pub async fn wait_local_value(&self, id: NodeId, key: &str, value: Option<&str>) {
        let what = format!("node {id}: {key} holds {value:?}");
        wait_until_async(WAIT, &what, async || {
            let found = self.node(id).state().get(key).expect("local read");
            (found.as_deref() == value)
                .then_some(())
                .ok_or(format!("{key} is {found:?}"))
        })
        .await
    }

    /// A client connected to node `id`'s client port.
    pub fn client(&self, id: NodeId) -> BlockingClient {
        BlockingClient {
            addr: self.client_addrs[&id].to_string(),
        }
    }
}

/// Runs the blocking Thrift client off the async runtime's worker threads.
#[derive(Clone)]
pub struct BlockingClient {
    pub addr: String,
}

impl BlockingClient {
    /// Every key and value the node holds (up to 1,000), as a local scan sees it.
    pub async fn local_contents(&self) -> Vec<(String, String)> {
        use raftcache::gen::cache::{Consistency, ReadOptions, TCacheServiceSyncClient};
        self.run(|c| {
            let options = ReadOptions::new(Some(Consistency::LOCAL), None);
            c.service()
                .scan(String::new(), String::new(), 1000, options)
        })
        .await
        .expect("scan")
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect()
    }

    /// Runs `f` with a fresh connection, on a blocking thread.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut CacheClient) -> thrift::Result<T> + Send + 'static,
    ) -> thrift::Result<T> {
        let addr = self.addr.clone();
        tokio::task::spawn_blocking(move || {
            let mut client = CacheClient::connect(&addr, Duration::from_secs(30))
                .map_err(thrift::Error::from)?;
            f(&mut client)
        })
        .await
        .expect("client task")
    }

    pub async fn put(&self, key: &str, value: &str) -> thrift::Result<bool> {
        let (k, v) = (key.to_string(), value.to_string());
        self.run(move |c| c.put(&k, &v)).await
    }

    pub async fn get(&self, key: &str, linearizable: bool) -> thrift::Result<Option<String>> {
        let k = key.to_string();
        self.run(move |c| c.get(&k, linearizable)).await
    }

    pub async fn admin_snapshot(&self) -> thrift::Result<i64> {
        self.run(|c| c.admin_snapshot()).await
    }

    pub async fn remove(&self, key: &str) -> thrift::Result<bool> {
        let k = key.to_string();
        self.run(move |c| c.remove(&k)).await
    }
}
