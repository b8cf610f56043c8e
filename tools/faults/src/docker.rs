//! One run's cluster: a compose project written for the run (its initial voters, and spare
//! nodes that wait with `--no-bootstrap` until a membership change adds them), controlled with
//! `docker-compose` and `docker`. Partitions move containers between docker networks: a node
//! cut off is connected to a network of its side (under its own service name, so the nodes on
//! that side still resolve it) and then disconnected from the shared one. Its published client
//! port keeps working, so clients still reach a node that its peers cannot.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The network every node is on when nothing is cut (compose prefixes it with the project).
const SHARED_NETWORK: &str = "shared";
const CLIENT_PORT: u16 = 9090;
const PEER_PORT: u16 = 9190;
/// Tries of one `docker pause` (see `Cluster::pause`).
const PAUSE_ATTEMPTS: u32 = 5;

/// A node of the run's compose project.
#[derive(Clone, Debug)]
pub struct Node {
    pub id: u64,
    /// Its client port, published on 127.0.0.1.
    pub port: u16,
    /// Whether it starts as a voter (the others are spares).
    pub initial: bool,
}

impl Node {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The address its peers reach it at, on the run's networks.
    pub fn peer_addr(&self) -> String {
        format!("node{}:{PEER_PORT}", self.id)
    }
}

/// The compose project of one run. Taken down, with its volumes and networks, on drop.
pub struct Cluster {
    project: String,
    file: PathBuf,
    pub nodes: BTreeMap<u64, Node>,
    /// Nodes cut off now, with the side networks each is on.
    cut: BTreeMap<u64, Vec<String>>,
    /// Side networks created so far.
    side_networks: BTreeSet<String>,
    paused: BTreeSet<u64>,
}

impl Cluster {
    /// Writes the compose file for `voters` initial nodes and `spares` spare ones into `dir`.
    pub fn create(
        dir: &Path,
        project: &str,
        image: &str,
        voters: u64,
        spares: u64,
    ) -> Result<Self> {
        let ports = free_ports((voters + spares) as usize)?;
        let nodes: BTreeMap<u64, Node> = (1..=voters + spares)
            .map(|id| {
                let node = Node {
                    id,
                    port: ports[id as usize - 1],
                    initial: id <= voters,
                };
                (id, node)
            })
            .collect();
        let file = dir.join("docker-compose.yml");
        std::fs::write(&file, compose_file(project, image, &nodes))
            .with_context(|| format!("writing {}", file.display()))?;
        Ok(Self {
            project: project.to_string(),
            file,
            nodes,
            cut: BTreeMap::new(),
            side_networks: BTreeSet::new(),
            paused: BTreeSet::new(),
        })
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[&id]
    }

    fn container(&self, id: u64) -> String {
        format!("{}-node{id}", self.project)
    }

    fn compose(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("docker-compose");
        cmd.arg("-p").arg(&self.project).arg("-f").arg(&self.file);
        cmd.args(args);
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

    /// SIGKILL, as `kill -9` or a power cut would.
    pub fn kill(&self, id: u64) -> Result<()> {
        self.docker(&["kill", &self.container(id)]).map(drop)
    }

    /// SIGTERM, then SIGKILL after 10 s: a clean shutdown.
    pub fn stop(&self, id: u64) -> Result<()> {
        self.docker(&["stop", "-t", "10", &self.container(id)])
            .map(drop)
    }

    pub fn start(&self, id: u64) -> Result<()> {
        self.docker(&["start", &self.container(id)]).map(drop)
    }

    /// `docker pause`, tried up to `PAUSE_ATTEMPTS` times: the kernel's freezer gives up on a
    /// process it cannot stop in time (one blocked in a disk sync on a busy machine), and docker
    /// then reports "unable to freeze" and leaves the container running.
    pub fn pause(&mut self, id: u64) -> Result<()> {
        let container = self.container(id);
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
            self.docker(&["unpause", &self.container(id)])?;
        }
        Ok(())
    }

    fn shared_network(&self) -> String {
        format!("{}_{SHARED_NETWORK}", self.project)
    }

    /// Cuts the network into `sides`: the nodes of a side see each other (and nodes of other
    /// sides only when they are on both, as a bridge is); nodes on no side are not touched.
    pub fn partition(&mut self, sides: &[Vec<u64>]) -> Result<()> {
        let mut networks_of: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (i, side) in sides.iter().enumerate() {
            let network = format!("{}_side{i}", self.project);
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
                    &self.container(id),
                ])?;
            }
        }
        let shared = self.shared_network();
        for (id, networks) in networks_of {
            self.docker(&["network", "disconnect", &shared, &self.container(id)])?;
            self.cut.insert(id, networks);
        }
        Ok(())
    }

    /// Puts every cut node back on the shared network.
    pub fn heal(&mut self) -> Result<()> {
        let shared = self.shared_network();
        for (id, networks) in std::mem::take(&mut self.cut) {
            let alias = format!("node{id}");
            let container = self.container(id);
            self.docker(&["network", "connect", "--alias", &alias, &shared, &container])?;
            for network in networks {
                self.docker(&["network", "disconnect", &network, &container])?;
            }
        }
        Ok(())
    }

    /// Writes each started node's log to `dir/node<id>.log`.
    pub fn save_logs(&self, dir: &Path) {
        for id in self.nodes.keys() {
            let out = Command::new("docker")
                .args(["logs", "--timestamps", &self.container(*id)])
                .output();
            if let Ok(out) = out {
                if out.status.success() {
                    let mut text = out.stdout;
                    text.extend_from_slice(&out.stderr);
                    let _ = std::fs::write(dir.join(format!("node{id}.log")), text);
                }
            }
        }
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

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!("faults: taking down {} failed: {e:#}", self.project);
        }
    }
}

fn run(mut cmd: Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `n` ports free on the loopback right now.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// The compose file: initial voters bootstrap from `--initial-cluster`; spares start with
/// `--no-bootstrap` and wait to be added.
fn compose_file(project: &str, image: &str, nodes: &BTreeMap<u64, Node>) -> String {
    let initial: Vec<String> = nodes
        .values()
        .filter(|n| n.initial)
        .map(|n| format!("{}={}/node{}:{CLIENT_PORT}", n.id, n.peer_addr(), n.id))
        .collect();
    let initial = initial.join(",");
    let mut text =
        String::from("# Written by raftcache-faults for one run.\nversion: \"3.7\"\nservices:\n");
    for node in nodes.values() {
        let id = node.id;
        let mode = if node.initial {
            format!("\"--initial-cluster\", \"{initial}\"")
        } else {
            "\"--no-bootstrap\"".to_string()
        };
        let _ = write!(
            text,
            r#"  node{id}:
    image: "{image}"
    container_name: "{project}-node{id}"
    hostname: node{id}
    networks: [{SHARED_NETWORK}]
    environment:
      RUST_LOG: "info,openraft=warn"
    command: ["serve", "--id", "{id}", "--listen", "0.0.0.0:{CLIENT_PORT}",
              "--peer-listen", "0.0.0.0:{PEER_PORT}", "--advertise-client", "node{id}:{CLIENT_PORT}",
              "--advertise-peer", "node{id}:{PEER_PORT}", "--data-dir", "/data", {mode}]
    ports: ["127.0.0.1:{port}:{CLIENT_PORT}"]
    volumes: ["node{id}-data:/data"]
    stop_grace_period: 10s
"#,
            port = node.port
        );
    }
    let _ = writeln!(text, "networks:\n  {SHARED_NETWORK}: {{}}\nvolumes:");
    for id in nodes.keys() {
        let _ = writeln!(text, "  node{id}-data: {{}}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

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
                    },
                )
            })
            .collect();
        let text = compose_file("p", "img:t", &nodes);
        let cluster = "1=node1:9190/node1:9090,2=node2:9190/node2:9090,3=node3:9190/node3:9090";
        assert_eq!(text.matches(cluster).count(), 3, "{text}");
        assert_eq!(text.matches("--no-bootstrap").count(), 1);
        assert!(text.contains("container_name: \"p-node4\""));
        assert!(text.contains("\"--advertise-peer\", \"node4:9190\""));
        assert!(text.contains("\"127.0.0.1:20004:9090\""));
        assert!(text.contains("node4-data: {}"));
    }
}
