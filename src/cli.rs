//! The command line of the `raftcache` binary (a module of the binary, not of the library):
//! `raftcache serve` runs a node; `get`, `put`, `remove`, `status` and `admin ...` talk to one.
//! Exit status: 0 success, 1 key absent, 2 any error or refusal (message on stderr).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;

use raftcache::client::{describe_error, CacheClient, ClientOptions, TlsOptions};
use raftcache::config::NodeConfig;
use raftcache::gen::cache::{
    AdminOp, CacheStats, EventKind, Membership, NodeStatus, ReadOptions, TCacheServiceSyncClient,
    Unavailable,
};
use raftcache::membership::{add_node, CatchUp};
use raftcache::tls::ClientFiles;

/// raftcache: a persistent, replicated key-value cache (Thrift API, Raft replication, sled).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node. With no flags: a one-node cluster on 127.0.0.1:9090.
    Serve(Box<NodeConfig>),
    /// Make a new node's data dir from a backup (`raftcache admin backup`), with the flags
    /// `serve` will get: the backup's data, the membership of --initial-cluster (or of this
    /// node alone) and a cluster id of its own. Run it for every node of the new cluster, with
    /// the same file and --initial-cluster, then start each with `raftcache serve`. Refuses a
    /// data dir that is not empty, and a damaged, cut-short or foreign file.
    Restore(Box<RestoreArgs>),
    /// Print the value of KEY (exit 1 if absent).
    Get {
        key: String,
        /// Return a value at least as new as every write acknowledged before this read.
        #[arg(long)]
        linearizable: bool,
        /// Print {"key": KEY, "value": VALUE} (value null when absent) instead of the value.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Store VALUE under KEY.
    Put {
        key: String,
        value: String,
        /// Expire the key this many milliseconds after the write.
        #[arg(long)]
        ttl_ms: Option<i64>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Add DELTA (default 1) to the decimal integer under KEY (absent: 0); print the result.
    Incr {
        key: String,
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        delta: i64,
        /// Print {"key": KEY, "value": N} instead of the number.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print the keys starting with PREFIX and their values, in byte order, one per line.
    Scan {
        #[arg(default_value = "")]
        prefix: String,
        /// Start after this key.
        #[arg(long, default_value = "")]
        start_after: String,
        /// Most entries to print (the server caps it with --max-scan-items).
        #[arg(long, default_value_t = 100)]
        limit: i32,
        /// Print one JSON array of {"key", "value", "ttl_ms"} objects instead of lines (for
        /// values that may hold a tab or a newline).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print the changes to keys starting with PREFIX as they happen, from the node's own
    /// replica, one per line: INDEX.OFFSET, the kind (put, remove, expire, evict), the key, and
    /// for a put the value. Runs until stopped (or --count changes). Exits 1 with the oldest
    /// index still held when the node no longer holds the changes asked for: read the keys
    /// again (`scan`) and watch from there.
    Watch {
        #[arg(default_value = "")]
        prefix: String,
        /// Print the changes made after this log index [default: from now on].
        #[arg(long)]
        from: Option<i64>,
        /// With --from: resume inside entry --from, at its change OFFSET (a resume position
        /// printed by an earlier watch, INDEX.OFFSET).
        #[arg(long, default_value_t = 0, requires = "from")]
        offset: i32,
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<u64>,
        /// Print one JSON object per line: {"index", "offset", "kind", "key", "value",
        /// "expires_at_ms"} (a value that is not UTF-8 as "value_hex").
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print a node's cache counters (keys, bytes, hits, misses, expired, evicted).
    Stats {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove KEY (exit 1 if it was absent).
    Remove {
        key: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Operate the cluster.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Ask a node's HTTP port whether it is ready (`GET /ready`) or healthy (`GET /health`):
    /// print its answer, exit 0 on 200 and 1 otherwise (2 if the port does not answer). For
    /// probes in images with no shell or curl.
    Check {
        /// What to ask.
        #[arg(value_enum)]
        what: CheckWhat,
        /// The node's HTTP port (its --http-listen).
        #[arg(long, default_value = "127.0.0.1:9290")]
        http: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout_secs: u64,
        /// Speak HTTPS (a node with --http-tls), trusting its certificate's CA (PEM).
        #[arg(long, env = "RAFTCACHE_TLS_CA", value_name = "PEM")]
        tls_ca: Option<PathBuf>,
    },
    /// Show a node's view of the cluster. Exits 1 (and says why) for a node that cannot
    /// serve: one that knows no leader, was removed, or waits to be added.
    Status {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// The backup file.
    pub file: std::path::PathBuf,
    /// The new node, as `serve` will run it (--id, --data-dir, --initial-cluster, ...).
    #[command(flatten)]
    pub node: NodeConfig,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum CheckWhat {
    /// `GET /ready`: a member, following a leader a quorum confirms, caught up.
    Ready,
    /// `GET /health`: the process and its Raft core run.
    Health,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Build a snapshot on the node now (and compact its log behind it).
    Snapshot {
        #[command(flatten)]
        admin: AdminConn,
    },
    /// Write a backup of the whole data set to FILE: every write the node had applied when
    /// asked, none after, taken while writes go on, with a checksum. Restore it with
    /// `raftcache restore`.
    Backup {
        /// Where to write it (refused if it exists; written as FILE.partial until whole).
        file: std::path::PathBuf,
        #[command(flatten)]
        admin: AdminConn,
    },
    /// List every member: id, addresses, voter or learner, reachable, lag behind the leader.
    Members {
        #[command(flatten)]
        admin: AdminConn,
    },
    /// Add node ID (already running, e.g. with --no-bootstrap) as a learner.
    AddLearner {
        id: u64,
        peer_addr: String,
        #[command(flatten)]
        force: Force,
        #[command(flatten)]
        admin: AdminConn,
    },
    /// Make learner ID a voter.
    Promote {
        id: u64,
        #[command(flatten)]
        force: Force,
        #[command(flatten)]
        admin: AdminConn,
    },
    /// Hand the leadership to voter ID: the leader stops taking writes, waits until ID holds
    /// every entry it has, and ID calls an election at once. Answers once ID leads. Refused
    /// for a learner, or (unless --force) a voter more than 1000 entries behind.
    TransferLeader {
        id: u64,
        #[command(flatten)]
        force: Force,
        #[command(flatten)]
        admin: AdminConn,
    },
    /// Make voter ID a learner.
    Demote {
        id: u64,
        #[command(flatten)]
        force: Force,
        #[command(flatten)]
        admin: AdminConn,
    },
    /// Remove voter or learner ID (the leader included: it steps down once the change commits).
    RemoveNode {
        id: u64,
        #[command(flatten)]
        force: Force,
        #[command(flatten)]
        admin: AdminConn,
    },
    /// Add node ID as a learner, wait until it has caught up, then make it a voter.
    AddNode {
        id: u64,
        peer_addr: String,
        #[command(flatten)]
        force: Force,
        #[command(flatten)]
        catch_up: CatchUpArgs,
        #[command(flatten)]
        admin: AdminConn,
    },
    /// Replace voter OLD_ID (typically dead) by NEW_ID, a node running with --no-bootstrap:
    /// add it as a learner, wait until it has caught up, then swap the two in one change.
    ReplaceNode {
        old_id: u64,
        new_id: u64,
        new_peer_addr: String,
        #[command(flatten)]
        force: Force,
        #[command(flatten)]
        catch_up: CatchUpArgs,
        #[command(flatten)]
        admin: AdminConn,
    },
}

/// Where an admin command connects, and with what token.
#[derive(clap::Args, Debug)]
pub struct AdminConn {
    #[command(flatten)]
    pub conn: Conn,
    /// The cluster's admin token (the server's --admin-token).
    #[arg(
        long,
        env = "RAFTCACHE_ADMIN_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    pub token: String,
    /// Print the result as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Whether a membership change overrides the safety rules.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct Force {
    /// Make the change even though a safety rule refuses it (a new voter that does not
    /// answer, a quorum that would not answer). See docs/operations.md.
    #[arg(long)]
    pub force: bool,
}

/// How add-node and replace-node wait for the new node to catch up.
#[derive(clap::Args, Debug)]
pub struct CatchUpArgs {
    /// The new node counts as caught up within this many log entries of the leader.
    #[arg(long, default_value_t = 100)]
    pub catch_up_max_lag: u64,
    /// Give up waiting after this long (the node then stays a learner).
    #[arg(long, default_value_t = 120_000)]
    pub catch_up_timeout_ms: u64,
}

/// Where the client connects.
#[derive(clap::Args, Debug)]
pub struct Conn {
    /// Client address of any node.
    #[arg(long, default_value = "127.0.0.1:9090", env = "RAFTCACHE_ADDR")]
    pub addr: String,
    /// Seconds to wait for the connection and for each answer.
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
    /// Speak TLS, trusting node certificates signed by this CA (PEM).
    #[arg(long, env = "RAFTCACHE_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM), for a node with --client-auth cert. Needs --tls-ca.
    #[arg(long, env = "RAFTCACHE_TLS_CERT", requires_all = ["tls_ca", "tls_key"], value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "RAFTCACHE_TLS_KEY",
        requires = "tls_cert",
        value_name = "PEM"
    )]
    pub tls_key: Option<PathBuf>,
    /// The name the node's certificate must carry [default: the host of --addr].
    #[arg(long, requires = "tls_ca")]
    pub tls_server_name: Option<String>,
    /// The client token of a node started with --client-auth token.
    #[arg(long, env = "RAFTCACHE_CLIENT_TOKEN", hide_env_values = true)]
    pub client_token: Option<String>,
}

impl Conn {
    fn connect(&self) -> Result<CacheClient, String> {
        let tls = self.tls_ca.as_ref().map(|ca| TlsOptions {
            files: ClientFiles {
                ca: ca.clone(),
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
            },
            server_name: self.tls_server_name.clone(),
        });
        let options = ClientOptions {
            tls,
            token: self.client_token.clone(),
        };
        CacheClient::connect_with(&self.addr, Duration::from_secs(self.timeout_secs), &options)
            .map_err(|e| format!("cannot connect to {}: {e}", self.addr))
    }
}

/// How long each watch call waits for a change (the node caps it at its request deadline).
const WATCH_POLL_MS: i32 = 5_000;

/// `raftcache watch`: long polls the node and prints each change.
fn watch(
    conn: &Conn,
    prefix: String,
    from: Option<i64>,
    offset: i32,
    count: Option<u64>,
    json: bool,
) -> Result<ExitCode, String> {
    use std::io::Write;
    let mut client = conn.connect()?;
    let (mut index, mut offset) = match from {
        Some(index) => (index, offset),
        None => (
            client
                .service()
                .stats()
                .map_err(|e| describe_error(&e))?
                .applied_index,
            0,
        ),
    };
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        let answer = client
            .service()
            .watch(prefix.clone(), index, 1000, WATCH_POLL_MS, offset);
        let result = match answer {
            Ok(result) => result,
            Err(thrift::Error::User(e)) if e.is::<raftcache::gen::cache::Compacted>() => {
                let compacted = e
                    .downcast_ref::<raftcache::gen::cache::Compacted>()
                    .expect("checked");
                eprintln!("{}", compacted.message);
                return Ok(ExitCode::from(1));
            }
            Err(e) => {
                return Err(format!(
                    "{} (resume with --from {index} --offset {offset})",
                    describe_error(&e)
                ))
            }
        };
        for event in result.events {
            let kind = match event.kind {
                EventKind::PUT => "put",
                EventKind::REMOVE => "remove",
                EventKind::EXPIRE => "expire",
                EventKind::EVICT => "evict",
                _ => "unknown",
            };
            let line = if json {
                let mut object = json!({
                    "index": event.index, "offset": event.offset, "kind": kind,
                    "key": event.key, "expires_at_ms": event.expires_at_ms,
                });
                match event.value.map(String::from_utf8) {
                    Some(Ok(text)) => object["value"] = json!(text),
                    Some(Err(bytes)) => {
                        let hex: String = bytes
                            .into_bytes()
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect();
                        object["value_hex"] = json!(hex);
                    }
                    None => object["value"] = serde_json::Value::Null,
                }
                object.to_string()
            } else {
                let value = event
                    .value
                    .map(|v| format!("\t{}", String::from_utf8_lossy(&v)))
                    .unwrap_or_default();
                format!(
                    "{}.{}\t{kind}\t{}{value}",
                    event.index, event.offset, event.key
                )
            };
            writeln!(out, "{line}").map_err(|e| e.to_string())?;
            printed += 1;
            if count.is_some_and(|count| printed >= count) {
                out.flush().map_err(|e| e.to_string())?;
                return Ok(ExitCode::SUCCESS);
            }
        }
        out.flush().map_err(|e| e.to_string())?;
        (index, offset) = (result.resume_index, result.resume_offset);
    }
}

/// Runs a client command (anything but `serve`) and returns the process exit code.
pub fn run_client(command: Command) -> ExitCode {
    match client_command(command) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn client_command(command: Command) -> Result<ExitCode, String> {
    let err = |e: thrift::Error| describe_error(&e);
    match command {
        Command::Serve(_) | Command::Restore(_) => {
            unreachable!("serve and restore are not client commands")
        }
        Command::Check {
            what,
            http,
            timeout_secs,
            tls_ca,
        } => {
            let tls = tls_ca.map(|ca| TlsOptions {
                files: ClientFiles {
                    ca,
                    ..Default::default()
                },
                server_name: None,
            });
            let path = match what {
                CheckWhat::Ready => "/ready",
                CheckWhat::Health => "/health",
            };
            let (status, body) = raftcache::http::get_with(
                &http,
                path,
                std::time::Duration::from_secs(timeout_secs.max(1)),
                tls.as_ref(),
            )?;
            print!("{body}");
            Ok(if status == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Get {
            key,
            linearizable,
            json,
            conn,
        } => {
            let value = conn.connect()?.get(&key, linearizable).map_err(err)?;
            if json {
                println!("{}", json!({ "key": key, "value": value }));
            }
            match value {
                Some(value) => {
                    if !json {
                        println!("{value}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("key not found: {key}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Put {
            key,
            value,
            ttl_ms,
            conn,
        } => {
            conn.connect()?.put_ttl(&key, &value, ttl_ms).map_err(err)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Incr {
            key,
            delta,
            json,
            conn,
        } => {
            let value = conn
                .connect()?
                .service()
                .increment(key.clone(), delta)
                .map_err(err)?;
            if json {
                println!("{}", json!({ "key": key, "value": value }));
            } else {
                println!("{value}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Scan {
            prefix,
            start_after,
            limit,
            json,
            conn,
        } => {
            let options = ReadOptions::new(None, None);
            let entries = conn
                .connect()?
                .service()
                .scan(prefix, start_after, limit, options)
                .map_err(err)?;
            if json {
                let entries: Vec<_> = entries
                    .iter()
                    .map(|e| json!({ "key": e.key, "value": e.value, "ttl_ms": e.ttl_ms }))
                    .collect();
                println!("{}", serde_json::Value::Array(entries));
                return Ok(ExitCode::SUCCESS);
            }
            for entry in entries {
                println!("{}\t{}", entry.key, entry.value);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch {
            prefix,
            from,
            offset,
            count,
            json,
            conn,
        } => watch(&conn, prefix, from, offset, count, json),
        Command::Stats { json, conn } => {
            let stats = conn.connect()?.service().stats().map_err(err)?;
            println!("{}", stats_text(&stats, json));
            Ok(ExitCode::SUCCESS)
        }
        Command::Remove { key, conn } => {
            if conn.connect()?.remove(&key).map_err(err)? {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("key not found: {key}");
                Ok(ExitCode::from(1))
            }
        }
        Command::Admin { command } => admin_command(command),
        Command::Status { json, conn } => {
            let status = conn.connect()?.status().map_err(err)?;
            println!(
                "{}",
                if json {
                    status_json(&status).to_string()
                } else {
                    status_text(&status)
                }
            );
            Ok(match cannot_serve(&status) {
                None => ExitCode::SUCCESS,
                Some(why) => {
                    eprintln!("{why}");
                    ExitCode::from(1)
                }
            })
        }
    }
}

fn admin_command(command: AdminCommand) -> Result<ExitCode, String> {
    let err = |e: thrift::Error| describe_error(&e);
    let change = |a: &AdminConn, op: AdminOp, id: u64, peer: Option<&str>, force: Force| {
        a.conn
            .connect()?
            .admin_change(op, id, peer, None, force.force, &a.token)
            .map_err(err)
    };
    let membership = match command {
        AdminCommand::Backup { file, admin } => {
            let mut client = admin.conn.connect()?;
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let mut shown = 0;
            let header = raftcache::backup::take(&mut client, &admin.token, &file, |done, all| {
                let percent = (done * 100).checked_div(all).unwrap_or(100);
                if terminal {
                    eprint!("\rbackup: {done} of {all} bytes ({percent}%)");
                } else if percent >= shown + 10 || done == all {
                    eprintln!("backup: {done} of {all} bytes ({percent}%)");
                    shown = percent;
                }
            });
            if terminal {
                eprintln!();
            }
            let header = header?;
            if admin.json {
                println!(
                    "{}",
                    json!({
                        "file": file.display().to_string(),
                        "cluster_id": header.cluster_id,
                        "node_id": header.node_id,
                        "index": header.index,
                        "bytes": header.bytes,
                    })
                );
            } else {
                println!(
                    "backup of cluster {} at log index {} (node {}, {} bytes of data) written to {}",
                    header.cluster_id,
                    header.index,
                    header.node_id,
                    header.bytes,
                    file.display()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        AdminCommand::Snapshot { admin } => {
            let mut client = admin.conn.connect()?;
            let index = client.admin_snapshot_with(&admin.token).map_err(err)?;
            if admin.json {
                println!("{}", json!({ "index": index }));
            } else {
                println!("snapshot at log index {index}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        AdminCommand::Members { admin } => {
            let mut client = admin.conn.connect()?;
            match client.admin_members(&admin.token) {
                Ok(m) => (m, admin.json),
                Err(e) if matches!(&e, thrift::Error::User(u) if u.is::<Unavailable>()) => {
                    // No leader to ask: the node's own view is what the operator needs now,
                    // if it is a member (a node waiting to be added, or removed, has none).
                    let status = admin.conn.connect()?.status().map_err(err)?;
                    let member = status.cluster_id.is_some()
                        && status.members.iter().any(|m| m.id == status.id);
                    if !member {
                        return Err(describe_error(&e));
                    }
                    eprintln!(
                        "no leader answered ({}); node {}'s own view of the membership follows",
                        describe_error(&e),
                        status.id
                    );
                    if admin.json {
                        println!("{}", status_json(&status));
                    } else {
                        println!("{}", status_text(&status));
                    }
                    return Ok(ExitCode::from(1));
                }
                Err(e) => return Err(err(e)),
            }
        }
        AdminCommand::AddLearner {
            id,
            peer_addr,
            force,
            admin,
        } => (
            change(&admin, AdminOp::ADD_LEARNER, id, Some(&peer_addr), force)?,
            admin.json,
        ),
        AdminCommand::Promote { id, force, admin } => (
            change(&admin, AdminOp::PROMOTE, id, None, force)?,
            admin.json,
        ),
        AdminCommand::Demote { id, force, admin } => (
            change(&admin, AdminOp::DEMOTE, id, None, force)?,
            admin.json,
        ),
        AdminCommand::TransferLeader { id, force, admin } => (
            change(&admin, AdminOp::TRANSFER_LEADER, id, None, force)?,
            admin.json,
        ),
        AdminCommand::RemoveNode { id, force, admin } => (
            change(&admin, AdminOp::REMOVE_NODE, id, None, force)?,
            admin.json,
        ),
        AdminCommand::AddNode {
            id,
            peer_addr,
            force,
            catch_up,
            admin,
        } => (
            run_add_node(&admin, id, &peer_addr, None, force, &catch_up)?,
            admin.json,
        ),
        AdminCommand::ReplaceNode {
            old_id,
            new_id,
            new_peer_addr,
            force,
            catch_up,
            admin,
        } => (
            run_add_node(
                &admin,
                new_id,
                &new_peer_addr,
                Some(old_id),
                force,
                &catch_up,
            )?,
            admin.json,
        ),
    };
    let (membership, json) = membership;
    if json {
        println!("{}", membership_json(&membership));
    } else {
        println!("{}", membership_text(&membership));
    }
    Ok(ExitCode::SUCCESS)
}

fn run_add_node(
    admin: &AdminConn,
    id: u64,
    peer_addr: &str,
    replace: Option<u64>,
    force: Force,
    catch_up: &CatchUpArgs,
) -> Result<Membership, String> {
    let catch_up = CatchUp {
        max_lag: catch_up.catch_up_max_lag,
        timeout: Duration::from_millis(catch_up.catch_up_timeout_ms),
    };
    let mut client = admin.conn.connect()?;
    let mut progress = |step: &str| eprintln!("{step}");
    add_node(
        &mut client,
        id,
        peer_addr,
        replace,
        catch_up,
        force.force,
        &admin.token,
        &mut progress,
    )
}

/// The `admin members --json` object.
pub fn membership_json(m: &Membership) -> serde_json::Value {
    let members: Vec<_> = m
        .members
        .iter()
        .map(|x| {
            json!({
                "id": x.id,
                "peer_addr": x.peer_addr,
                "client_addr": x.client_addr,
                "voter": x.voter,
                "reachable": x.reachable,
                "lag": x.lag,
            })
        })
        .collect();
    json!({
        "leader": m.leader,
        "last_log_index": m.last_log_index,
        "changing": m.changing,
        "members": members,
    })
}

fn membership_text(m: &Membership) -> String {
    let mut out = format!(
        "leader: {} (last log index {}){}\n{:>4}  {:<7}  {:<21}  {:<21}  {:<11}  lag",
        m.leader,
        m.last_log_index,
        if m.changing {
            ", a change is in progress"
        } else {
            ""
        },
        "id",
        "role",
        "peer address",
        "client address",
        "reachable"
    );
    for x in &m.members {
        out.push_str(&format!(
            "\n{:>4}  {:<7}  {:<21}  {:<21}  {:<11}  {}",
            x.id,
            if x.voter { "voter" } else { "learner" },
            x.peer_addr,
            if x.client_addr.is_empty() {
                "?"
            } else {
                &x.client_addr
            },
            if x.reachable { "yes" } else { "NO" },
            x.lag.map_or("?".to_string(), |l| l.to_string())
        ));
    }
    out
}

/// The `status --json` object.
pub fn status_json(s: &NodeStatus) -> serde_json::Value {
    let members: Vec<_> = s
        .members
        .iter()
        .map(|m| {
            json!({"id": m.id, "addr": m.peer_addr, "client_addr": m.client_addr, "voter": m.voter})
        })
        .collect();
    json!({
        "id": s.id,
        "role": s.role,
        "leader": s.leader,
        "term": s.term,
        "last_log_index": s.last_log_index,
        "last_applied": s.last_applied,
        "members": members,
        "log_flushes": s.log_flushes,
        "cluster_id": s.cluster_id,
        "membership_changing": s.membership_changing,
    })
}

/// Why the node whose status is `s` cannot serve (`status` then exits 1), if it cannot.
fn cannot_serve(s: &NodeStatus) -> Option<String> {
    match (s.role.as_str(), s.leader) {
        ("removed", _) => Some(format!("node {} was removed from its cluster", s.id)),
        ("waiting", _) => Some(format!(
            "node {} is not a member of any cluster yet: it waits to be added",
            s.id
        )),
        (_, None) => Some(format!("node {} knows no leader", s.id)),
        _ => None,
    }
}

fn status_text(s: &NodeStatus) -> String {
    let leader = s.leader.map_or("none".to_string(), |l| l.to_string());
    let mut out = format!(
        "node {} is {} (leader: {leader}, term {}, last log index {}, last applied {})\nmembers:",
        s.id, s.role, s.term, s.last_log_index, s.last_applied
    );
    for m in &s.members {
        out.push_str(&format!(
            "\n  {} {} {} (clients: {})",
            m.id,
            m.peer_addr,
            if m.voter { "voter" } else { "learner" },
            m.client_addr.as_deref().unwrap_or("?")
        ));
    }
    out
}

/// A node's cache counters, as text or one JSON object.
fn stats_text(stats: &CacheStats, json: bool) -> String {
    let fields = [
        ("keys", stats.keys),
        ("bytes", stats.bytes),
        ("hits", stats.hits),
        ("misses", stats.misses),
        ("expired", stats.expired),
        ("evicted", stats.evicted),
        ("applied_index", stats.applied_index),
    ];
    if json {
        let map: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|(name, value)| (name.to_string(), (*value).into()))
            .collect();
        serde_json::Value::Object(map).to_string()
    } else {
        let lines: Vec<String> = fields
            .iter()
            .map(|(name, value)| format!("{name}: {value}"))
            .collect();
        lines.join("\n")
    }
}
