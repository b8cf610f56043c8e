//! raftcache nodes in containers: one compose project, controlled with `docker-compose` and
//! `docker`. The one driver of the compose tests (`tests/compose.rs`, on the checked-in
//! `cluster/docker-compose.yml`) and of the fault-injection suite (`tools/faults`, on a compose
//! file written for each run, with initial voters and spare nodes that wait with
//! `--no-bootstrap` until a membership change adds them).
//!
//! Partitions move containers between docker networks: a node cut off is connected to a network
//! of its side (under its own service name, so the nodes on that side still resolve it) and
//! then disconnected from the shared one. Its published client port keeps working, so clients
//! still reach a node that its peers cannot.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use crate::ports::free_ports;

/// The network every node of a generated project is on when nothing is cut (compose prefixes
/// it with the project).
const GENERATED_NETWORK: &str = "shared";
/// The network of `cluster/docker-compose.yml`.
const CHECKED_IN_NETWORK: &str = "raftcache";
/// The voters of `cluster/docker-compose.yml`.
const CHECKED_IN_NODES: u64 = 3;
const CLIENT_PORT: u16 = 9090;
/// The `RUST_LOG` of a generated project's nodes: raftcache's own events, openraft's warnings.
pub const DEFAULT_NODE_LOG: &str = "info,openraft=warn";
const PEER_PORT: u16 = 9190;
/// Tries of one `docker pause` (see `Project::pause`).
const PAUSE_ATTEMPTS: u32 = 5;
/// Lines of every node's log printed when a test panics with the project up.
const LOG_TAIL_ON_PANIC: u32 = 40;

/// A docker or docker-compose command that did not do its job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program could not be started (not installed, not on the `PATH`).
    #[error("running {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    /// It ran and failed; `output` is what it printed.
    #[error("{what} failed ({status}): {output}")]
    Failed {
        what: String,
        status: ExitStatus,
        output: String,
    },
    /// The project's compose file could not be written, or no free port found.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The project cannot do this (a checked-in compose file cannot change a node's flags).
    #[error("{0}")]
    Unsupported(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Why containers of `image` cannot run here (no docker daemon, no docker-compose, no such
/// image), if they cannot.
pub fn missing_prerequisite(image: &str) -> Option<String> {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if !works("docker", &["info"]) {
        return Some("docker is not installed or its daemon is not reachable".into());
    }
    if !works("docker-compose", &["version"]) {
        return Some("docker-compose is not installed".into());
    }
    if !works("docker", &["image", "inspect", image]) {
        return Some(format!(
            "no image {image}: build it with cluster/build-image.sh"
        ));
    }
    None
}

/// A node of a compose project.
#[derive(Clone, Debug)]
pub struct Node {
    pub id: u64,
    /// Its client port, published on 127.0.0.1.
    pub port: u16,
    /// Whether it starts as a voter (the others are spares).
    pub initial: bool,
    /// Whether it starts with `--no-bootstrap` though it is an initial voter: it was wiped and
    /// waits to be added again.
    pub rejoin: bool,
    /// The peer port it listens on and advertises, when not the one the cluster records for
    /// it (a node started on the wrong address).
    pub misplaced_peer_port: Option<u16>,
}

impl Node {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The address its peers reach it at, on the project's networks.
    pub fn peer_addr(&self) -> String {
        format!("node{}:{PEER_PORT}", self.id)
    }
}

/// One compose project. Taken down, with its volumes and networks, on drop.
pub struct Project {
    name: String,
    file: PathBuf,
    /// The environment docker-compose reads the file with (a checked-in file takes its image
    /// and published ports from it).
    env: Vec<(String, String)>,
    /// The image of a generated project, whose compose file is written again when a node's
    /// flags change (None for a checked-in file).
    image: Option<String>,
    /// `serve` flags every node of a generated project gets besides its own.
    flags: Vec<String>,
    /// Where each node's data dir is (`<dir>/node<id>`, bind-mounted), if not on a named
    /// volume.
    data_dirs: Option<PathBuf>,
    /// The `RUST_LOG` of every node of a generated project.
    log_filter: String,
    /// What the containers deleted so far (`wipe`, `recreate`) had printed, by node, so that
    /// `save_logs` keeps a node's whole story.
    earlier_logs: std::sync::Mutex<BTreeMap<u64, String>>,
    /// The network every node is on when nothing is cut, without the project's prefix.
    network: &'static str,
    /// Whether the file names each container `<project>-node<id>` (otherwise docker-compose
    /// is asked for it).
    named_containers: bool,
    pub nodes: BTreeMap<u64, Node>,
    /// Nodes cut off now, with the side networks each is on.
    cut: BTreeMap<u64, Vec<String>>,
    /// Side networks created so far.
    side_networks: BTreeSet<String>,
    paused: BTreeSet<u64>,
    /// iptables rules of the one-way cuts in place (the arguments after `-I`/`-D`).
    one_way: Vec<Vec<String>>,
}

impl Project {
    /// A project of `voters` initial nodes and `spares` spare ones of `image`, on free ports,
    /// its compose file written into `dir`.
    pub fn generate(dir: &Path, name: &str, image: &str, voters: u64, spares: u64) -> Result<Self> {
        let ports = free_ports((voters + spares) as usize).map_err(|source| Error::Io {
            what: "finding free ports".into(),
            source,
        })?;
        let nodes: BTreeMap<u64, Node> = (1..=voters + spares)
            .map(|id| {
                let node = Node {
                    id,
                    port: ports[id as usize - 1],
                    initial: id <= voters,
                    rejoin: false,
                    misplaced_peer_port: None,
                };
                (id, node)
            })
            .collect();
        let file = dir.join("docker-compose.yml");
        std::fs::write(
            &file,
            compose_file(name, image, &nodes, &[], None, DEFAULT_NODE_LOG),
        )
        .map_err(|source| Error::Io {
            what: format!("writing {}", file.display()),
            source,
        })?;
        let mut project = Self::new(name, file, Vec::new(), GENERATED_NETWORK, true, nodes);
        project.image = Some(image.to_string());
        Ok(project)
    }

    /// The checked-in `cluster/docker-compose.yml` at `file` (three voters) as project `name`,
    /// of `image`, its client and HTTP ports published on free ports (through `RAFTCACHE_IMAGE`,
    /// `RAFTCACHE_PORT_1..3` and `RAFTCACHE_HTTP_PORT_1..3`, which the file reads), so it runs
    /// beside a user's cluster.
    pub fn checked_in(file: &Path, name: &str, image: &str) -> Result<Self> {
        let ports = free_ports(2 * CHECKED_IN_NODES as usize).map_err(|source| Error::Io {
            what: "finding free ports".into(),
            source,
        })?;
        let (client_ports, http_ports) = ports.split_at(CHECKED_IN_NODES as usize);
        let mut env = vec![("RAFTCACHE_IMAGE".to_string(), image.to_string())];
        let mut nodes = BTreeMap::new();
        for ((id, port), http_port) in (1..=CHECKED_IN_NODES)
            .zip(client_ports.iter().copied())
            .zip(http_ports)
        {
            env.push((format!("RAFTCACHE_PORT_{id}"), port.to_string()));
            env.push((format!("RAFTCACHE_HTTP_PORT_{id}"), http_port.to_string()));
            let node = Node {
                id,
                port,
                initial: true,
                rejoin: false,
                misplaced_peer_port: None,
            };
            nodes.insert(id, node);
        }
        let file = file.to_path_buf();
        Ok(Self::new(name, file, env, CHECKED_IN_NETWORK, false, nodes))
    }

    fn new(
        name: &str,
        file: PathBuf,
        env: Vec<(String, String)>,
        network: &'static str,
        named_containers: bool,
        nodes: BTreeMap<u64, Node>,
    ) -> Self {
        Self {
            name: name.to_string(),
            file,
            env,
            image: None,
            flags: Vec::new(),
            data_dirs: None,
            log_filter: DEFAULT_NODE_LOG.to_string(),
            earlier_logs: Default::default(),
            network,
            named_containers,
            nodes,
            cut: BTreeMap::new(),
            side_networks: BTreeSet::new(),
            paused: BTreeSet::new(),
            one_way: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[&id]
    }

    /// The container of node `id` (it must have been created, by `up`).
    fn container(&self, id: u64) -> Result<String> {
        if self.named_containers {
            return Ok(format!("{}-node{id}", self.name));
        }
        let found = self.compose(&["ps", "-q", &format!("node{id}")])?;
        Ok(found.trim().to_string())
    }

    fn compose_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.arg("-p").arg(&self.name).arg("-f").arg(&self.file);
        cmd.args(args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn compose(&self, args: &[&str]) -> Result<String> {
        let cmd = self.compose_command(args);
        run(cmd, &format!("docker-compose {}", args.join(" ")))
    }

    fn docker(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("docker");
        cmd.args(args);
        run(cmd, &format!("docker {}", args.join(" ")))
    }

    /// Starts the nodes `ids` (their containers are created on first start).
    pub fn up(&self, ids: &[u64]) -> Result<()> {
        let mut args = vec!["up".to_string(), "-d".into(), "--no-deps".into()];
        args.extend(ids.iter().map(|id| format!("node{id}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.compose(&args).map(drop)
    }

    /// Writes the compose file again after a node's flags changed (`rejoin`,
    /// `misplaced_peer_port`) and starts that node on them: docker-compose creates its
    /// container again, keeping its data volume. Only for a generated project.
    pub fn recreate(&mut self, id: u64, change: impl FnOnce(&mut Node)) -> Result<()> {
        let Some(image) = self.image.clone() else {
            return Err(Error::Unsupported(format!(
                "changing node {id}'s flags: only a generated compose file can change them"
            )));
        };
        change(self.nodes.get_mut(&id).expect("a node of the project"));
        self.write_file(&image)?;
        let before = self.container_id(id);
        let printed = self.logs(id, None).ok();
        self.up(&[id])?;
        // docker-compose keeps a container whose settings did not change.
        if before.is_some() && before != self.container_id(id) {
            self.keep_logs(id, printed);
        }
        Ok(())
    }

    /// The id of node `id`'s container, if it has one.
    fn container_id(&self, id: u64) -> Option<String> {
        let container = self.container(id).ok()?;
        let found = self
            .docker(&["inspect", "-f", "{{.Id}}", &container])
            .ok()?;
        Some(found.trim().to_string())
    }

    /// Keeps `printed`, what node `id`'s container printed before it was deleted.
    fn keep_logs(&self, id: u64, printed: Option<String>) {
        if let Some(text) = printed {
            let mut earlier = self.earlier_logs.lock().expect("earlier logs lock");
            earlier.entry(id).or_default().push_str(&text);
        }
    }

    /// Gives every node of a generated project the `serve` flags `flags` too (before any is
    /// started).
    pub fn with_flags(self, flags: &[&str]) -> Result<Self> {
        self.regenerated("adding flags", |p| {
            p.flags = flags.iter().map(|f| f.to_string()).collect();
        })
    }

    /// Changes a generated project's settings with `change` and writes its compose file
    /// again; `what` names the change in the error for a checked-in file.
    fn regenerated(mut self, what: &str, change: impl FnOnce(&mut Self)) -> Result<Self> {
        let Some(image) = self.image.clone() else {
            return Err(Error::Unsupported(format!(
                "{what}: only a generated compose file can change it"
            )));
        };
        change(&mut self);
        self.write_file(&image)?;
        Ok(self)
    }

    /// Gives every node of a generated project the log filter `filter` (its `RUST_LOG`)
    /// instead of `DEFAULT_NODE_LOG`, say to see openraft's elections in a replay.
    pub fn with_log_filter(self, filter: &str) -> Result<Self> {
        self.regenerated("setting the log filter", |p| {
            p.log_filter = filter.to_string()
        })
    }

    /// Puts every node's data dir of a generated project on the directory `<dir>/node<id>`,
    /// bind-mounted at `/data`, instead of a named volume (before any is started): a test
    /// that mounts a filesystem of its own there (the power-cut disks of `raftcache-powerfs`).
    /// The directories must exist, and the image's user must be able to write them. `wipe`
    /// then leaves emptying the directory to the caller.
    pub fn with_data_dirs(self, dir: &Path) -> Result<Self> {
        // Absolute: docker-compose takes a relative path for a named volume.
        let dir = std::path::absolute(dir).map_err(|source| Error::Io {
            what: format!("resolving {}", dir.display()),
            source,
        })?;
        self.regenerated("placing data dirs", |p| p.data_dirs = Some(dir))
    }

    fn write_file(&self, image: &str) -> Result<()> {
        std::fs::write(
            &self.file,
            compose_file(
                &self.name,
                image,
                &self.nodes,
                &self.flags,
                self.data_dirs.as_deref(),
                &self.log_filter,
            ),
        )
        .map_err(|source| Error::Io {
            what: format!("writing {}", self.file.display()),
            source,
        })
    }

    /// Kills node `id` and deletes its container and its data volume, as a lost disk would:
    /// the next `up` or `recreate` starts it on an empty data dir. (A data dir of
    /// `with_data_dirs` is left for the caller to empty.)
    pub fn wipe(&self, id: u64) -> Result<()> {
        let container = self.container(id)?;
        let volumes = self.docker(&[
            "inspect",
            "-f",
            "{{range .Mounts}}{{.Name}} {{end}}",
            &container,
        ])?;
        self.keep_logs(id, self.logs(id, None).ok());
        self.docker(&["rm", "-f", &container])?;
        for volume in volumes.split_whitespace() {
            self.docker(&["volume", "rm", volume])?;
        }
        Ok(())
    }

    /// SIGKILL, as `kill -9` or a power cut would.
    pub fn kill(&self, id: u64) -> Result<()> {
        self.docker(&["kill", &self.container(id)?]).map(drop)
    }

    /// SIGKILL of the nodes `ids` by one `docker kill`, as a power cut of them all would.
    pub fn kill_at_once(&self, ids: &[u64]) -> Result<()> {
        let mut args = vec!["kill".to_string()];
        for &id in ids {
            args.push(self.container(id)?);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.docker(&args).map(drop)
    }

    /// SIGTERM, then SIGKILL after 10 s: a clean shutdown.
    pub fn stop(&self, id: u64) -> Result<()> {
        self.docker(&["stop", "-t", "10", &self.container(id)?])
            .map(drop)
    }

    pub fn start(&self, id: u64) -> Result<()> {
        self.docker(&["start", &self.container(id)?]).map(drop)
    }

    /// `docker pause`, tried up to `PAUSE_ATTEMPTS` times: the kernel's freezer gives up on a
    /// process it cannot stop in time (one blocked in a disk sync on a busy machine), and docker
    /// then reports "unable to freeze" and leaves the container running.
    pub fn pause(&mut self, id: u64) -> Result<()> {
        let container = self.container(id)?;
        let mut attempt = 1;
        loop {
            match self.docker(&["pause", &container]) {
                Ok(_) => {
                    self.paused.insert(id);
                    return Ok(());
                }
                Err(e) if attempt >= PAUSE_ATTEMPTS => return Err(e),
                Err(_) => {
                    // In case the failed freeze left anything frozen.
                    let _ = self.docker(&["unpause", &container]);
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
            }
        }
    }

    pub fn unpause_all(&mut self) -> Result<()> {
        for id in std::mem::take(&mut self.paused) {
            self.docker(&["unpause", &self.container(id)?])?;
        }
        Ok(())
    }

    fn shared_network(&self) -> String {
        format!("{}_{}", self.name, self.network)
    }

    /// Cuts the network into `sides`: the nodes of a side see each other (and nodes of other
    /// sides only when they are on both, as a bridge is); nodes on no side are not touched.
    pub fn partition(&mut self, sides: &[Vec<u64>]) -> Result<()> {
        let mut networks_of: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (i, side) in sides.iter().enumerate() {
            let network = format!("{}_side{i}", self.name);
            if !self.side_networks.contains(&network) {
                self.docker(&["network", "create", &network])?;
                self.side_networks.insert(network.clone());
            }
            for &id in side {
                networks_of.entry(id).or_default().push(network.clone());
            }
        }
        // Join the side networks first, so a node always has a network its published port
        // can use.
        for (&id, networks) in &networks_of {
            for network in networks {
                let alias = format!("node{id}");
                self.docker(&[
                    "network",
                    "connect",
                    "--alias",
                    &alias,
                    network,
                    &self.container(id)?,
                ])?;
            }
        }
        let shared = self.shared_network();
        for (id, networks) in networks_of {
            self.docker(&["network", "disconnect", &shared, &self.container(id)?])?;
            self.cut.insert(id, networks);
        }
        Ok(())
    }

    /// Cuts node `id` off from every network: neither its peers nor its clients reach it.
    pub fn isolate(&mut self, id: u64) -> Result<()> {
        let shared = self.shared_network();
        self.docker(&["network", "disconnect", &shared, &self.container(id)?])?;
        self.cut.insert(id, Vec::new());
        Ok(())
    }

    /// Puts every cut node back on the shared network.
    pub fn heal(&mut self) -> Result<()> {
        self.heal_one_way()?;
        let shared = self.shared_network();
        for (id, networks) in std::mem::take(&mut self.cut) {
            let alias = format!("node{id}");
            let container = self.container(id)?;
            self.docker(&["network", "connect", "--alias", &alias, &shared, &container])?;
            for network in networks {
                self.docker(&["network", "disconnect", &network, &container])?;
            }
        }
        Ok(())
    }

    /// Cuts one direction: every packet node `from` sends to node `to`'s peer port is dropped
    /// (an iptables rule on the host, in docker's `DOCKER-USER` chain, which sees traffic
    /// between containers on a bridge), while `to`'s own calls to `from` and their answers go
    /// through, as with a firewall that drops inbound connections. Needs root. `heal` undoes it.
    pub fn cut_one_way(&mut self, from: u64, to: u64) -> Result<()> {
        let port = PEER_PORT.to_string();
        let rule: Vec<String> = [
            "DOCKER-USER",
            "-s",
            &self.address(from)?,
            "-d",
            &self.address(to)?,
            "-p",
            "tcp",
            "--dport",
            &port,
            "-j",
            "DROP",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        iptables("-I", &rule)?;
        self.one_way.push(rule);
        Ok(())
    }

    fn heal_one_way(&mut self) -> Result<()> {
        while let Some(rule) = self.one_way.pop() {
            iptables("-D", &rule)?;
        }
        Ok(())
    }

    /// Node `id`'s address on the shared network.
    fn address(&self, id: u64) -> Result<String> {
        let format = format!(
            "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
            self.shared_network()
        );
        let container = self.container(id)?;
        Ok(self
            .docker(&["inspect", "-f", &format, &container])?
            .trim()
            .to_string())
    }

    /// Writes each started node's log to `dir/node<id>.log`: what its deleted containers
    /// printed, if any, then its container now.
    pub fn save_logs(&self, dir: &Path) {
        let earlier = self.earlier_logs.lock().expect("earlier logs lock");
        for id in self.nodes.keys() {
            let mut text = earlier.get(id).cloned().unwrap_or_default();
            if let Ok(now) = self.logs(*id, None) {
                text.push_str(&now);
            }
            if !text.is_empty() {
                let _ = std::fs::write(dir.join(format!("node{id}.log")), text);
            }
        }
    }

    /// What node `id`'s container printed (both streams, with docker's timestamps), since
    /// `since` (seconds since the Unix epoch) if given.
    pub fn logs(&self, id: u64, since: Option<f64>) -> Result<String> {
        let container = self.container(id)?;
        let mut args = vec!["logs".to_string(), "--timestamps".into()];
        if let Some(since) = since {
            args.push(format!("--since={since:.3}"));
        }
        args.push(container);
        let what = format!("docker {}", args.join(" "));
        let out = Command::new("docker")
            .args(&args)
            .output()
            .map_err(|source| Error::Spawn {
                what: what.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Failed {
                what,
                status: out.status,
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let mut text = out.stdout;
        text.extend_from_slice(&out.stderr);
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// Stops and removes the containers, volumes and networks.
    fn down(&mut self) -> Result<()> {
        let _ = self.unpause_all();
        self.compose(&["down", "-v", "--timeout", "5"])?;
        for network in std::mem::take(&mut self.side_networks) {
            self.docker(&["network", "rm", &network])?;
        }
        Ok(())
    }
}

impl Drop for Project {
    /// Takes the project down; when a test is panicking, prints the tail of every node's log
    /// first.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let tail = format!("--tail={LOG_TAIL_ON_PANIC}");
            if let Ok(out) = self
                .compose_command(&["logs", "--no-color", &tail])
                .output()
            {
                eprintln!("{}", String::from_utf8_lossy(&out.stdout));
            }
        }
        if let Err(e) = self.heal_one_way() {
            eprintln!(
                "compose: removing the one-way cuts of {} failed: {e}",
                self.name
            );
        }
        if let Err(e) = self.down() {
            eprintln!("compose: taking down {} failed: {e}", self.name);
        }
    }
}

/// Inserts (`-I`) or deletes (`-D`) an iptables rule.
fn iptables(action: &str, rule: &[String]) -> Result<()> {
    let mut cmd = Command::new("iptables");
    cmd.arg(action).args(rule);
    run(cmd, &format!("iptables {action} {}", rule.join(" "))).map(drop)
}

/// Runs `cmd` (described as `what`) and returns what it printed on stdout.
fn run(mut cmd: Command, what: &str) -> Result<String> {
    let out = cmd.output().map_err(|source| Error::Spawn {
        what: what.to_string(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Failed {
            what: what.to_string(),
            status: out.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The compose file: initial voters bootstrap from `--initial-cluster`; spares start with
/// `--no-bootstrap` and wait to be added. Each node's data is on a named volume, or on
/// `<data_dirs>/node<id>`.
fn compose_file(
    project: &str,
    image: &str,
    nodes: &BTreeMap<u64, Node>,
    flags: &[String],
    data_dirs: Option<&Path>,
    log_filter: &str,
) -> String {
    let initial: Vec<String> = nodes
        .values()
        .filter(|n| n.initial)
        .map(|n| format!("{}={}/node{}:{CLIENT_PORT}", n.id, n.peer_addr(), n.id))
        .collect();
    let initial = initial.join(",");
    let mut text = String::from(
        "# Written by raftcache-testkit for one project.\nversion: \"3.7\"\nservices:\n",
    );
    for node in nodes.values() {
        let id = node.id;
        let mode = if node.initial && !node.rejoin {
            format!("\"--initial-cluster\", \"{initial}\"")
        } else {
            "\"--no-bootstrap\"".to_string()
        };
        let peer_port = node.misplaced_peer_port.unwrap_or(PEER_PORT);
        let extra: String = flags.iter().map(|f| format!(", \"{f}\"")).collect();
        let volume = match data_dirs {
            Some(dir) => format!("{}/node{id}", dir.display()),
            None => format!("node{id}-data"),
        };
        let _ = write!(
            text,
            r#"  node{id}:
    image: "{image}"
    container_name: "{project}-node{id}"
    hostname: node{id}
    networks: [{GENERATED_NETWORK}]
    environment:
      RUST_LOG: "{log_filter}"
    command: ["serve", "--id", "{id}", "--listen", "0.0.0.0:{CLIENT_PORT}",
              "--peer-listen", "0.0.0.0:{peer_port}", "--advertise-client", "node{id}:{CLIENT_PORT}",
              "--advertise-peer", "node{id}:{peer_port}", "--data-dir", "/data", {mode}{extra}]
    ports: ["127.0.0.1:{port}:{CLIENT_PORT}"]
    volumes: ["{volume}:/data"]
    stop_grace_period: 10s
"#,
            port = node.port
        );
    }
    let _ = writeln!(text, "networks:\n  {GENERATED_NETWORK}: {{}}");
    if data_dirs.is_none() {
        let _ = writeln!(text, "volumes:");
        for id in nodes.keys() {
            let _ = writeln!(text, "  node{id}-data: {{}}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` initial voters on ports 20001...
    fn voters(n: u64) -> BTreeMap<u64, Node> {
        (1..=n)
            .map(|id| {
                let node = Node {
                    id,
                    port: 20000 + id as u16,
                    initial: true,
                    rejoin: false,
                    misplaced_peer_port: None,
                };
                (id, node)
            })
            .collect()
    }

    #[test]
    fn flags_given_to_the_project_go_to_every_node() {
        let nodes = voters(3);
        let flags = ["--snapshot-every".to_string(), "1000".to_string()];
        let text = compose_file("p", "img:t", &nodes, &flags, None, DEFAULT_NODE_LOG);
        assert_eq!(
            text.matches(r#", "--snapshot-every", "1000"]"#).count(),
            3,
            "{text}"
        );
    }

    #[test]
    fn the_compose_file_bootstraps_the_voters_and_holds_back_the_spares() {
        let nodes: BTreeMap<u64, Node> = (1..=4)
            .map(|id| {
                (
                    id,
                    Node {
                        id,
                        port: 20000 + id as u16,
                        initial: id <= 3,
                        rejoin: false,
                        misplaced_peer_port: None,
                    },
                )
            })
            .collect();
        let text = compose_file("p", "img:t", &nodes, &[], None, DEFAULT_NODE_LOG);
        let cluster = "1=node1:9190/node1:9090,2=node2:9190/node2:9090,3=node3:9190/node3:9090";
        assert_eq!(text.matches(cluster).count(), 3, "{text}");
        assert_eq!(text.matches("--no-bootstrap").count(), 1);
        assert!(text.contains("container_name: \"p-node4\""));
        assert!(text.contains("\"--advertise-peer\", \"node4:9190\""));
        assert!(text.contains("\"127.0.0.1:20004:9090\""));
        assert!(text.contains("node4-data: {}"));
    }

    #[test]
    fn data_dirs_given_as_a_relative_path_are_bound_by_their_absolute_path() {
        let dir = tempfile::tempdir().unwrap();
        let project = Project::generate(dir.path(), "p", "img:t", 1, 0)
            .unwrap()
            .with_data_dirs(Path::new("target/faults/run-1/disks"))
            .unwrap();
        let text = std::fs::read_to_string(&project.file).unwrap();
        let bound = std::env::current_dir()
            .unwrap()
            .join("target/faults/run-1/disks/node1");
        assert!(
            text.contains(&format!("volumes: [\"{}:/data\"]", bound.display())),
            "{text}"
        );
    }

    #[test]
    fn data_dirs_given_to_the_project_replace_the_named_volumes() {
        let nodes = voters(2);
        let text = compose_file(
            "p",
            "img:t",
            &nodes,
            &[],
            Some(Path::new("/tmp/disks")),
            DEFAULT_NODE_LOG,
        );
        assert!(
            text.contains(r#"volumes: ["/tmp/disks/node1:/data"]"#),
            "{text}"
        );
        assert!(
            text.contains(r#"volumes: ["/tmp/disks/node2:/data"]"#),
            "{text}"
        );
        assert!(!text.contains("node1-data"), "{text}");
        assert!(!text.contains("\nvolumes:"), "{text}");
    }

    #[test]
    fn a_wiped_voter_rejoins_without_bootstrap_and_a_misplaced_one_moves_only_itself() {
        let mut nodes: BTreeMap<u64, Node> = (1..=3)
            .map(|id| {
                let node = Node {
                    id,
                    port: 20000 + id as u16,
                    initial: true,
                    rejoin: id == 2,
                    misplaced_peer_port: (id == 3).then_some(9191),
                };
                (id, node)
            })
            .collect();
        let text = compose_file("p", "img:t", &nodes, &[], None, DEFAULT_NODE_LOG);
        // The founders' list still names every voter at the address the cluster records.
        let cluster = "1=node1:9190/node1:9090,2=node2:9190/node2:9090,3=node3:9190/node3:9090";
        assert_eq!(text.matches(cluster).count(), 2, "{text}");
        assert_eq!(text.matches("--no-bootstrap").count(), 1, "{text}");
        assert!(
            text.contains("\"--advertise-peer\", \"node3:9191\""),
            "{text}"
        );
        assert!(
            text.contains("\"--peer-listen\", \"0.0.0.0:9191\""),
            "{text}"
        );
        assert_eq!(text.matches(":9191").count(), 2, "{text}");
        nodes.get_mut(&3).unwrap().misplaced_peer_port = None;
        assert!(!compose_file("p", "img:t", &nodes, &[], None, DEFAULT_NODE_LOG).contains(":9191"));
    }
}
