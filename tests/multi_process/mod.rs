//! Multi-process test clusters: each node is a real `raftcache serve` child process on loopback
//! ports, with its own data dir in a temp dir and its output in a log file there.
//!
//! - Ports: bound on 127.0.0.1:0, then released just before the node binds them again. A node
//!   that loses that race (or a restart that finds its port briefly taken) is started again.
//! - Waits poll a condition until a deadline; nothing sleeps a fixed time to synchronize.
//! - Every child is killed (SIGKILL) and reaped when its `Node` is dropped, so a failing test
//!   leaves no process behind; a panicking test prints the tail of every node's log.

#![allow(dead_code)]

pub mod writers;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use raftcache::client::{describe_error, CacheClient, ClientOptions};
use raftcache::gen::cache::NodeStatus;
use raftcache_testkit::wait::{poll, wait_until};
use tempfile::TempDir;

/// Longest wait for anything (a start, an election, a catch-up) before a test fails. Generous:
/// the tests must pass on a busy two-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Pause between two polls of a condition.
pub const POLL: Duration = Duration::from_millis(25);
/// Client socket timeout: longer than the server's request deadline (5 s by default).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_raftcache")
}

/// Prints a test phase with the time since `start`, so a failing run's output tells how far it got.
pub fn phase(start: Instant, what: &str) {
    eprintln!("[{:>7.3}s] {what}", start.elapsed().as_secs_f64());
}

/// `count` distinct free loopback addresses, all bound at once so they differ, then released.
pub fn free_addrs(count: usize) -> Vec<SocketAddr> {
    raftcache_testkit::ports::free_addrs(count).expect("bind 127.0.0.1:0")
}

/// Connects a client to `addr`.
pub fn connect(addr: SocketAddr) -> Result<CacheClient, String> {
    CacheClient::connect(&addr.to_string(), CLIENT_TIMEOUT)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))
}

pub fn describe(e: thrift::Error) -> String {
    describe_error(&e)
}

/// One `raftcache serve` process (or none, while stopped) with fixed flags and data dir.
pub struct Node {
    pub id: u64,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    /// `--http-listen` (metrics, health, readiness).
    pub http_addr: SocketAddr,
    pub data_dir: PathBuf,
    /// `--initial-cluster`, if any (none: a one-node cluster of itself).
    pub initial_cluster: Option<String>,
    /// More `serve` flags (`--join`, `--no-bootstrap`, `--admin-token`, ...).
    pub extra_args: Vec<String>,
    /// More environment variables for the process (e.g. libfaketime's, to skew its clock).
    pub env: Vec<(String, String)>,
    pub log_path: PathBuf,
    /// How clients reach the client port (TLS, client token).
    pub options: ClientOptions,
    child: Option<Child>,
}

impl Node {
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "serve".to_string(),
            format!("--id={}", self.id),
            format!("--listen={}", self.client_addr),
            format!("--peer-listen={}", self.peer_addr),
            format!("--http-listen={}", self.http_addr),
            format!("--data-dir={}", self.data_dir.display()),
        ];
        if let Some(initial) = &self.initial_cluster {
            args.push(format!("--initial-cluster={initial}"));
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Spawns the process; its stdout and stderr are appended to the node's log.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} is already running", self.id);
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open node log");
        use std::io::Write;
        let _ = writeln!(log, "=== test harness: starting node {}", self.id);
        let child = Command::new(bin())
            .args(self.args())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin()));
        self.child = Some(child);
    }

    /// Starts the process and waits until it answers `status`.
    pub fn start(&mut self) {
        self.spawn();
        self.wait_up();
    }

    /// Waits until the node answers `status`. A node that exited because its port was taken
    /// (a port-0 race with another process) is started again, until the deadline.
    pub fn wait_up(&mut self) {
        let up = poll(DEADLINE, || {
            if self.status().is_ok() {
                return true;
            }
            let child = self.child.as_mut().expect("node is running");
            if let Some(exit) = child.try_wait().expect("try_wait") {
                self.child = None;
                let log = self.log_tail(30);
                if !log.contains("Address already in use") {
                    panic!("node {} exited at start ({exit}); log:\n{log}", self.id);
                }
                eprintln!("node {}: a port was taken; starting again", self.id);
                std::thread::sleep(Duration::from_millis(200));
                self.spawn();
            }
            false
        });
        if let Err(timeout) = up {
            let log = self.log_tail(30);
            panic!(
                "node {} answered no status: {timeout}; log:\n{log}",
                self.id
            );
        }
    }

    /// Waits up to `within` for the process to exit by itself; returns its exit status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = poll(within, || child.try_wait().expect("try_wait")).ok()?;
        self.child = None;
        Some(status)
    }

    /// SIGKILL: no shutdown, no flush; whatever the process did not write out is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGKILL without reaping, so several nodes can be killed within microseconds.
    pub fn kill_no_wait(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
        }
    }

    /// Sends SIGTERM and waits up to `within` for the process to exit. Returns its exit status
    /// and how long it took; panics (after a SIGKILL) if it did not exit in time.
    pub fn terminate(&mut self, within: Duration) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("node is running");
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {} failed", child.id());
        match poll(within, || child.try_wait().expect("try_wait")) {
            Ok(status) => (status, started.elapsed()),
            Err(timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node {} did not exit after SIGTERM: {timeout}; log:\n{}",
                    self.id,
                    self.log_tail(30)
                );
            }
        }
    }

    pub fn client(&self) -> Result<CacheClient, String> {
        CacheClient::connect_with(&self.client_addr.to_string(), CLIENT_TIMEOUT, &self.options)
            .map_err(|e| format!("cannot connect to {}: {e}", self.client_addr))
    }

    pub fn status(&self) -> Result<NodeStatus, String> {
        let mut client = CacheClient::connect_with(
            &self.client_addr.to_string(),
            Duration::from_secs(2),
            &self.options,
        )
        .map_err(|e| format!("cannot connect to {}: {e}", self.client_addr))?;
        client.status().map_err(describe)
    }

    /// One sample of the node's `/metrics` (an unlabelled gauge or counter, by its full name),
    /// or why it could not be read.
    #[allow(dead_code)]
    pub fn metric(&self, name: &str) -> Result<f64, String> {
        let (status, body) = raftcache::http::get(
            &self.http_addr.to_string(),
            "/metrics",
            Duration::from_secs(2),
        )?;
        if status != 200 {
            return Err(format!("/metrics answered {status}: {body}"));
        }
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .ok_or_else(|| format!("no {name} in /metrics"))?
            .trim()
            .parse()
            .map_err(|e| format!("{name}: {e}"))
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A set of nodes in one temp dir. Node ids are 1..=n; `node(id)` is `nodes[id - 1]`.
pub struct ProcessCluster {
    pub nodes: Vec<Node>,
    dir: TempDir,
}

impl ProcessCluster {
    /// Starts `n` nodes bootstrapped together with `--initial-cluster` and waits for a leader.
    pub fn start(n: u64) -> Self {
        let mut cluster = Self::create(n, true);
        for node in &mut cluster.nodes {
            node.spawn();
        }
        for node in &mut cluster.nodes {
            node.wait_up();
        }
        cluster.wait_for_leader(&cluster.ids());
        cluster
    }

    /// Starts one node without `--initial-cluster` (a one-node cluster) and waits until it leads.
    pub fn single() -> Self {
        Self::single_with(|_| {})
    }

    /// `single`, with node 1 set up by `configure` (flags, environment) before it starts.
    pub fn single_with(configure: impl FnOnce(&mut Node)) -> Self {
        let mut cluster = Self::create(1, false);
        configure(&mut cluster.nodes[0]);
        cluster.nodes[0].start();
        cluster.wait_for_leader(&[1]);
        cluster
    }

    fn create(n: u64, with_initial_cluster: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("raftcache-process-")
            .tempdir()
            .expect("temp dir");
        let addrs = free_addrs(3 * n as usize);
        let initial: Vec<String> = (1..=n)
            .map(|id| format!("{id}={}", addrs[(2 * id - 1) as usize]))
            .collect();
        let nodes = (1..=n)
            .map(|id| Node {
                id,
                client_addr: addrs[(2 * id - 2) as usize],
                peer_addr: addrs[(2 * id - 1) as usize],
                http_addr: addrs[(2 * n + id - 1) as usize],
                data_dir: dir.path().join(format!("node-{id}")),
                initial_cluster: with_initial_cluster.then(|| initial.join(",")),
                extra_args: Vec::new(),
                env: Vec::new(),
                log_path: dir.path().join(format!("node-{id}.log")),
                options: ClientOptions::default(),
                child: None,
            })
            .collect();
        ProcessCluster { nodes, dir }
    }

    /// Starts `n` nodes bootstrapped together, each with the extra `serve` flags `extra`.
    pub fn start_with(n: u64, extra: &[&str]) -> Self {
        let mut cluster = Self::create(n, true);
        for node in &mut cluster.nodes {
            node.extra_args = extra.iter().map(|s| s.to_string()).collect();
            node.spawn();
        }
        for node in &mut cluster.nodes {
            node.wait_up();
        }
        cluster.wait_for_leader(&cluster.ids());
        cluster
    }

    /// Creates `n` nodes bootstrapped together, each with the extra `serve` flags `extra`,
    /// without starting them: the test may move their data dirs first (`Node::data_dir`), then
    /// calls `start_all`.
    pub fn create_with(n: u64, extra: &[&str]) -> Self {
        let mut cluster = Self::create(n, true);
        for node in &mut cluster.nodes {
            node.extra_args = extra.iter().map(|s| s.to_string()).collect();
        }
        cluster
    }

    /// Starts every node and waits until they answer and agree on a leader.
    pub fn start_all(&mut self) {
        for node in &mut self.nodes {
            node.spawn();
        }
        for node in &mut self.nodes {
            node.wait_up();
        }
        self.wait_for_leader(&self.ids());
    }

    /// Adds a node (id: one more than the last) with fresh addresses and data dir and the
    /// `serve` flags `extra`, without starting it. Returns its id.
    pub fn add_node(&mut self, extra: &[String]) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let addrs = free_addrs(3);
        self.nodes.push(Node {
            id,
            client_addr: addrs[0],
            peer_addr: addrs[1],
            http_addr: addrs[2],
            data_dir: self.dir.path().join(format!("node-{id}")),
            initial_cluster: None,
            extra_args: extra.to_vec(),
            env: Vec::new(),
            log_path: self.dir.path().join(format!("node-{id}.log")),
            options: ClientOptions::default(),
            child: None,
        });
        id
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Waits until every node in `among` answers status naming the same leader, one of `among`,
    /// which itself says it is the leader. Returns its id.
    pub fn wait_for_leader(&self, among: &[u64]) -> u64 {
        let what = format!("nodes {among:?} agree on a leader among themselves");
        wait_until(DEADLINE, &what, || {
            let views: Vec<Result<NodeStatus, String>> =
                among.iter().map(|id| self.node(*id).status()).collect();
            let leaders: Vec<Option<i64>> = views
                .iter()
                .map(|v| v.as_ref().ok().and_then(|s| s.leader))
                .collect();
            if let Some(Some(leader)) = leaders.first() {
                let leader = *leader as u64;
                let pos = among.iter().position(|id| *id == leader);
                if let Some(pos) = pos {
                    let leads = matches!(&views[pos], Ok(s) if s.role == "leader");
                    if leads && leaders.iter().all(|l| *l == Some(leader as i64)) {
                        return Ok(leader);
                    }
                }
            }
            Err(format!("{views:?}"))
        })
    }

    /// Prints the tail of every node's log (used when a test fails).
    pub fn dump_logs(&self, lines: usize) {
        for node in &self.nodes {
            eprintln!(
                "----- node {} ({}), log {}:\n{}",
                node.id,
                node.client_addr,
                node.log_path.display(),
                node.log_tail(lines)
            );
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        if std::thread::panicking() {
            self.dump_logs(40);
            // Whole logs, for a failure the tails do not explain.
            if let Some(to) = std::env::var_os("RAFTCACHE_KEEP_LOGS") {
                let to = std::path::Path::new(&to);
                let _ = std::fs::create_dir_all(to);
                for path in self.save_logs(to) {
                    eprintln!("kept {}", path.display());
                }
            }
        }
    }
}

/// A client of one node that reconnects after errors and retries each operation until a
/// deadline. Only for operations whose retry is harmless (puts, reads); a remove is retried too,
/// and the caller is told when it was (its `existed` answer may then describe the retry).
pub struct Retrying {
    pub addr: SocketAddr,
    client: Option<CacheClient>,
    /// Attempts that failed, over this client's life, with the last error.
    pub failures: u64,
    pub last_error: Option<String>,
}

impl Retrying {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            client: None,
            failures: 0,
            last_error: None,
        }
    }

    /// Runs `op` until it succeeds or `within` passes. Returns its result and whether it was
    /// retried.
    pub fn run<T>(
        &mut self,
        within: Duration,
        what: &str,
        mut op: impl FnMut(&mut CacheClient) -> thrift::Result<T>,
    ) -> (T, bool) {
        let mut retried = false;
        let what = format!("{what} via {}", self.addr);
        let value = wait_until(within, &what, || {
            let outcome = match self.client.take().map_or_else(|| connect(self.addr), Ok) {
                Ok(mut client) => {
                    let outcome = op(&mut client).map_err(describe);
                    self.client = Some(client);
                    outcome
                }
                Err(e) => Err(e),
            };
            if let Err(e) = &outcome {
                self.client = None;
                self.failures += 1;
                self.last_error = Some(e.clone());
                retried = true;
            }
            outcome
        });
        (value, retried)
    }

    pub fn put(&mut self, key: &str, value: &str) {
        self.run(DEADLINE, &format!("put {key}"), |c| c.put(key, value));
    }

    /// Removes `key`; returns whether it existed, and whether the remove was retried.
    pub fn remove(&mut self, key: &str) -> (bool, bool) {
        self.run(DEADLINE, &format!("remove {key}"), |c| c.remove(key))
    }

    pub fn get(&mut self, key: &str, linearizable: bool) -> Option<String> {
        self.run(DEADLINE, &format!("get {key}"), |c| {
            c.get(key, linearizable)
        })
        .0
    }
}

/// What one writer of a `Load` leaves behind.
#[derive(Debug, Default)]
pub struct WriterOutcome {
    /// The latest acknowledged state of every key this writer touched (`None`: removed).
    pub acked: BTreeMap<String, Option<String>>,
    /// The operation that was in flight when the nodes died: it may or may not have taken
    /// effect. `(key, value after it)`.
    pub uncertain: Option<(String, Option<String>)>,
    pub acks: u64,
    /// Attempts that failed before the crash and were repeated.
    pub retries: u64,
}

/// Writer threads that keep putting, overwriting and removing keys until the nodes are killed
/// under them. Each writer owns its keys, so its acknowledged writes define their expected
/// state exactly.
pub struct Load {
    writers: Vec<JoinHandle<WriterOutcome>>,
    acks: Arc<AtomicU64>,
    crashing: Arc<AtomicBool>,
}

/// Keys per writer: small enough that writes overwrite and removes find keys.
const LOAD_KEYS: u64 = 50;

impl Load {
    /// Starts `writers` threads; writer `w` writes through `addrs[w % addrs.len()]`, keys
    /// `{prefix}{w}-{n}`.
    pub fn start(prefix: &str, addrs: &[SocketAddr], writers: usize) -> Self {
        let acks = Arc::new(AtomicU64::new(0));
        let crashing = Arc::new(AtomicBool::new(false));
        let writers = (0..writers)
            .map(|w| {
                let addr = addrs[w % addrs.len()];
                let prefix = format!("{prefix}{w}-");
                let (acks, crashing) = (acks.clone(), crashing.clone());
                std::thread::Builder::new()
                    .name(format!("writer-{w}"))
                    .spawn(move || write_until_crash(addr, &prefix, &acks, &crashing))
                    .expect("spawn writer")
            })
            .collect();
        Load {
            writers,
            acks,
            crashing,
        }
    }

    /// Waits until at least `n` writes were acknowledged in all.
    pub fn wait_acks(&self, n: u64) {
        wait_until(DEADLINE, &format!("{n} writes acknowledged"), || {
            assert!(
                !self.writers.iter().any(JoinHandle::is_finished),
                "a writer ended before the crash (it panicked: see its message)"
            );
            let acks = self.acks.load(Ordering::SeqCst);
            (acks >= n)
                .then_some(())
                .ok_or(format!("{acks} acknowledged"))
        });
    }

    /// Announces the crash: from now on a failed write ends its writer, its outcome unknown.
    /// Call just before killing the nodes.
    pub fn crashing(&self) {
        self.crashing.store(true, Ordering::SeqCst);
    }

    /// Waits for every writer to notice the crash and returns what each one knows.
    pub fn join(self) -> Vec<WriterOutcome> {
        assert!(
            self.crashing.load(Ordering::SeqCst),
            "join only after crashing()"
        );
        self.writers
            .into_iter()
            .map(|w| match w.join() {
                Ok(outcome) => outcome,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    }
}

fn write_until_crash(
    addr: SocketAddr,
    prefix: &str,
    acks: &AtomicU64,
    crashing: &AtomicBool,
) -> WriterOutcome {
    let mut out = WriterOutcome::default();
    let mut client: Option<CacheClient> = None;
    for op in 0u64.. {
        // Keys are visited in a stride so puts create, overwrite and re-create, and every fifth
        // operation removes.
        let key = format!("{prefix}{:02}", (op * 7) % LOAD_KEYS);
        let value = (op % 5 != 4).then(|| format!("{prefix}op{op}"));
        let deadline = Instant::now() + DEADLINE;
        let mut retried = false;
        loop {
            let outcome = match client.take().map_or_else(|| connect(addr), Ok) {
                Ok(mut c) => {
                    let result = match &value {
                        Some(v) => c.put(&key, v).map(|_| None),
                        None => c.remove(&key).map(Some),
                    };
                    client = Some(c);
                    result.map_err(describe)
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(existed) => {
                    if let (Some(existed), false) = (existed, retried) {
                        let expected = matches!(out.acked.get(&key), Some(Some(_)));
                        assert_eq!(
                            existed, expected,
                            "remove {key} via {addr} answered existed={existed}, but the acknowledged state is {:?}",
                            out.acked.get(&key)
                        );
                    }
                    out.acked.insert(key.clone(), value.clone());
                    out.acks += 1;
                    acks.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Err(_) if crashing.load(Ordering::SeqCst) => {
                    out.uncertain = Some((key, value));
                    return out;
                }
                Err(e) => {
                    client = None;
                    out.retries += 1;
                    retried = true;
                    assert!(
                        Instant::now() < deadline,
                        "writing {key} via {addr} kept failing for {DEADLINE:?}: {e}"
                    );
                    std::thread::sleep(POLL);
                }
            }
        }
    }
    unreachable!("the loop only ends by returning")
}

impl ProcessCluster {
    /// The temp dir holding every node's data dir and log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// SIGKILLs the nodes `ids` within microseconds of each other (no shutdown, no flush),
    /// then reaps them.
    pub fn kill_at_once(&mut self, ids: &[u64]) {
        for id in ids {
            self.node_mut(*id).kill_no_wait();
        }
        for id in ids {
            self.node_mut(*id).kill();
        }
    }

    /// While a test panics: saves every node's log under the tests' temp dir, in
    /// `<test>-<seed>`, says where and how to replay (`replay`), and returns that dir.
    pub fn keep_logs_if_panicking(&self, test: &str, seed: u64, replay: &str) -> Option<PathBuf> {
        if !std::thread::panicking() {
            return None;
        }
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{test}-{seed}"));
        self.save_logs(&dir);
        eprintln!(
            "{test} test FAILED with {replay}; node logs saved in {}",
            dir.display()
        );
        Some(dir)
    }

    /// Copies every node's data dir into `to`, as `data-<id>` (`cp -a`), for a look after a
    /// failure (a node's disk may be gone once the test ends).
    pub fn save_data_dirs(&self, to: &std::path::Path) {
        for node in &self.nodes {
            let dest = to.join(format!("data-{}", node.id));
            let copied = raftcache_testkit::copy_dir(&node.data_dir, &dest);
            eprintln!(
                "node {}'s data dir copied to {} ({copied:?})",
                node.id,
                dest.display()
            );
        }
    }

    /// Copies every node's log into `to` (created if needed), so a failed run's logs outlive
    /// the temp dir. Returns the paths written.
    pub fn save_logs(&self, to: &std::path::Path) -> Vec<PathBuf> {
        let _ = std::fs::create_dir_all(to);
        self.nodes
            .iter()
            .filter_map(|node| {
                let dest = to.join(format!("node-{}.log", node.id));
                std::fs::copy(&node.log_path, &dest).ok().map(|_| dest)
            })
            .collect()
    }
}
